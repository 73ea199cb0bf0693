//! Engagement at the store: daily check-in, birthday greetings, the dormant list. The rules are
//! pure functions in `chainsync_core::engagement`; this module writes their ledger entries
//! (replicated operations) and outbox messages inside the writer's transaction.
//!
//! A check-in is a `points_reward` ledger entry with the reason `check-in YYYY-MM-DD`; the
//! streak is read back from those entries (chain-wide, as far as they have been replicated).
//! Two stores may both accept a check-in for the same member on the same day while they cannot
//! reach each other: both entries are kept (best effort, documented).

use chainsync_core::checkout::Movement;
use chainsync_core::engagement as rules;
use chainsync_core::ledger::{Account, EntryKind};
use chainsync_core::op::OpV1;
use chainsync_core::points_expiry;
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use time::Date;
use uuid::Uuid;

use crate::commands::Local;
use crate::outbox;
use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::read;

const checkin_reason: &str = "check-in ";
const streak_reason: &str = "check-in streak ";

/// `POST /api/v1/members/{id}/check-ins`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CheckInView {
    pub member_id: Uuid,
    /// The store's calendar day, `YYYY-MM-DD`.
    pub date: String,
    /// Consecutive days with a check-in, ending today.
    pub streak: u32,
    pub points_awarded: i64,
    /// Extra points for every 7th consecutive day (0 otherwise).
    pub streak_reward_points: i64,
    /// The member's points afterwards.
    pub points: i64,
}

/// The store's calendar day (in its time zone).
fn today(now_ms: u64, utc_offset_seconds: i32) -> Result<Date, ApiError> {
    rules::local_date(now_ms, utc_offset_seconds)
        .ok_or_else(|| ApiError::internal("the clock is out of range"))
}

/// Days on which the member (with any members merged into it) checked in.
fn checkin_days(conn: &Connection, member_id: Uuid) -> rusqlite::Result<BTreeSet<Date>> {
    let mut statement = conn.prepare_cached(
        "SELECT reason FROM ledger
         WHERE member_id IN (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)
           AND kind = 'points_reward' AND reason LIKE 'check-in %'",
    )?;
    let reasons = statement.query_map([member_id.to_string()], |row| {
        row.get::<_, Option<String>>(0)
    })?;
    let mut days = BTreeSet::new();
    for reason in reasons {
        if let Some(date) = reason?
            .as_deref()
            .and_then(|r| r.strip_prefix(checkin_reason))
            .and_then(rules::parse_date)
        {
            days.insert(date);
        }
    }
    Ok(days)
}

pub fn check_in(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let today = today(now_ms, local.utc_offset_seconds)?;
    let date = rules::format_date(today);
    let days = checkin_days(conn, member_id)?;
    if days.contains(&today) {
        return Err(ApiError::new(
            409,
            "already_checked_in",
            format!("this member has already checked in on {date}"),
        ));
    }
    let streak = rules::streak_on(&days, today);
    let reward = |points: i64| Movement {
        kind: EntryKind::PointsReward,
        account: Account::Points,
        amount: points,
    };
    local.emit_entry(
        conn,
        now_ms,
        member_id,
        reward(rules::checkin_points),
        None,
        Some(format!("{checkin_reason}{date}")),
    )?;
    let streak_points = rules::streak_reward(streak);
    if streak_points > 0 {
        local.emit_entry(
            conn,
            now_ms,
            member_id,
            reward(streak_points),
            None,
            Some(format!("{streak_reason}{streak} {date}")),
        )?;
        crate::coupons::on_checkin_streak(conn, local, member_id, &date, now_ms)?;
    }
    let view = CheckInView {
        member_id,
        date: date.clone(),
        streak,
        points_awarded: rules::checkin_points,
        streak_reward_points: streak_points,
        points: read::balances(conn, member_id)?
            .ok_or_else(ApiError::unknown_member)?
            .points,
    };
    outbox::enqueue(
        conn,
        &format!("check_in:{member_id}:{date}"),
        "check_in",
        Some(member_id),
        &serde_json::to_value(&view).map_err(ApiError::internal)?,
        now_ms,
    )?;
    Reply::new(201, &view)
}

/// The member a registration names as referrer: a member id, phone or card number (the
/// canonical member of its group). Unknown: 422 `unknown_referrer`.
pub fn find_referrer(conn: &Connection, text: &str) -> Result<Uuid, ApiError> {
    let text = text.trim();
    let mut found = match Uuid::parse_str(text) {
        Ok(id) => read::canonical_member(conn, id)?,
        Err(_) => None,
    };
    let by = |column: &str, value: &str| -> rusqlite::Result<Option<Uuid>> {
        let sql = format!(
            "SELECT COALESCE(merged_into, id) FROM members WHERE {column} = ?1 ORDER BY id LIMIT 1"
        );
        let id: Option<String> = conn.query_row(&sql, [value], |row| row.get(0)).optional()?;
        Ok(id.and_then(|id| Uuid::parse_str(&id).ok()))
    };
    if found.is_none()
        && let Ok(phone) = chainsync_core::member::normalize_phone(text)
    {
        found = by("phone", &phone)?;
    }
    if found.is_none() && !text.is_empty() && text.chars().count() <= 64 {
        found = by("card_no", text)?;
    }
    found.ok_or_else(|| {
        ApiError::new(
            422,
            "unknown_referrer",
            "referrer: no member with this id, phone or card number is known at this store",
        )
    })
}

/// Record that `referee` (just registered here) was referred by `referrer`
/// (an `OpV1::Referral`, replicated like any other operation).
pub fn record_referral(
    conn: &Connection,
    local: &mut Local,
    referee: Uuid,
    referrer: Uuid,
    now_ms: u64,
) -> Result<(), ApiError> {
    chainsync_core::referral::check(referee, referrer)
        .map_err(|e| ApiError::new(422, "unknown_referrer", e.to_string()))?;
    let referral = chainsync_core::referral::Referral {
        referee,
        referrer,
        at_ms: now_ms,
    };
    let envelope = local.emit(conn, now_ms, OpV1::Referral(referral.clone()))?;
    chainsync_replica::engagement::project_referral(conn, &referral, &envelope.origin)?;
    Ok(())
}

/// After a checkout of `member_id` (canonical): if the member's group was referred and the
/// reward is not held yet, write it (both parties), with ids derived from the referee's phone,
/// so a second store doing the same while apart writes the same entries (kept once).
pub fn referral_on_purchase(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    total: chainsync_core::Fen,
    now_ms: u64,
) -> Result<(), ApiError> {
    use chainsync_replica::engagement as replica;
    let Some(referral) = replica::group_referral(conn, member_id)? else {
        return Ok(());
    };
    let phone: Option<String> = conn
        .query_row(
            "SELECT phone FROM members WHERE id = ?1",
            [member_id.to_string()],
            |row| row.get(0),
        )
        .optional()?;
    let Some(phone) = phone else {
        return Ok(());
    };
    if !chainsync_core::referral::reward_due(true, replica::rewarded(conn, &phone)?, total) {
        return Ok(());
    }
    let referrer = read::canonical_member(conn, referral.referrer)?.unwrap_or(referral.referrer);
    let reward = local.rules.referral.clone();
    for entry in chainsync_core::referral::reward_entries(&reward, &phone) {
        let (to, reason) = match entry.party {
            chainsync_core::referral::Party::Referrer => {
                (referrer, format!("referral reward: referred {member_id}"))
            }
            chainsync_core::referral::Party::Referee => (
                member_id,
                format!("referral reward: referred by {referrer}"),
            ),
        };
        local.emit_entry_with_id(
            conn,
            now_ms,
            chainsync_core::id::derived_id(&entry.key),
            to,
            entry.movement,
            None,
            Some(reason),
        )?;
    }
    Ok(())
}

/// A member group's points: its movements (expiries apart) and the expiry entries it holds.
struct PointsHistory {
    moves: Vec<chainsync_core::points_expiry::PointsMove>,
    /// Held `points_expire` entries: (entry id, member id) -> (year, points expired, positive).
    expiries: BTreeMap<(Uuid, Uuid), (i32, i64)>,
}

/// The points history of the group whose canonical member is `canonical`. An expiry entry
/// whose reason does not name a year of ours counts as a movement like any other.
fn points_history(conn: &Connection, canonical: Uuid) -> rusqlite::Result<PointsHistory> {
    let mut statement = conn.prepare_cached(
        "SELECT id, member_id, kind, amount, hlc_wall_ms, reason FROM ledger
         WHERE member_id IN (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)
           AND account = 'points'",
    )?;
    let mut rows = statement.query([canonical.to_string()])?;
    let mut history = PointsHistory {
        moves: Vec::new(),
        expiries: BTreeMap::new(),
    };
    while let Some(row) = rows.next()? {
        let kind: String = row.get(2)?;
        let amount: i64 = row.get(3)?;
        if kind == EntryKind::PointsExpire.as_str() {
            let ids = (
                Uuid::parse_str(&row.get::<_, String>(0)?),
                Uuid::parse_str(&row.get::<_, String>(1)?),
            );
            let reason: Option<String> = row.get(5)?;
            let year = reason
                .as_deref()
                .and_then(|r| r.strip_prefix(expiry_reason))
                .and_then(|y| y.trim().parse::<i32>().ok());
            if let (Some(year), (Ok(id), Ok(member))) = (year, ids)
                && id == chainsync_core::id::derived_id(&points_expiry::expiry_key(member, year))
            {
                history
                    .expiries
                    .insert((id, member), (year, amount.saturating_neg()));
                continue;
            }
        }
        history.moves.push(points_expiry::PointsMove {
            at_ms: row.get::<_, i64>(4)?.max(0) as u64,
            amount,
        });
    }
    Ok(history)
}

const expiry_reason: &str = "points expiry ";

/// What one expiry run did.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ExpiryRun {
    /// Expiry entries written now for the first time (one per member and year).
    pub points_expired_entries: usize,
    /// Expiry entries rewritten now with another amount (a spend dated before the deadline
    /// arrived after the expiry was written).
    pub points_expiry_revisions: usize,
    /// Expiry reminders queued now (members reminded before this run are not counted).
    pub points_expiry_reminders: usize,
}

/// Bring one member group's expiries in line with what its entries say, and queue its
/// reminder. Every year whose deadline passed by `now_ms` should hold one `points_expire`
/// entry, id derived from `points_expire:<canonical member>:<year>`, of the amount
/// `points_expiry::targets` computes from the group's movements (a function of those dated
/// before the deadline); a held entry of another amount is rewritten under the same id (the
/// last written stays everywhere, `LedgerEntry::wins_over`), 0 points if nothing is left;
/// an expiry written for a member that has since been merged into another is rewritten to 0
/// (the canonical member's entry carries the group's). Years whose deadline is still ahead
/// here are left alone (a store whose clock runs ahead may have written them).
fn expire_member(
    conn: &Connection,
    local: &mut Local,
    policy: &points_expiry::PointsExpiryPolicy,
    canonical: Uuid,
    now_ms: u64,
    run: &mut ExpiryRun,
) -> Result<(), ApiError> {
    let history = points_history(conn, canonical)?;
    let targets = points_expiry::targets(policy, &history.moves, now_ms);
    let mut wanted: BTreeMap<(Uuid, Uuid), (i32, i64)> = BTreeMap::new();
    for (&(id, member), &(year, _)) in &history.expiries {
        if policy.deadline_ms(year).is_some_and(|d| d <= now_ms) {
            wanted.insert((id, member), (year, 0));
        }
    }
    for target in &targets {
        let id = chainsync_core::id::derived_id(&points_expiry::expiry_key(canonical, target.year));
        wanted.insert((id, canonical), (target.year, target.points));
    }
    for ((id, member), (year, points)) in wanted {
        let held = history.expiries.get(&(id, member)).map(|(_, held)| *held);
        match held {
            Some(held) if held == points => continue,
            None if points == 0 => continue,
            Some(_) => run.points_expiry_revisions += 1,
            None => run.points_expired_entries += 1,
        }
        local.emit_entry_with_id(
            conn,
            now_ms,
            id,
            member,
            Movement {
                kind: EntryKind::PointsExpire,
                account: Account::Points,
                amount: -points,
            },
            None,
            Some(format!("{expiry_reason}{year}")),
        )?;
    }
    let expired: BTreeMap<i32, i64> = targets.iter().map(|t| (t.year, t.points)).collect();
    if let Some(next) = points_expiry::upcoming(policy, &history.moves, &expired, now_ms)
        && points_expiry::reminder_due(policy, &next, now_ms)
    {
        let last_day = rules::local_date(
            next.deadline_ms.saturating_sub(1),
            policy.utc_offset_seconds,
        )
        .map(rules::format_date);
        let data = serde_json::json!({
            "member_id": canonical, "points": next.points, "earned_in": next.year,
            "expires_at_ms": next.deadline_ms, "last_day": last_day,
        });
        if outbox::enqueue(
            conn,
            &points_expiry::reminder_message_id(canonical, next.year),
            "points_expiry_reminder",
            Some(canonical),
            &data,
            now_ms,
        )? {
            run.points_expiry_reminders += 1;
        }
    }
    Ok(())
}

/// Expire points under the rules' policy (if any) and queue reminders, for every member group
/// holding points entries ([`expire_member`]). Idempotent: a run that finds everything in line
/// writes nothing.
pub fn expire_points(
    conn: &Connection,
    local: &mut Local,
    now_ms: u64,
) -> Result<ExpiryRun, ApiError> {
    let mut run = ExpiryRun::default();
    let Some(policy) = local.rules.points_expiry.clone() else {
        return Ok(run);
    };
    let members: Vec<String> = conn
        .prepare_cached(
            "SELECT m.id FROM members m WHERE m.merged_into IS NULL AND EXISTS (
                 SELECT 1 FROM ledger l WHERE l.account = 'points'
                   AND l.member_id IN (SELECT g.id FROM members g
                                       WHERE g.id = m.id OR g.merged_into = m.id))
             ORDER BY m.id",
        )?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in members {
        let Ok(member_id) = Uuid::parse_str(&id) else {
            continue;
        };
        expire_member(conn, local, &policy, member_id, now_ms, &mut run)?;
    }
    Ok(run)
}

/// After relayed operations are applied: revise the expiries of the members for whom a points
/// entry dated before an expiry already due arrived (a spend made at a store that was cut off,
/// say). `entries`: the relayed ledger entries (others than expiries are looked at).
pub fn revise_expiries_after_relay(
    conn: &Connection,
    local: &mut Local,
    entries: &[&chainsync_core::ledger::LedgerEntry],
    now_ms: u64,
) -> Result<ExpiryRun, ApiError> {
    let mut run = ExpiryRun::default();
    let Some(policy) = local.rules.points_expiry.clone() else {
        return Ok(run);
    };
    let Some(latest_deadline) = points_expiry::latest_deadline_ms(&policy, now_ms) else {
        return Ok(run);
    };
    let mut members = BTreeSet::new();
    for entry in entries {
        if entry.account == Account::Points
            && entry.kind != EntryKind::PointsExpire
            && entry.hlc.wall_ms < latest_deadline
        {
            members.insert(entry.member_id);
        }
    }
    for member in members {
        let canonical: Option<String> = conn
            .prepare_cached("SELECT COALESCE(merged_into, id) FROM members WHERE id = ?1")?
            .query_row([member.to_string()], |row| row.get(0))
            .optional()?;
        let Some(Ok(canonical)) = canonical.as_deref().map(Uuid::parse_str) else {
            continue;
        };
        expire_member(conn, local, &policy, canonical, now_ms, &mut run)?;
    }
    Ok(run)
}

/// `POST /api/v1/engagement/run`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EngagementRunView {
    /// The store's calendar day, `YYYY-MM-DD`.
    pub date: String,
    /// Birthday greetings queued now (members greeted before this year are not counted).
    pub birthday_greetings: usize,
    /// Points expiry entries written now (one per member and year).
    pub points_expired_entries: usize,
    /// Points expiry entries rewritten now with another amount (see `points_expire` in the docs).
    pub points_expiry_revisions: usize,
    /// Points expiry reminders queued now.
    pub points_expiry_reminders: usize,
}

/// Queue a birthday greeting for every member whose birthday is today. The message id
/// `birthday:<member>:<year>` is the same at every store, so a receiver that deduplicates by id
/// greets each member once a year, whichever stores ran the check.
pub fn run_daily(conn: &Connection, local: &mut Local, now_ms: u64) -> Result<Reply, ApiError> {
    let today = today(now_ms, local.utc_offset_seconds)?;
    let month_day = format!("%-{:02}-{:02}", u8::from(today.month()), today.day());
    let mut statement = conn.prepare_cached(
        "SELECT id, name, json_extract(profile_json, '$.birthday') AS birthday FROM members
         WHERE merged_into IS NULL AND (birthday LIKE ?1 OR birthday LIKE '%-02-29')",
    )?;
    let candidates = statement
        .query_map([&month_day], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, Option<String>>(2)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut queued = 0;
    for (id, name, birthday) in candidates {
        let Some(birthday) = birthday.filter(|b| rules::is_birthday(b, today)) else {
            continue;
        };
        let Ok(member_id) = Uuid::parse_str(&id) else {
            continue;
        };
        let data = serde_json::json!({
            "member_id": member_id, "name": name, "birthday": birthday,
            "date": rules::format_date(today),
        });
        crate::coupons::on_birthday(conn, local, member_id, today.year(), now_ms)?;
        let message_id = format!("birthday:{member_id}:{}", today.year());
        if outbox::enqueue(
            conn,
            &message_id,
            "birthday_greeting",
            Some(member_id),
            &data,
            now_ms,
        )? {
            queued += 1;
        }
    }
    crate::coupons::expiry_reminders(conn, now_ms)?;
    let expiry = expire_points(conn, local, now_ms)?;
    Reply::new(
        200,
        &EngagementRunView {
            date: rules::format_date(today),
            birthday_greetings: queued,
            points_expired_entries: expiry.points_expired_entries,
            points_expiry_revisions: expiry.points_expiry_revisions,
            points_expiry_reminders: expiry.points_expiry_reminders,
        },
    )
}

/// One entry of `GET /api/v1/members/dormant`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DormantMember {
    pub id: Uuid,
    pub name: String,
    pub phone: String,
    /// The member's last checkout (any store, as replicated here); null if none.
    pub last_checkout_ms: Option<i64>,
    pub created_ms: i64,
}

/// Members without a checkout since `cutoff_ms` (and registered before it), longest idle first.
pub fn dormant(
    conn: &Connection,
    cutoff_ms: i64,
    limit: usize,
) -> rusqlite::Result<Vec<DormantMember>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, name, phone, created_ms, last FROM (
             SELECT m.id, m.name, m.phone, m.created_ms,
                    (SELECT MAX(s.at_ms) FROM sales s WHERE s.member_id IN
                        (SELECT g.id FROM members g WHERE g.id = m.id OR g.merged_into = m.id))
                        AS last
             FROM members m WHERE m.merged_into IS NULL)
         WHERE COALESCE(last, created_ms) < ?1
         ORDER BY COALESCE(last, created_ms), id LIMIT ?2",
    )?;
    let rows = statement.query_map((cutoff_ms, limit as i64), |row| {
        let id: String = row.get(0)?;
        Ok(DormantMember {
            id: Uuid::parse_str(&id).unwrap_or_default(),
            name: row.get(1)?,
            phone: row.get(2)?,
            created_ms: row.get(3)?,
            last_checkout_ms: row.get(4)?,
        })
    })?;
    rows.collect()
}

/// `POST /api/v1/members/{id}/feedback`
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFeedback {
    /// 1 (bad) to 5 (very good).
    pub rating: i64,
    /// What the member said (at most 500 characters; may be empty).
    #[serde(default)]
    pub text: String,
    /// The visit it is about: a checkout of this member known here.
    pub checkout_id: Option<Uuid>,
}

/// Record a feedback entry (an `OpV1::Feedback` operation, replicated like any other).
pub fn give_feedback(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    request: NewFeedback,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let (rating, text) = chainsync_core::feedback::check(request.rating, &request.text)
        .map_err(|e| ApiError::invalid_field(e.to_string()))?;
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    if let Some(checkout_id) = request.checkout_id {
        let buyer: Option<Option<String>> = conn
            .query_row(
                "SELECT member_id FROM sales WHERE id = ?1",
                [checkout_id.to_string()],
                |row| row.get(0),
            )
            .optional()?;
        let buyer = buyer
            .flatten()
            .and_then(|b| Uuid::parse_str(&b).ok())
            .map(|b| read::canonical_member(conn, b))
            .transpose()?
            .flatten();
        if buyer != Some(member_id) {
            return Err(ApiError::new(
                422,
                "unknown_checkout",
                "checkout_id is not a checkout of this member known at this store",
            ));
        }
    }
    let feedback = chainsync_core::feedback::Feedback {
        id: local.new_id(now_ms)?,
        member_id,
        rating,
        text,
        checkout_id: request.checkout_id,
        at_ms: now_ms,
    };
    let envelope = local.emit(
        conn,
        now_ms,
        chainsync_core::op::OpV1::Feedback(feedback.clone()),
    )?;
    chainsync_replica::program::project_feedback(conn, &feedback, &envelope.origin)?;
    Reply::new(
        201,
        &chainsync_replica::program::FeedbackView {
            id: feedback.id,
            member_id,
            rating,
            text: feedback.text,
            checkout_id: feedback.checkout_id,
            store_id: local.store.to_string(),
            created_ms: now_ms,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainsync_core::StoreId;
    use chainsync_core::rules::Rules;

    const day: u64 = 86_400_000;
    /// 2026-11-22 12:00 in UTC+8.
    const noon: u64 = 1_795_320_000_000;

    fn setup() -> anyhow::Result<(tempfile::TempDir, Connection, Local)> {
        let dir = tempfile::tempdir()?;
        let conn = crate::db::open_writer(&dir.path().join("store.db"))?;
        let local = Local::load(&conn, StoreId::parse("s1")?, Rules::default())?;
        Ok((dir, conn, local))
    }

    fn register(
        conn: &Connection,
        local: &mut Local,
        phone: &str,
        birthday: &str,
    ) -> anyhow::Result<Uuid> {
        let request = serde_json::from_value(serde_json::json!({
            "name": "会员", "phone": phone, "birthday": birthday,
        }))?;
        let reply = crate::commands::register_member(conn, local, request, noon - 30 * day)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        Ok(serde_json::from_value(reply.body["id"].clone())?)
    }

    #[test]
    fn seven_days_in_a_row_earn_the_streak_reward_once_a_day() -> anyhow::Result<()> {
        let (_dir, conn, mut local) = setup()?;
        let member = register(&conn, &mut local, "13900000201", "1990-01-01")?;
        let mut points = 0;
        for n in 0..8u64 {
            let at = noon + n * day;
            let reply =
                check_in(&conn, &mut local, member, at).map_err(|e| anyhow::anyhow!(e.message))?;
            let streak = reply.body["streak"].as_u64().unwrap_or(0);
            assert_eq!(streak, n + 1);
            let reward = reply.body["streak_reward_points"].as_i64().unwrap_or(-1);
            assert_eq!(
                reward,
                if n == 6 {
                    rules::streak_reward_points
                } else {
                    0
                }
            );
            points += rules::checkin_points + reward;
            assert_eq!(reply.body["points"].as_i64(), Some(points));
            // The same day again (a few hours later) is refused.
            let again = check_in(&conn, &mut local, member, at + 3_600_000);
            assert_eq!(again.err().map(|e| e.code), Some("already_checked_in"));
        }
        // A day missed: the streak starts over.
        let reply = check_in(&conn, &mut local, member, noon + 9 * day)
            .map_err(|e| anyhow::anyhow!(e.message))?;
        assert_eq!(reply.body["streak"].as_u64(), Some(1));
        let queued: i64 = conn.query_row(
            "SELECT COUNT(*) FROM outbox WHERE kind = 'check_in'",
            [],
            |r| r.get(0),
        )?;
        assert_eq!(queued, 9);
        Ok(())
    }

    #[test]
    fn birthday_greetings_are_queued_once_a_year() -> anyhow::Result<()> {
        let (_dir, conn, mut local) = setup()?;
        let today = register(&conn, &mut local, "13900000202", "1990-11-22")?;
        register(&conn, &mut local, "13900000203", "1990-11-23")?;
        let run = |local: &mut Local, at: u64| {
            run_daily(&conn, local, at)
                .map(|r| r.body["birthday_greetings"].as_u64())
                .map_err(|e| anyhow::anyhow!(e.message))
        };
        assert_eq!(run(&mut local, noon)?, Some(1));
        assert_eq!(run(&mut local, noon + 3_600_000)?, Some(0));
        let ids: Vec<String> = conn
            .prepare("SELECT id FROM outbox WHERE kind = 'birthday_greeting'")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        assert_eq!(ids, vec![format!("birthday:{today}:2026")]);
        // A year later: greeted again.
        assert_eq!(run(&mut local, noon + 365 * day)?, Some(1));
        Ok(())
    }

    #[test]
    fn dormant_members_have_no_recent_checkout() -> anyhow::Result<()> {
        let (_dir, conn, mut local) = setup()?;
        let member = register(&conn, &mut local, "13900000204", "1990-01-01")?;
        let now = noon as i64;
        let listed = dormant(&conn, now - 10 * day as i64, 10)?;
        assert_eq!(
            listed.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![member]
        );
        assert!(dormant(&conn, now - 40 * day as i64, 10)?.is_empty());
        Ok(())
    }

    fn points_of(conn: &Connection, member: Uuid) -> anyhow::Result<i64> {
        Ok(conn.query_row(
            "SELECT points FROM member_balances WHERE member_id = ?1",
            [member.to_string()],
            |r| r.get(0),
        )?)
    }

    fn expiry_amount(conn: &Connection, member: Uuid, year: i32) -> anyhow::Result<Vec<i64>> {
        let id = chainsync_core::id::derived_id(&points_expiry::expiry_key(member, year));
        Ok(conn
            .prepare("SELECT amount FROM ledger WHERE id = ?1")?
            .query_map([id.to_string()], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?)
    }

    /// A spend from another store, dated `at_ms`, arriving by sync.
    fn relayed_spend(
        conn: &Connection,
        local: &mut Local,
        member: Uuid,
        seq: u64,
        at_ms: u64,
        points: i64,
        now_ms: u64,
    ) -> anyhow::Result<ExpiryRun> {
        use chainsync_core::hlc::HlcTimestamp;
        use chainsync_core::ledger::LedgerEntry;
        use chainsync_core::op::{Envelope, Op};
        let origin = StoreId::parse("s2")?;
        let hlc = HlcTimestamp {
            wall_ms: at_ms,
            counter: 0,
        };
        let entry = LedgerEntry {
            id: Uuid::from_u128(0xabc0 + u128::from(seq)),
            origin: origin.clone(),
            seq,
            hlc,
            member_id: member,
            kind: EntryKind::PointsRedeem,
            account: Account::Points,
            amount: -points,
            checkout_id: None,
            reason: None,
            rule_version: 1,
        };
        let envelope = Envelope {
            origin,
            seq,
            hlc,
            op: Op::V1(OpV1::Ledger(entry.clone())),
        };
        chainsync_replica::project::apply_remote(conn, &local.store, &envelope)?;
        revise_expiries_after_relay(conn, local, &[&entry], now_ms)
            .map_err(|e| anyhow::anyhow!(e.message))
    }

    /// This year's points expire at its end (UTC+8): the reminder is queued once in the 40
    /// days before; at the deadline one entry takes what is left, once however often the run
    /// repeats; a spend dated before the deadline that arrives afterwards (made at a store cut
    /// off) revises the same entry down, to 0 when it took everything, and the balance stays
    /// the sum of the entries.
    #[test]
    fn points_expire_once_and_a_late_earlier_spend_revises_the_expiry() -> anyhow::Result<()> {
        let policy = points_expiry::PointsExpiryPolicy {
            years_kept: 0,
            utc_offset_seconds: 8 * 3_600,
            remind_days_before: 40,
        };
        let (_dir, conn, mut local) = setup()?;
        local.rules.points_expiry = Some(policy.clone());
        let member = register(&conn, &mut local, "13900000205", "1990-01-01")?;
        for n in 0..3u64 {
            check_in(&conn, &mut local, member, noon + n * day)
                .map_err(|e| anyhow::anyhow!(e.message))?;
        }
        assert_eq!(points_of(&conn, member)?, 30);
        let deadline = policy
            .deadline_ms(2026)
            .ok_or_else(|| anyhow::anyhow!("deadline"))?;
        let run = |local: &mut Local, at: u64| {
            expire_points(&conn, local, at).map_err(|e| anyhow::anyhow!(e.message))
        };
        let early = run(&mut local, deadline - 41 * day)?;
        assert_eq!(early.points_expiry_reminders, 0);
        assert_eq!(
            run(&mut local, deadline - 20 * day)?.points_expiry_reminders,
            1
        );
        assert_eq!(
            run(&mut local, deadline - 19 * day)?.points_expiry_reminders,
            0
        );
        let body: String = conn.query_row(
            "SELECT body FROM outbox WHERE id = ?1",
            [points_expiry::reminder_message_id(member, 2026)],
            |r| r.get(0),
        )?;
        let body: serde_json::Value = serde_json::from_str(&body)?;
        assert_eq!(body["points"], 30);
        assert_eq!(body["last_day"], "2026-12-31");
        assert_eq!(body["expires_at_ms"], deadline);
        assert_eq!(run(&mut local, deadline - 1)?.points_expired_entries, 0);

        let expired = run(&mut local, deadline + 3_600_000)?;
        assert_eq!(expired.points_expired_entries, 1);
        assert_eq!(points_of(&conn, member)?, 0);
        let again = run(&mut local, deadline + 2 * 3_600_000)?;
        assert_eq!(
            (again.points_expired_entries, again.points_expiry_revisions),
            (0, 0)
        );
        assert_eq!(expiry_amount(&conn, member, 2026)?, vec![-30]);

        // A 20-point spend made before the deadline arrives now: 10 points were left.
        let now = deadline + 3 * 3_600_000;
        let revised = relayed_spend(&conn, &mut local, member, 1, deadline - day, 20, now)?;
        assert_eq!(revised.points_expiry_revisions, 1);
        assert_eq!(expiry_amount(&conn, member, 2026)?, vec![-10]);
        assert_eq!(points_of(&conn, member)?, 0);
        // A spend after the deadline revises nothing (it overdraws: the hub's exceptions).
        let after = relayed_spend(&conn, &mut local, member, 2, deadline + 1, 5, now)?;
        assert_eq!(after.points_expiry_revisions, 0);
        assert_eq!(points_of(&conn, member)?, -5);
        // The rest of the points spent before the deadline too: the expiry is revised to 0.
        let all = relayed_spend(&conn, &mut local, member, 3, deadline - 1, 10, now)?;
        assert_eq!(all.points_expiry_revisions, 1);
        assert_eq!(expiry_amount(&conn, member, 2026)?, vec![0]);
        assert_eq!(points_of(&conn, member)?, -5);
        let settled = run(&mut local, now + day)?;
        assert_eq!(
            (
                settled.points_expired_entries,
                settled.points_expiry_revisions
            ),
            (0, 0)
        );
        let sum: i64 = conn.query_row(
            "SELECT SUM(amount) FROM ledger WHERE member_id = ?1 AND account = 'points'",
            [member.to_string()],
            |r| r.get(0),
        )?;
        assert_eq!(sum, points_of(&conn, member)?);
        Ok(())
    }
}

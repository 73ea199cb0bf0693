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
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;
use std::collections::BTreeSet;
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

/// `POST /api/v1/engagement/run`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EngagementRunView {
    /// The store's calendar day, `YYYY-MM-DD`.
    pub date: String,
    /// Birthday greetings queued now (members greeted before this year are not counted).
    pub birthday_greetings: usize,
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
    Reply::new(
        200,
        &EngagementRunView {
            date: rules::format_date(today),
            birthday_greetings: queued,
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
}

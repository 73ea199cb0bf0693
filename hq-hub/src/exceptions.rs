//! The exception queue: after each merge, members below zero and coupons redeemed twice
//! become (or update) an open exception. HQ resolves them with a note; nothing is rolled back.

use chainsync_core::StoreId;
use chainsync_core::exceptions::{Finding, coupon_finding, member_findings};
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::ledger::{Account, EntryKind, LedgerEntry};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

fn kind_of(text: &str) -> Option<EntryKind> {
    Some(match text {
        "recharge_principal" => EntryKind::RechargePrincipal,
        "recharge_bonus" => EntryKind::RechargeBonus,
        "spend" => EntryKind::Spend,
        "refund" => EntryKind::Refund,
        "points_earn" => EntryKind::PointsEarn,
        "points_redeem" => EntryKind::PointsRedeem,
        "points_adjust" => EntryKind::PointsAdjust,
        "points_reverse" => EntryKind::PointsReverse,
        "stored_value_adjust" => EntryKind::StoredValueAdjust,
        "points_reward" => EntryKind::PointsReward,
        _ => return None,
    })
}

fn account_of(text: &str) -> Option<Account> {
    Some(match text {
        "principal" => Account::Principal,
        "bonus" => Account::Bonus,
        "points" => Account::Points,
        _ => return None,
    })
}

/// Every ledger entry of a member's group, as core entries.
fn group_entries(conn: &Connection, canonical: Uuid) -> rusqlite::Result<Vec<LedgerEntry>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, origin, seq, hlc_wall_ms, hlc_counter, member_id, kind, account, amount
         FROM ledger WHERE member_id IN (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)
            OR member_id = ?1",
    )?;
    let mut rows = statement.query([canonical.to_string()])?;
    let mut entries = Vec::new();
    while let Some(row) = rows.next()? {
        let (id, origin, member): (String, String, String) =
            (row.get(0)?, row.get(1)?, row.get(5)?);
        let (kind, account): (String, String) = (row.get(6)?, row.get(7)?);
        let (Ok(id), Ok(origin), Ok(member), Some(kind), Some(account)) = (
            Uuid::parse_str(&id),
            StoreId::parse(&origin),
            Uuid::parse_str(&member),
            kind_of(&kind),
            account_of(&account),
        ) else {
            continue;
        };
        entries.push(LedgerEntry {
            id,
            origin,
            seq: row.get::<_, i64>(2)?.max(0) as u64,
            hlc: HlcTimestamp {
                wall_ms: row.get::<_, i64>(3)?.max(0) as u64,
                counter: row.get(4)?,
            },
            member_id: member,
            kind,
            account,
            amount: row.get(8)?,
            checkout_id: None,
            reason: None,
            rule_version: 0,
        });
    }
    Ok(entries)
}

fn upsert(
    conn: &Connection,
    subject: &str,
    finding: &Finding,
    now_ms: u64,
) -> rusqlite::Result<()> {
    let stores: Vec<&str> = finding.stores.iter().map(StoreId::as_str).collect();
    let entries: Vec<String> = finding.entries.iter().map(Uuid::to_string).collect();
    conn.prepare_cached(
        "INSERT INTO exceptions (kind, subject, member_id, coupon_code, stores, entries, amount,
             created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)
         ON CONFLICT (kind, subject) WHERE resolved_ms IS NULL DO UPDATE SET
             stores = excluded.stores, entries = excluded.entries, amount = excluded.amount,
             updated_ms = excluded.updated_ms",
    )?
    .execute(params![
        finding.kind.as_str(),
        subject,
        finding.member_id.map(|id| id.to_string()),
        finding.coupon_code,
        serde_json::to_string(&stores).unwrap_or_default(),
        serde_json::to_string(&entries).unwrap_or_default(),
        finding.amount,
        now_ms as i64,
    ])?;
    Ok(())
}

/// Re-check a member (any id of its group) and record what is found.
pub fn refresh_member(conn: &Connection, member: Uuid, now_ms: u64) -> rusqlite::Result<()> {
    // The cached balances are the sums of the group's entries: only a group below zero can
    // have a finding, and only then are its entries read.
    let below_zero: Option<String> = conn
        .prepare_cached(
            "WITH canonical AS (SELECT COALESCE(merged_into, id) AS id FROM members WHERE id = ?1)
             SELECT canonical.id FROM canonical, members, member_balances b
             WHERE (members.id = canonical.id OR members.merged_into = canonical.id)
                 AND b.member_id = members.id
             GROUP BY canonical.id
             HAVING SUM(b.principal_fen + b.bonus_fen) < 0 OR SUM(b.points) < 0",
        )?
        .query_row([member.to_string()], |row| row.get(0))
        .optional()?;
    let Some(canonical) = below_zero.and_then(|id| Uuid::parse_str(&id).ok()) else {
        return Ok(());
    };
    let entries = group_entries(conn, canonical)?;
    for finding in member_findings(canonical, &entries) {
        upsert(conn, &canonical.to_string(), &finding, now_ms)?;
    }
    Ok(())
}

/// Re-check a coupon code and record a double redemption.
pub fn refresh_coupon(conn: &Connection, code: &str, now_ms: u64) -> rusqlite::Result<()> {
    let mut statement =
        conn.prepare_cached("SELECT id, origin FROM coupon_redemptions WHERE code = ?1")?;
    let rows = statement.query_map([code], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut redemptions = Vec::new();
    for row in rows {
        let (id, origin) = row?;
        if let (Ok(id), Ok(origin)) = (Uuid::parse_str(&id), StoreId::parse(&origin)) {
            redemptions.push((id, origin));
        }
    }
    if let Some(finding) = coupon_finding(code, &redemptions) {
        upsert(conn, code, &finding, now_ms)?;
    }
    Ok(())
}

/// Re-check a count card and record an overuse (more live uses than the card has).
pub fn refresh_count_card(conn: &Connection, card: Uuid, now_ms: u64) -> rusqlite::Result<()> {
    let found: Option<(String, u32)> = conn
        .prepare_cached("SELECT member_id, uses FROM count_cards WHERE id = ?1")?
        .query_row([card.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((member, uses)) = found else {
        return Ok(());
    };
    let Ok(member) = Uuid::parse_str(&member) else {
        return Ok(());
    };
    let mut statement = conn.prepare_cached(
        "SELECT id, origin FROM count_card_uses u WHERE card_id = ?1
            AND NOT EXISTS (SELECT 1 FROM count_card_use_reversals r WHERE r.use_id = u.id)",
    )?;
    let rows = statement.query_map([card.to_string()], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut live = Vec::new();
    for row in rows {
        let (id, origin) = row?;
        if let (Ok(id), Ok(origin)) = (Uuid::parse_str(&id), StoreId::parse(&origin)) {
            live.push((id, origin));
        }
    }
    if let Some(finding) = chainsync_core::count_card::overuse_finding(card, member, uses, &live) {
        upsert(conn, &card.to_string(), &finding, now_ms)?;
    }
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExceptionView {
    pub id: i64,
    /// negative_balance | negative_points | double_redemption | count_card_overuse
    pub kind: String,
    pub member_id: Option<String>,
    pub coupon_code: Option<String>,
    pub stores: Vec<String>,
    /// Ledger entries or redemptions involved.
    pub entries: Vec<String>,
    /// 分 or points below zero, or redemptions too many.
    pub amount: i64,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub resolved: bool,
    pub resolved_ms: Option<u64>,
    pub resolved_by: Option<String>,
    pub resolution_note: Option<String>,
}

pub fn list(conn: &Connection, include_resolved: bool) -> rusqlite::Result<Vec<ExceptionView>> {
    let mut statement = conn.prepare(
        "SELECT id, kind, member_id, coupon_code, stores, entries, amount, created_ms, updated_ms,
                resolved_ms, resolved_by, resolution_note
         FROM exceptions WHERE ?1 OR resolved_ms IS NULL ORDER BY id DESC LIMIT 1000",
    )?;
    let rows = statement.query_map([include_resolved], |row| {
        let stores: String = row.get(4)?;
        let entries: String = row.get(5)?;
        let resolved_ms: Option<i64> = row.get(9)?;
        Ok(ExceptionView {
            id: row.get(0)?,
            kind: row.get(1)?,
            member_id: row.get(2)?,
            coupon_code: row.get(3)?,
            stores: serde_json::from_str(&stores).unwrap_or_default(),
            entries: serde_json::from_str(&entries).unwrap_or_default(),
            amount: row.get(6)?,
            created_ms: row.get::<_, i64>(7)?.max(0) as u64,
            updated_ms: row.get::<_, i64>(8)?.max(0) as u64,
            resolved: resolved_ms.is_some(),
            resolved_ms: resolved_ms.map(|v| v.max(0) as u64),
            resolved_by: row.get(10)?,
            resolution_note: row.get(11)?,
        })
    })?;
    rows.collect()
}

//! Report indexes kept by the hub's projection: per-member visit/spend statistics, one row
//! per canonical member with the fields people search on, and per day × store sales
//! aggregates. They are maintained only when an operation is applied for the first time (the
//! projection reports whether it was new), so an operation applied twice counts once. Member
//! merges (`merged_into`) are followed: statistics are kept per member id and summed over the
//! canonical member's group whenever the group or its statistics change.

use chainsync_core::member::Profile;
use chainsync_core::op::{Envelope, Op, OpV1, RefundRecord, SaleRecord};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::day_of;

/// The hub's report tables (a hub migration).
pub const schema_v1: &str = r#"
-- Visits (sales) and net spend per member id, as sold (before merging).
CREATE TABLE report_member_stats (
    member_id TEXT PRIMARY KEY,
    visits INTEGER NOT NULL DEFAULT 0,
    spend_fen INTEGER NOT NULL DEFAULT 0,
    first_visit_ms INTEGER,
    last_visit_ms INTEGER
) WITHOUT ROWID;

-- One row per canonical member: its group's statistics and searchable profile fields.
CREATE TABLE report_members (
    member_id TEXT PRIMARY KEY,
    home_store TEXT NOT NULL,
    birthday_month INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    visits INTEGER NOT NULL,
    spend_fen INTEGER NOT NULL,
    first_visit_ms INTEGER,
    last_visit_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX report_members_home ON report_members (home_store, spend_fen);
CREATE INDEX report_members_visits ON report_members (visits);
CREATE INDEX report_members_spend ON report_members (spend_fen);
CREATE INDEX report_members_last_visit ON report_members (last_visit_ms);
CREATE INDEX report_members_created ON report_members (created_ms);
CREATE INDEX report_members_birthday ON report_members (birthday_month);

CREATE TABLE report_member_tags (
    tag TEXT NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (tag, member_id)
) WITHOUT ROWID;
CREATE INDEX report_member_tags_member ON report_member_tags (member_id);

-- Sales per day (China time) x store x member/non-member x tier at the time of the sale.
-- Refunds count on the day and at the store of the refund.
CREATE TABLE report_daily (
    day INTEGER NOT NULL,
    store TEXT NOT NULL,
    member INTEGER NOT NULL,
    tier TEXT NOT NULL,
    orders INTEGER NOT NULL DEFAULT 0,
    sales_fen INTEGER NOT NULL DEFAULT 0,
    refunds INTEGER NOT NULL DEFAULT 0,
    refund_fen INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, store, member, tier)
) WITHOUT ROWID;

-- Sale lines per day x store x member/non-member x product (categories are looked up when
-- reporting, so a product's category can arrive or change later).
CREATE TABLE report_daily_sku (
    day INTEGER NOT NULL,
    store TEXT NOT NULL,
    member INTEGER NOT NULL,
    sku TEXT NOT NULL,
    qty INTEGER NOT NULL DEFAULT 0,
    amount_fen INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (day, store, member, sku)
) WITHOUT ROWID;

-- Which member bought at which store on which day (daily active members).
CREATE TABLE report_member_day (
    day INTEGER NOT NULL,
    member_id TEXT NOT NULL,
    store TEXT NOT NULL,
    PRIMARY KEY (day, member_id, store)
) WITHOUT ROWID;

-- Window scans for segmentation, tiers and top customers read only this index.
CREATE INDEX report_sales_window ON sales (at_ms, member_id, total_fen, refunded_fen);
"#;

/// What must be refreshed after an operation is applied, read before it is applied.
#[derive(Default)]
pub struct Before {
    /// Members that shared a phone with the changed member before the change.
    members: Vec<String>,
}

/// Read what the operation may change (call before applying it).
pub fn before_apply(conn: &Connection, envelope: &Envelope) -> rusqlite::Result<Before> {
    let Op::V1(OpV1::MemberChange { member_id, .. }) = &envelope.op else {
        return Ok(Before::default());
    };
    let mut statement = conn.prepare_cached(
        "SELECT id FROM members WHERE phone = (SELECT phone FROM members WHERE id = ?1)",
    )?;
    let members = statement
        .query_map([member_id.to_string()], |row| row.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Before { members })
}

/// Update the report tables for an operation that was just applied for the first time.
pub fn after_apply(conn: &Connection, envelope: &Envelope, before: Before) -> rusqlite::Result<()> {
    match &envelope.op {
        Op::V1(OpV1::Sale(sale)) => on_sale(conn, sale, envelope.origin.as_str()),
        Op::V1(OpV1::SaleRefund(refund)) => on_refund(conn, refund, envelope.origin.as_str()),
        Op::V1(OpV1::Ledger(entry)) => crate::audit::record_store_adjustment(conn, entry),
        Op::V1(OpV1::MemberChange { member_id, .. }) => {
            let mut ids = before.members;
            let id = member_id.to_string();
            let mut statement = conn.prepare_cached(
                "SELECT id FROM members WHERE phone = (SELECT phone FROM members WHERE id = ?1)",
            )?;
            for same_phone in statement.query_map([&id], |row| row.get::<_, String>(0))? {
                ids.push(same_phone?);
            }
            ids.push(id);
            ids.sort();
            ids.dedup();
            for id in ids {
                refresh_member(conn, &id, true)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A sale applied for the first time.
pub fn on_sale(conn: &Connection, sale: &SaleRecord, store: &str) -> rusqlite::Result<()> {
    sale_applied(conn, sale, store, true)
}

/// `early_refunds`: refunds of this sale already counted (without its tier) get its tier.
fn sale_applied(
    conn: &Connection,
    sale: &SaleRecord,
    store: &str,
    early_refunds: bool,
) -> rusqlite::Result<()> {
    let day = day_of(sale.at_ms);
    let member = i64::from(sale.member_id.is_some());
    let tier = if sale.member_id.is_some() {
        sale.tier.as_str()
    } else {
        ""
    };
    conn.prepare_cached(
        "INSERT INTO report_daily (day, store, member, tier, orders, sales_fen)
         VALUES (?1, ?2, ?3, ?4, 1, ?5)
         ON CONFLICT (day, store, member, tier) DO UPDATE SET
             orders = orders + 1, sales_fen = sales_fen + excluded.sales_fen",
    )?
    .execute(params![day, store, member, tier, sale.total.0])?;
    let mut lines = conn.prepare_cached(
        "INSERT INTO report_daily_sku (day, store, member, sku, qty, amount_fen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (day, store, member, sku) DO UPDATE SET
             qty = qty + excluded.qty, amount_fen = amount_fen + excluded.amount_fen",
    )?;
    for line in &sale.lines {
        lines.execute(params![
            day,
            store,
            member,
            line.sku,
            line.qty,
            line.amount.0
        ])?;
    }
    if early_refunds && sale.member_id.is_some() && !tier.is_empty() {
        move_early_refunds(conn, sale, tier)?;
    }
    let Some(member_id) = sale.member_id else {
        return Ok(());
    };
    let id = member_id.to_string();
    conn.prepare_cached(
        "INSERT OR IGNORE INTO report_member_day (day, member_id, store) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![day, id, store])?;
    let at = sale.at_ms as i64;
    conn.prepare_cached(
        "INSERT INTO report_member_stats (member_id, visits, spend_fen, first_visit_ms,
             last_visit_ms)
         VALUES (?1, 1, ?2, ?3, ?3)
         ON CONFLICT (member_id) DO UPDATE SET visits = visits + 1,
             spend_fen = spend_fen + excluded.spend_fen,
             first_visit_ms = MIN(COALESCE(first_visit_ms, excluded.first_visit_ms),
                                  excluded.first_visit_ms),
             last_visit_ms = MAX(COALESCE(last_visit_ms, excluded.last_visit_ms),
                                 excluded.last_visit_ms)",
    )?
    .execute(params![id, sale.total.0, at])?;
    refresh_member(conn, &id, false)
}

/// Refunds of this sale that arrived before it were counted without a tier: move them.
fn move_early_refunds(conn: &Connection, sale: &SaleRecord, tier: &str) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(
        "SELECT at_ms, origin, amount_fen, member_id IS NOT NULL FROM refunds WHERE sale_id = ?1",
    )?;
    let early = statement
        .query_map([sale.id.to_string()], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (at_ms, store, amount, member) in early {
        let day = day_of(at_ms.max(0) as u64);
        conn.prepare_cached(
            "UPDATE report_daily SET refunds = refunds - 1, refund_fen = refund_fen - ?5
             WHERE day = ?1 AND store = ?2 AND member = ?3 AND tier = ?4",
        )?
        .execute(params![day, store, member, "", amount])?;
        conn.prepare_cached(
            "INSERT INTO report_daily (day, store, member, tier, refunds, refund_fen)
             VALUES (?1, ?2, ?3, ?4, 1, ?5)
             ON CONFLICT (day, store, member, tier) DO UPDATE SET
                 refunds = refunds + 1, refund_fen = refund_fen + excluded.refund_fen",
        )?
        .execute(params![day, store, member, tier, amount])?;
    }
    Ok(())
}

/// A refund applied for the first time.
pub fn on_refund(conn: &Connection, refund: &RefundRecord, store: &str) -> rusqlite::Result<()> {
    let body: Option<Vec<u8>> = conn
        .prepare_cached("SELECT body FROM sales WHERE id = ?1")?
        .query_row([refund.sale_id.to_string()], |row| row.get(0))
        .optional()?;
    let tier = body
        .and_then(|body| postcard::from_bytes::<SaleRecord>(&body).ok())
        .filter(|sale| sale.member_id.is_some())
        .map(|sale| sale.tier)
        .unwrap_or_default();
    let member = i64::from(refund.member_id.is_some());
    conn.prepare_cached(
        "INSERT INTO report_daily (day, store, member, tier, refunds, refund_fen)
         VALUES (?1, ?2, ?3, ?4, 1, ?5)
         ON CONFLICT (day, store, member, tier) DO UPDATE SET
             refunds = refunds + 1, refund_fen = refund_fen + excluded.refund_fen",
    )?
    .execute(params![
        day_of(refund.at_ms),
        store,
        member,
        tier,
        refund.amount.0
    ])?;
    let Some(member_id) = refund.member_id else {
        return Ok(());
    };
    let id = member_id.to_string();
    conn.prepare_cached(
        "INSERT INTO report_member_stats (member_id, spend_fen) VALUES (?1, ?2)
         ON CONFLICT (member_id) DO UPDATE SET spend_fen = spend_fen + excluded.spend_fen",
    )?
    .execute(params![id, -refund.amount.0])?;
    refresh_member(conn, &id, false)
}

/// Bring the canonical row of `id`'s group up to date (and drop `id`'s own row if it was
/// merged into another member). `profile` also refreshes home store, birthday and tags.
pub fn refresh_member(conn: &Connection, id: &str, profile: bool) -> rusqlite::Result<()> {
    let merged_into: Option<Option<String>> = conn
        .prepare_cached("SELECT merged_into FROM members WHERE id = ?1")?
        .query_row([id], |row| row.get(0))
        .optional()?;
    let canonical = match merged_into {
        None => return Ok(()),
        Some(Some(canonical)) => {
            conn.prepare_cached("DELETE FROM report_members WHERE member_id = ?1")?
                .execute([id])?;
            conn.prepare_cached("DELETE FROM report_member_tags WHERE member_id = ?1")?
                .execute([id])?;
            canonical
        }
        Some(None) => id.to_owned(),
    };
    refresh_canonical(conn, &canonical, profile)
}

fn refresh_canonical(conn: &Connection, canonical: &str, profile: bool) -> rusqlite::Result<()> {
    let (visits, spend, first, last): (i64, i64, Option<i64>, Option<i64>) = conn
        .prepare_cached(
            "SELECT COALESCE(SUM(visits), 0), COALESCE(SUM(spend_fen), 0), MIN(first_visit_ms),
                    MAX(last_visit_ms)
             FROM report_member_stats WHERE member_id IN
                 (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)",
        )?
        .query_row([canonical], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?;
    if !profile {
        let updated = conn
            .prepare_cached(
                "UPDATE report_members SET visits = ?2, spend_fen = ?3, first_visit_ms = ?4,
                     last_visit_ms = ?5 WHERE member_id = ?1",
            )?
            .execute(params![canonical, visits, spend, first, last])?;
        if updated == 1 {
            return Ok(());
        }
    }
    let found: Option<(String, i64)> = conn
        .prepare_cached(
            "SELECT profile_json, created_ms FROM members WHERE id = ?1 AND merged_into IS NULL",
        )?
        .query_row([canonical], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let Some((profile_json, created_ms)) = found else {
        return Ok(());
    };
    let profile: Profile = serde_json::from_str(&profile_json).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO report_members (member_id, home_store, birthday_month, created_ms, visits,
             spend_fen, first_visit_ms, last_visit_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (member_id) DO UPDATE SET home_store = excluded.home_store,
             birthday_month = excluded.birthday_month, created_ms = excluded.created_ms,
             visits = excluded.visits, spend_fen = excluded.spend_fen,
             first_visit_ms = excluded.first_visit_ms, last_visit_ms = excluded.last_visit_ms",
    )?
    .execute(params![
        canonical,
        profile.home_store.clone().unwrap_or_default(),
        birthday_month(profile.birthday.as_deref()),
        created_ms,
        visits,
        spend,
        first,
        last
    ])?;
    conn.prepare_cached("DELETE FROM report_member_tags WHERE member_id = ?1")?
        .execute([canonical])?;
    let mut insert = conn.prepare_cached(
        "INSERT OR IGNORE INTO report_member_tags (tag, member_id) VALUES (?1, ?2)",
    )?;
    for tag in &profile.tags {
        insert.execute(params![tag, canonical])?;
    }
    Ok(())
}

/// 1 to 12 from `YYYY-MM-DD`; 0 when unknown.
pub fn birthday_month(birthday: Option<&str>) -> i64 {
    birthday
        .and_then(|text| text.get(5..7))
        .and_then(|month| month.parse::<i64>().ok())
        .filter(|month| (1..=12).contains(month))
        .unwrap_or(0)
}

/// Members merged into another one: id → canonical id (a small set: same-phone duplicates).
pub fn merged_members(
    conn: &Connection,
) -> rusqlite::Result<std::collections::HashMap<Uuid, Uuid>> {
    let mut statement =
        conn.prepare_cached("SELECT id, merged_into FROM members WHERE merged_into IS NOT NULL")?;
    let rows = statement.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut map = std::collections::HashMap::new();
    for row in rows {
        let (id, canonical) = row?;
        if let (Ok(id), Ok(canonical)) = (Uuid::parse_str(&id), Uuid::parse_str(&canonical)) {
            map.insert(id, canonical);
        }
    }
    Ok(map)
}

/// Marks that the report tables cover everything projected before they existed.
const built_meta_key: &str = "report_index_v1";

/// Fill the report tables from what the database already holds, once (a hub that ran before
/// the report tables existed). Afterwards the projection keeps them up to date.
pub fn build_once(conn: &mut Connection) -> rusqlite::Result<()> {
    let built: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = ?1",
            [built_meta_key],
            |row| row.get(0),
        )
        .optional()?;
    if built.is_some() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    for table in [
        "report_member_stats",
        "report_members",
        "report_member_tags",
        "report_daily",
        "report_daily_sku",
        "report_member_day",
    ] {
        tx.execute(&format!("DELETE FROM {table}"), [])?;
    }
    {
        let mut sales = tx.prepare("SELECT body, origin FROM sales ORDER BY at_ms")?;
        let mut rows = sales.query([])?;
        while let Some(row) = rows.next()? {
            let body: Vec<u8> = row.get(0)?;
            let origin: String = row.get(1)?;
            if let Ok(sale) = postcard::from_bytes::<SaleRecord>(&body) {
                // Refunds are counted after all sales, each with its sale's tier.
                sale_applied(&tx, &sale, &origin, false)?;
            }
        }
        let mut refunds =
            tx.prepare("SELECT id, sale_id, member_id, origin, amount_fen, at_ms FROM refunds")?;
        let mut rows = refunds.query([])?;
        while let Some(row) = rows.next()? {
            let parse = |text: Option<String>| text.and_then(|t| Uuid::parse_str(&t).ok());
            let (Some(id), Some(sale_id)) = (parse(row.get(0)?), parse(row.get(1)?)) else {
                continue;
            };
            let refund = RefundRecord {
                id,
                sale_id,
                member_id: parse(row.get(2)?),
                amount: chainsync_core::Fen(row.get(4)?),
                reason: None,
                at_ms: row.get::<_, i64>(5)?.max(0) as u64,
            };
            let origin: String = row.get(3)?;
            on_refund(&tx, &refund, &origin)?;
        }
        let mut members = tx.prepare("SELECT id FROM members")?;
        let ids = members
            .query_map([], |row| row.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        for id in ids {
            refresh_member(&tx, &id, true)?;
        }
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, '1')
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [built_meta_key],
    )?;
    tx.commit()
}

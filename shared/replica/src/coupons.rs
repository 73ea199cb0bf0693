//! Coupons at a replica: the rich templates (`CouponTemplateUpsertV2`, kept in the same
//! `coupon_templates` rows as the first version, last writer wins over both), issued coupons
//! with their channel and validity, transfers (the owner is a fold of a code's transfers, see
//! `chainsync_core::coupon::owner_after`), lottery wheels and draws; their JSON shapes.
//!
//! Merge laws: templates and wheels are last writer wins by (HLC, origin); a code issued twice
//! (a deterministic code decided at two stores) keeps the issue with the smallest (HLC,
//! origin); transfers and draws are grow-only sets. Each is a function of the set of
//! operations, whatever their order.

use chainsync_core::StoreId;
use chainsync_core::coupon::{
    ClaimPool, CouponInstance, CouponKind, CouponTemplateV2, CouponTransfer, Lottery, LotteryDraw,
    PoolScope, Prize, TimeWindow, Validity,
};
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::{Fen, limits};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::api::ApiError;

/// Rich coupons: template rules, instance validity and channel, owner after transfers,
/// transfers, lottery wheels and draws.
pub const schema_v1: &str = r#"
-- The whole template of the second version (JSON of CouponTemplateV2); NULL: first version.
ALTER TABLE coupon_templates ADD COLUMN rules_json TEXT;
ALTER TABLE coupon_templates ADD COLUMN spend_trigger_fen INTEGER;
ALTER TABLE coupon_templates ADD COLUMN active INTEGER NOT NULL DEFAULT 1;
ALTER TABLE coupons ADD COLUMN channel TEXT NOT NULL DEFAULT 'hq';
ALTER TABLE coupons ADD COLUMN issued_ms INTEGER;
ALTER TABLE coupons ADD COLUMN valid_from_ms INTEGER;
ALTER TABLE coupons ADD COLUMN valid_until_ms INTEGER;
ALTER TABLE coupons ADD COLUMN pool_store TEXT;
-- The owner after transfers (the first owner until a transfer takes effect).
ALTER TABLE coupons ADD COLUMN owner_id TEXT;
ALTER TABLE coupons ADD COLUMN hlc_wall_ms INTEGER;
ALTER TABLE coupons ADD COLUMN hlc_counter INTEGER;
UPDATE coupons SET owner_id = member_id;
CREATE INDEX coupons_owner ON coupons (owner_id);
CREATE INDEX coupons_template ON coupons (template_id);
CREATE INDEX coupons_valid_until ON coupons (valid_until_ms) WHERE valid_until_ms IS NOT NULL;

CREATE TABLE coupon_transfers (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL,
    from_member TEXT NOT NULL,
    to_member TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX coupon_transfers_code ON coupon_transfers (code);

CREATE TABLE lotteries (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    hlc_wall_ms INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE lottery_draws (
    id TEXT PRIMARY KEY,
    lottery_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    day TEXT NOT NULL,
    prize INTEGER,
    code TEXT,
    at_ms INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX lottery_draws_member ON lottery_draws (member_id, lottery_id, day);
"#;

/// Last writer wins, by (HLC, origin), over both template versions.
pub fn project_template_v2(
    conn: &Connection,
    template: &CouponTemplateV2,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let Some(incoming) = crate::lww::winning_stamp(
        conn,
        "coupon_templates",
        &template.id.to_string(),
        hlc,
        origin,
    )?
    else {
        return Ok(());
    };
    let value = match &template.kind {
        CouponKind::Cash { value } => value.0,
        _ => 0,
    };
    let body = serde_json::to_string(template).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO coupon_templates (id, name, value_fen, min_spend_fen, online_only,
             hlc_wall_ms, hlc_counter, origin, rules_json, spend_trigger_fen, active)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, value_fen = excluded.value_fen,
             min_spend_fen = excluded.min_spend_fen, online_only = excluded.online_only,
             hlc_wall_ms = excluded.hlc_wall_ms, hlc_counter = excluded.hlc_counter,
             origin = excluded.origin, rules_json = excluded.rules_json,
             spend_trigger_fen = excluded.spend_trigger_fen, active = excluded.active",
    )?
    .execute(params![
        template.id.to_string(),
        template.name,
        value,
        template.min_spend.0,
        template.online_only,
        incoming.0,
        incoming.1,
        incoming.2,
        body,
        template.issue_on_spend.map(|f| f.0),
        template.active,
    ])?;
    Ok(())
}

/// A code issued twice keeps the issue with the smallest (HLC, origin).
pub fn project_issue_v2(
    conn: &Connection,
    coupon: &CouponInstance,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let current: Option<(Option<i64>, Option<i64>, String)> = conn
        .prepare_cached("SELECT hlc_wall_ms, hlc_counter, origin FROM coupons WHERE code = ?1")?
        .query_row([&coupon.code], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let incoming = crate::lww::stamp(hlc, origin);
    if let Some((wall, counter, current_origin)) = current {
        match (wall, counter) {
            // A first-version issue of the same code (random codes: never in practice) stays.
            (None, _) | (_, None) => return Ok(()),
            (Some(wall), Some(counter)) => {
                if (wall, counter, current_origin) <= incoming {
                    return Ok(());
                }
            }
        }
    }
    conn.prepare_cached(
        "INSERT INTO coupons (code, template_id, member_id, origin, channel, issued_ms,
             valid_from_ms, valid_until_ms, pool_store, owner_id, hlc_wall_ms, hlc_counter)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?3, ?10, ?11)
         ON CONFLICT (code) DO UPDATE SET template_id = excluded.template_id,
             member_id = excluded.member_id, origin = excluded.origin,
             channel = excluded.channel, issued_ms = excluded.issued_ms,
             valid_from_ms = excluded.valid_from_ms, valid_until_ms = excluded.valid_until_ms,
             pool_store = excluded.pool_store, owner_id = excluded.owner_id,
             hlc_wall_ms = excluded.hlc_wall_ms, hlc_counter = excluded.hlc_counter",
    )?
    .execute(params![
        coupon.code,
        coupon.template_id.to_string(),
        coupon.member_id.map(|id| id.to_string()),
        origin.as_str(),
        coupon.channel.as_str(),
        coupon.issued_ms as i64,
        coupon.valid_from_ms as i64,
        coupon.valid_until_ms.min(i64::MAX as u64) as i64,
        coupon.pool_store,
        incoming.0,
        incoming.1,
    ])?;
    refresh_owner(conn, &coupon.code)
}

/// Recompute a code's owner from its first owner and every transfer held.
pub fn refresh_owner(conn: &Connection, code: &str) -> rusqlite::Result<()> {
    let first: Option<Option<String>> = conn
        .prepare_cached("SELECT member_id FROM coupons WHERE code = ?1")?
        .query_row([code], |row| row.get(0))
        .optional()?;
    let Some(first) = first else {
        return Ok(());
    };
    let first = first.and_then(|id| Uuid::parse_str(&id).ok());
    let transfers = transfers_of(conn, code)?;
    let (owner, _) = chainsync_core::coupon::owner_after(first, &transfers);
    conn.prepare_cached("UPDATE coupons SET owner_id = ?2 WHERE code = ?1")?
        .execute(params![code, owner.map(|id| id.to_string())])?;
    Ok(())
}

pub fn transfers_of(conn: &Connection, code: &str) -> rusqlite::Result<Vec<CouponTransfer>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, from_member, to_member, at_ms FROM coupon_transfers WHERE code = ?1",
    )?;
    let rows = statement.query_map([code], |row| {
        let id: String = row.get(0)?;
        let from: String = row.get(1)?;
        let to: String = row.get(2)?;
        Ok(CouponTransfer {
            id: Uuid::parse_str(&id).unwrap_or_default(),
            code: code.to_owned(),
            from_member: Uuid::parse_str(&from).unwrap_or_default(),
            to_member: Uuid::parse_str(&to).unwrap_or_default(),
            at_ms: row.get::<_, i64>(3)?.max(0) as u64,
        })
    })?;
    rows.collect()
}

pub fn project_transfer(
    conn: &Connection,
    transfer: &CouponTransfer,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO coupon_transfers (id, code, from_member, to_member, at_ms, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        transfer.id.to_string(),
        transfer.code,
        transfer.from_member.to_string(),
        transfer.to_member.to_string(),
        transfer.at_ms.min(i64::MAX as u64) as i64,
        origin.as_str(),
    ])?;
    refresh_owner(conn, &transfer.code)
}

pub fn project_lottery(
    conn: &Connection,
    lottery: &Lottery,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let Some(incoming) =
        crate::lww::winning_stamp(conn, "lotteries", &lottery.id.to_string(), hlc, origin)?
    else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT INTO lotteries (id, body, hlc_wall_ms, hlc_counter, origin)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body, hlc_wall_ms = excluded.hlc_wall_ms,
             hlc_counter = excluded.hlc_counter, origin = excluded.origin",
    )?
    .execute(params![
        lottery.id.to_string(),
        serde_json::to_string(lottery).unwrap_or_default(),
        incoming.0,
        incoming.1,
        incoming.2,
    ])?;
    Ok(())
}

pub fn project_draw(
    conn: &Connection,
    draw: &LotteryDraw,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO lottery_draws (id, lottery_id, member_id, day, prize, code, at_ms,
             origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        draw.id.to_string(),
        draw.lottery_id.to_string(),
        draw.member_id.to_string(),
        draw.day,
        draw.prize,
        draw.code,
        draw.at_ms.min(i64::MAX as u64) as i64,
        origin.as_str(),
    ])?;
    Ok(())
}

/// A template by id, either version (the first read as an unrestricted cash voucher).
pub fn template(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<CouponTemplateV2>> {
    let row: Option<(String, i64, i64, bool, Option<String>)> = conn
        .prepare_cached(
            "SELECT name, value_fen, min_spend_fen, online_only, rules_json
             FROM coupon_templates WHERE id = ?1",
        )?
        .query_row([id.to_string()], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    Ok(
        row.and_then(|(name, value, min_spend, online_only, rules)| match rules {
            Some(rules) => serde_json::from_str(&rules).ok(),
            None => Some(CouponTemplateV2::from_v1(
                &chainsync_core::op::CouponTemplate {
                    id,
                    name,
                    value: Fen(value),
                    min_spend: Fen(min_spend),
                    online_only,
                },
            )),
        }),
    )
}

/// Every template (id order).
pub fn templates(conn: &Connection) -> rusqlite::Result<Vec<CouponTemplateV2>> {
    let ids: Vec<String> = conn
        .prepare_cached("SELECT id FROM coupon_templates ORDER BY id")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Ok(id) = Uuid::parse_str(&id)
            && let Some(template) = template(conn, id)?
        {
            out.push(template);
        }
    }
    Ok(out)
}

pub fn lottery(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<Lottery>> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM lotteries WHERE id = ?1")?
        .query_row([id.to_string()], |row| row.get(0))
        .optional()?;
    Ok(body.and_then(|b| serde_json::from_str(&b).ok()))
}

pub fn lotteries(conn: &Connection) -> rusqlite::Result<Vec<Lottery>> {
    let bodies: Vec<String> = conn
        .prepare_cached("SELECT body FROM lotteries ORDER BY id")?
        .query_map([], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    Ok(bodies
        .iter()
        .filter_map(|b| serde_json::from_str(b).ok())
        .collect())
}

/// One issued coupon as the replica knows it.
#[derive(Clone, Debug)]
pub struct CouponRow {
    pub code: String,
    pub template_id: Uuid,
    /// The first owner.
    pub member_id: Option<Uuid>,
    /// The owner after transfers.
    pub owner_id: Option<Uuid>,
    pub channel: String,
    pub issued_ms: Option<u64>,
    pub valid_from_ms: u64,
    pub valid_until_ms: u64,
    pub redeemed: bool,
}

fn parse_uuid(text: Option<String>) -> Option<Uuid> {
    text.and_then(|t| Uuid::parse_str(&t).ok())
}

const coupon_columns: &str = "c.code, c.template_id, c.member_id, c.owner_id, c.channel,
    c.issued_ms, c.valid_from_ms, c.valid_until_ms,
    EXISTS (SELECT 1 FROM coupon_redemptions r WHERE r.code = c.code)";

fn coupon_row(row: &rusqlite::Row) -> rusqlite::Result<CouponRow> {
    let template: String = row.get(1)?;
    Ok(CouponRow {
        code: row.get(0)?,
        template_id: Uuid::parse_str(&template).unwrap_or_default(),
        member_id: parse_uuid(row.get(2)?),
        owner_id: parse_uuid(row.get(3)?),
        channel: row.get(4)?,
        issued_ms: row.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
        valid_from_ms: row.get::<_, Option<i64>>(6)?.unwrap_or(0).max(0) as u64,
        valid_until_ms: row
            .get::<_, Option<i64>>(7)?
            .map(|v| v.max(0) as u64)
            .unwrap_or(u64::MAX),
        redeemed: row.get(8)?,
    })
}

pub fn coupon(conn: &Connection, code: &str) -> rusqlite::Result<Option<CouponRow>> {
    conn.prepare_cached(&format!(
        "SELECT {coupon_columns} FROM coupons c WHERE c.code = ?1"
    ))?
    .query_row([code], coupon_row)
    .optional()
}

/// The coupons a member group owns now (after transfers), newest issue first.
pub fn coupons_of(conn: &Connection, group: &[Uuid]) -> rusqlite::Result<Vec<CouponRow>> {
    let mut out = Vec::new();
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {coupon_columns} FROM coupons c WHERE c.owner_id = ?1
         ORDER BY c.issued_ms DESC, c.code LIMIT 500"
    ))?;
    for member in group {
        let rows = statement.query_map([member.to_string()], coupon_row)?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

/// Redemptions of a template by the members of a group.
pub fn member_redemptions(
    conn: &Connection,
    template_id: Uuid,
    group: &[Uuid],
) -> rusqlite::Result<u32> {
    let mut total = 0u32;
    let mut statement = conn.prepare_cached(
        "SELECT COUNT(*) FROM coupon_redemptions r JOIN coupons c ON c.code = r.code
         WHERE c.template_id = ?1 AND r.member_id = ?2",
    )?;
    for member in group {
        let n: i64 = statement
            .query_row(params![template_id.to_string(), member.to_string()], |r| {
                r.get(0)
            })?;
        total = total.saturating_add(n.max(0) as u32);
    }
    Ok(total)
}

/// Coupons of a template issued to the members of a group (claims per member are capped by
/// the template's per-member limit).
pub fn member_issued(
    conn: &Connection,
    template_id: Uuid,
    group: &[Uuid],
) -> rusqlite::Result<u32> {
    let mut total = 0u32;
    let mut statement = conn
        .prepare_cached("SELECT COUNT(*) FROM coupons WHERE template_id = ?1 AND member_id = ?2")?;
    for member in group {
        let n: i64 = statement
            .query_row(params![template_id.to_string(), member.to_string()], |r| {
                r.get(0)
            })?;
        total = total.saturating_add(n.max(0) as u32);
    }
    Ok(total)
}

// ---- JSON shapes ----

/// A coupon template as HQ writes it (`POST /api/v1/coupon-templates`) and everyone reads it.
/// Amounts in 分, times in Unix ms, hours and weekdays in the store's local time.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    /// Replace this template (omit to create one).
    pub id: Option<Uuid>,
    pub name: String,
    /// `cash` (代金券, default), `discount` (折扣券) or `product` (商品券).
    pub kind: Option<String>,
    /// cash: the amount off.
    pub value_fen: Option<i64>,
    /// discount: whole percent off (1–99), e.g. 20 for 8折.
    pub percent_off: Option<u32>,
    /// discount: at most this much off (0 or absent: no cap).
    pub max_off_fen: Option<i64>,
    /// product: the SKU of which one unit is free.
    pub sku: Option<String>,
    #[serde(default)]
    pub min_spend_fen: i64,
    /// Validity by dates: from (inclusive) …
    pub valid_from_ms: Option<u64>,
    /// … until (exclusive).
    pub valid_until_ms: Option<u64>,
    /// Or validity of N days after issue.
    pub valid_days: Option<u32>,
    /// Stores where it may be used (absent or empty: every store).
    #[serde(default)]
    pub stores: Vec<String>,
    /// ISO weekdays it may be used on, 1 = Monday … 7 = Sunday (absent: every day).
    #[serde(default)]
    pub weekdays: Vec<u8>,
    /// Usable from this hour (0–23) …
    pub from_hour: Option<u8>,
    /// … until this hour (1–24, exclusive).
    pub until_hour: Option<u8>,
    /// Redemptions per member (0 or absent: no limit); also caps pool claims per member.
    #[serde(default)]
    pub per_member_limit: u32,
    /// May be combined with other coupons (default true).
    pub stackable: Option<bool>,
    #[serde(default)]
    pub online_only: bool,
    /// Issued by channels (default true).
    pub active: Option<bool>,
    /// A self-claim pool: `{"scope": "chain" | "store", "size": N}`.
    pub pool: Option<PoolInput>,
    /// 满X送Y: issue one to the member of a checkout whose total reaches this.
    pub issue_on_spend_fen: Option<i64>,
    #[serde(default)]
    pub issue_on_checkin_streak: bool,
    #[serde(default)]
    pub issue_on_birthday: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolInput {
    /// `chain` (one pool, claimed online only) or `store` (a pool per store, works offline).
    pub scope: String,
    pub size: u32,
}

/// What HQ asked for is plain: a first-version template is enough (stores one version older
/// can read it).
pub fn is_plain(input: &TemplateInput) -> bool {
    input.kind.as_deref().unwrap_or("cash") == "cash"
        && input.percent_off.is_none()
        && input.max_off_fen.is_none()
        && input.sku.is_none()
        && input.valid_from_ms.is_none()
        && input.valid_until_ms.is_none()
        && input.valid_days.is_none()
        && input.stores.is_empty()
        && input.weekdays.is_empty()
        && input.from_hour.is_none()
        && input.until_hour.is_none()
        && input.per_member_limit == 0
        && input.stackable.unwrap_or(true)
        && input.active.unwrap_or(true)
        && input.pool.is_none()
        && input.issue_on_spend_fen.is_none()
        && !input.issue_on_checkin_streak
        && !input.issue_on_birthday
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::new(422, "invalid_coupon_template", message.into())
}

impl TemplateInput {
    pub fn to_template(&self, id: Uuid) -> Result<CouponTemplateV2, ApiError> {
        let max = limits::amount_fen_max;
        let kind = match self.kind.as_deref().unwrap_or("cash") {
            "cash" => CouponKind::Cash {
                value: Fen(self
                    .value_fen
                    .ok_or_else(|| invalid("a cash voucher needs value_fen"))?),
            },
            "discount" => {
                let percent = self
                    .percent_off
                    .filter(|p| (1..=99).contains(p))
                    .ok_or_else(|| invalid("a discount coupon needs percent_off from 1 to 99"))?;
                CouponKind::Discount {
                    off_bp: percent * 100,
                    max_off: Fen(self.max_off_fen.unwrap_or(0)),
                }
            }
            "product" => CouponKind::Product {
                sku: self
                    .sku
                    .clone()
                    .ok_or_else(|| invalid("a product voucher needs sku"))?,
            },
            _ => return Err(invalid("kind must be cash, discount or product")),
        };
        let validity = match (self.valid_days, self.valid_from_ms, self.valid_until_ms) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(invalid(
                    "give valid_days or valid_from_ms/valid_until_ms, not both",
                ));
            }
            (Some(days), None, None) => Validity::DaysAfterIssue { days },
            (None, from, until) => Validity::Dates {
                from_ms: from.unwrap_or(0),
                until_ms: until.unwrap_or(u64::MAX),
            },
        };
        let mut weekdays = 0u8;
        for day in &self.weekdays {
            if !(1..=7).contains(day) {
                return Err(invalid("weekdays are 1 (Monday) to 7 (Sunday)"));
            }
            weekdays |= 1 << (day - 1);
        }
        let window = if weekdays == 0 && self.from_hour.is_none() && self.until_hour.is_none() {
            None
        } else {
            Some(TimeWindow {
                weekdays,
                from_hour: self.from_hour.unwrap_or(0),
                until_hour: self.until_hour.unwrap_or(24),
            })
        };
        let pool = match &self.pool {
            None => None,
            Some(pool) => Some(ClaimPool {
                scope: match pool.scope.as_str() {
                    "chain" => PoolScope::ChainWide,
                    "store" => PoolScope::PerStore,
                    _ => return Err(invalid("pool scope must be chain or store")),
                },
                size: pool.size,
            }),
        };
        if self
            .issue_on_spend_fen
            .is_some_and(|f| !(1..=max).contains(&f))
        {
            return Err(invalid("issue_on_spend_fen must be 1 or more"));
        }
        let template = CouponTemplateV2 {
            id,
            name: self.name.trim().to_owned(),
            kind,
            min_spend: Fen(self.min_spend_fen),
            validity,
            stores: self.stores.iter().map(|s| s.trim().to_owned()).collect(),
            window,
            per_member_limit: self.per_member_limit,
            stackable: self.stackable.unwrap_or(true),
            online_only: self.online_only,
            active: self.active.unwrap_or(true),
            pool,
            issue_on_spend: self.issue_on_spend_fen.map(Fen),
            issue_on_checkin_streak: self.issue_on_checkin_streak,
            issue_on_birthday: self.issue_on_birthday,
        };
        template.validate().map_err(|e| invalid(e.0))?;
        Ok(template)
    }
}

/// A template as the APIs show it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateView {
    pub id: Uuid,
    pub name: String,
    /// cash | discount | product
    pub kind: String,
    pub value_fen: i64,
    pub percent_off: Option<u32>,
    pub max_off_fen: Option<i64>,
    pub sku: Option<String>,
    pub min_spend_fen: i64,
    pub valid_from_ms: Option<u64>,
    pub valid_until_ms: Option<u64>,
    pub valid_days: Option<u32>,
    pub stores: Vec<String>,
    pub weekdays: Vec<u8>,
    pub from_hour: Option<u8>,
    pub until_hour: Option<u8>,
    pub per_member_limit: u32,
    pub stackable: bool,
    pub online_only: bool,
    pub active: bool,
    pub pool: Option<PoolInput>,
    pub issue_on_spend_fen: Option<i64>,
    pub issue_on_checkin_streak: bool,
    pub issue_on_birthday: bool,
}

impl TemplateView {
    pub fn of(t: &CouponTemplateV2) -> TemplateView {
        let (kind, value_fen, percent_off, max_off_fen, sku) = match &t.kind {
            CouponKind::Cash { value } => ("cash", value.0, None, None, None),
            CouponKind::Discount { off_bp, max_off } => (
                "discount",
                0,
                Some(off_bp / 100),
                Some(max_off.0).filter(|m| *m > 0),
                None,
            ),
            CouponKind::Product { sku } => ("product", 0, None, None, Some(sku.clone())),
        };
        let (valid_from_ms, valid_until_ms, valid_days) = match t.validity {
            Validity::Dates { from_ms, until_ms } => (
                Some(from_ms).filter(|v| *v > 0),
                Some(until_ms).filter(|v| *v < u64::MAX),
                None,
            ),
            Validity::DaysAfterIssue { days } => (None, None, Some(days)),
        };
        TemplateView {
            id: t.id,
            name: t.name.clone(),
            kind: kind.into(),
            value_fen,
            percent_off,
            max_off_fen,
            sku,
            min_spend_fen: t.min_spend.0,
            valid_from_ms,
            valid_until_ms,
            valid_days,
            stores: t.stores.clone(),
            weekdays: t
                .window
                .map(|w| {
                    (1..=7u8)
                        .filter(|d| w.weekdays & (1 << (d - 1)) != 0)
                        .collect()
                })
                .unwrap_or_default(),
            from_hour: t.window.map(|w| w.from_hour),
            until_hour: t.window.map(|w| w.until_hour),
            per_member_limit: t.per_member_limit,
            stackable: t.stackable,
            online_only: t.online_only,
            active: t.active,
            pool: t.pool.map(|p| PoolInput {
                scope: match p.scope {
                    PoolScope::ChainWide => "chain".into(),
                    PoolScope::PerStore => "store".into(),
                },
                size: p.size,
            }),
            issue_on_spend_fen: t.issue_on_spend.map(|f| f.0),
            issue_on_checkin_streak: t.issue_on_checkin_streak,
            issue_on_birthday: t.issue_on_birthday,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub templates: Vec<TemplateView>,
}

/// One coupon as the APIs show it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CouponView {
    pub code: String,
    pub template_id: Uuid,
    pub template_name: String,
    /// cash | discount | product
    pub kind: String,
    /// The owner now (after transfers); null: a bearer coupon anyone may use.
    pub member_id: Option<Uuid>,
    /// How it was issued: hq | bulk | signup | claim | spend | check_in_streak | birthday | lottery
    pub channel: String,
    pub issued_ms: Option<u64>,
    pub valid_from_ms: Option<u64>,
    /// null: no end.
    pub valid_until_ms: Option<u64>,
    /// available | redeemed | expired | not_yet_valid
    pub status: String,
}

pub fn coupon_view(
    conn: &Connection,
    row: &CouponRow,
    now_ms: u64,
) -> rusqlite::Result<CouponView> {
    let template = template(conn, row.template_id)?;
    let kind = match template.as_ref().map(|t| &t.kind) {
        Some(CouponKind::Discount { .. }) => "discount",
        Some(CouponKind::Product { .. }) => "product",
        _ => "cash",
    };
    let status = if row.redeemed {
        "redeemed"
    } else if now_ms >= row.valid_until_ms {
        "expired"
    } else if now_ms < row.valid_from_ms {
        "not_yet_valid"
    } else {
        "available"
    };
    Ok(CouponView {
        code: row.code.clone(),
        template_id: row.template_id,
        template_name: template.map(|t| t.name).unwrap_or_default(),
        kind: kind.into(),
        member_id: row.owner_id,
        channel: row.channel.clone(),
        issued_ms: row.issued_ms,
        valid_from_ms: Some(row.valid_from_ms).filter(|v| *v > 0),
        valid_until_ms: Some(row.valid_until_ms).filter(|v| *v < u64::MAX),
        status: status.into(),
    })
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CouponList {
    pub coupons: Vec<CouponView>,
}

/// A wheel as HQ writes it and everyone reads it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LotteryInput {
    /// Replace this wheel (omit to create one).
    pub id: Option<Uuid>,
    pub name: String,
    /// Slices: a coupon template, or no prize (`template_id` null), with a weight.
    pub prizes: Vec<PrizeInput>,
    /// Draws per member per store-local day (default 1).
    pub draws_per_day: Option<u32>,
    pub active: Option<bool>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PrizeInput {
    pub label: String,
    pub template_id: Option<Uuid>,
    pub weight: u32,
}

impl LotteryInput {
    pub fn to_lottery(&self, id: Uuid) -> Result<Lottery, ApiError> {
        let lottery = Lottery {
            id,
            name: self.name.trim().to_owned(),
            prizes: self
                .prizes
                .iter()
                .map(|p| Prize {
                    label: p.label.trim().to_owned(),
                    template_id: p.template_id,
                    weight: p.weight,
                })
                .collect(),
            draws_per_day: self.draws_per_day.unwrap_or(1),
            active: self.active.unwrap_or(true),
        };
        lottery
            .validate()
            .map_err(|e| ApiError::new(422, "invalid_lottery", e.0))?;
        Ok(lottery)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct LotteryView {
    pub id: Uuid,
    pub name: String,
    pub prizes: Vec<PrizeInput>,
    pub draws_per_day: u32,
    pub active: bool,
}

impl LotteryView {
    pub fn of(l: &Lottery) -> LotteryView {
        LotteryView {
            id: l.id,
            name: l.name.clone(),
            prizes: l
                .prizes
                .iter()
                .map(|p| PrizeInput {
                    label: p.label.clone(),
                    template_id: p.template_id,
                    weight: p.weight,
                })
                .collect(),
            draws_per_day: l.draws_per_day,
            active: l.active,
        }
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LotteryList {
    pub lotteries: Vec<LotteryView>,
}

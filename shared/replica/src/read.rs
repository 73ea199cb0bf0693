//! Queries behind the GET routes, and the pool of read-only connections they run on.
//! The functions take any `&Connection`, so the writer uses the same ones inside its
//! transaction.

use chainsync_core::Fen;
use chainsync_core::checkout::PaymentMethod;
use chainsync_core::ledger::Balances;
use chainsync_core::member::Profile;
use chainsync_core::op::SaleRecord;
use chainsync_core::rules::{Rules, Tier, tier_window_ms};
use chainsync_core::tiers::{self, MetricEntry, TierMetric};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use uuid::Uuid;

use crate::api::ApiError;
use crate::views::{
    CheckoutLineView, CheckoutView, LedgerEntryView, LedgerView, MemberView, PaymentView,
    ProductView,
};

/// Most rows one list query returns.
pub const list_rows_max: usize = 500;

/// A few read-only connections; each query takes one (round robin) on a blocking thread.
pub struct ReadPool {
    connections: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

impl ReadPool {
    pub fn open(path: &Path, size: usize) -> anyhow::Result<ReadPool> {
        let connections = (0..size.max(1))
            .map(|_| crate::sqlite::open_reader(path).map(Mutex::new))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(ReadPool {
            connections,
            next: AtomicUsize::new(0),
        })
    }

    /// Run `query` on a pooled connection off the async runtime.
    pub async fn run<T, F>(self: &std::sync::Arc<Self>, query: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, ApiError> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let index = pool.next.fetch_add(1, Ordering::Relaxed) % pool.connections.len();
            let conn = pool.connections[index]
                .lock()
                .map_err(|_| ApiError::internal("read connection poisoned"))?;
            query(&conn)
        })
        .await
        .map_err(ApiError::internal)?
    }
}

pub fn member_exists(conn: &Connection, id: Uuid) -> rusqlite::Result<bool> {
    canonical_member(conn, id).map(|found| found.is_some())
}

/// The member that `id` stands for: itself, or the member it was merged into.
pub fn canonical_member(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<Uuid>> {
    let found: Option<String> = conn
        .prepare_cached("SELECT COALESCE(merged_into, id) FROM members WHERE id = ?1")?
        .query_row([id.to_string()], |row| row.get(0))
        .optional()?;
    Ok(found.and_then(|text| Uuid::parse_str(&text).ok()))
}

/// The ids of a canonical member's group: itself first, then the members merged into it.
pub fn member_group(conn: &Connection, canonical: Uuid) -> rusqlite::Result<Vec<Uuid>> {
    let mut statement =
        conn.prepare_cached("SELECT id FROM members WHERE merged_into = ?1 ORDER BY id")?;
    let merged = statement.query_map([canonical.to_string()], |row| row.get::<_, String>(0))?;
    let mut group = vec![canonical];
    for id in merged {
        if let Ok(id) = Uuid::parse_str(&id?) {
            group.push(id);
        }
    }
    Ok(group)
}

/// Balances of a member (with every member merged into it). `None` if unknown.
pub fn balances(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<Balances>> {
    let Some(canonical) = canonical_member(conn, id)? else {
        return Ok(None);
    };
    conn.prepare_cached(
        "SELECT COALESCE(SUM(principal_fen), 0), COALESCE(SUM(bonus_fen), 0),
                COALESCE(SUM(points), 0)
         FROM member_balances
         WHERE member_id IN (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)",
    )?
    .query_row([canonical.to_string()], |row| {
        Ok(Balances {
            principal: Fen(row.get(0)?),
            bonus: Fen(row.get(1)?),
            points: row.get(2)?,
        })
    })
    .optional()
}

/// Net spend (sales minus refunds) over the 365 days before `now_ms`, for a member's group.
pub fn spend_12m(conn: &Connection, id: Uuid, now_ms: u64) -> rusqlite::Result<Fen> {
    let since = now_ms.saturating_sub(tier_window_ms) as i64;
    let canonical = canonical_member(conn, id)?.unwrap_or(id);
    conn.prepare_cached(
        "SELECT COALESCE(SUM(total_fen - refunded_fen), 0) FROM sales
         WHERE at_ms >= ?2 AND member_id IN
             (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)",
    )?
    .query_row(params![canonical.to_string(), since], |row| {
        row.get(0).map(Fen)
    })
}

/// The ledger entries that count as points *earned* for a tier (see `chainsync_core::tiers`):
/// purchases, engagement rewards, and earned points a refund takes back (a negative
/// `points_reverse`); each at its sale's time when it belongs to a sale held here.
const tier_points_filter: &str = "(l.kind IN ('points_earn', 'points_reward')
     OR (l.kind = 'points_reverse' AND l.amount < 0))";

/// A member group's contributions to the rules' tier metric that can matter for its tier at
/// `now_ms` (from `tiers::entries_since_ms` on): sales net of refunds, or points earned.
pub fn tier_entries(
    conn: &Connection,
    id: Uuid,
    rules: &Rules,
    now_ms: u64,
) -> rusqlite::Result<Vec<MetricEntry>> {
    let since = tiers::entries_since_ms(rules.tier_downgrade, &rules.tier_period, now_ms);
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let canonical = canonical_member(conn, id)?.unwrap_or(id);
    let sql = match rules.tier_metric {
        TierMetric::Spend => "SELECT at_ms, total_fen - refunded_fen FROM sales
             WHERE at_ms >= ?2 AND member_id IN
                 (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)"
            .to_owned(),
        TierMetric::Points => format!(
            "SELECT COALESCE(s.at_ms, l.hlc_wall_ms), l.amount
             FROM ledger l LEFT JOIN sales s ON s.id = l.checkout_id
             WHERE l.member_id IN (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)
               AND {tier_points_filter} AND COALESCE(s.at_ms, l.hlc_wall_ms) >= ?2"
        ),
    };
    let mut statement = conn.prepare_cached(&sql)?;
    let rows = statement.query_map(params![canonical.to_string(), since], |row| {
        Ok(MetricEntry {
            at_ms: row.get::<_, i64>(0)?.max(0) as u64,
            amount: row.get(1)?,
        })
    })?;
    rows.collect()
}

/// The tier a member (with its merged members) is in at `now_ms` under `rules`: the pure
/// `Rules::tier_at` over [`tier_entries`].
pub fn member_tier(
    conn: &Connection,
    id: Uuid,
    rules: &Rules,
    now_ms: u64,
) -> rusqlite::Result<Tier> {
    let entries = tier_entries(conn, id, rules, now_ms)?;
    Ok(rules.tier_at(&entries, now_ms).clone())
}

/// Every member group's contributions to the tier metric with `since_ms <= at < before_ms`,
/// by canonical member id, in one pass over the sales (spend) or the ledger (points).
pub fn all_tier_entries(
    conn: &Connection,
    rules: &Rules,
    since_ms: i64,
    before_ms: i64,
) -> rusqlite::Result<std::collections::HashMap<String, Vec<MetricEntry>>> {
    let sql = match rules.tier_metric {
        TierMetric::Spend => "SELECT COALESCE(m.merged_into, s.member_id), s.at_ms,
                    s.total_fen - s.refunded_fen
             FROM sales s LEFT JOIN members m ON m.id = s.member_id
             WHERE s.at_ms >= ?1 AND s.at_ms < ?2 AND s.member_id IS NOT NULL"
            .to_owned(),
        TierMetric::Points => format!(
            "SELECT COALESCE(m.merged_into, l.member_id), COALESCE(s.at_ms, l.hlc_wall_ms),
                    l.amount
             FROM ledger l LEFT JOIN sales s ON s.id = l.checkout_id
                  LEFT JOIN members m ON m.id = l.member_id
             WHERE {tier_points_filter}
               AND COALESCE(s.at_ms, l.hlc_wall_ms) >= ?1
               AND COALESCE(s.at_ms, l.hlc_wall_ms) < ?2"
        ),
    };
    let mut statement = conn.prepare(&sql)?;
    let mut rows = statement.query(params![since_ms, before_ms])?;
    let mut by_member: std::collections::HashMap<String, Vec<MetricEntry>> =
        std::collections::HashMap::new();
    while let Some(row) = rows.next()? {
        by_member.entry(row.get(0)?).or_default().push(MetricEntry {
            at_ms: row.get::<_, i64>(1)?.max(0) as u64,
            amount: row.get(2)?,
        });
    }
    Ok(by_member)
}

/// Times of a member's checkouts (with merged members) over the last 12 months, for the
/// automatic tags.
pub fn visits_12m(conn: &Connection, canonical: Uuid, now_ms: u64) -> rusqlite::Result<Vec<u64>> {
    let since = now_ms.saturating_sub(tier_window_ms) as i64;
    let mut statement = conn.prepare_cached(
        "SELECT at_ms FROM sales WHERE at_ms >= ?2 AND member_id IN
             (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)",
    )?;
    let rows = statement.query_map(params![canonical.to_string(), since], |row| {
        row.get::<_, i64>(0)
    })?;
    rows.map(|at| at.map(|at| at.max(0) as u64)).collect()
}

fn member_from_row(
    conn: &Connection,
    row: &Row<'_>,
    rules: &Rules,
    now_ms: u64,
    utc_offset_seconds: i32,
) -> Result<MemberView, ApiError> {
    let id_text: String = row.get(0)?;
    let id = Uuid::parse_str(&id_text).map_err(ApiError::internal)?;
    let profile_json: String = row.get(1)?;
    let profile: Profile = serde_json::from_str(&profile_json).map_err(ApiError::internal)?;
    let created_ms: i64 = row.get(2)?;
    let balances = balances(conn, id)?.unwrap_or_default();
    let (principal, bonus, points) = (balances.principal.0, balances.bonus.0, balances.points);
    let spend = spend_12m(conn, id, now_ms)?;
    let merged_from = member_group(conn, id)?.into_iter().skip(1).collect();
    let activity = chainsync_core::engagement::Activity {
        spend_12m_fen: spend.0,
        visits_ms: visits_12m(conn, id, now_ms)?,
        created_ms: created_ms.max(0) as u64,
    };
    let auto_tags = chainsync_core::engagement::auto_tags(&activity, now_ms, utc_offset_seconds)
        .into_iter()
        .map(str::to_owned)
        .collect();
    Ok(MemberView {
        id,
        name: profile.name,
        phone: profile.phone,
        card_no: profile.card_no,
        gender: profile.gender.map(|g| g.as_str().to_owned()),
        birthday: profile.birthday,
        email: profile.email,
        address: profile.address,
        note: profile.note,
        home_store: profile.home_store,
        tags: profile.tags.into_iter().collect(),
        balance_fen: principal.saturating_add(bonus),
        principal_fen: principal,
        bonus_fen: bonus,
        points,
        tier: member_tier(conn, id, rules, now_ms)?.name,
        spend_12m_fen: spend.0,
        created_ms: created_ms.max(0) as u64,
        merged_from,
        auto_tags,
        feedback: Vec::new(),
        referred_by: None,
        referrals: Vec::new(),
    })
}

/// Newest feedback entries a member's record shows (all: `GET /api/v1/members/{id}/feedback`).
pub const member_feedback_shown: usize = 20;

const member_columns: &str = "id, profile_json, created_ms";

/// One member as `GET /api/v1/members/{id}` shows it (with its feedback entries);
/// `utc_offset_seconds` is the reader's time zone (for the weekend tag).
pub fn member(
    conn: &Connection,
    id: Uuid,
    rules: &Rules,
    now_ms: u64,
    utc_offset_seconds: i32,
) -> Result<Option<MemberView>, ApiError> {
    let Some(canonical) = canonical_member(conn, id)? else {
        return Ok(None);
    };
    let sql = format!("SELECT {member_columns} FROM members WHERE id = ?1");
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query([canonical.to_string()])?;
    match rows.next()? {
        Some(row) => {
            let mut view = member_from_row(conn, row, rules, now_ms, utc_offset_seconds)?;
            view.feedback =
                crate::program::member_feedback(conn, canonical, member_feedback_shown)?;
            (view.referred_by, view.referrals) =
                crate::engagement::member_referrals(conn, canonical)?;
            Ok(Some(view))
        }
        None => Ok(None),
    }
}

/// `GET /api/v1/members?phone=|card_no=|q=&limit=`, on the store and the hub.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
pub struct MemberSearch {
    /// Exact phone (normalized like at registration).
    pub phone: Option<String>,
    /// Exact card number.
    pub card_no: Option<String>,
    /// Name prefix, or part of a phone or card number.
    pub q: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
}

impl MemberSearch {
    /// The query to run, or `None` when it cannot match anything (a phone that is not one).
    pub fn query(self) -> Option<(MemberQuery, usize)> {
        let limit = self.limit.unwrap_or(50);
        let query = if let Some(phone) = self.phone {
            MemberQuery::Phone(chainsync_core::member::normalize_phone(&phone).ok()?)
        } else if let Some(card_no) = self.card_no {
            MemberQuery::CardNo(card_no.trim().to_owned())
        } else if let Some(text) = self.q.filter(|q| !q.trim().is_empty()) {
            MemberQuery::Text(text.trim().to_owned())
        } else {
            MemberQuery::All
        };
        Some((query, limit))
    }
}

pub enum MemberQuery {
    Phone(String),
    CardNo(String),
    /// Name prefix, or a fragment of phone or card number.
    Text(String),
    All,
}

pub fn find_members(
    conn: &Connection,
    query: &MemberQuery,
    limit: usize,
    rules: &Rules,
    now_ms: u64,
    utc_offset_seconds: i32,
) -> Result<Vec<MemberView>, ApiError> {
    let limit = limit.clamp(1, list_rows_max) as i64;
    let escape = |text: &str| {
        text.replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_")
    };
    let (condition, argument) = match query {
        MemberQuery::Phone(phone) => ("phone = ?1", phone.clone()),
        MemberQuery::CardNo(card_no) => ("card_no = ?1", card_no.clone()),
        MemberQuery::Text(text) => (
            "(name LIKE ?1 || '%' ESCAPE '\\' OR phone LIKE '%' || ?1 || '%' ESCAPE '\\'
              OR card_no LIKE '%' || ?1 || '%' ESCAPE '\\')",
            escape(text),
        ),
        MemberQuery::All => ("?1 = ?1", String::new()),
    };
    let sql = format!(
        "SELECT {member_columns} FROM members WHERE merged_into IS NULL AND {condition}
         ORDER BY created_ms DESC, id LIMIT ?2"
    );
    let mut statement = conn.prepare_cached(&sql)?;
    let mut rows = statement.query(params![argument, limit])?;
    let mut members = Vec::new();
    while let Some(row) = rows.next()? {
        members.push(member_from_row(
            conn,
            row,
            rules,
            now_ms,
            utc_offset_seconds,
        )?);
    }
    Ok(members)
}

/// Every ledger entry of a member's group, newest first.
pub fn ledger(conn: &Connection, member_id: Uuid) -> Result<LedgerView, ApiError> {
    let member_id = canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let mut statement = conn.prepare_cached(
        "SELECT id, origin, seq, kind, account, amount, checkout_id, reason, rule_version,
                hlc_wall_ms, member_id
         FROM ledger WHERE member_id IN (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)
         ORDER BY hlc_wall_ms DESC, hlc_counter DESC, origin DESC, seq DESC",
    )?;
    let mut rows = statement.query([member_id.to_string()])?;
    let mut entries = Vec::new();
    let (mut balance, mut points) = (0i64, 0i64);
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let checkout_id: Option<String> = row.get(6)?;
        let account: String = row.get(4)?;
        let amount: i64 = row.get(5)?;
        if account == "points" {
            points = points.saturating_add(amount);
        } else {
            balance = balance.saturating_add(amount);
        }
        entries.push(LedgerEntryView {
            id: Uuid::parse_str(&id).map_err(ApiError::internal)?,
            origin: row.get(1)?,
            seq: row.get::<_, i64>(2)?.max(0) as u64,
            kind: row.get(3)?,
            account,
            amount,
            checkout_id: checkout_id.and_then(|id| Uuid::parse_str(&id).ok()),
            reason: row.get(7)?,
            rule_version: row.get(8)?,
            created_ms: row.get::<_, i64>(9)?.max(0) as u64,
            member_id: Uuid::parse_str(&row.get::<_, String>(10)?).map_err(ApiError::internal)?,
        });
    }
    Ok(LedgerView {
        member_id,
        balance_fen: balance,
        points,
        entries,
    })
}

pub fn method_name(method: PaymentMethod) -> &'static str {
    match method {
        PaymentMethod::Cash => "cash",
        PaymentMethod::External => "external",
        PaymentMethod::StoredValue => "stored_value",
        PaymentMethod::Points => "points",
    }
}

/// The view of a sale (without the after-checkout balances, which only the checkout
/// response carries).
pub fn sale_view(store_id: &str, sale: &SaleRecord, refunded: bool) -> CheckoutView {
    let points_used = sale
        .payments
        .iter()
        .filter(|p| p.method == PaymentMethod::Points)
        .map(|p| p.amount.0)
        .sum();
    let mut view = CheckoutView {
        id: sale.id,
        store_id: store_id.to_owned(),
        member_id: sale.member_id,
        lines: sale
            .lines
            .iter()
            .map(|line| CheckoutLineView {
                sku: line.sku.clone(),
                name: line.name.clone(),
                qty: line.qty,
                unit_price_fen: line.unit_price.0,
                amount_fen: line.amount.0,
                points_earned: None,
            })
            .collect(),
        payments: sale
            .payments
            .iter()
            .map(|p| PaymentView {
                method: method_name(p.method).to_owned(),
                amount_fen: p.amount.0,
            })
            .collect(),
        subtotal_fen: sale.subtotal.0,
        discount_fen: sale.discount.0,
        total_fen: sale.total.0,
        points_earned: sale.points_earned,
        points_used,
        tier: sale.tier.clone(),
        rule_version: sale.rule_version,
        balance_fen: None,
        points: None,
        refunded,
        created_ms: sale.at_ms,
        receipt: String::new(),
        stock_below_zero: Vec::new(),
    };
    view.receipt = receipt(&view);
    view
}

/// A plain-text receipt, 32 columns wide.
pub fn receipt(view: &CheckoutView) -> String {
    let mut text = String::new();
    text.push_str(&format!("chainsync  {}\n", view.store_id));
    text.push_str(&format!("#{}\n", view.id));
    for line in &view.lines {
        text.push_str(&format!(
            "{} x{}  {}\n",
            line.name,
            line.qty,
            Fen(line.amount_fen)
        ));
    }
    text.push_str(&format!("小计 subtotal  {}\n", Fen(view.subtotal_fen)));
    if view.discount_fen != 0 {
        text.push_str(&format!("优惠 discount  -{}\n", Fen(view.discount_fen)));
    }
    text.push_str(&format!("合计 total  {}\n", Fen(view.total_fen)));
    for payment in &view.payments {
        text.push_str(&format!(
            "{}  {}\n",
            payment.method,
            Fen(payment.amount_fen)
        ));
    }
    if view.points_earned != 0 {
        text.push_str(&format!("积分 points +{}\n", view.points_earned));
    }
    text
}

pub fn checkout(
    conn: &Connection,
    store_id: &str,
    id: Uuid,
) -> Result<Option<CheckoutView>, ApiError> {
    let found: Option<(Vec<u8>, i64, String)> = conn
        .prepare_cached("SELECT body, refunded_fen, origin FROM sales WHERE id = ?1")?
        .query_row([id.to_string()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    let Some((body, refunded_fen, origin)) = found else {
        return Ok(None);
    };
    let sale: SaleRecord = postcard::from_bytes(&body).map_err(ApiError::internal)?;
    let refunded = refunded_fen != 0 || has_refund(conn, id)?;
    let _ = store_id;
    let mut view = sale_view(&origin, &sale, refunded);
    add_line_points(conn, &mut view)?;
    Ok(Some(view))
}

/// Each line's points, when the sale recorded them (`SalePoints`).
pub fn add_line_points(conn: &Connection, view: &mut CheckoutView) -> rusqlite::Result<()> {
    if let Some(points) = crate::program::sale_line_points(conn, view.id)? {
        for (line, points) in view.lines.iter_mut().zip(points) {
            line.points_earned = Some(points);
        }
    }
    Ok(())
}

pub fn has_refund(conn: &Connection, sale_id: Uuid) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM refunds WHERE sale_id = ?1")?
        .query_row([sale_id.to_string()], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

pub fn checkouts(conn: &Connection, limit: usize) -> Result<Vec<CheckoutView>, ApiError> {
    let mut statement = conn.prepare_cached(
        "SELECT s.body, s.origin, EXISTS (SELECT 1 FROM refunds r WHERE r.sale_id = s.id)
         FROM sales s ORDER BY s.at_ms DESC, s.id DESC LIMIT ?1",
    )?;
    let mut rows = statement.query([limit.clamp(1, list_rows_max) as i64])?;
    let mut list = Vec::new();
    while let Some(row) = rows.next()? {
        let body: Vec<u8> = row.get(0)?;
        let origin: String = row.get(1)?;
        let refunded: bool = row.get(2)?;
        let sale: SaleRecord = postcard::from_bytes(&body).map_err(ApiError::internal)?;
        let mut view = sale_view(&origin, &sale, refunded);
        add_line_points(conn, &mut view)?;
        list.push(view);
    }
    Ok(list)
}

pub fn products(conn: &Connection) -> Result<Vec<ProductView>, ApiError> {
    let filter = crate::catalog::CatalogFilter::default();
    Ok(crate::catalog::products_page(conn, &filter, 0, usize::MAX >> 1)?.0)
}

pub fn product(conn: &Connection, sku: &str) -> rusqlite::Result<Option<ProductView>> {
    crate::catalog::product(conn, sku)
}

/// HQ's current offline allowance policy (the default until HQ sets one).
pub fn allowance_policy(
    conn: &Connection,
) -> rusqlite::Result<chainsync_core::allowance::AllowancePolicy> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM allowance_policy WHERE id = 1")?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(body
        .and_then(|body| serde_json::from_str(&body).ok())
        .unwrap_or_default())
}

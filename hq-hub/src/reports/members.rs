//! Member search over the report index, and window statistics (visits and net spend of each
//! canonical member between two instants) for segments, tiers and top customers.

use chainsync_core::Fen;
use chainsync_core::rules::{Rules, tier_window_ms};
use chainsync_core::tiers::{self, MetricEntry, TierDowngrade, TierMetric};
use chainsync_replica::read;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::Deserialize;
use std::collections::HashMap;
use uuid::Uuid;

use super::scope::Scope;
use super::{Cell, Table, day_of, day_start_ms, format_date, parse_date};
use crate::reports::index::merged_members;

/// Visits and net spend of one canonical member in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowStats {
    pub visits: i64,
    pub spend_fen: i64,
    pub last_visit_ms: i64,
}

/// Per canonical member: sales with `start_ms <= at_ms < end_ms` (net of their refunds).
/// Reads only the `report_sales_window` index.
pub fn window_stats(
    conn: &Connection,
    start_ms: i64,
    end_ms: i64,
) -> rusqlite::Result<HashMap<Uuid, WindowStats>> {
    let merged = merged_members(conn)?;
    let mut statement = conn.prepare_cached(
        "SELECT member_id, total_fen - refunded_fen, at_ms FROM sales INDEXED BY report_sales_window
         WHERE at_ms >= ?1 AND at_ms < ?2 AND member_id IS NOT NULL",
    )?;
    let mut rows = statement.query((start_ms, end_ms))?;
    let mut stats: HashMap<Uuid, WindowStats> = HashMap::new();
    while let Some(row) = rows.next()? {
        let id = row.get_ref(0)?.as_str().unwrap_or_default();
        let Ok(id) = Uuid::parse_str(id) else {
            continue;
        };
        let id = merged.get(&id).copied().unwrap_or(id);
        let entry = stats.entry(id).or_default();
        entry.visits += 1;
        entry.spend_fen += row.get::<_, i64>(1)?;
        entry.last_visit_ms = entry.last_visit_ms.max(row.get(2)?);
    }
    Ok(stats)
}

/// A canonical member as the report index holds it.
#[derive(Clone, Debug, Default)]
pub struct IndexedMember {
    pub id: Uuid,
    pub home_store: String,
    pub created_ms: i64,
    pub first_visit_ms: Option<i64>,
}

/// Every canonical member created before `before_ms` whose home store the scope allows.
pub fn indexed_members(
    conn: &Connection,
    scope: Option<&Scope>,
    before_ms: i64,
) -> rusqlite::Result<Vec<IndexedMember>> {
    let mut statement = conn.prepare_cached(
        "SELECT member_id, home_store, created_ms, first_visit_ms FROM report_members
         WHERE created_ms < ?1",
    )?;
    let mut rows = statement.query([before_ms])?;
    let mut members = Vec::new();
    while let Some(row) = rows.next()? {
        let home_store: String = row.get(1)?;
        if scope.is_some_and(|scope| !scope.allows(&home_store)) {
            continue;
        }
        let Ok(id) = Uuid::parse_str(row.get_ref(0)?.as_str().unwrap_or_default()) else {
            continue;
        };
        members.push(IndexedMember {
            id,
            home_store,
            created_ms: row.get(2)?,
            first_visit_ms: row.get(3)?,
        });
    }
    Ok(members)
}

/// The tier of each canonical member with entries that count for its tier as of `as_of_ms`
/// (exclusive: what happened before it), through the rules (members without any are in the
/// lowest tier). One pass over the window's sales (default: spend, rolling, the report index
/// alone) or over the points entries that can matter, then the pure `Rules::tier_at` per
/// member: never one query per member.
pub fn tiers_as_of(
    conn: &Connection,
    rules: &Rules,
    as_of_ms: i64,
) -> rusqlite::Result<(HashMap<Uuid, String>, String)> {
    let lowest = rules.lowest_tier().name.clone();
    let rolling_spend =
        rules.tier_metric == TierMetric::Spend && rules.tier_downgrade == TierDowngrade::Rolling;
    if rolling_spend {
        let since = as_of_ms - tier_window_ms as i64;
        let stats = window_stats(conn, since, as_of_ms)?;
        let tiers = stats
            .into_iter()
            .map(|(id, s)| (id, rules.tier_for_spend(Fen(s.spend_fen)).name.clone()))
            .collect();
        return Ok((tiers, lowest));
    }
    // The instant asked about is the last millisecond before `as_of_ms`.
    let now_ms = as_of_ms.saturating_sub(1).max(0) as u64;
    let since = tiers::entries_since_ms(rules.tier_downgrade, &rules.tier_period, now_ms);
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let entries = match rules.tier_metric {
        TierMetric::Spend => spend_entries(conn, since, as_of_ms)?,
        TierMetric::Points => {
            let merged = merged_members(conn)?;
            let mut by_member: HashMap<Uuid, Vec<MetricEntry>> = HashMap::new();
            for (id, entries) in read::all_tier_entries(conn, rules, since, as_of_ms)? {
                let Ok(id) = Uuid::parse_str(&id) else {
                    continue;
                };
                let id = merged.get(&id).copied().unwrap_or(id);
                by_member.entry(id).or_default().extend(entries);
            }
            by_member
        }
    };
    let tiers = entries
        .into_iter()
        .map(|(id, entries)| (id, rules.tier_at(&entries, now_ms).name.clone()))
        .collect();
    Ok((tiers, lowest))
}

/// Per canonical member, its sales with `start_ms <= at_ms < end_ms` as tier metric entries
/// (net of refunds), from the `report_sales_window` index alone.
fn spend_entries(
    conn: &Connection,
    start_ms: i64,
    end_ms: i64,
) -> rusqlite::Result<HashMap<Uuid, Vec<MetricEntry>>> {
    let merged = merged_members(conn)?;
    let mut statement = conn.prepare_cached(
        "SELECT member_id, total_fen - refunded_fen, at_ms FROM sales INDEXED BY report_sales_window
         WHERE at_ms >= ?1 AND at_ms < ?2 AND member_id IS NOT NULL",
    )?;
    let mut rows = statement.query((start_ms, end_ms))?;
    let mut entries: HashMap<Uuid, Vec<MetricEntry>> = HashMap::new();
    while let Some(row) = rows.next()? {
        let id = row.get_ref(0)?.as_str().unwrap_or_default();
        let Ok(id) = Uuid::parse_str(id) else {
            continue;
        };
        let id = merged.get(&id).copied().unwrap_or(id);
        entries.entry(id).or_default().push(MetricEntry {
            at_ms: row.get::<_, i64>(2)?.max(0) as u64,
            amount: row.get(1)?,
        });
    }
    Ok(entries)
}

/// `GET /api/v1/member-search`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// At least this many visits (sales), all time.
    pub visits_min: Option<i64>,
    pub visits_max: Option<i64>,
    /// Net spend (sales minus refunds) in 分, all time.
    pub spend_min_fen: Option<i64>,
    pub spend_max_fen: Option<i64>,
    /// Last visit on or after this date (YYYY-MM-DD).
    pub last_visit_after: Option<String>,
    /// Last visit before this date, or no visit at all.
    pub last_visit_before: Option<String>,
    /// Current tier (through the tier rules over the last 365 days).
    pub tier: Option<String>,
    pub tag: Option<String>,
    /// Home store.
    pub store: Option<String>,
    /// 1 to 12.
    pub birthday_month: Option<i64>,
    /// visits, spend, last_visit or created (default spend).
    pub sort: Option<String>,
    /// asc or desc (default desc).
    pub order: Option<String>,
    /// 1-based (default 1).
    pub page: Option<u64>,
    /// Default 50, at most 500; exports return every page unless `page` is given.
    pub per_page: Option<u64>,
    /// json (default), csv or xlsx.
    pub format: Option<String>,
}

/// Most rows one page holds.
pub const page_rows_max: u64 = 500;

pub const search_columns: [&str; 12] = [
    "member_id",
    "name",
    "phone",
    "card_no",
    "home_store",
    "region",
    "tier",
    "visits",
    "spend_fen",
    "last_visit",
    "birthday_month",
    "created",
];

/// Run a search; each row goes to `sink` (return false to stop). Returns the number of
/// matching members (all pages).
pub fn search(
    conn: &Connection,
    scope: &Scope,
    query: &SearchQuery,
    rules: &Rules,
    now_ms: u64,
    export: bool,
    sink: &mut dyn FnMut(Vec<Cell>) -> bool,
) -> Result<u64, String> {
    let mut conditions: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut bind = |condition: &str, value: Value, conditions: &mut Vec<String>| {
        values.push(value);
        conditions.push(condition.replace('?', &format!("?{}", values.len())));
    };
    let nonneg = |name: &str, v: Option<i64>| -> Result<Option<i64>, String> {
        match v {
            Some(v) if v < 0 => Err(format!("{name} must not be negative")),
            other => Ok(other),
        }
    };
    if let Some(v) = nonneg("visits_min", query.visits_min)? {
        bind("visits >= ?", Value::Integer(v), &mut conditions);
    }
    if let Some(v) = nonneg("visits_max", query.visits_max)? {
        bind("visits <= ?", Value::Integer(v), &mut conditions);
    }
    if let Some(v) = query.spend_min_fen {
        bind("spend_fen >= ?", Value::Integer(v), &mut conditions);
    }
    if let Some(v) = query.spend_max_fen {
        bind("spend_fen <= ?", Value::Integer(v), &mut conditions);
    }
    let date = |name: &str, text: &str| {
        parse_date(text.trim())
            .map(day_start_ms)
            .ok_or_else(|| format!("{name} must be a date YYYY-MM-DD"))
    };
    if let Some(text) = &query.last_visit_after {
        bind(
            "last_visit_ms >= ?",
            Value::Integer(date("last_visit_after", text)?),
            &mut conditions,
        );
    }
    if let Some(text) = &query.last_visit_before {
        bind(
            "(last_visit_ms IS NULL OR last_visit_ms < ?)",
            Value::Integer(date("last_visit_before", text)?),
            &mut conditions,
        );
    }
    if let Some(tag) = query
        .tag
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        bind(
            "member_id IN (SELECT member_id FROM report_member_tags WHERE tag = ?)",
            Value::Text(tag.to_owned()),
            &mut conditions,
        );
    }
    if let Some(store) = query
        .store
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        bind(
            "home_store = ?",
            Value::Text(store.to_owned()),
            &mut conditions,
        );
    }
    if let Some(month) = query.birthday_month {
        if !(1..=12).contains(&month) {
            return Err("birthday_month must be 1 to 12".into());
        }
        bind("birthday_month = ?", Value::Integer(month), &mut conditions);
    }
    if let Some(stores) = &scope.stores {
        let mut placeholders = Vec::new();
        for store in stores {
            values.push(Value::Text(store.clone()));
            placeholders.push(format!("?{}", values.len()));
        }
        conditions.push(format!("home_store IN ({})", placeholders.join(", ")));
    }
    let column = match query.sort.as_deref().unwrap_or("spend") {
        "visits" => "visits",
        "spend" => "spend_fen",
        "last_visit" => "last_visit_ms",
        "created" => "created_ms",
        other => {
            return Err(format!(
                "sort: {other:?} is not visits, spend, last_visit or created"
            ));
        }
    };
    let direction = match query.order.as_deref().unwrap_or("desc") {
        "asc" => "ASC NULLS FIRST",
        "desc" => "DESC NULLS LAST",
        other => return Err(format!("order: {other:?} is not asc or desc")),
    };
    let per_page = match (export, query.per_page, query.page) {
        (true, None, None) => u64::MAX,
        (_, per_page, _) => per_page.unwrap_or(50).clamp(1, page_rows_max),
    };
    let page = query.page.unwrap_or(1).max(1);
    let offset = (page - 1).saturating_mul(per_page);
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let tiers = match query
        .tier
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        Some(tier) => Some((
            tier.to_owned(),
            tiers_as_of(conn, rules, now_ms as i64).map_err(|e| e.to_string())?,
        )),
        None => None,
    };
    let db = |e: rusqlite::Error| e.to_string();
    let sql = format!(
        "SELECT member_id, home_store, visits, spend_fen, last_visit_ms, birthday_month, created_ms
         FROM report_members {filter} ORDER BY {column} {direction}, member_id"
    );
    let total = if tiers.is_none() {
        conn.prepare_cached(&format!("SELECT COUNT(*) FROM report_members {filter}"))
            .and_then(|mut s| {
                s.query_row(params_from_iter(values.iter()), |row| row.get::<_, i64>(0))
            })
            .map_err(db)?
            .max(0) as u64
    } else {
        0
    };
    let paged_sql = if tiers.is_none() {
        format!(
            "{sql} LIMIT {} OFFSET {offset}",
            per_page.min(i64::MAX as u64)
        )
    } else {
        sql
    };
    let mut statement = conn.prepare(&paged_sql).map_err(db)?;
    let mut rows = statement
        .query(params_from_iter(values.iter()))
        .map_err(db)?;
    let mut matched = 0u64;
    let mut profile = conn
        .prepare_cached("SELECT name, phone, card_no FROM members WHERE id = ?1")
        .map_err(db)?;
    while let Some(row) = rows.next().map_err(db)? {
        let id: String = row.get(0).map_err(db)?;
        let uuid = Uuid::parse_str(&id).map_err(|e| e.to_string())?;
        let tier = match &tiers {
            Some((wanted, (tiers, lowest))) => {
                let tier = tiers.get(&uuid).unwrap_or(lowest);
                if tier != wanted {
                    continue;
                }
                matched += 1;
                if matched <= offset || matched > offset.saturating_add(per_page) {
                    continue;
                }
                tier.clone()
            }
            None => {
                read::member_tier(conn, uuid, rules, now_ms)
                    .map_err(db)?
                    .name
            }
        };
        let home_store: String = row.get(1).map_err(db)?;
        let (name, phone, card_no): (String, String, String) = profile
            .query_row([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db)?
            .unwrap_or_default();
        let last: Option<i64> = row.get(4).map_err(db)?;
        let created: i64 = row.get(6).map_err(db)?;
        let cells = vec![
            Cell::Text(id),
            Cell::Text(name),
            Cell::Text(scope.phone(&phone)),
            Cell::Text(card_no),
            Cell::Text(home_store.clone()),
            Cell::Text(scope.region_of(&home_store)),
            Cell::Text(tier),
            Cell::Int(row.get(2).map_err(db)?),
            Cell::Int(row.get(3).map_err(db)?),
            Cell::Text(
                last.map(|ms| format_date(day_of(ms.max(0) as u64)))
                    .unwrap_or_default(),
            ),
            Cell::Int(row.get(5).map_err(db)?),
            Cell::Text(format_date(day_of(created.max(0) as u64))),
        ];
        if !sink(cells) {
            break;
        }
    }
    Ok(if tiers.is_some() { matched } else { total })
}

/// A page of search results as a table.
pub fn search_table(
    conn: &Connection,
    scope: &Scope,
    query: &SearchQuery,
    rules: &Rules,
    now_ms: u64,
) -> Result<Table, String> {
    let mut table = Table::new(&search_columns);
    let total = search(conn, scope, query, rules, now_ms, false, &mut |row| {
        table.rows.push(row);
        true
    })?;
    table.total = Some(total);
    Ok(table)
}

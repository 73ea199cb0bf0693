//! Member search at the store (`GET /api/v1/member-search`): visit count, spend, last visit,
//! tier, tag, home store, birthday month; sortable and paginated, over an index table.
//!
//! The index is kept by SQLite triggers on the replica's tables, so every write path (the
//! store's own commands and relayed operations) maintains it, and only real inserts count:
//! `INSERT OR IGNORE` of an operation already held fires nothing. Per member id:
//! visits and net spend (sales minus refunds); per canonical member (not `merged_into`
//! another): the group's sums and the profile fields people search on. The hub keeps the same
//! figures in Rust (`hq-hub/src/reports/index.rs`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use chainsync_core::rules::Rules;
use chainsync_replica::api::ApiError;
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params_from_iter};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::ToSchema;

/// The index tables and their triggers (a store migration).
pub const schema_v1: &str = r#"
CREATE TABLE search_member_stats (
    member_id TEXT PRIMARY KEY,
    visits INTEGER NOT NULL DEFAULT 0,
    spend_fen INTEGER NOT NULL DEFAULT 0,
    last_visit_ms INTEGER
) WITHOUT ROWID;

CREATE TABLE search_members (
    member_id TEXT PRIMARY KEY,
    home_store TEXT NOT NULL,
    birthday_month INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    visits INTEGER NOT NULL DEFAULT 0,
    spend_fen INTEGER NOT NULL DEFAULT 0,
    last_visit_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX search_members_home ON search_members (home_store);
CREATE INDEX search_members_visits ON search_members (visits);
CREATE INDEX search_members_spend ON search_members (spend_fen);
CREATE INDEX search_members_last_visit ON search_members (last_visit_ms);
CREATE INDEX search_members_created ON search_members (created_ms);
CREATE INDEX search_members_birthday ON search_members (birthday_month);

CREATE TABLE search_member_tags (
    tag TEXT NOT NULL,
    member_id TEXT NOT NULL,
    PRIMARY KEY (tag, member_id)
) WITHOUT ROWID;

-- Group sums of a canonical member C, written into its row.
CREATE VIEW search_group AS
SELECT c.id AS canonical,
       COALESCE(SUM(s.visits), 0) AS visits,
       COALESCE(SUM(s.spend_fen), 0) AS spend_fen,
       MAX(s.last_visit_ms) AS last_visit_ms
FROM members c JOIN members g ON g.id = c.id OR g.merged_into = c.id
LEFT JOIN search_member_stats s ON s.member_id = g.id
GROUP BY c.id;

CREATE TRIGGER search_sale AFTER INSERT ON sales WHEN NEW.member_id IS NOT NULL
BEGIN
    INSERT INTO search_member_stats (member_id, visits, spend_fen, last_visit_ms)
    VALUES (NEW.member_id, 1, NEW.total_fen - NEW.refunded_fen, NEW.at_ms)
    ON CONFLICT (member_id) DO UPDATE SET visits = visits + 1,
        spend_fen = spend_fen + excluded.spend_fen,
        last_visit_ms = MAX(COALESCE(last_visit_ms, excluded.last_visit_ms),
                            excluded.last_visit_ms);
    UPDATE search_members SET
        visits = (SELECT visits FROM search_group WHERE canonical = search_members.member_id),
        spend_fen = (SELECT spend_fen FROM search_group WHERE canonical = search_members.member_id),
        last_visit_ms = (SELECT last_visit_ms FROM search_group
                         WHERE canonical = search_members.member_id)
    WHERE member_id = COALESCE((SELECT merged_into FROM members WHERE id = NEW.member_id),
                               NEW.member_id);
END;

CREATE TRIGGER search_refund AFTER UPDATE OF refunded_fen ON sales
WHEN NEW.member_id IS NOT NULL AND NEW.refunded_fen <> OLD.refunded_fen
BEGIN
    UPDATE search_member_stats SET spend_fen = spend_fen - (NEW.refunded_fen - OLD.refunded_fen)
    WHERE member_id = NEW.member_id;
    UPDATE search_members SET
        spend_fen = (SELECT spend_fen FROM search_group WHERE canonical = search_members.member_id)
    WHERE member_id = COALESCE((SELECT merged_into FROM members WHERE id = NEW.member_id),
                               NEW.member_id);
END;

CREATE TRIGGER search_member_new AFTER INSERT ON members WHEN NEW.merged_into IS NULL
BEGIN
    INSERT OR REPLACE INTO search_members (member_id, home_store, birthday_month, created_ms,
        visits, spend_fen, last_visit_ms)
    SELECT NEW.id, COALESCE(json_extract(NEW.profile_json, '$.home_store'), ''),
           COALESCE(CAST(substr(json_extract(NEW.profile_json, '$.birthday'), 6, 2) AS INTEGER), 0),
           NEW.created_ms, g.visits, g.spend_fen, g.last_visit_ms
    FROM search_group g WHERE g.canonical = NEW.id;
    INSERT OR IGNORE INTO search_member_tags (tag, member_id)
    SELECT value, NEW.id FROM json_each(NEW.profile_json, '$.tags');
END;

CREATE TRIGGER search_member_profile AFTER UPDATE OF profile_json ON members
WHEN NEW.merged_into IS NULL
BEGIN
    UPDATE search_members SET
        home_store = COALESCE(json_extract(NEW.profile_json, '$.home_store'), ''),
        birthday_month = COALESCE(
            CAST(substr(json_extract(NEW.profile_json, '$.birthday'), 6, 2) AS INTEGER), 0)
    WHERE member_id = NEW.id;
    DELETE FROM search_member_tags WHERE member_id = NEW.id;
    INSERT OR IGNORE INTO search_member_tags (tag, member_id)
    SELECT value, NEW.id FROM json_each(NEW.profile_json, '$.tags');
END;

CREATE TRIGGER search_member_merge AFTER UPDATE OF merged_into ON members
WHEN OLD.merged_into IS NOT NEW.merged_into
BEGIN
    DELETE FROM search_members WHERE NEW.merged_into IS NOT NULL AND member_id = NEW.id;
    DELETE FROM search_member_tags WHERE NEW.merged_into IS NOT NULL AND member_id = NEW.id;
    INSERT OR REPLACE INTO search_members (member_id, home_store, birthday_month, created_ms,
        visits, spend_fen, last_visit_ms)
    SELECT NEW.id, COALESCE(json_extract(NEW.profile_json, '$.home_store'), ''),
           COALESCE(CAST(substr(json_extract(NEW.profile_json, '$.birthday'), 6, 2) AS INTEGER), 0),
           NEW.created_ms, g.visits, g.spend_fen, g.last_visit_ms
    FROM search_group g WHERE NEW.merged_into IS NULL AND g.canonical = NEW.id;
    INSERT OR IGNORE INTO search_member_tags (tag, member_id)
    SELECT value, NEW.id FROM json_each(NEW.profile_json, '$.tags')
    WHERE NEW.merged_into IS NULL;
    UPDATE search_members SET
        visits = (SELECT visits FROM search_group WHERE canonical = search_members.member_id),
        spend_fen = (SELECT spend_fen FROM search_group WHERE canonical = search_members.member_id),
        last_visit_ms = (SELECT last_visit_ms FROM search_group
                         WHERE canonical = search_members.member_id)
    WHERE member_id IN (NEW.merged_into, OLD.merged_into);
END;
"#;

/// Index what a database held before the triggers existed.
pub const backfill_v1: &str = r#"
INSERT INTO search_member_stats (member_id, visits, spend_fen, last_visit_ms)
SELECT member_id, COUNT(*), SUM(total_fen - refunded_fen), MAX(at_ms) FROM sales
WHERE member_id IS NOT NULL GROUP BY member_id;
INSERT OR REPLACE INTO search_members (member_id, home_store, birthday_month, created_ms, visits,
    spend_fen, last_visit_ms)
SELECT m.id, COALESCE(json_extract(m.profile_json, '$.home_store'), ''),
       COALESCE(CAST(substr(json_extract(m.profile_json, '$.birthday'), 6, 2) AS INTEGER), 0),
       m.created_ms, g.visits, g.spend_fen, g.last_visit_ms
FROM members m JOIN search_group g ON g.canonical = m.id WHERE m.merged_into IS NULL;
INSERT OR IGNORE INTO search_member_tags (tag, member_id)
SELECT t.value, m.id FROM members m, json_each(m.profile_json, '$.tags') t
WHERE m.merged_into IS NULL;
"#;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// At least this many visits (sales), all time.
    pub visits_min: Option<i64>,
    pub visits_max: Option<i64>,
    /// Net spend (sales minus refunds) in 分, all time.
    pub spend_min_fen: Option<i64>,
    pub spend_max_fen: Option<i64>,
    /// Last visit at or after this Unix ms.
    pub last_visit_after_ms: Option<i64>,
    /// Last visit before this Unix ms, or no visit at all.
    pub last_visit_before_ms: Option<i64>,
    /// Current tier (the tier rules over the last 365 days).
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
    /// 1-based.
    pub page: Option<u64>,
    /// Default 50, at most 500.
    pub per_page: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchRow {
    pub member_id: String,
    pub name: String,
    pub phone: String,
    pub card_no: String,
    pub home_store: String,
    pub tier: String,
    pub visits: i64,
    pub spend_fen: i64,
    pub last_visit_ms: Option<i64>,
    pub birthday_month: i64,
    pub created_ms: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SearchPage {
    pub members: Vec<SearchRow>,
    /// Matching members on all pages.
    pub total: u64,
}

/// Tiers of members with entries that count for their tier at `now_ms` (others: the lowest
/// tier), in one pass over those entries.
fn tiers(
    conn: &Connection,
    rules: &Rules,
    now_ms: u64,
) -> rusqlite::Result<HashMap<String, String>> {
    let since =
        chainsync_core::tiers::entries_since_ms(rules.tier_downgrade, &rules.tier_period, now_ms);
    let since = i64::try_from(since).unwrap_or(i64::MAX);
    let entries = chainsync_replica::read::all_tier_entries(conn, rules, since, i64::MAX)?;
    Ok(entries
        .into_iter()
        .map(|(id, entries)| (id, rules.tier_at(&entries, now_ms).name.clone()))
        .collect())
}

pub fn search(
    conn: &Connection,
    query: &SearchQuery,
    rules: &Rules,
    now_ms: u64,
) -> Result<SearchPage, ApiError> {
    let invalid = |m: &str| ApiError::invalid_field(m.to_owned());
    let mut conditions: Vec<String> = Vec::new();
    let mut values: Vec<Value> = Vec::new();
    let mut bind = |condition: &str, value: Value| {
        values.push(value);
        conditions.push(condition.replace('?', &format!("?{}", values.len())));
    };
    for (name, value) in [
        ("visits_min", query.visits_min),
        ("visits_max", query.visits_max),
    ] {
        if value.is_some_and(|v| v < 0) {
            return Err(invalid(&format!("{name} must not be negative")));
        }
    }
    let ints = [
        ("r.visits >= ?", query.visits_min),
        ("r.visits <= ?", query.visits_max),
        ("r.spend_fen >= ?", query.spend_min_fen),
        ("r.spend_fen <= ?", query.spend_max_fen),
        ("r.last_visit_ms >= ?", query.last_visit_after_ms),
        (
            "(r.last_visit_ms IS NULL OR r.last_visit_ms < ?)",
            query.last_visit_before_ms,
        ),
    ];
    for (condition, value) in ints {
        if let Some(value) = value {
            bind(condition, Value::Integer(value));
        }
    }
    if let Some(tag) = query
        .tag
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        bind(
            "r.member_id IN (SELECT member_id FROM search_member_tags WHERE tag = ?)",
            Value::Text(tag.to_owned()),
        );
    }
    if let Some(store) = query
        .store
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        bind("r.home_store = ?", Value::Text(store.to_owned()));
    }
    if let Some(month) = query.birthday_month {
        if !(1..=12).contains(&month) {
            return Err(invalid("birthday_month must be 1 to 12"));
        }
        bind("r.birthday_month = ?", Value::Integer(month));
    }
    let column = match query.sort.as_deref().unwrap_or("spend") {
        "visits" => "visits",
        "spend" => "spend_fen",
        "last_visit" => "last_visit_ms",
        "created" => "created_ms",
        _ => return Err(invalid("sort must be visits, spend, last_visit or created")),
    };
    let direction = match query.order.as_deref().unwrap_or("desc") {
        "asc" => "ASC NULLS FIRST",
        "desc" => "DESC NULLS LAST",
        _ => return Err(invalid("order must be asc or desc")),
    };
    let per_page = query.per_page.unwrap_or(50).clamp(1, 500);
    let offset = (query.page.unwrap_or(1).max(1) - 1).saturating_mul(per_page);
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let lowest = rules.lowest_tier().name.clone();
    let wanted = query
        .tier
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    // Only a tier filter needs every member's tier; a page computes its own rows'.
    let tiers = match wanted {
        Some(_) => tiers(conn, rules, now_ms)?,
        None => HashMap::new(),
    };
    let paging = if wanted.is_some() {
        String::new()
    } else {
        format!("LIMIT {per_page} OFFSET {offset}")
    };
    let sql = format!(
        "SELECT r.member_id, m.name, m.phone, m.card_no, r.home_store, r.visits, r.spend_fen,
                r.last_visit_ms, r.birthday_month, r.created_ms
         FROM search_members r JOIN members m ON m.id = r.member_id {filter}
         ORDER BY r.{column} {direction}, r.member_id {paging}"
    );
    let mut statement = conn.prepare(&sql)?;
    let mut rows = statement.query(params_from_iter(values.iter()))?;
    let mut members = Vec::new();
    let mut matched = 0u64;
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let tier = match wanted {
            Some(_) => tiers.get(&id).unwrap_or(&lowest).clone(),
            None => {
                let uuid = uuid::Uuid::parse_str(&id).map_err(ApiError::internal)?;
                chainsync_replica::read::member_tier(conn, uuid, rules, now_ms)?.name
            }
        };
        if let Some(wanted) = wanted {
            if tier != wanted {
                continue;
            }
            matched += 1;
            if matched <= offset || matched > offset + per_page {
                continue;
            }
        }
        members.push(SearchRow {
            member_id: id,
            name: row.get(1)?,
            phone: row.get(2)?,
            card_no: row.get(3)?,
            home_store: row.get(4)?,
            tier,
            visits: row.get(5)?,
            spend_fen: row.get(6)?,
            last_visit_ms: row.get(7)?,
            birthday_month: row.get(8)?,
            created_ms: row.get(9)?,
        });
    }
    let total = if wanted.is_some() {
        matched
    } else {
        let count_sql = format!("SELECT COUNT(*) FROM search_members r {filter}");
        conn.query_row(&count_sql, params_from_iter(values.iter()), |r| {
            r.get::<_, i64>(0)
        })
        .optional()?
        .unwrap_or(0)
        .max(0) as u64
    };
    Ok(SearchPage { members, total })
}

#[utoipa::path(get, path = "/api/v1/member-search", params(SearchQuery),
    responses((status = 200, body = SearchPage), (status = 422, body = chainsync_replica::views::ErrorBody)),
    security(("bearer" = [])))]
pub async fn member_search(
    State(app): State<crate::http::AppState>,
    _caller: crate::http::Caller,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<SearchPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let rules = app.current_rules().await?;
    let now = crate::now_ms();
    app.reads
        .run(move |conn| search(conn, &query, &rules, now))
        .await
        .map(Json)
}

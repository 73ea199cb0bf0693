//! Sales-side reports over the pre-aggregated tables: sales (orders, amounts, average basket),
//! categories, daily active members, new members, tier distribution, top customers.

use chainsync_core::rules::Rules;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap, HashSet};

use super::index::merged_members;
use super::members::{indexed_members, tiers_as_of, window_stats};
use super::scope::Scope;
use super::{Cell, Period, Table, day_of, format_date};

/// Dimensions of the sales report.
pub const sales_dimensions: [&str; 5] = ["day", "store", "region", "customer", "tier"];

fn customer(member: bool) -> &'static str {
    if member { "member" } else { "non_member" }
}

fn key_of(
    dims: &[String],
    scope: &Scope,
    day: i64,
    store: &str,
    member: bool,
    extra: &str,
) -> Vec<String> {
    dims.iter()
        .map(|dim| match dim.as_str() {
            "day" => format_date(day),
            "store" => store.to_owned(),
            "region" => scope.region_of(store),
            "customer" => customer(member).to_owned(),
            _ => extra.to_owned(),
        })
        .collect()
}

#[derive(Default, Clone, Copy)]
struct SalesSums {
    orders: i64,
    sales_fen: i64,
    refunds: i64,
    refund_fen: i64,
}

/// Orders, sales, refunds, net and average basket (sales ÷ orders, whole 分) per group.
/// `tier` is the member's tier at the time of the sale (empty for non-members).
pub fn sales(
    conn: &Connection,
    scope: &Scope,
    period: Period,
    dims: &[String],
) -> rusqlite::Result<Table> {
    let mut statement = conn.prepare_cached(
        "SELECT day, store, member, tier, orders, sales_fen, refunds, refund_fen
         FROM report_daily WHERE day >= ?1 AND day <= ?2",
    )?;
    let mut rows = statement.query((period.from_day, period.to_day))?;
    let mut groups: BTreeMap<Vec<String>, SalesSums> = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let store: String = row.get(1)?;
        if !scope.allows(&store) {
            continue;
        }
        let tier: String = row.get(3)?;
        let key = key_of(dims, scope, row.get(0)?, &store, row.get(2)?, &tier);
        let sums = groups.entry(key).or_default();
        sums.orders += row.get::<_, i64>(4)?;
        sums.sales_fen += row.get::<_, i64>(5)?;
        sums.refunds += row.get::<_, i64>(6)?;
        sums.refund_fen += row.get::<_, i64>(7)?;
    }
    let mut columns: Vec<&str> = dims.iter().map(String::as_str).collect();
    columns.extend([
        "orders",
        "sales_fen",
        "refunds",
        "refund_fen",
        "net_fen",
        "avg_basket_fen",
    ]);
    let mut table = Table::new(&columns);
    if dims.is_empty() && groups.is_empty() {
        groups.insert(Vec::new(), SalesSums::default());
    }
    for (key, s) in groups {
        let mut row: Vec<Cell> = key.into_iter().map(Cell::Text).collect();
        let basket = if s.orders > 0 {
            s.sales_fen / s.orders
        } else {
            0
        };
        row.extend([
            Cell::Int(s.orders),
            Cell::Int(s.sales_fen),
            Cell::Int(s.refunds),
            Cell::Int(s.refund_fen),
            Cell::Int(s.sales_fen - s.refund_fen),
            Cell::Int(basket),
        ]);
        table.rows.push(row);
    }
    Ok(table)
}

pub const category_dimensions: [&str; 5] = ["day", "store", "region", "customer", "category"];

/// Each product's category. Until products carry one, every product is "uncategorized";
/// this is the one place that knows where categories come from.
pub fn product_categories(conn: &Connection) -> rusqlite::Result<HashMap<String, String>> {
    let has_category: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM pragma_table_info('products') WHERE name = 'category'",
        [],
        |row| row.get(0),
    )?;
    if !has_category {
        return Ok(HashMap::new());
    }
    let mut statement = conn.prepare("SELECT sku, category FROM products")?;
    let rows = statement.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, Option<String>>(1)?))
    })?;
    let mut map = HashMap::new();
    for row in rows {
        let (sku, category) = row?;
        if let Some(category) = category.filter(|c| !c.trim().is_empty()) {
            map.insert(sku, category);
        }
    }
    Ok(map)
}

pub const uncategorized: &str = "uncategorized";

/// Quantity and line amounts (before sale-level discounts) per group.
pub fn categories(
    conn: &Connection,
    scope: &Scope,
    period: Period,
    dims: &[String],
) -> rusqlite::Result<Table> {
    let category = product_categories(conn)?;
    let mut statement = conn.prepare_cached(
        "SELECT day, store, member, sku, qty, amount_fen
         FROM report_daily_sku WHERE day >= ?1 AND day <= ?2",
    )?;
    let mut rows = statement.query((period.from_day, period.to_day))?;
    let mut groups: BTreeMap<Vec<String>, (i64, i64)> = BTreeMap::new();
    while let Some(row) = rows.next()? {
        let store: String = row.get(1)?;
        if !scope.allows(&store) {
            continue;
        }
        let sku: String = row.get(3)?;
        let name = category
            .get(&sku)
            .map(String::as_str)
            .unwrap_or(uncategorized);
        let key = key_of(dims, scope, row.get(0)?, &store, row.get(2)?, name);
        let sums = groups.entry(key).or_default();
        sums.0 += row.get::<_, i64>(4)?;
        sums.1 += row.get::<_, i64>(5)?;
    }
    let mut columns: Vec<&str> = dims.iter().map(String::as_str).collect();
    columns.extend(["qty", "amount_fen"]);
    let mut table = Table::new(&columns);
    for (key, (qty, amount)) in groups {
        let mut row: Vec<Cell> = key.into_iter().map(Cell::Text).collect();
        row.extend([Cell::Int(qty), Cell::Int(amount)]);
        table.rows.push(row);
    }
    Ok(table)
}

/// Distinct members (merged duplicates count once) who bought on each day, optionally per
/// store or region where they bought.
pub fn active_members(
    conn: &Connection,
    scope: &Scope,
    period: Period,
    by: Option<&str>,
) -> Result<Table, String> {
    let db = |e: rusqlite::Error| e.to_string();
    if by.is_some_and(|by| by != "store" && by != "region") {
        return Err("by must be store or region".into());
    }
    let merged = merged_members(conn).map_err(db)?;
    let mut statement = conn
        .prepare_cached(
            "SELECT day, member_id, store FROM report_member_day WHERE day >= ?1 AND day <= ?2",
        )
        .map_err(db)?;
    let mut rows = statement
        .query((period.from_day, period.to_day))
        .map_err(db)?;
    let mut seen: HashSet<(i64, String, uuid::Uuid)> = HashSet::new();
    while let Some(row) = rows.next().map_err(db)? {
        let store: String = row.get(2).map_err(db)?;
        if !scope.allows(&store) {
            continue;
        }
        let Ok(id) = uuid::Uuid::parse_str(&row.get::<_, String>(1).map_err(db)?) else {
            continue;
        };
        let id = merged.get(&id).copied().unwrap_or(id);
        let group = match by {
            Some("store") => store,
            Some(_) => scope.region_of(&store),
            None => String::new(),
        };
        seen.insert((row.get(0).map_err(db)?, group, id));
    }
    let mut counts: BTreeMap<(i64, String), i64> = BTreeMap::new();
    for (day, group, _) in seen {
        *counts.entry((day, group)).or_default() += 1;
    }
    let mut columns = vec!["day"];
    columns.extend(by);
    columns.push("active_members");
    let mut table = Table::new(&columns);
    for ((day, group), n) in counts {
        let mut row = vec![Cell::Text(format_date(day))];
        if by.is_some() {
            row.push(Cell::Text(group));
        }
        row.push(Cell::Int(n));
        table.rows.push(row);
    }
    Ok(table)
}

pub const member_dimensions: [&str; 3] = ["day", "store", "region"];

/// Canonical members registered in the period, by day and/or home store or region.
pub fn new_members(
    conn: &Connection,
    scope: &Scope,
    period: Period,
    dims: &[String],
) -> rusqlite::Result<Table> {
    let members = indexed_members(conn, Some(scope), period.end_ms())?;
    let mut counts: BTreeMap<Vec<String>, i64> = BTreeMap::new();
    for m in members {
        if m.created_ms < period.start_ms() {
            continue;
        }
        let key = key_of(
            dims,
            scope,
            day_of(m.created_ms.max(0) as u64),
            &m.home_store,
            true,
            "",
        );
        *counts.entry(key).or_default() += 1;
    }
    let mut columns: Vec<&str> = dims.iter().map(String::as_str).collect();
    columns.push("new_members");
    let mut table = Table::new(&columns);
    if dims.is_empty() && counts.is_empty() {
        counts.insert(Vec::new(), 0);
    }
    for (key, n) in counts {
        let mut row: Vec<Cell> = key.into_iter().map(Cell::Text).collect();
        row.push(Cell::Int(n));
        table.rows.push(row);
    }
    Ok(table)
}

/// How many canonical members (registered by the end of `to`) are in each tier as of the
/// end of `to`: spend over the 365 days before, through the tier rules.
pub fn tier_distribution(
    conn: &Connection,
    scope: &Scope,
    rules: &Rules,
    period: Period,
    by: Option<&str>,
) -> Result<Table, String> {
    let db = |e: rusqlite::Error| e.to_string();
    if by.is_some_and(|by| by != "store" && by != "region") {
        return Err("by must be store or region".into());
    }
    let (tiers, lowest) = tiers_as_of(conn, rules, period.end_ms()).map_err(db)?;
    let members = indexed_members(conn, Some(scope), period.end_ms()).map_err(db)?;
    let mut counts: BTreeMap<(String, usize), i64> = BTreeMap::new();
    let order = |name: &str| {
        rules
            .tiers
            .iter()
            .position(|t| t.name == name)
            .unwrap_or(usize::MAX)
    };
    for m in members {
        let tier = tiers.get(&m.id).unwrap_or(&lowest);
        let group = match by {
            Some("store") => m.home_store.clone(),
            Some(_) => scope.region_of(&m.home_store),
            None => String::new(),
        };
        *counts.entry((group, order(tier))).or_default() += 1;
    }
    let mut columns: Vec<&str> = by.into_iter().collect();
    columns.extend(["tier", "members"]);
    let mut table = Table::new(&columns);
    for ((group, tier), n) in counts {
        let mut row = Vec::new();
        if by.is_some() {
            row.push(Cell::Text(group));
        }
        let name = rules
            .tiers
            .get(tier)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        row.push(Cell::Text(name));
        row.push(Cell::Int(n));
        table.rows.push(row);
    }
    Ok(table)
}

/// The members (of the caller's scope, by home store) with the highest net spend in the
/// period, then most visits, then id.
pub fn top_customers(
    conn: &Connection,
    scope: &Scope,
    period: Period,
    limit: usize,
) -> Result<Table, String> {
    let db = |e: rusqlite::Error| e.to_string();
    let stats = window_stats(conn, period.start_ms(), period.end_ms()).map_err(db)?;
    let mut home = conn
        .prepare_cached("SELECT home_store FROM report_members WHERE member_id = ?1")
        .map_err(db)?;
    let mut sorted: Vec<(uuid::Uuid, super::members::WindowStats)> = stats.into_iter().collect();
    sorted.sort_unstable_by(|a, b| {
        b.1.spend_fen
            .cmp(&a.1.spend_fen)
            .then(b.1.visits.cmp(&a.1.visits))
            .then(a.0.cmp(&b.0))
    });
    // Best first; look up home stores only until enough members of the scope are found.
    let limit = limit.clamp(1, super::members::page_rows_max as usize);
    let mut ranked: Vec<(uuid::Uuid, super::members::WindowStats, String)> = Vec::new();
    for (id, s) in sorted {
        if ranked.len() == limit {
            break;
        }
        let home_store: String = home
            .query_row([id.to_string()], |r| r.get(0))
            .unwrap_or_default();
        if scope.allows(&home_store) {
            ranked.push((id, s, home_store));
        }
    }
    let mut profile = conn
        .prepare_cached("SELECT name, phone FROM members WHERE id = ?1")
        .map_err(db)?;
    let mut table = Table::new(&[
        "rank",
        "member_id",
        "name",
        "phone",
        "home_store",
        "visits",
        "spend_fen",
    ]);
    for (rank, (id, s, home_store)) in ranked.into_iter().enumerate() {
        let (name, phone): (String, String) = profile
            .query_row([id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap_or_default();
        table.rows.push(vec![
            Cell::Int(rank as i64 + 1),
            Cell::Text(id.to_string()),
            Cell::Text(name),
            Cell::Text(scope.phone(&phone)),
            Cell::Text(home_store),
            Cell::Int(s.visits),
            Cell::Int(s.spend_fen),
        ]);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainsync_core::catalog::CatalogItem;
    use chainsync_core::hlc::HlcTimestamp;
    use chainsync_core::op::{Envelope, Op, OpV1, SaleLine, SaleRecord};
    use chainsync_core::{Fen, StoreId};

    fn line(sku: &str, qty: i64, unit: i64) -> SaleLine {
        SaleLine {
            sku: sku.into(),
            name: sku.into(),
            qty,
            unit_price: Fen(unit),
            amount: Fen(unit * qty),
        }
    }

    #[test]
    fn a_categorized_sale_shows_under_its_category() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = crate::db::open_writer(&dir.path().join("hub.db")).unwrap();
        conn.execute(
            "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES ('s1', 'S1', 'east', 0)",
            [],
        )
        .unwrap();
        let at_ms = 1_795_000_000_000;
        let item = CatalogItem {
            sku: "TEA".into(),
            barcode: None,
            name: "茶".into(),
            category: Some("饮料".into()),
            price: Fen(800),
            member_price: None,
            active: true,
            components: vec![],
        };
        crate::storage::author(&mut conn, OpV1::CatalogItemUpsert(item), at_ms).unwrap();
        let sale = SaleRecord {
            id: uuid::Uuid::from_u128(7),
            member_id: None,
            lines: vec![line("TEA", 2, 800), line("LOOSE", 1, 300)],
            payments: vec![],
            subtotal: Fen(1_900),
            discount: Fen(0),
            total: Fen(1_900),
            points_earned: 0,
            tier: String::new(),
            rule_version: 1,
            at_ms,
        };
        let envelope = Envelope {
            origin: StoreId::parse("s1").unwrap(),
            seq: 1,
            hlc: HlcTimestamp {
                wall_ms: at_ms,
                counter: 0,
            },
            op: Op::V1(OpV1::Sale(sale)),
        };
        crate::storage::ingest(
            &mut conn,
            &envelope.origin,
            std::slice::from_ref(&envelope),
            at_ms,
        )
        .unwrap();
        let scope = Scope {
            stores: None,
            regions: HashMap::from([("s1".to_owned(), "east".to_owned())]),
            phones: true,
        };
        let day = day_of(at_ms);
        let period = Period {
            from_day: day,
            to_day: day,
        };
        let table = categories(&conn, &scope, period, &["category".to_owned()]).unwrap();
        let rows: Vec<Vec<String>> = table
            .rows
            .iter()
            .map(|row| row.iter().map(Cell::text).collect())
            .collect();
        assert_eq!(
            rows,
            vec![
                vec!["uncategorized".to_owned(), "1".into(), "300".into()],
                vec!["饮料".to_owned(), "2".into(), "1600".into()],
            ]
        );
    }
}

//! What the chain owes: stored-value and points liability, inter-store stored-value
//! settlement, and coupon campaign redemption.

use chainsync_core::rules::Rules;
use rusqlite::Connection;
use std::collections::{BTreeMap, HashMap, VecDeque};
use uuid::Uuid;

use super::index::merged_members;
use super::scope::Scope;
use super::{Cell, Period, Table};

/// Current balances summed over canonical members (merged duplicates are one member), by home
/// store or region. Points are also valued in 分 at the rules' point value.
pub fn liability(
    conn: &Connection,
    scope: &Scope,
    rules: &Rules,
    by: Option<&str>,
) -> Result<Table, String> {
    let db = |e: rusqlite::Error| e.to_string();
    if by.is_some_and(|by| by != "store" && by != "region") {
        return Err("by must be store or region".into());
    }
    let mut statement = conn
        .prepare_cached(
            "SELECT COALESCE(m.merged_into, m.id), COALESCE(r.home_store, ''),
                    COALESCE(b.principal_fen, 0), COALESCE(b.bonus_fen, 0), COALESCE(b.points, 0)
             FROM members m LEFT JOIN report_members r
                 ON r.member_id = COALESCE(m.merged_into, m.id)
             LEFT JOIN member_balances b ON b.member_id = m.id",
        )
        .map_err(db)?;
    let mut rows = statement.query([]).map_err(db)?;
    let mut members: HashMap<String, (String, i64, i64, i64)> = HashMap::new();
    while let Some(row) = rows.next().map_err(db)? {
        let home: String = row.get(1).map_err(db)?;
        if !scope.allows(&home) {
            continue;
        }
        let entry = members
            .entry(row.get(0).map_err(db)?)
            .or_insert_with(|| (home, 0, 0, 0));
        entry.1 += row.get::<_, i64>(2).map_err(db)?;
        entry.2 += row.get::<_, i64>(3).map_err(db)?;
        entry.3 += row.get::<_, i64>(4).map_err(db)?;
    }
    let mut groups: BTreeMap<String, [i64; 4]> = BTreeMap::new();
    for (home, principal, bonus, points) in members.into_values() {
        let group = match by {
            Some("store") => home,
            Some(_) => scope.region_of(&home),
            None => String::new(),
        };
        let sums = groups.entry(group).or_default();
        if principal != 0 || bonus != 0 || points != 0 {
            sums[0] += 1;
        }
        sums[1] += principal;
        sums[2] += bonus;
        sums[3] += points;
    }
    if by.is_none() && groups.is_empty() {
        groups.insert(String::new(), [0; 4]);
    }
    let mut columns: Vec<&str> = by.into_iter().collect();
    columns.extend([
        "members_with_balance",
        "principal_fen",
        "bonus_fen",
        "stored_value_fen",
        "points",
        "points_value_fen",
    ]);
    let mut table = Table::new(&columns);
    for (group, [members, principal, bonus, points]) in groups {
        let mut row = Vec::new();
        if by.is_some() {
            row.push(Cell::Text(group));
        }
        row.extend([
            Cell::Int(members),
            Cell::Int(principal),
            Cell::Int(bonus),
            Cell::Int(principal + bonus),
            Cell::Int(points),
            Cell::Int(points.saturating_mul(rules.point_value_fen)),
        ]);
        table.rows.push(row);
    }
    Ok(table)
}

/// Who funded what a store accepted as stored-value payment.
pub const unfunded: &str = "unfunded";

/// One principal ledger movement, as settlement reads it.
#[derive(Clone, Debug)]
pub struct PrincipalEntry {
    pub origin: String,
    pub seq: i64,
    pub wall_ms: i64,
    pub counter: i64,
    pub kind: String,
    pub amount: i64,
}

/// Inter-store settlement over principal stored value (bonus is the chain's gift and is not
/// settled). Per canonical member, in ledger order (HLC time, counter, origin, seq): every
/// credit (recharge, refund, positive adjustment) is a lot held by the store that wrote it;
/// every spend consumes the oldest lots first, and the lot's store owes the spending store
/// that amount (a spend beyond the lots is `unfunded`); a negative adjustment consumes lots
/// without settlement. Only spends in the period count. Rows: (owes, owed_to, amount_fen)
/// between different stores; `by=store` gives per store owes, owed and net (owed − owes).
pub fn settlement(
    conn: &Connection,
    scope: &Scope,
    period: Period,
    by: Option<&str>,
) -> Result<Table, String> {
    let db = |e: rusqlite::Error| e.to_string();
    if by.is_some_and(|by| by != "store") {
        return Err("by must be store".into());
    }
    let merged = merged_members(conn).map_err(db)?;
    let mut statement = conn
        .prepare_cached(
            "SELECT member_id, origin, seq, hlc_wall_ms, hlc_counter, kind, amount FROM ledger
             WHERE account = 'principal'",
        )
        .map_err(db)?;
    let mut rows = statement.query([]).map_err(db)?;
    let mut groups: HashMap<Uuid, Vec<PrincipalEntry>> = HashMap::new();
    while let Some(row) = rows.next().map_err(db)? {
        let Ok(id) = Uuid::parse_str(&row.get::<_, String>(0).map_err(db)?) else {
            continue;
        };
        let id = merged.get(&id).copied().unwrap_or(id);
        groups.entry(id).or_default().push(PrincipalEntry {
            origin: row.get(1).map_err(db)?,
            seq: row.get(2).map_err(db)?,
            wall_ms: row.get(3).map_err(db)?,
            counter: row.get(4).map_err(db)?,
            kind: row.get(5).map_err(db)?,
            amount: row.get(6).map_err(db)?,
        });
    }
    let mut flows: BTreeMap<(String, String), i64> = BTreeMap::new();
    for entries in groups.values_mut() {
        settle_member(entries, period, &mut flows);
    }
    if by == Some("store") {
        let mut stores: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for ((owes, owed_to), amount) in &flows {
            stores.entry(owes.clone()).or_default().0 += amount;
            stores.entry(owed_to.clone()).or_default().1 += amount;
        }
        let mut table = Table::new(&["store", "owes_fen", "owed_fen", "net_fen"]);
        for (store, (owes, owed)) in stores {
            if !scope.allows(&store) {
                continue;
            }
            table.rows.push(vec![
                Cell::Text(store),
                Cell::Int(owes),
                Cell::Int(owed),
                Cell::Int(owed - owes),
            ]);
        }
        return Ok(table);
    }
    let mut table = Table::new(&["owes", "owed_to", "amount_fen"]);
    for ((owes, owed_to), amount) in flows {
        if !scope.allows(&owes) && !scope.allows(&owed_to) {
            continue;
        }
        table.rows.push(vec![
            Cell::Text(owes),
            Cell::Text(owed_to),
            Cell::Int(amount),
        ]);
    }
    Ok(table)
}

/// First-in first-out over one member's principal entries (see [`settlement`]).
pub fn settle_member(
    entries: &mut [PrincipalEntry],
    period: Period,
    flows: &mut BTreeMap<(String, String), i64>,
) {
    entries.sort_by(|a, b| {
        (a.wall_ms, a.counter, &a.origin, a.seq).cmp(&(b.wall_ms, b.counter, &b.origin, b.seq))
    });
    let mut lots: VecDeque<(String, i64)> = VecDeque::new();
    for entry in entries.iter() {
        if entry.amount > 0 {
            lots.push_back((entry.origin.clone(), entry.amount));
            continue;
        }
        let counted = entry.kind == "spend"
            && entry.wall_ms >= period.start_ms()
            && entry.wall_ms < period.end_ms();
        let mut due = -entry.amount;
        while due > 0 {
            let Some((store, left)) = lots.front_mut() else {
                break;
            };
            let take = due.min(*left);
            if counted && *store != entry.origin {
                *flows
                    .entry((store.clone(), entry.origin.clone()))
                    .or_default() += take;
            }
            *left -= take;
            due -= take;
            if *left == 0 {
                lots.pop_front();
            }
        }
        if counted && due > 0 {
            *flows
                .entry((unfunded.to_owned(), entry.origin.clone()))
                .or_default() += due;
        }
    }
}

/// Per coupon template: coupons issued, coupons redeemed at least once, redemptions, coupons
/// redeemed more than once, and the redemption rate in basis points (redeemed × 10000 ÷
/// issued). A regional manager sees the coupons issued to members of their region.
pub fn coupons(conn: &Connection, scope: &Scope) -> Result<Table, String> {
    let db = |e: rusqlite::Error| e.to_string();
    let mut statement = conn
        .prepare_cached(
            "SELECT c.template_id, COALESCE(t.name, ''), c.member_id,
                    (SELECT COUNT(*) FROM coupon_redemptions r WHERE r.code = c.code),
                    (SELECT home_store FROM report_members WHERE member_id =
                        (SELECT COALESCE(merged_into, id) FROM members WHERE id = c.member_id))
             FROM coupons c LEFT JOIN coupon_templates t ON t.id = c.template_id",
        )
        .map_err(db)?;
    let mut rows = statement.query([]).map_err(db)?;
    let mut templates: BTreeMap<(String, String), [i64; 4]> = BTreeMap::new();
    while let Some(row) = rows.next().map_err(db)? {
        let member: Option<String> = row.get(2).map_err(db)?;
        let home: Option<String> = row.get(4).map_err(db)?;
        let visible = match (&scope.stores, member) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(_), Some(_)) => scope.allows(home.as_deref().unwrap_or("")),
        };
        if !visible {
            continue;
        }
        let redemptions: i64 = row.get(3).map_err(db)?;
        let sums = templates
            .entry((row.get(0).map_err(db)?, row.get(1).map_err(db)?))
            .or_default();
        sums[0] += 1;
        sums[1] += i64::from(redemptions > 0);
        sums[2] += redemptions;
        sums[3] += i64::from(redemptions > 1);
    }
    let mut table = Table::new(&[
        "template_id",
        "name",
        "issued",
        "redeemed",
        "redemptions",
        "double_redeemed",
        "redemption_rate_bp",
    ]);
    for ((id, name), [issued, redeemed, redemptions, double]) in templates {
        let rate = if issued > 0 {
            redeemed * 10_000 / issued
        } else {
            0
        };
        table.rows.push(vec![
            Cell::Text(id),
            Cell::Text(name),
            Cell::Int(issued),
            Cell::Int(redeemed),
            Cell::Int(redemptions),
            Cell::Int(double),
            Cell::Int(rate),
        ]);
    }
    Ok(table)
}

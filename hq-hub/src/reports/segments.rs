//! Segmentation: five classes by purchase frequency × amount over a window, plus dormant.
//!
//! For the window `[from, to]` (whole days) and `dormant_days` N (default 30), each canonical
//! member registered before the end of `to` gets exactly one class, in this order:
//! 1. `dormant` (沉睡): no visit in the N days ending with `to` (or never a visit);
//! 2. `new` (新客): exactly one visit in the window, and it is their first visit ever;
//! 3. otherwise, with F = visits in the window and M = net spend in the window (分), high
//!    means at or above the split:
//!    `champion` (重要价值) high F high M, `big_spender` (重要发展) low F high M,
//!    `frequent` (一般价值) high F low M, `occasional` (一般发展) low F low M.
//!
//! The splits default to the chain's lower medians of F and M over the members of step 3
//! (sorted values v, median v[(n-1)/2]; 1 and 1 分 when there are none); they can be given.

use rusqlite::Connection;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use uuid::Uuid;

use super::members::{IndexedMember, WindowStats, indexed_members, window_stats};
use super::scope::Scope;
use super::{Cell, Period, Table, day_ms, day_of, format_date};

pub const classes: [&str; 6] = [
    "champion",
    "big_spender",
    "frequent",
    "occasional",
    "new",
    "dormant",
];

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SegmentQuery {
    /// First day of the window (default 29 days before `to`).
    pub from: Option<String>,
    /// Last day of the window (default today).
    pub to: Option<String>,
    /// No visit in this many days ending with `to` makes a member dormant (default 30).
    pub dormant_days: Option<i64>,
    /// Visits in the window at or above this are high frequency (default: chain median).
    pub frequency_split: Option<i64>,
    /// Net spend in the window at or above this (分) is high amount (default: chain median).
    pub amount_split_fen: Option<i64>,
    /// store or region (home store of the member); none for the whole scope.
    pub by: Option<String>,
    /// Member lists: only members with this home store.
    pub store: Option<String>,
    /// Member lists: only members whose home store is in this region.
    pub region: Option<String>,
    /// Member lists: 1-based page, rows per page (default 50, at most 500).
    pub page: Option<u64>,
    pub per_page: Option<u64>,
    /// json (default), csv or xlsx.
    pub format: Option<String>,
}

/// One member's class and window figures.
#[derive(Clone, Debug)]
pub struct Classified {
    pub member: IndexedMember,
    pub class: &'static str,
    pub window: WindowStats,
}

pub struct Segmentation {
    pub frequency_split: i64,
    pub amount_split_fen: i64,
    /// In the caller's scope.
    pub members: Vec<Classified>,
}

fn lower_median(mut values: Vec<i64>, default: i64) -> i64 {
    if values.is_empty() {
        return default;
    }
    values.sort_unstable();
    values[(values.len() - 1) / 2]
}

pub fn segment(
    conn: &Connection,
    scope: &Scope,
    query: &SegmentQuery,
    now_ms: u64,
) -> Result<Segmentation, String> {
    let period = Period::parse(query.from.as_deref(), query.to.as_deref(), now_ms)?;
    let dormant_days = query.dormant_days.unwrap_or(30);
    if !(1..=3_660).contains(&dormant_days) {
        return Err("dormant_days must be 1 to 3660".into());
    }
    let (start, end) = (period.start_ms(), period.end_ms());
    let recent_start = end - dormant_days * day_ms;
    let db = |e: rusqlite::Error| e.to_string();
    let window = window_stats(conn, start, end).map_err(db)?;
    let recent = if recent_start >= start {
        None
    } else {
        Some(window_stats(conn, recent_start, end).map_err(db)?)
    };
    let is_recent = |id: &Uuid| match &recent {
        Some(recent) => recent.contains_key(id),
        None => window
            .get(id)
            .is_some_and(|s| s.last_visit_ms >= recent_start),
    };
    // Medians over the whole chain; classes only for the caller's scope.
    let everyone = indexed_members(conn, None, end).map_err(db)?;
    let mut step3 = Vec::new();
    let mut pre: Vec<(IndexedMember, Option<&'static str>, WindowStats)> = Vec::new();
    for member in everyone {
        let stats = window.get(&member.id).copied().unwrap_or_default();
        let class = if !is_recent(&member.id) {
            Some("dormant")
        } else if stats.visits == 1 && member.first_visit_ms.is_some_and(|first| first >= start) {
            Some("new")
        } else {
            step3.push((stats.visits, stats.spend_fen));
            None
        };
        if scope.allows(&member.home_store) {
            pre.push((member, class, stats));
        }
    }
    let frequency_split = match query.frequency_split {
        Some(v) => v,
        None => lower_median(step3.iter().map(|s| s.0).collect(), 1),
    };
    let amount_split_fen = match query.amount_split_fen {
        Some(v) => v,
        None => lower_median(step3.iter().map(|s| s.1).collect(), 1),
    };
    let members = pre
        .into_iter()
        .map(|(member, class, window)| {
            let class = class.unwrap_or(
                match (
                    window.visits >= frequency_split,
                    window.spend_fen >= amount_split_fen,
                ) {
                    (true, true) => "champion",
                    (false, true) => "big_spender",
                    (true, false) => "frequent",
                    (false, false) => "occasional",
                },
            );
            Classified {
                member,
                class,
                window,
            }
        })
        .collect();
    Ok(Segmentation {
        frequency_split,
        amount_split_fen,
        members,
    })
}

/// Counts per class (and per store or region): rows with at least one member.
pub fn counts(
    segmentation: &Segmentation,
    scope: &Scope,
    by: Option<&str>,
) -> Result<Table, String> {
    let group = |m: &Classified| -> String {
        match by {
            Some("store") => m.member.home_store.clone(),
            Some("region") => scope.region_of(&m.member.home_store),
            _ => String::new(),
        }
    };
    if let Some(by) = by
        && by != "store"
        && by != "region"
    {
        return Err(format!("by: {by:?} is not store or region"));
    }
    let mut count: BTreeMap<(String, usize), i64> = BTreeMap::new();
    for m in &segmentation.members {
        let class = classes.iter().position(|c| *c == m.class).unwrap_or(0);
        *count.entry((group(m), class)).or_default() += 1;
    }
    let mut columns = Vec::new();
    if let Some(by) = by {
        columns.push(by);
    }
    columns.extend(["class", "members"]);
    let mut table = Table::new(&columns);
    for ((group, class), n) in count {
        let mut row = Vec::new();
        if by.is_some() {
            row.push(Cell::Text(group));
        }
        row.push(Cell::from(classes[class]));
        row.push(Cell::Int(n));
        table.rows.push(row);
    }
    Ok(table)
}

pub const member_columns: [&str; 7] = [
    "member_id",
    "name",
    "phone",
    "home_store",
    "visits",
    "spend_fen",
    "last_visit",
];

/// The members of one class, by window spend (highest first), then id.
pub fn class_members(
    conn: &Connection,
    segmentation: &Segmentation,
    scope: &Scope,
    class: &str,
    query: &SegmentQuery,
) -> Result<Vec<Vec<Cell>>, String> {
    if !classes.contains(&class) {
        return Err(format!("class must be one of {}", classes.join(", ")));
    }
    let mut chosen: Vec<&Classified> = segmentation
        .members
        .iter()
        .filter(|m| m.class == class)
        .filter(|m| {
            query
                .store
                .as_ref()
                .is_none_or(|s| *s == m.member.home_store)
        })
        .filter(|m| {
            query
                .region
                .as_ref()
                .is_none_or(|r| *r == scope.region_of(&m.member.home_store))
        })
        .collect();
    chosen.sort_by(|a, b| {
        b.window
            .spend_fen
            .cmp(&a.window.spend_fen)
            .then(a.member.id.cmp(&b.member.id))
    });
    let mut names: HashMap<Uuid, (String, String)> = HashMap::new();
    let mut statement = conn
        .prepare_cached("SELECT name, phone FROM members WHERE id = ?1")
        .map_err(|e| e.to_string())?;
    let mut rows = Vec::with_capacity(chosen.len());
    for m in chosen {
        let (name, phone) = names
            .entry(m.member.id)
            .or_insert_with(|| {
                statement
                    .query_row([m.member.id.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap_or_default()
            })
            .clone();
        let last = if m.window.visits > 0 {
            format_date(day_of(m.window.last_visit_ms.max(0) as u64))
        } else {
            String::new()
        };
        rows.push(vec![
            Cell::Text(m.member.id.to_string()),
            Cell::Text(name),
            Cell::Text(scope.phone(&phone)),
            Cell::Text(m.member.home_store.clone()),
            Cell::Int(m.window.visits),
            Cell::Int(m.window.spend_fen),
            Cell::Text(last),
        ]);
    }
    Ok(rows)
}

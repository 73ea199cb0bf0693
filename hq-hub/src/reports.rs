//! HQ queries and reports: member search, segmentation, sales and money reports, export.
//!
//! Layout:
//! - [`index`]: report tables kept up to date by the hub's projection (idempotent, merge-aware).
//! - [`scope`]: what a caller may see (a regional manager: their region's stores and members).
//! - [`members`]: member search and the window statistics behind segments, tiers, top customers.
//! - [`segments`]: five frequency × amount classes plus dormant.
//! - [`sales`]: sales, categories, daily active members, new members, tiers, top customers.
//! - [`money`]: stored-value and points liability, inter-store settlement, coupon redemption.
//! - [`export`]: tables to CSV and .xlsx; [`http`]: the routes; [`cli`]: `hq-hub report`.
//!
//! Days are calendar days in China time (UTC+8); `from` and `to` are inclusive dates.

pub mod cli;
pub mod export;
pub mod http;
pub mod index;
pub mod members;
pub mod money;
pub mod sales;
pub mod scope;
pub mod segments;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub const day_ms: i64 = 86_400_000;
/// China time is UTC+8 all year.
pub const utc_offset_ms: i64 = 8 * 3_600_000;

/// The day number (days since 1970-01-01 in China time) of a Unix ms instant.
pub fn day_of(at_ms: u64) -> i64 {
    (at_ms as i64 + utc_offset_ms).div_euclid(day_ms)
}

/// The Unix ms at which a day starts.
pub fn day_start_ms(day: i64) -> i64 {
    day * day_ms - utc_offset_ms
}

/// `YYYY-MM-DD` → day number.
pub fn parse_date(text: &str) -> Option<i64> {
    chainsync_core::member::validate_birthday(text).ok()?;
    let y: i64 = text.get(0..4)?.parse().ok()?;
    let m: i64 = text.get(5..7)?.parse().ok()?;
    let d: i64 = text.get(8..10)?.parse().ok()?;
    // Days from civil (proleptic Gregorian), after H. Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some(era * 146_097 + doe - 719_468)
}

/// Day number → `YYYY-MM-DD`.
pub fn format_date(day: i64) -> String {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A value in a report cell: an integer (money in 分, counts) or text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Cell {
    Int(i64),
    Text(String),
}

impl Cell {
    pub fn text(&self) -> String {
        match self {
            Cell::Int(v) => v.to_string(),
            Cell::Text(t) => t.clone(),
        }
    }
}

impl From<i64> for Cell {
    fn from(v: i64) -> Cell {
        Cell::Int(v)
    }
}

impl From<String> for Cell {
    fn from(v: String) -> Cell {
        Cell::Text(v)
    }
}

impl From<&str> for Cell {
    fn from(v: &str) -> Cell {
        Cell::Text(v.to_owned())
    }
}

/// Every report and list: named columns and rows of cells (money in 分).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Table {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
    /// For paginated lists: how many rows match in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
}

impl Table {
    pub fn new(columns: &[&str]) -> Table {
        Table {
            columns: columns.iter().map(|c| (*c).to_owned()).collect(),
            rows: Vec::new(),
            total: None,
        }
    }

    /// The index of a column by name.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }
}

/// A period: inclusive days, and the Unix ms half-open range they cover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub from_day: i64,
    pub to_day: i64,
}

impl Period {
    /// `from`/`to` dates; `to` defaults to today, `from` to 29 days before `to`.
    pub fn parse(from: Option<&str>, to: Option<&str>, now_ms: u64) -> Result<Period, String> {
        let date = |name: &str, text: &str| {
            parse_date(text.trim()).ok_or_else(|| format!("{name} must be a date YYYY-MM-DD"))
        };
        let to_day = match to {
            Some(text) => date("to", text)?,
            None => day_of(now_ms),
        };
        let from_day = match from {
            Some(text) => date("from", text)?,
            None => to_day - 29,
        };
        if from_day > to_day {
            return Err("from must not be after to".into());
        }
        if to_day - from_day > 3_660 {
            return Err("a period is at most ten years".into());
        }
        Ok(Period { from_day, to_day })
    }

    pub fn start_ms(&self) -> i64 {
        day_start_ms(self.from_day)
    }

    /// The first ms after the period.
    pub fn end_ms(&self) -> i64 {
        day_start_ms(self.to_day + 1)
    }
}

/// Split `by=a,b` into known dimension names.
pub fn parse_dimensions(by: Option<&str>, allowed: &[&str]) -> Result<Vec<String>, String> {
    let mut dims = Vec::new();
    for part in by.unwrap_or("").split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        if !allowed.contains(&part) {
            return Err(format!("by: {part:?} is not one of {}", allowed.join(", ")));
        }
        if !dims.iter().any(|d| d == part) {
            dims.push(part.to_owned());
        }
    }
    Ok(dims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_in_china_time() {
        assert_eq!(parse_date("1970-01-01"), Some(0));
        assert_eq!(
            parse_date("2026-11-22").map(format_date).unwrap(),
            "2026-11-22"
        );
        assert_eq!(format_date(parse_date("2024-02-29").unwrap()), "2024-02-29");
        assert_eq!(parse_date("2024-02-30"), None);
        // 2026-11-22 00:30 in Beijing is 2026-11-21 16:30 UTC.
        let day = parse_date("2026-11-22").unwrap();
        let start = day_start_ms(day);
        assert_eq!(day_of(start as u64), day);
        assert_eq!(day_of(start as u64 - 1), day - 1);
    }
}

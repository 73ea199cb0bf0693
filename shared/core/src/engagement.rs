//! Engagement rules of the membership program: daily check-in with a streak, birthdays, the
//! referral reward, and automatic member tags. Pure: dates come from instants and a UTC offset
//! given by the caller.
//!
//! Local time: every local-date or local-hour rule (birthdays, check-in days, coupon hour
//! windows, dormant days…) goes through [`local_datetime`] (or [`local_date`], built on it) with
//! the store's UTC offset (`utc_offset` in store.toml, `STORE_NODE_UTC_OFFSET`, default
//! [`default_utc_offset_seconds`], read with [`parse_utc_offset`]).
//!
//! A new rule is a pure function here (with its constants and tests), called from the store's
//! `store-node/src/engagement.rs`, which writes its ledger entries and outbox messages inside
//! the writer's transaction.

use std::collections::BTreeSet;
use time::{Date, Month, OffsetDateTime, UtcOffset, Weekday};

/// The store's time zone by default: China time, UTC+8 all year.
pub const default_utc_offset_seconds: i32 = 8 * 3_600;
/// Points for a daily check-in.
pub const checkin_points: i64 = 10;
/// Every this many consecutive days of check-ins earn the streak reward.
pub const streak_reward_days: u32 = 7;
/// Points of the streak reward.
pub const streak_reward_points: i64 = 100;
/// Points each for the referrer and the referee after the referee's first purchase.
pub const referral_points: i64 = 200;
/// `big_spender`: 12-month spend at least this (¥5,000).
pub const big_spender_fen: i64 = 500_000;
/// `weekend_shopper`: at least this share of visits on Saturday or Sunday, in percent…
pub const weekend_share_percent: u64 = 60;
/// …over at least this many visits.
pub const weekend_visits_min: u64 = 3;
/// `dormant`: no checkout for this many days.
pub const dormant_days: u64 = 30;

const day_ms: u64 = 86_400_000;

/// Most hours a store's zone may be west of UTC (UTC-12:00)…
pub const utc_offset_west_max_seconds: i32 = 12 * 3_600;
/// …and east of it (UTC+14:00).
pub const utc_offset_east_max_seconds: i32 = 14 * 3_600;

/// Local time at the store: the instant `at_ms` (Unix ms) in a zone `offset_seconds` east of
/// UTC (None if out of range). The one function every local-time rule uses.
pub fn local_datetime(at_ms: u64, offset_seconds: i32) -> Option<OffsetDateTime> {
    let offset = UtcOffset::from_whole_seconds(offset_seconds).ok()?;
    let millis = i128::from(at_ms);
    Some(
        OffsetDateTime::from_unix_timestamp_nanos(millis * 1_000_000)
            .ok()?
            .to_offset(offset),
    )
}

/// The calendar date at `at_ms` (Unix ms) in a zone `offset_seconds` east of UTC.
pub fn local_date(at_ms: u64, offset_seconds: i32) -> Option<Date> {
    local_datetime(at_ms, offset_seconds).map(|local| local.date())
}

/// A UTC offset as people write it: `+08:00`, `-05:30`, `+8`, `UTC+8`, `0`, `Z`; within
/// UTC-12:00 to UTC+14:00, whole minutes. Returns seconds east of UTC.
pub fn parse_utc_offset(text: &str) -> Option<i32> {
    let text = text.trim();
    let text = text
        .strip_prefix("UTC")
        .or_else(|| text.strip_prefix("utc"))
        .unwrap_or(text)
        .trim();
    if text == "Z" || text == "0" || text.is_empty() {
        return Some(0);
    }
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let (hours, minutes) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None => (rest, "0"),
    };
    let digits = |part: &str| {
        (!part.is_empty() && part.len() <= 2 && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse::<i32>().ok())
            .flatten()
    };
    let (hours, minutes) = (digits(hours)?, digits(minutes)?);
    if minutes >= 60 {
        return None;
    }
    let seconds = sign * (hours * 3_600 + minutes * 60);
    (-utc_offset_west_max_seconds..=utc_offset_east_max_seconds)
        .contains(&seconds)
        .then_some(seconds)
}

/// `+08:00` for 28800.
pub fn format_utc_offset(offset_seconds: i32) -> String {
    let sign = if offset_seconds < 0 { '-' } else { '+' };
    let minutes = offset_seconds.unsigned_abs() / 60;
    format!("{sign}{:02}:{:02}", minutes / 60, minutes % 60)
}

/// `YYYY-MM-DD`.
pub fn format_date(date: Date) -> String {
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// `YYYY-MM-DD` → date (None if malformed).
pub fn parse_date(text: &str) -> Option<Date> {
    let mut parts = text.trim().splitn(3, '-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let day: u8 = parts.next()?.parse().ok()?;
    Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()
}

/// The streak a check-in on `today` makes, given the days of earlier check-ins: 1 plus the
/// number of consecutive days right before `today` with a check-in.
pub fn streak_on(earlier: &BTreeSet<Date>, today: Date) -> u32 {
    let mut streak = 1;
    let mut day = today;
    while let Some(previous) = day.previous_day() {
        if !earlier.contains(&previous) {
            break;
        }
        streak += 1;
        day = previous;
    }
    streak
}

/// The streak reward a check-in with this streak earns (every 7th consecutive day).
pub fn streak_reward(streak: u32) -> i64 {
    if streak > 0 && streak.is_multiple_of(streak_reward_days) {
        streak_reward_points
    } else {
        0
    }
}

/// Is `today` the birthday `YYYY-MM-DD`? A 29 February birthday is kept on 28 February in
/// other years.
pub fn is_birthday(birthday: &str, today: Date) -> bool {
    let Some(born) = parse_date(birthday) else {
        return false;
    };
    if born.month() == today.month() && born.day() == today.day() {
        return true;
    }
    born.month() == Month::February
        && born.day() == 29
        && !time::util::is_leap_year(today.year())
        && today.month() == Month::February
        && today.day() == 28
}

/// What the automatic tags are computed from.
#[derive(Clone, Debug, Default)]
pub struct Activity {
    /// Net spend over the last 12 months, in 分.
    pub spend_12m_fen: i64,
    /// Times (Unix ms) of the member's checkouts.
    pub visits_ms: Vec<u64>,
    /// When the member registered (Unix ms).
    pub created_ms: u64,
}

/// Automatic tags, in a fixed order: `dormant` (no checkout for 30 days, or none since
/// registering 30 days ago), `big_spender` (12-month spend ≥ ¥5,000), `weekend_shopper` (≥ 60 %
/// of at least 3 visits on Saturday or Sunday, in the store's time zone).
pub fn auto_tags(activity: &Activity, now_ms: u64, offset_seconds: i32) -> Vec<&'static str> {
    let mut tags = Vec::new();
    let last = activity
        .visits_ms
        .iter()
        .copied()
        .max()
        .unwrap_or(activity.created_ms);
    if now_ms.saturating_sub(last) >= dormant_days * day_ms {
        tags.push("dormant");
    }
    if activity.spend_12m_fen >= big_spender_fen {
        tags.push("big_spender");
    }
    let visits = activity.visits_ms.len() as u64;
    let weekend = activity
        .visits_ms
        .iter()
        .filter_map(|at| local_date(*at, offset_seconds))
        .filter(|date| matches!(date.weekday(), Weekday::Saturday | Weekday::Sunday))
        .count() as u64;
    if visits >= weekend_visits_min && weekend * 100 >= weekend_share_percent * visits {
        tags.push("weekend_shopper");
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(text: &str) -> Date {
        parse_date(text).unwrap_or(Date::MIN)
    }

    #[test]
    fn local_dates_are_in_china_time() {
        // 2026-11-22T16:30Z is 2026-11-23 00:30 in UTC+8.
        let at = 1_795_365_000_000;
        assert_eq!(
            local_date(at, default_utc_offset_seconds).map(format_date),
            Some("2026-11-23".to_owned())
        );
        assert_eq!(
            local_date(at, 0).map(format_date),
            Some("2026-11-22".to_owned())
        );
        assert_eq!(parse_date("2026-02-30"), None);
        assert_eq!(parse_date("x"), None);
    }

    #[test]
    fn utc_offsets_parse_and_local_time_follows_them() {
        assert_eq!(parse_utc_offset("+08:00"), Some(28_800));
        assert_eq!(parse_utc_offset("UTC+8"), Some(28_800));
        assert_eq!(parse_utc_offset("-05:30"), Some(-19_800));
        assert_eq!(parse_utc_offset("Z"), Some(0));
        assert_eq!(parse_utc_offset("+14:00"), Some(50_400));
        assert_eq!(parse_utc_offset("-12:00"), Some(-43_200));
        for bad in [
            "+15", "-13:00", "8", "+08:60", "+0800x", "++8", "+", "abc", "+123",
        ] {
            assert_eq!(parse_utc_offset(bad), None, "{bad}");
        }
        assert_eq!(format_utc_offset(-19_800), "-05:30");
        assert_eq!(format_utc_offset(28_800), "+08:00");
        // 2026-11-22T16:30Z: 00:30 the next day in China, 04:30 the same day at UTC-12.
        let at = 1_795_365_000_000;
        let china = local_datetime(at, default_utc_offset_seconds).map(|t| (t.day(), t.hour()));
        assert_eq!(china, Some((23, 0)));
        let west = local_datetime(at, -43_200).map(|t| (t.day(), t.hour(), t.minute()));
        assert_eq!(west, Some((22, 4, 30)));
        assert_eq!(local_datetime(at, 100_000), None);
    }

    #[test]
    fn streaks_count_consecutive_days() {
        let earlier: BTreeSet<Date> = ["2026-11-20", "2026-11-21", "2026-11-18"]
            .iter()
            .map(|d| date(d))
            .collect();
        assert_eq!(streak_on(&earlier, date("2026-11-22")), 3);
        assert_eq!(streak_on(&earlier, date("2026-11-23")), 1);
        assert_eq!(streak_on(&BTreeSet::new(), date("2026-01-01")), 1);
        assert_eq!(streak_reward(6), 0);
        assert_eq!(streak_reward(7), streak_reward_points);
        assert_eq!(streak_reward(14), streak_reward_points);
    }

    #[test]
    fn birthdays_match_month_and_day() {
        assert!(is_birthday("1990-11-22", date("2026-11-22")));
        assert!(!is_birthday("1990-11-21", date("2026-11-22")));
        assert!(is_birthday("2000-02-29", date("2027-02-28")));
        assert!(!is_birthday("2000-02-29", date("2028-02-28")));
        assert!(is_birthday("2000-02-29", date("2028-02-29")));
        assert!(!is_birthday("garbage", date("2028-02-29")));
    }

    #[test]
    fn auto_tags_follow_the_rules() {
        let now = 1_795_365_000_000u64;
        let day = 86_400_000u64;
        // 2026-11-21 12:00 in UTC+8, a Saturday.
        let saturday = 1_795_233_600_000u64;
        assert_eq!(
            local_date(saturday, default_utc_offset_seconds).map(|d| d.weekday()),
            Some(Weekday::Saturday)
        );
        let weekend = Activity {
            spend_12m_fen: 499_999,
            visits_ms: vec![saturday, saturday + day, saturday - 3 * day],
            created_ms: now - 400 * day,
        };
        assert_eq!(
            auto_tags(&weekend, now, default_utc_offset_seconds),
            vec!["weekend_shopper"]
        );
        let two_visits = Activity {
            visits_ms: vec![saturday, saturday + day],
            ..weekend.clone()
        };
        assert!(auto_tags(&two_visits, now, default_utc_offset_seconds).is_empty());
        let big_and_gone = Activity {
            spend_12m_fen: big_spender_fen,
            visits_ms: vec![now - 31 * day],
            created_ms: now - 400 * day,
        };
        assert_eq!(
            auto_tags(&big_and_gone, now, default_utc_offset_seconds),
            vec!["dormant", "big_spender"]
        );
        let new_member = Activity {
            created_ms: now - day,
            ..Activity::default()
        };
        assert!(auto_tags(&new_member, now, default_utc_offset_seconds).is_empty());
    }
}

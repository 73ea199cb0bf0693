//! Member tiers (会员等级): which tier a member is in, as a pure function of the member's
//! entries, the rules and the instant asked about. Nothing about a tier is stored: every
//! replica (each store, the hub) that holds the same entries and rules computes the same tier
//! for the same instant.
//!
//! **The metric** ([`TierMetric`], `tier_metric` in the rules): over the rolling 12 months
//! ([`crate::rules::tier_window_ms`], 365 days) either
//! - `spend` (the default): net spend, each sale counted at its time minus what was refunded
//!   of it; or
//! - `points`: points *earned* — `points_earn` (purchases), `points_reward` (check-in, streak,
//!   referral) and the earned points a refund takes back (a negative `points_reverse`), each
//!   counted at its sale's time when it belongs to a sale. Redeeming points (`points_redeem`,
//!   and a refund giving redeemed points back), expiry and manual adjustments (corrections,
//!   signup gifts) do not count: spending or losing points never costs a member the tier, and
//!   the tier is a reward for buying and coming back, not a balance.
//!
//! The metric at instant `t` is `M(t)`: the sum of the entries with `t − window ≤ at ≤ t`. An
//! entry stamped after the instant asked about (a store whose clock runs ahead) counts as of
//! that instant.
//!
//! **Downgrade** ([`TierDowngrade`], `tier_downgrade` in the rules): the member is in the tier of
//! the highest `M(t)` over a span of instants ending now ([`peak_rolling_sum`]):
//! - `rolling` (the default): the span is now alone: the tier follows the metric and may drop
//!   any day;
//! - `period_end`: the span is the current period ([`TierPeriod`]: every `months` months from
//!   January 1, in the period's time zone; one zone for the whole chain so every replica cuts
//!   periods at the same instant): the tier re-evaluated at the period's first instant, or any
//!   higher tier reached since, is kept until the period ends;
//! - `never`: the span is all time: once reached, kept.
//!
//! Upgrade is automatic in every policy: as soon as `M(now)` reaches a threshold. A checkout is
//! priced in the tier the member is in *before* it (the tier is read before the sale is
//! written), so the checkout that crosses a threshold gets the old tier's discount and
//! multiplier, and the next checkout the new tier's.
//!
//! Why it converges: the result depends only on the set of entries (a sum per instant, then a
//! maximum), not on their order or on when they arrived ([`peak_rolling_sum`] sorts), and
//! the tier is monotone in the metric (thresholds go up strictly), so every replica holding the
//! same entries and rules shows the same tier at the same instant (property-tested below).

use serde::{Deserialize, Serialize};
use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};

/// What tier thresholds are compared with (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierMetric {
    /// Net spend over the rolling 12 months, against `Tier::spend_threshold`.
    #[default]
    Spend,
    /// Points earned over the rolling 12 months, against `Tier::points_threshold`.
    Points,
}

/// When a member's tier may go down (see the module doc).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierDowngrade {
    #[default]
    Rolling,
    PeriodEnd,
    Never,
}

/// The periods of the `period_end` policy: every `months` months counted from January 1 (1, 2,
/// 3, 4, 6 or 12: 12 is the calendar year), local midnight in the zone `utc_offset_seconds`
/// east of UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierPeriod {
    #[serde(default = "default_period_months")]
    pub months: u32,
    #[serde(default = "default_period_offset")]
    pub utc_offset_seconds: i32,
}

fn default_period_months() -> u32 {
    12
}

fn default_period_offset() -> i32 {
    crate::engagement::default_utc_offset_seconds
}

impl Default for TierPeriod {
    fn default() -> TierPeriod {
        TierPeriod {
            months: default_period_months(),
            utc_offset_seconds: default_period_offset(),
        }
    }
}

/// Period lengths a rule set may choose (divisors of 12, so periods tile the year).
pub const period_months_allowed: [u32; 6] = [1, 2, 3, 4, 6, 12];

/// Largest `Tier::points_threshold`.
pub const points_threshold_max: i64 = 1_000_000_000;

impl TierPeriod {
    pub fn validate(&self) -> Result<(), &'static str> {
        if !period_months_allowed.contains(&self.months) {
            return Err("tier_period.months is 1, 2, 3, 4, 6 or 12");
        }
        let zone = -crate::engagement::utc_offset_west_max_seconds
            ..=crate::engagement::utc_offset_east_max_seconds;
        if !zone.contains(&self.utc_offset_seconds) || self.utc_offset_seconds % 60 != 0 {
            return Err("tier_period.utc_offset_seconds is -12:00 to +14:00 in whole minutes");
        }
        Ok(())
    }

    /// The first instant (ms since the epoch) of the period holding `at_ms`: local midnight on
    /// the first day of its first month. 0 when that is before the epoch or out of range.
    pub fn start_ms(&self, at_ms: u64) -> u64 {
        self.start_of(at_ms).unwrap_or(0)
    }

    fn start_of(&self, at_ms: u64) -> Option<u64> {
        let offset = UtcOffset::from_whole_seconds(self.utc_offset_seconds).ok()?;
        let local = crate::engagement::local_datetime(at_ms, self.utc_offset_seconds)?;
        let months = self.months.clamp(1, 12);
        let month0 = u32::from(u8::from(local.month())) - 1;
        let first = u8::try_from(month0 - month0 % months + 1).ok()?;
        let date = Date::from_calendar_date(local.year(), Month::try_from(first).ok()?, 1).ok()?;
        let instant = PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_offset(offset);
        u64::try_from(instant.unix_timestamp_nanos() / 1_000_000).ok()
    }
}

/// One contribution to a member's tier metric: an amount (分 or points; negative for what a
/// refund takes back) at an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricEntry {
    pub at_ms: u64,
    pub amount: i64,
}

/// `M(t)`: the sum of the entries with `t − window_ms ≤ at ≤ t` (entries after `t` count at
/// `t` when `t` is `now`; see [`peak_rolling_sum`]).
pub fn rolling_sum(entries: &[MetricEntry], window_ms: u64, t_ms: u64) -> i64 {
    let since = t_ms.saturating_sub(window_ms);
    entries
        .iter()
        .filter(|e| e.at_ms >= since && e.at_ms <= t_ms)
        .fold(0i64, |sum, e| sum.saturating_add(e.amount))
}

/// The highest `M(t)` over the instants `from_ms ≤ t ≤ now_ms`, where an entry stamped after
/// `now_ms` counts as at `now_ms`.
///
/// `M` is a step function: an entry adds its amount at `at` and takes it away again at
/// `at + window + 1`. Between two such events `M` is constant, so its highest value over the
/// span is at `from` or at one of the events inside it; the entries are turned into events,
/// sorted, and swept once (O(n log n)). The result depends on the set of entries only (the
/// sort removes their order; equal events commute in a sum).
pub fn peak_rolling_sum(entries: &[MetricEntry], window_ms: u64, from_ms: u64, now_ms: u64) -> i64 {
    let from_ms = from_ms.min(now_ms);
    let mut events: Vec<(u64, i64)> = Vec::with_capacity(entries.len() * 2);
    for entry in entries {
        let at = entry.at_ms.min(now_ms);
        events.push((at, entry.amount));
        if let Some(exit) = at.checked_add(window_ms).and_then(|t| t.checked_add(1)) {
            events.push((exit, entry.amount.saturating_neg()));
        }
    }
    events.sort_unstable();
    let mut sum = 0i64;
    let mut index = 0;
    // M(from): every event up to and including `from`.
    while index < events.len() && events[index].0 <= from_ms {
        sum = sum.saturating_add(events[index].1);
        index += 1;
    }
    let mut peak = sum;
    while index < events.len() && events[index].0 <= now_ms {
        let at = events[index].0;
        while index < events.len() && events[index].0 == at {
            sum = sum.saturating_add(events[index].1);
            index += 1;
        }
        peak = peak.max(sum);
    }
    peak
}

/// The first instant of the span whose highest metric decides the tier at `now_ms`.
pub fn span_start_ms(downgrade: TierDowngrade, period: &TierPeriod, now_ms: u64) -> u64 {
    match downgrade {
        TierDowngrade::Rolling => now_ms,
        TierDowngrade::PeriodEnd => period.start_ms(now_ms),
        TierDowngrade::Never => 0,
    }
}

/// The earliest entry time that can matter for the tier at `now_ms` (callers read entries
/// from there on): the span's start minus the window.
pub fn entries_since_ms(downgrade: TierDowngrade, period: &TierPeriod, now_ms: u64) -> u64 {
    span_start_ms(downgrade, period, now_ms).saturating_sub(crate::rules::tier_window_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Fen;
    use crate::rules::{Rules, Tier, tier_window_ms};

    const day: u64 = 86_400_000;
    /// 2026-01-01T00:00:00+08:00.
    const y2026: u64 = 1_767_196_800_000;
    /// 2027-01-01T00:00:00+08:00.
    const y2027: u64 = y2026 + 365 * day;

    fn entry(at_ms: u64, amount: i64) -> MetricEntry {
        MetricEntry { at_ms, amount }
    }

    fn points_rules(downgrade: TierDowngrade) -> Rules {
        let tier = |name: &str, points: i64, discount_bp: i64| Tier {
            name: name.into(),
            spend_threshold: Fen(points * 1_000),
            discount_bp,
            points_multiplier_pct: 100,
            points_threshold: points,
        };
        Rules {
            tiers: vec![
                tier("普通", 0, 0),
                tier("银", 1_000, 300),
                tier("金", 5_000, 800),
            ],
            tier_metric: TierMetric::Points,
            tier_downgrade: downgrade,
            ..Rules::default()
        }
    }

    #[test]
    fn periods_start_at_local_midnight_of_their_first_month() {
        let year = TierPeriod::default();
        assert_eq!(year.validate(), Ok(()));
        assert_eq!(year.start_ms(y2026), y2026);
        assert_eq!(year.start_ms(y2026 - 1), y2026 - 365 * day);
        assert_eq!(year.start_ms(y2027 - 1), y2026);
        assert_eq!(year.start_ms(y2027), y2027);
        // 2025-12-31T16:00Z is already 2026 at UTC+8, still 2025 at UTC.
        let utc = TierPeriod {
            utc_offset_seconds: 0,
            ..year
        };
        assert_eq!(utc.start_ms(y2026), y2026 + 8 * 3_600_000 - 365 * day);
        assert_eq!(utc.start_ms(y2026 + 8 * 3_600_000), y2026 + 8 * 3_600_000);
        let quarter = TierPeriod { months: 3, ..year };
        // 2026-05-20 is in the quarter from April 1 (31 + 28 + 31 days after January 1).
        assert_eq!(quarter.start_ms(y2026 + 139 * day), y2026 + 90 * day);
        assert_eq!(quarter.start_ms(y2026 + 90 * day - 1), y2026);
        for months in [0, 5, 7, 24] {
            assert!(TierPeriod { months, ..year }.validate().is_err());
        }
        assert!(
            TierPeriod {
                utc_offset_seconds: 15 * 3_600,
                ..year
            }
            .validate()
            .is_err()
        );
    }

    #[test]
    fn the_peak_counts_entries_inside_the_window_only() {
        let w = 10;
        let entries = [entry(5, 3), entry(12, 4), entry(30, 1)];
        assert_eq!(rolling_sum(&entries, w, 15), 7);
        assert_eq!(rolling_sum(&entries, w, 16), 4);
        // At 15 the entry of 30 is in the future: it counts as at 15.
        assert_eq!(peak_rolling_sum(&entries, w, 15, 15), 8);
        assert_eq!(peak_rolling_sum(&entries[..2], w, 15, 15), 7);
        assert_eq!(peak_rolling_sum(&entries, w, 16, 29), 4);
        assert_eq!(peak_rolling_sum(&entries, w, 0, 40), 7);
        assert_eq!(peak_rolling_sum(&entries, w, 23, 40), 1);
        // A refund's negative entry leaving the window raises M.
        let refunded = [entry(1, -5), entry(8, 5)];
        assert_eq!(peak_rolling_sum(&refunded, w, 8, 11), 0);
        assert_eq!(peak_rolling_sum(&refunded, w, 8, 12), 5);
        assert_eq!(rolling_sum(&refunded, w, 12), 5);
        // An entry stamped after now counts as at now.
        assert_eq!(peak_rolling_sum(&[entry(100, 2)], w, 50, 50), 2);
        assert_eq!(peak_rolling_sum(&[], w, 0, u64::MAX), 0);
    }

    #[test]
    fn points_tiers_upgrade_at_once_and_downgrade_by_policy() {
        // 1,200 points in March 2026, nothing after.
        let march = y2026 + 70 * day;
        let entries = [entry(march, 1_200)];
        let tier_at = |rules: &Rules, now: u64| rules.tier_at(&entries, now).name.clone();
        let rolling = points_rules(TierDowngrade::Rolling);
        let period_end = points_rules(TierDowngrade::PeriodEnd);
        let never = points_rules(TierDowngrade::Never);
        for rules in [&rolling, &period_end, &never] {
            assert_eq!(rules.validate(), Ok(()));
            assert_eq!(rules.tier_at(&[], march - 1).name, "普通");
            assert_eq!(tier_at(rules, march), "银", "upgrade at once");
        }
        // Out of the rolling window (March 2027) but still in 2027's period: at the boundary
        // (2027-01-01) the points were still in the window, so period_end keeps 银 all 2027.
        let after_window = march + tier_window_ms + 1;
        assert_eq!(tier_at(&rolling, after_window), "普通");
        assert_eq!(tier_at(&period_end, after_window), "银");
        assert_eq!(tier_at(&period_end, y2027 + 365 * day - 1), "银");
        assert_eq!(
            tier_at(&period_end, y2027 + 365 * day),
            "普通",
            "re-evaluated at 2028"
        );
        assert_eq!(tier_at(&never, y2027 + 3 * 365 * day), "银");
        // Bought in December 2026 instead: at the 2027 boundary it is still in the window,
        // after 2027's end it is not.
        let december = y2027 - 10 * day;
        let late = [entry(december, 6_000)];
        assert_eq!(period_end.tier_at(&late, y2027 + 200 * day).name, "金");
        assert_eq!(period_end.tier_at(&late, y2027 + 365 * day).name, "普通");
        assert_eq!(
            rolling.tier_at(&late, december + tier_window_ms + 1).name,
            "普通"
        );
    }

    #[test]
    fn the_default_metric_is_spend_and_rolling_as_before() {
        let rules = Rules::default();
        let now = y2026;
        let entries = [entry(now - 10 * day, 300_000), entry(now - day, 250_000)];
        assert_eq!(rules.tier_at(&entries, now).name, "黄金");
        assert_eq!(
            rules.tier_at(&entries, now).name,
            rules.tier_for_spend(Fen(550_000)).name
        );
        assert_eq!(rules.tier_at(&entries[..1], now).name, "普通");
    }

    #[test]
    fn bad_tier_settings_are_refused() {
        let good = points_rules(TierDowngrade::PeriodEnd);
        let refuse = |change: &dyn Fn(&mut Rules)| {
            let mut rules = good.clone();
            change(&mut rules);
            assert!(rules.validate().is_err(), "{rules:?}");
        };
        refuse(&|r| r.tiers[0].points_threshold = 1);
        refuse(&|r| r.tiers[2].points_threshold = 1_000);
        refuse(&|r| r.tiers[2].points_threshold = points_threshold_max + 1);
        refuse(&|r| r.tiers[1].points_threshold = -1);
        refuse(&|r| r.tier_period.months = 5);
        // Spend thresholds only need to go up when spend is the metric.
        let mut spend_free = good.clone();
        spend_free.tiers[1].spend_threshold = Fen(0);
        assert_eq!(spend_free.validate(), Ok(()));
        spend_free.tier_metric = TierMetric::Spend;
        assert!(spend_free.validate().is_err());
    }

    fn brute_peak(entries: &[MetricEntry], window: u64, from: u64, now: u64) -> i64 {
        let clamped: Vec<MetricEntry> = entries
            .iter()
            .map(|e| entry(e.at_ms.min(now), e.amount))
            .collect();
        (from.min(now)..=now)
            .map(|t| rolling_sum(&clamped, window, t))
            .max()
            .unwrap_or(0)
    }

    proptest::proptest! {
        /// The sweep equals evaluating M at every instant of the span, whatever the order of
        /// the entries.
        #[test]
        fn the_peak_is_the_highest_sum_over_the_span_in_any_order(
            raw in proptest::collection::vec((0u64..120, -50i64..100), 0..20),
            window in 0u64..40,
            from in 0u64..130,
            now in 0u64..130,
            seed in 0usize..1_000,
        ) {
            let entries: Vec<MetricEntry> = raw.iter().map(|(t, a)| entry(*t, *a)).collect();
            let peak = peak_rolling_sum(&entries, window, from, now);
            proptest::prop_assert_eq!(peak, brute_peak(&entries, window, from, now));
            let mut shuffled = entries.clone();
            let n = shuffled.len().max(1);
            shuffled.rotate_left(seed % n);
            shuffled.reverse();
            proptest::prop_assert_eq!(peak_rolling_sum(&shuffled, window, from, now), peak);
        }

        /// More metric never means a lower tier, and a longer span (rolling ⊂ period_end ⊂
        /// never) never gives a lower tier either.
        #[test]
        fn tiers_are_monotone_in_the_metric_and_the_policy(
            raw in proptest::collection::vec((0u64..800, 1i64..3_000), 0..12),
            extra in 1i64..5_000,
            now_days in 0u64..800,
        ) {
            let entries: Vec<MetricEntry> =
                raw.iter().map(|(d, a)| entry(y2026 + d * day, *a)).collect();
            let now = y2026 + now_days * day;
            let index = |rules: &Rules, entries: &[MetricEntry]| {
                let name = rules.tier_at(entries, now).name.clone();
                rules.tiers.iter().position(|t| t.name == name).unwrap_or(0)
            };
            let mut more = entries.clone();
            more.push(entry(now, extra));
            let policies = [TierDowngrade::Rolling, TierDowngrade::PeriodEnd, TierDowngrade::Never];
            let mut previous = 0;
            for policy in policies {
                let rules = points_rules(policy);
                let tier = index(&rules, &entries);
                proptest::prop_assert!(index(&rules, &more) >= tier);
                proptest::prop_assert!(tier >= previous);
                previous = tier;
            }
        }
    }
}

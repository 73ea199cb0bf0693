//! Points expiry (optional policy in the rules): points earned in calendar year Y (in the
//! policy's time zone) expire at the end of year Y + `years_kept` (1: the end of next year).
//!
//! Spending order: **oldest first**. Every points movement is a lot (positive: earned,
//! rewarded, given back) or a consumption (negative: redeemed, taken back, adjusted down,
//! expired); a consumption takes the oldest points left, and points taken beyond every lot
//! (a balance below zero) are paid back from the next points earned. What is left of year Y's
//! points at its deadline `D_Y` therefore is
//!
//! `expired_Y = clamp(E(≤Y) − C(<D_Y) − X(<Y), 0, E(Y))`
//!
//! where `E(≤Y)` is every point earned in years up to Y, `E(Y)` those of year Y, `C(<D_Y)`
//! every point consumed before `D_Y` and `X(<Y)` what already expired for earlier years
//! (tested against a step-by-step lot simulation).
//!
//! Convergence: the amount is a function of the *set* of movements dated before the deadline
//! (sums, no order; [`targets`]), so every replica holding the same entries computes the same
//! amount. It is written as a `points_expire` ledger entry whose id is derived from
//! `points_expire:<member>:<Y>` ([`expiry_key`]): two stores (or runs) that decide it while
//! apart write the same id, and a replica keeps one entry per id, so a year's points can never
//! expire twice. A store that runs the expiry before an earlier spend made at a store still cut
//! off has arrived expires too much; when that spend arrives (or at the next daily run) the
//! store recomputes [`targets`] and, if the held entry's amount differs, writes the same id
//! again (a *revision*, 0 points if nothing was left). Of two `points_expire` entries with one
//! id the one written last by (HLC, origin, seq) stays (`ledger::LedgerEntry::wins_over`). A
//! revision is written only by a node that holds every entry the held one was computed from
//! (everything reaches a store through the hub's log, in causal order) plus more, so once every
//! replica holds every entry dated before the deadline, every node computes the same amount,
//! any node that still sees another amount writes that same amount, and the last-written entry
//! carries it everywhere.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use time::{Date, Month, PrimitiveDateTime, Time, UtcOffset};
use uuid::Uuid;

/// Largest `years_kept`.
pub const years_kept_max: u32 = 10;
/// Largest `remind_days_before`.
pub const remind_days_before_max: u32 = 90;

const day_ms: u64 = 86_400_000;

/// HQ's expiry policy (in the rules; absent: points never expire).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PointsExpiryPolicy {
    /// Points earned in year Y expire at the end of year Y + `years_kept` (0 to 10).
    pub years_kept: u32,
    /// The zone whose calendar years count, in seconds east of UTC (one zone for the whole
    /// chain, so every store cuts the years at the same instant).
    pub utc_offset_seconds: i32,
    /// A reminder goes to the outbox this many days before points expire (0: none; at most 90).
    pub remind_days_before: u32,
}

impl Default for PointsExpiryPolicy {
    fn default() -> PointsExpiryPolicy {
        PointsExpiryPolicy {
            years_kept: 1,
            utc_offset_seconds: crate::engagement::default_utc_offset_seconds,
            remind_days_before: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidPolicy(pub &'static str);

impl PointsExpiryPolicy {
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.years_kept > years_kept_max {
            return Err(InvalidPolicy("points_expiry.years_kept is 0 to 10"));
        }
        let zone = -crate::engagement::utc_offset_west_max_seconds
            ..=crate::engagement::utc_offset_east_max_seconds;
        if !zone.contains(&self.utc_offset_seconds) || self.utc_offset_seconds % 60 != 0 {
            return Err(InvalidPolicy(
                "points_expiry.utc_offset is -12:00 to +14:00 in whole minutes",
            ));
        }
        if self.remind_days_before > remind_days_before_max {
            return Err(InvalidPolicy("points_expiry.remind_days_before is 0 to 90"));
        }
        Ok(())
    }

    /// The calendar year (in the policy's zone) of an instant.
    pub fn year_of(&self, at_ms: u64) -> Option<i32> {
        crate::engagement::local_date(at_ms, self.utc_offset_seconds).map(|d| d.year())
    }

    /// When points earned in `year` expire (Unix ms): 00:00 on 1 January of year
    /// `year + years_kept + 1` in the policy's zone.
    pub fn deadline_ms(&self, year: i32) -> Option<u64> {
        let first = i32::try_from(self.years_kept)
            .ok()
            .and_then(|kept| year.checked_add(kept)?.checked_add(1))?;
        let date = Date::from_calendar_date(first, Month::January, 1).ok()?;
        let offset = UtcOffset::from_whole_seconds(self.utc_offset_seconds).ok()?;
        let instant = PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_offset(offset);
        u64::try_from(instant.unix_timestamp())
            .ok()?
            .checked_mul(1_000)
    }
}

/// One points movement of a member other than an expiry: when (HLC wall time, Unix ms) and how
/// much (signed points).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PointsMove {
    pub at_ms: u64,
    pub amount: i64,
}

/// An expiry decided for a year.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expiry {
    /// The year the points were earned in.
    pub year: i32,
    /// Points that expire (positive; the entry is its negation).
    pub points: i64,
    /// When they expire (Unix ms).
    pub deadline_ms: u64,
}

/// The key of a member's expiry of `year`; its ledger entry id is
/// [`crate::id::derived_id`] of it.
pub fn expiry_key(member_id: Uuid, year: i32) -> String {
    format!("points_expire:{member_id}:{year}")
}

/// The id of the outbox reminder before `year`'s points of a member expire.
pub fn reminder_message_id(member_id: Uuid, year: i32) -> String {
    format!("points_expiry_reminder:{member_id}:{year}")
}

struct Sums {
    /// Points earned per year.
    earned: BTreeMap<i32, i128>,
}

impl Sums {
    fn of(policy: &PointsExpiryPolicy, moves: &[PointsMove]) -> Sums {
        let mut earned = BTreeMap::new();
        for m in moves.iter().filter(|m| m.amount > 0) {
            if let Some(year) = policy.year_of(m.at_ms) {
                *earned.entry(year).or_insert(0) += i128::from(m.amount);
            }
        }
        Sums { earned }
    }

    fn earned_up_to(&self, year: i32) -> i128 {
        self.earned.range(..=year).map(|(_, v)| v).sum()
    }
}

fn consumed_before(moves: &[PointsMove], cutoff_ms: u64) -> i128 {
    moves
        .iter()
        .filter(|m| m.amount < 0 && m.at_ms < cutoff_ms)
        .map(|m| -i128::from(m.amount))
        .sum()
}

fn narrow(points: i128) -> i64 {
    i64::try_from(points).unwrap_or(i64::MAX)
}

/// The expiries due at `now_ms` that are not written yet. `moves`: the member's points
/// movements (any order, expiries excluded); `written`: expiries already in the ledger, by
/// year (their points, positive). Years are taken oldest first; a written year counts with its
/// written amount. Years whose points are all spent get no expiry.
pub fn due(
    policy: &PointsExpiryPolicy,
    moves: &[PointsMove],
    written: &BTreeMap<i32, i64>,
    now_ms: u64,
) -> Vec<Expiry> {
    let sums = Sums::of(policy, moves);
    let years: BTreeSet<i32> = sums.earned.keys().chain(written.keys()).copied().collect();
    let mut expired_before: i128 = 0;
    let mut out = Vec::new();
    for year in years {
        let Some(deadline_ms) = policy.deadline_ms(year) else {
            continue;
        };
        if deadline_ms > now_ms {
            break;
        }
        if let Some(points) = written.get(&year) {
            expired_before += i128::from(*points);
            continue;
        }
        let left = sums.earned_up_to(year) - consumed_before(moves, deadline_ms) - expired_before;
        let points = left.clamp(0, sums.earned.get(&year).copied().unwrap_or(0));
        if points > 0 {
            expired_before += points;
            out.push(Expiry {
                year,
                points: narrow(points),
                deadline_ms,
            });
        }
    }
    out
}

/// What every year whose deadline passed by `now_ms` expires, oldest first, computed from the
/// movements alone (`moves`: expiries excluded, any order). A year's amount depends only on the
/// movements dated before its deadline (property-tested), so it does not change once those
/// have all arrived, whoever computes it and whenever. Years whose points were all spent are
/// left out (an expiry entry held for one of them is revised to 0).
pub fn targets(policy: &PointsExpiryPolicy, moves: &[PointsMove], now_ms: u64) -> Vec<Expiry> {
    due(policy, moves, &BTreeMap::new(), now_ms)
}

/// The start of the newest deadline at or before `now_ms` (00:00 on 1 January of `now_ms`'s
/// year in the policy's zone): a movement dated before it can change an expiry that is
/// already due; one dated after cannot.
pub fn latest_deadline_ms(policy: &PointsExpiryPolicy, now_ms: u64) -> Option<u64> {
    let year = policy.year_of(now_ms)?;
    let same_year = PointsExpiryPolicy {
        years_kept: 0,
        ..policy.clone()
    };
    same_year.deadline_ms(year.checked_sub(1)?)
}

/// The next expiry after `now_ms` if nothing more is spent: the oldest year whose deadline is
/// still ahead and that has points left (None if none). Assumes the due expiries are written
/// (pass them in `written`).
pub fn upcoming(
    policy: &PointsExpiryPolicy,
    moves: &[PointsMove],
    written: &BTreeMap<i32, i64>,
    now_ms: u64,
) -> Option<Expiry> {
    let sums = Sums::of(policy, moves);
    let expired_before: i128 = written.values().map(|v| i128::from(*v)).sum();
    let consumed = consumed_before(moves, u64::MAX);
    for (year, earned) in &sums.earned {
        let Some(deadline_ms) = policy.deadline_ms(*year) else {
            continue;
        };
        if deadline_ms <= now_ms || written.contains_key(year) {
            continue;
        }
        let left = sums.earned_up_to(*year) - consumed - expired_before;
        let points = left.clamp(0, *earned);
        if points > 0 {
            return Some(Expiry {
                year: *year,
                points: narrow(points),
                deadline_ms,
            });
        }
    }
    None
}

/// Whether a reminder for `expiry` is due at `now_ms` (within `remind_days_before` days
/// before its deadline).
pub fn reminder_due(policy: &PointsExpiryPolicy, expiry: &Expiry, now_ms: u64) -> bool {
    let window = u64::from(policy.remind_days_before) * day_ms;
    policy.remind_days_before > 0
        && now_ms < expiry.deadline_ms
        && now_ms >= expiry.deadline_ms.saturating_sub(window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn utc() -> PointsExpiryPolicy {
        PointsExpiryPolicy {
            years_kept: 1,
            utc_offset_seconds: 0,
            remind_days_before: 30,
        }
    }

    /// 00:00 UTC on 1 January of `year`.
    fn new_year(year: i32) -> u64 {
        utc().deadline_ms(year - 2).unwrap_or(0)
    }

    #[test]
    fn points_of_a_year_expire_at_the_end_of_the_next_one() {
        let policy = utc();
        assert_eq!(new_year(2027), 1_798_761_600_000);
        assert_eq!(policy.deadline_ms(2025), Some(new_year(2027)));
        let china = PointsExpiryPolicy::default();
        // Midnight in China is 16:00 UTC the day before.
        assert_eq!(
            china.deadline_ms(2025),
            Some(new_year(2027) - 8 * 3_600_000)
        );
        // 31 December 2025 20:00 UTC is already 2026 in China.
        let late = new_year(2026) - 4 * 3_600_000;
        assert_eq!(policy.year_of(late), Some(2025));
        assert_eq!(china.year_of(late), Some(2026));
        let same_year = PointsExpiryPolicy {
            years_kept: 0,
            ..utc()
        };
        assert_eq!(same_year.deadline_ms(2025), Some(new_year(2026)));
        assert!(policy.validate().is_ok());
        for bad in [
            PointsExpiryPolicy {
                years_kept: 11,
                ..utc()
            },
            PointsExpiryPolicy {
                utc_offset_seconds: 15 * 3_600,
                ..utc()
            },
            PointsExpiryPolicy {
                remind_days_before: 91,
                ..utc()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn spending_takes_the_oldest_points_first() {
        let policy = utc();
        let moves = [
            PointsMove {
                at_ms: new_year(2025) + 1,
                amount: 100,
            },
            PointsMove {
                at_ms: new_year(2026) + 1,
                amount: 50,
            },
            // Spent in 2026: taken from 2025's points first.
            PointsMove {
                at_ms: new_year(2026) + 2,
                amount: -70,
            },
        ];
        let none = BTreeMap::new();
        assert!(due(&policy, &moves, &none, new_year(2027) - 1).is_empty());
        let at_2027 = due(&policy, &moves, &none, new_year(2027));
        assert_eq!(
            at_2027,
            vec![Expiry {
                year: 2025,
                points: 30,
                deadline_ms: new_year(2027)
            }]
        );
        // Written: not due again; 2026's 50 expire a year later.
        let written: BTreeMap<i32, i64> = [(2025, 30)].into();
        assert!(due(&policy, &moves, &written, new_year(2027) + 5).is_empty());
        assert_eq!(
            upcoming(&policy, &moves, &written, new_year(2027)).map(|e| (e.year, e.points)),
            Some((2026, 50))
        );
        let at_2028 = due(&policy, &moves, &written, new_year(2028));
        assert_eq!(at_2028.iter().map(|e| e.points).sum::<i64>(), 50);
        // Run once late: both years, the older first, the same amounts.
        let late = due(&policy, &moves, &none, new_year(2030));
        assert_eq!(
            late.iter().map(|e| (e.year, e.points)).collect::<Vec<_>>(),
            vec![(2025, 30), (2026, 50)]
        );
        // Everything spent: nothing expires.
        let spent = [
            moves[0],
            PointsMove {
                at_ms: new_year(2025) + 9,
                amount: -100,
            },
        ];
        assert!(due(&policy, &spent, &none, new_year(2030)).is_empty());
        assert_eq!(upcoming(&policy, &spent, &none, new_year(2025) + 10), None);
    }

    #[test]
    fn reminders_fall_in_the_window_before_the_deadline() {
        let policy = utc();
        let expiry = Expiry {
            year: 2025,
            points: 10,
            deadline_ms: new_year(2027),
        };
        assert!(!reminder_due(
            &policy,
            &expiry,
            new_year(2027) - 31 * day_ms
        ));
        assert!(reminder_due(&policy, &expiry, new_year(2027) - 30 * day_ms));
        assert!(reminder_due(&policy, &expiry, new_year(2027) - 1));
        assert!(!reminder_due(&policy, &expiry, new_year(2027)));
        let silent = PointsExpiryPolicy {
            remind_days_before: 0,
            ..policy
        };
        assert!(!reminder_due(&silent, &expiry, new_year(2027) - 1));
        assert_eq!(
            reminder_message_id(Uuid::from_u128(7), 2025),
            format!("points_expiry_reminder:{}:2025", Uuid::from_u128(7))
        );
    }

    /// Step-by-step reference: lots per year, spends take the oldest lot first, a spend beyond
    /// every lot is a debt the next earnings pay first, and at each deadline the year's lot
    /// expires.
    fn simulate(policy: &PointsExpiryPolicy, moves: &[PointsMove], now_ms: u64) -> Vec<(i32, i64)> {
        let mut sorted = moves.to_vec();
        sorted.sort();
        let mut lots: BTreeMap<i32, i64> = BTreeMap::new();
        let mut debt = 0i64;
        let mut expired = Vec::new();
        let mut fire = |lots: &mut BTreeMap<i32, i64>, until_ms: u64| {
            while let Some((&year, &left)) = lots.iter().next() {
                if policy.deadline_ms(year).is_none_or(|d| d > until_ms) {
                    break;
                }
                if left > 0 {
                    expired.push((year, left));
                }
                lots.remove(&year);
            }
        };
        for m in &sorted {
            fire(&mut lots, m.at_ms);
            if m.amount > 0 {
                let paid = debt.min(m.amount);
                debt -= paid;
                let year = policy.year_of(m.at_ms).unwrap_or(0);
                *lots.entry(year).or_insert(0) += m.amount - paid;
            } else {
                let mut need = -m.amount;
                for left in lots.values_mut() {
                    let take = need.min(*left);
                    *left -= take;
                    need -= take;
                }
                debt += need;
            }
        }
        fire(&mut lots, now_ms);
        expired
    }

    fn arbitrary_moves() -> impl Strategy<Value = Vec<PointsMove>> {
        let start = new_year(2024);
        let span = new_year(2029) - start;
        proptest::collection::vec(
            (0..span, prop_oneof![1i64..300, -300i64..0]).prop_map(move |(t, amount)| PointsMove {
                at_ms: start + t,
                amount,
            }),
            0..24,
        )
    }

    proptest! {
        /// The targets at any time are a function of the set of movements dated before each
        /// deadline: shuffled, with later movements added, every due year keeps its amount.
        #[test]
        fn targets_depend_only_on_movements_before_the_deadline(
            mut moves in arbitrary_moves(),
            later in arbitrary_moves(),
            at_year in 2025i32..2031,
            shuffle_seed in 0usize..1000,
        ) {
            let policy = utc();
            let now = new_year(at_year) + 7;
            let before: Vec<(i32, i64)> = targets(&policy, &moves, now)
                .iter().map(|e| (e.year, e.points)).collect();
            // Each due year is what the lot simulation of the movements so far expires.
            let so_far: Vec<PointsMove> = moves.iter().filter(|m| m.at_ms <= now).copied().collect();
            prop_assert_eq!(&before, &simulate(&policy, &so_far, now));
            let len = moves.len().max(1);
            moves.rotate_left(shuffle_seed % len);
            moves.reverse();
            // Movements dated at or after `now` (hence after every due deadline).
            moves.extend(later.iter().map(|m| PointsMove { at_ms: m.at_ms + (now - new_year(2024)), ..*m }));
            let after: Vec<(i32, i64)> = targets(&policy, &moves, now)
                .iter().map(|e| (e.year, e.points)).collect();
            prop_assert_eq!(&after, &before);
            prop_assert!(latest_deadline_ms(&policy, now).is_some_and(|d| d <= now && now - d < 366 * day_ms));
        }

        /// The closed form equals the lot simulation, whatever the moves and their order, and
        /// writing expiries run by run (feeding the written ones back) expires exactly what
        /// one late run does: no year twice, none lost.
        #[test]
        fn expiry_matches_oldest_first_lots_and_never_doubles(
            mut moves in arbitrary_moves(),
            runs in proptest::collection::vec(0u64..6, 1..5),
            shuffle_seed in 0usize..1000,
        ) {
            let policy = utc();
            let end = new_year(2031);
            let once: Vec<(i32, i64)> = due(&policy, &moves, &BTreeMap::new(), end)
                .iter().map(|e| (e.year, e.points)).collect();
            prop_assert_eq!(&once, &simulate(&policy, &moves, end));
            let len = moves.len().max(1);
            moves.rotate_left(shuffle_seed % len);
            moves.reverse();
            let mut written = BTreeMap::new();
            let mut runs = runs;
            runs.sort();
            for year in runs {
                let now = new_year(2025 + year as i32);
                for e in due(&policy, &moves, &written, now) {
                    prop_assert!(!written.contains_key(&e.year));
                    written.insert(e.year, e.points);
                }
            }
            for e in due(&policy, &moves, &written, end) {
                written.insert(e.year, e.points);
            }
            let stepwise: Vec<(i32, i64)> = written.into_iter().collect();
            prop_assert_eq!(stepwise, once);
        }
    }
}

//! Hybrid logical clock (Kulkarni et al.): physical ms plus a counter, so that causally later
//! writes always carry a larger timestamp even across stores with skewed clocks.
//!
//! Calling order: `now(physical_ms)` for every local event, `observe(remote, physical_ms)` for
//! every timestamp received from another replica.

use serde::{Deserialize, Serialize};

use crate::limits;

/// A timestamp: ordered by wall time, then counter. Ties between stores are broken by the
/// caller (entries carry their origin store).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct HlcTimestamp {
    pub wall_ms: u64,
    pub counter: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HlcError {
    #[error("remote clock is {ahead_ms} ms ahead of ours, beyond the allowed drift")]
    TooFarAhead { ahead_ms: u64 },
    #[error("clock counter exhausted within one millisecond")]
    CounterExhausted,
}

#[derive(Debug, Clone, Default)]
pub struct Hlc {
    last: HlcTimestamp,
}

impl Hlc {
    /// A clock that continues after `last` (e.g. the largest timestamp found on disk).
    pub fn starting_after(last: HlcTimestamp) -> Hlc {
        Hlc { last }
    }

    pub fn last(&self) -> HlcTimestamp {
        self.last
    }

    /// Timestamp for a local event at physical time `physical_ms`.
    pub fn now(&mut self, physical_ms: u64) -> Result<HlcTimestamp, HlcError> {
        let next = if physical_ms > self.last.wall_ms {
            HlcTimestamp {
                wall_ms: physical_ms,
                counter: 0,
            }
        } else {
            let counter = self
                .last
                .counter
                .checked_add(1)
                .ok_or(HlcError::CounterExhausted)?;
            HlcTimestamp {
                wall_ms: self.last.wall_ms,
                counter,
            }
        };
        self.last = next;
        Ok(next)
    }

    /// Merge a timestamp seen from another replica. Refuses one too far in our future, so a
    /// store with a broken clock cannot drag every replica's clock forward.
    pub fn observe(&mut self, remote: HlcTimestamp, physical_ms: u64) -> Result<(), HlcError> {
        if remote.wall_ms > physical_ms.saturating_add(limits::hlc_drift_ms_max) {
            return Err(HlcError::TooFarAhead {
                ahead_ms: remote.wall_ms - physical_ms,
            });
        }
        if remote > self.last {
            self.last = remote;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_increase_even_when_the_clock_stalls_or_steps_back() {
        let mut clock = Hlc::default();
        let a = clock.now(1_000).unwrap();
        let b = clock.now(1_000).unwrap();
        let c = clock.now(900).unwrap();
        let d = clock.now(2_000).unwrap();
        assert!(a < b && b < c && c < d);
        assert_eq!(
            d,
            HlcTimestamp {
                wall_ms: 2_000,
                counter: 0
            }
        );
    }

    #[test]
    fn observing_a_later_remote_moves_us_past_it() {
        let mut clock = Hlc::default();
        let remote = HlcTimestamp {
            wall_ms: 5_000,
            counter: 3,
        };
        clock.observe(remote, 4_000).unwrap();
        assert!(clock.now(4_000).unwrap() > remote);
        let far = HlcTimestamp {
            wall_ms: 4_000 + limits::hlc_drift_ms_max + 1,
            counter: 0,
        };
        assert!(clock.observe(far, 4_000).is_err());
    }
}

//! Referral (老带新): a member registers naming a referrer; after the referee's first
//! purchase both are rewarded (points and/or stored-value bonus, from the rules).
//!
//! The referral itself is an immutable operation (`OpV1::Referral`), written once by the store
//! that registered the referee: a grow-only set keyed by the referee's id.
//!
//! Exactly once: the reward entries have ids derived from the referee's normalized phone
//! ([`reward_key`], `referral:<phone>:<party>:<account>`), not from a random source. Two stores
//! that both see the referee's first purchase while apart write entries with the same ids, and
//! the ledger's set union keeps one of each (the first by HLC, origin, seq, see
//! `ledger::LedgerEntry::wins_over`). The phone is what a duplicate-member merge groups by, so
//! the same person registered at two stores while apart (two member ids, one phone) is also
//! rewarded once.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkout::Movement;
use crate::ledger::{Account, EntryKind};
use crate::money::Fen;

/// A referral: `referee` registered naming `referrer`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Referral {
    pub referee: Uuid,
    pub referrer: Uuid,
    /// Unix ms at the registering store.
    pub at_ms: u64,
}

/// What the rules give after the referee's first purchase (each part may be zero).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferralReward {
    pub referrer_points: i64,
    pub referee_points: i64,
    /// Stored value given as bonus (never refunded as cash).
    pub referrer_stored_value: Fen,
    pub referee_stored_value: Fen,
}

impl Default for ReferralReward {
    fn default() -> ReferralReward {
        ReferralReward {
            referrer_points: crate::engagement::referral_points,
            referee_points: crate::engagement::referral_points,
            referrer_stored_value: Fen::ZERO,
            referee_stored_value: Fen::ZERO,
        }
    }
}

/// Largest reward points per party.
pub const reward_points_max: i64 = 1_000_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidReward(pub &'static str);

impl ReferralReward {
    /// Bounds: points 0 to 1,000,000 each, stored value 0 to `stored_value_max` each.
    pub fn validate(&self, stored_value_max: Fen) -> Result<(), InvalidReward> {
        let points = 0..=reward_points_max;
        if !points.contains(&self.referrer_points) || !points.contains(&self.referee_points) {
            return Err(InvalidReward("referral points are 0 to 1000000"));
        }
        let money = 0..=stored_value_max.0;
        if !money.contains(&self.referrer_stored_value.0)
            || !money.contains(&self.referee_stored_value.0)
        {
            return Err(InvalidReward(
                "referral stored value is 0 to the prepaid cap",
            ));
        }
        Ok(())
    }
}

/// Who a reward entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Party {
    Referrer,
    Referee,
}

impl Party {
    pub fn as_str(self) -> &'static str {
        match self {
            Party::Referrer => "referrer",
            Party::Referee => "referee",
        }
    }
}

/// One reward entry to write: for whom, what movement, under which key (its id is
/// `id::derived_id(key)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewardEntry {
    pub party: Party,
    pub movement: Movement,
    pub key: String,
}

/// The key of one reward entry of the referral of the referee with this (normalized) phone.
pub fn reward_key(referee_phone: &str, party: Party, account: Account) -> String {
    let account = match account {
        Account::Principal => "principal",
        Account::Bonus => "bonus",
        Account::Points => "points",
    };
    format!("referral:{referee_phone}:{}:{account}", party.as_str())
}

/// Why a referral is refused at registration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferralError {
    #[error("a member cannot refer themselves")]
    SelfReferral,
}

/// Check a referral before it is written (the referrer exists: the caller looked it up).
pub fn check(referee: Uuid, referrer: Uuid) -> Result<(), ReferralError> {
    if referee == referrer {
        return Err(ReferralError::SelfReferral);
    }
    Ok(())
}

/// Is the reward due at this checkout? The referee has a referral, the reward is not held yet
/// (as far as this replica knows: a duplicate write is harmless, its ids are derived), and
/// the checkout is a purchase (a total above zero).
pub fn reward_due(has_referral: bool, already_rewarded: bool, checkout_total: Fen) -> bool {
    has_referral && !already_rewarded && checkout_total > Fen::ZERO
}

/// The entries a reward writes (zero parts are left out), in a fixed order.
pub fn reward_entries(reward: &ReferralReward, referee_phone: &str) -> Vec<RewardEntry> {
    let mut entries = Vec::new();
    let parts = [
        (
            Party::Referrer,
            reward.referrer_points,
            reward.referrer_stored_value,
        ),
        (
            Party::Referee,
            reward.referee_points,
            reward.referee_stored_value,
        ),
    ];
    for (party, points, stored_value) in parts {
        if points > 0 {
            entries.push(RewardEntry {
                party,
                movement: Movement {
                    kind: EntryKind::PointsReward,
                    account: Account::Points,
                    amount: points,
                },
                key: reward_key(referee_phone, party, Account::Points),
            });
        }
        if stored_value > Fen::ZERO {
            entries.push(RewardEntry {
                party,
                movement: Movement {
                    kind: EntryKind::RechargeBonus,
                    account: Account::Bonus,
                    amount: stored_value.0,
                },
                key: reward_key(referee_phone, party, Account::Bonus),
            });
        }
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::derived_id;

    #[test]
    fn rewards_are_due_once_after_a_purchase() {
        assert!(reward_due(true, false, Fen(1)));
        assert!(!reward_due(true, true, Fen(1_000)));
        assert!(!reward_due(false, false, Fen(1_000)));
        assert!(!reward_due(true, false, Fen::ZERO));
        let a = Uuid::from_u128(1);
        assert_eq!(check(a, a), Err(ReferralError::SelfReferral));
        assert_eq!(check(a, Uuid::from_u128(2)), Ok(()));
    }

    #[test]
    fn reward_ids_are_the_same_everywhere_and_differ_per_part() {
        let reward = ReferralReward {
            referrer_stored_value: Fen(500),
            ..ReferralReward::default()
        };
        let first = reward_entries(&reward, "13900000001");
        let again = reward_entries(&reward, "13900000001");
        assert_eq!(first, again);
        assert_eq!(first.len(), 3);
        let ids: std::collections::BTreeSet<Uuid> =
            first.iter().map(|e| derived_id(&e.key)).collect();
        assert_eq!(ids.len(), 3);
        let other = reward_entries(&reward, "13900000002");
        assert!(other.iter().all(|e| !ids.contains(&derived_id(&e.key))));
        assert_eq!(
            first[0].key,
            "referral:13900000001:referrer:points".to_owned()
        );
        assert_eq!(first[1].movement.account, Account::Bonus);
        let nothing = ReferralReward {
            referrer_points: 0,
            referee_points: 0,
            ..ReferralReward::default()
        };
        assert!(reward_entries(&nothing, "1").is_empty());
    }

    #[test]
    fn rewards_are_bounded() {
        let cap = Fen(500_000);
        assert!(ReferralReward::default().validate(cap).is_ok());
        let too_many = ReferralReward {
            referee_points: reward_points_max + 1,
            ..ReferralReward::default()
        };
        assert!(too_many.validate(cap).is_err());
        let negative = ReferralReward {
            referrer_stored_value: Fen(-1),
            ..ReferralReward::default()
        };
        assert!(negative.validate(cap).is_err());
    }
}

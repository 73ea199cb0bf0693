//! Immutable ledger entries for stored value and points, and balances as their fold.
//!
//! Every movement of stored value (principal or bonus) or points is one entry. Entries are never
//! changed or deleted: a refund or a reversal is a new entry. A balance is the sum of a
//! member's entries.
//!
//! Merge law: a replica's ledger is a *set* of entries keyed by their id (grow-only set union).
//! Union is commutative, associative and idempotent, and the fold (a sum, done in `i128`) does
//! not depend on order, so any delivery order with any duplicates gives the same balances.
//!
//! Derived ids: a once-only entry (a referral reward, a points expiry) has an id derived from
//! what it is for ([`crate::id::derived_id`]), so two stores deciding it while apart write the
//! same id. If their entries differ (another rule version, another duplicate member), every
//! replica keeps the one written first by (HLC, origin, seq) ([`LedgerEntry::wins_over`]): a
//! minimum, hence commutative, associative and idempotent like the union.
//!
//! **Replaceable entries**: a points expiry (`points_expire`) is the one exception. Its amount
//! is a deterministic function of the member's entries dated before the deadline, so a node
//! that learns of an earlier entry recomputes it and, if it differs, writes the *same id* again
//! (a revision, possibly 0 points). Of two `points_expire` entries with one id the one written
//! *last* by (HLC, origin, seq) stays. [`LedgerEntry::wins_over`] is still one strict total order
//! over all entries (non-replaceable before replaceable; first-written among the former,
//! last-written among the latter), so the kept entry is the maximum of a total order: order-
//! independent, commutative, associative and idempotent as before.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

use crate::hlc::HlcTimestamp;
use crate::id::StoreId;
use crate::money::{Fen, Overflow};

/// Which balance an entry moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Account {
    /// Stored value paid in by the member (分).
    Principal,
    /// Stored value given as a recharge bonus (分).
    Bonus,
    /// Points (1 point = 1 分 when paying).
    Points,
}

/// Why an entry exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    RechargePrincipal,
    RechargeBonus,
    Spend,
    Refund,
    PointsEarn,
    PointsRedeem,
    PointsAdjust,
    PointsReverse,
    /// A manual stored-value correction by HQ (principal account, with a reason).
    StoredValueAdjust,
    /// Points given by an engagement rule (check-in, streak, referral), with a reason.
    PointsReward,
    /// Points that expired under HQ's expiry policy (negative; derived id per member and year).
    PointsExpire,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::RechargePrincipal => "recharge_principal",
            EntryKind::RechargeBonus => "recharge_bonus",
            EntryKind::Spend => "spend",
            EntryKind::Refund => "refund",
            EntryKind::PointsEarn => "points_earn",
            EntryKind::PointsRedeem => "points_redeem",
            EntryKind::PointsAdjust => "points_adjust",
            EntryKind::PointsReverse => "points_reverse",
            EntryKind::StoredValueAdjust => "stored_value_adjust",
            EntryKind::PointsReward => "points_reward",
            EntryKind::PointsExpire => "points_expire",
        }
    }
}

/// One immutable movement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Globally unique (UUIDv7).
    pub id: Uuid,
    /// The store that wrote it.
    pub origin: StoreId,
    /// Position in the origin's sequence of replicated operations.
    pub seq: u64,
    pub hlc: HlcTimestamp,
    pub member_id: Uuid,
    pub kind: EntryKind,
    pub account: Account,
    /// Signed amount: 分 for `Principal`/`Bonus`, points for `Points`.
    pub amount: i64,
    /// The sale this entry belongs to, if any.
    pub checkout_id: Option<Uuid>,
    /// Free text (required for manual adjustments).
    pub reason: Option<String>,
    /// Version of the rules that produced the entry.
    pub rule_version: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("{kind:?} may not move the {account:?} account")]
    WrongAccount { kind: EntryKind, account: Account },
    #[error("{kind:?} must have a {expected} amount, got {amount}")]
    WrongSign {
        kind: EntryKind,
        expected: &'static str,
        amount: i64,
    },
}

impl LedgerEntry {
    /// Check the entry's shape: kind, account and sign fit together.
    pub fn validate(&self) -> Result<(), EntryError> {
        use Account::*;
        use EntryKind::*;
        let stored_value = matches!(self.account, Principal | Bonus);
        let account_ok = match self.kind {
            RechargePrincipal => self.account == Principal,
            RechargeBonus => self.account == Bonus,
            Spend | Refund => stored_value,
            PointsEarn | PointsRedeem | PointsAdjust | PointsReverse | PointsReward
            | PointsExpire => self.account == Points,
            StoredValueAdjust => self.account == Principal,
        };
        if !account_ok {
            return Err(EntryError::WrongAccount {
                kind: self.kind,
                account: self.account,
            });
        }
        let (sign_ok, expected) = match self.kind {
            RechargePrincipal | RechargeBonus | Refund | PointsEarn | PointsReward => {
                (self.amount > 0, "positive")
            }
            Spend | PointsRedeem => (self.amount < 0, "negative"),
            // 0: an expiry revised away (the points were spent before the deadline after all).
            PointsExpire => (self.amount <= 0, "negative or zero"),
            PointsAdjust | PointsReverse | StoredValueAdjust => (self.amount != 0, "non-zero"),
        };
        if !sign_ok {
            return Err(EntryError::WrongSign {
                kind: self.kind,
                expected,
                amount: self.amount,
            });
        }
        Ok(())
    }

    /// Whether a later entry with the same id replaces this one (a points expiry, revised
    /// when earlier entries arrive: see the module documentation).
    pub fn is_replaceable(&self) -> bool {
        self.kind == EntryKind::PointsExpire
    }

    /// Of two entries with the same id, the one every replica keeps: the first written by
    /// (HLC, origin, seq), then by content (one operation holds one entry, so that only
    /// decides between malformed twins); for two replaceable entries (points expiries) the
    /// last written by the same key; a non-replaceable entry over a replaceable one. A strict
    /// total order, so the choice does not depend on arrival order.
    pub fn wins_over(&self, other: &LedgerEntry) -> bool {
        match (self.is_replaceable(), other.is_replaceable()) {
            (false, true) => return true,
            (true, false) => return false,
            (true, true) => return other.written_before(self),
            (false, false) => {}
        }
        self.written_before(other)
    }

    /// The order of [`LedgerEntry::wins_over`] among entries of one class: by (HLC, origin,
    /// seq), then by content.
    fn written_before(&self, other: &LedgerEntry) -> bool {
        let key = |e: &LedgerEntry| {
            (
                e.hlc,
                e.origin.clone(),
                e.seq,
                e.member_id,
                e.kind,
                e.account,
                e.amount,
                e.checkout_id,
                e.reason.clone(),
                e.rule_version,
            )
        };
        key(self) < key(other)
    }
}

/// A member's balances: the fold of their entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Balances {
    pub principal: Fen,
    pub bonus: Fen,
    pub points: i64,
}

impl Balances {
    /// Total stored value (principal + bonus).
    pub fn stored_value(&self) -> Result<Fen, Overflow> {
        self.principal.checked_add(self.bonus)
    }

    /// Fold a set of entries. Order does not matter; the caller removes duplicates (see
    /// [`MemberLedger`]).
    pub fn fold<'a, I: IntoIterator<Item = &'a LedgerEntry>>(
        entries: I,
    ) -> Result<Balances, Overflow> {
        let (mut principal, mut bonus, mut points) = (0i128, 0i128, 0i128);
        for entry in entries {
            let slot = match entry.account {
                Account::Principal => &mut principal,
                Account::Bonus => &mut bonus,
                Account::Points => &mut points,
            };
            *slot += i128::from(entry.amount);
        }
        let narrow = |v: i128| i64::try_from(v).map_err(|_| Overflow);
        Ok(Balances {
            principal: Fen(narrow(principal)?),
            bonus: Fen(narrow(bonus)?),
            points: narrow(points)?,
        })
    }
}

/// The set of entries one replica holds, keyed by id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberLedger {
    entries: BTreeMap<Uuid, LedgerEntry>,
}

impl MemberLedger {
    /// Add an entry; returns false if its id was already there (idempotent). Of two entries
    /// with one id, the one that [wins](LedgerEntry::wins_over) stays.
    pub fn insert(&mut self, entry: LedgerEntry) -> bool {
        match self.entries.get_mut(&entry.id) {
            Some(held) => {
                if entry.wins_over(held) {
                    *held = entry;
                }
                false
            }
            None => {
                self.entries.insert(entry.id, entry);
                true
            }
        }
    }

    /// Set union with another replica's ledger.
    pub fn merge(&mut self, other: &MemberLedger) {
        for entry in other.entries.values() {
            self.insert(entry.clone());
        }
    }

    pub fn balances_of(&self, member_id: Uuid) -> Result<Balances, Overflow> {
        Balances::fold(self.entries.values().filter(|e| e.member_id == member_id))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> impl Iterator<Item = &LedgerEntry> {
        self.entries.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn entry(n: u128, kind: EntryKind, account: Account, amount: i64) -> LedgerEntry {
        LedgerEntry {
            id: Uuid::from_u128(n),
            origin: StoreId::parse("s1").unwrap(),
            seq: n as u64,
            hlc: HlcTimestamp {
                wall_ms: n as u64,
                counter: 0,
            },
            member_id: Uuid::from_u128(1),
            kind,
            account,
            amount,
            checkout_id: None,
            reason: None,
            rule_version: 1,
        }
    }

    #[test]
    fn entries_are_checked_for_shape() {
        assert!(
            entry(1, EntryKind::Spend, Account::Principal, -5)
                .validate()
                .is_ok()
        );
        assert!(
            entry(1, EntryKind::Spend, Account::Principal, 5)
                .validate()
                .is_err()
        );
        assert!(
            entry(1, EntryKind::Spend, Account::Points, -5)
                .validate()
                .is_err()
        );
        assert!(
            entry(1, EntryKind::RechargeBonus, Account::Principal, 5)
                .validate()
                .is_err()
        );
        assert!(
            entry(1, EntryKind::PointsAdjust, Account::Points, 0)
                .validate()
                .is_err()
        );
    }

    #[test]
    fn balances_are_the_sum_and_duplicates_count_once() {
        let mut ledger = MemberLedger::default();
        assert!(ledger.insert(entry(
            1,
            EntryKind::RechargePrincipal,
            Account::Principal,
            50_000
        )));
        assert!(ledger.insert(entry(2, EntryKind::RechargeBonus, Account::Bonus, 5_000)));
        assert!(ledger.insert(entry(3, EntryKind::Spend, Account::Principal, -12_000)));
        assert!(!ledger.insert(entry(3, EntryKind::Spend, Account::Principal, -12_000)));
        let balances = ledger.balances_of(Uuid::from_u128(1)).unwrap();
        assert_eq!(balances.principal, Fen(38_000));
        assert_eq!(balances.bonus, Fen(5_000));
        assert_eq!(balances.stored_value().unwrap(), Fen(43_000));
    }

    #[test]
    fn a_revised_expiry_replaces_the_earlier_one_and_a_reward_keeps_the_first() {
        let at = |entry: &mut LedgerEntry, wall_ms: u64, seq: u64| {
            entry.hlc.wall_ms = wall_ms;
            entry.seq = seq;
        };
        let mut first = entry(9, EntryKind::PointsExpire, Account::Points, -70);
        at(&mut first, 100, 1);
        let mut revised = entry(9, EntryKind::PointsExpire, Account::Points, 0);
        at(&mut revised, 200, 2);
        assert!(
            revised.validate().is_ok(),
            "an expiry revised to 0 is valid"
        );
        assert!(revised.wins_over(&first) && !first.wins_over(&revised));
        for order in [[&first, &revised], [&revised, &first]] {
            let mut ledger = MemberLedger::default();
            for e in order {
                ledger.insert(e.clone());
            }
            assert_eq!(ledger.balances_of(Uuid::from_u128(1)).unwrap().points, 0);
        }
        let mut reward = entry(8, EntryKind::PointsReward, Account::Points, 50);
        at(&mut reward, 100, 1);
        let mut twin = reward.clone();
        twin.amount = 60;
        at(&mut twin, 200, 2);
        assert!(reward.wins_over(&twin) && !twin.wins_over(&reward));
        assert!(
            entry(1, EntryKind::PointsExpire, Account::Points, 1)
                .validate()
                .is_err()
        );
    }

    mod merge {
        use super::*;
        use proptest::prelude::*;

        fn arbitrary_entry() -> impl Strategy<Value = LedgerEntry> {
            // Few ids, so the same id often arrives with different contents.
            // Rewards (first written stays) and expiries (last written stays), also mixed
            // under one id.
            (
                0u128..4,
                0u64..3,
                0u32..2,
                0usize..2,
                0u64..3,
                1i64..500,
                any::<bool>(),
            )
                .prop_map(|(id, wall_ms, counter, origin, seq, amount, expiry)| {
                    LedgerEntry {
                        id: Uuid::from_u128(id),
                        origin: StoreId::parse(["s1", "s2"][origin]).unwrap(),
                        seq,
                        hlc: HlcTimestamp { wall_ms, counter },
                        member_id: Uuid::from_u128(1),
                        kind: if expiry {
                            EntryKind::PointsExpire
                        } else {
                            EntryKind::PointsReward
                        },
                        account: Account::Points,
                        amount: if expiry { 1 - amount } else { amount },
                        checkout_id: None,
                        reason: None,
                        rule_version: 1,
                    }
                })
        }

        proptest! {
            /// Entries with one id keep the same winner in any order, with any duplicates.
            #[test]
            fn same_id_entries_converge_in_any_order(
                entries in proptest::collection::vec(arbitrary_entry(), 0..12),
                cut in 0usize..12,
            ) {
                let mut forward = MemberLedger::default();
                for entry in &entries {
                    forward.insert(entry.clone());
                }
                let mut backward = MemberLedger::default();
                for entry in entries.iter().rev() {
                    backward.insert(entry.clone());
                    backward.insert(entry.clone());
                }
                prop_assert_eq!(&forward, &backward);
                let cut = cut.min(entries.len());
                let (mut left, mut right) = (MemberLedger::default(), MemberLedger::default());
                for entry in &entries[..cut] {
                    left.insert(entry.clone());
                }
                for entry in &entries[cut..] {
                    right.insert(entry.clone());
                }
                let mut merged = right.clone();
                merged.merge(&left);
                left.merge(&right);
                prop_assert_eq!(&left, &merged);
                prop_assert_eq!(&left, &forward);
            }
        }
    }
}

//! Count cards (计次卡): HQ's templates (a service, a number of uses, a price, a validity), a
//! card bought by a member at a store, and one use per visit.
//!
//! A use is an immutable operation like a ledger entry: a card's remaining uses are its uses
//! minus the number of distinct use records (a grow-only set), so any delivery order with any
//! duplicates gives the same figure. A store checks remaining uses and expiry against what it
//! holds, so it can serve a card offline; two stores apart can both take the last use. Such an
//! overuse is found in the merged state ([`overuse_finding`]) and queued at the hub as an
//! exception, like an overdraft. Nothing is rolled back.
//!
//! A refunded use (a use reversal) gives the use back; see `CountCardUseReversal`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

use crate::exceptions::{ExceptionKind, Finding};
use crate::id::StoreId;
use crate::money::Fen;

/// Most uses a template may give.
pub const uses_max: u32 = 1_000;
/// Longest validity, in days.
pub const validity_days_max: u32 = 3_660;
pub const day_ms: u64 = 24 * 60 * 60 * 1000;

/// HQ's template; last writer (by HLC, then origin) wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountCardTemplate {
    pub id: Uuid,
    pub name: String,
    /// The service one use pays for (e.g. "洗车").
    pub service: String,
    pub uses: u32,
    pub price: Fen,
    /// Days from purchase; the card cannot be used after.
    pub validity_days: u32,
    /// Inactive templates cannot be bought any more (cards already bought stay usable).
    pub active: bool,
}

/// A card bought by a member: the template's terms are copied, so a later template change does
/// not change cards already sold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountCardPurchase {
    /// The card's id.
    pub id: Uuid,
    pub template_id: Uuid,
    pub member_id: Uuid,
    pub name: String,
    pub service: String,
    pub uses: u32,
    /// Paid in cash or externally (money in).
    pub price: Fen,
    /// `cash` or `external`.
    pub method: String,
    /// Unix ms at the till.
    pub at_ms: u64,
    /// Unix ms after which no use is accepted.
    pub expires_ms: u64,
    pub rule_version: u32,
}

/// One use of a card (one visit).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountCardUse {
    pub id: Uuid,
    pub card_id: Uuid,
    pub member_id: Uuid,
    /// Unix ms at the till.
    pub at_ms: u64,
    pub note: Option<String>,
}

/// A use given back (a refund of a visit); at most one reversal counts per use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountCardUseReversal {
    pub id: Uuid,
    pub use_id: Uuid,
    pub card_id: Uuid,
    pub member_id: Uuid,
    pub reason: Option<String>,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CountCardError {
    #[error("this card has no uses left ({uses} of {uses} used)")]
    UsedUp { uses: u32 },
    #[error("this card expired at {expires_ms} (Unix ms)")]
    Expired { expires_ms: u64 },
}

/// Uses left: the card's uses minus distinct uses plus distinct reversed uses (may be below
/// zero after an overuse while apart).
pub fn remaining(uses: u32, used: u64, reversed: u64) -> i64 {
    i64::from(uses) - used.min(i64::MAX as u64) as i64 + reversed.min(i64::MAX as u64) as i64
}

/// May the card be used once more now?
pub fn check_use(
    uses: u32,
    used: u64,
    reversed: u64,
    expires_ms: u64,
    now_ms: u64,
) -> Result<(), CountCardError> {
    if now_ms > expires_ms {
        return Err(CountCardError::Expired { expires_ms });
    }
    if remaining(uses, used, reversed) < 1 {
        return Err(CountCardError::UsedUp { uses });
    }
    Ok(())
}

/// When a card bought at `at_ms` with this validity expires.
pub fn expiry(at_ms: u64, validity_days: u32) -> u64 {
    at_ms.saturating_add(u64::from(validity_days).saturating_mul(day_ms))
}

/// The exception for a card used more times than it has (uses taken at stores apart), given its
/// live uses (not reversed) as (use id, store).
pub fn overuse_finding(
    card_id: Uuid,
    member_id: Uuid,
    uses: u32,
    live_uses: &[(Uuid, StoreId)],
) -> Option<Finding> {
    let ids: BTreeSet<Uuid> = live_uses.iter().map(|(id, _)| *id).collect();
    let over = ids.len() as i64 - i64::from(uses);
    if over < 1 {
        return None;
    }
    let _ = card_id;
    Some(Finding {
        kind: ExceptionKind::CountCardOveruse,
        member_id: Some(member_id),
        coupon_code: None,
        stores: live_uses.iter().map(|(_, store)| store.clone()).collect(),
        entries: ids,
        amount: over,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uses_expiry_and_overuse() {
        assert_eq!(check_use(2, 1, 0, 100, 50), Ok(()));
        assert_eq!(
            check_use(2, 2, 0, 100, 50),
            Err(CountCardError::UsedUp { uses: 2 })
        );
        assert_eq!(
            check_use(2, 2, 1, 100, 50),
            Ok(()),
            "a reversed use is given back"
        );
        assert_eq!(
            check_use(2, 0, 0, 100, 101),
            Err(CountCardError::Expired { expires_ms: 100 })
        );
        assert_eq!(expiry(1_000, 1), 1_000 + day_ms);
        let a = StoreId::parse("a").unwrap();
        let b = StoreId::parse("b").unwrap();
        let card = Uuid::from_u128(9);
        let member = Uuid::from_u128(1);
        let one = [(Uuid::from_u128(1), a.clone())];
        assert!(overuse_finding(card, member, 1, &one).is_none());
        let two = [(Uuid::from_u128(1), a), (Uuid::from_u128(2), b)];
        let found = overuse_finding(card, member, 1, &two).unwrap();
        assert_eq!(
            (found.kind, found.amount, found.stores.len()),
            (ExceptionKind::CountCardOveruse, 1, 2)
        );
    }
}

//! Exceptions: what the offline allowance let through that the chain-wide state does not
//! cover. Found by looking at the merged state only, so every replica that holds the same
//! operations finds the same exceptions. Nothing is rolled back: an exception is for HQ to
//! resolve (collect the money, write it off, block the card…).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

use crate::id::StoreId;
use crate::ledger::{Account, EntryKind, LedgerEntry};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExceptionKind {
    /// A member's stored value (principal + bonus) is below zero.
    NegativeBalance,
    /// A member's points are below zero.
    NegativePoints,
    /// One coupon code was redeemed more than once.
    DoubleRedemption,
    /// A count card was used more times than it has (uses taken at stores apart).
    CountCardOveruse,
}

impl ExceptionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionKind::NegativeBalance => "negative_balance",
            ExceptionKind::NegativePoints => "negative_points",
            ExceptionKind::DoubleRedemption => "double_redemption",
            ExceptionKind::CountCardOveruse => "count_card_overuse",
        }
    }
}

/// One exception as found in the current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    pub kind: ExceptionKind,
    pub member_id: Option<Uuid>,
    pub coupon_code: Option<String>,
    /// Stores whose spends or redemptions are involved.
    pub stores: BTreeSet<StoreId>,
    /// The entries (or redemptions) involved.
    pub entries: BTreeSet<Uuid>,
    /// How far below zero (分 or points), or how many redemptions too many.
    pub amount: i64,
}

/// Exceptions for one member, given every ledger entry of the member (and of members merged
/// into it).
pub fn member_findings<'a, I>(member_id: Uuid, entries: I) -> Vec<Finding>
where
    I: IntoIterator<Item = &'a LedgerEntry>,
{
    let (mut stored_value, mut points) = (0i128, 0i128);
    let (mut value_spends, mut point_spends) = (Vec::new(), Vec::new());
    for entry in entries {
        match entry.account {
            Account::Principal | Account::Bonus => {
                stored_value += i128::from(entry.amount);
                if entry.kind == EntryKind::Spend {
                    value_spends.push(entry);
                }
            }
            Account::Points => {
                points += i128::from(entry.amount);
                if entry.amount < 0 {
                    point_spends.push(entry);
                }
            }
        }
    }
    let finding = |kind, below: i128, spends: &[&LedgerEntry]| Finding {
        kind,
        member_id: Some(member_id),
        coupon_code: None,
        stores: spends.iter().map(|e| e.origin.clone()).collect(),
        entries: spends.iter().map(|e| e.id).collect(),
        amount: i64::try_from(-below).unwrap_or(i64::MAX),
    };
    let mut findings = Vec::new();
    if stored_value < 0 {
        findings.push(finding(
            ExceptionKind::NegativeBalance,
            stored_value,
            &value_spends,
        ));
    }
    if points < 0 {
        findings.push(finding(
            ExceptionKind::NegativePoints,
            points,
            &point_spends,
        ));
    }
    findings
}

/// The exception for one coupon code, given its redemptions as (redemption id, store).
pub fn coupon_finding(code: &str, redemptions: &[(Uuid, StoreId)]) -> Option<Finding> {
    let ids: BTreeSet<Uuid> = redemptions.iter().map(|(id, _)| *id).collect();
    if ids.len() < 2 {
        return None;
    }
    Some(Finding {
        kind: ExceptionKind::DoubleRedemption,
        member_id: None,
        coupon_code: Some(code.to_owned()),
        stores: redemptions.iter().map(|(_, store)| store.clone()).collect(),
        amount: (ids.len() - 1) as i64,
        entries: ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::HlcTimestamp;

    fn entry(n: u128, store: &str, kind: EntryKind, account: Account, amount: i64) -> LedgerEntry {
        LedgerEntry {
            id: Uuid::from_u128(n),
            origin: StoreId::parse(store).unwrap(),
            seq: n as u64,
            hlc: HlcTimestamp::default(),
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
    fn an_overdraft_names_the_stores_that_spent() {
        let entries = [
            entry(
                1,
                "a",
                EntryKind::RechargePrincipal,
                Account::Principal,
                1_000,
            ),
            entry(2, "a", EntryKind::Spend, Account::Principal, -800),
            entry(3, "b", EntryKind::Spend, Account::Principal, -700),
        ];
        let findings = member_findings(Uuid::from_u128(1), &entries);
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].kind, ExceptionKind::NegativeBalance);
        assert_eq!(findings[0].amount, 500);
        assert_eq!(findings[0].stores.len(), 2);
        assert!(member_findings(Uuid::from_u128(1), &entries[..2]).is_empty());
    }

    #[test]
    fn a_code_used_twice_is_one_exception() {
        let a = StoreId::parse("a").unwrap();
        let b = StoreId::parse("b").unwrap();
        assert!(coupon_finding("X", &[(Uuid::from_u128(1), a.clone())]).is_none());
        let found =
            coupon_finding("X", &[(Uuid::from_u128(1), a), (Uuid::from_u128(2), b)]).unwrap();
        assert_eq!(
            (found.kind, found.amount, found.stores.len()),
            (ExceptionKind::DoubleRedemption, 1, 2)
        );
    }
}

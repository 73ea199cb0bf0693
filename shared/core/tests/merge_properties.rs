#![allow(clippy::unwrap_used, clippy::useless_vec)]
//! Property tests: the ledger fold and member-document merges do not depend on the order in
//! which entries and changes arrive, nor on duplicates.

use chainsync_core::StoreId;
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::ledger::{Account, Balances, EntryKind, LedgerEntry, MemberLedger};
use chainsync_core::member::{Gender, MemberDoc, Profile, ProfilePatch};
use proptest::prelude::*;
use std::collections::BTreeSet;
use uuid::Uuid;

fn store(n: u8) -> StoreId {
    StoreId::parse(&format!("s{n}")).unwrap()
}

/// A valid entry: kind, account and sign fit together.
fn entry_strategy() -> impl Strategy<Value = LedgerEntry> {
    (
        any::<u128>(),
        0u8..4,
        0u8..8,
        1i64..1_000_000_000,
        0u128..3,
        0u8..3,
    )
        .prop_map(|(id, origin, kind, magnitude, member, sign)| {
            let (kind, account, amount) = match kind {
                0 => (EntryKind::RechargePrincipal, Account::Principal, magnitude),
                1 => (EntryKind::RechargeBonus, Account::Bonus, magnitude),
                2 => (
                    EntryKind::Spend,
                    if sign == 0 {
                        Account::Bonus
                    } else {
                        Account::Principal
                    },
                    -magnitude,
                ),
                3 => (EntryKind::Refund, Account::Principal, magnitude),
                4 => (EntryKind::PointsEarn, Account::Points, magnitude),
                5 => (EntryKind::PointsRedeem, Account::Points, -magnitude),
                6 => (
                    EntryKind::PointsAdjust,
                    Account::Points,
                    if sign == 0 { -magnitude } else { magnitude },
                ),
                _ => (
                    EntryKind::PointsReverse,
                    Account::Points,
                    if sign == 0 { -magnitude } else { magnitude },
                ),
            };
            LedgerEntry {
                id: Uuid::from_u128(id),
                origin: store(origin),
                seq: (id % 1_000) as u64 + 1,
                hlc: HlcTimestamp {
                    wall_ms: (id % 10_000) as u64,
                    counter: 0,
                },
                member_id: Uuid::from_u128(member),
                kind,
                account,
                amount,
                checkout_id: None,
                reason: None,
                rule_version: 1,
            }
        })
}

/// A permutation of `items` with some repeated, driven by `picks`.
fn shuffled_with_duplicates<T: Clone>(items: &[T], picks: &[usize]) -> Vec<T> {
    let mut order: Vec<T> = items.to_vec();
    for (i, pick) in picks.iter().enumerate() {
        if order.is_empty() {
            break;
        }
        let a = i % order.len();
        let b = pick % order.len();
        order.swap(a, b);
        if pick % 3 == 0 {
            let again = order[b].clone();
            order.push(again);
        }
    }
    order
}

fn balances_of_all(ledger: &MemberLedger) -> Vec<Balances> {
    (0..3u128)
        .map(|m| ledger.balances_of(Uuid::from_u128(m)).unwrap())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Fold law: any order, any duplicates, any split across replicas merged in any order —
    /// the same balances, equal to the plain sum.
    #[test]
    fn ledger_fold_ignores_order_and_duplicates(
        entries in prop::collection::vec(entry_strategy(), 0..60),
        picks in prop::collection::vec(any::<usize>(), 0..120),
        split in prop::collection::vec(0usize..3, 60),
    ) {
        let mut in_order = MemberLedger::default();
        for entry in &entries {
            in_order.insert(entry.clone());
        }
        let mut shuffled = MemberLedger::default();
        for entry in shuffled_with_duplicates(&entries, &picks) {
            shuffled.insert(entry);
        }
        // Three replicas each hold a part; merge them in two different orders.
        let mut parts = vec![MemberLedger::default(), MemberLedger::default(), MemberLedger::default()];
        for (i, entry) in entries.iter().enumerate() {
            parts[split[i % split.len()]].insert(entry.clone());
        }
        let mut forward = parts[0].clone();
        forward.merge(&parts[1]);
        forward.merge(&parts[2]);
        forward.merge(&parts[1]);
        let mut backward = parts[2].clone();
        backward.merge(&parts[1]);
        backward.merge(&parts[0]);
        prop_assert_eq!(&in_order, &shuffled);
        prop_assert_eq!(&in_order, &forward);
        prop_assert_eq!(&in_order, &backward);
        let balances = balances_of_all(&in_order);
        prop_assert_eq!(&balances, &balances_of_all(&forward));
        // Equal to a plain sum over distinct ids.
        let distinct: std::collections::BTreeMap<Uuid, &LedgerEntry> =
            entries.iter().map(|e| (e.id, e)).collect();
        for (member, got) in balances.iter().enumerate() {
            let sum = |account: Account| -> i128 {
                distinct.values().filter(|e| e.member_id == Uuid::from_u128(member as u128) && e.account == account)
                    .map(|e| i128::from(e.amount)).sum()
            };
            prop_assert_eq!(i128::from(got.principal.0), sum(Account::Principal));
            prop_assert_eq!(i128::from(got.bonus.0), sum(Account::Bonus));
            prop_assert_eq!(i128::from(got.points), sum(Account::Points));
        }
    }
}

#[derive(Clone, Debug)]
enum Edit {
    Name(u8),
    Email(Option<u8>),
    Note(Option<u8>),
    Gender(Option<u8>),
    Birthday(Option<u8>),
    Tags(BTreeSet<u8>),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (0u8..20).prop_map(Edit::Name),
        proptest::option::of(0u8..20).prop_map(Edit::Email),
        proptest::option::of(0u8..20).prop_map(Edit::Note),
        proptest::option::of(0u8..3).prop_map(Edit::Gender),
        proptest::option::of(1u8..28).prop_map(Edit::Birthday),
        prop::collection::btree_set(0u8..8, 0..5).prop_map(Edit::Tags),
    ]
}

fn patch(edit: &Edit) -> ProfilePatch {
    match edit {
        Edit::Name(n) => ProfilePatch {
            name: Some(format!("会员{n}")),
            ..Default::default()
        },
        Edit::Email(e) => ProfilePatch {
            email: Some(e.map(|e| format!("m{e}@example.com"))),
            ..Default::default()
        },
        Edit::Note(n) => ProfilePatch {
            note: Some(n.map(|n| format!("备注{n}"))),
            ..Default::default()
        },
        Edit::Gender(g) => ProfilePatch {
            gender: Some(g.map(|g| [Gender::Male, Gender::Female, Gender::Other][usize::from(g)])),
            ..Default::default()
        },
        Edit::Birthday(d) => ProfilePatch {
            birthday: Some(d.map(|d| format!("1990-01-{d:02}"))),
            ..Default::default()
        },
        Edit::Tags(tags) => ProfilePatch {
            tags: Some(tags.iter().map(|t| format!("tag{t}")).collect()),
            ..Default::default()
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Profile merge: stores edit the same member concurrently; every replica that receives all
    /// the changes, in any order and with duplicates, ends with the same profile and heads.
    #[test]
    fn member_documents_converge_whatever_the_delivery(
        edits in prop::collection::vec((0u8..3, edit_strategy()), 1..25),
        picks in prop::collection::vec(any::<usize>(), 0..60),
    ) {
        let profile = Profile {
            name: "张三".into(),
            phone: "13812345678".into(),
            card_no: "100001".into(),
            ..Profile::default()
        };
        let (mut origin, created) = MemberDoc::create(&store(0), &profile, 1).unwrap();
        let saved = origin.save();
        let mut editors: Vec<MemberDoc> =
            (0..3).map(|n| MemberDoc::load(&store(n), &saved).unwrap()).collect();
        let mut changes = vec![created];
        for (time, (who, edit)) in edits.iter().enumerate() {
            if let Some(change) = editors[usize::from(*who)].edit(&patch(edit), 2 + time as u64).unwrap() {
                changes.push(change);
            }
        }
        // Replica A: everything in order. B: shuffled with duplicates, one change at a time.
        // C: from the saved document, then everything in reverse, as one batch.
        let mut a = MemberDoc::from_changes(&store(5), &changes).unwrap();
        let mut b = MemberDoc::from_changes(&store(6), &[]).unwrap();
        for change in shuffled_with_duplicates(&changes, &picks) {
            b.apply_changes(&[change]).unwrap();
        }
        let mut c = MemberDoc::load(&store(7), &saved).unwrap();
        let reversed: Vec<Vec<u8>> = changes.iter().rev().cloned().collect();
        c.apply_changes(&reversed).unwrap();
        prop_assert!(!b.has_missing_changes());
        prop_assert_eq!(a.profile(), b.profile());
        prop_assert_eq!(a.profile(), c.profile());
        prop_assert_eq!(a.heads_hex(), b.heads_hex());
        prop_assert_eq!(a.heads_hex(), c.heads_hex());
        // The editors themselves converge once they exchange everything.
        for editor in editors.iter_mut() {
            editor.apply_changes(&changes).unwrap();
            prop_assert_eq!(editor.profile(), a.profile());
        }
    }
}

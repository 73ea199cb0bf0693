#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property tests for the issue's requirement: "applying the same set of entries and document
//! changes in any order, with duplicates, yields the same state."
//!
//! - Ledger: any insertion order, any duplicates, any split over 2–4 replicas merged in any order
//!   give the same entry set and the same balances, equal to a plain `i128` sum; merge is
//!   commutative, associative and idempotent.
//! - Member documents: concurrent edits at 2–4 stores, with changes delivered to fresh replicas
//!   in any order, with duplicates, one at a time or in batches, converge to the same profile
//!   and heads; the heads are exactly the changes nothing else depends on.
//! - HLC: local timestamps strictly increase and exceed every observed remote timestamp.
//! - Op encoding: decoding never panics on arbitrary or damaged bytes; ledger ops round-trip.
//!
//! Every shuffle is a Fisher–Yates driven by generated `Index` values, so failures shrink.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use automerge::Change;
use chainsync_core::StoreId;
use chainsync_core::hlc::{Hlc, HlcError, HlcTimestamp};
use chainsync_core::ledger::{Account, Balances, EntryKind, LedgerEntry, MemberLedger};
use chainsync_core::limits;
use chainsync_core::member::{Gender, MemberDoc, Profile, ProfilePatch, validate_profile};
use chainsync_core::op::{Op, OpV1};
use proptest::collection::{btree_set, vec};
use proptest::option::{of as maybe, weighted};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use uuid::Uuid;

fn store(id: &str) -> StoreId {
    StoreId::parse(id).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Delivery: permutations with duplicates, driven by generated indices.

/// A delivery schedule: which items are delivered again, and how everything is shuffled.
#[derive(Clone, Debug)]
struct Shuffle {
    duplicates: Vec<Index>,
    swaps: Vec<Index>,
}

fn shuffle_strategy() -> impl Strategy<Value = Shuffle> {
    (vec(any::<Index>(), 0..40), vec(any::<Index>(), 1..64))
        .prop_map(|(duplicates, swaps)| Shuffle { duplicates, swaps })
}

impl Shuffle {
    /// Every item once, in a random order.
    fn permute<T>(&self, mut items: Vec<T>) -> Vec<T> {
        for i in (1..items.len()).rev() {
            let j = self.swaps[i % self.swaps.len()].index(i + 1);
            items.swap(i, j);
        }
        items
    }

    /// Every item at least once, some several times, in a random order.
    fn deliver<T: Clone>(&self, items: &[T]) -> Vec<T> {
        let mut all = items.to_vec();
        if !items.is_empty() {
            for pick in &self.duplicates {
                all.push(items[pick.index(items.len())].clone());
            }
        }
        self.permute(all)
    }
}

// ---------------------------------------------------------------------------------------------
// Ledger

const AMOUNT_MAX: i64 = limits::amount_fen_max;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sign {
    Positive,
    Negative,
    NonZero,
    /// Zero or below (a points expiry, 0 once revised away).
    NonPositive,
}

impl Sign {
    fn admits(self, amount: i64) -> bool {
        match self {
            Sign::Positive => amount > 0,
            Sign::Negative => amount < 0,
            Sign::NonZero => amount != 0,
            Sign::NonPositive => amount <= 0,
        }
    }
}

const ALL_KINDS: [EntryKind; 11] = [
    EntryKind::RechargePrincipal,
    EntryKind::RechargeBonus,
    EntryKind::Spend,
    EntryKind::Refund,
    EntryKind::PointsEarn,
    EntryKind::PointsRedeem,
    EntryKind::PointsAdjust,
    EntryKind::PointsReverse,
    EntryKind::StoredValueAdjust,
    EntryKind::PointsReward,
    EntryKind::PointsExpire,
];

const ALL_ACCOUNTS: [Account; 3] = [Account::Principal, Account::Bonus, Account::Points];

/// Every (kind, account, sign) that `LedgerEntry::validate` accepts; checked against
/// `validate` by `the_valid_shapes_are_exactly_those_validate_accepts`.
const VALID_SHAPES: [(EntryKind, Account, Sign); 13] = [
    (
        EntryKind::RechargePrincipal,
        Account::Principal,
        Sign::Positive,
    ),
    (EntryKind::RechargeBonus, Account::Bonus, Sign::Positive),
    (EntryKind::Spend, Account::Principal, Sign::Negative),
    (EntryKind::Spend, Account::Bonus, Sign::Negative),
    (EntryKind::Refund, Account::Principal, Sign::Positive),
    (EntryKind::Refund, Account::Bonus, Sign::Positive),
    (EntryKind::PointsEarn, Account::Points, Sign::Positive),
    (EntryKind::PointsRedeem, Account::Points, Sign::Negative),
    (EntryKind::PointsAdjust, Account::Points, Sign::NonZero),
    (EntryKind::PointsReverse, Account::Points, Sign::NonZero),
    (
        EntryKind::StoredValueAdjust,
        Account::Principal,
        Sign::NonZero,
    ),
    (EntryKind::PointsReward, Account::Points, Sign::Positive),
    (EntryKind::PointsExpire, Account::Points, Sign::NonPositive),
];

/// Fails to compile when a kind is added, so that `ALL_KINDS` and `VALID_SHAPES` get updated.
fn kind_is_listed(kind: EntryKind) -> bool {
    match kind {
        EntryKind::RechargePrincipal
        | EntryKind::RechargeBonus
        | EntryKind::Spend
        | EntryKind::Refund
        | EntryKind::PointsEarn
        | EntryKind::PointsRedeem
        | EntryKind::PointsAdjust
        | EntryKind::PointsReverse
        | EntryKind::StoredValueAdjust
        | EntryKind::PointsReward
        | EntryKind::PointsExpire => ALL_KINDS.contains(&kind),
    }
}

/// Members entries are drawn for; balances are also checked for one member with no entries.
const MEMBERS: u128 = 5;

fn member(n: u128) -> Uuid {
    Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_1000 + n)
}

fn store_id_strategy() -> impl Strategy<Value = StoreId> {
    prop_oneof![
        select(vec!["s1", "s2", "s3", "hq"]).prop_map(store),
        "[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?".prop_map(|id| store(&id)),
    ]
}

/// A valid entry with a magnitude in `1..=amount_max`, for one of `MEMBERS` members.
fn entry_strategy(amount_max: i64) -> impl Strategy<Value = LedgerEntry> {
    (
        any::<u128>(),
        select(VALID_SHAPES.to_vec()),
        1..=amount_max,
        any::<bool>(),
        0..MEMBERS,
        store_id_strategy(),
        1..1_000_000u64,
        (0..1u64 << 44, 0..4u32),
        maybe(any::<u128>()),
        maybe("\\PC{0,12}"),
        1..4u32,
    )
        .prop_map(
            |(
                id,
                (kind, account, sign),
                magnitude,
                negate,
                who,
                origin,
                seq,
                hlc,
                sale,
                reason,
                rule,
            )| {
                let amount = match sign {
                    Sign::Positive => magnitude,
                    Sign::Negative | Sign::NonPositive => -magnitude,
                    Sign::NonZero if negate => -magnitude,
                    Sign::NonZero => magnitude,
                };
                LedgerEntry {
                    id: Uuid::from_u128(id),
                    origin,
                    seq,
                    hlc: HlcTimestamp {
                        wall_ms: hlc.0,
                        counter: hlc.1,
                    },
                    member_id: member(who),
                    kind,
                    account,
                    amount,
                    checkout_id: sale.map(Uuid::from_u128),
                    reason,
                    rule_version: rule,
                }
            },
        )
}

/// Distinct entries (ids are globally unique UUIDv7s in the real system).
fn entries_strategy(max: usize, amount_max: i64) -> impl Strategy<Value = Vec<LedgerEntry>> {
    vec(entry_strategy(amount_max), 0..max).prop_map(|entries| {
        let mut seen = HashSet::new();
        entries.into_iter().filter(|e| seen.insert(e.id)).collect()
    })
}

/// The plain sum per account, in `i128`, over distinct entries.
fn plain_sums(entries: &[LedgerEntry], member_id: Uuid) -> [i128; 3] {
    let mut sums = [0i128; 3];
    for entry in entries {
        if entry.member_id != member_id {
            continue;
        }
        let slot = match entry.account {
            Account::Principal => 0,
            Account::Bonus => 1,
            Account::Points => 2,
        };
        sums[slot] += i128::from(entry.amount);
    }
    sums
}

fn as_sums(balances: &Balances) -> [i128; 3] {
    [
        i128::from(balances.principal.0),
        i128::from(balances.bonus.0),
        i128::from(balances.points),
    ]
}

/// The entries a ledger holds, ordered by id (not relying on the ledger's own order).
fn entry_set(ledger: &MemberLedger) -> Vec<LedgerEntry> {
    let mut entries: Vec<LedgerEntry> = ledger.entries().cloned().collect();
    entries.sort_by_key(|e| e.id);
    entries
}

fn ledger_of(entries: &[LedgerEntry]) -> MemberLedger {
    let mut ledger = MemberLedger::default();
    for entry in entries {
        ledger.insert(entry.clone());
    }
    ledger
}

fn merged(a: &MemberLedger, b: &MemberLedger) -> MemberLedger {
    let mut out = a.clone();
    out.merge(b);
    out
}

/// Three ledgers holding overlapping subsets of one pool of distinct entries.
fn three_ledgers() -> impl Strategy<Value = [MemberLedger; 3]> {
    (
        entries_strategy(40, AMOUNT_MAX),
        vec(0u8..8, 40),
        shuffle_strategy(),
    )
        .prop_map(|(pool, masks, shuffle)| {
            let mut ledgers: [MemberLedger; 3] = Default::default();
            let indices: Vec<usize> = (0..pool.len()).collect();
            for i in shuffle.deliver(&indices) {
                for (r, ledger) in ledgers.iter_mut().enumerate() {
                    if masks[i % masks.len()] & (1 << r) != 0 {
                        ledger.insert(pool[i].clone());
                    }
                }
            }
            ledgers
        })
}

#[test]
fn the_valid_shapes_are_exactly_those_validate_accepts() {
    let amounts = [i64::MIN, -AMOUNT_MAX, -1, 0, 1, AMOUNT_MAX, i64::MAX];
    for kind in ALL_KINDS {
        assert!(kind_is_listed(kind));
        for account in ALL_ACCOUNTS {
            for amount in amounts {
                let entry = LedgerEntry {
                    id: Uuid::from_u128(1),
                    origin: store("s1"),
                    seq: 1,
                    hlc: HlcTimestamp::default(),
                    member_id: member(0),
                    kind,
                    account,
                    amount,
                    checkout_id: None,
                    reason: None,
                    rule_version: 1,
                };
                let listed = VALID_SHAPES
                    .iter()
                    .any(|&(k, a, sign)| k == kind && a == account && sign.admits(amount));
                assert_eq!(
                    entry.validate().is_ok(),
                    listed,
                    "{kind:?} {account:?} {amount}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// (a) original order, (b) a permutation with duplicates, (c) subsets held by 2–4 replicas
    /// merged in random orders, both into a fresh ledger and by every replica gossiping with
    /// the others: the same entries, the same balances, equal to the plain sum.
    #[test]
    fn ledger_state_is_independent_of_order_duplicates_and_replica_splits(
        entries in entries_strategy(80, AMOUNT_MAX),
        delivery in shuffle_strategy(),
        replica_count in 2usize..=4,
        holders in vec((any::<Index>(), any::<u8>()), 1..80),
        replica_deliveries in vec(shuffle_strategy(), 4),
        merge_orders in vec(shuffle_strategy(), 5),
    ) {
        for entry in &entries {
            prop_assert!(entry.validate().is_ok(), "generated an invalid entry: {entry:?}");
        }

        // (a) In the original order: every insert is new.
        let mut in_order = MemberLedger::default();
        for entry in &entries {
            prop_assert!(in_order.insert(entry.clone()));
        }

        // (b) Shuffled with duplicates: exactly the duplicates are refused.
        let delivered = delivery.deliver(&entries);
        let mut shuffled = MemberLedger::default();
        let fresh = delivered.iter().filter(|e| shuffled.insert((*e).clone())).count();
        prop_assert_eq!(fresh, entries.len());

        // (c) Each entry is held by at least one replica, maybe several; each replica receives
        // its part shuffled with duplicates.
        let mut parts: Vec<Vec<LedgerEntry>> = vec![Vec::new(); replica_count];
        for (i, entry) in entries.iter().enumerate() {
            let (primary, extra) = holders[i % holders.len()];
            for (r, part) in parts.iter_mut().enumerate() {
                if r == primary.index(replica_count) || extra & (1 << r) != 0 {
                    part.push(entry.clone());
                }
            }
        }
        let replicas: Vec<MemberLedger> = parts
            .iter()
            .zip(&replica_deliveries)
            .map(|(part, delivery)| ledger_of(&delivery.deliver(part)))
            .collect();
        let mut combined = MemberLedger::default();
        for r in merge_orders[0].permute((0..replica_count).collect()) {
            combined.merge(&replicas[r]);
        }
        let mut candidates = vec![("shuffled", shuffled), ("combined", combined)];
        for (r, replica) in replicas.iter().enumerate() {
            let mut gossiped = replica.clone();
            let others: Vec<usize> = (0..replica_count).filter(|&o| o != r).collect();
            for o in merge_orders[r + 1].deliver(&others) {
                gossiped.merge(&replicas[o]);
            }
            candidates.push(("gossiped", gossiped));
        }

        let mut expected = entries.clone();
        expected.sort_by_key(|e| e.id);
        prop_assert_eq!(entry_set(&in_order), expected.clone());
        for member_n in 0..=MEMBERS {
            let id = member(member_n);
            let sums = plain_sums(&entries, id);
            let balances = in_order.balances_of(id);
            prop_assert!(balances.is_ok());
            prop_assert_eq!(as_sums(&balances.unwrap()), sums);
        }
        for (name, ledger) in &candidates {
            prop_assert_eq!(ledger.len(), entries.len(), "{}", name);
            prop_assert_eq!(&entry_set(ledger), &expected, "{}", name);
            prop_assert_eq!(ledger, &in_order, "{}", name);
            for member_n in 0..=MEMBERS {
                let id = member(member_n);
                prop_assert_eq!(ledger.balances_of(id), in_order.balances_of(id), "{}", name);
            }
        }
    }

    /// Large amounts: the fold fails exactly when an account's sum leaves `i64`, whatever the
    /// order the entries arrived in.
    #[test]
    fn ledger_fold_overflows_exactly_when_a_sum_leaves_i64(
        entries in entries_strategy(8, i64::MAX),
        delivery in shuffle_strategy(),
    ) {
        let in_order = ledger_of(&entries);
        let shuffled = ledger_of(&delivery.deliver(&entries));
        for member_n in 0..=MEMBERS {
            let id = member(member_n);
            let sums = plain_sums(&entries, id);
            let fits = sums.iter().all(|s| i64::try_from(*s).is_ok());
            let got = in_order.balances_of(id);
            prop_assert_eq!(got.is_ok(), fits, "sums {:?} gave {:?}", sums, got);
            if let Ok(balances) = got {
                prop_assert_eq!(as_sums(&balances), sums);
            }
            prop_assert_eq!(shuffled.balances_of(id), got);
        }
    }

    #[test]
    fn ledger_merge_is_commutative([a, b, _c] in three_ledgers()) {
        let ab = merged(&a, &b);
        let ba = merged(&b, &a);
        prop_assert_eq!(entry_set(&ab), entry_set(&ba));
        prop_assert_eq!(&ab, &ba);
        let union: BTreeSet<Uuid> = a.entries().chain(b.entries()).map(|e| e.id).collect();
        prop_assert_eq!(ab.len(), union.len());
        for member_n in 0..=MEMBERS {
            prop_assert_eq!(ab.balances_of(member(member_n)), ba.balances_of(member(member_n)));
        }
    }

    #[test]
    fn ledger_merge_is_associative([a, b, c] in three_ledgers()) {
        let left = merged(&merged(&a, &b), &c);
        let right = merged(&a, &merged(&b, &c));
        prop_assert_eq!(entry_set(&left), entry_set(&right));
        prop_assert_eq!(&left, &right);
        for member_n in 0..=MEMBERS {
            prop_assert_eq!(left.balances_of(member(member_n)), right.balances_of(member(member_n)));
        }
    }

    #[test]
    fn ledger_merge_is_idempotent([a, b, _c] in three_ledgers()) {
        prop_assert_eq!(&merged(&a, &a), &a);
        let ab = merged(&a, &b);
        prop_assert_eq!(&merged(&ab, &b), &ab);
        prop_assert_eq!(&merged(&ab, &a), &ab);
        prop_assert_eq!(&merged(&ab, &ab), &ab);
        let empty = MemberLedger::default();
        prop_assert_eq!(&merged(&a, &empty), &a);
        prop_assert_eq!(&merged(&empty, &a), &a);
        for member_n in 0..=MEMBERS {
            prop_assert_eq!(merged(&ab, &b).balances_of(member(member_n)), ab.balances_of(member(member_n)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Member documents

const TAGS: [&str; 10] = [
    "vip",
    "gold",
    "silver",
    "新客",
    "生日月",
    "老顾客",
    "wholesale",
    "padded",
    " padded ",
    "a b",
];

fn name_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec!["张三", "李四", "王五", "Zhao Liu", "  赵六  "]).prop_map(str::to_owned),
        "[a-zA-Z\u{4e00}-\u{9fa5}][ a-zA-Z\u{4e00}-\u{9fa5}]{0,30}",
    ]
}

/// A mainland mobile as 11 digits, and a raw form of it that normalizes to those digits.
fn phone_strategy() -> impl Strategy<Value = (String, String)> {
    ("1[3-9][0-9]{9}", 0..6u8).prop_map(|(digits, form)| {
        let raw = match form {
            0 => digits.clone(),
            1 => format!("+86{digits}"),
            2 => format!("0086{digits}"),
            3 => format!("86{digits}"),
            4 => format!("+86 {}-{}-{}", &digits[..3], &digits[3..7], &digits[7..]),
            _ => format!("(+86) {} {} {}", &digits[..3], &digits[3..7], &digits[7..]),
        };
        (digits, raw)
    })
}

fn card_strategy() -> impl Strategy<Value = String> {
    "[A-Za-z0-9]{4,20}"
}

fn gender_strategy() -> impl Strategy<Value = Gender> {
    select(vec![Gender::Male, Gender::Female, Gender::Other])
}

fn birthday_strategy() -> impl Strategy<Value = String> {
    (1900u32..=2200, 1u32..=12, any::<u32>()).prop_map(|(y, m, d)| {
        let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let days = match m {
            2 if leap => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        format!("{y:04}-{m:02}-{:02}", 1 + d % days)
    })
}

fn email_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec!["a@example.com", "b@example.cn"]).prop_map(str::to_owned),
        "[a-z0-9._]{1,12}@[a-z0-9]{1,10}\\.(com|cn|net)",
    ]
}

/// Free text without control characters (what `validate_text` allows).
fn text_strategy(max_chars: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        select(vec!["", "备注", "call before 6pm"]).prop_map(str::to_owned),
        proptest::string::string_regex(&format!("\\PC{{0,{max_chars}}}")).unwrap(),
    ]
}

fn tags_strategy() -> impl Strategy<Value = BTreeSet<String>> {
    btree_set(select(TAGS.to_vec()).prop_map(str::to_owned), 0..6)
}

fn profile_strategy() -> impl Strategy<Value = Profile> {
    (
        name_strategy(),
        phone_strategy(),
        card_strategy(),
        maybe(gender_strategy()),
        maybe(birthday_strategy()),
        maybe(email_strategy()),
        maybe(text_strategy(40)),
        maybe(text_strategy(120)),
        maybe(Just("s1".to_owned())),
        tags_strategy(),
    )
        .prop_map(
            |(name, (phone, _), card_no, gender, birthday, email, address, note, home, tags)| {
                Profile {
                    name: name.trim().to_owned(),
                    phone,
                    card_no,
                    gender,
                    birthday,
                    email,
                    address,
                    note,
                    home_store: home,
                    tags: tags.iter().map(|t| t.trim().to_owned()).collect(),
                }
            },
        )
}

/// A patch and the normalized phone it sets, if any.
fn patch_strategy() -> impl Strategy<Value = (ProfilePatch, Option<String>)> {
    (
        weighted(0.3, name_strategy()),
        weighted(0.15, phone_strategy()),
        weighted(0.1, card_strategy()),
        weighted(0.2, maybe(gender_strategy())),
        weighted(0.2, maybe(birthday_strategy())),
        weighted(0.25, maybe(email_strategy())),
        weighted(0.15, maybe(text_strategy(40))),
        weighted(0.25, maybe(text_strategy(120))),
        weighted(0.35, tags_strategy()),
    )
        .prop_map(
            |(name, phone, card_no, gender, birthday, email, address, note, tags)| {
                let patch = ProfilePatch {
                    name,
                    phone: phone.as_ref().map(|(_, raw)| raw.clone()),
                    card_no,
                    gender,
                    birthday,
                    email,
                    address,
                    note,
                    tags,
                };
                (patch, phone.map(|(digits, _)| digits))
            },
        )
}

/// What a patch should do to a profile, per `ProfilePatch`'s documentation.
fn expected_after(current: &Profile, patch: &ProfilePatch, phone: Option<&String>) -> Profile {
    let mut next = current.clone();
    if let Some(name) = &patch.name {
        next.name = name.trim().to_owned();
    }
    if let Some(phone) = phone {
        next.phone = phone.clone();
    }
    if let Some(card_no) = &patch.card_no {
        next.card_no = card_no.clone();
    }
    if let Some(gender) = patch.gender {
        next.gender = gender;
    }
    if let Some(birthday) = &patch.birthday {
        next.birthday = birthday.clone();
    }
    if let Some(email) = &patch.email {
        next.email = email.clone();
    }
    if let Some(address) = &patch.address {
        next.address = address.clone();
    }
    if let Some(note) = &patch.note {
        next.note = note.clone();
    }
    if let Some(tags) = &patch.tags {
        next.tags = tags.iter().map(|t| t.trim().to_owned()).collect();
    }
    next
}

#[derive(Clone, Debug)]
enum Step {
    /// One store edits its copy.
    Edit {
        at: Index,
        patch: Box<ProfilePatch>,
        phone: Option<String>,
    },
    /// One store receives every change another store knows (so later edits depend on them).
    Sync { from: Index, to: Index },
}

fn step_strategy() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (any::<Index>(), patch_strategy())
            .prop_map(|(at, (patch, phone))| Step::Edit {
                at,
                patch: Box::new(patch),
                phone
            }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(from, to)| Step::Sync { from, to }),
    ]
}

/// Hash and dependency hashes of a change, as automerge computes them.
fn hash_and_deps(bytes: &[u8]) -> (String, Vec<String>) {
    let change = Change::from_bytes(bytes.to_vec()).unwrap();
    let deps = change.deps().iter().map(|d| d.to_string()).collect();
    (change.hash().to_string(), deps)
}

/// True if some delivered change depends on one that has not been delivered.
fn waits_for_a_dependency(delivered: &BTreeSet<usize>, deps: &[Vec<usize>]) -> bool {
    delivered
        .iter()
        .any(|&c| deps[c].iter().any(|d| !delivered.contains(d)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// 2–4 stores edit one member concurrently (sometimes syncing in between); every change,
    /// the creation included, reaches fresh replicas in any order with duplicates, one at a
    /// time or in batches, and a replica loaded from the saved document. All end with the same
    /// profile and heads, which are exactly the changes no other change depends on.
    #[test]
    fn member_documents_converge_in_any_delivery_order_with_duplicates(
        initial in profile_strategy(),
        store_count in 2usize..=4,
        steps in vec(step_strategy(), 1..30),
        deliveries in vec(shuffle_strategy(), 4),
        editor_deliveries in vec(shuffle_strategy(), 4),
        batch_sizes in vec(1usize..6, 1..10),
    ) {
        prop_assert!(validate_profile(&initial).is_ok(), "generated an invalid profile");
        let (mut origin, created) = MemberDoc::create(&store("s1"), &initial, 1).unwrap();
        prop_assert_eq!(origin.profile(), initial.clone());
        let saved = origin.save();

        let stores: Vec<StoreId> = (1..=store_count).map(|n| store(&format!("s{n}"))).collect();
        let mut editors: Vec<MemberDoc> = stores
            .iter()
            .map(|s| MemberDoc::load(s, &saved).unwrap())
            .collect();
        // Every change, in the order made (a causal order), and what each store has seen.
        let mut changes: Vec<Vec<u8>> = vec![created];
        let mut known: Vec<BTreeSet<usize>> = vec![BTreeSet::from([0]); store_count];

        for (time, step) in steps.iter().enumerate() {
            let now_ms = 2 + time as u64;
            match step {
                Step::Edit { at, patch, phone } => {
                    let s = at.index(store_count);
                    let before = editors[s].profile();
                    let expected = expected_after(&before, patch, phone.as_ref());
                    let change = editors[s].edit(patch, now_ms).unwrap();
                    prop_assert_eq!(editors[s].profile(), expected.clone(), "local edit");
                    prop_assert_eq!(change.is_none(), expected == before, "no-op detection");
                    if let Some(change) = change {
                        changes.push(change);
                        known[s].insert(changes.len() - 1);
                    }
                }
                Step::Sync { from, to } => {
                    let (from, to) = (from.index(store_count), to.index(store_count));
                    let batch: Vec<Vec<u8>> =
                        known[from].iter().map(|&c| changes[c].clone()).collect();
                    editors[to].apply_changes(&batch).unwrap();
                    let seen = known[from].clone();
                    known[to].extend(seen);
                }
            }
        }

        // The heads must be the changes that no other change depends on.
        let (hashes, dep_hashes): (Vec<String>, Vec<Vec<String>>) =
            changes.iter().map(|c| hash_and_deps(c)).unzip();
        let position: BTreeMap<&String, usize> =
            hashes.iter().enumerate().map(|(i, h)| (h, i)).collect();
        prop_assert_eq!(position.len(), changes.len(), "two changes with one hash");
        let deps: Vec<Vec<usize>> = dep_hashes
            .iter()
            .map(|ds| ds.iter().map(|d| position[d]).collect())
            .collect();
        let depended_on: BTreeSet<usize> = deps.iter().flatten().copied().collect();
        let mut expected_heads: Vec<String> = (0..changes.len())
            .filter(|c| !depended_on.contains(c))
            .map(|c| hashes[c].clone())
            .collect();
        expected_heads.sort();

        let mut reference = MemberDoc::from_changes(&store("hq"), &changes).unwrap();
        prop_assert_eq!(reference.heads_hex(), expected_heads.clone());
        let expected_profile = reference.profile();

        let mut replicas: Vec<(&str, MemberDoc)> = Vec::new();

        // One change at a time, tracking which changes automerge must be holding back.
        let indices: Vec<usize> = (0..changes.len()).collect();
        let mut one_by_one = MemberDoc::from_changes(&store("r1"), &[]).unwrap();
        let mut delivered = BTreeSet::new();
        for c in deliveries[0].deliver(&indices) {
            one_by_one.apply_changes(&[changes[c].clone()]).unwrap();
            delivered.insert(c);
            prop_assert_eq!(
                one_by_one.has_missing_changes(),
                waits_for_a_dependency(&delivered, &deps),
                "after delivering {:?}", delivered
            );
        }
        replicas.push(("one at a time", one_by_one));

        // In random batches.
        let mut batched = MemberDoc::from_changes(&store("r2"), &[]).unwrap();
        let order = deliveries[1].deliver(&changes);
        let mut rest = order.as_slice();
        let mut sizes = batch_sizes.iter().cycle();
        while !rest.is_empty() {
            let size = (*sizes.next().unwrap()).min(rest.len());
            let (batch, tail) = rest.split_at(size);
            batched.apply_changes(batch).unwrap();
            rest = tail;
        }
        replicas.push(("batches", batched));

        // From the saved document (which already holds the creation change), one at a time.
        let mut from_saved = MemberDoc::load(&store("r3"), &saved).unwrap();
        for change in deliveries[2].deliver(&changes) {
            from_saved.apply_changes(&[change]).unwrap();
        }
        replicas.push(("from saved bytes", from_saved));

        // Everything shuffled, in one call.
        let all_at_once =
            MemberDoc::from_changes(&store("r4"), &deliveries[3].deliver(&changes)).unwrap();
        replicas.push(("all at once", all_at_once));

        // The editors themselves, catching up on everything in their own orders.
        for (s, mut editor) in editors.into_iter().enumerate() {
            for change in editor_deliveries[s].deliver(&changes) {
                editor.apply_changes(&[change]).unwrap();
            }
            replicas.push(("editor", editor));
        }

        // And a copy of the reference through save and load.
        let reloaded = MemberDoc::load(&store("r5"), &reference.save()).unwrap();
        replicas.push(("reloaded", reloaded));

        for (name, replica) in &mut replicas {
            prop_assert!(!replica.has_missing_changes(), "{}", name);
            prop_assert_eq!(replica.profile(), expected_profile.clone(), "{}", name);
            prop_assert_eq!(replica.heads_hex(), expected_heads.clone(), "{}", name);
        }
    }
}

/// Found while writing the properties above: each store's tag set is valid, but their merge is
/// not (40 tags > `member_tags_max`), and from then on every edit that leaves the tags alone is
/// refused, because `edit` validates the whole merged profile.
#[test]
fn concurrent_tag_additions_keep_the_member_editable() {
    let profile = Profile {
        name: "张三".into(),
        phone: "13812345678".into(),
        card_no: "100001".into(),
        ..Profile::default()
    };
    let (mut origin, _) = MemberDoc::create(&store("s1"), &profile, 1).unwrap();
    let saved = origin.save();
    let mut at_a = MemberDoc::load(&store("s1"), &saved).unwrap();
    let mut at_b = MemberDoc::load(&store("s2"), &saved).unwrap();
    let tags =
        |prefix: &str| -> BTreeSet<String> { (0..20).map(|i| format!("{prefix}{i}")).collect() };
    let patch_a = ProfilePatch {
        tags: Some(tags("a")),
        ..Default::default()
    };
    let patch_b = ProfilePatch {
        tags: Some(tags("b")),
        ..Default::default()
    };
    let change_a = at_a.edit(&patch_a, 2).unwrap().unwrap();
    at_b.edit(&patch_b, 2).unwrap().unwrap();
    at_b.apply_changes(&[change_a]).unwrap();
    let email = ProfilePatch {
        email: Some(Some("x@example.com".into())),
        ..Default::default()
    };
    let edited = at_b.edit(&email, 3);
    assert!(edited.is_ok(), "{:?}", edited.err().map(|e| e.to_string()));
}

// ---------------------------------------------------------------------------------------------
// HLC

const DRIFT: u64 = limits::hlc_drift_ms_max;

#[derive(Clone, Debug)]
enum ClockEvent {
    /// A local event after the physical clock moved by `step_ms` (possibly backwards).
    Local { step_ms: i64 },
    /// A remote timestamp within the allowed drift of our physical clock.
    Remote {
        step_ms: i64,
        offset_ms: i64,
        counter: u32,
    },
    /// A remote timestamp beyond the allowed drift.
    RemoteTooFar {
        step_ms: i64,
        beyond_ms: u64,
        counter: u32,
    },
}

fn step_ms_strategy() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => Just(0i64),
        3 => 1i64..50,
        2 => -2_000i64..0,
        1 => -(3 * DRIFT as i64)..-100_000,
        1 => 10_000i64..(2 * DRIFT as i64),
    ]
}

fn counter_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![20 => 0u32..5, 1 => (u32::MAX - 2)..=u32::MAX]
}

fn clock_event_strategy() -> impl Strategy<Value = ClockEvent> {
    let drift = DRIFT as i64;
    prop_oneof![
        6 => step_ms_strategy().prop_map(|step_ms| ClockEvent::Local { step_ms }),
        3 => (
            step_ms_strategy(),
            prop_oneof![-(3 * drift)..=drift, Just(drift), Just(0), -5i64..=5],
            counter_strategy()
        )
            .prop_map(|(step_ms, offset_ms, counter)| ClockEvent::Remote {
                step_ms,
                offset_ms,
                counter
            }),
        1 => (step_ms_strategy(), 1u64..1_000_000, counter_strategy()).prop_map(
            |(step_ms, beyond_ms, counter)| ClockEvent::RemoteTooFar {
                step_ms,
                beyond_ms,
                counter
            }
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Local timestamps strictly increase and exceed every timestamp observed before them, with
    /// the physical clock stalling, stepping back or jumping; the wall part is the largest
    /// physical time or timestamp seen. Remotes beyond the drift are refused without effect.
    /// The only allowed failure of `now` is an exhausted counter.
    #[test]
    fn hlc_now_is_strictly_increasing_and_after_everything_observed(
        start_physical in 0u64..1 << 44,
        start_offset in -10_000i64..10_000,
        start_counter in counter_strategy(),
        events in vec(clock_event_strategy(), 1..80),
    ) {
        let start = HlcTimestamp {
            wall_ms: start_physical.saturating_add_signed(start_offset),
            counter: start_counter,
        };
        let mut clock = Hlc::starting_after(start);
        let mut physical = start_physical;
        // The largest timestamp issued or accepted so far: every `now` must exceed it.
        let mut floor = start;
        let mut issued: Vec<HlcTimestamp> = Vec::new();
        let mut observed: Vec<HlcTimestamp> = Vec::new();
        for event in &events {
            let before = clock.last();
            prop_assert_eq!(before, floor);
            match *event {
                ClockEvent::Local { step_ms } => {
                    physical = physical.saturating_add_signed(step_ms);
                    match clock.now(physical) {
                        Ok(ts) => {
                            prop_assert!(ts > floor, "{:?} not after {:?}", ts, floor);
                            for seen in &observed {
                                prop_assert!(ts > *seen);
                            }
                            prop_assert!(ts.wall_ms >= physical);
                            prop_assert_eq!(ts.wall_ms, physical.max(floor.wall_ms));
                            prop_assert_eq!(clock.last(), ts);
                            issued.push(ts);
                            floor = ts;
                        }
                        Err(error) => {
                            prop_assert_eq!(error, HlcError::CounterExhausted);
                            prop_assert!(physical <= before.wall_ms);
                            prop_assert_eq!(before.counter, u32::MAX);
                            prop_assert_eq!(clock.last(), before);
                        }
                    }
                }
                ClockEvent::Remote { step_ms, offset_ms, counter } => {
                    physical = physical.saturating_add_signed(step_ms);
                    let remote = HlcTimestamp {
                        wall_ms: physical.saturating_add_signed(offset_ms),
                        counter,
                    };
                    prop_assert_eq!(clock.observe(remote, physical), Ok(()));
                    observed.push(remote);
                    floor = floor.max(remote);
                    prop_assert_eq!(clock.last(), floor);
                }
                ClockEvent::RemoteTooFar { step_ms, beyond_ms, counter } => {
                    physical = physical.saturating_add_signed(step_ms);
                    let remote = HlcTimestamp {
                        wall_ms: physical + DRIFT + beyond_ms,
                        counter,
                    };
                    prop_assert_eq!(
                        clock.observe(remote, physical),
                        Err(HlcError::TooFarAhead { ahead_ms: DRIFT + beyond_ms })
                    );
                    prop_assert_eq!(clock.last(), before);
                }
            }
        }
        for pair in issued.windows(2) {
            prop_assert!(pair[0] < pair[1]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Op encoding

/// Any ledger entry, valid or not: encoding does not care.
fn any_entry_strategy() -> impl Strategy<Value = LedgerEntry> {
    (
        any::<u128>(),
        store_id_strategy(),
        any::<u64>(),
        (any::<u64>(), any::<u32>()),
        any::<u128>(),
        (select(ALL_KINDS.to_vec()), select(ALL_ACCOUNTS.to_vec())),
        any::<i64>(),
        maybe(any::<u128>()),
        maybe(any::<String>()),
        any::<u32>(),
    )
        .prop_map(
            |(
                id,
                origin,
                seq,
                (wall_ms, counter),
                who,
                (kind, account),
                amount,
                sale,
                reason,
                rule,
            )| {
                LedgerEntry {
                    id: Uuid::from_u128(id),
                    origin,
                    seq,
                    hlc: HlcTimestamp { wall_ms, counter },
                    member_id: Uuid::from_u128(who),
                    kind,
                    account,
                    amount,
                    checkout_id: sale.map(Uuid::from_u128),
                    reason,
                    rule_version: rule,
                }
            },
        )
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any_entry_strategy().prop_map(|e| Op::V1(OpV1::Ledger(e))),
        1 => (any::<u128>(), vec(any::<u8>(), 0..200)).prop_map(|(id, change)| {
            Op::V1(OpV1::MemberChange { member_id: Uuid::from_u128(id), change })
        }),
    ]
}

#[derive(Clone, Debug)]
enum Damage {
    Flip(Index, u8),
    Set(Index, u8),
    Truncate(Index),
    Insert(Index, u8),
    Remove(Index),
}

fn damage_strategy() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<Index>(), 1..=255u8).prop_map(|(i, mask)| Damage::Flip(i, mask)),
        (
            any::<Index>(),
            prop_oneof![Just(0xffu8), Just(0x80), Just(0), any::<u8>()]
        )
            .prop_map(|(i, b)| Damage::Set(i, b)),
        any::<Index>().prop_map(Damage::Truncate),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        any::<Index>().prop_map(Damage::Remove),
    ]
}

fn damaged(mut bytes: Vec<u8>, damage: &[Damage]) -> Vec<u8> {
    for d in damage {
        match *d {
            _ if bytes.is_empty() => bytes.push(0xff),
            Damage::Flip(i, mask) => {
                let i = i.index(bytes.len());
                bytes[i] ^= mask;
            }
            Damage::Set(i, b) => {
                let i = i.index(bytes.len());
                bytes[i] = b;
            }
            Damage::Truncate(i) => bytes.truncate(i.index(bytes.len())),
            Damage::Insert(i, b) => bytes.insert(i.index(bytes.len() + 1), b),
            Damage::Remove(i) => {
                bytes.remove(i.index(bytes.len()));
            }
        }
    }
    bytes
}

/// Whatever `decode` accepts must survive a re-encode unchanged.
fn decoded_value_is_stable(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(op) = Op::decode(bytes) {
        let again = Op::decode(&op.encode());
        prop_assert!(again.is_ok(), "re-encoding {:?} gave {:?}", op, again);
        prop_assert_eq!(again.unwrap(), op);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn op_decode_never_panics_on_arbitrary_bytes(bytes in vec(any::<u8>(), 0..4096)) {
        decoded_value_is_stable(&bytes)?;
    }

    /// Bytes that start out as a valid op and are then damaged reach deeper into the decoder
    /// than random bytes.
    #[test]
    fn op_decode_never_panics_on_damaged_encodings(
        op in op_strategy(),
        damage in vec(damage_strategy(), 1..6),
    ) {
        decoded_value_is_stable(&damaged(op.encode(), &damage))?;
    }

    /// Ledger ops round-trip, and no strict prefix of an encoding decodes.
    #[test]
    fn ops_round_trip_and_truncations_are_refused(op in op_strategy()) {
        let bytes = op.encode();
        prop_assert!(!bytes.is_empty());
        prop_assert!(bytes.len() <= limits::op_bytes_max);
        let decoded = Op::decode(&bytes);
        prop_assert!(decoded.is_ok(), "{:?}", decoded);
        prop_assert_eq!(decoded.unwrap(), op);
        for cut in 0..bytes.len() {
            prop_assert!(Op::decode(&bytes[..cut]).is_err(), "prefix of {} bytes decoded", cut);
        }
    }
}

//! Replicas as the simulation runs them: the durable in-memory storage of the core
//! (`MemoryStore`, `MemoryHub`) plus what the binaries derive from it (the projection people
//! query, the hub's exception queue), behind the core's `StoreSide` / `HubSide` traits so the
//! real sync machines drive them.
//!
//! The projection here mirrors `chainsync-replica` (SQL) in memory: member documents from
//! their automerge changes, same-phone merge (the smallest id of a phone is canonical and the
//! group's balances are its balances), balances as sums of entries, sales and refunds, coupons
//! and redemptions, HQ's allowance policy. It is a function of the set of operations held, so
//! two replicas holding the same set have the same [`Digest`], whatever the arrival order.

use std::collections::{BTreeMap, BTreeSet};

use chainsync_core::StoreId;
use chainsync_core::allowance::{AllowancePolicy, Decision, OfflineSpend};
use chainsync_core::coupon::CouponTemplateV2;
use chainsync_core::exceptions::{ExceptionKind, Finding, coupon_finding, member_findings};
use chainsync_core::hlc::{Hlc, HlcTimestamp};
use chainsync_core::ledger::{Account, Balances, EntryKind, LedgerEntry, MemberLedger};
use chainsync_core::member::{MemberDoc, Profile};
use chainsync_core::op::{Envelope, Op, OpV1};
use chainsync_core::sync::{AuthorizeDecision, AuthorizeRequest, HubSide, RelayedOp, StoreSide};
use chainsync_core::sync_memory::{MemoryHub, MemoryStore};
use uuid::Uuid;

/// Sums of one member's entries, wide enough never to overflow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Sums {
    pub principal: i128,
    pub bonus: i128,
    pub points: i128,
}

impl Sums {
    pub fn stored_value(&self) -> i128 {
        self.principal + self.bonus
    }
    fn add(&mut self, other: &Sums) {
        self.principal += other.principal;
        self.bonus += other.bonus;
        self.points += other.points;
    }
    /// As the core's `Balances` (saturating: the simulation's amounts are far from the edge).
    pub fn balances(&self) -> Balances {
        let narrow = |v: i128| i64::try_from(v).unwrap_or(if v < 0 { i64::MIN } else { i64::MAX });
        Balances {
            principal: chainsync_core::Fen(narrow(self.principal)),
            bonus: chainsync_core::Fen(narrow(self.bonus)),
            points: narrow(self.points),
        }
    }
}

/// The storage of `sync_memory` cannot fail.
fn never(impossible: std::convert::Infallible) -> String {
    match impossible {}
}

/// A movement of a sale, as `(kind, account, amount)` (sortable, for digests).
pub type MovementKey = (EntryKind, Account, i64);

pub struct MemberState {
    pub doc: MemberDoc,
    pub phone: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaleState {
    pub origin: StoreId,
    pub member: Option<Uuid>,
    pub total: chainsync_core::Fen,
}

/// The projected state of one replica: a function of the set of operations it holds.
pub struct Projection {
    /// Actor of the member documents (the replica's own store id): edits made here are its.
    observer: StoreId,
    /// Keep every ledger entry by member (the hub needs them for exception findings).
    keep_entries: bool,
    held: BTreeSet<(StoreId, u64)>,
    pub members: BTreeMap<Uuid, MemberState>,
    phones: BTreeMap<String, BTreeSet<Uuid>>,
    pub sums: BTreeMap<Uuid, Sums>,
    pub entries: BTreeMap<Uuid, Vec<LedgerEntry>>,
    pub entry_count: usize,
    pub sales: BTreeMap<Uuid, SaleState>,
    /// Spend, points-redeem and points-earn movements by checkout (what a refund reverses).
    pub sale_movements: BTreeMap<Uuid, Vec<MovementKey>>,
    pub refunds: BTreeMap<Uuid, BTreeSet<Uuid>>,
    /// Both template versions (the first read as `CouponTemplateV2::from_v1`).
    pub templates: BTreeMap<Uuid, CouponTemplateV2>,
    pub coupons: BTreeMap<String, Uuid>,
    pub redemptions: BTreeMap<String, BTreeSet<(Uuid, StoreId)>>,
    pub policy: Option<AllowancePolicy>,
    /// Count cards, their uses and reversals (see `count_cards.rs`).
    pub count_cards: super::count_cards::CountCards,
    /// Stock movements and transfers (see `stock.rs`): held only where they concern the
    /// replica, so they are not in the [`Digest`].
    pub stock: super::stock::Stock,
    /// How many of the operations held are stock operations.
    scoped: usize,
    /// Operations this replica could not project (damaged automerge changes): a failure.
    pub damaged: Vec<String>,
}

/// What an operation touched, for the hub's exception queue and reservation release.
#[derive(Default, Debug)]
pub struct Touched {
    pub members: BTreeSet<Uuid>,
    pub coupons: BTreeSet<String>,
    pub checkouts: BTreeSet<Uuid>,
    pub count_cards: BTreeSet<Uuid>,
}

impl Projection {
    pub fn new(observer: StoreId, keep_entries: bool) -> Projection {
        Projection {
            observer,
            keep_entries,
            held: BTreeSet::new(),
            members: BTreeMap::new(),
            phones: BTreeMap::new(),
            sums: BTreeMap::new(),
            entries: BTreeMap::new(),
            entry_count: 0,
            sales: BTreeMap::new(),
            sale_movements: BTreeMap::new(),
            refunds: BTreeMap::new(),
            templates: BTreeMap::new(),
            coupons: BTreeMap::new(),
            redemptions: BTreeMap::new(),
            policy: None,
            count_cards: Default::default(),
            stock: Default::default(),
            scoped: 0,
            damaged: Vec::new(),
        }
    }

    /// Project every operation of `ops` (in any order).
    pub fn from_ops<'a, I>(observer: StoreId, keep_entries: bool, ops: I) -> Projection
    where
        I: IntoIterator<Item = &'a Envelope>,
    {
        let mut projection = Projection::new(observer, keep_entries);
        for envelope in ops {
            projection.apply(envelope, None);
        }
        projection
    }

    pub fn held_count(&self) -> usize {
        self.held.len()
    }

    /// Project one operation; false if it was already projected (idempotent).
    pub fn apply(&mut self, envelope: &Envelope, touched: Option<&mut Touched>) -> bool {
        if !self.held.insert((envelope.origin.clone(), envelope.seq)) {
            return false;
        }
        let mut scratch = Touched::default();
        let touched = touched.unwrap_or(&mut scratch);
        let Op::V1(op) = &envelope.op;
        match op {
            OpV1::MemberChange { member_id, change } => {
                touched.members.insert(*member_id);
                self.apply_member_change(*member_id, change);
            }
            OpV1::Ledger(entry) => {
                touched.members.insert(entry.member_id);
                let sums = self.sums.entry(entry.member_id).or_default();
                let amount = i128::from(entry.amount);
                match entry.account {
                    Account::Principal => sums.principal += amount,
                    Account::Bonus => sums.bonus += amount,
                    Account::Points => sums.points += amount,
                }
                if let Some(checkout) = entry.checkout_id {
                    touched.checkouts.insert(checkout);
                    if matches!(
                        entry.kind,
                        EntryKind::Spend | EntryKind::PointsRedeem | EntryKind::PointsEarn
                    ) {
                        self.sale_movements.entry(checkout).or_default().push((
                            entry.kind,
                            entry.account,
                            entry.amount,
                        ));
                    }
                }
                self.entry_count += 1;
                if self.keep_entries {
                    self.entries
                        .entry(entry.member_id)
                        .or_default()
                        .push(entry.clone());
                }
            }
            OpV1::Sale(sale) => {
                touched.checkouts.insert(sale.id);
                self.sales.insert(
                    sale.id,
                    SaleState {
                        origin: envelope.origin.clone(),
                        member: sale.member_id,
                        total: sale.total,
                    },
                );
            }
            OpV1::SaleRefund(refund) => {
                self.refunds
                    .entry(refund.sale_id)
                    .or_default()
                    .insert(refund.id);
            }
            OpV1::AllowancePolicySet(policy) => {
                if self
                    .policy
                    .as_ref()
                    .is_none_or(|held| policy.version > held.version)
                {
                    self.policy = Some(policy.clone());
                }
            }
            OpV1::CouponTemplateUpsert(template) => {
                self.templates
                    .insert(template.id, CouponTemplateV2::from_v1(template));
            }
            OpV1::CouponTemplateUpsertV2(template) => {
                self.templates.insert(template.id, template.clone());
            }
            OpV1::CouponIssue(coupon) => {
                self.coupons.insert(coupon.code.clone(), coupon.template_id);
            }
            OpV1::CouponIssueV2(coupon) => {
                self.coupons.insert(coupon.code.clone(), coupon.template_id);
            }
            OpV1::CouponRedeem(redemption) => {
                touched.coupons.insert(redemption.code.clone());
                touched.checkouts.insert(redemption.checkout_id);
                self.redemptions
                    .entry(redemption.code.clone())
                    .or_default()
                    .insert((redemption.id, envelope.origin.clone()));
            }
            OpV1::CountCardTemplateUpsert(_)
            | OpV1::CountCardPurchase(_)
            | OpV1::CountCardUse(_)
            | OpV1::CountCardUseReversal(_) => {
                if let Some(card) = self.count_cards.apply(op, &envelope.origin) {
                    touched.count_cards.insert(card);
                }
            }
            OpV1::StockMovements(_) | OpV1::TransferRequest(_) => {
                self.scoped += 1;
                if let Err(problem) = self.stock.apply(&envelope.origin, op) {
                    self.damaged.push(problem);
                }
            }
            OpV1::ProductUpsert(_)
            | OpV1::RulesSet(_)
            | OpV1::RulesSetV2(_)
            | OpV1::SalePoints(_)
            | OpV1::RefundLines(_)
            | OpV1::GiftUpsert(_)
            | OpV1::GiftRedeem(_)
            | OpV1::CatalogItemUpsert(_)
            | OpV1::Feedback(_)
            | OpV1::CouponTransfer(_)
            | OpV1::LotteryUpsert(_)
            | OpV1::LotteryDraw(_)
            | OpV1::Referral(_) => {}
        }
        true
    }

    fn apply_member_change(&mut self, member: Uuid, change: &[u8]) {
        let changes = [change.to_vec()];
        let result = match self.members.get_mut(&member) {
            Some(state) => state.doc.apply_changes(&changes),
            None => match MemberDoc::from_changes(&self.observer, &changes) {
                Ok(doc) => {
                    self.members.insert(
                        member,
                        MemberState {
                            doc,
                            phone: String::new(),
                        },
                    );
                    Ok(())
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            self.damaged.push(format!("member {member}: {e}"));
            return;
        }
        let Some(state) = self.members.get_mut(&member) else {
            return;
        };
        // Phones are never edited here (see the module doc of `sim`): once a member's phone is
        // known it stays, so the document is read (slow) only until it shows one.
        if !state.phone.is_empty() {
            return;
        }
        let phone = state.doc.profile().phone;
        if phone != state.phone {
            let old = std::mem::replace(&mut state.phone, phone.clone());
            if let Some(ids) = self.phones.get_mut(&old) {
                ids.remove(&member);
                if ids.is_empty() {
                    self.phones.remove(&old);
                }
            }
            if !phone.is_empty() {
                self.phones.entry(phone).or_default().insert(member);
            }
        }
    }

    /// The canonical member of `member`'s group: the smallest id with the same phone.
    pub fn canonical(&self, member: Uuid) -> Uuid {
        self.members
            .get(&member)
            .and_then(|state| self.phones.get(&state.phone))
            .and_then(|ids| ids.first().copied())
            .unwrap_or(member)
    }

    /// Every member of the group whose canonical member is `canonical` (or of `canonical`'s).
    pub fn group(&self, member: Uuid) -> Vec<Uuid> {
        self.members
            .get(&member)
            .and_then(|state| self.phones.get(&state.phone))
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_else(|| vec![member])
    }

    /// A group's balances: the sum over its members.
    pub fn group_sums(&self, member: Uuid) -> Sums {
        let mut total = Sums::default();
        for id in self.group(member) {
            if let Some(sums) = self.sums.get(&id) {
                total.add(sums);
            }
        }
        total
    }

    /// Canonical members (one per group).
    pub fn canonical_members(&self) -> Vec<Uuid> {
        self.members
            .keys()
            .copied()
            .filter(|id| self.canonical(*id) == *id)
            .collect()
    }

    pub fn member_by_phone(&self, phone: &str) -> Option<Uuid> {
        self.phones.get(phone).and_then(|ids| ids.first().copied())
    }

    pub fn is_redeemed(&self, code: &str) -> bool {
        self.redemptions.get(code).is_some_and(|r| !r.is_empty())
    }

    pub fn is_refunded(&self, sale: Uuid) -> bool {
        self.refunds.get(&sale).is_some_and(|r| !r.is_empty())
    }

    pub fn policy(&self) -> AllowancePolicy {
        self.policy.clone().unwrap_or_default()
    }

    /// Findings for `member`'s group, as the hub computes them (all entries of the group).
    pub fn group_findings(&self, member: Uuid) -> Vec<Finding> {
        let canonical = self.canonical(member);
        let group = self.group(member);
        let entries = group
            .iter()
            .filter_map(|id| self.entries.get(id))
            .flat_map(|list| list.iter());
        member_findings(canonical, entries)
    }

    /// The digest of this projection, plus the balances folded by the replica's own
    /// `MemberLedger` (the storage's fold, not ours).
    pub fn digest(&mut self, ledger: &MemberLedger) -> Digest {
        let mut members = BTreeMap::new();
        let ids: Vec<Uuid> = self.members.keys().copied().collect();
        for id in ids {
            let canonical = self.canonical(id);
            if let Some(state) = self.members.get_mut(&id) {
                let missing = state.doc.has_missing_changes();
                members.insert(
                    id,
                    (
                        state.doc.profile(),
                        state.doc.heads_hex(),
                        canonical,
                        missing,
                    ),
                );
            }
        }
        let mut groups = BTreeMap::new();
        for canonical in self.canonical_members() {
            let sums = self.group_sums(canonical);
            groups.insert(canonical, (sums.stored_value(), sums.points));
        }
        let sales = self
            .sales
            .iter()
            .map(|(id, sale)| {
                let mut movements = self.sale_movements.get(id).cloned().unwrap_or_default();
                movements.sort();
                (*id, (sale.origin.clone(), sale.member, movements))
            })
            .collect();
        let mut fold = BTreeMap::new();
        let mut by_member: BTreeMap<Uuid, Vec<&LedgerEntry>> = BTreeMap::new();
        for entry in ledger.entries() {
            by_member.entry(entry.member_id).or_default().push(entry);
        }
        for (member, entries) in by_member {
            let folded = Balances::fold(entries.iter().copied())
                .map(|b| (b.principal.0, b.bonus.0, b.points))
                .map_err(|e| e.to_string());
            fold.insert(member, folded);
        }
        Digest {
            ops: self.held.len() - self.scoped,
            members,
            balances: self.sums.clone(),
            groups,
            sales,
            refunds: self.refunds.clone(),
            coupons: self.coupons.clone(),
            redemptions: self.redemptions.clone(),
            policy_version: self.policy.as_ref().map(|p| p.version),
            count_cards: self.count_cards.digest(),
            ledger_entries: ledger.len(),
            fold,
        }
    }
}

/// Everything a replica shows, in canonical form: equal digests ⇔ equal visible state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Digest {
    pub ops: usize,
    /// Profile, automerge heads, canonical member, whether changes are missing.
    pub members: BTreeMap<Uuid, (Profile, Vec<String>, Uuid, bool)>,
    pub balances: BTreeMap<Uuid, Sums>,
    /// Canonical member → (stored value, points) of its group.
    pub groups: BTreeMap<Uuid, (i128, i128)>,
    pub sales: BTreeMap<Uuid, (StoreId, Option<Uuid>, Vec<MovementKey>)>,
    pub refunds: BTreeMap<Uuid, BTreeSet<Uuid>>,
    pub coupons: BTreeMap<String, Uuid>,
    pub redemptions: BTreeMap<String, BTreeSet<(Uuid, StoreId)>>,
    pub policy_version: Option<u64>,
    /// Count card → (its terms, if bought here yet; its live uses).
    pub count_cards: super::count_cards::CardDigest,
    /// The storage's own ledger (`MemberLedger`): its size and its fold per member.
    pub ledger_entries: usize,
    pub fold: BTreeMap<Uuid, Result<(i64, i64, i64), String>>,
}

impl Digest {
    /// A short fingerprint (FNV-1a of the canonical text), for logs.
    pub fn fingerprint(&self) -> u64 {
        let text = format!("{self:?}");
        text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        })
    }

    /// The first part in which two digests differ, for a failure message.
    pub fn difference(&self, other: &Digest) -> Option<String> {
        fn first<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
            name: &str,
            a: &BTreeMap<K, V>,
            b: &BTreeMap<K, V>,
        ) -> Option<String> {
            for (key, value) in a {
                match b.get(key) {
                    None => return Some(format!("{name}: {key:?} only on the left ({value:?})")),
                    Some(other) if other != value => {
                        return Some(format!("{name}: {key:?}: {value:?} ≠ {other:?}"));
                    }
                    _ => {}
                }
            }
            b.keys()
                .find(|key| !a.contains_key(key))
                .map(|key| format!("{name}: {key:?} only on the right"))
        }
        if self.ops != other.ops {
            return Some(format!("operations: {} ≠ {}", self.ops, other.ops));
        }
        if self.ledger_entries != other.ledger_entries {
            return Some(format!(
                "ledger entries: {} ≠ {}",
                self.ledger_entries, other.ledger_entries
            ));
        }
        if self.policy_version != other.policy_version {
            return Some(format!(
                "policy: {:?} ≠ {:?}",
                self.policy_version, other.policy_version
            ));
        }
        first("members", &self.members, &other.members)
            .or_else(|| first("balances", &self.balances, &other.balances))
            .or_else(|| first("groups", &self.groups, &other.groups))
            .or_else(|| first("fold", &self.fold, &other.fold))
            .or_else(|| first("sales", &self.sales, &other.sales))
            .or_else(|| first("refunds", &self.refunds, &other.refunds))
            .or_else(|| first("coupons", &self.coupons, &other.coupons))
            .or_else(|| first("redemptions", &self.redemptions, &other.redemptions))
    }
}

/// A store's node: the durable part (`MemoryStore` and the offline-spend tracker, both in
/// SQLite in the binary) and the volatile part (projection cache, clock), which a restart
/// rebuilds from the durable part.
pub struct StoreReplica {
    pub mem: MemoryStore,
    /// What this store let through on the offline rules in the current offline period
    /// (the `offline_spend` table: durable, cleared when the link comes up).
    pub offline: OfflineSpend,
    pub proj: Projection,
    pub clock: Hlc,
    /// This store's physical clock, as the session calls see it.
    pub now_ms: u64,
}

impl StoreReplica {
    pub fn new(store: StoreId) -> StoreReplica {
        StoreReplica {
            mem: MemoryStore::new(store.clone()),
            offline: OfflineSpend::default(),
            proj: Projection::new(store, false),
            clock: Hlc::default(),
            now_ms: 0,
        }
    }

    /// A restart: what is committed survives (the operations, cursors, offline-spend tracker
    /// and the projection, all in SQLite in the binary, written in the same transaction);
    /// the clock restarts after the largest HLC held.
    pub fn restart(self) -> StoreReplica {
        let last = self
            .mem
            .ops
            .values()
            .map(|e| e.hlc)
            .max()
            .unwrap_or(HlcTimestamp::default());
        StoreReplica {
            clock: Hlc::starting_after(last),
            ..self
        }
    }

    /// Durably write one transaction of local operations (all or nothing), stamping seq and
    /// HLC; returns the envelopes written.
    pub fn write_local(&mut self, ops: Vec<OpV1>) -> Result<Vec<Envelope>, String> {
        let origin = self.mem.store_id.clone();
        let mut written = Vec::with_capacity(ops.len());
        for op in ops {
            let seq = self.mem.own_max() + 1;
            let hlc = self.clock.now(self.now_ms).map_err(|e| e.to_string())?;
            let op = match op {
                OpV1::Ledger(mut entry) => {
                    entry.origin = origin.clone();
                    entry.seq = seq;
                    entry.hlc = hlc;
                    OpV1::Ledger(entry)
                }
                other => other,
            };
            let envelope = Envelope {
                origin: origin.clone(),
                seq,
                hlc,
                op: Op::V1(op),
            };
            if let Err(problem) = chainsync_core::sync::check_operation(&envelope) {
                return Err(format!("the store wrote an invalid operation: {problem}"));
            }
            self.mem.write_local(envelope.clone());
            self.proj.apply(&envelope, None);
            written.push(envelope);
        }
        Ok(written)
    }
}

impl StoreSide for StoreReplica {
    type Error = String;

    fn own_seq_max(&self) -> Result<u64, String> {
        self.mem.own_seq_max().map_err(never)
    }

    fn own_ops_after(&self, after: u64, limit: usize) -> Result<Vec<Envelope>, String> {
        self.mem.own_ops_after(after, limit).map_err(never)
    }

    fn relay_cursor(&self) -> Result<u64, String> {
        self.mem.relay_cursor().map_err(never)
    }

    fn member_changes(&self, member: &uuid::Uuid) -> Result<Vec<Vec<u8>>, String> {
        StoreSide::member_changes(&self.mem, member).map_err(never)
    }

    fn apply_relayed(&mut self, ops: &[RelayedOp], upto: u64) -> Result<(), String> {
        self.mem.apply_relayed(ops, upto).map_err(never)?;
        for op in ops {
            let key = (op.envelope.origin.clone(), op.envelope.seq);
            // Project what the storage now holds (not what was sent).
            if let Some(held) = self.mem.ops.get(&key)
                && self.proj.apply(held, None)
            {
                // A clock far ahead is refused by the HLC; the operation is still held.
                let _ = self.clock.observe(held.hlc, self.now_ms);
            }
        }
        Ok(())
    }

    fn record_hub_acked(&mut self, acked_seq: u64) -> Result<(), String> {
        self.mem.record_hub_acked(acked_seq).map_err(never)
    }
}

/// A decision the hub made, reported to the simulation's checker.
#[derive(Clone, Debug)]
pub struct Grant {
    pub store: StoreId,
    pub checkout: Uuid,
    /// The group's canonical member as the hub saw it (the reservation's key).
    pub canonical: Option<Uuid>,
    pub stored_value: i64,
    pub points: i64,
    pub coupons: Vec<String>,
    pub at_ms: u64,
}

/// The hub's node: `MemoryHub` (log, cursors, ledger, redemptions; its reservation book is
/// not durable), the projection and the exception queue (durable in the binary), and the
/// authorization rule of `hq-hub` (group balances, reservations keyed by the canonical member,
/// a refused request releases what it held).
pub struct HubNode {
    pub mem: MemoryHub,
    pub proj: Projection,
    /// Open exceptions by (kind, subject): upserted for what each ingested batch touched.
    pub exceptions: BTreeMap<(ExceptionKind, String), Finding>,
    pub now_ms: u64,
    /// Grants made since the checker last looked.
    pub grants: Vec<Grant>,
    pub refusals: u64,
    /// Operations written by HQ itself (origin `hq`).
    hq_clock: Hlc,
}

impl HubNode {
    pub fn new() -> HubNode {
        HubNode {
            mem: MemoryHub::default(),
            proj: Projection::new(StoreId::hub(), true),
            exceptions: BTreeMap::new(),
            now_ms: 0,
            grants: Vec::new(),
            refusals: 0,
            hq_clock: Hlc::default(),
        }
    }

    /// A hub crash: sessions are gone (the caller drops them). The reservation book is
    /// durable at the hub (written before a grant is answered), so it survives.
    pub fn crash(&mut self) {
        self.mem.reservations.all_stores_disconnected();
        let last = self.mem.log.iter().map(|e| e.hlc).max().unwrap_or_default();
        self.hq_clock = Hlc::starting_after(last);
    }

    /// HQ writes an operation of its own (policy, coupons) into the log.
    pub fn write_hq(&mut self, op: OpV1) -> Result<(), String> {
        let hq = StoreId::hub();
        let seq = self.mem.acked.get(&hq).copied().unwrap_or(0) + 1;
        let hlc = self.hq_clock.now(self.now_ms).map_err(|e| e.to_string())?;
        let envelope = Envelope {
            origin: hq.clone(),
            seq,
            hlc,
            op: Op::V1(op),
        };
        let acked = self.ingest(&hq, std::slice::from_ref(&envelope))?;
        if acked != seq {
            return Err(format!(
                "HQ's operation {seq} was not taken (acked {acked})"
            ));
        }
        Ok(())
    }

    fn refresh_exceptions(&mut self, touched: &Touched) {
        let mut canonicals = BTreeSet::new();
        for member in &touched.members {
            if self.proj.members.contains_key(member) {
                canonicals.insert(self.proj.canonical(*member));
            }
        }
        for canonical in canonicals {
            for finding in self.proj.group_findings(canonical) {
                self.exceptions
                    .insert((finding.kind, canonical.to_string()), finding);
            }
        }
        for code in &touched.coupons {
            let list: Vec<(Uuid, StoreId)> = self
                .proj
                .redemptions
                .get(code)
                .map(|set| set.iter().cloned().collect())
                .unwrap_or_default();
            if let Some(finding) = coupon_finding(code, &list) {
                self.exceptions
                    .insert((ExceptionKind::DoubleRedemption, code.clone()), finding);
            }
        }
        for card in &touched.count_cards {
            if let Some(finding) = self.proj.count_cards.finding(*card) {
                self.exceptions
                    .insert((ExceptionKind::CountCardOveruse, card.to_string()), finding);
            }
        }
    }
}

impl Default for HubNode {
    fn default() -> HubNode {
        HubNode::new()
    }
}

impl HubSide for HubNode {
    type Error = String;

    fn acked_seq(&self, store: &StoreId) -> Result<u64, String> {
        self.mem.acked_seq(store).map_err(never)
    }

    fn member_changes(&self, member: &uuid::Uuid) -> Result<Vec<Vec<u8>>, String> {
        HubSide::member_changes(&self.mem, member).map_err(never)
    }

    fn ingest(&mut self, store: &StoreId, ops: &[Envelope]) -> Result<u64, String> {
        let before = self.mem.log.len();
        let acked = self.mem.ingest(store, ops).map_err(never)?;
        let mut touched = Touched::default();
        let start = before.min(self.mem.log.len());
        for envelope in &self.mem.log[start..] {
            self.proj.apply(envelope, Some(&mut touched));
        }
        // As hq-hub: every checkout the batch touched (sale, redemption or entry) releases
        // its reservation.
        for checkout in &touched.checkouts {
            self.mem.reservations.release(*checkout);
        }
        self.refresh_exceptions(&touched);
        Ok(acked)
    }

    fn log_head(&self) -> Result<u64, String> {
        self.mem.log_head().map_err(never)
    }

    fn relay_after(
        &self,
        store: &StoreId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<RelayedOp>, u64), String> {
        self.mem.relay_after(store, after, limit).map_err(never)
    }

    fn record_relay_acked(&mut self, store: &StoreId, cursor: u64) -> Result<(), String> {
        self.mem.record_relay_acked(store, cursor).map_err(never)
    }

    fn record_hello(&mut self, store: &StoreId, own_seq_max: u64) -> Result<(), String> {
        self.mem.record_hello(store, own_seq_max).map_err(never)
    }

    fn store_caught_up(&mut self, store: &StoreId, hello_ms: u64) -> Result<(), String> {
        self.mem.store_caught_up(store, hello_ms).map_err(never)
    }

    fn store_disconnected(&mut self, store: &StoreId) -> Result<(), String> {
        self.mem.store_disconnected(store).map_err(never)
    }

    fn authorize(
        &mut self,
        store: &StoreId,
        request: &AuthorizeRequest,
        now_ms: u64,
    ) -> Result<AuthorizeDecision, String> {
        let book = &mut self.mem.reservations;
        for code in &request.coupon_codes {
            let reason = if !self.proj.coupons.contains_key(code) {
                Some("unknown coupon")
            } else if self.proj.is_redeemed(code)
                || !book.hold_coupon(code, request.checkout_id, store, now_ms)
            {
                Some("already redeemed")
            } else {
                None
            };
            if let Some(reason) = reason {
                book.release(request.checkout_id);
                self.refusals += 1;
                return Ok(AuthorizeDecision::CouponUnavailable {
                    code: code.clone(),
                    reason: reason.into(),
                });
            }
        }
        let grant = |canonical| Grant {
            store: store.clone(),
            checkout: request.checkout_id,
            canonical,
            stored_value: request.spend.stored_value.0,
            points: request.spend.points,
            coupons: request.coupon_codes.clone(),
            at_ms: now_ms,
        };
        let Some(member) = request.member_id.filter(|_| !request.spend.is_empty()) else {
            self.grants.push(grant(None));
            return Ok(AuthorizeDecision::Granted);
        };
        let canonical = self.proj.canonical(member);
        let balances = self.proj.group_sums(member).balances();
        match book.decide(
            request.checkout_id,
            store,
            canonical,
            request.spend,
            balances.stored_value().unwrap_or_default(),
            balances.points,
            now_ms,
        ) {
            Decision::Granted => {
                self.grants.push(grant(Some(canonical)));
                Ok(AuthorizeDecision::Granted)
            }
            Decision::Insufficient {
                available_stored_value,
                available_points,
            } => {
                book.release(request.checkout_id);
                self.refusals += 1;
                Ok(AuthorizeDecision::InsufficientBalance {
                    available_stored_value: available_stored_value.0,
                    available_points,
                })
            }
        }
    }
}

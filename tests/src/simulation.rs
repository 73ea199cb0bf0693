//! Deterministic simulation of a chain: N stores and a hub run through the pure core
//! (`StoreSession` / `HubSession` over `MemoryStore` / `MemoryHub`) in one thread, with a
//! virtual clock and a seeded network that drops, duplicates, delays and reorders messages,
//! long partitions of any store, and crashes that restart a node from its durable state.
//!
//! One seed = one run; everything random comes from the seed, so a failure reruns exactly.
//!
//! Simplifications (stated, not hidden): online authorization is a direct call on the hub's
//! `HubSide::authorize` when the store's session is up (the request or reply is "lost" with some
//! probability, which sends the store to its offline rules); member documents are projected only
//! at the end, for the digest; same-phone merging (an SQL projection) is not modelled here.

use chainsync_core::allowance::{AllowancePolicy, OfflineSpend, SpendRequest};
use chainsync_core::exceptions::{coupon_finding, member_findings};
use chainsync_core::hlc::{Hlc, HlcTimestamp};
use chainsync_core::ledger::{Account, EntryKind, LedgerEntry};
use chainsync_core::member::{MemberDoc, Profile, ProfilePatch};
use chainsync_core::op::{CouponRecord, CouponRedemption, Envelope, Op, OpV1};
use chainsync_core::sync::{
    AuthorizeDecision, AuthorizeRequest, HubSession, HubSide, Message, StoreSession,
    StoreSessionState, sync_batch_ops_max,
};
use chainsync_core::sync_memory::{MemoryHub, MemoryStore};
use chainsync_core::{Fen, IdGenerator, StoreId};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use uuid::Uuid;

/// SplitMix64: small, fast, and the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1_000) < per_mille
    }
    fn bytes10(&mut self) -> [u8; 10] {
        let a = self.next_u64().to_le_bytes();
        let b = self.next_u64().to_le_bytes();
        [a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], b[0], b[1]]
    }
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub stores: usize,
    /// Workload steps (10 virtual ms each) before the heal phase.
    pub steps: usize,
    pub policy: AllowancePolicy,
    /// Per mille, per message.
    pub drop_per_mille: u64,
    pub duplicate_per_mille: u64,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            stores: 3,
            steps: 400,
            policy: AllowancePolicy {
                version: 1,
                member_stored_value_max: Fen(3_000),
                member_points_max: 1_000,
                store_exposure_max: Fen(8_000),
                authorization_timeout_ms: 800,
            },
            drop_per_mille: 20,
            duplicate_per_mille: 20,
        }
    }
}

/// Cashier operations in one simulated store-day (a small store's busy day).
pub const operations_per_store_day: usize = 200;

/// What a run covered, for soak statistics.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimReport {
    pub virtual_ms: u64,
    pub ops: usize,
    pub deliveries: u64,
    pub heal_deliveries: u64,
    pub offline_spends: u64,
    pub refused_offline: u64,
    pub crashes: u64,
    pub partitions: u64,
    pub exceptions: usize,
}

impl SimReport {
    /// Simulated store-days: a store-day is counted as `operations_per_store_day` acknowledged
    /// cashier operations (registrations, edits, recharges, sales, redemptions, refunds) at one
    /// store: the simulation compresses time, so it is measured in work, not in virtual hours.
    pub fn store_days(&self) -> f64 {
        self.ops as f64 / operations_per_store_day as f64
    }
}

/// A message in flight on one store's link, for one session epoch.
struct Flight {
    at_ms: u64,
    order: u64,
    store: usize,
    epoch: u64,
    to_hub: bool,
    message: Message,
}

struct Link {
    store: StoreSession,
    hub: HubSession,
    epoch: u64,
}

struct SimStore {
    id: StoreId,
    /// The durable part: survives crashes.
    durable: MemoryStore,
    offline: OfflineSpend,
    clock: Hlc,
    ids: IdGenerator,
    link: Option<Link>,
    partitioned_until_ms: u64,
    down_until_ms: u64,
    was_online: bool,
}

pub struct Sim {
    config: SimConfig,
    rng: Rng,
    now_ms: u64,
    hub: MemoryHub,
    hub_down_until_ms: u64,
    stores: Vec<SimStore>,
    flights: Vec<Flight>,
    order: u64,
    epochs: u64,
    /// Every operation acknowledged to a cashier: (origin, seq).
    acknowledged: BTreeSet<(StoreId, u64)>,
    /// Stored value each member was let spend on the offline rules, over the whole run.
    offline_allowed: BTreeMap<Uuid, i64>,
    /// Stored value granted online whose hold the hub lost in a crash.
    grants_lost: BTreeMap<Uuid, i64>,
    /// Grants not yet matched by arriving entries: checkout → (member, amount).
    open_grants: HashMap<Uuid, (Uuid, i64)>,
    members: Vec<Uuid>,
    coupons: Vec<(String, bool)>,
    report: SimReport,
}

fn member_profile(n: u64) -> Profile {
    Profile {
        name: format!("会员{n}"),
        phone: format!("139{:08}", n % 100_000_000),
        card_no: format!("{:06}", 100_000 + n),
        ..Profile::default()
    }
}

impl Sim {
    pub fn new(seed: u64, config: SimConfig) -> Result<Sim, String> {
        let mut rng = Rng::new(seed);
        let mut hub = MemoryHub::default();
        // HQ issues some coupons up front (a third online-only), as its own operations.
        let hq = StoreId::hub();
        let mut coupons = Vec::new();
        for n in 0..6u64 {
            let code = format!("CPN{seed:x}{n}");
            let envelope = Envelope {
                origin: hq.clone(),
                seq: n + 1,
                hlc: HlcTimestamp {
                    wall_ms: 1,
                    counter: n as u32,
                },
                op: Op::V1(OpV1::CouponIssue(CouponRecord {
                    code: code.clone(),
                    template_id: Uuid::from_u128(1),
                    member_id: None,
                })),
            };
            hub.ingest(&hq, std::slice::from_ref(&envelope))
                .map_err(|e| e.to_string())?;
            coupons.push((code, n % 3 == 0));
        }
        let stores = (0..config.stores)
            .map(|n| {
                let id = StoreId::parse(&format!("s{n}")).map_err(|e| e.to_string())?;
                Ok(SimStore {
                    durable: MemoryStore::new(id.clone()),
                    id,
                    offline: OfflineSpend::default(),
                    clock: Hlc::default(),
                    ids: IdGenerator::new(),
                    link: None,
                    partitioned_until_ms: 0,
                    down_until_ms: 0,
                    was_online: false,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let _ = rng.next_u64();
        Ok(Sim {
            config,
            rng,
            now_ms: 1_000,
            hub,
            hub_down_until_ms: 0,
            stores,
            flights: Vec::new(),
            order: 0,
            epochs: 0,
            acknowledged: BTreeSet::new(),
            offline_allowed: BTreeMap::new(),
            grants_lost: BTreeMap::new(),
            open_grants: HashMap::new(),
            members: Vec::new(),
            coupons,
            report: SimReport::default(),
        })
    }

    fn link_possible(&self, store: usize) -> bool {
        let s = &self.stores[store];
        self.now_ms >= s.partitioned_until_ms
            && self.now_ms >= s.down_until_ms
            && self.now_ms >= self.hub_down_until_ms
    }

    fn send(&mut self, store: usize, epoch: u64, to_hub: bool, message: Message) {
        if self.rng.chance(self.config.drop_per_mille) {
            return;
        }
        let copies = if self.rng.chance(self.config.duplicate_per_mille) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let delay = 1 + self.rng.below(40);
            self.order += 1;
            self.flights.push(Flight {
                at_ms: self.now_ms + delay,
                order: self.order,
                store,
                epoch,
                to_hub,
                message: message.clone(),
            });
        }
    }

    /// Move everything each side of every link wants to send into the network.
    fn flush(&mut self) {
        for store in 0..self.stores.len() {
            let mut outgoing = Vec::new();
            if let Some(link) = &mut self.stores[store].link {
                while let Some(message) = link.store.poll_transmit() {
                    outgoing.push((link.epoch, true, message));
                }
                while let Some(message) = link.hub.poll_transmit() {
                    outgoing.push((link.epoch, false, message));
                }
            }
            for (epoch, to_hub, message) in outgoing {
                self.send(store, epoch, to_hub, message);
            }
        }
    }

    fn drop_link(&mut self, store: usize) {
        self.stores[store].link = None;
    }

    fn connect(&mut self, store: usize) -> Result<(), String> {
        self.epochs += 1;
        let s = &self.stores[store];
        let session =
            StoreSession::new(s.id.clone(), &s.durable, self.now_ms).map_err(|e| e.to_string())?;
        let hub = HubSession::new(s.id.clone(), self.now_ms);
        self.stores[store].link = Some(Link {
            store: session,
            hub,
            epoch: self.epochs,
        });
        Ok(())
    }

    fn is_online(&self, store: usize) -> bool {
        self.stores[store]
            .link
            .as_ref()
            .is_some_and(|l| l.store.state() == StoreSessionState::Ready)
    }

    /// Deliver every message due by now, in time order (ties in random order).
    fn deliver(&mut self) -> Result<u64, String> {
        let mut delivered = 0;
        loop {
            let now = self.now_ms;
            let due: Vec<usize> = (0..self.flights.len())
                .filter(|&i| self.flights[i].at_ms <= now)
                .collect();
            if due.is_empty() {
                return Ok(delivered);
            }
            let pick = due[self.rng.below(due.len() as u64) as usize];
            let flight = self.flights.swap_remove(pick);
            let _ = flight.order;
            let store = flight.store;
            let Some(link) = &mut self.stores[store].link else {
                continue;
            };
            if link.epoch != flight.epoch {
                continue; // a message of a connection that no longer exists
            }
            delivered += 1;
            let result = if flight.to_hub {
                link.hub
                    .handle_message(flight.message, &mut self.hub, now)
                    .map_err(|e| e.to_string())
            } else {
                let s = &mut self.stores[store];
                let link = s.link.as_mut().ok_or("no link")?;
                link.store
                    .handle_message(flight.message, &mut s.durable, now)
                    .map_err(|e| e.to_string())
            };
            if result.is_err() {
                // A protocol error closes the connection; the store reconnects later.
                self.drop_link(store);
                continue;
            }
            // Relayed grants arrive at the hub: release them from our bookkeeping too.
            self.flush();
        }
    }

    fn stamp(&mut self, store: usize) -> Result<(u64, HlcTimestamp), String> {
        let s = &mut self.stores[store];
        let hlc = s.clock.now(self.now_ms).map_err(|e| e.to_string())?;
        Ok((s.durable.own_max() + 1, hlc))
    }

    fn new_id(&mut self, store: usize) -> Uuid {
        let random = self.rng.bytes10();
        self.stores[store].ids.next(self.now_ms, random)
    }

    /// Write an operation durably at a store and acknowledge it to the cashier.
    fn write(&mut self, store: usize, op: OpV1) -> Result<(), String> {
        let (seq, hlc) = self.stamp(store)?;
        let origin = self.stores[store].id.clone();
        let op = match op {
            OpV1::Ledger(mut entry) => {
                entry.origin = origin.clone();
                entry.seq = seq;
                entry.hlc = hlc;
                OpV1::Ledger(entry)
            }
            other => other,
        };
        self.stores[store].durable.write_local(Envelope {
            origin: origin.clone(),
            seq,
            hlc,
            op: Op::V1(op),
        });
        self.acknowledged.insert((origin, seq));
        self.report.ops += 1;
        let s = &mut self.stores[store];
        if let Some(link) = &mut s.link {
            let _ = link.store.handle_local_write(&mut s.durable);
        }
        Ok(())
    }

    fn entry(
        &mut self,
        store: usize,
        member: Uuid,
        kind: EntryKind,
        account: Account,
        amount: i64,
        checkout: Option<Uuid>,
    ) -> Result<(), String> {
        let id = self.new_id(store);
        let entry = LedgerEntry {
            id,
            origin: self.stores[store].id.clone(),
            seq: 0,
            hlc: HlcTimestamp::default(),
            member_id: member,
            kind,
            account,
            amount,
            checkout_id: checkout,
            reason: None,
            rule_version: 1,
        };
        self.write(store, OpV1::Ledger(entry))
    }

    fn known_members(&self, store: usize) -> Vec<Uuid> {
        let held: BTreeSet<Uuid> = self.stores[store]
            .durable
            .ops
            .values()
            .filter_map(|e| match &e.op {
                Op::V1(OpV1::MemberChange { member_id, .. }) => Some(*member_id),
                _ => None,
            })
            .collect();
        self.members
            .iter()
            .copied()
            .filter(|m| held.contains(m))
            .collect()
    }

    /// Ask the hub (when the link is up and the reply is not lost) or fall back to the
    /// offline rules. Returns whether the spend may go ahead.
    fn authorize(
        &mut self,
        store: usize,
        member: Option<Uuid>,
        checkout: Uuid,
        stored_value: i64,
        coupon: Option<(String, bool)>,
    ) -> Result<bool, String> {
        let reply_arrives = !self.rng.chance(100);
        if self.is_online(store) && reply_arrives {
            let request = AuthorizeRequest {
                request_id: 0,
                checkout_id: checkout,
                member_id: member,
                spend: SpendRequest {
                    stored_value: Fen(stored_value),
                    points: 0,
                },
                coupon_codes: coupon.iter().map(|(c, _)| c.clone()).collect(),
            };
            let id = self.stores[store].id.clone();
            let decision = self
                .hub
                .authorize(&id, &request, self.now_ms)
                .map_err(|e| e.to_string())?;
            if decision == AuthorizeDecision::Granted {
                if let (Some(member), true) = (member, stored_value > 0) {
                    self.open_grants.insert(checkout, (member, stored_value));
                }
                return Ok(true);
            }
            return Ok(false);
        }
        // Offline rules.
        if let Some((_, online_only)) = coupon
            && online_only
        {
            self.report.refused_offline += 1;
            return Ok(false);
        }
        if let (Some(member), true) = (member, stored_value > 0) {
            let policy = self.config.policy.clone();
            let request = SpendRequest {
                stored_value: Fen(stored_value),
                points: 0,
            };
            if self.stores[store]
                .offline
                .authorize(&policy, member, request)
                .is_err()
            {
                self.report.refused_offline += 1;
                return Ok(false);
            }
            *self.offline_allowed.entry(member).or_default() += stored_value;
            self.report.offline_spends += 1;
        }
        Ok(true)
    }

    fn workload(&mut self, store: usize) -> Result<(), String> {
        let members = self.known_members(store);
        match self.rng.below(100) {
            // Register; often with a phone another store already used (a small pool of phones).
            0..=9 => {
                let n = self.rng.below(40);
                let id = self.new_id(store);
                let (_, change) =
                    MemberDoc::create(&self.stores[store].id, &member_profile(n), self.now_ms)
                        .map_err(|e| e.to_string())?;
                self.members.push(id);
                self.write(
                    store,
                    OpV1::MemberChange {
                        member_id: id,
                        change,
                    },
                )
            }
            // Edit a profile (automerge change on the store's copy of the document).
            10..=17 if !members.is_empty() => {
                let member = members[self.rng.below(members.len() as u64) as usize];
                let changes: Vec<Vec<u8>> = self.stores[store]
                    .durable
                    .ops
                    .values()
                    .filter_map(|e| match &e.op {
                        Op::V1(OpV1::MemberChange { member_id, change })
                            if *member_id == member =>
                        {
                            Some(change.clone())
                        }
                        _ => None,
                    })
                    .collect();
                let mut doc = MemberDoc::from_changes(&self.stores[store].id, &changes)
                    .map_err(|e| e.to_string())?;
                if doc.has_missing_changes() {
                    return Ok(());
                }
                let patch = ProfilePatch {
                    note: Some(Some(format!("备注{}", self.rng.below(100)))),
                    ..Default::default()
                };
                match doc.edit(&patch, self.now_ms).map_err(|e| e.to_string())? {
                    Some(change) => self.write(
                        store,
                        OpV1::MemberChange {
                            member_id: member,
                            change,
                        },
                    ),
                    None => Ok(()),
                }
            }
            18..=37 if !members.is_empty() => {
                let member = members[self.rng.below(members.len() as u64) as usize];
                let amount = 1_000 + 500 * self.rng.below(10) as i64;
                self.entry(
                    store,
                    member,
                    EntryKind::RechargePrincipal,
                    Account::Principal,
                    amount,
                    None,
                )
            }
            // Spend stored value, checked against the local balance first.
            38..=79 if !members.is_empty() => {
                let member = members[self.rng.below(members.len() as u64) as usize];
                let amount = 200 + 100 * self.rng.below(20) as i64;
                let local = self.stores[store]
                    .durable
                    .ledger
                    .balances_of(member)
                    .map_err(|e| e.to_string())?;
                if local.stored_value().map_err(|e| e.to_string())?.0 < amount {
                    return Ok(());
                }
                let checkout = self.new_id(store);
                if self.authorize(store, Some(member), checkout, amount, None)? {
                    self.entry(
                        store,
                        member,
                        EntryKind::Spend,
                        Account::Principal,
                        -amount,
                        Some(checkout),
                    )?;
                }
                Ok(())
            }
            // Redeem a coupon the store knows and has not seen redeemed.
            80..=89 => {
                let pick = self.coupons[self.rng.below(self.coupons.len() as u64) as usize].clone();
                let held = &self.stores[store].durable.ops;
                let known = held
                    .values()
                    .any(|e| matches!(&e.op, Op::V1(OpV1::CouponIssue(c)) if c.code == pick.0));
                let used = held
                    .values()
                    .any(|e| matches!(&e.op, Op::V1(OpV1::CouponRedeem(r)) if r.code == pick.0));
                if !known || used {
                    return Ok(());
                }
                let checkout = self.new_id(store);
                if self.authorize(store, None, checkout, 0, Some(pick.clone()))? {
                    let id = self.new_id(store);
                    self.write(
                        store,
                        OpV1::CouponRedeem(CouponRedemption {
                            id,
                            code: pick.0,
                            checkout_id: checkout,
                            member_id: None,
                        }),
                    )?;
                }
                Ok(())
            }
            // Refund one of this store's spends (a new, reversing entry).
            90..=94 => {
                let own = self.stores[store].id.clone();
                let spends: Vec<LedgerEntry> = self.stores[store]
                    .durable
                    .ledger
                    .entries()
                    .filter(|e| e.origin == own && e.kind == EntryKind::Spend)
                    .cloned()
                    .collect();
                let refunded: BTreeSet<Uuid> = self.stores[store]
                    .durable
                    .ledger
                    .entries()
                    .filter(|e| e.kind == EntryKind::Refund)
                    .filter_map(|e| e.checkout_id)
                    .collect();
                let open: Vec<&LedgerEntry> = spends
                    .iter()
                    .filter(|e| e.checkout_id.is_some_and(|c| !refunded.contains(&c)))
                    .collect();
                if open.is_empty() {
                    return Ok(());
                }
                let spend = open[self.rng.below(open.len() as u64) as usize].clone();
                self.entry(
                    store,
                    spend.member_id,
                    EntryKind::Refund,
                    spend.account,
                    -spend.amount,
                    spend.checkout_id,
                )
            }
            _ => Ok(()),
        }
    }

    fn faults(&mut self) -> Result<(), String> {
        for store in 0..self.stores.len() {
            if self.rng.chance(2) {
                // A long partition: 1 to 60 virtual seconds.
                self.stores[store].partitioned_until_ms =
                    self.now_ms + 1_000 + self.rng.below(59_000);
                self.drop_link(store);
                self.report.partitions += 1;
            }
            if self.rng.chance(1) {
                // Crash: everything but the durable state is gone; back after a while.
                let s = &mut self.stores[store];
                s.link = None;
                s.clock = Hlc::default();
                s.down_until_ms = self.now_ms + 100 + self.rng.below(5_000);
                self.report.crashes += 1;
            }
        }
        if self.rng.chance(1) {
            // Hub crash: sessions and the (in-memory) reservation book are lost.
            for store in 0..self.stores.len() {
                self.drop_link(store);
            }
            for (_, (member, amount)) in self.open_grants.drain() {
                *self.grants_lost.entry(member).or_default() += amount;
            }
            self.hub.reservations = Default::default();
            self.hub_down_until_ms = self.now_ms + 100 + self.rng.below(5_000);
            self.report.crashes += 1;
        }
        Ok(())
    }

    /// Bring links up where possible; run timers; track offline periods.
    fn links(&mut self) -> Result<(), String> {
        for store in 0..self.stores.len() {
            let possible = self.link_possible(store);
            if !possible {
                self.drop_link(store);
            } else if self.stores[store].link.is_none() {
                self.connect(store)?;
            }
            let online = self.is_online(store);
            if online && !self.stores[store].was_online {
                // Back online: the offline period (and its allowance) is over.
                self.stores[store].offline = OfflineSpend::default();
            }
            self.stores[store].was_online = online;
            let now = self.now_ms;
            let s = &mut self.stores[store];
            if let Some(link) = &mut s.link {
                let ok = link.store.handle_timeout(&mut s.durable, now).is_ok()
                    && link.hub.handle_timeout(&mut self.hub, now).is_ok()
                    && link.hub.handle_log_grew(&mut self.hub).is_ok();
                if !ok {
                    s.link = None;
                }
            }
        }
        // Grants whose entries reached the hub are settled.
        let arrived: BTreeSet<Uuid> = self
            .hub
            .ledger
            .entries()
            .filter_map(|e| e.checkout_id)
            .collect();
        self.open_grants
            .retain(|checkout, _| !arrived.contains(checkout));
        Ok(())
    }

    fn step(&mut self, with_workload: bool) -> Result<u64, String> {
        self.now_ms += 10;
        if with_workload {
            self.faults()?;
            for store in 0..self.stores.len() {
                if self.now_ms >= self.stores[store].down_until_ms && self.rng.chance(600) {
                    self.workload(store)?;
                }
            }
        }
        self.links()?;
        self.flush();
        let delivered = self.deliver()?;
        self.flush();
        self.report.deliveries += delivered;
        Ok(delivered)
    }

    /// Run the workload, heal everything, and check every property. `Err` says what failed.
    pub fn run(mut self) -> Result<SimReport, String> {
        for _ in 0..self.config.steps {
            self.step(true)?;
        }
        // Heal: no more faults or workload; everything reconnects.
        for store in &mut self.stores {
            store.partitioned_until_ms = 0;
            store.down_until_ms = 0;
        }
        self.hub_down_until_ms = 0;
        let ops = self.hub.log.len()
            + self
                .stores
                .iter()
                .map(|s| s.durable.own_max() as usize)
                .sum::<usize>();
        let bound = (ops / sync_batch_ops_max + 4) as u64 * 20 * self.stores.len() as u64 + 200;
        let mut heal_deliveries = 0;
        let mut heal_steps = 0;
        loop {
            heal_deliveries += self.step(false)?;
            heal_steps += 1;
            if self.quiet() {
                break;
            }
            if heal_steps > 3_000 {
                let state: Vec<String> = self
                    .stores
                    .iter()
                    .map(|s| {
                        format!(
                            "{}: own {} hub-acked {} (hub says {}) cursor {} link {:?}",
                            s.id,
                            s.durable.own_max(),
                            s.durable.hub_acked,
                            self.hub.acked.get(&s.id).copied().unwrap_or(0),
                            s.durable.relay_cursor,
                            s.link.as_ref().map(|l| (l.store.state(), l.hub.state()))
                        )
                    })
                    .collect();
                return Err(format!(
                    "not converged {heal_steps} steps after healing; log {}; {} in flight; {}",
                    self.hub.log.len(),
                    self.flights.len(),
                    state.join("; ")
                ));
            }
        }
        if heal_deliveries > bound {
            return Err(format!(
                "convergence took {heal_deliveries} deliveries, more than the bound {bound}"
            ));
        }
        self.report.heal_deliveries = heal_deliveries;
        self.report.virtual_ms = self.now_ms;
        self.check()?;
        Ok(self.report)
    }

    fn quiet(&self) -> bool {
        let head = self.hub.log.len() as u64;
        self.flights.is_empty()
            && self.stores.iter().all(|s| {
                s.durable.relay_cursor == head
                    && s.durable.hub_acked == s.durable.own_max()
                    && self.hub.acked.get(&s.id).copied().unwrap_or(0) == s.durable.own_max()
            })
    }

    fn check(&mut self) -> Result<(), String> {
        // Every replica holds the same set of operations, and the same state.
        let hub_ops: BTreeSet<(StoreId, u64)> = self
            .hub
            .log
            .iter()
            .map(|e| (e.origin.clone(), e.seq))
            .collect();
        let hub_digest = digest(self.hub.log.iter())?;
        for store in &self.stores {
            let held: BTreeSet<(StoreId, u64)> = store.durable.ops.keys().cloned().collect();
            if held != hub_ops {
                return Err(format!(
                    "store {} holds {} operations, the hub {}",
                    store.id,
                    held.len(),
                    hub_ops.len()
                ));
            }
            if digest(store.durable.ops.values())? != hub_digest {
                return Err(format!("store {} digest differs from the hub's", store.id));
            }
        }
        // Nothing acknowledged to a cashier is lost.
        if let Some(lost) = self.acknowledged.iter().find(|op| !hub_ops.contains(*op)) {
            return Err(format!(
                "acknowledged operation {}/{} is missing at the hub",
                lost.0, lost.1
            ));
        }
        // Balances are the sums of their entries (recomputed independently of the fold).
        let mut sums: BTreeMap<Uuid, i64> = BTreeMap::new();
        for entry in self.hub.ledger.entries() {
            if entry.account != Account::Points {
                *sums.entry(entry.member_id).or_default() += entry.amount;
            }
        }
        for (member, sum) in &sums {
            let folded = self
                .hub
                .ledger
                .balances_of(*member)
                .map_err(|e| e.to_string())?;
            if folded.stored_value().map_err(|e| e.to_string())?.0 != *sum {
                return Err(format!(
                    "member {member}: balance differs from the sum of its entries"
                ));
            }
            // Silent overspend never exceeds what the offline rules let through (plus grants
            // whose hold a hub crash lost), and every overdraft is in the exception queue.
            if *sum < 0 {
                let allowed = self.offline_allowed.get(member).copied().unwrap_or(0)
                    + self.grants_lost.get(member).copied().unwrap_or(0);
                if -sum > allowed {
                    return Err(format!(
                        "member {member} overdrawn by {} but only {allowed} was let through offline",
                        -sum
                    ));
                }
                let entries: Vec<&LedgerEntry> = self
                    .hub
                    .ledger
                    .entries()
                    .filter(|e| e.member_id == *member)
                    .collect();
                let findings = member_findings(*member, entries);
                if !findings.iter().any(|f| f.amount == -sum) {
                    return Err(format!(
                        "member {member} overdrawn by {} without an exception",
                        -sum
                    ));
                }
                self.report.exceptions += 1;
            }
        }
        for (code, redemptions) in &self.hub.redemptions {
            let list: Vec<(Uuid, StoreId)> = redemptions.iter().cloned().collect();
            if list.len() > 1 {
                if coupon_finding(code, &list).is_none() {
                    return Err(format!(
                        "coupon {code} redeemed {} times without an exception",
                        list.len()
                    ));
                }
                self.report.exceptions += 1;
            }
        }
        Ok(())
    }
}

/// A digest of a replica's projected state: ledger balances per member, member profiles from
/// their automerge changes, coupon redemptions.
fn digest<'a, I: Iterator<Item = &'a Envelope>>(ops: I) -> Result<String, String> {
    let mut balances: BTreeMap<Uuid, (i64, i64)> = BTreeMap::new();
    let mut changes: BTreeMap<Uuid, Vec<Vec<u8>>> = BTreeMap::new();
    let mut redemptions: BTreeSet<(String, Uuid)> = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for envelope in ops {
        if !seen.insert((envelope.origin.clone(), envelope.seq)) {
            continue;
        }
        match &envelope.op {
            Op::V1(OpV1::Ledger(entry)) => {
                let slot = balances.entry(entry.member_id).or_default();
                if entry.account == Account::Points {
                    slot.1 += entry.amount
                } else {
                    slot.0 += entry.amount
                }
            }
            Op::V1(OpV1::MemberChange { member_id, change }) => {
                changes.entry(*member_id).or_default().push(change.clone())
            }
            Op::V1(OpV1::CouponRedeem(r)) => {
                redemptions.insert((r.code.clone(), r.id));
            }
            _ => {}
        }
    }
    let observer = StoreId::hub();
    let mut text = format!("{balances:?}|{redemptions:?}|");
    for (member, list) in &changes {
        let doc = MemberDoc::from_changes(&observer, list).map_err(|e| e.to_string())?;
        text.push_str(&format!("{member}:{:?};", doc.profile()));
    }
    Ok(text)
}

/// Run one seed; on failure the message names the seed.
pub fn run_seed(seed: u64, config: &SimConfig) -> Result<SimReport, String> {
    Sim::new(seed, config.clone())?
        .run()
        .map_err(|e| format!("seed {seed}: {e}"))
}

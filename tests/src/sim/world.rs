//! The simulated chain: a virtual clock, an event queue, the network between each store and
//! the hub, the stores' and the hub's nodes, and the faults (partitions, crashes).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};

use chainsync_core::rules::Rules;
use chainsync_core::sync::{
    HubSession, HubSessionState, Message, MessageV1, StoreSession, StoreSessionState,
    sync_batch_ops_max,
};
use chainsync_core::{IdGenerator, StoreId};
use uuid::Uuid;

use super::cashier::PendingCheckout;
use super::oracle::Oracle;
use super::replica::{HubNode, StoreReplica};
use super::rng::Rng;
use super::{SimConfig, SimReport};

/// Virtual time starts here (Unix ms, mid-2025), so UUIDv7 ids and HLCs look real.
pub const epoch_ms: u64 = 1_750_000_000_000;
/// How often session timers run while a session has something in flight.
pub const tick_ms: u64 = 1_000;
/// How long the chain may take to converge after healing before it counts as stuck.
pub const heal_limit_ms: u64 = 30 * 60 * 1_000;
/// After convergence, nothing may be sent for this long (a sync loop would).
pub const quiet_ms: u64 = 60_000;

#[derive(Debug)]
pub enum Event {
    Deliver {
        store: usize,
        epoch: u64,
        to_hub: bool,
        message: Message,
    },
    Tick,
    Command {
        store: usize,
    },
    AuthDeadline {
        store: usize,
        request: u64,
    },
    PartitionStart {
        store: usize,
    },
    PartitionEnd {
        store: usize,
    },
    StoreCrash {
        store: usize,
    },
    StoreRestart {
        store: usize,
        generation: u64,
    },
    HubCrash,
    HubRestart {
        generation: u64,
    },
    Reconnect {
        store: usize,
    },
    Hq,
    CloseOfBusiness,
    Twin {
        store: usize,
        member: Option<Uuid>,
        code: Option<String>,
    },
}

impl Event {
    fn code(&self) -> u64 {
        match self {
            Event::Deliver { .. } => 1,
            Event::Tick => 2,
            Event::Command { .. } => 3,
            Event::AuthDeadline { .. } => 4,
            Event::PartitionStart { .. } => 5,
            Event::PartitionEnd { .. } => 6,
            Event::StoreCrash { .. } => 7,
            Event::StoreRestart { .. } => 8,
            Event::HubCrash => 9,
            Event::HubRestart { .. } => 10,
            Event::Reconnect { .. } => 11,
            Event::Hq => 12,
            Event::CloseOfBusiness => 13,
            Event::Twin { .. } => 14,
        }
    }

    /// Events of the business day (dropped when the day closes).
    fn is_business(&self) -> bool {
        matches!(
            self,
            Event::Command { .. }
                | Event::PartitionStart { .. }
                | Event::PartitionEnd { .. }
                | Event::StoreCrash { .. }
                | Event::StoreRestart { .. }
                | Event::HubCrash
                | Event::HubRestart { .. }
                | Event::Hq
                | Event::Twin { .. }
        )
    }
}

struct Scheduled {
    at_ms: u64,
    order: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.order) == (other.at_ms, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Earliest first (BinaryHeap is a max-heap).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ms, other.order).cmp(&(self.at_ms, self.order))
    }
}

/// One store's connection to the hub: both ends of one session.
pub struct Link {
    pub store: StoreSession,
    pub hub: HubSession,
    pub epoch: u64,
    latency_ms: u64,
    /// Messages of this session go through the binaries' encoding (see [`wire`]); half the
    /// sessions do, which keeps the run time near what it was without it.
    wire: bool,
    /// Delivery time of the last in-order message each way (a stream is FIFO).
    last_to_hub_ms: u64,
    last_to_store_ms: u64,
}

/// A store: its node (durable and volatile state), its cashier's open work and its link.
pub struct Node {
    pub id: StoreId,
    pub replica: StoreReplica,
    pub up: bool,
    /// Cut off from the hub until then (virtual ms).
    pub cut_until_ms: u64,
    pub skew_ms: i64,
    pub link: Option<Link>,
    pub ids: IdGenerator,
    pub next_request: u64,
    pub pending: BTreeMap<u64, PendingCheckout>,
    /// Offline periods so far (a period ends when a session becomes ready).
    pub period: u64,
    pub crash_generation: u64,
    pub reconnect_scheduled: bool,
}

impl Node {
    pub fn physical_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_add_signed(self.skew_ms)
    }
}

pub struct World {
    pub seed: u64,
    pub config: SimConfig,
    pub rng: Rng,
    pub now_ms: u64,
    queue: BinaryHeap<Scheduled>,
    order: u64,
    in_flight: usize,
    tick_scheduled: bool,
    epochs: u64,
    pub nodes: Vec<Node>,
    pub hub: HubNode,
    pub hub_up: bool,
    hub_generation: u64,
    pub rules: Rules,
    pub oracle: Oracle,
    /// The physical side of stock (shelves, goods on the road), see `stock.rs`.
    pub stock: super::stock::StockWorld,
    pub report: SimReport,
    pub day: u32,
    pub business: bool,
    /// After heal: no new faults on the network.
    clean_network: bool,
    /// Counting deliveries after heal; failing on any delivery in the quiet period.
    healing: bool,
    quiet: bool,
    /// A message that did not survive encoding, framing and decoding (fails the run).
    codec_failure: Option<String>,
    pub trace: u64,
}

impl World {
    pub fn new(seed: u64, config: SimConfig) -> Result<World, String> {
        let mut rng = Rng::new(seed);
        let mut nodes = Vec::with_capacity(config.stores);
        for n in 0..config.stores {
            let id = StoreId::parse(&format!("s{n}")).map_err(|e| e.to_string())?;
            let skew_ms =
                rng.range(0, 2 * config.clock_skew_max_ms) as i64 - config.clock_skew_max_ms as i64;
            nodes.push(Node {
                replica: StoreReplica::new(id.clone()),
                id,
                up: true,
                cut_until_ms: 0,
                skew_ms,
                link: None,
                ids: IdGenerator::new(),
                next_request: 1,
                pending: BTreeMap::new(),
                period: 0,
                crash_generation: 0,
                reconnect_scheduled: false,
            });
        }
        let oracle = Oracle {
            documented_gaps_only: config.documented_gaps_only,
            ..Oracle::default()
        };
        Ok(World {
            seed,
            config,
            rng,
            now_ms: epoch_ms,
            queue: BinaryHeap::new(),
            order: 0,
            in_flight: 0,
            tick_scheduled: false,
            epochs: 0,
            nodes,
            hub: HubNode::new(),
            hub_up: true,
            hub_generation: 0,
            rules: Rules::default(),
            oracle,
            stock: Default::default(),
            report: SimReport::default(),
            day: 0,
            business: false,
            clean_network: false,
            healing: false,
            quiet: false,
            codec_failure: None,
            trace: 0xcbf2_9ce4_8422_2325,
        })
    }

    pub fn schedule(&mut self, at_ms: u64, event: Event) {
        self.order += 1;
        if matches!(event, Event::Deliver { .. }) {
            self.in_flight += 1;
        }
        self.queue.push(Scheduled {
            at_ms: at_ms.max(self.now_ms),
            order: self.order,
            event,
        });
    }

    pub fn after(&mut self, delay_ms: u64, event: Event) {
        let at = self.now_ms.saturating_add(delay_ms);
        self.schedule(at, event);
    }

    pub fn log(&self, text: impl FnOnce() -> String) {
        if self.config.verbose {
            eprintln!("[{}] {}", clock_text(self.now_ms), text());
        }
    }

    // -----------------------------------------------------------------------------------------
    // The run
    // -----------------------------------------------------------------------------------------

    pub fn run(&mut self) -> Result<(), String> {
        for day in 0..self.config.days {
            self.day = day;
            self.open_day()?;
            loop {
                let Some(next) = self.queue.pop() else {
                    return Err("the event queue ran dry during business hours".into());
                };
                let close = matches!(next.event, Event::CloseOfBusiness);
                self.dispatch(next)?;
                if close {
                    break;
                }
            }
            self.heal_and_check()?;
        }
        if let Some(problem) = self.codec_failure.take() {
            return Err(problem);
        }
        self.report.virtual_ms = self.now_ms - epoch_ms;
        self.report.trace = self.trace;
        Ok(())
    }

    fn open_day(&mut self) -> Result<(), String> {
        self.business = true;
        self.clean_network = false;
        let day_ms = self.config.day_ms;
        self.after(day_ms, Event::CloseOfBusiness);
        self.after(0, Event::Hq);
        let mean = self.command_gap_ms();
        for store in 0..self.nodes.len() {
            let first = self.rng.exponential_ms(mean);
            self.after(first, Event::Command { store });
            self.schedule_partition(store);
            self.schedule_store_crash(store);
        }
        self.schedule_hub_crash();
        for store in 0..self.nodes.len() {
            self.connect(store)?;
        }
        Ok(())
    }

    fn command_gap_ms(&self) -> u64 {
        (3_600_000 / self.config.commands_per_store_hour.max(1)).max(1)
    }

    fn schedule_partition(&mut self, store: usize) {
        if let Some(gap) = self.config.partition_mean_gap_ms {
            let wait = self.rng.exponential_ms(gap);
            self.after(wait, Event::PartitionStart { store });
        }
    }

    fn schedule_store_crash(&mut self, store: usize) {
        if let Some(gap) = self.config.store_crash_mean_gap_ms {
            let wait = self.rng.exponential_ms(gap);
            self.after(wait, Event::StoreCrash { store });
        }
    }

    fn schedule_hub_crash(&mut self) {
        if let Some(gap) = self.config.hub_crash_mean_gap_ms {
            let wait = self.rng.exponential_ms(gap);
            self.after(wait, Event::HubCrash);
        }
    }

    fn dispatch(&mut self, next: Scheduled) -> Result<(), String> {
        if let Some(problem) = self.codec_failure.take() {
            return Err(problem);
        }
        self.now_ms = self.now_ms.max(next.at_ms);
        let code = next.event.code();
        self.trace = mix(mix(self.trace, code), self.now_ms);
        self.report.events += 1;
        match next.event {
            Event::Deliver {
                store,
                epoch,
                to_hub,
                message,
            } => {
                self.in_flight -= 1;
                self.deliver(store, epoch, to_hub, message)
            }
            Event::Tick => self.tick(),
            Event::Command { store } => {
                if self.business {
                    let mean = self.command_gap_ms();
                    let wait = self.rng.exponential_ms(mean);
                    self.after(wait, Event::Command { store });
                    if self.nodes[store].up {
                        self.command(store)?;
                    } else {
                        self.report.commands_while_down += 1;
                    }
                }
                Ok(())
            }
            Event::AuthDeadline { store, request } => {
                if let Some(pending) = self.nodes[store].pending.remove(&request) {
                    self.report.authorization_timeouts += 1;
                    self.log(|| {
                        format!("s{store}: no answer for request {request}: offline rules")
                    });
                    self.offline_checkout(store, pending.plan)?;
                }
                Ok(())
            }
            Event::PartitionStart { store } => {
                let (lo, hi) = (self.config.partition_min_ms, self.config.partition_max_ms);
                let duration = self.rng.log_uniform_ms(lo, hi);
                self.cut_off(store, duration, "partition")?;
                // The next partition of this store comes some time after this one ends.
                if let Some(gap) = self.config.partition_mean_gap_ms {
                    let wait = duration + self.rng.exponential_ms(gap);
                    self.after(wait, Event::PartitionStart { store });
                }
                Ok(())
            }
            Event::PartitionEnd { store } => {
                if self.nodes[store].cut_until_ms != 0
                    && self.now_ms >= self.nodes[store].cut_until_ms
                {
                    self.nodes[store].cut_until_ms = 0;
                    self.log(|| format!("s{store}: partition heals"));
                    self.connect(store)?;
                }
                Ok(())
            }
            Event::StoreCrash { store } => {
                self.schedule_store_crash(store);
                if self.nodes[store].up {
                    self.crash_store(store)?;
                    let (lo, hi) = (1_000, self.config.store_down_max_ms.max(1_000));
                    let down = self.rng.log_uniform_ms(lo, hi);
                    let generation = self.nodes[store].crash_generation;
                    self.after(down, Event::StoreRestart { store, generation });
                }
                Ok(())
            }
            Event::StoreRestart { store, generation } => {
                if !self.nodes[store].up && self.nodes[store].crash_generation == generation {
                    self.restart_store(store)?;
                }
                Ok(())
            }
            Event::HubCrash => {
                self.schedule_hub_crash();
                if self.hub_up {
                    self.crash_hub()?;
                    let (lo, hi) = (1_000, self.config.hub_down_max_ms.max(1_000));
                    let down = self.rng.log_uniform_ms(lo, hi);
                    let generation = self.hub_generation;
                    self.after(down, Event::HubRestart { generation });
                }
                Ok(())
            }
            Event::HubRestart { generation } => {
                if !self.hub_up && self.hub_generation == generation {
                    self.restart_hub()?;
                }
                Ok(())
            }
            Event::Reconnect { store } => {
                self.nodes[store].reconnect_scheduled = false;
                self.connect(store)
            }
            Event::Hq => self.hq_writes(),
            Event::Twin {
                store,
                member,
                code,
            } => {
                if self.business && self.nodes[store].up {
                    self.twin_checkout(store, member, code)?;
                }
                Ok(())
            }
            Event::CloseOfBusiness => {
                self.business = false;
                Ok(())
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Links and the network
    // -----------------------------------------------------------------------------------------

    fn link_possible(&self, store: usize) -> bool {
        let node = &self.nodes[store];
        node.up && node.cut_until_ms == 0 && self.hub_up
    }

    /// Open a session if the store can reach the hub and has none.
    pub fn connect(&mut self, store: usize) -> Result<(), String> {
        if !self.link_possible(store) || self.nodes[store].link.is_some() {
            return Ok(());
        }
        self.epochs += 1;
        let epoch = self.epochs;
        let latency_ms = self
            .rng
            .range(self.config.latency_min_ms, self.config.latency_max_ms);
        let wire = self.rng.chance(500);
        let now = self.now_ms;
        let node = &mut self.nodes[store];
        node.replica.now_ms = node.physical_ms(now);
        let session = StoreSession::new(node.id.clone(), &node.replica, node.replica.now_ms)
            .map_err(|e| format!("{}: cannot open a session: {e}", node.id))?;
        node.link = Some(Link {
            store: session,
            hub: HubSession::new(node.id.clone(), now),
            epoch,
            latency_ms,
            wire,
            last_to_hub_ms: now,
            last_to_store_ms: now,
        });
        self.report.sessions += 1;
        self.log(|| format!("s{store}: session {epoch} opens"));
        self.flush(store);
        Ok(())
    }

    /// Drop a store's session (both ends). Its cashier's open authorizations get no answer:
    /// they fall back to the offline rules now, as the store-node's `Authorizer` does.
    pub fn teardown(&mut self, store: usize, why: &str) -> Result<(), String> {
        if self.nodes[store].link.take().is_none() {
            return Ok(());
        }
        let id = self.nodes[store].id.clone();
        chainsync_core::sync::HubSide::store_disconnected(&mut self.hub, &id)?;
        self.log(|| format!("s{store}: session ends ({why})"));
        let pending = std::mem::take(&mut self.nodes[store].pending);
        for (_, pending) in pending {
            self.report.authorizations_cut += 1;
            self.offline_checkout(store, pending.plan)?;
        }
        Ok(())
    }

    /// A session failed (protocol error): drop it and try again after a short backoff.
    pub fn session_failed(&mut self, store: usize, error: String) -> Result<(), String> {
        self.report.session_errors += 1;
        self.log(|| format!("s{store}: session error: {error}"));
        self.teardown(store, "error")?;
        if !self.nodes[store].reconnect_scheduled {
            self.nodes[store].reconnect_scheduled = true;
            let backoff = self.rng.range(500, 3_000);
            self.after(backoff, Event::Reconnect { store });
        }
        Ok(())
    }

    /// Move what both ends of a store's session want to send into the network (through the
    /// binaries' wire path if the session uses it, see [`wire`]).
    pub fn flush(&mut self, store: usize) {
        let mut outgoing = Vec::new();
        let mut encoded = false;
        if let Some(link) = &mut self.nodes[store].link {
            encoded = link.wire;
            while let Some(message) = link.store.poll_transmit() {
                outgoing.push((true, message, link.store.peer_version()));
            }
            while let Some(message) = link.hub.poll_transmit() {
                outgoing.push((false, message, link.hub.peer_version()));
            }
        }
        for (to_hub, message, peer_version) in outgoing {
            if !encoded {
                self.send(store, to_hub, message);
                continue;
            }
            match wire(&message, peer_version) {
                Ok((arrives, bytes)) => {
                    self.report.wire_bytes += bytes;
                    if matches!(
                        arrives,
                        Message::V1(MessageV1::PushCompact { .. } | MessageV1::RelayCompact { .. })
                    ) {
                        self.report.compact_batches += 1;
                    }
                    self.send(store, to_hub, arrives);
                }
                Err(problem) => {
                    self.codec_failure.get_or_insert(format!(
                        "s{store}: a message {} did not survive the wire: {problem}",
                        if to_hub { "to the hub" } else { "to the store" }
                    ));
                }
            }
        }
    }

    fn send(&mut self, store: usize, to_hub: bool, message: Message) {
        if self.quiet {
            self.report.quiet_violations += 1;
        }
        let clean = self.clean_network;
        let drop = !clean && self.rng.chance(self.config.drop_per_mille);
        let reorder = !clean && self.rng.chance(self.config.reorder_per_mille);
        let duplicate = !clean && self.rng.chance(self.config.duplicate_per_mille);
        let extra_max = self.config.reorder_delay_max_ms;
        let now = self.now_ms;
        let (jitter, extra, copy_extra) = (
            self.rng.below(self.config.latency_min_ms.max(1)),
            self.rng.range(1, extra_max.max(1)),
            self.rng.range(1, extra_max.max(1)),
        );
        let Some(link) = &mut self.nodes[store].link else {
            return;
        };
        let epoch = link.epoch;
        let base = now + link.latency_ms + jitter;
        let last = if to_hub {
            &mut link.last_to_hub_ms
        } else {
            &mut link.last_to_store_ms
        };
        let at = if reorder {
            base + extra
        } else {
            let at = base.max(*last);
            *last = at;
            at
        };
        self.report.messages += 1;
        // (A copy only for a duplicate: batches are large.)
        let copy = duplicate.then(|| message.clone());
        if drop {
            self.report.dropped += 1;
        } else {
            self.schedule(
                at,
                Event::Deliver {
                    store,
                    epoch,
                    to_hub,
                    message,
                },
            );
        }
        if let Some(message) = copy {
            self.report.duplicated += 1;
            self.schedule(
                at + copy_extra,
                Event::Deliver {
                    store,
                    epoch,
                    to_hub,
                    message,
                },
            );
        }
        if reorder {
            self.report.reordered += 1;
        }
        self.ensure_tick();
    }

    fn ensure_tick(&mut self) {
        if !self.tick_scheduled {
            self.tick_scheduled = true;
            self.after(tick_ms, Event::Tick);
        }
    }

    /// Whether any session needs its timers (something unacknowledged or no Welcome yet).
    fn needs_tick(&self) -> bool {
        let head = self.hub.mem.log.len() as u64;
        self.in_flight > 0
            || self.nodes.iter().any(|node| {
                node.link.as_ref().is_some_and(|link| {
                    !link.store.is_idle()
                        || link.hub.state() != HubSessionState::Ready
                        || link.hub.relay_acked() < head
                })
            })
    }

    fn tick(&mut self) -> Result<(), String> {
        self.tick_scheduled = false;
        let now = self.now_ms;
        for store in 0..self.nodes.len() {
            let World { nodes, hub, .. } = self;
            let node = &mut nodes[store];
            let physical = node.physical_ms(now);
            let Some(link) = &mut node.link else {
                continue;
            };
            node.replica.now_ms = physical;
            hub.now_ms = now;
            let store_result = link.store.handle_timeout(&mut node.replica, physical);
            let hub_result = link.hub.handle_timeout(hub, now);
            if let Err(e) = store_result {
                self.session_failed(store, format!("store timer: {e}"))?;
                continue;
            }
            if let Err(e) = hub_result {
                self.session_failed(store, format!("hub timer: {e}"))?;
                continue;
            }
            self.flush(store);
        }
        if self.needs_tick() {
            self.ensure_tick();
        }
        Ok(())
    }

    fn deliver(
        &mut self,
        store: usize,
        epoch: u64,
        to_hub: bool,
        message: Message,
    ) -> Result<(), String> {
        let live = self.nodes[store]
            .link
            .as_ref()
            .is_some_and(|link| link.epoch == epoch);
        if !live {
            self.report.stale_messages += 1;
            return Ok(());
        }
        self.report.deliveries += 1;
        if self.healing {
            self.report.heal_deliveries += 1;
        }
        let now = self.now_ms;
        if to_hub {
            let before = self.hub.mem.log.len();
            let result = {
                let World { nodes, hub, .. } = self;
                hub.now_ms = now;
                match &mut nodes[store].link {
                    Some(link) => link.hub.handle_message(message, hub, now),
                    None => Ok(()),
                }
            };
            self.after_hub_call(before)?;
            if let Err(e) = result {
                self.flush(store);
                return self.session_failed(store, format!("hub: {e}"));
            }
        } else {
            let (result, became_ready, replies) = {
                let node = &mut self.nodes[store];
                let physical = node.physical_ms(now);
                node.replica.now_ms = physical;
                match &mut node.link {
                    Some(link) => {
                        let was_ready = link.store.state() == StoreSessionState::Ready;
                        let result =
                            link.store
                                .handle_message(message, &mut node.replica, physical);
                        let became_ready =
                            !was_ready && link.store.state() == StoreSessionState::Ready;
                        let mut replies = Vec::new();
                        while let Some(reply) = link.store.poll_authorization() {
                            replies.push(reply);
                        }
                        (result, became_ready, replies)
                    }
                    None => (Ok(()), false, Vec::new()),
                }
            };
            if became_ready {
                // The link is up: the offline period, and its allowance, are over.
                let node = &mut self.nodes[store];
                node.replica.offline = Default::default();
                node.period += 1;
                self.log(|| format!("s{store}: online"));
            }
            for (request, decision) in replies {
                self.authorization_reply(store, request, decision)?;
            }
            if let Err(e) = result {
                return self.session_failed(store, format!("store: {e}"));
            }
        }
        self.flush(store);
        Ok(())
    }

    /// After the hub handled something: let the checker see grants and arrivals, relay new
    /// operations to every other session, and check the hub's invariants.
    pub fn after_hub_call(&mut self, log_before: usize) -> Result<(), String> {
        let now = self.now_ms;
        self.oracle.observe_hub(&mut self.hub, log_before, now);
        if self.hub.mem.log.len() > log_before {
            for store in 0..self.nodes.len() {
                let World { nodes, hub, .. } = self;
                let result = match &mut nodes[store].link {
                    Some(link) => link.hub.handle_log_grew(hub),
                    None => Ok(()),
                };
                if let Err(e) = result {
                    self.session_failed(store, format!("hub relay: {e}"))?;
                } else {
                    self.flush(store);
                }
            }
            self.check_hub()?;
        }
        Ok(())
    }

    /// Faults aimed at the worst moment for money: right after a store wrote a spend the hub
    /// granted, before the spend reaches the hub (the push is in flight), the store's link is
    /// cut for longer than a reservation lives, or the hub crashes.
    pub fn nemesis_after_grant(&mut self, store: usize) -> Result<(), String> {
        if !self.business {
            return Ok(());
        }
        if self.rng.chance(self.config.partition_after_grant_per_mille) && self.nodes[store].up {
            // Longer than a hold lived when holds expired after 120 s.
            let duration = self.rng.log_uniform_ms(240_000, 20 * 60_000);
            self.cut_off(store, duration, "partition right after a grant")?;
        }
        if self.rng.chance(self.config.hub_crash_after_grant_per_mille) && self.hub_up {
            self.crash_hub()?;
            let down = self
                .rng
                .log_uniform_ms(1_000, self.config.hub_down_max_ms.max(1_000));
            let generation = self.hub_generation;
            self.after(down, Event::HubRestart { generation });
        }
        Ok(())
    }

    /// Partition a store from the hub for `duration_ms` (or longer, if it already is).
    fn cut_off(&mut self, store: usize, duration_ms: u64, why: &str) -> Result<(), String> {
        let until = self.now_ms + duration_ms;
        let node = &mut self.nodes[store];
        let extended = until.saturating_sub(node.cut_until_ms.max(self.now_ms));
        node.cut_until_ms = node.cut_until_ms.max(until);
        self.report.partitions += 1;
        self.report.partitioned_ms += extended;
        self.log(|| format!("s{store}: {why}, {} s", duration_ms / 1000));
        self.teardown(store, why)?;
        self.schedule(until, Event::PartitionEnd { store });
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Crashes
    // -----------------------------------------------------------------------------------------

    fn crash_store(&mut self, store: usize) -> Result<(), String> {
        self.report.store_crashes += 1;
        self.log(|| format!("s{store}: crash"));
        let node = &mut self.nodes[store];
        node.link = None;
        // Open authorizations die with the process: those checkouts were never acknowledged.
        self.report.checkouts_lost_in_crash += node.pending.len() as u64;
        node.pending.clear();
        node.up = false;
        node.crash_generation += 1;
        Ok(())
    }

    fn restart_store(&mut self, store: usize) -> Result<(), String> {
        self.log(|| format!("s{store}: restart"));
        let now = self.now_ms;
        let node = &mut self.nodes[store];
        let crashed = std::mem::replace(&mut node.replica, StoreReplica::new(node.id.clone()));
        let mut restarted = crashed.restart();
        // Everything acknowledged by this store's cashier is in what survived.
        let own = node.id.clone();
        let acked_here = self
            .oracle
            .acknowledged
            .range((own.clone(), 0)..=(own.clone(), u64::MAX))
            .count() as u64;
        if restarted.mem.own_max() != acked_here {
            return Err(format!(
                "{own} restarted with {} own operations but its cashiers were told of {acked_here}",
                restarted.mem.own_max()
            ));
        }
        restarted.now_ms = node.physical_ms(now);
        node.replica = restarted;
        node.ids = IdGenerator::new();
        node.up = true;
        self.connect(store)
    }

    fn crash_hub(&mut self) -> Result<(), String> {
        self.report.hub_crashes += 1;
        self.log(|| "hub: crash".to_string());
        self.hub_up = false;
        self.hub_generation += 1;
        for store in 0..self.nodes.len() {
            self.teardown(store, "hub crash")?;
        }
        self.hub.crash();
        self.oracle.hub_incarnation += 1;
        Ok(())
    }

    fn restart_hub(&mut self) -> Result<(), String> {
        self.log(|| "hub: restart".to_string());
        self.hub_up = true;
        for store in 0..self.nodes.len() {
            self.connect(store)?;
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Heal
    // -----------------------------------------------------------------------------------------

    fn heal_and_check(&mut self) -> Result<(), String> {
        // Close of business: no more commands or faults; every partition heals, every node
        // comes back, and the network stops misbehaving (what is in flight still arrives).
        let queue = std::mem::take(&mut self.queue);
        self.queue = queue
            .into_iter()
            .filter(|scheduled| !scheduled.event.is_business())
            .collect();
        self.clean_network = true;
        if !self.hub_up {
            self.restart_hub()?;
        }
        for store in 0..self.nodes.len() {
            self.nodes[store].cut_until_ms = 0;
            if !self.nodes[store].up {
                self.restart_store(store)?;
            }
            self.connect(store)?;
        }
        let heal_start = self.now_ms;
        let deliveries_before = self.report.heal_deliveries;
        self.healing = true;
        let backlog: Vec<(u64, u64)> = self
            .nodes
            .iter()
            .map(|node| {
                let own = node.replica.mem.own_max();
                let at_hub = self.hub.mem.acked.get(&node.id).copied().unwrap_or(0);
                (own.saturating_sub(at_hub), node.replica.mem.relay_cursor)
            })
            .collect();
        while !self.converged() {
            let Some(next) = self.queue.pop() else {
                return Err(format!(
                    "heal: nothing left to do but not converged: {}",
                    self.link_states()
                ));
            };
            if next.at_ms > heal_start + heal_limit_ms {
                return Err(format!(
                    "heal: not converged {} s after healing: {}",
                    heal_limit_ms / 1000,
                    self.link_states()
                ));
            }
            self.dispatch(next)?;
        }
        self.healing = false;
        let deliveries = self.report.heal_deliveries - deliveries_before;
        // The bound: per store, a handshake, each batch it lacks both ways with its
        // acknowledgement, plus slack for what was in flight when the network healed
        // (a duplicate Hello kills a session; a delayed batch costs a retransmit).
        let head = self.hub.mem.log.len() as u64;
        let batches = |n: u64| n.div_ceil(sync_batch_ops_max as u64);
        let bound: u64 = backlog
            .iter()
            .map(|(push, cursor)| {
                let relay = head.saturating_sub(*cursor);
                16 + 4 * (batches(*push) + batches(relay))
            })
            .sum();
        self.report.heal_rounds += 1;
        self.report.heal_deliveries_max = self.report.heal_deliveries_max.max(deliveries);
        self.report.heal_ms_max = self
            .report
            .heal_ms_max
            .max(self.now_ms.saturating_sub(heal_start));
        if deliveries > bound {
            return Err(format!(
                "heal: converging took {deliveries} message deliveries, more than the bound \
                 {bound} for backlogs {backlog:?} (push, cursor) and log head {head}"
            ));
        }
        // Nothing more may be sent: a sync loop would keep the links busy.
        self.quiet = true;
        let quiet_end = self.now_ms + quiet_ms;
        while self
            .queue
            .peek()
            .is_some_and(|next| next.at_ms <= quiet_end)
        {
            if let Some(next) = self.queue.pop() {
                self.dispatch(next)?;
            }
        }
        self.now_ms = self.now_ms.max(quiet_end);
        self.quiet = false;
        if self.report.quiet_violations > 0 {
            return Err(format!(
                "heal: {} messages were sent after the chain had converged (a sync loop)",
                self.report.quiet_violations
            ));
        }
        self.report.store_days +=
            self.nodes.len() as f64 * self.config.day_ms as f64 / super::store_day_ms as f64;
        self.check_converged()
    }

    /// Everything delivered, every session idle, every cursor at the head, nothing pending.
    fn converged(&self) -> bool {
        let head = self.hub.mem.log.len() as u64;
        self.in_flight == 0
            && self.hub_up
            && self.nodes.iter().all(|node| {
                let own = node.replica.mem.own_max();
                node.up
                    && node.pending.is_empty()
                    && node.link.as_ref().is_some_and(|link| {
                        link.store.is_idle()
                            && link.hub.state() == HubSessionState::Ready
                            && link.hub.relay_acked() >= head
                    })
                    && node.replica.mem.relay_cursor == head
                    && node.replica.mem.hub_acked == own
                    && self.hub.mem.acked.get(&node.id).copied().unwrap_or(0) == own
            })
    }

    pub fn link_states(&self) -> String {
        let head = self.hub.mem.log.len();
        let stores: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                format!(
                    "{} up={} own={} hub-acked={} hub-holds={} cursor={} pending={} link={:?}",
                    node.id,
                    node.up,
                    node.replica.mem.own_max(),
                    node.replica.mem.hub_acked,
                    self.hub.mem.acked.get(&node.id).copied().unwrap_or(0),
                    node.replica.mem.relay_cursor,
                    node.pending.len(),
                    node.link.as_ref().map(|l| (
                        l.epoch,
                        l.store.state(),
                        l.store.is_idle(),
                        l.hub.state(),
                        l.hub.relay_acked()
                    )),
                )
            })
            .collect();
        format!(
            "hub up={} log head {head}, {} in flight; {}",
            self.hub_up,
            self.in_flight,
            stores.join("; ")
        )
    }

    /// A new id at a store (UUIDv7 from its clock and the seeded generator).
    pub fn new_id(&mut self, store: usize) -> Uuid {
        let random = self.rng.bytes10();
        let now = self.nodes[store].physical_ms(self.now_ms);
        self.nodes[store].ids.next(now, random)
    }
}

/// What the binaries do with a message: encode it for the peer's protocol version (from 3 on,
/// member changes in compact form; from 2 on, large batches deflated), frame it, and decode
/// it on arrival. Returns the message as the receiver decodes it (the compact forms are
/// re-expanded by the receiving session against its own store, which refuses a batch that does
/// not re-expand) and its size on the wire.
fn wire(message: &Message, peer_version: u16) -> Result<(Message, u64), String> {
    use chainsync_net::frame::{decode_frame_header, encode_frame_header, frame_header_bytes};
    let bytes = message.encode_for(peer_version);
    let header = encode_frame_header(bytes.len()).map_err(|e| e.to_string())?;
    let length = decode_frame_header(&header).map_err(|e| e.to_string())?;
    if length != bytes.len() {
        return Err(format!("frame of {} bytes read as {length}", bytes.len()));
    }
    let decoded = Message::decode(&bytes).map_err(|e| e.to_string())?;
    let compact = matches!(
        decoded,
        Message::V1(MessageV1::PushCompact { .. } | MessageV1::RelayCompact { .. })
    );
    if !compact && decoded != *message {
        return Err(format!(
            "decoded as another message (protocol {peer_version}, {} bytes)",
            bytes.len()
        ));
    }
    Ok((decoded, (bytes.len() + frame_header_bytes) as u64))
}

pub fn mix(hash: u64, value: u64) -> u64 {
    (hash ^ value)
        .wrapping_mul(0x0100_0000_01b3)
        .rotate_left(17)
}

/// `day d hh:mm:ss.mmm` of virtual time since the start.
pub fn clock_text(now_ms: u64) -> String {
    let t = now_ms.saturating_sub(epoch_ms);
    let (ms, s) = (t % 1000, t / 1000);
    format!("{:02}:{:02}:{:02}.{ms:03}", s / 3600, (s / 60) % 60, s % 60)
}

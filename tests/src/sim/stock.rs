//! Stock and transfers in the simulation. Each store writes the movements of its own goods
//! the way `store-node` does: a sale batch with every checkout (a bundle line as its
//! components), a sale-return batch with every refund, receipts, returns to suppliers and
//! damage; transfers asked for by a store or by HQ, shipped by the source and received by the
//! destination (sometimes short, sometimes before the shipment has reached it by sync);
//! stocktakes whose counts record the stock expected at that moment. The hub relays stock only
//! to the stores it concerns (`Op::concerns`), as `hq-hub` does.
//!
//! The checker keeps the physical truth next to the books: what is on each store's shelves,
//! units lost without a movement (shrinkage, which only a count finds), and what is on the road
//! for each transfer (units lost there show as the receipt's discrepancy). Checks:
//! - at a store, at all times: its books (the stock its replica folds) minus its shelves equal
//!   the units lost that no finished count has found yet; a stocktake adjustment is therefore
//!   right only if it is counted − expected at the moment of counting, whatever was sold or
//!   received between the count and the finish;
//! - after each heal, on every replica: the stock it shows (kept incrementally as the
//!   projection does) equals the core's from-scratch fold of the movements it holds
//!   (`StockState::fold`); at the hub, stock equals the sum of the movements cashiers were told
//!   were written; each store's scope (its movements and levels, the transfers it is an end of,
//!   what is in transit and the discrepancies) is the same at the store and at the hub (live
//!   and rebuilt from scratch), and in transit and discrepancies match what happened on the
//!   road; a store holds every stock operation that concerns it and none that does not.
//!
//! Hooks: `Projection::apply` hands stock operations to [`Stock::apply`]; `command` calls
//! [`World::stock_command`]; `finish_checkout` and `refund` call [`World::sale_stock_op`] /
//! [`World::sale_return_stock_op`] and [`World::stock_committed`]; `hq_writes` calls
//! [`World::hq_transfer`]; `check_converged` calls [`World::check_stock`].

use std::collections::{BTreeMap, BTreeSet};

use chainsync_core::op::{Envelope, OpV1};
use chainsync_core::stock::{
    Movement, MovementBatch, MovementKind, StockState, TransferEnds, TransferRequest,
};
use chainsync_core::{IdGenerator, StoreId};
use uuid::Uuid;

use super::replica::Projection;
use super::world::World;

/// Plain SKUs the stores stock (the cashier's catalogue, bundles excepted).
const stocked: [&str; 8] = ["A1", "A2", "B1", "B2", "C1", "C2", "D1", "D2"];

/// The bundles (套餐) the cashiers sell: SKU → components and units per bundle.
pub fn bundle_components(sku: &str) -> Option<&'static [(&'static str, i64)]> {
    match sku {
        "S1" => Some(&[("A1", 1), ("A2", 2)]),
        _ => None,
    }
}

/// Counters for the report.
#[derive(Clone, Copy, Debug, Default)]
pub struct StockReport {
    pub movements: u64,
    pub sale_batches: u64,
    pub bundle_lines: u64,
    pub sale_returns: u64,
    pub receipts: u64,
    pub damages: u64,
    pub transfers_requested_by_stores: u64,
    pub transfers_requested_by_hq: u64,
    pub shipped: u64,
    pub received: u64,
    pub received_short: u64,
    /// Received before the source's shipment had reached the destination by sync.
    pub received_before_shipment_arrived: u64,
    pub counts: u64,
    pub stocktakes_finished: u64,
    /// Counted SKUs whose books moved between the count and the finish (sales, receipts).
    pub moved_during_count: u64,
    pub adjustments: u64,
}

impl StockReport {
    pub fn add(&mut self, other: &StockReport) {
        self.movements += other.movements;
        self.sale_batches += other.sale_batches;
        self.bundle_lines += other.bundle_lines;
        self.sale_returns += other.sale_returns;
        self.receipts += other.receipts;
        self.damages += other.damages;
        self.transfers_requested_by_stores += other.transfers_requested_by_stores;
        self.transfers_requested_by_hq += other.transfers_requested_by_hq;
        self.shipped += other.shipped;
        self.received += other.received;
        self.received_short += other.received_short;
        self.received_before_shipment_arrived += other.received_before_shipment_arrived;
        self.counts += other.counts;
        self.stocktakes_finished += other.stocktakes_finished;
        self.moved_during_count += other.moved_during_count;
        self.adjustments += other.adjustments;
    }
}

/// A transfer as one replica knows it (through its request and its movements).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferSeen {
    pub ends: Option<(StoreId, StoreId)>,
    /// Who asked for it (the first request held wins; there is one per transfer).
    pub requested_by: Option<StoreId>,
    pub requested: BTreeMap<String, i64>,
    pub shipped: BTreeMap<String, i64>,
    pub received: BTreeMap<String, i64>,
    pub shipped_seen: bool,
    pub received_seen: bool,
}

/// Stock state of one replica: a function of the set of operations it holds, kept
/// incrementally as `chainsync-replica` keeps its stock tables.
#[derive(Clone, Debug, Default)]
pub struct Stock {
    pub movements: BTreeMap<Uuid, Movement>,
    pub levels: BTreeMap<(StoreId, String), i64>,
    pub transfers: BTreeMap<Uuid, TransferSeen>,
    /// Sale movements by checkout (what a refund gives back): checkout → (sku, delta), with
    /// the store whose goods they are.
    pub sales: BTreeMap<Uuid, (StoreId, Vec<(String, i64)>)>,
}

/// One store's scope as a replica holds it (equal wherever it is held, once converged).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub movements: BTreeMap<Uuid, Movement>,
    pub levels: BTreeMap<String, i64>,
    pub transfers: BTreeMap<Uuid, TransferSeen>,
    pub in_transit: BTreeMap<String, i64>,
    pub discrepancies: Vec<(Uuid, String, i64)>,
}

impl Stock {
    /// Project a stock operation, checked as `chainsync-replica` checks it on apply.
    pub fn apply(&mut self, origin: &StoreId, op: &OpV1) -> Result<(), String> {
        match op {
            OpV1::StockMovements(batch) => {
                batch
                    .check()
                    .map_err(|e| format!("stock batch {}: {e}", batch.id))?;
                if batch.store != *origin {
                    return Err(format!(
                        "stock batch {} of {} written by {origin}",
                        batch.id, batch.store
                    ));
                }
                if let Some(ends) = &batch.transfer {
                    self.transfers.entry(ends.id).or_default().ends =
                        Some((ends.from.clone(), ends.to.clone()));
                }
                for m in &batch.movements {
                    if self.movements.insert(m.id, m.clone()).is_some() {
                        continue;
                    }
                    *self
                        .levels
                        .entry((m.store.clone(), m.sku.clone()))
                        .or_insert(0) += m.delta;
                    if m.kind == MovementKind::Sale
                        && let Some(checkout) = batch.cause
                    {
                        self.sales
                            .entry(checkout)
                            .or_insert_with(|| (m.store.clone(), Vec::new()))
                            .1
                            .push((m.sku.clone(), m.delta));
                    }
                    let Some(transfer) = m.transfer else {
                        continue;
                    };
                    let seen = self.transfers.entry(transfer).or_default();
                    match m.kind {
                        MovementKind::TransferOut => {
                            seen.shipped_seen = true;
                            *seen.shipped.entry(m.sku.clone()).or_insert(0) -= m.delta;
                        }
                        MovementKind::TransferIn => {
                            seen.received_seen = true;
                            *seen.received.entry(m.sku.clone()).or_insert(0) += m.delta;
                        }
                        _ => {}
                    }
                }
                Ok(())
            }
            OpV1::TransferRequest(request) => {
                request
                    .check()
                    .map_err(|e| format!("transfer request {}: {e}", request.ends.id))?;
                let ends = &request.ends;
                if *origin != ends.from && *origin != ends.to && *origin != StoreId::hub() {
                    return Err(format!(
                        "transfer {} asked for by {origin}, not an end",
                        ends.id
                    ));
                }
                let seen = self.transfers.entry(ends.id).or_default();
                seen.ends = Some((ends.from.clone(), ends.to.clone()));
                if seen.requested_by.is_none() {
                    seen.requested_by = Some(origin.clone());
                    seen.requested = request.lines.iter().cloned().collect();
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub fn level(&self, store: &StoreId, sku: &str) -> i64 {
        self.levels
            .get(&(store.clone(), sku.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// The incremental state against the core's fold of the movements held, from scratch.
    pub fn check_fold(&self, who: &str) -> Result<(), String> {
        let fold = StockState::fold(self.movements.values());
        if fold.levels != self.levels {
            let differing = fold
                .levels
                .iter()
                .find(|(key, qty)| self.levels.get(*key) != Some(*qty))
                .map(|(key, qty)| format!("{key:?}: fold {qty}, shown {:?}", self.levels.get(key)));
            return Err(format!(
                "{who}: stock shown differs from the fold of its movements ({})",
                differing.unwrap_or_else(|| "a level only in what is shown".into())
            ));
        }
        for (id, seen) in &self.transfers {
            let lines = fold.transfers.get(id);
            let shipped: BTreeMap<String, i64> = lines
                .map(|l| l.iter().map(|(s, q)| (s.clone(), q.shipped)).collect())
                .unwrap_or_default();
            let received: BTreeMap<String, i64> = lines
                .map(|l| l.iter().map(|(s, q)| (s.clone(), q.received)).collect())
                .unwrap_or_default();
            let nonzero = |map: &BTreeMap<String, i64>| -> BTreeMap<String, i64> {
                map.iter()
                    .filter(|(_, q)| **q != 0)
                    .map(|(s, q)| (s.clone(), *q))
                    .collect()
            };
            if nonzero(&shipped) != nonzero(&seen.shipped)
                || nonzero(&received) != nonzero(&seen.received)
                || fold.received.contains(id) != seen.received_seen
            {
                return Err(format!(
                    "{who}: transfer {id} shows {seen:?} but its movements fold to shipped \
                     {shipped:?}, received {received:?}"
                ));
            }
        }
        Ok(())
    }

    /// `store`'s scope: its movements and levels, the transfers it is an end of, and what the
    /// core's fold of those transfers' movements says is in transit and missing.
    pub fn scope(&self, store: &StoreId) -> Scope {
        let movements: BTreeMap<Uuid, Movement> = self
            .movements
            .iter()
            .filter(|(_, m)| m.store == *store)
            .map(|(id, m)| (*id, m.clone()))
            .collect();
        let levels = self
            .levels
            .iter()
            .filter(|((s, _), _)| s == store)
            .map(|((_, sku), qty)| (sku.clone(), *qty))
            .collect();
        let transfers: BTreeMap<Uuid, TransferSeen> = self
            .transfers
            .iter()
            .filter(|(_, t)| {
                t.ends
                    .as_ref()
                    .is_some_and(|(f, to)| f == store || to == store)
            })
            .map(|(id, t)| (*id, t.clone()))
            .collect();
        let fold = StockState::fold(
            self.movements
                .values()
                .filter(|m| m.transfer.is_some_and(|t| transfers.contains_key(&t))),
        );
        Scope {
            movements,
            levels,
            transfers,
            in_transit: fold.in_transit(),
            discrepancies: fold.discrepancies(),
        }
    }
}

/// An open stocktake at a store (its own tables in `store-node`: durable, not replicated).
#[derive(Clone, Debug, Default)]
struct CountSession {
    id: Uuid,
    /// SKU → count.
    counts: BTreeMap<String, Count>,
}

#[derive(Clone, Copy, Debug)]
struct Count {
    counted: i64,
    expected: i64,
    /// Units lost unseen at that moment (what this count finds).
    unrecorded: i64,
}

/// Goods shipped on a transfer, on the road until received.
#[derive(Clone, Debug, Default)]
struct Road {
    from: usize,
    to: usize,
    shipped: BTreeMap<String, i64>,
    /// Units that will not arrive (shown as the receipt's discrepancy).
    lost: BTreeMap<String, i64>,
    received: bool,
}

/// The physical side the checker keeps (nothing here is visible to the nodes).
#[derive(Default)]
pub struct StockWorld {
    /// Store index → SKU → units on its shelves.
    shelves: BTreeMap<usize, BTreeMap<String, i64>>,
    /// Units gone from a store's shelves without a movement, not yet found by a count.
    unrecorded: BTreeMap<(usize, String), i64>,
    sessions: BTreeMap<usize, CountSession>,
    road: BTreeMap<Uuid, Road>,
    /// HQ's ids for the transfers it asks for.
    hq_ids: IdGenerator,
}

impl StockWorld {
    fn shelf(&mut self, store: usize, sku: &str, delta: i64) {
        *self
            .shelves
            .entry(store)
            .or_default()
            .entry(sku.to_owned())
            .or_insert(0) += delta;
    }
}

/// (sku, delta) lines merged by SKU, zeros dropped (as `store-node`'s `write_batch`).
fn merged(deltas: impl IntoIterator<Item = (String, i64)>) -> BTreeMap<String, i64> {
    let mut out: BTreeMap<String, i64> = BTreeMap::new();
    for (sku, delta) in deltas {
        *out.entry(sku).or_insert(0) += delta;
    }
    out.retain(|_, delta| *delta != 0);
    out
}

/// Whether `store` should hold `envelope` (its own, or one that concerns it).
pub fn concerns(store: &StoreId, envelope: &Envelope) -> bool {
    envelope.origin == *store || envelope.op.concerns_store(store)
}

impl World {
    /// A movement batch of this store's own goods (None when nothing moves).
    fn stock_batch(
        &mut self,
        store: usize,
        kind: MovementKind,
        deltas: &BTreeMap<String, i64>,
        transfer: Option<TransferEnds>,
        cause: Option<Uuid>,
    ) -> Option<OpV1> {
        if deltas.is_empty() {
            return None;
        }
        let id = self.new_id(store);
        let holder = self.nodes[store].id.clone();
        let mut movements = Vec::with_capacity(deltas.len());
        for (sku, delta) in deltas {
            movements.push(Movement {
                id: self.new_id(store),
                store: holder.clone(),
                sku: sku.clone(),
                delta: *delta,
                kind,
                transfer: transfer.as_ref().map(|t| t.id),
                reason: None,
            });
        }
        self.report.stock.movements += movements.len() as u64;
        Some(OpV1::StockMovements(MovementBatch {
            id,
            store: holder,
            transfer,
            movements,
            cause,
            at_ms: self.nodes[store].physical_ms(self.now_ms),
        }))
    }

    /// The sale movements of a checkout: one per SKU, bundles as their components.
    pub fn sale_stock_op(
        &mut self,
        store: usize,
        checkout: Uuid,
        lines: &[(String, i64)],
    ) -> Option<OpV1> {
        let mut deltas = Vec::new();
        for (sku, qty) in lines {
            match bundle_components(sku) {
                Some(components) => {
                    self.report.stock.bundle_lines += 1;
                    for (component, per_unit) in components {
                        deltas.push(((*component).to_owned(), -qty * per_unit));
                    }
                }
                None => deltas.push((sku.clone(), -qty)),
            }
        }
        let deltas = merged(deltas);
        self.report.stock.sale_batches += 1;
        self.stock_batch(store, MovementKind::Sale, &deltas, None, Some(checkout))
    }

    /// The sale-return movements of a refund of a whole sale this store holds the stock of.
    pub fn sale_return_stock_op(&mut self, store: usize, sale: Uuid, refund: Uuid) -> Option<OpV1> {
        let (holder, sold) = self.nodes[store]
            .replica
            .proj
            .stock
            .sales
            .get(&sale)?
            .clone();
        if holder != self.nodes[store].id {
            // Another store's sale (`--cross-store-refunds`): its goods are not ours.
            return None;
        }
        let deltas = merged(sold.into_iter().map(|(sku, delta)| (sku, -delta)));
        self.report.stock.sale_returns += 1;
        self.stock_batch(store, MovementKind::SaleReturn, &deltas, None, Some(refund))
    }

    /// The goods follow what was committed: every movement of `store`'s own goods in
    /// `written` moves its shelves the same way (a sale leaves with the customer, a receipt
    /// arrives, a shipment leaves for the road, a receipt of a transfer arrives from it).
    pub fn stock_committed(&mut self, store: usize, written: &[Envelope]) -> Result<(), String> {
        for envelope in written {
            let chainsync_core::op::Op::V1(OpV1::StockMovements(batch)) = &envelope.op else {
                continue;
            };
            if batch
                .movements
                .iter()
                .any(|m| m.kind == MovementKind::Stocktake)
            {
                // An adjustment moves books, not goods.
                continue;
            }
            for m in &batch.movements {
                self.stock.shelf(store, &m.sku, m.delta);
            }
        }
        self.check_books(store)
    }

    /// A store's books minus its shelves are the units lost that no count has found yet.
    fn check_books(&self, store: usize) -> Result<(), String> {
        let node = &self.nodes[store];
        let empty = BTreeMap::new();
        let shelves = self.stock.shelves.get(&store).unwrap_or(&empty);
        let mut skus: BTreeSet<&str> = shelves.keys().map(String::as_str).collect();
        skus.extend(
            node.replica
                .proj
                .stock
                .levels
                .keys()
                .filter(|(s, _)| *s == node.id)
                .map(|(_, sku)| sku.as_str()),
        );
        for sku in skus {
            let books = node.replica.proj.stock.level(&node.id, sku);
            let shelf = shelves.get(sku).copied().unwrap_or(0);
            let unrecorded = self
                .stock
                .unrecorded
                .get(&(store, sku.to_owned()))
                .copied()
                .unwrap_or(0);
            if books - shelf != unrecorded {
                return Err(format!(
                    "{}: books say {books} of {sku}, {shelf} on the shelves, but only \
                     {unrecorded} went missing unseen (a stocktake adjustment was wrong?)",
                    node.id
                ));
            }
        }
        Ok(())
    }

    /// A store manager's stock command (the store is up).
    pub fn stock_command(&mut self, store: usize) -> Result<(), String> {
        match self.rng.below(100) {
            0..=24 => self.receipt(store, MovementKind::Receipt),
            25..=29 => self.receipt(store, MovementKind::Damage),
            30..=32 => self.receipt(store, MovementKind::SupplierReturn),
            33..=39 => {
                // Something goes missing without anyone writing it down.
                let sku = stocked[self.rng.index(stocked.len())];
                let units = self.rng.range(1, 3) as i64;
                self.stock.shelf(store, sku, -units);
                *self
                    .stock
                    .unrecorded
                    .entry((store, sku.to_owned()))
                    .or_insert(0) += units;
                Ok(())
            }
            40..=49 => self.store_transfer_request(store),
            50..=64 => self.ship(store),
            65..=82 => self.receive(store),
            _ => self.stocktake_step(store),
        }
    }

    fn receipt(&mut self, store: usize, kind: MovementKind) -> Result<(), String> {
        let lines = if kind == MovementKind::Receipt {
            self.rng.range(1, 3)
        } else {
            1
        };
        let mut deltas = Vec::new();
        for _ in 0..lines {
            let sku = stocked[self.rng.index(stocked.len())];
            let qty = if kind == MovementKind::Receipt {
                self.rng.range(5, 40) as i64
            } else {
                -(self.rng.range(1, 3) as i64)
            };
            deltas.push((sku.to_owned(), qty));
        }
        let deltas = merged(deltas);
        let Some(op) = self.stock_batch(store, kind, &deltas, None, None) else {
            return Ok(());
        };
        let written = self.commit(store, vec![op])?;
        match kind {
            MovementKind::Receipt => self.report.stock.receipts += 1,
            _ => self.report.stock.damages += 1,
        }
        self.log(|| format!("s{store}: {kind:?} {deltas:?}"));
        self.stock_committed(store, &written)
    }

    fn transfer_request(
        &mut self,
        from: usize,
        to: usize,
        id: Uuid,
        at_ms: u64,
    ) -> TransferRequest {
        let mut lines = BTreeMap::new();
        for _ in 0..self.rng.range(1, 2) {
            let sku = stocked[self.rng.index(stocked.len())];
            lines.insert(sku.to_owned(), self.rng.range(1, 12) as i64);
        }
        TransferRequest {
            ends: TransferEnds {
                id,
                from: self.nodes[from].id.clone(),
                to: self.nodes[to].id.clone(),
            },
            lines: lines.into_iter().collect(),
            note: None,
            at_ms,
        }
    }

    /// This store asks another for goods, or offers some.
    fn store_transfer_request(&mut self, store: usize) -> Result<(), String> {
        if self.nodes.len() < 2 {
            return Ok(());
        }
        let other = (store + 1 + self.rng.index(self.nodes.len() - 1)) % self.nodes.len();
        let (from, to) = if self.rng.chance(700) {
            (other, store)
        } else {
            (store, other)
        };
        let id = self.new_id(store);
        let at_ms = self.nodes[store].physical_ms(self.now_ms);
        let request = self.transfer_request(from, to, id, at_ms);
        self.commit(store, vec![OpV1::TransferRequest(request)])?;
        self.report.stock.transfers_requested_by_stores += 1;
        self.log(|| format!("s{store}: asks for transfer {id} s{from}→s{to}"));
        Ok(())
    }

    /// HQ asks one store to send goods to another (written at the hub, origin `hq`).
    pub fn hq_transfer(&mut self) -> Result<(), String> {
        if self.nodes.len() < 2 || !self.rng.chance(600) {
            return Ok(());
        }
        let from = self.rng.index(self.nodes.len());
        let to = (from + 1 + self.rng.index(self.nodes.len() - 1)) % self.nodes.len();
        let random = self.rng.bytes10();
        let id = self.stock.hq_ids.next(self.now_ms, random);
        let request = self.transfer_request(from, to, id, self.now_ms);
        self.hub.write_hq(OpV1::TransferRequest(request))?;
        self.report.stock.transfers_requested_by_hq += 1;
        self.log(|| format!("hq: asks for transfer {id} s{from}→s{to}"));
        Ok(())
    }

    /// Ship a transfer this store is the source of, asked for and not yet shipped (as this
    /// store sees it: only it ships, so it sees its own shipment).
    fn ship(&mut self, store: usize) -> Result<(), String> {
        let me = self.nodes[store].id.clone();
        let candidates: Vec<(Uuid, StoreId, BTreeMap<String, i64>)> = self.nodes[store]
            .replica
            .proj
            .stock
            .transfers
            .iter()
            .filter(|(_, t)| !t.shipped_seen && t.requested_by.is_some())
            .filter_map(|(id, t)| {
                let (from, to) = t.ends.as_ref()?;
                (*from == me).then(|| (*id, to.clone(), t.requested.clone()))
            })
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let (id, to_id, requested) = candidates[self.rng.index(candidates.len())].clone();
        let Some(to) = self.nodes.iter().position(|n| n.id == to_id) else {
            return Err(format!("transfer {id} to unknown store {to_id}"));
        };
        // Now and then less than asked for goes out.
        let mut shipped = BTreeMap::new();
        for (sku, qty) in requested {
            let qty = if self.rng.chance(150) {
                self.rng.range(1, qty as u64) as i64
            } else {
                qty
            };
            shipped.insert(sku, qty);
        }
        let ends = TransferEnds {
            id,
            from: me,
            to: to_id,
        };
        let deltas: BTreeMap<String, i64> = shipped
            .iter()
            .map(|(sku, qty)| (sku.clone(), -qty))
            .collect();
        let Some(op) =
            self.stock_batch(store, MovementKind::TransferOut, &deltas, Some(ends), None)
        else {
            return Ok(());
        };
        let written = self.commit(store, vec![op])?;
        // Some units will not make it (broken, lost): the receipt shows them missing.
        let mut lost = BTreeMap::new();
        for (sku, qty) in &shipped {
            if self.rng.chance(200) {
                lost.insert(sku.clone(), (self.rng.range(1, 2) as i64).min(*qty));
            }
        }
        self.stock.road.insert(
            id,
            Road {
                from: store,
                to,
                shipped,
                lost,
                received: false,
            },
        );
        self.report.stock.shipped += 1;
        self.log(|| format!("s{store}: ships transfer {id}"));
        self.stock_committed(store, &written)
    }

    /// Receive a transfer this store is the destination of whose goods are here: shipped by
    /// the source (the goods came with their papers, whether or not the shipment has reached
    /// this store by sync), not yet received. What arrived is written, short if some was lost.
    fn receive(&mut self, store: usize) -> Result<(), String> {
        let me = self.nodes[store].id.clone();
        let known = &self.nodes[store].replica.proj.stock.transfers;
        let candidates: Vec<Uuid> = self
            .stock
            .road
            .iter()
            .filter(|(id, road)| {
                road.to == store
                    && !road.received
                    && known
                        .get(*id)
                        .is_some_and(|t| !t.received_seen && t.ends.is_some())
            })
            .map(|(id, _)| *id)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let id = candidates[self.rng.index(candidates.len())];
        let Some(road) = self.stock.road.get(&id).cloned() else {
            return Ok(());
        };
        let shipment_here = known.get(&id).is_some_and(|t| t.shipped_seen);
        let arrived: BTreeMap<String, i64> = road
            .shipped
            .iter()
            .map(|(sku, qty)| (sku.clone(), qty - road.lost.get(sku).copied().unwrap_or(0)))
            .collect();
        let mut deltas = arrived.clone();
        deltas.retain(|_, qty| *qty > 0);
        let ends = TransferEnds {
            id,
            from: self.nodes[road.from].id.clone(),
            to: me,
        };
        let Some(op) = self.stock_batch(store, MovementKind::TransferIn, &deltas, Some(ends), None)
        else {
            // Everything was lost on the way: nothing to receive (the source's shipment
            // stays in transit, as at the store, which needs at least one unit).
            return Ok(());
        };
        let written = self.commit(store, vec![op])?;
        if let Some(road) = self.stock.road.get_mut(&id) {
            road.received = true;
        }
        self.report.stock.received += 1;
        if !road.lost.is_empty() {
            self.report.stock.received_short += 1;
        }
        if !shipment_here {
            self.report.stock.received_before_shipment_arrived += 1;
        }
        self.log(|| format!("s{store}: receives transfer {id}: {arrived:?}"));
        self.stock_committed(store, &written)
    }

    /// A stocktake: open one, count a few SKUs (each against the books at that moment), or
    /// finish (one stocktake movement per SKU of counted − expected).
    fn stocktake_step(&mut self, store: usize) -> Result<(), String> {
        let Some(session) = self.stock.sessions.get(&store).cloned() else {
            let id = self.new_id(store);
            self.stock.sessions.insert(
                store,
                CountSession {
                    id,
                    counts: BTreeMap::new(),
                },
            );
            self.log(|| format!("s{store}: stocktake {id} opens"));
            return Ok(());
        };
        if session.counts.is_empty() || self.rng.chance(400) {
            let me = self.nodes[store].id.clone();
            // Half the time the manager counts where something went missing.
            let missing: Vec<String> = self
                .stock
                .unrecorded
                .iter()
                .filter(|((at, _), units)| *at == store && **units != 0)
                .map(|((_, sku), _)| sku.clone())
                .collect();
            for _ in 0..self.rng.range(1, 3) {
                let sku = if !missing.is_empty() && self.rng.chance(500) {
                    missing[self.rng.index(missing.len())].as_str()
                } else {
                    stocked[self.rng.index(stocked.len())]
                };
                let expected = self.nodes[store].replica.proj.stock.level(&me, sku);
                let counted = self
                    .stock
                    .shelves
                    .get(&store)
                    .and_then(|s| s.get(sku))
                    .copied()
                    .unwrap_or(0);
                let unrecorded = self
                    .stock
                    .unrecorded
                    .get(&(store, sku.to_owned()))
                    .copied()
                    .unwrap_or(0);
                if let Some(open) = self.stock.sessions.get_mut(&store) {
                    open.counts.insert(
                        sku.to_owned(),
                        Count {
                            counted,
                            expected,
                            unrecorded,
                        },
                    );
                }
                self.report.stock.counts += 1;
            }
            return Ok(());
        }
        // Finish.
        let me = self.nodes[store].id.clone();
        let mut deltas = BTreeMap::new();
        for (sku, count) in &session.counts {
            if self.nodes[store].replica.proj.stock.level(&me, sku) != count.expected {
                self.report.stock.moved_during_count += 1;
            }
            let adjustment =
                chainsync_core::stock::stocktake_adjustment(count.counted, count.expected);
            if adjustment != 0 {
                deltas.insert(sku.clone(), adjustment);
            }
        }
        let op = self.stock_batch(
            store,
            MovementKind::Stocktake,
            &deltas,
            None,
            Some(session.id),
        );
        if let Some(op) = op {
            self.commit(store, vec![op])?;
            self.report.stock.adjustments += deltas.len() as u64;
        }
        self.stock.sessions.remove(&store);
        for (sku, count) in &session.counts {
            // What this count found is no longer unseen.
            *self
                .stock
                .unrecorded
                .entry((store, sku.clone()))
                .or_insert(0) -= count.unrecorded;
        }
        self.report.stock.stocktakes_finished += 1;
        self.log(|| format!("s{store}: stocktake {} finished: {deltas:?}", session.id));
        self.check_books(store)
    }

    /// After a heal, on the converged chain (see the module doc).
    pub fn check_stock(&self, hub_scratch: &Projection) -> Result<(), String> {
        let hub = &self.hub.proj.stock;
        hub.check_fold("hub")?;
        hub_scratch.stock.check_fold("hub (rebuilt)")?;
        if hub.levels != hub_scratch.stock.levels
            || hub.transfers != hub_scratch.stock.transfers
            || hub.movements != hub_scratch.stock.movements
        {
            return Err("hub: live stock differs from stock rebuilt from its operations".into());
        }
        // Stock is the sum of the movements cashiers and managers were told were written.
        let mut written: BTreeMap<(StoreId, String), i64> = BTreeMap::new();
        for envelope in self.oracle.acknowledged.values() {
            if let chainsync_core::op::Op::V1(OpV1::StockMovements(batch)) = &envelope.op {
                for m in &batch.movements {
                    *written.entry((m.store.clone(), m.sku.clone())).or_insert(0) += m.delta;
                }
            }
        }
        if written != hub.levels {
            return Err(format!(
                "hub: stock {:?} is not the sum of the movements written {written:?}",
                hub.levels
            ));
        }
        // What happened on the road is what the hub shows.
        for (id, road) in &self.stock.road {
            let Some(seen) = hub.transfers.get(id) else {
                return Err(format!(
                    "hub: transfer {id} was shipped but the hub lacks it"
                ));
            };
            let scope = hub.scope(&self.nodes[road.from].id);
            let missing: BTreeMap<String, i64> = scope
                .discrepancies
                .iter()
                .filter(|(t, _, _)| t == id)
                .map(|(_, sku, qty)| (sku.clone(), *qty))
                .collect();
            let expected_missing = if road.received {
                road.lost.clone()
            } else {
                BTreeMap::new()
            };
            if seen.shipped != road.shipped
                || seen.received_seen != road.received
                || missing != expected_missing
            {
                return Err(format!(
                    "hub: transfer {id} shows shipped {:?}, received {:?} (missing {missing:?}) \
                     but {:?} was shipped and {:?} lost on the road (received: {})",
                    seen.shipped, seen.received, road.shipped, road.lost, road.received
                ));
            }
        }
        for (index, node) in self.nodes.iter().enumerate() {
            let id = &node.id;
            let stock = &node.replica.proj.stock;
            if let Some(problem) = node.replica.proj.damaged.first() {
                return Err(format!(
                    "{id}: an operation it could not project: {problem}"
                ));
            }
            stock.check_fold(id.as_str())?;
            self.check_books(index)?;
            let here = stock.scope(id);
            for (what, other) in [
                ("hub", hub.scope(id)),
                ("rebuilt hub", hub_scratch.stock.scope(id)),
            ] {
                if here != other {
                    return Err(format!(
                        "{id}: its stock scope differs from the {what}'s: {}",
                        scope_difference(&here, &other)
                    ));
                }
            }
            // A store holds the stock operations that concern it, and no others.
            if let Some(envelope) = node
                .replica
                .mem
                .ops
                .values()
                .find(|envelope| !concerns(id, envelope))
            {
                return Err(format!(
                    "{id} holds operation {}/{} that does not concern it",
                    envelope.origin, envelope.seq
                ));
            }
            if let Some(m) = stock.movements.values().find(|m| {
                m.store != *id
                    && !m.transfer.is_some_and(|t| {
                        stock.transfers.get(&t).is_some_and(|seen| {
                            seen.ends
                                .as_ref()
                                .is_some_and(|(f, to)| f == id || to == id)
                        })
                    })
            }) {
                return Err(format!(
                    "{id} holds movement {} of {} that has nothing to do with it",
                    m.id, m.store
                ));
            }
        }
        Ok(())
    }
}

fn scope_difference(a: &Scope, b: &Scope) -> String {
    if a.movements != b.movements {
        return format!(
            "movements: {} here, {} there",
            a.movements.len(),
            b.movements.len()
        );
    }
    if a.levels != b.levels {
        return format!("levels {:?} ≠ {:?}", a.levels, b.levels);
    }
    if a.transfers != b.transfers {
        let id = a
            .transfers
            .iter()
            .find(|(id, t)| b.transfers.get(*id) != Some(*t))
            .map(|(id, _)| *id)
            .or_else(|| {
                b.transfers
                    .keys()
                    .find(|id| !a.transfers.contains_key(id))
                    .copied()
            });
        return format!(
            "transfer {id:?}: {:?} ≠ {:?}",
            id.and_then(|id| a.transfers.get(&id)),
            id.and_then(|id| b.transfers.get(&id))
        );
    }
    format!(
        "in transit {:?} ≠ {:?}, discrepancies {:?} ≠ {:?}",
        a.in_transit, b.in_transit, a.discrepancies, b.discrepancies
    )
}

//! The hub's side of the sync protocol over SQLite.
//!
//! Writes (ingesting a store's batch) go through one connection behind a mutex: one writer,
//! one transaction and one fsync per batch, acknowledged only after commit. Each session reads
//! the relay log through a read-only connection of its own.

use chainsync_core::allowance::{Decision, ReservationBook};
use chainsync_core::ledger::{Account, Balances, LedgerEntry};
use chainsync_core::op::{Envelope, Op, OpV1};
use chainsync_core::sync::{AuthorizeDecision, AuthorizeRequest, HubSide, RelayedOp};
use chainsync_core::{HlcTimestamp, StoreId};
use chainsync_replica::project;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum HubStorageError {
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("operation {origin}/{seq} cannot be applied: {reason}")]
    Invalid {
        origin: String,
        seq: u64,
        reason: String,
    },
    #[error("stored operation damaged: {0}")]
    Damaged(String),
    #[error("writer lock poisoned")]
    Poisoned,
}

pub struct SqliteHubSide {
    pub writer: Arc<Mutex<Connection>>,
    pub reader: Connection,
    /// The newest stretch of the relay log, decoded (shared by all sessions).
    pub relay_cache: Arc<crate::relay_cache::RelayCache>,
    /// Online grants waiting for their spends to arrive (shared by all sessions).
    pub reservations: Arc<Mutex<ReservationBook>>,
    /// Batches waiting for the writer (shared by all sessions).
    pub queue: Arc<IngestQueue>,
    /// Notified with the new log head after each ingest that added something.
    pub log_grew: tokio::sync::watch::Sender<u64>,
    /// Ledger entries acknowledged but not yet projected (shared by all sessions).
    pub projection: Arc<Projection>,
    pub now_ms: fn() -> u64,
}

pub fn log_head(conn: &Connection) -> rusqlite::Result<u64> {
    conn.prepare_cached("SELECT COALESCE(MAX(hub_seq), 0) FROM relay_log")?
        .query_row([], |row| row.get::<_, i64>(0))
        .map(|v| v.max(0) as u64)
}

pub fn acked_seq(conn: &Connection, store: &StoreId) -> rusqlite::Result<u64> {
    let found: Option<i64> = conn
        .prepare_cached("SELECT acked_seq FROM stores WHERE store_id = ?1")?
        .query_row([store.as_str()], |row| row.get(0))
        .optional()?;
    Ok(found.unwrap_or(0).max(0) as u64)
}

/// What an ingested batch touched: for releasing grants and refreshing exceptions.
#[derive(Default)]
pub struct Touched {
    pub members: BTreeSet<Uuid>,
    pub coupons: BTreeSet<String>,
    pub checkouts: BTreeSet<Uuid>,
    pub count_cards: BTreeSet<Uuid>,
}

impl Touched {
    /// A ledger entry whose projection is deferred: only its checkout now (its member is
    /// refreshed when it is projected).
    fn note_deferred(&mut self, entry: &LedgerEntry) {
        if let Some(checkout) = entry.checkout_id {
            self.checkouts.insert(checkout);
        }
    }

    fn note(&mut self, envelope: &Envelope) {
        match &envelope.op {
            Op::V1(OpV1::Ledger(entry)) => {
                self.members.insert(entry.member_id);
                if let Some(checkout) = entry.checkout_id {
                    self.checkouts.insert(checkout);
                }
            }
            Op::V1(OpV1::CouponRedeem(redemption)) => {
                self.coupons.insert(redemption.code.clone());
                self.checkouts.insert(redemption.checkout_id);
            }
            Op::V1(OpV1::Sale(sale)) => {
                self.checkouts.insert(sale.id);
            }
            Op::V1(OpV1::CountCardUse(card_use)) => {
                self.count_cards.insert(card_use.card_id);
            }
            Op::V1(OpV1::CountCardPurchase(card)) => {
                self.count_cards.insert(card.id);
            }
            Op::V1(OpV1::CountCardUseReversal(reversal)) => {
                self.count_cards.insert(reversal.card_id);
            }
            // A merge can put a group below zero.
            Op::V1(OpV1::MemberChange { member_id, .. }) => {
                self.members.insert(*member_id);
            }
            _ => {}
        }
    }

    /// Refresh the exception queue for what was touched (inside the ingest transaction).
    pub fn refresh_exceptions(&self, conn: &Connection, now_ms: u64) -> rusqlite::Result<()> {
        for member in &self.members {
            crate::exceptions::refresh_member(conn, *member, now_ms)?;
        }
        for code in &self.coupons {
            crate::exceptions::refresh_coupon(conn, code, now_ms)?;
        }
        for card in &self.count_cards {
            crate::exceptions::refresh_count_card(conn, *card, now_ms)?;
        }
        Ok(())
    }
}

/// Ingest one batch in one transaction. Duplicates are skipped; a gap stops the batch.
pub fn ingest(
    conn: &mut Connection,
    store: &StoreId,
    ops: &[Envelope],
    now_ms: u64,
) -> Result<(u64, bool), HubStorageError> {
    ingest_touching(conn, store, ops, now_ms).map(|(acked, grew, _)| (acked, grew))
}

/// [`ingest`], also saying what the batch touched.
pub fn ingest_touching(
    conn: &mut Connection,
    store: &StoreId,
    ops: &[Envelope],
    now_ms: u64,
) -> Result<(u64, bool, Touched), HubStorageError> {
    let transaction = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let result = ingest_in(&transaction, store, ops, &[], now_ms, false)?;
    transaction.commit()?;
    Ok((result.acked, result.grew, result.touched))
}

/// What [`ingest_in`] did.
struct Ingested {
    acked: u64,
    grew: bool,
    touched: Touched,
    /// New ledger entries recorded but not projected (when projection is deferred).
    deferred: Vec<Deferred>,
}

/// Ingest one batch inside the caller's transaction. With `defer_ledger`, a new ledger entry
/// is checked and recorded (operation log and relay log) but its projection is left to
/// [`project_pending`].
fn ingest_in(
    conn: &Connection,
    store: &StoreId,
    ops: &[Envelope],
    bodies: &[Option<Vec<u8>>],
    now_ms: u64,
    defer_ledger: bool,
) -> Result<Ingested, HubStorageError> {
    let mut touched = Touched::default();
    let mut deferred = Vec::new();
    let mut acked = acked_seq(conn, store)?;
    let start = acked;
    let hub = StoreId::hub();
    let invalid = |envelope: &Envelope, e: project::ApplyError| HubStorageError::Invalid {
        origin: envelope.origin.to_string(),
        seq: envelope.seq,
        reason: e.to_string(),
    };
    // Prepared once for the batch (the per-entry path of a deferred projection); the ops
    // statement is handed back to the cache before any other operation is applied (which
    // records itself through the same statement).
    let mut insert_op = None;
    let mut insert_relay =
        conn.prepare_cached("INSERT OR IGNORE INTO relay_log (origin, seq) VALUES (?1, ?2)")?;
    for (at, envelope) in ops.iter().enumerate() {
        if envelope.seq <= acked {
            continue;
        }
        if envelope.seq != acked + 1 {
            break;
        }
        if let (true, Op::V1(OpV1::Ledger(entry))) = (defer_ledger, &envelope.op) {
            project::check_remote(envelope).map_err(|e| invalid(envelope, e))?;
            let statement = match insert_op.as_mut() {
                Some(statement) => statement,
                None => insert_op.insert(conn.prepare_cached(project::insert_op_sql)?),
            };
            let new = match bodies.get(at).and_then(Option::as_deref) {
                Some(body) => project::insert_op_with(statement, envelope, body)?,
                None => project::insert_op_with(statement, envelope, &envelope.op.encode())?,
            };
            let logged = insert_relay.execute((envelope.origin.as_str(), envelope.seq as i64))?;
            if new {
                let hub_seq = if logged == 1 {
                    conn.last_insert_rowid()
                } else {
                    conn.prepare_cached(
                        "SELECT hub_seq FROM relay_log WHERE origin = ?1 AND seq = ?2",
                    )?
                    .query_row((envelope.origin.as_str(), envelope.seq as i64), |row| {
                        row.get(0)
                    })?
                };
                deferred.push(Deferred::of(hub_seq.max(0) as u64, entry));
            }
            touched.note_deferred(entry);
            acked += 1;
            continue;
        }
        insert_op = None;
        let before = crate::reports::index::before_apply(conn, envelope)?;
        let new =
            project::apply_remote(conn, &hub, envelope).map_err(|e| HubStorageError::Invalid {
                origin: envelope.origin.to_string(),
                seq: envelope.seq,
                reason: e.to_string(),
            })?;
        if new {
            crate::reports::index::after_apply(conn, envelope, before)?;
        }
        insert_relay.execute((envelope.origin.as_str(), envelope.seq as i64))?;
        touched.note(envelope);
        acked += 1;
    }
    touched.refresh_exceptions(conn, now_ms)?;
    conn.prepare_cached("UPDATE stores SET acked_seq = ?2, last_seen_ms = ?3 WHERE store_id = ?1")?
        .execute((store.as_str(), acked as i64, now_ms as i64))?;
    Ok(Ingested {
        acked,
        grew: acked > start,
        touched,
        deferred,
    })
}

type IngestResult = Result<(u64, bool, Touched), String>;

struct IngestJob {
    store: StoreId,
    ops: Vec<Envelope>,
    /// The ledger operations encoded for the operation log, by position in `ops` (done by
    /// the session before it queues, so that the one writer does not).
    bodies: Vec<Option<Vec<u8>>>,
    reply: std::sync::mpsc::Sender<IngestResult>,
}

/// Batches waiting for the writer. Whoever holds the writer lock commits every waiting batch
/// (of any store) in one transaction: one fsync for many stores.
#[derive(Default)]
pub struct IngestQueue {
    pending: Mutex<Vec<IngestJob>>,
    /// Relay cursors stores acknowledged, by store (cursor, when), not written yet. They only
    /// feed HQ's view of each store's lag (a store says its cursor again in every `Hello`), so
    /// they wait for whoever holds the writer next instead of a commit (and an fsync) each.
    relay_acks: Mutex<HashMap<StoreId, (u64, u64)>>,
}

type RelayAcks = HashMap<StoreId, (u64, u64)>;

impl IngestQueue {
    fn note_relay_acked(
        &self,
        store: &StoreId,
        cursor: u64,
        now_ms: u64,
    ) -> Result<(), HubStorageError> {
        let mut acks = self
            .relay_acks
            .lock()
            .map_err(|_| HubStorageError::Poisoned)?;
        let ack = acks.entry(store.clone()).or_insert((cursor, now_ms));
        *ack = (ack.0.max(cursor), now_ms);
        Ok(())
    }

    fn take_relay_acks(&self) -> Result<RelayAcks, HubStorageError> {
        Ok(std::mem::take(
            &mut *self
                .relay_acks
                .lock()
                .map_err(|_| HubStorageError::Poisoned)?,
        ))
    }

    /// Write the relay cursors noted so far (the caller holds the writer).
    pub fn write_relay_acks(&self, conn: &Connection) -> Result<(), HubStorageError> {
        let acks = self.take_relay_acks()?;
        if acks.is_empty() {
            return Ok(());
        }
        let transaction = conn.unchecked_transaction()?;
        write_relay_acks_in(&transaction, &acks)?;
        transaction.commit()?;
        Ok(())
    }
}

fn write_relay_acks_in(conn: &Connection, acks: &RelayAcks) -> rusqlite::Result<()> {
    let mut update = conn.prepare_cached(
        "UPDATE stores SET relay_acked = MAX(relay_acked, ?2), last_seen_ms = MAX(last_seen_ms, ?3)
         WHERE store_id = ?1",
    )?;
    for (store, (cursor, now_ms)) in acks {
        update.execute((store.as_str(), *cursor as i64, *now_ms as i64))?;
    }
    Ok(())
}

/// Ingest through the queue: group-committed with the batches of other sessions. With
/// `projection`, ledger entries are acknowledged once recorded and projected later
/// ([`Projection`]); without, everything is projected before the commit.
///
/// The group runs first without savepoints (the common case: every batch is fine); if one
/// batch fails, the group is rolled back and run again with each batch in its own savepoint,
/// so that the failing batch alone is refused.
pub fn ingest_grouped(
    writer: &Mutex<Connection>,
    queue: &IngestQueue,
    projection: Option<&Projection>,
    store: &StoreId,
    ops: &[Envelope],
    now_ms: u64,
) -> Result<(u64, bool, Touched), HubStorageError> {
    let (reply, answer) = std::sync::mpsc::channel();
    let bodies = match projection {
        Some(_) => ops
            .iter()
            .map(|envelope| match &envelope.op {
                Op::V1(OpV1::Ledger(_)) => Some(envelope.op.encode()),
                _ => None,
            })
            .collect(),
        None => Vec::new(),
    };
    queue
        .pending
        .lock()
        .map_err(|_| HubStorageError::Poisoned)?
        .push(IngestJob {
            store: store.clone(),
            ops: ops.to_vec(),
            bodies,
            reply,
        });
    let mut conn = writer.lock().map_err(|_| HubStorageError::Poisoned)?;
    // Another session may have committed our batch while we waited for the lock.
    if let Ok(result) = answer.try_recv() {
        return result.map_err(HubStorageError::Damaged);
    }
    let jobs: Vec<IngestJob> = std::mem::take(
        &mut *queue
            .pending
            .lock()
            .map_err(|_| HubStorageError::Poisoned)?,
    );
    let defer = projection.is_some();
    let relay_acks = queue.take_relay_acks()?;
    let mut deferred: Vec<Deferred> = Vec::new();
    // Fast path: the whole group in one transaction, no savepoints.
    let fast = (|| -> Result<Option<Vec<IngestResult>>, HubStorageError> {
        let transaction = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut results: Vec<IngestResult> = Vec::with_capacity(jobs.len());
        for job in &jobs {
            match ingest_in(
                &transaction,
                &job.store,
                &job.ops,
                &job.bodies,
                now_ms,
                defer,
            ) {
                Ok(done) => {
                    deferred.extend(done.deferred);
                    results.push(Ok((done.acked, done.grew, done.touched)));
                }
                // Rolled back when `transaction` drops; the slow path finds which batch.
                Err(_) => return Ok(None),
            }
        }
        write_relay_acks_in(&transaction, &relay_acks)?;
        transaction.commit()?;
        Ok(Some(results))
    })();
    let committed = match fast {
        Ok(Some(results)) => Ok(results),
        Ok(None) => {
            deferred.clear();
            (|| -> Result<Vec<IngestResult>, HubStorageError> {
                let mut transaction =
                    conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let mut results: Vec<IngestResult> = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    let savepoint = transaction.savepoint()?;
                    match ingest_in(&savepoint, &job.store, &job.ops, &job.bodies, now_ms, defer) {
                        Ok(done) => {
                            savepoint.commit()?;
                            deferred.extend(done.deferred);
                            results.push(Ok((done.acked, done.grew, done.touched)));
                        }
                        Err(e) => {
                            drop(savepoint);
                            results.push(Err(e.to_string()));
                        }
                    }
                }
                write_relay_acks_in(&transaction, &relay_acks)?;
                transaction.commit()?;
                Ok(results)
            })()
        }
        Err(e) => Err(e),
    };
    let results = match committed {
        Ok(results) => results,
        Err(e) => {
            let message = e.to_string();
            for job in jobs {
                let _ = job.reply.send(Err(message.clone()));
            }
            return Err(e);
        }
    };
    // Counted as unprojected before the writer is free (the projector needs the writer).
    if let Some(projection) = projection {
        projection.recorded(&deferred)?;
    }
    for (job, result) in jobs.into_iter().zip(results) {
        let _ = job.reply.send(result);
    }
    drop(conn);
    answer
        .recv()
        .map_err(|_| HubStorageError::Damaged("ingest answer lost".into()))?
        .map_err(HubStorageError::Damaged)
}

/// Most operations one projection transaction handles (the writer is held that long).
pub const projection_chunk_ops_max: usize = 2_048;
/// Most ledger entries acknowledged but not projected before the projector stops giving way
/// to ingest: HQ's reads (balances, exceptions, reports) lag at most that much.
pub const projection_backlog_max: usize = 100_000;
/// The projector projects once no batch was ingested for this long (or the backlog is full).
pub const projection_quiet_ms: u64 = 20;
/// How often an idle projector looks for work it was not told about.
pub const projection_idle_check_ms: u64 = 200;

/// Ledger entries acknowledged but not yet projected, by member: what the projection lacks.
///
/// Kept by relay-log position (`hub_seq`), because that is what the projector moves past; but two
/// positions may carry the same entry id (an id derived from the facts, e.g. a referral reward
/// or a points expiry written by two stores apart), and the projection keeps one row per id.
/// So the sums are made at decision time, once per entry id, leaving out ids already projected.
#[derive(Default, Debug)]
pub struct Unprojected {
    entries: Positions,
    /// Log positions by member.
    by_member: HashMap<Uuid, Vec<u64>>,
}

/// Entries by relay-log position. Positions are added in increasing order (the log's) and
/// the projector removes them in the same order, so a sorted queue (found by binary search,
/// removed ones left as gaps until they reach the front) does what a map would with no
/// hashing on the writer's path. It holds only ledger entries (and their gaps), however far
/// apart their positions are.
#[derive(Default, Debug)]
struct Positions {
    slots: std::collections::VecDeque<(u64, Option<Deferred>)>,
    /// How many slots hold an entry.
    held: usize,
}

impl Positions {
    /// False if the position already holds one.
    fn insert(&mut self, entry: Deferred) -> bool {
        let at = entry.hub_seq;
        if self.slots.back().is_none_or(|(last, _)| *last < at) {
            self.slots.push_back((at, Some(entry)));
        } else {
            match self.slots.binary_search_by_key(&at, |(p, _)| *p) {
                Ok(index) => match &mut self.slots[index].1 {
                    Some(_) => return false,
                    slot => *slot = Some(entry),
                },
                Err(index) => self.slots.insert(index, (at, Some(entry))),
            }
        }
        self.held += 1;
        true
    }

    fn get(&self, at: u64) -> Option<&Deferred> {
        let index = self.slots.binary_search_by_key(&at, |(p, _)| *p).ok()?;
        self.slots.get(index)?.1.as_ref()
    }

    fn remove(&mut self, at: u64) -> Option<Deferred> {
        let index = self.slots.binary_search_by_key(&at, |(p, _)| *p).ok()?;
        let entry = self.slots.get_mut(index)?.1.take()?;
        self.held -= 1;
        while let Some((_, None)) = self.slots.front() {
            self.slots.pop_front();
        }
        Some(entry)
    }
}

/// A ledger entry acknowledged and not projected, at its relay-log position.
#[derive(Clone, Copy, Debug)]
pub struct Deferred {
    hub_seq: u64,
    id: Uuid,
    member: Uuid,
    account: Account,
    amount: i64,
}

impl Deferred {
    fn of(hub_seq: u64, entry: &LedgerEntry) -> Deferred {
        Deferred {
            hub_seq,
            id: entry.id,
            member: entry.member_id,
            account: entry.account,
            amount: entry.amount,
        }
    }
}

impl Unprojected {
    pub fn len(&self) -> usize {
        self.entries.held
    }

    pub fn is_empty(&self) -> bool {
        self.entries.held == 0
    }

    fn add(&mut self, entry: Deferred) {
        if !self.entries.insert(entry) {
            return;
        }
        self.by_member
            .entry(entry.member)
            .or_default()
            .push(entry.hub_seq);
    }

    fn remove(&mut self, hub_seq: u64) {
        let Some(entry) = self.entries.remove(hub_seq) else {
            return;
        };
        if let Some(positions) = self.by_member.get_mut(&entry.member) {
            positions.retain(|&p| p != hub_seq);
            if positions.is_empty() {
                self.by_member.remove(&entry.member);
            }
        }
    }

    /// What the unprojected entries add to these members' balances: each entry id once, and
    /// none whose id `projected` says is already in the projection.
    pub fn balances_of(
        &self,
        members: &[Uuid],
        mut projected: impl FnMut(Uuid) -> Result<bool, HubStorageError>,
    ) -> Result<Balances, HubStorageError> {
        let mut total = Balances::default();
        let mut seen = std::collections::HashSet::new();
        for member in members {
            for key in self.by_member.get(member).into_iter().flatten() {
                let Some(entry) = self.entries.get(*key) else {
                    continue;
                };
                if !seen.insert(entry.id) || projected(entry.id)? {
                    continue;
                }
                add_to(&mut total, entry.account, entry.amount);
            }
        }
        Ok(total)
    }
}

fn add_to(balances: &mut Balances, account: Account, amount: i64) {
    match account {
        Account::Principal => balances.principal.0 = balances.principal.0.saturating_add(amount),
        Account::Bonus => balances.bonus.0 = balances.bonus.0.saturating_add(amount),
        Account::Points => balances.points = balances.points.saturating_add(amount),
    }
}

/// Deferred projection of ledger entries. A pushed ledger entry is acknowledged once it is
/// durable in the operation log and the relay log (checked, like every entry); its projection
/// (ledger row, member balance, exceptions, audit) is done by [`project_pending`], which walks
/// the relay log from a durable cursor (`projection_cursor`), so a crash loses nothing: the
/// hub projects what is left when it starts ([`project_all`]).
///
/// **Money rule**: whoever decides against balances (online authorization, HQ's manual
/// adjustments) reads them through [`balances_with_unprojected`], the projection plus the
/// entries acknowledged and not yet projected, under the same lock the projector holds across
/// its commit: an entry is always counted once, never zero times.
#[derive(Default)]
pub struct Projection {
    unprojected: Mutex<Unprojected>,
    /// Batches ingested so far (the projector waits for this to stand still).
    ingests: AtomicU64,
    work: Mutex<bool>,
    wake: Condvar,
}

impl Projection {
    /// Entries just committed unprojected (called under the writer lock).
    fn recorded(&self, entries: &[Deferred]) -> Result<(), HubStorageError> {
        self.ingests.fetch_add(1, Ordering::Relaxed);
        if entries.is_empty() {
            return Ok(());
        }
        let mut unprojected = self
            .unprojected
            .lock()
            .map_err(|_| HubStorageError::Poisoned)?;
        for entry in entries {
            unprojected.add(*entry);
        }
        drop(unprojected);
        if let Ok(mut work) = self.work.lock() {
            *work = true;
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Ledger entries acknowledged and not projected yet.
    pub fn backlog(&self) -> usize {
        self.unprojected.lock().map_or(0, |u| u.len())
    }

    fn wait_for_work(&self, timeout: std::time::Duration) {
        if let Ok(work) = self.work.lock()
            && let Ok((mut work, _)) = self.wake.wait_timeout_while(work, timeout, |w| !*w)
        {
            *work = false;
        }
    }
}

/// A member's balances (its whole group) as the acknowledged log has them: the projection
/// plus what [`Projection`] holds unprojected for the group's members.
pub fn balances_with_unprojected(
    conn: &Connection,
    projection: &Projection,
    member: uuid::Uuid,
) -> Result<Balances, HubStorageError> {
    let unprojected = projection
        .unprojected
        .lock()
        .map_err(|_| HubStorageError::Poisoned)?;
    let projected = chainsync_replica::read::balances(conn, member)?.unwrap_or_default();
    let canonical = chainsync_replica::read::canonical_member(conn, member)?.unwrap_or(member);
    let group = chainsync_replica::read::member_group(conn, canonical)?;
    let mut total = projected;
    let mut is_projected = conn.prepare_cached("SELECT 1 FROM ledger WHERE id = ?1")?;
    let tail = unprojected.balances_of(&group, |id| {
        Ok(is_projected
            .query_row([id.to_string()], |_| Ok(()))
            .optional()?
            .is_some())
    })?;
    add_to(&mut total, Account::Principal, tail.principal.0);
    add_to(&mut total, Account::Bonus, tail.bonus.0);
    add_to(&mut total, Account::Points, tail.points);
    Ok(total)
}

/// Project the ledger entries after the projection cursor, at most `limit` log positions, in
/// one transaction; returns how many positions it moved past. Projecting an entry twice
/// changes nothing (the ledger row is keyed by the entry's id), so entries projected at once
/// (HQ's own, or by [`ingest`]) are passed over.
pub fn project_pending(
    conn: &mut Connection,
    projection: Option<&Projection>,
    limit: usize,
    now_ms: u64,
) -> Result<usize, HubStorageError> {
    let transaction = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let cursor: i64 = transaction
        .prepare_cached("SELECT projected_upto FROM projection_cursor WHERE id = 1")?
        .query_row([], |row| row.get(0))?;
    let rows: Vec<(i64, String, i64, String, Vec<u8>)> = transaction
        .prepare_cached(
            "SELECT r.hub_seq, r.origin, r.seq, o.kind, o.body
             FROM relay_log r JOIN ops o ON o.origin = r.origin AND o.seq = r.seq
             WHERE r.hub_seq > ?1 ORDER BY r.hub_seq LIMIT ?2",
        )?
        .query_map((cursor, limit.min(1 << 20) as i64), |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let Some(last) = rows.last().map(|row| row.0) else {
        return Ok(0);
    };
    let mut touched = Touched::default();
    let mut projected: Vec<i64> = Vec::new();
    for (hub_seq, origin, seq, kind, body) in &rows {
        if kind != "ledger" {
            continue;
        }
        let Ok(Op::V1(OpV1::Ledger(entry))) = Op::decode(body) else {
            return Err(HubStorageError::Damaged(format!(
                "ledger operation {origin}/{seq} does not decode"
            )));
        };
        if project::project_ledger_new(&transaction, &entry)? {
            crate::audit::record_store_adjustment(&transaction, &entry)?;
            touched.members.insert(entry.member_id);
        }
        projected.push(*hub_seq);
    }
    touched.refresh_exceptions(&transaction, now_ms)?;
    transaction
        .prepare_cached("UPDATE projection_cursor SET projected_upto = ?1 WHERE id = 1")?
        .execute([last])?;
    // Held across the commit: a decision sees an entry either projected or unprojected.
    let mut unprojected = match projection {
        Some(projection) => Some(
            projection
                .unprojected
                .lock()
                .map_err(|_| HubStorageError::Poisoned)?,
        ),
        None => None,
    };
    transaction.commit()?;
    if let Some(unprojected) = unprojected.as_mut() {
        for hub_seq in projected {
            unprojected.remove(hub_seq.max(0) as u64);
        }
    }
    Ok(rows.len())
}

/// Project everything left (a starting hub, before it serves).
pub fn project_all(conn: &mut Connection, now_ms: u64) -> Result<(), HubStorageError> {
    while project_pending(conn, None, projection_chunk_ops_max, now_ms)? > 0 {}
    Ok(())
}

/// Start the projector thread: it projects in chunks once ingest has paused for
/// [`projection_quiet_ms`] (acknowledgements go first), and without waiting once
/// [`projection_backlog_max`] entries are unprojected.
pub fn spawn_projector(
    writer: Arc<Mutex<Connection>>,
    projection: Arc<Projection>,
    queue: Arc<IngestQueue>,
    now_ms: fn() -> u64,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("projector".into())
        .spawn(move || {
            let quiet = std::time::Duration::from_millis(projection_quiet_ms);
            loop {
                projection
                    .wait_for_work(std::time::Duration::from_millis(projection_idle_check_ms));
                loop {
                    let seen = projection.ingests.load(Ordering::Relaxed);
                    if projection.backlog() < projection_backlog_max {
                        std::thread::sleep(quiet);
                        if projection.ingests.load(Ordering::Relaxed) != seen {
                            continue;
                        }
                    }
                    let Ok(mut conn) = writer.lock() else { return };
                    match project_pending(
                        &mut conn,
                        Some(&projection),
                        projection_chunk_ops_max,
                        now_ms(),
                    ) {
                        Ok(0) => {
                            if let Err(e) = queue.write_relay_acks(&conn) {
                                tracing::warn!(error = %e, "cannot record the stores' relay cursors");
                            }
                            break;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "projection failed; retrying later");
                            break;
                        }
                    }
                }
            }
        })
        .map(|_| ())
}

/// Write an operation authored by HQ itself (origin `hq`): recorded, projected and put in
/// the relay log in one transaction, like a store's. Returns the new log head.
pub fn author(conn: &mut Connection, op: OpV1, now_ms: u64) -> Result<u64, HubStorageError> {
    author_with(conn, now_ms, |_, _| Ok(op), |_, _| Ok(())).map(|(head, _)| head)
}

/// [`author`], building the operation from its sequence and time (a ledger entry carries
/// both), and running `also` inside the same transaction after it is applied (e.g. the audit
/// log). Returns the new log head and the envelope.
pub fn author_with(
    conn: &mut Connection,
    now_ms: u64,
    build: impl FnOnce(u64, HlcTimestamp) -> Result<OpV1, HubStorageError>,
    also: impl FnOnce(&Connection, &Envelope) -> Result<(), HubStorageError>,
) -> Result<(u64, Envelope), HubStorageError> {
    let hub = StoreId::hub();
    let transaction = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (seq, wall_ms, counter): (i64, i64, i64) = transaction
        .prepare_cached(
            "SELECT COALESCE(MAX(seq), 0) + 1, COALESCE(MAX(hlc_wall_ms), 0),
                COALESCE((SELECT MAX(hlc_counter) FROM ops WHERE hlc_wall_ms =
                          (SELECT MAX(hlc_wall_ms) FROM ops)), 0)
         FROM ops",
        )?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?;
    let own_seq: i64 = transaction
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM ops WHERE origin = ?1")?
        .query_row([hub.as_str()], |row| row.get(0))?;
    let _ = seq;
    let mut clock = chainsync_core::Hlc::starting_after(HlcTimestamp {
        wall_ms: wall_ms.max(0) as u64,
        counter: u32::try_from(counter.max(0)).unwrap_or(u32::MAX),
    });
    let hlc = clock
        .now(now_ms)
        .map_err(|e| HubStorageError::Damaged(e.to_string()))?;
    let own_seq = own_seq.max(1) as u64;
    let envelope = Envelope {
        origin: hub.clone(),
        seq: own_seq,
        hlc,
        op: Op::V1(build(own_seq, hlc)?),
    };
    let before = crate::reports::index::before_apply(&transaction, &envelope)?;
    let new = project::apply_remote(&transaction, &hub, &envelope).map_err(|e| {
        HubStorageError::Invalid {
            origin: hub.to_string(),
            seq: envelope.seq,
            reason: e.to_string(),
        }
    })?;
    if new {
        crate::reports::index::after_apply(&transaction, &envelope, before)?;
    }
    also(&transaction, &envelope)?;
    transaction
        .prepare_cached("INSERT INTO relay_log (origin, seq) VALUES (?1, ?2)")?
        .execute((hub.as_str(), envelope.seq as i64))?;
    let head = log_head(&transaction)?;
    transaction.commit()?;
    Ok((head, envelope))
}

/// Author many HQ operations in one transaction (all or nothing: e.g. a catalog import).
/// Returns the new log head.
pub fn author_all(
    conn: &mut Connection,
    ops: Vec<OpV1>,
    now_ms: u64,
) -> Result<u64, HubStorageError> {
    let hub = StoreId::hub();
    let transaction = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (wall_ms, counter): (i64, i64) = transaction
        .prepare_cached(
            "SELECT COALESCE(MAX(hlc_wall_ms), 0),
                COALESCE((SELECT MAX(hlc_counter) FROM ops WHERE hlc_wall_ms =
                          (SELECT MAX(hlc_wall_ms) FROM ops)), 0)
         FROM ops",
        )?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let own_seq: i64 = transaction
        .prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM ops WHERE origin = ?1")?
        .query_row([hub.as_str()], |row| row.get(0))?;
    let mut clock = chainsync_core::Hlc::starting_after(HlcTimestamp {
        wall_ms: wall_ms.max(0) as u64,
        counter: u32::try_from(counter.max(0)).unwrap_or(u32::MAX),
    });
    let mut seq = own_seq.max(0) as u64;
    for op in ops {
        seq += 1;
        let hlc = clock
            .now(now_ms)
            .map_err(|e| HubStorageError::Damaged(e.to_string()))?;
        let envelope = Envelope {
            origin: hub.clone(),
            seq,
            hlc,
            op: Op::V1(op),
        };
        let before = crate::reports::index::before_apply(&transaction, &envelope)?;
        let new = project::apply_remote(&transaction, &hub, &envelope).map_err(|e| {
            HubStorageError::Invalid {
                origin: hub.to_string(),
                seq,
                reason: e.to_string(),
            }
        })?;
        if new {
            crate::reports::index::after_apply(&transaction, &envelope, before)?;
        }
        transaction
            .prepare_cached("INSERT INTO relay_log (origin, seq) VALUES (?1, ?2)")?
            .execute((hub.as_str(), seq as i64))?;
    }
    let head = log_head(&transaction)?;
    transaction.commit()?;
    Ok(head)
}

impl HubSide for SqliteHubSide {
    type Error = HubStorageError;

    fn acked_seq(&self, store: &StoreId) -> Result<u64, HubStorageError> {
        Ok(acked_seq(&self.reader, store)?)
    }

    fn ingest(&mut self, store: &StoreId, ops: &[Envelope]) -> Result<u64, HubStorageError> {
        let (acked, grew, touched) = ingest_grouped(
            &self.writer,
            &self.queue,
            Some(&self.projection),
            store,
            ops,
            (self.now_ms)(),
        )?;
        if grew {
            self.log_grew.send_replace(log_head(&self.reader)?);
        }
        let mut book = self
            .reservations
            .lock()
            .map_err(|_| HubStorageError::Poisoned)?;
        let mut released = false;
        for checkout in &touched.checkouts {
            released |= book.release(*checkout);
        }
        if released {
            save_book(&self.writer, &book)?;
        }
        Ok(acked)
    }

    fn log_head(&self) -> Result<u64, HubStorageError> {
        Ok(log_head(&self.reader)?)
    }

    fn relay_after(
        &self,
        store: &StoreId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<RelayedOp>, u64), HubStorageError> {
        let (logged, upto) = self.relay_cache.read_after(&self.reader, after, limit)?;
        let ops = logged
            .into_iter()
            // A store is not sent its own operations; stock and transfers go only to the
            // stores they concern (SPEC: "to the stores they concern"). The cursor (`upto`)
            // still moves past what is skipped.
            .filter(|logged| {
                logged.envelope.origin != *store && logged.envelope.op.concerns_store(store)
            })
            .map(|logged| RelayedOp {
                hub_seq: logged.hub_seq,
                envelope: logged.envelope,
            })
            .collect();
        Ok((ops, upto))
    }

    fn record_relay_acked(&mut self, store: &StoreId, cursor: u64) -> Result<(), HubStorageError> {
        self.queue
            .note_relay_acked(store, cursor, (self.now_ms)())?;
        // Written now if the writer is free; else by whoever holds it (an ingest group, the
        // projector once idle, this store's disconnection), without making anyone wait.
        match self.writer.try_lock() {
            Ok(conn) => self.queue.write_relay_acks(&conn),
            Err(std::sync::TryLockError::WouldBlock) => Ok(()),
            Err(std::sync::TryLockError::Poisoned(_)) => Err(HubStorageError::Poisoned),
        }
    }

    fn authorize(
        &mut self,
        store: &StoreId,
        request: &AuthorizeRequest,
        now_ms: u64,
    ) -> Result<AuthorizeDecision, HubStorageError> {
        // A claim from a chain-wide coupon pool (decided and written here, no hold).
        if let Some((decision, head)) =
            crate::coupons::authorize_pool_claim(&self.writer, request, now_ms)?
        {
            if let Some(head) = head {
                self.log_grew.send_replace(head);
            }
            return Ok(decision);
        }
        let mut book = self
            .reservations
            .lock()
            .map_err(|_| HubStorageError::Poisoned)?;
        let before = book.clone();
        let decision = self.decide(&mut book, store, request, now_ms)?;
        // A grant is on disk before the store hears of it: a hub restart keeps the hold.
        if *book != before {
            save_book(&self.writer, &book)?;
        }
        Ok(decision)
    }

    fn member_changes(&self, member: &Uuid) -> Result<Vec<Vec<u8>>, HubStorageError> {
        project::member_changes(&self.reader, *member)
            .map_err(|e| HubStorageError::Damaged(e.to_string()))
    }

    fn store_caught_up(&mut self, store: &StoreId, hello_ms: u64) -> Result<(), HubStorageError> {
        let mut book = self
            .reservations
            .lock()
            .map_err(|_| HubStorageError::Poisoned)?;
        let given_up = book.store_caught_up(store, hello_ms);
        if given_up > 0 {
            tracing::info!(%store, given_up, "store caught up: unused grants released");
            save_book(&self.writer, &book)?;
        }
        Ok(())
    }

    fn store_disconnected(&mut self, store: &StoreId) -> Result<(), HubStorageError> {
        self.queue
            .write_relay_acks(&*self.writer.lock().map_err(|_| HubStorageError::Poisoned)?)?;
        let mut book = self
            .reservations
            .lock()
            .map_err(|_| HubStorageError::Poisoned)?;
        let before = book.clone();
        book.store_disconnected(store);
        if *book != before {
            save_book(&self.writer, &book)?;
        }
        Ok(())
    }

    fn record_hello(&mut self, store: &StoreId, own_seq_max: u64) -> Result<(), HubStorageError> {
        let conn = self.writer.lock().map_err(|_| HubStorageError::Poisoned)?;
        conn.prepare_cached(
            "UPDATE stores SET reported_seq = ?2, last_seen_ms = ?3 WHERE store_id = ?1",
        )?
        .execute((store.as_str(), own_seq_max as i64, (self.now_ms)() as i64))?;
        Ok(())
    }
}

/// The reservation book as last saved (empty on a new hub), every hold waiting for its store
/// (no store is connected to a hub that is starting).
pub fn load_book(conn: &Connection) -> Result<ReservationBook, HubStorageError> {
    let mut book = load_saved_book(conn)?;
    book.all_stores_disconnected();
    Ok(book)
}

fn load_saved_book(conn: &Connection) -> Result<ReservationBook, HubStorageError> {
    let body: Option<String> = conn
        .query_row(
            "SELECT body FROM reservation_book WHERE id = 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    match body {
        None => Ok(ReservationBook::default()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| HubStorageError::Damaged(format!("reservation book: {e}"))),
    }
}

fn save_book(writer: &Mutex<Connection>, book: &ReservationBook) -> Result<(), HubStorageError> {
    let body = serde_json::to_string(book).map_err(|e| HubStorageError::Damaged(e.to_string()))?;
    let conn = writer.lock().map_err(|_| HubStorageError::Poisoned)?;
    conn.prepare_cached(
        "INSERT INTO reservation_book (id, body) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET body = excluded.body",
    )?
    .execute([body])?;
    Ok(())
}

impl SqliteHubSide {
    /// The authorization decision; changes `book` (holds placed or dropped).
    fn decide(
        &self,
        book: &mut ReservationBook,
        store: &StoreId,
        request: &AuthorizeRequest,
        now_ms: u64,
    ) -> Result<AuthorizeDecision, HubStorageError> {
        for code in &request.coupon_codes {
            let known: bool = self.reader.query_row(
                "SELECT COUNT(*) > 0 FROM coupons WHERE code = ?1",
                [code],
                |r| r.get(0),
            )?;
            let redeemed: bool = self.reader.query_row(
                "SELECT COUNT(*) > 0 FROM coupon_redemptions WHERE code = ?1",
                [code],
                |r| r.get(0),
            )?;
            let reason = if !known {
                Some("unknown coupon")
            } else if redeemed || !book.hold_coupon(code, request.checkout_id, store, now_ms) {
                Some("already redeemed")
            } else {
                None
            };
            if let Some(reason) = reason {
                book.release(request.checkout_id);
                return Ok(AuthorizeDecision::CouponUnavailable {
                    code: code.clone(),
                    reason: reason.into(),
                });
            }
        }
        let Some(member) = request.member_id else {
            return Ok(AuthorizeDecision::Granted);
        };
        if request.spend.is_empty() {
            return Ok(AuthorizeDecision::Granted);
        }
        // The projection plus what is acknowledged and not projected yet.
        let balances = balances_with_unprojected(&self.reader, &self.projection, member)?;
        let canonical =
            chainsync_replica::read::canonical_member(&self.reader, member)?.unwrap_or(member);
        Ok(
            match book.decide(
                request.checkout_id,
                store,
                canonical,
                request.spend,
                balances.stored_value().unwrap_or_default(),
                balances.points,
                now_ms,
            ) {
                Decision::Granted => AuthorizeDecision::Granted,
                Decision::Insufficient {
                    available_stored_value,
                    available_points,
                } => {
                    book.release(request.checkout_id);
                    AuthorizeDecision::InsufficientBalance {
                        available_stored_value: available_stored_value.0,
                        available_points,
                    }
                }
            },
        )
    }
}

#[cfg(test)]
mod unprojected_tests {
    use super::*;
    use chainsync_core::ledger::EntryKind;

    fn reward(origin: &str, seq: u64, id: Uuid, member: Uuid, points: i64) -> LedgerEntry {
        LedgerEntry {
            id,
            origin: StoreId::parse(origin).unwrap(),
            seq,
            hlc: HlcTimestamp {
                wall_ms: 1_000 + seq,
                counter: 0,
            },
            member_id: member,
            kind: EntryKind::PointsReward,
            account: Account::Points,
            amount: points,
            checkout_id: None,
            reason: None,
            rule_version: 1,
        }
    }

    #[test]
    fn unprojected_positions_far_apart_or_out_of_order_are_held_once_each() {
        let member = Uuid::from_u128(7);
        let entry =
            |at: u64| Deferred::of(at, &reward("a", at, Uuid::from_u128(at.into()), member, 1));
        let mut positions = Positions::default();
        for at in [5, 1_000_000_000, 3, 700] {
            assert!(positions.insert(entry(at)));
        }
        assert!(!positions.insert(entry(700)), "a position is held once");
        assert_eq!(
            (positions.held, positions.slots.len()),
            (4, 4),
            "no slot per gap"
        );
        assert_eq!(positions.get(700).map(|e| e.hub_seq), Some(700));
        assert!(positions.get(6).is_none());
        assert!(positions.remove(700).is_some());
        assert!(positions.remove(700).is_none());
        assert!(positions.remove(3).is_some());
        assert_eq!(
            positions.slots.len(),
            3,
            "a gap at the front goes, one inside stays"
        );
        assert!(positions.remove(5).is_some());
        assert_eq!(positions.slots.len(), 1);
        assert!(positions.remove(1_000_000_000).is_some());
        assert_eq!((positions.held, positions.slots.len()), (0, 0));
    }

    #[test]
    fn an_entry_id_written_by_two_stores_counts_once_and_not_after_projection() {
        let member = Uuid::from_u128(7);
        let derived = Uuid::from_u128(42);
        let mut tail = Unprojected::default();
        tail.add(Deferred::of(1, &reward("a", 1, derived, member, 200)));
        tail.add(Deferred::of(3, &reward("b", 9, derived, member, 200)));
        tail.add(Deferred::of(
            2,
            &reward("a", 2, Uuid::from_u128(43), member, 5),
        ));
        let sum = tail.balances_of(&[member], |_| Ok(false)).unwrap();
        assert_eq!(sum.points, 205, "the derived id counts once");
        let sum = tail.balances_of(&[member], |id| Ok(id == derived)).unwrap();
        assert_eq!(
            sum.points, 5,
            "an id already projected is not counted again"
        );
        tail.remove(1);
        tail.remove(2);
        let sum = tail.balances_of(&[member], |_| Ok(false)).unwrap();
        assert_eq!(sum.points, 200);
        tail.remove(3);
        assert!(tail.is_empty());
        assert!(tail.by_member.is_empty());
    }
}

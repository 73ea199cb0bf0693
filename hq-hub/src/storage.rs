//! The hub's side of the sync protocol over SQLite.
//!
//! Writes (ingesting a store's batch) go through one connection behind a mutex: one writer,
//! one transaction and one fsync per batch, acknowledged only after commit. Each session reads
//! the relay log through a read-only connection of its own.

use chainsync_core::allowance::{Decision, ReservationBook};
use chainsync_core::op::{Envelope, Op, OpV1};
use chainsync_core::sync::{AuthorizeDecision, AuthorizeRequest, HubSide, RelayedOp};
use chainsync_core::{HlcTimestamp, StoreId};
use chainsync_replica::project;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
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
    /// Online grants waiting for their spends to arrive (shared by all sessions).
    pub reservations: Arc<Mutex<ReservationBook>>,
    /// Batches waiting for the writer (shared by all sessions).
    pub queue: Arc<IngestQueue>,
    /// Notified with the new log head after each ingest that added something.
    pub log_grew: tokio::sync::watch::Sender<u64>,
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
    let result = ingest_in(&transaction, store, ops, now_ms)?;
    transaction.commit()?;
    Ok(result)
}

/// Ingest one batch inside the caller's transaction.
fn ingest_in(
    conn: &Connection,
    store: &StoreId,
    ops: &[Envelope],
    now_ms: u64,
) -> Result<(u64, bool, Touched), HubStorageError> {
    let mut touched = Touched::default();
    let mut acked = acked_seq(conn, store)?;
    let start = acked;
    let hub = StoreId::hub();
    for envelope in ops {
        if envelope.seq <= acked {
            continue;
        }
        if envelope.seq != acked + 1 {
            break;
        }
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
        conn.prepare_cached("INSERT OR IGNORE INTO relay_log (origin, seq) VALUES (?1, ?2)")?
            .execute((envelope.origin.as_str(), envelope.seq as i64))?;
        touched.note(envelope);
        acked += 1;
    }
    touched.refresh_exceptions(conn, now_ms)?;
    conn.prepare_cached("UPDATE stores SET acked_seq = ?2, last_seen_ms = ?3 WHERE store_id = ?1")?
        .execute((store.as_str(), acked as i64, now_ms as i64))?;
    Ok((acked, acked > start, touched))
}

type IngestResult = Result<(u64, bool, Touched), String>;

struct IngestJob {
    store: StoreId,
    ops: Vec<Envelope>,
    reply: std::sync::mpsc::Sender<IngestResult>,
}

/// Batches waiting for the writer. Whoever holds the writer lock commits every waiting batch
/// (of any store) in one transaction, each in its own savepoint: one fsync for many stores.
#[derive(Default)]
pub struct IngestQueue {
    pending: Mutex<Vec<IngestJob>>,
}

/// Ingest through the queue: group-committed with the batches of other sessions.
pub fn ingest_grouped(
    writer: &Mutex<Connection>,
    queue: &IngestQueue,
    store: &StoreId,
    ops: &[Envelope],
    now_ms: u64,
) -> Result<(u64, bool, Touched), HubStorageError> {
    let (reply, answer) = std::sync::mpsc::channel();
    queue
        .pending
        .lock()
        .map_err(|_| HubStorageError::Poisoned)?
        .push(IngestJob {
            store: store.clone(),
            ops: ops.to_vec(),
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
    let mut results: Vec<IngestResult> = Vec::with_capacity(jobs.len());
    let committed = (|| -> Result<(), HubStorageError> {
        let mut transaction = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        for job in &jobs {
            let savepoint = transaction.savepoint()?;
            match ingest_in(&savepoint, &job.store, &job.ops, now_ms) {
                Ok(result) => {
                    savepoint.commit()?;
                    results.push(Ok(result));
                }
                Err(e) => {
                    drop(savepoint);
                    results.push(Err(e.to_string()));
                }
            }
        }
        transaction.commit()?;
        Ok(())
    })();
    if let Err(e) = committed {
        let message = e.to_string();
        for job in jobs {
            let _ = job.reply.send(Err(message.clone()));
        }
        return Err(e);
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
        let (acked, grew, touched) =
            ingest_grouped(&self.writer, &self.queue, store, ops, (self.now_ms)())?;
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
        let mut statement = self.reader.prepare_cached(
            "SELECT r.hub_seq, o.origin, o.seq, o.hlc_wall_ms, o.hlc_counter, o.body
             FROM relay_log r JOIN ops o ON o.origin = r.origin AND o.seq = r.seq
             WHERE r.hub_seq > ?1 ORDER BY r.hub_seq LIMIT ?2",
        )?;
        let mut rows = statement.query((after as i64, limit.min(10_000) as i64))?;
        let mut ops = Vec::new();
        let mut upto = after;
        while let Some(row) = rows.next()? {
            let hub_seq = row.get::<_, i64>(0)?.max(0) as u64;
            upto = hub_seq;
            let origin: String = row.get(1)?;
            if origin == store.as_str() {
                continue;
            }
            let origin =
                StoreId::parse(&origin).map_err(|e| HubStorageError::Damaged(e.to_string()))?;
            let body: Vec<u8> = row.get(5)?;
            let op = Op::decode(&body).map_err(|e| HubStorageError::Damaged(e.to_string()))?;
            // Stock and transfers go only to the stores they concern (SPEC: "to the stores
            // they concern"); the cursor (`upto`) still moves past what is skipped.
            if !op.concerns_store(store) {
                continue;
            }
            ops.push(RelayedOp {
                hub_seq,
                envelope: Envelope {
                    origin,
                    seq: row.get::<_, i64>(2)?.max(0) as u64,
                    hlc: HlcTimestamp {
                        wall_ms: row.get::<_, i64>(3)?.max(0) as u64,
                        counter: row.get(4)?,
                    },
                    op,
                },
            });
        }
        Ok((ops, upto))
    }

    fn record_relay_acked(&mut self, store: &StoreId, cursor: u64) -> Result<(), HubStorageError> {
        let conn = self.writer.lock().map_err(|_| HubStorageError::Poisoned)?;
        conn.prepare_cached(
            "UPDATE stores SET relay_acked = MAX(relay_acked, ?2), last_seen_ms = ?3
             WHERE store_id = ?1",
        )?
        .execute((store.as_str(), cursor as i64, (self.now_ms)() as i64))?;
        Ok(())
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
        let balances = chainsync_replica::read::balances(&self.reader, member)?.unwrap_or_default();
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

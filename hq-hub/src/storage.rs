//! The hub's side of the sync protocol over SQLite.
//!
//! Writes (ingesting a store's batch) go through one connection behind a mutex: one writer,
//! one transaction and one fsync per batch, acknowledged only after commit. Each session reads
//! the relay log through a read-only connection of its own.

use chainsync_core::op::{Envelope, Op};
use chainsync_core::sync::{HubSide, RelayedOp};
use chainsync_core::{HlcTimestamp, StoreId};
use chainsync_replica::project;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use std::sync::{Arc, Mutex};

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
    /// Notified with the new log head after each ingest that added something.
    pub log_grew: tokio::sync::watch::Sender<u64>,
    pub now_ms: fn() -> u64,
}

pub fn log_head(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT COALESCE(MAX(hub_seq), 0) FROM relay_log",
        [],
        |row| row.get::<_, i64>(0),
    )
    .map(|v| v.max(0) as u64)
}

pub fn acked_seq(conn: &Connection, store: &StoreId) -> rusqlite::Result<u64> {
    let found: Option<i64> = conn
        .query_row(
            "SELECT acked_seq FROM stores WHERE store_id = ?1",
            [store.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    Ok(found.unwrap_or(0).max(0) as u64)
}

/// Ingest one batch in one transaction. Duplicates are skipped; a gap stops the batch.
pub fn ingest(
    conn: &mut Connection,
    store: &StoreId,
    ops: &[Envelope],
    now_ms: u64,
) -> Result<(u64, bool), HubStorageError> {
    let transaction = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut acked = acked_seq(&transaction, store)?;
    let start = acked;
    let hub = StoreId::hub();
    for envelope in ops {
        if envelope.seq <= acked {
            continue;
        }
        if envelope.seq != acked + 1 {
            break;
        }
        project::apply_remote(&transaction, &hub, envelope).map_err(|e| {
            HubStorageError::Invalid {
                origin: envelope.origin.to_string(),
                seq: envelope.seq,
                reason: e.to_string(),
            }
        })?;
        transaction.execute(
            "INSERT OR IGNORE INTO relay_log (origin, seq) VALUES (?1, ?2)",
            (envelope.origin.as_str(), envelope.seq as i64),
        )?;
        acked += 1;
    }
    transaction.execute(
        "UPDATE stores SET acked_seq = ?2, last_seen_ms = ?3 WHERE store_id = ?1",
        (store.as_str(), acked as i64, now_ms as i64),
    )?;
    transaction.commit()?;
    Ok((acked, acked > start))
}

impl HubSide for SqliteHubSide {
    type Error = HubStorageError;

    fn acked_seq(&self, store: &StoreId) -> Result<u64, HubStorageError> {
        Ok(acked_seq(&self.reader, store)?)
    }

    fn ingest(&mut self, store: &StoreId, ops: &[Envelope]) -> Result<u64, HubStorageError> {
        let (acked, grew) = {
            let mut conn = self.writer.lock().map_err(|_| HubStorageError::Poisoned)?;
            let result = ingest(&mut conn, store, ops, (self.now_ms)())?;
            if result.1 {
                let head = log_head(&conn)?;
                self.log_grew.send_replace(head);
            }
            result
        };
        let _ = grew;
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
        conn.execute(
            "UPDATE stores SET relay_acked = MAX(relay_acked, ?2), last_seen_ms = ?3
             WHERE store_id = ?1",
            (store.as_str(), cursor as i64, (self.now_ms)() as i64),
        )?;
        Ok(())
    }

    fn record_hello(&mut self, store: &StoreId, own_seq_max: u64) -> Result<(), HubStorageError> {
        let conn = self.writer.lock().map_err(|_| HubStorageError::Poisoned)?;
        conn.execute(
            "UPDATE stores SET reported_seq = ?2, last_seen_ms = ?3 WHERE store_id = ?1",
            (store.as_str(), own_seq_max as i64, (self.now_ms)() as i64),
        )?;
        Ok(())
    }
}

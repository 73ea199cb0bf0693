//! The store's side of the sync protocol over SQLite: reads through a connection of its own,
//! writes through the writer's background queue (so cashier requests go first).

use chainsync_core::StoreId;
use chainsync_core::op::{Envelope, Op};
use chainsync_core::sync::{RelayedOp, StoreSide};
use chainsync_replica::api::Reply;
use chainsync_replica::project;
use rusqlite::{Connection, OptionalExtension};

use crate::writer::Writer;

pub const meta_relay_cursor: &str = "sync_relay_cursor";
pub const meta_hub_acked: &str = "sync_hub_acked";
pub const meta_last_sync_ms: &str = "sync_last_ok_ms";

pub fn read_meta_u64(conn: &Connection, key: &str) -> rusqlite::Result<u64> {
    let value: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = ?1", [key], |row| {
            row.get(0)
        })
        .optional()?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

pub fn own_seq_max(conn: &Connection, store: &StoreId) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM ops WHERE origin = ?1",
        [store.as_str()],
        |row| row.get::<_, i64>(0),
    )
    .map(|seq| seq.max(0) as u64)
}

pub struct SqliteStoreSide {
    pub store: StoreId,
    pub conn: Connection,
    pub writer: Writer,
}

#[derive(Debug, thiserror::Error)]
pub enum SideError {
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("stored operation {0} is damaged: {1}")]
    Damaged(u64, String),
    #[error("writer: {0}")]
    Writer(String),
}

impl StoreSide for SqliteStoreSide {
    type Error = SideError;

    fn own_seq_max(&self) -> Result<u64, SideError> {
        Ok(own_seq_max(&self.conn, &self.store)?)
    }

    fn own_ops_after(&self, after: u64, limit: usize) -> Result<Vec<Envelope>, SideError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT seq, hlc_wall_ms, hlc_counter, body FROM ops
             WHERE origin = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut rows =
            statement.query((self.store.as_str(), after as i64, limit.min(10_000) as i64))?;
        let mut ops = Vec::new();
        while let Some(row) = rows.next()? {
            let seq = row.get::<_, i64>(0)?.max(0) as u64;
            let body: Vec<u8> = row.get(3)?;
            let op = Op::decode(&body).map_err(|e| SideError::Damaged(seq, e.to_string()))?;
            ops.push(Envelope {
                origin: self.store.clone(),
                seq,
                hlc: chainsync_core::HlcTimestamp {
                    wall_ms: row.get::<_, i64>(1)?.max(0) as u64,
                    counter: row.get(2)?,
                },
                op,
            });
        }
        Ok(ops)
    }

    fn relay_cursor(&self) -> Result<u64, SideError> {
        Ok(read_meta_u64(&self.conn, meta_relay_cursor)?)
    }

    fn apply_relayed(&mut self, ops: &[RelayedOp], upto: u64) -> Result<(), SideError> {
        let ops = ops.to_vec();
        let job = Box::new(
            move |conn: &Connection, local: &mut crate::commands::Local, now_ms: u64| {
                let cursor = read_meta_u64(conn, meta_relay_cursor)?;
                if upto <= cursor {
                    return Ok(Reply {
                        status: 200,
                        body: serde_json::Value::Null,
                    });
                }
                for relayed in ops.iter().filter(|op| op.hub_seq > cursor) {
                    local.observe(relayed.envelope.hlc, now_ms);
                    // A savepoint per operation: one that cannot be projected is kept in the log
                    // (it was accepted by the hub) but must not stop the rest.
                    let savepoint_ok = conn.execute_batch("SAVEPOINT relayed").is_ok();
                    match project::apply_remote(conn, &local.store, &relayed.envelope) {
                        Ok(_) => {
                            if savepoint_ok {
                                conn.execute_batch("RELEASE relayed")?;
                            }
                        }
                        Err(e) => {
                            if savepoint_ok {
                                conn.execute_batch("ROLLBACK TO relayed; RELEASE relayed")?;
                            }
                            tracing::error!(
                                origin = %relayed.envelope.origin,
                                seq = relayed.envelope.seq,
                                error = %e,
                                "relayed operation could not be applied; skipped"
                            );
                        }
                    }
                }
                // A points entry dated before an expiry already due (a spend made at a store
                // that was cut off) revises that expiry now; a failure there is logged and
                // rolled back alone (the daily run tries again).
                let entries: Vec<&chainsync_core::ledger::LedgerEntry> = ops
                    .iter()
                    .filter(|op| op.hub_seq > cursor)
                    .filter_map(|op| match &op.envelope.op {
                        chainsync_core::op::Op::V1(chainsync_core::op::OpV1::Ledger(entry)) => {
                            Some(entry)
                        }
                        _ => None,
                    })
                    .collect();
                if !entries.is_empty() {
                    let savepoint_ok = conn.execute_batch("SAVEPOINT expiries").is_ok();
                    match crate::engagement::revise_expiries_after_relay(
                        conn, local, &entries, now_ms,
                    ) {
                        Ok(_) => {
                            if savepoint_ok {
                                conn.execute_batch("RELEASE expiries")?;
                            }
                        }
                        Err(e) => {
                            if savepoint_ok {
                                conn.execute_batch("ROLLBACK TO expiries; RELEASE expiries")?;
                            }
                            tracing::warn!(error = %e.message, "revising points expiries failed");
                        }
                    }
                }
                chainsync_replica::sqlite::set_meta(conn, meta_relay_cursor, &upto.to_string())?;
                chainsync_replica::sqlite::set_meta(conn, meta_last_sync_ms, &now_ms.to_string())?;
                Ok(Reply {
                    status: 200,
                    body: serde_json::Value::Null,
                })
            },
        );
        self.writer
            .submit_background_blocking(job)
            .map(|_| ())
            .map_err(|e| SideError::Writer(e.message))
    }

    fn member_changes(&self, member: &uuid::Uuid) -> Result<Vec<Vec<u8>>, SideError> {
        chainsync_replica::project::member_changes(&self.conn, *member)
            .map_err(|e| SideError::Damaged(0, e.to_string()))
    }

    fn record_hub_acked(&mut self, acked_seq: u64) -> Result<(), SideError> {
        let job = Box::new(
            move |conn: &Connection, _: &mut crate::commands::Local, now_ms: u64| {
                let known = read_meta_u64(conn, meta_hub_acked)?;
                if acked_seq > known {
                    chainsync_replica::sqlite::set_meta(
                        conn,
                        meta_hub_acked,
                        &acked_seq.to_string(),
                    )?;
                }
                chainsync_replica::sqlite::set_meta(conn, meta_last_sync_ms, &now_ms.to_string())?;
                Ok(Reply {
                    status: 200,
                    body: serde_json::Value::Null,
                })
            },
        );
        self.writer
            .submit_background_blocking(job)
            .map(|_| ())
            .map_err(|e| SideError::Writer(e.message))
    }
}

/// Sync figures for `store-node status` and `GET /api/v1/sync/status`.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SyncFigures {
    /// As last recorded by the running node: standalone, connecting, online, offline.
    pub link_state: String,
    pub last_sync_ms: Option<u64>,
    /// Own operations the hub does not hold yet.
    pub waiting: u64,
    pub own_seq: u64,
    pub hub_acked: u64,
    pub relay_cursor: u64,
}

pub fn read_sync_figures(conn: &Connection, store: &StoreId) -> rusqlite::Result<SyncFigures> {
    let own_seq = own_seq_max(conn, store)?;
    let hub_acked = read_meta_u64(conn, meta_hub_acked)?;
    let last = read_meta_u64(conn, meta_last_sync_ms)?;
    let link_state: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'sync_link_state'",
            [],
            |row| row.get(0),
        )
        .optional()?;
    Ok(SyncFigures {
        link_state: link_state.unwrap_or_else(|| "unknown".into()),
        last_sync_ms: (last > 0).then_some(last),
        waiting: own_seq.saturating_sub(hub_acked),
        own_seq,
        hub_acked,
        relay_cursor: read_meta_u64(conn, meta_relay_cursor)?,
    })
}

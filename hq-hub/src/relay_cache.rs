//! The newest stretch of the relay log, decoded once for every session.
//!
//! Every store is relayed the same log (less its own operations and stock that does not
//! concern it), so without a shared copy each of N connected stores reads and decodes every
//! new operation from SQLite: N reads per write. [`RelayCache`] keeps the log positions
//! `(first, last]` decoded in memory, complete (every position of that range is there), and
//! reads from SQLite only what lies beyond `last`, once, for whichever session asks first.
//!
//! Why complete ranges are safe to keep: the relay log is append-only (`hub_seq` is its
//! rowid, assigned under SQLite's one write lock and never deleted), so what a reader sees is
//! always a prefix of the log: a read that returned positions up to `upto` saw every
//! position below it.

use chainsync_core::op::{Envelope, Op};
use chainsync_core::{HlcTimestamp, StoreId};
use rusqlite::Connection;
use std::collections::VecDeque;
use std::sync::Mutex;

use crate::storage::HubStorageError;

/// Log positions kept decoded (the oldest go first). At a few hundred bytes an operation,
/// tens of MiB: enough for every connected store to read a burst from memory.
pub const relay_cache_positions_max: usize = 100_000;

/// One position of the relay log.
#[derive(Clone, Debug)]
pub struct LoggedOp {
    pub hub_seq: u64,
    pub envelope: Envelope,
}

#[derive(Default)]
struct Window {
    /// The positions `(first, last]`, in order, every one of them.
    first: u64,
    last: u64,
    ops: VecDeque<LoggedOp>,
}

impl Window {
    fn holds(&self, after: u64) -> bool {
        !self.ops.is_empty() && self.first <= after && after <= self.last
    }

    fn append(&mut self, read: &[LoggedOp], upto: u64) {
        self.ops.extend(read.iter().cloned());
        self.last = self.last.max(upto);
        while self.ops.len() > relay_cache_positions_max {
            if let Some(dropped) = self.ops.pop_front() {
                self.first = dropped.hub_seq;
            }
        }
    }
}

/// Shared by every session of a hub.
#[derive(Default)]
pub struct RelayCache {
    window: Mutex<Window>,
}

impl RelayCache {
    /// At most `limit` log positions after `after`, in order (every origin, unfiltered), and
    /// the last position they reach (`after` if there is none yet).
    pub fn read_after(
        &self,
        conn: &Connection,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<LoggedOp>, u64), HubStorageError> {
        let mut window = self.window.lock().map_err(|_| HubStorageError::Poisoned)?;
        if !window.holds(after) {
            // A store far behind (or the first read): from SQLite. The window restarts here
            // only if this read lies ahead of it (a store far behind must not evict the tail).
            let (read, upto) = read_log(conn, after, limit)?;
            if !read.is_empty() && (window.ops.is_empty() || after > window.last) {
                *window = Window {
                    first: after,
                    last: upto,
                    ops: read.iter().cloned().collect(),
                };
            }
            return Ok((read, upto));
        }
        let start = window.ops.partition_point(|op| op.hub_seq <= after);
        let mut out: Vec<LoggedOp> = window.ops.iter().skip(start).take(limit).cloned().collect();
        let mut upto = out.last().map_or(after, |op| op.hub_seq).max(after);
        if out.len() < limit {
            // Everything cached after `after` is taken: the rest from SQLite, kept for the others.
            let from = window.last;
            let (read, read_upto) = read_log(conn, from, limit - out.len())?;
            window.append(&read, read_upto);
            out.extend(read);
            upto = upto.max(read_upto).max(from);
        }
        Ok((out, upto))
    }
}

/// Read the relay log after `after` from SQLite, decoded.
fn read_log(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<(Vec<LoggedOp>, u64), HubStorageError> {
    let mut statement = conn.prepare_cached(
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
        let origin =
            StoreId::parse(&origin).map_err(|e| HubStorageError::Damaged(e.to_string()))?;
        let body: Vec<u8> = row.get(5)?;
        let op = Op::decode(&body).map_err(|e| HubStorageError::Damaged(e.to_string()))?;
        ops.push(LoggedOp {
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

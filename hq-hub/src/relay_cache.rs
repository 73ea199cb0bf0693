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

#[cfg(test)]
mod tests {
    use super::*;
    use chainsync_core::catalog::CatalogItem;
    use chainsync_core::money::Fen;
    use chainsync_core::op::OpV1;

    fn author_items(conn: &mut Connection, from: u64, count: u64) {
        for n in from..from + count {
            let item = CatalogItem {
                sku: format!("SKU{n}"),
                barcode: None,
                name: format!("item {n}"),
                category: None,
                price: Fen(100),
                member_price: None,
                active: true,
                components: vec![],
            };
            crate::storage::author(conn, OpV1::CatalogItemUpsert(item), 1_000 + n).unwrap();
        }
    }

    fn positions(read: &[LoggedOp]) -> Vec<u64> {
        read.iter().map(|op| op.hub_seq).collect()
    }

    #[test]
    fn reads_from_the_cache_what_sqlite_would_return_as_the_log_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let mut writer = crate::db::open_writer(&path).unwrap();
        let reader = crate::db::open_reader(&path).unwrap();
        let cache = RelayCache::default();
        author_items(&mut writer, 0, 10);
        let (read, upto) = cache.read_after(&reader, 0, 4).unwrap();
        assert_eq!((positions(&read), upto), ((1..=4).collect(), 4));
        // Another session at the same cursor is served from memory, and past it from SQLite.
        let (read, upto) = cache.read_after(&reader, 2, 100).unwrap();
        assert_eq!((positions(&read), upto), ((3..=10).collect(), 10));
        // At the head: nothing, the cursor stays.
        let (read, upto) = cache.read_after(&reader, 10, 100).unwrap();
        assert_eq!((read.len(), upto), (0, 10));
        // The log grows: the new positions arrive, whole, for a cursor inside the window.
        author_items(&mut writer, 10, 5);
        let (read, upto) = cache.read_after(&reader, 7, 100).unwrap();
        assert_eq!((positions(&read), upto), ((8..=15).collect(), 15));
        let (read, _) = cache.read_after(&reader, 0, 100).unwrap();
        assert_eq!(positions(&read), (1..=15).collect::<Vec<_>>());
        for op in &read {
            let (from_sqlite, _) = read_log(&reader, op.hub_seq - 1, 1).unwrap();
            assert_eq!(
                from_sqlite[0].envelope, op.envelope,
                "position {}",
                op.hub_seq
            );
        }
    }
}

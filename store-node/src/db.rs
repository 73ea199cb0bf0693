//! SQLite: opening connections and the numbered schema migrations.
//!
//! WAL mode with `synchronous=FULL`: a commit is on disk (fsync) before it returns, so a sale is
//! durable before the cashier sees success.

use chainsync_replica::sqlite;
use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};
use std::path::Path;

pub use chainsync_replica::sqlite::open_reader;

/// Schema migrations, in order. Never edit one that has shipped: add the next.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(sqlite::replica_schema_v1),
        M::up(store_schema_v1),
        M::up(sqlite::replica_schema_v2),
        M::up(store_schema_v2),
        M::up(sqlite::replica_schema_v3),
        M::up(crate::member_search::schema_v1),
        M::up(crate::member_search::backfill_v1),
        M::up(crate::outbox::schema_v1),
        M::up(chainsync_replica::program::schema_v1),
        M::up(chainsync_replica::program::schema_v2),
        M::up(chainsync_replica::program::schema_v3),
        M::up(chainsync_replica::program::schema_v4),
        M::up(chainsync_replica::catalog::schema_v1),
        M::up(chainsync_replica::stock::schema_v1),
        M::up(crate::stock::schema_v1),
        M::up(chainsync_replica::program::schema_v5),
        M::up(chainsync_replica::coupons::schema_v1),
        M::up(chainsync_replica::engagement::schema_v1),
        M::up(chainsync_replica::program::schema_v6),
        M::up(sqlite::replica_schema_v4),
    ])
}

/// Offline spending let through per offline period (see `chainsync_core::allowance`).
const store_schema_v2: &str = r#"
CREATE TABLE offline_spend (
    member_id TEXT PRIMARY KEY,
    stored_value_fen INTEGER NOT NULL,
    points INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// The store's own tables (the replicated ones come from `chainsync-replica`).
const store_schema_v1: &str = r#"
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('cashier', 'manager')),
    token_sha256 TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);

-- Responses to POSTs that carried an Idempotency-Key.
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#;

/// Open the database for writing and bring its schema up to date.
pub use chainsync_replica::sqlite::set_meta;

/// Open the database for writing and bring its schema up to date.
pub fn open_writer(path: &Path) -> anyhow::Result<Connection> {
    chainsync_replica::node::open_writer(path, &migrations())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        assert!(super::migrations().validate().is_ok());
    }
}

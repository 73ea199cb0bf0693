//! The hub's SQLite database: the replica's tables plus the hub's own (stores, the relay log,
//! users), behind numbered migrations.

use chainsync_replica::sqlite;
use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};
use std::path::Path;

pub use chainsync_replica::sqlite::{open_reader, set_meta};

fn migrations() -> Migrations<'static> {
    Migrations::new(vec![
        M::up(sqlite::replica_schema_v1),
        M::up(hub_schema_v1),
        M::up(sqlite::replica_schema_v2),
        M::up(hub_schema_v2),
        M::up(hub_schema_v3),
        M::up(crate::reports::index::schema_v1),
        M::up(sqlite::replica_schema_v3),
        M::up(hub_schema_reservations),
        M::up(chainsync_replica::program::schema_v1),
        M::up(chainsync_replica::program::schema_v2),
        M::up(chainsync_replica::program::schema_v3),
        M::up(chainsync_replica::program::schema_v4),
        M::up(chainsync_replica::catalog::schema_v1),
        M::up(chainsync_replica::stock::schema_v1),
        M::up(chainsync_replica::program::schema_v5),
        M::up(chainsync_replica::coupons::schema_v1),
        M::up(hub_schema_projection),
        M::up(chainsync_replica::engagement::schema_v1),
        M::up(chainsync_replica::program::schema_v6),
        M::up(crate::idempotency::schema_v1),
        M::up(sqlite::replica_schema_v4),
    ])
}

const hub_schema_v1: &str = r#"
CREATE TABLE meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- Enrolled stores. A store connects only if it is here and not revoked.
CREATE TABLE stores (
    store_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    region TEXT NOT NULL,
    enrolled_ms INTEGER NOT NULL,
    revoked_ms INTEGER,
    -- Highest sequence of the store's own operations held without gaps.
    acked_seq INTEGER NOT NULL DEFAULT 0,
    -- How far into the relay log the store has durably applied.
    relay_acked INTEGER NOT NULL DEFAULT 0,
    -- The store's own highest sequence, as it said in its last Hello.
    reported_seq INTEGER NOT NULL DEFAULT 0,
    last_seen_ms INTEGER
) WITHOUT ROWID;

-- Every accepted operation in acceptance order; hub_seq is the relay cursor.
CREATE TABLE relay_log (
    hub_seq INTEGER PRIMARY KEY,
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    UNIQUE (origin, seq)
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    token_sha256 TEXT NOT NULL UNIQUE,
    created_ms INTEGER NOT NULL
);
"#;

/// The exception queue: overdrafts and double redemptions found after merging.
const hub_schema_v2: &str = r#"
CREATE TABLE exceptions (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    -- member id or coupon code
    subject TEXT NOT NULL,
    member_id TEXT,
    coupon_code TEXT,
    stores TEXT NOT NULL,
    entries TEXT NOT NULL,
    amount INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    resolved_ms INTEGER,
    resolved_by TEXT,
    resolution_note TEXT
);
-- At most one open exception per kind and subject.
CREATE UNIQUE INDEX exceptions_open ON exceptions (kind, subject) WHERE resolved_ms IS NULL;
"#;

/// Accounts: a region for regional managers, argon2 password hashes, login sessions, and the
/// audit log of exports and manual adjustments.
/// The hub's book of online grants whose spends have not arrived (one row, JSON).
const hub_schema_reservations: &str = r#"
CREATE TABLE reservation_book (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    body TEXT NOT NULL
);
"#;

/// How far into the relay log the deferred projection of ledger entries has come
/// (`storage::Projection`). Everything already in the log was projected when it arrived.
const hub_schema_projection: &str = r#"
CREATE TABLE projection_cursor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    projected_upto INTEGER NOT NULL
);
INSERT INTO projection_cursor (id, projected_upto)
    SELECT 1, COALESCE(MAX(hub_seq), 0) FROM relay_log;
"#;

const hub_schema_v3: &str = r#"
ALTER TABLE users ADD COLUMN region TEXT;
ALTER TABLE users ADD COLUMN password_hash TEXT;
CREATE INDEX users_name ON users (name);

CREATE TABLE sessions (
    token_sha256 TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users (id),
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    user_name TEXT NOT NULL,
    role TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL
);
"#;

/// Open the database for writing and bring its schema up to date.
pub fn open_writer(path: &Path) -> anyhow::Result<Connection> {
    let mut conn = chainsync_replica::node::open_writer(path, &migrations())?;
    crate::reports::index::build_once(&mut conn)?;
    Ok(conn)
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        assert!(super::migrations().validate().is_ok());
    }
}

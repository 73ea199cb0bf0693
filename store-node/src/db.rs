//! SQLite: opening connections and the numbered schema migrations.
//!
//! WAL mode with `synchronous=FULL`: a commit is on disk (fsync) before it returns, so a sale is
//! durable before the cashier sees success.

use anyhow::Context;
use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};
use std::path::Path;

/// Schema migrations, in order. Never edit one that has shipped: add the next.
fn migrations() -> Migrations<'static> {
    Migrations::new(vec![M::up(
        r#"
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

-- Every replicated operation, ours and (later) other stores'. (origin, seq) identifies one.
CREATE TABLE ops (
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hlc_wall_ms INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;

-- Member documents (automerge bytes) and the fields people search on.
CREATE TABLE members (
    id TEXT PRIMARY KEY,
    phone TEXT NOT NULL,
    card_no TEXT NOT NULL,
    name TEXT NOT NULL,
    profile_json TEXT NOT NULL,
    doc BLOB NOT NULL,
    origin TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    principal_fen INTEGER NOT NULL DEFAULT 0,
    bonus_fen INTEGER NOT NULL DEFAULT 0,
    points INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX members_phone ON members (phone);
CREATE INDEX members_card_no ON members (card_no);
CREATE INDEX members_name ON members (name);

CREATE TABLE ledger (
    id TEXT PRIMARY KEY,
    member_id TEXT NOT NULL,
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hlc_wall_ms INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    kind TEXT NOT NULL,
    account TEXT NOT NULL,
    amount INTEGER NOT NULL,
    checkout_id TEXT,
    reason TEXT,
    rule_version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX ledger_member ON ledger (member_id, hlc_wall_ms, hlc_counter);
CREATE INDEX ledger_checkout ON ledger (checkout_id);

CREATE TABLE sales (
    id TEXT PRIMARY KEY,
    member_id TEXT,
    origin TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    total_fen INTEGER NOT NULL,
    refunded_fen INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX sales_member_at ON sales (member_id, at_ms);
CREATE INDEX sales_at ON sales (at_ms);

CREATE TABLE refunds (
    id TEXT PRIMARY KEY,
    sale_id TEXT NOT NULL,
    member_id TEXT,
    origin TEXT NOT NULL,
    amount_fen INTEGER NOT NULL,
    at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX refunds_sale ON refunds (sale_id);

CREATE TABLE products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_fen INTEGER NOT NULL,
    active INTEGER NOT NULL,
    hlc_wall_ms INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;

-- Responses to POSTs that carried an Idempotency-Key.
CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    status INTEGER NOT NULL,
    body TEXT NOT NULL,
    created_ms INTEGER NOT NULL
) WITHOUT ROWID;
"#,
    )])
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}

/// Open the database for writing and bring its schema up to date.
pub fn open_writer(path: &Path) -> anyhow::Result<Connection> {
    let mut conn =
        Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    configure(&conn)?;
    migrations()
        .to_latest(&mut conn)
        .context("schema migration failed")?;
    Ok(conn)
}

/// Open a read-only connection (the schema must already exist).
pub fn open_reader(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

pub fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn migrations_are_valid() {
        assert!(super::migrations().validate().is_ok());
    }
}

//! Opening SQLite for a replica, and the replicated tables' schema.
//!
//! WAL mode with `synchronous=FULL`: a commit is on disk (fsync) before it returns.

use anyhow::Context;
use rusqlite::Connection;
use std::path::Path;

/// Apply the settings every connection needs.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Savepoints (one per request in a group commit) journal the pages they change; in memory
    // that costs no writes (the WAL still makes the commit durable).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // Negative: KiB. A transaction of many batches then rarely spills pages before its commit.
    conn.pragma_update(None, "cache_size", -page_cache_kib)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(statement_cache_max);
    Ok(())
}

/// Page cache of each writing connection, in KiB.
pub const page_cache_kib: i64 = 64 * 1024;

/// Prepared statements kept per connection (every hot statement fits).
pub const statement_cache_max: usize = 128;

/// Open a read-only connection (the schema must already exist).
pub fn open_reader(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(statement_cache_max);
    Ok(conn)
}

/// Set a key of the `meta` table (each binary's schema has one).
pub fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )?;
    Ok(())
}

/// The replicated tables, version 1. Each binary lists this as one of its migrations.
pub const replica_schema_v1: &str = r#"
-- Every replicated operation, ours and (later) other stores'. (origin, seq) identifies one.
CREATE TABLE ops (
    origin TEXT NOT NULL,
    seq INTEGER NOT NULL,
    hlc_wall_ms INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    kind TEXT NOT NULL,
    -- The member the operation concerns, if any (to rebuild a member's document).
    member_id TEXT,
    body BLOB NOT NULL,
    PRIMARY KEY (origin, seq)
) WITHOUT ROWID;
CREATE INDEX ops_member ON ops (member_id) WHERE member_id IS NOT NULL;

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
    points INTEGER NOT NULL DEFAULT 0,
    -- Set when another member with the same phone is the canonical one (see project.rs).
    merged_into TEXT
) WITHOUT ROWID;
CREATE INDEX members_merged_into ON members (merged_into) WHERE merged_into IS NOT NULL;
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

"#;

/// The replicated tables, version 2: HQ's offline allowance policy and coupons.
pub const replica_schema_v2: &str = r#"
-- The newest allowance policy (highest version wins); one row.
CREATE TABLE allowance_policy (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    body TEXT NOT NULL
);

CREATE TABLE coupon_templates (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    value_fen INTEGER NOT NULL,
    min_spend_fen INTEGER NOT NULL,
    online_only INTEGER NOT NULL,
    hlc_wall_ms INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE coupons (
    code TEXT PRIMARY KEY,
    template_id TEXT NOT NULL,
    member_id TEXT,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX coupons_member ON coupons (member_id);

-- Every redemption; more than one row for a code is a double redemption.
CREATE TABLE coupon_redemptions (
    id TEXT PRIMARY KEY,
    code TEXT NOT NULL,
    checkout_id TEXT NOT NULL,
    member_id TEXT,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX coupon_redemptions_code ON coupon_redemptions (code);
"#;

/// Version 3: narrower indexes, so that each ingested ledger entry touches fewer index pages.
/// Only member-change operations are looked up by member (to rebuild a document), and only
/// entries with a checkout are looked up by checkout.
pub const replica_schema_v3: &str = r#"
DROP INDEX ops_member;
CREATE INDEX ops_member_changes ON ops (member_id) WHERE kind = 'member_change';
DROP INDEX ledger_checkout;
CREATE INDEX ledger_checkout ON ledger (checkout_id) WHERE checkout_id IS NOT NULL;
"#;

/// Version 4: a member's balances live in their own narrow table, kept by triggers on the
/// ledger as the exact sum of the member's entries per account (an entry replaced under its id
/// takes its old amount back). Projecting a ledger entry then rewrites a small row instead of
/// the member's row, which carries its automerge document. The old columns are dropped so that
/// nothing reads a stale copy. Readers sum `member_balances` over a member's group (a member
/// not yet known may have a row; it counts once the member arrives).
pub const replica_schema_v4: &str = r#"
CREATE TABLE member_balances (
    member_id TEXT PRIMARY KEY,
    principal_fen INTEGER NOT NULL DEFAULT 0,
    bonus_fen INTEGER NOT NULL DEFAULT 0,
    points INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO member_balances (member_id, principal_fen, bonus_fen, points)
    SELECT member_id,
           SUM(CASE account WHEN 'principal' THEN amount ELSE 0 END),
           SUM(CASE account WHEN 'bonus' THEN amount ELSE 0 END),
           SUM(CASE account WHEN 'points' THEN amount ELSE 0 END)
    FROM ledger GROUP BY member_id;
ALTER TABLE members DROP COLUMN principal_fen;
ALTER TABLE members DROP COLUMN bonus_fen;
ALTER TABLE members DROP COLUMN points;

CREATE TRIGGER ledger_balance_insert AFTER INSERT ON ledger
BEGIN
    INSERT INTO member_balances (member_id, principal_fen, bonus_fen, points)
    VALUES (NEW.member_id,
            CASE NEW.account WHEN 'principal' THEN NEW.amount ELSE 0 END,
            CASE NEW.account WHEN 'bonus' THEN NEW.amount ELSE 0 END,
            CASE NEW.account WHEN 'points' THEN NEW.amount ELSE 0 END)
    ON CONFLICT (member_id) DO UPDATE SET
        principal_fen = principal_fen + excluded.principal_fen,
        bonus_fen = bonus_fen + excluded.bonus_fen,
        points = points + excluded.points;
END;

CREATE TRIGGER ledger_balance_replace AFTER UPDATE OF member_id, account, amount ON ledger
BEGIN
    UPDATE member_balances SET
        principal_fen = principal_fen - CASE OLD.account WHEN 'principal' THEN OLD.amount ELSE 0 END,
        bonus_fen = bonus_fen - CASE OLD.account WHEN 'bonus' THEN OLD.amount ELSE 0 END,
        points = points - CASE OLD.account WHEN 'points' THEN OLD.amount ELSE 0 END
    WHERE member_id = OLD.member_id;
    INSERT INTO member_balances (member_id, principal_fen, bonus_fen, points)
    VALUES (NEW.member_id,
            CASE NEW.account WHEN 'principal' THEN NEW.amount ELSE 0 END,
            CASE NEW.account WHEN 'bonus' THEN NEW.amount ELSE 0 END,
            CASE NEW.account WHEN 'points' THEN NEW.amount ELSE 0 END)
    ON CONFLICT (member_id) DO UPDATE SET
        principal_fen = principal_fen + excluded.principal_fen,
        bonus_fen = bonus_fen + excluded.bonus_fen,
        points = points + excluded.points;
END;
"#;

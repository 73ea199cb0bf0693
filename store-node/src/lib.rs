//! store-node: one store's server. It keeps the store's replica in SQLite, takes checkouts and
//! serves the cashier HTTP API, with nothing else running.
//!
//! The replica itself (schema, projection, queries, JSON views) is `chainsync-replica`, shared
//! with the hub.
//!
//! Layout:
//! - [`config`]: the data directory and `store.toml`.
//! - [`db`]: opening SQLite (WAL, synchronous=FULL) and the numbered migrations.
//! - [`auth`]: API users and their tokens (only hashes are stored).
//! - [`writer`]: the one writer thread; commands are group-committed, each in a savepoint.
//! - [`commands`]: what each write does, inside the writer's transaction.
//! - [`sync_client`]: background sync with the hub over QUIC, with reconnect backoff.
//! - [`sync_side`]: the store's side of the sync protocol over SQLite.
//! - [`http`]: the axum router, auth, errors, idempotency, OpenAPI.
//! - [`member_search`]: member search over a trigger-kept index.
//! - [`outbox`]: messages for the webhook, queued with their event and sent with retries.
//!
//! Architecture invariant: every change to replicated state goes through an operation in the
//! `ops` table, written in the same transaction as its projection.

pub mod auth;
pub mod commands;
pub mod config;
pub mod coupons;
pub mod db;
pub mod engagement;
pub mod http;
pub mod member_search;
pub mod membership_http;
pub mod outbox;
pub mod program;
pub mod refunds;
pub mod stock;
pub mod stock_http;
pub mod sync_client;
pub mod sync_side;
pub mod writer;

/// Random bytes from the operating system.
pub fn random_bytes<const N: usize>() -> anyhow::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(bytes)
}

/// Wall-clock time in Unix ms: the one clock reading of the store node's write path (moved by
/// the test clock, [`chainsync_replica::node::test_clock_offset_ms`], in tests only).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
        .saturating_add_signed(chainsync_replica::node::test_clock_offset_ms())
}

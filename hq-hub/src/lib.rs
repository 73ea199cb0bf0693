//! hq-hub: headquarters. It is the chain's certificate authority (enrolls and revokes stores),
//! the meeting point of every store's replica (sync over QUIC with mutual TLS), and HQ's API.
//!
//! Layout:
//! - [`config`]: the data directory: `hub.toml`, the CA and hub certificates, `hub.db`.
//! - [`db`]: the hub's schema (the replica's tables plus stores, relay log, users).
//! - [`exceptions`]: the exception queue (overdrafts, double redemptions).
//! - [`storage`]: the hub's side of the sync protocol over SQLite (one writer).
//! - [`relay_cache`]: the newest stretch of the relay log, decoded once for every session.
//! - [`server`]: accepting stores over QUIC, identity and revocation checks, sessions.
//! - [`http`]: HQ's HTTP API.
//! - [`users`]: HQ users, roles, passwords, API and session tokens.
//! - [`catalog`]: HQ's catalog (items, bundles), CSV import and export.
//! - [`catalog_cli`]: `hq-hub catalog import|export`, a client of a running hub.
//! - [`audit`]: the audit log of exports and manual adjustments.
//! - [`reports`]: member search, segments, reports, CSV/xlsx export, the report CLI.

pub mod audit;
pub mod catalog;
pub mod catalog_cli;
pub mod config;
pub mod coupons;
pub mod db;
pub mod exceptions;
pub mod http;
pub mod idempotency;
pub mod program;
pub mod relay_cache;
pub mod reports;
pub mod server;
pub mod stock;
pub mod storage;
pub mod users;

/// Wall-clock time in Unix ms: the one clock reading of the hub's write path.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
        .saturating_add_signed(chainsync_replica::node::test_clock_offset_ms())
}

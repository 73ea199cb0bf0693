//! chainsync-replica: the SQLite replica that both `store-node` and `hq-hub` keep.
//!
//! Layout:
//! - [`sqlite`]: connection settings and the replicated tables' schema.
//! - [`project`]: replicated operations → the tables people query (idempotent), including the
//!   deterministic merge of members registered twice with the same phone.
//! - [`read`]: queries (members, ledger, checkouts, products) and the read-connection pool.
//! - [`digest`]: a hash over the canonical replicated state: equal digests ⇔ converged.
//! - [`views`]: the JSON shapes of the HTTP APIs.
//! - [`node`]: logging, graceful shutdown, opening with migrations (both binaries).
//! - [`api`]: the API error type and the reply of a write.
//! - [`catalog`]: the catalog (products with HQ's fields, bundles) and its queries.
//! - [`coupons`]: rich coupon templates, issued coupons, transfers, lottery wheels and draws.
//! - [`program`]: the membership program's state (HQ's rule set, count cards).
//! - [`engagement`]: referrals (who referred whom) and their reward status.
//! - [`stock`]: stock movements, levels and transfers; per-store scope digests.
//!
//! Architecture invariant: a replica's queryable state is a pure function of the *set* of
//! operations it holds, whatever order they arrived in.

pub mod api;
pub mod catalog;
pub mod coupons;
pub mod digest;
pub mod engagement;
pub mod lww;
pub mod node;
pub mod posted;
pub mod program;
pub mod project;
pub mod read;
pub mod sqlite;
pub mod stock;
pub mod views;

//! chainsync-core: the pure heart of chainsync.
//!
//! Layout:
//! - [`money`]: integer 分 amounts with checked arithmetic.
//! - [`id`]: store identities and UUIDv7 ids built from an injected clock and random source.
//! - [`exceptions`]: overdrafts and double redemptions found in the merged state.
//! - [`catalog`]: HQ's catalog items and bundles, and the merge rule of a SKU's two registers.
//! - [`feedback`]: feedback entries (rating and text) about a member's visits.
//! - [`gift`]: the points gift catalog (gifts with a point price and a stock, redemptions).
//! - [`hlc`]: the hybrid logical clock that orders replicated writes.
//! - [`ledger`]: immutable stored-value and points entries, and balances as their fold.
//! - [`member`]: member profiles as automerge documents, phone normalization.
//! - [`referral`]: referrals (老带新) and their once-only rewards with derived entry ids.
//! - [`points_expiry`]: the points expiry policy, oldest-first spending and expired amounts.
//! - [`rules`]: tiers, recharge bonus and points rules with their defaults.
//! - [`tiers`]: a member's tier from its entries (spend or points, downgrade policies).
//! - [`allowance`]: offline spending limits and the hub's book of online grants.
//! - [`coupon`]: coupon templates and rules, redemption checks, transfers, the lottery wheel.
//! - [`count_card`]: count cards (templates, purchases, uses) and their overuse exception.
//! - [`checkout`]: pricing a cart and checking its payments, without touching storage.
//! - [`refund`]: line-level refunds and the policy that restores payments, points and stored value.
//! - [`op`]: the replicated operations (versioned) that every local write produces.
//! - [`sync`]: the store ↔ hub sync protocol as two sans-IO state machines.
//! - [`sync_memory`]: in-memory storage for the sync machines (tests, simulation).
//! - [`limits`]: every size and count limit, in one place.
//! - [`stock`]: stock as a fold of immutable movements; transfers in transit and discrepancies.
//!
//! Architecture invariant: nothing here reads a clock, a random source, a file or a socket.
//! Callers pass time (`now_ms`) and randomness in. Everything is deterministic and testable.

pub mod allowance;
pub mod catalog;
pub mod checkout;
pub mod count_card;
pub mod coupon;
pub mod engagement;
pub mod exceptions;
pub mod feedback;
pub mod gift;
pub mod hlc;
pub mod id;
pub mod ledger;
pub mod limits;
pub mod member;
pub mod money;
pub mod op;
pub mod points_expiry;
pub mod referral;
pub mod refund;
pub mod rules;
pub mod stock;
pub mod sync;
pub mod sync_memory;
pub mod tiers;

pub use hlc::{Hlc, HlcTimestamp};
pub use id::{IdGenerator, StoreId};
pub use money::Fen;

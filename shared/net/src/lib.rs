//! chainsync-net: QUIC + mutual TLS plumbing shared by `store-node` and `hq-hub`.
//!
//! Layout:
//! - [`pki`]: the HQ certificate authority (rcgen), hub and store certificates, reading a store's
//!   identity out of its certificate.
//! - [`bundle`]: the enrollment bundle a store receives at enrollment (one TOML file).
//! - [`tls`]: rustls + quinn configurations: ring provider only, TLS 1.3, ALPN `chainsync/1`,
//!   client certificates required and verified against the HQ CA.
//! - [`frame`]: length-prefixed frames on a QUIC stream, size checked before allocation.

pub mod bundle;
pub mod frame;
pub mod pki;
pub mod tls;

pub use bundle::EnrollmentBundle;

/// The ALPN protocol name both ends require.
pub const alpn: &[u8] = b"chainsync/1";

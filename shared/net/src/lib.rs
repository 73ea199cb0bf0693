//! chainsync-net: QUIC + mutual TLS plumbing shared by `store-node` and `hq-hub`.
//!
//! Layout:
//! - [`limits`]: every size limit and timing setting of the transport (`*_max`, `*_ms`).
//! - [`pki`]: the HQ certificate authority (rcgen, ECDSA P-256), hub and store certificates,
//!   reading a store's identity (`<store-id>.stores.chainsync`) out of its certificate.
//! - [`bundle`]: the enrollment bundle a store receives at enrollment (one TOML file, mode 0600).
//! - [`tls`]: rustls + quinn configurations: ring provider only, TLS 1.3, ALPN `chainsync/1`,
//!   client certificates required and verified against the HQ CA; the peer's store id and the
//!   revocation check made right after the handshake ([`tls::admit_store`]).
//! - [`endpoint`]: binding server and client endpoints, connecting to the hub.
//! - [`frame`]: length-prefixed frames on a QUIC stream, size checked before allocation.
//!
//! A connection's life at the hub: [`endpoint::server_endpoint`] accepts it, TLS verifies the
//! store certificate against the CA, [`tls::admit_store`] reads the store id and refuses a revoked
//! store (closing with [`tls::close_code::refused`] and reason `revoked`) before any stream is
//! accepted, then frames flow with [`frame::read_frame`] / [`frame::write_frame`].

pub mod bundle;
pub mod endpoint;
pub mod frame;
pub mod limits;
pub mod pki;
pub mod tls;

pub use bundle::EnrollmentBundle;

/// The ALPN protocol name both ends require.
pub const alpn: &[u8] = b"chainsync/1";

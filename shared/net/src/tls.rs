//! rustls and quinn configurations. Only the ring provider is used, passed explicitly (never
//! the process default); TLS 1.3 only; ALPN `chainsync/1`; the hub requires a client
//! certificate issued by the HQ CA, and a store trusts only the HQ CA.
//!
//! Mutual TLS over QUIC finishes on the client before the server has checked the client's
//! certificate: a store whose certificate is refused sees `connect()` succeed and learns of the
//! refusal at its first stream read or write. Revocation is checked by the hub right after the
//! handshake ([`admit_store`]), before it accepts any stream, so it applies from the next
//! connection on without rebuilding the server configuration.

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use std::collections::HashSet;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use crate::bundle::EnrollmentBundle;
use crate::pki;

pub use crate::limits::{idle_timeout_ms, keep_alive_ms, streams_bidi_max, streams_uni_max};

/// Application close codes the hub sends to refused stores.
pub mod close_code {
    /// The store may not connect (no identity, revoked); the reason says why.
    pub const refused: u32 = 1;
}

/// Close reasons (the bytes sent with [`close_code::refused`]).
pub mod close_reason {
    pub const revoked: &str = "revoked";
    pub const no_store_identity: &str = "no store identity";
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("PEM: {0}")]
    Pem(String),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("QUIC crypto: {0}")]
    Quic(String),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    Ok(pki::certificates_from_pem(pem)?)
}

fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::Pem(e.to_string()))
}

fn roots(ca_pem: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(ca_pem)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// The transport settings both ends use: keep-alive, idle timeout, bounded streams.
pub fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(keep_alive_ms)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(idle_timeout_ms).into()));
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams_bidi_max));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(streams_uni_max));
    Arc::new(transport)
}

/// The hub's QUIC server configuration: presents the hub certificate, requires a client
/// certificate that chains to the CA. Revocation is not part of it: see [`admit_store`].
pub fn server_config(
    ca_cert_pem: &str,
    hub_cert_pem: &str,
    hub_key_pem: &str,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(ca_cert_pem)?),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certificates(hub_cert_pem)?, private_key(hub_key_pem)?)?;
    tls.alpn_protocols = vec![crate::alpn.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// A store's QUIC client configuration: trusts only the HQ CA, presents the store certificate.
pub fn client_config(
    ca_cert_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::ClientConfig, TlsError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_client_auth_cert(certificates(cert_pem)?, private_key(key_pem)?)?;
    quic_client_config(tls)
}

/// [`client_config`] from an enrollment bundle.
pub fn client_config_from_bundle(
    bundle: &EnrollmentBundle,
) -> Result<quinn::ClientConfig, TlsError> {
    client_config(&bundle.ca_cert_pem, &bundle.cert_pem, &bundle.key_pem)
}

/// A client configuration that presents no certificate (for tests of refusal).
pub fn anonymous_client_config(ca_cert_pem: &str) -> Result<quinn::ClientConfig, TlsError> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_no_client_auth();
    quic_client_config(tls)
}

fn quic_client_config(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig, TlsError> {
    tls.alpn_protocols = vec![crate::alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The store id of a connected (and TLS-verified) peer.
pub fn peer_store_id(connection: &quinn::Connection) -> Result<String, TlsError> {
    // Downcast at once: the identity is not Send and must not live across an await.
    let der = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|chain| chain.first().cloned())
        .ok_or(TlsError::NoPeerCertificate)?;
    Ok(pki::store_id_from_certificate(&der)?)
}

/// Checks offline that `cert_pem` is a store certificate issued by the CA in `ca_cert_pem`
/// and valid now, as the hub's verifier would; returns the store id it names.
pub fn verify_store_certificate(ca_cert_pem: &str, cert_pem: &str) -> Result<String, TlsError> {
    verify_store_certificate_at(ca_cert_pem, cert_pem, UnixTime::now())
}

/// [`verify_store_certificate`] as of time `at` (to check a certificate's origin regardless of
/// the local clock).
pub fn verify_store_certificate_at(
    ca_cert_pem: &str,
    cert_pem: &str,
    at: UnixTime,
) -> Result<String, TlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca_cert_pem)?), provider())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let chain = certificates(cert_pem)?;
    let (end_entity, intermediates) = chain.split_first().ok_or(TlsError::NoPeerCertificate)?;
    verifier.verify_client_cert(end_entity, intermediates, at)?;
    Ok(pki::store_id_from_certificate(end_entity)?)
}

/// The store ids the hub refuses, shared between whoever revokes and the accepting tasks.
/// Cloning shares the same set.
#[derive(Clone, Debug, Default)]
pub struct RevokedStores(Arc<RwLock<HashSet<String>>>);

impl RevokedStores {
    pub fn new() -> RevokedStores {
        RevokedStores::default()
    }

    pub fn from_store_ids<I, S>(store_ids: I) -> RevokedStores
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let set = store_ids.into_iter().map(Into::into).collect();
        RevokedStores(Arc::new(RwLock::new(set)))
    }

    /// Refuse `store_id` from its next connection on. True if it was not revoked before.
    pub fn revoke(&self, store_id: &str) -> bool {
        // A panic while holding the lock cannot leave a HashSet half-updated: use it anyway.
        let mut set = self.0.write().unwrap_or_else(PoisonError::into_inner);
        set.insert(store_id.to_owned())
    }

    /// Accept `store_id` again. True if it was revoked.
    pub fn reinstate(&self, store_id: &str) -> bool {
        let mut set = self.0.write().unwrap_or_else(PoisonError::into_inner);
        set.remove(store_id)
    }

    pub fn is_revoked(&self, store_id: &str) -> bool {
        let set = self.0.read().unwrap_or_else(PoisonError::into_inner);
        set.contains(store_id)
    }
}

/// Why [`admit_store`] refused a connection.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("peer has no usable store identity: {0}")]
    NoStoreIdentity(TlsError),
    #[error("store {store_id} is revoked")]
    Revoked { store_id: String },
}

/// The hub's check of a freshly handshaken connection, before it accepts any stream: the peer's
/// store id, unless the certificate names no store or `is_revoked` says the store is revoked.
/// A refused connection is closed at once with [`close_code::refused`] and reason
/// [`close_reason::revoked`] or [`close_reason::no_store_identity`]. Synchronous, so it is safe
/// to call in a spawned task (the peer identity never crosses an await).
pub fn admit_store(
    connection: &quinn::Connection,
    is_revoked: impl Fn(&str) -> bool,
) -> Result<String, Refusal> {
    let refuse = |reason: &str| {
        tracing::warn!(remote = %connection.remote_address(), reason, "refused store connection");
        connection.close(
            quinn::VarInt::from_u32(close_code::refused),
            reason.as_bytes(),
        );
    };
    let store_id = match peer_store_id(connection) {
        Ok(store_id) => store_id,
        Err(e) => {
            refuse(close_reason::no_store_identity);
            return Err(Refusal::NoStoreIdentity(e));
        }
    };
    if is_revoked(&store_id) {
        refuse(close_reason::revoked);
        return Err(Refusal::Revoked { store_id });
    }
    Ok(store_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_stores_are_shared_between_clones() {
        let revoked = RevokedStores::from_store_ids(["sh-009"]);
        let seen_by_acceptor = revoked.clone();
        assert!(seen_by_acceptor.is_revoked("sh-009"));
        assert!(!seen_by_acceptor.is_revoked("sh-001"));
        assert!(revoked.revoke("sh-001"));
        assert!(!revoked.revoke("sh-001"));
        assert!(seen_by_acceptor.is_revoked("sh-001"));
        assert!(revoked.reinstate("sh-001"));
        assert!(!seen_by_acceptor.is_revoked("sh-001"));
    }

    #[test]
    fn configurations_refuse_bad_pem_without_panicking() {
        let (ca, _) = pki::CertificateAuthority::generate("test CA").unwrap();
        let hub = ca
            .issue_hub_certificate(&pki::hub_names("hub.chainsync"))
            .unwrap();
        let store = ca.issue_store_certificate("sh-001").unwrap();
        assert!(server_config(&ca.cert_pem, &hub.cert_pem, &hub.key_pem).is_ok());
        assert!(client_config(&ca.cert_pem, &store.cert_pem, &store.key_pem).is_ok());
        assert!(server_config("", &hub.cert_pem, &hub.key_pem).is_err());
        assert!(server_config(&ca.cert_pem, "junk", &hub.key_pem).is_err());
        assert!(server_config(&ca.cert_pem, &hub.cert_pem, "junk").is_err());
        assert!(client_config("junk", &store.cert_pem, &store.key_pem).is_err());
        assert!(client_config(&ca.cert_pem, &store.cert_pem, &hub.key_pem).is_err());
        assert!(anonymous_client_config("").is_err());
    }
}

//! rustls and quinn configurations. Only the ring provider is used, passed explicitly (never
//! the process default); TLS 1.3 only; ALPN `chainsync/1`; the hub requires a client
//! certificate issued by the HQ CA.

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;

use crate::pki;

/// Keep-alive on idle links, so NATs keep the mapping and a dead link is noticed.
pub const keep_alive_ms: u64 = 2_000;
/// A link silent for this long is dead.
pub const idle_timeout_ms: u32 = 10_000;
/// Most concurrent bidirectional streams a peer may open.
pub const streams_bidi_max: u32 = 8;

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
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Pem("no certificate found".into()));
    }
    Ok(certs)
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

fn transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_millis(keep_alive_ms)));
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(idle_timeout_ms).into()));
    transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(streams_bidi_max));
    transport.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
    Arc::new(transport)
}

/// The hub's QUIC server configuration.
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
    config.transport_config(transport());
    Ok(config)
}

/// A store's QUIC client configuration: trusts only the HQ CA, presents the store certificate.
pub fn client_config(
    ca_cert_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_client_auth_cert(certificates(cert_pem)?, private_key(key_pem)?)?;
    tls.alpn_protocols = vec![crate::alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport());
    Ok(config)
}

/// A client configuration that presents no certificate (for tests of refusal).
pub fn anonymous_client_config(ca_cert_pem: &str) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_cert_pem)?)
        .with_no_client_auth();
    tls.alpn_protocols = vec![crate::alpn.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
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

//! QUIC endpoints: the hub listens with [`server_endpoint`], a store dials with
//! [`client_endpoint`] + [`connect`]. Both must be called inside a tokio runtime (otherwise they
//! return an error, they do not panic). The transport settings come with the configurations
//! built in [`crate::tls`].

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("cannot open a QUIC endpoint on UDP {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr} as {server_name:?}: {source}")]
    Connect {
        addr: SocketAddr,
        server_name: String,
        source: quinn::ConnectError,
    },
    #[error("connection to {addr} failed: {source}")]
    Connection {
        addr: SocketAddr,
        source: quinn::ConnectionError,
    },
}

/// The hub's endpoint, listening on `listen_addr` (port 0 picks a free port: read it back with
/// `local_addr()`).
pub fn server_endpoint(
    listen_addr: SocketAddr,
    config: quinn::ServerConfig,
) -> Result<quinn::Endpoint, EndpointError> {
    quinn::Endpoint::server(config, listen_addr).map_err(|source| EndpointError::Bind {
        addr: listen_addr,
        source,
    })
}

/// A store's endpoint bound to `bind_addr` (usually port 0), dialing with `config` by default.
pub fn client_endpoint(
    bind_addr: SocketAddr,
    config: quinn::ClientConfig,
) -> Result<quinn::Endpoint, EndpointError> {
    let mut endpoint =
        quinn::Endpoint::client(bind_addr).map_err(|source| EndpointError::Bind {
            addr: bind_addr,
            source,
        })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Dials the hub at `addr`, checking its certificate names `server_name`, and waits for the
/// handshake. Success does not mean the hub accepted this store: a refused client certificate
/// or a revoked store shows at the first stream read or write, so treat the link as up only
/// after the hub's first reply.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<quinn::Connection, EndpointError> {
    let connecting =
        endpoint
            .connect(addr, server_name)
            .map_err(|source| EndpointError::Connect {
                addr,
                server_name: server_name.to_owned(),
                source,
            })?;
    connecting
        .await
        .map_err(|source| EndpointError::Connection { addr, source })
}

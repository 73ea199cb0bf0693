//! The transport end to end on 127.0.0.1: a hub endpoint that admits stores the way `hq-hub`
//! will (TLS checks the certificate, `admit_store` the identity and revocation, then frames),
//! and stores that are accepted or refused. Every test is bounded by `test_time_max`; nothing
//! waits by sleeping: each side reports what happened through a channel.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chainsync_net::endpoint::{client_endpoint, connect, server_endpoint};
use chainsync_net::frame::{FrameError, frame_bytes_max, read_frame, write_frame};
use chainsync_net::pki::{CertificateAuthority, CertifiedKey, hub_names};
use chainsync_net::tls::{self, RevokedStores, close_code, close_reason};
use chainsync_net::{EnrollmentBundle, bundle::bundle_version};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::timeout;

const test_time_max: Duration = Duration::from_secs(20);
const hub_server_name: &str = "hub.chainsync";

/// What the hub saw of one connection or stream.
#[derive(Debug)]
enum HubEvent {
    /// TLS refused the connection (e.g. bad or missing client certificate).
    HandshakeFailed(quinn::ConnectionError),
    /// `admit_store` refused it after the handshake.
    Refused(tls::Refusal),
    /// A frame arrived on a stream of an admitted store.
    Frame { store_id: String, payload: Vec<u8> },
    /// A stream of an admitted store ended: `Ok` for a clean end, or why reading failed.
    StreamEnded {
        store_id: String,
        result: Result<(), FrameError>,
    },
}

struct Hub {
    ca: CertificateAuthority,
    addr: SocketAddr,
    revoked: RevokedStores,
    events: mpsc::UnboundedReceiver<HubEvent>,
    endpoint: quinn::Endpoint,
}

impl Hub {
    /// A hub on 127.0.0.1 with a certificate from `ca`, answering each frame with
    /// `<store-id>:<payload>`.
    fn start(ca: CertificateAuthority) -> Hub {
        let hub_cert = ca
            .issue_hub_certificate(&hub_names(hub_server_name))
            .unwrap();
        Hub::start_with_certificate(ca, &hub_cert)
    }

    fn start_with_certificate(ca: CertificateAuthority, hub_cert: &CertifiedKey) -> Hub {
        let config =
            tls::server_config(&ca.cert_pem, &hub_cert.cert_pem, &hub_cert.key_pem).unwrap();
        let endpoint = server_endpoint("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let revoked = RevokedStores::new();
        let (report, events) = mpsc::unbounded_channel();
        let accepting = endpoint.clone();
        let revoked_seen = revoked.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let report = report.clone();
                let revoked = revoked_seen.clone();
                tokio::spawn(serve_connection(incoming, revoked, report));
            }
        });
        Hub {
            ca,
            addr,
            revoked,
            events,
            endpoint,
        }
    }

    async fn next_event(&mut self) -> HubEvent {
        self.events.recv().await.expect("hub task ended")
    }

    fn bundle_for(&self, store_id: &str) -> EnrollmentBundle {
        let store = self.ca.issue_store_certificate(store_id).unwrap();
        EnrollmentBundle {
            version: bundle_version,
            store_id: store_id.into(),
            store_name: format!("store {store_id}"),
            region: "east".into(),
            hub_addr: self.addr.to_string(),
            hub_server_name: hub_server_name.into(),
            ca_cert_pem: self.ca.cert_pem.clone(),
            cert_pem: store.cert_pem,
            key_pem: store.key_pem,
        }
    }
}

async fn serve_connection(
    incoming: quinn::Incoming,
    revoked: RevokedStores,
    report: mpsc::UnboundedSender<HubEvent>,
) {
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(e) => {
            let _ = report.send(HubEvent::HandshakeFailed(e));
            return;
        }
    };
    let store_id = match tls::admit_store(&connection, |id| revoked.is_revoked(id)) {
        Ok(store_id) => store_id,
        Err(refusal) => {
            let _ = report.send(HubEvent::Refused(refusal));
            return;
        }
    };
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let result = loop {
            match read_frame(&mut recv).await {
                Ok(Some(payload)) => {
                    let mut reply = format!("{store_id}:").into_bytes();
                    reply.extend_from_slice(&payload);
                    let _ = report.send(HubEvent::Frame {
                        store_id: store_id.clone(),
                        payload,
                    });
                    if let Err(e) = write_frame(&mut send, &reply).await {
                        break Err(e);
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let _ = send.finish();
        let _ = report.send(HubEvent::StreamEnded {
            store_id: store_id.clone(),
            result,
        });
    }
}

/// A handshake that failed over a certificate (the hub's verdict or the store's alert).
fn assert_certificate_failure(error: &quinn::ConnectionError) {
    assert!(
        matches!(
            error,
            quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_)
        ) && error.to_string().contains("certificate"),
        "{error:?}"
    );
}

/// A store's endpoint on 127.0.0.1 dialing with `config`.
fn store_endpoint(config: quinn::ClientConfig) -> quinn::Endpoint {
    client_endpoint("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

/// Connects, sends one frame and reads the reply; the first failure, as text, otherwise.
async fn exchange(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let connection = connect(endpoint, addr, hub_server_name)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let outcome = async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut send, payload)
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let reply = read_frame(&mut recv).await.map_err(|e| e.to_string())?;
        let reply = reply.ok_or("stream ended without a reply")?;
        match read_frame(&mut recv).await {
            Ok(None) => Ok(reply),
            other => Err(format!(
                "expected a clean end after the reply, got {other:?}"
            )),
        }
    }
    .await;
    let outcome = outcome.map_err(|e| match connection.close_reason() {
        Some(reason) => format!("{e} / closed: {reason:?}"),
        None => e,
    });
    connection.close(0u32.into(), b"done");
    outcome
}

/// Asserts the connection was closed by the hub as refused, with `reason`.
async fn assert_refused_with(endpoint: &quinn::Endpoint, addr: SocketAddr, reason: &str) {
    let connection = connect(endpoint, addr, hub_server_name).await.unwrap();
    let (mut send, mut recv) = connection.open_bi().await.unwrap();
    // The write may be buffered before the hub's close arrives; the read cannot succeed.
    let _ = write_frame(&mut send, b"hello").await;
    let _ = send.finish();
    assert!(read_frame(&mut recv).await.is_err());
    match connection.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(close)) => {
            assert_eq!(
                close.error_code,
                quinn::VarInt::from_u32(close_code::refused)
            );
            assert_eq!(&close.reason[..], reason.as_bytes());
        }
        other => panic!("expected an application close, got {other:?}"),
    }
}

#[tokio::test]
async fn an_enrolled_store_exchanges_frames_and_the_hub_knows_who_it_is() {
    timeout(test_time_max, async {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let mut hub = Hub::start(ca);
        let bundle = hub.bundle_for("sh-001");
        let store = store_endpoint(tls::client_config_from_bundle(&bundle).unwrap());

        let reply = exchange(&store, hub.addr, b"hello").await.unwrap();
        assert_eq!(reply, b"sh-001:hello");
        match hub.next_event().await {
            HubEvent::Frame { store_id, payload } => {
                assert_eq!(store_id, "sh-001");
                assert_eq!(payload, b"hello");
            }
            other => panic!("expected a frame, got {other:?}"),
        }
        match hub.next_event().await {
            HubEvent::StreamEnded { store_id, result } => {
                assert_eq!(store_id, "sh-001");
                assert!(result.is_ok(), "{result:?}");
            }
            other => panic!("expected a clean end, got {other:?}"),
        }
        store.wait_idle().await;
        hub.endpoint.close(0u32.into(), b"done");
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn a_store_without_a_certificate_is_refused() {
    timeout(test_time_max, async {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let mut hub = Hub::start(ca);
        let anonymous = store_endpoint(tls::anonymous_client_config(&hub.ca.cert_pem).unwrap());
        let failure = exchange(&anonymous, hub.addr, b"hello").await.unwrap_err();
        assert!(failure.to_lowercase().contains("certificate"), "{failure}");
        match hub.next_event().await {
            HubEvent::HandshakeFailed(e) => assert_certificate_failure(&e),
            other => panic!("expected a TLS refusal, got {other:?}"),
        }
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn a_store_certified_by_another_ca_is_refused() {
    timeout(test_time_max, async {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let mut hub = Hub::start(ca);
        // A CA of another name (unknown issuer), and one impersonating ours by name (its
        // signature does not verify with our CA's key).
        for rogue_name in ["rogue CA", "test CA"] {
            let (rogue_ca, _) = CertificateAuthority::generate(rogue_name).unwrap();
            let forged = rogue_ca.issue_store_certificate("sh-001").unwrap();
            // It trusts the real CA, so it accepts the hub; the hub must not accept it.
            let config =
                tls::client_config(&hub.ca.cert_pem, &forged.cert_pem, &forged.key_pem).unwrap();
            let failure = exchange(&store_endpoint(config), hub.addr, b"hello")
                .await
                .unwrap_err();
            assert!(failure.contains("invalid peer certificate"), "{failure}");
            match hub.next_event().await {
                HubEvent::HandshakeFailed(e) => assert_certificate_failure(&e),
                other => panic!("expected a TLS refusal, got {other:?}"),
            }
        }
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn a_revoked_store_is_refused_from_its_next_connection() {
    timeout(test_time_max, async {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let mut hub = Hub::start(ca);
        let bundle = hub.bundle_for("sh-007");
        let store = store_endpoint(tls::client_config_from_bundle(&bundle).unwrap());
        assert_eq!(
            exchange(&store, hub.addr, b"before").await.unwrap(),
            b"sh-007:before"
        );
        assert!(matches!(hub.next_event().await, HubEvent::Frame { .. }));
        assert!(matches!(
            hub.next_event().await,
            HubEvent::StreamEnded { result: Ok(()), .. }
        ));

        hub.revoked.revoke("sh-007");
        assert_refused_with(&store, hub.addr, close_reason::revoked).await;
        match hub.next_event().await {
            HubEvent::Refused(tls::Refusal::Revoked { store_id }) => assert_eq!(store_id, "sh-007"),
            other => panic!("expected a revocation refusal, got {other:?}"),
        }

        // Another store is unaffected.
        let other = hub.bundle_for("sh-008");
        let other = store_endpoint(tls::client_config_from_bundle(&other).unwrap());
        assert_eq!(exchange(&other, hub.addr, b"x").await.unwrap(), b"sh-008:x");
        match hub.next_event().await {
            HubEvent::Frame { store_id, .. } => assert_eq!(store_id, "sh-008"),
            other => panic!("expected sh-008's frame, got {other:?}"),
        }
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn a_certificate_naming_no_store_is_refused_after_the_handshake() {
    timeout(test_time_max, async {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let mut hub = Hub::start(ca);
        // Signed by the right CA for client use, but without a store name.
        let nameless = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["pos.example".into()]).unwrap();
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let ca_key = rcgen::KeyPair::from_pem(&hub.ca.key_pem()).unwrap();
            let issuer = rcgen::Issuer::from_ca_cert_pem(&hub.ca.cert_pem, ca_key).unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let config = tls::client_config(&hub.ca.cert_pem, &nameless.0, &nameless.1).unwrap();
        assert_refused_with(
            &store_endpoint(config),
            hub.addr,
            close_reason::no_store_identity,
        )
        .await;
        match hub.next_event().await {
            HubEvent::Refused(tls::Refusal::NoStoreIdentity(_)) => {}
            other => panic!("expected a refusal, got {other:?}"),
        }
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn a_store_refuses_a_hub_certified_by_another_ca() {
    timeout(test_time_max, async {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let (rogue_ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let rogue_hub_cert = rogue_ca
            .issue_hub_certificate(&hub_names(hub_server_name))
            .unwrap();
        // The impostor hub would accept stores of the real CA.
        let mut impostor = Hub::start_with_certificate(ca, &rogue_hub_cert);
        let bundle = impostor.bundle_for("sh-001");
        let store = store_endpoint(tls::client_config_from_bundle(&bundle).unwrap());
        let failure = exchange(&store, impostor.addr, b"secret")
            .await
            .unwrap_err();
        assert!(failure.starts_with("connect:"), "{failure}");
        match impostor.next_event().await {
            HubEvent::HandshakeFailed(e) => assert_certificate_failure(&e),
            other => panic!("expected a failed handshake, got {other:?}"),
        }
    })
    .await
    .expect("test took too long");
}

/// Opens a stream as an enrolled store, writes `raw` bytes, finishes, and returns how the hub's
/// `read_frame` ended on that stream (after any whole frames, which are returned too).
async fn hub_reading_of(raw: &[u8]) -> (Vec<Vec<u8>>, Result<(), FrameError>) {
    let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
    let mut hub = Hub::start(ca);
    let bundle = hub.bundle_for("sh-001");
    let store = store_endpoint(tls::client_config_from_bundle(&bundle).unwrap());
    let connection = connect(&store, hub.addr, hub_server_name).await.unwrap();
    let (mut send, _recv) = connection.open_bi().await.unwrap();
    send.write_all(raw).await.unwrap();
    send.finish().unwrap();
    let mut frames = Vec::new();
    loop {
        match hub.next_event().await {
            HubEvent::Frame { payload, .. } => frames.push(payload),
            HubEvent::StreamEnded { result, .. } => {
                connection.close(0u32.into(), b"done");
                return (frames, result);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_hub_refuses_oversize_and_truncated_frames() {
    timeout(test_time_max, async {
        // An announced length over the maximum is refused from the header alone: the payload
        // is never sent, so the reader cannot have waited for (or allocated) it.
        let (frames, result) = hub_reading_of(&u32::MAX.to_be_bytes()).await;
        assert!(frames.is_empty());
        assert!(matches!(result, Err(FrameError::TooLarge { len }) if len == u32::MAX as usize));
        let one_over = (frame_bytes_max as u32 + 1).to_be_bytes();
        let (_, result) = hub_reading_of(&one_over).await;
        assert!(matches!(result, Err(FrameError::TooLarge { .. })));

        // A whole frame, then a payload cut short.
        let mut raw = Vec::new();
        raw.extend_from_slice(&2u32.to_be_bytes());
        raw.extend_from_slice(b"ok");
        raw.extend_from_slice(&10u32.to_be_bytes());
        raw.extend_from_slice(b"abc");
        let (frames, result) = hub_reading_of(&raw).await;
        assert_eq!(frames, vec![b"ok".to_vec()]);
        assert!(matches!(result, Err(FrameError::Truncated)), "{result:?}");

        // A header cut short.
        let (frames, result) = hub_reading_of(&[0, 0]).await;
        assert!(frames.is_empty());
        assert!(matches!(result, Err(FrameError::Truncated)), "{result:?}");

        // Empty frames are frames; an empty stream is a clean end.
        let (frames, result) = hub_reading_of(&[0, 0, 0, 0]).await;
        assert_eq!(frames, vec![Vec::<u8>::new()]);
        assert!(result.is_ok());
        let (frames, result) = hub_reading_of(&[]).await;
        assert!(frames.is_empty());
        assert!(result.is_ok());
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn an_oversize_frame_is_refused_before_anything_is_written() {
    timeout(test_time_max, async {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let mut hub = Hub::start(ca);
        let bundle = hub.bundle_for("sh-001");
        let store = store_endpoint(tls::client_config_from_bundle(&bundle).unwrap());
        let connection = connect(&store, hub.addr, hub_server_name).await.unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        let too_big = vec![0u8; frame_bytes_max + 1];
        assert!(matches!(
            write_frame(&mut send, &too_big).await,
            Err(FrameError::TooLarge { .. })
        ));
        // The stream is still usable: nothing of the refused frame went out.
        write_frame(&mut send, b"after").await.unwrap();
        send.finish().unwrap();
        assert_eq!(
            read_frame(&mut recv).await.unwrap().unwrap(),
            b"sh-001:after"
        );
        match hub.next_event().await {
            HubEvent::Frame { payload, .. } => assert_eq!(payload, b"after"),
            other => panic!("expected the frame, got {other:?}"),
        }
        connection.close(0u32.into(), b"done");
    })
    .await
    .expect("test took too long");
}

#[tokio::test]
async fn a_bundle_written_by_the_hub_connects_after_a_round_trip_through_its_file() {
    timeout(test_time_max, async {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let mut hub = Hub::start(ca);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sh-003.bundle");
        hub.bundle_for("sh-003").write_to(&path).unwrap();
        let bundle = EnrollmentBundle::read_from(&path).unwrap();
        let hub_addr: SocketAddr = bundle.hub_addr.parse().unwrap();
        let store = store_endpoint(tls::client_config_from_bundle(&bundle).unwrap());
        let connection = connect(&store, hub_addr, &bundle.hub_server_name)
            .await
            .unwrap();
        let (mut send, mut recv) = connection.open_bi().await.unwrap();
        write_frame(&mut send, b"hi").await.unwrap();
        assert_eq!(read_frame(&mut recv).await.unwrap().unwrap(), b"sh-003:hi");
        match hub.next_event().await {
            HubEvent::Frame { store_id, .. } => assert_eq!(store_id, "sh-003"),
            other => panic!("expected the frame, got {other:?}"),
        }
        connection.close(0u32.into(), b"done");
    })
    .await
    .expect("test took too long");
}

//! The hub refuses, with a clear log line and without accepting any data: a client without a
//! certificate, a certificate from another CA, a revoked store, and a store sending operations
//! under another store's origin.

use anyhow::{Context, Result, anyhow};
use chainsync_core::StoreId;
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::member::{MemberDoc, Profile};
use chainsync_core::op::{Envelope, Op, OpV1};
use chainsync_core::sync::{Message, MessageV1, RefuseReason, protocol_version_current};
use chainsync_net::EnrollmentBundle;
use chainsync_net::pki::CertificateAuthority;
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tests::multi::{Hub, Store, wait_until};

const bounded: Duration = Duration::from_secs(30);

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// Connect, open a stream, send one frame, and read the answer (if any).
async fn try_session(
    config: quinn::ClientConfig,
    hub: SocketAddr,
    first: Message,
) -> Result<Option<Message>> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let connection = endpoint.connect(hub, "hub.chainsync")?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    chainsync_net::frame::write_frame(&mut send, &first.encode()).await?;
    let answer = chainsync_net::frame::read_frame(&mut recv).await?;
    Ok(match answer {
        Some(bytes) => Some(Message::decode(&bytes)?),
        None => None,
    })
}

fn hello(store: &str) -> Result<Message> {
    Ok(Message::V1(MessageV1::Hello {
        protocol_version: protocol_version_current,
        store_id: StoreId::parse(store)?,
        own_seq_max: 1,
        relay_cursor: 0,
    }))
}

fn no_member_at_hub(hub: &Hub) -> Result<()> {
    let (_, members) = hub.get("/api/v1/members")?;
    assert_eq!(
        members["members"].as_array().map(Vec::len),
        Some(0),
        "hub accepted nothing: {members}"
    );
    Ok(())
}

#[test]
fn clients_without_a_valid_certificate_are_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let bundle = EnrollmentBundle::read_from(&hub.enroll("ok1", dir.path())?)?;
    let rt = runtime()?;

    // No client certificate at all.
    let anonymous = chainsync_net::tls::anonymous_client_config(&bundle.ca_cert_pem)?;
    let first = hello("ok1")?;
    let outcome = rt.block_on(async move {
        tokio::time::timeout(bounded, try_session(anonymous, hub.quic, first)).await
    })?;
    assert!(
        outcome.is_err() || matches!(outcome, Ok(None)),
        "no certificate, no session: {outcome:?}"
    );

    // A certificate for the same store id from another CA.
    let (other_ca, _) = CertificateAuthority::generate("another CA")?;
    let forged = other_ca.issue_store_certificate("ok1")?;
    let foreign =
        chainsync_net::tls::client_config(&bundle.ca_cert_pem, &forged.cert_pem, &forged.key_pem)?;
    let first = hello("ok1")?;
    let outcome = rt.block_on(async move {
        tokio::time::timeout(bounded, try_session(foreign, hub.quic, first)).await
    })?;
    assert!(
        outcome.is_err() || matches!(outcome, Ok(None)),
        "foreign CA, no session: {outcome:?}"
    );

    wait_until("the hub logged both refusals", bounded, || {
        Ok(hub.log().matches("store connection failed in TLS").count() >= 2)
    })?;
    no_member_at_hub(&hub)?;
    Ok(())
}

#[test]
fn a_revoked_store_is_refused_at_its_next_connection() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let mut store = Store::start("rv1", dir.path(), &hub.enroll("rv1", dir.path())?)?;
    wait_until("store online", bounded, || {
        Ok(store.sync_status()?["link"] == "online")
    })?;
    hub.revoke("rv1")?;
    store.restart()?;
    let member = store.ok(
        "/api/v1/members",
        &json!({"name": "吴九", "phone": "13900005555"}),
    )?;
    wait_until("store sees the refusal", bounded, || {
        let status = store.sync_status()?;
        Ok(status["link"] != "online" && status["last_error"].is_string())
    })?;
    wait_until("hub logged the refusal", bounded, || {
        Ok(hub.log().contains("store rv1 is revoked"))
    })?;
    let id = member["id"].as_str().context("id")?;
    assert_eq!(
        hub.get(&format!("/api/v1/members/{id}"))?.0,
        404,
        "nothing from a revoked store"
    );
    assert!(store.sync_status()?["waiting"].as_u64().unwrap_or(0) > 0);
    Ok(())
}

#[test]
fn a_store_cannot_send_another_stores_operations() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let bundle = EnrollmentBundle::read_from(&hub.enroll("fa", dir.path())?)?;
    hub.enroll("fb", dir.path())?;
    let config =
        chainsync_net::tls::client_config(&bundle.ca_cert_pem, &bundle.cert_pem, &bundle.key_pem)?;
    let victim = StoreId::parse("fb")?;
    let profile = Profile {
        name: "冒名".into(),
        phone: "13900006666".into(),
        card_no: "900001".into(),
        ..Profile::default()
    };
    let (_, change) = MemberDoc::create(&victim, &profile, 1)?;
    let forged = Envelope {
        origin: victim,
        seq: 1,
        hlc: HlcTimestamp {
            wall_ms: 1,
            counter: 0,
        },
        op: Op::V1(OpV1::MemberChange {
            member_id: uuid::Uuid::from_u128(7),
            change,
        }),
    };
    let rt = runtime()?;
    let refusal = rt.block_on(async {
        tokio::time::timeout(bounded, async {
            let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
            endpoint.set_default_client_config(config);
            let connection = endpoint.connect(hub.quic, "hub.chainsync")?.await?;
            let (mut send, mut recv) = connection.open_bi().await?;
            chainsync_net::frame::write_frame(&mut send, &hello("fa")?.encode()).await?;
            let welcome = chainsync_net::frame::read_frame(&mut recv)
                .await?
                .context("no welcome")?;
            assert!(matches!(
                Message::decode(&welcome)?,
                Message::V1(MessageV1::Welcome { .. })
            ));
            let push = Message::V1(MessageV1::Push { ops: vec![forged] });
            chainsync_net::frame::write_frame(&mut send, &push.encode()).await?;
            // Skip relays (the log is empty) until the refusal.
            loop {
                let frame = chainsync_net::frame::read_frame(&mut recv)
                    .await?
                    .context("closed without a reason")?;
                if let Message::V1(MessageV1::Refused { reason, .. }) = Message::decode(&frame)? {
                    return Ok::<_, anyhow::Error>(reason);
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no answer"))?
    })?;
    assert_eq!(refusal, RefuseReason::ForeignOrigin);
    wait_until("the hub logged it", bounded, || {
        Ok(hub.log().contains("refused store session"))
    })?;
    no_member_at_hub(&hub)?;
    Ok(())
}

//! Background sync with the hub: connect over QUIC with the store's certificate, run a
//! [`StoreSession`] on one stream, reconnect with backoff when the link drops. Never touches
//! the cashier path: relayed operations are applied through the writer's background queue.

use chainsync_core::StoreId;
use chainsync_core::sync::{
    AuthorizeDecision, AuthorizeRequest, Fallback, Message, StoreSession, StoreSessionState,
    SyncError,
};
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use crate::sync_side::SqliteStoreSide;
use crate::writer::Writer;

/// First wait after a failed attempt; doubles up to `reconnect_delay_max_ms`.
pub const reconnect_delay_min_ms: u64 = 500;
pub const reconnect_delay_max_ms: u64 = 30_000;
/// Give up on a connection attempt after this long.
pub const connect_timeout_ms: u64 = 10_000;
/// How often the session checks its retransmit timer.
pub const session_tick_ms: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not enrolled with a hub: the store works on its own.
    Standalone,
    Connecting,
    /// The hub answered our Hello.
    Online,
    Offline,
}

/// What `GET /api/v1/sync/status` and `store-node status` show about the link.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct LinkStatus {
    pub link: LinkState,
    pub hub_addr: Option<String>,
    /// Why the last attempt or session failed.
    pub last_error: Option<String>,
    pub connected_since_ms: Option<u64>,
}

pub type SharedLinkStatus = Arc<Mutex<LinkStatus>>;

/// Most authorization requests waiting for the sync task.
pub const authorization_queue_max: usize = 256;

type AuthorizationJob = (AuthorizeRequest, oneshot::Sender<AuthorizeDecision>);

/// Asks the hub, through the running sync session, to authorize spends.
#[derive(Clone)]
pub struct Authorizer {
    queue: mpsc::Sender<AuthorizationJob>,
    link: SharedLinkStatus,
}

impl Authorizer {
    /// A new authorizer and the receiving end for [`SyncClient::authorizations`].
    pub fn new(link: SharedLinkStatus) -> (Authorizer, mpsc::Receiver<AuthorizationJob>) {
        let (queue, jobs) = mpsc::channel(authorization_queue_max);
        (Authorizer { queue, link }, jobs)
    }

    /// The hub's decision, or `None` if it cannot be had within `timeout_ms` (link down,
    /// slow or lost reply): then the offline rules apply.
    pub async fn ask(
        &self,
        request: AuthorizeRequest,
        timeout_ms: u64,
    ) -> Option<AuthorizeDecision> {
        let online = self
            .link
            .lock()
            .map(|s| s.link == LinkState::Online)
            .unwrap_or(false);
        if !online {
            return None;
        }
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.queue.send((request, reply)).await.ok()?;
            answer.await.ok()
        };
        tokio::time::timeout(Duration::from_millis(timeout_ms), asked)
            .await
            .ok()
            .flatten()
    }
}

pub fn standalone_status() -> SharedLinkStatus {
    Arc::new(Mutex::new(LinkStatus {
        link: LinkState::Standalone,
        hub_addr: None,
        last_error: None,
        connected_since_ms: None,
    }))
}

pub struct SyncClient {
    pub store: StoreId,
    pub database: PathBuf,
    pub writer: Writer,
    /// `host:port` of the hub, resolved at each attempt.
    pub hub_addr: String,
    pub server_name: String,
    pub client_config: quinn::ClientConfig,
    pub status: SharedLinkStatus,
    /// Authorization requests from the cashier API (see [`Authorizer`]).
    pub authorizations: Option<mpsc::Receiver<AuthorizationJob>>,
}

impl SyncClient {
    fn set_status(&self, link: LinkState, error: Option<String>) {
        if let Ok(mut status) = self.status.lock() {
            if status.link != link {
                self.persist_link_state(link);
            }
            status.link = link;
            if error.is_some() {
                status.last_error = error;
            }
            status.connected_since_ms = if link == LinkState::Online {
                Some(crate::now_ms())
            } else {
                None
            };
        }
    }

    /// Keep the link state in the database too, for `store-node status`.
    fn persist_link_state(&self, link: LinkState) {
        let writer = self.writer.clone();
        let name = serde_json::to_value(link)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        tokio::spawn(async move {
            let job: crate::writer::Job = Box::new(move |conn, _, _| {
                chainsync_replica::sqlite::set_meta(conn, "sync_link_state", &name)?;
                if name == "online" {
                    // Back online: the offline period, and its allowance, are over.
                    conn.execute("DELETE FROM offline_spend", [])?;
                }
                Ok(chainsync_replica::api::Reply {
                    status: 200,
                    body: serde_json::Value::Null,
                })
            });
            let _ = writer.submit_background(job).await;
        });
    }

    /// Run until `shutdown` fires.
    pub async fn run(mut self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let (_unused, idle) = mpsc::channel(1);
        let mut authorizations = self.authorizations.take().unwrap_or(idle);
        let bind = SocketAddr::from(([0u16; 8], 0));
        let fallback = SocketAddr::from(([0u8; 4], 0));
        let opened = quinn::Endpoint::client(bind).or_else(|_| quinn::Endpoint::client(fallback));
        let mut endpoint = match opened {
            Ok(endpoint) => endpoint,
            Err(e) => {
                self.set_status(
                    LinkState::Offline,
                    Some(format!("cannot open a UDP socket: {e}")),
                );
                return;
            }
        };
        endpoint.set_default_client_config(self.client_config.clone());
        let mut delay_ms = reconnect_delay_min_ms;
        // What the next session does differently after a compact batch failed.
        let mut fallback = Fallback::default();
        loop {
            self.set_status(LinkState::Connecting, None);
            let outcome = tokio::select! {
                outcome = self.session_once(&endpoint, &mut authorizations, &mut fallback) => outcome,
                _ = shutdown.changed() => break,
            };
            match outcome {
                Ok(()) => {
                    delay_ms = reconnect_delay_min_ms;
                    self.set_status(LinkState::Offline, Some("hub closed the session".into()));
                }
                Err(SessionEnd { error, was_online }) => {
                    tracing::warn!(hub = %self.hub_addr, %error, "sync link down");
                    if was_online {
                        delay_ms = reconnect_delay_min_ms;
                    }
                    self.set_status(LinkState::Offline, Some(error));
                }
            }
            // Jitter from the clock's low bits keeps a chain of stores from reconnecting in step.
            let jitter = crate::now_ms() % (delay_ms / 4 + 1);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(delay_ms + jitter)) => {}
                _ = shutdown.changed() => break,
            }
            delay_ms = (delay_ms * 2).min(reconnect_delay_max_ms);
        }
        endpoint.close(quinn::VarInt::from_u32(0), b"store shutting down");
    }

    async fn session_once(
        &self,
        endpoint: &quinn::Endpoint,
        authorizations: &mut mpsc::Receiver<AuthorizationJob>,
        fallback: &mut Fallback,
    ) -> Result<(), SessionEnd> {
        let offline = |error: String| SessionEnd {
            error,
            was_online: false,
        };
        let address = tokio::net::lookup_host(&self.hub_addr)
            .await
            .map_err(|e| offline(format!("cannot resolve {}: {e}", self.hub_addr)))?
            .next()
            .ok_or_else(|| offline(format!("{} resolves to no address", self.hub_addr)))?;
        let address = match (address, endpoint.local_addr()) {
            // A dual-stack socket reaches IPv4 peers through mapped addresses.
            (SocketAddr::V4(v4), Ok(SocketAddr::V6(_))) => {
                SocketAddr::new(std::net::IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
            }
            (address, _) => address,
        };
        let connecting = endpoint
            .connect(address, &self.server_name)
            .map_err(|e| offline(format!("cannot connect: {e}")))?;
        let connection =
            tokio::time::timeout(Duration::from_millis(connect_timeout_ms), connecting)
                .await
                .map_err(|_| offline("hub did not answer in time".into()))?
                .map_err(|e| offline(format!("connection failed: {e}")))?;
        let (mut send, recv) = connection
            .open_bi()
            .await
            .map_err(|e| offline(format!("no stream: {e}")))?;
        let reader = chainsync_replica::sqlite::open_reader(&self.database)
            .map_err(|e| offline(e.to_string()))?;
        let mut side = SqliteStoreSide {
            store: self.store.clone(),
            conn: reader,
            writer: self.writer.clone(),
        };
        let mut session = tokio::task::block_in_place(|| {
            StoreSession::resuming(self.store.clone(), &side, crate::now_ms(), *fallback)
        })
        .map_err(|e| offline(e.to_string()))?;
        let (mut incoming, reader_task) = chainsync_net::frame::spawn_reader(recv);
        let mut own_seq = self.writer.own_seq();
        let mut tick = tokio::time::interval(Duration::from_millis(session_tick_ms));
        let mut was_online = false;
        let mut waiting: HashMap<u64, oneshot::Sender<AuthorizeDecision>> = HashMap::new();
        let mut next_request_id: u64 = 1;
        let result: Result<(), SyncError> = async {
            flush(&mut session, &mut send).await?;
            loop {
                tokio::select! {
                    frame = incoming.recv() => match frame {
                        None => {
                            let reason = connection
                                .close_reason()
                                .map(|r| r.to_string())
                                .unwrap_or_else(|| "hub ended the stream".into());
                            return Err(SyncError::Closed(reason));
                        }
                        Some(Err(e)) => {
                            let reason = connection.close_reason().map(|r| r.to_string()).unwrap_or(e);
                            return Err(SyncError::Closed(reason));
                        }
                        Some(Ok(bytes)) => {
                            let message = Message::decode(&bytes)
                                .map_err(|e| SyncError::Protocol(format!("bad message: {e}")))?;
                            tokio::task::block_in_place(|| {
                                session.handle_message(message, &mut side, crate::now_ms())
                            })?;
                        }
                    },
                    changed = own_seq.changed() => {
                        if changed.is_err() {
                            return Ok(());
                        }
                        tokio::task::block_in_place(|| session.handle_local_write(&mut side))?;
                    }
                    Some((mut request, reply)) = authorizations.recv() => {
                        request.request_id = next_request_id;
                        next_request_id += 1;
                        // Queue our own newest operations first (e.g. the recharge just made):
                        // the hub handles the stream in order, so it decides with them applied.
                        tokio::task::block_in_place(|| session.handle_local_write(&mut side))?;
                        // If the session is not ready the reply is dropped: offline rules.
                        if session.request_authorization(request.clone()) {
                            waiting.insert(request.request_id, reply);
                        }
                    }
                    _ = tick.tick() => {
                        tokio::task::block_in_place(|| session.handle_timeout(&mut side, crate::now_ms()))?;
                    }
                }
                while let Some((request_id, decision)) = session.poll_authorization() {
                    if let Some(reply) = waiting.remove(&request_id) {
                        let _ = reply.send(decision);
                    }
                }
                if !was_online && session.state() == StoreSessionState::Ready {
                    was_online = true;
                    tracing::info!(hub = %self.hub_addr, "sync link up");
                    self.set_status(LinkState::Online, None);
                }
                flush(&mut session, &mut send).await?;
            }
        }
        .await;
        reader_task.abort();
        connection.close(quinn::VarInt::from_u32(0), b"");
        let next = session.fallback();
        if next.push_whole_through > fallback.push_whole_through {
            tracing::warn!(
                hub = %self.hub_addr,
                through_seq = next.push_whole_through,
                "the hub refused a compact batch of ours: the next session sends our operations up to this sequence with member changes whole"
            );
        }
        if next.relay_whole_through > fallback.relay_whole_through {
            tracing::warn!(
                hub = %self.hub_addr,
                through_hub_seq = next.relay_whole_through,
                "a compact batch relayed by the hub did not re-expand here: the next sessions offer protocol 2 (member changes whole) until our relay cursor passes this log position"
            );
        }
        *fallback = next;
        result.map_err(|e| SessionEnd {
            error: e.to_string(),
            was_online,
        })
    }
}

struct SessionEnd {
    error: String,
    was_online: bool,
}

async fn flush(session: &mut StoreSession, send: &mut quinn::SendStream) -> Result<(), SyncError> {
    while let Some(message) = session.poll_transmit() {
        chainsync_net::frame::write_frame(send, &message.encode_for(session.peer_version()))
            .await
            .map_err(|e| SyncError::Protocol(format!("send failed: {e}")))?;
    }
    Ok(())
}

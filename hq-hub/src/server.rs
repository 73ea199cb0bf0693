//! The hub's QUIC side: accept stores, check who they are, and run one sync session per
//! connection on its first bidirectional stream.
//!
//! A connection is refused (closed with a reason, nothing read from it) unless its certificate
//! was issued by our CA (checked by TLS), names an enrolled store, and that store is not
//! revoked (checked here, on every new connection, so revocation takes effect at once).

use chainsync_core::StoreId;
use chainsync_core::sync::{HubSession, HubSessionState, Message, SyncError};
use rusqlite::{Connection, OptionalExtension};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

use crate::http::OnlineStores;
use crate::now_ms;
use crate::storage::SqliteHubSide;

/// Most concurrent store connections.
pub const connections_max: usize = 10_000;
/// How often each session checks its retransmit timers.
pub const session_tick_ms: u64 = 1_000;

#[derive(Clone)]
pub struct SyncServer {
    pub database: PathBuf,
    pub writer: Arc<Mutex<Connection>>,
    pub log_grew: watch::Sender<u64>,
    pub online: OnlineStores,
    pub reservations: Arc<Mutex<chainsync_core::allowance::ReservationBook>>,
    pub queue: Arc<crate::storage::IngestQueue>,
    pub projection: Arc<crate::storage::Projection>,
    /// The newest stretch of the relay log, decoded once for every session.
    pub relay_cache: Arc<crate::relay_cache::RelayCache>,
    /// Read connections of ended sessions, for the next ones.
    pub readers: Arc<IdleReaders>,
}

/// Read connections kept open between sessions: opening one parses the whole schema, which
/// 50 stores connecting at once paid 50 times (about 5 % of the hub's CPU in a burst).
#[derive(Default)]
pub struct IdleReaders {
    idle: Mutex<Vec<Connection>>,
}

/// Most read connections kept idle.
pub const idle_readers_max: usize = 64;

impl IdleReaders {
    /// An idle connection, or a new one.
    pub fn take(&self, database: &std::path::Path) -> anyhow::Result<Connection> {
        let idle = self.idle.lock().ok().and_then(|mut idle| idle.pop());
        match idle {
            Some(conn) => Ok(conn),
            None => crate::db::open_reader(database),
        }
    }

    /// Keep `conn` for the next session (closed if enough are kept already).
    pub fn give_back(&self, conn: Connection) {
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < idle_readers_max
        {
            idle.push(conn);
        }
    }
}

/// Close codes sent to refused stores.
pub mod close_code {
    pub const refused: u32 = 1;
    pub const protocol: u32 = 2;
    pub const internal: u32 = 3;
}

impl SyncServer {
    pub async fn run(self, endpoint: quinn::Endpoint) {
        let permits = Arc::new(tokio::sync::Semaphore::new(connections_max));
        while let Some(incoming) = endpoint.accept().await {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                incoming.refuse();
                continue;
            };
            let server = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(connection) => server.serve_connection(connection).await,
                    Err(e) => tracing::warn!(%remote, error = %e, "store connection failed in TLS"),
                }
                drop(permit);
            });
        }
    }

    fn refuse(connection: &quinn::Connection, code: u32, reason: &str) {
        tracing::warn!(remote = %connection.remote_address(), reason, "refused store connection");
        connection.close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }

    async fn serve_connection(self, connection: quinn::Connection) {
        let store_id = match chainsync_net::tls::peer_store_id(&connection) {
            Ok(id) => id,
            Err(e) => {
                Self::refuse(
                    &connection,
                    close_code::refused,
                    &format!("no usable certificate: {e}"),
                );
                return;
            }
        };
        let Ok(store) = StoreId::parse(&store_id) else {
            Self::refuse(
                &connection,
                close_code::refused,
                "certificate names no valid store id",
            );
            return;
        };
        match self.store_standing(&store) {
            Ok(Standing::Enrolled) => {}
            Ok(Standing::Revoked) => {
                Self::refuse(
                    &connection,
                    close_code::refused,
                    &format!("store {store} is revoked"),
                );
                return;
            }
            Ok(Standing::Unknown) => {
                Self::refuse(
                    &connection,
                    close_code::refused,
                    &format!("store {store} is not enrolled"),
                );
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read store table");
                connection.close(
                    quinn::VarInt::from_u32(close_code::internal),
                    b"internal error",
                );
                return;
            }
        }
        let (send, recv) = match connection.accept_bi().await {
            Ok(streams) => streams,
            Err(e) => {
                tracing::info!(%store, error = %e, "store connection closed before its session");
                return;
            }
        };
        tracing::info!(%store, remote = %connection.remote_address(), "store connected");
        let result = self.run_session(&store, send, recv).await;
        match &result {
            Ok(()) => tracing::info!(%store, "store session ended"),
            Err(SyncError::RefusedPeer { reason, message }) => {
                tracing::warn!(%store, ?reason, %message, "refused store session");
                // Closing at once could discard the Refused frame: give the store a moment to
                // read it and hang up itself.
                let _ = tokio::time::timeout(Duration::from_secs(2), connection.closed()).await;
                connection.close(
                    quinn::VarInt::from_u32(close_code::refused),
                    message.as_bytes(),
                );
            }
            Err(e) => {
                tracing::warn!(%store, error = %e, "store session failed");
                connection.close(
                    quinn::VarInt::from_u32(close_code::protocol),
                    e.to_string().as_bytes(),
                );
            }
        }
    }

    fn store_standing(&self, store: &StoreId) -> rusqlite::Result<Standing> {
        let conn = self
            .readers
            .take(&self.database)
            .map_err(|e| rusqlite::Error::InvalidPath(std::path::PathBuf::from(e.to_string())))?;
        let revoked: Option<Option<i64>> = conn
            .query_row(
                "SELECT revoked_ms FROM stores WHERE store_id = ?1",
                [store.as_str()],
                |row| row.get(0),
            )
            .optional()?;
        self.readers.give_back(conn);
        Ok(match revoked {
            None => Standing::Unknown,
            Some(Some(_)) => Standing::Revoked,
            Some(None) => Standing::Enrolled,
        })
    }

    async fn run_session(
        &self,
        store: &StoreId,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<(), SyncError> {
        let reader = self
            .readers
            .take(&self.database)
            .map_err(|e| SyncError::Storage(e.to_string()))?;
        let mut side = SqliteHubSide {
            writer: self.writer.clone(),
            reader,
            relay_cache: self.relay_cache.clone(),
            reservations: self.reservations.clone(),
            queue: self.queue.clone(),
            log_grew: self.log_grew.clone(),
            projection: self.projection.clone(),
            now_ms,
        };
        let mut session = HubSession::new(store.clone(), now_ms());
        let mut log_grew = self.log_grew.subscribe();
        // Frames are read by their own task so that waiting for one can be cancelled safely.
        let (mut incoming, reader_task) = chainsync_net::frame::spawn_reader(recv);
        let mut tick = tokio::time::interval(Duration::from_millis(session_tick_ms));
        let mut counted_online = false;
        let result = loop {
            let step = tokio::select! {
                frame = incoming.recv() => match frame {
                    None => break Ok(()),
                    Some(Err(e)) => break Err(SyncError::Protocol(format!("bad frame: {e}"))),
                    Some(Ok(bytes)) => match received_together(bytes, &mut incoming) {
                        Ok(messages) => tokio::task::block_in_place(|| {
                            session.handle_messages(messages, &mut side, now_ms())
                        }),
                        Err(e) => Err(e),
                    },
                },
                changed = log_grew.changed() => match changed {
                    Ok(()) => tokio::task::block_in_place(|| session.handle_log_grew(&mut side)),
                    Err(_) => break Ok(()),
                },
                _ = tick.tick() => tokio::task::block_in_place(|| session.handle_timeout(&mut side, now_ms())),
            };
            // Send what the session has to say, even when it just refused the peer.
            let flushed = flush(&mut session, &mut send).await;
            if !counted_online && session.state() == HubSessionState::Ready {
                counted_online = true;
                self.set_online(store, true);
            }
            if let Err(e) = step {
                break Err(e);
            }
            if let Err(e) = flushed {
                break Err(e);
            }
        };
        if counted_online {
            self.set_online(store, false);
        }
        // Grants this store got whose spends have not arrived now wait for it to come back.
        if let Err(e) = tokio::task::block_in_place(|| {
            chainsync_core::sync::HubSide::store_disconnected(&mut side, store)
        }) {
            tracing::error!(%store, error = %e, "cannot keep the store's holds");
        }
        let _ = send.finish();
        reader_task.abort();
        self.readers.give_back(side.reader);
        result
    }

    fn set_online(&self, store: &StoreId, up: bool) {
        if let Ok(mut online) = self.online.lock() {
            let count = online.entry(store.to_string()).or_insert(0);
            if up {
                *count += 1;
            } else {
                *count = count.saturating_sub(1);
            }
        }
    }
}

enum Standing {
    Enrolled,
    Revoked,
    Unknown,
}

/// Most frames handled together (their pushes committed as one).
pub const frames_together_max: usize = 8;

/// Decode a frame and the frames already waiting behind it (at most [`frames_together_max`]),
/// so that pushes that arrived together are made durable together.
fn received_together(
    first: Vec<u8>,
    incoming: &mut tokio::sync::mpsc::Receiver<Result<Vec<u8>, String>>,
) -> Result<Vec<Message>, SyncError> {
    let decode = |bytes: &[u8]| {
        Message::decode(bytes).map_err(|e| SyncError::Protocol(format!("bad message: {e}")))
    };
    let mut messages = vec![decode(&first)?];
    while messages.len() < frames_together_max {
        match incoming.try_recv() {
            Ok(Ok(bytes)) => messages.push(decode(&bytes)?),
            Ok(Err(e)) => return Err(SyncError::Protocol(format!("bad frame: {e}"))),
            Err(_) => break,
        }
    }
    Ok(messages)
}

async fn flush(session: &mut HubSession, send: &mut quinn::SendStream) -> Result<(), SyncError> {
    while let Some(message) = session.poll_transmit() {
        chainsync_net::frame::write_frame(send, &message.encode_for(session.peer_version()))
            .await
            .map_err(|e| SyncError::Protocol(format!("send failed: {e}")))?;
    }
    Ok(())
}

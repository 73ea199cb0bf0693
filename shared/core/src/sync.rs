//! The sync protocol between a store and the hub, as two pure state machines.
//!
//! Model. Every replica holds a set of operations identified by `(origin, seq)`; a store's own
//! operations are numbered 1, 2, 3, … without gaps. The hub keeps every operation it has
//! accepted in one log, numbered by `hub_seq` in the order it accepted them. Because a store
//! only builds on operations it received from the hub, the hub log's order respects causality.
//!
//! One session runs over one ordered, reliable stream (a QUIC stream):
//!
//! ```text
//! store                                   hub
//!   Hello{version, store, own_seq_max, relay_cursor} ─▶   (identity must match the certificate)
//!   ◀─ Welcome{version, acked_seq, log_head}
//!   Push{own ops after acked_seq} ─▶                     (made durable, then acknowledged)
//!   ◀─ PushAck{acked_seq}
//!   ◀─ Relay{other stores' ops with hub_seq in (cursor, upto]}
//!   RelayAck{cursor = upto} ─▶                           (after the store made them durable)
//! ```
//!
//! Versions: 1 sends batches plain; 2 may deflate a batch inside `Packed`; 3 sends `Push` and
//! `Relay` as `PushCompact` / `RelayCompact`, in which member changes travel in compact form
//! ([`compact`]: dependency hashes cut to prefixes, no actor), re-expanded by the receiving
//! session to the exact original bytes before anything else sees them (storage, relays and
//! digests only ever see whole changes). Each side sends the newer forms only to a peer that
//! offered that version in the handshake. A compact batch that fails is not sent compact
//! again: the store's next session sends the refused push's operations whole (still version
//! 3) or, if a relayed batch did not re-expand at the store, offers version 2 until past it
//! ([`Fallback`]), so a store does not fail the same way on every reconnect.
//!
//! Both directions keep at most `sync_window_batches_max` batches unacknowledged. Every step is
//! idempotent: duplicates are ignored by `(origin, seq)` and cursors only move forward, so a
//! session cut at any point simply resumes from the durable cursors in the next one, and a
//! duplicated or reordered message changes nothing (a Push past a gap is ignored up to the gap;
//! a retransmit timer resends from the last acknowledgement).
//!
//! Calling order for both machines: construct, then loop { `handle_message` for each message
//! received, `handle_local_write` / `handle_log_grew` when new operations exist,
//! `handle_timeout(now)` periodically; send everything `poll_transmit` returns }. Storage is
//! reached through the [`StoreSide`] and [`HubSide`] traits, so the machines run unchanged over
//! SQLite in the binaries and over memory in the simulation.

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

use crate::id::StoreId;
use crate::op::{Envelope, Op, OpV1};

pub mod compact;
mod pack;
use compact::{WireOp, WireRelayedOp};

/// The protocol version this build speaks. 2: `Push` and `Relay` may travel as `Packed`
/// (deflated), to a peer that said it speaks 2 or later. 3: they travel as `PushCompact` and
/// `RelayCompact`, member changes in compact form ([`compact`]), to a peer that speaks 3.
pub const protocol_version_current: u16 = 3;
/// The oldest version the hub still serves (a hub serves stores one version older).
pub const protocol_version_min: u16 = 1;

/// Most operations in one Push or Relay batch.
pub const sync_batch_ops_max: usize = 256;
/// Most unacknowledged batches in flight, each way.
pub const sync_window_batches_max: usize = 8;
/// Largest encoded message, in bytes (checked before decoding).
pub const sync_message_bytes_max: usize = 8 * 1024 * 1024;
/// Resend from the last acknowledgement if nothing was acknowledged for this long.
pub const sync_retransmit_ms: u64 = 5_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    V1(MessageV1),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageV1 {
    Hello {
        protocol_version: u16,
        store_id: StoreId,
        own_seq_max: u64,
        relay_cursor: u64,
    },
    Welcome {
        protocol_version: u16,
        acked_seq: u64,
        log_head: u64,
    },
    Push {
        ops: Vec<Envelope>,
    },
    PushAck {
        acked_seq: u64,
    },
    /// Other stores' operations at log positions in (`from`, `upto`].
    Relay {
        ops: Vec<RelayedOp>,
        from: u64,
        upto: u64,
        log_head: u64,
    },
    RelayAck {
        cursor: u64,
    },
    Refused {
        reason: RefuseReason,
        message: String,
    },
    /// Ask the hub to authorize a spend against the chain-wide state.
    Authorize(AuthorizeRequest),
    AuthorizeReply {
        request_id: u64,
        decision: AuthorizeDecision,
    },
    /// Version 2: another message (never `Packed` itself), encoded then deflated. Only sent to
    /// a peer that speaks version 2; decoding unpacks it (see [`Message::encode_for`]).
    Packed {
        deflated: Vec<u8>,
    },
    /// Version 3: a `Push` whose member changes may be in compact form. Only sent to a peer
    /// that speaks version 3; the receiver re-expands it to a `Push` (refusing it whole if a
    /// change does not re-expand).
    PushCompact {
        ops: Vec<WireOp>,
    },
    /// Version 3: a `Relay` whose member changes may be in compact form.
    RelayCompact {
        ops: Vec<WireRelayedOp>,
        from: u64,
        upto: u64,
        log_head: u64,
    },
}

/// Messages smaller than this are never packed (deflate would save little).
pub const packed_bytes_min: usize = 512;

/// A spend of money-like values the store wants authorized online.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizeRequest {
    /// Chosen by the store; echoed in the reply.
    pub request_id: u64,
    pub checkout_id: uuid::Uuid,
    pub member_id: Option<uuid::Uuid>,
    pub spend: crate::allowance::SpendRequest,
    pub coupon_codes: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthorizeDecision {
    Granted,
    InsufficientBalance {
        available_stored_value: i64,
        available_points: i64,
    },
    CouponUnavailable {
        code: String,
        reason: String,
    },
}

/// An operation as relayed by the hub, with its position in the hub's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayedOp {
    pub hub_seq: u64,
    pub envelope: Envelope,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefuseReason {
    UnsupportedVersion,
    IdentityMismatch,
    ForeignOrigin,
    InvalidOperation,
    Revoked,
    ProtocolViolation,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("message is malformed: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("message is followed by {0} stray bytes")]
    TrailingBytes(usize),
    #[error("packed message is malformed: {0}")]
    Packed(String),
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Encode for a peer speaking `peer_version`: from version 3 on, a `Push` or `Relay`
    /// goes as `PushCompact` / `RelayCompact`; from version 2 on, a large batch goes deflated
    /// inside `Packed` when that is smaller.
    pub fn encode_for(&self, peer_version: u16) -> Vec<u8> {
        if peer_version >= 3 {
            let compacted = match self {
                Message::V1(MessageV1::Push { ops }) => Some(MessageV1::PushCompact {
                    ops: ops.iter().map(compact::compact).collect(),
                }),
                Message::V1(MessageV1::Relay {
                    ops,
                    from,
                    upto,
                    log_head,
                }) => Some(MessageV1::RelayCompact {
                    ops: ops
                        .iter()
                        .map(|op| WireRelayedOp {
                            hub_seq: op.hub_seq,
                            op: compact::compact(&op.envelope),
                        })
                        .collect(),
                    from: *from,
                    upto: *upto,
                    log_head: *log_head,
                }),
                _ => None,
            };
            if let Some(compacted) = compacted {
                return Message::V1(compacted).encode_for(2);
            }
        }
        let plain = self.encode();
        let batch = matches!(
            self,
            Message::V1(
                MessageV1::Push { .. }
                    | MessageV1::Relay { .. }
                    | MessageV1::PushCompact { .. }
                    | MessageV1::RelayCompact { .. }
            )
        );
        if peer_version < 2 || !batch || plain.len() < packed_bytes_min {
            return plain;
        }
        let Some(deflated) = pack::deflate_if_smaller(&plain) else {
            return plain;
        };
        let packed = Message::V1(MessageV1::Packed { deflated }).encode();
        if packed.len() < plain.len() {
            packed
        } else {
            plain
        }
    }

    /// Decode a message as received (unpacking a `Packed` one); its size is checked first,
    /// and a packed message may not inflate past [`sync_message_bytes_max`].
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        match Self::decode_plain(bytes)? {
            Message::V1(MessageV1::Packed { deflated }) => {
                let inflated = pack::inflate_at_most(&deflated, sync_message_bytes_max)
                    .map_err(DecodeError::Packed)?;
                match Self::decode_plain(&inflated)? {
                    Message::V1(MessageV1::Packed { .. }) => Err(DecodeError::Packed(
                        "a packed message inside another".into(),
                    )),
                    message => Ok(message),
                }
            }
            message => Ok(message),
        }
    }

    /// Decode without unpacking (tests look at what travels).
    #[cfg(test)]
    pub(crate) fn decode_plain_for_tests(bytes: &[u8]) -> Result<Message, DecodeError> {
        Self::decode_plain(bytes)
    }

    fn decode_plain(bytes: &[u8]) -> Result<Message, DecodeError> {
        if bytes.len() > sync_message_bytes_max {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: sync_message_bytes_max,
            });
        }
        let (message, rest) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("storage: {0}")]
    Storage(String),
    #[error("refused by the hub ({reason:?}): {message}")]
    Refused {
        reason: RefuseReason,
        message: String,
    },
    #[error("refused the peer ({reason:?}): {message}")]
    RefusedPeer {
        reason: RefuseReason,
        message: String,
    },
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The link ended (the peer closed it, or the network did).
    #[error("link closed: {0}")]
    Closed(String),
}

/// What a store's storage offers the sync session.
pub trait StoreSide {
    type Error: std::fmt::Display;
    /// Highest sequence number of our own operations.
    fn own_seq_max(&self) -> Result<u64, Self::Error>;
    /// Our own operations with `seq > after`, in order, at most `limit`.
    fn own_ops_after(&self, after: u64, limit: usize) -> Result<Vec<Envelope>, Self::Error>;
    /// How far into the hub's log we have durably applied.
    fn relay_cursor(&self) -> Result<u64, Self::Error>;
    /// Durably apply relayed operations and move the cursor to `upto`, in one transaction.
    /// Must ignore operations already held, and do nothing if `upto` is not past the cursor.
    fn apply_relayed(&mut self, ops: &[RelayedOp], upto: u64) -> Result<(), Self::Error>;
    /// Remember that the hub holds our operations up to `acked_seq` (for status).
    fn record_hub_acked(&mut self, acked_seq: u64) -> Result<(), Self::Error>;
    /// The automerge changes held for `member` (protocol 3 re-expands compact member
    /// changes against their hashes).
    fn member_changes(&self, member: &uuid::Uuid) -> Result<Vec<Vec<u8>>, Self::Error>;
}

/// What the hub's storage offers a sync session.
pub trait HubSide {
    type Error: std::fmt::Display;
    /// Highest sequence of `store`'s operations the hub holds without gaps.
    fn acked_seq(&self, store: &StoreId) -> Result<u64, Self::Error>;
    /// Durably add operations pushed by `store` (all already checked to be its own):
    /// duplicates are skipped, a gap stops the batch. Returns the new acked sequence.
    fn ingest(&mut self, store: &StoreId, ops: &[Envelope]) -> Result<u64, Self::Error>;
    /// The last `hub_seq` in the log.
    fn log_head(&self) -> Result<u64, Self::Error>;
    /// Other stores' operations with `hub_seq > after`, at most `limit` log positions
    /// scanned; returns them and the last position scanned (`after` if none).
    fn relay_after(
        &self,
        store: &StoreId,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<RelayedOp>, u64), Self::Error>;
    /// Remember that `store` durably holds the log up to `cursor` (for status and lag).
    fn record_relay_acked(&mut self, store: &StoreId, cursor: u64) -> Result<(), Self::Error>;
    /// Remember the store's own highest sequence as it said in its Hello (for lag).
    fn record_hello(&mut self, store: &StoreId, own_seq_max: u64) -> Result<(), Self::Error>;
    /// `store` said Hello at `hello_ms` and every operation it held then has now arrived:
    /// grants it got before that Hello whose spends are still missing were never used
    /// ([`crate::allowance::ReservationBook::store_caught_up`]).
    fn store_caught_up(&mut self, store: &StoreId, hello_ms: u64) -> Result<(), Self::Error>;
    /// A session of `store` ended (the driver calls this when its transport closes): grants
    /// whose spends are missing wait for the store to come back
    /// ([`crate::allowance::ReservationBook::store_disconnected`]).
    fn store_disconnected(&mut self, store: &StoreId) -> Result<(), Self::Error>;
    /// Decide a spend against the chain-wide state (and hold it back if granted).
    fn authorize(
        &mut self,
        store: &StoreId,
        request: &AuthorizeRequest,
        now_ms: u64,
    ) -> Result<AuthorizeDecision, Self::Error>;
    /// The automerge changes held for `member` (committed ones; protocol 3 re-expands
    /// compact member changes against their hashes).
    fn member_changes(&self, member: &uuid::Uuid) -> Result<Vec<Vec<u8>>, Self::Error>;
}

/// A batch's operations re-expanded, and the sequence of each compact one that failed, with why.
type ExpandedBatch = (Vec<Envelope>, Vec<(u64, String)>);

/// Re-expand the compact member changes of a batch against what `held` returns for a member
/// and the batch's own changes (`context`, then those before in the batch). Returns the
/// operations in order, each with the index of the compact one that failed and why.
fn expand_batch<E: std::fmt::Display>(
    ops: Vec<WireOp>,
    context: &[Envelope],
    held: impl Fn(&uuid::Uuid) -> Result<Vec<Vec<u8>>, E>,
) -> Result<ExpandedBatch, SyncError> {
    let mut out: Vec<Envelope> = Vec::with_capacity(ops.len());
    let mut failed = Vec::new();
    for op in ops {
        match op {
            WireOp::Full(envelope) => out.push(envelope),
            WireOp::Member(member_change) => {
                let member = member_change.member_id();
                let mut hashes = compact::hashes_in(context.iter().chain(out.iter()), member);
                if !member_change.deps.is_empty() {
                    for change in held(&member).map_err(storage)? {
                        if let Some(hash) = compact::change_hash(&change) {
                            hashes.push(hash);
                        }
                    }
                }
                match compact::expand(&member_change, &hashes) {
                    Ok(envelope) => out.push(envelope),
                    Err(problem) => failed.push((member_change.seq, problem)),
                }
            }
        }
    }
    Ok((out, failed))
}

fn storage<E: std::fmt::Display>(e: E) -> SyncError {
    SyncError::Storage(e.to_string())
}

/// Batches sent and not yet acknowledged: the upper cursor of each, oldest first.
#[derive(Debug, Default)]
struct Window {
    in_flight: VecDeque<u64>,
    last_progress_ms: u64,
}

impl Window {
    fn is_full(&self) -> bool {
        self.in_flight.len() >= sync_window_batches_max
    }
    fn acknowledge(&mut self, cursor: u64, now_ms: u64) {
        let before = self.in_flight.len();
        while self.in_flight.front().is_some_and(|&upto| upto <= cursor) {
            self.in_flight.pop_front();
        }
        if self.in_flight.len() != before {
            self.last_progress_ms = now_ms;
        }
    }
    fn stalled(&self, now_ms: u64) -> bool {
        !self.in_flight.is_empty()
            && now_ms.saturating_sub(self.last_progress_ms) >= sync_retransmit_ms
    }
}

/// What a store carries from one session to the next after a compact batch failed, so that
/// the next session does not fail the same way forever (the driver keeps it across
/// reconnects; it only ever grows, and is all zero until something failed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fallback {
    /// The hub refused a batch of ours that travelled compact: our operations up to this
    /// sequence go with their member changes whole (`PushCompact` holding `Full` operations,
    /// still protocol 3), later ones compact again.
    pub push_whole_through: u64,
    /// A compact relayed batch did not re-expand here: sessions offer protocol 2 (the hub
    /// then relays member changes whole) until our relay cursor passes this log position.
    pub relay_whole_through: u64,
}

impl Fallback {
    /// The version a session should offer, given our relay cursor.
    pub fn version_to_offer(&self, relay_cursor: u64) -> u16 {
        if relay_cursor < self.relay_whole_through {
            protocol_version_current.min(2)
        } else {
            protocol_version_current
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreSessionState {
    /// Hello sent, no Welcome yet: the link does not count as up.
    AwaitingWelcome,
    Ready,
}

/// The store's end of a session.
#[derive(Debug)]
pub struct StoreSession {
    store_id: StoreId,
    state: StoreSessionState,
    /// Highest own seq sent in this session.
    pushed_upto: u64,
    /// Highest own seq the hub acknowledged.
    hub_acked: u64,
    /// Last known end of the hub's log.
    log_head: u64,
    push_window: Window,
    outbox: VecDeque<Message>,
    replies: VecDeque<(u64, AuthorizeDecision)>,
    /// The version this session speaks: what we offered, then what the hub's Welcome said.
    version: u16,
    fallback: Fallback,
}

impl StoreSession {
    pub fn new<S: StoreSide>(
        store_id: StoreId,
        side: &S,
        now_ms: u64,
    ) -> Result<StoreSession, SyncError> {
        Self::speaking(protocol_version_current, store_id, side, now_ms)
    }

    /// A session after earlier ones failed on compact batches: offers protocol 2 while
    /// `fallback` asks for relayed member changes whole, and sends the operations it names
    /// with their member changes whole. Read [`StoreSession::fallback`] when it ends.
    pub fn resuming<S: StoreSide>(
        store_id: StoreId,
        side: &S,
        now_ms: u64,
        fallback: Fallback,
    ) -> Result<StoreSession, SyncError> {
        let version = fallback.version_to_offer(side.relay_cursor().map_err(storage)?);
        let mut session = Self::speaking(version, store_id, side, now_ms)?;
        session.fallback = fallback;
        Ok(session)
    }

    /// A session offering protocol `version` (an older store, in tests of rolling upgrades).
    pub fn speaking<S: StoreSide>(
        version: u16,
        store_id: StoreId,
        side: &S,
        now_ms: u64,
    ) -> Result<StoreSession, SyncError> {
        let hello = MessageV1::Hello {
            protocol_version: version,
            store_id: store_id.clone(),
            own_seq_max: side.own_seq_max().map_err(storage)?,
            relay_cursor: side.relay_cursor().map_err(storage)?,
        };
        Ok(StoreSession {
            store_id,
            state: StoreSessionState::AwaitingWelcome,
            pushed_upto: 0,
            hub_acked: 0,
            log_head: 0,
            push_window: Window {
                in_flight: VecDeque::new(),
                last_progress_ms: now_ms,
            },
            outbox: VecDeque::from([Message::V1(hello)]),
            replies: VecDeque::new(),
            version,
            fallback: Fallback::default(),
        })
    }

    /// What the next session should do differently (carry it into [`StoreSession::resuming`]):
    /// grown when the hub refused a compact batch of ours or a compact relayed batch did not
    /// re-expand here.
    pub fn fallback(&self) -> Fallback {
        self.fallback
    }

    pub fn state(&self) -> StoreSessionState {
        self.state
    }

    pub fn hub_acked(&self) -> u64 {
        self.hub_acked
    }

    pub fn log_head(&self) -> u64 {
        self.log_head
    }

    /// True when every own operation is acknowledged and nothing is in flight.
    pub fn is_idle(&self) -> bool {
        self.state == StoreSessionState::Ready
            && self.push_window.in_flight.is_empty()
            && self.outbox.is_empty()
    }

    /// The protocol version spoken with the hub (what to encode for).
    pub fn peer_version(&self) -> u16 {
        self.version
    }

    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// Ask the hub to authorize a spend. Only once the session is ready (before that the
    /// store is, for money purposes, offline); returns false if not sent.
    pub fn request_authorization(&mut self, request: AuthorizeRequest) -> bool {
        if self.state != StoreSessionState::Ready {
            return false;
        }
        self.outbox
            .push_back(Message::V1(MessageV1::Authorize(request)));
        true
    }

    /// The hub's answers to authorization requests, as they arrive.
    pub fn poll_authorization(&mut self) -> Option<(u64, AuthorizeDecision)> {
        self.replies.pop_front()
    }

    pub fn handle_message<S: StoreSide>(
        &mut self,
        message: Message,
        side: &mut S,
        now_ms: u64,
    ) -> Result<(), SyncError> {
        let Message::V1(message) = message;
        let message = match message {
            MessageV1::RelayCompact {
                ops,
                from,
                upto,
                log_head,
            } => self.expand_relay(ops, from, upto, log_head, side)?,
            other => other,
        };
        match (self.state, message) {
            (_, MessageV1::Refused { reason, message }) => {
                // The hub refuses a compact change it cannot re-expand as an invalid
                // operation; the next session sends what was in flight whole.
                if reason == RefuseReason::InvalidOperation
                    && self.version >= 3
                    && self.pushed_upto > self.hub_acked
                {
                    self.fallback.push_whole_through =
                        self.fallback.push_whole_through.max(self.pushed_upto);
                }
                Err(SyncError::Refused { reason, message })
            }
            (
                StoreSessionState::AwaitingWelcome,
                MessageV1::Welcome {
                    protocol_version: v,
                    acked_seq,
                    log_head,
                },
            ) => {
                if !(protocol_version_min..=self.version).contains(&v) {
                    return Err(SyncError::Protocol(format!("hub speaks version {v}")));
                }
                self.version = v;
                let own_seq_max = side.own_seq_max().map_err(storage)?;
                if acked_seq > own_seq_max {
                    return Err(SyncError::Protocol(format!(
                        "hub holds our operations up to {acked_seq} but we only have {own_seq_max}: \
                         this store's data is older than what it sent (restore the newest backup)"
                    )));
                }
                self.state = StoreSessionState::Ready;
                self.hub_acked = acked_seq;
                self.pushed_upto = acked_seq;
                self.log_head = log_head;
                self.push_window.last_progress_ms = now_ms;
                side.record_hub_acked(acked_seq).map_err(storage)?;
                self.fill_push_window(side)
            }
            (StoreSessionState::Ready, MessageV1::PushAck { acked_seq }) => {
                if acked_seq > self.pushed_upto {
                    return Err(SyncError::Protocol(format!(
                        "hub acknowledged {acked_seq}, beyond the {} we sent",
                        self.pushed_upto
                    )));
                }
                if acked_seq > self.hub_acked {
                    self.hub_acked = acked_seq;
                    side.record_hub_acked(acked_seq).map_err(storage)?;
                }
                self.push_window.acknowledge(acked_seq, now_ms);
                self.fill_push_window(side)
            }
            (
                StoreSessionState::Ready,
                MessageV1::Relay {
                    ops,
                    from,
                    upto,
                    log_head,
                },
            ) => {
                let cursor = side.relay_cursor().map_err(storage)?;
                self.log_head = self.log_head.max(log_head);
                for op in &ops {
                    if op.hub_seq <= from || op.hub_seq > upto {
                        return Err(SyncError::Protocol(format!(
                            "relayed position {} outside ({from}, {upto}]",
                            op.hub_seq
                        )));
                    }
                    if op.envelope.origin == self.store_id {
                        return Err(SyncError::Protocol("hub relayed our own operation".into()));
                    }
                }
                // Apply only a batch that continues from our cursor: one that starts past it
                // would leave a hole (an earlier batch was lost); the hub resends from our ack.
                if from <= cursor && upto > cursor {
                    let fresh: Vec<RelayedOp> =
                        ops.into_iter().filter(|op| op.hub_seq > cursor).collect();
                    side.apply_relayed(&fresh, upto).map_err(storage)?;
                }
                let cursor = side.relay_cursor().map_err(storage)?;
                self.outbox
                    .push_back(Message::V1(MessageV1::RelayAck { cursor }));
                Ok(())
            }
            (
                StoreSessionState::Ready,
                MessageV1::AuthorizeReply {
                    request_id,
                    decision,
                },
            ) => {
                self.replies.push_back((request_id, decision));
                Ok(())
            }
            (state, other) => Err(SyncError::Protocol(format!(
                "unexpected {} in state {state:?}",
                message_name(&other)
            ))),
        }
    }

    /// A `RelayCompact` as the `Relay` it stands for. Only a batch that will be applied (it
    /// continues from our cursor) is re-expanded, and only its operations past the cursor;
    /// one that does not re-expand refuses the whole batch (nothing of it is applied).
    fn expand_relay<S: StoreSide>(
        &mut self,
        ops: Vec<WireRelayedOp>,
        from: u64,
        upto: u64,
        log_head: u64,
        side: &mut S,
    ) -> Result<MessageV1, SyncError> {
        if ops.len() > sync_batch_ops_max {
            return Err(SyncError::Protocol(format!(
                "a Relay holds at most {sync_batch_ops_max} operations"
            )));
        }
        let cursor = side.relay_cursor().map_err(storage)?;
        let mut relayed = Vec::new();
        if from <= cursor && upto > cursor {
            let (hub_seqs, wire): (Vec<u64>, Vec<WireOp>) = ops
                .into_iter()
                .filter(|op| op.hub_seq > cursor)
                .map(|op| (op.hub_seq, op.op))
                .unzip();
            let (expanded, failed) = expand_batch(wire, &[], |member| side.member_changes(member))?;
            if let Some((_, problem)) = failed.into_iter().next() {
                self.fallback.relay_whole_through = self.fallback.relay_whole_through.max(upto);
                return Err(SyncError::Protocol(format!(
                    "relayed batch ({from}, {upto}] refused: {problem}"
                )));
            }
            relayed = hub_seqs
                .into_iter()
                .zip(expanded)
                .map(|(hub_seq, envelope)| RelayedOp { hub_seq, envelope })
                .collect();
        }
        Ok(MessageV1::Relay {
            ops: relayed,
            from,
            upto,
            log_head,
        })
    }

    /// New own operations were written locally.
    pub fn handle_local_write<S: StoreSide>(&mut self, side: &mut S) -> Result<(), SyncError> {
        if self.state == StoreSessionState::Ready {
            self.fill_push_window(side)?;
        }
        Ok(())
    }

    /// Resend from the last acknowledgement if the hub has gone quiet; give up on a hub that
    /// never answered the Hello (the caller then reconnects).
    pub fn handle_timeout<S: StoreSide>(
        &mut self,
        side: &mut S,
        now_ms: u64,
    ) -> Result<(), SyncError> {
        if self.state == StoreSessionState::AwaitingWelcome
            && now_ms.saturating_sub(self.push_window.last_progress_ms) >= 2 * sync_retransmit_ms
        {
            return Err(SyncError::Protocol(
                "the hub did not answer the Hello".into(),
            ));
        }
        if self.state == StoreSessionState::Ready && self.push_window.stalled(now_ms) {
            self.pushed_upto = self.hub_acked;
            self.push_window = Window {
                in_flight: VecDeque::new(),
                last_progress_ms: now_ms,
            };
            self.fill_push_window(side)?;
        }
        Ok(())
    }

    fn fill_push_window<S: StoreSide>(&mut self, side: &mut S) -> Result<(), SyncError> {
        while !self.push_window.is_full() {
            let ops = side
                .own_ops_after(self.pushed_upto, sync_batch_ops_max)
                .map_err(storage)?;
            let Some(last) = ops.last() else { break };
            self.pushed_upto = last.seq;
            self.push_window.in_flight.push_back(last.seq);
            let whole_through = self.fallback.push_whole_through;
            let message =
                if self.version >= 3 && ops.first().is_some_and(|op| op.seq <= whole_through) {
                    // A batch the hub refused compact: its operations up to the mark go whole.
                    MessageV1::PushCompact {
                        ops: ops
                            .into_iter()
                            .map(|op| {
                                if op.seq <= whole_through {
                                    WireOp::Full(op)
                                } else {
                                    compact::compact(&op)
                                }
                            })
                            .collect(),
                    }
                } else {
                    MessageV1::Push { ops }
                };
            self.outbox.push_back(Message::V1(message));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HubSessionState {
    AwaitingHello,
    Ready,
    /// The peer was refused; send the Refused message, then close.
    Closed,
}

/// The hub's end of a session with one store, whose identity comes from its certificate.
#[derive(Debug)]
pub struct HubSession {
    store_id: StoreId,
    state: HubSessionState,
    relay_sent: u64,
    relay_acked: u64,
    relay_window: Window,
    outbox: VecDeque<Message>,
    /// What the store said it held at Hello (its own highest sequence, and when), until the
    /// hub holds all of it.
    catching_up: Option<(u64, u64)>,
    /// The version the store offered in its Hello (1 until then).
    version: u16,
}

impl HubSession {
    /// `store_id` is the identity proven by the peer's certificate.
    pub fn new(store_id: StoreId, now_ms: u64) -> HubSession {
        HubSession {
            store_id,
            state: HubSessionState::AwaitingHello,
            relay_sent: 0,
            relay_acked: 0,
            relay_window: Window {
                in_flight: VecDeque::new(),
                last_progress_ms: now_ms,
            },
            outbox: VecDeque::new(),
            catching_up: None,
            version: 1,
        }
    }

    pub fn state(&self) -> HubSessionState {
        self.state
    }

    pub fn store_id(&self) -> &StoreId {
        &self.store_id
    }

    pub fn relay_acked(&self) -> u64 {
        self.relay_acked
    }

    /// The protocol version the store speaks (what to encode for).
    pub fn peer_version(&self) -> u16 {
        self.version
    }

    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    fn refuse(&mut self, reason: RefuseReason, message: String) -> SyncError {
        self.state = HubSessionState::Closed;
        self.outbox.clear();
        self.outbox.push_back(Message::V1(MessageV1::Refused {
            reason,
            message: message.clone(),
        }));
        SyncError::RefusedPeer { reason, message }
    }

    /// Handle messages that arrived together, in order. Consecutive `Push` batches are made
    /// durable with one `ingest` (one commit for all of them, their operations in sequence
    /// order) and acknowledged once: a `PushAck` is cumulative. The hub then holds at least
    /// what handling them one by one would have given it.
    pub fn handle_messages<H: HubSide>(
        &mut self,
        messages: Vec<Message>,
        side: &mut H,
        now_ms: u64,
    ) -> Result<(), SyncError> {
        let mut pushed: Vec<Envelope> = Vec::new();
        for message in messages {
            match message {
                Message::V1(MessageV1::Push { ops }) if self.state == HubSessionState::Ready => {
                    self.check_push(&ops)?;
                    pushed.extend(ops);
                }
                Message::V1(MessageV1::PushCompact { ops })
                    if self.state == HubSessionState::Ready =>
                {
                    let ops = self.expand_push(ops, &pushed, side)?;
                    self.check_push(&ops)?;
                    pushed.extend(ops);
                }
                other => {
                    if !pushed.is_empty() {
                        self.ingest_and_ack(&std::mem::take(&mut pushed), side)?;
                    }
                    self.handle_message(other, side, now_ms)?;
                }
            }
        }
        if pushed.is_empty() {
            return Ok(());
        }
        self.ingest_and_ack(&pushed, side)
    }

    /// A `PushCompact`'s operations as the `Push` it stands for; `pending` are pushed operations
    /// received before it and not yet ingested. A compact change that does not re-expand
    /// refuses the session (nothing of the batch is kept) if the hub would ingest it next;
    /// one the hub already holds, or past a gap (ingest stops before it anyway), is left out.
    fn expand_push<H: HubSide>(
        &mut self,
        ops: Vec<WireOp>,
        pending: &[Envelope],
        side: &H,
    ) -> Result<Vec<Envelope>, SyncError> {
        if ops.len() > sync_batch_ops_max {
            return Err(self.refuse(
                RefuseReason::ProtocolViolation,
                format!("a Push holds at most {sync_batch_ops_max} operations"),
            ));
        }
        let (expanded, failed) = expand_batch(ops, pending, |member| side.member_changes(member))?;
        if failed.is_empty() {
            return Ok(expanded);
        }
        let acked = side.acked_seq(&self.store_id).map_err(storage)?;
        let held: std::collections::BTreeSet<u64> = pending
            .iter()
            .chain(expanded.iter())
            .filter(|envelope| envelope.origin == self.store_id)
            .map(|envelope| envelope.seq)
            .collect();
        let mut next = acked.saturating_add(1);
        while held.contains(&next) {
            next = next.saturating_add(1);
        }
        for (seq, problem) in failed {
            if seq == next {
                return Err(self.refuse(RefuseReason::InvalidOperation, problem));
            }
        }
        Ok(expanded)
    }

    /// Refuse a Push that is too big or holds an operation the store may not send.
    fn check_push(&mut self, ops: &[Envelope]) -> Result<(), SyncError> {
        if ops.len() > sync_batch_ops_max {
            return Err(self.refuse(
                RefuseReason::ProtocolViolation,
                format!("a Push holds at most {sync_batch_ops_max} operations"),
            ));
        }
        for envelope in ops {
            if envelope.origin != self.store_id {
                return Err(self.refuse(
                    RefuseReason::ForeignOrigin,
                    format!(
                        "store {} sent an operation of store {}",
                        self.store_id, envelope.origin
                    ),
                ));
            }
            if let Err(problem) = check_operation(envelope) {
                return Err(self.refuse(RefuseReason::InvalidOperation, problem));
            }
        }
        Ok(())
    }

    fn ingest_and_ack<H: HubSide>(
        &mut self,
        ops: &[Envelope],
        side: &mut H,
    ) -> Result<(), SyncError> {
        if !ops.is_sorted_by_key(|envelope| envelope.seq) {
            let mut sorted = ops.to_vec();
            sorted.sort_by_key(|envelope| envelope.seq);
            return self.ingest_and_ack(&sorted, side);
        }
        let acked_seq = side.ingest(&self.store_id, ops).map_err(storage)?;
        self.outbox
            .push_back(Message::V1(MessageV1::PushAck { acked_seq }));
        self.note_acked(acked_seq, side)
    }

    /// Tell the side once the hub holds everything the store held at Hello.
    fn note_acked<H: HubSide>(&mut self, acked_seq: u64, side: &mut H) -> Result<(), SyncError> {
        if let Some((own_seq_max, hello_ms)) = self.catching_up
            && acked_seq >= own_seq_max
        {
            self.catching_up = None;
            side.store_caught_up(&self.store_id, hello_ms)
                .map_err(storage)?;
        }
        Ok(())
    }

    pub fn handle_message<H: HubSide>(
        &mut self,
        message: Message,
        side: &mut H,
        now_ms: u64,
    ) -> Result<(), SyncError> {
        let Message::V1(message) = message;
        match (self.state, message) {
            (HubSessionState::Closed, _) => Err(SyncError::Protocol("session is closed".into())),
            (
                HubSessionState::AwaitingHello,
                MessageV1::Hello {
                    protocol_version: v,
                    store_id,
                    own_seq_max,
                    relay_cursor,
                },
            ) => {
                if !(protocol_version_min..=protocol_version_current).contains(&v) {
                    return Err(self.refuse(
                        RefuseReason::UnsupportedVersion,
                        format!("protocol version {v} is not served (supported {protocol_version_min}..={protocol_version_current})"),
                    ));
                }
                if store_id != self.store_id {
                    return Err(self.refuse(
                        RefuseReason::IdentityMismatch,
                        format!(
                            "certificate is for store {} but Hello says {store_id}",
                            self.store_id
                        ),
                    ));
                }
                let head = side.log_head().map_err(storage)?;
                let relay_cursor = relay_cursor.min(head);
                let acked_seq = side.acked_seq(&self.store_id).map_err(storage)?;
                self.state = HubSessionState::Ready;
                self.version = v;
                self.relay_sent = relay_cursor;
                self.relay_acked = relay_cursor;
                self.relay_window.last_progress_ms = now_ms;
                self.outbox.push_back(Message::V1(MessageV1::Welcome {
                    protocol_version: v,
                    acked_seq,
                    log_head: head,
                }));
                side.record_relay_acked(&self.store_id, relay_cursor)
                    .map_err(storage)?;
                side.record_hello(&self.store_id, own_seq_max)
                    .map_err(storage)?;
                self.catching_up = Some((own_seq_max, now_ms));
                self.note_acked(acked_seq, side)?;
                self.fill_relay_window(side)
            }
            (HubSessionState::Ready, MessageV1::Push { ops }) => {
                self.check_push(&ops)?;
                self.ingest_and_ack(&ops, side)
            }
            (HubSessionState::Ready, MessageV1::PushCompact { ops }) => {
                let ops = self.expand_push(ops, &[], side)?;
                self.check_push(&ops)?;
                self.ingest_and_ack(&ops, side)
            }
            (HubSessionState::Ready, MessageV1::Authorize(request)) => {
                let decision = side
                    .authorize(&self.store_id, &request, now_ms)
                    .map_err(storage)?;
                self.outbox
                    .push_back(Message::V1(MessageV1::AuthorizeReply {
                        request_id: request.request_id,
                        decision,
                    }));
                Ok(())
            }
            (HubSessionState::Ready, MessageV1::RelayAck { cursor }) => {
                if cursor > self.relay_sent {
                    return Err(self.refuse(
                        RefuseReason::ProtocolViolation,
                        format!(
                            "acknowledged {cursor}, beyond the {} relayed",
                            self.relay_sent
                        ),
                    ));
                }
                if cursor > self.relay_acked {
                    self.relay_acked = cursor;
                    side.record_relay_acked(&self.store_id, cursor)
                        .map_err(storage)?;
                }
                self.relay_window.acknowledge(cursor, now_ms);
                self.fill_relay_window(side)
            }
            (state, other) => {
                let problem = format!("unexpected {} in state {state:?}", message_name(&other));
                Err(self.refuse(RefuseReason::ProtocolViolation, problem))
            }
        }
    }

    /// The log grew (another store pushed): relay if the window allows.
    pub fn handle_log_grew<H: HubSide>(&mut self, side: &mut H) -> Result<(), SyncError> {
        if self.state == HubSessionState::Ready {
            self.fill_relay_window(side)?;
        }
        Ok(())
    }

    pub fn handle_timeout<H: HubSide>(
        &mut self,
        side: &mut H,
        now_ms: u64,
    ) -> Result<(), SyncError> {
        if self.state == HubSessionState::Ready && self.relay_window.stalled(now_ms) {
            self.relay_sent = self.relay_acked;
            self.relay_window = Window {
                in_flight: VecDeque::new(),
                last_progress_ms: now_ms,
            };
            self.fill_relay_window(side)?;
        }
        Ok(())
    }

    fn fill_relay_window<H: HubSide>(&mut self, side: &mut H) -> Result<(), SyncError> {
        while !self.relay_window.is_full() {
            let (ops, upto) = side
                .relay_after(&self.store_id, self.relay_sent, sync_batch_ops_max)
                .map_err(storage)?;
            if upto <= self.relay_sent {
                break;
            }
            let from = self.relay_sent;
            self.relay_sent = upto;
            self.relay_window.in_flight.push_back(upto);
            let log_head = side.log_head().map_err(storage)?;
            self.outbox.push_back(Message::V1(MessageV1::Relay {
                ops,
                from,
                upto,
                log_head,
            }));
        }
        Ok(())
    }
}

/// Shape checks on an operation from outside, before anything stores it.
pub fn check_operation(envelope: &Envelope) -> Result<(), String> {
    if envelope.seq == 0 {
        return Err("sequence numbers start at 1".into());
    }
    match &envelope.op {
        Op::V1(OpV1::Ledger(entry)) => {
            if entry.origin != envelope.origin
                || entry.seq != envelope.seq
                || entry.hlc != envelope.hlc
            {
                return Err(format!(
                    "ledger entry {} disagrees with its envelope",
                    entry.id
                ));
            }
            entry
                .validate()
                .map_err(|e| format!("ledger entry {}: {e}", entry.id))
        }
        _ => Ok(()),
    }
}

fn message_name(message: &MessageV1) -> &'static str {
    match message {
        MessageV1::Hello { .. } => "Hello",
        MessageV1::Welcome { .. } => "Welcome",
        MessageV1::Push { .. } => "Push",
        MessageV1::PushAck { .. } => "PushAck",
        MessageV1::Relay { .. } => "Relay",
        MessageV1::RelayAck { .. } => "RelayAck",
        MessageV1::Refused { .. } => "Refused",
        MessageV1::Authorize(_) => "Authorize",
        MessageV1::AuthorizeReply { .. } => "AuthorizeReply",
        MessageV1::Packed { .. } => "Packed",
        MessageV1::PushCompact { .. } => "PushCompact",
        MessageV1::RelayCompact { .. } => "RelayCompact",
    }
}

#[cfg(test)]
mod tests;

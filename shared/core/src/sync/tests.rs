//! Protocol tests: stores and a hub over an in-memory link that can drop, duplicate and cut.

use super::*;
use crate::hlc::HlcTimestamp;
use crate::ledger::{Account, EntryKind, LedgerEntry};
use crate::op::{Envelope, Op, OpV1};
use crate::sync_memory::{MemoryHub, MemoryStore};
use uuid::Uuid;

fn store_id(name: &str) -> StoreId {
    StoreId::parse(name).unwrap()
}

/// Write `count` recharge entries at `store` for `member`.
fn write_entries(store: &mut MemoryStore, count: u64, member: u128) {
    for _ in 0..count {
        let seq = store.own_max() + 1;
        let hlc = HlcTimestamp {
            wall_ms: seq,
            counter: 0,
        };
        let entry = LedgerEntry {
            id: Uuid::from_u128(
                (u128::from(seq) << 64)
                    | (u128::from(u32::from_be_bytes(
                        store.store_id.actor_bytes()[..4].try_into().unwrap(),
                    )) << 16)
                    | member,
            ),
            origin: store.store_id.clone(),
            seq,
            hlc,
            member_id: Uuid::from_u128(member),
            kind: EntryKind::RechargePrincipal,
            account: Account::Principal,
            amount: 100,
            checkout_id: None,
            reason: None,
            rule_version: 1,
        };
        store.write_local(Envelope {
            origin: store.store_id.clone(),
            seq,
            hlc,
            op: Op::V1(OpV1::Ledger(entry)),
        });
    }
}

/// Tiny deterministic generator (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Faults applied to one session.
#[derive(Clone, Copy)]
struct Faults {
    drop_percent: u64,
    duplicate_percent: u64,
    cut_percent: u64,
}

const clean: Faults = Faults {
    drop_percent: 0,
    duplicate_percent: 0,
    cut_percent: 0,
};

/// Run one session between `store` and `hub` until idle, cut, or `steps` run out. Returns the
/// number of message deliveries. Other stores' sessions are nudged with `handle_log_grew` by the
/// caller through later sessions.
fn run_session(
    store: &mut MemoryStore,
    hub: &mut MemoryHub,
    faults: Faults,
    rng: &mut Rng,
    steps: usize,
) -> usize {
    let mut now_ms = 1_000;
    let Ok(mut store_session) = StoreSession::new(store.store_id.clone(), store, now_ms) else {
        return 0;
    };
    let mut hub_session = HubSession::new(store.store_id.clone(), now_ms);
    let mut deliveries = 0;
    for _ in 0..steps {
        let mut moved = false;
        while let Some(message) = store_session.poll_transmit() {
            moved = true;
            if rng.chance(faults.cut_percent) {
                return deliveries;
            }
            if rng.chance(faults.drop_percent) {
                continue;
            }
            let copies = if rng.chance(faults.duplicate_percent) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                deliveries += 1;
                if hub_session
                    .handle_message(message.clone(), hub, now_ms)
                    .is_err()
                {
                    return deliveries;
                }
            }
        }
        while let Some(message) = hub_session.poll_transmit() {
            moved = true;
            if rng.chance(faults.cut_percent) {
                return deliveries;
            }
            if rng.chance(faults.drop_percent) {
                continue;
            }
            let copies = if rng.chance(faults.duplicate_percent) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                deliveries += 1;
                if store_session
                    .handle_message(message.clone(), store, now_ms)
                    .is_err()
                {
                    return deliveries;
                }
            }
        }
        if !moved {
            if store_session.is_idle() && hub_session.poll_transmit().is_none() {
                let head = hub.log_head().unwrap();
                if store.relay_cursor >= head {
                    return deliveries;
                }
            }
            now_ms += sync_retransmit_ms;
            // A store that got no Welcome gives up on the session (it reconnects later).
            if store_session.handle_timeout(store, now_ms).is_err() {
                return deliveries;
            }
            hub_session.handle_timeout(hub, now_ms).unwrap();
        }
    }
    deliveries
}

fn assert_converged(stores: &[MemoryStore], hub: &MemoryHub) {
    for store in stores {
        assert_eq!(
            store.ops.len(),
            hub.log.len(),
            "store {} holds every operation",
            store.store_id
        );
        let same = store.ledger == hub.ledger;
        assert!(
            same,
            "store {} ledger differs from the hub's",
            store.store_id
        );
        assert_eq!(store.hub_acked, store.own_max());
    }
}

#[test]
fn two_stores_converge_through_the_hub() {
    let mut stores = vec![
        MemoryStore::new(store_id("a")),
        MemoryStore::new(store_id("b")),
    ];
    write_entries(&mut stores[0], 600, 1);
    write_entries(&mut stores[1], 300, 1);
    let mut hub = MemoryHub::default();
    let mut rng = Rng(1);
    for _ in 0..2 {
        for store in stores.iter_mut() {
            run_session(store, &mut hub, clean, &mut rng, 10_000);
        }
    }
    assert_eq!(hub.log.len(), 900);
    assert_converged(&stores, &hub);
    assert_eq!(
        hub.ledger
            .balances_of(Uuid::from_u128(1))
            .unwrap()
            .principal
            .0,
        90_000
    );
}

#[test]
fn drops_duplicates_and_cuts_do_not_change_the_result() {
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut stores: Vec<MemoryStore> = ["a", "b", "c"]
            .iter()
            .map(|name| MemoryStore::new(store_id(name)))
            .collect();
        let mut hub = MemoryHub::default();
        let faulty = Faults {
            drop_percent: 10,
            duplicate_percent: 10,
            cut_percent: 5,
        };
        for round in 0..30 {
            let index = (rng.next() % 3) as usize;
            let count = rng.next() % 300;
            write_entries(&mut stores[index], count, 1 + (round % 2));
            let index = (rng.next() % 3) as usize;
            run_session(&mut stores[index], &mut hub, faulty, &mut rng, 200);
        }
        // Links heal: clean sessions until nothing moves; bounded rounds (no sync loops).
        let mut rounds = 0;
        loop {
            let mut deliveries = 0;
            for store in stores.iter_mut() {
                deliveries += run_session(store, &mut hub, clean, &mut rng, 10_000);
            }
            rounds += 1;
            let done = stores
                .iter()
                .all(|s| s.relay_cursor == hub.log.len() as u64 && s.hub_acked == s.own_max());
            if done {
                break;
            }
            assert!(
                rounds <= 3,
                "seed {seed}: not converged after {rounds} clean rounds ({deliveries} deliveries)"
            );
        }
        assert_converged(&stores, &hub);
    }
}

#[test]
fn a_store_cannot_push_another_stores_operations() {
    let mut mallory = MemoryStore::new(store_id("mallory"));
    let mut victim = MemoryStore::new(store_id("victim"));
    write_entries(&mut victim, 3, 9);
    // Mallory holds the victim's operations as if they were its own.
    for (_, envelope) in victim.ops.clone() {
        mallory
            .ops
            .insert((store_id("mallory"), envelope.seq), envelope);
    }
    let mut hub = MemoryHub::default();
    let mut session = HubSession::new(store_id("mallory"), 0);
    let hello = StoreSession::new(store_id("mallory"), &mallory, 0)
        .unwrap()
        .poll_transmit()
        .unwrap();
    session.handle_message(hello, &mut hub, 0).unwrap();
    let ops = mallory.own_ops_after(0, 10).unwrap();
    let result = session.handle_message(Message::V1(MessageV1::Push { ops }), &mut hub, 0);
    assert!(matches!(
        result,
        Err(SyncError::RefusedPeer {
            reason: RefuseReason::ForeignOrigin,
            ..
        })
    ));
    assert!(hub.log.is_empty(), "nothing was accepted");
    let refusal = std::iter::from_fn(|| session.poll_transmit()).last();
    assert!(matches!(
        refusal,
        Some(Message::V1(MessageV1::Refused {
            reason: RefuseReason::ForeignOrigin,
            ..
        }))
    ));
}

#[test]
fn hello_must_match_the_certificate_and_a_known_version() {
    let mut hub = MemoryHub::default();
    let store = MemoryStore::new(store_id("a"));
    let hello = StoreSession::new(store_id("a"), &store, 0)
        .unwrap()
        .poll_transmit()
        .unwrap();
    let mut session = HubSession::new(store_id("b"), 0);
    assert!(matches!(
        session.handle_message(hello, &mut hub, 0),
        Err(SyncError::RefusedPeer {
            reason: RefuseReason::IdentityMismatch,
            ..
        })
    ));
    let future = Message::V1(MessageV1::Hello {
        protocol_version: protocol_version_current + 1,
        store_id: store_id("a"),
        own_seq_max: 0,
        relay_cursor: 0,
    });
    let mut session = HubSession::new(store_id("a"), 0);
    assert!(matches!(
        session.handle_message(future, &mut hub, 0),
        Err(SyncError::RefusedPeer {
            reason: RefuseReason::UnsupportedVersion,
            ..
        })
    ));
}

#[test]
fn garbage_messages_are_errors_not_panics() {
    assert!(Message::decode(&[0x00]).is_err());
    assert!(Message::decode(&[0x00, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
    assert!(Message::decode(&vec![0u8; sync_message_bytes_max + 1]).is_err());
    let message = Message::V1(MessageV1::RelayAck { cursor: 7 });
    assert_eq!(Message::decode(&message.encode()).unwrap(), message);
    let mut padded = message.encode();
    padded.extend_from_slice(&[0, 0]);
    assert!(matches!(
        Message::decode(&padded),
        Err(DecodeError::TrailingBytes(2))
    ));
}

/// Deliver every message the store has queued to the hub in one `handle_messages` call
/// (optionally reversed and with the first one twice), then everything back one by one.
fn deliver_together(
    store_session: &mut StoreSession,
    store: &mut MemoryStore,
    hub_session: &mut HubSession,
    hub: &mut MemoryHub,
    scramble: bool,
) -> Result<usize, SyncError> {
    let mut messages: Vec<Message> = std::iter::from_fn(|| store_session.poll_transmit()).collect();
    if scramble && !messages.is_empty() {
        messages.push(messages[0].clone());
        messages.reverse();
    }
    let count = messages.len();
    hub_session.handle_messages(messages, hub, 1_000)?;
    while let Some(reply) = hub_session.poll_transmit() {
        store_session.handle_message(reply, store, 1_000)?;
    }
    Ok(count)
}

#[test]
fn pushes_received_together_are_ingested_together_and_acknowledged_once() {
    for scramble in [false, true] {
        let mut store = MemoryStore::new(store_id("a"));
        write_entries(&mut store, 1_500, 7);
        let mut hub = MemoryHub::default();
        let mut store_session = StoreSession::new(store.store_id.clone(), &store, 1_000).unwrap();
        let mut hub_session = HubSession::new(store.store_id.clone(), 1_000);
        // Hello alone, then the window of pushes together, until the hub holds everything.
        deliver_together(
            &mut store_session,
            &mut store,
            &mut hub_session,
            &mut hub,
            false,
        )
        .unwrap();
        let mut rounds = 0;
        while store.hub_acked < 1_500 {
            let delivered = deliver_together(
                &mut store_session,
                &mut store,
                &mut hub_session,
                &mut hub,
                scramble,
            )
            .unwrap();
            assert!(
                delivered > 0,
                "the store stopped pushing at {}",
                store.hub_acked
            );
            rounds += 1;
            assert!(rounds < 10, "too many rounds");
        }
        assert_eq!(hub.acked_seq(&store.store_id).unwrap(), 1_500);
        assert_eq!(hub.log.len(), 1_500);
        assert_eq!(
            hub.ledger
                .balances_of(Uuid::from_u128(7))
                .unwrap()
                .principal
                .0,
            150_000
        );
    }
}

#[test]
fn a_foreign_push_among_pushes_received_together_is_refused_and_nothing_of_it_kept() {
    let mut store = MemoryStore::new(store_id("a"));
    write_entries(&mut store, 10, 7);
    let mut other = MemoryStore::new(store_id("b"));
    write_entries(&mut other, 10, 8);
    let mut hub = MemoryHub::default();
    let mut store_session = StoreSession::new(store.store_id.clone(), &store, 1_000).unwrap();
    let mut hub_session = HubSession::new(store.store_id.clone(), 1_000);
    deliver_together(
        &mut store_session,
        &mut store,
        &mut hub_session,
        &mut hub,
        false,
    )
    .unwrap();
    let foreign = Message::V1(MessageV1::Push {
        ops: other.own_ops_after(0, 10).unwrap(),
    });
    let own: Vec<Message> = std::iter::from_fn(|| store_session.poll_transmit()).collect();
    let mut messages = own;
    messages.push(foreign);
    let refused = hub_session.handle_messages(messages, &mut hub, 1_000);
    assert!(matches!(
        refused,
        Err(SyncError::RefusedPeer {
            reason: RefuseReason::ForeignOrigin,
            ..
        })
    ));
    assert!(hub.log.iter().all(|e| e.origin == store.store_id));
    assert_eq!(
        hub.ledger
            .balances_of(Uuid::from_u128(8))
            .unwrap()
            .principal
            .0,
        0
    );
}

fn a_push_of(count: u64) -> Message {
    let mut store = MemoryStore::new(store_id("a"));
    write_entries(&mut store, count, 7);
    Message::V1(MessageV1::Push {
        ops: store.own_ops_after(0, count as usize).unwrap(),
    })
}

#[test]
fn batches_travel_deflated_to_a_peer_of_version_2_and_plain_to_version_1() {
    let push = a_push_of(256);
    let plain = push.encode();
    assert_eq!(
        push.encode_for(1),
        plain,
        "a version 1 peer gets what it knows"
    );
    let packed = push.encode_for(2);
    assert!(
        packed.len() * 2 < plain.len(),
        "{} bytes packed, {} plain",
        packed.len(),
        plain.len()
    );
    assert!(matches!(
        Message::decode_plain_for_tests(&packed),
        Ok(Message::V1(MessageV1::Packed { .. }))
    ));
    assert_eq!(Message::decode(&packed).unwrap(), push);
    // Small messages and acknowledgements are never packed.
    let ack = Message::V1(MessageV1::PushAck { acked_seq: 9 });
    assert_eq!(ack.encode_for(2), ack.encode());
}

#[test]
fn a_packed_message_may_not_inflate_past_the_limit_nor_nest() {
    use std::io::Write;
    let deflate = |bytes: &[u8]| {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    };
    // A bomb: a few KiB that inflate past the largest message.
    let bomb = Message::V1(MessageV1::Packed {
        deflated: deflate(&vec![0u8; sync_message_bytes_max + 10]),
    });
    assert!(bomb.encode().len() < 64 * 1024);
    assert!(matches!(
        Message::decode(&bomb.encode()),
        Err(DecodeError::TooLarge { .. })
    ));
    let inner = Message::V1(MessageV1::Packed {
        deflated: deflate(&a_push_of(10).encode()),
    });
    let nested = Message::V1(MessageV1::Packed {
        deflated: deflate(&inner.encode()),
    });
    assert!(matches!(
        Message::decode(&nested.encode()),
        Err(DecodeError::Packed(_))
    ));
    let garbage = Message::V1(MessageV1::Packed {
        deflated: vec![0xff; 100],
    });
    assert!(Message::decode(&garbage.encode()).is_err());
}

#[test]
fn a_hub_serves_a_store_one_version_older() {
    let mut store = MemoryStore::new(store_id("old"));
    write_entries(&mut store, 600, 3);
    let mut hub = MemoryHub::default();
    let mut store_session = StoreSession::speaking(
        protocol_version_current - 1,
        store.store_id.clone(),
        &store,
        0,
    )
    .unwrap();
    let mut hub_session = HubSession::new(store.store_id.clone(), 0);
    for _ in 0..20 {
        while let Some(message) = store_session.poll_transmit() {
            // What the old store sends is what an old build would send: plain.
            let bytes = message.encode_for(store_session.peer_version());
            hub_session
                .handle_message(Message::decode(&bytes).unwrap(), &mut hub, 0)
                .unwrap();
        }
        while let Some(message) = hub_session.poll_transmit() {
            // The hub answers in the old version: nothing packed.
            let bytes = message.encode_for(hub_session.peer_version());
            assert!(!matches!(
                Message::decode_plain_for_tests(&bytes),
                Ok(Message::V1(MessageV1::Packed { .. }))
            ));
            store_session
                .handle_message(Message::decode(&bytes).unwrap(), &mut store, 0)
                .unwrap();
        }
    }
    assert_eq!(hub_session.peer_version(), protocol_version_current - 1);
    assert_eq!(store_session.peer_version(), protocol_version_current - 1);
    assert_eq!(hub.acked_seq(&store.store_id).unwrap(), 600);
}

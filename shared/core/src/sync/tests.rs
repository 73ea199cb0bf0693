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

/// Run a session between `store` (offering `version`) and `hub` through the encoder and
/// decoder, until nothing moves; return what the hub and the store sent, decoded plain.
fn session_over_the_wire(
    version: u16,
    store: &mut MemoryStore,
    hub: &mut MemoryHub,
) -> (Vec<Message>, Vec<Message>) {
    let mut store_session =
        StoreSession::speaking(version, store.store_id.clone(), store, 0).unwrap();
    let mut hub_session = HubSession::new(store.store_id.clone(), 0);
    let (mut store_sent, mut hub_sent) = (Vec::new(), Vec::new());
    for _ in 0..50 {
        let mut moved = false;
        while let Some(message) = store_session.poll_transmit() {
            moved = true;
            // What a store of `version` sends is what a build of that version would send.
            let bytes = message.encode_for(store_session.peer_version());
            store_sent.push(unpacked(&bytes));
            hub_session
                .handle_message(Message::decode(&bytes).unwrap(), hub, 0)
                .unwrap();
        }
        while let Some(message) = hub_session.poll_transmit() {
            moved = true;
            let bytes = message.encode_for(hub_session.peer_version());
            if version < 2 {
                assert!(!matches!(
                    Message::decode_plain_for_tests(&bytes),
                    Ok(Message::V1(MessageV1::Packed { .. }))
                ));
            }
            hub_sent.push(unpacked(&bytes));
            store_session
                .handle_message(Message::decode(&bytes).unwrap(), store, 0)
                .unwrap();
        }
        if !moved {
            break;
        }
    }
    assert_eq!(hub_session.peer_version(), version);
    assert_eq!(store_session.peer_version(), version);
    (store_sent, hub_sent)
}

/// A message as it travels, unpacked (but not re-expanded).
fn unpacked(bytes: &[u8]) -> Message {
    match Message::decode_plain_for_tests(bytes).unwrap() {
        Message::V1(MessageV1::Packed { deflated }) => {
            let mut inflated = Vec::new();
            std::io::Read::read_to_end(
                &mut flate2::read::DeflateDecoder::new(deflated.as_slice()),
                &mut inflated,
            )
            .unwrap();
            Message::decode_plain_for_tests(&inflated).unwrap()
        }
        message => message,
    }
}

fn is_compact(message: &Message) -> bool {
    matches!(
        message,
        Message::V1(MessageV1::PushCompact { .. } | MessageV1::RelayCompact { .. })
    )
}

/// Member documents edited at two stores: `a` creates `members` members, then both edit them.
fn member_edits(a: &mut MemoryStore, b: &mut MemoryStore, members: u128, edits: u64) {
    use crate::member::{MemberDoc, Profile, ProfilePatch};
    let mut docs = Vec::new();
    for n in 0..members {
        let profile = Profile {
            name: format!("会员{n}"),
            phone: format!("139{n:08}"),
            card_no: format!("{:06}", 100_000 + n),
            ..Profile::default()
        };
        let (mut doc, change) = MemberDoc::create(&a.store_id, &profile, 10).unwrap();
        let seq = a.own_max() + 1;
        a.write_local(member_envelope(&a.store_id, seq, 10, n, change));
        docs.push(doc.save());
    }
    for (k, store) in [a, b].into_iter().enumerate() {
        for e in 0..edits {
            let n = u128::from(e) % members;
            let mut doc = MemberDoc::load(&store.store_id, &docs[n as usize]).unwrap();
            for (_, envelope) in store.ops.iter() {
                if let Op::V1(OpV1::MemberChange { member_id, change }) = &envelope.op
                    && member_id.as_u128() == n
                {
                    doc.apply_changes(std::slice::from_ref(change)).unwrap();
                }
            }
            let patch = ProfilePatch {
                note: Some(Some(format!("note {k}-{e}"))),
                ..Default::default()
            };
            let at = 20 + e;
            let change = doc.edit(&patch, at).unwrap().unwrap();
            let seq = store.own_max() + 1;
            store.write_local(member_envelope(&store.store_id, seq, at, n, change));
        }
    }
}

fn member_envelope(store: &StoreId, seq: u64, at: u64, member: u128, change: Vec<u8>) -> Envelope {
    Envelope {
        origin: store.clone(),
        seq,
        hlc: HlcTimestamp {
            wall_ms: at,
            counter: 0,
        },
        op: Op::V1(OpV1::MemberChange {
            member_id: Uuid::from_u128(member),
            change,
        }),
    }
}

#[test]
fn a_hub_serves_stores_one_and_two_versions_older() {
    for version in [protocol_version_current - 1, protocol_version_current - 2] {
        let mut a = MemoryStore::new(store_id("old"));
        let mut b = MemoryStore::new(store_id("new"));
        write_entries(&mut a, 600, 3);
        member_edits(&mut a, &mut b, 5, 20);
        let mut hub = MemoryHub::default();
        let (sent, _) = session_over_the_wire(version, &mut a, &mut hub);
        assert!(!sent.iter().any(is_compact), "version {version}");
        assert_eq!(hub.acked_seq(&a.store_id).unwrap(), a.own_max());
        // The other store speaks the current version; the old one receives its changes whole.
        session_over_the_wire(protocol_version_current, &mut b, &mut hub);
        let (_, relayed) = session_over_the_wire(version, &mut a, &mut hub);
        assert!(!relayed.iter().any(is_compact), "version {version}");
        assert!(
            relayed
                .iter()
                .any(|m| matches!(m, Message::V1(MessageV1::Relay { ops, .. }) if !ops.is_empty()))
        );
        assert_eq!(a.ops.len(), hub.log.len());
    }
}

#[test]
fn member_changes_travel_compact_at_version_3_and_arrive_byte_identical() {
    let mut a = MemoryStore::new(store_id("a"));
    let mut b = MemoryStore::new(store_id("b"));
    member_edits(&mut a, &mut b, 7, 40);
    write_entries(&mut b, 10, 3);
    let mut hub = MemoryHub::default();
    let (sent_a, _) = session_over_the_wire(protocol_version_current, &mut a, &mut hub);
    let (sent_b, relayed_b) = session_over_the_wire(protocol_version_current, &mut b, &mut hub);
    let (_, relayed_a) = session_over_the_wire(protocol_version_current, &mut a, &mut hub);
    for messages in [&sent_a, &sent_b, &relayed_a, &relayed_b] {
        assert!(messages.iter().any(is_compact));
        // Every member change travelled compact (all have the origin's actor).
        for message in messages.iter() {
            let ops: Vec<&WireOp> = match message {
                Message::V1(MessageV1::PushCompact { ops }) => ops.iter().collect(),
                Message::V1(MessageV1::RelayCompact { ops, .. }) => {
                    ops.iter().map(|op| &op.op).collect()
                }
                _ => continue,
            };
            for op in ops {
                if let WireOp::Full(envelope) = op {
                    assert!(!matches!(envelope.op, Op::V1(OpV1::MemberChange { .. })));
                }
            }
        }
    }
    // Same operations, byte for byte, everywhere.
    let at_hub: std::collections::BTreeMap<(StoreId, u64), Envelope> = hub
        .log
        .iter()
        .map(|e| ((e.origin.clone(), e.seq), e.clone()))
        .collect();
    assert_eq!(a.ops, at_hub);
    assert_eq!(b.ops, at_hub);
}

#[test]
fn a_compact_change_that_does_not_re_expand_is_refused_and_nothing_of_its_batch_kept() {
    let mut a = MemoryStore::new(store_id("a"));
    let mut b = MemoryStore::new(store_id("b"));
    member_edits(&mut a, &mut b, 3, 6);
    let mut hub = MemoryHub::default();
    // The hub holds none of `b`'s dependencies (a's creations), so b's first edit cannot
    // re-expand; and a checksum that does not match refuses even with them held.
    let mut hub_session = HubSession::new(b.store_id.clone(), 0);
    hub_session
        .handle_message(
            Message::V1(MessageV1::Hello {
                protocol_version: protocol_version_current,
                store_id: b.store_id.clone(),
                own_seq_max: b.own_max(),
                relay_cursor: 0,
            }),
            &mut hub,
            0,
        )
        .unwrap();
    let push = Message::V1(MessageV1::Push {
        ops: b.own_ops_after(0, 256).unwrap(),
    });
    let received = Message::decode(&push.encode_for(protocol_version_current)).unwrap();
    let refused = hub_session.handle_messages(vec![received], &mut hub, 0);
    assert!(
        matches!(refused, Err(SyncError::RefusedPeer { reason: RefuseReason::InvalidOperation, ref message }) if message.contains("not held")),
        "{refused:?}"
    );
    assert!(hub.log.is_empty());

    session_over_the_wire(protocol_version_current, &mut a, &mut hub);
    let held = hub.log.len();
    let mut tampered = compact::compact(&b.own_ops_after(0, 1).unwrap()[0]);
    if let WireOp::Member(change) = &mut tampered {
        change.checksum[0] ^= 1;
    } else {
        panic!("expected a compact change");
    }
    let mut hub_session = HubSession::new(b.store_id.clone(), 0);
    hub_session
        .handle_message(
            Message::V1(MessageV1::Hello {
                protocol_version: protocol_version_current,
                store_id: b.store_id.clone(),
                own_seq_max: b.own_max(),
                relay_cursor: hub.log_head().unwrap(),
            }),
            &mut hub,
            0,
        )
        .unwrap();
    let mut ops = vec![tampered];
    ops.extend(
        b.own_ops_after(1, 256)
            .unwrap()
            .iter()
            .map(compact::compact),
    );
    let refused =
        hub_session.handle_message(Message::V1(MessageV1::PushCompact { ops }), &mut hub, 0);
    assert!(
        matches!(refused, Err(SyncError::RefusedPeer { reason: RefuseReason::InvalidOperation, ref message }) if message.contains("checksum")),
        "{refused:?}"
    );
    assert_eq!(hub.log.len(), held);
    // Untampered, the same batch goes in whole.
    session_over_the_wire(protocol_version_current, &mut b, &mut hub);
    assert_eq!(hub.acked_seq(&b.store_id).unwrap(), b.own_max());
}

#[test]
fn a_store_refuses_a_relayed_compact_change_it_cannot_re_expand() {
    let mut a = MemoryStore::new(store_id("a"));
    let mut b = MemoryStore::new(store_id("b"));
    member_edits(&mut a, &mut b, 2, 4);
    let mut hub = MemoryHub::default();
    session_over_the_wire(protocol_version_current, &mut a, &mut hub);
    // Relay a's edits (which depend on a's creations) without the creations.
    let edits: Vec<WireRelayedOp> = hub
        .log
        .iter()
        .enumerate()
        .skip(2)
        .map(|(i, envelope)| WireRelayedOp {
            hub_seq: i as u64 + 1,
            op: compact::compact(envelope),
        })
        .collect();
    let mut store_session = StoreSession::new(b.store_id.clone(), &b, 0).unwrap();
    store_session
        .handle_message(
            Message::V1(MessageV1::Welcome {
                protocol_version: protocol_version_current,
                acked_seq: 0,
                log_head: hub.log_head().unwrap(),
            }),
            &mut b,
            0,
        )
        .unwrap();
    let before = b.ops.clone();
    let refused = store_session.handle_message(
        Message::V1(MessageV1::RelayCompact {
            ops: edits,
            from: 0,
            upto: hub.log_head().unwrap(),
            log_head: hub.log_head().unwrap(),
        }),
        &mut b,
        0,
    );
    assert!(
        matches!(refused, Err(SyncError::Protocol(ref m)) if m.contains("refused")),
        "{refused:?}"
    );
    assert_eq!(b.ops, before);
    assert_eq!(b.relay_cursor, 0);
}

/// Run `store_session` against a new hub session over the encoder and decoder until nothing
/// moves or the store's session fails (a hub's refusal is delivered to the store first).
/// Returns what the store sent, decoded plain, and how the store's session ended.
fn drive(
    mut store_session: StoreSession,
    store: &mut MemoryStore,
    hub: &mut MemoryHub,
) -> (Vec<Message>, StoreSession, Result<(), SyncError>) {
    let mut hub_session = HubSession::new(store.store_id.clone(), 0);
    let mut sent = Vec::new();
    for _ in 0..50 {
        let mut moved = false;
        while let Some(message) = store_session.poll_transmit() {
            moved = true;
            let bytes = message.encode_for(store_session.peer_version());
            sent.push(unpacked(&bytes));
            if hub_session.state() != HubSessionState::Closed {
                // A refusal is queued for the store; it is delivered below.
                let _ = hub_session.handle_message(Message::decode(&bytes).unwrap(), hub, 0);
            }
        }
        while let Some(message) = hub_session.poll_transmit() {
            moved = true;
            let bytes = message.encode_for(hub_session.peer_version());
            if let Err(e) = store_session.handle_message(Message::decode(&bytes).unwrap(), store, 0)
            {
                return (sent, store_session, Err(e));
            }
        }
        if !moved {
            break;
        }
    }
    (sent, store_session, Ok(()))
}

/// The member changes a store sent whole and compact.
fn member_changes_sent(sent: &[Message]) -> (usize, usize) {
    let (mut whole, mut compact) = (0, 0);
    for message in sent {
        let ops: Vec<&WireOp> = match message {
            Message::V1(MessageV1::PushCompact { ops }) => ops.iter().collect(),
            Message::V1(MessageV1::Push { ops }) => {
                whole += ops
                    .iter()
                    .filter(|e| matches!(e.op, Op::V1(OpV1::MemberChange { .. })))
                    .count();
                continue;
            }
            _ => continue,
        };
        for op in ops {
            match op {
                WireOp::Full(envelope) => {
                    if matches!(envelope.op, Op::V1(OpV1::MemberChange { .. })) {
                        whole += 1;
                    }
                }
                WireOp::Member(_) => compact += 1,
            }
        }
    }
    (whole, compact)
}

#[test]
fn a_store_whose_compact_push_is_refused_resends_it_whole_in_the_next_session() {
    let mut a = MemoryStore::new(store_id("a"));
    let mut b = MemoryStore::new(store_id("b"));
    member_edits(&mut a, &mut b, 3, 6);
    let mut hub = MemoryHub::default();
    // The hub holds none of b's edits' dependencies (a's creations): compact, they cannot
    // re-expand there, so every session that sends them compact is refused.
    let mut fallback = Fallback::default();
    for _ in 0..2 {
        let session = StoreSession::new(b.store_id.clone(), &b, 0).unwrap();
        let (_, session, ended) = drive(session, &mut b, &mut hub);
        fallback = session.fallback();
        assert!(
            matches!(
                ended,
                Err(SyncError::Refused {
                    reason: RefuseReason::InvalidOperation,
                    ..
                })
            ),
            "{ended:?}"
        );
        assert!(hub.log.is_empty());
        assert_eq!(session.fallback().push_whole_through, b.own_max());
    }
    assert_eq!(fallback.relay_whole_through, 0);
    // Resumed with the fallback: the refused operations go whole, still at version 3.
    let session = StoreSession::resuming(b.store_id.clone(), &b, 0, fallback).unwrap();
    let (sent, session, ended) = drive(session, &mut b, &mut hub);
    ended.unwrap();
    assert_eq!(session.peer_version(), protocol_version_current);
    assert_eq!(member_changes_sent(&sent), (6, 0));
    assert_eq!(hub.acked_seq(&b.store_id).unwrap(), b.own_max());
    let at_hub: Vec<Envelope> = hub.log.clone();
    assert_eq!(at_hub, b.own_ops_after(0, 256).unwrap());
    // Later operations travel compact again: a new edit at b depends on b's last edit of
    // that member, which the hub now holds.
    let last = b.own_ops_after(0, 256).unwrap().pop().unwrap();
    let Op::V1(OpV1::MemberChange { member_id, .. }) = &last.op else {
        panic!("expected a member change")
    };
    let creations = a.ops.values().filter(|envelope| envelope.seq <= 3);
    let changes = crate::sync_memory::member_changes_in(creations.chain(b.ops.values()), member_id);
    let mut doc = crate::member::MemberDoc::from_changes(&b.store_id, &changes).unwrap();
    let patch = crate::member::ProfilePatch {
        note: Some(Some("after the fallback".into())),
        ..Default::default()
    };
    let change = doc.edit(&patch, 100).unwrap().unwrap();
    let seq = b.own_max() + 1;
    b.write_local(member_envelope(
        &b.store_id,
        seq,
        100,
        member_id.as_u128(),
        change,
    ));
    let session = StoreSession::resuming(b.store_id.clone(), &b, 0, fallback).unwrap();
    let (sent, _, ended) = drive(session, &mut b, &mut hub);
    ended.unwrap();
    assert_eq!(member_changes_sent(&sent), (0, 1));
    assert_eq!(hub.acked_seq(&b.store_id).unwrap(), seq);
    assert_eq!(hub.log.last(), b.own_ops_after(seq - 1, 1).unwrap().first());
}

#[test]
fn a_store_that_cannot_re_expand_a_relayed_compact_batch_asks_for_version_2_until_past_it() {
    let mut a = MemoryStore::new(store_id("a"));
    let mut b = MemoryStore::new(store_id("b"));
    member_edits(&mut a, &mut b, 2, 4);
    let mut hub = MemoryHub::default();
    session_over_the_wire(protocol_version_current, &mut a, &mut hub);
    // b has lost a's creations (log positions 1 and 2) but its cursor says it holds them: the
    // edits after them, relayed compact, do not re-expand at b.
    b.relay_cursor = 2;
    let head = hub.log_head().unwrap();
    for _ in 0..2 {
        let session = StoreSession::new(b.store_id.clone(), &b, 0).unwrap();
        let (_, session, ended) = drive(session, &mut b, &mut hub);
        assert!(
            matches!(ended, Err(SyncError::Protocol(ref m)) if m.contains("refused")),
            "{ended:?}"
        );
        assert_eq!(b.relay_cursor, 2);
        assert_eq!(session.fallback().relay_whole_through, head);
    }
    let fallback = Fallback {
        push_whole_through: 0,
        relay_whole_through: head,
    };
    assert_eq!(fallback.version_to_offer(b.relay_cursor), 2);
    let session = StoreSession::resuming(b.store_id.clone(), &b, 0, fallback).unwrap();
    let (sent, session, ended) = drive(session, &mut b, &mut hub);
    ended.unwrap();
    assert!(matches!(
        sent.first(),
        Some(Message::V1(MessageV1::Hello {
            protocol_version: 2,
            ..
        }))
    ));
    assert_eq!(session.peer_version(), 2);
    // (b's own pushes, now in the log after a's, move its cursor too.)
    assert_eq!(b.relay_cursor, hub.log_head().unwrap());
    for envelope in &hub.log[2..] {
        assert_eq!(
            b.ops.get(&(envelope.origin.clone(), envelope.seq)),
            Some(envelope)
        );
    }
    assert_eq!(hub.acked_seq(&b.store_id).unwrap(), b.own_max());
    // Past the batch, sessions speak the current version again.
    assert_eq!(
        fallback.version_to_offer(b.relay_cursor),
        protocol_version_current
    );
}

mod compact_properties {
    use super::*;
    use crate::member::{MemberDoc, ProfilePatch};
    use proptest::prelude::*;

    /// One step of a random history: store `store` edits member `member`'s field `field`, or
    /// merges what the other store holds of that member.
    #[derive(Clone, Debug)]
    enum Step {
        Edit {
            store: usize,
            member: usize,
            field: usize,
            text: String,
        },
        Merge {
            into: usize,
            member: usize,
        },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..3usize, 0..3usize, 0..4usize, "[a-z会员 ]{0,12}").prop_map(
                |(store, member, field, text)| Step::Edit {
                    store,
                    member,
                    field,
                    text
                }
            ),
            (0..3usize, 0..3usize).prop_map(|(into, member)| Step::Merge { into, member }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Every change of a random history (three stores editing three members concurrently,
        /// merging each other's changes) is compacted and re-expands, against the changes the
        /// receiver holds plus unrelated ones, to its exact bytes; and re-expansion fails
        /// without its dependencies.
        #[test]
        fn compact_changes_re_expand_to_the_same_bytes(
            steps in proptest::collection::vec(step(), 1..40),
            time_skew in -5i64..5,
        ) {
            let stores = [store_id("s1"), store_id("s2"), store_id("hub-like-store-3")];
            let profile = crate::member::Profile {
                name: "张三".into(),
                phone: "13812345678".into(),
                card_no: "100001".into(),
                ..Default::default()
            };
            // docs[store][member], and every change made so far with its envelope.
            let mut docs: Vec<Vec<MemberDoc>> = Vec::new();
            // The change bytes each store's document of each member holds.
            let mut known: Vec<Vec<Vec<Vec<u8>>>> = Vec::new();
            let mut changes: Vec<Envelope> = Vec::new();
            let mut seqs = [0u64; 3];
            let mut created = Vec::new();
            for member in 0..3u128 {
                let (mut doc, change) = MemberDoc::create(&stores[0], &profile, 5).unwrap();
                seqs[0] += 1;
                created.push((doc.save(), change.clone()));
                changes.push(member_envelope(&stores[0], seqs[0], 5, member, change));
            }
            for store in &stores {
                docs.push(created.iter().map(|(saved, _)| MemberDoc::load(store, saved).unwrap()).collect());
                known.push(created.iter().map(|(_, change)| vec![change.clone()]).collect());
            }
            for (t, step) in steps.into_iter().enumerate() {
                match step {
                    Step::Edit { store, member, field, text } => {
                        let text = if text.trim().is_empty() { "x".to_owned() } else { text };
                        let patch = match field {
                            0 => ProfilePatch { note: Some(Some(text)), ..Default::default() },
                            1 => ProfilePatch { address: Some(Some(text)), ..Default::default() },
                            2 => ProfilePatch { tags: Some([text].into()), ..Default::default() },
                            _ => ProfilePatch { note: Some(None), ..Default::default() },
                        };
                        let at = 100 + t as u64;
                        if let Ok(Some(change)) = docs[store][member].edit(&patch, at) {
                            known[store][member].push(change.clone());
                            seqs[store] += 1;
                            let mut envelope = member_envelope(&stores[store], seqs[store], at, member as u128, change);
                            envelope.hlc.wall_ms = (at as i64 - time_skew) as u64;
                            changes.push(envelope);
                        }
                    }
                    Step::Merge { into, member } => {
                        let from = (into + 1) % 3;
                        let theirs = known[from][member].clone();
                        docs[into][member].apply_changes(&theirs).unwrap();
                        known[into][member].extend(theirs);
                    }
                }
            }
            let mut compacted = 0;
            for (i, envelope) in changes.iter().enumerate() {
                let Op::V1(OpV1::MemberChange { member_id, .. }) = &envelope.op else { unreachable!() };
                let WireOp::Member(compact) = compact::compact(envelope) else {
                    prop_assert!(false, "change {i} did not compact");
                    continue;
                };
                compacted += 1;
                // Through the wire encoding too.
                let wire = postcard::to_allocvec(&compact).unwrap();
                let compact: compact::CompactMemberChange = postcard::from_bytes(&wire).unwrap();
                // Smaller than the whole operation by at least the actor, and the rest of
                // each dependency's hash.
                let full = postcard::to_allocvec(envelope).unwrap().len();
                let deps = compact.deps.len();
                prop_assert!(wire.len() + 16 + 29 * deps <= full, "{} vs {full}", wire.len());
                // The receiver holds every change (of every member), in any order.
                let mut held: Vec<[u8; 32]> = changes
                    .iter()
                    .filter(|e| e.seq != envelope.seq || e.origin != envelope.origin)
                    .filter_map(|e| match &e.op {
                        Op::V1(OpV1::MemberChange { change, .. }) => compact::change_hash(change),
                        _ => None,
                    })
                    .collect();
                held.reverse();
                let expanded = compact::expand(&compact, &held).unwrap();
                prop_assert_eq!(&expanded, envelope);
                if deps > 0 {
                    let own = compact::hashes_in(std::iter::once(envelope), *member_id);
                    prop_assert!(compact::expand(&compact, &own).is_err());
                }
            }
            prop_assert_eq!(compacted, changes.len());
        }
    }
}

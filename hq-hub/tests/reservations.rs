//! The hub's reservation book: a grant survives a hub restart, lasts while its store is away,
//! and is given up only once the store is back and has pushed everything without the spend.

#![allow(clippy::unwrap_used)] // a test: a failed setup should panic
use chainsync_core::allowance::{SpendRequest, authorization_grace_ms};
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::ledger::{Account, EntryKind, LedgerEntry};
use chainsync_core::member::{MemberDoc, Profile};
use chainsync_core::op::{Envelope, Op, OpV1};
use chainsync_core::sync::{AuthorizeDecision, AuthorizeRequest, HubSide};
use chainsync_core::{Fen, StoreId};
use hq_hub::storage::{self, SqliteHubSide};
use std::path::Path;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

fn now() -> u64 {
    1_000_000
}

/// A hub side over the database at `path`, with the reservation book as saved there (what a
/// restarted hub starts with).
fn hub_side(path: &Path, writer: &Arc<Mutex<rusqlite::Connection>>) -> SqliteHubSide {
    let book = storage::load_book(&writer.lock().unwrap()).unwrap();
    SqliteHubSide {
        writer: writer.clone(),
        reader: hq_hub::db::open_reader(path).unwrap(),
        relay_cache: Arc::new(Default::default()),
        reservations: Arc::new(Mutex::new(book)),
        queue: Arc::new(Default::default()),
        log_grew: tokio::sync::watch::channel(0).0,
        projection: Arc::new(Default::default()),
        now_ms: now,
    }
}

fn spend(checkout: u128, member: Uuid) -> AuthorizeRequest {
    AuthorizeRequest {
        request_id: 1,
        checkout_id: Uuid::from_u128(checkout),
        member_id: Some(member),
        spend: SpendRequest {
            stored_value: Fen(700),
            points: 0,
        },
        coupon_codes: vec![],
    }
}

#[test]
fn a_grant_survives_a_restart_and_holds_until_its_store_caught_up_without_the_spend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    let mut conn = hq_hub::db::open_writer(&path).unwrap();
    // A member with ¥10.00, registered and recharged at store s1.
    let (s1, s2) = (StoreId::parse("s1").unwrap(), StoreId::parse("s2").unwrap());
    let member = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let profile = Profile {
        name: "张三".into(),
        phone: "13800000001".into(),
        card_no: "100001".into(),
        ..Profile::default()
    };
    let (_, change) = MemberDoc::create(&s1, &profile, 1).unwrap();
    let hlc = |wall_ms| HlcTimestamp {
        wall_ms,
        counter: 0,
    };
    let ops = vec![
        Envelope {
            origin: s1.clone(),
            seq: 1,
            hlc: hlc(1),
            op: Op::V1(OpV1::MemberChange {
                member_id: member,
                change,
            }),
        },
        Envelope {
            origin: s1.clone(),
            seq: 2,
            hlc: hlc(2),
            op: Op::V1(OpV1::Ledger(LedgerEntry {
                id: Uuid::from_u128(2),
                origin: s1.clone(),
                seq: 2,
                hlc: hlc(2),
                member_id: member,
                kind: EntryKind::RechargePrincipal,
                account: Account::Principal,
                amount: 1_000,
                checkout_id: None,
                reason: None,
                rule_version: 1,
            })),
        },
    ];
    storage::ingest(&mut conn, &s1, &ops, now()).unwrap();
    let writer = Arc::new(Mutex::new(conn));

    let mut hub = hub_side(&path, &writer);
    assert_eq!(
        hub.authorize(&s1, &spend(10, member), now()).unwrap(),
        AuthorizeDecision::Granted
    );
    drop(hub);

    // The hub restarts; s1 has not pushed the spend (it is cut off). The ¥7.00 is still held.
    let mut hub = hub_side(&path, &writer);
    assert!(matches!(
        hub.authorize(&s2, &spend(11, member), now()).unwrap(),
        AuthorizeDecision::InsufficientBalance {
            available_stored_value: 300,
            ..
        }
    ));
    // Another store catching up, or s1 back too soon after the grant, releases nothing.
    hub.store_caught_up(&s2, now() + authorization_grace_ms)
        .unwrap();
    hub.store_caught_up(&s1, now() + 1).unwrap();
    assert!(matches!(
        hub.authorize(&s2, &spend(11, member), now()).unwrap(),
        AuthorizeDecision::InsufficientBalance { .. }
    ));
    // s1 came back later and pushed everything it had: the checkout was never written.
    hub.store_caught_up(&s1, now() + authorization_grace_ms)
        .unwrap();
    drop(hub);
    let mut hub = hub_side(&path, &writer);
    assert_eq!(
        hub.authorize(&s2, &spend(11, member), now()).unwrap(),
        AuthorizeDecision::Granted,
        "the given-up hold stays given up across a restart"
    );
}

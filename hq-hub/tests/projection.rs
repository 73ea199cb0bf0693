//! Deferred projection of pushed ledger entries: acknowledged once recorded, projected later
//! by the projector, counted in every balance decision in between, and projected after a
//! restart if the hub stopped first.

#![allow(clippy::unwrap_used)] // a test: a failed setup should panic
use chainsync_core::allowance::SpendRequest;
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::ledger::{Account, EntryKind, LedgerEntry};
use chainsync_core::member::{MemberDoc, Profile};
use chainsync_core::op::{Envelope, Op, OpV1};
use chainsync_core::sync::{AuthorizeDecision, AuthorizeRequest, HubSide};
use chainsync_core::{Fen, StoreId};
use hq_hub::storage::{self, Projection, SqliteHubSide};
use std::path::Path;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

fn now() -> u64 {
    1_000_000
}

fn hlc(wall_ms: u64) -> HlcTimestamp {
    HlcTimestamp {
        wall_ms,
        counter: 0,
    }
}

fn entry(store: &StoreId, seq: u64, member: Uuid, kind: EntryKind, amount: i64) -> Envelope {
    let account = match kind {
        EntryKind::PointsEarn => Account::Points,
        _ => Account::Principal,
    };
    Envelope {
        origin: store.clone(),
        seq,
        hlc: hlc(seq),
        op: Op::V1(OpV1::Ledger(LedgerEntry {
            id: Uuid::from_u128(u128::from(seq) | u128::from(store.as_str().as_bytes()[1]) << 64),
            origin: store.clone(),
            seq,
            hlc: hlc(seq),
            member_id: member,
            kind,
            account,
            amount,
            checkout_id: None,
            reason: None,
            rule_version: 1,
        })),
    }
}

/// A hub database with one member holding ¥10.00, registered and recharged at `s1`
/// (projected at once, as `storage::ingest` does).
fn hub_with_member(path: &Path, s1: &StoreId, member: Uuid) -> rusqlite::Connection {
    let mut conn = hq_hub::db::open_writer(path).unwrap();
    for store in ["s1", "s2"] {
        conn.execute(
            "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES (?1, ?1, 'r', 0)",
            [store],
        )
        .unwrap();
    }
    let profile = Profile {
        name: "张三".into(),
        phone: "13800000001".into(),
        card_no: "100001".into(),
        ..Profile::default()
    };
    let (_, change) = MemberDoc::create(s1, &profile, 1).unwrap();
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
        entry(s1, 2, member, EntryKind::RechargePrincipal, 1_000),
    ];
    storage::ingest(&mut conn, s1, &ops, now()).unwrap();
    conn
}

fn hub_side(
    path: &Path,
    writer: &Arc<Mutex<rusqlite::Connection>>,
    projection: &Arc<Projection>,
) -> SqliteHubSide {
    SqliteHubSide {
        writer: writer.clone(),
        reader: hq_hub::db::open_reader(path).unwrap(),
        relay_cache: Arc::new(Default::default()),
        reservations: Arc::new(Mutex::new(Default::default())),
        queue: Arc::new(Default::default()),
        log_grew: tokio::sync::watch::channel(0).0,
        projection: projection.clone(),
        now_ms: now,
    }
}

fn spend(checkout: u128, member: Uuid, fen: i64) -> AuthorizeRequest {
    AuthorizeRequest {
        request_id: 1,
        checkout_id: Uuid::from_u128(checkout),
        member_id: Some(member),
        spend: SpendRequest {
            stored_value: Fen(fen),
            points: 0,
        },
        coupon_codes: vec![],
    }
}

fn projected_principal(conn: &rusqlite::Connection, member: Uuid) -> i64 {
    chainsync_replica::read::balances(conn, member)
        .unwrap()
        .unwrap()
        .principal
        .0
}

fn open_exceptions(conn: &rusqlite::Connection) -> i64 {
    conn.query_row(
        "SELECT COUNT(*) FROM exceptions WHERE resolved_ms IS NULL",
        [],
        |row| row.get(0),
    )
    .unwrap()
}

#[test]
fn an_acknowledged_spend_not_yet_projected_counts_in_authorization() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    let (s1, s2) = (StoreId::parse("s1").unwrap(), StoreId::parse("s2").unwrap());
    let member = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001);
    let writer = Arc::new(Mutex::new(hub_with_member(&path, &s1, member)));
    let projection = Arc::new(Projection::default());
    let mut hub = hub_side(&path, &writer, &projection);

    // s2 spent ¥7.00 offline and pushes it: acknowledged, not projected yet.
    let acked = hub
        .ingest(&s2, &[entry(&s2, 1, member, EntryKind::Spend, -700)])
        .unwrap();
    assert_eq!(acked, 1);
    assert_eq!(projection.backlog(), 1);
    assert_eq!(
        projected_principal(&hub.reader, member),
        1_000,
        "projection is deferred"
    );
    // Online authorization counts it all the same: ¥3.00 left, not ¥10.00.
    assert_eq!(
        hub.authorize(&s1, &spend(10, member, 500), now()).unwrap(),
        AuthorizeDecision::InsufficientBalance {
            available_stored_value: 300,
            available_points: 0,
        }
    );

    // The projector's step: the balance is the sum of the entries, counted once.
    let moved =
        storage::project_pending(&mut writer.lock().unwrap(), Some(&projection), 100, now())
            .unwrap();
    // s1's two operations (projected when they arrived) are passed over, s2's spend projected.
    assert_eq!(moved, 3);
    assert_eq!(projection.backlog(), 0);
    assert_eq!(projected_principal(&hub.reader, member), 300);
    assert_eq!(
        hub.authorize(&s1, &spend(11, member, 500), now()).unwrap(),
        AuthorizeDecision::InsufficientBalance {
            available_stored_value: 300,
            available_points: 0,
        }
    );
    assert_eq!(
        hub.authorize(&s1, &spend(12, member, 300), now()).unwrap(),
        AuthorizeDecision::Granted
    );
    // Nothing left to project; a second pass changes nothing.
    assert_eq!(
        storage::project_pending(&mut writer.lock().unwrap(), Some(&projection), 100, now())
            .unwrap(),
        0
    );
    assert_eq!(projected_principal(&hub.reader, member), 300);
}

#[test]
fn a_hub_stopped_before_projecting_projects_what_it_acknowledged_when_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.sqlite");
    let (s1, s2) = (StoreId::parse("s1").unwrap(), StoreId::parse("s2").unwrap());
    let member = Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0002);
    let writer = Arc::new(Mutex::new(hub_with_member(&path, &s1, member)));
    let projection = Arc::new(Projection::default());
    let mut hub = hub_side(&path, &writer, &projection);
    // Two spends of ¥7.00 at s2 while apart: together below zero.
    let ops = [
        entry(&s2, 1, member, EntryKind::Spend, -700),
        entry(&s2, 2, member, EntryKind::Spend, -700),
        entry(&s2, 3, member, EntryKind::PointsEarn, 14),
    ];
    assert_eq!(hub.ingest(&s2, &ops).unwrap(), 3);
    // Pushed again (a retransmit): nothing counted twice.
    assert_eq!(hub.ingest(&s2, &ops).unwrap(), 3);
    assert_eq!(projection.backlog(), 3);
    assert_eq!(open_exceptions(&hub.reader), 0, "not projected yet");
    // The hub stops here (the in-memory count is lost) and starts again.
    drop(hub);
    drop(writer);
    let mut conn = hq_hub::db::open_writer(&path).unwrap();
    storage::project_all(&mut conn, now()).unwrap();
    assert_eq!(projected_principal(&conn, member), -400);
    let points: i64 = chainsync_replica::read::balances(&conn, member)
        .unwrap()
        .unwrap()
        .points;
    assert_eq!(points, 14);
    assert_eq!(open_exceptions(&conn), 1, "the overdraft is in the queue");
    let ledger_rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM ledger", [], |row| row.get(0))
        .unwrap();
    assert_eq!(ledger_rows, 4);
    // Starting again projects nothing twice.
    storage::project_all(&mut conn, now()).unwrap();
    assert_eq!(projected_principal(&conn, member), -400);
}

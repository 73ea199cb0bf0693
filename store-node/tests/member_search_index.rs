//! The store's member-search index follows relayed operations: sales and refunds count once,
//! and a same-phone merge that arrives after the sales moves them to the canonical member.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::member::{MemberDoc, Profile};
use chainsync_core::op::{Envelope, Op, OpV1, RefundRecord, SaleRecord};
use chainsync_core::{Fen, StoreId};
use chainsync_replica::project::apply_remote;
use uuid::Uuid;

fn envelope(origin: &str, seq: u64, op: OpV1) -> Envelope {
    Envelope {
        origin: StoreId::parse(origin).unwrap(),
        seq,
        hlc: HlcTimestamp {
            wall_ms: 1_000 + seq,
            counter: 0,
        },
        op: Op::V1(op),
    }
}

fn member(origin: &str, id: Uuid, phone: &str, tags: &[&str]) -> OpV1 {
    let profile = Profile {
        name: "赵六".into(),
        phone: phone.into(),
        card_no: format!("K{origin}0001"),
        birthday: Some("1990-04-01".into()),
        home_store: Some(origin.into()),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    };
    let (_, change) = MemberDoc::create(&StoreId::parse(origin).unwrap(), &profile, 1).unwrap();
    OpV1::MemberChange {
        member_id: id,
        change,
    }
}

fn sale(id: u128, member: Uuid, total: i64, at_ms: u64) -> OpV1 {
    OpV1::Sale(SaleRecord {
        id: Uuid::from_u128(id),
        member_id: Some(member),
        lines: vec![],
        payments: vec![],
        subtotal: Fen(total),
        discount: Fen(0),
        total: Fen(total),
        points_earned: 0,
        tier: String::new(),
        rule_version: 1,
        at_ms,
    })
}

type Row = (String, String, i64, i64, i64, Option<i64>);

fn rows(conn: &rusqlite::Connection) -> Vec<Row> {
    let mut s = conn
        .prepare(
            "SELECT member_id, home_store, birthday_month, visits, spend_fen, last_visit_ms
             FROM search_members ORDER BY member_id",
        )
        .unwrap();
    s.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[test]
fn index_follows_relayed_sales_refunds_and_merges() {
    let dir = tempfile::tempdir().unwrap();
    let conn = store_node::db::open_writer(&dir.path().join("store.db")).unwrap();
    let local = StoreId::parse("here").unwrap();
    let (small, big) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let b_ops = [
        envelope("b", 1, member("b", big, "13900000005", &["vip"])),
        envelope("b", 2, sale(10, big, 500, 5_000)),
        envelope("b", 3, sale(11, big, 700, 6_000)),
        envelope(
            "b",
            4,
            OpV1::SaleRefund(RefundRecord {
                id: Uuid::from_u128(12),
                sale_id: Uuid::from_u128(11),
                member_id: Some(big),
                amount: Fen(200),
                reason: None,
                at_ms: 7_000,
            }),
        ),
    ];
    for op in &b_ops {
        assert!(apply_remote(&conn, &local, op).unwrap());
    }
    // Applied again: nothing changes.
    for op in &b_ops {
        assert!(!apply_remote(&conn, &local, op).unwrap());
    }
    assert_eq!(
        rows(&conn),
        vec![(big.to_string(), "b".into(), 4, 2, 1_000, Some(6_000))]
    );
    let tagged: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM search_member_tags WHERE tag = 'vip'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tagged, 1);
    // The same phone registered elsewhere with a smaller id: it becomes the canonical member.
    apply_remote(
        &conn,
        &local,
        &envelope("a", 1, member("a", small, "13900000005", &[])),
    )
    .unwrap();
    apply_remote(
        &conn,
        &local,
        &envelope("a", 2, sale(13, small, 100, 9_000)),
    )
    .unwrap();
    assert_eq!(
        rows(&conn),
        vec![(small.to_string(), "a".into(), 4, 3, 1_100, Some(9_000))]
    );
    let tags: i64 = conn
        .query_row("SELECT COUNT(*) FROM search_member_tags", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        tags, 0,
        "the canonical member's profile (no tags) is what is searched"
    );
}

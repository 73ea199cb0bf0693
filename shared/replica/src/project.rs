//! Projection: replicated operations → the tables people query. Every function here is
//! idempotent (a repeated operation changes nothing), so local writes and operations received
//! from other replicas go through the same code.
//!
//! Duplicate members: two members with the same phone (registered at two stores while they
//! were apart) are merged by a rule that only looks at the set of members: the one with the
//! smallest id is canonical and the others get `merged_into` = its id. Nothing is deleted; the
//! canonical member's balances, points and history are those of the whole group. Merge law:
//! the result is a function of the set of (id, phone) pairs, so it is the same on every
//! replica whatever the order in which the members arrived.

use chainsync_core::StoreId;
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::ledger::{Account, LedgerEntry};
use chainsync_core::member::MemberDoc;
use chainsync_core::op::{Envelope, Op, OpV1, ProductRecord, RefundRecord, SaleRecord};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

/// Record an operation. Returns false if it was already there (then project nothing).
pub fn insert_op(conn: &Connection, envelope: &Envelope) -> rusqlite::Result<bool> {
    let mut statement = conn.prepare_cached(insert_op_sql)?;
    insert_op_with(&mut statement, envelope, &envelope.op.encode())
}

/// The statement [`insert_op_with`] runs (prepared once by a caller recording many).
pub const insert_op_sql: &str =
    "INSERT OR IGNORE INTO ops (origin, seq, hlc_wall_ms, hlc_counter, kind, member_id, body)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

/// [`insert_op`] with the statement prepared from [`insert_op_sql`] and the operation already
/// encoded (`body`: `envelope.op.encode()`, which a caller may do outside its transaction).
pub fn insert_op_with(
    statement: &mut rusqlite::Statement<'_>,
    envelope: &Envelope,
    body: &[u8],
) -> rusqlite::Result<bool> {
    let member_id = match &envelope.op {
        Op::V1(OpV1::MemberChange { member_id, .. }) => Some(*member_id),
        Op::V1(OpV1::Ledger(entry)) => Some(entry.member_id),
        Op::V1(OpV1::Sale(sale)) => sale.member_id,
        Op::V1(OpV1::SaleRefund(refund)) => refund.member_id,
        Op::V1(OpV1::CouponIssue(coupon)) => coupon.member_id,
        Op::V1(OpV1::CouponRedeem(redemption)) => redemption.member_id,
        Op::V1(OpV1::CountCardPurchase(card)) => Some(card.member_id),
        Op::V1(OpV1::CountCardUse(card_use)) => Some(card_use.member_id),
        Op::V1(OpV1::CountCardUseReversal(reversal)) => Some(reversal.member_id),
        Op::V1(OpV1::ProductUpsert(_))
        | Op::V1(OpV1::AllowancePolicySet(_))
        | Op::V1(OpV1::CouponTemplateUpsert(_))
        | Op::V1(OpV1::RulesSet(_))
        | Op::V1(OpV1::CountCardTemplateUpsert(_))
        | Op::V1(OpV1::RefundLines(_))
        | Op::V1(OpV1::GiftUpsert(_))
        | Op::V1(OpV1::CatalogItemUpsert(_))
        | Op::V1(OpV1::StockMovements(_))
        | Op::V1(OpV1::TransferRequest(_)) => None,
        Op::V1(OpV1::GiftRedeem(redemption)) => Some(redemption.member_id),
        Op::V1(OpV1::Feedback(feedback)) => Some(feedback.member_id),
        Op::V1(OpV1::CouponTemplateUpsertV2(_))
        | Op::V1(OpV1::LotteryUpsert(_))
        | Op::V1(OpV1::RulesSetV2(_))
        | Op::V1(OpV1::SalePoints(_)) => None,
        Op::V1(OpV1::CouponIssueV2(coupon)) => coupon.member_id,
        Op::V1(OpV1::CouponTransfer(transfer)) => Some(transfer.to_member),
        Op::V1(OpV1::LotteryDraw(draw)) => Some(draw.member_id),
        Op::V1(OpV1::Referral(referral)) => Some(referral.referee),
    };
    let inserted = statement.execute(params![
        envelope.origin.as_str(),
        envelope.seq as i64,
        envelope.hlc.wall_ms as i64,
        envelope.hlc.counter,
        envelope.op.kind(),
        member_id.map(|id| id.to_string()),
        body,
    ])?;
    Ok(inserted == 1)
}

/// Write a member document and its searchable fields. On first sight of the member, its cached
/// balances are folded from whatever ledger entries already arrived.
pub fn project_member(
    conn: &Connection,
    member_id: Uuid,
    doc: &mut MemberDoc,
    origin: &StoreId,
    created_ms: u64,
) -> rusqlite::Result<()> {
    let profile = doc.profile();
    let profile_json = serde_json::to_string(&profile).unwrap_or_default();
    let saved = doc.save();
    let old_phone: Option<String> = conn
        .prepare_cached("SELECT phone FROM members WHERE id = ?1")?
        .query_row([member_id.to_string()], |row| row.get(0))
        .optional()?;
    conn.prepare_cached(
        "INSERT INTO members (id, phone, card_no, name, profile_json, doc, origin, created_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET phone = excluded.phone, card_no = excluded.card_no,
             name = excluded.name, profile_json = excluded.profile_json, doc = excluded.doc",
    )?
    .execute(params![
        member_id.to_string(),
        profile.phone,
        profile.card_no,
        profile.name,
        profile_json,
        saved,
        origin.as_str(),
        created_ms as i64,
    ])?;
    if let Some(old_phone) = old_phone.filter(|old| *old != profile.phone) {
        merge_same_phone(conn, &old_phone)?;
    }
    merge_same_phone(conn, &profile.phone)?;
    refold_balances(conn, member_id)
}

/// Recompute which member is canonical among those with `phone` (see the module doc).
pub fn merge_same_phone(conn: &Connection, phone: &str) -> rusqlite::Result<()> {
    if phone.is_empty() {
        return Ok(());
    }
    conn.prepare_cached(
        "UPDATE members SET merged_into = CASE
             WHEN id = (SELECT MIN(id) FROM members WHERE phone = ?1) THEN NULL
             ELSE (SELECT MIN(id) FROM members WHERE phone = ?1) END
         WHERE phone = ?1",
    )?
    .execute([phone])?;
    Ok(())
}

/// Recompute a member's cached balances from the ledger (the ledger's triggers keep them;
/// this re-derives them, e.g. after a member document arrives after its entries).
pub fn refold_balances(conn: &Connection, member_id: Uuid) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO member_balances (member_id, principal_fen, bonus_fen, points)
         SELECT ?1,
                COALESCE(SUM(CASE account WHEN 'principal' THEN amount ELSE 0 END), 0),
                COALESCE(SUM(CASE account WHEN 'bonus' THEN amount ELSE 0 END), 0),
                COALESCE(SUM(CASE account WHEN 'points' THEN amount ELSE 0 END), 0)
         FROM ledger WHERE member_id = ?1
         ON CONFLICT (member_id) DO UPDATE SET principal_fen = excluded.principal_fen,
             bonus_fen = excluded.bonus_fen, points = excluded.points",
    )?
    .execute([member_id.to_string()])?;
    Ok(())
}

pub fn account_name(account: Account) -> &'static str {
    match account {
        Account::Principal => "principal",
        Account::Bonus => "bonus",
        Account::Points => "points",
    }
}

/// Add a ledger entry and move the member's cached balance by its amount. An entry whose id is
/// already held (a derived id written by two stores apart: a referral reward, a points expiry)
/// replaces the held one only if it was written first by (HLC, origin, seq), or, for a points
/// expiry over a points expiry (a revision), last; so every replica keeps the same one whatever
/// the arrival order (`LedgerEntry::wins_over`).
pub fn project_ledger(conn: &Connection, entry: &LedgerEntry) -> rusqlite::Result<()> {
    project_ledger_new(conn, entry).map(|_| ())
}

/// [`project_ledger`], saying whether the projection changed (the entry was new, or it
/// replaced a held entry with the same id); projecting the same entry again says `false`.
pub fn project_ledger_new(conn: &Connection, entry: &LedgerEntry) -> rusqlite::Result<bool> {
    // One statement: a new id is inserted; a held id is replaced in the order of
    // `LedgerEntry::wins_over` (a points expiry gives way to any other entry; of two points
    // expiries the last written by (HLC, origin, seq) stays, a revision; of two others the
    // first written stays), so every replica keeps the same one whatever the arrival order
    // (`tests::same_id_entries_project_like_the_core_in_any_order`). The ledger's triggers move the member
    // balances (`member_balances`): by the amount of an inserted entry, by the difference
    // for a replaced one (`sqlite::replica_schema_v4`).
    let changed = conn
        .prepare_cached(
            "INSERT INTO ledger (id, member_id, origin, seq, hlc_wall_ms, hlc_counter, kind,
                 account, amount, checkout_id, reason, rule_version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
             ON CONFLICT (id) DO UPDATE SET member_id = excluded.member_id,
                 origin = excluded.origin, seq = excluded.seq,
                 hlc_wall_ms = excluded.hlc_wall_ms, hlc_counter = excluded.hlc_counter,
                 kind = excluded.kind, account = excluded.account, amount = excluded.amount,
                 checkout_id = excluded.checkout_id, reason = excluded.reason,
                 rule_version = excluded.rule_version
             WHERE CASE
                 WHEN excluded.kind = 'points_expire' AND ledger.kind = 'points_expire' THEN
                     (excluded.hlc_wall_ms, excluded.hlc_counter, excluded.origin, excluded.seq)
                     > (ledger.hlc_wall_ms, ledger.hlc_counter, ledger.origin, ledger.seq)
                 WHEN excluded.kind = 'points_expire' THEN 0
                 WHEN ledger.kind = 'points_expire' THEN 1
                 ELSE (excluded.hlc_wall_ms, excluded.hlc_counter, excluded.origin, excluded.seq)
                     < (ledger.hlc_wall_ms, ledger.hlc_counter, ledger.origin, ledger.seq)
             END",
        )?
        .execute(params![
            entry.id.to_string(),
            entry.member_id.to_string(),
            entry.origin.as_str(),
            entry.seq as i64,
            entry.hlc.wall_ms as i64,
            entry.hlc.counter,
            entry.kind.as_str(),
            account_name(entry.account),
            entry.amount,
            entry.checkout_id.map(|id| id.to_string()),
            entry.reason,
            entry.rule_version,
        ])?;
    Ok(changed > 0)
}

pub fn project_sale(
    conn: &Connection,
    sale: &SaleRecord,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        // A refund that arrived first is netted now (arrival order must not matter).
        "INSERT OR IGNORE INTO sales (id, member_id, origin, at_ms, total_fen, body, refunded_fen)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6,
                 (SELECT COALESCE(SUM(amount_fen), 0) FROM refunds WHERE sale_id = ?1))",
    )?
    .execute(params![
        sale.id.to_string(),
        sale.member_id.map(|id| id.to_string()),
        origin.as_str(),
        sale.at_ms as i64,
        sale.total.0,
        postcard::to_allocvec(sale).unwrap_or_default(),
    ])?;
    Ok(())
}

pub fn project_refund(
    conn: &Connection,
    refund: &RefundRecord,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let inserted = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO refunds (id, sale_id, member_id, origin, amount_fen, at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            refund.id.to_string(),
            refund.sale_id.to_string(),
            refund.member_id.map(|id| id.to_string()),
            origin.as_str(),
            refund.amount.0,
            refund.at_ms as i64,
        ])?;
    if inserted == 1 {
        conn.prepare_cached("UPDATE sales SET refunded_fen = refunded_fen + ?1 WHERE id = ?2")?
            .execute(params![refund.amount.0, refund.sale_id.to_string()])?;
    }
    Ok(())
}

/// Last writer wins, by (HLC, origin), for name, price and active; HQ's catalog fields are
/// kept (see `chainsync_core::catalog`). The same result on every replica whatever the order.
pub fn project_product(
    conn: &Connection,
    product: &ProductRecord,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    crate::catalog::project_write(
        conn,
        chainsync_core::catalog::ProductWrite::Product(product),
        hlc,
        origin,
    )
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("database: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("member document: {0}")]
    Member(#[from] chainsync_core::member::MemberError),
    #[error("ledger entry: {0}")]
    Entry(#[from] chainsync_core::ledger::EntryError),
    #[error("catalog item: {0}")]
    CatalogItem(#[from] chainsync_core::catalog::ItemError),
    #[error("operation fields disagree with its envelope")]
    Mismatch,
    #[error("stock: {0}")]
    Stock(#[from] chainsync_core::stock::BatchError),
}

/// Apply an operation that came from another replica: record it, then project it.
/// `local` is this store's identity (used as the actor for later local edits).
pub fn apply_remote(
    conn: &Connection,
    local: &StoreId,
    envelope: &Envelope,
) -> Result<bool, ApplyError> {
    check_remote(envelope)?;
    if !insert_op(conn, envelope)? {
        return Ok(false);
    }
    project_recorded(conn, local, envelope)?;
    Ok(true)
}

/// The checks [`apply_remote`] makes before recording an operation from another replica
/// (shape, and an author allowed to write it); no database access.
pub fn check_remote(envelope: &Envelope) -> Result<(), ApplyError> {
    if let Op::V1(OpV1::Ledger(entry)) = &envelope.op {
        entry.validate()?;
        if entry.origin != envelope.origin || entry.seq != envelope.seq {
            return Err(ApplyError::Mismatch);
        }
    }
    if let Op::V1(OpV1::CatalogItemUpsert(item)) = &envelope.op {
        item.validate()?;
    }
    match &envelope.op {
        // Stock is authored by the store that holds the goods; a transfer is asked for by one
        // of its ends or by HQ.
        Op::V1(OpV1::StockMovements(batch)) => {
            batch.check()?;
            if batch.store != envelope.origin {
                return Err(ApplyError::Mismatch);
            }
        }
        Op::V1(OpV1::Referral(referral))
            if chainsync_core::referral::check(referral.referee, referral.referrer).is_err() =>
        {
            return Err(ApplyError::Mismatch);
        }
        Op::V1(OpV1::TransferRequest(request)) => {
            request.check()?;
            let ends = &request.ends;
            if envelope.origin != ends.from
                && envelope.origin != ends.to
                && envelope.origin != StoreId::hub()
            {
                return Err(ApplyError::Mismatch);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Project an operation [`insert_op`] has just recorded for the first time.
pub fn project_recorded(
    conn: &Connection,
    local: &StoreId,
    envelope: &Envelope,
) -> Result<(), ApplyError> {
    match &envelope.op {
        Op::V1(OpV1::MemberChange { member_id, change }) => {
            let saved: Option<Vec<u8>> = conn
                .prepare_cached("SELECT doc FROM members WHERE id = ?1")?
                .query_row([member_id.to_string()], |r| r.get(0))
                .optional()?;
            let mut doc = match saved {
                Some(saved) => MemberDoc::load(local, &saved)?,
                None => MemberDoc::from_changes(local, &[])?,
            };
            doc.apply_changes(std::slice::from_ref(change))?;
            project_member(
                conn,
                *member_id,
                &mut doc,
                &envelope.origin,
                envelope.hlc.wall_ms,
            )?;
        }
        Op::V1(OpV1::Ledger(entry)) => project_ledger(conn, entry)?,
        Op::V1(OpV1::Sale(sale)) => project_sale(conn, sale, &envelope.origin)?,
        Op::V1(OpV1::SaleRefund(refund)) => project_refund(conn, refund, &envelope.origin)?,
        Op::V1(OpV1::ProductUpsert(product)) => {
            project_product(conn, product, envelope.hlc, &envelope.origin)?
        }
        Op::V1(OpV1::AllowancePolicySet(policy)) => project_policy(conn, policy)?,
        Op::V1(OpV1::CouponTemplateUpsert(template)) => {
            project_coupon_template(conn, template, envelope.hlc, &envelope.origin)?
        }
        Op::V1(OpV1::CouponIssue(coupon)) => project_coupon(conn, coupon, &envelope.origin)?,
        Op::V1(OpV1::CouponRedeem(redemption)) => {
            project_redemption(conn, redemption, &envelope.origin)?
        }
        Op::V1(OpV1::RulesSet(rules)) => crate::program::project_rules(conn, rules)?,
        Op::V1(OpV1::RulesSetV2(document)) => {
            crate::program::project_rules_document(conn, document)?
        }
        Op::V1(OpV1::SalePoints(points)) => crate::program::project_sale_points(conn, points)?,
        Op::V1(OpV1::CountCardTemplateUpsert(template)) => {
            crate::program::project_count_card_template(
                conn,
                template,
                envelope.hlc,
                &envelope.origin,
            )?
        }
        Op::V1(OpV1::CountCardPurchase(card)) => {
            crate::program::project_count_card_purchase(conn, card, &envelope.origin)?
        }
        Op::V1(OpV1::CountCardUse(card_use)) => {
            crate::program::project_count_card_use(conn, card_use, &envelope.origin)?
        }
        Op::V1(OpV1::CountCardUseReversal(reversal)) => {
            crate::program::project_count_card_reversal(conn, reversal, &envelope.origin)?
        }
        Op::V1(OpV1::RefundLines(lines)) => {
            crate::program::project_refund_lines(conn, lines, &envelope.origin)?
        }
        Op::V1(OpV1::GiftUpsert(gift)) => {
            crate::program::project_gift(conn, gift, envelope.hlc, &envelope.origin)?
        }
        Op::V1(OpV1::GiftRedeem(redemption)) => {
            crate::program::project_gift_redemption(conn, redemption, &envelope.origin)?
        }
        Op::V1(OpV1::CatalogItemUpsert(item)) => {
            crate::catalog::project_item(conn, item, envelope.hlc, &envelope.origin)?
        }
        Op::V1(OpV1::StockMovements(batch)) => crate::stock::project_movements(conn, batch)?,
        Op::V1(OpV1::TransferRequest(request)) => {
            crate::stock::project_transfer_request(conn, request, &envelope.origin)?
        }
        Op::V1(OpV1::Feedback(feedback)) => {
            crate::program::project_feedback(conn, feedback, &envelope.origin)?
        }
        Op::V1(OpV1::CouponTemplateUpsertV2(template)) => {
            crate::coupons::project_template_v2(conn, template, envelope.hlc, &envelope.origin)?
        }
        Op::V1(OpV1::CouponIssueV2(coupon)) => {
            crate::coupons::project_issue_v2(conn, coupon, envelope.hlc, &envelope.origin)?
        }
        Op::V1(OpV1::CouponTransfer(transfer)) => {
            crate::coupons::project_transfer(conn, transfer, &envelope.origin)?
        }
        Op::V1(OpV1::LotteryUpsert(lottery)) => {
            crate::coupons::project_lottery(conn, lottery, envelope.hlc, &envelope.origin)?
        }
        Op::V1(OpV1::LotteryDraw(draw)) => {
            crate::coupons::project_draw(conn, draw, &envelope.origin)?
        }
        Op::V1(OpV1::Referral(referral)) => {
            crate::engagement::project_referral(conn, referral, &envelope.origin)?
        }
    }
    Ok(())
}

/// Every automerge change held for a member, in any order.
pub fn member_changes(conn: &Connection, member_id: Uuid) -> Result<Vec<Vec<u8>>, ApplyError> {
    let mut statement = conn
        .prepare_cached("SELECT body FROM ops WHERE member_id = ?1 AND kind = 'member_change'")?;
    let mut rows = statement.query([member_id.to_string()])?;
    let mut changes = Vec::new();
    while let Some(row) = rows.next()? {
        let body: Vec<u8> = row.get(0)?;
        if let Ok(Op::V1(OpV1::MemberChange { change, .. })) = Op::decode(&body) {
            changes.push(change);
        }
    }
    Ok(changes)
}

/// The highest policy version wins.
pub fn project_policy(
    conn: &Connection,
    policy: &chainsync_core::allowance::AllowancePolicy,
) -> rusqlite::Result<()> {
    let body = serde_json::to_string(policy).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO allowance_policy (id, version, body) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, body = excluded.body
         WHERE excluded.version > allowance_policy.version",
    )?
    .execute(params![policy.version as i64, body])?;
    Ok(())
}

/// Last writer wins, by (HLC, origin).
pub fn project_coupon_template(
    conn: &Connection,
    template: &chainsync_core::op::CouponTemplate,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let Some(incoming) = crate::lww::winning_stamp(
        conn,
        "coupon_templates",
        &template.id.to_string(),
        hlc,
        origin,
    )?
    else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT INTO coupon_templates (id, name, value_fen, min_spend_fen, online_only,
             hlc_wall_ms, hlc_counter, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, value_fen = excluded.value_fen,
             min_spend_fen = excluded.min_spend_fen, online_only = excluded.online_only,
             hlc_wall_ms = excluded.hlc_wall_ms, hlc_counter = excluded.hlc_counter,
             origin = excluded.origin, rules_json = NULL, spend_trigger_fen = NULL, active = 1",
    )?
    .execute(params![
        template.id.to_string(),
        template.name,
        template.value.0,
        template.min_spend.0,
        template.online_only,
        incoming.0,
        incoming.1,
        incoming.2,
    ])?;
    Ok(())
}

pub fn project_coupon(
    conn: &Connection,
    coupon: &chainsync_core::op::CouponRecord,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO coupons (code, template_id, member_id, origin, owner_id) VALUES (?1, ?2, ?3, ?4, ?3)")?.execute(
        params![
            coupon.code,
            coupon.template_id.to_string(),
            coupon.member_id.map(|id| id.to_string()),
            origin.as_str(),
        ],
    )?;
    crate::coupons::refresh_owner(conn, &coupon.code)
}

pub fn project_redemption(
    conn: &Connection,
    redemption: &chainsync_core::op::CouponRedemption,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO coupon_redemptions (id, code, checkout_id, member_id, origin)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        redemption.id.to_string(),
        redemption.code,
        redemption.checkout_id.to_string(),
        redemption.member_id.map(|id| id.to_string()),
        origin.as_str(),
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainsync_core::ledger::{EntryKind, MemberLedger};
    use proptest::prelude::*;

    fn member() -> Uuid {
        Uuid::from_u128(1)
    }

    fn open() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for schema in [
            crate::sqlite::replica_schema_v1,
            crate::sqlite::replica_schema_v2,
            crate::sqlite::replica_schema_v3,
            crate::sqlite::replica_schema_v4,
        ] {
            conn.execute_batch(schema).unwrap();
        }
        conn.execute(
            "INSERT INTO members (id, phone, card_no, name, profile_json, doc, origin, created_ms)
             VALUES (?1, '13900000000', 'c', 'm', '{}', x'', 's1', 0)",
            [member().to_string()],
        )
        .unwrap();
        conn
    }

    fn arbitrary_entry() -> impl Strategy<Value = LedgerEntry> {
        // Few ids, so one id often arrives several times: rewards (first written stays) and
        // expiries, revised to other amounts (last written stays), also mixed under one id.
        (
            0u128..3,
            0u64..4,
            0usize..2,
            1u64..4,
            0i64..300,
            any::<bool>(),
        )
            .prop_map(|(id, wall_ms, origin, seq, amount, expiry)| LedgerEntry {
                id: Uuid::from_u128(id),
                origin: StoreId::parse(["s1", "s2"][origin]).unwrap(),
                seq: seq + wall_ms * 10,
                hlc: HlcTimestamp {
                    wall_ms,
                    counter: 0,
                },
                member_id: member(),
                kind: if expiry {
                    EntryKind::PointsExpire
                } else {
                    EntryKind::PointsReward
                },
                account: Account::Points,
                amount: if expiry { -amount } else { amount + 1 },
                checkout_id: None,
                reason: None,
                rule_version: 1,
            })
    }

    fn held(conn: &Connection) -> (Vec<(String, i64, String)>, i64) {
        let rows = conn
            .prepare("SELECT id, amount, kind FROM ledger ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<Vec<_>>>()
            .unwrap();
        let points = conn
            .query_row(
                "SELECT COALESCE(SUM(points), 0) FROM member_balances",
                [],
                |r| r.get(0),
            )
            .unwrap();
        (rows, points)
    }

    proptest! {
        /// The SQL projection keeps, per id, the entry the core's `MemberLedger` keeps
        /// (`LedgerEntry::wins_over`), in any arrival order with duplicates, and the cached
        /// points stay the sum of the kept entries.
        #[test]
        fn same_id_entries_project_like_the_core_in_any_order(
            entries in proptest::collection::vec(arbitrary_entry(), 0..10),
            rotate in 0usize..10,
        ) {
            // One operation per (origin, seq): drop twins that differ only in content.
            let mut unique = std::collections::BTreeMap::new();
            for e in entries {
                unique.entry((e.origin.clone(), e.seq)).or_insert(e);
            }
            let entries: Vec<LedgerEntry> = unique.into_values().collect();
            let mut core = MemberLedger::default();
            for e in &entries {
                core.insert(e.clone());
            }
            let expected: Vec<(String, i64, String)> = core
                .entries()
                .map(|e| (e.id.to_string(), e.amount, e.kind.as_str().to_owned()))
                .collect();
            let sum: i64 = expected.iter().map(|(_, a, _)| a).sum();
            let mut order = entries.clone();
            let len = order.len().max(1);
            order.rotate_left(rotate % len);
            order.reverse();
            for sequence in [&entries, &order] {
                let conn = open();
                for e in sequence.iter().chain(sequence.iter()) {
                    project_ledger_new(&conn, e).unwrap();
                }
                let (rows, points) = held(&conn);
                prop_assert_eq!(&rows, &expected);
                prop_assert_eq!(points, sum);
            }
        }
    }
}

/// The narrow balance table (replica schema v4) and its triggers.
#[cfg(test)]
mod balance_tests {
    use super::*;
    use chainsync_core::ledger::EntryKind;

    fn open_at_v3() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        for schema in [
            crate::sqlite::replica_schema_v1,
            crate::sqlite::replica_schema_v2,
            crate::sqlite::replica_schema_v3,
        ] {
            conn.execute_batch(schema).unwrap();
        }
        conn
    }

    fn open() -> Connection {
        let conn = open_at_v3();
        conn.execute_batch(crate::sqlite::replica_schema_v4)
            .unwrap();
        conn
    }

    fn entry(origin: &str, seq: u64, wall_ms: u64, member: u128, amount: i64) -> LedgerEntry {
        let origin = StoreId::parse(origin).unwrap();
        LedgerEntry {
            id: Uuid::from_u128(7),
            origin,
            seq,
            hlc: HlcTimestamp {
                wall_ms,
                counter: 0,
            },
            member_id: Uuid::from_u128(member),
            kind: EntryKind::PointsReward,
            account: Account::Points,
            amount,
            checkout_id: None,
            reason: None,
            rule_version: 1,
        }
    }

    fn points(conn: &Connection, member: u128) -> Option<i64> {
        conn.query_row(
            "SELECT points FROM member_balances WHERE member_id = ?1",
            [Uuid::from_u128(member).to_string()],
            |row| row.get(0),
        )
        .optional()
        .unwrap()
    }

    fn held(conn: &Connection) -> (String, i64) {
        conn.query_row("SELECT origin, amount FROM ledger", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .unwrap()
    }

    /// Two entries under one derived id (written by two stores apart, the second store's
    /// written first, to another member with another amount): whatever the order, the one
    /// written first is kept and the balances are the sums of the entries kept.
    #[test]
    fn an_entry_under_a_held_id_replaces_it_only_if_written_first_and_balances_follow() {
        let earlier = entry("s2", 4, 100, 2, 300);
        let later = entry("s1", 9, 200, 1, 200);
        for order in [[&earlier, &later], [&later, &earlier]] {
            let conn = open();
            let first = project_ledger_new(&conn, order[0]).unwrap();
            let second = project_ledger_new(&conn, order[1]).unwrap();
            assert!(first);
            assert_eq!(second, std::ptr::eq(order[1], &earlier));
            assert_eq!(held(&conn), ("s2".to_owned(), 300));
            assert_eq!(points(&conn, 2), Some(300));
            assert_eq!(points(&conn, 1).unwrap_or(0), 0);
            // Projecting either again changes nothing.
            assert!(!project_ledger_new(&conn, &earlier).unwrap());
            assert!(!project_ledger_new(&conn, &later).unwrap());
            assert_eq!(points(&conn, 2), Some(300));
            assert_eq!(points(&conn, 1).unwrap_or(0), 0);
        }
    }

    /// Version 4 moves the balances out of the member rows: what a replica held before is
    /// what it holds after (the sums of each member's entries).
    #[test]
    fn schema_v4_keeps_the_balances_a_replica_held() {
        let conn = open_at_v3();
        let member = Uuid::from_u128(5).to_string();
        conn.execute(
            "INSERT INTO members (id, phone, card_no, name, profile_json, doc, origin, created_ms,
                 principal_fen, bonus_fen, points)
             VALUES (?1, '13800000000', '1', 'a', '{}', x'', 's1', 0, 500, 50, 7)",
            [&member],
        )
        .unwrap();
        for (n, account, amount) in [(1u8, "principal", 500), (2, "bonus", 50), (3, "points", 7)] {
            conn.execute(
                "INSERT INTO ledger (id, member_id, origin, seq, hlc_wall_ms, hlc_counter, kind,
                     account, amount, rule_version)
                 VALUES (?1, ?2, 's1', ?3, 0, 0, 'recharge_principal', ?4, ?5, 1)",
                params![
                    Uuid::from_u128(u128::from(n)).to_string(),
                    member,
                    n,
                    account,
                    amount
                ],
            )
            .unwrap();
        }
        conn.execute_batch(crate::sqlite::replica_schema_v4)
            .unwrap();
        let balances = crate::read::balances(&conn, Uuid::from_u128(5))
            .unwrap()
            .unwrap();
        assert_eq!(
            (balances.principal.0, balances.bonus.0, balances.points),
            (500, 50, 7)
        );
        // The triggers keep them from then on.
        project_ledger(&conn, &entry("s1", 4, 10, 5, 3)).unwrap();
        assert_eq!(points(&conn, 5), Some(10));
    }
}

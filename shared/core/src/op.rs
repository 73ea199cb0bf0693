//! Replicated operations. Every local write produces one or more operations, each stamped with
//! its origin store, a per-origin sequence number (1, 2, 3, … without gaps) and an HLC time.
//! A replica is the set of operations it holds; `(origin, seq)` identifies one. Sync (next
//! issue) ships operations a peer lacks, found by comparing per-origin cursors.
//!
//! Wire and disk format: postcard of [`Op`], which is versioned (`Op::V1`). Decoding checks the
//! size limit before anything else.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkout::Payment;
use crate::hlc::HlcTimestamp;
use crate::id::StoreId;
use crate::ledger::LedgerEntry;
use crate::limits;
use crate::money::Fen;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub origin: StoreId,
    pub seq: u64,
    pub hlc: HlcTimestamp,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    V1(OpV1),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpV1 {
    /// An automerge change to a member's profile document (the first one creates it).
    MemberChange { member_id: Uuid, change: Vec<u8> },
    /// One stored-value or points movement.
    Ledger(LedgerEntry),
    /// A completed sale.
    Sale(SaleRecord),
    /// A refund of a sale.
    SaleRefund(RefundRecord),
    /// A product created or changed; last writer (by HLC, then origin) wins.
    ProductUpsert(ProductRecord),
    /// HQ's offline allowance policy; the highest version wins.
    AllowancePolicySet(crate::allowance::AllowancePolicy),
    /// A coupon template created or changed (HQ); last writer wins.
    CouponTemplateUpsert(CouponTemplate),
    /// A coupon issued, with its unique code.
    CouponIssue(CouponRecord),
    /// A coupon used at a checkout. Two redemptions of one code are a double redemption.
    CouponRedeem(CouponRedemption),
    /// HQ's membership rules (whole set, frozen first encoding: stores before `RulesSetV2`);
    /// the highest version wins over both variants.
    RulesSet(crate::rules::v1::RulesV1),
    /// A count-card template created or changed (HQ); last writer wins.
    CountCardTemplateUpsert(crate::count_card::CountCardTemplate),
    /// A count card bought by a member.
    CountCardPurchase(crate::count_card::CountCardPurchase),
    /// One use of a count card.
    CountCardUse(crate::count_card::CountCardUse),
    /// A count-card use given back (refund).
    CountCardUseReversal(crate::count_card::CountCardUseReversal),
    /// The lines and units one refund covered (written with its `SaleRefund`).
    RefundLines(crate::refund::RefundLines),
    /// A gift of the points catalog created or changed (HQ); last writer wins.
    GiftUpsert(crate::gift::Gift),
    /// Units of a gift taken for points (the points move in a ledger entry).
    GiftRedeem(crate::gift::GiftRedemption),
    /// HQ's catalog item (SKU, barcode, name, category, prices, bundle components); merged
    /// with `ProductUpsert` as two last-writer-wins registers (`crate::catalog::merge`).
    CatalogItemUpsert(crate::catalog::CatalogItem),
    /// Stock movements written together by the store that holds the goods.
    StockMovements(crate::stock::MovementBatch),
    /// A transfer between two stores asked for (by a store or by HQ).
    TransferRequest(crate::stock::TransferRequest),
    /// A member's feedback about a visit (grow-only set by id).
    Feedback(crate::feedback::Feedback),
    /// A coupon template with every rule (HQ); last writer wins over both template versions.
    CouponTemplateUpsertV2(crate::coupon::CouponTemplateV2),
    /// A coupon issued with its channel and validity.
    CouponIssueV2(crate::coupon::CouponInstance),
    /// A coupon given to another member; the owner is a fold of a code's transfers.
    CouponTransfer(crate::coupon::CouponTransfer),
    /// A lottery wheel created or changed (HQ); last writer wins.
    LotteryUpsert(crate::coupon::Lottery),
    /// One draw of a member on a wheel.
    LotteryDraw(crate::coupon::LotteryDraw),
    /// HQ's membership rules (whole set) as a JSON document that later rule fields extend
    /// without a new variant (`crate::rules` says how); the highest version wins over both
    /// variants. The hub authors this one.
    RulesSetV2(crate::rules::RulesDocument),
    /// A member registered naming a referrer (老带新); written once, by the registering store.
    Referral(crate::referral::Referral),
    /// The points a sale earned, line by line (written with its `Sale` when a member earned
    /// points), so a line-level refund takes back that line's points.
    SalePoints(SalePoints),
}

/// Points earned per line of a sale (index as in `SaleRecord::lines`), by the rules version
/// that decided them; they add up to `SaleRecord::points_earned`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalePoints {
    pub sale_id: Uuid,
    pub rule_version: u32,
    pub lines: Vec<i64>,
}

/// A coupon template (minimal: a cash voucher with a minimum spend).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponTemplate {
    pub id: Uuid,
    pub name: String,
    /// Taken off the total at checkout.
    pub value: Fen,
    /// The total (after tier discount) must reach this.
    pub min_spend: Fen,
    /// Redeemable only while the store can reach the hub.
    pub online_only: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRecord {
    pub code: String,
    pub template_id: Uuid,
    pub member_id: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponRedemption {
    pub id: Uuid,
    pub code: String,
    pub checkout_id: Uuid,
    pub member_id: Option<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleLine {
    pub sku: String,
    pub name: String,
    pub qty: i64,
    pub unit_price: Fen,
    pub amount: Fen,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleRecord {
    pub id: Uuid,
    pub member_id: Option<Uuid>,
    pub lines: Vec<SaleLine>,
    pub payments: Vec<Payment>,
    pub subtotal: Fen,
    pub discount: Fen,
    pub total: Fen,
    pub points_earned: i64,
    pub tier: String,
    pub rule_version: u32,
    /// Unix ms at the till.
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundRecord {
    pub id: Uuid,
    pub sale_id: Uuid,
    pub member_id: Option<Uuid>,
    pub amount: Fen,
    pub reason: Option<String>,
    pub at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductRecord {
    pub sku: String,
    pub name: String,
    pub price: Fen,
    pub active: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("operation is {len} bytes, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("operation is malformed: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("operation is followed by {0} stray bytes")]
    TrailingBytes(usize),
}

impl Op {
    pub fn encode(&self) -> Vec<u8> {
        // Encoding our own in-memory value into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Op, DecodeError> {
        if bytes.len() > limits::op_bytes_max {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: limits::op_bytes_max,
            });
        }
        // One encoding per value: bytes after the operation make it malformed, not ignored.
        let (op, rest) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(DecodeError::TrailingBytes(rest.len()));
        }
        Ok(op)
    }

    /// A short name for logs and the `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::V1(OpV1::MemberChange { .. }) => "member_change",
            Op::V1(OpV1::Ledger(_)) => "ledger",
            Op::V1(OpV1::Sale(_)) => "sale",
            Op::V1(OpV1::SaleRefund(_)) => "sale_refund",
            Op::V1(OpV1::ProductUpsert(_)) => "product_upsert",
            Op::V1(OpV1::AllowancePolicySet(_)) => "allowance_policy",
            Op::V1(OpV1::CouponTemplateUpsert(_)) => "coupon_template",
            Op::V1(OpV1::CouponIssue(_)) => "coupon_issue",
            Op::V1(OpV1::CouponRedeem(_)) => "coupon_redeem",
            Op::V1(OpV1::RulesSet(_)) => "rules_set",
            Op::V1(OpV1::CountCardTemplateUpsert(_)) => "count_card_template",
            Op::V1(OpV1::CountCardPurchase(_)) => "count_card_purchase",
            Op::V1(OpV1::CountCardUse(_)) => "count_card_use",
            Op::V1(OpV1::CountCardUseReversal(_)) => "count_card_use_reversal",
            Op::V1(OpV1::RefundLines(_)) => "refund_lines",
            Op::V1(OpV1::GiftUpsert(_)) => "gift",
            Op::V1(OpV1::GiftRedeem(_)) => "gift_redeem",
            Op::V1(OpV1::CatalogItemUpsert(_)) => "catalog_item",
            Op::V1(OpV1::StockMovements(_)) => "stock_movements",
            Op::V1(OpV1::TransferRequest(_)) => "transfer_request",
            Op::V1(OpV1::Feedback(_)) => "feedback",
            Op::V1(OpV1::CouponTemplateUpsertV2(_)) => "coupon_template_v2",
            Op::V1(OpV1::CouponIssueV2(_)) => "coupon_issue_v2",
            Op::V1(OpV1::CouponTransfer(_)) => "coupon_transfer",
            Op::V1(OpV1::LotteryUpsert(_)) => "lottery",
            Op::V1(OpV1::LotteryDraw(_)) => "lottery_draw",
            Op::V1(OpV1::RulesSetV2(_)) => "rules_set_v2",
            Op::V1(OpV1::Referral(_)) => "referral",
            Op::V1(OpV1::SalePoints(_)) => "sale_points",
        }
    }

    /// The stores an operation concerns when it does not concern every replica: stock and
    /// transfers replicate to the hub and to the stores they concern (the store that holds the
    /// goods; a transfer's source and destination). None: every store.
    pub fn concerns(&self) -> Option<Vec<&StoreId>> {
        match self {
            Op::V1(OpV1::StockMovements(batch)) => Some(match &batch.transfer {
                Some(ends) => vec![&batch.store, &ends.from, &ends.to],
                None => vec![&batch.store],
            }),
            Op::V1(OpV1::TransferRequest(request)) => {
                Some(vec![&request.ends.from, &request.ends.to])
            }
            _ => None,
        }
    }

    /// Whether `store` should receive this operation (see [`Op::concerns`]).
    pub fn concerns_store(&self, store: &StoreId) -> bool {
        self.concerns().is_none_or(|stores| stores.contains(&store))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_round_trip_and_garbage_is_refused() {
        let op = Op::V1(OpV1::ProductUpsert(ProductRecord {
            sku: "A1".into(),
            name: "咖啡".into(),
            price: Fen(1_500),
            active: true,
        }));
        assert_eq!(Op::decode(&op.encode()).unwrap(), op);
        assert!(Op::decode(&[0xff, 0xff, 0xff]).is_err());
        let mut padded = op.encode();
        padded.push(0);
        assert!(matches!(
            Op::decode(&padded),
            Err(DecodeError::TrailingBytes(1))
        ));
        assert!(Op::decode(&vec![0; limits::op_bytes_max + 1]).is_err());
    }
}

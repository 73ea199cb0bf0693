//! JSON shapes of the HTTP API. They exist only at the edge; the core never sees them.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `{"error":{"code":"…","message":"…"}}`
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    pub id: Uuid,
    pub name: String,
    pub phone: String,
    pub card_no: String,
    pub gender: Option<String>,
    pub birthday: Option<String>,
    pub email: Option<String>,
    pub address: Option<String>,
    pub note: Option<String>,
    pub home_store: Option<String>,
    pub tags: Vec<String>,
    /// Stored value, principal + bonus, in 分.
    pub balance_fen: i64,
    pub principal_fen: i64,
    pub bonus_fen: i64,
    pub points: i64,
    pub tier: String,
    /// Net spend over the last 365 days, in 分.
    pub spend_12m_fen: i64,
    pub created_ms: u64,
    /// Members registered separately with the same phone and merged into this one.
    pub merged_from: Vec<Uuid>,
    /// Computed when read (never stored): `dormant` (no checkout for 30 days), `big_spender`
    /// (12-month spend ≥ ¥5,000), `weekend_shopper` (≥ 60 % of at least 3 visits in 12 months
    /// on Saturday or Sunday, UTC+8).
    #[serde(default)]
    pub auto_tags: Vec<String>,
    /// The member's feedback entries (反馈), newest first (the 20 newest; only in the single
    /// member's record, not in lists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feedback: Vec<crate::program::FeedbackView>,
    /// Who referred this member (老带新) and whether the reward was given (only in the single
    /// member's record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referred_by: Option<crate::engagement::ReferralView>,
    /// The members this member referred, oldest first (only in the single member's record).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub referrals: Vec<crate::engagement::ReferralView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MemberList {
    pub members: Vec<MemberView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewMember {
    pub name: String,
    pub phone: String,
    pub card_no: Option<String>,
    pub gender: Option<String>,
    pub birthday: Option<String>,
    pub email: Option<String>,
    pub address: Option<String>,
    pub note: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Who referred the new member (老带新): a member id, phone or card number. Unknown: 422
    /// `unknown_referrer`, nothing written.
    pub referrer: Option<String>,
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MemberPatch {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub card_no: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub gender: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub birthday: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub address: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>)]
    pub note: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerEntryView {
    pub id: Uuid,
    pub origin: String,
    pub seq: u64,
    /// recharge_principal | recharge_bonus | spend | refund | points_earn | points_redeem |
    /// points_adjust | points_reverse | points_reward
    pub kind: String,
    /// principal | bonus | points
    pub account: String,
    /// Signed: 分 for principal/bonus, points for points.
    pub amount: i64,
    pub checkout_id: Option<Uuid>,
    pub reason: Option<String>,
    pub rule_version: u32,
    pub created_ms: u64,
    /// The member record the entry was written against (differs after a merge).
    pub member_id: Uuid,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LedgerView {
    pub member_id: Uuid,
    pub balance_fen: i64,
    pub points: i64,
    pub entries: Vec<LedgerEntryView>,
}

/// A whole number as sent by a client. Any JSON number is accepted here so that one that is
/// not an `i64` (a fraction, 1e30) is reported as `invalid_amount`, not as bad JSON; a value
/// that is not a number at all (a string, null) is bad JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AmountInput(pub Option<i64>);

impl<'de> Deserialize<'de> for AmountInput {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Number(number) => Ok(AmountInput(number.as_i64())),
            _ => Err(serde::de::Error::custom("expected a whole number")),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRecharge {
    #[schema(value_type = i64)]
    pub amount_fen: AmountInput,
    /// cash (default) | external
    pub method: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RechargeView {
    pub id: Uuid,
    pub member_id: Uuid,
    pub amount_fen: i64,
    pub bonus_fen: i64,
    pub balance_fen: i64,
    pub principal_fen: i64,
    pub bonus_balance_fen: i64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    #[schema(value_type = i64)]
    pub price_fen: AmountInput,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProductView {
    pub sku: String,
    pub name: String,
    pub price_fen: i64,
    pub active: bool,
    /// From HQ's catalog (null for products only a store set).
    pub barcode: Option<String>,
    pub category: Option<String>,
    /// What a member pays, when set (never more than `price_fen`).
    pub member_price_fen: Option<i64>,
    /// A bundle's components (empty for a plain item).
    pub components: Vec<ComponentView>,
}

/// `qty` units of `sku` in one unit of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ComponentView {
    pub sku: String,
    pub qty: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductList {
    pub products: Vec<ProductView>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCheckout {
    pub member_id: Option<Uuid>,
    pub lines: Vec<NewCheckoutLine>,
    pub payments: Vec<NewPayment>,
    /// Coupon codes to redeem (cash vouchers, taken off after the tier discount).
    #[serde(default)]
    pub coupons: Vec<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPayment {
    /// cash | external | stored_value | points
    pub method: String,
    #[schema(value_type = i64)]
    pub amount_fen: AmountInput,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCheckoutLine {
    pub sku: String,
    #[schema(value_type = i64)]
    pub qty: AmountInput,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PaymentView {
    /// cash | external | stored_value | points
    pub method: String,
    pub amount_fen: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckoutLineView {
    pub sku: String,
    pub name: String,
    pub qty: i64,
    pub unit_price_fen: i64,
    pub amount_fen: i64,
    /// Points this line earned (campaigns and category exclusions applied; a refund of the
    /// line takes them back). On checkouts where a member earned points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub points_earned: Option<i64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckoutView {
    pub id: Uuid,
    pub store_id: String,
    pub member_id: Option<Uuid>,
    pub lines: Vec<CheckoutLineView>,
    pub payments: Vec<PaymentView>,
    pub subtotal_fen: i64,
    /// Tier discount plus coupons.
    pub discount_fen: i64,
    pub total_fen: i64,
    pub points_earned: i64,
    pub points_used: i64,
    pub tier: String,
    /// The version of the rules that priced it and decided its points.
    #[serde(default)]
    pub rule_version: u32,
    /// The member's stored value after this checkout (only in the checkout response).
    pub balance_fen: Option<i64>,
    /// The member's points after this checkout (only in the checkout response).
    pub points: Option<i64>,
    pub refunded: bool,
    pub created_ms: u64,
    /// A plain-text receipt for the till printer.
    pub receipt: String,
    /// SKUs this checkout left below zero at the store, with their stock after it (only in
    /// the checkout response; selling below zero is allowed unless the store refuses it).
    #[serde(default)]
    pub stock_below_zero: Vec<StockFlag>,
}

/// A SKU and its stock at the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockFlag {
    pub sku: String,
    pub qty: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CheckoutList {
    pub checkouts: Vec<CheckoutView>,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewRefund {
    pub reason: Option<String>,
    /// Lines to refund (index into the checkout's lines, units); absent: all not yet refunded.
    #[serde(default)]
    pub lines: Option<Vec<RefundLineInput>>,
}

/// One line of a partial refund.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundLineInput {
    /// Index of the line in the checkout (0 is the first).
    pub line: usize,
    pub qty: i64,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RefundView {
    pub id: Uuid,
    pub checkout_id: Uuid,
    pub amount_fen: i64,
    pub balance_fen: Option<i64>,
    pub points: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub store_id: String,
}

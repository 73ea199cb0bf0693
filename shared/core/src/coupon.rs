//! Coupons (电子券): rich templates, the validation of a redemption, the owner of a coupon after
//! transfers, and the lottery wheel. Pure: time, the store's UTC offset and random numbers are
//! arguments.
//!
//! Calling order at a checkout: the caller looks up each coupon's template and instance, counts
//! what the rules need (the member's redemptions of the template), then calls [`check_redeem`]
//! per coupon; the values it returns go to `checkout::quote_with_coupons`.
//!
//! A template of the first version (`op::CouponTemplate`: a cash voucher with a minimum spend)
//! is read as a [`CouponTemplateV2`] with no restrictions ([`CouponTemplateV2::from_v1`]).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkout::PricedLine;
use crate::money::Fen;

/// Longest coupon code.
pub const code_chars_max: usize = 32;
/// At most this many stores listed on a template.
pub const template_stores_max: usize = 256;
/// At most this many prizes on a lottery wheel.
pub const lottery_prizes_max: usize = 32;
/// Longest validity after issue, in days.
pub const validity_days_max: u32 = 3_650;

const day_ms: u64 = 86_400_000;

/// What a coupon takes off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CouponKind {
    /// 代金券: a fixed amount off the total.
    Cash { value: Fen },
    /// 折扣券: a share of the total (after the tier discount) off, in basis points (1 to 9999),
    /// at most `max_off` (0: no cap).
    Discount { off_bp: u32, max_off: Fen },
    /// 商品券: one unit of this SKU free (the SKU must be in the cart).
    Product { sku: String },
}

/// When a coupon may be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Validity {
    /// From `from_ms` (inclusive) to `until_ms` (exclusive), Unix ms.
    Dates { from_ms: u64, until_ms: u64 },
    /// From its issue for this many days.
    DaysAfterIssue { days: u32 },
}

/// Weekdays and hours (store local time) in which a coupon may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeWindow {
    /// Bit 0 = Monday … bit 6 = Sunday; 0 means every day.
    pub weekdays: u8,
    /// From this hour (0–23, inclusive) …
    pub from_hour: u8,
    /// … to this hour (1–24, exclusive).
    pub until_hour: u8,
}

/// Where the coupons of a self-claim pool are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PoolScope {
    /// One pool for the whole chain: decided at the hub (online-only).
    ChainWide,
    /// A pool of `size` at every store, counted by that store (works offline).
    PerStore,
}

/// A limited pool members may claim coupons from (顾客领券).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimPool {
    pub scope: PoolScope,
    pub size: u32,
}

/// A coupon template with every rule (HQ; last writer wins, like the first version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponTemplateV2 {
    pub id: Uuid,
    pub name: String,
    pub kind: CouponKind,
    /// The total after the tier discount must reach this.
    pub min_spend: Fen,
    pub validity: Validity,
    /// Stores where it may be used; empty: every store.
    pub stores: Vec<String>,
    pub window: Option<TimeWindow>,
    /// At most this many redemptions of this template per member (0: no limit); also caps
    /// claims from a pool per member.
    pub per_member_limit: u32,
    /// May be combined with other coupons in one checkout.
    pub stackable: bool,
    /// Redeemable only while the store can reach the hub.
    pub online_only: bool,
    /// Inactive templates are not issued by any channel (issued coupons stay valid).
    pub active: bool,
    pub pool: Option<ClaimPool>,
    /// 满X送Y: a checkout of a member whose total reaches this issues one coupon.
    pub issue_on_spend: Option<Fen>,
    /// Issued on every check-in streak reward.
    pub issue_on_checkin_streak: bool,
    /// Issued once a year on the member's birthday.
    pub issue_on_birthday: bool,
}

impl CouponTemplateV2 {
    /// The first version's template: a cash voucher, valid everywhere, always, stackable.
    pub fn from_v1(template: &crate::op::CouponTemplate) -> CouponTemplateV2 {
        CouponTemplateV2 {
            id: template.id,
            name: template.name.clone(),
            kind: CouponKind::Cash {
                value: template.value,
            },
            min_spend: template.min_spend,
            validity: Validity::Dates {
                from_ms: 0,
                until_ms: u64::MAX,
            },
            stores: Vec::new(),
            window: None,
            per_member_limit: 0,
            stackable: true,
            online_only: template.online_only,
            active: true,
            pool: None,
            issue_on_spend: None,
            issue_on_checkin_streak: false,
            issue_on_birthday: false,
        }
    }

    /// The validity window `[from, until)` of a coupon issued at `issued_ms`.
    pub fn valid_between(&self, issued_ms: u64) -> (u64, u64) {
        match self.validity {
            Validity::Dates { from_ms, until_ms } => (from_ms, until_ms),
            Validity::DaysAfterIssue { days } => (
                issued_ms,
                issued_ms.saturating_add(u64::from(days).saturating_mul(day_ms)),
            ),
        }
    }

    /// The shape HQ may set: names, amounts and lists within bounds.
    pub fn validate(&self) -> Result<(), TemplateError> {
        let name_chars = self.name.chars().count();
        if name_chars == 0 || name_chars > crate::limits::name_chars_max {
            return Err(TemplateError("name must be 1 to 64 characters".into()));
        }
        let max = crate::limits::amount_fen_max;
        match &self.kind {
            CouponKind::Cash { value } if !(1..=max).contains(&value.0) => {
                return Err(TemplateError("value_fen must be 1 or more".into()));
            }
            CouponKind::Discount { off_bp, max_off }
                if !(1..=9_999).contains(off_bp) || !(0..=max).contains(&max_off.0) =>
            {
                return Err(TemplateError(
                    "percent_off must be 1 to 99 and max_off_fen 0 or more".into(),
                ));
            }
            CouponKind::Product { sku }
                if sku.is_empty() || sku.chars().count() > crate::limits::sku_chars_max =>
            {
                return Err(TemplateError("sku must be 1 to 64 characters".into()));
            }
            _ => {}
        }
        if !(0..=max).contains(&self.min_spend.0) {
            return Err(TemplateError("min_spend_fen must be 0 or more".into()));
        }
        match self.validity {
            Validity::Dates { from_ms, until_ms } if from_ms >= until_ms => {
                return Err(TemplateError(
                    "valid_from must be before valid_until".into(),
                ));
            }
            Validity::DaysAfterIssue { days } if !(1..=validity_days_max).contains(&days) => {
                return Err(TemplateError("valid_days must be 1 to 3650".into()));
            }
            _ => {}
        }
        if self.stores.len() > template_stores_max || self.stores.iter().any(|s| s.is_empty()) {
            return Err(TemplateError(
                "stores must list at most 256 store ids".into(),
            ));
        }
        if let Some(window) = self.window
            && (window.weekdays > 0x7f
                || window.from_hour > 23
                || window.until_hour > 24
                || window.from_hour >= window.until_hour)
        {
            return Err(TemplateError(
                "hours must be from 0–23 to 1–24 with from before until; weekdays 1–7".into(),
            ));
        }
        if let Some(pool) = self.pool
            && pool.size == 0
        {
            return Err(TemplateError("pool size must be 1 or more".into()));
        }
        if let Some(spend) = self.issue_on_spend
            && !(1..=max).contains(&spend.0)
        {
            return Err(TemplateError("issue_on_spend_fen must be 1 or more".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// How a coupon came to its member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// Issued by HQ by hand (hub `POST /api/v1/coupons`).
    Hq,
    /// HQ's bulk issue to a member query.
    Bulk,
    /// Signup gift.
    Signup,
    /// Claimed from a pool.
    Claim,
    /// 满X送Y.
    Spend,
    CheckInStreak,
    Birthday,
    Lottery,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Hq => "hq",
            Channel::Bulk => "bulk",
            Channel::Signup => "signup",
            Channel::Claim => "claim",
            Channel::Spend => "spend",
            Channel::CheckInStreak => "check_in_streak",
            Channel::Birthday => "birthday",
            Channel::Lottery => "lottery",
        }
    }
}

/// A coupon issued with its unique code and its validity fixed at issue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponInstance {
    pub code: String,
    pub template_id: Uuid,
    pub member_id: Option<Uuid>,
    pub channel: Channel,
    pub issued_ms: u64,
    pub valid_from_ms: u64,
    pub valid_until_ms: u64,
    /// The store whose per-store pool it was claimed from.
    pub pool_store: Option<String>,
}

/// A coupon given by its owner to another member (朋友送券).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouponTransfer {
    pub id: Uuid,
    pub code: String,
    pub from_member: Uuid,
    pub to_member: Uuid,
    pub at_ms: u64,
}

/// The owner of a coupon after its transfers, and the transfers that did not take effect.
///
/// Merge law: transfers are taken in the order of `(at_ms, id)`, a total order on the set, and
/// one takes effect only if it starts from the owner at that point. The result is a function of
/// the set of transfers (and the first owner), so every replica holding the same transfers
/// computes the same owner whatever the order of arrival (commutative, associative); a
/// transfer seen twice is one element of the set (idempotent). Two stores that transfer the
/// same coupon while apart: the earlier transfer wins, the later one is void.
pub fn owner_after(
    first_owner: Option<Uuid>,
    transfers: &[CouponTransfer],
) -> (Option<Uuid>, Vec<Uuid>) {
    let mut sorted: Vec<&CouponTransfer> = transfers.iter().collect();
    sorted.sort_by_key(|t| (t.at_ms, t.id));
    sorted.dedup_by_key(|t| t.id);
    let mut owner = first_owner;
    let mut void = Vec::new();
    for transfer in sorted {
        if owner == Some(transfer.from_member) {
            owner = Some(transfer.to_member);
        } else {
            void.push(transfer.id);
        }
    }
    (owner, void)
}

/// Why a coupon cannot be redeemed; `code()` is the stable API error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("coupon {code}: no such coupon")]
    Unknown { code: String },
    #[error("coupon {code} was already used")]
    AlreadyRedeemed { code: String },
    #[error("coupon {code} belongs to another member")]
    NotOwner { code: String },
    #[error("coupon {code} expired")]
    Expired { code: String },
    #[error("coupon {code} is not valid yet")]
    NotYetValid { code: String },
    #[error("coupon {code} cannot be used at this store")]
    StoreNotAllowed { code: String },
    #[error("coupon {code} can only be used on {allowed}")]
    OutsideHours { code: String, allowed: String },
    #[error(
        "coupon {code} can only be used while the store is connected to HQ; the link is down \
         now: ask the customer to use it later or another way to pay"
    )]
    OnlineOnly { code: String },
    #[error("coupon {code} cannot be combined with other coupons")]
    NotStackable { code: String },
    #[error("this member has already used {limit} coupon(s) of this kind (the limit)")]
    MemberLimit { limit: u32 },
    #[error("coupon {code} is for SKU {sku}, which is not in the cart")]
    SkuNotInCart { code: String, sku: String },
    #[error("coupon {code} needs a total of at least {min_spend}; the total is {total}")]
    MinSpend {
        code: String,
        min_spend: Fen,
        total: Fen,
    },
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Unknown { .. } => "coupon_unknown",
            Refusal::AlreadyRedeemed { .. } => "coupon_already_redeemed",
            Refusal::NotOwner { .. } => "coupon_not_owner",
            Refusal::Expired { .. } => "coupon_expired",
            Refusal::NotYetValid { .. } => "coupon_not_yet_valid",
            Refusal::StoreNotAllowed { .. } => "coupon_store_not_allowed",
            Refusal::OutsideHours { .. } => "coupon_outside_hours",
            Refusal::OnlineOnly { .. } => "online_only",
            Refusal::NotStackable { .. } => "coupon_not_stackable",
            Refusal::MemberLimit { .. } => "coupon_member_limit",
            Refusal::SkuNotInCart { .. } => "coupon_sku_not_in_cart",
            Refusal::MinSpend { .. } => "coupon_min_spend",
        }
    }

    /// 409 for a coupon already used, 422 for every other condition.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::AlreadyRedeemed { .. } => 409,
            _ => 422,
        }
    }
}

/// What is known about one coupon at the replica.
#[derive(Clone, Debug)]
pub struct CouponFacts<'a> {
    pub code: &'a str,
    pub template: &'a CouponTemplateV2,
    pub valid_from_ms: u64,
    pub valid_until_ms: u64,
    /// The owner after transfers (canonical member), if the coupon is a member's.
    pub owner: Option<Uuid>,
    pub redeemed: bool,
    /// Redemptions of this template by the checkout's member (canonical group).
    pub member_redemptions: u32,
}

/// The checkout a coupon is offered to.
#[derive(Clone, Debug)]
pub struct RedeemContext<'a> {
    pub now_ms: u64,
    /// The store's offset east of UTC, for weekday/hour windows.
    pub utc_offset_seconds: i32,
    pub store: &'a str,
    /// The checkout's member (canonical), if any.
    pub member: Option<Uuid>,
    /// The total after the tier discount.
    pub total: Fen,
    pub lines: &'a [PricedLine],
    /// How many coupons the checkout offers.
    pub coupons_in_checkout: usize,
    /// The store cannot reach the hub now.
    pub offline: bool,
}

/// Weekday (0 = Monday) and hour at `at_ms` in a zone `offset_seconds` east of UTC.
pub fn local_weekday_hour(at_ms: u64, offset_seconds: i32) -> (u8, u8) {
    let local_s = (at_ms / 1_000) as i64 + i64::from(offset_seconds);
    let days = local_s.div_euclid(86_400);
    let hour = (local_s.rem_euclid(86_400) / 3_600) as u8;
    // 1970-01-01 was a Thursday (3 when Monday is 0).
    let weekday = (days + 3).rem_euclid(7) as u8;
    (weekday, hour)
}

fn describe_window(window: &TimeWindow) -> String {
    const names: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let days = if window.weekdays == 0 || window.weekdays == 0x7f {
        "every day".to_owned()
    } else {
        (0..7)
            .filter(|d| window.weekdays & (1 << d) != 0)
            .map(|d| names[d as usize])
            .collect::<Vec<_>>()
            .join("/")
    };
    format!(
        "{days} from {:02}:00 to {:02}:00",
        window.from_hour, window.until_hour
    )
}

/// Check one coupon against its rules and the checkout; returns the amount it takes off.
///
/// Order of the checks (the first failing one is reported): already used, owner, not yet
/// valid, expired, store, weekday/hour window, online-only, stackable, per-member limit, SKU
/// in the cart, minimum spend.
pub fn check_redeem(coupon: &CouponFacts, ctx: &RedeemContext) -> Result<Fen, Refusal> {
    let code = coupon.code.to_owned();
    let template = coupon.template;
    if coupon.redeemed {
        return Err(Refusal::AlreadyRedeemed { code });
    }
    if let Some(owner) = coupon.owner
        && ctx.member != Some(owner)
    {
        return Err(Refusal::NotOwner { code });
    }
    if ctx.now_ms < coupon.valid_from_ms {
        return Err(Refusal::NotYetValid { code });
    }
    if ctx.now_ms >= coupon.valid_until_ms {
        return Err(Refusal::Expired { code });
    }
    if !template.stores.is_empty() && !template.stores.iter().any(|s| s == ctx.store) {
        return Err(Refusal::StoreNotAllowed { code });
    }
    if let Some(window) = &template.window {
        let (weekday, hour) = local_weekday_hour(ctx.now_ms, ctx.utc_offset_seconds);
        let day_ok = window.weekdays == 0 || window.weekdays & (1 << weekday) != 0;
        let hour_ok = window.from_hour <= hour && hour < window.until_hour;
        if !day_ok || !hour_ok {
            return Err(Refusal::OutsideHours {
                code,
                allowed: describe_window(window),
            });
        }
    }
    if template.online_only && ctx.offline {
        return Err(Refusal::OnlineOnly { code });
    }
    if !template.stackable && ctx.coupons_in_checkout > 1 {
        return Err(Refusal::NotStackable { code });
    }
    if template.per_member_limit > 0 && coupon.member_redemptions >= template.per_member_limit {
        return Err(Refusal::MemberLimit {
            limit: template.per_member_limit,
        });
    }
    let value = match &template.kind {
        CouponKind::Cash { value } => *value,
        CouponKind::Discount { off_bp, max_off } => {
            let off = ctx
                .total
                .mul_basis_points(i64::from(*off_bp))
                .unwrap_or(Fen::ZERO);
            if max_off.0 > 0 {
                off.min(*max_off)
            } else {
                off
            }
        }
        CouponKind::Product { sku } => match ctx.lines.iter().find(|l| &l.sku == sku) {
            Some(line) => line.unit_price,
            None => {
                return Err(Refusal::SkuNotInCart {
                    code,
                    sku: sku.clone(),
                });
            }
        },
    };
    if ctx.total < template.min_spend {
        return Err(Refusal::MinSpend {
            code,
            min_spend: template.min_spend,
            total: ctx.total,
        });
    }
    Ok(value)
}

/// A coupon code from 8 random bytes: `C` and 15 digits (the form the hub already issues).
pub fn code_from_random(random: [u8; 8]) -> String {
    format!(
        "C{:015}",
        u64::from_le_bytes(random) % 1_000_000_000_000_000
    )
}

/// A code derived from a name that must give the same coupon wherever it is computed (e.g. a
/// birthday gift `birthday:<template>:<member>:<year>` decided at two stores): FNV-1a, 64 bits.
pub fn code_from_key(key: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("K{:015}", hash % 1_000_000_000_000_000)
}

/// An `Authorize` request whose only coupon code is this prefix and a template id asks the hub
/// for one coupon of that template's chain-wide pool; `checkout_id` is the claim's id.
pub const pool_claim_prefix: &str = "pool:";

/// The code of the coupon the hub issues for a granted pool claim (both sides compute it).
pub fn pool_claim_code(claim_id: Uuid) -> String {
    code_from_key(&format!("claim:{claim_id}"))
}

/// A lottery wheel (HQ; last writer wins by HLC, like templates).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lottery {
    pub id: Uuid,
    pub name: String,
    pub prizes: Vec<Prize>,
    /// Draws per member per store-local day.
    pub draws_per_day: u32,
    pub active: bool,
}

/// One slice of the wheel: a coupon of `template_id`, or no prize (`None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prize {
    pub label: String,
    pub template_id: Option<Uuid>,
    pub weight: u32,
}

impl Lottery {
    pub fn validate(&self) -> Result<(), TemplateError> {
        let name_chars = self.name.chars().count();
        if name_chars == 0 || name_chars > crate::limits::name_chars_max {
            return Err(TemplateError("name must be 1 to 64 characters".into()));
        }
        if self.prizes.is_empty() || self.prizes.len() > lottery_prizes_max {
            return Err(TemplateError("a wheel has 1 to 32 prizes".into()));
        }
        if self
            .prizes
            .iter()
            .any(|p| p.weight == 0 || p.weight > 1_000_000)
        {
            return Err(TemplateError("prize weights must be 1 to 1000000".into()));
        }
        if !(1..=100).contains(&self.draws_per_day) {
            return Err(TemplateError("draws_per_day must be 1 to 100".into()));
        }
        Ok(())
    }

    /// The prize `random` lands on: weighted, each slice `weight / total` of the wheel.
    pub fn spin(&self, random: u64) -> Option<usize> {
        let total: u64 = self.prizes.iter().map(|p| u64::from(p.weight)).sum();
        if total == 0 {
            return None;
        }
        let mut point = random % total;
        for (index, prize) in self.prizes.iter().enumerate() {
            let weight = u64::from(prize.weight);
            if point < weight {
                return Some(index);
            }
            point -= weight;
        }
        None
    }
}

/// One draw of a member at a store (the won coupon, if any, is a `CouponIssueV2`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LotteryDraw {
    pub id: Uuid,
    pub lottery_id: Uuid,
    pub member_id: Uuid,
    /// Store-local day, `YYYY-MM-DD`.
    pub day: String,
    pub prize: Option<u32>,
    pub code: Option<String>,
    pub at_ms: u64,
}

#[cfg(test)]
mod tests;

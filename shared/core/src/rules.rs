//! Membership rules: tiers, recharge bonus, points, prepaid cap, signup gifts. Rules are data
//! with a version; every entry records the version that produced it.
//!
//! Where they live: HQ writes a whole rule set through the hub's API (`PUT /api/v1/rules`); the
//! hub authors it as an `OpV1::RulesSetV2` operation (origin `hq`) that replicates to every
//! store. The highest version wins everywhere, whatever the order of arrival and whichever
//! variant carried it (the original `OpV1::RulesSet`, frozen in [`v1`], still decodes and
//! applies); a store applies the version it holds (offline too) and stamps it on every entry
//! it writes. Until HQ sets one, [`Rules::default`] (version 1) applies.
//!
//! Encoding: `RulesSetV2` carries a [`RulesDocument`], the version plus the whole [`Rules`] as a
//! JSON object. A replica keeps that JSON text as it came (so digests agree between replicas of
//! different builds) and reads it into the [`Rules`] it knows: unknown fields are ignored and
//! missing ones take their `#[serde(default)]`. So a store one build older reads a newer rule
//! set, minus the rules it does not know yet, and adding a rule needs no new operation variant.
//!
//! Adding a rule type:
//! 1. add the field to [`Rules`] (or to [`Tier`], [`SignupGift`], …) with `#[serde(default)]`
//!    (or `#[serde(default = "...")]`) whose value keeps today's behaviour, and set the same
//!    value in [`Rules::default`]; never rename a field, change its type or its meaning (make a
//!    new field instead), and never put `deny_unknown_fields` on these structs;
//! 2. check its bounds in [`Rules::validate`] (the hub refuses a set that fails, 422
//!    `invalid_rules`);
//! 3. add it to the hub's JSON (`RulesView` in `shared/replica/src/program.rs`, both
//!    conversions, `#[serde(default)]` there too so older `PUT` bodies stay valid) and to
//!    docs/hub-api.md;
//! 4. use it where the store decides (`store-node/src/program.rs`, `commands.rs`, or the module
//!    that needs it, reading `local.rules`), as a pure function here with its tests.
//!
//! Never touch [`v1`]. Old rule sets are never reinterpreted: entries already written keep the
//! version that produced them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::{Fen, Overflow};

pub mod v1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub name: String,
    /// Rolling 12-month spend needed to reach this tier.
    pub spend_threshold: Fen,
    /// Discount in basis points (500 = 5 % off).
    pub discount_bp: i64,
    /// Points multiplier in percent (100 = ×1).
    pub points_multiplier_pct: i64,
    /// Points earned over the rolling 12 months needed to reach this tier, when the rule set's
    /// `tier_metric` is `points` (see [`crate::tiers`]). Default 0 (unused with `spend`).
    #[serde(default)]
    pub points_threshold: i64,
}

/// "Recharge at least `min_amount`, get `bonus_bp` extra."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeBonusStep {
    pub min_amount: Fen,
    pub bonus_bp: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rules {
    pub version: u32,
    /// Sorted by threshold, the first at zero.
    pub tiers: Vec<Tier>,
    /// Applied: the step with the highest `min_amount` not above the recharge.
    pub recharge_bonus: Vec<RechargeBonusStep>,
    /// Points earned per whole ¥1 paid (before the tier multiplier).
    pub points_per_yuan: i64,
    /// Value of one point when paying, in 分 (1 = "100 points = ¥1").
    pub point_value_fen: i64,
    /// Most prepaid principal (money paid in; bonus not counted) a member may hold: a recharge
    /// that would go past it is refused (`prepaid_cap_exceeded`).
    pub prepaid_cap: Fen,
    /// Given on registration.
    pub signup: SignupGift,
    /// The referral reward (老带新), after the referee's first purchase. Default: 200 points
    /// each, no stored value.
    #[serde(default)]
    pub referral: crate::referral::ReferralReward,
    /// Points expiry (absent: points never expire); stores apply it in their daily engagement
    /// run (`points_expire` entries, reminders to the outbox).
    #[serde(default)]
    pub points_expiry: Option<crate::points_expiry::PointsExpiryPolicy>,
    /// Points campaigns (multipliers on top of the tier's); none by default.
    #[serde(default)]
    pub campaigns: Vec<Campaign>,
    /// Product categories whose lines earn no points; none by default.
    #[serde(default)]
    pub points_excluded_categories: Vec<String>,
    /// What tier thresholds compare with: rolling 12-month `spend` (default) or `points`
    /// earned (see [`crate::tiers`]).
    #[serde(default)]
    pub tier_metric: crate::tiers::TierMetric,
    /// When a tier may go down: `rolling` (default), `period_end` or `never`.
    #[serde(default)]
    pub tier_downgrade: crate::tiers::TierDowngrade,
    /// The periods of `period_end` (default: the calendar year at UTC+8).
    #[serde(default)]
    pub tier_period: crate::tiers::TierPeriod,
}

/// "From `start` to `end` (the store's local time), lines earn `multiplier_pct` of their
/// points", optionally only at some stores and for some product categories. Several campaigns
/// that apply to one line do not add up: the highest multiplier applies (see
/// [`Rules::campaign_multiplier_pct`]). On top of the tier multiplier (they multiply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    pub name: String,
    /// Local time at the store, `YYYY-MM-DDTHH:MM`, inclusive.
    pub start: String,
    /// Local time at the store, `YYYY-MM-DDTHH:MM`, exclusive.
    pub end: String,
    /// 100 = ×1 (no change), 200 = double points.
    pub multiplier_pct: i64,
    /// Store ids where it applies; empty: every store.
    #[serde(default)]
    pub stores: Vec<String>,
    /// Product categories it applies to; empty: every line.
    #[serde(default)]
    pub categories: Vec<String>,
}

/// Most campaigns in a rule set, and stores or categories named in one list.
pub const campaigns_max: usize = 64;
pub const rule_names_max: usize = 200;

/// A local time as campaigns compare it: `YYYY-MM-DDTHH:MM` (fixed width, so text order is
/// time order). From [`crate::engagement::local_datetime`].
pub fn local_minute(at_ms: u64, utc_offset_seconds: i32) -> Option<String> {
    let local = crate::engagement::local_datetime(at_ms, utc_offset_seconds)?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}",
        local.year(),
        u8::from(local.month()),
        local.day(),
        local.hour(),
        local.minute()
    ))
}

fn is_local_minute(text: &str) -> bool {
    let bytes = text.as_bytes();
    let shape = bytes.len() == 16
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            10 => *b == b'T',
            13 => *b == b':',
            _ => b.is_ascii_digit(),
        });
    if !shape {
        return false;
    }
    let number = |range: std::ops::Range<usize>| text[range].parse::<u16>().unwrap_or(u16::MAX);
    let month = time::Month::try_from(u8::try_from(number(5..7)).unwrap_or(0));
    let day = u8::try_from(number(8..10)).unwrap_or(0);
    let date_ok = month
        .is_ok_and(|m| time::Date::from_calendar_date(i32::from(number(0..4)), m, day).is_ok());
    date_ok && number(11..13) < 24 && number(14..16) < 60
}

/// Where and when a checkout earns points, and each line's product category.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EarnContext {
    pub store: String,
    /// [`local_minute`] at the store at the checkout.
    pub local_minute: String,
    /// Per line, its product's category (None: none).
    pub categories: Vec<Option<String>>,
}

/// What a new member gets on registration (all optional).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignupGift {
    /// Points credited (a `points_adjust` entry with reason "signup gift").
    pub points: i64,
    /// Stored value credited as bonus (a `recharge_bonus` entry; never refunded as cash).
    pub stored_value: Fen,
    /// A coupon of this template issued to the member.
    pub coupon_template: Option<Uuid>,
}

/// Why a rule set is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidRules(pub String);

/// Largest number of tiers / recharge steps in a rule set.
pub const tiers_max: usize = 16;

/// How long "rolling 12 months" is, in ms (365 days).
pub const tier_window_ms: u64 = 365 * 24 * 60 * 60 * 1000;

impl Default for Rules {
    fn default() -> Rules {
        let tier = |name: &str, yuan: i64, discount_bp: i64| Tier {
            name: name.to_owned(),
            spend_threshold: Fen(yuan * 100),
            discount_bp,
            points_multiplier_pct: 100,
            points_threshold: 0,
        };
        Rules {
            version: 1,
            tiers: vec![
                tier("普通", 0, 0),
                tier("黄金", 5_000, 500),
                tier("钻石", 20_000, 1_000),
            ],
            recharge_bonus: vec![RechargeBonusStep {
                min_amount: Fen(50_000),
                bonus_bp: 1_000,
            }],
            points_per_yuan: 1,
            point_value_fen: 1,
            prepaid_cap: Fen(500_000),
            signup: SignupGift::default(),
            referral: crate::referral::ReferralReward::default(),
            points_expiry: None,
            campaigns: Vec::new(),
            points_excluded_categories: Vec::new(),
            tier_metric: crate::tiers::TierMetric::Spend,
            tier_downgrade: crate::tiers::TierDowngrade::Rolling,
            tier_period: crate::tiers::TierPeriod::default(),
        }
    }
}

impl Rules {
    /// Check a rule set before HQ publishes it (and when one arrives).
    pub fn validate(&self) -> Result<(), InvalidRules> {
        let bad = |message: &str| Err(InvalidRules(message.to_owned()));
        let money_max = crate::limits::amount_fen_max;
        if self.tiers.is_empty() || self.tiers.len() > tiers_max {
            return bad("tiers: 1 to 16 tiers");
        }
        let by_points = self.tier_metric == crate::tiers::TierMetric::Points;
        if !by_points && self.tiers[0].spend_threshold != Fen::ZERO {
            return bad("tiers: the first tier starts at 0");
        }
        if by_points && self.tiers[0].points_threshold != 0 {
            return bad("tiers: the first tier starts at 0 points");
        }
        for (index, tier) in self.tiers.iter().enumerate() {
            let name = tier.name.trim();
            if name.is_empty() || name.chars().count() > 32 || name.chars().any(char::is_control) {
                return bad("tiers: each name is 1 to 32 characters");
            }
            if !(0..=money_max).contains(&tier.spend_threshold.0) {
                return bad("tiers: spend_threshold out of range");
            }
            if !(0..=crate::tiers::points_threshold_max).contains(&tier.points_threshold) {
                return bad("tiers: points_threshold is 0 to 1000000000");
            }
            let previous = index.checked_sub(1).and_then(|i| self.tiers.get(i));
            let goes_up = previous.is_none_or(|previous| {
                if by_points {
                    tier.points_threshold > previous.points_threshold
                } else {
                    tier.spend_threshold > previous.spend_threshold
                }
            });
            if !goes_up {
                return bad("tiers: thresholds must go up strictly");
            }
            if !(0..=10_000).contains(&tier.discount_bp) {
                return bad("tiers: discount_bp is 0 to 10000");
            }
            if !(0..=1_000).contains(&tier.points_multiplier_pct) {
                return bad("tiers: points_multiplier_pct is 0 to 1000");
            }
        }
        if self.recharge_bonus.len() > tiers_max {
            return bad("recharge_bonus: at most 16 steps");
        }
        for step in &self.recharge_bonus {
            if !(1..=money_max).contains(&step.min_amount.0)
                || !(0..=10_000).contains(&step.bonus_bp)
            {
                return bad("recharge_bonus: min_amount 1.. and bonus_bp 0 to 10000");
            }
        }
        if !(0..=100).contains(&self.points_per_yuan) {
            return bad("points_per_yuan is 0 to 100");
        }
        if !(1..=100).contains(&self.point_value_fen) {
            return bad("point_value_fen is 1 to 100");
        }
        if !(0..=money_max).contains(&self.prepaid_cap.0) {
            return bad("prepaid_cap out of range");
        }
        if !(0..=1_000_000).contains(&self.signup.points) {
            return bad("signup.points is 0 to 1000000");
        }
        if !(0..=self.prepaid_cap.0).contains(&self.signup.stored_value.0) {
            return bad("signup.stored_value is 0 to the prepaid cap");
        }
        if let Err(e) = self.referral.validate(self.prepaid_cap) {
            return bad(&e.to_string());
        }
        if let Some(Err(e)) = self.points_expiry.as_ref().map(|p| p.validate()) {
            return bad(&e.to_string());
        }
        let name_ok = |name: &str| {
            let name = name.trim();
            !name.is_empty() && name.chars().count() <= 64 && !name.chars().any(char::is_control)
        };
        if self.campaigns.len() > campaigns_max {
            return bad("campaigns: at most 64");
        }
        for campaign in &self.campaigns {
            if !name_ok(&campaign.name) {
                return bad("campaigns: each name is 1 to 64 characters");
            }
            if !is_local_minute(&campaign.start) || !is_local_minute(&campaign.end) {
                return bad("campaigns: start and end are local times YYYY-MM-DDTHH:MM");
            }
            if campaign.end <= campaign.start {
                return bad("campaigns: end must be after start");
            }
            if !(100..=1_000).contains(&campaign.multiplier_pct) {
                return bad("campaigns: multiplier_pct is 100 to 1000");
            }
            if campaign.stores.len() > rule_names_max
                || campaign.categories.len() > rule_names_max
                || !campaign.stores.iter().all(|s| name_ok(s))
                || !campaign.categories.iter().all(|c| name_ok(c))
            {
                return bad(
                    "campaigns: at most 200 stores and 200 categories, 1 to 64 characters each",
                );
            }
        }
        if let Err(message) = self.tier_period.validate() {
            return bad(message);
        }
        if self.points_excluded_categories.len() > rule_names_max
            || !self.points_excluded_categories.iter().all(|c| name_ok(c))
        {
            return bad("points_excluded_categories: at most 200, 1 to 64 characters each");
        }
        Ok(())
    }

    /// The tier a member with this rolling 12-month spend is in (thresholds on spend).
    pub fn tier_for_spend(&self, spend: Fen) -> &Tier {
        self.tiers
            .iter()
            .rev()
            .find(|tier| spend >= tier.spend_threshold)
            .or_else(|| self.tiers.first())
            .unwrap_or(&DEFAULT_TIER)
    }

    /// The tier for a value of this rule set's tier metric (分 of spend or points earned).
    pub fn tier_for_metric(&self, value: i64) -> &Tier {
        match self.tier_metric {
            crate::tiers::TierMetric::Spend => self.tier_for_spend(Fen(value)),
            crate::tiers::TierMetric::Points => self
                .tiers
                .iter()
                .rev()
                .find(|tier| value >= tier.points_threshold)
                .or_else(|| self.tiers.first())
                .unwrap_or(&DEFAULT_TIER),
        }
    }

    /// The tier of a member at `now_ms`, from the member's contributions to the tier metric
    /// (every one that may matter: from [`crate::tiers::entries_since_ms`] on), through the
    /// metric and downgrade policy of this rule set. Pure; see [`crate::tiers`].
    pub fn tier_at(&self, entries: &[crate::tiers::MetricEntry], now_ms: u64) -> &Tier {
        let from = crate::tiers::span_start_ms(self.tier_downgrade, &self.tier_period, now_ms);
        let peak = crate::tiers::peak_rolling_sum(entries, tier_window_ms, from, now_ms);
        self.tier_for_metric(peak)
    }

    /// The lowest tier (a member with no entries).
    pub fn lowest_tier(&self) -> &Tier {
        self.tiers.first().unwrap_or(&DEFAULT_TIER)
    }

    /// Bonus stored value for a recharge of `amount`.
    pub fn recharge_bonus_for(&self, amount: Fen) -> Result<Fen, Overflow> {
        let step = self
            .recharge_bonus
            .iter()
            .filter(|step| amount >= step.min_amount)
            .max_by_key(|step| step.min_amount);
        match step {
            Some(step) => amount.mul_basis_points(step.bonus_bp),
            None => Ok(Fen::ZERO),
        }
    }

    /// Points earned for `eligible` money paid, in a tier.
    pub fn points_for(&self, eligible: Fen, tier: &Tier) -> Result<i64, Overflow> {
        let yuan = eligible.0.max(0) / 100;
        yuan.checked_mul(self.points_per_yuan)
            .and_then(|p| p.checked_mul(tier.points_multiplier_pct))
            .map(|p| p / 100)
            .ok_or(Overflow)
    }

    /// The campaign multiplier for a line of `category` sold at `store` at local time
    /// `local_minute`: the highest of the campaigns that apply (they do not add up), 100 when
    /// none does. The highest is a maximum, so neither the campaigns' order nor repeating one
    /// changes it.
    pub fn campaign_multiplier_pct(
        &self,
        store: &str,
        local_minute: &str,
        category: Option<&str>,
    ) -> i64 {
        self.campaigns
            .iter()
            .filter(|c| c.start.as_str() <= local_minute && local_minute < c.end.as_str())
            .filter(|c| c.stores.is_empty() || c.stores.iter().any(|s| s == store))
            .filter(|c| {
                c.categories.is_empty()
                    || category.is_some_and(|cat| c.categories.iter().any(|c| c == cat))
            })
            .map(|c| c.multiplier_pct)
            .max()
            .unwrap_or(100)
            .max(100)
    }

    /// Whether lines of `category` earn no points.
    pub fn excludes_category(&self, category: Option<&str>) -> bool {
        category.is_some_and(|cat| self.points_excluded_categories.iter().any(|c| c == cat))
    }

    /// Points earned per line of a checkout: `line_amounts` are the lines' list amounts,
    /// `eligible` what was paid with money (not points). The money is shared out over the
    /// lines by their amounts; each line weighs its share × its campaign multiplier (0 for an
    /// excluded category); the checkout earns [`Rules::points_for`] of the weighed total,
    /// shared out over the lines by weight. Shares are cumulative floors, so the lines add up
    /// exactly to the checkout's points; without campaigns or exclusions the total is what
    /// [`Rules::points_for`] gives for `eligible`, as before they existed.
    pub fn line_points(
        &self,
        line_amounts: &[Fen],
        eligible: Fen,
        tier: &Tier,
        context: &EarnContext,
    ) -> Result<Vec<i64>, Overflow> {
        let amounts: Vec<i128> = line_amounts
            .iter()
            .map(|a| i128::from(a.0.max(0)))
            .collect();
        let money = shares(i128::from(eligible.0.max(0)), &amounts);
        let mut weights = Vec::with_capacity(amounts.len());
        for (index, share) in money.iter().enumerate() {
            let category = context.categories.get(index).and_then(|c| c.as_deref());
            let pct = if self.excludes_category(category) {
                0
            } else {
                self.campaign_multiplier_pct(&context.store, &context.local_minute, category)
            };
            weights.push(share * i128::from(pct));
        }
        let weighed_fen = weights.iter().sum::<i128>() / 100;
        let weighed_fen = i64::try_from(weighed_fen).map_err(|_| Overflow)?;
        let total = self.points_for(Fen(weighed_fen), tier)?;
        Ok(shares(i128::from(total), &weights)
            .into_iter()
            .map(|p| i64::try_from(p).unwrap_or(0))
            .collect())
    }
}

/// `whole` shared out in proportion to `weights` (all ≥ 0) by cumulative floors: the parts add
/// up to `whole` exactly (0 everywhere when the weights are all 0).
fn shares(whole: i128, weights: &[i128]) -> Vec<i128> {
    let sum: i128 = weights.iter().sum();
    if sum <= 0 {
        return vec![0; weights.len()];
    }
    let (mut running, mut given) = (0i128, 0i128);
    weights
        .iter()
        .map(|weight| {
            running += weight;
            let upto = whole * running / sum;
            let part = upto - given;
            given = upto;
            part
        })
        .collect()
}

/// The points a refund takes back, line by line: for each line, its points times the share of
/// its units refunded after this refund, minus before (cumulative floors, so refunding every
/// unit takes back exactly what the line earned).
pub fn line_points_back(line_points: &[i64], qty: &[i64], before: &[i64], after: &[i64]) -> i64 {
    let mut back = 0i64;
    for (index, points) in line_points.iter().enumerate() {
        let units = qty.get(index).copied().unwrap_or(0);
        if units <= 0 {
            continue;
        }
        let part =
            |done: i64| i128::from(*points) * i128::from(done.clamp(0, units)) / i128::from(units);
        let was = part(before.get(index).copied().unwrap_or(0));
        let now = part(after.get(index).copied().unwrap_or(0));
        back = back.saturating_add(i64::try_from(now - was).unwrap_or(0));
    }
    back
}

/// Largest rules document (JSON text) in a `RulesSetV2`, in bytes.
pub const rules_document_bytes_max: usize = 64 * 1024;

/// A rule set as `OpV1::RulesSetV2` carries it: its version and the whole [`Rules`] as a JSON
/// object (which repeats the version). See the module doc for why JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesDocument {
    pub version: u32,
    pub json: String,
}

impl RulesDocument {
    pub fn of(rules: &Rules) -> RulesDocument {
        RulesDocument {
            version: rules.version,
            // Serializing our own in-memory value (plain fields, string keys) cannot fail.
            json: serde_json::to_string(rules).unwrap_or_default(),
        }
    }

    /// The rules this document holds, as far as this build knows them: unknown fields are
    /// ignored, fields it lacks take their defaults. Refused: not a JSON object of rules, too
    /// large, or a version that differs from the document's.
    pub fn rules(&self) -> Result<Rules, InvalidRules> {
        if self.json.len() > rules_document_bytes_max {
            return Err(InvalidRules(format!(
                "rules document is {} bytes, more than {rules_document_bytes_max}",
                self.json.len()
            )));
        }
        let rules: Rules = serde_json::from_str(&self.json)
            .map_err(|e| InvalidRules(format!("rules document: {e}")))?;
        if rules.version != self.version {
            return Err(InvalidRules(format!(
                "rules document says version {} inside version {}",
                rules.version, self.version
            )));
        }
        Ok(rules)
    }
}

static DEFAULT_TIER: Tier = Tier {
    name: String::new(),
    spend_threshold: Fen(0),
    discount_bp: 0,
    points_multiplier_pct: 100,
    points_threshold: 0,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_tiers_follow_rolling_spend() {
        let rules = Rules::default();
        assert_eq!(rules.tier_for_spend(Fen(0)).name, "普通");
        assert_eq!(rules.tier_for_spend(Fen(499_999)).name, "普通");
        assert_eq!(rules.tier_for_spend(Fen(500_000)).name, "黄金");
        assert_eq!(rules.tier_for_spend(Fen(2_000_000)).name, "钻石");
    }

    #[test]
    fn recharge_bonus_starts_at_500_yuan() {
        let rules = Rules::default();
        assert_eq!(rules.recharge_bonus_for(Fen(49_999)).unwrap(), Fen(0));
        assert_eq!(rules.recharge_bonus_for(Fen(50_000)).unwrap(), Fen(5_000));
        assert_eq!(rules.recharge_bonus_for(Fen(100_050)).unwrap(), Fen(10_005));
    }

    #[test]
    fn defaults_are_valid_and_bad_sets_are_refused() {
        let rules = Rules::default();
        assert_eq!(rules.validate(), Ok(()));
        assert_eq!(rules.prepaid_cap, Fen(500_000));
        let mut unsorted = rules.clone();
        unsorted.tiers.swap(1, 2);
        assert!(unsorted.validate().is_err());
        let mut no_base = rules.clone();
        no_base.tiers.remove(0);
        assert!(no_base.validate().is_err());
        let mut zero_value = rules;
        zero_value.point_value_fen = 0;
        assert!(zero_value.validate().is_err());
    }

    #[test]
    fn points_are_per_whole_yuan() {
        let rules = Rules::default();
        let tier = rules.tier_for_spend(Fen(0)).clone();
        assert_eq!(rules.points_for(Fen(12_399), &tier).unwrap(), 123);
        assert_eq!(rules.points_for(Fen(-5), &tier).unwrap(), 0);
    }

    /// What `OpV1::RulesSet` carried and what replicas kept for it, byte for byte, before
    /// `RulesSetV2`: the frozen layout must keep decoding both.
    const old_rules_set_op_hex: &str = "0009010306e699aee9809a0000c80106e9bb84e98791c0843de807c8\
        0106e992bbe79fb38092f401d00fc80101a08d06d00f0202c0843d000000";
    const old_rules_json: &str = r#"{"version":1,"tiers":[{"name":"普通","spend_threshold":0,"discount_bp":0,"points_multiplier_pct":100},{"name":"黄金","spend_threshold":500000,"discount_bp":500,"points_multiplier_pct":100},{"name":"钻石","spend_threshold":2000000,"discount_bp":1000,"points_multiplier_pct":100}],"recharge_bonus":[{"min_amount":50000,"bonus_bp":1000}],"points_per_yuan":1,"point_value_fen":1,"prepaid_cap":500000,"signup":{"points":0,"stored_value":0,"coupon_template":null}}"#;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn an_old_rules_set_still_decodes_and_reads_as_today() {
        use crate::op::{Op, OpV1};
        let old = v1::RulesV1::of(&Rules::default());
        let op = Op::V1(OpV1::RulesSet(old.clone()));
        let golden = old_rules_set_op_hex.replace(' ', "");
        assert_eq!(
            hex(&op.encode()),
            golden,
            "the old encoding must not change"
        );
        let bytes: Vec<u8> = (0..golden.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&golden[i..i + 2], 16).unwrap())
            .collect();
        let Op::V1(OpV1::RulesSet(decoded)) = Op::decode(&bytes).unwrap() else {
            panic!("not a RulesSet");
        };
        assert_eq!(Rules::from(decoded), Rules::default());
        // What a replica kept for it reads into today's rules, later fields at their defaults.
        assert_eq!(serde_json::to_string(&old).unwrap(), old_rules_json);
        let kept: Rules = serde_json::from_str(old_rules_json).unwrap();
        assert_eq!(kept, Rules::default());
    }

    #[test]
    fn a_rules_document_round_trips_through_the_op() {
        use crate::op::{Op, OpV1};
        let rules = Rules {
            version: 7,
            signup: SignupGift {
                points: 50,
                ..SignupGift::default()
            },
            ..Rules::default()
        };
        let op = Op::V1(OpV1::RulesSetV2(RulesDocument::of(&rules)));
        let Op::V1(OpV1::RulesSetV2(document)) = Op::decode(&op.encode()).unwrap() else {
            panic!("not a RulesSetV2");
        };
        assert_eq!(document.version, 7);
        assert_eq!(document.rules().unwrap(), rules);
    }

    #[test]
    fn a_rules_document_with_fields_this_build_does_not_know_still_reads() {
        let mut newer: serde_json::Value =
            serde_json::from_str(&RulesDocument::of(&Rules::default()).json).unwrap();
        newer["version"] = 3.into();
        newer["future_rule"] = serde_json::json!({"referrer_points": 100, "nested": [1, 2]});
        newer["tiers"][1]["future_threshold"] = 5_000.into();
        newer["signup"]["welcome_text"] = "欢迎".into();
        let document = RulesDocument {
            version: 3,
            json: newer.to_string(),
        };
        let read = document.rules().unwrap();
        let expected = Rules {
            version: 3,
            ..Rules::default()
        };
        assert_eq!(
            read, expected,
            "unknown fields ignored, the rest as written"
        );
        // The oldest document there is, the frozen layout's JSON, reads too.
        let oldest = RulesDocument {
            version: 1,
            json: old_rules_json.to_owned(),
        };
        assert_eq!(oldest.rules().unwrap(), Rules::default());
    }

    #[test]
    fn bad_rules_documents_are_refused() {
        let good = RulesDocument::of(&Rules::default());
        let wrong_version = RulesDocument {
            version: 2,
            ..good.clone()
        };
        assert!(wrong_version.rules().is_err());
        for json in ["", "[]", "{}", "not json", r#"{"version":1}"#] {
            let document = RulesDocument {
                version: 1,
                json: json.to_owned(),
            };
            assert!(document.rules().is_err(), "{json:?}");
        }
        let huge = RulesDocument {
            version: 1,
            json: format!("{}{}", good.json, " ".repeat(rules_document_bytes_max)),
        };
        assert!(huge.rules().is_err());
    }

    fn campaign(name: &str, pct: i64, stores: &[&str], categories: &[&str]) -> Campaign {
        Campaign {
            name: name.into(),
            start: "2026-12-01T00:00".into(),
            end: "2026-12-08T00:00".into(),
            multiplier_pct: pct,
            stores: stores.iter().map(|s| s.to_string()).collect(),
            categories: categories.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn with_campaigns() -> Rules {
        Rules {
            campaigns: vec![
                campaign("双倍周", 200, &[], &[]),
                campaign("饮料三倍", 300, &[], &["饮料"]),
                campaign("新店五倍", 500, &["s9"], &[]),
            ],
            points_excluded_categories: vec!["烟草".into()],
            ..Rules::default()
        }
    }

    #[test]
    fn the_highest_applying_campaign_wins_in_the_stores_local_time() {
        let rules = with_campaigns();
        assert_eq!(rules.validate(), Ok(()));
        let at = "2026-12-03T10:00";
        assert_eq!(rules.campaign_multiplier_pct("s1", at, Some("饮料")), 300);
        assert_eq!(rules.campaign_multiplier_pct("s1", at, Some("零食")), 200);
        assert_eq!(rules.campaign_multiplier_pct("s1", at, None), 200);
        assert_eq!(rules.campaign_multiplier_pct("s9", at, Some("饮料")), 500);
        // Start inclusive, end exclusive.
        assert_eq!(
            rules.campaign_multiplier_pct("s1", "2026-12-01T00:00", None),
            200
        );
        assert_eq!(
            rules.campaign_multiplier_pct("s1", "2026-11-30T23:59", None),
            100
        );
        assert_eq!(
            rules.campaign_multiplier_pct("s1", "2026-12-08T00:00", None),
            100
        );
        // The local minute is the store's: 2026-11-30T16:00Z is already December 1 at UTC+8.
        let ms = 1_796_083_200_000; // 2026-12-01T00:00:00Z
        assert_eq!(
            local_minute(ms - 8 * 3_600_000, 8 * 3_600).unwrap(),
            "2026-12-01T00:00"
        );
        assert_eq!(
            local_minute(ms - 8 * 3_600_000, 0).unwrap(),
            "2026-11-30T16:00"
        );
        // Order of the campaigns does not matter.
        let mut reversed = rules.clone();
        reversed.campaigns.reverse();
        for category in [Some("饮料"), Some("零食"), None] {
            assert_eq!(
                reversed.campaign_multiplier_pct("s1", at, category),
                rules.campaign_multiplier_pct("s1", at, category)
            );
        }
    }

    #[test]
    fn excluded_categories_earn_nothing_and_lines_add_up() {
        let rules = with_campaigns();
        let tier = rules.tiers[0].clone();
        let context = EarnContext {
            store: "s1".into(),
            local_minute: "2026-12-03T10:00".into(),
            categories: vec![Some("饮料".into()), Some("烟草".into()), None],
        };
        let amounts = [Fen(1_000), Fen(2_000), Fen(500)];
        // ¥10 drinks ×3, ¥20 tobacco ×0, ¥5 other ×2: 40 weighed yuan.
        let points = rules
            .line_points(&amounts, Fen(3_500), &tier, &context)
            .unwrap();
        assert_eq!(points, vec![30, 0, 10]);
        // Half paid with points: the money shared out is half, and so are the points.
        let points = rules
            .line_points(&amounts, Fen(1_750), &tier, &context)
            .unwrap();
        assert_eq!(points.iter().sum::<i64>(), 20);
        assert_eq!(points[1], 0);
        // Out of the campaigns' dates only the exclusion is left.
        let later = EarnContext {
            local_minute: "2027-01-01T00:00".into(),
            ..context
        };
        assert_eq!(
            rules
                .line_points(&amounts, Fen(3_500), &tier, &later)
                .unwrap(),
            vec![10, 0, 5]
        );
    }

    #[test]
    fn refunding_a_line_takes_back_its_own_points() {
        let points = [30, 0, 10];
        let qty = [3, 1, 2];
        assert_eq!(line_points_back(&points, &qty, &[0, 0, 0], &[1, 0, 0]), 10);
        assert_eq!(line_points_back(&points, &qty, &[1, 0, 0], &[3, 1, 0]), 20);
        assert_eq!(line_points_back(&points, &qty, &[3, 1, 0], &[3, 1, 1]), 5);
        assert_eq!(line_points_back(&points, &qty, &[0, 0, 0], &[3, 1, 2]), 40);
    }

    #[test]
    fn bad_campaigns_and_exclusions_are_refused() {
        let good = with_campaigns();
        let refuse = |change: &dyn Fn(&mut Rules)| {
            let mut rules = good.clone();
            change(&mut rules);
            assert!(rules.validate().is_err(), "{rules:?}");
        };
        refuse(&|r| r.campaigns[0].multiplier_pct = 99);
        refuse(&|r| r.campaigns[0].multiplier_pct = 1_001);
        refuse(&|r| r.campaigns[0].start = "2026-12-01".into());
        refuse(&|r| r.campaigns[0].start = "2026-02-30T00:00".into());
        refuse(&|r| r.campaigns[0].end = "2026-12-01T24:00".into());
        refuse(&|r| r.campaigns[0].end = r.campaigns[0].start.clone());
        refuse(&|r| r.campaigns[0].name = " ".into());
        refuse(&|r| r.campaigns[0].categories = vec![String::new()]);
        refuse(&|r| r.campaigns = vec![campaign("x", 200, &[], &[]); campaigns_max + 1]);
        refuse(&|r| r.points_excluded_categories = vec!["a\u{7}b".into()]);
    }

    proptest::proptest! {
        /// Without campaigns or exclusions the points are what they were before lines earned
        /// one by one; with them, the lines always add up and excluded lines get nothing.
        #[test]
        fn line_points_add_up(
            amounts in proptest::collection::vec(0i64..1_000_000, 1..12),
            paid_permille in 0i64..=1_000,
            tier_pct in 0i64..=1_000,
            categories in proptest::collection::vec(0usize..4, 12),
        ) {
            let amounts: Vec<Fen> = amounts.into_iter().map(Fen).collect();
            let total: i64 = amounts.iter().map(|a| a.0).sum();
            let eligible = Fen(total * paid_permille / 1_000);
            let tier = Tier { points_multiplier_pct: tier_pct, ..Rules::default().tiers[0].clone() };
            let plain = Rules::default();
            let points = plain.line_points(&amounts, eligible, &tier, &EarnContext::default()).unwrap();
            proptest::prop_assert_eq!(points.iter().sum::<i64>(), plain.points_for(eligible, &tier).unwrap());
            proptest::prop_assert!(points.iter().all(|p| *p >= 0));
            let rules = with_campaigns();
            let names = [None, Some("饮料"), Some("烟草"), Some("零食")];
            let context = EarnContext {
                store: "s1".into(),
                local_minute: "2026-12-03T10:00".into(),
                categories: categories.iter().take(amounts.len()).map(|c| names[*c].map(str::to_owned)).collect(),
            };
            let points = rules.line_points(&amounts, eligible, &tier, &context).unwrap();
            proptest::prop_assert_eq!(points.len(), amounts.len());
            for (points, category) in points.iter().zip(&context.categories) {
                proptest::prop_assert!(*points >= 0);
                if category.as_deref() == Some("烟草") {
                    proptest::prop_assert_eq!(*points, 0);
                }
            }
        }
    }
}

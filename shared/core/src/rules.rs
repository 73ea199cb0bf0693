//! Membership rules: tiers, recharge bonus, points, prepaid cap, signup gifts. Rules are data
//! with a version; every entry records the version that produced it.
//!
//! Where they live: HQ writes a whole rule set through the hub's API (`PUT /api/v1/rules`); the
//! hub authors it as an `OpV1::RulesSet` operation (origin `hq`) that replicates to every
//! store. The highest version wins everywhere, whatever the order of arrival; a store applies
//! the version it holds (offline too) and stamps it on every entry it writes. Until HQ sets
//! one, [`Rules::default`] (version 1) applies.
//!
//! Adding a rule type: add a field here (with its default in [`Rules::default`] and its check
//! in [`Rules::validate`]), use it where the store decides (`store-node/src/commands.rs` or a
//! module next to it), and add it to the hub's `PUT /api/v1/rules` body. Old rule sets are
//! never reinterpreted: entries already written keep the version that produced them.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::{Fen, Overflow};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub name: String,
    /// Rolling 12-month spend needed to reach this tier.
    pub spend_threshold: Fen,
    /// Discount in basis points (500 = 5 % off).
    pub discount_bp: i64,
    /// Points multiplier in percent (100 = ×1).
    pub points_multiplier_pct: i64,
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
        if self.tiers[0].spend_threshold != Fen::ZERO {
            return bad("tiers: the first tier starts at 0");
        }
        for (index, tier) in self.tiers.iter().enumerate() {
            let name = tier.name.trim();
            if name.is_empty() || name.chars().count() > 32 || name.chars().any(char::is_control) {
                return bad("tiers: each name is 1 to 32 characters");
            }
            if !(0..=money_max).contains(&tier.spend_threshold.0) {
                return bad("tiers: spend_threshold out of range");
            }
            if index > 0 && tier.spend_threshold <= self.tiers[index - 1].spend_threshold {
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
        Ok(())
    }

    /// The tier a member with this rolling 12-month spend is in.
    pub fn tier_for_spend(&self, spend: Fen) -> &Tier {
        self.tiers
            .iter()
            .rev()
            .find(|tier| spend >= tier.spend_threshold)
            .or_else(|| self.tiers.first())
            .unwrap_or(&DEFAULT_TIER)
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
}

static DEFAULT_TIER: Tier = Tier {
    name: String::new(),
    spend_threshold: Fen(0),
    discount_bp: 0,
    points_multiplier_pct: 100,
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
}

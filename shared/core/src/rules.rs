//! Membership rules: tiers, recharge bonus, points. Rules are data with a version; every entry
//! records the version that produced it. HQ will set them (later issue); these are defaults.

use serde::{Deserialize, Serialize};

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
}

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
        }
    }
}

impl Rules {
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
    fn points_are_per_whole_yuan() {
        let rules = Rules::default();
        let tier = rules.tier_for_spend(Fen(0)).clone();
        assert_eq!(rules.points_for(Fen(12_399), &tier).unwrap(), 123);
        assert_eq!(rules.points_for(Fen(-5), &tier).unwrap(), 0);
    }
}

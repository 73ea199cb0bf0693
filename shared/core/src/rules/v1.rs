//! The rule set as `OpV1::RulesSet` carries it (postcard), frozen: this layout must never
//! change, or stores could no longer decode the rule sets already in their logs. New rule
//! fields go on [`super::Rules`] only and travel in `OpV1::RulesSetV2` (a JSON document).

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::money::Fen;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierV1 {
    pub name: String,
    pub spend_threshold: Fen,
    pub discount_bp: i64,
    pub points_multiplier_pct: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RechargeBonusStepV1 {
    pub min_amount: Fen,
    pub bonus_bp: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignupGiftV1 {
    pub points: i64,
    pub stored_value: Fen,
    pub coupon_template: Option<Uuid>,
}

/// The whole rule set of `OpV1::RulesSet`. Its JSON (serde field names) is also what a replica
/// keeps for it, so [`super::Rules`] reads it with every later field at its default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesV1 {
    pub version: u32,
    pub tiers: Vec<TierV1>,
    pub recharge_bonus: Vec<RechargeBonusStepV1>,
    pub points_per_yuan: i64,
    pub point_value_fen: i64,
    pub prepaid_cap: Fen,
    pub signup: SignupGiftV1,
}

impl From<RulesV1> for super::Rules {
    /// Every field added after version 1 of the encoding takes its default.
    fn from(old: RulesV1) -> super::Rules {
        super::Rules {
            version: old.version,
            tiers: old
                .tiers
                .into_iter()
                .map(|t| super::Tier {
                    name: t.name,
                    spend_threshold: t.spend_threshold,
                    discount_bp: t.discount_bp,
                    points_multiplier_pct: t.points_multiplier_pct,
                    points_threshold: 0,
                })
                .collect(),
            recharge_bonus: old
                .recharge_bonus
                .into_iter()
                .map(|s| super::RechargeBonusStep {
                    min_amount: s.min_amount,
                    bonus_bp: s.bonus_bp,
                })
                .collect(),
            points_per_yuan: old.points_per_yuan,
            point_value_fen: old.point_value_fen,
            prepaid_cap: old.prepaid_cap,
            signup: super::SignupGift {
                points: old.signup.points,
                stored_value: old.signup.stored_value,
                coupon_template: old.signup.coupon_template,
            },
            ..super::Rules::default()
        }
    }
}

impl RulesV1 {
    /// The part of a rule set the old encoding can carry (later fields are dropped).
    pub fn of(rules: &super::Rules) -> RulesV1 {
        RulesV1 {
            version: rules.version,
            tiers: rules
                .tiers
                .iter()
                .map(|t| TierV1 {
                    name: t.name.clone(),
                    spend_threshold: t.spend_threshold,
                    discount_bp: t.discount_bp,
                    points_multiplier_pct: t.points_multiplier_pct,
                })
                .collect(),
            recharge_bonus: rules
                .recharge_bonus
                .iter()
                .map(|s| RechargeBonusStepV1 {
                    min_amount: s.min_amount,
                    bonus_bp: s.bonus_bp,
                })
                .collect(),
            points_per_yuan: rules.points_per_yuan,
            point_value_fen: rules.point_value_fen,
            prepaid_cap: rules.prepaid_cap,
            signup: SignupGiftV1 {
                points: rules.signup.points,
                stored_value: rules.signup.stored_value,
                coupon_template: rules.signup.coupon_template,
            },
        }
    }
}

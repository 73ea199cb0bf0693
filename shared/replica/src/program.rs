//! The membership program's replicated state: HQ's rule set (highest version wins) and count
//! cards (templates, cards bought, uses). Every function here is idempotent and order-free.

use chainsync_core::Fen;
use chainsync_core::rules::{InvalidRules, RechargeBonusStep, Rules, SignupGift, Tier};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// The program's replicated tables.
pub const schema_v1: &str = r#"
-- The newest rule set (highest version wins); one row. None: the defaults (version 1).
CREATE TABLE rules_config (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL,
    body TEXT NOT NULL
);
"#;

/// The highest version wins.
pub fn project_rules(conn: &Connection, rules: &Rules) -> rusqlite::Result<()> {
    let body = serde_json::to_string(rules).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO rules_config (id, version, body) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, body = excluded.body
         WHERE excluded.version > rules_config.version",
    )?
    .execute(params![i64::from(rules.version), body])?;
    Ok(())
}

/// The version of the rules this replica holds (1: the defaults).
pub fn rules_version(conn: &Connection) -> rusqlite::Result<u32> {
    let version: Option<i64> = conn
        .prepare_cached("SELECT version FROM rules_config WHERE id = 1")?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(version
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or(Rules::default().version))
}

/// The rules this replica applies now.
pub fn rules(conn: &Connection) -> rusqlite::Result<Rules> {
    let body: Option<String> = conn
        .prepare_cached("SELECT body FROM rules_config WHERE id = 1")?
        .query_row([], |row| row.get(0))
        .optional()?;
    Ok(body
        .and_then(|body| serde_json::from_str(&body).ok())
        .unwrap_or_default())
}

/// A tier as HQ writes and reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierView {
    pub name: String,
    /// Rolling 12-month spend (分) needed for this tier; the first tier is at 0.
    pub spend_threshold_fen: i64,
    /// Discount in basis points (500 = 5 % off).
    pub discount_bp: i64,
    /// Points multiplier in percent (100 = ×1).
    pub points_multiplier_pct: i64,
}

/// "Recharge at least `min_amount_fen`, get `bonus_bp` more as bonus stored value."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RechargeBonusView {
    pub min_amount_fen: i64,
    pub bonus_bp: i64,
}

/// Given to each new member on registration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupGiftView {
    #[serde(default)]
    pub points: i64,
    /// Credited as bonus stored value (分).
    #[serde(default)]
    pub stored_value_fen: i64,
    /// A coupon of this template is issued to the member.
    #[serde(default)]
    pub coupon_template_id: Option<Uuid>,
}

/// A whole rule set: the body of the hub's `PUT /api/v1/rules` (without `version`, which the
/// hub assigns) and the answer of `GET /api/v1/rules` on the hub and on stores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RulesView {
    /// Set by the hub: one more than the newest it holds. Ignored in a `PUT`.
    #[serde(default)]
    pub version: u32,
    pub tiers: Vec<TierView>,
    pub recharge_bonus: Vec<RechargeBonusView>,
    pub points_per_yuan: i64,
    pub point_value_fen: i64,
    /// Most stored value (principal + bonus, 分) a member may hold.
    pub prepaid_cap_fen: i64,
    #[serde(default)]
    pub signup: SignupGiftView,
}

impl RulesView {
    pub fn of(rules: &Rules) -> RulesView {
        RulesView {
            version: rules.version,
            tiers: rules
                .tiers
                .iter()
                .map(|t| TierView {
                    name: t.name.clone(),
                    spend_threshold_fen: t.spend_threshold.0,
                    discount_bp: t.discount_bp,
                    points_multiplier_pct: t.points_multiplier_pct,
                })
                .collect(),
            recharge_bonus: rules
                .recharge_bonus
                .iter()
                .map(|s| RechargeBonusView {
                    min_amount_fen: s.min_amount.0,
                    bonus_bp: s.bonus_bp,
                })
                .collect(),
            points_per_yuan: rules.points_per_yuan,
            point_value_fen: rules.point_value_fen,
            prepaid_cap_fen: rules.prepaid_cap.0,
            signup: SignupGiftView {
                points: rules.signup.points,
                stored_value_fen: rules.signup.stored_value.0,
                coupon_template_id: rules.signup.coupon_template,
            },
        }
    }

    /// The rule set this describes, as `version`, checked.
    pub fn to_rules(&self, version: u32) -> Result<Rules, InvalidRules> {
        let rules = Rules {
            version,
            tiers: self
                .tiers
                .iter()
                .map(|t| Tier {
                    name: t.name.trim().to_owned(),
                    spend_threshold: Fen(t.spend_threshold_fen),
                    discount_bp: t.discount_bp,
                    points_multiplier_pct: t.points_multiplier_pct,
                })
                .collect(),
            recharge_bonus: self
                .recharge_bonus
                .iter()
                .map(|s| RechargeBonusStep {
                    min_amount: Fen(s.min_amount_fen),
                    bonus_bp: s.bonus_bp,
                })
                .collect(),
            points_per_yuan: self.points_per_yuan,
            point_value_fen: self.point_value_fen,
            prepaid_cap: Fen(self.prepaid_cap_fen),
            signup: SignupGift {
                points: self.signup.points,
                stored_value: Fen(self.signup.stored_value_fen),
                coupon_template: self.signup.coupon_template_id,
            },
        };
        rules.validate()?;
        Ok(rules)
    }
}

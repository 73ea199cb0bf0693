//! The membership program's replicated state: HQ's rule set (highest version wins) and count
//! cards (templates, cards bought, uses). Every function here is idempotent and order-free.

use chainsync_core::count_card::{
    self, CountCardPurchase, CountCardTemplate, CountCardUse, CountCardUseReversal,
};
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::rules::v1::RulesV1;
use chainsync_core::rules::{
    Campaign, InvalidRules, RechargeBonusStep, Rules, RulesDocument, SignupGift, Tier,
};
use chainsync_core::tiers::{TierDowngrade, TierMetric};
use chainsync_core::{Fen, StoreId};
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

/// An original `RulesSet`: kept as the JSON of its frozen layout (what replicas always kept
/// for it, so the digest of an old rule set is unchanged).
pub fn project_rules(conn: &Connection, rules: &RulesV1) -> rusqlite::Result<()> {
    let body = serde_json::to_string(rules).unwrap_or_default();
    keep_rules(conn, rules.version, &body)
}

/// A `RulesSetV2`: its JSON text is kept as it came (unknown fields included, so every build
/// keeps the same bytes), if this build can read it (a document that is not a rule set is
/// never applied; the operation itself stays in the log).
pub fn project_rules_document(conn: &Connection, document: &RulesDocument) -> rusqlite::Result<()> {
    match document.rules() {
        Ok(_) => keep_rules(conn, document.version, &document.json),
        Err(e) => {
            tracing::warn!(version = document.version, error = %e, "rules document not applied");
            Ok(())
        }
    }
}

/// The highest (version, body) wins, so the kept row is the maximum over every rule set held,
/// whichever variant carried it: commutative, associative and idempotent, hence independent of
/// arrival order and of duplicates. (Bodies only break a tie no hub produces: one version each.)
fn keep_rules(conn: &Connection, version: u32, body: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO rules_config (id, version, body) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version, body = excluded.body
         WHERE excluded.version > rules_config.version
            OR (excluded.version = rules_config.version AND excluded.body > rules_config.body)",
    )?
    .execute(params![i64::from(version), body])?;
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
    /// Points earned over the rolling 12 months needed for this tier when `tier_metric` is
    /// `points` (the first tier at 0; default 0).
    #[serde(default)]
    pub points_threshold: i64,
}

/// The periods of the `period_end` downgrade policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierPeriodView {
    /// 1, 2, 3, 4, 6 or 12 (default 12: the calendar year), counted from January 1.
    #[serde(default = "default_period_months")]
    pub months: u32,
    /// The zone whose calendar cuts the periods for the whole chain (default `+08:00`).
    #[serde(default = "default_expiry_offset")]
    pub utc_offset: String,
}

fn default_period_months() -> u32 {
    chainsync_core::tiers::TierPeriod::default().months
}

impl Default for TierPeriodView {
    fn default() -> TierPeriodView {
        TierPeriodView::of(&chainsync_core::tiers::TierPeriod::default())
    }
}

impl TierPeriodView {
    fn of(period: &chainsync_core::tiers::TierPeriod) -> TierPeriodView {
        TierPeriodView {
            months: period.months,
            utc_offset: chainsync_core::engagement::format_utc_offset(period.utc_offset_seconds),
        }
    }

    fn to_period(&self) -> Result<chainsync_core::tiers::TierPeriod, InvalidRules> {
        let utc_offset_seconds = chainsync_core::engagement::parse_utc_offset(&self.utc_offset)
            .ok_or_else(|| {
                InvalidRules("tier_period.utc_offset is like +08:00 (-12:00 to +14:00)".into())
            })?;
        Ok(chainsync_core::tiers::TierPeriod {
            months: self.months,
            utc_offset_seconds,
        })
    }
}

fn default_tier_metric() -> String {
    "spend".into()
}

fn default_tier_downgrade() -> String {
    "rolling".into()
}

fn tier_metric_name(metric: TierMetric) -> String {
    match metric {
        TierMetric::Spend => "spend",
        TierMetric::Points => "points",
    }
    .into()
}

fn tier_downgrade_name(downgrade: TierDowngrade) -> String {
    match downgrade {
        TierDowngrade::Rolling => "rolling",
        TierDowngrade::PeriodEnd => "period_end",
        TierDowngrade::Never => "never",
    }
    .into()
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

/// The referral reward (老带新), given to both after the referee's first purchase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReferralRewardView {
    pub referrer_points: i64,
    pub referee_points: i64,
    /// Credited as bonus stored value (分).
    pub referrer_stored_value_fen: i64,
    pub referee_stored_value_fen: i64,
}

impl Default for ReferralRewardView {
    fn default() -> ReferralRewardView {
        ReferralRewardView::of(&chainsync_core::referral::ReferralReward::default())
    }
}

impl ReferralRewardView {
    fn of(reward: &chainsync_core::referral::ReferralReward) -> ReferralRewardView {
        ReferralRewardView {
            referrer_points: reward.referrer_points,
            referee_points: reward.referee_points,
            referrer_stored_value_fen: reward.referrer_stored_value.0,
            referee_stored_value_fen: reward.referee_stored_value.0,
        }
    }
}

/// Points expiry: points earned in calendar year Y (in `utc_offset`) expire at the end of year
/// Y + `years_kept`; spending takes the oldest points first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PointsExpiryView {
    /// 0 to 10 (1: the end of next year).
    pub years_kept: u32,
    /// The zone whose years count for the whole chain (default `+08:00`).
    #[serde(default = "default_expiry_offset")]
    pub utc_offset: String,
    /// An outbox reminder this many days before points expire (0 to 90, default 30; 0: none).
    #[serde(default = "default_remind_days")]
    pub remind_days_before: u32,
}

fn default_expiry_offset() -> String {
    chainsync_core::engagement::format_utc_offset(
        chainsync_core::engagement::default_utc_offset_seconds,
    )
}

fn default_remind_days() -> u32 {
    chainsync_core::points_expiry::PointsExpiryPolicy::default().remind_days_before
}

impl PointsExpiryView {
    fn of(policy: &chainsync_core::points_expiry::PointsExpiryPolicy) -> PointsExpiryView {
        PointsExpiryView {
            years_kept: policy.years_kept,
            utc_offset: chainsync_core::engagement::format_utc_offset(policy.utc_offset_seconds),
            remind_days_before: policy.remind_days_before,
        }
    }

    fn to_policy(&self) -> Result<chainsync_core::points_expiry::PointsExpiryPolicy, InvalidRules> {
        let utc_offset_seconds = chainsync_core::engagement::parse_utc_offset(&self.utc_offset)
            .ok_or_else(|| {
                InvalidRules("points_expiry.utc_offset is like +08:00 (-12:00 to +14:00)".into())
            })?;
        Ok(chainsync_core::points_expiry::PointsExpiryPolicy {
            years_kept: self.years_kept,
            utc_offset_seconds,
            remind_days_before: self.remind_days_before,
        })
    }
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
    /// Most prepaid principal (分, bonus not counted) a member may hold.
    pub prepaid_cap_fen: i64,
    #[serde(default)]
    pub signup: SignupGiftView,
    /// Absent: 200 points each, no stored value.
    #[serde(default)]
    pub referral: ReferralRewardView,
    /// Absent or null: points never expire.
    #[serde(default)]
    pub points_expiry: Option<PointsExpiryView>,
    /// Points campaigns; where several apply to a line, the highest multiplier applies.
    #[serde(default)]
    pub campaigns: Vec<CampaignView>,
    /// Product categories whose lines earn no points.
    #[serde(default)]
    pub points_excluded_categories: Vec<String>,
    /// What tier thresholds compare with: `spend` (default: net spend over the rolling 12
    /// months, `spend_threshold_fen`) or `points` (points earned over the rolling 12 months,
    /// `points_threshold`).
    #[serde(default = "default_tier_metric")]
    #[schema(example = "points")]
    pub tier_metric: String,
    /// When a tier may go down: `rolling` (default: it follows the metric every day),
    /// `period_end` (the highest tier reached in the current period is kept until it ends) or
    /// `never`.
    #[serde(default = "default_tier_downgrade")]
    #[schema(example = "period_end")]
    pub tier_downgrade: String,
    /// The periods of `period_end` (default: the calendar year at `+08:00`).
    #[serde(default)]
    pub tier_period: TierPeriodView,
}

/// A points campaign: lines earn `multiplier_pct` of their points (on top of the tier's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CampaignView {
    pub name: String,
    /// The store's local time, `YYYY-MM-DDTHH:MM`, inclusive.
    pub start: String,
    /// The store's local time, `YYYY-MM-DDTHH:MM`, exclusive.
    pub end: String,
    /// 100 to 1000 (200 = double points).
    pub multiplier_pct: i64,
    /// Store ids; empty: every store.
    #[serde(default)]
    pub stores: Vec<String>,
    /// Product categories; empty: every line.
    #[serde(default)]
    pub categories: Vec<String>,
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
                    points_threshold: t.points_threshold,
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
            referral: ReferralRewardView::of(&rules.referral),
            points_expiry: rules.points_expiry.as_ref().map(PointsExpiryView::of),
            campaigns: rules
                .campaigns
                .iter()
                .map(|c| CampaignView {
                    name: c.name.clone(),
                    start: c.start.clone(),
                    end: c.end.clone(),
                    multiplier_pct: c.multiplier_pct,
                    stores: c.stores.clone(),
                    categories: c.categories.clone(),
                })
                .collect(),
            points_excluded_categories: rules.points_excluded_categories.clone(),
            tier_metric: tier_metric_name(rules.tier_metric),
            tier_downgrade: tier_downgrade_name(rules.tier_downgrade),
            tier_period: TierPeriodView::of(&rules.tier_period),
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
                    points_threshold: t.points_threshold,
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
            referral: chainsync_core::referral::ReferralReward {
                referrer_points: self.referral.referrer_points,
                referee_points: self.referral.referee_points,
                referrer_stored_value: Fen(self.referral.referrer_stored_value_fen),
                referee_stored_value: Fen(self.referral.referee_stored_value_fen),
            },
            points_expiry: self
                .points_expiry
                .as_ref()
                .map(PointsExpiryView::to_policy)
                .transpose()?,
            campaigns: self
                .campaigns
                .iter()
                .map(|c| Campaign {
                    name: c.name.trim().to_owned(),
                    start: c.start.trim().to_owned(),
                    end: c.end.trim().to_owned(),
                    multiplier_pct: c.multiplier_pct,
                    stores: c.stores.iter().map(|s| s.trim().to_owned()).collect(),
                    categories: c.categories.iter().map(|s| s.trim().to_owned()).collect(),
                })
                .collect(),
            points_excluded_categories: self
                .points_excluded_categories
                .iter()
                .map(|s| s.trim().to_owned())
                .collect(),
            tier_metric: match self.tier_metric.trim() {
                "spend" => TierMetric::Spend,
                "points" => TierMetric::Points,
                _ => return Err(InvalidRules("tier_metric is spend or points".into())),
            },
            tier_downgrade: match self.tier_downgrade.trim() {
                "rolling" => TierDowngrade::Rolling,
                "period_end" => TierDowngrade::PeriodEnd,
                "never" => TierDowngrade::Never,
                _ => {
                    return Err(InvalidRules(
                        "tier_downgrade is rolling, period_end or never".into(),
                    ));
                }
            },
            tier_period: self.tier_period.to_period()?,
        };
        rules.validate()?;
        Ok(rules)
    }
}

/// Count cards: HQ's templates, cards bought, uses and use reversals.
pub const schema_v2: &str = r#"
CREATE TABLE count_card_templates (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    service TEXT NOT NULL,
    uses INTEGER NOT NULL,
    price_fen INTEGER NOT NULL,
    validity_days INTEGER NOT NULL,
    active INTEGER NOT NULL,
    hlc_wall_ms INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE count_cards (
    id TEXT PRIMARY KEY,
    template_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    name TEXT NOT NULL,
    service TEXT NOT NULL,
    uses INTEGER NOT NULL,
    price_fen INTEGER NOT NULL,
    method TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    rule_version INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX count_cards_member ON count_cards (member_id);

-- Every use; more live uses than the card has is an overuse (an exception at the hub).
CREATE TABLE count_card_uses (
    id TEXT PRIMARY KEY,
    card_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    note TEXT,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX count_card_uses_card ON count_card_uses (card_id);

-- Uses given back; one counts per use (the use id is the key of its first reversal).
CREATE TABLE count_card_use_reversals (
    id TEXT PRIMARY KEY,
    use_id TEXT NOT NULL,
    card_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    reason TEXT,
    at_ms INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX count_card_use_reversals_card ON count_card_use_reversals (card_id);
"#;

/// Last writer wins, by (HLC, origin).
pub fn project_count_card_template(
    conn: &Connection,
    template: &CountCardTemplate,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let Some(incoming) = crate::lww::winning_stamp(
        conn,
        "count_card_templates",
        &template.id.to_string(),
        hlc,
        origin,
    )?
    else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT INTO count_card_templates (id, name, service, uses, price_fen, validity_days,
             active, hlc_wall_ms, hlc_counter, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, service = excluded.service,
             uses = excluded.uses, price_fen = excluded.price_fen,
             validity_days = excluded.validity_days, active = excluded.active,
             hlc_wall_ms = excluded.hlc_wall_ms, hlc_counter = excluded.hlc_counter,
             origin = excluded.origin",
    )?
    .execute(params![
        template.id.to_string(),
        template.name,
        template.service,
        template.uses,
        template.price.0,
        template.validity_days,
        template.active,
        incoming.0,
        incoming.1,
        incoming.2,
    ])?;
    Ok(())
}

pub fn project_count_card_purchase(
    conn: &Connection,
    card: &CountCardPurchase,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO count_cards (id, template_id, member_id, name, service, uses,
             price_fen, method, at_ms, expires_ms, rule_version, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )?
    .execute(params![
        card.id.to_string(),
        card.template_id.to_string(),
        card.member_id.to_string(),
        card.name,
        card.service,
        card.uses,
        card.price.0,
        card.method,
        card.at_ms as i64,
        card.expires_ms.min(i64::MAX as u64) as i64,
        card.rule_version,
        origin.as_str(),
    ])?;
    Ok(())
}

pub fn project_count_card_use(
    conn: &Connection,
    card_use: &CountCardUse,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO count_card_uses (id, card_id, member_id, at_ms, note, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        card_use.id.to_string(),
        card_use.card_id.to_string(),
        card_use.member_id.to_string(),
        card_use.at_ms as i64,
        card_use.note,
        origin.as_str(),
    ])?;
    Ok(())
}

pub fn project_count_card_reversal(
    conn: &Connection,
    reversal: &CountCardUseReversal,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO count_card_use_reversals (id, use_id, card_id, member_id, reason,
             at_ms, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        reversal.id.to_string(),
        reversal.use_id.to_string(),
        reversal.card_id.to_string(),
        reversal.member_id.to_string(),
        reversal.reason,
        reversal.at_ms as i64,
        origin.as_str(),
    ])?;
    Ok(())
}

/// A card as a member's card list shows it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CountCardView {
    pub id: Uuid,
    pub template_id: Uuid,
    pub member_id: Uuid,
    pub name: String,
    pub service: String,
    pub uses: u32,
    /// Live uses (not given back).
    pub used: u64,
    /// May be below zero after uses at stores apart (an exception at the hub).
    pub remaining: i64,
    pub price_fen: i64,
    pub method: String,
    pub bought_ms: u64,
    pub expires_ms: u64,
    pub expired: bool,
    pub origin: String,
    pub rule_version: u32,
    /// Uses, newest first.
    pub history: Vec<CountCardUseView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CountCardUseView {
    pub id: Uuid,
    pub origin: String,
    pub at_ms: u64,
    pub note: Option<String>,
    /// Given back (refunded).
    pub reversed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CountCardList {
    pub count_cards: Vec<CountCardView>,
}

/// One card with its history, or None.
pub fn count_card(
    conn: &Connection,
    card_id: Uuid,
    now_ms: u64,
) -> rusqlite::Result<Option<CountCardView>> {
    let row = conn
        .prepare_cached(
            "SELECT id, template_id, member_id, name, service, uses, price_fen, method, at_ms,
                expires_ms, origin, rule_version FROM count_cards WHERE id = ?1",
        )?
        .query_row([card_id.to_string()], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, String>(4)?,
                row.get::<_, u32>(5)?,
                row.get::<_, i64>(6)?,
                row.get::<_, String>(7)?,
                row.get::<_, i64>(8)?,
                row.get::<_, i64>(9)?,
                row.get::<_, String>(10)?,
                row.get::<_, u32>(11)?,
            ))
        })
        .optional()?;
    let Some((id, template, member, name, service, uses, price, method, at, expires, origin, rv)) =
        row
    else {
        return Ok(None);
    };
    let mut history = Vec::new();
    let mut statement = conn.prepare_cached(
        "SELECT u.id, u.origin, u.at_ms, u.note,
            EXISTS (SELECT 1 FROM count_card_use_reversals r WHERE r.use_id = u.id)
         FROM count_card_uses u WHERE u.card_id = ?1 ORDER BY u.at_ms DESC, u.id DESC",
    )?;
    let mut rows = statement.query([card_id.to_string()])?;
    while let Some(row) = rows.next()? {
        let use_id: String = row.get(0)?;
        history.push(CountCardUseView {
            id: Uuid::parse_str(&use_id).unwrap_or_default(),
            origin: row.get(1)?,
            at_ms: row.get::<_, i64>(2)?.max(0) as u64,
            note: row.get(3)?,
            reversed: row.get(4)?,
        });
    }
    let used = history.iter().filter(|u| !u.reversed).count() as u64;
    let expires_ms = expires.max(0) as u64;
    Ok(Some(CountCardView {
        id: Uuid::parse_str(&id).unwrap_or_default(),
        template_id: Uuid::parse_str(&template).unwrap_or_default(),
        member_id: Uuid::parse_str(&member).unwrap_or_default(),
        name,
        service,
        uses,
        used,
        remaining: count_card::remaining(uses, used, 0),
        price_fen: price,
        method,
        bought_ms: at.max(0) as u64,
        expires_ms,
        expired: now_ms > expires_ms,
        origin,
        rule_version: rv,
        history,
    }))
}

/// A member's cards (the member's merge group), newest first.
pub fn member_count_cards(
    conn: &Connection,
    canonical: Uuid,
    now_ms: u64,
) -> rusqlite::Result<Vec<CountCardView>> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT id FROM count_cards WHERE member_id IN
                (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)
             ORDER BY at_ms DESC, id DESC LIMIT 500",
        )?
        .query_map([canonical.to_string()], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut cards = Vec::with_capacity(ids.len());
    for id in ids {
        if let Ok(id) = Uuid::parse_str(&id)
            && let Some(card) = count_card(conn, id, now_ms)?
        {
            cards.push(card);
        }
    }
    Ok(cards)
}

/// A template as listed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CountCardTemplateView {
    pub id: Uuid,
    pub name: String,
    pub service: String,
    pub uses: u32,
    pub price_fen: i64,
    pub validity_days: u32,
    pub active: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct CountCardTemplateList {
    pub templates: Vec<CountCardTemplateView>,
}

pub fn count_card_templates(conn: &Connection) -> rusqlite::Result<Vec<CountCardTemplateView>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, name, service, uses, price_fen, validity_days, active
         FROM count_card_templates ORDER BY name, id LIMIT 500",
    )?;
    let rows = statement.query_map([], |row| {
        let id: String = row.get(0)?;
        Ok(CountCardTemplateView {
            id: Uuid::parse_str(&id).unwrap_or_default(),
            name: row.get(1)?,
            service: row.get(2)?,
            uses: row.get(3)?,
            price_fen: row.get(4)?,
            validity_days: row.get(5)?,
            active: row.get(6)?,
        })
    })?;
    rows.collect()
}

pub fn count_card_template(
    conn: &Connection,
    id: Uuid,
) -> rusqlite::Result<Option<CountCardTemplateView>> {
    Ok(count_card_templates_where(conn, id)?.into_iter().next())
}

fn count_card_templates_where(
    conn: &Connection,
    id: Uuid,
) -> rusqlite::Result<Vec<CountCardTemplateView>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, name, service, uses, price_fen, validity_days, active
         FROM count_card_templates WHERE id = ?1",
    )?;
    let rows = statement.query_map([id.to_string()], |row| {
        let id: String = row.get(0)?;
        Ok(CountCardTemplateView {
            id: Uuid::parse_str(&id).unwrap_or_default(),
            name: row.get(1)?,
            service: row.get(2)?,
            uses: row.get(3)?,
            price_fen: row.get(4)?,
            validity_days: row.get(5)?,
            active: row.get(6)?,
        })
    })?;
    rows.collect()
}

/// Line-level refunds: which lines and units each refund covered.
pub const schema_v3: &str = r#"
CREATE TABLE refund_lines (
    refund_id TEXT NOT NULL,
    sale_id TEXT NOT NULL,
    line INTEGER NOT NULL,
    qty INTEGER NOT NULL,
    origin TEXT NOT NULL,
    PRIMARY KEY (refund_id, line)
) WITHOUT ROWID;
CREATE INDEX refund_lines_sale ON refund_lines (sale_id);
"#;

pub fn project_refund_lines(
    conn: &Connection,
    lines: &chainsync_core::refund::RefundLines,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(
        "INSERT OR IGNORE INTO refund_lines (refund_id, sale_id, line, qty, origin)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for (line, qty) in &lines.lines {
        statement.execute(params![
            lines.refund_id.to_string(),
            lines.sale_id.to_string(),
            line,
            qty,
            origin.as_str(),
        ])?;
    }
    Ok(())
}

/// Units refunded so far per line of a sale (`lines` long).
pub fn refunded_qty(conn: &Connection, sale_id: Uuid, lines: usize) -> rusqlite::Result<Vec<i64>> {
    let mut qty = vec![0i64; lines];
    let mut statement = conn.prepare_cached(
        "SELECT line, SUM(qty) FROM refund_lines WHERE sale_id = ?1 GROUP BY line",
    )?;
    let mut rows = statement.query([sale_id.to_string()])?;
    while let Some(row) = rows.next()? {
        let line: i64 = row.get(0)?;
        let units: i64 = row.get(1)?;
        if let Some(slot) = usize::try_from(line).ok().and_then(|l| qty.get_mut(l)) {
            *slot = units;
        }
    }
    Ok(qty)
}

/// The points gift catalog and its redemptions.
pub const schema_v4: &str = r#"
CREATE TABLE gifts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    points_price INTEGER NOT NULL,
    stock INTEGER NOT NULL,
    active INTEGER NOT NULL,
    hlc_wall_ms INTEGER NOT NULL,
    hlc_counter INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE gift_redemptions (
    id TEXT PRIMARY KEY,
    gift_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    qty INTEGER NOT NULL,
    points INTEGER NOT NULL,
    entry_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX gift_redemptions_gift ON gift_redemptions (gift_id);
"#;

/// Last writer wins, by (HLC, origin).
pub fn project_gift(
    conn: &Connection,
    gift: &chainsync_core::gift::Gift,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let Some(incoming) =
        crate::lww::winning_stamp(conn, "gifts", &gift.id.to_string(), hlc, origin)?
    else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT INTO gifts (id, name, points_price, stock, active, hlc_wall_ms, hlc_counter, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name,
             points_price = excluded.points_price, stock = excluded.stock,
             active = excluded.active, hlc_wall_ms = excluded.hlc_wall_ms,
             hlc_counter = excluded.hlc_counter, origin = excluded.origin",
    )?
    .execute(params![
        gift.id.to_string(),
        gift.name,
        gift.points_price,
        gift.stock,
        gift.active,
        incoming.0,
        incoming.1,
        incoming.2,
    ])?;
    Ok(())
}

pub fn project_gift_redemption(
    conn: &Connection,
    redemption: &chainsync_core::gift::GiftRedemption,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO gift_redemptions (id, gift_id, member_id, qty, points, entry_id,
             at_ms, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        redemption.id.to_string(),
        redemption.gift_id.to_string(),
        redemption.member_id.to_string(),
        redemption.qty,
        redemption.points,
        redemption.entry_id.to_string(),
        redemption.at_ms as i64,
        origin.as_str(),
    ])?;
    Ok(())
}

/// A gift as listed, with the stock left.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GiftView {
    pub id: Uuid,
    pub name: String,
    pub points_price: i64,
    pub stock: i64,
    /// Stock minus every redemption held here (below zero after redemptions at stores apart).
    pub stock_left: i64,
    pub active: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GiftList {
    pub gifts: Vec<GiftView>,
}

fn gifts_where(conn: &Connection, only: Option<Uuid>) -> rusqlite::Result<Vec<GiftView>> {
    let mut statement = conn.prepare_cached(
        "SELECT g.id, g.name, g.points_price, g.stock, g.active,
            (SELECT COALESCE(SUM(r.qty), 0) FROM gift_redemptions r WHERE r.gift_id = g.id)
         FROM gifts g WHERE ?1 IS NULL OR g.id = ?1 ORDER BY g.name, g.id LIMIT 500",
    )?;
    let rows = statement.query_map([only.map(|id| id.to_string())], |row| {
        let id: String = row.get(0)?;
        let stock: i64 = row.get(3)?;
        let redeemed: i64 = row.get(5)?;
        Ok(GiftView {
            id: Uuid::parse_str(&id).unwrap_or_default(),
            name: row.get(1)?,
            points_price: row.get(2)?,
            stock,
            stock_left: chainsync_core::gift::stock_left(stock, redeemed),
            active: row.get(4)?,
        })
    })?;
    rows.collect()
}

pub fn gifts(conn: &Connection) -> rusqlite::Result<Vec<GiftView>> {
    gifts_where(conn, None)
}

pub fn gift(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<GiftView>> {
    Ok(gifts_where(conn, Some(id))?.into_iter().next())
}

/// Feedback entries (反馈) about members' visits.
pub const schema_v5: &str = r#"
CREATE TABLE feedback (
    id TEXT PRIMARY KEY,
    member_id TEXT NOT NULL,
    rating INTEGER NOT NULL,
    text TEXT NOT NULL,
    checkout_id TEXT,
    at_ms INTEGER NOT NULL,
    origin TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX feedback_member ON feedback (member_id, at_ms);
"#;

/// A grow-only set by id.
pub fn project_feedback(
    conn: &Connection,
    feedback: &chainsync_core::feedback::Feedback,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO feedback (id, member_id, rating, text, checkout_id, at_ms, origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        feedback.id.to_string(),
        feedback.member_id.to_string(),
        feedback.rating,
        feedback.text,
        feedback.checkout_id.map(|id| id.to_string()),
        feedback.at_ms.min(i64::MAX as u64) as i64,
        origin.as_str(),
    ])?;
    Ok(())
}

/// One feedback entry as the member's record lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FeedbackView {
    pub id: Uuid,
    pub member_id: Uuid,
    /// 1 to 5.
    pub rating: u8,
    pub text: String,
    pub checkout_id: Option<Uuid>,
    /// The store where it was given.
    pub store_id: String,
    pub created_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct FeedbackList {
    pub feedback: Vec<FeedbackView>,
}

/// Most feedback entries one member listing returns.
pub const feedback_list_max: usize = 200;

/// The feedback of a member's group (itself and the members merged into it), newest first.
pub fn member_feedback(
    conn: &Connection,
    canonical: Uuid,
    limit: usize,
) -> rusqlite::Result<Vec<FeedbackView>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, member_id, rating, text, checkout_id, origin, at_ms FROM feedback
         WHERE member_id IN (SELECT id FROM members WHERE id = ?1 OR merged_into = ?1)
         ORDER BY at_ms DESC, id DESC LIMIT ?2",
    )?;
    let rows = statement.query_map(
        params![canonical.to_string(), limit.min(feedback_list_max) as i64],
        |row| {
            let id: String = row.get(0)?;
            let member: String = row.get(1)?;
            let checkout: Option<String> = row.get(4)?;
            Ok(FeedbackView {
                id: Uuid::parse_str(&id).unwrap_or_default(),
                member_id: Uuid::parse_str(&member).unwrap_or_default(),
                rating: row.get(2)?,
                text: row.get(3)?,
                checkout_id: checkout.and_then(|c| Uuid::parse_str(&c).ok()),
                store_id: row.get(5)?,
                created_ms: row.get::<_, i64>(6)?.max(0) as u64,
            })
        },
    )?;
    rows.collect()
}

/// Points earned per line of a sale (`SalePoints`).
pub const schema_v6: &str = r#"
CREATE TABLE sale_points (
    sale_id TEXT PRIMARY KEY,
    rule_version INTEGER NOT NULL,
    lines_json TEXT NOT NULL
) WITHOUT ROWID;
"#;

/// Written once, with its sale, by the selling store: the first one held is kept (a second
/// one for a sale is never written, so any order gives the same row).
pub fn project_sale_points(
    conn: &Connection,
    points: &chainsync_core::op::SalePoints,
) -> rusqlite::Result<()> {
    let lines = serde_json::to_string(&points.lines).unwrap_or_default();
    conn.prepare_cached(
        "INSERT OR IGNORE INTO sale_points (sale_id, rule_version, lines_json) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![
        points.sale_id.to_string(),
        i64::from(points.rule_version),
        lines
    ])?;
    Ok(())
}

/// A sale's points per line, if it recorded them.
pub fn sale_line_points(conn: &Connection, sale_id: Uuid) -> rusqlite::Result<Option<Vec<i64>>> {
    let lines: Option<String> = conn
        .prepare_cached("SELECT lines_json FROM sale_points WHERE sale_id = ?1")?
        .query_row([sale_id.to_string()], |row| row.get(0))
        .optional()?;
    Ok(lines.and_then(|lines| serde_json::from_str(&lines).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(schema_v1).unwrap();
        conn
    }

    fn kept(conn: &Connection) -> Option<(i64, String)> {
        conn.query_row("SELECT version, body FROM rules_config", [], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .optional()
        .unwrap()
    }

    /// A rule set of `version`, carried by either variant; a V2 one names a field this build
    /// does not know.
    fn rule_set(version: u32, as_v2: bool) -> Result<RulesDocument, RulesV1> {
        let rules = Rules {
            version,
            prepaid_cap: Fen(1_000 * i64::from(version)),
            ..Rules::default()
        };
        if as_v2 {
            let mut json: serde_json::Value =
                serde_json::from_str(&RulesDocument::of(&rules).json).unwrap();
            json["rule_from_a_later_build"] = serde_json::json!({"pct": 150});
            Ok(RulesDocument {
                version,
                json: json.to_string(),
            })
        } else {
            Err(RulesV1::of(&rules))
        }
    }

    fn apply(conn: &Connection, set: &Result<RulesDocument, RulesV1>) {
        match set {
            Ok(document) => project_rules_document(conn, document).unwrap(),
            Err(old) => project_rules(conn, old).unwrap(),
        }
    }

    #[test]
    fn old_and_new_rule_sets_both_apply_and_the_highest_version_wins() {
        let conn = open();
        assert_eq!(rules(&conn).unwrap(), Rules::default());
        apply(&conn, &rule_set(2, false));
        assert_eq!(rules_version(&conn).unwrap(), 2);
        assert_eq!(rules(&conn).unwrap().prepaid_cap, Fen(2_000));
        let v3 = rule_set(3, true);
        apply(&conn, &v3);
        assert_eq!(rules_version(&conn).unwrap(), 3);
        assert_eq!(rules(&conn).unwrap().prepaid_cap, Fen(3_000));
        // Kept as it came, the field this build does not know included.
        let body = kept(&conn).unwrap().1;
        assert_eq!(body, v3.clone().unwrap().json);
        assert!(body.contains("rule_from_a_later_build"));
        // An older set arriving late, by either variant, does not replace it.
        apply(&conn, &rule_set(2, true));
        apply(&conn, &rule_set(1, false));
        assert_eq!(rules_version(&conn).unwrap(), 3);
        // A document that is not a rule set is never applied.
        let garbage = RulesDocument {
            version: 9,
            json: "{\"version\":9}".into(),
        };
        project_rules_document(&conn, &garbage).unwrap();
        assert_eq!(rules_version(&conn).unwrap(), 3);
    }

    proptest! {
        /// Whatever the order and duplicates, every replica keeps the same row: the maximum.
        #[test]
        fn the_kept_rule_set_is_independent_of_arrival_order(
            (sets, order) in proptest::collection::vec((1u32..6, any::<bool>()), 1..8)
                .prop_flat_map(|sets| {
                    let order: Vec<usize> = (0..sets.len()).collect();
                    (Just(sets), Just(order).prop_shuffle())
                }),
        ) {
            let sets: Vec<_> = sets.into_iter().map(|(v, as_v2)| rule_set(v, as_v2)).collect();
            let forward = open();
            for set in &sets {
                apply(&forward, set);
            }
            // Another order, with duplicates.
            let shuffled = open();
            for &i in order.iter().chain(order.iter().take(2)) {
                apply(&shuffled, &sets[i]);
            }
            prop_assert_eq!(kept(&forward), kept(&shuffled));
            let highest = sets.iter().map(|s| match s {
                Ok(d) => d.version,
                Err(o) => o.version,
            }).max().unwrap();
            prop_assert_eq!(rules_version(&shuffled).unwrap(), highest);
        }
    }
}

//! Coupons at the store: checking the coupons of a checkout against their templates' rules
//! (`chainsync_core::coupon::check_redeem`), issuing coupons through the store's channels
//! (signup, 满X送Y at checkout, check-in streak, birthday, per-store pool claims, lottery
//! prizes), transfers between members, chain-wide pool claims decided by the hub (asked on
//! the sync session, so refused offline), expiry reminders to the outbox, and the routes.
//!
//! Every write runs in the writer's transaction and emits replicated operations; the rules
//! are HQ's templates (`coupon_templates`, `chainsync_replica::coupons`).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chainsync_core::checkout::{CouponUse, PricedLine};
use chainsync_core::coupon::{
    self as rules, Channel, CouponFacts, CouponInstance, CouponTemplateV2, CouponTransfer,
    LotteryDraw, PoolScope, RedeemContext, Refusal,
};
use chainsync_core::op::OpV1;
use chainsync_core::rules::Tier;
use chainsync_core::{Fen, limits};
use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::coupons::{
    self as replica, CouponList, CouponView, LotteryList, LotteryView, TemplateList, TemplateView,
};
use chainsync_replica::read;
use chainsync_replica::views::{ErrorBody, MemberView};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::commands::{Authority, Local};
use crate::http::{AppState, Caller, member_id};
use chainsync_replica::posted::Posted;

/// At most this many coupons in one checkout.
pub const checkout_coupons_max: usize = 8;
/// Reminders go out for coupons that end within this many days.
pub const expiry_reminder_days: u64 = 3;
const day_ms: u64 = 86_400_000;

fn refusal(refusal: Refusal) -> ApiError {
    ApiError::new(refusal.status(), refusal.code(), refusal.to_string())
}

fn unknown_template() -> ApiError {
    ApiError::new(
        404,
        "unknown_coupon_template",
        "no coupon template with this id",
    )
}

/// Check the coupons of a checkout; returns what each takes off.
#[allow(clippy::too_many_arguments)]
pub fn for_checkout(
    conn: &Connection,
    store: &str,
    codes: &[String],
    member_id: Option<Uuid>,
    lines: &[PricedLine],
    tier: Option<&Tier>,
    authority: Authority,
    utc_offset_seconds: i32,
    now_ms: u64,
) -> Result<Vec<CouponUse>, ApiError> {
    if codes.is_empty() {
        return Ok(Vec::new());
    }
    if codes.len() > checkout_coupons_max {
        return Err(ApiError::invalid_field("at most 8 coupons per checkout"));
    }
    let total = chainsync_core::checkout::total_after_tier(lines, tier)?;
    let group = match member_id {
        Some(member) => read::member_group(conn, member)?,
        None => Vec::new(),
    };
    let offset = utc_offset_seconds;
    let mut seen = std::collections::BTreeSet::new();
    let mut per_template: std::collections::BTreeMap<Uuid, u32> = Default::default();
    let mut uses = Vec::with_capacity(codes.len());
    for code in codes {
        if !seen.insert(code.as_str()) {
            return Err(ApiError::invalid_field(format!(
                "coupon {code} is listed twice"
            )));
        }
        let unknown = || refusal(Refusal::Unknown { code: code.clone() });
        let row = replica::coupon(conn, code)?.ok_or_else(unknown)?;
        let template = replica::template(conn, row.template_id)?.ok_or_else(unknown)?;
        let owner = match row.owner_id {
            Some(owner) => Some(read::canonical_member(conn, owner)?.unwrap_or(owner)),
            None => None,
        };
        let earlier = per_template.entry(template.id).or_default();
        let member_redemptions = if member_id.is_some() {
            replica::member_redemptions(conn, template.id, &group)?.saturating_add(*earlier)
        } else {
            0
        };
        *earlier += 1;
        let facts = CouponFacts {
            code,
            template: &template,
            valid_from_ms: row.valid_from_ms,
            valid_until_ms: row.valid_until_ms,
            owner,
            redeemed: row.redeemed,
            member_redemptions,
        };
        let ctx = RedeemContext {
            now_ms,
            utc_offset_seconds: offset,
            store,
            member: member_id,
            total,
            lines,
            coupons_in_checkout: codes.len(),
            offline: authority == Authority::Offline,
        };
        let value = rules::check_redeem(&facts, &ctx).map_err(refusal)?;
        uses.push(CouponUse {
            value,
            min_spend: template.min_spend,
        });
    }
    Ok(uses)
}

/// The coupon rules checked on a read connection before the hub is asked to hold a checkout's
/// coupons, so that a coupon refused here (minimum spend, hours…) is not held at the hub for a
/// checkout that will never be written. Problems other than coupons are left to the checkout.
pub fn precheck(
    conn: &Connection,
    store: &str,
    request: &chainsync_replica::views::NewCheckout,
    utc_offset_seconds: i32,
    now_ms: u64,
) -> Result<(), ApiError> {
    if request.coupons.is_empty() {
        return Ok(());
    }
    let mut lines = Vec::with_capacity(request.lines.len());
    for line in request.lines.iter().take(limits::checkout_lines_max) {
        let (Some(qty), Some(product)) = (line.qty.0, read::product(conn, &line.sku)?) else {
            return Ok(());
        };
        if !(1..=limits::line_qty_max).contains(&qty) {
            return Ok(());
        }
        lines.push(PricedLine {
            sku: product.sku,
            name: product.name,
            qty,
            unit_price: Fen(product.price_fen),
        });
    }
    let member_id = match request.member_id {
        Some(id) => match read::canonical_member(conn, id)? {
            Some(id) => Some(id),
            None => return Ok(()),
        },
        None => None,
    };
    let tier = match member_id {
        Some(member) => {
            let rules = chainsync_replica::program::rules(conn)?;
            Some(read::member_tier(conn, member, &rules, now_ms)?)
        }
        None => None,
    };
    for_checkout(
        conn,
        store,
        &request.coupons,
        member_id,
        &lines,
        tier.as_ref(),
        Authority::Online,
        utc_offset_seconds,
        now_ms,
    )
    .map(|_| ())
}

/// Issue one coupon of `template` (its validity fixed now). `key`: a name that gives the same
/// code wherever it is decided (then a second issue of it is skipped); else a random code.
#[allow(clippy::too_many_arguments)]
pub fn issue(
    conn: &Connection,
    local: &mut Local,
    template: &CouponTemplateV2,
    member_id: Option<Uuid>,
    channel: Channel,
    key: Option<&str>,
    pool_store: Option<String>,
    now_ms: u64,
) -> Result<Option<CouponInstance>, ApiError> {
    let code = match key {
        Some(key) => {
            let code = rules::code_from_key(key);
            if replica::coupon(conn, &code)?.is_some() {
                return Ok(None);
            }
            code
        }
        None => {
            let mut found = None;
            for _ in 0..8 {
                let random = crate::random_bytes::<8>().map_err(ApiError::internal)?;
                let code = rules::code_from_random(random);
                if replica::coupon(conn, &code)?.is_none() {
                    found = Some(code);
                    break;
                }
            }
            found.ok_or_else(|| ApiError::internal("could not find a free coupon code"))?
        }
    };
    let (valid_from_ms, valid_until_ms) = template.valid_between(now_ms);
    let coupon = CouponInstance {
        code,
        template_id: template.id,
        member_id,
        channel,
        issued_ms: now_ms,
        valid_from_ms,
        valid_until_ms,
        pool_store,
    };
    let envelope = local.emit(conn, now_ms, OpV1::CouponIssueV2(coupon.clone()))?;
    replica::project_issue_v2(conn, &coupon, envelope.hlc, &envelope.origin)?;
    Ok(Some(coupon))
}

fn usable_here(template: &CouponTemplateV2, local: &Local) -> bool {
    template.active
        && (template.stores.is_empty() || template.stores.iter().any(|s| s == local.store.as_str()))
}

/// The signup gift's coupon (a template of either version).
pub fn issue_signup(
    conn: &Connection,
    local: &mut Local,
    template_id: Uuid,
    member_id: Uuid,
    now_ms: u64,
) -> Result<bool, ApiError> {
    let Some(template) = replica::template(conn, template_id)? else {
        return Ok(false);
    };
    let key = format!("signup:{template_id}:{member_id}");
    issue(
        conn,
        local,
        &template,
        Some(member_id),
        Channel::Signup,
        Some(&key),
        None,
        now_ms,
    )?;
    Ok(true)
}

/// 满X送Y: the coupons a member's checkout of `total` earns (in the checkout's transaction).
pub fn spend_rewards(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    sale_id: Uuid,
    total: Fen,
    now_ms: u64,
) -> Result<Vec<String>, ApiError> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "SELECT id FROM coupon_templates WHERE spend_trigger_fen IS NOT NULL
               AND spend_trigger_fen <= ?1 AND active = 1 ORDER BY id",
        )?
        .query_map([total.0], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut codes = Vec::new();
    for id in ids {
        let Ok(id) = Uuid::parse_str(&id) else {
            continue;
        };
        let Some(template) = replica::template(conn, id)? else {
            continue;
        };
        if !usable_here(&template, local) {
            continue;
        }
        let key = format!("spend:{sale_id}:{id}");
        if let Some(coupon) = issue(
            conn,
            local,
            &template,
            Some(member_id),
            Channel::Spend,
            Some(&key),
            None,
            now_ms,
        )? {
            codes.push(coupon.code);
        }
    }
    Ok(codes)
}

fn templates_where(conn: &Connection, flag: &str) -> Result<Vec<CouponTemplateV2>, ApiError> {
    Ok(replica::templates(conn)?
        .into_iter()
        .filter(|t| {
            t.active
                && match flag {
                    "streak" => t.issue_on_checkin_streak,
                    _ => t.issue_on_birthday,
                }
        })
        .collect())
}

/// Coupons for a check-in streak reward (once per template, member and day).
pub fn on_checkin_streak(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    date: &str,
    now_ms: u64,
) -> Result<Vec<String>, ApiError> {
    let mut codes = Vec::new();
    for template in templates_where(conn, "streak")? {
        let key = format!("streak:{}:{member_id}:{date}", template.id);
        if let Some(c) = issue(
            conn,
            local,
            &template,
            Some(member_id),
            Channel::CheckInStreak,
            Some(&key),
            None,
            now_ms,
        )? {
            codes.push(c.code);
        }
    }
    Ok(codes)
}

/// Birthday coupons: the code is derived from template, member and year, so stores that both
/// run the birthday check give the member one coupon (the issue with the smallest HLC stays).
pub fn on_birthday(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    year: i32,
    now_ms: u64,
) -> Result<usize, ApiError> {
    let mut issued = 0;
    for template in templates_where(conn, "birthday")? {
        let key = format!("birthday:{}:{member_id}:{year}", template.id);
        if issue(
            conn,
            local,
            &template,
            Some(member_id),
            Channel::Birthday,
            Some(&key),
            None,
            now_ms,
        )?
        .is_some()
        {
            issued += 1;
        }
    }
    Ok(issued)
}

/// Queue one reminder per member coupon that ends within [`expiry_reminder_days`] and is not
/// used (message id `coupon_expiry:<code>`: once per coupon, the same at every store).
pub fn expiry_reminders(conn: &Connection, now_ms: u64) -> Result<usize, ApiError> {
    let horizon = now_ms.saturating_add(expiry_reminder_days * day_ms);
    let rows: Vec<(String, String, i64, String)> = conn
        .prepare_cached(
            "SELECT c.code, c.owner_id, c.valid_until_ms, COALESCE(t.name, '') FROM coupons c
             LEFT JOIN coupon_templates t ON t.id = c.template_id
             WHERE c.valid_until_ms IS NOT NULL AND c.valid_until_ms > ?1
               AND c.valid_until_ms <= ?2 AND c.owner_id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM coupon_redemptions r WHERE r.code = c.code)
             ORDER BY c.code LIMIT 10000",
        )?
        .query_map((now_ms as i64, horizon as i64), |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut queued = 0;
    for (code, owner, until, name) in rows {
        let member = Uuid::parse_str(&owner).ok();
        let data = serde_json::json!({
            "code": code, "member_id": member, "template_name": name, "valid_until_ms": until,
        });
        if crate::outbox::enqueue(
            conn,
            &format!("coupon_expiry:{code}"),
            "coupon_expiry_reminder",
            member,
            &data,
            now_ms,
        )? {
            queued += 1;
        }
    }
    Ok(queued)
}

// ---- writes behind routes ----

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTransfer {
    /// The member giving the coupon (checked against the owner when given).
    pub from_member_id: Option<Uuid>,
    /// The member receiving it (or `to_phone`).
    pub to_member_id: Option<Uuid>,
    pub to_phone: Option<String>,
}

pub fn transfer(
    conn: &Connection,
    local: &mut Local,
    code: String,
    request: NewTransfer,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let row = replica::coupon(conn, &code)?
        .ok_or_else(|| refusal(Refusal::Unknown { code: code.clone() }))?;
    let canonical = |id: Uuid| -> Result<Uuid, ApiError> {
        read::canonical_member(conn, id)?.ok_or_else(ApiError::unknown_member)
    };
    let owner = match row.owner_id {
        Some(owner) => canonical(owner)?,
        None => {
            return Err(ApiError::new(
                422,
                "coupon_not_owner",
                format!("coupon {code} belongs to no member: it cannot be given"),
            ));
        }
    };
    if let Some(from) = request.from_member_id
        && canonical(from)? != owner
    {
        return Err(refusal(Refusal::NotOwner { code }));
    }
    if row.redeemed {
        return Err(refusal(Refusal::AlreadyRedeemed { code }));
    }
    if now_ms >= row.valid_until_ms {
        return Err(refusal(Refusal::Expired { code }));
    }
    let to = match (request.to_member_id, request.to_phone.as_deref()) {
        (Some(id), None) => canonical(id)?,
        (None, Some(phone)) => {
            let phone = chainsync_core::member::normalize_phone(phone)?;
            let found: Option<String> = rusqlite::OptionalExtension::optional(conn.query_row(
                "SELECT COALESCE(merged_into, id) FROM members WHERE phone = ?1 LIMIT 1",
                [phone],
                |row| row.get(0),
            ))?;
            found
                .and_then(|id| Uuid::parse_str(&id).ok())
                .ok_or_else(ApiError::unknown_member)?
        }
        _ => {
            return Err(ApiError::invalid_field(
                "give to_member_id or to_phone (one of them)",
            ));
        }
    };
    if to == owner {
        return Err(ApiError::invalid_field(
            "the coupon already belongs to this member",
        ));
    }
    // The owner as this replica stores it (the transfer fold compares stored ids).
    let stored_owner = row.owner_id.unwrap_or(owner);
    let record = CouponTransfer {
        id: local.new_id(now_ms)?,
        code: code.clone(),
        from_member: stored_owner,
        to_member: to,
        at_ms: now_ms,
    };
    let envelope = local.emit(conn, now_ms, OpV1::CouponTransfer(record.clone()))?;
    replica::project_transfer(conn, &record, &envelope.origin)?;
    let row = replica::coupon(conn, &code)?.ok_or_else(|| ApiError::internal("coupon gone"))?;
    crate::outbox::enqueue(
        conn,
        &format!("coupon_transfer:{}", record.id),
        "coupon_received",
        Some(to),
        &serde_json::json!({"code": code, "from_member_id": owner, "to_member_id": to}),
        now_ms,
    )?;
    Reply::new(201, &replica::coupon_view(conn, &row, now_ms)?)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClaim {
    pub template_id: Uuid,
}

/// A claim from a template's pool counted at this store (a per-store pool, or any pool at a
/// standalone store, which is the whole chain).
fn claim_here(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    template_id: Uuid,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let template = replica::template(conn, template_id)?.ok_or_else(unknown_template)?;
    let pool = claimable(&template)?;
    let taken: i64 = match pool.scope {
        PoolScope::PerStore => conn.query_row(
            "SELECT COUNT(*) FROM coupons WHERE template_id = ?1 AND channel = 'claim'
               AND pool_store = ?2",
            (template_id.to_string(), local.store.as_str()),
            |r| r.get(0),
        )?,
        PoolScope::ChainWide => conn.query_row(
            "SELECT COUNT(*) FROM coupons WHERE template_id = ?1 AND channel = 'claim'",
            [template_id.to_string()],
            |r| r.get(0),
        )?,
    };
    if taken >= i64::from(pool.size) {
        return Err(pool_empty());
    }
    let group = read::member_group(conn, member_id)?;
    if template.per_member_limit > 0
        && replica::member_issued(conn, template_id, &group)? >= template.per_member_limit
    {
        return Err(refusal(Refusal::MemberLimit {
            limit: template.per_member_limit,
        }));
    }
    let pool_store = (pool.scope == PoolScope::PerStore).then(|| local.store.to_string());
    let coupon = issue(
        conn,
        local,
        &template,
        Some(member_id),
        Channel::Claim,
        None,
        pool_store,
        now_ms,
    )?
    .ok_or_else(|| ApiError::internal("no coupon issued"))?;
    let row = replica::coupon(conn, &coupon.code)?.ok_or_else(|| ApiError::internal("gone"))?;
    Reply::new(
        201,
        &ClaimView::of(replica::coupon_view(conn, &row, now_ms)?),
    )
}

fn pool_empty() -> ApiError {
    ApiError::new(
        409,
        "coupon_pool_empty",
        "every coupon of this pool is taken",
    )
}

fn claimable(template: &CouponTemplateV2) -> Result<chainsync_core::coupon::ClaimPool, ApiError> {
    match template.pool {
        Some(pool) if template.active => Ok(pool),
        _ => Err(ApiError::new(
            422,
            "coupon_not_claimable",
            "this template has no pool members can claim from",
        )),
    }
}

/// `POST /api/v1/members/{id}/coupon-claims`
#[derive(Debug, Serialize, ToSchema)]
pub struct ClaimView {
    pub code: String,
    pub template_id: Uuid,
    pub member_id: Uuid,
    /// `here` (written at this store) or `hq` (decided and written at HQ: the coupon reaches
    /// this store with the next sync).
    pub issued_at: String,
    pub coupon: Option<CouponView>,
}

impl ClaimView {
    fn of(view: CouponView) -> ClaimView {
        ClaimView {
            code: view.code.clone(),
            template_id: view.template_id,
            member_id: view.member_id.unwrap_or_default(),
            issued_at: "here".into(),
            coupon: Some(view),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDraw {
    pub lottery_id: Uuid,
}

/// `POST /api/v1/members/{id}/lottery-draws`
#[derive(Debug, Serialize, ToSchema)]
pub struct DrawView {
    pub id: Uuid,
    pub lottery_id: Uuid,
    pub member_id: Uuid,
    /// Store-local day.
    pub day: String,
    pub prize_label: String,
    pub won: bool,
    pub coupon: Option<CouponView>,
    /// Draws left today.
    pub draws_left: u32,
}

/// One spin of a wheel: `random` is the injected randomness (the route passes OS random bytes).
pub fn draw(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    request: NewDraw,
    random: u64,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let lottery = replica::lottery(conn, request.lottery_id)?
        .filter(|l| l.active)
        .ok_or_else(|| ApiError::new(404, "unknown_lottery", "no active lottery with this id"))?;
    let day = chainsync_core::engagement::local_date(now_ms, local.utc_offset_seconds)
        .map(chainsync_core::engagement::format_date)
        .ok_or_else(|| ApiError::internal("the clock is out of range"))?;
    let group = read::member_group(conn, member_id)?;
    let mut used = 0u32;
    for member in &group {
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM lottery_draws WHERE member_id = ?1 AND lottery_id = ?2
               AND day = ?3",
            (member.to_string(), lottery.id.to_string(), &day),
            |r| r.get(0),
        )?;
        used = used.saturating_add(n.max(0) as u32);
    }
    if used >= lottery.draws_per_day {
        return Err(ApiError::new(
            409,
            "lottery_draws_used",
            format!(
                "this member has used today's {} draw(s); come back tomorrow",
                lottery.draws_per_day
            ),
        ));
    }
    let prize = lottery.spin(random);
    let slice = prize.and_then(|i| lottery.prizes.get(i));
    let mut coupon = None;
    if let Some(template_id) = slice.and_then(|p| p.template_id)
        && let Some(template) = replica::template(conn, template_id)?
        && template.active
    {
        coupon = issue(
            conn,
            local,
            &template,
            Some(member_id),
            Channel::Lottery,
            None,
            None,
            now_ms,
        )?;
    }
    let record = LotteryDraw {
        id: local.new_id(now_ms)?,
        lottery_id: lottery.id,
        member_id,
        day: day.clone(),
        prize: prize.map(|p| p as u32),
        code: coupon.as_ref().map(|c| c.code.clone()),
        at_ms: now_ms,
    };
    let envelope = local.emit(conn, now_ms, OpV1::LotteryDraw(record.clone()))?;
    replica::project_draw(conn, &record, &envelope.origin)?;
    let coupon_view = match &coupon {
        Some(c) => match replica::coupon(conn, &c.code)? {
            Some(row) => Some(replica::coupon_view(conn, &row, now_ms)?),
            None => None,
        },
        None => None,
    };
    Reply::new(
        201,
        &DrawView {
            id: record.id,
            lottery_id: lottery.id,
            member_id,
            day,
            prize_label: slice.map(|p| p.label.clone()).unwrap_or_default(),
            won: coupon_view.is_some(),
            coupon: coupon_view,
            draws_left: lottery.draws_per_day - used - 1,
        },
    )
}

// ---- routes ----

fn code_path(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(code)| code)
        .ok()
        .filter(|c| !c.is_empty() && c.chars().count() <= rules::code_chars_max)
        .ok_or_else(|| ApiError::new(422, "coupon_unknown", "a coupon code is 1 to 32 characters"))
}

#[utoipa::path(get, path = "/api/v1/coupon-templates",
    responses((status = 200, body = TemplateList)), security(("bearer" = [])))]
pub async fn list_templates(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<TemplateList>, ApiError> {
    let templates = app.reads.run(|conn| Ok(replica::templates(conn)?)).await?;
    Ok(Json(TemplateList {
        templates: templates.iter().map(TemplateView::of).collect(),
    }))
}

#[utoipa::path(get, path = "/api/v1/coupons/{code}", params(("code" = String, Path)),
    responses((status = 200, body = CouponView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_coupon(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CouponView>, ApiError> {
    let code = code_path(path)?;
    app.reads
        .run(move |conn| {
            let row = replica::coupon(conn, &code)?.ok_or_else(|| {
                ApiError::new(404, "coupon_unknown", format!("no coupon with code {code}"))
            })?;
            Ok(replica::coupon_view(conn, &row, crate::now_ms())?)
        })
        .await
        .map(Json)
}

/// Look a member up by one of their coupons' codes (the owner now, after transfers).
#[utoipa::path(get, path = "/api/v1/coupons/{code}/member", params(("code" = String, Path)),
    responses((status = 200, body = MemberView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn member_by_coupon(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<MemberView>, ApiError> {
    let code = code_path(path)?;
    let offset = app.utc_offset_seconds;
    app.reads
        .run(move |conn| {
            let row = replica::coupon(conn, &code)?.ok_or_else(|| {
                ApiError::new(404, "coupon_unknown", format!("no coupon with code {code}"))
            })?;
            let owner = row.owner_id.ok_or_else(ApiError::unknown_member)?;
            let rules = chainsync_replica::program::rules(conn)?;
            read::member(conn, owner, &rules, crate::now_ms(), offset)?
                .ok_or_else(ApiError::unknown_member)
        })
        .await
        .map(Json)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct MemberCouponsQuery {
    /// `available` (default: usable now), `all`.
    pub status: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/members/{id}/coupons",
    params(("id" = Uuid, Path), MemberCouponsQuery),
    responses((status = 200, body = CouponList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn member_coupons(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    query: Result<Query<MemberCouponsQuery>, QueryRejection>,
) -> Result<Json<CouponList>, ApiError> {
    let id = member_id(path)?;
    let Query(query) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let all = match query.status.as_deref().unwrap_or("available") {
        "available" => false,
        "all" => true,
        _ => return Err(ApiError::invalid_field("status must be available or all")),
    };
    app.reads
        .run(move |conn| {
            let canonical =
                read::canonical_member(conn, id)?.ok_or_else(ApiError::unknown_member)?;
            let group = read::member_group(conn, canonical)?;
            let now = crate::now_ms();
            let mut coupons = Vec::new();
            for row in replica::coupons_of(conn, &group)? {
                let view = replica::coupon_view(conn, &row, now)?;
                if all || view.status == "available" {
                    coupons.push(view);
                }
            }
            Ok(CouponList { coupons })
        })
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/api/v1/coupons/{code}/transfer",
    params(("code" = String, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewTransfer,
    responses((status = 201, body = CouponView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_transfer(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    let code = code_path(path)?;
    let request: NewTransfer = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            transfer(conn, local, code, request, now)
        })
        .await
}

/// A claim id from the Idempotency-Key (a retry asks the hub about the same claim).
fn claim_id(key: Option<&str>, member: Uuid, template: Uuid) -> Result<Uuid, ApiError> {
    match key {
        Some(key) => {
            let mut hasher = Sha256::new();
            hasher.update(b"coupon-claim\0");
            hasher.update(key.as_bytes());
            hasher.update(member.as_bytes());
            hasher.update(template.as_bytes());
            let digest = hasher.finalize();
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            Ok(uuid::Builder::from_random_bytes(bytes).into_uuid())
        }
        None => {
            let random = crate::random_bytes::<16>().map_err(ApiError::internal)?;
            Ok(uuid::Builder::from_random_bytes(random).into_uuid())
        }
    }
}

#[utoipa::path(post, path = "/api/v1/members/{id}/coupon-claims",
    params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewClaim,
    responses((status = 201, body = ClaimView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "coupon_pool_empty"),
        (status = 422, body = ErrorBody, description = "pool_online_only, coupon_member_limit, coupon_not_claimable")),
    security(("bearer" = [])))]
pub async fn create_claim(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    let member = member_id(path)?;
    let request: NewClaim = post.json()?;
    let template_id = request.template_id;
    let idempotency = post.idempotency()?;
    let (template, canonical) = app
        .reads
        .run(move |conn| {
            let canonical =
                read::canonical_member(conn, member)?.ok_or_else(ApiError::unknown_member)?;
            Ok((replica::template(conn, template_id)?, canonical))
        })
        .await?;
    let template = template.ok_or_else(unknown_template)?;
    let pool = claimable(&template)?;
    let chain_wide = pool.scope == PoolScope::ChainWide;
    let Some(authorizer) = app.authorizer.as_ref().filter(|_| chain_wide) else {
        // A per-store pool (or a standalone store): decided here, offline too.
        return app
            .writer
            .write(idempotency, move |conn, local, now| {
                claim_here(conn, local, member, template_id, now)
            })
            .await;
    };
    // A chain-wide pool: only the hub knows what is left. Asked on the sync session.
    let claim = claim_id(
        idempotency.as_ref().map(|i| i.key.as_str()),
        canonical,
        template_id,
    )?;
    let timeout_ms = app
        .reads
        .run(|conn| Ok(read::allowance_policy(conn)?))
        .await?
        .authorization_timeout_ms;
    let ask = chainsync_core::sync::AuthorizeRequest {
        request_id: 0,
        checkout_id: claim,
        member_id: Some(canonical),
        spend: Default::default(),
        coupon_codes: vec![format!("{}{template_id}", rules::pool_claim_prefix)],
    };
    use chainsync_core::sync::AuthorizeDecision;
    match authorizer.ask(ask, timeout_ms).await {
        None => Err(ApiError::new(
            422,
            "pool_online_only",
            "this pool is shared by the whole chain and only HQ can hand its coupons out; the \
             link to HQ is down now: try again when the store is back online",
        )),
        Some(AuthorizeDecision::Granted) => Reply::new(
            201,
            &ClaimView {
                code: rules::pool_claim_code(claim),
                template_id,
                member_id: canonical,
                issued_at: "hq".into(),
                coupon: None,
            },
        ),
        Some(AuthorizeDecision::CouponUnavailable { reason, .. }) => Err(match reason.as_str() {
            "pool_empty" => pool_empty(),
            "member_limit" => refusal(Refusal::MemberLimit {
                limit: template.per_member_limit,
            }),
            _ => ApiError::new(422, "coupon_not_claimable", reason),
        }),
        Some(other) => Err(ApiError::internal(format!("unexpected answer {other:?}"))),
    }
}

#[utoipa::path(get, path = "/api/v1/lotteries",
    responses((status = 200, body = LotteryList)), security(("bearer" = [])))]
pub async fn list_lotteries(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<LotteryList>, ApiError> {
    let lotteries = app.reads.run(|conn| Ok(replica::lotteries(conn)?)).await?;
    Ok(Json(LotteryList {
        lotteries: lotteries.iter().map(LotteryView::of).collect(),
    }))
}

#[utoipa::path(post, path = "/api/v1/members/{id}/lottery-draws",
    params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewDraw,
    responses((status = 201, body = DrawView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "lottery_draws_used")),
    security(("bearer" = [])))]
pub async fn create_draw(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    let member = member_id(path)?;
    let request: NewDraw = post.json()?;
    let idempotency = post.idempotency()?;
    let random = u64::from_le_bytes(crate::random_bytes::<8>().map_err(ApiError::internal)?);
    app.writer
        .write(idempotency, move |conn, local, now| {
            draw(conn, local, member, request, random, now)
        })
        .await
}

#[derive(OpenApi)]
#[openapi(paths(
    list_templates,
    get_coupon,
    member_by_coupon,
    member_coupons,
    create_transfer,
    create_claim,
    list_lotteries,
    create_draw
))]
pub struct CouponsDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/coupon-templates", get(list_templates))
        .route("/api/v1/coupons/{code}", get(get_coupon))
        .route("/api/v1/coupons/{code}/member", get(member_by_coupon))
        .route("/api/v1/coupons/{code}/transfer", post(create_transfer))
        .route("/api/v1/members/{id}/coupons", get(member_coupons))
        .route("/api/v1/members/{id}/coupon-claims", post(create_claim))
        .route("/api/v1/lotteries", get(list_lotteries))
        .route("/api/v1/members/{id}/lottery-draws", post(create_draw))
}

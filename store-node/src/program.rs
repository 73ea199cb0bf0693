//! The membership program at a store: the rule set it holds (HQ's, relayed), the prepaid cap,
//! signup gifts, manual points adjustments (manager role) and count cards.

use crate::http::member_id;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use chainsync_core::checkout::Movement;
use chainsync_core::count_card::{
    self, CountCardError, CountCardPurchase, CountCardUse, CountCardUseReversal,
};
use chainsync_core::gift::{self, GiftRedemption};
use chainsync_core::ledger::{Account, EntryKind};
use chainsync_core::op::OpV1;
use chainsync_core::rules::Rules;
use chainsync_core::{Fen, limits};
use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::posted::Posted;
use chainsync_replica::program::{
    self, CountCardList, CountCardTemplateList, CountCardView, GiftList, RulesView,
};
use chainsync_replica::read;
use chainsync_replica::views::ErrorBody;
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::commands::Local;
use crate::http::{AppState, Caller};

/// Refuse a recharge that would take the member's prepaid principal (money paid in, not the
/// bonus given) past the prepaid cap.
pub fn check_prepaid_cap(
    conn: &Connection,
    rules: &Rules,
    member_id: Uuid,
    amount: Fen,
    bonus: Fen,
) -> Result<(), ApiError> {
    let balances = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let _ = bonus;
    let held = balances.principal.0;
    let after = held.saturating_add(amount.0);
    if after > rules.prepaid_cap.0 {
        return Err(ApiError::new(
            422,
            "prepaid_cap_exceeded",
            format!(
                "this recharge would bring the member's prepaid principal to {}, above the cap \
                 of {} (rules version {}); the member holds {} of principal now",
                Fen(after),
                rules.prepaid_cap,
                rules.version,
                Fen(held)
            ),
        ));
    }
    Ok(())
}

/// Credit a new member with the signup gifts of the rules this store holds.
pub fn signup_gifts(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    now_ms: u64,
) -> Result<(), ApiError> {
    let gift = local.rules.signup.clone();
    let reason = || Some("signup gift".to_owned());
    if gift.points > 0 {
        let movement = Movement {
            kind: EntryKind::PointsAdjust,
            account: Account::Points,
            amount: gift.points,
        };
        local.emit_entry(conn, now_ms, member_id, movement, None, reason())?;
    }
    if gift.stored_value > Fen::ZERO {
        let movement = Movement {
            kind: EntryKind::RechargeBonus,
            account: Account::Bonus,
            amount: gift.stored_value.0,
        };
        local.emit_entry(conn, now_ms, member_id, movement, None, reason())?;
    }
    if let Some(template_id) = gift.coupon_template {
        // Issued with its channel and the template's validity (crate::coupons).
        if !crate::coupons::issue_signup(conn, local, template_id, member_id, now_ms)? {
            tracing::warn!(%template_id, "signup coupon template not here yet; no coupon given");
        }
    }
    Ok(())
}

/// `POST /api/v1/members/{id}/points-adjustments`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPointsAdjustment {
    /// Points to add (negative: take away); not zero.
    pub points: i64,
    /// Why (required, 1 to 200 characters).
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PointsAdjustmentView {
    /// The ledger entry written.
    pub id: Uuid,
    pub member_id: Uuid,
    pub points: i64,
    pub reason: String,
    /// The member's points after it.
    pub points_balance: i64,
    pub rule_version: u32,
}

pub fn adjust_points(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    request: NewPointsAdjustment,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    if request.points == 0 || request.points.abs() > limits::amount_fen_max {
        return Err(ApiError::invalid_amount(format!(
            "points must be non-zero and at most {} either way",
            limits::amount_fen_max
        )));
    }
    let reason = request.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 200 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "reason is required (1 to 200 characters)",
        ));
    }
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let movement = Movement {
        kind: EntryKind::PointsAdjust,
        account: Account::Points,
        amount: request.points,
    };
    let entry = local.emit_entry(
        conn,
        now_ms,
        member_id,
        movement,
        None,
        Some(reason.clone()),
    )?;
    let balances = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    Reply::new(
        201,
        &PointsAdjustmentView {
            id: entry.id,
            member_id,
            points: request.points,
            reason,
            points_balance: balances.points,
            rule_version: entry.rule_version,
        },
    )
}

#[utoipa::path(get, path = "/api/v1/rules", responses((status = 200, body = RulesView)),
    security(("bearer" = [])))]
pub async fn get_rules(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<RulesView>, ApiError> {
    Ok(Json(RulesView::of(&app.current_rules().await?)))
}

#[utoipa::path(post, path = "/api/v1/members/{id}/points-adjustments", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewPointsAdjustment,
    responses((status = 201, body = PointsAdjustmentView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_points_adjustment(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let id = member_id(path)?;
    let request: NewPointsAdjustment = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            adjust_points(conn, local, id, request, now)
        })
        .await
}

/// The program's routes (merged into the store's router).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/rules", get(get_rules))
        .route(
            "/api/v1/members/{id}/points-adjustments",
            post(create_points_adjustment),
        )
        .route(
            "/api/v1/count-card-templates",
            get(list_count_card_templates),
        )
        .route(
            "/api/v1/members/{id}/count-cards",
            post(create_count_card).get(list_member_count_cards),
        )
        .route("/api/v1/count-cards/{id}", get(get_count_card))
        .route("/api/v1/count-cards/{id}/uses", post(create_count_card_use))
        .route(
            "/api/v1/count-card-uses/{id}/reversals",
            post(create_use_reversal),
        )
        .route("/api/v1/gifts", get(list_gifts))
        .route(
            "/api/v1/members/{id}/gift-redemptions",
            post(create_gift_redemption),
        )
}

// ---- Count cards ----

/// `POST /api/v1/members/{id}/count-cards`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCountCard {
    pub template_id: Uuid,
    /// How the price is paid: `cash` (default) or `external`.
    pub method: Option<String>,
}

/// `POST /api/v1/count-cards/{id}/uses`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCountCardUse {
    pub note: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CountCardUseReply {
    /// The use written.
    pub use_id: Uuid,
    /// The card after it.
    pub card: CountCardView,
}

fn unknown_card() -> ApiError {
    ApiError::new(404, "unknown_count_card", "no count card with this id")
}

fn clean_note(note: Option<String>, what: &str) -> Result<Option<String>, ApiError> {
    let note = note.map(|n| n.trim().to_owned()).filter(|n| !n.is_empty());
    if note
        .as_ref()
        .is_some_and(|n| n.chars().count() > 200 || n.chars().any(char::is_control))
    {
        return Err(ApiError::invalid_field(format!(
            "{what} is at most 200 characters"
        )));
    }
    Ok(note)
}

pub fn buy_count_card(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    request: NewCountCard,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let method = request.method.as_deref().unwrap_or("cash").to_owned();
    if !matches!(method.as_str(), "cash" | "external") {
        return Err(ApiError::invalid_field("method must be cash or external"));
    }
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let template = program::count_card_template(conn, request.template_id)?
        .filter(|t| t.active)
        .ok_or_else(|| {
            ApiError::new(
                422,
                "unknown_count_card_template",
                "no active count-card template with this id (HQ creates them)",
            )
        })?;
    let card = CountCardPurchase {
        id: local.new_id(now_ms)?,
        template_id: template.id,
        member_id,
        name: template.name,
        service: template.service,
        uses: template.uses,
        price: Fen(template.price_fen),
        method,
        at_ms: now_ms,
        expires_ms: count_card::expiry(now_ms, template.validity_days),
        rule_version: local.rules.version,
    };
    let envelope = local.emit(conn, now_ms, OpV1::CountCardPurchase(card.clone()))?;
    program::project_count_card_purchase(conn, &card, &envelope.origin)?;
    let view = program::count_card(conn, card.id, now_ms)?.ok_or_else(unknown_card)?;
    Reply::new(201, &view)
}

pub fn use_count_card(
    conn: &Connection,
    local: &mut Local,
    card_id: Uuid,
    request: NewCountCardUse,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let note = clean_note(request.note, "note")?;
    let card = program::count_card(conn, card_id, now_ms)?.ok_or_else(unknown_card)?;
    count_card::check_use(card.uses, card.used, 0, card.expires_ms, now_ms).map_err(
        |e| match e {
            CountCardError::UsedUp { .. } => {
                ApiError::new(409, "count_card_used_up", e.to_string())
            }
            CountCardError::Expired { .. } => {
                ApiError::new(422, "count_card_expired", e.to_string())
            }
        },
    )?;
    let card_use = CountCardUse {
        id: local.new_id(now_ms)?,
        card_id,
        member_id: card.member_id,
        at_ms: now_ms,
        note,
    };
    let envelope = local.emit(conn, now_ms, OpV1::CountCardUse(card_use.clone()))?;
    program::project_count_card_use(conn, &card_use, &envelope.origin)?;
    let card = program::count_card(conn, card_id, now_ms)?.ok_or_else(unknown_card)?;
    Reply::new(
        201,
        &CountCardUseReply {
            use_id: card_use.id,
            card,
        },
    )
}

/// `POST /api/v1/count-card-uses/{id}/reversals`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUseReversal {
    pub reason: Option<String>,
}

/// Give one use back (a refund of a visit). A use is given back at most once.
pub fn reverse_count_card_use(
    conn: &Connection,
    local: &mut Local,
    use_id: Uuid,
    request: NewUseReversal,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let reason = clean_note(request.reason, "reason")?;
    let found: Option<(String, String)> = conn
        .query_row(
            "SELECT card_id, member_id FROM count_card_uses WHERE id = ?1",
            [use_id.to_string()],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .optional()?;
    let (card_id, member_id) = found
        .and_then(|(c, m)| Some((Uuid::parse_str(&c).ok()?, Uuid::parse_str(&m).ok()?)))
        .ok_or_else(|| {
            ApiError::new(
                404,
                "unknown_count_card_use",
                "no count-card use with this id",
            )
        })?;
    let reversed: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM count_card_use_reversals WHERE use_id = ?1",
        [use_id.to_string()],
        |row| row.get(0),
    )?;
    if reversed {
        return Err(ApiError::new(
            409,
            "already_reversed",
            "this use was already given back",
        ));
    }
    let reversal = CountCardUseReversal {
        id: local.new_id(now_ms)?,
        use_id,
        card_id,
        member_id,
        reason,
        at_ms: now_ms,
    };
    let envelope = local.emit(conn, now_ms, OpV1::CountCardUseReversal(reversal.clone()))?;
    program::project_count_card_reversal(conn, &reversal, &envelope.origin)?;
    let card = program::count_card(conn, card_id, now_ms)?.ok_or_else(unknown_card)?;
    Reply::new(201, &card)
}

#[utoipa::path(get, path = "/api/v1/count-card-templates",
    responses((status = 200, body = CountCardTemplateList)), security(("bearer" = [])))]
pub async fn list_count_card_templates(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<CountCardTemplateList>, ApiError> {
    let templates = app
        .reads
        .run(|conn| Ok(program::count_card_templates(conn)?))
        .await?;
    Ok(Json(CountCardTemplateList { templates }))
}

#[utoipa::path(post, path = "/api/v1/members/{id}/count-cards", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewCountCard,
    responses((status = 201, body = CountCardView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_count_card(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    let id = member_id(path)?;
    let request: NewCountCard = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            buy_count_card(conn, local, id, request, now)
        })
        .await
}

#[utoipa::path(get, path = "/api/v1/members/{id}/count-cards", params(("id" = Uuid, Path)),
    responses((status = 200, body = CountCardList), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_member_count_cards(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<CountCardList>, ApiError> {
    let id = member_id(path)?;
    let count_cards = app
        .reads
        .run(move |conn| {
            let canonical =
                read::canonical_member(conn, id)?.ok_or_else(ApiError::unknown_member)?;
            Ok(program::member_count_cards(
                conn,
                canonical,
                crate::now_ms(),
            )?)
        })
        .await?;
    Ok(Json(CountCardList { count_cards }))
}

#[utoipa::path(get, path = "/api/v1/count-cards/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = CountCardView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn get_count_card(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<CountCardView>, ApiError> {
    let id = path.map(|Path(id)| id).map_err(|_| unknown_card())?;
    app.reads
        .run(move |conn| program::count_card(conn, id, crate::now_ms())?.ok_or_else(unknown_card))
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/api/v1/count-cards/{id}/uses", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewCountCardUse,
    responses((status = 201, body = CountCardUseReply), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_count_card_use(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    let id = path.map(|Path(id)| id).map_err(|_| unknown_card())?;
    let request: NewCountCardUse = post.json_or_default()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            use_count_card(conn, local, id, request, now)
        })
        .await
}

#[utoipa::path(post, path = "/api/v1/count-card-uses/{id}/reversals", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewUseReversal,
    responses((status = 201, body = CountCardView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_use_reversal(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let id = path.map(|Path(id)| id).map_err(|_| {
        ApiError::new(
            404,
            "unknown_count_card_use",
            "no count-card use with this id",
        )
    })?;
    let request: NewUseReversal = post.json_or_default()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            reverse_count_card_use(conn, local, id, request, now)
        })
        .await
}

// ---- Points gift catalog ----

/// `POST /api/v1/members/{id}/gift-redemptions`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGiftRedemption {
    pub gift_id: Uuid,
    /// Units (default 1, at most 100).
    pub qty: Option<i64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct GiftRedemptionView {
    pub id: Uuid,
    pub gift_id: Uuid,
    pub member_id: Uuid,
    pub qty: i64,
    /// Points taken (a `points_redeem` ledger entry).
    pub points: i64,
    pub entry_id: Uuid,
    /// The member's points after it.
    pub points_balance: i64,
    /// The gift's stock left as this store sees it.
    pub stock_left: i64,
    pub rule_version: u32,
}

pub fn redeem_gift(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    request: NewGiftRedemption,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let qty = request.qty.unwrap_or(1);
    if !(1..=gift::redemption_qty_max).contains(&qty) {
        return Err(ApiError::invalid_field("qty must be 1 to 100"));
    }
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let found = program::gift(conn, request.gift_id)?
        .filter(|g| g.active)
        .ok_or_else(|| {
            ApiError::new(
                422,
                "unknown_gift",
                "no active gift with this id in the catalog (HQ sets it)",
            )
        })?;
    if found.stock_left < qty {
        return Err(ApiError::new(
            409,
            "gift_out_of_stock",
            format!(
                "{} has {} left here, {qty} asked",
                found.name,
                found.stock_left.max(0)
            ),
        ));
    }
    let points = gift::points_for(found.points_price, qty)
        .filter(|p| *p <= limits::amount_fen_max)
        .ok_or_else(|| ApiError::invalid_amount("too many points"))?;
    let balances = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    if points > 0 && balances.points < points {
        return Err(ApiError::new(
            422,
            "insufficient_points",
            format!("{} points available, {points} needed", balances.points),
        ));
    }
    let entry_id = if points > 0 {
        let movement = Movement {
            kind: EntryKind::PointsRedeem,
            account: Account::Points,
            amount: -points,
        };
        let reason = Some(format!("gift {} ×{qty}", found.name));
        local
            .emit_entry(conn, now_ms, member_id, movement, None, reason)?
            .id
    } else {
        Uuid::nil()
    };
    let redemption = GiftRedemption {
        id: local.new_id(now_ms)?,
        gift_id: found.id,
        member_id,
        qty,
        points,
        entry_id,
        at_ms: now_ms,
    };
    let envelope = local.emit(conn, now_ms, OpV1::GiftRedeem(redemption.clone()))?;
    program::project_gift_redemption(conn, &redemption, &envelope.origin)?;
    let after = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let stock_left = program::gift(conn, found.id)?
        .map(|g| g.stock_left)
        .unwrap_or_default();
    Reply::new(
        201,
        &GiftRedemptionView {
            id: redemption.id,
            gift_id: found.id,
            member_id,
            qty,
            points,
            entry_id,
            points_balance: after.points,
            stock_left,
            rule_version: local.rules.version,
        },
    )
}

#[utoipa::path(get, path = "/api/v1/gifts", responses((status = 200, body = GiftList)),
    security(("bearer" = [])))]
pub async fn list_gifts(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<GiftList>, ApiError> {
    let gifts = app.reads.run(|conn| Ok(program::gifts(conn)?)).await?;
    Ok(Json(GiftList { gifts }))
}

#[utoipa::path(post, path = "/api/v1/members/{id}/gift-redemptions", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewGiftRedemption,
    responses((status = 201, body = GiftRedemptionView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_gift_redemption(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    let id = member_id(path)?;
    let request: NewGiftRedemption = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            redeem_gift(conn, local, id, request, now)
        })
        .await
}

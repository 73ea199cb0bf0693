//! HQ's side of the membership program: the rule set (authored here as `RulesSetV2`, origin
//! `hq`, highest version wins) and count-card templates.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chainsync_core::count_card::{self, CountCardTemplate};
use chainsync_core::gift;
use chainsync_core::op::OpV1;
use chainsync_core::rules::RulesDocument;
use chainsync_replica::api::ApiError;
use chainsync_replica::program::{
    self, CountCardList, CountCardTemplateList, CountCardTemplateView, FeedbackList, GiftList,
    GiftView, RulesView,
};
use chainsync_replica::views::ErrorBody;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::{Caller, HubState};

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_json(format!("request body: {e}")))
}

#[utoipa::path(get, path = "/api/v1/rules", responses((status = 200, body = RulesView)),
    security(("bearer" = [])))]
pub async fn get_rules(
    State(hub): State<HubState>,
    _caller: Caller,
) -> Result<Json<RulesView>, ApiError> {
    Ok(Json(RulesView::of(&hub.current_rules().await?)))
}

/// Replace the whole rule set; the new version is one more than the newest held.
#[utoipa::path(put, path = "/api/v1/rules", request_body = RulesView,
    responses((status = 200, body = RulesView), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_rules(
    State(hub): State<HubState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<RulesView>, ApiError> {
    caller.require_operator()?;
    let change: RulesView = parse_body(&body)?;
    let current = hub.current_rules().await?;
    let version = current
        .version
        .checked_add(1)
        .ok_or_else(|| ApiError::internal("rules version overflow"))?;
    let rules = change
        .to_rules(version)
        .map_err(|e| ApiError::new(422, "invalid_rules", e.to_string()))?;
    hub.author(OpV1::RulesSetV2(RulesDocument::of(&rules)))
        .await?;
    Ok(Json(RulesView::of(&rules)))
}

/// The program's routes (merged into the hub's router).
pub fn routes() -> Router<HubState> {
    Router::new()
        .route("/api/v1/rules", get(get_rules).put(put_rules))
        .route(
            "/api/v1/count-card-templates",
            get(list_count_card_templates).post(create_count_card_template),
        )
        .route(
            "/api/v1/members/{id}/count-cards",
            get(list_member_count_cards),
        )
        .route("/api/v1/gifts", get(list_gifts).post(create_gift))
        .route("/api/v1/members/{id}/feedback", get(list_member_feedback))
}

/// `POST /api/v1/count-card-templates`: create (no `id`) or replace (with `id`) a template.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCountCardTemplate {
    pub id: Option<Uuid>,
    pub name: String,
    pub service: String,
    pub uses: u32,
    pub price_fen: i64,
    pub validity_days: u32,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

fn text(value: &str, what: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > 64 || value.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(format!(
            "{what} must be 1 to 64 characters"
        )));
    }
    Ok(value.to_owned())
}

#[utoipa::path(post, path = "/api/v1/count-card-templates", request_body = NewCountCardTemplate,
    responses((status = 201, body = CountCardTemplateView), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_count_card_template(
    State(hub): State<HubState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CountCardTemplateView>), ApiError> {
    caller.require_operator()?;
    let request: NewCountCardTemplate = parse_body(&body)?;
    let name = text(&request.name, "name")?;
    let service = text(&request.service, "service")?;
    if !(1..=count_card::uses_max).contains(&request.uses) {
        return Err(ApiError::invalid_field(format!(
            "uses must be 1 to {}",
            count_card::uses_max
        )));
    }
    if !(1..=count_card::validity_days_max).contains(&request.validity_days) {
        return Err(ApiError::invalid_field(format!(
            "validity_days must be 1 to {}",
            count_card::validity_days_max
        )));
    }
    if !(0..=chainsync_core::limits::amount_fen_max).contains(&request.price_fen) {
        return Err(ApiError::invalid_amount("price_fen out of range"));
    }
    let id = match request.id {
        Some(id) => id,
        None => {
            let mut random = [0u8; 10];
            getrandom::fill(&mut random).map_err(ApiError::internal)?;
            uuid::Builder::from_unix_timestamp_millis(crate::now_ms(), &random).into_uuid()
        }
    };
    let template = CountCardTemplate {
        id,
        name,
        service,
        uses: request.uses,
        price: chainsync_core::Fen(request.price_fen),
        validity_days: request.validity_days,
        active: request.active,
    };
    hub.author(OpV1::CountCardTemplateUpsert(template.clone()))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CountCardTemplateView {
            id,
            name: template.name,
            service: template.service,
            uses: template.uses,
            price_fen: template.price.0,
            validity_days: template.validity_days,
            active: template.active,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/count-card-templates",
    responses((status = 200, body = CountCardTemplateList)), security(("bearer" = [])))]
pub async fn list_count_card_templates(
    State(hub): State<HubState>,
    _caller: Caller,
) -> Result<Json<CountCardTemplateList>, ApiError> {
    let templates = hub
        .reads
        .run(|conn| Ok(program::count_card_templates(conn)?))
        .await?;
    Ok(Json(CountCardTemplateList { templates }))
}

#[utoipa::path(get, path = "/api/v1/members/{id}/feedback", params(("id" = Uuid, Path)),
    responses((status = 200, body = FeedbackList), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_member_feedback(
    State(hub): State<HubState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<FeedbackList>, ApiError> {
    let id = path
        .map(|Path(id)| id)
        .map_err(|_| ApiError::unknown_member())?;
    let feedback = hub
        .reads
        .run(move |conn| {
            let canonical = chainsync_replica::read::canonical_member(conn, id)?
                .ok_or_else(ApiError::unknown_member)?;
            Ok(program::member_feedback(
                conn,
                canonical,
                program::feedback_list_max,
            )?)
        })
        .await?;
    Ok(Json(FeedbackList { feedback }))
}

#[utoipa::path(get, path = "/api/v1/members/{id}/count-cards", params(("id" = Uuid, Path)),
    responses((status = 200, body = CountCardList), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
pub async fn list_member_count_cards(
    State(hub): State<HubState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<CountCardList>, ApiError> {
    let id = path
        .map(|Path(id)| id)
        .map_err(|_| ApiError::unknown_member())?;
    let count_cards = hub
        .reads
        .run(move |conn| {
            let canonical = chainsync_replica::read::canonical_member(conn, id)?
                .ok_or_else(ApiError::unknown_member)?;
            Ok(program::member_count_cards(
                conn,
                canonical,
                crate::now_ms(),
            )?)
        })
        .await?;
    Ok(Json(CountCardList { count_cards }))
}

/// `POST /api/v1/gifts`: create (no `id`) or replace (with `id`) a gift of the points catalog.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewGift {
    pub id: Option<Uuid>,
    pub name: String,
    pub points_price: i64,
    /// Units ever put in stock (stock left = this minus every redemption).
    pub stock: i64,
    #[serde(default = "yes")]
    pub active: bool,
}

#[utoipa::path(post, path = "/api/v1/gifts", request_body = NewGift,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key (as is an `id` in the body)")),
    responses((status = 201, body = GiftView), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_gift(
    State(hub): State<HubState>,
    caller: Caller,
    post: chainsync_replica::posted::Posted,
) -> Result<axum::response::Response, ApiError> {
    caller.require_operator()?;
    let request: NewGift = post.json()?;
    let keyed = post.idempotency()?;
    if let Some(answer) = crate::idempotency::recalled(&hub, &keyed).await? {
        return Ok(answer);
    }
    let name = text(&request.name, "name")?;
    if !(0..=gift::gift_points_max).contains(&request.points_price) {
        return Err(ApiError::invalid_field(
            "points_price must be 0 to 100000000",
        ));
    }
    if !(0..=gift::gift_stock_max).contains(&request.stock) {
        return Err(ApiError::invalid_field("stock must be 0 to 1000000"));
    }
    let id = match request.id {
        Some(id) => id,
        None => {
            let mut random = [0u8; 10];
            getrandom::fill(&mut random).map_err(ApiError::internal)?;
            uuid::Builder::from_unix_timestamp_millis(crate::now_ms(), &random).into_uuid()
        }
    };
    let record = gift::Gift {
        id,
        name,
        points_price: request.points_price,
        stock: request.stock,
        active: request.active,
    };
    crate::idempotency::author_answered(&hub, keyed, OpV1::GiftUpsert(record), move |tx| {
        crate::idempotency::as_answer(program::gift(tx, id)?, "gift")
    })
    .await
}

#[utoipa::path(get, path = "/api/v1/gifts", responses((status = 200, body = GiftList)),
    security(("bearer" = [])))]
pub async fn list_gifts(
    State(hub): State<HubState>,
    _caller: Caller,
) -> Result<Json<GiftList>, ApiError> {
    let gifts = hub.reads.run(|conn| Ok(program::gifts(conn)?)).await?;
    Ok(Json(GiftList { gifts }))
}

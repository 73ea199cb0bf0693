//! Membership-program routes: the outbox listing (and, beside it, engagement).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::engagement::{self, CheckInView, DormantMember, EngagementRunView};
use chainsync_replica::api::Reply;
use chainsync_replica::program::{FeedbackList, FeedbackView};
use chainsync_replica::views::ErrorBody;

use crate::http::{AppState, Caller};
use crate::outbox::{self, OutboxMessage};
use chainsync_replica::api::ApiError;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct OutboxQuery {
    /// `pending` (default) or `delivered`.
    pub status: Option<String>,
    /// At most this many (default 100, at most 500).
    pub limit: Option<usize>,
}

/// `GET /api/v1/outbox`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OutboxList {
    pub messages: Vec<OutboxMessage>,
}

#[utoipa::path(get, path = "/api/v1/outbox", params(OutboxQuery),
    responses((status = 200, body = OutboxList), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_outbox(
    State(app): State<AppState>,
    caller: Caller,
    query: Result<Query<OutboxQuery>, QueryRejection>,
) -> Result<Json<OutboxList>, ApiError> {
    caller.require_manager()?;
    let Query(query) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let delivered = match query.status.as_deref().unwrap_or("pending") {
        "pending" => false,
        "delivered" => true,
        _ => {
            return Err(ApiError::invalid_field(
                "status must be pending or delivered",
            ));
        }
    };
    let limit = query.limit.unwrap_or(100).clamp(1, outbox::list_limit_max);
    let messages = app
        .reads
        .run(move |conn| Ok(outbox::list(conn, delivered, limit)?))
        .await?;
    Ok(Json(OutboxList { messages }))
}

#[utoipa::path(post, path = "/api/v1/members/{id}/check-ins", params(("id" = Uuid, Path)),
    responses((status = 201, body = CheckInView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "already_checked_in")),
    security(("bearer" = [])))]
async fn check_in(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Reply, ApiError> {
    let id = crate::http::member_id(path)?;
    app.writer
        .write(None, move |conn, local, now| {
            engagement::check_in(conn, local, id, now)
        })
        .await
}

#[utoipa::path(post, path = "/api/v1/engagement/run",
    responses((status = 200, body = EngagementRunView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn run_engagement(State(app): State<AppState>, caller: Caller) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    app.writer
        .submit(None, Box::new(engagement::run_daily))
        .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DormantQuery {
    /// No checkout for this many days (default 30, 0 to 3650).
    pub days: Option<u64>,
    /// At most this many (default 100, at most 500).
    pub limit: Option<usize>,
}

/// `GET /api/v1/members/dormant`
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DormantList {
    pub days: u64,
    pub members: Vec<DormantMember>,
}

#[utoipa::path(get, path = "/api/v1/members/dormant", params(DormantQuery),
    responses((status = 200, body = DormantList), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn dormant_members(
    State(app): State<AppState>,
    _caller: Caller,
    query: Result<Query<DormantQuery>, QueryRejection>,
) -> Result<Json<DormantList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let days = query
        .days
        .unwrap_or(chainsync_core::engagement::dormant_days);
    if days > 3650 {
        return Err(ApiError::invalid_field("days must be from 0 to 3650"));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    let cutoff = crate::now_ms() as i64 - (days as i64) * 86_400_000;
    let members = app
        .reads
        .run(move |conn| Ok(engagement::dormant(conn, cutoff, limit)?))
        .await?;
    Ok(Json(DormantList { days, members }))
}

#[utoipa::path(post, path = "/api/v1/members/{id}/feedback", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = engagement::NewFeedback,
    responses((status = 201, body = FeedbackView), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody, description = "invalid_field, unknown_checkout")),
    security(("bearer" = [])))]
async fn create_feedback(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: chainsync_replica::posted::Posted,
) -> Result<Reply, ApiError> {
    let id = crate::http::member_id(path)?;
    let request: engagement::NewFeedback = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            engagement::give_feedback(conn, local, id, request, now)
        })
        .await
}

#[utoipa::path(get, path = "/api/v1/members/{id}/feedback", params(("id" = Uuid, Path)),
    responses((status = 200, body = FeedbackList), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
async fn list_feedback(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<FeedbackList>, ApiError> {
    let id = crate::http::member_id(path)?;
    let feedback = app
        .reads
        .run(move |conn| {
            let canonical = chainsync_replica::read::canonical_member(conn, id)?
                .ok_or_else(ApiError::unknown_member)?;
            Ok(chainsync_replica::program::member_feedback(
                conn,
                canonical,
                chainsync_replica::program::feedback_list_max,
            )?)
        })
        .await?;
    Ok(Json(FeedbackList { feedback }))
}

#[derive(OpenApi)]
#[openapi(paths(
    list_outbox,
    check_in,
    run_engagement,
    dormant_members,
    create_feedback,
    list_feedback
))]
pub struct MembershipDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/outbox", get(list_outbox))
        .route("/api/v1/members/{id}/check-ins", post(check_in))
        .route("/api/v1/engagement/run", post(run_engagement))
        .route("/api/v1/members/dormant", get(dormant_members))
        .route(
            "/api/v1/members/{id}/feedback",
            post(create_feedback).get(list_feedback),
        )
}

/// Run the daily engagement check now and then every hour (it is idempotent) until `stop`.
pub async fn daily_timer(
    writer: crate::writer::Writer,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            break;
        }
        if let Err(e) = writer
            .submit_background(Box::new(engagement::run_daily))
            .await
        {
            tracing::warn!(error = %e.message, "daily engagement check failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(3_600)) => {}
            _ = stop.changed() => {}
        }
    }
}

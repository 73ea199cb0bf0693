//! Membership-program routes: the outbox listing (and, beside it, engagement).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;

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
    responses((status = 200, body = OutboxList), (status = 403, body = chainsync_replica::views::ErrorBody),
        (status = 422, body = chainsync_replica::views::ErrorBody)),
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

#[derive(OpenApi)]
#[openapi(paths(list_outbox))]
pub struct MembershipDoc;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/outbox", get(list_outbox))
}

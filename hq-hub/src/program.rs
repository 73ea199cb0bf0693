//! HQ's side of the membership program: the rule set (authored here as `RulesSet`, origin
//! `hq`, highest version wins) and count-card templates.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use chainsync_core::op::OpV1;
use chainsync_replica::api::ApiError;
use chainsync_replica::program::RulesView;
use chainsync_replica::views::ErrorBody;

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
    hub.author(OpV1::RulesSet(rules.clone())).await?;
    Ok(Json(RulesView::of(&rules)))
}

/// The program's routes (merged into the hub's router).
pub fn routes() -> Router<HubState> {
    Router::new().route("/api/v1/rules", get(get_rules).put(put_rules))
}

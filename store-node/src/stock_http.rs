//! Stock routes: movements, stock levels and alerts, transfers, stocktakes. Writes are for
//! managers and carry Idempotency-Key handling like every POST.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::OpenApi;
use uuid::Uuid;

use crate::http::{AppState, Caller};
use crate::stock::{
    self, MovementsReply, NewCounts, NewStockMovements, NewStocktake, NewThreshold, NewTransfer,
    StocktakeView, TransferLinesInput,
};
use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::posted::Posted;
use chainsync_replica::stock::{StockLevelView, TransferFilter, TransferView};
use chainsync_replica::views::ErrorBody;

fn path_id(
    path: Result<Path<Uuid>, PathRejection>,
    unknown: fn() -> ApiError,
) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id).map_err(|_| unknown())
}

fn unknown_transfer() -> ApiError {
    ApiError::new(404, "unknown_transfer", "no transfer with this id")
}

fn unknown_stocktake() -> ApiError {
    ApiError::new(404, "unknown_stocktake", "no stocktake with this id")
}

#[utoipa::path(post, path = "/api/v1/stock/movements", request_body = NewStockMovements,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, body = MovementsReply), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "insufficient_stock"),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_movements(
    State(app): State<AppState>,
    caller: Caller,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let request: NewStockMovements = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            stock::record_movements(conn, local, request, now)
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct StockQuery {
    /// Only this SKU.
    pub sku: Option<String>,
}

/// `GET /api/v1/stock`, `GET /api/v1/stock/alerts`
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StockList {
    pub stock: Vec<StockLevelView>,
}

#[utoipa::path(get, path = "/api/v1/stock", params(StockQuery),
    responses((status = 200, body = StockList)), security(("bearer" = [])))]
pub async fn get_stock(
    State(app): State<AppState>,
    _caller: Caller,
    query: Result<Query<StockQuery>, QueryRejection>,
) -> Result<Json<StockList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let store = app.store_id.clone();
    let stock = app
        .reads
        .run(move |conn| Ok(stock::store_levels(conn, &store, query.sku.as_deref())?))
        .await?;
    Ok(Json(StockList { stock }))
}

#[utoipa::path(get, path = "/api/v1/stock/alerts",
    responses((status = 200, body = StockList, description = "SKUs at or below their threshold")),
    security(("bearer" = [])))]
pub async fn get_alerts(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<StockList>, ApiError> {
    let store = app.store_id.clone();
    let stock = app
        .reads
        .run(move |conn| Ok(stock::store_levels(conn, &store, None)?))
        .await?
        .into_iter()
        .filter(|level| level.low_stock)
        .collect();
    Ok(Json(StockList { stock }))
}

#[utoipa::path(post, path = "/api/v1/stock/thresholds", request_body = NewThreshold,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 200, description = "the threshold as set"), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn set_threshold(
    State(app): State<AppState>,
    caller: Caller,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let request: NewThreshold = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, _local, _now| {
            stock::set_threshold(conn, request)
        })
        .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TransferQuery {
    /// `requested`, `in_transit` or `received`.
    pub state: Option<String>,
    /// At most this many (default 100, at most 500).
    pub limit: Option<usize>,
}

/// `GET /api/v1/transfers`
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TransferList {
    pub transfers: Vec<TransferView>,
}

/// Check a `state` filter.
pub fn transfer_state_filter(state: Option<&str>) -> Result<Option<&str>, ApiError> {
    match state {
        None => Ok(None),
        Some(s @ ("requested" | "in_transit" | "received")) => Ok(Some(s)),
        Some(_) => Err(ApiError::invalid_field(
            "state must be requested, in_transit or received",
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/transfers", params(TransferQuery),
    responses((status = 200, body = TransferList), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_transfers(
    State(app): State<AppState>,
    _caller: Caller,
    query: Result<Query<TransferQuery>, QueryRejection>,
) -> Result<Json<TransferList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let state = transfer_state_filter(query.state.as_deref())?.map(str::to_owned);
    let limit = query.limit.unwrap_or(100).clamp(1, 500);
    let transfers = app
        .reads
        .run(move |conn| {
            Ok(chainsync_replica::stock::transfers(
                conn,
                &TransferFilter {
                    state: state.as_deref(),
                    stores: None,
                    limit,
                },
            )?)
        })
        .await?;
    Ok(Json(TransferList { transfers }))
}

#[utoipa::path(post, path = "/api/v1/transfers", request_body = NewTransfer,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, body = TransferView), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_transfer(
    State(app): State<AppState>,
    caller: Caller,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let request: NewTransfer = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            stock::request_transfer(conn, local, request, now)
        })
        .await
}

#[utoipa::path(post, path = "/api/v1/transfers/{id}/ship", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = TransferLinesInput,
    responses((status = 200, body = TransferView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not_transfer_source, already_shipped, insufficient_stock"),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn ship_transfer(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let id = path_id(path, unknown_transfer)?;
    let request: TransferLinesInput = post.json_or_default()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            stock::ship_transfer(conn, local, id, request, now)
        })
        .await
}

#[utoipa::path(post, path = "/api/v1/transfers/{id}/receive", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = TransferLinesInput,
    responses((status = 200, body = TransferView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "not_transfer_destination, already_received"),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn receive_transfer(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let id = path_id(path, unknown_transfer)?;
    let request: TransferLinesInput = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            stock::receive_transfer(conn, local, id, request, now)
        })
        .await
}

#[utoipa::path(post, path = "/api/v1/stocktakes", request_body = NewStocktake,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, body = StocktakeView), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "stocktake_open")),
    security(("bearer" = [])))]
pub async fn create_stocktake(
    State(app): State<AppState>,
    caller: Caller,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let request: NewStocktake = post.json_or_default()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            stock::start_stocktake(conn, local, request, now)
        })
        .await
}

#[utoipa::path(get, path = "/api/v1/stocktakes/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = StocktakeView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_stocktake(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<StocktakeView>, ApiError> {
    let id = path_id(path, unknown_stocktake)?;
    app.reads
        .run(move |conn| Ok(stock::stocktake(conn, id)?))
        .await?
        .map(Json)
        .ok_or_else(unknown_stocktake)
}

#[utoipa::path(post, path = "/api/v1/stocktakes/{id}/counts", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewCounts,
    responses((status = 200, body = StocktakeView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "stocktake_finished"),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_counts(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let id = path_id(path, unknown_stocktake)?;
    let request: NewCounts = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            stock::record_counts(conn, local, id, request, now)
        })
        .await
}

#[utoipa::path(post, path = "/api/v1/stocktakes/{id}/finish", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 200, body = StocktakeView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "stocktake_finished")),
    security(("bearer" = [])))]
pub async fn finish_stocktake(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let id = path_id(path, unknown_stocktake)?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            stock::finish_stocktake(conn, local, id, now)
        })
        .await
}

#[derive(OpenApi)]
#[openapi(paths(
    create_movements,
    get_stock,
    get_alerts,
    set_threshold,
    list_transfers,
    create_transfer,
    ship_transfer,
    receive_transfer,
    create_stocktake,
    get_stocktake,
    create_counts,
    finish_stocktake
))]
pub struct StockDoc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/stock", get(get_stock))
        .route("/api/v1/stock/movements", post(create_movements))
        .route("/api/v1/stock/alerts", get(get_alerts))
        .route("/api/v1/stock/thresholds", post(set_threshold))
        .route(
            "/api/v1/transfers",
            post(create_transfer).get(list_transfers),
        )
        .route("/api/v1/transfers/{id}/ship", post(ship_transfer))
        .route("/api/v1/transfers/{id}/receive", post(receive_transfer))
        .route("/api/v1/stocktakes", post(create_stocktake))
        .route("/api/v1/stocktakes/{id}", get(get_stocktake))
        .route("/api/v1/stocktakes/{id}/counts", post(create_counts))
        .route("/api/v1/stocktakes/{id}/finish", post(finish_stocktake))
}

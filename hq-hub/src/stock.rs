//! HQ's stock routes: stock by store and SKU, transfers (in transit…), discrepancies of
//! received transfers, and transfers HQ asks for (an `OpV1::TransferRequest` authored by the
//! hub, origin `hq`, relayed to the two stores it concerns). A regional manager sees the
//! stores of their region only: stock of those stores, transfers with an end there.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chainsync_core::StoreId;
use chainsync_core::op::OpV1;
use chainsync_core::stock::{TransferEnds, TransferRequest};
use chainsync_replica::api::ApiError;
use chainsync_replica::stock::{
    self as replica_stock, StockLevelView, TransferFilter, TransferView,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};
use uuid::Uuid;

use crate::http::{Caller, HubState};
use crate::reports::scope::Scope;

#[derive(Debug, Deserialize, IntoParams)]
pub struct StockQuery {
    pub store: Option<String>,
    pub sku: Option<String>,
    /// At most this many rows (default 1000, at most 10000).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HubStockList {
    pub stock: Vec<StockLevelView>,
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::invalid_field(e.body_text()))
}

#[utoipa::path(get, path = "/api/v1/stock", params(StockQuery),
    responses((status = 200, body = HubStockList)), security(("bearer" = [])))]
pub async fn get_stock(
    State(hub): State<HubState>,
    caller: Caller,
    params: Result<Query<StockQuery>, QueryRejection>,
) -> Result<Json<HubStockList>, ApiError> {
    let params = query(params)?;
    let limit = params.limit.unwrap_or(1000).clamp(1, 10_000);
    let user = caller.user.clone();
    let stock = hub
        .reads
        .run(move |conn| {
            let scope = Scope::load(conn, &user)?;
            let levels = replica_stock::levels(
                conn,
                params.store.as_deref(),
                params.sku.as_deref(),
                usize::MAX,
            )?;
            Ok(levels
                .into_iter()
                .filter(|level| scope.allows(&level.store))
                .take(limit)
                .collect())
        })
        .await?;
    Ok(Json(HubStockList { stock }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TransferQuery {
    /// `requested`, `in_transit` or `received`.
    pub state: Option<String>,
    /// Only transfers from or to this store.
    pub store: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct HubTransferList {
    pub transfers: Vec<TransferView>,
}

fn visible_stores(scope: &Scope, store: Option<String>) -> Option<Vec<String>> {
    match (store, &scope.stores) {
        (Some(store), Some(allowed)) if !allowed.contains(&store) => Some(Vec::new()),
        (Some(store), _) => Some(vec![store]),
        (None, Some(allowed)) => Some(allowed.iter().cloned().collect()),
        (None, None) => None,
    }
}

#[utoipa::path(get, path = "/api/v1/transfers", params(TransferQuery),
    responses((status = 200, body = HubTransferList), (status = 422, body = chainsync_replica::views::ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_transfers(
    State(hub): State<HubState>,
    caller: Caller,
    params: Result<Query<TransferQuery>, QueryRejection>,
) -> Result<Json<HubTransferList>, ApiError> {
    let params = query(params)?;
    let state = match params.state.as_deref() {
        None => None,
        Some(s @ ("requested" | "in_transit" | "received")) => Some(s.to_owned()),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "state must be requested, in_transit or received",
            ));
        }
    };
    let limit = params.limit.unwrap_or(100).clamp(1, 1000);
    let user = caller.user.clone();
    let transfers = hub
        .reads
        .run(move |conn| {
            let scope = Scope::load(conn, &user)?;
            let stores = visible_stores(&scope, params.store);
            Ok(replica_stock::transfers(
                conn,
                &TransferFilter {
                    state: state.as_deref(),
                    stores: stores.as_deref(),
                    limit,
                },
            )?)
        })
        .await?;
    Ok(Json(HubTransferList { transfers }))
}

/// One line received short (missing > 0) or over (missing < 0).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DiscrepancyView {
    pub transfer_id: Uuid,
    pub from_store: String,
    pub to_store: String,
    pub sku: String,
    pub shipped: i64,
    pub received: i64,
    /// shipped − received.
    pub missing: i64,
    pub received_ms: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DiscrepancyList {
    pub discrepancies: Vec<DiscrepancyView>,
}

#[utoipa::path(get, path = "/api/v1/stock/discrepancies",
    responses((status = 200, body = DiscrepancyList)), security(("bearer" = [])))]
pub async fn list_discrepancies(
    State(hub): State<HubState>,
    caller: Caller,
) -> Result<Json<DiscrepancyList>, ApiError> {
    let user = caller.user.clone();
    let discrepancies = hub
        .reads
        .run(move |conn| {
            let scope = Scope::load(conn, &user)?;
            let stores = visible_stores(&scope, None);
            let received = replica_stock::transfers(
                conn,
                &TransferFilter {
                    state: Some("received"),
                    stores: stores.as_deref(),
                    limit: usize::MAX,
                },
            )?;
            Ok(received
                .into_iter()
                .flat_map(|t| {
                    t.lines
                        .iter()
                        .filter(|l| l.missing != 0)
                        .map(|l| DiscrepancyView {
                            transfer_id: t.id,
                            from_store: t.from_store.clone(),
                            to_store: t.to_store.clone(),
                            sku: l.sku.clone(),
                            shipped: l.shipped,
                            received: l.received,
                            missing: l.missing,
                            received_ms: t.received_ms,
                        })
                        .collect::<Vec<_>>()
                })
                .collect())
        })
        .await?;
    Ok(Json(DiscrepancyList { discrepancies }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HubTransferLine {
    pub sku: String,
    pub qty: i64,
}

/// `POST /api/v1/transfers` (HQ asks store `from_store` to send goods to `to_store`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewHubTransfer {
    /// Chosen by the client to make a retry harmless (default: a new id).
    pub id: Option<Uuid>,
    pub from_store: String,
    pub to_store: String,
    pub lines: Vec<HubTransferLine>,
    pub note: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/transfers", request_body = NewHubTransfer,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key (as is an `id` in the body)")),
    responses((status = 201, body = TransferView), (status = 200, body = TransferView, description = "a retry with the same id"),
        (status = 403, body = chainsync_replica::views::ErrorBody),
        (status = 422, body = chainsync_replica::views::ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_transfer(
    State(hub): State<HubState>,
    caller: Caller,
    post: chainsync_replica::posted::Posted,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    caller.require_operator()?;
    let request: NewHubTransfer = post.json()?;
    // A repeat of an answered request: the first answer, nothing written again (also when
    // the stores or products changed since).
    let keyed = post.idempotency()?;
    if let Some(answer) = crate::idempotency::recalled(&hub, &keyed).await? {
        return Ok(answer);
    }
    let id = match request.id {
        Some(id) => id,
        None => {
            let mut random = [0u8; 10];
            getrandom::fill(&mut random).map_err(ApiError::internal)?;
            uuid::Builder::from_unix_timestamp_millis(crate::now_ms(), &random).into_uuid()
        }
    };
    let parse = |field: &str, text: &str| {
        StoreId::parse(text)
            .ok()
            .filter(|s| *s != StoreId::hub())
            .ok_or_else(|| ApiError::invalid_field(format!("{field}: not a store id")))
    };
    let from = parse("from_store", &request.from_store)?;
    let to = parse("to_store", &request.to_store)?;
    let note = request
        .note
        .map(|n| n.trim().to_owned())
        .filter(|n| !n.is_empty());
    if note
        .as_ref()
        .is_some_and(|n| n.chars().count() > chainsync_core::limits::note_chars_max)
    {
        return Err(ApiError::invalid_field("note is too long"));
    }
    let transfer = TransferRequest {
        ends: TransferEnds {
            id,
            from: from.clone(),
            to: to.clone(),
        },
        lines: request.lines.into_iter().map(|l| (l.sku, l.qty)).collect(),
        note,
        at_ms: crate::now_ms(),
    };
    transfer
        .check()
        .map_err(|e| ApiError::invalid_field(e.to_string()))?;
    let check = transfer.clone();
    let existing = hub
        .reads
        .run(move |conn| {
            for store in [&check.ends.from, &check.ends.to] {
                let enrolled: bool = conn.query_row(
                    "SELECT COUNT(*) > 0 FROM stores WHERE store_id = ?1",
                    [store.as_str()],
                    |row| row.get(0),
                )?;
                if !enrolled {
                    return Err(ApiError::invalid_field(format!(
                        "store {store} is not enrolled"
                    )));
                }
            }
            for (index, (sku, _)) in check.lines.iter().enumerate() {
                if chainsync_replica::read::product(conn, sku)?.is_none() {
                    return Err(ApiError::new(
                        422,
                        "unknown_sku",
                        format!("line {index}: unknown SKU {sku:?}"),
                    ));
                }
            }
            Ok(replica_stock::transfer(conn, check.ends.id)?)
        })
        .await?;
    if let Some(existing) = existing {
        if existing.from_store != from.as_str() || existing.to_store != to.as_str() {
            return Err(ApiError::new(
                409,
                "transfer_id_taken",
                "a different transfer has this id",
            ));
        }
        return Ok((StatusCode::OK, Json(existing)).into_response());
    }
    crate::idempotency::author_answered(&hub, keyed, OpV1::TransferRequest(transfer), move |tx| {
        crate::idempotency::as_answer(replica_stock::transfer(tx, id)?, "transfer")
    })
    .await
}

#[derive(OpenApi)]
#[openapi(paths(get_stock, list_transfers, list_discrepancies, create_transfer))]
pub struct StockApi;

pub fn routes() -> Router<HubState> {
    Router::new()
        .route("/api/v1/stock", get(get_stock))
        .route(
            "/api/v1/transfers",
            get(list_transfers).post(create_transfer),
        )
        .route("/api/v1/stock/discrepancies", get(list_discrepancies))
}

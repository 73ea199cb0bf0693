//! HQ's HTTP API on the hub: stores and their sync state, members and ledgers across the
//! chain, the state digest. Bearer tokens from `hq-hub user add`; `/healthz` is open.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use chainsync_core::member::normalize_phone;
use chainsync_core::rules::Rules;
use chainsync_replica::api::ApiError;
use chainsync_replica::read::{self, MemberQuery, ReadPool};
use chainsync_replica::views::{CheckoutView, ErrorBody, LedgerView, MemberList, MemberView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use utoipa::{OpenApi, ToSchema};
use uuid::Uuid;

use crate::now_ms;

/// Live sessions per store (a store counts as online after the hub's Welcome).
pub type OnlineStores = Arc<Mutex<HashMap<String, usize>>>;

#[derive(Clone)]
pub struct HubState {
    pub reads: Arc<ReadPool>,
    pub online: OnlineStores,
    pub rules: Arc<Rules>,
}

pub struct Caller {
    pub name: String,
    pub role: String,
}

impl FromRequestParts<HubState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, hub: &HubState) -> Result<Self, ApiError> {
        let unauthorized =
            || ApiError::new(401, "unauthorized", "send Authorization: Bearer <token>");
        let token = parts
            .headers
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty() && token.len() <= 128)
            .ok_or_else(unauthorized)?
            .to_owned();
        let found = hub
            .reads
            .run(move |conn| Ok(crate::users::find_by_token(conn, &token)?))
            .await?;
        found
            .map(|(name, role)| Caller { name, role })
            .ok_or_else(|| ApiError::new(401, "unauthorized", "unknown token"))
    }
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoreView {
    pub id: String,
    pub name: String,
    pub region: String,
    /// A session is up (the hub answered the store's Hello).
    pub online: bool,
    /// Last contact, Unix ms (null: never).
    pub last_seen: Option<u64>,
    /// Operations not yet exchanged: the hub's log the store has not applied, plus the
    /// store's own operations (as of its last Hello) the hub does not hold.
    pub lag: u64,
    pub acked_seq: u64,
    pub relay_acked: u64,
    pub revoked: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StoreList {
    pub stores: Vec<StoreView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DigestView {
    pub digest: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(HubApi::openapi())
}

#[utoipa::path(get, path = "/api/v1/stores", responses((status = 200, body = StoreList)),
    security(("bearer" = [])))]
async fn list_stores(
    State(hub): State<HubState>,
    _caller: Caller,
) -> Result<Json<StoreList>, ApiError> {
    let online = hub.online.lock().map(|map| map.clone()).unwrap_or_default();
    let stores = hub
        .reads
        .run(move |conn| {
            let head = crate::storage::log_head(conn)?;
            let mut statement = conn.prepare(
                "SELECT store_id, name, region, last_seen_ms, acked_seq, relay_acked,
                        reported_seq, revoked_ms IS NOT NULL
                 FROM stores ORDER BY store_id",
            )?;
            let mut rows = statement.query([])?;
            let mut stores = Vec::new();
            while let Some(row) = rows.next()? {
                let id: String = row.get(0)?;
                let acked = row.get::<_, i64>(4)?.max(0) as u64;
                let relay_acked = row.get::<_, i64>(5)?.max(0) as u64;
                let reported = row.get::<_, i64>(6)?.max(0) as u64;
                stores.push(StoreView {
                    online: online.get(&id).is_some_and(|n| *n > 0),
                    name: row.get(1)?,
                    region: row.get(2)?,
                    last_seen: row.get::<_, Option<i64>>(3)?.map(|v| v.max(0) as u64),
                    lag: head.saturating_sub(relay_acked) + reported.saturating_sub(acked),
                    acked_seq: acked,
                    relay_acked,
                    revoked: row.get(7)?,
                    id,
                });
            }
            Ok(stores)
        })
        .await?;
    Ok(Json(StoreList { stores }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct MemberSearch {
    pub phone: Option<String>,
    pub card_no: Option<String>,
    pub q: Option<String>,
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/members", params(MemberSearch),
    responses((status = 200, body = MemberList)), security(("bearer" = [])))]
async fn search_members(
    State(hub): State<HubState>,
    _caller: Caller,
    query: Result<Query<MemberSearch>, QueryRejection>,
) -> Result<Json<MemberList>, ApiError> {
    let Query(search) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let member_query = if let Some(phone) = search.phone {
        match normalize_phone(&phone) {
            Ok(phone) => MemberQuery::Phone(phone),
            Err(_) => {
                return Ok(Json(MemberList {
                    members: Vec::new(),
                }));
            }
        }
    } else if let Some(card_no) = search.card_no {
        MemberQuery::CardNo(card_no.trim().to_owned())
    } else if let Some(text) = search.q.filter(|q| !q.trim().is_empty()) {
        MemberQuery::Text(text.trim().to_owned())
    } else {
        MemberQuery::All
    };
    let limit = search.limit.unwrap_or(50);
    let rules = hub.rules.clone();
    let members = hub
        .reads
        .run(move |conn| read::find_members(conn, &member_query, limit, &rules, now_ms()))
        .await?;
    Ok(Json(MemberList { members }))
}

fn member_id(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::unknown_member())
}

#[utoipa::path(get, path = "/api/v1/members/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = MemberView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_member(
    State(hub): State<HubState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<MemberView>, ApiError> {
    let id = member_id(path)?;
    let rules = hub.rules.clone();
    hub.reads
        .run(move |conn| read::member(conn, id, &rules, now_ms()))
        .await?
        .map(Json)
        .ok_or_else(ApiError::unknown_member)
}

#[utoipa::path(get, path = "/api/v1/members/{id}/ledger", params(("id" = Uuid, Path)),
    responses((status = 200, body = LedgerView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn member_ledger(
    State(hub): State<HubState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<LedgerView>, ApiError> {
    let id = member_id(path)?;
    hub.reads
        .run(move |conn| read::ledger(conn, id))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/api/v1/checkouts/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = CheckoutView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_checkout(
    State(hub): State<HubState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<CheckoutView>, ApiError> {
    let unknown = || ApiError::new(404, "unknown_checkout", "no checkout with this id");
    let id = path.map(|Path(id)| id).map_err(|_| unknown())?;
    hub.reads
        .run(move |conn| read::checkout(conn, "hq", id))
        .await?
        .map(Json)
        .ok_or_else(unknown)
}

#[utoipa::path(get, path = "/api/v1/sync/digest", responses((status = 200, body = DigestView)),
    security(("bearer" = [])))]
async fn digest(
    State(hub): State<HubState>,
    _caller: Caller,
) -> Result<Json<DigestView>, ApiError> {
    let digest = hub
        .reads
        .run(|conn| Ok(chainsync_replica::digest::snapshot_digest(conn)?))
        .await?;
    Ok(Json(DigestView { digest }))
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such route")
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "chainsync hq-hub API", description = "HQ's view of the chain. Money is integer 分."),
    paths(healthz, list_stores, search_members, get_member, member_ledger, get_checkout, digest),
    modifiers(&BearerAuth)
)]
pub struct HubApi;

pub fn router(hub: HubState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_json))
        .route("/api/v1/stores", get(list_stores))
        .route("/api/v1/members", get(search_members))
        .route("/api/v1/members/{id}", get(get_member))
        .route("/api/v1/members/{id}/ledger", get(member_ledger))
        .route("/api/v1/checkouts/{id}", get(get_checkout))
        .route("/api/v1/sync/digest", get(digest))
        .fallback(not_found)
        .with_state(hub)
}

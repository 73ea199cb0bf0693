//! HQ's HTTP API on the hub: stores and their sync state, members and ledgers across the
//! chain, the state digest. Bearer tokens from `hq-hub user add`; `/healthz` is open.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use chainsync_core::rules::Rules;
use chainsync_replica::api::ApiError;
use chainsync_replica::api::BearerAuth;
use chainsync_replica::read::{self, MemberSearch, ReadPool};
use chainsync_replica::views::{CheckoutView, ErrorBody, LedgerView, MemberList, MemberView};
use rusqlite::OptionalExtension;
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
    /// The hub's one writer (shared with the sync sessions).
    pub writer: Arc<Mutex<rusqlite::Connection>>,
    pub log_grew: tokio::sync::watch::Sender<u64>,
    /// Ledger entries acknowledged to stores and not projected yet (see `storage::Projection`).
    pub projection: Arc<crate::storage::Projection>,
}

impl Caller {
    /// HQ configuration and exception resolution are for admin and hq-ops.
    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.role == "admin" || self.role == "hq-ops" {
            Ok(())
        } else {
            Err(ApiError::new(
                403,
                "forbidden",
                "only admin or hq-ops may do this",
            ))
        }
    }
}

impl HubState {
    /// HQ's newest rule set (the defaults until HQ sets one).
    pub async fn current_rules(&self) -> Result<Rules, ApiError> {
        self.reads
            .run(|conn| Ok(chainsync_replica::program::rules(conn)?))
            .await
    }

    /// Write an HQ operation on a blocking thread and wake the sessions to relay it.
    pub(crate) async fn author(&self, op: chainsync_core::op::OpV1) -> Result<(), ApiError> {
        let writer = self.writer.clone();
        let head = tokio::task::spawn_blocking(move || {
            let mut conn = writer
                .lock()
                .map_err(|_| ApiError::internal("writer lock"))?;
            crate::storage::author(&mut conn, op, now_ms()).map_err(ApiError::internal)
        })
        .await
        .map_err(ApiError::internal)??;
        self.log_grew.send_replace(head);
        Ok(())
    }
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_json(format!("request body: {e}")))
}

/// HQ's offline allowance policy (amounts in 分).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PolicyView {
    pub version: u64,
    pub member_stored_value_max_fen: i64,
    pub member_points_max: i64,
    pub store_exposure_max_fen: i64,
    pub authorization_timeout_ms: u64,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    pub member_stored_value_max_fen: Option<i64>,
    pub member_points_max: Option<i64>,
    pub store_exposure_max_fen: Option<i64>,
    pub authorization_timeout_ms: Option<u64>,
}

fn policy_view(policy: &chainsync_core::allowance::AllowancePolicy) -> PolicyView {
    PolicyView {
        version: policy.version,
        member_stored_value_max_fen: policy.member_stored_value_max.0,
        member_points_max: policy.member_points_max,
        store_exposure_max_fen: policy.store_exposure_max.0,
        authorization_timeout_ms: policy.authorization_timeout_ms,
    }
}

#[utoipa::path(get, path = "/api/v1/allowance-policy", responses((status = 200, body = PolicyView)),
    security(("bearer" = [])))]
async fn get_policy(
    State(hub): State<HubState>,
    _caller: Caller,
) -> Result<Json<PolicyView>, ApiError> {
    let policy = hub
        .reads
        .run(|conn| Ok(chainsync_replica::read::allowance_policy(conn)?))
        .await?;
    Ok(Json(policy_view(&policy)))
}

#[utoipa::path(put, path = "/api/v1/allowance-policy", request_body = PolicyChange,
    responses((status = 200, body = PolicyView), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn put_policy(
    State(hub): State<HubState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<Json<PolicyView>, ApiError> {
    caller.require_operator()?;
    let change: PolicyChange = parse_body(&body)?;
    let mut policy = hub
        .reads
        .run(|conn| Ok(chainsync_replica::read::allowance_policy(conn)?))
        .await?;
    let amount = |value: i64, what: &str| -> Result<i64, ApiError> {
        if (0..=chainsync_core::limits::amount_fen_max).contains(&value) {
            Ok(value)
        } else {
            Err(ApiError::invalid_amount(format!(
                "{what} must be 0 to {}",
                chainsync_core::limits::amount_fen_max
            )))
        }
    };
    if let Some(v) = change.member_stored_value_max_fen {
        policy.member_stored_value_max =
            chainsync_core::Fen(amount(v, "member_stored_value_max_fen")?);
    }
    if let Some(v) = change.member_points_max {
        policy.member_points_max = amount(v, "member_points_max")?;
    }
    if let Some(v) = change.store_exposure_max_fen {
        policy.store_exposure_max = chainsync_core::Fen(amount(v, "store_exposure_max_fen")?);
    }
    if let Some(v) = change.authorization_timeout_ms {
        if !(50..=30_000).contains(&v) {
            return Err(ApiError::invalid_field(
                "authorization_timeout_ms must be 50 to 30000",
            ));
        }
        policy.authorization_timeout_ms = v;
    }
    policy.version += 1;
    hub.author(chainsync_core::op::OpV1::AllowancePolicySet(policy.clone()))
        .await?;
    Ok(Json(policy_view(&policy)))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ExceptionFilter {
    /// Include resolved exceptions (default: open ones only).
    pub all: Option<bool>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ExceptionList {
    pub exceptions: Vec<crate::exceptions::ExceptionView>,
}

#[utoipa::path(get, path = "/api/v1/exceptions", params(ExceptionFilter),
    responses((status = 200, body = ExceptionList)), security(("bearer" = [])))]
async fn list_exceptions(
    State(hub): State<HubState>,
    caller: Caller,
    query: Result<Query<ExceptionFilter>, QueryRejection>,
) -> Result<Json<ExceptionList>, ApiError> {
    if caller.user.region_scope().is_some() {
        return Err(ApiError::new(
            403,
            "forbidden",
            "the exception queue is chain-wide; regional managers cannot read it",
        ));
    }
    let Query(filter) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let all = filter.all.unwrap_or(false);
    let exceptions = hub
        .reads
        .run(move |conn| Ok(crate::exceptions::list(conn, all)?))
        .await?;
    Ok(Json(ExceptionList { exceptions }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    /// What HQ did about it (required).
    pub note: String,
}

#[utoipa::path(post, path = "/api/v1/exceptions/{id}/resolve", params(("id" = i64, Path)),
    request_body = Resolution,
    responses((status = 200, body = crate::exceptions::ExceptionView), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn resolve_exception(
    State(hub): State<HubState>,
    caller: Caller,
    path: Result<Path<i64>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Json<crate::exceptions::ExceptionView>, ApiError> {
    caller.require_operator()?;
    let unknown = || ApiError::new(404, "unknown_exception", "no exception with this id");
    let id = path.map(|Path(id)| id).map_err(|_| unknown())?;
    let resolution: Resolution = parse_body(&body)?;
    let note = resolution.note.trim().to_owned();
    if note.is_empty() || note.chars().count() > 500 {
        return Err(ApiError::invalid_field("note must be 1 to 500 characters"));
    }
    let writer = hub.writer.clone();
    let who = caller.name.clone();
    tokio::task::spawn_blocking(move || {
        let conn = writer
            .lock()
            .map_err(|_| ApiError::internal("writer lock"))?;
        let state: Option<Option<i64>> = conn
            .query_row(
                "SELECT resolved_ms FROM exceptions WHERE id = ?1",
                [id],
                |row| row.get(0),
            )
            .optional()?;
        match state {
            None => Err(unknown()),
            Some(Some(_)) => Err(ApiError::new(
                409,
                "already_resolved",
                "this exception was resolved before",
            )),
            Some(None) => {
                conn.execute(
                    "UPDATE exceptions SET resolved_ms = ?2, resolved_by = ?3, resolution_note = ?4
                     WHERE id = ?1",
                    rusqlite::params![id, now_ms() as i64, who, note],
                )?;
                Ok(())
            }
        }
    })
    .await
    .map_err(ApiError::internal)??;
    let found = hub
        .reads
        .run(move |conn| {
            Ok(crate::exceptions::list(conn, true)?
                .into_iter()
                .find(|e| e.id == id))
        })
        .await?;
    found.map(Json).ok_or_else(unknown)
}

pub struct Caller {
    pub name: String,
    pub role: String,
    pub user: crate::users::User,
}

impl Caller {
    /// Regional managers see only members whose home store is in their region.
    fn may_see_member(&self, member: &MemberView, stores: &[StoreView]) -> bool {
        match self.user.region_scope() {
            None => true,
            Some(region) => member
                .home_store
                .as_deref()
                .is_some_and(|home| stores.iter().any(|s| s.id == home && s.region == region)),
        }
    }

    fn show_member(&self, mut member: MemberView) -> MemberView {
        if !self.user.sees_phones() {
            member.phone = crate::users::mask_phone(&member.phone);
        }
        member
    }
}

/// Every enrolled store with its region (for scoping regional managers).
async fn store_regions(hub: &HubState) -> Result<Vec<StoreView>, ApiError> {
    hub.reads
        .run(|conn| {
            let mut statement = conn.prepare_cached("SELECT store_id, region FROM stores")?;
            let rows = statement.query_map([], |row| {
                Ok(StoreView {
                    id: row.get(0)?,
                    name: String::new(),
                    region: row.get(1)?,
                    online: false,
                    last_seen: None,
                    lag: 0,
                    acked_seq: 0,
                    relay_acked: 0,
                    revoked: false,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
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
            .run(move |conn| Ok(crate::users::find_by_token(conn, &token, now_ms())?))
            .await?;
        found
            .map(|user| Caller {
                name: user.name.clone(),
                role: user.role.clone(),
                user,
            })
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
    /// Hex SHA-256 of the state every replica holds.
    pub digest: String,
    /// Per-store scopes (`stock:<store>`, `transfers:<store>`) for every enrolled store and
    /// every store with stock here: equal to the store's own answer once converged.
    pub scopes: std::collections::BTreeMap<String, String>,
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
    let mut doc = HubApi::openapi();
    doc.merge(crate::stock::StockApi::openapi());
    Json(doc)
}

#[utoipa::path(get, path = "/api/v1/stores", responses((status = 200, body = StoreList)),
    security(("bearer" = [])))]
async fn list_stores(
    State(hub): State<HubState>,
    caller: Caller,
) -> Result<Json<StoreList>, ApiError> {
    let region = caller.user.region_scope().map(str::to_owned);
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
                let store_region: String = row.get(2)?;
                if region.as_ref().is_some_and(|r| *r != store_region) {
                    continue;
                }
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

#[utoipa::path(get, path = "/api/v1/members", params(MemberSearch),
    responses((status = 200, body = MemberList)), security(("bearer" = [])))]
async fn search_members(
    State(hub): State<HubState>,
    caller: Caller,
    query: Result<Query<MemberSearch>, QueryRejection>,
) -> Result<Json<MemberList>, ApiError> {
    let Query(search) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let Some((member_query, limit)) = search.query() else {
        return Ok(Json(MemberList {
            members: Vec::new(),
        }));
    };
    // A regional manager's rows are filtered after the query: ask for the most rows.
    let asked = if caller.user.region_scope().is_some() {
        read::list_rows_max
    } else {
        limit
    };
    let members = hub
        .reads
        .run(move |conn| {
            let rules = chainsync_replica::program::rules(conn)?;
            read::find_members(
                conn,
                &member_query,
                asked,
                &rules,
                now_ms(),
                chainsync_core::engagement::default_utc_offset_seconds,
            )
        })
        .await?;
    let stores = store_regions(&hub).await?;
    let members = members
        .into_iter()
        .filter(|m| caller.may_see_member(m, &stores))
        .take(limit.clamp(1, read::list_rows_max))
        .map(|m| caller.show_member(m))
        .collect();
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
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<MemberView>, ApiError> {
    let id = member_id(path)?;
    visible_member(&hub, &caller, id)
        .await
        .map(|m| Json(caller.show_member(m)))
}

/// The member, if it exists and the caller may see it (else `unknown_member`).
async fn visible_member(hub: &HubState, caller: &Caller, id: Uuid) -> Result<MemberView, ApiError> {
    let member = hub
        .reads
        .run(move |conn| {
            let rules = chainsync_replica::program::rules(conn)?;
            read::member(
                conn,
                id,
                &rules,
                now_ms(),
                chainsync_core::engagement::default_utc_offset_seconds,
            )
        })
        .await?
        .ok_or_else(ApiError::unknown_member)?;
    if caller.user.region_scope().is_some() {
        let stores = store_regions(hub).await?;
        if !caller.may_see_member(&member, &stores) {
            return Err(ApiError::unknown_member());
        }
    }
    Ok(member)
}

#[utoipa::path(get, path = "/api/v1/members/{id}/ledger", params(("id" = Uuid, Path)),
    responses((status = 200, body = LedgerView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn member_ledger(
    State(hub): State<HubState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<LedgerView>, ApiError> {
    let id = member_id(path)?;
    visible_member(&hub, &caller, id).await?;
    hub.reads
        .run(move |conn| read::ledger(conn, id))
        .await
        .map(Json)
}

#[utoipa::path(get, path = "/api/v1/checkouts/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = CheckoutView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_checkout(
    State(hub): State<HubState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<CheckoutView>, ApiError> {
    let unknown = || ApiError::new(404, "unknown_checkout", "no checkout with this id");
    let id = path.map(|Path(id)| id).map_err(|_| unknown())?;
    let checkout = hub
        .reads
        .run(move |conn| read::checkout(conn, "hq", id))
        .await?
        .ok_or_else(unknown)?;
    if let Some(region) = caller.user.region_scope() {
        let stores = store_regions(&hub).await?;
        if !stores
            .iter()
            .any(|s| s.id == checkout.store_id && s.region == region)
        {
            return Err(unknown());
        }
    }
    Ok(Json(checkout))
}

#[utoipa::path(get, path = "/api/v1/sync/digest", responses((status = 200, body = DigestView)),
    security(("bearer" = [])))]
async fn digest(
    State(hub): State<HubState>,
    _caller: Caller,
) -> Result<Json<DigestView>, ApiError> {
    let (digest, scopes) = hub.reads.run(|conn| Ok(hub_digest(conn)?)).await?;
    Ok(Json(DigestView { digest, scopes }))
}

/// The state digest and every store's scope digests, in one read transaction.
pub fn hub_digest(
    conn: &rusqlite::Connection,
) -> rusqlite::Result<(String, std::collections::BTreeMap<String, String>)> {
    conn.execute_batch("BEGIN DEFERRED")?;
    let result = (|| -> rusqlite::Result<(String, std::collections::BTreeMap<String, String>)> {
        let digest = chainsync_replica::digest::state_digest(conn)?;
        let enrolled: Vec<String> = conn
            .prepare_cached("SELECT store_id FROM stores")?
            .query_map([], |row| row.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let scopes = chainsync_replica::stock::scope_digests(conn, None, &enrolled)?;
        Ok((digest, scopes))
    })();
    let end = conn.execute_batch("COMMIT");
    let result = result?;
    end?;
    Ok(result)
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such route")
}

#[derive(OpenApi)]
#[openapi(
    info(title = "chainsync hq-hub API", description = "HQ's view of the chain. Money is integer 分."),
    paths(healthz, list_stores, search_members, get_member, member_ledger, get_checkout, digest,
        get_policy, put_policy, list_exceptions,
        resolve_exception, crate::reports::http::login, crate::reports::http::me,
        crate::reports::http::audit_log, crate::reports::http::adjust,
        crate::reports::http::member_search, crate::reports::http::segments,
        crate::reports::http::segment_members, crate::reports::http::report,
        crate::program::get_rules, crate::program::put_rules,
        crate::program::create_count_card_template, crate::program::list_count_card_templates,
        crate::program::list_member_count_cards, crate::program::create_gift,
        crate::program::list_gifts, crate::catalog::list_catalog, crate::catalog::list_bundles,
        crate::catalog::get_item, crate::catalog::put_item, crate::catalog::get_bundle,
        crate::catalog::put_bundle, crate::catalog::import_catalog,
        crate::catalog::export_catalog, crate::program::list_member_feedback,
        crate::coupons::create_template,
        crate::coupons::list_templates, crate::coupons::issue_coupons,
        crate::coupons::bulk_issue, crate::coupons::claim, crate::coupons::get_coupon,
        crate::coupons::create_lottery, crate::coupons::list_lotteries),
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
        .route("/api/v1/allowance-policy", get(get_policy).put(put_policy))
        .route("/api/v1/exceptions", get(list_exceptions))
        .route(
            "/api/v1/exceptions/{id}/resolve",
            axum::routing::post(resolve_exception),
        )
        .merge(crate::reports::http::routes())
        .merge(crate::program::routes())
        .merge(crate::catalog::routes())
        .merge(crate::stock::routes())
        .merge(crate::coupons::routes())
        .fallback(not_found)
        .with_state(hub)
}

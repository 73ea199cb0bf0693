//! The HTTP API: routes, bearer-token auth, JSON errors, idempotency keys, OpenAPI.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use chainsync_core::rules::Rules;
use serde::Deserialize;
use std::sync::Arc;
use utoipa::OpenApi;
use uuid::Uuid;

use crate::auth::{Role, User};
use crate::commands;
use crate::writer::Writer;
use chainsync_replica::api::BearerAuth;
use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::posted::Posted;
use chainsync_replica::read::{self, MemberSearch, ReadPool};
use chainsync_replica::views::*;

/// Largest request body, in bytes.
pub const request_body_bytes_max: usize = 256 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub writer: Writer,
    pub reads: Arc<ReadPool>,
    pub store_id: String,
    pub rules: Arc<Rules>,
    /// The sync link as the running sync client sees it.
    pub link: crate::sync_client::SharedLinkStatus,
    /// Asks the hub to authorize spends (None: a standalone store).
    pub authorizer: Option<crate::sync_client::Authorizer>,
    /// The store's time zone (seconds east of UTC) for local-date rules.
    pub utc_offset_seconds: i32,
}

impl AppState {
    /// The rule set this store holds now (HQ's newest that arrived, else the defaults).
    pub async fn current_rules(&self) -> Result<Rules, ApiError> {
        self.reads
            .run(|conn| Ok(chainsync_replica::program::rules(conn)?))
            .await
    }
}

/// The authenticated caller.
pub struct Caller(pub User);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized =
            || ApiError::new(401, "unauthorized", "send Authorization: Bearer <token>");
        let header = parts
            .headers
            .get("authorization")
            .ok_or_else(unauthorized)?;
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty() && token.len() <= 128)
            .ok_or_else(unauthorized)?
            .to_owned();
        let user = app
            .reads
            .run(move |conn| Ok(crate::auth::find_by_token(conn, &token)?))
            .await?;
        user.map(Caller)
            .ok_or_else(|| ApiError::new(401, "unauthorized", "unknown token"))
    }
}

impl Caller {
    pub(crate) fn require_manager(&self) -> Result<(), ApiError> {
        if self.0.role == Role::Manager {
            Ok(())
        } else {
            Err(ApiError::new(
                403,
                "forbidden",
                "only a store manager may do this",
            ))
        }
    }
}

/// The member id of a `/members/{id}/…` path (404 `unknown_member` when it is not an id).
pub(crate) fn member_id(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::unknown_member())
}

fn checkout_id(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::new(404, "unknown_checkout", "no checkout with this id"))
}

#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health)))]
async fn healthz(State(app): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        store_id: app.store_id.clone(),
    })
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    let mut doc = ApiDoc::openapi();
    doc.merge(crate::membership_http::MembershipDoc::openapi());
    doc.merge(crate::stock_http::StockDoc::openapi());
    doc.merge(crate::coupons::CouponsDoc::openapi());
    Json(doc)
}

#[utoipa::path(post, path = "/api/v1/members", request_body = NewMember,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, body = MemberView), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_member(
    State(app): State<AppState>,
    _caller: Caller,
    post: Posted,
) -> Result<Reply, ApiError> {
    let request: NewMember = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            commands::register_member(conn, local, request, now)
        })
        .await
}

#[utoipa::path(get, path = "/api/v1/members", params(MemberSearch),
    responses((status = 200, body = MemberList)), security(("bearer" = [])))]
async fn search_members(
    State(app): State<AppState>,
    _caller: Caller,
    query: Result<Query<MemberSearch>, QueryRejection>,
) -> Result<Json<MemberList>, ApiError> {
    let Query(search) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let Some((member_query, limit)) = search.query() else {
        return Ok(Json(MemberList {
            members: Vec::new(),
        }));
    };
    let offset = app.utc_offset_seconds;
    let members = app
        .reads
        .run(move |conn| {
            let rules = chainsync_replica::program::rules(conn)?;
            read::find_members(conn, &member_query, limit, &rules, crate::now_ms(), offset)
        })
        .await?;
    Ok(Json(MemberList { members }))
}

#[utoipa::path(get, path = "/api/v1/members/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = MemberView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_member(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<MemberView>, ApiError> {
    let id = member_id(path)?;
    let offset = app.utc_offset_seconds;
    app.reads
        .run(move |conn| {
            let rules = chainsync_replica::program::rules(conn)?;
            read::member(conn, id, &rules, crate::now_ms(), offset)
        })
        .await?
        .map(Json)
        .ok_or_else(ApiError::unknown_member)
}

#[utoipa::path(patch, path = "/api/v1/members/{id}", params(("id" = Uuid, Path)), request_body = MemberPatch,
    responses((status = 200, body = MemberView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn patch_member(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    patch: Posted,
) -> Result<Reply, ApiError> {
    let id = member_id(path)?;
    let request: MemberPatch = patch.json()?;
    app.writer
        .write(None, move |conn, local, now| {
            commands::patch_member(conn, local, id, request, now)
        })
        .await
}

#[utoipa::path(get, path = "/api/v1/members/{id}/ledger", params(("id" = Uuid, Path)),
    responses((status = 200, body = LedgerView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn member_ledger(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<LedgerView>, ApiError> {
    let id = member_id(path)?;
    app.reads
        .run(move |conn| {
            if !read::member_exists(conn, id)? {
                return Err(ApiError::unknown_member());
            }
            read::ledger(conn, id)
        })
        .await
        .map(Json)
}

#[utoipa::path(post, path = "/api/v1/members/{id}/recharges", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewRecharge,
    responses((status = 201, body = RechargeView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_recharge(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    let id = member_id(path)?;
    let request: NewRecharge = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            commands::recharge(conn, local, id, request, now)
        })
        .await
}

#[utoipa::path(post, path = "/api/v1/products", request_body = NewProduct,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, body = ProductView), (status = 200, body = ProductView), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_product(
    State(app): State<AppState>,
    caller: Caller,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let request: NewProduct = post.json()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            commands::upsert_product(conn, local, request, now)
        })
        .await
}

/// Filters of `GET /api/v1/products` (all optional; none: every product).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProductQuery {
    /// Exact barcode (a scanner's read).
    pub barcode: Option<String>,
    pub category: Option<String>,
    pub active: Option<bool>,
    /// SKU, barcode or name fragment.
    pub q: Option<String>,
    /// Only bundles (true) or only plain items (false).
    pub bundle: Option<bool>,
}

#[utoipa::path(get, path = "/api/v1/products", params(ProductQuery),
    responses((status = 200, body = ProductList), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn list_products(
    State(app): State<AppState>,
    _caller: Caller,
    query: Result<Query<ProductQuery>, QueryRejection>,
) -> Result<Json<ProductList>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let filter = chainsync_replica::catalog::CatalogFilter {
        category: query.category.filter(|c| !c.is_empty()),
        active: query.active,
        q: query.q.filter(|q| !q.is_empty()),
        barcode: query.barcode.filter(|b| !b.is_empty()),
        bundle: query.bundle,
    };
    let products = app
        .reads
        .run(move |conn| {
            Ok(chainsync_replica::catalog::products_page(conn, &filter, 0, usize::MAX >> 1)?.0)
        })
        .await?;
    Ok(Json(ProductList { products }))
}

#[utoipa::path(get, path = "/api/v1/products/{sku}", params(("sku" = String, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_product(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ProductView>, ApiError> {
    let Path(sku) = path.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let lookup = sku.clone();
    app.reads
        .run(move |conn| Ok(read::product(conn, &lookup)?))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(404, "unknown_sku", format!("no product with SKU {sku:?}")))
}

#[utoipa::path(post, path = "/api/v1/checkouts", request_body = NewCheckout,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, body = CheckoutView), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_checkout(
    State(app): State<AppState>,
    _caller: Caller,
    post: Posted,
) -> Result<Reply, ApiError> {
    let request: NewCheckout = post.json()?;
    let idempotency = post.idempotency()?;
    let checkout_id = new_checkout_id()?;
    // A retry of a checkout already written is answered from the idempotency record by the
    // writer: asking the hub again would only hold the member's money for nothing.
    let authority = match &idempotency {
        Some(idempotency) if already_answered(&app, &idempotency.key).await? => {
            commands::Authority::Standalone
        }
        _ => {
            let pre: NewCheckout = post.json()?;
            let store = app.store_id.clone();
            let offset = app.utc_offset_seconds;
            app.reads
                .run(move |conn| {
                    crate::coupons::precheck(conn, &store, &pre, offset, crate::now_ms())
                })
                .await?;
            authorize(&app, &request, checkout_id).await?
        }
    };
    app.writer
        .write(idempotency, move |conn, local, now| {
            commands::checkout_as(conn, local, request, Some(checkout_id), authority, now)
        })
        .await
}

/// Whether a request with this Idempotency-Key was already answered (and remembered).
async fn already_answered(app: &AppState, key: &str) -> Result<bool, ApiError> {
    let key = key.to_owned();
    app.reads
        .run(move |conn| {
            conn.query_row(
                "SELECT COUNT(*) > 0 FROM idempotency WHERE key = ?1",
                [key],
                |row| row.get(0),
            )
            .map_err(ApiError::from)
        })
        .await
}

fn new_checkout_id() -> Result<Uuid, ApiError> {
    let random = crate::random_bytes::<10>().map_err(ApiError::internal)?;
    Ok(uuid::Builder::from_unix_timestamp_millis(crate::now_ms(), &random).into_uuid())
}

/// Online authorization of a checkout's stored value, points and coupons at the hub; a slow or
/// lost answer (or a link that is down) falls back to the offline rules.
async fn authorize(
    app: &AppState,
    request: &NewCheckout,
    checkout_id: Uuid,
) -> Result<commands::Authority, ApiError> {
    let Some(authorizer) = &app.authorizer else {
        return Ok(commands::Authority::Standalone);
    };
    let mut payments = Vec::new();
    for payment in &request.payments {
        if let (Some(method), Some(amount)) = (
            match payment.method.as_str() {
                "stored_value" => Some(chainsync_core::checkout::PaymentMethod::StoredValue),
                "points" => Some(chainsync_core::checkout::PaymentMethod::Points),
                _ => None,
            },
            payment.amount_fen.0.filter(|a| *a > 0),
        ) {
            payments.push(chainsync_core::checkout::Payment {
                method,
                amount: chainsync_core::Fen(amount),
            });
        }
    }
    let point_value_fen = app
        .reads
        .run(|conn| Ok(chainsync_replica::program::rules(conn)?.point_value_fen))
        .await?;
    let spend = commands::spend_of(&payments, point_value_fen);
    let needs_member = request.member_id.is_some() && !spend.is_empty();
    if !needs_member && request.coupons.is_empty() {
        return Ok(commands::Authority::Online);
    }
    let timeout_ms = app
        .reads
        .run(|conn| Ok(read::allowance_policy(conn)?))
        .await?
        .authorization_timeout_ms;
    let ask = chainsync_core::sync::AuthorizeRequest {
        request_id: 0,
        checkout_id,
        member_id: request.member_id,
        spend,
        coupon_codes: request.coupons.clone(),
    };
    match authorizer.ask(ask, timeout_ms).await {
        None => Ok(commands::Authority::Offline),
        Some(chainsync_core::sync::AuthorizeDecision::Granted) => Ok(commands::Authority::Online),
        Some(chainsync_core::sync::AuthorizeDecision::InsufficientBalance {
            available_stored_value,
            available_points,
        }) => Err(ApiError::new(
            422,
            if spend.stored_value.0 > available_stored_value {
                "insufficient_balance"
            } else {
                "insufficient_points"
            },
            format!(
                "across the chain this member has {} of stored value and {available_points} points \
                 available (including spends still on their way to HQ)",
                chainsync_core::Fen(available_stored_value)
            ),
        )),
        Some(chainsync_core::sync::AuthorizeDecision::CouponUnavailable { code, reason }) => {
            if reason == "unknown coupon" {
                Err(ApiError::new(
                    422,
                    "coupon_unknown",
                    format!("no coupon with code {code}"),
                ))
            } else {
                Err(ApiError::new(
                    409,
                    "coupon_already_redeemed",
                    format!("coupon {code}: {reason}"),
                ))
            }
        }
    }
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListLimit {
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
}

#[utoipa::path(get, path = "/api/v1/checkouts", params(ListLimit),
    responses((status = 200, body = CheckoutList)), security(("bearer" = [])))]
async fn list_checkouts(
    State(app): State<AppState>,
    _caller: Caller,
    query: Result<Query<ListLimit>, QueryRejection>,
) -> Result<Json<CheckoutList>, ApiError> {
    let Query(limit) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let limit = limit.limit.unwrap_or(50);
    let checkouts = app
        .reads
        .run(move |conn| read::checkouts(conn, limit))
        .await?;
    Ok(Json(CheckoutList { checkouts }))
}

#[utoipa::path(get, path = "/api/v1/checkouts/{id}", params(("id" = Uuid, Path)),
    responses((status = 200, body = CheckoutView), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_checkout(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
) -> Result<Json<CheckoutView>, ApiError> {
    let id = checkout_id(path)?;
    let store_id = app.store_id.clone();
    app.reads
        .run(move |conn| read::checkout(conn, &store_id, id))
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::new(404, "unknown_checkout", "no checkout with this id"))
}

#[utoipa::path(post, path = "/api/v1/checkouts/{id}/refunds", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewRefund,
    responses((status = 201, body = crate::refunds::RefundReply), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
async fn create_refund(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: Posted,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let id = checkout_id(path)?;
    let request: NewRefund = post.json_or_default()?;
    let idempotency = post.idempotency()?;
    app.writer
        .write(idempotency, move |conn, local, now| {
            commands::refund(conn, local, id, request, now)
        })
        .await
}

/// `GET /api/v1/sync/status`
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SyncStatusView {
    /// standalone | connecting | online | offline
    pub link: crate::sync_client::LinkState,
    pub hub_addr: Option<String>,
    /// Last successful exchange with the hub, Unix ms.
    pub last_sync_ms: Option<u64>,
    /// This store's operations (ledger entries, sales, member changes…) not yet at the hub.
    pub waiting: u64,
    pub own_seq: u64,
    pub hub_acked: u64,
    pub relay_cursor: u64,
    pub last_error: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/sync/status", responses((status = 200, body = SyncStatusView)),
    security(("bearer" = [])))]
async fn sync_status(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<SyncStatusView>, ApiError> {
    let link = app
        .link
        .lock()
        .map(|status| status.clone())
        .map_err(|_| ApiError::internal("status lock"))?;
    let store: chainsync_core::StoreId =
        chainsync_core::StoreId::parse(&app.store_id).map_err(ApiError::internal)?;
    let figures = app
        .reads
        .run(move |conn| Ok(crate::sync_side::read_sync_figures(conn, &store)?))
        .await?;
    Ok(Json(SyncStatusView {
        link: link.link,
        hub_addr: link.hub_addr,
        last_sync_ms: figures.last_sync_ms,
        waiting: figures.waiting,
        own_seq: figures.own_seq,
        hub_acked: figures.hub_acked,
        relay_cursor: figures.relay_cursor,
        last_error: link.last_error,
    }))
}

/// `GET /api/v1/sync/digest`
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DigestView {
    /// Hex SHA-256 of the state every replica holds: equal on two replicas ⇔ converged.
    pub digest: String,
    /// Hex SHA-256 per scope of data a store shares only with the hub: `stock:<store>` (its
    /// movements and levels) and `transfers:<store>` (transfers from or to it). A store lists
    /// its own scopes; the same scope has the same hash wherever it is held.
    pub scopes: std::collections::BTreeMap<String, String>,
}

#[utoipa::path(get, path = "/api/v1/sync/digest", responses((status = 200, body = DigestView)),
    security(("bearer" = [])))]
async fn sync_digest(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<DigestView>, ApiError> {
    let store = app.store_id.clone();
    let (digest, scopes) = app
        .reads
        .run(move |conn| {
            Ok(chainsync_replica::digest::snapshot_digest_and_scopes(
                conn,
                Some(&[store]),
            )?)
        })
        .await?;
    Ok(Json(DigestView { digest, scopes }))
}

async fn not_found() -> ApiError {
    ApiError::new(404, "not_found", "no such route")
}

#[derive(OpenApi)]
#[openapi(
    info(title = "chainsync store-node API", description = "Cashier and POS API of one store. Money is integer 分."),
    paths(healthz, create_member, search_members, get_member, patch_member, member_ledger,
        create_recharge, create_product, list_products, get_product, create_checkout, list_checkouts,
        get_checkout, create_refund, sync_status, sync_digest,
        crate::member_search::member_search, crate::program::get_rules,
        crate::program::create_points_adjustment, crate::program::list_count_card_templates,
        crate::program::create_count_card, crate::program::list_member_count_cards,
        crate::program::get_count_card, crate::program::create_count_card_use,
        crate::program::create_use_reversal, crate::program::list_gifts,
        crate::program::create_gift_redemption),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

pub fn router(app: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi_json))
        .route("/api/v1/members", post(create_member).get(search_members))
        .route("/api/v1/members/{id}", get(get_member).patch(patch_member))
        .route("/api/v1/members/{id}/ledger", get(member_ledger))
        .route("/api/v1/members/{id}/recharges", post(create_recharge))
        .route("/api/v1/products", post(create_product).get(list_products))
        .route("/api/v1/products/{sku}", get(get_product))
        .route(
            "/api/v1/checkouts",
            post(create_checkout).get(list_checkouts),
        )
        .route("/api/v1/checkouts/{id}", get(get_checkout))
        .route("/api/v1/checkouts/{id}/refunds", post(create_refund))
        .route("/api/v1/sync/status", get(sync_status))
        .route("/api/v1/sync/digest", get(sync_digest))
        .route(
            "/api/v1/member-search",
            get(crate::member_search::member_search),
        )
        .merge(crate::membership_http::routes())
        .merge(crate::coupons::routes())
        .merge(crate::program::routes())
        .merge(crate::stock_http::routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(request_body_bytes_max))
        .with_state(app)
}

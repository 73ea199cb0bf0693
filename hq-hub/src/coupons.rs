//! HQ's coupons: templates of both versions (a plain cash voucher is still authored as the
//! first version, which stores one version older read), hand and bulk issue (bulk: to the
//! members a member-search query finds), chain-wide pool claims (decided here, for the
//! member page and for stores asking on the sync session), lottery wheels. Every write is an
//! operation authored by the hub (origin `hq`) and relayed to every store.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use chainsync_core::coupon::{self as rules, Channel, CouponInstance, CouponTemplateV2, PoolScope};
use chainsync_core::op::OpV1;
use chainsync_core::sync::{AuthorizeDecision, AuthorizeRequest};
use chainsync_replica::api::ApiError;
use chainsync_replica::coupons::{
    self as replica, CouponView, LotteryInput, LotteryList, LotteryView, TemplateInput,
    TemplateList, TemplateView,
};
use chainsync_replica::views::ErrorBody;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::{Caller, HubState};
use crate::now_ms;
use crate::storage::HubStorageError;

/// At most this many coupons in one hand issue.
pub const issue_count_max: usize = 1_000;
/// At most this many members in one bulk issue.
pub const bulk_members_max: usize = 20_000;

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_json(format!("request body: {e}")))
}

fn random_uuid() -> Result<Uuid, ApiError> {
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(ApiError::internal)?;
    Ok(uuid::Builder::from_random_bytes(random).into_uuid())
}

fn random_code() -> Result<String, ApiError> {
    let mut random = [0u8; 8];
    getrandom::fill(&mut random).map_err(ApiError::internal)?;
    Ok(rules::code_from_random(random))
}

/// Create (no `id`) or replace (with `id`) a coupon template.
#[utoipa::path(post, path = "/api/v1/coupon-templates", request_body = TemplateInput,
    responses((status = 201, body = TemplateView), (status = 403, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_template(
    State(hub): State<HubState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<TemplateView>), ApiError> {
    caller.require_operator()?;
    let input: TemplateInput = parse_body(&body)?;
    let id = match input.id {
        Some(id) => id,
        None => random_uuid()?,
    };
    let template = input.to_template(id)?;
    if replica::is_plain(&input) {
        let value = match template.kind {
            rules::CouponKind::Cash { value } => value,
            _ => chainsync_core::Fen::ZERO,
        };
        hub.author(OpV1::CouponTemplateUpsert(
            chainsync_core::op::CouponTemplate {
                id,
                name: template.name.clone(),
                value,
                min_spend: template.min_spend,
                online_only: template.online_only,
            },
        ))
        .await?;
    } else {
        hub.author(OpV1::CouponTemplateUpsertV2(template.clone()))
            .await?;
    }
    Ok((StatusCode::CREATED, Json(TemplateView::of(&template))))
}

#[utoipa::path(get, path = "/api/v1/coupon-templates",
    responses((status = 200, body = TemplateList)), security(("bearer" = [])))]
pub async fn list_templates(
    State(hub): State<HubState>,
    _caller: Caller,
) -> Result<Json<TemplateList>, ApiError> {
    let templates = hub.reads.run(|conn| Ok(replica::templates(conn)?)).await?;
    Ok(Json(TemplateList {
        templates: templates.iter().map(TemplateView::of).collect(),
    }))
}

async fn template_of(hub: &HubState, id: Uuid) -> Result<CouponTemplateV2, ApiError> {
    hub.reads
        .run(move |conn| Ok(replica::template(conn, id)?))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                404,
                "unknown_coupon_template",
                "no coupon template with this id",
            )
        })
}

fn instance(
    template: &CouponTemplateV2,
    code: String,
    member_id: Option<Uuid>,
    channel: Channel,
    now: u64,
) -> CouponInstance {
    let (valid_from_ms, valid_until_ms) = template.valid_between(now);
    CouponInstance {
        code,
        template_id: template.id,
        member_id,
        channel,
        issued_ms: now,
        valid_from_ms,
        valid_until_ms,
        pool_store: None,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCoupons {
    pub template_id: Uuid,
    pub member_id: Option<Uuid>,
    /// How many to issue (default 1, at most 1000).
    pub count: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedCoupon {
    pub code: String,
    pub template_id: Uuid,
    pub member_id: Option<Uuid>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct IssuedCoupons {
    pub coupons: Vec<IssuedCoupon>,
}

/// Issue coupons by hand (to a member, or bearer coupons anyone may use).
#[utoipa::path(post, path = "/api/v1/coupons", request_body = NewCoupons,
    responses((status = 201, body = IssuedCoupons), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn issue_coupons(
    State(hub): State<HubState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<IssuedCoupons>), ApiError> {
    caller.require_operator()?;
    let request: NewCoupons = parse_body(&body)?;
    let count = request.count.unwrap_or(1);
    if !(1..=issue_count_max).contains(&count) {
        return Err(ApiError::invalid_field("count must be 1 to 1000"));
    }
    let template = template_of(&hub, request.template_id).await?;
    let first_version = hub
        .reads
        .run({
            let id = template.id;
            move |conn| {
                Ok(conn.query_row(
                    "SELECT rules_json IS NULL FROM coupon_templates WHERE id = ?1",
                    [id.to_string()],
                    |r| r.get::<_, bool>(0),
                )?)
            }
        })
        .await?;
    let mut coupons = Vec::with_capacity(count);
    for _ in 0..count {
        let code = random_code()?;
        let op = if first_version {
            OpV1::CouponIssue(chainsync_core::op::CouponRecord {
                code: code.clone(),
                template_id: template.id,
                member_id: request.member_id,
            })
        } else {
            OpV1::CouponIssueV2(instance(
                &template,
                code.clone(),
                request.member_id,
                Channel::Hq,
                now_ms(),
            ))
        };
        hub.author(op).await?;
        coupons.push(IssuedCoupon {
            code,
            template_id: template.id,
            member_id: request.member_id,
        });
    }
    Ok((StatusCode::CREATED, Json(IssuedCoupons { coupons })))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkIssue {
    pub template_id: Uuid,
    /// A member-search query (the parameters of `GET /api/v1/member-search`, as JSON: tier,
    /// tag, last_visit_before, visits_min, store, birthday_month…); every member it finds
    /// gets one coupon.
    #[schema(value_type = Object)]
    pub filter: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BulkIssued {
    pub template_id: Uuid,
    /// Members the query found.
    pub matched: usize,
    /// Coupons written now (a retry with the same Idempotency-Key writes none again).
    pub issued: usize,
    pub coupons: Vec<IssuedCoupon>,
}

/// Bulk issue (商家发券) to the members a query finds. With an `Idempotency-Key`, each coupon's
/// code is derived from the key, template and member, so a retry issues nothing twice.
#[utoipa::path(post, path = "/api/v1/coupons/bulk", request_body = BulkIssue,
    params(("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    responses((status = 201, body = BulkIssued), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn bulk_issue(
    State(hub): State<HubState>,
    caller: Caller,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<BulkIssued>), ApiError> {
    caller.require_operator()?;
    let key = chainsync_replica::posted::idempotency_key(&headers)?;
    let request: BulkIssue = parse_body(&body)?;
    let mut filter = request.filter;
    if let Some(map) = filter.as_object_mut() {
        for field in ["format", "page", "per_page"] {
            if map.remove(field).is_some() {
                return Err(ApiError::invalid_field(format!(
                    "filter: {field} does not apply to a bulk issue"
                )));
            }
        }
    }
    let query: crate::reports::members::SearchQuery = serde_json::from_value(filter)
        .map_err(|e| ApiError::invalid_field(format!("filter: {e}")))?;
    let template = template_of(&hub, request.template_id).await?;
    if !template.active {
        return Err(ApiError::new(
            422,
            "coupon_template_inactive",
            "this template is inactive: activate it before issuing",
        ));
    }
    let rules_now = hub.current_rules().await?;
    let user = caller.user.clone();
    let members = hub
        .reads
        .run(move |conn| {
            let scope = crate::reports::scope::Scope::load(conn, &user)?;
            let mut members = Vec::new();
            let mut too_many = false;
            crate::reports::members::search(
                conn,
                &scope,
                &query,
                &rules_now,
                now_ms(),
                true,
                &mut |row| {
                    if members.len() >= bulk_members_max {
                        too_many = true;
                        return false;
                    }
                    if let Some(id) = row.first().and_then(|c| Uuid::parse_str(&c.text()).ok()) {
                        members.push(id);
                    }
                    true
                },
            )
            .map_err(|e| ApiError::new(422, "invalid_field", e))?;
            if too_many {
                return Err(ApiError::invalid_field(format!(
                    "the query finds more than {bulk_members_max} members: narrow it"
                )));
            }
            Ok(members)
        })
        .await?;
    let matched = members.len();
    let mut coupons = Vec::with_capacity(matched);
    let mut issued = 0;
    for member in members {
        let code = match &key {
            Some(key) => rules::code_from_key(&format!("bulk:{key}:{}:{member}", template.id)),
            None => random_code()?,
        };
        let exists = hub
            .reads
            .run({
                let code = code.clone();
                move |conn| Ok(replica::coupon(conn, &code)?.is_some())
            })
            .await?;
        if !exists {
            hub.author(OpV1::CouponIssueV2(instance(
                &template,
                code.clone(),
                Some(member),
                Channel::Bulk,
                now_ms(),
            )))
            .await?;
            issued += 1;
        }
        coupons.push(IssuedCoupon {
            code,
            template_id: template.id,
            member_id: Some(member),
        });
    }
    Ok((
        StatusCode::CREATED,
        Json(BulkIssued {
            template_id: template.id,
            matched,
            issued,
            coupons,
        }),
    ))
}

/// Why a chain-wide claim was refused: `pool_empty`, `member_limit`, `not_claimable`.
pub type ClaimRefusal = &'static str;

/// Decide and write a claim from a template's chain-wide pool, on the hub's writer. A claim id
/// seen before answers with its coupon again. Returns the code (or why not) and the new log
/// head when something was written.
pub fn claim_chain_pool(
    conn: &mut Connection,
    template_id: Uuid,
    member_id: Uuid,
    claim_id: Uuid,
    now: u64,
) -> Result<(Result<String, ClaimRefusal>, Option<u64>), HubStorageError> {
    let code = rules::pool_claim_code(claim_id);
    if replica::coupon(conn, &code)?.is_some() {
        return Ok((Ok(code), None));
    }
    let Some(template) = replica::template(conn, template_id)? else {
        return Ok((Err("not_claimable"), None));
    };
    let pool = match template.pool {
        Some(pool) if template.active && pool.scope == PoolScope::ChainWide => pool,
        _ => return Ok((Err("not_claimable"), None)),
    };
    let taken: i64 = conn.query_row(
        "SELECT COUNT(*) FROM coupons WHERE template_id = ?1 AND channel = 'claim'",
        [template_id.to_string()],
        |r| r.get(0),
    )?;
    if taken >= i64::from(pool.size) {
        return Ok((Err("pool_empty"), None));
    }
    let member = chainsync_replica::read::canonical_member(conn, member_id)?.unwrap_or(member_id);
    let group = chainsync_replica::read::member_group(conn, member)?;
    if template.per_member_limit > 0
        && replica::member_issued(conn, template_id, &group)? >= template.per_member_limit
    {
        return Ok((Err("member_limit"), None));
    }
    let head = crate::storage::author(
        conn,
        OpV1::CouponIssueV2(instance(
            &template,
            code.clone(),
            Some(member),
            Channel::Claim,
            now,
        )),
        now,
    )?;
    Ok((Ok(code), Some(head)))
}

/// A store's `Authorize` that asks for a chain-wide pool claim (its one coupon code is
/// `pool:<template id>`); None for every other request.
pub fn authorize_pool_claim(
    writer: &Mutex<Connection>,
    request: &AuthorizeRequest,
    now: u64,
) -> Result<Option<(AuthorizeDecision, Option<u64>)>, HubStorageError> {
    let [code] = request.coupon_codes.as_slice() else {
        return Ok(None);
    };
    let Some(template) = code.strip_prefix(rules::pool_claim_prefix) else {
        return Ok(None);
    };
    let refused = |reason: &str| AuthorizeDecision::CouponUnavailable {
        code: code.clone(),
        reason: reason.to_owned(),
    };
    let (Ok(template), Some(member)) = (Uuid::parse_str(template), request.member_id) else {
        return Ok(Some((refused("not_claimable"), None)));
    };
    let mut conn = writer.lock().map_err(|_| HubStorageError::Poisoned)?;
    let (outcome, head) = claim_chain_pool(&mut conn, template, member, request.checkout_id, now)?;
    Ok(Some(match outcome {
        Ok(_) => (AuthorizeDecision::Granted, head),
        Err(reason) => (refused(reason), None),
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewClaim {
    pub member_id: Uuid,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClaimedCoupon {
    pub code: String,
    pub template_id: Uuid,
    pub member_id: Uuid,
}

/// A member claims a coupon from a template's chain-wide pool (the member page).
#[utoipa::path(post, path = "/api/v1/coupon-templates/{id}/claims", params(("id" = Uuid, Path)),
    request_body = NewClaim,
    responses((status = 201, body = ClaimedCoupon), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "coupon_pool_empty"),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn claim(
    State(hub): State<HubState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<ClaimedCoupon>), ApiError> {
    caller.require_operator()?;
    let template_id = path.map(|Path(id)| id).map_err(|_| {
        ApiError::new(
            404,
            "unknown_coupon_template",
            "no coupon template with this id",
        )
    })?;
    let request: NewClaim = parse_body(&body)?;
    let member = request.member_id;
    let known = hub
        .reads
        .run(move |conn| Ok(chainsync_replica::read::canonical_member(conn, member)?))
        .await?
        .ok_or_else(ApiError::unknown_member)?;
    template_of(&hub, template_id).await?;
    // A retry with the same key is the same claim.
    let claim_id = match chainsync_replica::posted::idempotency_key(&headers)? {
        Some(key) => {
            let code = rules::code_from_key(&format!("hub-claim:{key}:{template_id}:{known}"));
            Uuid::from_u128(code.get(1..).and_then(|d| d.parse().ok()).unwrap_or(0))
        }
        None => random_uuid()?,
    };
    let writer = hub.writer.clone();
    let (outcome, head) = tokio::task::spawn_blocking(move || {
        let mut conn = writer
            .lock()
            .map_err(|_| ApiError::internal("writer lock"))?;
        claim_chain_pool(&mut conn, template_id, known, claim_id, now_ms())
            .map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    if let Some(head) = head {
        hub.log_grew.send_replace(head);
    }
    match outcome {
        Ok(code) => Ok((
            StatusCode::CREATED,
            Json(ClaimedCoupon {
                code,
                template_id,
                member_id: known,
            }),
        )),
        Err("pool_empty") => Err(ApiError::new(
            409,
            "coupon_pool_empty",
            "every coupon of this pool is taken",
        )),
        Err("member_limit") => Err(ApiError::new(
            422,
            "coupon_member_limit",
            "this member has claimed as many of these as a member may",
        )),
        Err(_) => Err(ApiError::new(
            422,
            "coupon_not_claimable",
            "this template has no chain-wide pool (per-store pools are claimed at a store)",
        )),
    }
}

#[utoipa::path(get, path = "/api/v1/coupons/{code}", params(("code" = String, Path)),
    responses((status = 200, body = CouponView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_coupon(
    State(hub): State<HubState>,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CouponView>, ApiError> {
    let unknown = || ApiError::new(404, "coupon_unknown", "no coupon with this code");
    let code = path
        .map(|Path(c)| c)
        .ok()
        .filter(|c| !c.is_empty() && c.chars().count() <= rules::code_chars_max)
        .ok_or_else(unknown)?;
    hub.reads
        .run(move |conn| {
            let row = replica::coupon(conn, &code)?.ok_or_else(unknown)?;
            Ok(replica::coupon_view(conn, &row, now_ms())?)
        })
        .await
        .map(Json)
}

/// Create (no `id`) or replace a lottery wheel.
#[utoipa::path(post, path = "/api/v1/lotteries", request_body = LotteryInput,
    responses((status = 201, body = LotteryView), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_lottery(
    State(hub): State<HubState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<LotteryView>), ApiError> {
    caller.require_operator()?;
    let input: LotteryInput = parse_body(&body)?;
    let id = match input.id {
        Some(id) => id,
        None => random_uuid()?,
    };
    let lottery = input.to_lottery(id)?;
    for prize in &lottery.prizes {
        if let Some(template) = prize.template_id {
            template_of(&hub, template).await?;
        }
    }
    hub.author(OpV1::LotteryUpsert(lottery.clone())).await?;
    Ok((StatusCode::CREATED, Json(LotteryView::of(&lottery))))
}

#[utoipa::path(get, path = "/api/v1/lotteries",
    responses((status = 200, body = LotteryList)), security(("bearer" = [])))]
pub async fn list_lotteries(
    State(hub): State<HubState>,
    _caller: Caller,
) -> Result<Json<LotteryList>, ApiError> {
    let lotteries = hub.reads.run(|conn| Ok(replica::lotteries(conn)?)).await?;
    Ok(Json(LotteryList {
        lotteries: lotteries.iter().map(LotteryView::of).collect(),
    }))
}

pub fn routes() -> Router<HubState> {
    Router::new()
        .route(
            "/api/v1/coupon-templates",
            get(list_templates).post(create_template),
        )
        .route("/api/v1/coupon-templates/{id}/claims", post(claim))
        .route("/api/v1/coupons", post(issue_coupons))
        .route("/api/v1/coupons/bulk", post(bulk_issue))
        .route("/api/v1/coupons/{code}", get(get_coupon))
        .route(
            "/api/v1/lotteries",
            get(list_lotteries).post(create_lottery),
        )
}

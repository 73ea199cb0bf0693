//! Routes of accounts and reports: login, audit log, HQ manual adjustments, member search,
//! segments, reports, and their CSV/xlsx exports (every export is audited).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chainsync_core::ledger::{Account, EntryKind, LedgerEntry};
use chainsync_replica::api::ApiError;
use chainsync_replica::views::ErrorBody;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::export::{CsvRows, Format, XlsxRows, to_csv, to_xlsx};
use super::members::{SearchQuery, search, search_columns, search_table};
use super::scope::Scope;
use super::segments::{SegmentQuery, class_members, counts, member_columns, segment};
use super::{Cell, Period, Table, parse_dimensions, sales};
use crate::audit::{self, AuditEntry};
use crate::http::{Caller, HubState};
use crate::now_ms;
use crate::users::{self, User};

pub fn routes() -> Router<HubState> {
    Router::new()
        .route("/api/v1/login", post(login))
        .route("/api/v1/me", get(me))
        .route("/api/v1/audit", get(audit_log))
        .route("/api/v1/members/{id}/adjustments", post(adjust))
        .route("/api/v1/member-search", get(member_search))
        .route("/api/v1/segments", get(segments))
        .route("/api/v1/segments/{class}/members", get(segment_members))
        .route("/api/v1/reports/{name}", get(report))
}

fn invalid(message: String) -> ApiError {
    ApiError::invalid_field(message)
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub name: String,
    pub password: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionView {
    /// Send as `Authorization: Bearer TOKEN`.
    pub token: String,
    /// Unix ms.
    pub expires_ms: u64,
    pub name: String,
    pub role: String,
    pub region: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/login", request_body = LoginRequest,
    responses((status = 200, body = SessionView), (status = 401, body = ErrorBody)))]
pub async fn login(
    State(hub): State<HubState>,
    body: axum::body::Bytes,
) -> Result<Json<SessionView>, ApiError> {
    let request: LoginRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_json(format!("request body: {e}")))?;
    let checked = hub
        .reads
        .run(move |conn| {
            users::check_password(conn, &request.name, &request.password)
                .map_err(ApiError::internal)
        })
        .await?;
    let (id, user) = checked
        .ok_or_else(|| ApiError::new(401, "unauthorized", "unknown user or wrong password"))?;
    let writer = hub.writer.clone();
    let (token, expires_ms) = tokio::task::spawn_blocking(move || {
        let conn = writer
            .lock()
            .map_err(|_| ApiError::internal("writer lock"))?;
        users::open_session(&conn, id, now_ms()).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    Ok(Json(SessionView {
        token,
        expires_ms,
        name: user.name,
        role: user.role,
        region: user.region,
    }))
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeView {
    pub name: String,
    pub role: String,
    pub region: Option<String>,
    /// Phone numbers are shown in full.
    pub sees_phones: bool,
}

#[utoipa::path(get, path = "/api/v1/me", responses((status = 200, body = MeView)),
    security(("bearer" = [])))]
pub async fn me(caller: Caller) -> Json<MeView> {
    Json(MeView {
        sees_phones: caller.user.sees_phones(),
        name: caller.user.name,
        role: caller.user.role,
        region: caller.user.region,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// export or adjustment.
    pub action: Option<String>,
    /// Newest first, at most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditList {
    pub entries: Vec<AuditEntry>,
}

#[utoipa::path(get, path = "/api/v1/audit", params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 403, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn audit_log(
    State(hub): State<HubState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    if caller.role != "admin" && caller.role != "auditor" {
        return Err(ApiError::new(
            403,
            "forbidden",
            "only admin or auditor may read the audit log",
        ));
    }
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let entries = hub
        .reads
        .run(move |conn| {
            Ok(audit::list(
                conn,
                query.action.as_deref(),
                query.limit.unwrap_or(100),
            )?)
        })
        .await?;
    Ok(Json(AuditList { entries }))
}

/// Write an audit row through the hub's writer.
pub async fn record_audit(
    hub: &HubState,
    user: &User,
    action: &'static str,
    subject: String,
    detail: serde_json::Value,
) -> Result<(), ApiError> {
    let writer = hub.writer.clone();
    let user = user.clone();
    tokio::task::spawn_blocking(move || {
        let conn = writer
            .lock()
            .map_err(|_| ApiError::internal("writer lock"))?;
        audit::record(&conn, &user, action, &subject, &detail, now_ms()).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)?
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustmentRequest {
    /// `points` or `stored_value` (principal).
    pub account: String,
    /// Signed: points, or 分 for stored value. Not zero.
    pub amount: i64,
    /// Why (required, 1 to 200 characters).
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AdjustmentView {
    pub entry_id: Uuid,
    /// The canonical member the entry was written for.
    pub member_id: Uuid,
    pub account: String,
    pub amount: i64,
    pub reason: String,
    /// Balances after the adjustment.
    pub balance_fen: i64,
    pub points: i64,
}

#[utoipa::path(post, path = "/api/v1/members/{id}/adjustments", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = AdjustmentRequest,
    responses((status = 201, body = AdjustmentView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn adjust(
    State(hub): State<HubState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    post: chainsync_replica::posted::Posted,
) -> Result<Response, ApiError> {
    caller.require_operator()?;
    let id = path
        .map(|Path(id)| id)
        .map_err(|_| ApiError::unknown_member())?;
    let request: AdjustmentRequest = post.json()?;
    let keyed = post.idempotency()?;
    let (account, kind) = match request.account.as_str() {
        "points" => (Account::Points, EntryKind::PointsAdjust),
        "stored_value" => (Account::Principal, EntryKind::StoredValueAdjust),
        _ => return Err(invalid("account must be points or stored_value".into())),
    };
    let limit = chainsync_core::limits::amount_fen_max;
    if request.amount == 0 || request.amount.abs() > limit {
        return Err(ApiError::invalid_amount(format!(
            "amount must be non-zero and at most {limit} in size"
        )));
    }
    let reason = request.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 200 {
        return Err(invalid("reason must be 1 to 200 characters".into()));
    }
    let writer = hub.writer.clone();
    let projection = hub.projection.clone();
    let user = caller.user.clone();
    let amount = request.amount;
    let account_name = request.account.clone();
    let (head, status, answer) = tokio::task::spawn_blocking(move || {
        let mut conn = writer
            .lock()
            .map_err(|_| ApiError::internal("writer lock"))?;
        // A repeat of an answered request: the same answer, nothing written again.
        if let Some(keyed) = &keyed
            && let Some((status, answer)) = crate::idempotency::recall(&conn, keyed)?
        {
            return Ok::<_, ApiError>((None, status, answer));
        }
        let member_id = chainsync_replica::read::canonical_member(&conn, id)?
            .ok_or_else(ApiError::unknown_member)?;
        // Counting what stores pushed and the hub has not projected yet.
        let balances = crate::storage::balances_with_unprojected(&conn, &projection, member_id)
            .map_err(ApiError::internal)?;
        let after = match account {
            Account::Points => balances.points.checked_add(amount),
            _ => balances.principal.0.checked_add(amount),
        };
        if after.is_none_or(|after| after < 0) {
            let code = if account == Account::Points {
                "insufficient_points"
            } else {
                "insufficient_balance"
            };
            return Err(ApiError::new(
                422,
                code,
                "the adjustment would take the balance below zero",
            ));
        }
        let mut random = [0u8; 10];
        getrandom::fill(&mut random).map_err(ApiError::internal)?;
        let now = now_ms();
        let entry_id = chainsync_core::IdGenerator::new().next(now, random);
        let reason_for_entry = reason.clone();
        let (balance_fen, points) = match account {
            Account::Points => (balances.stored_value().ok().map(|f| f.0), after),
            _ => (
                balances
                    .stored_value()
                    .ok()
                    .and_then(|f| f.0.checked_add(amount)),
                Some(balances.points),
            ),
        };
        let view = AdjustmentView {
            entry_id,
            member_id,
            account: account_name.clone(),
            amount,
            reason: reason.clone(),
            balance_fen: balance_fen.unwrap_or(i64::MAX),
            points: points.unwrap_or(i64::MAX),
        };
        let answer = serde_json::to_value(&view).map_err(ApiError::internal)?;
        let (head, _) = crate::storage::author_with(
            &mut conn,
            now,
            |seq, hlc| {
                Ok(chainsync_core::op::OpV1::Ledger(LedgerEntry {
                    id: entry_id,
                    origin: chainsync_core::StoreId::hub(),
                    seq,
                    hlc,
                    member_id,
                    kind,
                    account,
                    amount,
                    checkout_id: None,
                    reason: Some(reason_for_entry),
                    rule_version: 0,
                }))
            },
            |tx, _| {
                crate::exceptions::refresh_member(tx, member_id, now)?;
                let detail = serde_json::json!({
                    "account": account_name,
                    "amount": amount,
                    "reason": reason,
                    "entry_id": entry_id,
                });
                audit::record(
                    tx,
                    &user,
                    "adjustment",
                    &member_id.to_string(),
                    &detail,
                    now,
                )?;
                if let Some(keyed) = &keyed {
                    crate::idempotency::remember(tx, keyed, 201, &answer, now)?;
                }
                Ok(())
            },
        )
        .map_err(ApiError::internal)?;
        Ok((Some(head), 201, answer))
    })
    .await
    .map_err(ApiError::internal)??;
    if let Some(head) = head {
        hub.log_grew.send_replace(head);
    }
    Ok(crate::idempotency::answered(status, answer))
}

/// Reply with a table as JSON, or as a CSV/xlsx attachment (audited).
async fn reply(
    hub: &HubState,
    caller: &Caller,
    table: Table,
    format: Format,
    subject: String,
    file_stem: &str,
) -> Result<Response, ApiError> {
    let bytes = match format {
        Format::Json => return Ok(Json(table).into_response()),
        Format::Csv => to_csv(&table),
        Format::Xlsx => to_xlsx(&table),
    }
    .map_err(ApiError::internal)?;
    let detail = serde_json::json!({"format": format.name(), "rows": table.rows.len()});
    record_audit(hub, &caller.user, "export", subject, detail).await?;
    Ok(attachment(format, file_stem, bytes.into()))
}

fn attachment(format: Format, file_stem: &str, body: axum::body::Body) -> Response {
    (
        [
            (header::CONTENT_TYPE, format.content_type().to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_stem}.{}\"", format.name()),
            ),
        ],
        body,
    )
        .into_response()
}

/// Chunks of a streamed CSV are about this large.
const chunk_bytes: usize = 64 * 1024;

type Producer = Box<
    dyn FnOnce(&rusqlite::Connection, &mut dyn FnMut(Vec<Cell>) -> bool) -> Result<u64, String>
        + Send,
>;

/// Stream a list as CSV (chunks as rows are read), or build it as xlsx; audited at the end.
/// Parameter errors found before the first row are answered as 422.
async fn stream_list(
    hub: HubState,
    caller: &Caller,
    format: Format,
    subject: String,
    file_stem: &str,
    columns: Vec<String>,
    produce: Producer,
) -> Result<Response, ApiError> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, String>>(8);
    let writer = hub.writer.clone();
    let user = caller.user.clone();
    let reads = hub.reads.clone();
    tokio::spawn(async move {
        let _ = reads
            .run(move |conn| {
                let mut csv = CsvRows::new(&columns).map_err(ApiError::internal)?;
                let mut xlsx = match format {
                    Format::Xlsx => Some(XlsxRows::new(&columns).map_err(ApiError::internal)?),
                    _ => None,
                };
                let mut rows = 0u64;
                let mut failed: Option<String> = None;
                let mut sink = |row: Vec<Cell>| -> bool {
                    rows += 1;
                    if let Some(xlsx) = xlsx.as_mut() {
                        if let Err(e) = xlsx.push(&row) {
                            failed = Some(e);
                            return false;
                        }
                        return true;
                    }
                    if let Err(e) = csv.push(&row) {
                        failed = Some(e);
                        return false;
                    }
                    if csv.buffered() >= chunk_bytes {
                        match csv.take() {
                            Ok(chunk) => sender.blocking_send(Ok(chunk)).is_ok(),
                            Err(e) => {
                                failed = Some(e);
                                false
                            }
                        }
                    } else {
                        true
                    }
                };
                let result = produce(conn, &mut sink);
                let result = match (result, failed) {
                    (Err(e), _) | (Ok(_), Some(e)) => Err(e),
                    (Ok(_), None) => Ok(()),
                };
                if let Err(e) = result {
                    let _ = sender.blocking_send(Err(e));
                    return Ok(());
                }
                let last = match xlsx {
                    Some(xlsx) => xlsx.finish(),
                    None => csv.take(),
                };
                let detail = serde_json::json!({"format": format.name(), "rows": rows});
                if let Ok(conn) = writer.lock() {
                    let _ = audit::record(&conn, &user, "export", &subject, &detail, now_ms());
                }
                let _ = sender.blocking_send(last);
                Ok(())
            })
            .await;
    });
    let first = receiver
        .recv()
        .await
        .ok_or_else(|| ApiError::internal("export ended early"))?
        .map_err(invalid)?;
    let stream = futures_util::stream::unfold(
        (Some(first), receiver),
        |(first, mut receiver)| async move {
            if let Some(first) = first {
                return Some((Ok::<_, std::io::Error>(first), (None, receiver)));
            }
            match receiver.recv().await? {
                Ok(chunk) => Some((Ok(chunk), (None, receiver))),
                Err(e) => Some((Err(std::io::Error::other(e)), (None, receiver))),
            }
        },
    );
    Ok(attachment(
        format,
        file_stem,
        axum::body::Body::from_stream(stream),
    ))
}

fn subject(route: &str, raw_query: Option<&str>) -> String {
    match raw_query {
        Some(q) if !q.is_empty() => format!("{route}?{q}"),
        _ => route.to_owned(),
    }
}

#[utoipa::path(get, path = "/api/v1/member-search", params(SearchQuery),
    responses((status = 200, body = Table), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn member_search(
    State(hub): State<HubState>,
    caller: Caller,
    uri: axum::http::Uri,
    query: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let format = Format::parse(query.format.as_deref()).map_err(invalid)?;
    let user = caller.user.clone();
    let rules = hub.current_rules().await?;
    if format == Format::Json {
        let table = hub
            .reads
            .run(move |conn| {
                let scope = Scope::load(conn, &user)?;
                search_table(conn, &scope, &query, &rules, now_ms()).map_err(invalid)
            })
            .await?;
        return Ok(Json(table).into_response());
    }
    let columns = search_columns.iter().map(|c| (*c).to_owned()).collect();
    stream_list(
        hub.clone(),
        &caller,
        format,
        subject("/api/v1/member-search", uri.query()),
        "members",
        columns,
        Box::new(move |conn, sink| {
            let scope = Scope::load(conn, &user).map_err(|e| e.to_string())?;
            search(conn, &scope, &query, &rules, now_ms(), true, sink)
        }),
    )
    .await
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SegmentsView {
    /// Visits in the window at or above this are high frequency.
    pub frequency_split: i64,
    /// Net spend in the window at or above this (分) is high amount.
    pub amount_split_fen: i64,
    pub from: String,
    pub to: String,
    pub dormant_days: i64,
    /// Columns: [store|region,] class, members.
    pub counts: Table,
}

#[utoipa::path(get, path = "/api/v1/segments", params(SegmentQuery),
    responses((status = 200, body = SegmentsView), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn segments(
    State(hub): State<HubState>,
    caller: Caller,
    uri: axum::http::Uri,
    query: Result<Query<SegmentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let format = Format::parse(query.format.as_deref()).map_err(invalid)?;
    let user = caller.user.clone();
    let now = now_ms();
    let view = hub
        .reads
        .run(move |conn| {
            let scope = Scope::load(conn, &user)?;
            let period =
                Period::parse(query.from.as_deref(), query.to.as_deref(), now).map_err(invalid)?;
            let segmentation = segment(conn, &scope, &query, now).map_err(invalid)?;
            let counts = counts(&segmentation, &scope, query.by.as_deref()).map_err(invalid)?;
            Ok(SegmentsView {
                frequency_split: segmentation.frequency_split,
                amount_split_fen: segmentation.amount_split_fen,
                from: super::format_date(period.from_day),
                to: super::format_date(period.to_day),
                dormant_days: query.dormant_days.unwrap_or(30),
                counts,
            })
        })
        .await?;
    if format == Format::Json {
        return Ok(Json(view).into_response());
    }
    reply(
        &hub,
        &caller,
        view.counts,
        format,
        subject("/api/v1/segments", uri.query()),
        "segments",
    )
    .await
}

#[utoipa::path(get, path = "/api/v1/segments/{class}/members",
    params(("class" = String, Path), SegmentQuery),
    responses((status = 200, body = Table), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn segment_members(
    State(hub): State<HubState>,
    caller: Caller,
    uri: axum::http::Uri,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<SegmentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let class = path
        .map(|Path(class)| class)
        .map_err(|e| invalid(e.body_text()))?;
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let format = Format::parse(query.format.as_deref()).map_err(invalid)?;
    let user = caller.user.clone();
    let now = now_ms();
    if format == Format::Json {
        let table = hub
            .reads
            .run(move |conn| {
                let scope = Scope::load(conn, &user)?;
                let segmentation = segment(conn, &scope, &query, now).map_err(invalid)?;
                let rows =
                    class_members(conn, &segmentation, &scope, &class, &query).map_err(invalid)?;
                let per_page = query
                    .per_page
                    .unwrap_or(50)
                    .clamp(1, super::members::page_rows_max)
                    as usize;
                let page = query.page.unwrap_or(1).max(1) as usize;
                let mut table = Table::new(&member_columns);
                table.total = Some(rows.len() as u64);
                table.rows = rows
                    .into_iter()
                    .skip((page - 1).saturating_mul(per_page))
                    .take(per_page)
                    .collect();
                Ok(table)
            })
            .await?;
        return Ok(Json(table).into_response());
    }
    let columns = member_columns.iter().map(|c| (*c).to_owned()).collect();
    let stem = format!("segment-{class}");
    stream_list(
        hub.clone(),
        &caller,
        format,
        subject(uri.path(), uri.query()),
        &stem,
        columns,
        Box::new(move |conn, sink| {
            let scope = Scope::load(conn, &user).map_err(|e| e.to_string())?;
            let segmentation = segment(conn, &scope, &query, now)?;
            let rows = class_members(conn, &segmentation, &scope, &class, &query)?;
            let total = rows.len() as u64;
            for row in rows {
                if !sink(row) {
                    break;
                }
            }
            Ok(total)
        }),
    )
    .await
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReportQuery {
    /// First day (YYYY-MM-DD, China time; default 29 days before `to`).
    pub from: Option<String>,
    /// Last day, inclusive (default today).
    pub to: Option<String>,
    /// Grouping, comma-separated (which ones depends on the report).
    pub by: Option<String>,
    /// top-customers: how many (default 20, at most 500).
    pub limit: Option<usize>,
    /// json (default), csv or xlsx.
    pub format: Option<String>,
}

/// The reports `GET /api/v1/reports/{name}` serves.
pub const report_names: [&str; 9] = [
    "sales",
    "categories",
    "active-members",
    "new-members",
    "tiers",
    "top-customers",
    "liability",
    "settlement",
    "coupons",
];

fn single(by: Option<&str>) -> Option<&str> {
    by.map(str::trim).filter(|b| !b.is_empty())
}

/// Compute a report as a table (shared by the route and tests).
pub fn compute_report(
    conn: &rusqlite::Connection,
    user: &User,
    rules: &chainsync_core::rules::Rules,
    name: &str,
    query: &ReportQuery,
    now: u64,
) -> Result<Table, ApiError> {
    let scope = Scope::load(conn, user)?;
    let period = Period::parse(query.from.as_deref(), query.to.as_deref(), now).map_err(invalid)?;
    let by = query.by.as_deref();
    let db = |e: rusqlite::Error| ApiError::from(e);
    Ok(match name {
        "sales" => {
            let dims = parse_dimensions(by, &sales::sales_dimensions).map_err(invalid)?;
            sales::sales(conn, &scope, period, &dims).map_err(db)?
        }
        "categories" => {
            let dims = parse_dimensions(by, &sales::category_dimensions).map_err(invalid)?;
            sales::categories(conn, &scope, period, &dims).map_err(db)?
        }
        "active-members" => {
            sales::active_members(conn, &scope, period, single(by)).map_err(invalid)?
        }
        "new-members" => {
            let dims = parse_dimensions(by, &sales::member_dimensions).map_err(invalid)?;
            sales::new_members(conn, &scope, period, &dims).map_err(db)?
        }
        "tiers" => {
            sales::tier_distribution(conn, &scope, rules, period, single(by)).map_err(invalid)?
        }
        "top-customers" => sales::top_customers(conn, &scope, period, query.limit.unwrap_or(20))
            .map_err(invalid)?,
        "liability" => super::money::liability(conn, &scope, rules, single(by)).map_err(invalid)?,
        "settlement" => {
            super::money::settlement(conn, &scope, period, single(by)).map_err(invalid)?
        }
        "coupons" => super::money::coupons(conn, &scope).map_err(invalid)?,
        _ => {
            return Err(ApiError::new(
                404,
                "unknown_report",
                format!("reports are {}", report_names.join(", ")),
            ));
        }
    })
}

#[utoipa::path(get, path = "/api/v1/reports/{name}", params(("name" = String, Path), ReportQuery),
    responses((status = 200, body = Table), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn report(
    State(hub): State<HubState>,
    caller: Caller,
    uri: axum::http::Uri,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ReportQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let name = path
        .map(|Path(name)| name)
        .map_err(|e| invalid(e.body_text()))?;
    let Query(query) = query.map_err(|e| invalid(e.body_text()))?;
    let format = Format::parse(query.format.as_deref()).map_err(invalid)?;
    let user = caller.user.clone();
    let rules = hub.current_rules().await?;
    let report_name = name.clone();
    let table = hub
        .reads
        .run(move |conn| compute_report(conn, &user, &rules, &report_name, &query, now_ms()))
        .await?;
    reply(
        &hub,
        &caller,
        table,
        format,
        subject(uri.path(), uri.query()),
        &name,
    )
    .await
}

//! The membership program at a store: the rule set it holds (HQ's, relayed), the prepaid cap,
//! signup gifts, manual points adjustments (manager role) and count cards.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use chainsync_core::checkout::Movement;
use chainsync_core::ledger::{Account, EntryKind};
use chainsync_core::op::{CouponRecord, OpV1};
use chainsync_core::rules::Rules;
use chainsync_core::{Fen, limits};
use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::program::RulesView;
use chainsync_replica::views::ErrorBody;
use chainsync_replica::{project, read};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::commands::Local;
use crate::http::{AppState, Caller};

/// Refuse a recharge that would take the member's stored value past the prepaid cap.
pub fn check_prepaid_cap(
    conn: &Connection,
    rules: &Rules,
    member_id: Uuid,
    amount: Fen,
    bonus: Fen,
) -> Result<(), ApiError> {
    let balances = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let held = balances.principal.0.saturating_add(balances.bonus.0);
    let after = held.saturating_add(amount.0).saturating_add(bonus.0);
    if after > rules.prepaid_cap.0 {
        return Err(ApiError::new(
            422,
            "prepaid_cap_exceeded",
            format!(
                "this recharge (with its bonus) would bring the member's stored value to {}, \
                 above the cap of {} (rules version {}); the member holds {} now",
                Fen(after),
                rules.prepaid_cap,
                rules.version,
                Fen(held)
            ),
        ));
    }
    Ok(())
}

/// Credit a new member with the signup gifts of the rules this store holds.
pub fn signup_gifts(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    now_ms: u64,
) -> Result<(), ApiError> {
    let gift = local.rules.signup.clone();
    let reason = || Some("signup gift".to_owned());
    if gift.points > 0 {
        let movement = Movement {
            kind: EntryKind::PointsAdjust,
            account: Account::Points,
            amount: gift.points,
        };
        local.emit_entry(conn, now_ms, member_id, movement, None, reason())?;
    }
    if gift.stored_value > Fen::ZERO {
        let movement = Movement {
            kind: EntryKind::RechargeBonus,
            account: Account::Bonus,
            amount: gift.stored_value.0,
        };
        local.emit_entry(conn, now_ms, member_id, movement, None, reason())?;
    }
    if let Some(template_id) = gift.coupon_template {
        let known: bool = conn.query_row(
            "SELECT COUNT(*) > 0 FROM coupon_templates WHERE id = ?1",
            [template_id.to_string()],
            |row| row.get(0),
        )?;
        if known {
            // The code is unique because the id is (UUIDv7 with random bits).
            let id = local.new_id(now_ms)?;
            let record = CouponRecord {
                code: format!("S{}", id.simple()),
                template_id,
                member_id: Some(member_id),
            };
            let envelope = local.emit(conn, now_ms, OpV1::CouponIssue(record.clone()))?;
            project::project_coupon(conn, &record, &envelope.origin)?;
        } else {
            tracing::warn!(%template_id, "signup coupon template not here yet; no coupon given");
        }
    }
    Ok(())
}

/// `POST /api/v1/members/{id}/points-adjustments`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPointsAdjustment {
    /// Points to add (negative: take away); not zero.
    pub points: i64,
    /// Why (required, 1 to 200 characters).
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PointsAdjustmentView {
    /// The ledger entry written.
    pub id: Uuid,
    pub member_id: Uuid,
    pub points: i64,
    pub reason: String,
    /// The member's points after it.
    pub points_balance: i64,
    pub rule_version: u32,
}

pub fn adjust_points(
    conn: &Connection,
    local: &mut Local,
    member_id: Uuid,
    request: NewPointsAdjustment,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    if request.points == 0 || request.points.abs() > limits::amount_fen_max {
        return Err(ApiError::invalid_amount(format!(
            "points must be non-zero and at most {} either way",
            limits::amount_fen_max
        )));
    }
    let reason = request.reason.trim().to_owned();
    if reason.is_empty() || reason.chars().count() > 200 || reason.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "reason is required (1 to 200 characters)",
        ));
    }
    let member_id =
        read::canonical_member(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    let movement = Movement {
        kind: EntryKind::PointsAdjust,
        account: Account::Points,
        amount: request.points,
    };
    let entry = local.emit_entry(
        conn,
        now_ms,
        member_id,
        movement,
        None,
        Some(reason.clone()),
    )?;
    let balances = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
    Reply::new(
        201,
        &PointsAdjustmentView {
            id: entry.id,
            member_id,
            points: request.points,
            reason,
            points_balance: balances.points,
            rule_version: entry.rule_version,
        },
    )
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid_json(format!("request body: {e}")))
}

fn path_id(path: Result<Path<Uuid>, PathRejection>) -> Result<Uuid, ApiError> {
    path.map(|Path(id)| id)
        .map_err(|_| ApiError::unknown_member())
}

#[utoipa::path(get, path = "/api/v1/rules", responses((status = 200, body = RulesView)),
    security(("bearer" = [])))]
pub async fn get_rules(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<RulesView>, ApiError> {
    Ok(Json(RulesView::of(&app.current_rules().await?)))
}

#[utoipa::path(post, path = "/api/v1/members/{id}/points-adjustments", params(("id" = Uuid, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "repeat-safe key")),
    request_body = NewPointsAdjustment,
    responses((status = 201, body = PointsAdjustmentView), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_points_adjustment(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<Uuid>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Reply, ApiError> {
    caller.require_manager()?;
    let id = path_id(path)?;
    let request: NewPointsAdjustment = parse_json(&body)?;
    let idempotency = crate::http::idempotency(
        &headers,
        &format!("POST /api/v1/members/{id}/points-adjustments"),
        &body,
    )?;
    app.writer
        .submit(
            idempotency,
            Box::new(move |conn, local, now| adjust_points(conn, local, id, request, now)),
        )
        .await
}

/// The program's routes (merged into the store's router).
pub fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/rules", get(get_rules)).route(
        "/api/v1/members/{id}/points-adjustments",
        post(create_points_adjustment),
    )
}

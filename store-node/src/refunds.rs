//! Refunds of a sale, whole or by line (see `chainsync_core::refund` for the policy). Only the
//! store that made a sale refunds it (checked by the caller), so every refund of a sale is
//! written here one after another and the units left to refund are known exactly.

use chainsync_core::checkout::Movement;
use chainsync_core::ledger::{Account, EntryKind};
use chainsync_core::op::{OpV1, RefundRecord, SaleRecord};
use chainsync_core::refund::{self, RefundError, RefundLine, RefundLines, RefundedSoFar};
use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::views::RefundLineInput;
use chainsync_replica::{program, project, read};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::commands::Local;

/// A refund as written.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RefundReply {
    pub id: Uuid,
    pub checkout_id: Uuid,
    /// Money value given back (cash + stored value + points paid), 分.
    pub amount_fen: i64,
    /// Of which to give back in cash / externally.
    pub cash_fen: i64,
    /// Of which credited back to stored value (principal and bonus as they were spent).
    pub stored_value_fen: i64,
    /// Of which as points (their 分 value).
    pub points_fen: i64,
    /// Points credited back (points paid with).
    pub points_restored: i64,
    /// Points the sale earned, taken back.
    pub points_taken_back: i64,
    /// Lines and units refunded by this refund.
    pub lines: Vec<RefundLineInput>,
    /// Every unit of the sale is now refunded.
    pub complete: bool,
    /// The member's stored value and points after it.
    pub balance_fen: Option<i64>,
    pub points: Option<i64>,
}

fn original_movements(conn: &Connection, sale_id: Uuid) -> rusqlite::Result<Vec<Movement>> {
    let mut statement = conn.prepare_cached(
        "SELECT kind, account, amount FROM ledger
         WHERE checkout_id = ?1 AND kind IN ('spend', 'points_redeem', 'points_earn')",
    )?;
    let mut original = Vec::new();
    let mut rows = statement.query([sale_id.to_string()])?;
    while let Some(row) = rows.next()? {
        let kind: String = row.get(0)?;
        let account: String = row.get(1)?;
        let kind = match kind.as_str() {
            "spend" => EntryKind::Spend,
            "points_redeem" => EntryKind::PointsRedeem,
            _ => EntryKind::PointsEarn,
        };
        let account = match account.as_str() {
            "principal" => Account::Principal,
            "bonus" => Account::Bonus,
            _ => Account::Points,
        };
        original.push(Movement {
            kind,
            account,
            amount: row.get(2)?,
        });
    }
    // One order whatever the rows' order: principal, bonus, then points.
    original.sort_by_key(|m| (m.account, m.kind));
    Ok(original)
}

fn refund_error(error: RefundError) -> ApiError {
    match error {
        RefundError::TooMany { .. } => {
            ApiError::new(409, "nothing_left_to_refund", error.to_string())
        }
        RefundError::Overflow => ApiError::invalid_amount(error.to_string()),
        _ => ApiError::invalid_field(error.to_string()),
    }
}

fn already_refunded() -> ApiError {
    ApiError::new(
        409,
        "already_refunded",
        "this checkout was already refunded",
    )
}

/// Refund `lines` of `sale` (None: everything not yet refunded).
pub fn refund_sale(
    conn: &Connection,
    local: &mut Local,
    sale: SaleRecord,
    reason: Option<String>,
    lines: Option<Vec<RefundLineInput>>,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let before = RefundedSoFar {
        qty: program::refunded_qty(conn, sale.id, sale.lines.len())?,
    };
    // A refund written before line-level refunds existed refunded the whole sale.
    if read::has_refund(conn, sale.id)? && before.qty.iter().all(|q| *q == 0) {
        return Err(already_refunded());
    }
    let wanted = match lines {
        None => refund::all_left(&sale, &before),
        Some(lines) => {
            if lines.is_empty() || lines.len() > chainsync_core::limits::checkout_lines_max {
                return Err(ApiError::invalid_field("lines: 1 to 100 lines"));
            }
            lines
                .iter()
                .map(|l| RefundLine {
                    line: l.line,
                    qty: l.qty,
                })
                .collect()
        }
    };
    if wanted.is_empty() {
        return Err(already_refunded());
    }
    let original = original_movements(conn, sale.id)?;
    let line_points = program::sale_line_points(conn, sale.id)?;
    let plan =
        refund::plan_with_line_points(&sale, &original, &before, &wanted, line_points.as_deref())
            .map_err(refund_error)?;
    let refund_id = local.new_id(now_ms)?;
    let record = RefundRecord {
        id: refund_id,
        sale_id: sale.id,
        member_id: sale.member_id,
        amount: plan.amount,
        reason: reason.clone(),
        at_ms: now_ms,
    };
    let envelope = local.emit(conn, now_ms, OpV1::SaleRefund(record.clone()))?;
    project::project_refund(conn, &record, &envelope.origin)?;
    let refund_lines = RefundLines {
        refund_id,
        sale_id: sale.id,
        lines: wanted.iter().map(|l| (l.line as u32, l.qty)).collect(),
    };
    let envelope = local.emit(conn, now_ms, OpV1::RefundLines(refund_lines.clone()))?;
    program::project_refund_lines(conn, &refund_lines, &envelope.origin)?;
    let returned: Vec<(usize, i64)> = wanted.iter().map(|l| (l.line, l.qty)).collect();
    crate::stock::write_sale_return(conn, local, &sale, refund_id, &returned, now_ms)?;
    let (mut balance_fen, mut points) = (None, None);
    let (mut points_restored, mut points_taken_back) = (0, 0);
    for movement in &plan.movements {
        if movement.account == Account::Points {
            if movement.amount > 0 {
                points_restored += movement.amount;
            } else {
                points_taken_back -= movement.amount;
            }
        }
    }
    if let Some(member_id) = sale.member_id {
        let entry_reason = Some(reason.unwrap_or_else(|| "refund".to_owned()));
        for movement in &plan.movements {
            local.emit_entry(
                conn,
                now_ms,
                member_id,
                *movement,
                Some(sale.id),
                entry_reason.clone(),
            )?;
        }
        let after = read::balances(conn, member_id)?.ok_or_else(ApiError::unknown_member)?;
        balance_fen = Some(after.principal.0.saturating_add(after.bonus.0));
        points = Some(after.points);
    }
    Reply::new(
        201,
        &RefundReply {
            id: refund_id,
            checkout_id: sale.id,
            amount_fen: plan.amount.0,
            cash_fen: plan.cash.0,
            stored_value_fen: plan.stored_value.0,
            points_fen: plan.points_fen.0,
            points_restored,
            points_taken_back,
            lines: wanted
                .iter()
                .map(|l| RefundLineInput {
                    line: l.line,
                    qty: l.qty,
                })
                .collect(),
            complete: plan.completes,
            balance_fen,
            points,
        },
    )
}

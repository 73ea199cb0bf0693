//! Partial (line-level) refunds of a sale, planned without storage.
//!
//! Policy (stated in docs/store-api.md): a refund names lines and quantities of one sale. The
//! refunded share `f` of the sale is the list value of every unit refunded so far (this refund
//! and earlier ones) over the sale's subtotal. Each part of what the customer paid is given
//! back in that share, cumulatively rounded down to the 分 or point: cash and external
//! payments, stored value to the account it was taken from (principal and bonus each), points
//! paid, and the points the sale earned are taken back in the same share. The refund's amount
//! is the sum of the money parts. Because every figure is `floor(part × f)` on the cumulative
//! share, the refunds of a sale never give back more than was paid, and once every unit is
//! refunded they add up exactly to the sale (a whole-sale refund is the same as before).
//! Coupon discounts stay with the sale: a refunded line returns only what was paid for it, and
//! a redeemed coupon is not given back. Count-card uses are separate operations and are given
//! back with a use reversal, not with a sale refund.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::checkout::{Movement, PaymentMethod};
use crate::ledger::EntryKind;
use crate::money::Fen;
use crate::op::SaleRecord;

/// Units refunded per line of a sale so far, and what earlier refunds restored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefundedSoFar {
    /// Per sale line (by index).
    pub qty: Vec<i64>,
}

/// One line of a refund request: the sale line's index and how many units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefundLine {
    pub line: usize,
    pub qty: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefundPlan {
    /// Money value given back (cash + stored value + points paid), in 分.
    pub amount: Fen,
    /// Of which in cash or external payment.
    pub cash: Fen,
    /// Of which to stored value (principal + bonus).
    pub stored_value: Fen,
    /// Of which as points (their 分 value).
    pub points_fen: Fen,
    /// Ledger movements to write (refunds, points reversals).
    pub movements: Vec<Movement>,
    /// Every unit of the sale is refunded after this one.
    pub completes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefundError {
    #[error("the refund names no line")]
    NoLines,
    #[error("line {line} does not exist in this checkout")]
    UnknownLine { line: usize },
    #[error("line {line}: {qty} units asked but only {left} are left to refund")]
    TooMany { line: usize, qty: i64, left: i64 },
    #[error("line {line}: quantity must be at least 1")]
    InvalidQty { line: usize },
    #[error("amount overflow")]
    Overflow,
}

/// `floor(part × num / den)` in wide integers (`den` > 0, `num` ≤ `den`).
fn share(part: i64, num: i64, den: i64) -> i64 {
    if den <= 0 {
        return 0;
    }
    let wide = i128::from(part) * i128::from(num) / i128::from(den);
    i64::try_from(wide).unwrap_or(0)
}

/// Plan a refund of `lines` of `sale`, given the sale's original movements (spend, points
/// redeem, points earn) and the units refunded before.
pub fn plan(
    sale: &SaleRecord,
    original: &[Movement],
    before: &RefundedSoFar,
    lines: &[RefundLine],
) -> Result<RefundPlan, RefundError> {
    plan_with_line_points(sale, original, before, lines, None)
}

/// [`plan`] for a sale whose points were earned line by line (`line_points`, from its
/// `SalePoints`): the points taken back are each refunded line's own, in the share of its
/// units refunded (`rules::line_points_back`), not a share of the whole sale's.
pub fn plan_with_line_points(
    sale: &SaleRecord,
    original: &[Movement],
    before: &RefundedSoFar,
    lines: &[RefundLine],
    line_points: Option<&[i64]>,
) -> Result<RefundPlan, RefundError> {
    if lines.is_empty() {
        return Err(RefundError::NoLines);
    }
    let mut after: Vec<i64> = (0..sale.lines.len())
        .map(|i| before.qty.get(i).copied().unwrap_or(0))
        .collect();
    for request in lines {
        let Some(line) = sale.lines.get(request.line) else {
            return Err(RefundError::UnknownLine { line: request.line });
        };
        if request.qty < 1 {
            return Err(RefundError::InvalidQty { line: request.line });
        }
        let left = line.qty - after[request.line];
        if request.qty > left {
            return Err(RefundError::TooMany {
                line: request.line,
                qty: request.qty,
                left,
            });
        }
        after[request.line] += request.qty;
    }
    let value = |qty: &[i64]| -> Result<i64, RefundError> {
        let mut sum: i64 = 0;
        for (line, units) in sale.lines.iter().zip(qty) {
            let part = line
                .unit_price
                .checked_mul(*units)
                .map_err(|_| RefundError::Overflow)?;
            sum = sum.checked_add(part.0).ok_or(RefundError::Overflow)?;
        }
        Ok(sum)
    };
    let quantities: Vec<i64> = sale.lines.iter().map(|l| l.qty).collect();
    let subtotal = value(&quantities)?;
    let earlier = after_before(before, sale);
    let (was, now) = (value(&earlier)?, value(&after)?);
    // The part of `whole` this refund gives back: cumulative share now minus before.
    let step = |whole: i64| share(whole, now, subtotal) - share(whole, was, subtotal);
    let paid = |method: PaymentMethod| -> i64 {
        sale.payments
            .iter()
            .filter(|p| p.method == method)
            .map(|p| p.amount.0)
            .sum()
    };
    let cash = step(paid(PaymentMethod::Cash)) + step(paid(PaymentMethod::External));
    let points_fen = step(paid(PaymentMethod::Points));
    let mut movements = Vec::new();
    let mut stored_value = 0i64;
    for movement in original {
        let back = match (movement.kind, line_points) {
            (EntryKind::PointsEarn, Some(points)) => {
                crate::rules::line_points_back(points, &quantities, &earlier, &after)
                    .min(movement.amount.saturating_abs())
            }
            _ => step(movement.amount.saturating_abs()),
        };
        if back == 0 {
            continue;
        }
        let (kind, amount) = match movement.kind {
            EntryKind::Spend => {
                stored_value += back;
                (EntryKind::Refund, back)
            }
            EntryKind::PointsRedeem => (EntryKind::PointsReverse, back),
            _ => (EntryKind::PointsReverse, -back),
        };
        movements.push(Movement {
            kind,
            account: movement.account,
            amount,
        });
    }
    let amount = cash
        .checked_add(stored_value)
        .and_then(|a| a.checked_add(points_fen))
        .ok_or(RefundError::Overflow)?;
    Ok(RefundPlan {
        amount: Fen(amount),
        cash: Fen(cash),
        stored_value: Fen(stored_value),
        points_fen: Fen(points_fen),
        movements,
        completes: after
            .iter()
            .zip(&sale.lines)
            .all(|(done, line)| *done == line.qty),
    })
}

fn after_before(before: &RefundedSoFar, sale: &SaleRecord) -> Vec<i64> {
    (0..sale.lines.len())
        .map(|i| before.qty.get(i).copied().unwrap_or(0))
        .collect()
}

/// Every unit of every line: a whole-sale refund (of what is left).
pub fn all_left(sale: &SaleRecord, before: &RefundedSoFar) -> Vec<RefundLine> {
    sale.lines
        .iter()
        .enumerate()
        .map(|(line, l)| RefundLine {
            line,
            qty: l.qty - before.qty.get(line).copied().unwrap_or(0),
        })
        .filter(|r| r.qty > 0)
        .collect()
}

/// Which lines (index, units) one refund covered; written with its `SaleRefund`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundLines {
    pub refund_id: Uuid,
    pub sale_id: Uuid,
    pub lines: Vec<(u32, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkout::Payment;
    use crate::ledger::Account;
    use crate::op::SaleLine;

    fn sale(payments: Vec<Payment>) -> SaleRecord {
        let line = |sku: &str, qty: i64, price: i64| SaleLine {
            sku: sku.into(),
            name: sku.into(),
            qty,
            unit_price: Fen(price),
            amount: Fen(qty * price),
        };
        SaleRecord {
            id: Uuid::from_u128(1),
            member_id: Some(Uuid::from_u128(2)),
            lines: vec![line("A", 3, 1_000), line("B", 1, 701)],
            payments,
            subtotal: Fen(3_701),
            discount: Fen(370),
            total: Fen(3_331),
            points_earned: 33,
            tier: "黄金".into(),
            rule_version: 1,
            at_ms: 0,
        }
    }

    #[test]
    fn partial_refunds_add_up_to_the_sale_and_never_more() {
        let sale = sale(vec![
            Payment {
                method: PaymentMethod::Cash,
                amount: Fen(1_000),
            },
            Payment {
                method: PaymentMethod::StoredValue,
                amount: Fen(2_000),
            },
            Payment {
                method: PaymentMethod::Points,
                amount: Fen(331),
            },
        ]);
        let original = [
            Movement {
                kind: EntryKind::Spend,
                account: Account::Principal,
                amount: -1_500,
            },
            Movement {
                kind: EntryKind::Spend,
                account: Account::Bonus,
                amount: -500,
            },
            Movement {
                kind: EntryKind::PointsRedeem,
                account: Account::Points,
                amount: -331,
            },
            Movement {
                kind: EntryKind::PointsEarn,
                account: Account::Points,
                amount: 30,
            },
        ];
        let mut so_far = RefundedSoFar::default();
        let mut total = 0;
        let mut restored = std::collections::BTreeMap::new();
        for (line, qty) in [(0, 1), (1, 1), (0, 2)] {
            let plan = plan(&sale, &original, &so_far, &[RefundLine { line, qty }]).unwrap();
            assert_eq!(
                plan.amount.0,
                plan.cash.0 + plan.stored_value.0 + plan.points_fen.0
            );
            total += plan.amount.0;
            for m in &plan.movements {
                *restored.entry((m.kind, m.account)).or_insert(0) += m.amount;
            }
            so_far.qty.resize(2, 0);
            so_far.qty[line] += qty;
            assert_eq!(plan.completes, so_far.qty == vec![3, 1]);
        }
        assert_eq!(total, 3_331, "the refunds add up to what was paid");
        assert_eq!(restored[&(EntryKind::Refund, Account::Principal)], 1_500);
        assert_eq!(restored[&(EntryKind::Refund, Account::Bonus)], 500);
        // Points paid come back (+331) and points earned are taken back (−30).
        assert_eq!(
            restored[&(EntryKind::PointsReverse, Account::Points)],
            331 - 30
        );
        assert_eq!(
            plan(&sale, &original, &so_far, &[RefundLine { line: 0, qty: 1 }]),
            Err(RefundError::TooMany {
                line: 0,
                qty: 1,
                left: 0
            })
        );
    }

    #[test]
    fn one_line_gets_its_share_rounded_down() {
        let sale = sale(vec![Payment {
            method: PaymentMethod::Cash,
            amount: Fen(3_331),
        }]);
        let plan = plan(
            &sale,
            &[],
            &RefundedSoFar::default(),
            &[RefundLine { line: 1, qty: 1 }],
        )
        .unwrap();
        // 701 of 3,701 list value, of 3,331 paid: 630.9 → 630.
        assert_eq!((plan.amount.0, plan.cash.0), (630, 630));
        assert!(plan.movements.is_empty());
        assert_eq!(
            super::plan(
                &sale,
                &[],
                &RefundedSoFar::default(),
                &[RefundLine { line: 5, qty: 1 }]
            ),
            Err(RefundError::UnknownLine { line: 5 })
        );
    }
}

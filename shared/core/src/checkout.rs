//! Pricing a checkout and planning its ledger movements, without storage.
//!
//! Calling order: the caller looks up prices, the member's tier and balances, then calls
//! [`quote`]; if it succeeds it turns the quote into a sale record and ledger entries.
//! Refunds reverse a sale's entries with [`reverse`].

use serde::{Deserialize, Serialize};

use crate::ledger::{Account, Balances, EntryKind};
use crate::limits;
use crate::money::{Fen, Overflow};
use crate::rules::{EarnContext, Rules, Tier};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Cash,
    External,
    StoredValue,
    Points,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    pub method: PaymentMethod,
    /// Money value of this payment in 分 (for points: the 分 they pay for).
    pub amount: Fen,
}

/// A cart line with its price already looked up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricedLine {
    pub sku: String,
    pub name: String,
    pub qty: i64,
    pub unit_price: Fen,
}

/// A movement the checkout will write, before it gets an id and a timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Movement {
    pub kind: EntryKind,
    pub account: Account,
    pub amount: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub subtotal: Fen,
    pub discount: Fen,
    pub total: Fen,
    pub points_earned: i64,
    pub tier_name: String,
    pub movements: Vec<Movement>,
    /// The part of `discount` that coupons gave.
    pub coupon_discount: Fen,
    /// Points earned per line (they add up to `points_earned`; see `Rules::line_points`).
    pub line_points: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckoutError {
    #[error("the cart is empty")]
    EmptyCart,
    #[error("too many lines (at most {max})")]
    TooManyLines { max: usize },
    #[error("too many payments (at most {max})")]
    TooManyPayments { max: usize },
    #[error("line {line}: quantity must be 1 to {max}")]
    InvalidQty { line: usize, max: i64 },
    #[error("payment {index}: amount must be positive and at most {max} 分")]
    InvalidAmount { index: usize, max: i64 },
    #[error("payments add up to {paid} but {due} is due")]
    PaymentsMismatch { due: Fen, paid: Fen },
    #[error("stored value and points payments need a member")]
    MemberRequired,
    #[error("stored value balance {available} is less than {wanted}")]
    InsufficientBalance { available: Fen, wanted: Fen },
    #[error("{available} points available, {wanted} needed")]
    InsufficientPoints { available: i64, wanted: i64 },
    #[error("amount overflow")]
    Overflow,
    #[error("this coupon needs a total of at least {min_spend}; the total is {total}")]
    CouponMinSpend { min_spend: Fen, total: Fen },
}

impl From<Overflow> for CheckoutError {
    fn from(_: Overflow) -> Self {
        CheckoutError::Overflow
    }
}

/// Price a cart for a member in `tier` with `balances` (None: no member) and check payments.
///
/// - Tier discount applies to the subtotal, rounded down to the 分.
/// - Payments must add up to the total exactly.
/// - Stored value is spent from principal first, then bonus.
/// - Points are earned on what was paid with money (not with points), per whole ¥1.
pub fn quote(
    rules: &Rules,
    lines: &[PricedLine],
    tier: Option<&Tier>,
    balances: Option<Balances>,
    payments: &[Payment],
) -> Result<Quote, CheckoutError> {
    quote_with_coupons(rules, lines, tier, balances, payments, &[])
}

/// A coupon applied to a checkout: its value comes off the total (after the tier discount),
/// which must reach its minimum spend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CouponUse {
    pub value: Fen,
    pub min_spend: Fen,
}

/// The subtotal of `lines` less the tier discount: what coupons' minimum spends and discount
/// shares are measured on.
pub fn total_after_tier(lines: &[PricedLine], tier: Option<&Tier>) -> Result<Fen, CheckoutError> {
    let mut subtotal = Fen::ZERO;
    for line in lines {
        subtotal = subtotal.checked_add(line.unit_price.checked_mul(line.qty)?)?;
    }
    let discount = match tier {
        Some(tier) => subtotal.mul_basis_points(tier.discount_bp)?,
        None => Fen::ZERO,
    };
    Ok(subtotal.checked_sub(discount)?)
}

/// [`quote`] with coupons. Coupons never make the total negative.
pub fn quote_with_coupons(
    rules: &Rules,
    lines: &[PricedLine],
    tier: Option<&Tier>,
    balances: Option<Balances>,
    payments: &[Payment],
    coupons: &[CouponUse],
) -> Result<Quote, CheckoutError> {
    quote_earning(
        rules,
        lines,
        tier,
        balances,
        payments,
        coupons,
        &EarnContext::default(),
    )
}

/// [`quote_with_coupons`] where points earned follow the campaigns and category exclusions
/// of `rules` for the store, local time and line categories in `earn`.
pub fn quote_earning(
    rules: &Rules,
    lines: &[PricedLine],
    tier: Option<&Tier>,
    balances: Option<Balances>,
    payments: &[Payment],
    coupons: &[CouponUse],
    earn: &EarnContext,
) -> Result<Quote, CheckoutError> {
    if lines.is_empty() {
        return Err(CheckoutError::EmptyCart);
    }
    if lines.len() > limits::checkout_lines_max {
        return Err(CheckoutError::TooManyLines {
            max: limits::checkout_lines_max,
        });
    }
    if payments.len() > limits::checkout_payments_max {
        return Err(CheckoutError::TooManyPayments {
            max: limits::checkout_payments_max,
        });
    }
    let mut subtotal = Fen::ZERO;
    for (index, line) in lines.iter().enumerate() {
        if !(1..=limits::line_qty_max).contains(&line.qty) {
            return Err(CheckoutError::InvalidQty {
                line: index,
                max: limits::line_qty_max,
            });
        }
        subtotal = subtotal.checked_add(line.unit_price.checked_mul(line.qty)?)?;
    }
    let discount = match tier {
        Some(tier) => subtotal.mul_basis_points(tier.discount_bp)?,
        None => Fen::ZERO,
    };
    let after_tier = subtotal.checked_sub(discount)?;
    let mut coupon_discount = Fen::ZERO;
    for coupon in coupons {
        if after_tier < coupon.min_spend {
            return Err(CheckoutError::CouponMinSpend {
                min_spend: coupon.min_spend,
                total: after_tier,
            });
        }
        coupon_discount = coupon_discount.checked_add(coupon.value)?;
    }
    let coupon_discount = coupon_discount.min(after_tier);
    let discount = discount.checked_add(coupon_discount)?;
    let total = subtotal.checked_sub(discount)?;

    let by_method = |method: PaymentMethod| -> Result<Fen, CheckoutError> {
        let mut sum = Fen::ZERO;
        for (index, payment) in payments.iter().enumerate() {
            if payment.method == method {
                if !(1..=limits::amount_fen_max).contains(&payment.amount.0) {
                    return Err(CheckoutError::InvalidAmount {
                        index,
                        max: limits::amount_fen_max,
                    });
                }
                sum = sum.checked_add(payment.amount)?;
            }
        }
        Ok(sum)
    };
    let cash = by_method(PaymentMethod::Cash)?;
    let external = by_method(PaymentMethod::External)?;
    let stored_value = by_method(PaymentMethod::StoredValue)?;
    let points_fen = by_method(PaymentMethod::Points)?;
    let paid = Fen::sum([cash, external, stored_value, points_fen])?;
    if paid != total {
        return Err(CheckoutError::PaymentsMismatch { due: total, paid });
    }

    let mut movements = Vec::new();
    let uses_balance = stored_value > Fen::ZERO || points_fen > Fen::ZERO;
    let balances = match balances {
        Some(balances) => balances,
        None if uses_balance => return Err(CheckoutError::MemberRequired),
        None => Balances::default(),
    };
    if stored_value > Fen::ZERO {
        let available = balances.stored_value()?;
        if available < stored_value {
            return Err(CheckoutError::InsufficientBalance {
                available,
                wanted: stored_value,
            });
        }
        let from_principal = stored_value.min(balances.principal.max(Fen::ZERO));
        let from_bonus = stored_value.checked_sub(from_principal)?;
        for (account, amount) in [
            (Account::Principal, from_principal),
            (Account::Bonus, from_bonus),
        ] {
            if amount > Fen::ZERO {
                movements.push(Movement {
                    kind: EntryKind::Spend,
                    account,
                    amount: -amount.0,
                });
            }
        }
    }
    if points_fen > Fen::ZERO {
        let point_value = rules.point_value_fen.max(1);
        if points_fen.0 % point_value != 0 {
            return Err(CheckoutError::InvalidAmount {
                index: payments
                    .iter()
                    .position(|p| p.method == PaymentMethod::Points)
                    .unwrap_or(0),
                max: limits::amount_fen_max,
            });
        }
        let wanted = points_fen.0 / point_value;
        if balances.points < wanted {
            return Err(CheckoutError::InsufficientPoints {
                available: balances.points,
                wanted,
            });
        }
        movements.push(Movement {
            kind: EntryKind::PointsRedeem,
            account: Account::Points,
            amount: -wanted,
        });
    }
    let (line_points, tier_name) = match tier {
        Some(tier) => {
            let eligible = total.checked_sub(points_fen)?;
            let mut amounts = Vec::with_capacity(lines.len());
            for line in lines {
                amounts.push(line.unit_price.checked_mul(line.qty)?);
            }
            (
                rules.line_points(&amounts, eligible, tier, earn)?,
                tier.name.clone(),
            )
        }
        None => (vec![0; lines.len()], String::new()),
    };
    let points_earned = line_points
        .iter()
        .try_fold(0i64, |sum, p| sum.checked_add(*p))
        .ok_or(CheckoutError::Overflow)?;
    if points_earned > 0 {
        movements.push(Movement {
            kind: EntryKind::PointsEarn,
            account: Account::Points,
            amount: points_earned,
        });
    }
    Ok(Quote {
        subtotal,
        discount,
        total,
        points_earned,
        tier_name,
        movements,
        coupon_discount,
        line_points,
    })
}

/// The movements that undo a sale's movements (a full refund).
pub fn reverse(movements: &[Movement]) -> Vec<Movement> {
    movements
        .iter()
        .filter(|m| m.amount != 0)
        .map(|m| {
            let kind = match m.kind {
                EntryKind::Spend => EntryKind::Refund,
                _ => EntryKind::PointsReverse,
            };
            Movement {
                kind,
                account: m.account,
                amount: m.amount.saturating_neg(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(price: i64, qty: i64) -> PricedLine {
        PricedLine {
            sku: "A".into(),
            name: "a".into(),
            qty,
            unit_price: Fen(price),
        }
    }

    fn pay(method: PaymentMethod, amount: i64) -> Payment {
        Payment {
            method,
            amount: Fen(amount),
        }
    }

    #[test]
    fn gold_member_pays_with_stored_value_and_points() {
        let rules = Rules::default();
        let gold = rules.tier_for_spend(Fen(600_000)).clone();
        let balances = Balances {
            principal: Fen(3_000),
            bonus: Fen(5_000),
            points: 1_000,
        };
        let q = quote(
            &rules,
            &[line(2_000, 3), line(1_000, 1)],
            Some(&gold),
            Some(balances),
            &[
                pay(PaymentMethod::StoredValue, 6_000),
                pay(PaymentMethod::Points, 650),
            ],
        )
        .unwrap();
        assert_eq!(
            (q.subtotal, q.discount, q.total),
            (Fen(7_000), Fen(350), Fen(6_650))
        );
        assert_eq!(q.points_earned, 60);
        assert_eq!(
            q.movements,
            vec![
                Movement {
                    kind: EntryKind::Spend,
                    account: Account::Principal,
                    amount: -3_000
                },
                Movement {
                    kind: EntryKind::Spend,
                    account: Account::Bonus,
                    amount: -3_000
                },
                Movement {
                    kind: EntryKind::PointsRedeem,
                    account: Account::Points,
                    amount: -650
                },
                Movement {
                    kind: EntryKind::PointsEarn,
                    account: Account::Points,
                    amount: 60
                },
            ]
        );
        let back: i64 = reverse(&q.movements)
            .iter()
            .chain(&q.movements)
            .map(|m| m.amount)
            .sum();
        assert_eq!(back, 0);
    }

    #[test]
    fn bad_carts_are_refused() {
        let rules = Rules::default();
        let cash = |n| [pay(PaymentMethod::Cash, n)];
        assert_eq!(
            quote(&rules, &[], None, None, &cash(1)),
            Err(CheckoutError::EmptyCart)
        );
        assert!(matches!(
            quote(&rules, &[line(100, 0)], None, None, &cash(0)),
            Err(CheckoutError::InvalidQty { .. })
        ));
        assert!(matches!(
            quote(&rules, &[line(100, 1)], None, None, &cash(99)),
            Err(CheckoutError::PaymentsMismatch { .. })
        ));
        assert!(matches!(
            quote(
                &rules,
                &[line(100, 1)],
                None,
                None,
                &[pay(PaymentMethod::Cash, -100)]
            ),
            Err(CheckoutError::InvalidAmount { .. })
        ));
        assert_eq!(
            quote(
                &rules,
                &[line(100, 1)],
                None,
                None,
                &[pay(PaymentMethod::StoredValue, 100)]
            ),
            Err(CheckoutError::MemberRequired)
        );
        let tier = rules.tiers[0].clone();
        let poor = Balances {
            principal: Fen(50),
            bonus: Fen(0),
            points: 0,
        };
        assert!(matches!(
            quote(
                &rules,
                &[line(100, 1)],
                Some(&tier),
                Some(poor),
                &[pay(PaymentMethod::StoredValue, 100)]
            ),
            Err(CheckoutError::InsufficientBalance { .. })
        ));
        assert!(matches!(
            quote(&rules, &[line(i64::MAX, 2)], None, None, &cash(1)),
            Err(CheckoutError::Overflow)
        ));
    }
}

//! The points gift catalog: HQ's gifts (a point price and a stock) and redemptions at stores.
//!
//! A redemption is an operation (with its points ledger entry), so it works offline. Stock left
//! is the gift's stock minus the units of every redemption held (a grow-only set): the same on
//! every replica holding the same operations. Two stores apart can both take the last unit;
//! the stock then shows below zero everywhere (HQ restocks or settles), like an overdraft.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Largest stock and point price of a gift.
pub const gift_stock_max: i64 = 1_000_000;
pub const gift_points_max: i64 = 100_000_000;
/// Most units in one redemption.
pub const redemption_qty_max: i64 = 100;

/// A gift of the catalog (HQ); last writer (by HLC, then origin) wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gift {
    pub id: Uuid,
    pub name: String,
    /// Points for one unit.
    pub points_price: i64,
    /// Units ever put in stock (redemptions are subtracted from it).
    pub stock: i64,
    pub active: bool,
}

/// Units of a gift taken by a member for points (the points move in ledger entry `entry_id`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GiftRedemption {
    pub id: Uuid,
    pub gift_id: Uuid,
    pub member_id: Uuid,
    pub qty: i64,
    pub points: i64,
    pub entry_id: Uuid,
    pub at_ms: u64,
}

/// Stock left: may be below zero after redemptions at stores apart.
pub fn stock_left(stock: i64, redeemed: i64) -> i64 {
    stock.saturating_sub(redeemed)
}

/// Points for `qty` units, if it fits.
pub fn points_for(points_price: i64, qty: i64) -> Option<i64> {
    points_price.checked_mul(qty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stock_and_price() {
        assert_eq!(stock_left(3, 4), -1);
        assert_eq!(points_for(200, 2), Some(400));
        assert_eq!(points_for(i64::MAX, 2), None);
    }
}

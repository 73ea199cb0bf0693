//! Stock as a fold of immutable movements, and transfers between stores.
//!
//! Every change of stock is a [`Movement`] authored by the store that holds the goods. The stock
//! of a store and SKU is the sum of its movements' deltas. Transfers are seen through their
//! movements: a `TransferOut` at the source when shipped, a `TransferIn` at the destination when
//! received. What was shipped and not yet received is in transit; once the destination has
//! received, any difference is a discrepancy. Folds are functions of the SET of movements:
//! duplicates (same id) count once and order does not matter.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

use crate::StoreId;

/// Why stock moved. The sign of the delta follows the kind (checked by [`Movement::check`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum MovementKind {
    /// 进货: goods received from a supplier (delta > 0).
    Receipt,
    /// 退货: goods returned to a supplier (delta < 0).
    SupplierReturn,
    /// A sale at checkout (delta < 0).
    Sale,
    /// A refunded sale coming back (delta > 0).
    SaleReturn,
    /// Damaged or lost goods written off (delta < 0).
    Damage,
    /// Stocktake adjustment (either sign).
    Stocktake,
    /// Shipped to another store (delta < 0, `transfer` set).
    TransferOut,
    /// Received from another store (delta > 0, `transfer` set).
    TransferIn,
}

/// One immutable stock movement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    pub id: Uuid,
    pub store: StoreId,
    pub sku: String,
    pub delta: i64,
    pub kind: MovementKind,
    pub transfer: Option<Uuid>,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MovementError {
    #[error("quantity must not be zero")]
    ZeroQuantity,
    #[error("the sign of the quantity does not match the kind of movement")]
    WrongSign,
    #[error("transfer movements need a transfer id, other movements must not have one")]
    TransferId,
    #[error("sku must not be empty")]
    EmptySku,
}

impl Movement {
    /// Checks the movement's shape: non-empty SKU, non-zero delta with the kind's sign, and a
    /// transfer id exactly on transfer movements.
    pub fn check(&self) -> Result<(), MovementError> {
        use MovementKind::*;
        if self.sku.trim().is_empty() {
            return Err(MovementError::EmptySku);
        }
        if self.delta == 0 {
            return Err(MovementError::ZeroQuantity);
        }
        let sign_ok = match self.kind {
            Receipt | SaleReturn | TransferIn => self.delta > 0,
            SupplierReturn | Sale | Damage | TransferOut => self.delta < 0,
            Stocktake => true,
        };
        if !sign_ok {
            return Err(MovementError::WrongSign);
        }
        let is_transfer = matches!(self.kind, TransferOut | TransferIn);
        if is_transfer != self.transfer.is_some() {
            return Err(MovementError::TransferId);
        }
        Ok(())
    }
}

/// Stock per (store, sku).
pub type StockLevels = BTreeMap<(StoreId, String), i64>;

/// Per transfer and SKU: quantity shipped and quantity received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferLine {
    pub shipped: i64,
    pub received: i64,
}

/// The folded state of all movements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StockState {
    pub levels: StockLevels,
    /// transfer id → sku → shipped/received.
    pub transfers: BTreeMap<Uuid, BTreeMap<String, TransferLine>>,
    /// Transfers the destination has received (any `TransferIn` seen).
    pub received: BTreeSet<Uuid>,
}

impl StockState {
    /// Folds a set of movements; a movement whose id was already seen is ignored.
    pub fn fold<'a>(movements: impl IntoIterator<Item = &'a Movement>) -> StockState {
        let mut unique: BTreeMap<Uuid, &Movement> = BTreeMap::new();
        for m in movements {
            unique.entry(m.id).or_insert(m);
        }
        let mut state = StockState::default();
        for m in unique.values() {
            let level = state
                .levels
                .entry((m.store.clone(), m.sku.clone()))
                .or_insert(0);
            *level = level.saturating_add(m.delta);
            if let Some(transfer) = m.transfer {
                let line = state
                    .transfers
                    .entry(transfer)
                    .or_default()
                    .entry(m.sku.clone())
                    .or_default();
                match m.kind {
                    MovementKind::TransferOut => {
                        line.shipped = line.shipped.saturating_sub(m.delta)
                    }
                    MovementKind::TransferIn => {
                        line.received = line.received.saturating_add(m.delta);
                        state.received.insert(transfer);
                    }
                    _ => {}
                }
            }
        }
        state
    }

    /// Stock of one store and SKU (0 when nothing moved).
    pub fn level(&self, store: &StoreId, sku: &str) -> i64 {
        self.levels
            .get(&(store.clone(), sku.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Quantity per SKU shipped on transfers the destination has not received yet.
    pub fn in_transit(&self) -> BTreeMap<String, i64> {
        let mut out: BTreeMap<String, i64> = BTreeMap::new();
        for (id, lines) in &self.transfers {
            if self.received.contains(id) {
                continue;
            }
            for (sku, line) in lines {
                *out.entry(sku.clone()).or_insert(0) += line.shipped;
            }
        }
        out.retain(|_, q| *q != 0);
        out
    }

    /// (transfer, sku, shipped − received) for received transfers whose quantities differ.
    pub fn discrepancies(&self) -> Vec<(Uuid, String, i64)> {
        let mut out = Vec::new();
        for id in &self.received {
            if let Some(lines) = self.transfers.get(id) {
                for (sku, line) in lines {
                    let missing = line.shipped.saturating_sub(line.received);
                    if missing != 0 {
                        out.push((*id, sku.clone(), missing));
                    }
                }
            }
        }
        out
    }
}

/// The two ends of a transfer, carried by every operation of it so the hub can relay it to
/// exactly the stores it concerns without looking anything up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferEnds {
    pub id: Uuid,
    pub from: StoreId,
    pub to: StoreId,
}

/// Movements written together by one store (the one that holds the goods): the lines of a
/// checkout, a refund, a receipt, a stocktake's adjustments, a transfer shipped or received.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovementBatch {
    pub id: Uuid,
    pub store: StoreId,
    /// The transfer every movement of the batch belongs to (transfer out / in batches only).
    pub transfer: Option<TransferEnds>,
    pub movements: Vec<Movement>,
    /// What caused it (checkout, refund or stocktake id), if anything.
    pub cause: Option<Uuid>,
    /// Unix ms at the store.
    pub at_ms: u64,
}

/// A transfer asked for (by a store or by HQ): what should go from `from` to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    pub ends: TransferEnds,
    /// (sku, quantity > 0), at most one line per SKU.
    pub lines: Vec<(String, i64)>,
    pub note: Option<String>,
    /// Unix ms when requested.
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("movement {index}: {error}")]
    Movement { index: usize, error: MovementError },
    #[error("a batch holds 1 to {max} movements")]
    Size { max: usize },
    #[error("every movement of a batch belongs to the batch's store and transfer")]
    Mismatch,
    #[error("a transfer goes between two different stores")]
    SameStore,
    #[error("a transfer request has 1 to {max} lines, each a distinct SKU with a quantity > 0")]
    RequestLines { max: usize },
}

impl MovementBatch {
    /// Checks each movement, the batch size, and that every movement is the batch store's and
    /// belongs to the batch's transfer (out at its source, in at its destination).
    pub fn check(&self) -> Result<(), BatchError> {
        let max = crate::limits::stock_batch_movements_max;
        if self.movements.is_empty() || self.movements.len() > max {
            return Err(BatchError::Size { max });
        }
        if let Some(ends) = &self.transfer
            && ends.from == ends.to
        {
            return Err(BatchError::SameStore);
        }
        for (index, m) in self.movements.iter().enumerate() {
            m.check()
                .map_err(|error| BatchError::Movement { index, error })?;
            if m.store != self.store || m.transfer != self.transfer.as_ref().map(|t| t.id) {
                return Err(BatchError::Mismatch);
            }
            if let Some(ends) = &self.transfer {
                let at_right_end = match m.kind {
                    MovementKind::TransferOut => ends.from == self.store,
                    MovementKind::TransferIn => ends.to == self.store,
                    _ => false,
                };
                if !at_right_end {
                    return Err(BatchError::Mismatch);
                }
            }
        }
        Ok(())
    }
}

impl TransferRequest {
    pub fn check(&self) -> Result<(), BatchError> {
        let max = crate::limits::stock_batch_movements_max;
        if self.ends.from == self.ends.to {
            return Err(BatchError::SameStore);
        }
        let skus: BTreeSet<&str> = self.lines.iter().map(|(sku, _)| sku.as_str()).collect();
        let lines_ok = !self.lines.is_empty()
            && self.lines.len() <= max
            && skus.len() == self.lines.len()
            && self.lines.iter().all(|(sku, qty)| {
                !sku.trim().is_empty()
                    && sku.chars().count() <= crate::limits::sku_chars_max
                    && (1..=crate::limits::line_qty_max).contains(qty)
            });
        if !lines_ok {
            return Err(BatchError::RequestLines { max });
        }
        Ok(())
    }
}

/// What a stocktake's count adjusts: `counted − expected`, where `expected` is the stock the
/// store held for the SKU when the count was recorded (movements after that moment, a sale
/// during the count or one arriving later, are already in the stock and must not be counted
/// again). Zero means no adjustment.
pub fn stocktake_adjustment(counted: i64, expected_at_count: i64) -> i64 {
    counted.saturating_sub(expected_at_count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn store(s: &str) -> StoreId {
        StoreId::parse(s).unwrap()
    }

    fn mv(
        n: u128,
        s: &str,
        sku: &str,
        delta: i64,
        kind: MovementKind,
        t: Option<u128>,
    ) -> Movement {
        Movement {
            id: Uuid::from_u128(n),
            store: store(s),
            sku: sku.into(),
            delta,
            kind,
            transfer: t.map(Uuid::from_u128),
            reason: None,
        }
    }

    fn scenario() -> Vec<Movement> {
        use MovementKind::*;
        vec![
            mv(1, "a", "x", 10, Receipt, None),
            mv(2, "a", "x", -2, Sale, None),
            mv(3, "a", "x", -5, TransferOut, Some(100)),
            mv(4, "b", "x", 4, TransferIn, Some(100)),
            mv(5, "a", "x", -3, TransferOut, Some(101)),
        ]
    }

    #[test]
    fn receipt_sale_transfer_partial_receipt() {
        let state = StockState::fold(&scenario());
        assert_eq!(state.level(&store("a"), "x"), 0);
        assert_eq!(state.level(&store("b"), "x"), 4);
        assert_eq!(state.in_transit().get("x"), Some(&3));
        assert_eq!(
            state.discrepancies(),
            vec![(Uuid::from_u128(100), "x".into(), 1)]
        );
    }

    #[test]
    fn check_refuses_bad_shapes() {
        use MovementKind::*;
        assert_eq!(
            mv(1, "a", "x", 0, Receipt, None).check(),
            Err(MovementError::ZeroQuantity)
        );
        assert_eq!(
            mv(1, "a", "x", -1, Receipt, None).check(),
            Err(MovementError::WrongSign)
        );
        assert_eq!(
            mv(1, "a", "x", -1, TransferOut, None).check(),
            Err(MovementError::TransferId)
        );
        assert_eq!(
            mv(1, "a", " ", 1, Receipt, None).check(),
            Err(MovementError::EmptySku)
        );
        assert!(scenario().iter().all(|m| m.check().is_ok()));
        assert!(mv(1, "a", "x", -1, Stocktake, None).check().is_ok());
    }

    #[test]
    fn batches_are_checked() {
        use MovementKind::*;
        let ends = TransferEnds {
            id: Uuid::from_u128(100),
            from: store("a"),
            to: store("b"),
        };
        let batch = |movements: Vec<Movement>, transfer: Option<TransferEnds>| MovementBatch {
            id: Uuid::from_u128(9),
            store: store("a"),
            transfer,
            movements,
            cause: None,
            at_ms: 0,
        };
        assert!(
            batch(vec![mv(1, "a", "x", 3, Receipt, None)], None)
                .check()
                .is_ok()
        );
        assert_eq!(
            batch(vec![], None).check(),
            Err(BatchError::Size { max: 200 })
        );
        assert_eq!(
            batch(vec![mv(1, "b", "x", 3, Receipt, None)], None).check(),
            Err(BatchError::Mismatch)
        );
        assert!(
            batch(
                vec![mv(1, "a", "x", -3, TransferOut, Some(100))],
                Some(ends.clone())
            )
            .check()
            .is_ok()
        );
        // The source cannot write the destination's receipt.
        assert_eq!(
            batch(
                vec![mv(1, "a", "x", 3, TransferIn, Some(100))],
                Some(ends.clone())
            )
            .check(),
            Err(BatchError::Mismatch)
        );
        assert!(matches!(
            batch(vec![mv(1, "a", "x", 0, Receipt, None)], None).check(),
            Err(BatchError::Movement { index: 0, .. })
        ));
        let request = TransferRequest {
            ends: ends.clone(),
            lines: vec![("x".into(), 5), ("y".into(), 1)],
            note: None,
            at_ms: 0,
        };
        assert!(request.check().is_ok());
        let mut twice = request.clone();
        twice.lines.push(("x".into(), 1));
        assert!(twice.check().is_err());
        let mut zero = request.clone();
        zero.lines[0].1 = 0;
        assert!(zero.check().is_err());
        assert_eq!(stocktake_adjustment(8, 10), -2);
    }

    proptest! {
        #[test]
        fn fold_ignores_order_and_duplicates(seed in any::<u64>(), dup in 0usize..5) {
            let mut ms = scenario();
            ms.push(ms[dup].clone());
            let mut shuffled = ms.clone();
            let mut s = seed;
            for i in (1..shuffled.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (s >> 33) as usize % (i + 1));
            }
            prop_assert_eq!(StockState::fold(&shuffled), StockState::fold(&scenario()));
        }
    }
}

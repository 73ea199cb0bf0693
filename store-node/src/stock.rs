//! Stock at the store: movements a manager records (receipts, returns to suppliers, damage),
//! the sale and sale-return movements of checkouts and refunds, transfers (request, ship,
//! receive), stocktakes, low-stock thresholds and alerts. Every write runs inside the writer's
//! transaction and produces `OpV1::StockMovements` / `OpV1::TransferRequest` operations; only
//! this store writes movements of its own stock.
//!
//! Stocktake sessions, counts and thresholds are this store's own tables (not replicated):
//! what replicates is the adjustment, a movement like any other.

use chainsync_core::op::{OpV1, SaleRecord};
use chainsync_core::stock::{
    Movement, MovementBatch, MovementKind, TransferEnds, TransferRequest, stocktake_adjustment,
};
use chainsync_core::{StoreId, limits};
use chainsync_replica::api::{ApiError, Reply};
use chainsync_replica::stock::{self as replica_stock, StockLevelView, TransferView};
use chainsync_replica::views::StockFlag;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::commands::Local;

/// The store's own stock tables.
pub const schema_v1: &str = r#"
CREATE TABLE stock_thresholds (
    sku TEXT PRIMARY KEY,
    min_qty INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE stocktakes (
    id TEXT PRIMARY KEY,
    note TEXT,
    started_ms INTEGER NOT NULL,
    finished_ms INTEGER,
    batch_id TEXT
) WITHOUT ROWID;

-- A count records the stock expected at the moment it was taken and how far this store's own
-- operations went then (its watermark): the adjustment is counted − expected.
CREATE TABLE stocktake_counts (
    stocktake_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    counted INTEGER NOT NULL,
    expected INTEGER NOT NULL,
    watermark_seq INTEGER NOT NULL,
    counted_ms INTEGER NOT NULL,
    PRIMARY KEY (stocktake_id, sku)
) WITHOUT ROWID;
"#;

/// One SKU and a quantity, as sent by a client.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockLineInput {
    pub sku: String,
    pub qty: i64,
}

/// `POST /api/v1/stock/movements`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStockMovements {
    /// `receipt` (进货), `supplier_return` (退货) or `damage`.
    pub kind: String,
    /// Quantities > 0; the kind gives the sign.
    pub lines: Vec<StockLineInput>,
    pub reason: Option<String>,
}

/// A batch of movements as written.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MovementsReply {
    pub id: Uuid,
    pub kind: String,
    /// The SKUs' stock after the batch.
    pub stock: Vec<StockFlag>,
    /// SKUs the batch left below zero.
    pub stock_below_zero: Vec<StockFlag>,
}

fn insufficient(sku: &str, qty: i64, after: i64) -> ApiError {
    ApiError::new(
        409,
        "insufficient_stock",
        format!(
            "SKU {sku}: taking {qty} would leave {after} in stock, and this store does not sell \
             or send out below zero"
        ),
    )
}

fn check_lines(lines: &[StockLineInput], allow_zero: bool) -> Result<(), ApiError> {
    if lines.is_empty() || lines.len() > limits::stock_batch_movements_max {
        return Err(ApiError::invalid_field(format!(
            "lines: 1 to {} lines",
            limits::stock_batch_movements_max
        )));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (index, line) in lines.iter().enumerate() {
        let min = if allow_zero { 0 } else { 1 };
        if !(min..=limits::line_qty_max).contains(&line.qty) {
            return Err(ApiError::new(
                422,
                "invalid_qty",
                format!(
                    "line {index}: qty must be a whole number from {min} to {}",
                    limits::line_qty_max
                ),
            ));
        }
        if !seen.insert(line.sku.as_str()) {
            return Err(ApiError::invalid_field(format!(
                "line {index}: SKU {:?} appears twice",
                line.sku
            )));
        }
    }
    Ok(())
}

fn known_sku(conn: &Connection, index: usize, sku: &str) -> Result<(), ApiError> {
    if chainsync_replica::read::product(conn, sku)?.is_none() {
        return Err(ApiError::new(
            422,
            "unknown_sku",
            format!("line {index}: unknown SKU {sku:?}"),
        ));
    }
    Ok(())
}

/// Write movements (sku, signed delta) of one kind as one batch. Refuses to go below zero
/// when the store does not allow it (only for movements that take stock out).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_batch(
    conn: &Connection,
    local: &mut Local,
    kind: MovementKind,
    deltas: &[(String, i64)],
    transfer: Option<TransferEnds>,
    cause: Option<Uuid>,
    reason: Option<String>,
    now_ms: u64,
) -> Result<(Uuid, Vec<StockFlag>, Vec<StockFlag>), ApiError> {
    // Several lines of one SKU (a checkout may list one twice) become one movement.
    let mut merged: BTreeMap<&str, i64> = BTreeMap::new();
    for (sku, delta) in deltas {
        let total = merged.entry(sku.as_str()).or_insert(0);
        *total = total.saturating_add(*delta);
    }
    merged.retain(|_, delta| *delta != 0);
    let store = local.store.clone();
    let batch_id = local.new_id(now_ms)?;
    let mut movements = Vec::with_capacity(merged.len());
    let mut stock = Vec::new();
    let mut below_zero = Vec::new();
    for (sku, delta) in &merged {
        let before = replica_stock::level(conn, store.as_str(), sku)?;
        let after = before.saturating_add(*delta);
        if *delta < 0 && after < 0 {
            if !local.allow_negative_stock {
                return Err(insufficient(sku, -delta, after));
            }
            below_zero.push(StockFlag {
                sku: (*sku).to_owned(),
                qty: after,
            });
        }
        stock.push(StockFlag {
            sku: (*sku).to_owned(),
            qty: after,
        });
        movements.push(Movement {
            id: local.new_id(now_ms)?,
            store: store.clone(),
            sku: (*sku).to_owned(),
            delta: *delta,
            kind,
            transfer: transfer.as_ref().map(|t| t.id),
            reason: reason.clone(),
        });
    }
    if movements.is_empty() {
        return Ok((batch_id, stock, below_zero));
    }
    // A checkout of more SKUs than one batch holds is written as several batches.
    for (index, chunk) in movements
        .chunks(limits::stock_batch_movements_max)
        .enumerate()
    {
        let batch = MovementBatch {
            id: if index == 0 {
                batch_id
            } else {
                local.new_id(now_ms)?
            },
            store: store.clone(),
            transfer: transfer.clone(),
            movements: chunk.to_vec(),
            cause,
            at_ms: now_ms,
        };
        batch.check().map_err(ApiError::internal)?;
        local.emit(conn, now_ms, OpV1::StockMovements(batch.clone()))?;
        replica_stock::project_movements(conn, &batch)?;
    }
    Ok((batch_id, stock, below_zero))
}

/// The SKUs and units one unit of `sku` takes from stock: a bundle's components when the
/// catalog knows it as a bundle (套餐: the bundle itself holds no stock), else the SKU itself.
fn components(conn: &Connection, sku: &str) -> Result<Vec<(String, i64)>, ApiError> {
    Ok(chainsync_replica::catalog::bundle_components(conn, sku)?
        .unwrap_or_else(|| vec![(sku.to_owned(), 1)]))
}

/// Expand (sku, units) lines into stock deltas of `sign`, bundles into their components.
fn deltas_of(
    conn: &Connection,
    lines: impl IntoIterator<Item = (String, i64)>,
    sign: i64,
) -> Result<Vec<(String, i64)>, ApiError> {
    let mut out = Vec::new();
    for (sku, qty) in lines {
        for (component, per_unit) in components(conn, &sku)? {
            out.push((component, sign.saturating_mul(qty.saturating_mul(per_unit))));
        }
    }
    Ok(out)
}

/// The sale movements of a checkout (in its transaction): one per SKU sold.
pub(crate) fn write_sale(
    conn: &Connection,
    local: &mut Local,
    sale: &SaleRecord,
    now_ms: u64,
) -> Result<Vec<StockFlag>, ApiError> {
    let deltas = deltas_of(conn, sale.lines.iter().map(|l| (l.sku.clone(), l.qty)), -1)?;
    let (_, _, below_zero) = write_batch(
        conn,
        local,
        MovementKind::Sale,
        &deltas,
        None,
        Some(sale.id),
        None,
        now_ms,
    )?;
    Ok(below_zero)
}

/// The sale-return movements of a refund: the refunded units back in stock.
pub(crate) fn write_sale_return(
    conn: &Connection,
    local: &mut Local,
    sale: &SaleRecord,
    refund_id: Uuid,
    lines: &[(usize, i64)],
    now_ms: u64,
) -> Result<(), ApiError> {
    let mut units = Vec::new();
    for (line, qty) in lines {
        let sale_line = sale
            .lines
            .get(*line)
            .ok_or_else(|| ApiError::internal("refunded line out of range"))?;
        units.push((sale_line.sku.clone(), *qty));
    }
    let deltas = deltas_of(conn, units, 1)?;
    write_batch(
        conn,
        local,
        MovementKind::SaleReturn,
        &deltas,
        None,
        Some(refund_id),
        Some("refund".to_owned()),
        now_ms,
    )?;
    Ok(())
}

fn clean_reason(reason: Option<String>) -> Result<Option<String>, ApiError> {
    let reason = reason
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    if reason
        .as_ref()
        .is_some_and(|r| r.chars().count() > limits::note_chars_max)
    {
        return Err(ApiError::invalid_field("reason is too long"));
    }
    Ok(reason)
}

/// `POST /api/v1/stock/movements`: a receipt, a return to a supplier or damage.
pub fn record_movements(
    conn: &Connection,
    local: &mut Local,
    request: NewStockMovements,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let (kind, sign) = match request.kind.as_str() {
        "receipt" => (MovementKind::Receipt, 1),
        "supplier_return" => (MovementKind::SupplierReturn, -1),
        "damage" => (MovementKind::Damage, -1),
        _ => {
            return Err(ApiError::invalid_field(
                "kind must be receipt, supplier_return or damage",
            ));
        }
    };
    check_lines(&request.lines, false)?;
    for (index, line) in request.lines.iter().enumerate() {
        known_sku(conn, index, &line.sku)?;
    }
    let reason = clean_reason(request.reason)?;
    let deltas: Vec<(String, i64)> = request
        .lines
        .iter()
        .map(|l| (l.sku.clone(), sign * l.qty))
        .collect();
    let (id, stock, stock_below_zero) =
        write_batch(conn, local, kind, &deltas, None, None, reason, now_ms)?;
    Reply::new(
        201,
        &MovementsReply {
            id,
            kind: request.kind,
            stock,
            stock_below_zero,
        },
    )
}

/// `POST /api/v1/stock/thresholds`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewThreshold {
    pub sku: String,
    /// Alert when the stock is at or below this (0 to 1,000,000); null removes the threshold.
    pub min_qty: Option<i64>,
}

pub fn set_threshold(conn: &Connection, request: NewThreshold) -> Result<Reply, ApiError> {
    known_sku(conn, 0, &request.sku)?;
    match request.min_qty {
        Some(min_qty) if (0..=1_000_000).contains(&min_qty) => {
            conn.execute(
                "INSERT INTO stock_thresholds (sku, min_qty) VALUES (?1, ?2)
                 ON CONFLICT (sku) DO UPDATE SET min_qty = excluded.min_qty",
                params![request.sku, min_qty],
            )?;
        }
        Some(_) => return Err(ApiError::invalid_field("min_qty must be from 0 to 1000000")),
        None => {
            conn.execute(
                "DELETE FROM stock_thresholds WHERE sku = ?1",
                [&request.sku],
            )?;
        }
    }
    Reply::new(
        200,
        &serde_json::json!({"sku": request.sku, "min_qty": request.min_qty}),
    )
}

/// This store's stock (with thresholds and low-stock flags), optionally one SKU.
pub fn store_levels(
    conn: &Connection,
    store: &str,
    sku: Option<&str>,
) -> rusqlite::Result<Vec<StockLevelView>> {
    let mut levels: BTreeMap<String, StockLevelView> =
        replica_stock::levels(conn, Some(store), sku, usize::MAX)?
            .into_iter()
            .map(|l| (l.sku.clone(), l))
            .collect();
    let mut statement = conn.prepare_cached(
        "SELECT sku, min_qty FROM stock_thresholds WHERE (?1 IS NULL OR sku = ?1)",
    )?;
    let thresholds = statement
        .query_map([sku], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for (sku, min_qty) in thresholds {
        let level = levels.entry(sku.clone()).or_insert(StockLevelView {
            store: store.to_owned(),
            sku,
            qty: 0,
            below_zero: false,
            threshold: None,
            low_stock: false,
        });
        level.threshold = Some(min_qty);
        level.low_stock = level.qty <= min_qty;
    }
    Ok(levels.into_values().collect())
}

/// `POST /api/v1/transfers`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTransfer {
    pub from_store: String,
    pub to_store: String,
    pub lines: Vec<StockLineInput>,
    pub note: Option<String>,
}

/// Check a transfer request from a client (a store's or HQ's) and build it.
pub fn build_transfer_request(
    conn: &Connection,
    id: Uuid,
    request: NewTransfer,
    now_ms: u64,
) -> Result<TransferRequest, ApiError> {
    let parse = |field: &str, text: &str| {
        StoreId::parse(text)
            .map_err(|e| ApiError::invalid_field(format!("{field}: {e}")))
            .and_then(|store| {
                if store == StoreId::hub() {
                    Err(ApiError::invalid_field(format!(
                        "{field}: hq holds no stock"
                    )))
                } else {
                    Ok(store)
                }
            })
    };
    let from = parse("from_store", &request.from_store)?;
    let to = parse("to_store", &request.to_store)?;
    if from == to {
        return Err(ApiError::invalid_field(
            "from_store and to_store must differ",
        ));
    }
    check_lines(&request.lines, false)?;
    for (index, line) in request.lines.iter().enumerate() {
        known_sku(conn, index, &line.sku)?;
    }
    let note = clean_reason(request.note)?;
    let transfer = TransferRequest {
        ends: TransferEnds { id, from, to },
        lines: request.lines.into_iter().map(|l| (l.sku, l.qty)).collect(),
        note,
        at_ms: now_ms,
    };
    transfer
        .check()
        .map_err(|e| ApiError::invalid_field(e.to_string()))?;
    Ok(transfer)
}

fn transfer_reply(conn: &Connection, id: Uuid, status: u16) -> Result<Reply, ApiError> {
    let view: TransferView = replica_stock::transfer(conn, id)?.ok_or_else(unknown_transfer)?;
    Reply::new(status, &view)
}

fn unknown_transfer() -> ApiError {
    ApiError::new(404, "unknown_transfer", "no transfer with this id")
}

/// A store asks for a transfer (it must be one of the ends).
pub fn request_transfer(
    conn: &Connection,
    local: &mut Local,
    request: NewTransfer,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let id = local.new_id(now_ms)?;
    let transfer = build_transfer_request(conn, id, request, now_ms)?;
    if transfer.ends.from != local.store && transfer.ends.to != local.store {
        return Err(ApiError::invalid_field(
            "a store can only ask for transfers from or to itself",
        ));
    }
    let envelope = local.emit(conn, now_ms, OpV1::TransferRequest(transfer.clone()))?;
    replica_stock::project_transfer_request(conn, &transfer, &envelope.origin)?;
    transfer_reply(conn, id, 201)
}

/// `POST /api/v1/transfers/{id}/ship` and `/receive`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferLinesInput {
    /// Ship: what goes out (default: the lines asked for). Receive: what arrived (required;
    /// 0 for a SKU that did not arrive).
    pub lines: Option<Vec<StockLineInput>>,
}

/// The source store ships: its stock goes down, the transfer is in transit.
pub fn ship_transfer(
    conn: &Connection,
    local: &mut Local,
    id: Uuid,
    request: TransferLinesInput,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let replica_stock::TransferSteps {
        from,
        to,
        requested,
        shipped,
        ..
    } = replica_stock::transfer_state(conn, id)?.ok_or_else(unknown_transfer)?;
    if !requested {
        return Err(unknown_transfer());
    }
    if from != local.store.as_str() {
        return Err(ApiError::new(
            409,
            "not_transfer_source",
            format!("this transfer goes out of store {from}: only it ships it"),
        ));
    }
    if shipped {
        return Err(ApiError::new(
            409,
            "already_shipped",
            "this transfer was already shipped",
        ));
    }
    let lines: Vec<(String, i64)> = match request.lines {
        Some(lines) => {
            check_lines(&lines, false)?;
            for (index, line) in lines.iter().enumerate() {
                known_sku(conn, index, &line.sku)?;
            }
            lines.into_iter().map(|l| (l.sku, l.qty)).collect()
        }
        None => replica_stock::requested_lines(conn, id)?,
    };
    let ends = TransferEnds {
        id,
        from: local.store.clone(),
        to: StoreId::parse(&to).map_err(ApiError::internal)?,
    };
    let deltas: Vec<(String, i64)> = lines.into_iter().map(|(sku, qty)| (sku, -qty)).collect();
    write_batch(
        conn,
        local,
        MovementKind::TransferOut,
        &deltas,
        Some(ends),
        None,
        None,
        now_ms,
    )?;
    transfer_reply(conn, id, 200)
}

/// The destination receives what arrived. A receipt may come before the shipment is known
/// here (it may still be on its way by sync): the goods are in the store either way, and the
/// transfer's figures are a fold of both stores' movements, so they converge whatever the
/// order; until the shipment arrives the receipt shows as received over what was shipped.
pub fn receive_transfer(
    conn: &Connection,
    local: &mut Local,
    id: Uuid,
    request: TransferLinesInput,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let replica_stock::TransferSteps {
        from, to, received, ..
    } = replica_stock::transfer_state(conn, id)?.ok_or_else(unknown_transfer)?;
    if to != local.store.as_str() {
        return Err(ApiError::new(
            409,
            "not_transfer_destination",
            format!("this transfer goes to store {to}: only it receives it"),
        ));
    }
    if received {
        return Err(ApiError::new(
            409,
            "already_received",
            "this transfer was already received",
        ));
    }
    let lines = request
        .lines
        .ok_or_else(|| ApiError::invalid_field("lines: say what arrived"))?;
    check_lines(&lines, true)?;
    if lines.iter().all(|l| l.qty == 0) {
        return Err(ApiError::invalid_field(
            "lines: nothing arrived; receive at least one unit",
        ));
    }
    for (index, line) in lines.iter().enumerate() {
        known_sku(conn, index, &line.sku)?;
    }
    let ends = TransferEnds {
        id,
        from: StoreId::parse(&from).map_err(ApiError::internal)?,
        to: local.store.clone(),
    };
    let deltas: Vec<(String, i64)> = lines.into_iter().map(|l| (l.sku, l.qty)).collect();
    write_batch(
        conn,
        local,
        MovementKind::TransferIn,
        &deltas,
        Some(ends),
        None,
        None,
        now_ms,
    )?;
    transfer_reply(conn, id, 200)
}

/// A stocktake session.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StocktakeView {
    pub id: Uuid,
    pub note: Option<String>,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    pub counts: Vec<StocktakeCountView>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StocktakeCountView {
    pub sku: String,
    pub counted: i64,
    /// The stock this store held for the SKU when the count was recorded.
    pub expected: i64,
    /// This store's own operation sequence at that moment.
    pub watermark_seq: u64,
    pub counted_ms: u64,
    /// counted − expected: the adjustment the finish writes.
    pub adjustment: i64,
}

/// `POST /api/v1/stocktakes`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewStocktake {
    pub note: Option<String>,
}

/// `POST /api/v1/stocktakes/{id}/counts`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCounts {
    /// Counted quantities (≥ 0); counting a SKU again replaces its count.
    pub counts: Vec<CountInput>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CountInput {
    pub sku: String,
    pub counted: i64,
}

fn unknown_stocktake() -> ApiError {
    ApiError::new(404, "unknown_stocktake", "no stocktake with this id")
}

pub fn start_stocktake(
    conn: &Connection,
    local: &mut Local,
    request: NewStocktake,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    let open: Option<String> = conn
        .query_row(
            "SELECT id FROM stocktakes WHERE finished_ms IS NULL LIMIT 1",
            [],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(open) = open {
        return Err(ApiError::new(
            409,
            "stocktake_open",
            format!("stocktake {open} is still open: finish it first"),
        ));
    }
    let note = clean_reason(request.note)?;
    let id = local.new_id(now_ms)?;
    conn.execute(
        "INSERT INTO stocktakes (id, note, started_ms) VALUES (?1, ?2, ?3)",
        params![id.to_string(), note, now_ms as i64],
    )?;
    Reply::new(201, &stocktake(conn, id)?.ok_or_else(unknown_stocktake)?)
}

/// Open (not finished) stocktake or an error.
fn open_stocktake(conn: &Connection, id: Uuid) -> Result<(), ApiError> {
    let finished: Option<Option<i64>> = conn
        .query_row(
            "SELECT finished_ms FROM stocktakes WHERE id = ?1",
            [id.to_string()],
            |row| row.get(0),
        )
        .optional()?;
    match finished {
        None => Err(unknown_stocktake()),
        Some(Some(_)) => Err(ApiError::new(
            409,
            "stocktake_finished",
            "this stocktake is finished",
        )),
        Some(None) => Ok(()),
    }
}

/// Record counts: each with the stock expected at this moment (see the module doc).
pub fn record_counts(
    conn: &Connection,
    local: &mut Local,
    id: Uuid,
    request: NewCounts,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    open_stocktake(conn, id)?;
    if request.counts.is_empty() || request.counts.len() > limits::stock_batch_movements_max {
        return Err(ApiError::invalid_field(format!(
            "counts: 1 to {} counts",
            limits::stock_batch_movements_max
        )));
    }
    for (index, count) in request.counts.iter().enumerate() {
        if !(0..=1_000_000_000).contains(&count.counted) {
            return Err(ApiError::new(
                422,
                "invalid_qty",
                format!("count {index}: counted must be from 0 to 1000000000"),
            ));
        }
        known_sku(conn, index, &count.sku)?;
        let expected = replica_stock::level(conn, local.store.as_str(), &count.sku)?;
        conn.execute(
            "INSERT INTO stocktake_counts
                 (stocktake_id, sku, counted, expected, watermark_seq, counted_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (stocktake_id, sku) DO UPDATE SET counted = excluded.counted,
                 expected = excluded.expected, watermark_seq = excluded.watermark_seq,
                 counted_ms = excluded.counted_ms",
            params![
                id.to_string(),
                count.sku,
                count.counted,
                expected,
                local.own_seq_max() as i64,
                now_ms as i64
            ],
        )?;
    }
    Reply::new(200, &stocktake(conn, id)?.ok_or_else(unknown_stocktake)?)
}

/// Finish: write one stocktake movement per SKU whose count differs from what was expected
/// when it was counted.
pub fn finish_stocktake(
    conn: &Connection,
    local: &mut Local,
    id: Uuid,
    now_ms: u64,
) -> Result<Reply, ApiError> {
    open_stocktake(conn, id)?;
    let view = stocktake(conn, id)?.ok_or_else(unknown_stocktake)?;
    let deltas: Vec<(String, i64)> = view
        .counts
        .iter()
        .map(|c| (c.sku.clone(), stocktake_adjustment(c.counted, c.expected)))
        .collect();
    // An adjustment is what the count found: it is written whatever the sign.
    let allow = local.allow_negative_stock;
    local.allow_negative_stock = true;
    let written = write_batch(
        conn,
        local,
        MovementKind::Stocktake,
        &deltas,
        None,
        Some(id),
        Some("stocktake".to_owned()),
        now_ms,
    );
    local.allow_negative_stock = allow;
    let (batch_id, _, _) = written?;
    conn.execute(
        "UPDATE stocktakes SET finished_ms = ?2, batch_id = ?3 WHERE id = ?1",
        params![id.to_string(), now_ms as i64, batch_id.to_string()],
    )?;
    Reply::new(200, &stocktake(conn, id)?.ok_or_else(unknown_stocktake)?)
}

pub fn stocktake(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<StocktakeView>> {
    let head: Option<(Option<String>, i64, Option<i64>)> = conn
        .query_row(
            "SELECT note, started_ms, finished_ms FROM stocktakes WHERE id = ?1",
            [id.to_string()],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .optional()?;
    let Some((note, started_ms, finished_ms)) = head else {
        return Ok(None);
    };
    let mut statement = conn.prepare_cached(
        "SELECT sku, counted, expected, watermark_seq, counted_ms FROM stocktake_counts
         WHERE stocktake_id = ?1 ORDER BY sku",
    )?;
    let counts = statement
        .query_map([id.to_string()], |row| {
            let counted: i64 = row.get(1)?;
            let expected: i64 = row.get(2)?;
            Ok(StocktakeCountView {
                sku: row.get(0)?,
                counted,
                expected,
                watermark_seq: row.get::<_, i64>(3)?.max(0) as u64,
                counted_ms: row.get::<_, i64>(4)?.max(0) as u64,
                adjustment: stocktake_adjustment(counted, expected),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(Some(StocktakeView {
        id,
        note,
        started_ms: started_ms.max(0) as u64,
        finished_ms: finished_ms.map(|v| v.max(0) as u64),
        counts,
    }))
}

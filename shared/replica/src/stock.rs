//! Stock and transfers as replicated state: movements (`OpV1::StockMovements`, authored by the
//! store that holds the goods) and transfer requests (`OpV1::TransferRequest`, by a store or
//! HQ), projected into tables people query. Every table here is a fold of the set of movements
//! and requests: levels and transfer quantities are sums over movements inserted once (by id),
//! times are minimums, a transfer's ends come with every operation of it. So the result does not
//! depend on arrival order, and a repeated operation changes nothing.
//!
//! A replica does not hold every store's stock (the hub relays stock only to the stores it
//! concerns), so stock is not in the state digest; [`scope_digests`] hashes it per store.

use chainsync_core::StoreId;
use chainsync_core::stock::{MovementBatch, MovementKind, TransferRequest};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use utoipa::ToSchema;
use uuid::Uuid;

/// The stock tables (both binaries list this migration).
pub const schema_v1: &str = r#"
CREATE TABLE stock_movements (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    store TEXT NOT NULL,
    sku TEXT NOT NULL,
    delta INTEGER NOT NULL,
    kind TEXT NOT NULL,
    transfer_id TEXT,
    reason TEXT,
    cause TEXT,
    at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX stock_movements_store_sku ON stock_movements (store, sku);
CREATE INDEX stock_movements_transfer ON stock_movements (transfer_id)
    WHERE transfer_id IS NOT NULL;

-- Stock per store and SKU: the sum of its movements.
CREATE TABLE stock_levels (
    store TEXT NOT NULL,
    sku TEXT NOT NULL,
    qty INTEGER NOT NULL,
    PRIMARY KEY (store, sku)
) WITHOUT ROWID;

-- One row per transfer seen (through its request or any of its movements).
CREATE TABLE transfers (
    id TEXT PRIMARY KEY,
    from_store TEXT NOT NULL,
    to_store TEXT NOT NULL,
    requested_by TEXT,
    note TEXT,
    requested_ms INTEGER,
    shipped_ms INTEGER,
    received_ms INTEGER
) WITHOUT ROWID;
CREATE INDEX transfers_from ON transfers (from_store);
CREATE INDEX transfers_to ON transfers (to_store);

CREATE TABLE transfer_lines (
    transfer_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    requested INTEGER NOT NULL DEFAULT 0,
    shipped INTEGER NOT NULL DEFAULT 0,
    received INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (transfer_id, sku)
) WITHOUT ROWID;
"#;

pub fn kind_name(kind: MovementKind) -> &'static str {
    match kind {
        MovementKind::Receipt => "receipt",
        MovementKind::SupplierReturn => "supplier_return",
        MovementKind::Sale => "sale",
        MovementKind::SaleReturn => "sale_return",
        MovementKind::Damage => "damage",
        MovementKind::Stocktake => "stocktake",
        MovementKind::TransferOut => "transfer_out",
        MovementKind::TransferIn => "transfer_in",
    }
}

pub fn parse_kind(text: &str) -> Option<MovementKind> {
    Some(match text {
        "receipt" => MovementKind::Receipt,
        "supplier_return" => MovementKind::SupplierReturn,
        "sale" => MovementKind::Sale,
        "sale_return" => MovementKind::SaleReturn,
        "damage" => MovementKind::Damage,
        "stocktake" => MovementKind::Stocktake,
        "transfer_out" => MovementKind::TransferOut,
        "transfer_in" => MovementKind::TransferIn,
        _ => return None,
    })
}

fn upsert_transfer_ends(
    conn: &Connection,
    id: Uuid,
    from: &StoreId,
    to: &StoreId,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO transfers (id, from_store, to_store) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![id.to_string(), from.as_str(), to.as_str()])?;
    Ok(())
}

/// Project a batch of movements (each inserted once by id; levels and transfer quantities
/// move only for new ones).
pub fn project_movements(conn: &Connection, batch: &MovementBatch) -> rusqlite::Result<()> {
    if let Some(ends) = &batch.transfer {
        upsert_transfer_ends(conn, ends.id, &ends.from, &ends.to)?;
    }
    for m in &batch.movements {
        let inserted = conn
            .prepare_cached(
                "INSERT OR IGNORE INTO stock_movements
                 (id, batch_id, store, sku, delta, kind, transfer_id, reason, cause, at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                m.id.to_string(),
                batch.id.to_string(),
                m.store.as_str(),
                m.sku,
                m.delta,
                kind_name(m.kind),
                m.transfer.map(|t| t.to_string()),
                m.reason,
                batch.cause.map(|c| c.to_string()),
                batch.at_ms as i64,
            ])?;
        if inserted == 0 {
            continue;
        }
        conn.prepare_cached(
            "INSERT INTO stock_levels (store, sku, qty) VALUES (?1, ?2, ?3)
             ON CONFLICT (store, sku) DO UPDATE SET qty = qty + excluded.qty",
        )?
        .execute(params![m.store.as_str(), m.sku, m.delta])?;
        let Some(transfer) = m.transfer else { continue };
        let (column, time_column, qty) = match m.kind {
            MovementKind::TransferOut => ("shipped", "shipped_ms", -m.delta),
            MovementKind::TransferIn => ("received", "received_ms", m.delta),
            _ => continue,
        };
        conn.prepare_cached(&format!(
            "INSERT INTO transfer_lines (transfer_id, sku, {column}) VALUES (?1, ?2, ?3)
             ON CONFLICT (transfer_id, sku) DO UPDATE SET {column} = {column} + excluded.{column}"
        ))?
        .execute(params![transfer.to_string(), m.sku, qty])?;
        conn.prepare_cached(&format!(
            "UPDATE transfers SET {time_column} = MIN(COALESCE({time_column}, ?2), ?2)
             WHERE id = ?1"
        ))?
        .execute(params![transfer.to_string(), batch.at_ms as i64])?;
    }
    Ok(())
}

/// Project a transfer request. There is one request per transfer id; a transfer first seen
/// through its movements gets its request fields when the request arrives.
pub fn project_transfer_request(
    conn: &Connection,
    request: &TransferRequest,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let ends = &request.ends;
    upsert_transfer_ends(conn, ends.id, &ends.from, &ends.to)?;
    let updated = conn
        .prepare_cached(
            "UPDATE transfers SET requested_by = ?2, note = ?3, requested_ms = ?4
             WHERE id = ?1 AND requested_ms IS NULL",
        )?
        .execute(params![
            ends.id.to_string(),
            origin.as_str(),
            request.note,
            request.at_ms as i64,
        ])?;
    if updated == 0 {
        return Ok(());
    }
    for (sku, qty) in &request.lines {
        conn.prepare_cached(
            "INSERT INTO transfer_lines (transfer_id, sku, requested) VALUES (?1, ?2, ?3)
             ON CONFLICT (transfer_id, sku) DO UPDATE SET requested = excluded.requested",
        )?
        .execute(params![ends.id.to_string(), sku, qty])?;
    }
    Ok(())
}

/// Stock of one store and SKU (0 when nothing moved).
pub fn level(conn: &Connection, store: &str, sku: &str) -> rusqlite::Result<i64> {
    Ok(conn
        .prepare_cached("SELECT qty FROM stock_levels WHERE store = ?1 AND sku = ?2")?
        .query_row([store, sku], |row| row.get(0))
        .optional()?
        .unwrap_or(0))
}

/// One store's stock of one SKU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockLevelView {
    pub store: String,
    pub sku: String,
    pub qty: i64,
    /// The stock is below zero (sold more than was known to be there).
    pub below_zero: bool,
    /// The store's low-stock threshold for this SKU, if one is set (at the store only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<i64>,
    /// qty ≤ threshold.
    pub low_stock: bool,
}

/// Stock levels, filtered by store and / or SKU, ordered by store then SKU.
pub fn levels(
    conn: &Connection,
    store: Option<&str>,
    sku: Option<&str>,
    limit: usize,
) -> rusqlite::Result<Vec<StockLevelView>> {
    let mut statement = conn.prepare_cached(
        "SELECT store, sku, qty FROM stock_levels
         WHERE (?1 IS NULL OR store = ?1) AND (?2 IS NULL OR sku = ?2)
         ORDER BY store, sku LIMIT ?3",
    )?;
    let rows = statement.query_map(params![store, sku, limit as i64], |row| {
        let qty: i64 = row.get(2)?;
        Ok(StockLevelView {
            store: row.get(0)?,
            sku: row.get(1)?,
            qty,
            below_zero: qty < 0,
            threshold: None,
            low_stock: false,
        })
    })?;
    rows.collect()
}

/// One SKU line of a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransferLineView {
    pub sku: String,
    pub requested: i64,
    pub shipped: i64,
    pub received: i64,
    /// shipped − received once received (0 before).
    pub missing: i64,
}

/// A transfer as a replica knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TransferView {
    pub id: Uuid,
    pub from_store: String,
    pub to_store: String,
    /// `requested`, `in_transit` (shipped, not received) or `received`.
    pub state: String,
    /// Who asked for it (a store id or `hq`); none while only its movements are known here.
    pub requested_by: Option<String>,
    pub note: Option<String>,
    pub requested_ms: Option<u64>,
    pub shipped_ms: Option<u64>,
    pub received_ms: Option<u64>,
    pub lines: Vec<TransferLineView>,
    /// Some line was received short or over.
    pub discrepancy: bool,
}

/// Transfer filters: a state, and the stores of which one must be an end (None: any).
pub struct TransferFilter<'a> {
    pub state: Option<&'a str>,
    pub stores: Option<&'a [String]>,
    pub limit: usize,
}

fn state_of(shipped: bool, received: bool) -> &'static str {
    if received {
        "received"
    } else if shipped {
        "in_transit"
    } else {
        "requested"
    }
}

/// Transfers, newest first (by id, UUIDv7 time order).
pub fn transfers(
    conn: &Connection,
    filter: &TransferFilter,
) -> rusqlite::Result<Vec<TransferView>> {
    let mut statement = conn.prepare_cached(
        "SELECT id, from_store, to_store, requested_by, note, requested_ms, shipped_ms,
            received_ms FROM transfers ORDER BY id DESC",
    )?;
    let mut rows = statement.query([])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let id: String = row.get(0)?;
        let from_store: String = row.get(1)?;
        let to_store: String = row.get(2)?;
        if let Some(stores) = filter.stores
            && !stores.iter().any(|s| *s == from_store || *s == to_store)
        {
            continue;
        }
        let shipped_ms: Option<i64> = row.get(6)?;
        let received_ms: Option<i64> = row.get(7)?;
        let state = state_of(shipped_ms.is_some(), received_ms.is_some());
        if filter.state.is_some_and(|wanted| wanted != state) {
            continue;
        }
        let Ok(uuid) = Uuid::parse_str(&id) else {
            continue;
        };
        let lines = transfer_lines(conn, &id, received_ms.is_some())?;
        out.push(TransferView {
            id: uuid,
            from_store,
            to_store,
            state: state.to_owned(),
            requested_by: row.get(3)?,
            note: row.get(4)?,
            requested_ms: row.get::<_, Option<i64>>(5)?.map(|v| v.max(0) as u64),
            shipped_ms: shipped_ms.map(|v| v.max(0) as u64),
            received_ms: received_ms.map(|v| v.max(0) as u64),
            discrepancy: lines.iter().any(|l| l.missing != 0),
            lines,
        });
        if out.len() >= filter.limit {
            break;
        }
    }
    Ok(out)
}

fn transfer_lines(
    conn: &Connection,
    id: &str,
    received: bool,
) -> rusqlite::Result<Vec<TransferLineView>> {
    let mut statement = conn.prepare_cached(
        "SELECT sku, requested, shipped, received FROM transfer_lines
         WHERE transfer_id = ?1 ORDER BY sku",
    )?;
    let rows = statement.query_map([id], |row| {
        let shipped: i64 = row.get(2)?;
        let got: i64 = row.get(3)?;
        Ok(TransferLineView {
            sku: row.get(0)?,
            requested: row.get(1)?,
            shipped,
            received: got,
            missing: if received { shipped - got } else { 0 },
        })
    })?;
    rows.collect()
}

/// One transfer, if this replica knows it.
pub fn transfer(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<TransferView>> {
    let all = transfers(
        conn,
        &TransferFilter {
            state: None,
            stores: None,
            limit: usize::MAX,
        },
    )?;
    Ok(all.into_iter().find(|t| t.id == id))
}

/// A transfer's ends and which steps this replica has seen.
pub struct TransferSteps {
    pub from: String,
    pub to: String,
    pub requested: bool,
    pub shipped: bool,
    pub received: bool,
}

/// A transfer's ends and whether it was shipped / received, cheaply.
pub fn transfer_state(conn: &Connection, id: Uuid) -> rusqlite::Result<Option<TransferSteps>> {
    conn.prepare_cached(
        "SELECT from_store, to_store, requested_ms IS NOT NULL, shipped_ms IS NOT NULL,
            received_ms IS NOT NULL FROM transfers WHERE id = ?1",
    )?
    .query_row([id.to_string()], |row| {
        Ok(TransferSteps {
            from: row.get(0)?,
            to: row.get(1)?,
            requested: row.get(2)?,
            shipped: row.get(3)?,
            received: row.get(4)?,
        })
    })
    .optional()
}

/// The lines a transfer was asked for (sku, qty).
pub fn requested_lines(conn: &Connection, id: Uuid) -> rusqlite::Result<Vec<(String, i64)>> {
    let mut statement = conn.prepare_cached(
        "SELECT sku, requested FROM transfer_lines
         WHERE transfer_id = ?1 AND requested > 0 ORDER BY sku",
    )?;
    let rows = statement.query_map([id.to_string()], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

/// Hex SHA-256 per scope, for the stores given (None: every store this replica has stock or
/// transfers of, plus `also`). `stock:S` covers S's movements and levels; `transfers:S` the
/// transfers of which S is an end, with their requested, shipped and received quantities. A
/// store holds both of its own scopes whole (its movements are its own; every operation of a
/// transfer concerns both ends), and the hub holds every scope whole, so the same scope hashes
/// the same wherever it is held once the same operations arrived.
pub fn scope_digests(
    conn: &Connection,
    stores: Option<&[String]>,
    also: &[String],
) -> rusqlite::Result<BTreeMap<String, String>> {
    let stores: Vec<String> = match stores {
        Some(stores) => stores.to_vec(),
        None => {
            let mut statement = conn.prepare_cached(
                "SELECT store FROM stock_levels UNION SELECT from_store FROM transfers
                 UNION SELECT to_store FROM transfers",
            )?;
            let mut found: Vec<String> = statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            found.extend(also.iter().cloned());
            found.sort();
            found.dedup();
            found
        }
    };
    let mut out = BTreeMap::new();
    for store in stores {
        let mut hasher = Sha256::new();
        feed(
            &mut hasher,
            conn,
            "SELECT id, sku, delta, kind, transfer_id FROM stock_movements
             WHERE store = ?1 ORDER BY id",
            &store,
        )?;
        hasher.update([0xfe]);
        feed(
            &mut hasher,
            conn,
            "SELECT sku, qty FROM stock_levels WHERE store = ?1 ORDER BY sku",
            &store,
        )?;
        out.insert(format!("stock:{store}"), hex::encode(hasher.finalize()));
        let mut hasher = Sha256::new();
        feed(
            &mut hasher,
            conn,
            "SELECT t.id, t.from_store, t.to_store, t.requested_by, t.requested_ms,
                t.shipped_ms IS NOT NULL, t.received_ms IS NOT NULL,
                l.sku, l.requested, l.shipped, l.received
             FROM transfers t LEFT JOIN transfer_lines l ON l.transfer_id = t.id
             WHERE t.from_store = ?1 OR t.to_store = ?1 ORDER BY t.id, l.sku",
            &store,
        )?;
        out.insert(format!("transfers:{store}"), hex::encode(hasher.finalize()));
    }
    Ok(out)
}

fn feed(hasher: &mut Sha256, conn: &Connection, sql: &str, store: &str) -> rusqlite::Result<()> {
    let mut statement = conn.prepare_cached(sql)?;
    let columns = statement.column_count();
    let mut rows = statement.query([store])?;
    while let Some(row) = rows.next()? {
        for column in 0..columns {
            let value: rusqlite::types::Value = row.get(column)?;
            let text = match value {
                rusqlite::types::Value::Null => "\u{1}null".to_owned(),
                rusqlite::types::Value::Integer(v) => v.to_string(),
                rusqlite::types::Value::Real(v) => v.to_string(),
                rusqlite::types::Value::Text(v) => v,
                rusqlite::types::Value::Blob(v) => hex::encode(v),
            };
            hasher.update((text.len() as u64).to_le_bytes());
            hasher.update(text.as_bytes());
        }
        hasher.update([0xff]);
    }
    Ok(())
}

/// Check that every level equals the sum of its movements (an invariant read back).
pub fn levels_match_movements(conn: &Connection) -> rusqlite::Result<bool> {
    let mismatches: i64 = conn.query_row(
        "SELECT COUNT(*) FROM stock_levels l WHERE l.qty != (SELECT COALESCE(SUM(delta), 0)
             FROM stock_movements m WHERE m.store = l.store AND m.sku = l.sku)",
        [],
        |row| row.get(0),
    )?;
    Ok(mismatches == 0)
}

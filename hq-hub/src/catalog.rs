//! HQ's catalog: list and edit catalog items and bundles, CSV import and export.
//!
//! HQ authors `OpV1::CatalogItemUpsert` (origin `hq`), relayed to every store like the rule
//! set. Every write, one item or a whole CSV file, goes through [`check_batch`]: the rows are
//! checked against each other and against the catalog as it would be after the write (component
//! SKUs known and not bundles themselves, barcodes unique), and only if every row passes are
//! the operations authored, all in one transaction (`storage::author_all`). Rows equal to what
//! the catalog already shows are skipped, so an export imported back authors nothing.

use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chainsync_core::Fen;
use chainsync_core::catalog::{
    self, BundleComponent, CatalogItem, ItemError, format_yuan, parse_yuan,
};
use chainsync_core::op::OpV1;
use chainsync_replica::api::ApiError;
use chainsync_replica::catalog::{CatalogFilter, item_of};
use chainsync_replica::views::{ComponentView, ErrorBody, ErrorDetail, ProductView};
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use utoipa::{IntoParams, ToSchema};

use crate::http::{Caller, HubState};

/// Largest CSV file accepted by the import, in bytes.
pub const import_bytes_max: usize = 64 * 1024 * 1024;
/// Most data rows in one import.
pub const import_rows_max: usize = 200_000;
/// Most row errors listed in a refused import (the count says how many there were).
pub const import_errors_max: usize = 1_000;
/// Default and largest page of `GET /api/v1/catalog`.
pub const page_rows_default: usize = 50;
pub const page_rows_max: usize = 500;

/// The CSV columns, in the order the export writes them.
pub const csv_columns: [&str; 8] = [
    "sku",
    "barcode",
    "name",
    "category",
    "price",
    "member_price",
    "active",
    "bundle",
];

/// One refused row: its line in the file (the header is line 1), the column and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RowError {
    pub line: u64,
    pub field: String,
    pub code: String,
    pub message: String,
}

impl RowError {
    fn new(line: u64, field: &str, code: &str, message: impl Into<String>) -> RowError {
        RowError {
            line,
            field: field.to_owned(),
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// The answer to a refused import: `{"error":{code, message}, "errors":[RowError…],
/// "error_count"}`; nothing of the file was applied.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportRefused {
    pub error: ErrorDetail,
    pub errors: Vec<RowError>,
    /// Every error found (`errors` lists at most 1,000).
    pub error_count: usize,
}

/// Either an ordinary API error or a per-row report.
pub enum CatalogError {
    Api(ApiError),
    Rows(Vec<RowError>),
}

impl From<ApiError> for CatalogError {
    fn from(e: ApiError) -> Self {
        CatalogError::Api(e)
    }
}

impl IntoResponse for CatalogError {
    fn into_response(self) -> Response {
        match self {
            CatalogError::Api(e) => e.into_response(),
            CatalogError::Rows(mut errors) => {
                let error_count = errors.len();
                errors.truncate(import_errors_max);
                let body = ImportRefused {
                    error: ErrorDetail {
                        code: "invalid_rows".into(),
                        message: format!(
                            "{error_count} error(s) in the file; nothing was imported"
                        ),
                    },
                    errors,
                    error_count,
                };
                (axum::http::StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
            }
        }
    }
}

/// What the catalog holds for a SKU, as far as checking a write needs.
struct Held {
    item: CatalogItem,
}

fn held_catalog(conn: &Connection) -> anyhow::Result<HashMap<String, Held>> {
    let mut held = HashMap::new();
    chainsync_replica::catalog::for_each_product(conn, |view| {
        held.insert(
            view.sku.clone(),
            Held {
                item: item_of(&view),
            },
        );
        Ok(())
    })?;
    Ok(held)
}

/// Check `rows` (line, item) against each other and the catalog after the write. Returns the
/// items that change something (in row order) or every error found.
fn check_batch(
    held: &HashMap<String, Held>,
    rows: Vec<(u64, CatalogItem)>,
) -> Result<Vec<CatalogItem>, Vec<RowError>> {
    let mut errors = Vec::new();
    let mut line_of: HashMap<String, u64> = HashMap::with_capacity(rows.len());
    let mut index_of: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    let mut file: Vec<(u64, CatalogItem)> = Vec::with_capacity(rows.len());
    for (line, item) in rows {
        if let Some(first) = line_of.get(&item.sku) {
            errors.push(RowError::new(
                line,
                "sku",
                "duplicate_sku",
                format!("SKU {} is already on line {first}", item.sku),
            ));
            continue;
        }
        line_of.insert(item.sku.clone(), line);
        index_of.insert(item.sku.clone(), file.len());
        file.push((line, item));
    }
    // The catalog after the write: held items, replaced by the file's rows.
    let after = |sku: &str| -> Option<&CatalogItem> {
        match index_of.get(sku) {
            Some(&index) => file.get(index).map(|(_, item)| item),
            None => held.get(sku).map(|h| &h.item),
        }
    };
    // Bundles after the write that contain each SKU (to refuse nested bundles).
    let mut contained_in: HashMap<&str, &str> = HashMap::new();
    for held_item in held.values() {
        if !line_of.contains_key(&held_item.item.sku) {
            for component in &held_item.item.components {
                contained_in.insert(&component.sku, &held_item.item.sku);
            }
        }
    }
    for (_, item) in &file {
        for component in &item.components {
            contained_in.insert(&component.sku, &item.sku);
        }
    }
    let mut barcodes: HashMap<&str, &str> = HashMap::new();
    for held_item in held.values() {
        if let Some(barcode) = &held_item.item.barcode
            && !line_of.contains_key(&held_item.item.sku)
        {
            barcodes.insert(barcode, &held_item.item.sku);
        }
    }
    for (line, item) in &file {
        let line = *line;
        for component in &item.components {
            match after(&component.sku) {
                None => errors.push(RowError::new(
                    line,
                    "bundle",
                    "unknown_component",
                    format!(
                        "component {} is not in the catalog or the file",
                        component.sku
                    ),
                )),
                Some(found) if found.is_bundle() => errors.push(RowError::new(
                    line,
                    "bundle",
                    "nested_bundle",
                    format!("component {} is itself a bundle", component.sku),
                )),
                Some(_) => {}
            }
        }
        if item.is_bundle()
            && let Some(outer) = contained_in.get(item.sku.as_str())
            && !line_of.contains_key(*outer)
        {
            errors.push(RowError::new(
                line,
                "bundle",
                "nested_bundle",
                format!(
                    "{} is a component of bundle {outer}, so it cannot be a bundle",
                    item.sku
                ),
            ));
        }
        if let Some(barcode) = &item.barcode {
            match barcodes.get(barcode.as_str()) {
                Some(other) => errors.push(RowError::new(
                    line,
                    "barcode",
                    "duplicate_barcode",
                    format!("barcode {barcode} is already used by SKU {other}"),
                )),
                None => {
                    barcodes.insert(barcode, &item.sku);
                }
            }
        }
    }
    if !errors.is_empty() {
        errors.sort_by_key(|e| e.line);
        return Err(errors);
    }
    Ok(file
        .into_iter()
        .filter(|(_, item)| held.get(&item.sku).is_none_or(|h| h.item != *item))
        .map(|(_, item)| item)
        .collect())
}

fn item_error(line: u64, e: &ItemError) -> RowError {
    RowError::new(line, e.field(), e.code(), e.to_string())
}

/// `A1*2;B7*1` (a bare `A1` is one unit) into sorted components.
pub fn parse_bundle(text: &str) -> Result<Vec<BundleComponent>, String> {
    let mut components = Vec::new();
    for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (sku, qty) = match part.rsplit_once('*') {
            Some((sku, qty)) => {
                let qty: i64 = qty
                    .trim()
                    .parse()
                    .map_err(|_| format!("{part:?}: the quantity after * is not a whole number"))?;
                (sku.trim(), qty)
            }
            None => (part, 1),
        };
        components.push(BundleComponent {
            sku: sku.to_owned(),
            qty,
        });
    }
    catalog::normalize(components).map_err(|e| e.to_string())
}

pub fn format_bundle(components: &[BundleComponent]) -> String {
    components
        .iter()
        .map(|c| format!("{}*{}", c.sku, c.qty))
        .collect::<Vec<_>>()
        .join(";")
}

fn parse_active(text: &str) -> Option<bool> {
    match text.to_ascii_lowercase().as_str() {
        "" | "true" | "1" | "yes" | "y" => Some(true),
        "false" | "0" | "no" | "n" => Some(false),
        _ => None,
    }
}

fn optional(text: &str) -> Option<String> {
    (!text.is_empty()).then(|| text.to_owned())
}

/// Rows parsed from a file (line, item) and the errors of the rows that did not parse.
pub type Parsed = (Vec<(u64, CatalogItem)>, Vec<RowError>);

/// Parse a CSV file into rows (line, item) and every error of every row. A bad header (or a
/// file too large) gives its errors and no rows.
pub fn parse_csv(body: &[u8]) -> Parsed {
    if body.len() > import_bytes_max {
        return (
            Vec::new(),
            vec![RowError::new(
                0,
                "",
                "file_too_large",
                format!(
                    "the file is {} bytes; at most {import_bytes_max}",
                    body.len()
                ),
            )],
        );
    }
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(body);
    let headers = match reader.headers() {
        Ok(headers) => headers.clone(),
        Err(e) => {
            return (
                Vec::new(),
                vec![RowError::new(1, "", "bad_csv", e.to_string())],
            );
        }
    };
    let mut column: HashMap<&str, usize> = HashMap::new();
    let mut errors = Vec::new();
    for (index, name) in headers.iter().enumerate() {
        match csv_columns.iter().find(|c| **c == name) {
            Some(known) => {
                if column.insert(known, index).is_some() {
                    errors.push(RowError::new(1, name, "duplicate_column", "column twice"));
                }
            }
            None => errors.push(RowError::new(
                1,
                name,
                "unknown_column",
                format!("unknown column; the columns are {}", csv_columns.join(",")),
            )),
        }
    }
    for required in ["sku", "name", "price"] {
        if !column.contains_key(required) {
            errors.push(RowError::new(
                1,
                required,
                "missing_column",
                "required column",
            ));
        }
    }
    if !errors.is_empty() {
        return (Vec::new(), errors);
    }
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let line = reader.position().line();
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                errors.push(RowError::new(line, "", "bad_csv", e.to_string()));
                break;
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        if record.iter().all(str::is_empty) {
            continue;
        }
        if rows.len() + errors.len() >= import_rows_max {
            errors.push(RowError::new(
                line,
                "",
                "too_many_rows",
                format!("at most {import_rows_max} rows per import"),
            ));
            break;
        }
        if record.len() > headers.len() {
            errors.push(RowError::new(
                line,
                "",
                "bad_csv",
                format!(
                    "{} fields, but the header has {}",
                    record.len(),
                    headers.len()
                ),
            ));
            continue;
        }
        let field = |name: &str| -> &str {
            column
                .get(name)
                .and_then(|&index| record.get(index))
                .unwrap_or("")
        };
        let before = errors.len();
        let mut money = |name: &str, required: bool| -> Option<Fen> {
            let text = field(name);
            if text.is_empty() {
                if required {
                    errors.push(RowError::new(line, name, "missing", "required"));
                }
                return None;
            }
            match parse_yuan(text) {
                Ok(fen) => Some(fen),
                Err(e) => {
                    errors.push(RowError::new(
                        line,
                        name,
                        e.code(),
                        format!("{text:?}: {e}"),
                    ));
                    None
                }
            }
        };
        let price = money("price", true);
        let member_price = money("member_price", false);
        let sku = field("sku");
        let name = field("name");
        for (what, text) in [("sku", sku), ("name", name)] {
            if text.is_empty() {
                errors.push(RowError::new(line, what, "missing", "required"));
            }
        }
        let long = |text: &str, max: usize| text.chars().count() > max;
        for (what, text, max) in [
            ("sku", sku, chainsync_core::limits::sku_chars_max),
            ("name", name, chainsync_core::limits::name_chars_max),
            ("barcode", field("barcode"), catalog::barcode_chars_max),
            ("category", field("category"), catalog::category_chars_max),
        ] {
            if long(text, max) {
                errors.push(RowError::new(
                    line,
                    what,
                    "too_long",
                    format!("at most {max} characters"),
                ));
            }
        }
        let active = parse_active(field("active"));
        if active.is_none() {
            errors.push(RowError::new(
                line,
                "active",
                "bad_bool",
                "active must be true or false (or empty: true)",
            ));
        }
        let components = match parse_bundle(field("bundle")) {
            Ok(components) => Some(components),
            Err(message) => {
                errors.push(RowError::new(line, "bundle", "bad_bundle", message));
                None
            }
        };
        if errors.len() > before {
            continue;
        }
        let (Some(price), Some(active), Some(components)) = (price, active, components) else {
            continue;
        };
        let item = CatalogItem {
            sku: sku.to_owned(),
            barcode: optional(field("barcode")),
            name: name.to_owned(),
            category: optional(field("category")),
            price,
            member_price,
            active,
            components,
        };
        match item.validate() {
            Ok(()) => rows.push((line, item)),
            Err(e) => errors.push(item_error(line, &e)),
        }
    }
    (rows, errors)
}

/// The catalog as CSV (the import's format), by SKU.
pub fn export_csv(conn: &Connection) -> anyhow::Result<Vec<u8>> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(csv_columns)?;
    chainsync_replica::catalog::for_each_product(conn, |view| {
        let item = item_of(&view);
        writer.write_record([
            item.sku.as_str(),
            item.barcode.as_deref().unwrap_or(""),
            item.name.as_str(),
            item.category.as_deref().unwrap_or(""),
            &format_yuan(item.price),
            &item.member_price.map(format_yuan).unwrap_or_default(),
            if item.active { "true" } else { "false" },
            &format_bundle(&item.components),
        ])?;
        Ok(())
    })?;
    writer.into_inner().map_err(|e| anyhow::anyhow!("{e}"))
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImportReport {
    /// Data rows in the file.
    pub rows: usize,
    /// SKUs new to the catalog.
    pub created: usize,
    /// SKUs whose item changed.
    pub changed: usize,
    /// Rows equal to what the catalog already showed (nothing authored).
    pub unchanged: usize,
}

/// Check and apply a CSV import on the hub's writer: all rows or none.
pub fn import(
    conn: &mut Connection,
    body: &[u8],
    now_ms: u64,
) -> Result<(ImportReport, u64), CatalogError> {
    let (rows, mut errors) = parse_csv(body);
    let total = rows.len();
    let held = held_catalog(conn).map_err(ApiError::internal)?;
    let changes = match check_batch(&held, rows) {
        Ok(changes) if errors.is_empty() => changes,
        Ok(_) => return Err(CatalogError::Rows(errors)),
        Err(more) => {
            errors.extend(more);
            // Stable: a line's errors keep the order of its columns.
            errors.sort_by_key(|e| e.line);
            return Err(CatalogError::Rows(errors));
        }
    };
    let created = changes
        .iter()
        .filter(|item| !held.contains_key(&item.sku))
        .count();
    let report = ImportReport {
        rows: total,
        created,
        changed: changes.len() - created,
        unchanged: total - changes.len(),
    };
    drop(held);
    let ops: Vec<OpV1> = changes.into_iter().map(OpV1::CatalogItemUpsert).collect();
    let head = if ops.is_empty() {
        0
    } else {
        crate::storage::author_all(conn, ops, now_ms).map_err(ApiError::internal)?
    };
    Ok((report, head))
}

/// Query of `GET /api/v1/catalog` and `GET /api/v1/catalog/bundles`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CatalogQuery {
    pub category: Option<String>,
    pub active: Option<bool>,
    /// SKU, barcode or name fragment.
    pub q: Option<String>,
    pub barcode: Option<String>,
    /// From 1.
    pub page: Option<usize>,
    /// Default 50, at most 500.
    pub per_page: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CatalogPage {
    pub items: Vec<ProductView>,
    /// Items matching the filter, over all pages.
    pub total: usize,
    pub page: usize,
    pub per_page: usize,
}

/// `PUT /api/v1/catalog/{sku}` and `PUT /api/v1/catalog/bundles/{sku}`: the whole item.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemChange {
    pub barcode: Option<String>,
    pub name: String,
    pub category: Option<String>,
    pub price_fen: i64,
    pub member_price_fen: Option<i64>,
    #[serde(default = "yes")]
    pub active: bool,
    /// A bundle's components (required and non-empty on the bundles route).
    #[serde(default)]
    pub components: Vec<ComponentView>,
}

fn yes() -> bool {
    true
}

fn unknown_sku(sku: &str) -> ApiError {
    ApiError::new(
        404,
        "unknown_sku",
        format!("no catalog item with SKU {sku:?}"),
    )
}

async fn page_of(
    hub: &HubState,
    query: Result<Query<CatalogQuery>, QueryRejection>,
    bundle: Option<bool>,
) -> Result<Json<CatalogPage>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    let page = query.page.unwrap_or(1);
    let per_page = query.per_page.unwrap_or(page_rows_default);
    if page == 0 || !(1..=page_rows_max).contains(&per_page) {
        return Err(ApiError::invalid_field(format!(
            "page is from 1; per_page is 1 to {page_rows_max}"
        )));
    }
    let filter = CatalogFilter {
        category: query.category.filter(|c| !c.is_empty()),
        active: query.active,
        q: query.q.filter(|q| !q.is_empty()),
        barcode: query.barcode.filter(|b| !b.is_empty()),
        bundle,
    };
    let offset = (page - 1).saturating_mul(per_page);
    let (items, total) = hub
        .reads
        .run(move |conn| {
            Ok(chainsync_replica::catalog::products_page(
                conn, &filter, offset, per_page,
            )?)
        })
        .await?;
    Ok(Json(CatalogPage {
        items,
        total,
        page,
        per_page,
    }))
}

#[utoipa::path(get, path = "/api/v1/catalog", params(CatalogQuery),
    responses((status = 200, body = CatalogPage), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_catalog(
    State(hub): State<HubState>,
    _caller: Caller,
    query: Result<Query<CatalogQuery>, QueryRejection>,
) -> Result<Json<CatalogPage>, ApiError> {
    page_of(&hub, query, None).await
}

#[utoipa::path(get, path = "/api/v1/catalog/bundles", params(CatalogQuery),
    responses((status = 200, body = CatalogPage), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_bundles(
    State(hub): State<HubState>,
    _caller: Caller,
    query: Result<Query<CatalogQuery>, QueryRejection>,
) -> Result<Json<CatalogPage>, ApiError> {
    page_of(&hub, query, Some(true)).await
}

async fn get_one(hub: &HubState, sku: String, bundle: bool) -> Result<Json<ProductView>, ApiError> {
    let lookup = sku.clone();
    let found = hub
        .reads
        .run(move |conn| Ok(chainsync_replica::catalog::product(conn, &lookup)?))
        .await?;
    match found {
        Some(view) if !bundle || !view.components.is_empty() => Ok(Json(view)),
        _ => Err(unknown_sku(&sku)),
    }
}

#[utoipa::path(get, path = "/api/v1/catalog/{sku}", params(("sku" = String, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_item(
    State(hub): State<HubState>,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ProductView>, ApiError> {
    let Path(sku) = path.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    get_one(&hub, sku, false).await
}

#[utoipa::path(get, path = "/api/v1/catalog/bundles/{sku}", params(("sku" = String, Path)),
    responses((status = 200, body = ProductView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_bundle(
    State(hub): State<HubState>,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ProductView>, ApiError> {
    let Path(sku) = path.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    get_one(&hub, sku, true).await
}

fn rows_to_api(errors: Vec<RowError>) -> ApiError {
    let first = &errors[0];
    let status = if first.code == "duplicate_barcode" {
        409
    } else {
        422
    };
    let code = match first.code.as_str() {
        "unknown_component" => "unknown_component",
        "nested_bundle" => "nested_bundle",
        "duplicate_barcode" => "barcode_taken",
        "invalid_price" | "negative_price" | "too_large" => "invalid_amount",
        _ => "invalid_field",
    };
    ApiError::new(status, code, format!("{}: {}", first.field, first.message))
}

async fn put_one(
    hub: &HubState,
    caller: &Caller,
    sku: String,
    body: &[u8],
    bundle_route: bool,
) -> Result<Json<ProductView>, ApiError> {
    caller.require_operator()?;
    let change: ItemChange = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid_json(format!("request body: {e}")))?;
    let components = catalog::normalize(
        change
            .components
            .into_iter()
            .map(|c| BundleComponent {
                sku: c.sku,
                qty: c.qty,
            })
            .collect(),
    )
    .map_err(|e| ApiError::invalid_field(e.to_string()))?;
    if bundle_route && components.is_empty() {
        return Err(ApiError::invalid_field(
            "a bundle needs at least one component",
        ));
    }
    let trim = |text: Option<String>| text.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    let item = CatalogItem {
        sku: sku.clone(),
        barcode: trim(change.barcode),
        name: change.name.trim().to_owned(),
        category: trim(change.category),
        price: Fen(change.price_fen),
        member_price: change.member_price_fen.map(Fen),
        active: change.active,
        components,
    };
    item.validate().map_err(|e| match e {
        ItemError::Price | ItemError::MemberPrice => ApiError::invalid_amount(e.to_string()),
        other => ApiError::invalid_field(other.to_string()),
    })?;
    let writer = hub.writer.clone();
    let head = tokio::task::spawn_blocking(move || -> Result<u64, ApiError> {
        let mut conn = writer
            .lock()
            .map_err(|_| ApiError::internal("writer lock"))?;
        let held = held_catalog(&conn).map_err(ApiError::internal)?;
        let changes = check_batch(&held, vec![(0, item)]).map_err(rows_to_api)?;
        drop(held);
        if changes.is_empty() {
            return Ok(0);
        }
        let ops = changes.into_iter().map(OpV1::CatalogItemUpsert).collect();
        crate::storage::author_all(&mut conn, ops, crate::now_ms()).map_err(ApiError::internal)
    })
    .await
    .map_err(ApiError::internal)??;
    if head > 0 {
        hub.log_grew.send_replace(head);
    }
    get_one(hub, sku, false).await
}

#[utoipa::path(put, path = "/api/v1/catalog/{sku}", params(("sku" = String, Path)),
    request_body = ItemChange,
    responses((status = 200, body = ProductView), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_item(
    State(hub): State<HubState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<ProductView>, ApiError> {
    let Path(sku) = path.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    put_one(&hub, &caller, sku, &body, false).await
}

#[utoipa::path(put, path = "/api/v1/catalog/bundles/{sku}", params(("sku" = String, Path)),
    request_body = ItemChange,
    responses((status = 200, body = ProductView), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn put_bundle(
    State(hub): State<HubState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<ProductView>, ApiError> {
    let Path(sku) = path.map_err(|e| ApiError::invalid_field(e.body_text()))?;
    put_one(&hub, &caller, sku, &body, true).await
}

/// `POST /api/v1/catalog/import`: the CSV file as the body (`text/csv`).
#[utoipa::path(post, path = "/api/v1/catalog/import", request_body(content = String, content_type = "text/csv"),
    responses((status = 200, body = ImportReport), (status = 403, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ImportRefused)),
    security(("bearer" = [])))]
pub async fn import_catalog(
    State(hub): State<HubState>,
    caller: Caller,
    body: Bytes,
) -> Result<Json<ImportReport>, CatalogError> {
    caller.require_operator()?;
    let writer = hub.writer.clone();
    let (report, head) = tokio::task::spawn_blocking(move || {
        let mut conn = writer
            .lock()
            .map_err(|_| CatalogError::Api(ApiError::internal("writer lock")))?;
        import(&mut conn, &body, crate::now_ms())
    })
    .await
    .map_err(ApiError::internal)??;
    if head > 0 {
        hub.log_grew.send_replace(head);
    }
    Ok(Json(report))
}

/// `GET /api/v1/catalog/export`: the whole catalog as CSV (audited like every export).
#[utoipa::path(get, path = "/api/v1/catalog/export",
    responses((status = 200, body = String, content_type = "text/csv")),
    security(("bearer" = [])))]
pub async fn export_catalog(
    State(hub): State<HubState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let bytes = hub
        .reads
        .run(|conn| export_csv(conn).map_err(ApiError::internal))
        .await?;
    let rows = bytes
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        .saturating_sub(1);
    crate::reports::http::record_audit(
        &hub,
        &caller.user,
        "export",
        "/api/v1/catalog/export".to_owned(),
        serde_json::json!({"format": "csv", "rows": rows}),
    )
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"catalog.csv\"",
            ),
        ],
        bytes,
    )
        .into_response())
}

/// The catalog's routes (merged into the hub's router).
pub fn routes() -> Router<HubState> {
    Router::new()
        .route("/api/v1/catalog", get(list_catalog))
        .route("/api/v1/catalog/bundles", get(list_bundles))
        .route("/api/v1/catalog/export", get(export_catalog))
        .route(
            "/api/v1/catalog/import",
            post(import_catalog).layer(DefaultBodyLimit::max(import_bytes_max)),
        )
        .route(
            "/api/v1/catalog/bundles/{sku}",
            get(get_bundle).put(put_bundle),
        )
        .route("/api/v1/catalog/{sku}", get(get_item).put(put_item))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::db::open_writer(&dir.path().join("hub.db")).unwrap();
        (dir, conn)
    }

    fn count_ops(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM ops", [], |row| row.get(0))
            .unwrap()
    }

    const good: &str = "sku,barcode,name,category,price,member_price,active,bundle
A1,6901,咖啡,饮料,12.50,11,true,
B7,,可颂,烘焙,8,,,
SET1,6903,早餐套餐,套餐,18.00,16.50,true,A1*1;B7*2
";

    #[test]
    fn a_file_with_bad_rows_reports_each_and_applies_nothing() {
        let (_dir, mut conn) = hub_db();
        import(&mut conn, good.as_bytes(), 1_000)
            .map_err(|_| ())
            .unwrap();
        let ops_before = count_ops(&conn);
        let export_before = export_csv(&conn).unwrap();
        let file = "sku,barcode,name,category,price,member_price,active,bundle
C1,,好的一行,饮料,3.00,,true,
C2,,,饮料,3.00,,true,
C3,,负价,饮料,-1,,true,
C4,,坏数字,饮料,abc,,true,
C1,,重复,饮料,1,,true,
C5,,未知组件,套餐,9,,true,ZZ*1
C6,,太长,饮料,1.234,,maybe,
C7,6901,条码重复,饮料,1,,true,
C8,,嵌套,套餐,30,,true,SET1*1
";
        let Err(CatalogError::Rows(errors)) = import(&mut conn, file.as_bytes(), 2_000) else {
            panic!("a file with bad rows must be refused");
        };
        let found: Vec<(u64, &str, &str)> = errors
            .iter()
            .map(|e| (e.line, e.field.as_str(), e.code.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (3, "name", "missing"),
                (4, "price", "negative_price"),
                (5, "price", "bad_number"),
                (6, "sku", "duplicate_sku"),
                (7, "bundle", "unknown_component"),
                (8, "price", "bad_number"),
                (8, "active", "bad_bool"),
                (9, "barcode", "duplicate_barcode"),
                (10, "bundle", "nested_bundle"),
            ],
            "{errors:#?}"
        );
        assert_eq!(count_ops(&conn), ops_before, "no operation authored");
        assert_eq!(
            export_csv(&conn).unwrap(),
            export_before,
            "catalog unchanged"
        );
        // A name past 64 characters and an unknown column are named too.
        let long = format!("sku,name,price\nL1,{},1\n", "名".repeat(65));
        let Err(CatalogError::Rows(errors)) = import(&mut conn, long.as_bytes(), 3_000) else {
            panic!("too long");
        };
        assert_eq!(
            (
                errors[0].line,
                errors[0].field.as_str(),
                errors[0].code.as_str()
            ),
            (2, "name", "too_long")
        );
        let Err(CatalogError::Rows(errors)) = import(&mut conn, b"sku,name,price,colour\n", 3_000)
        else {
            panic!("unknown column");
        };
        assert_eq!(
            (errors[0].line, errors[0].code.as_str()),
            (1, "unknown_column")
        );
    }

    #[test]
    fn ten_thousand_rows_import_and_an_export_imports_back_unchanged() {
        let (_dir, mut conn) = hub_db();
        let mut file = String::from("sku,barcode,name,category,price,member_price,active,bundle\n");
        for i in 0..10_000 {
            let bundle = if i % 100 == 99 {
                format!("P{:05}*2;P{:05}*1", i - 1, i - 2)
            } else {
                String::new()
            };
            file.push_str(&format!(
                "P{i:05},69{i:011},商品{i},类{},{}.{:02},{},{},{bundle}\n",
                i % 12,
                i % 500,
                i % 100,
                if i % 3 == 0 {
                    format!("{}.00", i % 400)
                } else {
                    String::new()
                },
                if i % 50 == 0 { "false" } else { "true" },
            ));
        }
        let (report, _) = import(&mut conn, file.as_bytes(), 10_000)
            .map_err(|_| ())
            .unwrap();
        assert_eq!(
            report,
            ImportReport {
                rows: 10_000,
                created: 10_000,
                changed: 0,
                unchanged: 0
            }
        );
        assert_eq!(count_ops(&conn), 10_000);
        assert_eq!(
            chainsync_replica::catalog::bundle_components(&conn, "P00099").unwrap(),
            Some(vec![("P00097".into(), 1), ("P00098".into(), 2)])
        );
        let view = chainsync_replica::catalog::product(&conn, "P00003")
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                view.price_fen,
                view.member_price_fen,
                view.category.as_deref()
            ),
            (303, Some(300), Some("类3"))
        );
        let exported = export_csv(&conn).unwrap();
        let (again, _) = import(&mut conn, &exported, 20_000)
            .map_err(|_| ())
            .unwrap();
        assert_eq!(again.unchanged, 10_000, "{again:?}");
        assert_eq!(count_ops(&conn), 10_000, "the round trip authored nothing");
        assert_eq!(export_csv(&conn).unwrap(), exported);
    }
}

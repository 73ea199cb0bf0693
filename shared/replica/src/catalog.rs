//! The catalog in the replica: the `products` table (both registers of a SKU, see
//! `chainsync_core::catalog`), bundle components, and the queries of the catalog routes on the
//! store and the hub.
//!
//! Projection reads the SKU's state, merges the write with `chainsync_core::catalog::merge`
//! (the pure rule the property test covers) and writes the result back, so the table is the
//! same on every replica holding the same operations.

use chainsync_core::Fen;
use chainsync_core::StoreId;
use chainsync_core::catalog::{
    self, BundleComponent, CatalogFields, CatalogItem, ProductState, ProductWrite, Stamp,
};
use chainsync_core::hlc::HlcTimestamp;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::views::{ComponentView, ProductView};

/// Version 1 of the catalog's schema: the catalog register's columns on `products` and the
/// components of bundles. (Listed last in both binaries' migrations.)
pub const schema_v1: &str = r#"
ALTER TABLE products ADD COLUMN barcode TEXT;
ALTER TABLE products ADD COLUMN category TEXT;
ALTER TABLE products ADD COLUMN member_price_fen INTEGER;
-- The stamp of the catalog register (NULL until a CatalogItemUpsert reached the SKU).
ALTER TABLE products ADD COLUMN catalog_hlc_wall_ms INTEGER;
ALTER TABLE products ADD COLUMN catalog_hlc_counter INTEGER;
ALTER TABLE products ADD COLUMN catalog_origin TEXT;
CREATE INDEX products_barcode ON products (barcode) WHERE barcode IS NOT NULL;
CREATE INDEX products_category ON products (category, sku);

-- Components of a bundle (套餐): qty units of component_sku per unit of bundle_sku.
CREATE TABLE bundle_components (
    bundle_sku TEXT NOT NULL,
    component_sku TEXT NOT NULL,
    qty INTEGER NOT NULL,
    PRIMARY KEY (bundle_sku, component_sku)
) WITHOUT ROWID;
CREATE INDEX bundle_components_component ON bundle_components (component_sku);
"#;

/// The components of bundle `sku` with their quantities (sorted by SKU); None if `sku` is not
/// a bundle (unknown, or a plain item). For stock: selling one bundle takes `qty` of each.
pub fn bundle_components(
    conn: &Connection,
    sku: &str,
) -> rusqlite::Result<Option<Vec<(String, i64)>>> {
    let mut statement = conn.prepare_cached(
        "SELECT component_sku, qty FROM bundle_components WHERE bundle_sku = ?1
         ORDER BY component_sku",
    )?;
    let components = statement
        .query_map([sku], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<Vec<(String, i64)>>>()?;
    Ok(if components.is_empty() {
        None
    } else {
        Some(components)
    })
}

fn stamp_of(hlc: HlcTimestamp, origin: &StoreId) -> Stamp {
    Stamp {
        hlc,
        origin: origin.as_str().to_owned(),
    }
}

fn row_stamp(wall_ms: i64, counter: i64, origin: String) -> Stamp {
    Stamp {
        hlc: HlcTimestamp {
            wall_ms: wall_ms.max(0) as u64,
            counter: u32::try_from(counter.max(0)).unwrap_or(u32::MAX),
        },
        origin,
    }
}

/// The merge state held for a SKU.
pub fn product_state(conn: &Connection, sku: &str) -> rusqlite::Result<Option<ProductState>> {
    let found = conn
        .prepare_cached(
            "SELECT sku, name, price_fen, active, hlc_wall_ms, hlc_counter, origin, barcode,
                category, member_price_fen, catalog_hlc_wall_ms, catalog_hlc_counter,
                catalog_origin
             FROM products WHERE sku = ?1",
        )?
        .query_row([sku], |row| {
            let catalog_stamp = match (
                row.get::<_, Option<i64>>(10)?,
                row.get::<_, Option<i64>>(11)?,
                row.get::<_, Option<String>>(12)?,
            ) {
                (Some(wall_ms), Some(counter), Some(origin)) => {
                    Some(row_stamp(wall_ms, counter, origin))
                }
                _ => None,
            };
            Ok(ProductState {
                sku: row.get(0)?,
                name: row.get(1)?,
                price: Fen(row.get(2)?),
                active: row.get(3)?,
                base_stamp: row_stamp(row.get(4)?, row.get(5)?, row.get(6)?),
                catalog: CatalogFields {
                    barcode: row.get(7)?,
                    category: row.get(8)?,
                    member_price: row.get::<_, Option<i64>>(9)?.map(Fen),
                    components: Vec::new(),
                },
                catalog_stamp,
            })
        })
        .optional()?;
    let Some(mut state) = found else {
        return Ok(None);
    };
    state.catalog.components = bundle_components(conn, sku)?
        .unwrap_or_default()
        .into_iter()
        .map(|(sku, qty)| BundleComponent { sku, qty })
        .collect();
    Ok(Some(state))
}

/// Project a write to a SKU (either operation kind). Idempotent and order-independent: see
/// `chainsync_core::catalog::merge`.
pub fn project_write(
    conn: &Connection,
    write: ProductWrite<'_>,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    let sku = match write {
        ProductWrite::Product(record) => &record.sku,
        ProductWrite::Item(item) => &item.sku,
    };
    let current = product_state(conn, sku)?;
    let Some(next) = catalog::merge(current.as_ref(), &stamp_of(hlc, origin), write) else {
        return Ok(());
    };
    let catalog_stamp = next.catalog_stamp.as_ref();
    conn.prepare_cached(
        "INSERT INTO products (sku, name, price_fen, active, hlc_wall_ms, hlc_counter, origin,
             barcode, category, member_price_fen, catalog_hlc_wall_ms, catalog_hlc_counter,
             catalog_origin)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (sku) DO UPDATE SET name = excluded.name, price_fen = excluded.price_fen,
             active = excluded.active, hlc_wall_ms = excluded.hlc_wall_ms,
             hlc_counter = excluded.hlc_counter, origin = excluded.origin,
             barcode = excluded.barcode, category = excluded.category,
             member_price_fen = excluded.member_price_fen,
             catalog_hlc_wall_ms = excluded.catalog_hlc_wall_ms,
             catalog_hlc_counter = excluded.catalog_hlc_counter,
             catalog_origin = excluded.catalog_origin",
    )?
    .execute(params![
        next.sku,
        next.name,
        next.price.0,
        next.active,
        next.base_stamp.hlc.wall_ms as i64,
        i64::from(next.base_stamp.hlc.counter),
        next.base_stamp.origin,
        next.catalog.barcode,
        next.catalog.category,
        next.catalog.member_price.map(|fen| fen.0),
        catalog_stamp.map(|s| s.hlc.wall_ms as i64),
        catalog_stamp.map(|s| i64::from(s.hlc.counter)),
        catalog_stamp.map(|s| s.origin.clone()),
    ])?;
    let components_changed = current
        .as_ref()
        .is_none_or(|current| current.catalog.components != next.catalog.components);
    if components_changed {
        conn.prepare_cached("DELETE FROM bundle_components WHERE bundle_sku = ?1")?
            .execute([&next.sku])?;
        let mut insert = conn.prepare_cached(
            "INSERT INTO bundle_components (bundle_sku, component_sku, qty) VALUES (?1, ?2, ?3)",
        )?;
        for component in &next.catalog.components {
            insert.execute(params![next.sku, component.sku, component.qty])?;
        }
    }
    Ok(())
}

/// Project HQ's catalog item.
pub fn project_item(
    conn: &Connection,
    item: &CatalogItem,
    hlc: HlcTimestamp,
    origin: &StoreId,
) -> rusqlite::Result<()> {
    project_write(conn, ProductWrite::Item(item), hlc, origin)
}

const product_columns: &str = "sku, name, price_fen, active, barcode, category, member_price_fen, \
     EXISTS (SELECT 1 FROM bundle_components b WHERE b.bundle_sku = products.sku)";

fn product_row(row: &Row<'_>) -> rusqlite::Result<(ProductView, bool)> {
    Ok((
        ProductView {
            sku: row.get(0)?,
            name: row.get(1)?,
            price_fen: row.get(2)?,
            active: row.get(3)?,
            barcode: row.get(4)?,
            category: row.get(5)?,
            member_price_fen: row.get(6)?,
            components: Vec::new(),
        },
        row.get(7)?,
    ))
}

fn with_components(
    conn: &Connection,
    (mut view, bundle): (ProductView, bool),
) -> rusqlite::Result<ProductView> {
    if bundle {
        view.components = bundle_components(conn, &view.sku)?
            .unwrap_or_default()
            .into_iter()
            .map(|(sku, qty)| ComponentView { sku, qty })
            .collect();
    }
    Ok(view)
}

/// One product with its catalog fields and components.
pub fn product(conn: &Connection, sku: &str) -> rusqlite::Result<Option<ProductView>> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {product_columns} FROM products WHERE sku = ?1"
        ))?
        .query_row([sku], product_row)
        .optional()?;
    found.map(|found| with_components(conn, found)).transpose()
}

/// Filters of a catalog list (all optional).
#[derive(Debug, Clone, Default)]
pub struct CatalogFilter {
    pub category: Option<String>,
    pub active: Option<bool>,
    /// SKU, barcode or name fragment.
    pub q: Option<String>,
    pub barcode: Option<String>,
    /// Only bundles (Some(true)) or only plain items (Some(false)).
    pub bundle: Option<bool>,
}

/// A page of products matching `filter`, by SKU, and how many match in all.
pub fn products_page(
    conn: &Connection,
    filter: &CatalogFilter,
    offset: usize,
    limit: usize,
) -> rusqlite::Result<(Vec<ProductView>, usize)> {
    let mut conditions: Vec<&str> = Vec::new();
    let mut values: Vec<rusqlite::types::Value> = Vec::new();
    use rusqlite::types::Value;
    if let Some(category) = &filter.category {
        conditions.push("category = ?");
        values.push(Value::Text(category.clone()));
    }
    if let Some(active) = filter.active {
        conditions.push("active = ?");
        values.push(Value::Integer(i64::from(active)));
    }
    if let Some(barcode) = &filter.barcode {
        conditions.push("barcode = ?");
        values.push(Value::Text(barcode.clone()));
    }
    if let Some(q) = &filter.q {
        conditions.push(
            "(instr(sku, ?) > 0 OR instr(COALESCE(barcode, ''), ?) > 0 OR instr(name, ?) > 0)",
        );
        for _ in 0..3 {
            values.push(Value::Text(q.clone()));
        }
    }
    match filter.bundle {
        Some(true) => conditions
            .push("EXISTS (SELECT 1 FROM bundle_components b WHERE b.bundle_sku = products.sku)"),
        Some(false) => conditions.push(
            "NOT EXISTS (SELECT 1 FROM bundle_components b WHERE b.bundle_sku = products.sku)",
        ),
        None => {}
    }
    let clause = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    let total: i64 = conn.query_row(
        &format!("SELECT COUNT(*) FROM products {clause}"),
        rusqlite::params_from_iter(values.iter()),
        |row| row.get(0),
    )?;
    let mut page_values = values;
    page_values.push(Value::Integer(limit as i64));
    page_values.push(Value::Integer(offset as i64));
    let mut statement = conn.prepare(&format!(
        "SELECT {product_columns} FROM products {clause} ORDER BY sku LIMIT ? OFFSET ?"
    ))?;
    let found = statement
        .query_map(rusqlite::params_from_iter(page_values.iter()), product_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let products = found
        .into_iter()
        .map(|found| with_components(conn, found))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok((products, usize::try_from(total).unwrap_or(0)))
}

/// Every product, by SKU, calling `each` per product (for the CSV export: no list in memory).
pub fn for_each_product(
    conn: &Connection,
    mut each: impl FnMut(ProductView) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut statement = conn.prepare(&format!(
        "SELECT {product_columns} FROM products ORDER BY sku"
    ))?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let found = product_row(row)?;
        each(with_components(conn, found)?)?;
    }
    Ok(())
}

/// The catalog item that would reproduce a product as a replica shows it (for an edit or the
/// export: an item written back unchanged changes nothing a person sees).
pub fn item_of(view: &ProductView) -> CatalogItem {
    CatalogItem {
        sku: view.sku.clone(),
        barcode: view.barcode.clone(),
        name: view.name.clone(),
        category: view.category.clone(),
        price: Fen(view.price_fen),
        member_price: view.member_price_fen.map(Fen),
        active: view.active,
        components: view
            .components
            .iter()
            .map(|c| BundleComponent {
                sku: c.sku.clone(),
                qty: c.qty,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainsync_core::op::ProductRecord;

    fn open() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(crate::sqlite::replica_schema_v1)
            .unwrap();
        conn.execute_batch(schema_v1).unwrap();
        conn
    }

    fn hlc(wall_ms: u64) -> HlcTimestamp {
        HlcTimestamp {
            wall_ms,
            counter: 0,
        }
    }

    #[test]
    fn bundles_and_old_style_upserts_project_in_any_order() {
        let hq = StoreId::hub();
        let store = StoreId::parse("s1").unwrap();
        let bundle = CatalogItem {
            sku: "SET1".into(),
            barcode: Some("690001".into()),
            name: "早餐套餐".into(),
            category: Some("套餐".into()),
            price: Fen(2_000),
            member_price: Some(Fen(1_800)),
            active: true,
            components: vec![
                BundleComponent {
                    sku: "A1".into(),
                    qty: 2,
                },
                BundleComponent {
                    sku: "B7".into(),
                    qty: 1,
                },
            ],
        };
        let legacy = ProductRecord {
            sku: "SET1".into(),
            name: "早餐".into(),
            price: Fen(2_200),
            active: true,
        };
        let forward = open();
        project_item(&forward, &bundle, hlc(10), &hq).unwrap();
        project_write(&forward, ProductWrite::Product(&legacy), hlc(20), &store).unwrap();
        let backward = open();
        project_write(&backward, ProductWrite::Product(&legacy), hlc(20), &store).unwrap();
        project_item(&backward, &bundle, hlc(10), &hq).unwrap();
        project_item(&backward, &bundle, hlc(10), &hq).unwrap();
        for conn in [&forward, &backward] {
            let view = product(conn, "SET1").unwrap().unwrap();
            assert_eq!(view.name, "早餐");
            assert_eq!(view.price_fen, 2_200);
            assert_eq!(view.category.as_deref(), Some("套餐"));
            assert_eq!(view.member_price_fen, Some(1_800));
            assert_eq!(
                bundle_components(conn, "SET1").unwrap(),
                Some(vec![("A1".into(), 2), ("B7".into(), 1)])
            );
        }
        let row = |conn: &Connection| -> Vec<String> {
            conn.query_row("SELECT * FROM products", [], |row| {
                (0..13)
                    .map(|i| {
                        row.get::<_, rusqlite::types::Value>(i)
                            .map(|v| format!("{v:?}"))
                    })
                    .collect()
            })
            .unwrap()
        };
        assert_eq!(row(&forward), row(&backward));
        assert_eq!(bundle_components(&forward, "A1").unwrap(), None);
        // A newer item without components makes it a plain item again.
        let mut plain = bundle.clone();
        plain.components.clear();
        project_item(&forward, &plain, hlc(30), &hq).unwrap();
        assert_eq!(bundle_components(&forward, "SET1").unwrap(), None);
        let filter = CatalogFilter {
            category: Some("套餐".into()),
            ..Default::default()
        };
        let (page, total) = products_page(&forward, &filter, 0, 10).unwrap();
        assert_eq!((page.len(), total), (1, 1));
        let filter = CatalogFilter {
            barcode: Some("690001".into()),
            ..Default::default()
        };
        assert_eq!(products_page(&forward, &filter, 0, 10).unwrap().1, 1);
    }
}

//! Issue 6 items 2–5 at one store: stock as a fold of movements (receipts, supplier returns,
//! damage, sales, sale returns), thresholds and low-stock alerts, selling below zero allowed
//! and flagged by default and refused by the store setting, and stocktakes whose adjustment is
//! taken against the stock at the moment of counting.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use tests::{StoreNode, error_code, expect_status};

fn manager_post(node: &StoreNode, path: &str, body: &Value) -> Result<(u16, Value)> {
    node.api().post(path, Some(&node.manager), body, None)
}

fn manager_ok(node: &StoreNode, path: &str, body: &Value) -> Result<Value> {
    expect_status(manager_post(node, path, body)?, &[200, 201], path)
}

fn stock_of(node: &StoreNode, sku: &str) -> Result<Value> {
    let list = expect_status(
        node.get(&format!("/api/v1/stock?sku={sku}"))?,
        &[200],
        "stock",
    )?;
    Ok(list["stock"]
        .as_array()
        .and_then(|levels| levels.first().cloned())
        .unwrap_or(json!({"sku": sku, "qty": 0})))
}

fn qty(node: &StoreNode, sku: &str) -> Result<i64> {
    stock_of(node, sku)?["qty"].as_i64().context("qty")
}

#[test]
fn movements_sales_refunds_alerts_and_selling_below_zero() -> Result<()> {
    let mut node = StoreNode::start_temp()?;
    node.add_product("P1", "牙膏", 1_000)?;
    node.add_product("P2", "牙刷", 500)?;

    let receipt =
        json!({"kind": "receipt", "lines": [{"sku": "P1", "qty": 10}], "reason": "供应商A"});
    // Cashiers do not move stock.
    let (status, body) = node.post("/api/v1/stock/movements", &receipt)?;
    assert_eq!(
        (status, error_code(&body)),
        (403, Some("forbidden")),
        "{body}"
    );
    // A retried receipt (same key) is written once.
    for _ in 0..2 {
        let reply = node.api().post(
            "/api/v1/stock/movements",
            Some(&node.manager),
            &receipt,
            Some("receipt-1"),
        )?;
        expect_status(reply, &[201], "receipt")?;
    }
    assert_eq!(qty(&node, "P1")?, 10);

    // Bad input changes nothing.
    for (body, code) in [
        (
            json!({"kind": "theft", "lines": [{"sku": "P1", "qty": 1}]}),
            "invalid_field",
        ),
        (
            json!({"kind": "damage", "lines": [{"sku": "P1", "qty": 0}]}),
            "invalid_qty",
        ),
        (
            json!({"kind": "damage", "lines": [{"sku": "NOPE", "qty": 1}]}),
            "unknown_sku",
        ),
        (json!({"kind": "damage", "lines": []}), "invalid_field"),
    ] {
        let (status, reply) = manager_post(&node, "/api/v1/stock/movements", &body)?;
        assert_eq!(
            (status, error_code(&reply)),
            (422, Some(code)),
            "{body} → {reply}"
        );
    }
    assert_eq!(qty(&node, "P1")?, 10);

    // A sale takes stock, line by line; a line refund brings its units back.
    let sale = node.checkout(&json!({"lines": [{"sku": "P1", "qty": 3}],
        "payments": [{"method": "cash", "amount_fen": 3_000}]}))?;
    assert_eq!(sale["stock_below_zero"], json!([]), "{sale}");
    assert_eq!(qty(&node, "P1")?, 7);
    let sale_id = sale["id"].as_str().context("sale id")?;
    manager_ok(
        &node,
        &format!("/api/v1/checkouts/{sale_id}/refunds"),
        &json!({"lines": [{"line": 0, "qty": 1}]}),
    )?;
    assert_eq!(qty(&node, "P1")?, 8);
    manager_ok(
        &node,
        "/api/v1/stock/movements",
        &json!({"kind": "damage", "lines": [{"sku": "P1", "qty": 1}], "reason": "破损"}),
    )?;
    let returned = manager_ok(
        &node,
        "/api/v1/stock/movements",
        &json!({"kind": "supplier_return", "lines": [{"sku": "P1", "qty": 2}]}),
    )?;
    assert_eq!(
        returned["stock"],
        json!([{"sku": "P1", "qty": 5}]),
        "{returned}"
    );

    // Low-stock alert at the threshold.
    manager_ok(
        &node,
        "/api/v1/stock/thresholds",
        &json!({"sku": "P1", "min_qty": 5}),
    )?;
    let alerts = expect_status(node.get("/api/v1/stock/alerts")?, &[200], "alerts")?;
    assert_eq!(
        alerts["stock"].as_array().map(Vec::len),
        Some(1),
        "{alerts}"
    );
    assert_eq!(alerts["stock"][0]["sku"], "P1");
    assert_eq!(alerts["stock"][0]["low_stock"], true);
    assert_eq!(alerts["stock"][0]["threshold"], 5);

    // Selling below zero: allowed by default, and said so.
    let short = node.checkout(&json!({"lines": [{"sku": "P2", "qty": 2}],
        "payments": [{"method": "cash", "amount_fen": 1_000}]}))?;
    assert_eq!(
        short["stock_below_zero"],
        json!([{"sku": "P2", "qty": -2}]),
        "{short}"
    );
    let p2 = stock_of(&node, "P2")?;
    assert_eq!(
        (p2["qty"].as_i64(), p2["below_zero"].as_bool()),
        (Some(-2), Some(true))
    );

    // The store refuses it once its setting says so.
    let config = node.data_dir().join("store.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("{text}\nallow_negative_stock = false\n"))?;
    node.restart()?;
    let (status, body) = node.post(
        "/api/v1/checkouts",
        &json!({"lines": [{"sku": "P1", "qty": 1}, {"sku": "P2", "qty": 1}],
                "payments": [{"method": "cash", "amount_fen": 1_500}]}),
    )?;
    assert_eq!(
        (status, error_code(&body)),
        (409, Some("insufficient_stock")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("P2"),
        "{body}"
    );
    assert_eq!(
        (qty(&node, "P1")?, qty(&node, "P2")?),
        (5, -2),
        "nothing changed"
    );
    let checkouts = expect_status(node.get("/api/v1/checkouts")?, &[200], "checkouts")?;
    assert_eq!(checkouts["checkouts"].as_array().map(Vec::len), Some(2));
    // Within stock it sells.
    node.checkout(&json!({"lines": [{"sku": "P1", "qty": 5}],
        "payments": [{"method": "cash", "amount_fen": 5_000}]}))?;
    assert_eq!(qty(&node, "P1")?, 0);
    Ok(())
}

#[test]
fn stocktake_adjusts_against_the_stock_at_the_moment_of_counting() -> Result<()> {
    let node = StoreNode::start_temp()?;
    node.add_product("P1", "牙膏", 1_000)?;
    node.add_product("P2", "牙刷", 500)?;
    manager_ok(
        &node,
        "/api/v1/stock/movements",
        &json!({"kind": "receipt", "lines": [{"sku": "P1", "qty": 10}, {"sku": "P2", "qty": 4}]}),
    )?;
    let take = manager_ok(&node, "/api/v1/stocktakes", &json!({"note": "月末盘点"}))?;
    let id = take["id"].as_str().context("stocktake id")?.to_owned();
    let (status, body) = manager_post(&node, "/api/v1/stocktakes", &json!({}))?;
    assert_eq!(
        (status, error_code(&body)),
        (409, Some("stocktake_open")),
        "{body}"
    );

    // P1 counted at 8 while the books say 10: two are missing.
    let counted = manager_ok(
        &node,
        &format!("/api/v1/stocktakes/{id}/counts"),
        &json!({"counts": [{"sku": "P1", "counted": 8}]}),
    )?;
    assert_eq!(counted["counts"][0]["expected"], 10, "{counted}");
    assert_eq!(counted["counts"][0]["adjustment"], -2);
    // The till keeps selling during the count, and goods arrive: both are already in the
    // stock and must not be taken as count differences.
    node.checkout(
        &json!({"lines": [{"sku": "P1", "qty": 2}, {"sku": "P2", "qty": 1}],
        "payments": [{"method": "cash", "amount_fen": 2_500}]}),
    )?;
    manager_ok(
        &node,
        "/api/v1/stock/movements",
        &json!({"kind": "receipt", "lines": [{"sku": "P1", "qty": 5}]}),
    )?;
    // P2 counted after its sale: 3 expected, 3 counted.
    manager_ok(
        &node,
        &format!("/api/v1/stocktakes/{id}/counts"),
        &json!({"counts": [{"sku": "P2", "counted": 3}]}),
    )?;
    let finished = manager_ok(
        &node,
        &format!("/api/v1/stocktakes/{id}/finish"),
        &json!({}),
    )?;
    assert!(finished["finished_ms"].is_u64(), "{finished}");
    // 8 on the shelf at the count, −2 sold, +5 received.
    assert_eq!(qty(&node, "P1")?, 11);
    assert_eq!(qty(&node, "P2")?, 3);
    let (status, body) = manager_post(
        &node,
        &format!("/api/v1/stocktakes/{id}/finish"),
        &json!({}),
    )?;
    assert_eq!(
        (status, error_code(&body)),
        (409, Some("stocktake_finished")),
        "{body}"
    );
    assert_eq!(qty(&node, "P1")?, 11, "finishing twice adjusts once");
    let (status, body) = manager_post(
        &node,
        "/api/v1/stocktakes/00000000-0000-0000-0000-000000000000/counts",
        &json!({"counts": [{"sku": "P1", "counted": 1}]}),
    )?;
    assert_eq!(
        (status, error_code(&body)),
        (404, Some("unknown_stocktake")),
        "{body}"
    );
    Ok(())
}

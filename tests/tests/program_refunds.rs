//! Issue 5 item 6: partial (line-level) refunds. Stored value goes back to the accounts it was
//! taken from, cash in its share, points earned are taken back in the same share; the refunds
//! of a sale add up exactly to it. Done at a store cut off from the hub, then converged.

use anyhow::{Context, Result};
use serde_json::json;
use std::time::Duration;
use tests::multi::{Hub, Store, converged, wait_until};

const bounded: Duration = Duration::from_secs(60);

#[test]
fn line_refunds_at_a_store_cut_off_restore_by_share_and_converge() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hub = Hub::start(dir.path())?;
    let a = Store::start("fa", dir.path(), &hub.enroll("fa", dir.path())?)?;
    let b = Store::start("fb", dir.path(), &hub.enroll("fb", dir.path())?)?;
    a.ok(
        "/api/v1/products",
        &json!({"sku": "P1", "name": "洗发水", "price_fen": 1_000}),
    )?;
    a.ok(
        "/api/v1/products",
        &json!({"sku": "P2", "name": "护发素", "price_fen": 701}),
    )?;
    let member = a.ok(
        "/api/v1/members",
        &json!({"name": "周九", "phone": "13900008888"}),
    )?;
    let member = member["id"].as_str().context("id")?.to_owned();
    a.ok(
        &format!("/api/v1/members/{member}/recharges"),
        &json!({"amount_fen": 10_000}),
    )?;
    wait_until("everything at the hub", bounded, || {
        converged(&hub, &[&a, &b])
    })?;

    hub.kill9();
    // 3 × ¥10.00 + 1 × ¥7.01 = ¥37.01: ¥20.00 stored value, ¥17.01 cash; 37 points earned.
    let sale = a.ok(
        "/api/v1/checkouts",
        &json!({"member_id": member, "lines": [{"sku": "P1", "qty": 3}, {"sku": "P2", "qty": 1}],
                "payments": [{"method": "stored_value", "amount_fen": 2_000},
                             {"method": "cash", "amount_fen": 1_701}]}),
    )?;
    assert_eq!(sale["points_earned"], 37, "{sale}");
    let sale_id = sale["id"].as_str().context("sale id")?.to_owned();
    let path = format!("/api/v1/checkouts/{sale_id}/refunds");

    // One ¥10.00 unit of line 0: share 1000/3701 of each part, rounded down.
    let first = a.ok(
        &path,
        &json!({"lines": [{"line": 0, "qty": 1}], "reason": "破损"}),
    )?;
    assert_eq!(first["stored_value_fen"], 540, "{first}");
    assert_eq!(first["cash_fen"], 459, "{first}");
    assert_eq!(first["amount_fen"], 999, "{first}");
    assert_eq!(first["points_taken_back"], 9, "{first}");
    assert_eq!(first["complete"], false);
    assert_eq!(
        (first["balance_fen"].as_i64(), first["points"].as_i64()),
        (Some(8_540), Some(28))
    );

    // More units than are left: refused, nothing written.
    let (status, refused) = a.post(&path, &json!({"lines": [{"line": 0, "qty": 3}]}))?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("nothing_left_to_refund")),
        "{refused}"
    );
    let (status, refused) = a.post(&path, &json!({"lines": [{"line": 7, "qty": 1}]}))?;
    assert_eq!(status, 422, "{refused}");

    // The rest: together the two refunds give back exactly what was paid.
    let rest = a.ok(&path, &json!({}))?;
    assert_eq!(rest["amount_fen"], 3_701 - 999, "{rest}");
    assert_eq!(rest["complete"], true);
    assert_eq!(
        rest["lines"],
        json!([{"line": 0, "qty": 2}, {"line": 1, "qty": 1}])
    );
    assert_eq!(
        (rest["balance_fen"].as_i64(), rest["points"].as_i64()),
        (Some(10_000), Some(0))
    );
    let (status, again) = a.post(&path, &json!({}))?;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("already_refunded"))
    );

    hub.restart()?;
    wait_until("converged after the hub is back", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    for (api, token) in [(&b.api, &b.manager), (&hub.api, &hub.token)] {
        let (_, found) = api.get(&format!("/api/v1/members/{member}"), Some(token))?;
        assert_eq!(
            (found["balance_fen"].as_i64(), found["points"].as_i64()),
            (Some(10_000), Some(0)),
            "{found}"
        );
    }
    let (_, ledger) = hub.get(&format!("/api/v1/members/{member}/ledger"))?;
    let refunds: i64 = ledger["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["kind"] == "refund")
        .map(|e| e["amount"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(refunds, 2_000, "stored value back in full: {ledger}");
    Ok(())
}

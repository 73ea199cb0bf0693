//! Issue 5 item 1: membership rules as HQ-authored replicated configuration. HQ sets a rule set
//! on the hub; stores apply the newest version they hold (also while cut off) and every entry
//! records the version that produced it; prepaid cap, signup gifts, manual points adjustments.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;
use tests::multi::{Hub, Store, converged, wait_until};

const bounded: Duration = Duration::from_secs(60);

fn rules_version(store: &Store) -> Result<i64> {
    let (status, rules) = store.get("/api/v1/rules")?;
    anyhow::ensure!(status == 200, "GET rules: {status} {rules}");
    rules["version"].as_i64().context("version")
}

fn online(store: &Store) -> Result<bool> {
    Ok(store.sync_status()?["link"] == "online")
}

/// Rules version 2: gold from ¥100 with 10 % off, recharge ≥ ¥100 gives 20 %, cap ¥1,000,
/// 50 signup points; campaigns (double points everywhere, triple on drinks, ×5 only at store
/// rb) and no points on tobacco.
fn rules_v2() -> Value {
    json!({
        "campaigns": [
            {"name": "双倍积分", "start": "2020-01-01T00:00", "end": "2099-01-01T00:00",
             "multiplier_pct": 200},
            {"name": "饮料三倍", "start": "2020-01-01T00:00", "end": "2099-01-01T00:00",
             "multiplier_pct": 300, "categories": ["饮料"]},
            {"name": "rb 五倍", "start": "2020-01-01T00:00", "end": "2099-01-01T00:00",
             "multiplier_pct": 500, "stores": ["rb"]},
            {"name": "过期", "start": "2020-01-01T00:00", "end": "2020-02-01T00:00",
             "multiplier_pct": 1000}
        ],
        "points_excluded_categories": ["烟草"],
        "tiers": [
            {"name": "普通", "spend_threshold_fen": 0, "discount_bp": 0, "points_multiplier_pct": 100},
            {"name": "黄金", "spend_threshold_fen": 10_000, "discount_bp": 1_000, "points_multiplier_pct": 200}
        ],
        "recharge_bonus": [{"min_amount_fen": 10_000, "bonus_bp": 2_000}],
        "points_per_yuan": 1,
        "point_value_fen": 1,
        "prepaid_cap_fen": 100_000,
        "signup": {"points": 50}
    })
}

#[test]
fn hq_rules_replicate_and_apply_at_a_store_that_is_cut_off() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hub = Hub::start(dir.path())?;
    let a = Store::start("ra", dir.path(), &hub.enroll("ra", dir.path())?)?;
    let b = Store::start("rb", dir.path(), &hub.enroll("rb", dir.path())?)?;
    assert_eq!(rules_version(&a)?, 1, "the defaults until HQ sets rules");
    assert_eq!(hub.get("/api/v1/rules")?.1["prepaid_cap_fen"], 500_000);

    // Bad rule sets change nothing.
    let mut unsorted = rules_v2();
    unsorted["tiers"][1]["spend_threshold_fen"] = json!(0);
    let (status, refused) = hub.put("/api/v1/rules", &unsorted)?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("invalid_rules"))
    );
    let (status, _) = hub.put("/api/v1/rules", &json!({"tiers": []}))?;
    assert_eq!(status, 400);
    for (field, value) in [
        ("multiplier_pct", json!(50)),
        ("start", json!("2020-13-01T00:00")),
        ("end", json!("2019-01-01T00:00")),
        ("stores", json!([""])),
    ] {
        let mut bad = rules_v2();
        bad["campaigns"][0][field] = value;
        let (status, refused) = hub.put("/api/v1/rules", &bad)?;
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (422, Some("invalid_rules")),
            "{field}: {refused}"
        );
    }
    let mut bad = rules_v2();
    bad["campaigns"][0]["bonus"] = json!(1);
    assert_eq!(hub.put("/api/v1/rules", &bad)?.0, 400, "unknown field");
    let mut bad = rules_v2();
    bad["points_excluded_categories"] = json!(["  "]);
    assert_eq!(hub.put("/api/v1/rules", &bad)?.0, 422);
    assert_eq!(hub.get("/api/v1/rules")?.1["version"], 1, "nothing changed");
    for (sku, category, price) in [("DRINK", "饮料", 1_000), ("SMOKE", "烟草", 2_000)] {
        let (status, item) = hub.api.request(
            "PUT",
            &format!("/api/v1/catalog/{sku}"),
            Some(&hub.token),
            None,
            Some(&json!({"name": sku, "category": category, "price_fen": price}).to_string()),
            None,
        )?;
        assert_eq!(status, 200, "{item}");
    }
    let (status, item) = hub.api.request(
        "PUT",
        "/api/v1/catalog/SNACK",
        Some(&hub.token),
        None,
        Some(&json!({"name": "SNACK", "price_fen": 500}).to_string()),
        None,
    )?;
    assert_eq!(status, 200, "{item}");

    let (status, set) = hub.put("/api/v1/rules", &rules_v2())?;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["version"], 2);
    assert_eq!(set["campaigns"].as_array().map(Vec::len), Some(4), "{set}");
    assert_eq!(set["points_excluded_categories"], json!(["烟草"]));
    wait_until("rules v2 and the catalog at both stores", bounded, || {
        Ok(rules_version(&a)? == 2
            && rules_version(&b)? == 2
            && online(&a)?
            && online(&b)?
            && converged(&hub, &[&a, &b])?)
    })?;
    assert_eq!(a.get("/api/v1/rules")?.1, hub.get("/api/v1/rules")?.1);

    // The hub goes away: store a applies the version it holds.
    hub.kill9();
    let member = a.ok(
        "/api/v1/members",
        &json!({"name": "钱七", "phone": "13900005555"}),
    )?;
    let id = member["id"].as_str().context("id")?.to_owned();
    assert_eq!(member["points"], 50, "signup gift of rules v2: {member}");
    let recharge = a.ok(
        &format!("/api/v1/members/{id}/recharges"),
        &json!({"amount_fen": 20_000}),
    )?;
    assert_eq!(recharge["bonus_fen"], 4_000, "20 % of rules v2: {recharge}");
    // ¥200 of principal held (+ ¥40 bonus, not counted); ¥900 more would pass the ¥1,000 cap.
    let (status, over) = a.post(
        &format!("/api/v1/members/{id}/recharges"),
        &json!({"amount_fen": 90_000}),
    )?;
    assert_eq!(
        (status, over["error"]["code"].as_str()),
        (422, Some("prepaid_cap_exceeded")),
        "{over}"
    );
    // Manual adjustment: manager only, reason required.
    let path = format!("/api/v1/members/{id}/points-adjustments");
    let (status, _) = a.api.post(
        &path,
        Some(&a.cashier),
        &json!({"points": 10, "reason": "补录"}),
        None,
    )?;
    assert_eq!(status, 403);
    let (status, _) = a.post(&path, &json!({"points": 10, "reason": " "}))?;
    assert_eq!(status, 422);
    let adjusted = a.ok(&path, &json!({"points": -20, "reason": "重复积分更正"}))?;
    assert_eq!(adjusted["points_balance"], 30);
    assert_eq!(adjusted["rule_version"], 2);

    // Points at a checkout while cut off: drinks ×3 (the highest of ×2 and ×3), tobacco
    // nothing, the rest ×2 (rb's ×5 is not for this store, the expired ×10 is over).
    let buyer = a.ok(
        "/api/v1/members",
        &json!({"name": "孙八", "phone": "13900006666"}),
    )?;
    let buyer = buyer["id"].as_str().context("id")?.to_owned();
    let sale = a.ok(
        "/api/v1/checkouts",
        &json!({"member_id": buyer,
                "lines": [{"sku": "DRINK", "qty": 1}, {"sku": "SMOKE", "qty": 1},
                          {"sku": "SNACK", "qty": 1}],
                "payments": [{"method": "cash", "amount_fen": 3_500}]}),
    )?;
    assert_eq!(sale["points_earned"], 40, "¥10×3 + ¥5×2: {sale}");
    let by_line: Vec<_> = sale["lines"]
        .as_array()
        .context("lines")?
        .iter()
        .map(|l| l["points_earned"].as_i64())
        .collect();
    assert_eq!(by_line, [Some(30), Some(0), Some(10)], "{sale}");
    assert_eq!(sale["rule_version"], 2);
    assert_eq!(sale["points"], 90, "50 signup + 40: {sale}");
    // Refunding the drink takes back the drink's 30 points, not a share of the sale's.
    let sale_id = sale["id"].as_str().context("sale id")?.to_owned();
    let refund = a.ok(
        &format!("/api/v1/checkouts/{sale_id}/refunds"),
        &json!({"lines": [{"line": 0, "qty": 1}]}),
    )?;
    assert_eq!(refund["points_taken_back"], 30, "{refund}");
    assert_eq!(refund["points"], 60, "{refund}");

    // Back together: everything converges, and every entry says rules v2 produced it.
    hub.restart()?;
    wait_until("converged after the hub is back", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    let (status, ledger) = hub.get(&format!("/api/v1/members/{id}/ledger"))?;
    assert_eq!(status, 200, "{ledger}");
    let entries = ledger["entries"].as_array().context("entries")?;
    assert_eq!(
        entries.len(),
        4,
        "signup, principal, bonus, adjustment: {ledger}"
    );
    assert!(entries.iter().all(|e| e["rule_version"] == 2), "{ledger}");
    let at_b = b.get(&format!("/api/v1/members/{id}"))?.1;
    assert_eq!(at_b["balance_fen"], 24_000);
    assert_eq!(at_b["points"], 30);
    // The buyer's points are the same everywhere, and so is each entry's rule version.
    for points in [
        hub.get(&format!("/api/v1/members/{buyer}"))?.1["points"].clone(),
        b.get(&format!("/api/v1/members/{buyer}"))?.1["points"].clone(),
    ] {
        assert_eq!(points, 60);
    }
    let (_, ledger) = hub.get(&format!("/api/v1/members/{buyer}/ledger"))?;
    let entries = ledger["entries"].as_array().context("entries")?;
    let earned: Vec<_> = entries
        .iter()
        .filter(|e| e["kind"] == "points_earn" || e["kind"] == "points_reverse")
        .map(|e| (e["amount"].as_i64(), e["rule_version"].as_i64()))
        .collect();
    assert_eq!(earned.len(), 2, "{ledger}");
    assert!(earned.contains(&(Some(40), Some(2))), "{ledger}");
    assert!(earned.contains(&(Some(-30), Some(2))), "{ledger}");

    // A newer set wins everywhere; an older one arriving late would not replace it.
    let mut v3 = rules_v2();
    v3["prepaid_cap_fen"] = json!(30_000);
    assert_eq!(hub.put("/api/v1/rules", &v3)?.1["version"], 3);
    wait_until("rules v3 at both stores", bounded, || {
        Ok(rules_version(&a)? == 3 && rules_version(&b)? == 3)
    })?;
    let (status, over) = b.post(
        &format!("/api/v1/members/{id}/recharges"),
        &json!({"amount_fen": 10_001}),
    )?;
    assert_eq!(
        (status, over["error"]["code"].as_str()),
        (422, Some("prepaid_cap_exceeded")),
        "{over}"
    );
    wait_until("converged on v3", bounded, || converged(&hub, &[&a, &b]))?;
    Ok(())
}

/// Points for gifts from HQ's catalog: a redemption is a `points_redeem` entry plus a
/// redemption record, so it works while a store is cut off; stock left is the stock minus every
/// redemption held, the same everywhere after sync (below zero if stores apart took the last).
#[test]
fn gift_catalog_redemptions_at_stores_apart_converge() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hub = Hub::start(dir.path())?;
    let a = Store::start("ga", dir.path(), &hub.enroll("ga", dir.path())?)?;
    let b = Store::start("gb", dir.path(), &hub.enroll("gb", dir.path())?)?;
    let new_gift = json!({"name": "保温杯", "points_price": 200, "stock": 1});
    let (status, gift) = hub.api.post(
        "/api/v1/gifts",
        Some(&hub.token),
        &new_gift,
        Some("gift-cup"),
    )?;
    assert_eq!(status, 201, "{gift}");
    let gift_id = gift["id"].as_str().context("gift id")?.to_owned();
    // A retry under the same key (no id in the body) gets the same gift, not a second one.
    let again = hub.api.post(
        "/api/v1/gifts",
        Some(&hub.token),
        &new_gift,
        Some("gift-cup"),
    )?;
    assert_eq!(again, (201, gift.clone()));
    let (_, gifts) = hub.get("/api/v1/gifts")?;
    assert_eq!(gifts["gifts"].as_array().map(Vec::len), Some(1), "{gifts}");
    let member = a.ok(
        "/api/v1/members",
        &json!({"name": "吴十", "phone": "13900009999"}),
    )?;
    let id = member["id"].as_str().context("id")?.to_owned();
    a.ok(
        &format!("/api/v1/members/{id}/points-adjustments"),
        &json!({"points": 500, "reason": "活动补积分"}),
    )?;
    wait_until("gift and points everywhere", bounded, || {
        Ok(online(&a)? && online(&b)? && converged(&hub, &[&a, &b])?)
    })?;
    let path = format!("/api/v1/members/{id}/gift-redemptions");
    let (status, refused) = a.post(&path, &json!({"gift_id": gift_id, "qty": 2}))?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("gift_out_of_stock")),
        "{refused}"
    );

    hub.kill9();
    let at_a = a.ok(&path, &json!({"gift_id": gift_id}))?;
    assert_eq!(
        (at_a["points"].as_i64(), at_a["points_balance"].as_i64()),
        (Some(200), Some(300))
    );
    assert_eq!(at_a["stock_left"], 0);
    let (status, gone) = a.post(&path, &json!({"gift_id": gift_id}))?;
    assert_eq!(
        (status, gone["error"]["code"].as_str()),
        (409, Some("gift_out_of_stock"))
    );
    // Store b, apart, still sees one left and gives it too.
    let at_b = b.ok(&path, &json!({"gift_id": gift_id}))?;
    assert_eq!(at_b["stock_left"], 0);

    hub.restart()?;
    wait_until("converged after the hub is back", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    for (api, token) in [
        (&a.api, &a.manager),
        (&b.api, &b.manager),
        (&hub.api, &hub.token),
    ] {
        let (_, gifts) = api.get("/api/v1/gifts", Some(token))?;
        assert_eq!(
            gifts["gifts"][0]["stock_left"], -1,
            "oversold by one, shown everywhere: {gifts}"
        );
        let (_, found) = api.get(&format!("/api/v1/members/{id}"), Some(token))?;
        assert_eq!(found["points"], 100, "{found}");
    }
    let (_, ledger) = hub.get(&format!("/api/v1/members/{id}/ledger"))?;
    let redeemed = ledger["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["kind"] == "points_redeem" && e["rule_version"] == 1)
        .count();
    assert_eq!(redeemed, 2, "{ledger}");
    Ok(())
}

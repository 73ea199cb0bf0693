//! Issue 6 item 1: HQ's catalog (items, bundles, member prices) set at the hub through the CSV
//! import CLI and the API reaches every store; a store cut off from the hub keeps selling
//! catalog items, bundles and member prices; after the link returns the digests are equal.
//! A refused import names its rows and applies nothing; export → import changes nothing.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;
use tests::multi::{Hub, Store, converged, hq_hub_bin, wait_until};
use tests::run_bounded;

const bounded: Duration = Duration::from_secs(60);

fn catalog_cli(hub: &Hub, args: &[&str]) -> Result<tests::Output> {
    let mut command = Command::new(hq_hub_bin()?);
    command
        .arg("catalog")
        .args(args)
        .args(["--hub", hub.api.base(), "--token", &hub.token])
        .env_remove("HQ_HUB_USER")
        .env_remove("HQ_HUB_PASSWORD");
    run_bounded(command, bounded)
}

fn product(store: &Store, sku: &str) -> Result<Option<Value>> {
    let (status, body) = store.get(&format!("/api/v1/products/{sku}"))?;
    match status {
        200 => Ok(Some(body)),
        404 => Ok(None),
        _ => anyhow::bail!("GET product {sku}: {status} {body}"),
    }
}

fn checkout(store: &Store, member: Option<&str>, lines: Value, total_fen: i64) -> Result<Value> {
    store.ok(
        "/api/v1/checkouts",
        &json!({
            "member_id": member,
            "lines": lines,
            "payments": [{"method": "cash", "amount_fen": total_fen}],
        }),
    )
}

const good_file: &str = "sku,barcode,name,category,price,member_price,active,bundle
A1,6901234567892,咖啡,饮料,12.50,11.00,true,
B7,,可颂,烘焙,8,,true,
SET1,6901234567893,早餐套餐,套餐,18.00,16.50,true,A1*1;B7*2
";

#[test]
fn hq_catalog_reaches_stores_and_sells_while_cut_off() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hub = Hub::start(dir.path())?;
    let a = Store::start("ca", dir.path(), &hub.enroll("ca", dir.path())?)?;
    let b = Store::start("cb", dir.path(), &hub.enroll("cb", dir.path())?)?;

    // A file with a bad row: the CLI prints the row's line, field and code; nothing applied.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("{good_file}C9,,坏价格,饮料,12.345,,true,\nC10,,未知组件,套餐,5,,true,ZZ*1\n"),
    )?;
    let refused = catalog_cli(&hub, &["import", &bad.display().to_string()])?;
    assert!(!refused.success, "{refused:?}");
    assert!(
        refused.stderr.contains("line 5: price:") && refused.stderr.contains("(bad_number)"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("line 6: bundle:")
            && refused.stderr.contains("(unknown_component)"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("invalid_rows"),
        "{}",
        refused.stderr
    );
    let (_, listed) = hub.get("/api/v1/catalog")?;
    assert_eq!(listed["total"], 0, "nothing of a refused import: {listed}");

    let good = dir.path().join("good.csv");
    std::fs::write(&good, good_file)?;
    let imported = catalog_cli(&hub, &["import", &good.display().to_string()])?;
    assert!(imported.success, "{imported:?}");
    assert!(
        imported.stdout.contains("imported 3 rows") && imported.stdout.contains("3 created"),
        "{}",
        imported.stdout
    );
    // One item through the API.
    let (status, tea) = hub.api.request(
        "PUT",
        "/api/v1/catalog/TEA",
        Some(&hub.token),
        None,
        Some(&json!({"name": "绿茶", "category": "饮料", "price_fen": 600}).to_string()),
        None,
    )?;
    assert_eq!(status, 200, "{tea}");
    assert_eq!(tea["category"], "饮料");
    let (status, bundles) = hub.get("/api/v1/catalog/bundles")?;
    assert_eq!(
        (status, bundles["total"].as_i64()),
        (200, Some(1)),
        "{bundles}"
    );
    let (status, drinks) = hub.get("/api/v1/catalog?category=%E9%A5%AE%E6%96%99")?;
    assert_eq!(
        (status, drinks["total"].as_i64()),
        (200, Some(2)),
        "{drinks}"
    );

    wait_until("the catalog at both stores", bounded, || {
        Ok(product(&a, "TEA")?.is_some()
            && product(&b, "TEA")?.is_some()
            && converged(&hub, &[&a, &b])?)
    })?;
    let set = product(&a, "SET1")?.context("SET1 at store a")?;
    assert_eq!(
        set["components"],
        json!([{"sku": "A1", "qty": 1}, {"sku": "B7", "qty": 2}]),
        "{set}"
    );
    assert_eq!(set["member_price_fen"], 1_650);
    let (_, scanned) = b.get("/api/v1/products?barcode=6901234567892")?;
    assert_eq!(scanned["products"][0]["sku"], "A1", "{scanned}");
    assert_eq!(scanned["products"].as_array().map(Vec::len), Some(1));

    // The hub goes away: both stores keep selling what they hold.
    hub.kill9();
    let member = a.ok(
        "/api/v1/members",
        &json!({"name": "周八", "phone": "13900006666"}),
    )?;
    let member_id = member["id"].as_str().context("member id")?;
    // A member pays member prices: A1 ¥11.00 ×2 + SET1 ¥16.50 + TEA ¥6.00 (no member price).
    let sold = checkout(
        &a,
        Some(member_id),
        json!([{"sku": "A1", "qty": 2}, {"sku": "SET1", "qty": 1}, {"sku": "TEA", "qty": 1}]),
        2_200 + 1_650 + 600,
    )?;
    assert_eq!(sold["lines"][0]["unit_price_fen"], 1_100, "{sold}");
    assert_eq!(sold["lines"][1]["unit_price_fen"], 1_650, "{sold}");
    assert_eq!(
        sold["lines"][1]["sku"], "SET1",
        "a bundle is one line: {sold}"
    );
    // Someone without a card pays the price.
    let walk_in = checkout(&b, None, json!([{"sku": "SET1", "qty": 2}]), 3_600)?;
    assert_eq!(walk_in["total_fen"], 3_600, "{walk_in}");

    hub.restart()?;
    wait_until("digests equal after the link returns", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    let (_, sales) = hub.get("/api/v1/reports/categories?by=category")?;
    let rows = sales["rows"].as_array().context("rows")?;
    assert!(
        rows.iter()
            .any(|row| row[0] == "套餐" && row[1] == 3 && row[2] == 1_650 + 3_600),
        "the bundles sold show under their category: {sales}"
    );

    // Export, then import the export: nothing changes, nothing is authored.
    let exported = dir.path().join("export.csv");
    let out = catalog_cli(&hub, &["export", "--out", &exported.display().to_string()])?;
    assert!(out.success, "{out:?}");
    let text = std::fs::read_to_string(&exported)?;
    assert!(
        text.contains("SET1,6901234567893,早餐套餐,套餐,18.00,16.50,true,A1*1;B7*2"),
        "{text}"
    );
    let digest = hub.digest()?;
    let again = catalog_cli(&hub, &["import", &exported.display().to_string()])?;
    assert!(again.success, "{again:?}");
    assert!(
        again.stdout.contains("0 created, 0 changed, 4 unchanged"),
        "{}",
        again.stdout
    );
    assert_eq!(hub.digest()?, digest);
    Ok(())
}

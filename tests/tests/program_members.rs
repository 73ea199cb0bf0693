//! Issue 5, member records and local time: feedback entries (反馈) per visit, given at a store
//! that is cut off and converging after sync; the store's time zone (`utc_offset` in
//! store.toml / `STORE_NODE_UTC_OFFSET`) deciding local dates (check-in days) also while the
//! hub is down.

use anyhow::{Context, Result};
use chainsync_core::engagement::{format_date, local_date};
use serde_json::json;
use std::process::Command;
use std::time::Duration;
use tests::multi::{Hub, Store, UdpRelay, converged, point_bundle_at, wait_until};
use tests::{cli_timeout, run_bounded, store_node_bin};

const bounded: Duration = Duration::from_secs(60);

fn now_ms() -> Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64)
}

#[test]
fn feedback_given_at_a_store_cut_off_is_listed_everywhere_after_sync() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let a = Store::start("fa", dir.path(), &hub.enroll("fa", dir.path())?)?;
    let relay = UdpRelay::start(hub.quic)?;
    let bundle_b = hub.enroll("fb", dir.path())?;
    point_bundle_at(&bundle_b, relay.address)?;
    let b = Store::start("fb", dir.path(), &bundle_b)?;
    let member = a.ok(
        "/api/v1/members",
        &json!({"name": "反馈人", "phone": "13900007001"}),
    )?;
    let id = member["id"].as_str().context("id")?.to_owned();
    b.ok(
        "/api/v1/products",
        &json!({"sku": "TEA", "name": "茶", "price_fen": 1_500}),
    )?;
    b.ok(
        "/api/v1/products",
        &json!({"sku": "BOX", "name": "礼盒", "price_fen": 500_000}),
    )?;
    wait_until("b has the member", bounded, || {
        Ok(b.get(&format!("/api/v1/members/{id}"))?.0 == 200)
    })?;

    relay.cut();
    wait_until("b offline", bounded, || {
        Ok(b.sync_status()?["link"] != "online")
    })?;
    let sale = b.ok(
        "/api/v1/checkouts",
        &json!({"member_id": id, "lines": [{"sku": "TEA", "qty": 1}],
                "payments": [{"method": "cash", "amount_fen": 1_500}]}),
    )?;
    let sale_id = sale["id"].as_str().context("sale id")?.to_owned();
    // Tags: a ¥5,000 purchase at the cut-off store makes a big spender (automatic tag, computed
    // from the data); a hand tag set meanwhile at the connected store.
    b.ok(
        "/api/v1/checkouts",
        &json!({"member_id": id, "lines": [{"sku": "BOX", "qty": 1}],
                "payments": [{"method": "cash", "amount_fen": 500_000}]}),
    )?;
    let (status, tagged) = a.api.patch(
        &format!("/api/v1/members/{id}"),
        Some(&a.cashier),
        &json!({"tags": ["vip"]}),
    )?;
    assert_eq!(status, 200, "{tagged}");
    let has_auto = |record: &serde_json::Value, tag: &str| {
        record["auto_tags"]
            .as_array()
            .is_some_and(|tags| tags.iter().any(|t| t == tag))
    };
    let (_, at_a) = a.get(&format!("/api/v1/members/{id}"))?;
    assert!(!has_auto(&at_a, "big_spender"), "a cannot know yet: {at_a}");
    let path = format!("/api/v1/members/{id}/feedback");
    // Bad input changes nothing.
    for (body, code) in [
        (json!({"rating": 6, "text": "x"}), "invalid_field"),
        (json!({"rating": 0}), "invalid_field"),
        (json!({"rating": 3, "text": "a\u{7}"}), "invalid_field"),
        (
            json!({"rating": 3, "checkout_id": "01890a5d-ac96-774b-bcce-b302099a8057"}),
            "unknown_checkout",
        ),
    ] {
        let (status, refused) = b.post(&path, &body)?;
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (422, Some(code)),
            "{body}: {refused}"
        );
    }
    let (status, _) = b.post(&path, &json!({"rating": "five"}))?;
    assert_eq!(status, 400);
    let given = b.ok(
        &path,
        &json!({"rating": 5, "text": "店员很热情", "checkout_id": sale_id}),
    )?;
    assert_eq!(given["store_id"], "fb");
    // A retried POST with the same key writes nothing more.
    for _ in 0..2 {
        let (status, again) = b.api.post(
            &path,
            Some(&b.cashier),
            &json!({"rating": 2, "text": "等太久"}),
            Some("feedback-retry-1"),
        )?;
        assert_eq!(status, 201, "{again}");
    }
    // Meanwhile at store a, connected.
    a.ok(&path, &json!({"rating": 4}))?;
    let (_, at_b) = b.get(&path)?;
    assert_eq!(at_b["feedback"].as_array().map(Vec::len), Some(2), "{at_b}");

    relay.restore();
    let listed = |api: &tests::Api, token: &str| -> Result<usize> {
        let (_, list) = api.get(&path, Some(token))?;
        Ok(list["feedback"].as_array().map(Vec::len).unwrap_or(0))
    };
    wait_until("three entries everywhere", bounded, || {
        Ok(listed(&a.api, &a.manager)? == 3
            && listed(&b.api, &b.manager)? == 3
            && listed(&hub.api, &hub.token)? == 3)
    })?;
    wait_until("digests equal", bounded, || converged(&hub, &[&a, &b]))?;
    // The member's record lists them, newest first, at the other store too.
    let (_, record) = a.get(&format!("/api/v1/members/{id}"))?;
    let feedback = record["feedback"]
        .as_array()
        .context("feedback in record")?;
    assert_eq!(feedback.len(), 3, "{record}");
    assert!(
        feedback.iter().any(|f| f["rating"] == 5
            && f["checkout_id"] == json!(sale_id)
            && f["text"] == "店员很热情"),
        "{record}"
    );
    let (_, at_hub) = hub.get(&format!("/api/v1/members/{id}"))?;
    assert_eq!(at_hub["feedback"], record["feedback"]);
    // Tags converged: the automatic tag recomputed at a from b's purchase, the hand tag at b.
    let (_, at_b) = b.get(&format!("/api/v1/members/{id}"))?;
    assert!(has_auto(&record, "big_spender"), "{record}");
    assert!(has_auto(&at_hub, "big_spender"), "{at_hub}");
    assert_eq!(at_b["auto_tags"], record["auto_tags"]);
    for view in [&record, &at_b, &at_hub] {
        assert_eq!(view["tags"], json!(["vip"]), "{view}");
    }
    Ok(())
}

/// A store set to UTC-12:00 counts its days there: a check-in while the hub is down is for
/// the store's date (not China's, for the 20 hours of each day the two zones' dates differ),
/// and that is what every replica holds after sync. A malformed offset stops `serve` with a clear error.
#[test]
fn the_store_time_zone_decides_local_dates_also_offline() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hub = Hub::start(dir.path())?;
    let mut west = Store::start("tz", dir.path(), &hub.enroll("tz", dir.path())?)?;
    let config = west.dir.join("store.toml");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(&config, format!("{text}utc_offset = \"-12:00\"\n"))?;
    west.restart()?;
    let member = west.ok(
        "/api/v1/members",
        &json!({"name": "西区", "phone": "13900007002"}),
    )?;
    let id = member["id"].as_str().context("id")?.to_owned();
    wait_until("the member at the hub", bounded, || {
        Ok(hub.get(&format!("/api/v1/members/{id}"))?.0 == 200)
    })?;

    hub.kill9();
    let before = now_ms()?;
    let checked = west.ok(&format!("/api/v1/members/{id}/check-ins"), &json!({}))?;
    let after = now_ms()?;
    let date = checked["date"].as_str().context("date")?.to_owned();
    let local = |at: u64, offset: i32| local_date(at, offset).map(format_date);
    assert!(
        [local(before, -43_200), local(after, -43_200)].contains(&Some(date.clone())),
        "{date} is not today at UTC-12"
    );
    // The two dates differ for 20 hours of each day (UTC 16:00 to 12:00 the next day); in the
    // other 4 the zones share a date and this cannot tell them apart.
    if local(before, 8 * 3_600) != local(before, -43_200)
        && local(after, 8 * 3_600) != local(after, -43_200)
    {
        assert_ne!(Some(date.clone()), local(after, 8 * 3_600));
    }

    hub.restart()?;
    wait_until("converged", bounded, || converged(&hub, &[&west]))?;
    let (_, ledger) = hub.get(&format!("/api/v1/members/{id}/ledger"))?;
    let entries = ledger["entries"].as_array().context("entries")?;
    assert!(
        entries
            .iter()
            .any(|e| e["reason"] == json!(format!("check-in {date}"))),
        "{ledger}"
    );

    // A bad offset: serve refuses to start and says why.
    west.kill9();
    let mut serve = Command::new(store_node_bin()?);
    serve
        .args(["serve", "--data-dir"])
        .arg(&west.dir)
        .env("STORE_NODE_UTC_OFFSET", "+25:00");
    let out = run_bounded(serve, cli_timeout)?;
    assert!(!out.success);
    assert!(out.stderr.contains("utc_offset"), "{}", out.stderr);
    Ok(())
}

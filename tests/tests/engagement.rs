//! Engagement over HTTP: daily check-in (points, streak, once a day), birthday greetings in the
//! outbox (once a year), the dormant list, and a check-in at an offline store converging.

use anyhow::{Context, Result};
use chainsync_core::engagement::{default_utc_offset_seconds, format_date, local_date};
use std::time::Duration;
use tests::multi::{Hub, Store, UdpRelay, converged, point_bundle_at, wait_until};
use tests::{StoreNode, error_code, expect_status, int, json, string};

const converge: Duration = Duration::from_secs(60);

struct Today {
    text: String,
    year: i32,
}

/// Today in the store's time zone (UTC+8).
fn today() -> Result<Today> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let date = local_date(now, default_utc_offset_seconds).context("date")?;
    Ok(Today {
        text: format_date(date),
        year: date.year(),
    })
}

#[test]
fn check_in_birthday_and_dormant_over_http() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let today = today()?;
    let birthday = format!("1990{}", &today.text[4..]);
    let created = expect_status(
        node.post(
            "/api/v1/members",
            &json!({"name": "寿星", "phone": "13900000301", "birthday": birthday}),
        )?,
        &[201],
        "register",
    )?;
    let member = string(&created, "id")?;

    let checked = expect_status(
        node.post(&format!("/api/v1/members/{member}/check-ins"), &json!({}))?,
        &[201],
        "check in",
    )?;
    assert_eq!(int(&checked, "streak")?, 1);
    assert_eq!(int(&checked, "points_awarded")?, 10);
    assert_eq!(int(&checked, "points")?, 10);
    assert_eq!(string(&checked, "date")?, today.text);
    let (status, again) = node.post(&format!("/api/v1/members/{member}/check-ins"), &json!({}))?;
    assert_eq!(status, 409);
    assert_eq!(error_code(&again), Some("already_checked_in"));
    let (status, unknown) = node.post(
        "/api/v1/members/01890a5d-ac96-774b-bcce-b302099a8057/check-ins",
        &json!({}),
    )?;
    assert_eq!(status, 404, "{unknown}");
    let ledger = node.ledger(&member)?;
    let entries = ledger["entries"].as_array().context("entries")?;
    assert!(entries.iter().any(|e| e["kind"] == "points_reward"
        && e["reason"] == json!(format!("check-in {}", today.text))));
    assert_eq!(int(&node.member(&member)?, "points")?, 10);

    // Birthday: queued once this year, however often the check runs.
    let (status, _) = node.post("/api/v1/engagement/run", &json!({}))?;
    assert_eq!(status, 403, "managers only");
    for _ in 0..2 {
        let (status, run) = node.api().post(
            "/api/v1/engagement/run",
            Some(&node.manager),
            &json!({}),
            None,
        )?;
        assert_eq!(status, 200, "{run}");
    }
    let (_, pending) = node
        .api()
        .get("/api/v1/outbox?status=pending", Some(&node.manager))?;
    let messages = pending["messages"].as_array().context("messages")?;
    let greetings: Vec<_> = messages
        .iter()
        .filter(|m| m["kind"] == "birthday_greeting")
        .collect();
    assert_eq!(greetings.len(), 1, "{pending}");
    assert_eq!(
        greetings[0]["id"],
        json!(format!("birthday:{member}:{}", today.year))
    );
    assert!(messages.iter().any(|m| m["kind"] == "check_in"));

    // Dormant: nobody has bought anything; with days=0 the member is listed, with 30 not.
    let (status, listed) = node.get("/api/v1/members/dormant?days=0")?;
    assert_eq!(status, 200, "{listed}");
    assert!(
        listed["members"]
            .as_array()
            .context("members")?
            .iter()
            .any(|m| m["id"] == json!(member))
    );
    let (_, listed) = node.get("/api/v1/members/dormant?days=30")?;
    assert_eq!(listed["members"], json!([]));
    let (status, bad) = node.get("/api/v1/members/dormant?days=99999")?;
    assert_eq!(status, 422);
    assert_eq!(error_code(&bad), Some("invalid_field"));

    // Automatic tags: none for a new member; a ¥5,000 purchase makes a big spender.
    assert_eq!(node.member(&member)?["auto_tags"], json!([]));
    node.add_product("BIG", "礼盒", 500_000)?;
    node.checkout(&json!({
        "member_id": member,
        "lines": [{"sku": "BIG", "qty": 1}],
        "payments": [{"method": "cash", "amount_fen": 500_000}],
    }))?;
    assert_eq!(node.member(&member)?["auto_tags"], json!(["big_spender"]));
    Ok(())
}

#[test]
fn check_ins_at_stores_apart_are_both_kept_and_converge() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let a = Store::start("ea", dir.path(), &hub.enroll("ea", dir.path())?)?;
    let relay = UdpRelay::start(hub.quic)?;
    let bundle_b = hub.enroll("eb", dir.path())?;
    point_bundle_at(&bundle_b, relay.address)?;
    let b = Store::start("eb", dir.path(), &bundle_b)?;
    let created = a.ok(
        "/api/v1/members",
        &json!({"name": "常客", "phone": "13900000302"}),
    )?;
    let member = created["id"].as_str().context("id")?.to_owned();
    wait_until("B has the member", converge, || {
        Ok(b.get(&format!("/api/v1/members/{member}"))?.0 == 200)
    })?;

    relay.cut();
    wait_until("B offline", converge, || {
        Ok(b.sync_status()?["link"] != "online")
    })?;
    let at_b = b.ok(&format!("/api/v1/members/{member}/check-ins"), &json!({}))?;
    assert_eq!(at_b["streak"], 1);
    // The same day at A while B cannot tell it: accepted too (best effort, documented).
    let at_a = a.ok(&format!("/api/v1/members/{member}/check-ins"), &json!({}))?;
    assert_eq!(at_a["streak"], 1);

    relay.restore();
    // (The digest counts and sums ledger entries, so two check-ins of equal amount look
    // converged before they are exchanged: wait for B's link and both entries first.)
    let points = |store: &Store| -> Result<i64> {
        Ok(store.get(&format!("/api/v1/members/{member}"))?.1["points"]
            .as_i64()
            .unwrap_or(0))
    };
    wait_until("B online, both check-ins everywhere", converge, || {
        Ok(b.sync_status()?["link"] == "online" && points(&a)? == 20 && points(&b)? == 20)
    })?;
    wait_until("all digests equal", converge, || converged(&hub, &[&a, &b]))?;
    for store in [&a, &b] {
        let (status, again) =
            store.post(&format!("/api/v1/members/{member}/check-ins"), &json!({}))?;
        assert_eq!(status, 409, "{again}");
    }
    Ok(())
}

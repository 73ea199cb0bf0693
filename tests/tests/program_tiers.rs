//! Issue 5 item 1, tiers: thresholds on points earned, automatic upgrade (also at a store cut
//! off from the hub) and the `period_end` downgrade, over HTTP with real binaries. One cluster
//! for every check: the hub, store `ta` behind a cuttable relay, store `tb`; all follow one test
//! clock (`CHAINSYNC_TEST_CLOCK_FILE`), so the cluster lives through two period boundaries in
//! a few seconds.

use anyhow::{Context, Result};
use chainsync_core::tiers::TierPeriod;
use serde_json::{Value, json};
use std::time::Duration;
use tests::multi::{Hub, Store, TestClock, UdpRelay, converged, point_bundle_at, wait_until};

const bounded: Duration = Duration::from_secs(60);
const day_ms: u64 = 86_400_000;

/// Three tiers on points earned over the rolling 12 months, kept until the end of the calendar
/// year (at +08:00). The spend thresholds are far above what the member spends: a store that
/// used spend would keep the member in 普通.
fn points_rules() -> Value {
    json!({
        "tiers": [
            {"name": "普通", "spend_threshold_fen": 0, "discount_bp": 0,
             "points_multiplier_pct": 100, "points_threshold": 0},
            {"name": "银卡", "spend_threshold_fen": 100_000, "discount_bp": 1_000,
             "points_multiplier_pct": 200, "points_threshold": 100},
            {"name": "金卡", "spend_threshold_fen": 1_000_000, "discount_bp": 2_000,
             "points_multiplier_pct": 300, "points_threshold": 10_000}
        ],
        "tier_metric": "points",
        "tier_downgrade": "period_end",
        "tier_period": {"months": 12, "utc_offset": "+08:00"},
        "recharge_bonus": [],
        "points_per_yuan": 1,
        "point_value_fen": 1,
        "prepaid_cap_fen": 500_000
    })
}

fn wall_ms() -> Result<u64> {
    Ok(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64)
}

/// Move the cluster's clock (forward) so that it reads `at_ms` now.
fn move_to(clock: &TestClock, at_ms: u64) -> Result<()> {
    let offset = i64::try_from(at_ms)? - i64::try_from(wall_ms()?)?;
    clock.set_offset_ms(offset)
}

/// The member's tier as the hub and both stores show it, and the hub's tier report.
fn tiers_everywhere(hub: &Hub, stores: &[&Store], id: &str) -> Result<Vec<String>> {
    let path = format!("/api/v1/members/{id}");
    let mut tiers = Vec::new();
    let (status, at_hub) = hub.get(&path)?;
    anyhow::ensure!(status == 200, "hub member: {status} {at_hub}");
    tiers.push(at_hub["tier"].as_str().context("tier")?.to_owned());
    for store in stores {
        let (status, member) = store.get(&path)?;
        anyhow::ensure!(status == 200, "member: {status} {member}");
        tiers.push(member["tier"].as_str().context("tier")?.to_owned());
    }
    Ok(tiers)
}

/// The hub's tier report as of the end of the cluster's today: (tier, members) rows.
fn tier_report(hub: &Hub) -> Result<Vec<(String, i64)>> {
    let (status, report) = hub.get("/api/v1/reports/tiers")?;
    anyhow::ensure!(status == 200, "tiers report: {status} {report}");
    report["rows"]
        .as_array()
        .context("rows")?
        .iter()
        .map(|row| {
            Ok((
                row[0].as_str().context("tier")?.to_owned(),
                row[1].as_i64().context("members")?,
            ))
        })
        .collect()
}

#[test]
fn points_tiers_upgrade_offline_and_downgrade_at_the_period_end_everywhere() -> Result<()> {
    // The purchases happen on a mid-June day of a coming year (so no period boundary is near
    // them), then the clock goes to the next July and to the second January after them.
    let year = TierPeriod::default();
    let next_year = year.start_ms(wall_ms()? + 400 * day_ms);
    let purchases_at = next_year + 165 * day_ms + 4 * 3_600_000;
    let following_year = year.start_ms(purchases_at + 365 * day_ms);
    let second_year = year.start_ms(following_year + 400 * day_ms);
    assert!(following_year > purchases_at && second_year > following_year + 360 * day_ms);

    let dir = tempfile::tempdir()?;
    let clock = TestClock::new(dir.path())?;
    move_to(&clock, purchases_at)?;
    let hub = Hub::start_with_env(dir.path(), &clock.env())?;
    let relay = UdpRelay::start(hub.quic)?;
    let bundle_a = hub.enroll("ta", dir.path())?;
    point_bundle_at(&bundle_a, relay.address)?;
    let a = Store::start_with_env("ta", dir.path(), &bundle_a, &clock.env())?;
    let b = Store::start_with_env(
        "tb",
        dir.path(),
        &hub.enroll("tb", dir.path())?,
        &clock.env(),
    )?;

    // Bad tier settings change nothing (422 invalid_rules).
    for change in [
        json!({"tier_metric": "visits"}),
        json!({"tier_downgrade": "weekly"}),
        json!({"tier_period": {"months": 5}}),
        json!({"tier_period": {"months": 12, "utc_offset": "+15:00"}}),
    ] {
        let mut bad = points_rules();
        for (field, value) in change.as_object().context("change")? {
            bad[field] = value.clone();
        }
        let (status, refused) = hub.put("/api/v1/rules", &bad)?;
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (422, Some("invalid_rules")),
            "{change}: {refused}"
        );
    }
    let mut unsorted = points_rules();
    unsorted["tiers"][2]["points_threshold"] = json!(100);
    let (status, refused) = hub.put("/api/v1/rules", &unsorted)?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("invalid_rules"))
    );
    assert_eq!(hub.get("/api/v1/rules")?.1["version"], 1, "nothing changed");

    let (status, set) = hub.put("/api/v1/rules", &points_rules())?;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        (
            &set["tier_metric"],
            &set["tier_downgrade"],
            &set["tier_period"]
        ),
        (
            &json!("points"),
            &json!("period_end"),
            &json!({"months": 12, "utc_offset": "+08:00"})
        )
    );
    let (status, item) = hub.api.request(
        "PUT",
        "/api/v1/catalog/TEA",
        Some(&hub.token),
        None,
        Some(&json!({"name": "茶", "price_fen": 1_000}).to_string()),
        None,
    )?;
    assert_eq!(status, 200, "{item}");
    let member = a.ok(
        "/api/v1/members",
        &json!({"name": "升级达人", "phone": "13900007101"}),
    )?;
    let id = member["id"].as_str().context("id")?.to_owned();
    wait_until("rules, catalog and member at both stores", bounded, || {
        Ok(a.get("/api/v1/rules")?.1["version"] == 2
            && b.get("/api/v1/rules")?.1["version"] == 2
            && converged(&hub, &[&a, &b])?)
    })?;
    assert_eq!(tiers_everywhere(&hub, &[&a, &b], &id)?, ["普通"; 3]);

    // Store ta is cut off. The checkout that crosses 100 points is priced in the tier the
    // member was in (普通: no discount, points ×1); the next one in the new tier (银卡: 10 %
    // off, points ×2), offline.
    relay.cut();
    wait_until("ta offline", bounded, || {
        Ok(a.sync_status()?["link"] != "online")
    })?;
    let checkout = |qty: i64, paid: i64| {
        a.ok(
            "/api/v1/checkouts",
            &json!({"member_id": id, "lines": [{"sku": "TEA", "qty": qty}],
                    "payments": [{"method": "cash", "amount_fen": paid}]}),
        )
    };
    let crossing = checkout(12, 12_000)?;
    assert_eq!(
        (
            crossing["tier"].as_str(),
            crossing["discount_fen"].as_i64(),
            crossing["points_earned"].as_i64()
        ),
        (Some("普通"), Some(0), Some(120)),
        "{crossing}"
    );
    let next = checkout(10, 9_000)?;
    assert_eq!(
        (
            next["tier"].as_str(),
            next["discount_fen"].as_i64(),
            next["total_fen"].as_i64(),
            next["points_earned"].as_i64()
        ),
        (Some("银卡"), Some(1_000), Some(9_000), Some(180)),
        "¥100 at 10 % off, ¥90 × 1 point × 2: {next}"
    );
    // Redeeming points does not cost the tier: 200 of the 300 points pay ¥2.
    let paid_with_points = a.ok(
        "/api/v1/checkouts",
        &json!({"member_id": id, "lines": [{"sku": "TEA", "qty": 1}],
                "payments": [{"method": "points", "amount_fen": 200},
                             {"method": "cash", "amount_fen": 700}]}),
    )?;
    assert_eq!(paid_with_points["tier"], "银卡", "{paid_with_points}");
    assert_eq!(paid_with_points["points"], 100 + 14, "{paid_with_points}");
    // The other store does not hold these entries yet: for it the member is still 普通.
    let (_, at_a) = a.get(&format!("/api/v1/members/{id}"))?;
    let (_, at_b) = b.get(&format!("/api/v1/members/{id}"))?;
    assert_eq!(
        (at_a["tier"].as_str(), at_b["tier"].as_str()),
        (Some("银卡"), Some("普通"))
    );

    // The link returns: the hub, the other store and the member's record agree, digests too.
    relay.restore();
    wait_until("converged after the link returns", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    assert_eq!(tiers_everywhere(&hub, &[&a, &b], &id)?, ["银卡"; 3]);
    assert_eq!(tier_report(&hub)?, [("银卡".to_owned(), 1)]);

    // Next July: the purchases left the rolling 12 months (spend over them is 0), but at the
    // period boundary (January 1) they were inside: the tier is kept until the year ends.
    move_to(&clock, following_year + 200 * day_ms)?;
    assert_eq!(tiers_everywhere(&hub, &[&a, &b], &id)?, ["银卡"; 3]);
    let (_, record) = b.get(&format!("/api/v1/members/{id}"))?;
    assert_eq!(record["spend_12m_fen"], 0, "{record}");
    assert_eq!(tier_report(&hub)?, [("银卡".to_owned(), 1)]);

    // The second January: re-evaluated at the boundary on the metric then (no points earned
    // in the year before it), the member is 普通 at every node, and in the hub's report.
    move_to(&clock, second_year + day_ms)?;
    assert_eq!(tiers_everywhere(&hub, &[&a, &b], &id)?, ["普通"; 3]);
    assert_eq!(tier_report(&hub)?, [("普通".to_owned(), 1)]);
    assert!(converged(&hub, &[&a, &b])?, "digests still equal");
    Ok(())
}

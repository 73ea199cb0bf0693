//! Issue 5 engagement across stores, over HTTP with real binaries: the check-in streak reward
//! reached day by day (the cluster follows one test clock, `CHAINSYNC_TEST_CLOCK_FILE`), with
//! the 7th day at a store cut off from the hub, converging after sync.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;
use tests::multi::{Hub, Store, TestClock, UdpRelay, converged, point_bundle_at, wait_until};

const bounded: Duration = Duration::from_secs(60);
const day_ms: i64 = 86_400_000;

fn points(api: &tests::Api, token: &str, member: &str) -> Result<i64> {
    let (status, body) = api.get(&format!("/api/v1/members/{member}"), Some(token))?;
    anyhow::ensure!(status == 200, "member: {status} {body}");
    body["points"].as_i64().context("points")
}

fn ledger_reasons(api: &tests::Api, token: &str, member: &str) -> Result<Vec<String>> {
    let (_, body) = api.get(&format!("/api/v1/members/{member}/ledger"), Some(token))?;
    Ok(body["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["reason"].as_str().map(str::to_owned))
        .collect())
}

/// Seven check-ins on seven days in a row earn the streak reward (100 points) on the 7th, also
/// at a store that is cut off from the hub for days 4 to 7; after sync the hub and the other
/// store hold the same points and entries, and the streak is chain-wide (day 8 at the other
/// store continues it).
#[test]
fn the_check_in_streak_reward_is_reached_day_by_day_also_offline() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = TestClock::new(dir.path())?;
    let hub = Hub::start_with_env(dir.path(), &clock.env())?;
    let relay = UdpRelay::start(hub.quic)?;
    let bundle_a = hub.enroll("sa", dir.path())?;
    point_bundle_at(&bundle_a, relay.address)?;
    let a = Store::start_with_env("sa", dir.path(), &bundle_a, &clock.env())?;
    let b = Store::start_with_env(
        "sb",
        dir.path(),
        &hub.enroll("sb", dir.path())?,
        &clock.env(),
    )?;
    let member = a.ok(
        "/api/v1/members",
        &json!({"name": "签到达人", "phone": "13900008101"}),
    )?;
    let id = member["id"].as_str().context("id")?.to_owned();
    wait_until("b has the member", bounded, || {
        Ok(b.get(&format!("/api/v1/members/{id}"))?.0 == 200)
    })?;
    let check_in = |store: &Store| -> Result<Value> {
        store.ok(&format!("/api/v1/members/{id}/check-ins"), &json!({}))
    };

    let mut dates = Vec::new();
    for day in 0..7i64 {
        clock.set_offset_ms(day * day_ms)?;
        if day == 3 {
            relay.cut();
            wait_until("a offline", bounded, || {
                Ok(a.sync_status()?["link"] != "online")
            })?;
        }
        let checked = check_in(&a)?;
        assert_eq!(checked["streak"], json!(day + 1), "{checked}");
        let reward = if day == 6 { 100 } else { 0 };
        assert_eq!(checked["streak_reward_points"], json!(reward), "{checked}");
        assert_eq!(
            checked["points"],
            json!(10 * (day + 1) + reward),
            "{checked}"
        );
        dates.push(checked["date"].as_str().context("date")?.to_owned());
        // Once a day only.
        let (status, again) = a.post(&format!("/api/v1/members/{id}/check-ins"), &json!({}))?;
        assert_eq!(status, 409, "{again}");
    }
    // Consecutive local dates, one per day.
    let unique: std::collections::BTreeSet<&String> = dates.iter().collect();
    assert_eq!(unique.len(), 7, "{dates:?}");
    // Cut off, the other store still has only the first three days.
    assert_eq!(points(&b.api, &b.manager, &id)?, 30);

    relay.restore();
    wait_until("converged", bounded, || converged(&hub, &[&a, &b]))?;
    for (api, token) in [(&hub.api, &hub.token), (&b.api, &b.manager)] {
        assert_eq!(points(api, token, &id)?, 170);
        let reasons = ledger_reasons(api, token, &id)?;
        assert!(
            reasons.contains(&format!("check-in streak 7 {}", dates[6])),
            "{reasons:?}"
        );
    }
    // Day 8 at the other store continues the chain-wide streak (no reward on the 8th).
    clock.set_offset_ms(7 * day_ms)?;
    let eighth = check_in(&b)?;
    assert_eq!(eighth["streak"], 8, "{eighth}");
    assert_eq!(eighth["streak_reward_points"], 0);
    assert_eq!(eighth["points"], 180);
    wait_until("converged again", bounded, || converged(&hub, &[&a, &b]))?;
    assert_eq!(points(&a.api, &a.manager, &id)?, 180);
    Ok(())
}

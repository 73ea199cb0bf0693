//! Issue 5 engagement across stores, over HTTP with real binaries: the check-in streak reward
//! reached day by day (the cluster follows one test clock, `CHAINSYNC_TEST_CLOCK_FILE`), with
//! the 7th day at a store cut off from the hub; referral rewards (老带新) exactly once when the
//! referee's first purchases happen at two stores apart (also for a referee registered twice);
//! all converging after sync.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;
use tests::multi::{
    Hub, Store, TestClock, UdpRelay, balances_match_ledgers, converged, point_bundle_at, wait_until,
};

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

fn hub_put_rules(hub: &Hub, rules: &Value) -> Result<(u16, Value)> {
    hub.api.request(
        "PUT",
        "/api/v1/rules",
        Some(&hub.token),
        None,
        Some(&rules.to_string()),
        None,
    )
}

fn rules_version(store: &Store) -> Result<i64> {
    let (_, rules) = store.get("/api/v1/rules")?;
    rules["version"].as_i64().context("rules version")
}

fn member_record(api: &tests::Api, token: &str, member: &str) -> Result<Value> {
    let (status, body) = api.get(&format!("/api/v1/members/{member}"), Some(token))?;
    anyhow::ensure!(status == 200, "member {member}: {status} {body}");
    Ok(body)
}

fn referral_entries(api: &tests::Api, token: &str, member: &str) -> Result<usize> {
    Ok(ledger_reasons(api, token, member)?
        .iter()
        .filter(|r| r.starts_with("referral reward"))
        .count())
}

/// A referee whose first purchases happen at two stores at once, one of them cut off from the
/// hub, earns the referral reward once (both stores write entries with the same derived ids;
/// the ledger keeps one of each), and so does a referee registered at both stores while apart
/// (merged by phone). Unknown referrers are refused with nothing written; the records show who
/// referred whom, rewarded or pending, at every replica.
#[test]
fn referral_rewards_are_given_once_after_the_first_purchase_also_at_stores_apart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let a = Store::start("ra", dir.path(), &hub.enroll("ra", dir.path())?)?;
    let relay = UdpRelay::start(hub.quic)?;
    let bundle_b = hub.enroll("rb", dir.path())?;
    point_bundle_at(&bundle_b, relay.address)?;
    let b = Store::start("rb", dir.path(), &bundle_b)?;
    let id_of = |v: &Value| -> Result<String> { Ok(v["id"].as_str().context("id")?.to_owned()) };
    // HQ's rules: 200 points each and ¥10 bonus stored value for the referee (out of bounds
    // refused).
    let (_, mut rules) = hub.get("/api/v1/rules")?;
    rules["referral"] = json!({"referrer_points": -1, "referee_points": 200,
        "referrer_stored_value_fen": 0, "referee_stored_value_fen": 1_000});
    let (status, refused) = hub_put_rules(&hub, &rules)?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("invalid_rules")),
        "{refused}"
    );
    rules["referral"]["referrer_points"] = json!(200);
    let (status, set) = hub_put_rules(&hub, &rules)?;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["referral"]["referee_stored_value_fen"], 1_000, "{set}");
    wait_until("the rules at both stores", bounded, || {
        Ok(rules_version(&a)? == 2 && rules_version(&b)? == 2)
    })?;

    let referrer = a.ok(
        "/api/v1/members",
        &json!({"name": "老会员", "phone": "13900008201"}),
    )?;
    let r = id_of(&referrer)?;
    let card_no = referrer["card_no"].as_str().context("card_no")?.to_owned();
    // Unknown referrers: 422, and nothing is written (the phone is still free).
    for unknown in [
        "13900008299",
        "nobody",
        "01890a5d-ac96-774b-bcce-b302099a8057",
    ] {
        let (status, body) = a.post(
            "/api/v1/members",
            &json!({"name": "新人", "phone": "13900008202", "referrer": unknown}),
        )?;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (422, Some("unknown_referrer")),
            "{unknown}: {body}"
        );
    }
    let (_, found) = a.get("/api/v1/members?phone=13900008202")?;
    assert_eq!(
        found["members"].as_array().map(Vec::len),
        Some(0),
        "{found}"
    );
    // Referred by card number, by phone, by id.
    let e = id_of(&a.ok(
        "/api/v1/members",
        &json!({"name": "新人", "phone": "13900008202", "referrer": card_no}),
    )?)?;
    let f = id_of(&a.ok(
        "/api/v1/members",
        &json!({"name": "观望", "phone": "13900008203", "referrer": "139 0000 8201"}),
    )?)?;
    a.ok(
        "/api/v1/products",
        &json!({"sku": "TEA", "name": "茶", "price_fen": 1_500}),
    )?;
    wait_until("b has the members and the product", bounded, || {
        Ok(b.get(&format!("/api/v1/members/{f}"))?.0 == 200
            && b.get("/api/v1/products/TEA")?.0 == 200)
    })?;
    let pending = member_record(&b.api, &b.manager, &e)?;
    assert_eq!(pending["referred_by"]["referrer_id"], json!(r), "{pending}");
    assert_eq!(pending["referred_by"]["status"], "pending", "{pending}");

    relay.cut();
    wait_until("b offline", bounded, || {
        Ok(b.sync_status()?["link"] != "online")
    })?;
    let buy = |store: &Store, member: &str| -> Result<Value> {
        store.ok(
            "/api/v1/checkouts",
            &json!({"member_id": member, "lines": [{"sku": "TEA", "qty": 1}],
                    "payments": [{"method": "cash", "amount_fen": 1_500}]}),
        )
    };
    // The referee's first purchase at both stores at once.
    let at_a = buy(&a, &e)?;
    let at_b = buy(&b, &e)?;
    assert_eq!(at_a["points"], 215, "{at_a}");
    assert_eq!(at_b["points"], 215, "{at_b}");
    assert_eq!(referral_entries(&a.api, &a.manager, &r)?, 1);
    assert_eq!(referral_entries(&b.api, &b.manager, &r)?, 1);
    assert_eq!(at_b["balance_fen"], 1_000, "{at_b}");
    // The same person registered at both stores while apart, each naming the referrer.
    let p_a = id_of(&a.ok(
        "/api/v1/members",
        &json!({"name": "双开", "phone": "13900008204", "referrer": r}),
    )?)?;
    let p_b = id_of(&b.ok(
        "/api/v1/members",
        &json!({"name": "双开", "phone": "13900008204", "referrer": r}),
    )?)?;
    buy(&a, &p_a)?;
    buy(&b, &p_b)?;

    relay.restore();
    wait_until("converged", bounded, || converged(&hub, &[&a, &b]))?;
    let p = std::cmp::min(p_a, p_b);
    for (name, api, token) in [
        ("hub", &hub.api, &hub.token),
        ("a", &a.api, &a.manager),
        ("b", &b.api, &b.manager),
    ] {
        // Two referees rewarded, 200 points each for the referrer; one reward per referee.
        assert_eq!(points(api, token, &r)?, 400, "{name}");
        assert_eq!(referral_entries(api, token, &r)?, 2, "{name}");
        assert_eq!(points(api, token, &e)?, 230, "{name}");
        assert_eq!(
            referral_entries(api, token, &e)?,
            2,
            "{name}: points and bonus"
        );
        let record = member_record(api, token, &e)?;
        assert_eq!(record["bonus_fen"], 1_000, "{name} {record}");
        assert_eq!(points(api, token, &p)?, 230, "{name}");
        assert_eq!(referral_entries(api, token, &p)?, 2, "{name}");
        balances_match_ledgers(api, token)?;
        let record = member_record(api, token, &e)?;
        assert_eq!(
            record["referred_by"]["referrer_id"],
            json!(r),
            "{name} {record}"
        );
        assert_eq!(
            record["referred_by"]["status"], "rewarded",
            "{name} {record}"
        );
        let record = member_record(api, token, &r)?;
        let referrals = record["referrals"].as_array().context("referrals")?;
        let status_of = |id: &str| {
            referrals
                .iter()
                .find(|x| x["referee_id"] == json!(id))
                .map(|x| x["status"].clone())
        };
        assert_eq!(referrals.len(), 3, "{name} {record}");
        assert_eq!(status_of(&e), Some(json!("rewarded")), "{name}");
        assert_eq!(status_of(&p), Some(json!("rewarded")), "{name}");
        assert_eq!(status_of(&f), Some(json!("pending")), "{name}");
    }
    // A second purchase rewards nothing more.
    let again = buy(&b, &e)?;
    assert_eq!(again["points"], 245, "{again}");
    wait_until("converged again", bounded, || converged(&hub, &[&a, &b]))?;
    assert_eq!(points(&hub.api, &hub.token, &r)?, 400);
    Ok(())
}

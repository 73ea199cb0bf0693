//! Issue 5 engagement across stores, over HTTP with real binaries: the check-in streak reward
//! reached day by day (the cluster follows one test clock, `CHAINSYNC_TEST_CLOCK_FILE`), with
//! the 7th day at a store cut off from the hub; referral rewards (老带新) exactly once when the
//! referee's first purchases happen at two stores apart (also for a referee registered twice);
//! points expiry applied at a store cut off and at a connected one, revised when an earlier
//! spend arrives late, with its reminder delivered once across a `kill -9`; all converging
//! after sync.

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
    let (status, refused) = hub.put("/api/v1/rules", &rules)?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("invalid_rules")),
        "{refused}"
    );
    rules["referral"]["referrer_points"] = json!(200);
    let (status, set) = hub.put("/api/v1/rules", &rules)?;
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

fn expiry_entries(api: &tests::Api, token: &str, member: &str) -> Result<Vec<Value>> {
    let (status, ledger) = api.get(&format!("/api/v1/members/{member}/ledger"), Some(token))?;
    anyhow::ensure!(status == 200, "ledger: {status} {ledger}");
    Ok(ledger["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["kind"] == "points_expire")
        .cloned()
        .collect())
}

/// Points expiry with HQ's policy (points of a year expire at its end, China time; reminders
/// 40 days before), one cluster: hub, store A behind a cuttable relay, store B.
/// - The reminder is queued at both stores (same message id), also after a `kill -9` of B and
///   the daily job run again at its restart and by hand: the deduplicating receiver gets it
///   exactly once, naming the points and the last day.
/// - A, cut off, spends 30 points before the deadline; past it, A (cut off) and then B
///   (connected, not knowing that spend) both expire: B too much. When the link returns, B
///   learns of A's earlier spend and revises the expiry (same id, written later): every node
///   ends with one `points_expire` entry of what A really had left, 0 points, equal digests.
#[test]
fn points_expire_once_at_stores_apart_and_a_late_earlier_spend_revises_the_amount() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let clock = TestClock::new(dir.path())?;
    let hook = tests::webhook::Webhook::start()?;
    let mut env = clock.env();
    env.push(("STORE_NODE_WEBHOOK_URL".to_owned(), hook.url().to_owned()));
    let hub = Hub::start_with_env(dir.path(), &clock.env())?;
    let relay = UdpRelay::start(hub.quic)?;
    let bundle_a = hub.enroll("xa", dir.path())?;
    point_bundle_at(&bundle_a, relay.address)?;
    let a = Store::start_with_env("xa", dir.path(), &bundle_a, &env)?;
    let mut b = Store::start_with_env("xb", dir.path(), &hub.enroll("xb", dir.path())?, &env)?;

    let (_, mut rules) = hub.get("/api/v1/rules")?;
    rules["points_expiry"] = json!({"years_kept": 11});
    let (status, refused) = hub.put("/api/v1/rules", &rules)?;
    assert_eq!(status, 422, "{refused}");
    rules["points_expiry"] =
        json!({"years_kept": 0, "utc_offset": "+08:00", "remind_days_before": 40});
    let (status, set) = hub.put("/api/v1/rules", &rules)?;
    assert_eq!(status, 200, "{set}");
    wait_until("the rules at both stores", bounded, || {
        Ok(rules_version(&a)? == 2 && rules_version(&b)? == 2)
    })?;
    // The deadline of this year's points: 1 January next year, 00:00 China time.
    let policy = chainsync_core::points_expiry::PointsExpiryPolicy {
        years_kept: 0,
        utc_offset_seconds: 8 * 3_600,
        remind_days_before: 40,
    };
    let start = clock.now_ms()? as i64;
    let year = policy.year_of(start as u64).context("year")?;
    let deadline = policy.deadline_ms(year).context("deadline")? as i64;
    // Test time `at` (Unix ms) from now on.
    let set_time = |at: i64| clock.set_offset_ms((at - start).max(0));
    set_time(deadline - 20 * day_ms)?;

    let member = a.ok(
        "/api/v1/members",
        &json!({"name": "积分", "phone": "13900008301"}),
    )?;
    let id = member["id"].as_str().context("id")?.to_owned();
    a.ok(
        "/api/v1/products",
        &json!({"sku": "CAKE", "name": "蛋糕", "price_fen": 10_000}),
    )?;
    a.ok(
        "/api/v1/products",
        &json!({"sku": "CANDY", "name": "糖", "price_fen": 30}),
    )?;
    a.ok(
        "/api/v1/checkouts",
        &json!({"member_id": id, "lines": [{"sku": "CAKE", "qty": 1}],
                "payments": [{"method": "cash", "amount_fen": 10_000}]}),
    )?;
    let held = points(&a.api, &a.manager, &id)?;
    assert!(held > 30, "the checkout earned points: {held}");
    wait_until("b has the points", bounded, || {
        Ok(b.get(&format!("/api/v1/members/{id}"))?.0 == 200
            && points(&b.api, &b.manager, &id)? == held)
    })?;

    // Reminders: queued at both stores (one id), twice each, delivered once per id.
    for store in [&a, &b, &a, &b] {
        store.ok("/api/v1/engagement/run", &json!({}))?;
    }
    let reminder_id = format!("points_expiry_reminder:{id}:{year}");
    wait_until("the reminder delivered", bounded, || {
        Ok(hook.distinct().contains_key(&reminder_id))
    })?;
    // kill -9 B, restart it (its daily job runs at start) and run the job again by hand.
    b.kill9();
    b.restart()?;
    let rerun = b.ok("/api/v1/engagement/run", &json!({}))?;
    assert_eq!(rerun["points_expiry_reminders"], 0, "{rerun}");
    wait_until("b's outbox drained", bounded, || {
        let (_, pending) = b.get("/api/v1/outbox?status=pending&limit=500")?;
        Ok(pending["messages"].as_array().is_some_and(|m| m.is_empty()))
    })?;
    let (_, delivered) = b.get("/api/v1/outbox?status=delivered&limit=500")?;
    let at_b: Vec<&Value> = delivered["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter(|m| m["kind"] == "points_expiry_reminder")
        .collect();
    assert_eq!(at_b.len(), 1, "{delivered}");
    assert_eq!(at_b[0]["id"], reminder_id.as_str());
    let reminders: Vec<String> = hook
        .distinct()
        .into_keys()
        .filter(|k| k.starts_with("points_expiry_reminder:"))
        .collect();
    assert_eq!(reminders, vec![reminder_id.clone()]);
    let message = &hook.distinct()[&reminder_id];
    assert_eq!(message["kind"], "points_expiry_reminder", "{message}");
    assert_eq!(message["data"]["points"], held, "{message}");
    assert_eq!(message["data"]["expires_at_ms"], deadline, "{message}");
    assert_eq!(
        message["data"]["last_day"],
        format!("{year}-12-31"),
        "{message}"
    );

    // A cut off spends 30 points an hour before the deadline.
    relay.cut();
    wait_until("a offline", bounded, || {
        Ok(a.sync_status()?["link"] != "online")
    })?;
    set_time(deadline - 3_600_000)?;
    a.ok(
        "/api/v1/checkouts",
        &json!({"member_id": id, "lines": [{"sku": "CANDY", "qty": 1}],
                "payments": [{"method": "points", "amount_fen": 30}]}),
    )?;
    let left = points(&a.api, &a.manager, &id)?;
    assert_eq!(left, held - 30);

    // Past the deadline: A (cut off) expires what it knows is left, then B (connected) what
    // it knows: too much, written later.
    set_time(deadline + 3_600_000)?;
    for (store, expected) in [(&a, left), (&b, held)] {
        let run = store.ok("/api/v1/engagement/run", &json!({}))?;
        assert_eq!(run["points_expired_entries"], 1, "{} {run}", store.id);
        assert_eq!(points(&store.api, &store.manager, &id)?, 0, "{}", store.id);
        let entries = expiry_entries(&store.api, &store.manager, &id)?;
        assert_eq!(entries.len(), 1, "{} {entries:?}", store.id);
        assert_eq!(entries[0]["amount"], -expected, "{}", store.id);
        let again = store.ok("/api/v1/engagement/run", &json!({}))?;
        assert_eq!(again["points_expired_entries"], 0, "{again}");
        assert_eq!(again["points_expiry_revisions"], 0, "{again}");
    }

    // The link returns: B learns of the earlier spend and revises its expiry.
    relay.restore();
    wait_until("converged", bounded, || converged(&hub, &[&a, &b]))?;
    for (name, api, token) in [
        ("hub", &hub.api, &hub.token),
        ("a", &a.api, &a.manager),
        ("b", &b.api, &b.manager),
    ] {
        assert_eq!(points(api, token, &id)?, 0, "{name}");
        let entries = expiry_entries(api, token, &id)?;
        assert_eq!(entries.len(), 1, "{name} {entries:?}");
        assert_eq!(entries[0]["amount"], -left, "{name} {entries:?}");
        balances_match_ledgers(api, token)?;
    }
    // Nothing more to do anywhere.
    for store in [&a, &b] {
        let run = store.ok("/api/v1/engagement/run", &json!({}))?;
        assert_eq!(run["points_expired_entries"], 0, "{run}");
        assert_eq!(run["points_expiry_revisions"], 0, "{run}");
    }
    assert!(converged(&hub, &[&a, &b])?);
    Ok(())
}

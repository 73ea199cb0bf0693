//! Coupons end to end with real processes: HQ's rich templates, every validation code at the
//! checkout, transfers (also two stores transferring one coupon while apart), the issue
//! channels (hand, bulk to a member query, signup, 满X送Y, birthday, pools, lottery), expiry
//! reminders, and convergence after the hub was down.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;
use tests::multi::{Hub, Store, converged, wait_until};

const bounded: Duration = Duration::from_secs(60);
const day_ms: u64 = 86_400_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn online(store: &Store) -> Result<bool> {
    Ok(store.sync_status()?["link"] == "online")
}

fn hub_post(hub: &Hub, path: &str, body: &Value) -> Result<Value> {
    let (status, reply) = hub.api.post(path, Some(&hub.token), body, None)?;
    anyhow::ensure!(
        status == 201 || status == 200,
        "POST {path}: {status} {reply}"
    );
    Ok(reply)
}

fn template(hub: &Hub, body: Value) -> Result<String> {
    let created = hub_post(hub, "/api/v1/coupon-templates", &body)?;
    Ok(created["id"].as_str().context("template id")?.to_owned())
}

fn issue(hub: &Hub, template: &str, member: Option<&str>) -> Result<String> {
    let issued = hub_post(
        hub,
        "/api/v1/coupons",
        &json!({"template_id": template, "member_id": member}),
    )?;
    Ok(issued["coupons"][0]["code"]
        .as_str()
        .context("code")?
        .to_owned())
}

fn checkout(
    store: &Store,
    member: Option<&str>,
    lines: Value,
    pay: i64,
    coupons: &[&str],
) -> Result<(u16, Value)> {
    let mut body = json!({"lines": lines, "payments": [{"method": "cash", "amount_fen": pay}],
                          "coupons": coupons});
    if let Some(member) = member {
        body["member_id"] = json!(member);
    }
    store.post("/api/v1/checkouts", &body)
}

fn p1(qty: i64) -> Value {
    json!([{"sku": "P1", "qty": qty}])
}

fn member(store: &Store, name: &str, phone: &str, extra: Value) -> Result<String> {
    let mut body = json!({"name": name, "phone": phone});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let created = store.ok("/api/v1/members", &body)?;
    Ok(created["id"].as_str().context("member id")?.to_owned())
}

fn code_of(reply: &(u16, Value)) -> Option<&str> {
    reply.1["error"]["code"].as_str()
}

/// The refusal's code, having checked it is a refusal.
fn refused(reply: (u16, Value)) -> (u16, String) {
    (reply.0, code_of(&reply).unwrap_or("").to_owned())
}

fn coupon_at(store: &Store, code: &str) -> Result<Value> {
    let (status, body) = store.get(&format!("/api/v1/coupons/{code}"))?;
    anyhow::ensure!(status == 200, "coupon {code}: {status} {body}");
    Ok(body)
}

struct Chain {
    _dir: tempfile::TempDir,
    hub: Hub,
    a: Store,
    b: Option<Store>,
}

/// Hub + one or two stores; P1 ¥100.00 and P2 ¥5.00 at every store.
fn chain(two: bool) -> Result<Chain> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let a = Store::start("ca", dir.path(), &hub.enroll("ca", dir.path())?)?;
    let b = if two {
        Some(Store::start(
            "cb",
            dir.path(),
            &hub.enroll("cb", dir.path())?,
        )?)
    } else {
        None
    };
    a.ok(
        "/api/v1/products",
        &json!({"sku": "P1", "name": "套餐", "price_fen": 10_000}),
    )?;
    a.ok(
        "/api/v1/products",
        &json!({"sku": "P2", "name": "饮料", "price_fen": 500}),
    )?;
    let stores: Vec<&Store> = std::iter::once(&a).chain(b.as_ref()).collect();
    wait_until("products everywhere", bounded, || {
        Ok(stores.iter().all(|s| online(s).unwrap_or(false)) && converged(&hub, &stores)?)
    })?;
    Ok(Chain {
        _dir: dir,
        hub,
        a,
        b,
    })
}

fn all_converged(hub: &Hub, stores: &[&Store]) -> Result<()> {
    wait_until("converged", bounded, || converged(hub, stores))
}

#[test]
fn every_coupon_validation_code_at_the_checkout() -> Result<()> {
    let Chain { _dir, hub, a, .. } = chain(false)?;
    let owner = member(&a, "钱一", "13900010001", json!({}))?;
    let other = member(&a, "钱二", "13900010002", json!({}))?;
    let now = now_ms();
    // The hour now at the store (UTC+8) and a window of one hour that excludes it.
    let hour = ((now / 1_000 + 8 * 3_600) % 86_400 / 3_600) as u8;
    let (from_hour, until_hour) = if hour < 22 {
        (hour + 1, hour + 2)
    } else {
        (1, 2)
    };
    let plain = template(&hub, json!({"name": "减5元", "value_fen": 500}))?;
    let expired = template(
        &hub,
        json!({"name": "已过期", "value_fen": 500, "valid_from_ms": now - 10 * day_ms,
               "valid_until_ms": now - day_ms}),
    )?;
    let future = template(
        &hub,
        json!({"name": "未开始", "value_fen": 500, "valid_from_ms": now + day_ms,
               "valid_until_ms": now + 10 * day_ms}),
    )?;
    let elsewhere = template(
        &hub,
        json!({"name": "别店券", "value_fen": 500, "stores": ["zz"]}),
    )?;
    let hours = template(
        &hub,
        json!({"name": "时段券", "value_fen": 500, "from_hour": from_hour,
               "until_hour": until_hour}),
    )?;
    let minimum = template(
        &hub,
        json!({"name": "满300减50", "value_fen": 5_000, "min_spend_fen": 30_000}),
    )?;
    let alone = template(
        &hub,
        json!({"name": "不可叠加", "value_fen": 500, "stackable": false}),
    )?;
    let once = template(
        &hub,
        json!({"name": "每人一次", "value_fen": 500, "per_member_limit": 1}),
    )?;
    let product = template(
        &hub,
        json!({"name": "饮料券", "kind": "product", "sku": "P2"}),
    )?;
    let missing_sku = template(
        &hub,
        json!({"name": "缺货券", "kind": "product", "sku": "P9"}),
    )?;
    let discount = template(
        &hub,
        json!({"name": "八折券", "kind": "discount", "percent_off": 20, "max_off_fen": 3_000,
               "valid_days": 30}),
    )?;
    // A template HQ gets wrong is refused with a clear error and writes nothing.
    let (status, bad) = hub.api.post(
        "/api/v1/coupon-templates",
        Some(&hub.token),
        &json!({"name": "坏", "kind": "discount", "percent_off": 120}),
        None,
    )?;
    assert_eq!(
        (status, bad["error"]["code"].as_str()),
        (422, Some("invalid_coupon_template"))
    );

    let c_plain = issue(&hub, &plain, Some(&owner))?;
    let c_plain2 = issue(&hub, &plain, Some(&owner))?;
    let c_expired = issue(&hub, &expired, Some(&owner))?;
    let c_future = issue(&hub, &future, Some(&owner))?;
    let c_elsewhere = issue(&hub, &elsewhere, Some(&owner))?;
    let c_hours = issue(&hub, &hours, Some(&owner))?;
    let c_minimum = issue(&hub, &minimum, Some(&owner))?;
    let c_alone = issue(&hub, &alone, Some(&owner))?;
    let c_once = issue(&hub, &once, Some(&owner))?;
    let c_once2 = issue(&hub, &once, Some(&owner))?;
    let c_product = issue(&hub, &product, Some(&owner))?;
    let c_missing = issue(&hub, &missing_sku, Some(&owner))?;
    let c_discount = issue(&hub, &discount, None)?;
    all_converged(&hub, &[&a])?;

    let me = Some(owner.as_str());
    let cases: Vec<(&str, (u16, Value), u16)> = vec![
        (
            "coupon_unknown",
            checkout(&a, me, p1(1), 9_500, &["CNOSUCHCODE"])?,
            422,
        ),
        (
            "coupon_expired",
            checkout(&a, me, p1(1), 9_500, &[&c_expired])?,
            422,
        ),
        (
            "coupon_not_yet_valid",
            checkout(&a, me, p1(1), 9_500, &[&c_future])?,
            422,
        ),
        (
            "coupon_store_not_allowed",
            checkout(&a, me, p1(1), 9_500, &[&c_elsewhere])?,
            422,
        ),
        (
            "coupon_outside_hours",
            checkout(&a, me, p1(1), 9_500, &[&c_hours])?,
            422,
        ),
        (
            "coupon_min_spend",
            checkout(&a, me, p1(1), 5_000, &[&c_minimum])?,
            422,
        ),
        (
            "coupon_not_stackable",
            checkout(&a, me, p1(1), 9_000, &[&c_alone, &c_plain2])?,
            422,
        ),
        (
            "coupon_sku_not_in_cart",
            checkout(&a, me, p1(1), 10_000, &[&c_missing])?,
            422,
        ),
        (
            "coupon_not_owner",
            checkout(&a, Some(&other), p1(1), 9_500, &[&c_plain])?,
            422,
        ),
        (
            "coupon_not_owner",
            checkout(&a, None, p1(1), 9_500, &[&c_plain])?,
            422,
        ),
    ];
    for (expected, reply, status) in cases {
        assert_eq!(
            refused(reply.clone()),
            (status, expected.to_owned()),
            "{}",
            reply.1
        );
    }
    // Refusals wrote nothing: the coupons are still available.
    assert_eq!(coupon_at(&a, &c_plain)?["status"], "available");

    // Used once, refused the second time.
    let (status, sale) = checkout(&a, me, p1(1), 9_500, &[&c_plain])?;
    assert_eq!(
        (status, &sale["discount_fen"]),
        (201, &json!(500)),
        "{sale}"
    );
    assert_eq!(
        refused(checkout(&a, me, p1(1), 9_500, &[&c_plain])?),
        (409, "coupon_already_redeemed".to_owned())
    );
    // A per-member limit of one: the member's second coupon of the kind is refused.
    assert_eq!(checkout(&a, me, p1(1), 9_500, &[&c_once])?.0, 201);
    assert_eq!(
        refused(checkout(&a, me, p1(1), 9_500, &[&c_once2])?),
        (422, "coupon_member_limit".to_owned())
    );
    // A product voucher takes one unit of its SKU; a discount coupon its share (capped).
    let (status, sale) = checkout(
        &a,
        me,
        json!([{"sku": "P1", "qty": 1}, {"sku": "P2", "qty": 2}]),
        10_500,
        &[&c_product],
    )?;
    assert_eq!(
        (status, &sale["discount_fen"]),
        (201, &json!(500)),
        "{sale}"
    );
    let (status, sale) = checkout(&a, None, p1(2), 17_000, &[&c_discount])?;
    assert_eq!(
        (status, &sale["discount_fen"]),
        (201, &json!(3_000)),
        "{sale}"
    );
    // The unused restricted coupons are still there (and listed as the member's).
    let (_, mine) = a.get(&format!("/api/v1/members/{owner}/coupons?status=all"))?;
    assert_eq!(mine["coupons"].as_array().map(Vec::len), Some(12), "{mine}");
    all_converged(&hub, &[&a])?;
    Ok(())
}

#[test]
fn a_transferred_coupon_is_the_new_owners_and_two_transfers_apart_converge() -> Result<()> {
    let Chain {
        _dir,
        mut hub,
        a,
        b,
    } = chain(true)?;
    let b = b.context("store b")?;
    let giver = member(&a, "孙一", "13900020001", json!({}))?;
    let friend = member(&a, "孙二", "13900020002", json!({}))?;
    let third = member(&a, "孙三", "13900020003", json!({}))?;
    let plain = template(&hub, json!({"name": "朋友券", "value_fen": 1_000}))?;
    let gift = issue(&hub, &plain, Some(&giver))?;
    let contested = issue(&hub, &plain, Some(&giver))?;
    all_converged(&hub, &[&a, &b])?;

    // The giver gives it by the friend's phone; the old owner may no longer use it.
    let given = a.ok(
        &format!("/api/v1/coupons/{gift}/transfer"),
        &json!({"from_member_id": giver, "to_phone": "139 0002 0002"}),
    )?;
    assert_eq!(given["member_id"], friend.as_str(), "{given}");
    assert_eq!(
        refused(checkout(&a, Some(&giver), p1(1), 9_000, &[&gift])?),
        (422, "coupon_not_owner".to_owned())
    );
    // Giving it again from the old owner is refused too.
    let (status, again) = a.post(
        &format!("/api/v1/coupons/{gift}/transfer"),
        &json!({"from_member_id": giver, "to_member_id": third}),
    )?;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (422, Some("coupon_not_owner"))
    );
    // Looking the member up by the coupon's code finds the new owner.
    let (_, found) = a.get(&format!("/api/v1/coupons/{gift}/member"))?;
    assert_eq!(found["id"], friend.as_str(), "{found}");
    // The new owner redeems it at the other store once the transfer has arrived there.
    wait_until("the transfer at store B", bounded, || {
        Ok(coupon_at(&b, &gift)?["member_id"] == friend.as_str())
    })?;
    let (status, sale) = checkout(&b, Some(&friend), p1(1), 9_000, &[&gift])?;
    assert_eq!(status, 201, "{sale}");

    // Apart, the two stores give the same coupon to different friends.
    hub.kill9();
    a.ok(
        &format!("/api/v1/coupons/{contested}/transfer"),
        &json!({"to_member_id": friend}),
    )?;
    b.ok(
        &format!("/api/v1/coupons/{contested}/transfer"),
        &json!({"to_member_id": third}),
    )?;
    hub.restart()?;
    all_converged(&hub, &[&a, &b])?;
    // One outcome everywhere: the earlier transfer (store A's) wins.
    let (_, at_hub) = hub.get(&format!("/api/v1/coupons/{contested}"))?;
    assert_eq!(at_hub["member_id"], friend.as_str(), "{at_hub}");
    for store in [&a, &b] {
        assert_eq!(coupon_at(store, &contested)?["member_id"], friend.as_str());
    }
    Ok(())
}

#[test]
fn every_issue_channel_and_pools_offline_converge() -> Result<()> {
    let Chain {
        _dir,
        mut hub,
        a,
        b,
    } = chain(true)?;
    let b = b.context("store b")?;
    let now = now_ms();

    // Signup: the rules' signup gift names a template.
    let welcome = template(
        &hub,
        json!({"name": "开卡礼", "value_fen": 800, "valid_days": 30}),
    )?;
    let (_, mut rules) = hub.get("/api/v1/rules")?;
    rules["signup"]["coupon_template_id"] = json!(welcome);
    let (status, reply) = hub.api.request(
        "PUT",
        "/api/v1/rules",
        Some(&hub.token),
        None,
        Some(&rules.to_string()),
        None,
    )?;
    anyhow::ensure!(status == 200, "rules: {status} {reply}");
    // 满X送Y, birthday, a per-store pool of 1, a chain-wide pool of 1, a lottery prize.
    let spend = template(
        &hub,
        json!({"name": "满200送20", "value_fen": 2_000, "issue_on_spend_fen": 20_000,
               "valid_days": 7}),
    )?;
    template(
        &hub,
        json!({"name": "生日券", "value_fen": 1_000, "issue_on_birthday": true, "valid_days": 30}),
    )?;
    let store_pool = template(
        &hub,
        json!({"name": "门店领券", "value_fen": 300, "pool": {"scope": "store", "size": 1}}),
    )?;
    let chain_pool = template(
        &hub,
        json!({"name": "全国领券", "value_fen": 300, "pool": {"scope": "chain", "size": 1},
               "per_member_limit": 1}),
    )?;
    let prize = template(&hub, json!({"name": "转盘券", "value_fen": 600}))?;
    let soon = template(
        &hub,
        json!({"name": "快过期", "value_fen": 100, "valid_until_ms": now + day_ms}),
    )?;
    let wheel = hub_post(
        &hub,
        "/api/v1/lotteries",
        &json!({"name": "幸运转盘", "prizes": [{"label": "5元券", "template_id": prize, "weight": 1}],
                "draws_per_day": 1}),
    )?;
    let wheel = wheel["id"].as_str().context("wheel id")?.to_owned();
    wait_until(
        "rules, templates and the wheel at the stores",
        bounded,
        || converged(&hub, &[&a, &b]),
    )?;

    // Birthday today (store time) and a tag for the bulk issue.
    let today = {
        let local_days = (now / 1_000 + 8 * 3_600) / 86_400;
        // Civil date from days since 1970-01-01 (the algorithm of H. Hinnant).
        let z = local_days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        format!("1990-{month:02}-{day:02}")
    };
    let m1 = member(
        &a,
        "李一",
        "13900030001",
        json!({"birthday": today, "tags": ["vip"]}),
    )?;
    let m2 = member(&a, "李二", "13900030002", json!({"tags": ["vip"]}))?;
    let m3 = member(&a, "李三", "13900030003", json!({}))?;
    let channels = |m: &str| -> Result<Vec<String>> {
        let (_, list) = a.get(&format!("/api/v1/members/{m}/coupons?status=all"))?;
        let mut out: Vec<String> = list["coupons"]
            .as_array()
            .context("coupons")?
            .iter()
            .filter_map(|c| c["channel"].as_str().map(str::to_owned))
            .collect();
        out.sort();
        Ok(out)
    };
    assert_eq!(channels(&m3)?, ["signup"]);

    // 满X送Y in the checkout's transaction.
    let (status, sale) = checkout(&a, Some(&m3), p1(2), 20_000, &[])?;
    assert_eq!(status, 201, "{sale}");
    let earned = sale["coupons_issued"][0]
        .as_str()
        .context("coupon earned")?;
    assert_eq!(coupon_at(&a, earned)?["template_id"], spend.as_str());
    let (_, small) = checkout(&a, Some(&m3), p1(1), 10_000, &[])?;
    assert!(small.get("coupons_issued").is_none(), "{small}");

    // Birthday and expiry reminders from the engagement run.
    issue(&hub, &soon, Some(&m2))?;
    wait_until("the coupon at A", bounded, || converged(&hub, &[&a, &b]))?;
    a.ok("/api/v1/engagement/run", &json!({}))?;
    a.ok("/api/v1/engagement/run", &json!({}))?;
    assert_eq!(channels(&m1)?, ["birthday", "signup"]);
    let (_, outbox) = a.get("/api/v1/outbox?limit=500")?;
    let reminders: Vec<&Value> = outbox["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter(|m| m["kind"] == "coupon_expiry_reminder")
        .collect();
    assert_eq!(reminders.len(), 1, "one reminder per coupon: {outbox}");

    // Bulk issue to a member query (tag vip): m1 and m2; a retry with the same key issues
    // nothing again.
    all_converged(&hub, &[&a, &b])?;
    let bulk = |key: &str| -> Result<Value> {
        let (status, reply) = hub.api.post(
            "/api/v1/coupons/bulk",
            Some(&hub.token),
            &json!({"template_id": prize, "filter": {"tag": "vip"}}),
            Some(key),
        )?;
        anyhow::ensure!(status == 201, "bulk: {status} {reply}");
        Ok(reply)
    };
    let first = bulk("bulk-vip")?;
    assert_eq!(
        (&first["matched"], &first["issued"]),
        (&json!(2), &json!(2)),
        "{first}"
    );
    let retry = bulk("bulk-vip")?;
    assert_eq!(
        (&retry["matched"], &retry["issued"]),
        (&json!(2), &json!(0)),
        "{retry}"
    );

    // Lottery: the one prize is won, the second draw today is refused.
    let drawn = a.ok(
        &format!("/api/v1/members/{m3}/lottery-draws"),
        &json!({"lottery_id": wheel}),
    )?;
    assert_eq!(drawn["won"], true, "{drawn}");
    let (status, again) = a.post(
        &format!("/api/v1/members/{m3}/lottery-draws"),
        &json!({"lottery_id": wheel}),
    )?;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("lottery_draws_used"))
    );

    // Offline: the per-store pool works (and is counted at that store), the chain-wide one
    // is refused.
    hub.kill9();
    let claim = |store: &Store, m: &str, t: &str| {
        store.post(
            &format!("/api/v1/members/{m}/coupon-claims"),
            &json!({"template_id": t}),
        )
    };
    let (status, claimed) = claim(&a, &m1, &store_pool)?;
    assert_eq!(status, 201, "{claimed}");
    assert_eq!(
        refused(claim(&a, &m2, &store_pool)?),
        (409, "coupon_pool_empty".to_owned())
    );
    assert_eq!(claim(&b, &m2, &store_pool)?.0, 201, "B has its own pool");
    assert_eq!(
        refused(claim(&a, &m1, &chain_pool)?),
        (422, "pool_online_only".to_owned())
    );

    hub.restart()?;
    wait_until("A and B online again", bounded, || {
        Ok(online(&a)? && online(&b)?)
    })?;
    // (After the backlog is exchanged, so the hub answers within the authorization timeout.)
    all_converged(&hub, &[&a, &b])?;
    // Online: the hub decides the chain-wide pool; its coupon arrives with the sync.
    let (status, granted) = claim(&a, &m1, &chain_pool)?;
    assert_eq!(status, 201, "{granted}");
    assert_eq!(granted["issued_at"], "hq");
    let code = granted["code"].as_str().context("claimed code")?.to_owned();
    assert_eq!(
        refused(claim(&b, &m2, &chain_pool)?),
        (409, "coupon_pool_empty".to_owned())
    );
    all_converged(&hub, &[&a, &b])?;
    assert_eq!(coupon_at(&b, &code)?["member_id"], m1.as_str());
    assert_eq!(
        channels(&m1)?,
        ["birthday", "bulk", "claim", "claim", "signup"]
    );
    Ok(())
}

//! Money-like values under partition, with real processes: online authorization, offline
//! allowance, the exception queue, coupons redeemed twice, online-only coupons.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;
use tests::multi::{Hub, Store, converged, wait_until};

const bounded: Duration = Duration::from_secs(60);

fn online(store: &Store) -> Result<bool> {
    Ok(store.sync_status()?["link"] == "online")
}

fn checkout(
    store: &Store,
    member: Option<&str>,
    qty: i64,
    method: &str,
    coupons: &[&str],
    pay: i64,
) -> Result<(u16, Value)> {
    let mut body = json!({"lines": [{"sku": "P1", "qty": qty}],
                          "payments": [{"method": method, "amount_fen": pay}], "coupons": coupons});
    if let Some(member) = member {
        body["member_id"] = json!(member);
    }
    store.post("/api/v1/checkouts", &body)
}

fn hub_put(hub: &Hub, path: &str, body: &Value) -> Result<Value> {
    let (status, reply) = hub.put(path, body)?;
    anyhow::ensure!(status == 200, "PUT {path}: {status} {reply}");
    Ok(reply)
}

fn hub_post(hub: &Hub, path: &str, body: &Value) -> Result<Value> {
    let (status, reply) = hub.api.post(path, Some(&hub.token), body, None)?;
    anyhow::ensure!(
        status == 201 || status == 200,
        "POST {path}: {status} {reply}"
    );
    Ok(reply)
}

struct Chain {
    _dir: tempfile::TempDir,
    hub: Hub,
    a: Store,
    b: Store,
    member: String,
}

/// Hub + two stores, product P1 at ¥10.00, a member with ¥100.00, a small offline allowance.
fn chain() -> Result<Chain> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let a = Store::start("ma", dir.path(), &hub.enroll("ma", dir.path())?)?;
    let b = Store::start("mb", dir.path(), &hub.enroll("mb", dir.path())?)?;
    a.ok(
        "/api/v1/products",
        &json!({"sku": "P1", "name": "套餐", "price_fen": 1_000}),
    )?;
    let created = a.ok(
        "/api/v1/members",
        &json!({"name": "郑十", "phone": "13900007777"}),
    )?;
    let member = created["id"].as_str().context("id")?.to_owned();
    a.ok(
        &format!("/api/v1/members/{member}/recharges"),
        &json!({"amount_fen": 10_000}),
    )?;
    hub_put(
        &hub,
        "/api/v1/allowance-policy",
        &json!({"member_stored_value_max_fen": 8_000, "store_exposure_max_fen": 50_000}),
    )?;
    wait_until("policy and data everywhere", bounded, || {
        Ok(online(&a)? && online(&b)? && converged(&hub, &[&a, &b])?)
    })?;
    Ok(Chain {
        _dir: dir,
        hub,
        a,
        b,
        member,
    })
}

#[test]
fn offline_double_spend_is_kept_and_queued_as_an_exception() -> Result<()> {
    let Chain {
        _dir,
        mut hub,
        a,
        b,
        member,
    } = chain()?;
    // Online: the hub refuses a spend the chain-wide balance does not cover.
    let (status, refused) = checkout(&b, Some(&member), 11, "stored_value", &[], 11_000)?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("insufficient_balance")),
        "{refused}"
    );

    hub.kill9();
    // Both stores, cut off, spend ¥70.00 each of the member's ¥100.00: each within its allowance.
    let (status, sale_a) = checkout(&a, Some(&member), 7, "stored_value", &[], 7_000)?;
    assert_eq!(status, 201, "{sale_a}");
    let (status, sale_b) = checkout(&b, Some(&member), 7, "stored_value", &[], 7_000)?;
    assert_eq!(status, 201, "{sale_b}");
    // Past the allowance (¥80.00 per member per store while offline): refused, with a reason.
    let (status, over) = checkout(&a, Some(&member), 2, "stored_value", &[], 2_000)?;
    assert_eq!(
        (status, over["error"]["code"].as_str()),
        (422, Some("offline_limit_exceeded")),
        "{over}"
    );
    assert!(
        over["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("offline"),
        "{over}"
    );

    hub.restart()?;
    wait_until("converged after the partition", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    for (api, token) in [
        (&a.api, &a.manager),
        (&b.api, &b.manager),
        (&hub.api, &hub.token),
    ] {
        let (_, found) = api.get(&format!("/api/v1/members/{member}"), Some(token))?;
        assert_eq!(
            found["balance_fen"], -4_000,
            "the true, negative figure everywhere"
        );
    }
    let (_, queue) = hub.get("/api/v1/exceptions")?;
    let exceptions = queue["exceptions"].as_array().context("exceptions")?;
    assert_eq!(exceptions.len(), 1, "{queue}");
    assert_eq!(exceptions[0]["kind"], "negative_balance");
    assert_eq!(exceptions[0]["amount"], 4_000);
    assert_eq!(exceptions[0]["member_id"], member.as_str());
    assert_eq!(exceptions[0]["stores"], json!(["ma", "mb"]));

    // HQ resolves it; the note is recorded; nothing is rolled back.
    let id = exceptions[0]["id"].as_i64().context("exception id")?;
    let resolved = hub_post(
        &hub,
        &format!("/api/v1/exceptions/{id}/resolve"),
        &json!({"note": "收回现金 collected in cash"}),
    )?;
    assert_eq!(resolved["resolved"], true);
    assert_eq!(resolved["resolution_note"], "收回现金 collected in cash");
    assert_eq!(
        hub.get("/api/v1/exceptions")?.1["exceptions"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    assert_eq!(
        hub.get(&format!("/api/v1/members/{member}"))?.1["balance_fen"],
        -4_000
    );
    Ok(())
}

#[test]
fn a_coupon_used_at_two_stores_while_apart_is_an_exception_and_online_only_ones_wait() -> Result<()>
{
    let Chain {
        _dir,
        mut hub,
        a,
        b,
        ..
    } = chain()?;
    let template = hub_post(
        &hub,
        "/api/v1/coupon-templates",
        &json!({"name": "满10减5", "value_fen": 500}),
    )?;
    let online_only = hub_post(
        &hub,
        "/api/v1/coupon-templates",
        &json!({"name": "线上券", "value_fen": 300, "online_only": true}),
    )?;
    let issued = hub_post(
        &hub,
        "/api/v1/coupons",
        &json!({"template_id": template["id"], "count": 2}),
    )?;
    let restricted = hub_post(
        &hub,
        "/api/v1/coupons",
        &json!({"template_id": online_only["id"]}),
    )?;
    let code = issued["coupons"][0]["code"]
        .as_str()
        .context("code")?
        .to_owned();
    let spare = issued["coupons"][1]["code"]
        .as_str()
        .context("code")?
        .to_owned();
    let restricted = restricted["coupons"][0]["code"]
        .as_str()
        .context("code")?
        .to_owned();
    wait_until("coupons at the stores", bounded, || {
        converged(&hub, &[&a, &b])
    })?;

    // Online: used at A, then refused at B by the hub.
    assert_eq!(checkout(&a, None, 1, "cash", &[&spare], 500)?.0, 201);
    let (status, again) = checkout(&b, None, 1, "cash", &[&spare], 500)?;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("coupon_already_redeemed")),
        "{again}"
    );

    hub.kill9();
    // Apart, both stores accept the same code.
    let (status, sale) = checkout(&a, None, 1, "cash", &[&code], 500)?;
    assert_eq!(status, 201, "{sale}");
    assert_eq!(sale["discount_fen"], 500);
    assert_eq!(checkout(&b, None, 1, "cash", &[&code], 500)?.0, 201);
    // An online-only coupon is refused while the link is down, saying what to do.
    let (status, refused) = checkout(&a, None, 1, "cash", &[&restricted], 700)?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("online_only")),
        "{refused}"
    );

    hub.restart()?;
    wait_until("converged", bounded, || converged(&hub, &[&a, &b]))?;
    let (_, queue) = hub.get("/api/v1/exceptions")?;
    let exceptions = queue["exceptions"].as_array().context("exceptions")?;
    assert_eq!(exceptions.len(), 1, "{queue}");
    assert_eq!(exceptions[0]["kind"], "double_redemption");
    assert_eq!(exceptions[0]["coupon_code"], code.as_str());
    assert_eq!(exceptions[0]["stores"], json!(["ma", "mb"]));
    // Back online, the online-only coupon works.
    wait_until("A online again", bounded, || online(&a))?;
    assert_eq!(checkout(&a, None, 1, "cash", &[&restricted], 700)?.0, 201);
    Ok(())
}

#[test]
fn a_recharge_can_be_spent_at_once_while_online() -> Result<()> {
    let Chain {
        _dir, hub: _hub, a, ..
    } = chain()?;
    let created = a.ok(
        "/api/v1/members",
        &json!({"name": "冯十一", "phone": "13900008888"}),
    )?;
    let member = created["id"].as_str().context("id")?.to_owned();
    for round in 0..15 {
        a.ok(
            &format!("/api/v1/members/{member}/recharges"),
            &json!({"amount_fen": 1_000}),
        )?;
        let (status, sale) = checkout(&a, Some(&member), 1, "stored_value", &[], 1_000)?;
        assert_eq!(
            status, 201,
            "round {round}: the hub saw the recharge before deciding: {sale}"
        );
    }
    Ok(())
}

#[test]
fn a_sale_is_refunded_only_at_the_store_that_made_it() -> Result<()> {
    let Chain {
        _dir,
        hub,
        a,
        b,
        member,
    } = chain()?;
    let (status, sale) = checkout(&a, Some(&member), 3, "stored_value", &[], 3_000)?;
    assert_eq!(status, 201, "{sale}");
    let sale_id = sale["id"].as_str().context("sale id")?.to_owned();
    wait_until("the sale reached store B", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    let refund = |store: &Store| {
        store.api.post(
            &format!("/api/v1/checkouts/{sale_id}/refunds"),
            Some(&store.manager),
            &json!({"reason": "退货"}),
            None,
        )
    };
    // B holds the sale but did not make it: refused, whether or not A refunds it meanwhile.
    let (status, refused) = refund(&b)?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("refund_at_selling_store")),
        "{refused}"
    );
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("ma"),
        "the message names the selling store: {refused}"
    );
    let (status, refunded) = refund(&a)?;
    assert_eq!(status, 201, "{refunded}");
    assert_eq!(refunded["balance_fen"], 10_000, "{refunded}");
    wait_until("the refund everywhere", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    let member_at_b = b.get(&format!("/api/v1/members/{member}"))?;
    assert_eq!(member_at_b.1["balance_fen"], 10_000, "{member_at_b:?}");
    Ok(())
}

#[test]
fn a_retried_checkout_holds_nothing_more_at_the_hub() -> Result<()> {
    let Chain {
        _dir,
        hub,
        a,
        b,
        member,
    } = chain()?;
    let body = json!({"member_id": member, "lines": [{"sku": "P1", "qty": 7}],
                      "payments": [{"method": "stored_value", "amount_fen": 7_000}]});
    let first = a.api.post(
        "/api/v1/checkouts",
        Some(&a.manager),
        &body,
        Some("till-1-0042"),
    )?;
    assert_eq!(first.0, 201, "{}", first.1);
    // The till did not see the answer and sends the same request again.
    let again = a.api.post(
        "/api/v1/checkouts",
        Some(&a.manager),
        &body,
        Some("till-1-0042"),
    )?;
    assert_eq!(again, first, "the retry gets the first answer");
    wait_until("the sale at the hub", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    // ¥30.00 is left; a retry that had asked the hub again would hold another ¥70.00.
    let (status, rest) = checkout(&b, Some(&member), 3, "stored_value", &[], 3_000)?;
    assert_eq!(status, 201, "{rest}");
    assert_eq!(rest["balance_fen"], 0, "{rest}");
    Ok(())
}

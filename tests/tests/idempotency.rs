//! `Idempotency-Key` on every POST: a repeat with the same key and body returns the first
//! response and changes nothing; the same key with another body or path is
//! 422 `idempotency_key_reused`.

use anyhow::Result;
use std::sync::{Arc, Barrier};
use tests::{StoreNode, Value, array, error_code, int, json, string, unique_key};

fn reused(reply: &(u16, Value)) -> bool {
    reply.0 == 422 && error_code(&reply.1) == Some("idempotency_key_reused")
}

/// Member, its ledger and the checkout list: what a replayed request must not change.
fn state(node: &StoreNode, member_id: &str) -> Result<Value> {
    Ok(json!({
        "member": node.member(member_id)?,
        "ledger": node.ledger(member_id)?,
        "checkouts": node.checkouts(100)?,
    }))
}

#[test]
fn checkout_replay_charges_once() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let id = string(&node.register("周一", "13600000001")?, "id")?;
    node.recharge(&id, 100_000)?; // balance 110,000
    node.add_product("P", "面包", 1_234)?;
    let body = json!({
        "member_id": id,
        "lines": [{"sku": "P", "qty": 3}],
        "payments": [{"method": "stored_value", "amount_fen": 3_702}],
    });
    let key = unique_key("checkout");

    let first = node.post_idem("/api/v1/checkouts", &body, &key)?;
    assert_eq!(first.0, 201, "{}", first.1);
    let checkout_id = string(&first.1, "id")?;
    let second = node.post_idem("/api/v1/checkouts", &body, &key)?;
    assert_eq!(second, first, "a repeat returns the first response");
    assert_eq!(int(&node.member(&id)?, "balance_fen")?, 110_000 - 3_702);
    let list = node.checkouts(100)?;
    assert_eq!(list.len(), 1, "one checkout only: {list:?}");
    assert_eq!(list[0]["id"], checkout_id.as_str());
    let ledger = node.ledger(&id)?;
    let of_checkout = array(&ledger, "entries")?
        .iter()
        .filter(|e| e["checkout_id"] == checkout_id.as_str())
        .count();
    assert_eq!(
        of_checkout, 2,
        "one spend and one points_earn entry: {ledger}"
    );

    // Same key, different body → 422 and nothing happens.
    let before = state(&node, &id)?;
    let other = json!({
        "member_id": id,
        "lines": [{"sku": "P", "qty": 2}],
        "payments": [{"method": "stored_value", "amount_fen": 2_468}],
    });
    let reply = node.post_idem("/api/v1/checkouts", &other, &key)?;
    assert!(reused(&reply), "same key, other body: {reply:?}");
    // Same key, other path → 422 too.
    let reply = node.post_idem(
        &format!("/api/v1/members/{id}/recharges"),
        &json!({"amount_fen": 1_000}),
        &key,
    )?;
    assert!(reused(&reply), "same key, other path: {reply:?}");
    assert_eq!(
        state(&node, &id)?,
        before,
        "refused requests change nothing"
    );

    // A new key with the same body is a new sale; the old key still replays the first one,
    // with the balance as it was then.
    let third = node.post_idem("/api/v1/checkouts", &body, &unique_key("checkout"))?;
    assert_eq!(third.0, 201, "{}", third.1);
    assert_ne!(third.1["id"], first.1["id"]);
    assert_eq!(int(&node.member(&id)?, "balance_fen")?, 110_000 - 2 * 3_702);
    let replay = node.post_idem("/api/v1/checkouts", &body, &key)?;
    assert_eq!(replay, first, "the key still returns the first response");
    assert_eq!(node.checkouts(100)?.len(), 2);
    Ok(())
}

#[test]
fn concurrent_repeats_of_one_key_charge_once() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let id = string(&node.register("周二", "13600000002")?, "id")?;
    node.recharge(&id, 10_000)?; // below ¥500: no bonus
    node.add_product("P", "牛奶", 650)?;
    let body = json!({
        "member_id": id,
        "lines": [{"sku": "P", "qty": 1}],
        "payments": [{"method": "stored_value", "amount_fen": 650}],
    });
    let key = unique_key("race");
    let threads = 8;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let api = node.api().clone();
            let token = node.cashier.clone();
            let body = body.clone();
            let key = key.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                api.post("/api/v1/checkouts", Some(&token), &body, Some(&key))
            })
        })
        .collect();
    let mut replies = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(reply) => replies.push(reply?),
            Err(_) => anyhow::bail!("a request thread panicked"),
        }
    }
    for reply in &replies {
        assert_eq!(
            reply.0, 201,
            "every repeat gets the first response: {replies:?}"
        );
        assert_eq!(reply.1["id"], replies[0].1["id"], "{replies:?}");
    }
    assert_eq!(int(&node.member(&id)?, "balance_fen")?, 10_000 - 650);
    assert_eq!(node.checkouts(100)?.len(), 1);
    Ok(())
}

#[test]
fn recharge_replay_credits_once() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let id = string(&node.register("周三", "13600000003")?, "id")?;
    let path = format!("/api/v1/members/{id}/recharges");
    let key = unique_key("recharge");
    let body = json!({"amount_fen": 50_000, "method": "cash"});
    let first = node.post_idem(&path, &body, &key)?;
    assert_eq!(first.0, 201, "{}", first.1);
    assert_eq!(int(&first.1, "balance_fen")?, 55_000, "{}", first.1);
    let second = node.post_idem(&path, &body, &key)?;
    assert_eq!(second, first, "a repeat returns the first response");
    let m = node.member(&id)?;
    assert_eq!(int(&m, "balance_fen")?, 55_000, "credited once: {m}");

    let before = state(&node, &id)?;
    let reply = node.post_idem(
        &path,
        &json!({"amount_fen": 60_000, "method": "cash"}),
        &key,
    )?;
    assert!(reused(&reply), "same key, other amount: {reply:?}");
    assert_eq!(state(&node, &id)?, before);

    // Another key is another recharge.
    let other = node.post_idem(&path, &body, &unique_key("recharge"))?;
    assert_eq!(other.0, 201, "{}", other.1);
    assert_ne!(other.1["id"], first.1["id"]);
    assert_eq!(int(&node.member(&id)?, "balance_fen")?, 110_000);
    Ok(())
}

#[test]
fn registration_replay_returns_the_same_member() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let key = unique_key("member");
    let body = json!({"name": "周四", "phone": "+86 136 0000 0004", "tags": ["vip"]});
    let first = node.post_idem("/api/v1/members", &body, &key)?;
    assert_eq!(first.0, 201, "{}", first.1);
    let second = node.post_idem("/api/v1/members", &body, &key)?;
    assert_eq!(
        second, first,
        "a repeat returns the first response, not duplicate_phone"
    );
    let (status, found) = node.get("/api/v1/members?phone=13600000004")?;
    assert_eq!(status, 200, "{found}");
    assert_eq!(array(&found, "members")?.len(), 1, "one member: {found}");

    let reply = node.post_idem(
        "/api/v1/members",
        &json!({"name": "周四四", "phone": "13600000004"}),
        &key,
    )?;
    assert!(reused(&reply), "same key, other body: {reply:?}");
    // Without the key the same phone is a duplicate.
    let reply = node.post("/api/v1/members", &body)?;
    assert_eq!(
        (reply.0, error_code(&reply.1)),
        (409, Some("duplicate_phone")),
        "{reply:?}"
    );
    let (_, found) = node.get("/api/v1/members?phone=13600000004")?;
    assert_eq!(
        array(&found, "members")?.len(),
        1,
        "still one member: {found}"
    );
    assert_eq!(found["members"][0], first.1);
    Ok(())
}

#[test]
fn refund_replay_refunds_once() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let id = string(&node.register("周五", "13600000005")?, "id")?;
    node.recharge(&id, 20_000)?;
    node.add_product("P", "鸡蛋", 1_500)?;
    let checkout = node.checkout(&json!({
        "member_id": id,
        "lines": [{"sku": "P", "qty": 2}],
        "payments": [{"method": "stored_value", "amount_fen": 3_000}],
    }))?;
    let path = format!("/api/v1/checkouts/{}/refunds", string(&checkout, "id")?);
    let key = unique_key("refund");
    let body = json!({"reason": "坏了"});
    let first = node
        .api()
        .post(&path, Some(&node.manager), &body, Some(&key))?;
    assert_eq!(first.0, 201, "{}", first.1);
    let second = node
        .api()
        .post(&path, Some(&node.manager), &body, Some(&key))?;
    assert_eq!(
        second, first,
        "a repeat returns the first response, not already_refunded"
    );
    assert_eq!(int(&node.member(&id)?, "balance_fen")?, 20_000);
    let reply = node.api().post(&path, Some(&node.manager), &body, None)?;
    assert_eq!(
        (reply.0, error_code(&reply.1)),
        (409, Some("already_refunded")),
        "{reply:?}"
    );
    assert_eq!(int(&node.member(&id)?, "balance_fen")?, 20_000);
    Ok(())
}

#[test]
fn product_replay_returns_the_first_response() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let key = unique_key("product");
    let body = json!({"sku": "RICE", "name": "大米", "price_fen": 2_990});
    let post = |body: &Value| {
        node.api()
            .post("/api/v1/products", Some(&node.manager), body, Some(&key))
    };
    let first = post(&body)?;
    assert_eq!(first.0, 201, "{}", first.1);
    let second = post(&body)?;
    assert_eq!(
        second, first,
        "a repeat returns the first response (201, not 200)"
    );
    let reply = post(&json!({"sku": "RICE", "name": "大米", "price_fen": 1}))?;
    assert!(reused(&reply), "same key, other price: {reply:?}");
    let (_, products) = node.get("/api/v1/products")?;
    assert_eq!(
        products["products"],
        json!([{"sku": "RICE", "name": "大米", "price_fen": 2_990, "active": true,
            "barcode": null, "category": null, "member_price_fen": null, "components": []}]),
        "{products}"
    );
    Ok(())
}

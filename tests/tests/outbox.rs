#![allow(non_upper_case_globals)]
//! The outbox and its webhook sender: messages queued with their event reach the webhook with a
//! stable `X-Chainsync-Message-Id`, failed deliveries are retried, and a `kill -9` loses none.

use anyhow::{Result, bail};
use std::collections::BTreeSet;
use std::time::Duration;
use tests::multi::wait_until;
use tests::webhook::Webhook;
use tests::{StoreNode, Value, array, error_code, expect_status, int, json, string};

const delivery_timeout: Duration = Duration::from_secs(60);

/// Point the node's config at `url` and restart it.
fn use_webhook(node: &mut StoreNode, url: &str) -> Result<()> {
    let path = node.data_dir().join("store.toml");
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&format!("\nwebhook_url = \"{url}\"\n"));
    std::fs::write(&path, text)?;
    node.restart()
}

fn outbox(node: &StoreNode, status: &str) -> Result<Vec<Value>> {
    let reply = node.api().get(
        &format!("/api/v1/outbox?status={status}&limit=500"),
        Some(&node.manager),
    )?;
    let body = expect_status(reply, &[200], "list outbox")?;
    Ok(array(&body, "messages")?.clone())
}

#[test]
fn events_reach_the_webhook_once_each_with_their_id() -> Result<()> {
    let hook = Webhook::start()?;
    let mut node = StoreNode::start_temp()?;
    use_webhook(&mut node, hook.url())?;
    let member = string(&node.register("周一", "13900000101")?, "id")?;
    let recharge = node.recharge(&member, 10_000)?;
    node.add_product("W1", "茶", 1_500)?;
    let checkout = node.checkout(&json!({
        "member_id": member,
        "lines": [{"sku": "W1", "qty": 2}],
        "payments": [{"method": "stored_value", "amount_fen": 3_000}],
    }))?;
    let expected: BTreeSet<String> = [
        format!("member_registered:{member}"),
        format!("recharge:{}", string(&recharge, "id")?),
        format!("checkout:{}", string(&checkout, "id")?),
    ]
    .into();
    wait_until("three messages delivered", delivery_timeout, || {
        Ok(hook.distinct().keys().cloned().collect::<BTreeSet<_>>() == expected)
    })?;
    for (id, body) in hook.distinct() {
        assert_eq!(
            string(&body, "id")?,
            id,
            "header and body carry the same id"
        );
        assert_eq!(string(&body, "store_id")?, tests::test_store_id);
        assert_eq!(string(&body, "member_id")?, member);
    }
    let checkout_message = &hook.distinct()[&format!("checkout:{}", string(&checkout, "id")?)];
    assert_eq!(string(checkout_message, "kind")?, "checkout");
    assert_eq!(int(&checkout_message["data"], "total_fen")?, 3_000);

    wait_until("outbox drained", delivery_timeout, || {
        Ok(outbox(&node, "pending")?.is_empty())
    })?;
    let delivered = outbox(&node, "delivered")?;
    let listed: BTreeSet<String> = delivered
        .iter()
        .map(|m| string(m, "id"))
        .collect::<Result<_>>()?;
    assert_eq!(listed, expected);
    assert!(delivered.iter().all(|m| m["delivered_ms"].is_i64()));

    // The membership routes are in the OpenAPI document.
    let (_, doc) = node.api().get("/openapi.json", None)?;
    for path in [
        "/api/v1/outbox",
        "/api/v1/members/{id}/check-ins",
        "/api/v1/engagement/run",
        "/api/v1/members/dormant",
    ] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} missing from OpenAPI"
        );
    }

    // Managers only; a bad status is refused.
    let (status, _) = node.get("/api/v1/outbox")?;
    assert_eq!(status, 403);
    let (status, body) = node
        .api()
        .get("/api/v1/outbox?status=lost", Some(&node.manager))?;
    assert_eq!(status, 422);
    assert_eq!(error_code(&body), Some("invalid_field"));
    Ok(())
}

#[test]
fn a_receiver_answering_500_is_retried_until_it_takes_the_message() -> Result<()> {
    let hook = Webhook::start()?;
    hook.fail_next(2);
    let mut node = StoreNode::start_temp()?;
    use_webhook(&mut node, hook.url())?;
    let member = string(&node.register("吴二", "13900000102")?, "id")?;
    let id = format!("member_registered:{member}");
    wait_until("message delivered after retries", delivery_timeout, || {
        Ok(hook.distinct().contains_key(&id))
    })?;
    assert_eq!(hook.refused_count(), 2);
    wait_until("outbox records the delivery", delivery_timeout, || {
        Ok(outbox(&node, "pending")?.is_empty())
    })?;
    let delivered = outbox(&node, "delivered")?;
    let message = delivered
        .iter()
        .find(|m| m["id"] == json!(id))
        .ok_or_else(|| anyhow::anyhow!("{id} not listed as delivered"))?;
    assert_eq!(int(message, "attempts")?, 3, "two failures, then success");
    Ok(())
}

#[test]
fn no_message_is_lost_across_kill9() -> Result<()> {
    let hook = Webhook::start()?;
    let mut node = StoreNode::start_temp()?;
    use_webhook(&mut node, hook.url())?;
    let mut expected = BTreeSet::new();
    // First half while the receiver refuses everything: all of them wait in the outbox.
    hook.set_failing(true);
    for i in 0..10 {
        let member = string(
            &node.register(&format!("会员{i}"), &format!("1390000{i:04}"))?,
            "id",
        )?;
        expected.insert(format!("member_registered:{member}"));
    }
    let pending = outbox(&node, "pending")?;
    if pending.len() != 10 {
        bail!("expected 10 pending messages, found {}", pending.len());
    }
    // Second half while it accepts; kill -9 right after the last acknowledgement.
    hook.set_failing(false);
    for i in 10..20 {
        let member = string(
            &node.register(&format!("会员{i}"), &format!("1390000{i:04}"))?,
            "id",
        )?;
        expected.insert(format!("member_registered:{member}"));
    }
    node.kill9()?;
    node.restart()?;
    wait_until(
        "every message delivered after restart",
        delivery_timeout,
        || Ok(hook.distinct().len() >= expected.len()),
    )?;
    let received: BTreeSet<String> = hook.distinct().keys().cloned().collect();
    assert_eq!(
        received, expected,
        "exactly the queued messages, after dedup"
    );
    assert!(hook.accepted_count() >= expected.len());
    wait_until("outbox drained", delivery_timeout, || {
        Ok(outbox(&node, "pending")?.is_empty())
    })?;
    Ok(())
}

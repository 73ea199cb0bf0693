//! Issue 5 item 2: count cards (计次卡). HQ's template, a purchase at a store, one use per
//! visit, history; uses work while the store is cut off, and a card used past its uses at two
//! stores apart converges to the true figure and is queued at the hub as an exception.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;
use tests::multi::{Hub, Store, converged, wait_until};

const bounded: Duration = Duration::from_secs(60);

fn online(store: &Store) -> Result<bool> {
    Ok(store.sync_status()?["link"] == "online")
}

fn use_card(store: &Store, card: &str) -> Result<(u16, Value)> {
    store.post(
        &format!("/api/v1/count-cards/{card}/uses"),
        &json!({"note": "到店"}),
    )
}

fn remaining(store_or_hub: (u16, Value)) -> Result<i64> {
    let (status, card) = store_or_hub;
    anyhow::ensure!(status == 200, "card: {status} {card}");
    card["remaining"].as_i64().context("remaining")
}

#[test]
fn count_card_bought_used_offline_at_two_stores_converges_with_an_exception() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hub = Hub::start(dir.path())?;
    let a = Store::start("ca", dir.path(), &hub.enroll("ca", dir.path())?)?;
    let b = Store::start("cb", dir.path(), &hub.enroll("cb", dir.path())?)?;
    let (status, template) = hub.api.post(
        "/api/v1/count-card-templates",
        Some(&hub.token),
        &json!({"name": "洗车10次卡", "service": "洗车", "uses": 3, "price_fen": 10_000,
                "validity_days": 30}),
        None,
    )?;
    assert_eq!(status, 201, "{template}");
    let template_id = template["id"].as_str().context("template id")?.to_owned();
    let (status, _) = hub.api.post(
        "/api/v1/count-card-templates",
        Some(&hub.token),
        &json!({"name": "坏", "service": "洗车", "uses": 0, "price_fen": 1, "validity_days": 1}),
        None,
    )?;
    assert_eq!(status, 422, "zero uses refused");
    wait_until("template at both stores", bounded, || {
        let listed = |s: &Store| -> Result<bool> {
            let (status, list) = s.get("/api/v1/count-card-templates")?;
            anyhow::ensure!(status == 200, "{status} {list}");
            Ok(list["templates"].as_array().map(Vec::len) == Some(1))
        };
        Ok(listed(&a)? && listed(&b)?)
    })
    .with_context(|| format!("store log: {}", a.log()))?;

    let member = a.ok(
        "/api/v1/members",
        &json!({"name": "孙八", "phone": "13900006666"}),
    )?;
    let member = member["id"].as_str().context("member id")?.to_owned();
    let (status, refused) = a.post(
        &format!("/api/v1/members/{member}/count-cards"),
        &json!({"template_id": "00000000-0000-0000-0000-000000000000"}),
    )?;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (422, Some("unknown_count_card_template"))
    );
    let card = a.ok(
        &format!("/api/v1/members/{member}/count-cards"),
        &json!({"template_id": template_id, "method": "external"}),
    )?;
    assert_eq!(
        (card["uses"].as_i64(), card["remaining"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(card["price_fen"], 10_000);
    let card_id = card["id"].as_str().context("card id")?.to_owned();
    let (status, first) = use_card(&a, &card_id)?;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["card"]["remaining"], 2);
    wait_until("the card and its use everywhere", bounded, || {
        Ok(online(&a)? && online(&b)? && converged(&hub, &[&a, &b])?)
    })?;
    assert_eq!(
        remaining(b.get(&format!("/api/v1/count-cards/{card_id}"))?)?,
        2
    );

    // Apart: store a takes both remaining uses, store b (which still sees 2) takes one more.
    hub.kill9();
    for left in [1, 0] {
        let (status, used) = use_card(&a, &card_id)?;
        assert_eq!(
            (status, used["card"]["remaining"].as_i64()),
            (201, Some(left)),
            "{used}"
        );
    }
    let (status, used_up) = use_card(&a, &card_id)?;
    assert_eq!(
        (status, used_up["error"]["code"].as_str()),
        (409, Some("count_card_used_up")),
        "{used_up}"
    );
    let (status, at_b) = use_card(&b, &card_id)?;
    assert_eq!(
        (status, at_b["card"]["remaining"].as_i64()),
        (201, Some(1)),
        "{at_b}"
    );
    let b_use = at_b["use_id"].as_str().context("use id")?.to_owned();

    hub.restart()?;
    wait_until("converged after the partition", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    for (api, token) in [
        (&a.api, &a.manager),
        (&b.api, &b.manager),
        (&hub.api, &hub.token),
    ] {
        let (status, cards) = api.get(
            &format!("/api/v1/members/{member}/count-cards"),
            Some(token),
        )?;
        assert_eq!(status, 200, "{cards}");
        let card = &cards["count_cards"][0];
        assert_eq!(card["remaining"], -1, "the true figure everywhere: {cards}");
        assert_eq!(card["history"].as_array().map(Vec::len), Some(4), "{cards}");
    }
    let (_, queue) = hub.get("/api/v1/exceptions")?;
    let exceptions = queue["exceptions"].as_array().context("exceptions")?;
    let overuse: Vec<&Value> = exceptions
        .iter()
        .filter(|e| e["kind"] == "count_card_overuse")
        .collect();
    assert_eq!(overuse.len(), 1, "{queue}");
    assert_eq!(overuse[0]["amount"], 1);
    assert_eq!(overuse[0]["member_id"], member.as_str());
    assert_eq!(overuse[0]["stores"], json!(["ca", "cb"]));

    // Store b gives its use back (manager only, once): the card is square again everywhere.
    let path = format!("/api/v1/count-card-uses/{b_use}/reversals");
    let (status, _) = b.api.post(&path, Some(&b.cashier), &json!({}), None)?;
    assert_eq!(status, 403);
    let reversed = b.ok(&path, &json!({"reason": "重复扣次"}))?;
    assert_eq!(reversed["remaining"], 0);
    let (status, again) = b.post(&path, &json!({}))?;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("already_reversed"))
    );
    wait_until("the reversal everywhere", bounded, || {
        converged(&hub, &[&a, &b])
    })?;
    assert_eq!(
        remaining(a.get(&format!("/api/v1/count-cards/{card_id}"))?)?,
        0
    );
    Ok(())
}

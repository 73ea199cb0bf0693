//! Hub + stores as real processes on loopback: replication, partitions, crashes, refusals,
//! duplicate members.

use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::Duration;
use tests::multi::{
    Hub, Store, UdpRelay, balances_match_ledgers, converged, point_bundle_at, wait_until,
};

const converge: Duration = Duration::from_secs(60);

fn product(store: &Store, sku: &str, price: i64) -> Result<()> {
    store.ok(
        "/api/v1/products",
        &json!({"sku": sku, "name": sku, "price_fen": price}),
    )?;
    Ok(())
}

fn member(store: &Store, name: &str, phone: &str) -> Result<String> {
    let created = store.ok("/api/v1/members", &json!({"name": name, "phone": phone}))?;
    Ok(created["id"].as_str().context("id")?.to_owned())
}

fn recharge(store: &Store, member: &str, amount: i64) -> Result<()> {
    store.ok(
        &format!("/api/v1/members/{member}/recharges"),
        &json!({"amount_fen": amount}),
    )?;
    Ok(())
}

fn spend(store: &Store, member: &str, sku: &str, qty: i64, unit: i64) -> Result<(u16, Value)> {
    store.post(
        "/api/v1/checkouts",
        &json!({"member_id": member, "lines": [{"sku": sku, "qty": qty}],
                "payments": [{"method": "stored_value", "amount_fen": unit * qty}]}),
    )
}

fn cash(store: &Store, sku: &str, unit: i64) -> Result<String> {
    let sale = store.ok(
        "/api/v1/checkouts",
        &json!({"lines": [{"sku": sku, "qty": 1}], "payments": [{"method": "cash", "amount_fen": unit}]}),
    )?;
    Ok(sale["id"].as_str().context("id")?.to_owned())
}

fn online(store: &Store) -> Result<bool> {
    Ok(store.sync_status()?["link"] == "online")
}

fn all_converged(hub: &Hub, stores: &[&Store]) -> Result<()> {
    wait_until("all digests equal", converge, || converged(hub, stores))?;
    balances_match_ledgers(&hub.api, &hub.token)?;
    for store in stores {
        balances_match_ledgers(&store.api, &store.manager)?;
    }
    Ok(())
}

#[test]
fn a_member_registered_at_one_store_is_usable_at_another() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let a = Store::start("sa", dir.path(), &hub.enroll("sa", dir.path())?)?;
    let b = Store::start("sb", dir.path(), &hub.enroll("sb", dir.path())?)?;
    product(&a, "P1", 1_000)?;
    let id = member(&a, "王五", "+86 139 0000 1111")?;
    recharge(&a, &id, 50_000)?;
    wait_until("member visible at B", converge, || {
        let (_, found) = b.get("/api/v1/members?phone=13900001111")?;
        Ok(found["members"][0]["balance_fen"] == 55_000)
    })?;
    wait_until("catalog at B", converge, || {
        Ok(b.get("/api/v1/products")?.1["products"][0]["sku"] == "P1")
    })?;
    let (status, sale) = spend(&b, &id, "P1", 3, 1_000)?;
    assert_eq!(status, 201, "{sale}");
    wait_until("spend visible at A", converge, || {
        Ok(a.get(&format!("/api/v1/members/{id}"))?.1["balance_fen"] == 52_000)
    })?;
    all_converged(&hub, &[&a, &b])?;
    let (_, at_hub) = hub.get(&format!("/api/v1/members/{id}"))?;
    assert_eq!(at_hub["balance_fen"], 52_000);
    let (_, stores) = hub.get("/api/v1/stores")?;
    let list = stores["stores"].as_array().context("stores")?;
    assert_eq!(list.len(), 2);
    assert!(
        list.iter().all(|s| s["online"] == true && s["lag"] == 0),
        "{stores}"
    );
    Ok(())
}

#[test]
fn stores_keep_selling_through_a_partition_and_converge_after() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hub = Hub::start(dir.path())?;
    let a = Store::start("pa", dir.path(), &hub.enroll("pa", dir.path())?)?;
    let relay = UdpRelay::start(hub.quic)?;
    let bundle_b = hub.enroll("pb", dir.path())?;
    point_bundle_at(&bundle_b, relay.address)?;
    let b = Store::start("pb", dir.path(), &bundle_b)?;
    product(&a, "P1", 500)?;
    let id = member(&a, "赵六", "13900002222")?;
    recharge(&a, &id, 20_000)?;
    wait_until("B online and caught up", converge, || {
        Ok(online(&b)? && converged(&hub, &[&a, &b])?)
    })?;

    relay.cut();
    wait_until("B sees the link down", converge, || Ok(!online(&b)?))?;
    for _ in 0..5 {
        cash(&a, "P1", 500)?;
        cash(&b, "P1", 500)?;
    }
    assert_eq!(
        spend(&b, &id, "P1", 2, 500)?.0,
        201,
        "B spends stored value offline"
    );
    assert!(b.sync_status()?["waiting"].as_u64().unwrap_or(0) > 0);
    relay.restore();
    all_converged(&hub, &[&a, &b])?;
    assert_eq!(
        hub.get(&format!("/api/v1/members/{id}"))?.1["balance_fen"],
        19_000
    );

    // Now the hub itself goes away and comes back.
    hub.kill9();
    for _ in 0..3 {
        cash(&a, "P1", 500)?;
        cash(&b, "P1", 500)?;
    }
    hub.restart()?;
    all_converged(&hub, &[&a, &b])?;
    let (_, sales) = a.get("/api/v1/checkouts?limit=500")?;
    assert_eq!(
        sales["checkouts"].as_array().map(Vec::len),
        Some(8 + 8 + 1),
        "A holds every sale of both stores"
    );
    Ok(())
}

#[test]
fn hub_killed_mid_burst_loses_nothing_and_applies_nothing_twice() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hub = Hub::start(dir.path())?;
    let a = Store::start("ka", dir.path(), &hub.enroll("ka", dir.path())?)?;
    product(&a, "P1", 300)?;
    let id = member(&a, "孙七", "13900003333")?;
    // Within the default prepaid cap (¥5,000); 120 sales of ¥3 need ¥360.
    recharge(&a, &id, 100_000)?;
    wait_until("A online", converge, || online(&a))?;
    let mut acknowledged = Vec::new();
    for n in 0..120 {
        if n == 60 {
            hub.kill9();
        }
        let (status, sale) = spend(&a, &id, "P1", 1, 300)?;
        assert_eq!(status, 201, "{sale}");
        acknowledged.push(sale["id"].as_str().context("id")?.to_owned());
    }
    hub.restart()?;
    all_converged(&hub, &[&a])?;
    for sale in &acknowledged {
        assert_eq!(
            hub.get(&format!("/api/v1/checkouts/{sale}"))?.0,
            200,
            "sale {sale} reached the hub"
        );
    }
    let (_, at_hub) = hub.get(&format!("/api/v1/members/{id}/ledger"))?;
    let (_, at_store) = a.get(&format!("/api/v1/members/{id}/ledger"))?;
    assert_eq!(
        at_hub["entries"].as_array().map(Vec::len),
        at_store["entries"].as_array().map(Vec::len)
    );
    assert_eq!(at_hub["balance_fen"], 110_000 - 120 * 300);
    Ok(())
}

#[test]
fn the_same_phone_registered_at_two_stores_becomes_one_member() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut hub = Hub::start(dir.path())?;
    let a = Store::start("da", dir.path(), &hub.enroll("da", dir.path())?)?;
    let b = Store::start("db", dir.path(), &hub.enroll("db", dir.path())?)?;
    wait_until("both online", converge, || Ok(online(&a)? && online(&b)?))?;
    hub.kill9();
    let at_a = member(&a, "周八", "13900004444")?;
    let at_b = member(&b, "周八", "13900004444")?;
    recharge(&a, &at_a, 10_000)?;
    recharge(&b, &at_b, 20_000)?;
    hub.restart()?;
    all_converged(&hub, &[&a, &b])?;
    for (api, token) in [
        (&a.api, &a.manager),
        (&b.api, &b.manager),
        (&hub.api, &hub.token),
    ] {
        let (_, found) = api.get("/api/v1/members?phone=13900004444", Some(token))?;
        let members = found["members"].as_array().context("members")?;
        assert_eq!(members.len(), 1, "one member: {found}");
        assert_eq!(
            members[0]["balance_fen"],
            10_000 + 20_000,
            "balances of both kept"
        );
        assert_eq!(members[0]["merged_from"].as_array().map(Vec::len), Some(1));
        let (_, ledger) = api.get(
            &format!(
                "/api/v1/members/{}/ledger",
                members[0]["id"].as_str().context("id")?
            ),
            Some(token),
        )?;
        assert_eq!(
            ledger["entries"].as_array().map(Vec::len),
            Some(2),
            "history of both kept"
        );
    }
    let canonical = std::cmp::min(at_a.clone(), at_b.clone());
    assert_eq!(
        a.get(&format!("/api/v1/members/{at_b}"))?.1["id"],
        canonical.as_str()
    );
    Ok(())
}

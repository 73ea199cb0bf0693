//! Issue 6 acceptance: receipt at A → sale at A → transfer A→B asked for by HQ and shipped by A
//! while B is cut off → B receives later, partially → every replica agrees
//! on stock at A, at B and in transit (scope digests and numbers), the discrepancy is listed at
//! the hub, and the hub relayed stock only to the stores it concerns.

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::time::Duration;
use tests::multi::{Hub, Store, UdpRelay, converged, point_bundle_at, wait_until};

const bounded: Duration = Duration::from_secs(60);

fn online(store: &Store) -> Result<bool> {
    Ok(store.sync_status()?["link"] == "online")
}

fn body(reply: (u16, Value), what: &str) -> Result<Value> {
    if reply.0 != 200 {
        bail!("{what}: {} {}", reply.0, reply.1);
    }
    Ok(reply.1)
}

fn hub_qty(hub: &Hub, store: &str, sku: &str) -> Result<Option<i64>> {
    let list = body(
        hub.get(&format!("/api/v1/stock?store={store}&sku={sku}"))?,
        "hub stock",
    )?;
    Ok(list["stock"][0]["qty"].as_i64())
}

fn store_qty(store: &Store, sku: &str) -> Result<Option<i64>> {
    let list = body(
        store.get(&format!("/api/v1/stock?sku={sku}"))?,
        "store stock",
    )?;
    Ok(list["stock"][0]["qty"].as_i64())
}

fn scopes(reply: (u16, Value)) -> Result<serde_json::Map<String, Value>> {
    body(reply, "digest")?["scopes"]
        .as_object()
        .cloned()
        .context("scopes")
}

/// The store's scopes are its own two, and the hub holds the same hashes for them.
fn scopes_agree(hub: &Hub, store: &Store) -> Result<bool> {
    let at_hub = scopes(hub.get("/api/v1/sync/digest")?)?;
    let at_store = scopes(store.get("/api/v1/sync/digest")?)?;
    let mut keys: Vec<&String> = at_store.keys().collect();
    keys.sort();
    let own = [
        format!("stock:{}", store.id),
        format!("transfers:{}", store.id),
    ];
    if keys != own.iter().collect::<Vec<_>>() {
        bail!("{} lists scopes {keys:?}", store.id);
    }
    Ok(at_store.iter().all(|(k, v)| at_hub.get(k) == Some(v)))
}

fn movements_of(store: &Store, of_store: &str) -> Result<i64> {
    let conn = rusqlite::Connection::open_with_flags(
        store.dir.join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM stock_movements WHERE store = ?1",
        [of_store],
        |row| row.get(0),
    )?)
}

#[test]
fn transfer_shipped_while_destination_is_cut_off_and_received_short_converges() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let a = Store::start("sa", dir.path(), &hub.enroll("sa", dir.path())?)?;
    let relay = UdpRelay::start(hub.quic)?;
    let bundle_b = hub.enroll("sb", dir.path())?;
    point_bundle_at(&bundle_b, relay.address)?;
    let b = Store::start("sb", dir.path(), &bundle_b)?;
    a.ok(
        "/api/v1/products",
        &json!({"sku": "X1", "name": "矿泉水", "price_fen": 200}),
    )?;
    a.ok(
        "/api/v1/stock/movements",
        &json!({"kind": "receipt", "lines": [{"sku": "X1", "qty": 20}]}),
    )?;
    a.ok(
        "/api/v1/checkouts",
        &json!({"lines": [{"sku": "X1", "qty": 3}],
                "payments": [{"method": "cash", "amount_fen": 600}]}),
    )?;
    assert_eq!(store_qty(&a, "X1")?, Some(17));
    wait_until("B online with the product", bounded, || {
        Ok(online(&b)? && converged(&hub, &[&a, &b])?)
    })?;

    relay.cut();
    wait_until("B sees the link down", bounded, || Ok(!online(&b)?))?;
    // HQ asks A to send 10 to B; A ships while B cannot hear of it.
    let (status, asked) = hub.api.post(
        "/api/v1/transfers",
        Some(&hub.token),
        &json!({"from_store": "sa", "to_store": "sb", "lines": [{"sku": "X1", "qty": 10}],
                "note": "补货"}),
        None,
    )?;
    assert_eq!(status, 201, "{asked}");
    assert_eq!(asked["requested_by"], "hq");
    let id = asked["id"].as_str().context("transfer id")?.to_owned();
    wait_until("A has HQ's request", bounded, || {
        let list = body(a.get("/api/v1/transfers?state=requested")?, "A transfers")?;
        Ok(list["transfers"][0]["id"] == id.as_str())
    })?;
    let (status, reply) = b.post(&format!("/api/v1/transfers/{id}/ship"), &json!({}))?;
    assert_eq!(status, 404, "B does not know it yet: {reply}");
    let shipped = a.ok(&format!("/api/v1/transfers/{id}/ship"), &json!({}))?;
    assert_eq!(shipped["state"], "in_transit", "{shipped}");
    assert_eq!(store_qty(&a, "X1")?, Some(7));
    wait_until("the hub sees it in transit", bounded, || {
        let list = body(hub.get("/api/v1/transfers?state=in_transit")?, "in transit")?;
        Ok(list["transfers"][0]["lines"][0]["shipped"] == 10)
    })?;
    assert_eq!(hub_qty(&hub, "sa", "X1")?, Some(7));

    // B comes back, learns of the shipment and receives 8 of the 10.
    relay.restore();
    wait_until("B has the shipment", bounded, || {
        let list = body(b.get("/api/v1/transfers?state=in_transit")?, "B transfers")?;
        Ok(list["transfers"][0]["id"] == id.as_str())
    })?;
    let (status, reply) = a.post(
        &format!("/api/v1/transfers/{id}/receive"),
        &json!({"lines": [{"sku": "X1", "qty": 10}]}),
    )?;
    assert_eq!(status, 409, "only the destination receives: {reply}");
    let received = b.ok(
        &format!("/api/v1/transfers/{id}/receive"),
        &json!({"lines": [{"sku": "X1", "qty": 8}]}),
    )?;
    assert_eq!(received["state"], "received", "{received}");
    assert_eq!(received["lines"][0]["missing"], 2, "{received}");
    assert_eq!(store_qty(&b, "X1")?, Some(8));

    wait_until("every replica agrees", bounded, || {
        Ok(converged(&hub, &[&a, &b])? && scopes_agree(&hub, &a)? && scopes_agree(&hub, &b)?)
    })?;
    assert_eq!(hub_qty(&hub, "sa", "X1")?, Some(7));
    assert_eq!(hub_qty(&hub, "sb", "X1")?, Some(8));
    assert_eq!(store_qty(&a, "X1")?, Some(7));
    let in_transit = body(hub.get("/api/v1/transfers?state=in_transit")?, "in transit")?;
    assert_eq!(in_transit["transfers"], json!([]), "{in_transit}");
    for node in [&a, &b] {
        let view = body(node.get("/api/v1/transfers")?, "transfers")?;
        assert_eq!(view["transfers"][0]["state"], "received", "{view}");
        assert_eq!(view["transfers"][0]["lines"][0]["received"], 8);
    }
    let discrepancies = body(hub.get("/api/v1/stock/discrepancies")?, "discrepancies")?;
    let list = discrepancies["discrepancies"]
        .as_array()
        .context("discrepancies")?;
    assert_eq!(list.len(), 1, "{discrepancies}");
    assert_eq!(list[0]["transfer_id"], id.as_str());
    assert_eq!(
        (
            &list[0]["shipped"],
            &list[0]["received"],
            &list[0]["missing"]
        ),
        (&json!(10), &json!(8), &json!(2))
    );

    // Scoped relay: B holds A's movements of the transfer only (not A's receipt or sale), A
    // holds B's receipt of it.
    assert_eq!(movements_of(&b, "sa")?, 1, "only A's shipment reached B");
    assert_eq!(movements_of(&a, "sb")?, 1, "B's receipt reached A");
    assert_eq!(movements_of(&a, "sa")?, 3);
    Ok(())
}

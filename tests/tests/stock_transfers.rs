//! Issue 6 acceptance: receipt at A → sale at A → transfer A→B asked for by HQ and shipped by A
//! while B is cut off → B receives later, partially → every replica agrees
//! on stock at A, at B and in transit (scope digests and numbers), the discrepancy is listed at
//! the hub, and the hub relayed stock only to the stores it concerns. Also: a stocktake at B
//! during sales and late-arriving sync, and bundle stock (see the second test).

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
    // HQ asks A to send 10 to B; A ships while B cannot hear of it. The request carries an
    // Idempotency-Key and no id: its retry must not ask for a second transfer.
    let ask = json!({"from_store": "sa", "to_store": "sb", "lines": [{"sku": "X1", "qty": 10}],
                     "note": "补货"});
    let (status, asked) = hub.api.post(
        "/api/v1/transfers",
        Some(&hub.token),
        &ask,
        Some("hq-ask-1"),
    )?;
    assert_eq!(status, 201, "{asked}");
    assert_eq!(asked["requested_by"], "hq");
    let id = asked["id"].as_str().context("transfer id")?.to_owned();
    let (status, again) = hub.api.post(
        "/api/v1/transfers",
        Some(&hub.token),
        &ask,
        Some("hq-ask-1"),
    )?;
    assert_eq!(
        (status, &again),
        (201, &asked),
        "a retry gets the first answer"
    );
    let mut other = ask.clone();
    other["lines"][0]["qty"] = json!(11);
    let (status, reused) = hub.api.post(
        "/api/v1/transfers",
        Some(&hub.token),
        &other,
        Some("hq-ask-1"),
    )?;
    assert_eq!(status, 422, "{reused}");
    assert_eq!(
        reused["error"]["code"], "idempotency_key_reused",
        "{reused}"
    );
    let requested = body(
        hub.get("/api/v1/transfers?state=requested")?,
        "hub transfers",
    )?;
    assert_eq!(
        requested["transfers"].as_array().map(Vec::len),
        Some(1),
        "{requested}"
    );
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

/// PUT one catalog item (or bundle) at the hub.
fn hub_put(hub: &Hub, path: &str, item: &Value) -> Result<Value> {
    let (status, reply) = hub.put(path, item)?;
    if status != 200 {
        bail!("PUT {path}: {status} {reply}");
    }
    Ok(reply)
}

fn bundle_sale(store: &Store, qty: i64) -> Result<Value> {
    store.ok(
        "/api/v1/checkouts",
        &json!({"lines": [{"sku": "K1", "qty": qty}],
                "payments": [{"method": "cash", "amount_fen": 500 * qty}]}),
    )
}

fn count_of(take: &Value, sku: &str) -> Result<Value> {
    take["counts"]
        .as_array()
        .and_then(|counts| counts.iter().find(|c| c["sku"] == sku).cloned())
        .with_context(|| format!("no count of {sku} in {take}"))
}

/// Issue 6, stocktake with late-arriving sync, and bundle stock at the HTTP level, on one
/// cluster (hub, A, B behind a cuttable relay):
/// - a bundle (套餐 K1 = 2 × X1 + 1 × Y1, from HQ's catalog) sold at B takes its components'
///   stock and none of its own; a line refund gives the components back;
/// - during B's count, B keeps selling (offline), and what the chain sends B about its goods
///   arrives by sync after B counted: HQ's transfer request and A's shipment to B. B's stock
///   moves only by B's own movements (the design: only the store holding the goods writes its
///   movements, and a store restored from an older backup is refused by the hub), so the
///   adjustment is counted − expected at the moment of counting, whatever arrives later; B's
///   receipt of the transfer after the count is not counted twice.
#[test]
fn stocktake_during_sales_and_late_sync_and_bundle_stock() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let a = Store::start("ta", dir.path(), &hub.enroll("ta", dir.path())?)?;
    let relay = UdpRelay::start(hub.quic)?;
    let bundle_b = hub.enroll("tb", dir.path())?;
    point_bundle_at(&bundle_b, relay.address)?;
    let b = Store::start("tb", dir.path(), &bundle_b)?;
    hub_put(
        &hub,
        "/api/v1/catalog/X1",
        &json!({"name": "矿泉水", "price_fen": 200}),
    )?;
    hub_put(
        &hub,
        "/api/v1/catalog/Y1",
        &json!({"name": "纸杯", "price_fen": 100}),
    )?;
    let bundle = hub_put(
        &hub,
        "/api/v1/catalog/bundles/K1",
        &json!({"name": "饮水套餐", "price_fen": 500,
                "components": [{"sku": "X1", "qty": 2}, {"sku": "Y1", "qty": 1}]}),
    )?;
    assert_eq!(bundle["components"].as_array().map(Vec::len), Some(2));
    wait_until("the catalog at both stores", bounded, || {
        Ok(online(&b)? && b.get("/api/v1/products/K1")?.0 == 200 && converged(&hub, &[&a, &b])?)
    })?;
    a.ok(
        "/api/v1/stock/movements",
        &json!({"kind": "receipt", "lines": [{"sku": "X1", "qty": 30}]}),
    )?;
    b.ok(
        "/api/v1/stock/movements",
        &json!({"kind": "receipt", "lines": [{"sku": "X1", "qty": 20}, {"sku": "Y1", "qty": 10}]}),
    )?;

    // Bundle stock: 3 × K1 take 6 × X1 and 3 × Y1; one K1 refunded gives back 2 and 1.
    let sold = bundle_sale(&b, 3)?;
    assert_eq!(sold["stock_below_zero"], json!([]), "{sold}");
    assert_eq!(
        (store_qty(&b, "X1")?, store_qty(&b, "Y1")?),
        (Some(14), Some(7))
    );
    assert_eq!(
        store_qty(&b, "K1")?,
        None,
        "a bundle has no stock of its own"
    );
    let sale_id = sold["id"].as_str().context("sale id")?;
    b.ok(
        &format!("/api/v1/checkouts/{sale_id}/refunds"),
        &json!({"lines": [{"line": 0, "qty": 1}]}),
    )?;
    assert_eq!(
        (store_qty(&b, "X1")?, store_qty(&b, "Y1")?),
        (Some(16), Some(8))
    );

    // B opens a count; its link goes down.
    let take = b.ok("/api/v1/stocktakes", &json!({"note": "盘点"}))?;
    let take_id = take["id"].as_str().context("stocktake id")?.to_owned();
    relay.cut();
    wait_until("B sees the link down", bounded, || Ok(!online(&b)?))?;
    // Meanwhile HQ asks A to send 10 × X1 to B and A ships them.
    let (status, asked) = hub.api.post(
        "/api/v1/transfers",
        Some(&hub.token),
        &json!({"from_store": "ta", "to_store": "tb", "lines": [{"sku": "X1", "qty": 10}]}),
        None,
    )?;
    assert_eq!(status, 201, "{asked}");
    let transfer = asked["id"].as_str().context("transfer id")?.to_owned();
    wait_until("A has HQ's request", bounded, || {
        let list = body(a.get("/api/v1/transfers?state=requested")?, "A transfers")?;
        Ok(list["transfers"][0]["id"] == transfer.as_str())
    })?;
    a.ok(&format!("/api/v1/transfers/{transfer}/ship"), &json!({}))?;

    // B counts X1 at 15 while its books say 16 (one missing), then sells a bundle.
    let counted = b.ok(
        &format!("/api/v1/stocktakes/{take_id}/counts"),
        &json!({"counts": [{"sku": "X1", "counted": 15}]}),
    )?;
    let x1 = count_of(&counted, "X1")?;
    assert_eq!(
        (&x1["expected"], &x1["adjustment"]),
        (&json!(16), &json!(-1))
    );
    bundle_sale(&b, 1)?;
    assert_eq!(store_qty(&b, "X1")?, Some(14));

    // The link returns: HQ's request and A's shipment reach B after its count.
    relay.restore();
    wait_until("B has the shipment", bounded, || {
        let list = body(b.get("/api/v1/transfers?state=in_transit")?, "B transfers")?;
        Ok(list["transfers"][0]["id"] == transfer.as_str())
    })?;
    assert_eq!(
        store_qty(&b, "X1")?,
        Some(14),
        "A's shipment is not B's stock"
    );
    let seen = body(
        b.get(&format!("/api/v1/stocktakes/{take_id}"))?,
        "stocktake",
    )?;
    assert_eq!(count_of(&seen, "X1")?["expected"], 16, "{seen}");
    // B receives all 10 (its own movement, after the count), counts Y1, and finishes.
    b.ok(
        &format!("/api/v1/transfers/{transfer}/receive"),
        &json!({"lines": [{"sku": "X1", "qty": 10}]}),
    )?;
    assert_eq!(store_qty(&b, "X1")?, Some(24));
    let counted = b.ok(
        &format!("/api/v1/stocktakes/{take_id}/counts"),
        &json!({"counts": [{"sku": "Y1", "counted": 7}]}),
    )?;
    let y1 = count_of(&counted, "Y1")?;
    assert_eq!((&y1["expected"], &y1["adjustment"]), (&json!(7), &json!(0)));
    b.ok(&format!("/api/v1/stocktakes/{take_id}/finish"), &json!({}))?;
    // X1: 15 on the shelf at the count, 2 sold in a bundle since, 10 received: 23.
    assert_eq!(
        (store_qty(&b, "X1")?, store_qty(&b, "Y1")?),
        (Some(23), Some(7))
    );

    wait_until("every replica agrees", bounded, || {
        Ok(converged(&hub, &[&a, &b])? && scopes_agree(&hub, &a)? && scopes_agree(&hub, &b)?)
    })?;
    assert_eq!(hub_qty(&hub, "tb", "X1")?, Some(23));
    assert_eq!(hub_qty(&hub, "tb", "Y1")?, Some(7));
    assert_eq!(hub_qty(&hub, "tb", "K1")?, None);
    assert_eq!(hub_qty(&hub, "ta", "X1")?, Some(20));
    let discrepancies = body(hub.get("/api/v1/stock/discrepancies")?, "discrepancies")?;
    assert_eq!(discrepancies["discrepancies"], json!([]), "{discrepancies}");
    // One stocktake movement at B: the −1 of X1 (Y1 matched, nothing written for it).
    let conn = rusqlite::Connection::open_with_flags(
        b.dir.join("store.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let adjustments: Vec<(String, i64)> = conn
        .prepare("SELECT sku, delta FROM stock_movements WHERE kind = 'stocktake' ORDER BY sku")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    assert_eq!(adjustments, vec![("X1".to_owned(), -1)]);
    Ok(())
}

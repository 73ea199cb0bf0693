//! A cashier's day against a real `store-node` process: register a member, recharge, add
//! products, check out with cash / stored value / points, refund, read the ledger; and tier
//! upgrades from rolling spend (default rules: 黄金 from ¥5,000 with 5 % off, 钻石 from ¥20,000
//! with 10 % off).

use anyhow::Result;
use tests::{StoreNode, Value, array, int, json, ledger_sums, string, test_store_id};

/// `(kind, account, amount, checkout_id)` of a ledger entry.
type Entry = (String, String, i64, Option<String>);

fn entry_of(value: &Value) -> Result<Entry> {
    Ok((
        string(value, "kind")?,
        string(value, "account")?,
        int(value, "amount")?,
        value
            .get("checkout_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    ))
}

fn e(kind: &str, account: &str, amount: i64, checkout: Option<&str>) -> Entry {
    (
        kind.to_owned(),
        account.to_owned(),
        amount,
        checkout.map(str::to_owned),
    )
}

/// Check that `entries` (newest first) consist of `groups` in this order, each group being the
/// entries of one operation in any order among themselves.
fn assert_ledger_groups(entries: &[Value], groups: &[(&str, Vec<Entry>)]) -> Result<()> {
    let actual: Vec<Entry> = entries.iter().map(entry_of).collect::<Result<_>>()?;
    let expected_len: usize = groups.iter().map(|(_, g)| g.len()).sum();
    assert_eq!(
        actual.len(),
        expected_len,
        "ledger has {} entries, expected {expected_len}: {actual:#?}",
        actual.len()
    );
    let mut at = 0;
    for (name, group) in groups {
        let mut got = actual[at..at + group.len()].to_vec();
        let mut want = group.clone();
        got.sort();
        want.sort();
        assert_eq!(
            got,
            want,
            "ledger entries {at}..{} should be the `{name}` group (newest first); whole ledger: {actual:#?}",
            at + group.len()
        );
        at += group.len();
    }
    Ok(())
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|c| c["id"].as_str().unwrap_or("?").to_owned())
        .collect()
}

#[test]
fn register_recharge_checkout_refund_and_ledger() -> Result<()> {
    let node = StoreNode::start_temp()?;

    // --- register: phone with +86 and spaces is stored as 11 digits -----------------------
    let member = node.register("张三", "+86 138 0013 8000")?;
    let id = string(&member, "id")?;
    assert_eq!(member["name"], "张三");
    assert_eq!(member["phone"], "13800138000", "{member}");
    let card_no = string(&member, "card_no")?;
    assert!(
        card_no.len() == 12 && card_no.bytes().all(|b| b.is_ascii_digit()),
        "generated card number should be 12 digits: {member}"
    );
    for (field, value) in [
        ("balance_fen", 0),
        ("principal_fen", 0),
        ("bonus_fen", 0),
        ("points", 0),
        ("spend_12m_fen", 0),
    ] {
        assert_eq!(int(&member, field)?, value, "new member {field}: {member}");
    }
    assert_eq!(member["tier"], "普通", "{member}");
    assert_eq!(member["tags"], json!([]), "{member}");
    assert!(int(&member, "created_ms")? > 1_600_000_000_000, "{member}");

    // Lookups by phone, card number and name prefix find the member.
    for query in [
        "phone=13800138000".to_owned(),
        format!("card_no={card_no}"),
        format!("q={}", "%E5%BC%A0"), // "张", URL-encoded
    ] {
        let (status, found) = node.get(&format!("/api/v1/members?{query}"))?;
        assert_eq!(status, 200, "GET members?{query}: {found}");
        assert!(
            array(&found, "members")?
                .iter()
                .any(|m| m["id"] == id.as_str()),
            "GET members?{query} should find {id}: {found}"
        );
    }
    assert_eq!(
        node.member(&id)?,
        member,
        "GET member equals the POST response"
    );

    // --- recharge ¥500 → +10 % bonus ------------------------------------------------------
    let recharge = node.recharge(&id, 50_000)?;
    assert_eq!(recharge["member_id"], id.as_str());
    assert_eq!(int(&recharge, "amount_fen")?, 50_000, "{recharge}");
    assert_eq!(int(&recharge, "bonus_fen")?, 5_000, "{recharge}");
    assert_eq!(int(&recharge, "balance_fen")?, 55_000, "{recharge}");
    assert_eq!(int(&recharge, "principal_fen")?, 50_000, "{recharge}");
    let m = node.member(&id)?;
    assert_eq!(
        (
            int(&m, "balance_fen")?,
            int(&m, "principal_fen")?,
            int(&m, "bonus_fen")?
        ),
        (55_000, 50_000, 5_000),
        "{m}"
    );

    // --- products (manager) ----------------------------------------------------------------
    let a = node.add_product("SKU-A", "可口可乐 2L", 1_299)?;
    assert_eq!(
        a,
        json!({"sku": "SKU-A", "name": "可口可乐 2L", "price_fen": 1_299, "active": true,
            "barcode": null, "category": null, "member_price_fen": null, "components": []})
    );
    node.add_product("SKU-B", "大米 5kg", 2_500)?;
    node.add_product("SKU-C", "口香糖", 99)?;
    let (status, products) = node.get("/api/v1/products")?;
    assert_eq!(status, 200, "{products}");
    for (sku, price) in [("SKU-A", 1_299), ("SKU-B", 2_500), ("SKU-C", 99)] {
        assert!(
            array(&products, "products")?
                .iter()
                .any(|p| p["sku"] == sku && p["price_fen"] == price && p["active"] == true),
            "{sku} at {price} should be listed: {products}"
        );
    }

    // --- cash checkout earns points: 1 per whole ¥1 --------------------------------------
    let c1 = node.checkout(&json!({
        "member_id": id,
        "lines": [{"sku": "SKU-A", "qty": 2}, {"sku": "SKU-C", "qty": 1}],
        "payments": [{"method": "cash", "amount_fen": 2_697}],
    }))?;
    let c1_id = string(&c1, "id")?;
    assert_eq!(c1["member_id"], id.as_str());
    assert_eq!(int(&c1, "subtotal_fen")?, 2_697, "{c1}");
    assert_eq!(int(&c1, "discount_fen")?, 0, "{c1}");
    assert_eq!(int(&c1, "total_fen")?, 2_697, "{c1}");
    assert_eq!(int(&c1, "points_earned")?, 26, "{c1}");
    assert_eq!(int(&c1, "points_used")?, 0, "{c1}");
    assert_eq!(c1["tier"], "普通", "{c1}");
    assert_eq!(c1["refunded"], false, "{c1}");
    assert_eq!(int(&c1, "balance_fen")?, 55_000, "{c1}");
    assert_eq!(int(&c1, "points")?, 26, "{c1}");
    assert_eq!(
        c1["lines"],
        json!([
            {"sku": "SKU-A", "name": "可口可乐 2L", "qty": 2, "unit_price_fen": 1_299, "amount_fen": 2_598,
             "points_earned": 25},
            {"sku": "SKU-C", "name": "口香糖", "qty": 1, "unit_price_fen": 99, "amount_fen": 99,
             "points_earned": 1},
        ]),
        "{c1}"
    );
    assert!(
        c1["receipt"].as_str().is_some_and(|r| !r.trim().is_empty()),
        "receipt should be non-empty text: {c1}"
    );

    // --- several lines, paid with stored value and points ---------------------------------
    let before = node.member(&id)?;
    assert_eq!(int(&before, "points")?, 26, "{before}");
    assert_eq!(int(&before, "spend_12m_fen")?, 2_697, "{before}");
    let c2 = node.checkout(&json!({
        "member_id": id,
        "lines": [
            {"sku": "SKU-A", "qty": 1},
            {"sku": "SKU-B", "qty": 2},
            {"sku": "SKU-C", "qty": 3},
        ],
        "payments": [
            {"method": "stored_value", "amount_fen": 6_576},
            {"method": "points", "amount_fen": 20},
        ],
    }))?;
    let c2_id = string(&c2, "id")?;
    assert_eq!(int(&c2, "subtotal_fen")?, 6_596, "{c2}");
    assert_eq!(int(&c2, "discount_fen")?, 0, "{c2}");
    assert_eq!(int(&c2, "total_fen")?, 6_596, "{c2}");
    assert_eq!(int(&c2, "points_used")?, 20, "{c2}");
    assert_eq!(
        int(&c2, "points_earned")?,
        65,
        "¥65.76 paid with money → 65 points: {c2}"
    );
    assert_eq!(int(&c2, "balance_fen")?, 48_424, "{c2}");
    assert_eq!(int(&c2, "points")?, 26 - 20 + 65, "{c2}");
    let m = node.member(&id)?;
    assert_eq!(
        (
            int(&m, "balance_fen")?,
            int(&m, "principal_fen")?,
            int(&m, "bonus_fen")?,
            int(&m, "points")?
        ),
        (48_424, 43_424, 5_000, 71),
        "stored value spends principal first: {m}"
    );
    let spend = int(&m, "spend_12m_fen")?;
    assert!(
        spend == 2_697 + 6_596 || spend == 2_697 + 6_576,
        "spend should grow by the checkout: {m}"
    );
    let mut paid: Vec<(String, i64)> = array(&c2, "payments")?
        .iter()
        .map(|p| Ok((string(p, "method")?, int(p, "amount_fen")?)))
        .collect::<Result<_>>()?;
    paid.sort();
    assert_eq!(
        paid,
        vec![
            ("points".to_owned(), 20),
            ("stored_value".to_owned(), 6_576)
        ],
        "payments are echoed: {c2}"
    );
    let fetched = node.get_checkout(&c2_id)?;
    for field in [
        "id",
        "member_id",
        "lines",
        "payments",
        "subtotal_fen",
        "discount_fen",
        "total_fen",
        "points_earned",
        "points_used",
        "tier",
        "refunded",
        "created_ms",
    ] {
        assert_eq!(
            fetched[field], c2[field],
            "GET checkout {field} should match the POST response"
        );
    }

    // --- refund (manager): everything back to before c2 ----------------------------------
    let refund = node.refund(&c2_id)?;
    assert_eq!(refund["checkout_id"], c2_id.as_str(), "{refund}");
    assert_eq!(int(&refund, "amount_fen")?, 6_596, "{refund}");
    assert_eq!(int(&refund, "balance_fen")?, 55_000, "{refund}");
    assert_eq!(int(&refund, "points")?, 26, "{refund}");
    let after = node.member(&id)?;
    for field in [
        "balance_fen",
        "principal_fen",
        "bonus_fen",
        "points",
        "spend_12m_fen",
        "tier",
    ] {
        assert_eq!(
            after[field], before[field],
            "{field} after the refund should be as before the checkout"
        );
    }
    assert_eq!(node.get_checkout(&c2_id)?["refunded"], true);
    assert_eq!(node.get_checkout(&c1_id)?["refunded"], false);

    // --- spending more than the principal takes the rest from the bonus -----------------
    let c3 = node.checkout(&json!({
        "member_id": id,
        "lines": [{"sku": "SKU-B", "qty": 21}],
        "payments": [{"method": "stored_value", "amount_fen": 52_500}],
    }))?;
    let c3_id = string(&c3, "id")?;
    assert_eq!(int(&c3, "balance_fen")?, 2_500, "{c3}");
    assert_eq!(int(&c3, "points_earned")?, 525, "{c3}");
    let m = node.member(&id)?;
    assert_eq!(
        (
            int(&m, "principal_fen")?,
            int(&m, "bonus_fen")?,
            int(&m, "points")?
        ),
        (0, 2_500, 26 + 525),
        "{m}"
    );

    // --- paying entirely with points earns none -----------------------------------------
    let c4 = node.checkout(&json!({
        "member_id": id,
        "lines": [{"sku": "SKU-C", "qty": 1}],
        "payments": [{"method": "points", "amount_fen": 99}],
    }))?;
    let c4_id = string(&c4, "id")?;
    assert_eq!(int(&c4, "points_used")?, 99, "{c4}");
    assert_eq!(int(&c4, "points_earned")?, 0, "{c4}");
    assert_eq!(int(&c4, "points")?, 26 + 525 - 99, "{c4}");
    assert_eq!(int(&c4, "balance_fen")?, 2_500, "{c4}");

    // --- checkouts newest first ---------------------------------------------------------
    let list = node.checkouts(10)?;
    assert_eq!(
        ids(&list),
        vec![c4_id.clone(), c3_id.clone(), c2_id.clone(), c1_id.clone()],
        "checkouts newest first"
    );

    // --- the ledger: every movement, newest first --------------------------------------
    let ledger = node.ledger(&id)?;
    assert_eq!(ledger["member_id"], id.as_str());
    let entries = array(&ledger, "entries")?;
    let (c1s, c2s, c3s, c4s) = (
        Some(c1_id.as_str()),
        Some(c2_id.as_str()),
        Some(c3_id.as_str()),
        Some(c4_id.as_str()),
    );
    assert_ledger_groups(
        entries,
        &[
            ("checkout 4", vec![e("points_redeem", "points", -99, c4s)]),
            (
                "checkout 3",
                vec![
                    e("spend", "principal", -50_000, c3s),
                    e("spend", "bonus", -2_500, c3s),
                    e("points_earn", "points", 525, c3s),
                ],
            ),
            (
                "refund of checkout 2",
                vec![
                    e("refund", "principal", 6_576, c2s),
                    e("points_reverse", "points", 20, c2s),
                    e("points_reverse", "points", -65, c2s),
                ],
            ),
            (
                "checkout 2",
                vec![
                    e("spend", "principal", -6_576, c2s),
                    e("points_redeem", "points", -20, c2s),
                    e("points_earn", "points", 65, c2s),
                ],
            ),
            ("checkout 1", vec![e("points_earn", "points", 26, c1s)]),
            (
                "recharge",
                vec![
                    e("recharge_principal", "principal", 50_000, None),
                    e("recharge_bonus", "bonus", 5_000, None),
                ],
            ),
        ],
    )?;
    let mut last_ms = u64::MAX;
    let mut seen_ids = std::collections::BTreeSet::new();
    for entry in entries {
        let ms = entry["created_ms"].as_u64().unwrap_or(0);
        assert!(ms > 0 && ms <= last_ms, "entries newest first: {entry}");
        last_ms = ms;
        assert!(
            seen_ids.insert(string(entry, "id")?),
            "duplicate entry id: {entry}"
        );
        assert_eq!(entry["origin"], test_store_id, "{entry}");
        assert_eq!(entry["rule_version"], 1, "{entry}");
    }
    let (stored, points) = ledger_sums(&ledger)?;
    let m = node.member(&id)?;
    assert_eq!(
        int(&m, "balance_fen")?,
        stored,
        "balance = Σ principal + bonus entries"
    );
    assert_eq!(int(&m, "points")?, points, "points = Σ points entries");
    assert_eq!(int(&ledger, "balance_fen")?, stored, "{ledger}");
    assert_eq!(int(&ledger, "points")?, points, "{ledger}");
    Ok(())
}

#[test]
fn tier_follows_rolling_spend_and_refunds() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let member = node.register("李四", "0086-139-1234-5678")?;
    assert_eq!(member["phone"], "13912345678", "{member}");
    let id = string(&member, "id")?;
    node.add_product("BIG", "电视机", 250_000)?;
    node.add_product("SMALL", "冰箱", 249_999)?;
    node.add_product("PENNY", "塑料袋", 1)?;
    node.add_product("ITEM", "食用油", 10_000)?;
    node.add_product("ODD", "酱油", 999)?;
    node.add_product("HUGE", "钢琴", 1_979_549)?;
    let cash = |lines: Value, amount: i64| {
        node.checkout(&json!({
            "member_id": id,
            "lines": lines,
            "payments": [{"method": "cash", "amount_fen": amount}],
        }))
    };
    let tier_and_spend = || -> Result<(String, i64)> {
        let m = node.member(&id)?;
        Ok((string(&m, "tier")?, int(&m, "spend_12m_fen")?))
    };

    // ¥4,999.99: one 分 short of 黄金.
    let c1 = cash(
        json!([{"sku": "BIG", "qty": 1}, {"sku": "SMALL", "qty": 1}]),
        499_999,
    )?;
    assert_eq!(
        (c1["tier"].clone(), int(&c1, "discount_fen")?),
        (json!("普通"), 0)
    );
    assert_eq!(tier_and_spend()?, ("普通".to_owned(), 499_999));

    // One more 分 reaches ¥5,000 → 黄金 (this sale itself was still at 普通 prices).
    let c2 = cash(json!([{"sku": "PENNY", "qty": 1}]), 1)?;
    assert_eq!(c2["tier"], "普通", "{c2}");
    assert_eq!(tier_and_spend()?, ("黄金".to_owned(), 500_000));

    // The next checkout gets 5 % off the subtotal, rounded down to the 分.
    let lines = json!([{"sku": "ITEM", "qty": 1}, {"sku": "ODD", "qty": 1}]);
    let (status, body) = node.post(
        "/api/v1/checkouts",
        &json!({"member_id": id, "lines": lines, "payments": [{"method": "cash", "amount_fen": 10_999}]}),
    )?;
    assert_eq!(
        (status, tests::error_code(&body)),
        (422, Some("payments_mismatch")),
        "paying the undiscounted price must be refused: {body}"
    );
    let c3 = cash(lines, 10_450)?;
    assert_eq!(c3["tier"], "黄金", "{c3}");
    assert_eq!(int(&c3, "subtotal_fen")?, 10_999, "{c3}");
    assert_eq!(int(&c3, "discount_fen")?, 549, "{c3}");
    assert_eq!(int(&c3, "total_fen")?, 10_450, "{c3}");
    assert_eq!(int(&c3, "points_earned")?, 104, "{c3}");
    assert_eq!(tier_and_spend()?, ("黄金".to_owned(), 510_450));

    // Refunding the big sale lowers the rolling spend below the threshold again.
    let refund = node.refund(&string(&c1, "id")?)?;
    assert_eq!(int(&refund, "amount_fen")?, 499_999, "{refund}");
    assert_eq!(tier_and_spend()?, ("普通".to_owned(), 10_451));
    let c4 = cash(json!([{"sku": "ITEM", "qty": 1}]), 10_000)?;
    assert_eq!(
        (c4["tier"].clone(), int(&c4, "discount_fen")?),
        (json!("普通"), 0)
    );
    assert_eq!(tier_and_spend()?, ("普通".to_owned(), 20_451));

    // ¥20,000 → 钻石 with 10 % off.
    cash(json!([{"sku": "HUGE", "qty": 1}]), 1_979_549)?;
    assert_eq!(tier_and_spend()?, ("钻石".to_owned(), 2_000_000));
    let c5 = cash(json!([{"sku": "ITEM", "qty": 1}]), 9_000)?;
    assert_eq!(c5["tier"], "钻石", "{c5}");
    assert_eq!(int(&c5, "discount_fen")?, 1_000, "{c5}");
    assert_eq!(int(&c5, "total_fen")?, 9_000, "{c5}");
    Ok(())
}

fn sorted_tags(member: &Value) -> Vec<String> {
    let mut tags: Vec<String> = member["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags
}

#[test]
fn edit_member_profile() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let (status, created) = node.post(
        "/api/v1/members",
        &json!({
            "name": "吴九",
            "phone": "86 139 0000 0009",
            "card_no": "VIP0009",
            "gender": "female",
            "birthday": "1990-05-17",
            "email": "wu9@example.com",
            "address": "上海市黄浦区南京东路 1 号",
            "note": "喜欢绿茶",
            "tags": ["vip", "老客户"],
        }),
    )?;
    assert_eq!(status, 201, "{created}");
    let id = string(&created, "id")?;
    assert_eq!(created["phone"], "13900000009", "{created}");
    assert_eq!(created["card_no"], "VIP0009", "{created}");
    assert_eq!(created["gender"], "female", "{created}");
    assert_eq!(created["birthday"], "1990-05-17", "{created}");
    assert_eq!(created["email"], "wu9@example.com", "{created}");
    assert_eq!(created["note"], "喜欢绿茶", "{created}");
    assert_eq!(sorted_tags(&created), vec!["vip", "老客户"], "{created}");

    // `null` clears, `tags` replaces the set, the phone is normalized, the rest stays.
    let (status, patched) = node.patch(
        &format!("/api/v1/members/{id}"),
        &json!({"email": null, "tags": ["新客"], "phone": "+86 139-0000-0010"}),
    )?;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(patched["email"], Value::Null, "{patched}");
    assert_eq!(sorted_tags(&patched), vec!["新客"], "{patched}");
    assert_eq!(patched["phone"], "13900000010", "{patched}");
    for field in [
        "name",
        "card_no",
        "gender",
        "birthday",
        "address",
        "note",
        "created_ms",
    ] {
        assert_eq!(
            patched[field], created[field],
            "PATCH must not touch {field}"
        );
    }
    assert_eq!(node.member(&id)?, patched, "GET returns the edited member");

    // Searches follow the new phone.
    let (_, found) = node.get("/api/v1/members?phone=13900000010")?;
    assert_eq!(array(&found, "members")?.len(), 1, "{found}");
    let (_, found) = node.get("/api/v1/members?phone=13900000009")?;
    assert_eq!(array(&found, "members")?.len(), 0, "{found}");
    let (_, found) = node.get("/api/v1/members?q=0000010")?;
    assert!(
        array(&found, "members")?
            .iter()
            .any(|m| m["id"] == id.as_str()),
        "q matches a phone fragment: {found}"
    );
    let (_, found) = node.get("/api/v1/members?q=VIP00")?;
    assert!(
        array(&found, "members")?
            .iter()
            .any(|m| m["id"] == id.as_str()),
        "q matches a card number fragment: {found}"
    );
    Ok(())
}

#[test]
fn bonus_threshold_anonymous_sale_and_price_change() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let id = string(&node.register("郑十", "137 1234 5678")?, "id")?;

    // ¥499.99 is below the bonus step; ¥500 by external payment gets +10 %.
    let r1 = node.recharge(&id, 49_999)?;
    assert_eq!(
        (int(&r1, "bonus_fen")?, int(&r1, "balance_fen")?),
        (0, 49_999),
        "{r1}"
    );
    let (status, r2) = node.post(
        &format!("/api/v1/members/{id}/recharges"),
        &json!({"amount_fen": 50_000, "method": "external"}),
    )?;
    assert_eq!(status, 201, "{r2}");
    assert_eq!(
        (int(&r2, "bonus_fen")?, int(&r2, "balance_fen")?),
        (5_000, 104_999),
        "{r2}"
    );
    let m = node.member(&id)?;
    assert_eq!(
        (int(&m, "principal_fen")?, int(&m, "bonus_fen")?),
        (99_999, 5_000),
        "{m}"
    );
    assert_ne!(r1["id"], r2["id"]);

    // A walk-in customer pays cash: no member, no points, no discount.
    let first = node.add_product("TEA", "绿茶", 350)?;
    assert_eq!(first["price_fen"], 350);
    let walk_in = node.checkout(&json!({
        "lines": [{"sku": "TEA", "qty": 2}],
        "payments": [{"method": "cash", "amount_fen": 700}],
    }))?;
    assert_eq!(walk_in["member_id"], Value::Null, "{walk_in}");
    assert_eq!(int(&walk_in, "total_fen")?, 700, "{walk_in}");
    assert_eq!(int(&walk_in, "discount_fen")?, 0, "{walk_in}");
    assert_eq!(int(&walk_in, "points_earned")?, 0, "{walk_in}");

    // The manager changes the price: 200 (replaced), new sales use it, old ones keep theirs.
    let (status, replaced) = node.api().post(
        "/api/v1/products",
        Some(&node.manager),
        &json!({"sku": "TEA", "name": "绿茶 (新)", "price_fen": 400}),
        None,
    )?;
    assert_eq!(status, 200, "replacing a SKU answers 200: {replaced}");
    assert_eq!(replaced["price_fen"], 400, "{replaced}");
    let (_, products) = node.get("/api/v1/products")?;
    let teas: Vec<&Value> = array(&products, "products")?
        .iter()
        .filter(|p| p["sku"] == "TEA")
        .collect();
    assert_eq!(teas.len(), 1, "one product per SKU: {products}");
    assert_eq!(teas[0]["price_fen"], 400, "{products}");
    let (status, body) = node.post(
        "/api/v1/checkouts",
        &json!({"lines": [{"sku": "TEA", "qty": 1}], "payments": [{"method": "cash", "amount_fen": 350}]}),
    )?;
    assert_eq!(
        (status, tests::error_code(&body)),
        (422, Some("payments_mismatch")),
        "the old price is no longer due: {body}"
    );
    let later = node.checkout(&json!({
        "member_id": id,
        "lines": [{"sku": "TEA", "qty": 1}],
        "payments": [{"method": "stored_value", "amount_fen": 400}],
    }))?;
    assert_eq!(later["lines"][0]["unit_price_fen"], 400, "{later}");
    assert_eq!(later["lines"][0]["name"], "绿茶 (新)", "{later}");
    let old = node.get_checkout(&string(&walk_in, "id")?)?;
    assert_eq!(
        old["lines"][0]["unit_price_fen"], 350,
        "history keeps its price: {old}"
    );
    assert_eq!(old["lines"][0]["name"], "绿茶", "{old}");
    Ok(())
}

/// Two tills charging the same card at once can never take more than the balance.
#[test]
fn concurrent_stored_value_payments_never_overdraw() -> Result<()> {
    let node = StoreNode::start_temp()?;
    let id = string(&node.register("冯十一", "13512345678")?, "id")?;
    node.recharge(&id, 1_000)?;
    node.add_product("CAKE", "蛋糕", 400)?;
    let tills = 8;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(tills));
    let handles: Vec<_> = (0..tills)
        .map(|_| {
            let api = node.api().clone();
            let token = node.cashier.clone();
            let id = id.clone();
            let barrier = std::sync::Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                api.post(
                    "/api/v1/checkouts",
                    Some(&token),
                    &json!({
                        "member_id": id,
                        "lines": [{"sku": "CAKE", "qty": 1}],
                        "payments": [{"method": "stored_value", "amount_fen": 400}],
                    }),
                    None,
                )
            })
        })
        .collect();
    let mut replies = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(reply) => replies.push(reply?),
            Err(_) => anyhow::bail!("a till thread panicked"),
        }
    }
    let ok = replies.iter().filter(|(status, _)| *status == 201).count();
    let refused = replies
        .iter()
        .filter(|(status, body)| {
            *status == 422 && tests::error_code(body) == Some("insufficient_balance")
        })
        .count();
    assert_eq!(
        (ok, refused),
        (2, tills - 2),
        "¥10 pays for two ¥4 cakes: {replies:?}"
    );
    let m = node.member(&id)?;
    assert_eq!(int(&m, "balance_fen")?, 200, "{m}");
    let (stored, _) = ledger_sums(&node.ledger(&id)?)?;
    assert_eq!(stored, 200);
    Ok(())
}

#![allow(non_upper_case_globals)]
//! Bad input gets the documented 4xx error and changes nothing; the node keeps answering.
//!
//! Each test collects every mismatch and fails once at the end with the full list, so one run
//! shows all disagreements with docs/store-api.md.

use anyhow::Result;
use tests::{Reply, StoreNode, Value, array, error_code, int, json, string};

const unknown_id: &str = "0190f5c4-7a3b-7cc1-9d2e-3f4a5b6c7d8e";

struct Fixture {
    node: StoreNode,
    /// Member with stored value 55,000 and 30 points, phone 13700000001.
    a: String,
    /// Member with nothing, phone 13700000002, card number CARD0002.
    b: String,
    /// A cash checkout of member `a` (¥30), not refunded.
    sale: String,
    failures: Vec<String>,
}

impl Fixture {
    fn new() -> Result<Fixture> {
        let node = StoreNode::start_temp()?;
        let a = string(&node.register("王五", "13700000001")?, "id")?;
        node.recharge(&a, 50_000)?;
        let reply = node.post(
            "/api/v1/members",
            &json!({"name": "赵六", "phone": "13700000002", "card_no": "CARD0002"}),
        )?;
        let b = string(&tests::expect_status(reply, &[201], "register b")?, "id")?;
        node.add_product("P1", "苹果", 1_000)?;
        node.add_product("P2", "香蕉", 2_550)?;
        let sale = node.checkout(&json!({
            "member_id": a,
            "lines": [{"sku": "P1", "qty": 3}],
            "payments": [{"method": "cash", "amount_fen": 3_000}],
        }))?;
        let sale = string(&sale, "id")?;
        let m = node.member(&a)?;
        assert_eq!(
            (int(&m, "balance_fen")?, int(&m, "points")?),
            (55_000, 30),
            "{m}"
        );
        Ok(Fixture {
            node,
            a,
            b,
            sale,
            failures: Vec::new(),
        })
    }

    /// Everything a refused request must leave alone.
    fn snapshot(&self) -> Result<Value> {
        let (status, products) = self.node.get("/api/v1/products")?;
        anyhow::ensure!(status == 200, "GET products: {status} {products}");
        Ok(json!({
            "a": self.node.member(&self.a)?,
            "a_ledger": self.node.ledger(&self.a)?,
            "b": self.node.member(&self.b)?,
            "b_ledger": self.node.ledger(&self.b)?,
            "checkouts": self.node.checkouts(100)?,
            "products": products,
        }))
    }

    /// Send a request that must be refused with one of `expected` (status, code) and must
    /// change nothing; record any mismatch.
    fn refused(
        &mut self,
        what: &str,
        expected: &[(u16, &str)],
        send: impl FnOnce(&StoreNode) -> Result<Reply>,
    ) -> Result<()> {
        let before = self.snapshot()?;
        let (status, body) = send(&self.node)?;
        let code = error_code(&body);
        let message_ok = body
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
            .is_some_and(|m| !m.trim().is_empty());
        if !expected
            .iter()
            .any(|(s, c)| *s == status && Some(*c) == code)
        {
            self.failures.push(format!(
                "{what}: expected {expected:?}, got {status} {body}"
            ));
        } else if !message_ok {
            self.failures
                .push(format!("{what}: error without a message: {body}"));
        }
        let after = self.snapshot()?;
        if after != before {
            self.failures.push(format!(
                "{what}: state changed\nbefore: {before}\nafter:  {after}"
            ));
        }
        Ok(())
    }

    /// Like [`Fixture::refused`] and also the error message must mention `field`.
    fn refused_field(
        &mut self,
        what: &str,
        field: &str,
        send: impl FnOnce(&StoreNode) -> Result<Reply>,
    ) -> Result<()> {
        let mut reply = None;
        self.refused(what, &[(422, "invalid_field")], |node| {
            let r = send(node)?;
            reply = Some(r.1.clone());
            Ok(r)
        })?;
        if let Some(body) = reply
            && error_code(&body) == Some("invalid_field")
        {
            let message = body["error"]["message"].as_str().unwrap_or("");
            if !message.contains(field) {
                self.failures.push(format!(
                    "{what}: invalid_field message should name `{field}`: {body}"
                ));
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        let (status, health) = self.node.healthz()?;
        let mut failures = self.failures;
        if status != 200 {
            failures.push(format!("/healthz after bad input: {status} {health}"));
        }
        assert!(
            failures.is_empty(),
            "{} mismatch(es):\n{}",
            failures.len(),
            failures.join("\n---\n")
        );
        Ok(())
    }
}

fn checkout(body: Value) -> impl FnOnce(&StoreNode) -> Result<Reply> {
    move |node: &StoreNode| node.post("/api/v1/checkouts", &body)
}

fn recharge_raw(member: &str, body: &str) -> impl FnOnce(&StoreNode) -> Result<Reply> + use<> {
    let path = format!("/api/v1/members/{member}/recharges");
    let body = body.to_owned();
    move |node: &StoreNode| node.api().post_raw(&path, Some(&node.cashier), &body)
}

const invalid_json: &[(u16, &str)] = &[(400, "invalid_json")];
const invalid_amount: &[(u16, &str)] = &[(422, "invalid_amount")];
const invalid_qty: &[(u16, &str)] = &[(422, "invalid_qty")];

#[test]
fn malformed_and_mistyped_bodies() -> Result<()> {
    let mut f = Fixture::new()?;
    let a = f.a.clone();
    let raw = |path: &str, body: &str| {
        let (path, body) = (path.to_owned(), body.to_owned());
        move |node: &StoreNode| node.api().post_raw(&path, Some(&node.cashier), &body)
    };
    f.refused(
        "truncated member JSON",
        invalid_json,
        raw("/api/v1/members", r#"{"name": "x", "phone": "#),
    )?;
    f.refused(
        "checkout body not JSON",
        invalid_json,
        raw("/api/v1/checkouts", "not json at all"),
    )?;
    f.refused(
        "checkout body a JSON array",
        invalid_json,
        raw("/api/v1/checkouts", "[1, 2, 3]"),
    )?;
    f.refused("empty recharge body", invalid_json, recharge_raw(&a, ""))?;
    f.refused(
        "recharge amount as a string",
        invalid_json,
        recharge_raw(&a, r#"{"amount_fen": "100"}"#),
    )?;
    f.refused(
        "recharge without amount",
        invalid_json,
        recharge_raw(&a, r#"{"method": "cash"}"#),
    )?;
    f.refused(
        "member name as a number",
        invalid_json,
        raw("/api/v1/members", r#"{"name": 5, "phone": "13700000009"}"#),
    )?;
    f.refused(
        "member without phone",
        invalid_json,
        raw("/api/v1/members", r#"{"name": "钱八"}"#),
    )?;
    f.refused(
        "checkout lines as an object",
        invalid_json,
        checkout(json!({"lines": {"sku": "P1", "qty": 1}, "payments": []})),
    )?;
    f.refused(
        "checkout qty as a string",
        invalid_json,
        checkout(json!({
            "lines": [{"sku": "P1", "qty": "2"}],
            "payments": [{"method": "cash", "amount_fen": 2_000}],
        })),
    )?;
    f.refused(
        "payment method as a number",
        invalid_json,
        checkout(json!({
            "lines": [{"sku": "P1", "qty": 1}],
            "payments": [{"method": 5, "amount_fen": 1_000}],
        })),
    )?;
    f.refused(
        "member_id as a number",
        invalid_json,
        checkout(json!({
            "member_id": 123,
            "lines": [{"sku": "P1", "qty": 1}],
            "payments": [{"method": "cash", "amount_fen": 1_000}],
        })),
    )?;
    let path = format!("/api/v1/members/{a}");
    f.refused("truncated PATCH", invalid_json, move |node| {
        node.api()
            .patch_raw(&path, Some(&node.cashier), r#"{"name":"#)
    })?;
    let path = format!("/api/v1/members/{a}");
    f.refused("tags as a string", invalid_json, move |node| {
        node.patch(&path, &json!({"tags": "vip"}))
    })?;
    f.refused("product price as a string", invalid_json, |node| {
        node.api().post_raw(
            "/api/v1/products",
            Some(&node.manager),
            r#"{"sku": "X", "name": "x", "price_fen": "12"}"#,
        )
    })?;
    // Larger than the store's request limit (256 KiB): refused in the JSON error shape.
    let oversized = format!(r#"{{"name": "{}"}}"#, "x".repeat(300 * 1024));
    f.refused("oversized body", &[(413, "body_too_large")], move |node| {
        node.api()
            .post_raw("/api/v1/members", Some(&node.cashier), &oversized)
    })?;
    f.finish()
}

#[test]
fn bad_amounts_and_quantities() -> Result<()> {
    let mut f = Fixture::new()?;
    let a = f.a.clone();
    for amount in [
        "0",
        "-100",
        "-9223372036854775808",
        "1000000001",
        "9223372036854775807",
        "99999999999999999999",
        "1e30",
    ] {
        f.refused(
            &format!("recharge amount_fen {amount}"),
            invalid_amount,
            recharge_raw(
                &a,
                &format!(r#"{{"amount_fen": {amount}, "method": "cash"}}"#),
            ),
        )?;
    }
    for (name, payments) in [
        (
            "a zero payment",
            r#"[{"method":"cash","amount_fen":1000},{"method":"cash","amount_fen":0}]"#,
        ),
        (
            "a negative payment",
            r#"[{"method":"cash","amount_fen":1100},{"method":"cash","amount_fen":-100}]"#,
        ),
        (
            "negative stored value",
            r#"[{"method":"stored_value","amount_fen":-1000},{"method":"cash","amount_fen":2000}]"#,
        ),
        (
            "an i64::MAX payment",
            r#"[{"method":"cash","amount_fen":9223372036854775807}]"#,
        ),
        (
            "an overflowing payment",
            r#"[{"method":"cash","amount_fen":99999999999999999999}]"#,
        ),
        ("a 1e30 payment", r#"[{"method":"cash","amount_fen":1e30}]"#),
    ] {
        let body = format!(
            r#"{{"member_id":"{a}","lines":[{{"sku":"P1","qty":1}}],"payments":{payments}}}"#
        );
        f.refused(
            &format!("checkout with {name}"),
            invalid_amount,
            move |node| {
                node.api()
                    .post_raw("/api/v1/checkouts", Some(&node.cashier), &body)
            },
        )?;
    }
    for price in ["-1", "9223372036854775807", "1e30"] {
        let body = format!(r#"{{"sku": "NEW", "name": "新品", "price_fen": {price}}}"#);
        f.refused(
            &format!("product price {price}"),
            invalid_amount,
            move |node| {
                node.api()
                    .post_raw("/api/v1/products", Some(&node.manager), &body)
            },
        )?;
    }
    for qty in ["0", "-3", "10001", "9223372036854775807"] {
        let body = format!(
            r#"{{"lines":[{{"sku":"P1","qty":{qty}}}],"payments":[{{"method":"cash","amount_fen":1000}}]}}"#
        );
        f.refused(&format!("qty {qty}"), invalid_qty, move |node| {
            node.api()
                .post_raw("/api/v1/checkouts", Some(&node.cashier), &body)
        })?;
    }
    f.finish()
}

#[test]
fn checkouts_that_cannot_be_paid() -> Result<()> {
    let mut f = Fixture::new()?;
    let (a, b) = (f.a.clone(), f.b.clone());
    let one_p1 = json!([{"sku": "P1", "qty": 1}]);
    let cash = |n: i64| json!([{"method": "cash", "amount_fen": n}]);
    f.refused(
        "empty cart",
        &[(422, "empty_cart")],
        checkout(json!({"member_id": a, "lines": [], "payments": cash(1_000)})),
    )?;
    f.refused(
        "unknown SKU",
        &[(422, "unknown_sku")],
        checkout(json!({
            "member_id": a,
            "lines": [{"sku": "P1", "qty": 1}, {"sku": "NO-SUCH-SKU", "qty": 1}],
            "payments": cash(2_000),
        })),
    )?;
    f.refused(
        "unknown member",
        &[(404, "unknown_member")],
        checkout(json!({"member_id": unknown_id, "lines": one_p1, "payments": cash(1_000)})),
    )?;
    for (name, payments) in [
        ("paying too little", cash(999)),
        ("paying too much", cash(1_001)),
        ("no payments", json!([])),
        (
            "split payments short by 1 分",
            json!([{"method": "cash", "amount_fen": 500}, {"method": "stored_value", "amount_fen": 499}]),
        ),
    ] {
        f.refused(
            name,
            &[(422, "payments_mismatch")],
            checkout(json!({"member_id": a, "lines": one_p1, "payments": payments})),
        )?;
    }
    f.refused(
        "stored value above the balance",
        &[(422, "insufficient_balance")],
        checkout(json!({
            "member_id": a,
            "lines": [{"sku": "P2", "qty": 30}],
            "payments": [{"method": "stored_value", "amount_fen": 76_500}],
        })),
    )?;
    f.refused(
        "stored value from a member with none",
        &[(422, "insufficient_balance")],
        checkout(json!({
            "member_id": b,
            "lines": one_p1,
            "payments": [{"method": "stored_value", "amount_fen": 1_000}],
        })),
    )?;
    f.refused(
        "points above the points",
        &[(422, "insufficient_points")],
        checkout(json!({
            "member_id": a,
            "lines": one_p1,
            "payments": [{"method": "points", "amount_fen": 31}, {"method": "cash", "amount_fen": 969}],
        })),
    )?;
    for method in ["stored_value", "points"] {
        f.refused(
            &format!("{method} without a member"),
            &[(422, "member_required")],
            checkout(json!({
                "lines": one_p1,
                "payments": [{"method": method, "amount_fen": 1_000}],
            })),
        )?;
    }
    f.refused(
        "unknown payment method",
        &[(422, "invalid_field"), (400, "invalid_json")],
        checkout(json!({
            "member_id": a,
            "lines": one_p1,
            "payments": [{"method": "bitcoin", "amount_fen": 1_000}],
        })),
    )?;
    f.refused(
        "unknown recharge method",
        &[(422, "invalid_field"), (400, "invalid_json")],
        recharge_raw(&a, r#"{"amount_fen": 1000, "method": "bitcoin"}"#),
    )?;
    f.refused(
        "recharge of an unknown member",
        &[(404, "unknown_member")],
        recharge_raw(unknown_id, r#"{"amount_fen": 1000}"#),
    )?;
    f.finish()
}

#[test]
fn invalid_and_duplicate_member_fields() -> Result<()> {
    let mut f = Fixture::new()?;
    let a = f.a.clone();
    let register = |body: Value| move |node: &StoreNode| node.post("/api/v1/members", &body);
    for phone in [
        "12345",
        "+1 415 555 0100",
        "1381234567a",
        "02012345678",
        "12012345678",
        "138001380001",
        "",
    ] {
        f.refused_field(
            &format!("phone {phone:?}"),
            "phone",
            register(json!({"name": "钱八", "phone": phone})),
        )?;
    }
    let long_name = "长".repeat(65);
    for (what, field, body) in [
        (
            "empty name",
            "name",
            json!({"name": "", "phone": "13700000009"}),
        ),
        (
            "blank name",
            "name",
            json!({"name": "   ", "phone": "13700000009"}),
        ),
        (
            "65-character name",
            "name",
            json!({"name": long_name, "phone": "13700000009"}),
        ),
        (
            "30 February",
            "birthday",
            json!({"name": "钱八", "phone": "13700000009", "birthday": "2023-02-30"}),
        ),
        (
            "birthday with slashes",
            "birthday",
            json!({"name": "钱八", "phone": "13700000009", "birthday": "1990/01/01"}),
        ),
        (
            "2-character card number",
            "card_no",
            json!({"name": "钱八", "phone": "13700000009", "card_no": "ab"}),
        ),
    ] {
        f.refused_field(what, field, register(body))?;
    }
    f.refused(
        "unknown gender",
        &[(422, "invalid_field"), (400, "invalid_json")],
        register(json!({"name": "钱八", "phone": "13700000009", "gender": "robot"})),
    )?;
    let tags: Vec<String> = (0..33).map(|i| format!("t{i}")).collect();
    f.refused_field(
        "33 tags",
        "tags",
        register(json!({"name": "钱八", "phone": "13700000009", "tags": tags})),
    )?;

    // Duplicates, in another spelling of the same phone.
    f.refused(
        "duplicate phone",
        &[(409, "duplicate_phone")],
        register(json!({"name": "王五二", "phone": "+86 137-0000-0001"})),
    )?;
    f.refused(
        "duplicate card number",
        &[(409, "duplicate_card_no")],
        register(json!({"name": "钱八", "phone": "13700000009", "card_no": "CARD0002"})),
    )?;
    let (status, found) = f.node.get("/api/v1/members?phone=13700000009")?;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        array(&found, "members")?.len(),
        0,
        "no refused registration may create a member: {found}"
    );
    let (_, found) = f.node.get("/api/v1/members?phone=13700000001")?;
    assert_eq!(array(&found, "members")?.len(), 1, "{found}");

    // PATCH.
    let path = format!("/api/v1/members/{a}");
    let patch = |body: Value| {
        let path = path.clone();
        move |node: &StoreNode| node.patch(&path, &body)
    };
    f.refused(
        "PATCH phone to another member's",
        &[(409, "duplicate_phone")],
        patch(json!({"phone": "137 0000 0002"})),
    )?;
    f.refused(
        "PATCH card number to another member's",
        &[(409, "duplicate_card_no")],
        patch(json!({"card_no": "CARD0002"})),
    )?;
    f.refused_field(
        "PATCH invalid phone",
        "phone",
        patch(json!({"phone": "123"})),
    )?;
    f.refused_field(
        "PATCH invalid birthday",
        "birthday",
        patch(json!({"birthday": "2024-13-01"})),
    )?;
    f.refused_field("PATCH empty name", "name", patch(json!({"name": ""})))?;
    f.refused(
        "PATCH unknown member",
        &[(404, "unknown_member")],
        move |node| {
            node.patch(
                &format!("/api/v1/members/{unknown_id}"),
                &json!({"name": "x"}),
            )
        },
    )?;
    f.finish()
}

#[test]
fn unknown_things_auth_and_roles() -> Result<()> {
    let mut f = Fixture::new()?;
    let (a, sale) = (f.a.clone(), f.sale.clone());

    // Unknown ids and routes.
    for (what, path, expected) in [
        (
            "unknown member",
            format!("/api/v1/members/{unknown_id}"),
            (404, "unknown_member"),
        ),
        (
            "ledger of an unknown member",
            format!("/api/v1/members/{unknown_id}/ledger"),
            (404, "unknown_member"),
        ),
        (
            "member id that is no UUID",
            "/api/v1/members/not-a-uuid".to_owned(),
            (404, "unknown_member"),
        ),
        (
            "unknown checkout",
            format!("/api/v1/checkouts/{unknown_id}"),
            (404, "unknown_checkout"),
        ),
        (
            "unknown route",
            "/api/v1/no-such-route".to_owned(),
            (404, "not_found"),
        ),
    ] {
        f.refused(what, &[expected], move |node| node.get(&path))?;
    }
    f.refused(
        "refund of an unknown checkout",
        &[(404, "unknown_checkout")],
        |node| {
            node.api().post(
                &format!("/api/v1/checkouts/{unknown_id}/refunds"),
                Some(&node.manager),
                &json!({}),
                None,
            )
        },
    )?;

    // Tokens.
    let unauthorized: &[(u16, &str)] = &[(401, "unauthorized")];
    let member_path = format!("/api/v1/members/{a}");
    for (what, token) in [
        ("no token", None),
        (
            "unknown token",
            Some("cs_0000000000000000000000000000000000000000000000000000000000000000"),
        ),
        ("empty token", Some("")),
    ] {
        let path = member_path.clone();
        f.refused(
            &format!("GET member with {what}"),
            unauthorized,
            move |node| node.api().get(&path, token),
        )?;
        f.refused(&format!("checkout with {what}"), unauthorized, move |node| {
            node.api().post(
                "/api/v1/checkouts",
                token,
                &json!({"lines": [{"sku": "P1", "qty": 1}], "payments": [{"method": "cash", "amount_fen": 1_000}]}),
                None,
            )
        })?;
    }
    let cashier_with_suffix = format!("{}x", f.node.cashier);
    f.refused("token with an extra character", unauthorized, move |node| {
        node.api()
            .get("/api/v1/products", Some(&cashier_with_suffix))
    })?;
    let refund_path = format!("/api/v1/checkouts/{sale}/refunds");
    let path = refund_path.clone();
    f.refused("refund without a token", unauthorized, move |node| {
        node.api().post(&path, None, &json!({}), None)
    })?;

    // Roles.
    let forbidden: &[(u16, &str)] = &[(403, "forbidden")];
    let path = refund_path.clone();
    f.refused("cashier refunds", forbidden, move |node| {
        node.api()
            .post(&path, Some(&node.cashier), &json!({"reason": "x"}), None)
    })?;
    f.refused("cashier adds a product", forbidden, |node| {
        node.api().post(
            "/api/v1/products",
            Some(&node.cashier),
            &json!({"sku": "P1", "name": "便宜苹果", "price_fen": 1}),
            None,
        )
    })?;

    // Refund twice: the first works, the second is refused and changes nothing.
    let refund = f.node.refund(&sale)?;
    assert_eq!(int(&refund, "amount_fen")?, 3_000, "{refund}");
    assert_eq!(
        int(&f.node.member(&a)?, "points")?,
        0,
        "earned points reversed"
    );
    let path = refund_path.clone();
    f.refused("second refund", &[(409, "already_refunded")], move |node| {
        node.api().post(
            &path,
            Some(&node.manager),
            &json!({"reason": "again"}),
            None,
        )
    })?;

    // Open routes.
    let (status, health) = f.node.healthz()?;
    assert_eq!(status, 200, "{health}");
    let (status, doc) = f.node.api().get("/openapi.json", None)?;
    assert_eq!(status, 200, "{doc}");
    assert!(
        doc.get("paths").is_some(),
        "OpenAPI document has paths: {doc}"
    );
    f.finish()
}

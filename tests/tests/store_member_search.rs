//! Member search at a store (`GET /api/v1/member-search`) against a real `store-node`: visits,
//! spend net of refunds, tags, birthday month, sorting and pages, compared with figures kept
//! here while checking out.

use anyhow::{Context, Result};
use std::collections::HashMap;
use tests::{StoreNode, json};

#[test]
fn store_member_search_matches_what_was_sold() -> Result<()> {
    let node = StoreNode::start_temp()?;
    node.add_product("P1", "咖啡", 1_500)?;
    node.add_product("P2", "蛋糕", 2_800)?;
    let mut ids = Vec::new();
    for i in 0..8 {
        let tags = if i % 2 == 0 {
            vec!["vip"]
        } else {
            vec!["student"]
        };
        let reply = node.post(
            "/api/v1/members",
            &json!({"name": format!("顾客{i}"), "phone": format!("1370000{i:04}"),
                    "birthday": format!("1991-{:02}-09", i % 3 + 1), "tags": tags}),
        )?;
        assert_eq!(reply.0, 201, "{}", reply.1);
        ids.push((
            reply.1["id"].as_str().context("id")?.to_owned(),
            i % 2 == 0,
            (i % 3 + 1) as i64,
        ));
    }
    // (visits, net spend) per member, kept while selling.
    let mut sold: HashMap<String, (i64, i64)> = HashMap::new();
    let mut refund_target = None;
    for n in 0..20usize {
        let (id, _, _) = &ids[(n * n + 3 * n) % 7];
        let sku = if n % 3 == 0 { "P2" } else { "P1" };
        let qty = (n % 2 + 1) as i64;
        let price = if sku == "P2" { 2_800 } else { 1_500 };
        let sale = node.checkout(
            &json!({"member_id": id, "lines": [{"sku": sku, "qty": qty}],
            "payments": [{"method": "cash", "amount_fen": price * qty}]}),
        )?;
        let total = sale["total_fen"].as_i64().context("total")?;
        let entry = sold.entry(id.clone()).or_default();
        entry.0 += 1;
        entry.1 += total;
        if n == 5 {
            refund_target = Some((
                id.clone(),
                sale["id"].as_str().context("id")?.to_owned(),
                total,
            ));
        }
    }
    let (refunded_member, sale_id, total) = refund_target.context("a sale to refund")?;
    node.refund(&sale_id)?;
    sold.get_mut(&refunded_member).context("member")?.1 -= total;

    let search = |query: &str| -> Result<(Vec<String>, u64)> {
        let (status, body) = node.get(&format!("/api/v1/member-search?{query}"))?;
        assert_eq!(status, 200, "{body}");
        let ids = body["members"]
            .as_array()
            .context("members")?
            .iter()
            .map(|m| m["member_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        Ok((ids, body["total"].as_u64().context("total")?))
    };
    // At least 2 visits, most spend first (ties by id).
    let mut want: Vec<(i64, String)> = sold
        .iter()
        .filter(|(_, s)| s.0 >= 2)
        .map(|(id, s)| (-s.1, id.clone()))
        .collect();
    want.sort();
    let want: Vec<String> = want.into_iter().map(|(_, id)| id).collect();
    assert!(want.len() >= 3);
    let (got, total) = search("visits_min=2&sort=spend&order=desc&per_page=500")?;
    assert_eq!(got, want);
    assert_eq!(total, want.len() as u64);
    let (first_page, _) = search("visits_min=2&sort=spend&per_page=2&page=1")?;
    let (second_page, _) = search("visits_min=2&sort=spend&per_page=2&page=2")?;
    assert_eq!(
        [first_page, second_page].concat(),
        want[..4.min(want.len())].to_vec()
    );
    // The refunded member's spend is net of the refund.
    let (status, body) = node.get("/api/v1/member-search?per_page=500")?;
    assert_eq!(status, 200);
    let row = body["members"]
        .as_array()
        .context("members")?
        .iter()
        .find(|m| m["member_id"] == refunded_member.as_str())
        .context("refunded member listed")?
        .clone();
    assert_eq!(row["spend_fen"], sold[&refunded_member].1);
    assert_eq!(row["visits"], sold[&refunded_member].0);
    // Tag and birthday month; members who never bought are found too.
    let mut want: Vec<String> = ids
        .iter()
        .filter(|(_, vip, month)| *vip && *month == 1)
        .map(|(id, _, _)| id.clone())
        .collect();
    want.sort();
    let (mut got, _) = search("tag=vip&birthday_month=1&per_page=500")?;
    got.sort();
    assert_eq!(got, want);
    assert!(!want.is_empty());
    let never: Vec<&String> = ids
        .iter()
        .map(|(id, _, _)| id)
        .filter(|id| !sold.contains_key(*id))
        .collect();
    let (got, _) = search("visits_max=0&per_page=500")?;
    assert_eq!(got.len(), never.len());
    let (status, _) = node.get("/api/v1/member-search?birthday_month=0")?;
    assert_eq!(status, 422);
    Ok(())
}

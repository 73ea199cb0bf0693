//! `--scenario`: a scripted day. Morning online; at noon the link to HQ goes down (the hub is
//! stopped) and the stores keep selling, including one member spending at two stores and one
//! new phone registered at two stores; in the evening the hub comes back and every replica
//! converges. Passes if all four digests are equal and the duplicate phone is one member.

use super::api::Api;
use super::data::{self, Product};
use super::load::{self, Pay};
use super::{Cluster, Store, procs, show_digests, wait_converged};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The stores reconnect with exponential backoff up to 30 s: give them three rounds.
const heal_timeout: Duration = Duration::from_secs(90);

/// What walk-in customers buy.
const walk_in_baskets: [&[(&str, i64)]; 4] = [
    &[("拿铁 中杯", 2), ("牛角面包", 1)],
    &[("矿泉水 550ml", 3), ("金枪鱼饭团", 1)],
    &[("珍珠奶茶 中杯", 1), ("葡式蛋挞 2个", 1)],
    &[
        ("纯牛奶 250ml", 2),
        ("全麦吐司 400g", 1),
        ("原味酸奶 200g", 1),
    ],
];
/// What 钱多多 buys in the morning, then at s1 and at s2 while the link is down.
const morning_basket: &[(&str, i64)] = &[("拿铁 中杯", 1)];
const s1_basket: &[(&str, i64)] = &[
    ("挂耳咖啡 10包", 2),
    ("每日坚果 7袋装", 2),
    ("五香牛肉干 100g", 1),
];
const s2_basket: &[(&str, i64)] = &[
    ("茉莉花茶 袋泡20包", 2),
    ("无盐黄油 200g", 1),
    ("自热小火锅", 2),
    ("三鲜水饺 1kg", 1),
];

/// `¥1,234.50` (negative: `-¥85.10`).
pub fn yuan(fen: i64) -> String {
    let sign = if fen < 0 { "-" } else { "" };
    let fen = fen.unsigned_abs();
    let whole = (fen / 100).to_string();
    let mut grouped = String::new();
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    format!("{sign}¥{grouped}.{:02}", fen % 100)
}

fn item(name: &str) -> Result<Product> {
    data::product(name).with_context(|| format!("{name} is not in the catalogue"))
}

fn basket(names: &[(&str, i64)]) -> Result<Vec<(Product, i64)>> {
    names
        .iter()
        .map(|(name, qty)| Ok((item(name)?, *qty)))
        .collect()
}

/// Pay a basket entirely with the member's stored value; print what happened either way.
fn spend_stored_value(
    api: &Api,
    store: &Store,
    member: &str,
    lines: &[(Product, i64)],
    key: &str,
) -> Result<Option<Value>> {
    let total: i64 = lines.iter().map(|(p, q)| p.price_fen * q).sum();
    let what: Vec<String> = lines
        .iter()
        .map(|(p, q)| format!("{}×{q}", p.name))
        .collect();
    let body = json!({
        "member_id": member,
        "lines": lines.iter().map(|(p, q)| json!({"sku": p.sku, "qty": q})).collect::<Vec<_>>(),
        "payments": [{"method": "stored_value", "amount_fen": total}],
    });
    let reply = api.post_reply(&store.url("/api/v1/checkouts"), &store.cashier, &body, key)?;
    if reply.ok() {
        println!(
            "    {} {}: 钱多多 buys {} and pays {} from stored value → balance here {}",
            store.id,
            store.name,
            what.join(" + "),
            yuan(total),
            yuan(reply.body["balance_fen"].as_i64().unwrap_or(0))
        );
        Ok(Some(reply.body))
    } else {
        println!(
            "    {} {}: 钱多多's stored-value payment of {} refused: {} {}",
            store.id,
            store.name,
            yuan(total),
            reply.code(),
            reply.body["error"]["message"].as_str().unwrap_or("")
        );
        Ok(None)
    }
}

fn sync_status(api: &Api, store: &Store) -> Result<Value> {
    api.get(&store.url("/api/v1/sync/status"), &store.cashier)
}

/// Walk-in customers paying cash or by phone.
fn walk_ins(api: &Api, store: &Store, count: usize, key: &str) -> Result<i64> {
    let baskets = walk_in_baskets;
    let mut takings = 0;
    for n in 0..count {
        let lines = basket(baskets[n % baskets.len()])?;
        let pay = if n % 2 == 0 { Pay::Cash } else { Pay::External };
        let sale = load::checkout(api, store, None, &lines, pay, &format!("{key}-{n}"))?;
        takings += sale["total_fen"].as_i64().unwrap_or(0);
    }
    Ok(takings)
}

pub fn run(cluster: &mut Cluster, api: &Api) -> Result<bool> {
    // Phones and keys of this run: a rerun in the same directory (--reuse) makes new ones.
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() % 100_000_000)
        .unwrap_or(0);
    let rich_phone = format!("170{run:08}");
    let new_phone = format!("171{run:08}");
    let key = |what: &str| format!("scenario-{run}-{what}");
    let (Some(s1), Some(s2), Some(s3)) = (
        cluster.stores.first(),
        cluster.stores.get(1),
        cluster.stores.get(2),
    ) else {
        anyhow::bail!("the scenario needs three stores");
    };
    let (s1, s2, s3) = (s1.clone(), s2.clone(), s3.clone());

    println!("\n══ A day at the chain 模拟营业日 ══");
    println!("\n[09:00] Morning, all stores online 上午：各店在线");
    let created = api.post(
        &s1.url("/api/v1/members"),
        &s1.cashier,
        &json!({"name": "钱多多", "phone": rich_phone, "tags": ["VIP"]}),
        &key("member"),
    )?;
    let rich = created["id"].as_str().context("member id")?.to_owned();
    api.post(
        &s1.url(&format!("/api/v1/members/{rich}/recharges")),
        &s1.cashier,
        &json!({"amount_fen": 30_000, "method": "cash"}),
        &key("recharge"),
    )?;
    println!(
        "    s1 {}: new member 钱多多 ({rich_phone}) recharges ¥300.00",
        s1.name
    );
    spend_stored_value(
        api,
        &s1,
        &rich,
        &basket(morning_basket)?,
        &key("morning-latte"),
    )?;
    println!("      (online: HQ authorized this spend against the chain-wide balance)");
    for store in [&s1, &s2, &s3] {
        let takings = walk_ins(api, store, 3, &key(&format!("morning-{}", store.id)))?;
        println!(
            "    {} {}: 3 walk-in customers, {}",
            store.id,
            store.name,
            yuan(takings)
        );
    }
    let (agreed, _, took) = wait_converged(cluster, api, Duration::from_secs(30), false)?;
    let seen = api.get(&s3.url(&format!("/api/v1/members/{rich}")), &s3.cashier)?;
    println!(
        "    {} after {:.1} s: 钱多多 is known at {} {} too, balance {}",
        if agreed { "synced" } else { "not yet synced" },
        took.as_secs_f64(),
        s3.id,
        s3.name,
        yuan(seen["balance_fen"].as_i64().unwrap_or(0))
    );

    println!("\n[12:00] Noon: the link to HQ fails (we stop the hq-hub process) 中午：总部断线");
    procs::stop_server("hq-hub");
    let deadline = Instant::now() + Duration::from_secs(15);
    for store in [&s1, &s2, &s3] {
        loop {
            let link = sync_status(api, store)?["link"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            if link != "online" || Instant::now() >= deadline {
                println!("    {} {}: link {link}", store.id, store.name);
                break;
            }
            procs::sleep(Duration::from_millis(100))?;
        }
    }
    println!("  The stores keep selling 门店照常营业:");
    for store in [&s1, &s2, &s3] {
        let takings = walk_ins(api, store, 4, &key(&format!("noon-{}", store.id)))?;
        println!(
            "    {} {}: 4 walk-in customers, {}",
            store.id,
            store.name,
            yuan(takings)
        );
    }
    println!("  The same member spends at two stores 同一会员在两家店消费:");
    spend_stored_value(api, &s1, &rich, &basket(s1_basket)?, &key("noon-s1"))?;
    spend_stored_value(api, &s2, &rich, &basket(s2_basket)?, &key("noon-s2"))?;
    let stale = api.get(&s3.url(&format!("/api/v1/members/{rich}")), &s3.cashier)?;
    println!(
        "    (each store allows it within HQ's offline allowance; {} still shows {})",
        s3.id,
        yuan(stale["balance_fen"].as_i64().unwrap_or(0))
    );
    println!("  The same new customer registers at two stores 同一手机号在两家店注册:");
    let mut duplicates = Vec::new();
    for store in [&s2, &s3] {
        let member = api.post(
            &store.url("/api/v1/members"),
            &store.cashier,
            &json!({"name": "赵新客", "phone": new_phone}),
            &key(&format!("new-{}", store.id)),
        )?;
        let id = member["id"].as_str().context("member id")?.to_owned();
        println!(
            "    {} {}: 赵新客 {new_phone} → member {id}",
            store.id, store.name
        );
        duplicates.push(id);
    }
    println!("  Sync status while apart 断线期间的同步状态:");
    let mut apart = true;
    for store in [&s1, &s2, &s3] {
        let status = sync_status(api, store)?;
        let link = status["link"].as_str().unwrap_or("?");
        let waiting = status["waiting"].as_i64().unwrap_or(0);
        println!(
            "    {} {}: link {link}, {waiting} operations waiting to go out 待上传, last error: {}",
            store.id,
            store.name,
            status["last_error"].as_str().unwrap_or("-")
        );
        apart &= link != "online" && waiting > 0;
    }
    if !apart {
        println!("    ✗ expected every store offline with operations waiting");
    }

    println!(
        "\n[18:00] Evening: the link is back (hq-hub restarted, same data and ports) 傍晚：总部恢复"
    );
    cluster.start_hub()?;
    println!(
        "    hub listening again on http://{}; the stores reconnect by themselves (backoff ≤ 30 s)",
        cluster.hub_http
    );
    let (converged, list, took) = wait_converged(cluster, api, heal_timeout, true)?;
    if converged {
        println!(
            "    ✓ converged {:.1} s after the restart",
            took.as_secs_f64()
        );
    } else {
        println!(
            "    ✗ not converged {:.0} s after the restart",
            took.as_secs_f64()
        );
    }

    println!("\n[21:00] Closing: what HQ and the stores see 打烊对账");
    let hub_token = cluster.hub_token.clone();
    let found = api.get(
        &cluster.hub_url(&format!("/api/v1/members?phone={new_phone}")),
        &hub_token,
    )?;
    let canonical = found["members"].as_array().cloned().unwrap_or_default();
    let mut merged = false;
    if let [member] = canonical.as_slice() {
        let from: Vec<&str> = member["merged_from"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let id = member["id"].as_str().unwrap_or("?");
        println!(
            "    phone {new_phone}: one member 赵新客 {id}, merged_from {from:?} (duplicate merged 重复会员已合并)"
        );
        let mut group: Vec<&str> = from.clone();
        group.push(id);
        group.sort_unstable();
        let mut expected: Vec<&str> = duplicates.iter().map(String::as_str).collect();
        expected.sort_unstable();
        merged = group == expected;
    } else {
        println!(
            "    ✗ phone {new_phone}: {} members at HQ (expected one)",
            canonical.len()
        );
    }
    for store in [&s1, &s2, &s3] {
        let found = api.get(
            &store.url(&format!("/api/v1/members?phone={new_phone}")),
            &store.cashier,
        )?;
        let ids: Vec<&str> = found["members"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str())
            .collect();
        println!("      {} sees {ids:?}", store.id);
        merged &= ids.len() == 1;
    }
    let member = api.get(
        &cluster.hub_url(&format!("/api/v1/members/{rich}")),
        &hub_token,
    )?;
    println!(
        "    钱多多 at HQ: balance {} — both offline spends kept (nothing a cashier confirmed is lost)",
        yuan(member["balance_fen"].as_i64().unwrap_or(0))
    );
    let exceptions = api.get(&cluster.hub_url("/api/v1/exceptions"), &hub_token)?;
    for exception in exceptions["exceptions"].as_array().into_iter().flatten() {
        if exception["member_id"].as_str() == Some(rich.as_str()) {
            println!(
                "    HQ exception queue 异常待处理: {} of {} across stores {} — for HQ to resolve",
                exception["kind"].as_str().unwrap_or("?"),
                yuan(exception["amount"].as_i64().unwrap_or(0)),
                exception["stores"]
            );
        }
    }
    let stores_view = api.get(&cluster.hub_url("/api/v1/stores"), &hub_token)?;
    for store in stores_view["stores"].as_array().into_iter().flatten() {
        println!(
            "    HQ sees store {} {}: {}, lag {}",
            store["id"].as_str().unwrap_or("?"),
            store["name"].as_str().unwrap_or("?"),
            if store["online"] == json!(true) {
                "online"
            } else {
                "offline"
            },
            store["lag"]
        );
    }

    println!("\n  Digests of the four replicas 四个副本的摘要:");
    let equal = show_digests(&list);
    let passed = converged && equal && merged;
    println!(
        "\n  Result 结果: {}",
        if passed {
            "PASS — converged after the partition, duplicate member merged"
        } else if !converged {
            "FAIL — the replicas did not converge"
        } else {
            "FAIL — the duplicate phone was not merged into one member everywhere"
        }
    );
    Ok(passed)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_scenario_buys_only_what_the_smallest_load_creates() {
        let specials: usize = super::data::specialities.iter().map(|(_, l)| l.len()).sum();
        let loaded = &super::data::catalogue[..super::load::products_min - specials];
        let baskets = super::walk_in_baskets.iter().chain(&[
            super::morning_basket,
            super::s1_basket,
            super::s2_basket,
        ]);
        for basket in baskets {
            for (name, _) in *basket {
                assert!(loaded.iter().any(|p| p.name == *name), "{name}");
            }
        }
    }
}

#![allow(non_upper_case_globals)]
//! Durability: every acknowledged checkout survives SIGKILL right after the acknowledgement.

use anyhow::{Result, bail};
use std::collections::BTreeSet;
use tests::{StoreNode, Value, array, int, json, ledger_sums, string};

const checkouts_total: usize = 200;
const threads: usize = 4;
const prices: [(&str, i64); 5] = [
    ("S1", 101),
    ("S2", 257),
    ("S3", 399),
    ("S4", 512),
    ("S5", 733),
];

fn burst_line(i: usize) -> (&'static str, i64, i64) {
    let (sku, price) = prices[i % prices.len()];
    let qty = 1 + (i % 3) as i64;
    (sku, price, qty)
}

fn burst_due(i: usize) -> i64 {
    let (_, price, qty) = burst_line(i);
    price * qty
}

fn burst_body(member_id: &str, i: usize) -> Value {
    let (sku, _, qty) = burst_line(i);
    json!({
        "member_id": member_id,
        "lines": [{"sku": sku, "qty": qty}],
        "payments": [{"method": "stored_value", "amount_fen": burst_due(i)}],
    })
}

fn burst_key(i: usize) -> String {
    format!("crash-burst-{i}")
}

#[test]
fn acknowledged_checkouts_survive_kill9() -> Result<()> {
    let mut node = StoreNode::start_temp()?;
    let member_id = string(&node.register("孙七", "15000000007")?, "id")?;
    node.recharge(&member_id, 500_000)?;
    let start = int(&node.member(&member_id)?, "balance_fen")?;
    assert_eq!(start, 550_000);
    for (sku, price) in prices {
        node.add_product(sku, &format!("商品 {sku}"), price)?;
    }

    // At most 733 × 3 × 200 = ¥4,398 in total: the member stays below 黄金, so no discount
    // changes what is due while the burst runs.
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let api = node.api().clone();
            let token = node.cashier.clone();
            let member_id = member_id.clone();
            std::thread::spawn(move || -> Result<Vec<(usize, String, i64)>> {
                let mut done = Vec::new();
                for i in (t..checkouts_total).step_by(threads) {
                    let due = burst_due(i);
                    let (status, body) = api.post(
                        "/api/v1/checkouts",
                        Some(&token),
                        &burst_body(&member_id, i),
                        Some(&burst_key(i)),
                    )?;
                    if status != 201 {
                        bail!("checkout {i}: {status} {body}");
                    }
                    if int(&body, "total_fen")? != due {
                        bail!("checkout {i}: expected total {due}: {body}");
                    }
                    done.push((i, string(&body, "id")?, due));
                }
                Ok(done)
            })
        })
        .collect();
    let mut acknowledged = Vec::new();
    let mut failures = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(Ok(done)) => acknowledged.extend(done),
            Ok(Err(e)) => failures.push(format!("{e:#}")),
            Err(_) => failures.push("a checkout thread panicked".to_owned()),
        }
    }
    // Kill right after the last acknowledgement, before looking at anything.
    node.kill9()?;
    assert!(failures.is_empty(), "checkouts failed: {failures:#?}");
    assert_eq!(acknowledged.len(), checkouts_total);
    let distinct: BTreeSet<&String> = acknowledged.iter().map(|(_, id, _)| id).collect();
    assert_eq!(distinct.len(), checkouts_total, "checkout ids are unique");

    node.restart()?;
    let mut missing = Vec::new();
    for (_, id, due) in &acknowledged {
        let (status, body) = node.get(&format!("/api/v1/checkouts/{id}"))?;
        if status != 200 || body["total_fen"] != *due || body["refunded"] != false {
            missing.push(format!("{id}: {status} {body}"));
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {checkouts_total} acknowledged checkouts lost or changed after kill -9: {missing:#?}",
        missing.len()
    );

    // The idempotency keys were committed with the checkouts: repeats return the same sale.
    for (i, id, _) in acknowledged.iter().filter(|(i, _, _)| i % 10 == 0) {
        let (status, body) = node.post_idem(
            "/api/v1/checkouts",
            &burst_body(&member_id, *i),
            &burst_key(*i),
        )?;
        assert_eq!(
            (status, body["id"].as_str()),
            (201, Some(id.as_str())),
            "repeat of checkout {i} after the crash: {body}"
        );
    }

    let spent: i64 = acknowledged.iter().map(|(_, _, due)| due).sum();
    let member = node.member(&member_id)?;
    let ledger = node.ledger(&member_id)?;
    let (stored, points) = ledger_sums(&ledger)?;
    assert_eq!(
        int(&member, "balance_fen")?,
        start - spent,
        "balance = start − Σ totals: {member}"
    );
    assert_eq!(
        stored,
        start - spent,
        "Σ ledger stored-value entries = start − Σ totals"
    );
    assert_eq!(int(&member, "points")?, points, "points = Σ points entries");
    let spends: BTreeSet<String> = array(&ledger, "entries")?
        .iter()
        .filter(|e| e["kind"] == "spend")
        .filter_map(|e| e["checkout_id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(
        spends.len(),
        checkouts_total,
        "one spend per acknowledged checkout"
    );

    // The recovered node takes new work with the same tokens.
    let after = node.checkout(&json!({
        "member_id": member_id,
        "lines": [{"sku": "S1", "qty": 1}],
        "payments": [{"method": "stored_value", "amount_fen": 101}],
    }))?;
    assert_eq!(int(&after, "balance_fen")?, start - spent - 101, "{after}");
    Ok(())
}

#[test]
fn sigterm_stops_cleanly_and_keeps_data() -> Result<()> {
    let mut node = StoreNode::start_temp()?;
    let member_id = string(&node.register("周八", "15000000008")?, "id")?;
    node.recharge(&member_id, 12_345)?;
    assert!(
        node.stop()?,
        "store-node should exit by itself with status 0 on SIGTERM; stderr:\n{}",
        node.stderr_tail()
    );
    node.restart()?;
    let member = node.member(&member_id)?;
    assert_eq!(int(&member, "balance_fen")?, 12_345, "{member}");
    let (status, health) = node.healthz()?;
    assert_eq!(status, 200, "{health}");
    Ok(())
}

/// Kill -9 while checkouts are in flight: every acknowledged one is there afterwards, and
/// every checkout that is there is whole (its ledger entries are exactly its total).
#[test]
fn kill9_mid_burst_leaves_whole_checkouts_only() -> Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    const kill_after: usize = 80;
    const per_thread_max: usize = 50;
    let mut node = StoreNode::start_temp()?;
    let member_id = string(&node.register("孙九", "15000000009")?, "id")?;
    node.recharge(&member_id, 500_000)?;
    let start = int(&node.member(&member_id)?, "balance_fen")?;
    for (sku, price) in prices {
        node.add_product(sku, &format!("商品 {sku}"), price)?;
    }

    let acked = std::sync::Arc::new(AtomicUsize::new(0));
    let (reached_tx, reached_rx) = mpsc::channel::<()>();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let api = node.api().clone();
            let token = node.cashier.clone();
            let member_id = member_id.clone();
            let acked = std::sync::Arc::clone(&acked);
            let reached_tx = reached_tx.clone();
            std::thread::spawn(move || -> Vec<(String, i64)> {
                let mut done = Vec::new();
                for n in 0..per_thread_max {
                    let i = n * threads + t;
                    let reply = api.post(
                        "/api/v1/checkouts",
                        Some(&token),
                        &burst_body(&member_id, i),
                        None,
                    );
                    // Transport errors and refusals end this thread (the node is gone).
                    let Ok((201, body)) = reply else { break };
                    let Some(id) = body["id"].as_str() else { break };
                    done.push((id.to_owned(), burst_due(i)));
                    if acked.fetch_add(1, Ordering::SeqCst) + 1 == kill_after {
                        let _ = reached_tx.send(());
                    }
                }
                done
            })
        })
        .collect();
    drop(reached_tx);
    // Wait (bounded) for the kill point; if every thread ends first, kill anyway.
    let _ = reached_rx.recv_timeout(std::time::Duration::from_secs(60));
    node.kill9()?;
    let mut acknowledged = Vec::new();
    for handle in handles {
        match handle.join() {
            Ok(done) => acknowledged.extend(done),
            Err(_) => bail!("a checkout thread panicked"),
        }
    }
    assert!(
        acknowledged.len() >= kill_after,
        "only {} checkouts were acknowledged before the kill",
        acknowledged.len()
    );

    node.restart()?;
    let listed = node.checkouts(500)?;
    eprintln!(
        "{} checkouts acknowledged before kill -9, {} stored",
        acknowledged.len(),
        listed.len()
    );
    let present: std::collections::BTreeMap<String, i64> = listed
        .iter()
        .map(|c| Ok((string(c, "id")?, int(c, "total_fen")?)))
        .collect::<Result<_>>()?;
    assert_eq!(present.len(), listed.len(), "no checkout listed twice");
    for (id, due) in &acknowledged {
        assert_eq!(
            present.get(id),
            Some(due),
            "acknowledged checkout {id} lost after kill -9"
        );
    }
    let ledger = node.ledger(&member_id)?;
    let mut spent_by_checkout = std::collections::BTreeMap::<String, i64>::new();
    for entry in array(&ledger, "entries")? {
        if entry["kind"] == "spend" {
            let id = string(entry, "checkout_id")?;
            *spent_by_checkout.entry(id).or_default() -= int(entry, "amount")?;
        }
    }
    assert_eq!(
        spent_by_checkout, present,
        "each stored checkout has exactly its spend entries, and no spend is orphaned"
    );
    let spent: i64 = present.values().sum();
    let member = node.member(&member_id)?;
    let (stored, points) = ledger_sums(&ledger)?;
    assert_eq!(int(&member, "balance_fen")?, start - spent, "{member}");
    assert_eq!(stored, start - spent);
    assert_eq!(int(&member, "points")?, points);
    Ok(())
}

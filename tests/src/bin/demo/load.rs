//! Loading the sample data through the stores' HTTP APIs, with a few threads.

use super::api::Api;
use super::data::{self, Product, Rng};
use super::{Cluster, Store, wait_converged};
use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Concurrent HTTP clients while loading.
const workers: usize = 8;

/// Fewest products `--products` accepts (the scenario buys from the first of them).
pub const products_min: usize = 100;

/// Products the demo can create: the catalogue plus the two stores' specialities.
pub fn catalogue_size() -> usize {
    data::catalogue.len()
        + data::specialities
            .iter()
            .map(|(_, l)| l.len())
            .sum::<usize>()
}

/// What the loader knows about a member it registered.
#[derive(Clone, Debug)]
pub struct Member {
    pub id: String,
    /// Index of the store it registered at.
    pub home: usize,
    pub balance_fen: i64,
    pub points: i64,
    pub tier: String,
}

/// How a member (or a walk-in customer) wants to pay.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Pay {
    Cash,
    /// 支付宝 / 微信支付, settled outside the till.
    External,
    /// Points first (if ≥ 100), then stored value if it covers the rest, else external.
    Member,
}

/// Figures the loader reports at the end.
#[derive(Default)]
struct Tally {
    checkouts: AtomicUsize,
    stored_value: AtomicUsize,
    points: AtomicUsize,
    recharges: AtomicUsize,
    /// Member payments refused (by code) and paid externally instead.
    fallbacks: Mutex<std::collections::BTreeMap<String, usize>>,
}

/// Tier discount in basis points, as in the default rules.
fn discount_bp(tier: &str) -> i64 {
    match tier {
        "黄金" => 500,
        "钻石" => 1_000,
        _ => 0,
    }
}

/// Ring up a checkout at `store`; keeps `member` up to date. If the member's payment is refused
/// (HQ's allowance, a balance that moved meanwhile), the customer pays externally instead.
pub fn checkout(
    api: &Api,
    store: &Store,
    member: Option<&mut Member>,
    lines: &[(Product, i64)],
    pay: Pay,
    key: &str,
) -> Result<Value> {
    let subtotal: i64 = lines.iter().map(|(p, qty)| p.price_fen * qty).sum();
    let tier = member.as_ref().map_or("", |m| m.tier.as_str());
    let total = subtotal - subtotal * discount_bp(tier) / 10_000;
    let mut payments = Vec::new();
    let mut rest = total;
    if let (Pay::Member, Some(m)) = (pay, member.as_ref()) {
        if m.points >= 100 {
            let used = m.points.min(rest);
            payments.push(json!({"method": "points", "amount_fen": used}));
            rest -= used;
        }
        if rest > 0 && m.balance_fen >= rest {
            payments.push(json!({"method": "stored_value", "amount_fen": rest}));
            rest = 0;
        }
    }
    if rest > 0 {
        let method = if pay == Pay::Cash { "cash" } else { "external" };
        payments.push(json!({"method": method, "amount_fen": rest}));
    }
    let sku_lines: Vec<Value> = lines
        .iter()
        .map(|(p, qty)| json!({"sku": p.sku, "qty": qty}))
        .collect();
    let mut body = json!({"lines": sku_lines, "payments": payments});
    if let Some(m) = member.as_ref() {
        body["member_id"] = json!(m.id);
    }
    let url = store.url("/api/v1/checkouts");
    let mut reply = api.post_reply(&url, &store.cashier, &body, key)?;
    let refused = matches!(
        reply.code(),
        "offline_limit_exceeded" | "insufficient_balance" | "insufficient_points"
    );
    let refusal = reply.code().to_owned();
    if refused {
        body["payments"] = json!([{"method": "external", "amount_fen": total}]);
        reply = api.post_reply(&url, &store.cashier, &body, &format!("{key}-external"))?;
    }
    if !reply.ok() {
        bail!("POST {url} {body}: {} {}", reply.status, reply.body);
    }
    if let Some(m) = member {
        if let Some(balance) = reply.body["balance_fen"].as_i64() {
            m.balance_fen = balance;
        }
        if let Some(points) = reply.body["points"].as_i64() {
            m.points = points;
        }
        if let Some(tier) = reply.body["tier"].as_str() {
            m.tier = tier.to_owned();
        }
    }
    if refused {
        reply.body["demo_fallback"] = json!(refusal);
    }
    Ok(reply.body)
}

/// A random basket: 1–4 different products, 1–2 of each.
fn basket(rng: &mut Rng, products: &[Product]) -> Vec<(Product, i64)> {
    let mut lines: Vec<(Product, i64)> = Vec::new();
    for _ in 0..1 + rng.below(4) {
        let product = rng.pick(products);
        if lines.iter().all(|(p, _)| p.sku != product.sku) {
            lines.push((product, 1 + rng.below(2) as i64));
        }
    }
    lines
}

/// Run `job` on every item with `workers` threads, showing progress as `label`. Stops at the
/// first error (or Ctrl-C) and returns it.
fn parallel<T: Sync, R: Send>(
    label: &str,
    items: &[T],
    job: impl Fn(&Api, usize, &T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error = Mutex::new(None);
    let results = Mutex::new(Vec::with_capacity(items.len()));
    let tty = std::io::stdout().is_terminal();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let api = Api::new();
                while !failed.load(Ordering::SeqCst) {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(index) else { break };
                    match job(&api, index, item) {
                        Ok(result) => {
                            if let Ok(mut list) = results.lock() {
                                list.push((index, result));
                            }
                            done.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(error) => {
                            failed.store(true, Ordering::SeqCst);
                            if let Ok(mut slot) = first_error.lock() {
                                slot.get_or_insert(error);
                            }
                        }
                    }
                }
            });
        }
        while tty && !failed.load(Ordering::SeqCst) && done.load(Ordering::SeqCst) < items.len() {
            print!(
                "\r  … {label} {}/{}",
                done.load(Ordering::SeqCst),
                items.len()
            );
            let _ = std::io::stdout().flush();
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    if tty {
        print!("\r\x1b[2K");
    }
    if let Some(error) = first_error.into_inner().ok().flatten() {
        return Err(error.context(format!("loading {label}")));
    }
    let mut results = results
        .into_inner()
        .ok()
        .context("a loader thread panicked")?;
    results.sort_by_key(|(index, _)| *index);
    println!(
        "  ✓ {} {label} ({:.1} s)",
        results.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

/// Products, members with recharges and checkouts at their own store, then members shopping
/// at other stores and walk-in customers; waits for the catalogue to reach every store first.
pub fn load(cluster: &Cluster, api: &Api, members: usize, products: usize) -> Result<()> {
    let specials: usize = data::specialities.iter().map(|(_, l)| l.len()).sum();
    let mut jobs: Vec<(usize, Product)> = data::catalogue
        .iter()
        .take(products.saturating_sub(specials))
        .map(|p| (0, *p))
        .collect();
    for (id, list) in data::specialities {
        let index = cluster
            .stores
            .iter()
            .position(|s| s.id == id)
            .context("speciality store")?;
        jobs.extend(list.iter().map(|p| (index, *p)));
    }
    let catalogue: Vec<Product> = jobs.iter().map(|(_, p)| *p).collect();
    parallel(
        "products (most created by s1's manager, local specialities by s2 and s3)",
        &jobs,
        |api, _, (store, product)| {
            let store = cluster.stores.get(*store).context("store")?;
            api.post(
                &store.url("/api/v1/products"),
                &store.manager,
                &json!({"sku": product.sku, "name": product.name, "price_fen": product.price_fen}),
                &format!("demo-product-{}", product.sku),
            )
        },
    )?;
    // Every store must know the whole catalogue before it sells from it.
    let started = Instant::now();
    converged(cluster, api, "the catalogue")?;
    let took = started.elapsed();
    println!(
        "  ✓ the catalogue reached every store through HQ ({:.1} s)",
        took.as_secs_f64()
    );

    let tally = Tally::default();
    let stores = cluster.stores.len();
    let numbers: Vec<usize> = (0..members).collect();
    let mut registered = parallel(
        &format!("members registered across the {stores} stores, some recharging stored value"),
        &numbers,
        |api, _, n| {
            let home = n % stores;
            let store = cluster.stores.get(home).context("store")?;
            let mut rng = Rng::new(*n as u64 ^ 0xabcd);
            let created = api.post(
                &store.url("/api/v1/members"),
                &store.cashier,
                &data::member(*n, home),
                &format!("demo-member-{n}"),
            )?;
            let mut member = Member {
                id: created["id"].as_str().context("member id")?.to_owned(),
                home,
                balance_fen: 0,
                points: 0,
                tier: created["tier"].as_str().unwrap_or("").to_owned(),
            };
            if rng.chance(30) {
                let amount = rng.pick(&[10_000, 20_000, 30_000, 50_000, 100_000]);
                let recharge = api.post(
                    &store.url(&format!("/api/v1/members/{}/recharges", member.id)),
                    &store.cashier,
                    &json!({"amount_fen": amount, "method": rng.pick(&["cash", "external"])}),
                    &format!("demo-recharge-{n}"),
                )?;
                member.balance_fen = recharge["balance_fen"].as_i64().unwrap_or(amount);
                tally.recharges.fetch_add(1, Ordering::Relaxed);
            }
            Ok(member)
        },
    )?;
    converged(cluster, api, "the members")?;

    // Most members buy something at their own store, paying with stored value if they have
    // it (authorized online by HQ against the chain-wide balance).
    let buyers: Vec<(usize, Member)> = registered
        .iter()
        .enumerate()
        .filter(|(n, _)| Rng::new(*n as u64 ^ 0xbeef).chance(70))
        .map(|(n, m)| (n, m.clone()))
        .collect();
    let bought = parallel(
        "checkouts by members at their own store",
        &buyers,
        |api, _, (n, member)| {
            let store = cluster.stores.get(member.home).context("store")?;
            let mut rng = Rng::new(*n as u64 ^ 0x5eed);
            let mut member = member.clone();
            let lines = basket(&mut rng, &catalogue);
            let pay = if member.balance_fen > 0 && rng.chance(80) {
                Pay::Member
            } else {
                rng.pick(&[Pay::Cash, Pay::External])
            };
            let sale = checkout(
                api,
                store,
                Some(&mut member),
                &lines,
                pay,
                &format!("demo-checkout-{n}"),
            )?;
            count(&tally, &sale);
            Ok((*n, member))
        },
    )?;
    for (n, member) in bought {
        if let Some(slot) = registered.get_mut(n) {
            *slot = member;
        }
    }
    converged(cluster, api, "the checkouts")?;

    // Members are chain-wide: a fifth of them now shop at another store, paying with points
    // and stored value where they have them; plus walk-in customers paying cash.
    let mut visits: Vec<(usize, Option<Member>)> = registered
        .iter()
        .enumerate()
        .filter(|(n, _)| n % 5 == 2)
        .map(|(n, m)| {
            (
                (m.home + 1 + n % (stores - 1).max(1)) % stores,
                Some(m.clone()),
            )
        })
        .collect();
    let away = visits.len();
    visits.extend((0..members / 8).map(|n| (n % stores, None)));
    parallel(
        &format!(
            "checkouts: {away} by members at another store, {} by walk-in customers",
            visits.len() - away
        ),
        &visits,
        |api, index, (at, member)| {
            let store = cluster.stores.get(*at).context("store")?;
            let mut rng = Rng::new(index as u64 ^ 0x5a1e);
            let lines = basket(&mut rng, &catalogue);
            let mut member = member.clone();
            let pay = if member.is_some() {
                Pay::Member
            } else {
                rng.pick(&[Pay::Cash, Pay::External])
            };
            let sale = checkout(
                api,
                store,
                member.as_mut(),
                &lines,
                pay,
                &format!("demo-visit-{index}"),
            )?;
            count(&tally, &sale);
            Ok(())
        },
    )?;
    println!(
        "  ✓ in all: {} products, {} members, {} recharges, {} checkouts ({} paid partly with stored value, {} with points{})",
        catalogue.len(),
        registered.len(),
        tally.recharges.load(Ordering::Relaxed),
        tally.checkouts.load(Ordering::Relaxed),
        tally.stored_value.load(Ordering::Relaxed),
        tally.points.load(Ordering::Relaxed),
        {
            let refusals = tally
                .fallbacks
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default();
            if refusals.is_empty() {
                String::new()
            } else {
                format!("; member payments refused and paid externally instead: {refusals:?}")
            }
        }
    );
    Ok(())
}

/// Wait (60 s at most) until every replica holds what was just loaded.
fn converged(cluster: &Cluster, api: &Api, what: &str) -> Result<()> {
    let (agreed, _, _) = wait_converged(cluster, api, Duration::from_secs(60), true)?;
    if !agreed {
        bail!("{what} did not reach every replica within 60 s");
    }
    Ok(())
}

fn count(tally: &Tally, sale: &Value) {
    tally.checkouts.fetch_add(1, Ordering::Relaxed);
    let methods: Vec<&str> = sale["payments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["method"].as_str())
        .collect();
    if methods.contains(&"stored_value") {
        tally.stored_value.fetch_add(1, Ordering::Relaxed);
    }
    if methods.contains(&"points") {
        tally.points.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(code) = sale["demo_fallback"].as_str()
        && let Ok(mut refusals) = tally.fallbacks.lock()
    {
        *refusals.entry(code.to_owned()).or_default() += 1;
    }
}

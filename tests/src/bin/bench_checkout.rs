//! Checkout benchmark: durable checkouts (member + 5 lines + stored-value payment) against a
//! real `store-node` on loopback, with 1 client (latency) and 16 clients (throughput), next to
//! the raw cost of one fsync'd SQLite commit measured in the same run.
//!
//! `cargo run --release -p tests --bin bench_checkout -- [--checkouts N] [--clients C]`

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Checkouts per member, so that its rolling spend stays below the first tier threshold
/// (¥5,000) and the total stays undiscounted.
const checkouts_per_member: usize = 120;
/// Five products at these prices (分); one of each per checkout.
const prices: [i64; 5] = [500, 650, 800, 350, 1_200];

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn store_node() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let release = !cfg!(debug_assertions);
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(root)
        .args(["build", "-q", "-p", "store-node"]);
    if release {
        cargo.arg("--release");
    }
    if !cargo.status()?.success() {
        bail!("building store-node failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("store-node"))
}

fn cli(bin: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(bin).args(args).output()?;
    if !output.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

fn post(agent: &ureq::Agent, url: &str, token: &str, body: &Value) -> Result<(u16, Value)> {
    let response = agent
        .post(url)
        .header("Authorization", &format!("Bearer {token}"))
        .send_json(body)?;
    let status = response.status().as_u16();
    let text = response.into_body().read_to_string()?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

fn created(agent: &ureq::Agent, url: &str, token: &str, body: &Value) -> Result<Value> {
    let (status, reply) = post(agent, url, token, body)?;
    if status != 201 && status != 200 {
        bail!("POST {url}: {status} {reply}");
    }
    Ok(reply)
}

fn new_member(agent: &ureq::Agent, base: &str, token: &str, n: usize) -> Result<String> {
    let phone = format!("138{:08}", n);
    let member = created(
        agent,
        &format!("{base}/api/v1/members"),
        token,
        &json!({"name": format!("会员{n}"), "phone": phone}),
    )?;
    let id = member["id"].as_str().context("member id")?.to_owned();
    created(
        agent,
        &format!("{base}/api/v1/members/{id}/recharges"),
        token,
        // ¥4,000 + 10 % bonus: within the default prepaid cap, enough for 120 checkouts.
        &json!({"amount_fen": 400_000}),
    )?;
    Ok(id)
}

fn checkout_body(member: &str) -> Value {
    let lines: Vec<Value> = (0..5)
        .map(|i| json!({"sku": format!("B{i}"), "qty": 1}))
        .collect();
    let total: i64 = prices.iter().sum();
    json!({"member_id": member, "lines": lines, "payments": [{"method": "stored_value", "amount_fen": total}]})
}

/// Run `count` checkouts on one connection; return each latency.
fn client(base: String, token: String, first_member: usize, count: usize) -> Result<Vec<Duration>> {
    let agent = agent();
    let mut latencies = Vec::with_capacity(count);
    let mut member = String::new();
    for n in 0..count {
        if n % checkouts_per_member == 0 {
            member = new_member(
                &agent,
                &base,
                &token,
                first_member + n / checkouts_per_member,
            )?;
        }
        let body = checkout_body(&member);
        let started = Instant::now();
        let (status, reply) = post(&agent, &format!("{base}/api/v1/checkouts"), &token, &body)?;
        latencies.push(started.elapsed());
        if status != 201 {
            bail!("checkout refused: {status} {reply}");
        }
    }
    Ok(latencies)
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)].as_secs_f64() * 1_000.0
}

fn main() -> Result<()> {
    let mut checkouts = 2_000usize;
    let mut clients = 16usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--checkouts" => checkouts = args.next().context("--checkouts N")?.parse()?,
            "--clients" => clients = args.next().context("--clients N")?.parse()?,
            other => bail!("unknown argument {other:?}"),
        }
    }
    let bin = store_node()?;
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("store").display().to_string();
    cli(
        &bin,
        &[
            "init",
            "--data-dir",
            &data,
            "--store-id",
            "bench",
            "--name",
            "bench",
        ],
    )?;
    let token = cli(
        &bin,
        &[
            "user",
            "add",
            "--data-dir",
            &data,
            "--name",
            "bench",
            "--role",
            "manager",
        ],
    )?;
    let mut child = Command::new(&bin)
        .args(["serve", "--data-dir", &data, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let _node = Node(child);
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    let address = loop {
        let line = received
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("store-node did not start"))?;
        if let Some(address) = line.strip_prefix("listening on ") {
            break address.trim().to_owned();
        }
    };
    let base = format!("http://{address}");
    let agent = agent();
    for (i, price) in prices.iter().enumerate() {
        created(
            &agent,
            &format!("{base}/api/v1/products"),
            &token,
            &json!({"sku": format!("B{i}"), "name": format!("商品{i}"), "price_fen": price}),
        )?;
    }
    // Warm up.
    client(base.clone(), token.clone(), 0, 200)?;

    let started = Instant::now();
    let mut single = client(base.clone(), token.clone(), 10_000, checkouts)?;
    let single_elapsed = started.elapsed();
    single.sort();

    let per_client = checkouts.max(clients) / clients;
    let started = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|c| {
            let (base, token) = (base.clone(), token.clone());
            std::thread::spawn(move || client(base, token, 100_000 + c * 1_000, per_client))
        })
        .collect();
    let mut many = Vec::new();
    for thread in threads {
        many.extend(thread.join().map_err(|_| anyhow!("client panicked"))??);
    }
    let many_elapsed = started.elapsed();
    many.sort();

    let mut raw = tests::machine::raw_commits(dir.path(), 2_000)?;
    raw.sort();
    let raw_total: Duration = raw.iter().sum();

    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    println!("| what | figure |");
    println!("|---|---|");
    println!("| machine | {cores} cores |");
    println!(
        "| durable checkout, 1 client ({} checkouts) | p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.0} checkouts/s |",
        single.len(),
        percentile(&single, 0.5),
        percentile(&single, 0.9),
        percentile(&single, 0.99),
        percentile(&single, 1.0),
        single.len() as f64 / single_elapsed.as_secs_f64()
    );
    println!(
        "| durable checkout, {clients} clients ({} checkouts) | {:.0} checkouts/s; p50 {:.2} ms, p99 {:.2} ms |",
        many.len(),
        many.len() as f64 / many_elapsed.as_secs_f64(),
        percentile(&many, 0.5),
        percentile(&many, 0.99)
    );
    println!(
        "| raw SQLite commit (WAL, synchronous=FULL, 1 row of 200 B; 2,000 commits) | p50 {:.3} ms, p99 {:.3} ms; {:.0} commits/s |",
        percentile(&raw, 0.5),
        percentile(&raw, 0.99),
        raw.len() as f64 / raw_total.as_secs_f64()
    );
    Ok(())
}

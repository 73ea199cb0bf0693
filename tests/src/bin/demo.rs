//! The demo: a hub and three store nodes on loopback with sample data.
//!
//! `cargo run --release -p tests --bin demo` builds the binaries, enrolls three stores, starts
//! everything, loads ≥ 1,000 members and ≥ 100 products through the HTTP APIs, waits until all
//! replicas agree, prints where to point a browser or curl, and runs until Ctrl-C.
//! `--scenario` instead runs a scripted day with a partition and prints the digests at the end
//! (exit status 0 only if every replica converged).

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const stores: [(&str, &str, &str); 3] = [
    ("s1", "上海南京路店", "east"),
    ("s2", "杭州西湖店", "east"),
    ("s3", "北京王府井店", "north"),
];
const start_timeout: Duration = Duration::from_secs(60);
const converge_timeout: Duration = Duration::from_secs(120);

struct Options {
    scenario: bool,
    dir: Option<PathBuf>,
    members: usize,
    products: usize,
}

fn options() -> Result<Options> {
    let mut options = Options {
        scenario: false,
        dir: None,
        members: 1_200,
        products: 120,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--scenario" => options.scenario = true,
            "--dir" => {
                options.dir = Some(PathBuf::from(args.next().context("--dir needs a path")?))
            }
            "--members" => options.members = args.next().context("--members N")?.parse()?,
            "--products" => options.products = args.next().context("--products N")?.parse()?,
            "-h" | "--help" => {
                println!("usage: demo [--scenario] [--dir DIR] [--members N] [--products N]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(options)
}

/// A child process killed (SIGTERM, then SIGKILL) when dropped.
struct Process {
    name: String,
    child: Child,
}

impl Process {
    fn stop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Binaries {
    hub: PathBuf,
    store: PathBuf,
}

fn build() -> Result<Binaries> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let release = !cfg!(debug_assertions);
    println!(
        "building hq-hub and store-node ({})…",
        if release { "release" } else { "debug" }
    );
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(root)
        .args(["build", "-p", "hq-hub", "-p", "store-node"]);
    if release {
        cargo.arg("--release");
    }
    let status = cargo.status().context("cannot run cargo")?;
    if !status.success() {
        bail!("building the binaries failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let profile = target.join(if release { "release" } else { "debug" });
    Ok(Binaries {
        hub: profile.join("hq-hub"),
        store: profile.join("store-node"),
    })
}

/// Run a CLI command; return its stdout, trimmed.
fn run(program: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Start a server; wait for each `prefix ADDR` line it prints; return the addresses.
fn start(
    name: &str,
    program: &Path,
    args: &[&str],
    log: &Path,
    prefixes: &[&str],
) -> Result<(Process, Vec<String>)> {
    let log_file = std::fs::File::create(log)?;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let process = Process {
        name: name.to_owned(),
        child,
    };
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + start_timeout;
    let mut addresses = Vec::new();
    for prefix in prefixes {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = received
                .recv_timeout(left)
                .map_err(|_| anyhow!("{name} did not start; see {}", log.display()))?;
            if let Some(address) = line.strip_prefix(prefix) {
                addresses.push(address.trim().to_owned());
                break;
            }
        }
    }
    Ok((process, addresses))
}

fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Http {
    agent: ureq::Agent,
}

impl Http {
    fn new() -> Http {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        Http {
            agent: config.into(),
        }
    }

    fn call(
        &self,
        method: &str,
        url: &str,
        token: &str,
        body: Option<&Value>,
        key: Option<&str>,
    ) -> Result<(u16, Value)> {
        let auth = format!("Bearer {token}");
        let response = match (method, body) {
            ("GET", _) => self.agent.get(url).header("Authorization", &auth).call(),
            (_, Some(body)) => {
                let mut request = self.agent.post(url).header("Authorization", &auth);
                if let Some(key) = key {
                    request = request.header("Idempotency-Key", key);
                }
                request.send_json(body)
            }
            _ => bail!("unsupported request"),
        }
        .with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response.into_body().read_to_string().unwrap_or_default();
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    fn get(&self, url: &str, token: &str) -> Result<Value> {
        let (status, body) = self.call("GET", url, token, None, None)?;
        if status != 200 {
            bail!("GET {url}: {status} {body}");
        }
        Ok(body)
    }

    fn post(&self, url: &str, token: &str, body: &Value, key: &str) -> Result<Value> {
        let (status, reply) = self.call("POST", url, token, Some(body), Some(key))?;
        if !(200..300).contains(&status) {
            bail!("POST {url}: {status} {reply}");
        }
        Ok(reply)
    }
}

struct Store {
    id: &'static str,
    name: &'static str,
    url: String,
    cashier: String,
    manager: String,
    process: Process,
    args: Vec<String>,
    log: PathBuf,
}

struct Cluster {
    dir: PathBuf,
    hub_url: String,
    hub_token: String,
    hub: Process,
    hub_args: Vec<String>,
    hub_log: PathBuf,
    stores: Vec<Store>,
    bins: Binaries,
}

fn setup(bins: Binaries, dir: &Path) -> Result<Cluster> {
    let hub_dir = dir.join("hub");
    let hub_dir_text = hub_dir.display().to_string();
    let quic = format!("127.0.0.1:{}", free_udp_port()?);
    // A fixed port, so that the hub comes back at the same address after a restart.
    let http = format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    );
    run(
        &bins.hub,
        &[
            "init",
            "--data-dir",
            &hub_dir_text,
            "--public-addr",
            &quic,
            "--quic-listen",
            &quic,
            "--http-listen",
            &http,
        ],
    )?;
    let hub_token = run(
        &bins.hub,
        &[
            "user",
            "add",
            "--data-dir",
            &hub_dir_text,
            "--name",
            "总部运营",
            "--role",
            "hq-ops",
        ],
    )?;
    let hub_args: Vec<String> = vec!["serve".into(), "--data-dir".into(), hub_dir_text.clone()];
    let hub_log = dir.join("hub.log");
    let hub_arg_refs: Vec<&str> = hub_args.iter().map(String::as_str).collect();
    let (hub, addresses) = start(
        "hq-hub",
        &bins.hub,
        &hub_arg_refs,
        &hub_log,
        &["quic listening on", "http listening on"],
    )?;
    let hub_url = format!("http://{}", addresses.get(1).context("hub http address")?);
    let mut list = Vec::new();
    for (id, name, region) in stores {
        let bundle = dir.join(format!("{id}.bundle")).display().to_string();
        run(
            &bins.hub,
            &[
                "enroll",
                "--data-dir",
                &hub_dir_text,
                "--store-id",
                id,
                "--name",
                name,
                "--region",
                region,
                "--out",
                &bundle,
            ],
        )?;
        let data = dir.join(id).display().to_string();
        run(
            &bins.store,
            &["init", "--data-dir", &data, "--bundle", &bundle],
        )?;
        let cashier = run(
            &bins.store,
            &[
                "user",
                "add",
                "--data-dir",
                &data,
                "--name",
                "收银员",
                "--role",
                "cashier",
            ],
        )?;
        let manager = run(
            &bins.store,
            &[
                "user",
                "add",
                "--data-dir",
                &data,
                "--name",
                "店长",
                "--role",
                "manager",
            ],
        )?;
        let args: Vec<String> = vec![
            "serve".into(),
            "--data-dir".into(),
            data,
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        let log = dir.join(format!("{id}.log"));
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (process, addresses) = start(id, &bins.store, &arg_refs, &log, &["listening on"])?;
        let url = format!("http://{}", addresses.first().context("store address")?);
        list.push(Store {
            id,
            name,
            url,
            cashier,
            manager,
            process,
            args,
            log,
        });
    }
    Ok(Cluster {
        dir: dir.to_path_buf(),
        hub_url,
        hub_token,
        hub,
        hub_args,
        hub_log,
        stores: list,
        bins,
    })
}

const surnames: [&str; 20] = [
    "王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周", "徐", "孙", "马", "朱", "胡", "郭",
    "何", "林", "高", "罗",
];
const given: [&str; 20] = [
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "娟", "涛", "明",
    "超", "秀英", "华", "鑫",
];
const goods: [(&str, i64); 12] = [
    ("咖啡", 1500),
    ("拿铁", 2200),
    ("面包", 800),
    ("牛奶", 650),
    ("酸奶", 900),
    ("蛋糕", 2800),
    ("三明治", 1800),
    ("果汁", 1200),
    ("矿泉水", 300),
    ("饼干", 950),
    ("巧克力", 1600),
    ("茶饮", 1400),
];
const sizes: [&str; 10] = [
    "小杯",
    "中杯",
    "大杯",
    "原味",
    "低糖",
    "家庭装",
    "经典",
    "限定",
    "双份",
    "迷你",
];

fn load(cluster: &Cluster, members: usize, products: usize) -> Result<Vec<(String, usize)>> {
    let http = Http::new();
    let first = cluster.stores.first().context("no store")?;
    print!("loading {products} products");
    for n in 0..products {
        let (good, price) = goods[n % goods.len()];
        let name = format!("{}{}", sizes[(n / goods.len()) % sizes.len()], good);
        let sku = format!("SKU{:04}", n + 1);
        let body = json!({"sku": sku, "name": name, "price_fen": price + (n as i64 % 7) * 100});
        http.post(
            &format!("{}/api/v1/products", first.url),
            &first.manager,
            &body,
            &format!("demo-product-{n}"),
        )?;
    }
    println!(" ✓");
    // The catalog reaches the other stores through sync before they sell from it.
    wait_converged(cluster, &http)?;
    print!("loading {members} members with recharges and checkouts");
    let started = Instant::now();
    let mut threads = Vec::new();
    let workers = 6;
    for worker in 0..workers {
        let targets: Vec<(String, String, usize)> = cluster
            .stores
            .iter()
            .enumerate()
            .map(|(i, s)| (s.url.clone(), s.cashier.clone(), i))
            .collect();
        threads.push(std::thread::spawn(move || -> Result<Vec<(String, usize)>> {
            let http = Http::new();
            let mut made = Vec::new();
            for n in (worker..members).step_by(workers) {
                let (url, token, index) = &targets[n % targets.len()];
                let name = format!("{}{}", surnames[n % 20], given[(n / 20) % 20]);
                let phone = format!("139{:08}", 10_000_000 + n);
                let mut body = json!({"name": name, "phone": phone, "tags": if n % 5 == 0 { vec!["vip"] } else { vec![] }});
                if n % 3 == 0 {
                    body["birthday"] = json!(format!("19{:02}-{:02}-{:02}", 60 + n % 40, 1 + n % 12, 1 + n % 28));
                }
                let member = http.post(&format!("{url}/api/v1/members"), token, &body, &format!("demo-member-{n}"))?;
                let id = member["id"].as_str().context("member id")?.to_owned();
                if n % 4 == 0 {
                    let amount = [20_000, 50_000, 100_000][n % 3];
                    http.post(&format!("{url}/api/v1/members/{id}/recharges"), token, &json!({"amount_fen": amount}), &format!("demo-recharge-{n}"))?;
                }
                if n % 2 == 0 {
                    let k = n % 12;
                    let sku = format!("SKU{:04}", 1 + k);
                    let price = goods[k].1 + (k as i64 % 7) * 100;
                    let body = json!({"member_id": id, "lines": [{"sku": sku, "qty": 1}], "payments": [{"method": "cash", "amount_fen": price}]});
                    http.post(&format!("{url}/api/v1/checkouts"), token, &body, &format!("demo-checkout-{n}"))?;
                }
                made.push((id, *index));
            }
            Ok(made)
        }));
    }
    let mut all = Vec::new();
    for thread in threads {
        all.extend(
            thread
                .join()
                .map_err(|_| anyhow!("loader thread panicked"))??,
        );
    }
    println!(" ✓ ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(all)
}

fn digests(cluster: &Cluster, http: &Http) -> Vec<(String, Option<String>)> {
    let mut list = vec![(
        "hq".to_owned(),
        http.get(
            &format!("{}/api/v1/sync/digest", cluster.hub_url),
            &cluster.hub_token,
        )
        .ok()
        .and_then(|d| d["digest"].as_str().map(str::to_owned)),
    )];
    for store in &cluster.stores {
        list.push((
            store.id.to_owned(),
            http.get(&format!("{}/api/v1/sync/digest", store.url), &store.cashier)
                .ok()
                .and_then(|d| d["digest"].as_str().map(str::to_owned)),
        ));
    }
    list
}

fn wait_converged(cluster: &Cluster, http: &Http) -> Result<Vec<(String, Option<String>)>> {
    let started = Instant::now();
    loop {
        let list = digests(cluster, http);
        let first = list.first().and_then(|(_, d)| d.clone());
        if first.is_some() && list.iter().all(|(_, d)| *d == first) {
            println!(
                "all replicas agree ({:.1} s)",
                started.elapsed().as_secs_f64()
            );
            return Ok(list);
        }
        if started.elapsed() > converge_timeout {
            return Ok(list);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn print_access(cluster: &Cluster) {
    println!();
    println!("chainsync demo is running — 演示已启动");
    println!("  data directory: {}", cluster.dir.display());
    println!(
        "  HQ hub API:     {}   token (hq-ops): {}",
        cluster.hub_url, cluster.hub_token
    );
    for store in &cluster.stores {
        println!("  store {} {}: {}", store.id, store.name, store.url);
        println!("      cashier token: {}", store.cashier);
        println!("      manager token: {}", store.manager);
    }
    if let Some(store) = cluster.stores.first() {
        println!();
        println!("  try:");
        println!(
            "    curl -H 'Authorization: Bearer {}' '{}/api/v1/members?q=王'",
            store.cashier, store.url
        );
        println!(
            "    curl -H 'Authorization: Bearer {}' {}/api/v1/stores",
            cluster.hub_token, cluster.hub_url
        );
        println!("    curl {}/openapi.json", store.url);
    }
    println!();
}

fn show_digests(list: &[(String, Option<String>)]) -> bool {
    let first = list.first().and_then(|(_, d)| d.clone());
    for (node, digest) in list {
        println!(
            "  {node:>3}: {}",
            digest.as_deref().unwrap_or("(unreachable)")
        );
    }
    let equal = first.is_some() && list.iter().all(|(_, d)| *d == first);
    println!(
        "  converged: {}",
        if equal {
            "yes — 所有副本一致"
        } else {
            "NO"
        }
    );
    equal
}

fn scenario(cluster: &mut Cluster, members: &[(String, usize)]) -> Result<bool> {
    let http = Http::new();
    println!("\n== a day at the chain (scripted) ==");
    let _ = members;
    let s1 = &cluster.stores[0];
    let created = http.post(
        &format!("{}/api/v1/members", s1.url),
        &s1.cashier,
        &json!({"name": "钱多多", "phone": "13600002222"}),
        "scenario-member",
    )?;
    let member = created["id"].as_str().context("member id")?.to_owned();
    http.post(
        &format!("{}/api/v1/members/{member}/recharges", s1.url),
        &s1.cashier,
        &json!({"amount_fen": 30_000}),
        "scenario-recharge",
    )?;
    wait_converged(cluster, &http)?;
    println!(
        "morning: member 钱多多 recharges ¥300.00 at {}; every store sees the balance",
        s1.id
    );

    println!("noon: HQ link fails (hub stopped); the stores keep selling");
    cluster.hub.stop();
    // SKU0001 costs ¥15.00.
    let pay = |store: &Store,
               key: &str,
               member: Option<&str>,
               method: &str,
               qty: i64|
     -> Result<Value> {
        let mut body = json!({"lines": [{"sku": "SKU0001", "qty": qty}], "payments": [{"method": method, "amount_fen": 1500 * qty}]});
        if let Some(member) = member {
            body["member_id"] = json!(member);
        }
        http.post(
            &format!("{}/api/v1/checkouts", store.url),
            &store.cashier,
            &body,
            key,
        )
    };
    for (i, store) in cluster.stores.iter().enumerate() {
        for n in 0..5 {
            pay(store, &format!("scenario-cash-{i}-{n}"), None, "cash", 2)?;
        }
    }
    pay(
        &cluster.stores[0],
        "scenario-sv-0",
        Some(&member),
        "stored_value",
        13,
    )?;
    pay(
        &cluster.stores[1],
        "scenario-sv-1",
        Some(&member),
        "stored_value",
        13,
    )?;
    println!(
        "  钱多多 spends ¥195.00 of stored value at {} and again at {} while apart (each within the offline allowance)",
        cluster.stores[0].id, cluster.stores[1].id
    );
    let phone = "13700001234";
    for store in cluster.stores.iter().take(2) {
        http.post(
            &format!("{}/api/v1/members", store.url),
            &store.cashier,
            &json!({"name": "赵新客", "phone": phone}),
            &format!("scenario-dup-{}", store.id),
        )?;
    }
    println!("  a new customer registered with phone {phone} at two stores");
    for store in &cluster.stores {
        let status = http.get(&format!("{}/api/v1/sync/status", store.url), &store.cashier)?;
        println!(
            "  {} link: {}, operations waiting to go out: {}",
            store.id, status["link"], status["waiting"]
        );
    }

    println!("evening: HQ link back");
    let hub_args: Vec<&str> = cluster.hub_args.iter().map(String::as_str).collect();
    let (hub, _) = start(
        "hq-hub",
        &cluster.bins.hub,
        &hub_args,
        &cluster.hub_log,
        &["quic listening on", "http listening on"],
    )?;
    cluster.hub = hub;
    let list = wait_converged(cluster, &http)?;
    let found = http.get(
        &format!("{}/api/v1/members?phone={phone}", cluster.hub_url),
        &cluster.hub_token,
    )?;
    let merged = found["members"].as_array().map(Vec::len).unwrap_or(0);
    println!(
        "  phone {phone}: {merged} member at HQ (merged_from: {})",
        found["members"][0]["merged_from"]
    );
    let after = http.get(
        &format!("{}/api/v1/members/{member}", cluster.hub_url),
        &cluster.hub_token,
    )?;
    println!(
        "  钱多多's balance at HQ: {} 分 (both sales kept; the true figure)",
        after["balance_fen"]
    );
    let exceptions = http.get(
        &format!("{}/api/v1/exceptions", cluster.hub_url),
        &cluster.hub_token,
    )?;
    for exception in exceptions["exceptions"].as_array().into_iter().flatten() {
        println!(
            "  HQ exception #{}: {} of {} 分, stores {}",
            exception["id"], exception["kind"], exception["amount"], exception["stores"]
        );
    }
    println!("\ndigests at the end of the day:");
    Ok(show_digests(&list))
}

fn main() -> Result<()> {
    let options = options()?;
    let bins = build()?;
    let temp;
    let dir = match &options.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            if std::fs::read_dir(dir)?.next().is_some() {
                bail!(
                    "{} is not empty: give an empty or new directory",
                    dir.display()
                );
            }
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("chainsync-demo-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let mut cluster = setup(bins, &dir)?;
    let members = load(&cluster, options.members, options.products)?;
    let http = Http::new();
    let list = wait_converged(&cluster, &http)?;
    if options.scenario {
        let converged = scenario(&mut cluster, &members)?;
        drop(cluster);
        if !converged {
            bail!("the replicas did not converge");
        }
        return Ok(());
    }
    show_digests(&list);
    print_access(&cluster);
    println!("Ctrl-C to stop — 按 Ctrl-C 停止");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let _ = tokio::signal::ctrl_c().await;
    });
    println!("stopping…");
    for store in &mut cluster.stores {
        store.process.stop();
        let _ = (&store.args, &store.log, &store.process.name);
    }
    cluster.hub.stop();
    Ok(())
}

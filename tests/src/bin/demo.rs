//! The demo: an HQ hub and three store nodes on loopback with sample data.
//!
//! `cargo run --release -p tests --bin demo` builds `hq-hub` and `store-node`, enrolls three
//! stores, starts everything, loads ≥ 1,000 members and ≥ 100 products through the HTTP APIs,
//! waits until all four replicas agree, prints the addresses and API tokens, and runs until
//! Ctrl-C. `--scenario` instead runs a scripted day with a partition (the hub goes down, the
//! stores keep selling) and exits 0 only if every replica converged afterwards.

#[path = "demo/api.rs"]
mod api;
#[path = "demo/data.rs"]
mod data;
#[path = "demo/load.rs"]
mod load;
#[path = "demo/procs.rs"]
mod procs;
#[path = "demo/scenario.rs"]
mod scenario;

use anyhow::{Context, Result, bail};
use api::Api;
use procs::Binaries;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The three stores: id, name, region, cashier, manager.
const stores: [(&str, &str, &str, &str, &str); 3] = [
    ("s1", "上海南京路店", "east", "收银员小王", "王店长"),
    ("s2", "杭州西湖店", "east", "收银员小李", "李店长"),
    ("s3", "北京王府井店", "north", "收银员小张", "张店长"),
];
/// Preferred HTTP ports (a free one is used instead when taken).
const hub_http_port: u16 = 8080;
const store_http_ports: [u16; 3] = [8181, 8182, 8183];
const start_timeout: Duration = Duration::from_secs(30);
/// How long the replicas may take to agree during set-up.
const converge_timeout: Duration = Duration::from_secs(90);
/// Where the demo keeps what it needs to start again with `--reuse`.
const state_file: &str = "demo.json";
const usage: &str = "\
usage: demo [--scenario] [--dir DIR [--reuse]] [--members N] [--products N] [--no-build]

  (no option)    start an HQ hub and 3 store nodes on 127.0.0.1 with sample data, print the
                 addresses and API tokens, run until Ctrl-C
  --scenario     run a scripted day with a partition instead, then stop (exit 0 if converged)
  --dir DIR      keep everything in DIR (default: a temporary directory, removed on exit);
                 DIR must be new or empty
  --reuse        allow a non-empty DIR; if it holds an earlier demo, start that one again
                 (same data and tokens) instead of setting up a new one
  --members N    sample members to load (default 1200)
  --products N   sample products (default 120; 100 to 128)
  --no-build     use the hq-hub and store-node binaries next to the demo without building";

struct Options {
    scenario: bool,
    dir: Option<PathBuf>,
    reuse: bool,
    members: usize,
    products: usize,
    skip_build: bool,
}

fn options() -> Result<Option<Options>> {
    let mut options = Options {
        scenario: false,
        dir: None,
        reuse: false,
        members: 1_200,
        products: 120,
        skip_build: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--scenario" => options.scenario = true,
            "--dir" => options.dir = Some(args.next().context("--dir needs a directory")?.into()),
            "--reuse" => options.reuse = true,
            "--members" => {
                options.members = args
                    .next()
                    .context("--members needs a number")?
                    .parse()
                    .context("--members needs a number")?
            }
            "--products" => {
                options.products = args
                    .next()
                    .context("--products needs a number")?
                    .parse()
                    .context("--products needs a number")?
            }
            "--no-build" => options.skip_build = true,
            "-h" | "--help" => {
                println!("{usage}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{usage}"),
        }
    }
    let most = load::catalogue_size();
    if options.products < load::products_min || options.products > most {
        bail!(
            "--products must be between {} and {most}",
            load::products_min
        );
    }
    if options.reuse && options.dir.is_none() {
        bail!("--reuse goes with --dir DIR");
    }
    Ok(Some(options))
}

/// Each replica's digest by node (`hq`, `s1`…); None if it did not answer.
pub type Digests = Vec<(String, Option<String>)>;

/// One store of the demo chain.
#[derive(Clone)]
pub struct Store {
    pub id: String,
    pub name: String,
    pub region: String,
    /// `IP:PORT` of its HTTP API.
    pub http: String,
    pub cashier: String,
    pub manager: String,
    data: PathBuf,
    log: PathBuf,
}

impl Store {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

/// The hub and the stores, their addresses and tokens.
pub struct Cluster {
    pub dir: PathBuf,
    hub_dir: PathBuf,
    hub_quic: String,
    /// `IP:PORT` of HQ's HTTP API.
    pub hub_http: String,
    pub hub_token: String,
    hub_log: PathBuf,
    pub stores: Vec<Store>,
    bins: Binaries,
}

impl Cluster {
    pub fn hub_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.hub_http)
    }

    /// Start `hq-hub serve` (again) with the same data directory and ports.
    pub fn start_hub(&mut self) -> Result<()> {
        let args = [
            "serve",
            "--data-dir",
            &self.hub_dir.display().to_string(),
            "--quic-listen",
            &self.hub_quic,
            "--http-listen",
            &self.hub_http,
        ]
        .map(String::from);
        let found = procs::start(
            "hq-hub",
            &self.bins.hub,
            &args,
            &self.hub_log,
            &["quic listening on", "http listening on"],
            start_timeout,
        )?;
        if let Some(http) = found.get(1) {
            self.hub_http = http.clone();
        }
        Ok(())
    }

    fn start_store(&mut self, index: usize) -> Result<()> {
        let store = self.stores.get_mut(index).context("no such store")?;
        let mut listen = store.http.clone();
        for attempt in 0..2 {
            let args = [
                "serve",
                "--data-dir",
                &store.data.display().to_string(),
                "--listen",
                &listen,
            ]
            .map(String::from);
            match procs::start(
                &store.id,
                &self.bins.store,
                &args,
                &store.log,
                &["listening on"],
                start_timeout,
            ) {
                Ok(found) => {
                    store.http = found.first().cloned().unwrap_or(listen);
                    return Ok(());
                }
                // Perhaps someone took the port meanwhile: once more on any free port.
                Err(error) if attempt == 0 && !procs::is_interrupted() => {
                    eprintln!(
                        "  {} did not start on {listen} ({error:#}); trying another port",
                        store.id
                    );
                    procs::stop_server(&store.id);
                    listen = "127.0.0.1:0".into();
                }
                Err(error) => return Err(error),
            }
        }
        bail!("{} did not start", store.id)
    }

    fn start_all(&mut self) -> Result<()> {
        self.start_hub()?;
        println!(
            "  ✓ HQ hub 总部: http://{} (stores sync with it over QUIC, {}/udp)",
            self.hub_http, self.hub_quic
        );
        for index in 0..self.stores.len() {
            self.start_store(index)?;
            let store = &self.stores[index];
            println!("  ✓ {} {}: http://{}", store.id, store.name, store.http);
        }
        Ok(())
    }

    /// Write `demo.json` (to start again with --reuse) and `demo.env` (to `source` in a shell).
    fn save(&self) -> Result<()> {
        let state = json!({
            "hub": {"quic": self.hub_quic, "http": self.hub_http, "token": self.hub_token},
            "stores": self.stores.iter().map(|s| json!({
                "id": s.id, "name": s.name, "region": s.region, "http": s.http,
                "cashier": s.cashier, "manager": s.manager,
            })).collect::<Vec<_>>(),
        });
        write_private(
            &self.dir.join(state_file),
            &serde_json::to_string_pretty(&state)?,
        )?;
        let mut env = format!(
            "# source this file: the chainsync demo's addresses and API tokens\nexport HQ=http://{}\nexport HQ_TOKEN={}\n",
            self.hub_http, self.hub_token
        );
        for store in &self.stores {
            let id = store.id.to_uppercase();
            env.push_str(&format!(
                "export {id}=http://{}\nexport {id}_CASHIER={}\nexport {id}_MANAGER={}\n",
                store.http, store.cashier, store.manager
            ));
        }
        write_private(&self.dir.join("demo.env"), &env)
    }
}

/// Write a file only its owner may read (it holds API tokens).
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// A TCP port on 127.0.0.1: `preferred` if free, else any free one. The listener is returned
/// so that the ports picked together are distinct; drop it before starting the server.
fn pick_port(preferred: u16) -> Result<(u16, std::net::TcpListener)> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", preferred))
        .or_else(|_| std::net::TcpListener::bind(("127.0.0.1", 0)))?;
    Ok((listener.local_addr()?.port(), listener))
}

/// Port of an `IP:PORT` string, or 0.
fn port_of(address: &str) -> u16 {
    address
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse().ok())
        .unwrap_or(0)
}

/// A new hub and three enrolled stores in `dir` (not started).
fn set_up(bins: Binaries, dir: &Path) -> Result<Cluster> {
    let hub_dir = dir.join("hub");
    let hub_dir_text = hub_dir.display().to_string();
    for (id, ..) in stores {
        if dir.join(id).exists() || hub_dir.exists() {
            bail!(
                "{} already has a hub/ or {id}/ directory but no {state_file}; give a new or empty directory",
                dir.display()
            );
        }
    }
    let quic = format!(
        "127.0.0.1:{}",
        std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    );
    let (hub_port, hub_listener) = pick_port(hub_http_port)?;
    let mut store_ports = Vec::new();
    let mut held = vec![hub_listener];
    for preferred in store_http_ports {
        let (port, listener) = pick_port(preferred)?;
        store_ports.push(port);
        held.push(listener);
    }
    drop(held);
    let http = format!("127.0.0.1:{hub_port}");
    procs::run(
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
    let hub_token = procs::run(
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
    println!("  ✓ HQ hub initialized (certificate authority, HQ user 总部运营 hq-ops)");
    let bundles = dir.join("bundles");
    std::fs::create_dir_all(&bundles)?;
    let mut list = Vec::new();
    for ((id, name, region, cashier, manager), port) in stores.into_iter().zip(store_ports) {
        let bundle = bundles.join(format!("{id}.bundle")).display().to_string();
        procs::run(
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
        let data = dir.join(id);
        let data_text = data.display().to_string();
        procs::run(
            &bins.store,
            &["init", "--data-dir", &data_text, "--bundle", &bundle],
        )?;
        let token = |user: &str, role: &str| {
            procs::run(
                &bins.store,
                &[
                    "user",
                    "add",
                    "--data-dir",
                    &data_text,
                    "--name",
                    user,
                    "--role",
                    role,
                ],
            )
        };
        let cashier_token = token(cashier, "cashier")?;
        let manager_token = token(manager, "manager")?;
        println!(
            "  ✓ store {id} {name} ({region}) enrolled; users {cashier} (cashier), {manager} (manager)"
        );
        list.push(Store {
            id: id.into(),
            name: name.into(),
            region: region.into(),
            http: format!("127.0.0.1:{port}"),
            cashier: cashier_token,
            manager: manager_token,
            data,
            log: dir.join(format!("{id}.log")),
        });
    }
    Ok(Cluster {
        dir: dir.to_path_buf(),
        hub_dir,
        hub_quic: quic,
        hub_http: http,
        hub_token,
        hub_log: dir.join("hub.log"),
        stores: list,
        bins,
    })
}

/// The demo saved in `dir` by an earlier run (not started).
fn reopen(bins: Binaries, dir: &Path) -> Result<Cluster> {
    let path = dir.join(state_file);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let state: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let text_of = |value: &Value, what: &str| -> Result<String> {
        value
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{} has no {what}", path.display()))
    };
    let hub_quic = text_of(&state["hub"]["quic"], "hub.quic")?;
    if std::net::UdpSocket::bind(&hub_quic).is_err() {
        bail!("the hub's QUIC address {hub_quic}/udp is taken (is the demo already running?)");
    }
    let mut held = Vec::new();
    let (hub_port, listener) = pick_port(port_of(&text_of(&state["hub"]["http"], "hub.http")?))?;
    held.push(listener);
    let mut list = Vec::new();
    for (index, saved) in state["stores"].as_array().into_iter().flatten().enumerate() {
        let id = text_of(&saved["id"], "store id")?;
        let preferred = port_of(&text_of(&saved["http"], "store http")?);
        let (port, listener) = pick_port(preferred)
            .or_else(|_| pick_port(store_http_ports.get(index).copied().unwrap_or(0)))?;
        held.push(listener);
        list.push(Store {
            name: text_of(&saved["name"], "store name")?,
            region: text_of(&saved["region"], "store region")?,
            http: format!("127.0.0.1:{port}"),
            cashier: text_of(&saved["cashier"], "cashier token")?,
            manager: text_of(&saved["manager"], "manager token")?,
            data: dir.join(&id),
            log: dir.join(format!("{id}.log")),
            id,
        });
    }
    drop(held);
    if list.len() != stores.len() {
        bail!("{} does not list {} stores", path.display(), stores.len());
    }
    Ok(Cluster {
        dir: dir.to_path_buf(),
        hub_dir: dir.join("hub"),
        hub_quic,
        hub_http: format!("127.0.0.1:{hub_port}"),
        hub_token: text_of(&state["hub"]["token"], "hub token")?,
        hub_log: dir.join("hub.log"),
        stores: list,
        bins,
    })
}

/// Each replica's digest: HQ first, then the stores (None if it did not answer).
pub fn digests(cluster: &Cluster, api: &Api) -> Digests {
    let digest = |url: String, token: &str| {
        api.get(&url, token)
            .ok()
            .and_then(|d| d["digest"].as_str().map(str::to_owned))
    };
    let mut list = vec![(
        "hq".to_owned(),
        digest(cluster.hub_url("/api/v1/sync/digest"), &cluster.hub_token),
    )];
    for store in &cluster.stores {
        list.push((
            store.id.clone(),
            digest(store.url("/api/v1/sync/digest"), &store.cashier),
        ));
    }
    list
}

pub fn all_equal(list: &Digests) -> bool {
    let first = list.first().and_then(|(_, d)| d.as_ref());
    first.is_some() && list.iter().all(|(_, d)| d.as_ref() == first)
}

/// Poll the digests until all four are equal, or `timeout`. With `progress`, print where each
/// replica stands every few seconds. Returns whether they agreed, the last digests and the time.
pub fn wait_converged(
    cluster: &Cluster,
    api: &Api,
    timeout: Duration,
    progress: bool,
) -> Result<(bool, Digests, Duration)> {
    let started = Instant::now();
    let mut next_report = Duration::from_secs(3);
    loop {
        let list = digests(cluster, api);
        let elapsed = started.elapsed();
        if all_equal(&list) {
            return Ok((true, list, elapsed));
        }
        if elapsed >= timeout {
            return Ok((false, list, elapsed));
        }
        if progress && elapsed >= next_report {
            next_report += Duration::from_secs(5);
            let mut line = format!("    … {:>4.1} s:", elapsed.as_secs_f64());
            for (node, digest) in &list {
                line.push_str(&format!(
                    " {node} {}",
                    digest
                        .as_deref()
                        .map_or("(down)", |d| d.get(..8).unwrap_or(d))
                ));
            }
            let links: Vec<String> = cluster
                .stores
                .iter()
                .filter_map(|s| {
                    let status = api.get(&s.url("/api/v1/sync/status"), &s.cashier).ok()?;
                    Some(format!(
                        "{} {} (waiting {})",
                        s.id,
                        status["link"].as_str().unwrap_or("?"),
                        status["waiting"]
                    ))
                })
                .collect();
            println!("{line} · {}", links.join(", "));
        }
        procs::sleep(Duration::from_millis(250))?;
    }
}

/// Print the digests, one per line; return whether all are equal.
pub fn show_digests(list: &Digests) -> bool {
    for (node, digest) in list {
        println!(
            "    {node:>3}  {}",
            digest.as_deref().unwrap_or("(did not answer)")
        );
    }
    let equal = all_equal(list);
    println!(
        "    {}",
        if equal {
            "✓ all four replicas are identical — 四个副本完全一致"
        } else {
            "✗ the replicas differ — 副本不一致"
        }
    );
    equal
}

/// What one replica holds, from `store-node status` (members, checkouts, operations).
fn replica_counts(cluster: &Cluster) -> Option<String> {
    let store = cluster.stores.first()?;
    let status = procs::run(
        &cluster.bins.store,
        &["status", "--data-dir", &store.data.display().to_string()],
    )
    .ok()?;
    let figure = |label: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(label))
            .map(str::trim)
            .unwrap_or("?")
            .to_owned()
    };
    Some(format!(
        "{} members, {} checkouts, {} ledger entries, {} operations",
        figure("members:"),
        figure("checkouts:"),
        figure("ledger entries:"),
        figure("operations held:")
    ))
}

fn print_access(cluster: &Cluster, temporary: bool) {
    let rule = "═".repeat(78);
    println!("\n{rule}");
    println!(" chainsync demo is running — 演示已就绪");
    println!("{rule}");
    println!(" Data directory 数据目录: {}", cluster.dir.display());
    if temporary {
        println!("     (temporary: removed when the demo stops; use --dir DIR to keep it)");
    }
    println!("     logs: hub.log, s1.log, s2.log, s3.log · addresses and tokens: demo.env");
    println!();
    println!(" HQ hub API 总部接口   http://{}", cluster.hub_http);
    println!("     token (总部运营, hq-ops): {}", cluster.hub_token);
    println!();
    println!(" Store cashier APIs 门店收银接口");
    for store in &cluster.stores {
        println!(
            "   {} {} ({})   http://{}",
            store.id, store.name, store.region, store.http
        );
        println!("     cashier token 收银员: {}", store.cashier);
        println!("     manager token 店长:   {}", store.manager);
    }
    let (Some(s1), Some(s2), Some(s3)) = (
        cluster.stores.first(),
        cluster.stores.get(1),
        cluster.stores.get(2),
    ) else {
        return;
    };
    let latte = data::product("拿铁 中杯").map_or("6921001000020", |p| p.sku);
    println!();
    println!(
        " Try it 试一试 (or `source {}/demo.env` and use $S1_CASHIER…):",
        cluster.dir.display()
    );
    println!("   # find members whose name starts with 王, at s1");
    println!(
        "   curl -G -H 'Authorization: Bearer {}' --data-urlencode 'q=王' --data 'limit=3' http://{}/api/v1/members",
        s1.cashier, s1.http
    );
    println!("   # register a member at s2 (the Idempotency-Key makes a retry safe)");
    println!(
        "   curl -H 'Authorization: Bearer {}' -H 'Idempotency-Key: try-1' -d '{{\"name\":\"张三\",\"phone\":\"17012345678\"}}' http://{}/api/v1/members",
        s2.cashier, s2.http
    );
    println!("   # ring up two lattes at s3, paid in cash (¥36.00 = 3600 分)");
    println!(
        "   curl -H 'Authorization: Bearer {}' -H 'Idempotency-Key: try-2' -d '{{\"lines\":[{{\"sku\":\"{latte}\",\"qty\":2}}],\"payments\":[{{\"method\":\"cash\",\"amount_fen\":3600}}]}}' http://{}/api/v1/checkouts",
        s3.cashier, s3.http
    );
    println!("   # the same member seen from HQ (any store's member is visible everywhere)");
    println!(
        "   curl -H 'Authorization: Bearer {}' 'http://{}/api/v1/members?phone=17012345678'",
        cluster.hub_token, cluster.hub_http
    );
    println!("   # the stores' links and sync lag, from HQ; one store's own view");
    println!(
        "   curl -H 'Authorization: Bearer {}' http://{}/api/v1/stores",
        cluster.hub_token, cluster.hub_http
    );
    println!(
        "   curl -H 'Authorization: Bearer {}' http://{}/api/v1/sync/status",
        s1.cashier, s1.http
    );
    println!("   # the API description");
    println!("   curl http://{}/openapi.json", s1.http);
    println!();
    println!(" Ctrl-C to stop — 按 Ctrl-C 停止");
    println!("{rule}");
}

/// Wait for Ctrl-C (or SIGTERM/SIGHUP); report a server that stops by itself meanwhile.
fn wait_for_stop(signals: &std::sync::mpsc::Receiver<&'static str>) {
    loop {
        match signals.recv_timeout(Duration::from_secs(1)) {
            Ok(name) => {
                println!("\n{name}: stopping the hub and the stores… 正在停止");
                return;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                for (name, status, log) in procs::exited_servers() {
                    eprintln!(
                        "warning: {name} stopped by itself ({status}); see {}",
                        log.display()
                    );
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// The working directory: a temporary one, or `--dir` (new or empty unless `--reuse`).
/// Returns the path, the temporary directory to clean up, and whether an earlier demo is there.
fn working_dir(options: &Options) -> Result<(PathBuf, Option<tempfile::TempDir>, bool)> {
    let Some(dir) = &options.dir else {
        let temp = tempfile::Builder::new()
            .prefix("chainsync-demo-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        return Ok((temp.path().to_path_buf(), Some(temp), false));
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let empty = std::fs::read_dir(&dir)?.next().is_none();
    if !empty && !options.reuse {
        bail!(
            "{} is not empty: give a new or empty directory, or add --reuse{}",
            dir.display(),
            if dir.join(state_file).is_file() {
                " to start the demo kept there again"
            } else {
                ""
            }
        );
    }
    let earlier = dir.join(state_file).is_file();
    Ok((dir, None, earlier))
}

fn run(options: &Options, signals: &std::sync::mpsc::Receiver<&'static str>) -> Result<bool> {
    println!("chainsync demo — 连锁门店会员系统演示\n");
    let (dir, mut temp, earlier) = working_dir(options)?;
    // Declared after `temp`, so dropped before it: the servers stop, then the directory goes.
    let _servers = procs::ServersGuard;
    println!("① Build 构建");
    let bins = procs::build(options.skip_build)?;
    let mut cluster = if earlier {
        println!("\n② Reuse 复用 the demo kept in {}", dir.display());
        reopen(bins, &dir)?
    } else {
        println!(
            "\n② Set up 初始化: HQ hub and 3 stores in {}",
            dir.display()
        );
        let cluster = set_up(bins, &dir)?;
        cluster.save()?;
        cluster
    };
    println!("\n③ Start 启动");
    cluster.start_all()?;
    cluster.save()?;
    let api = Api::new();
    if earlier {
        println!("\n④ Sample data 样例数据: kept from the earlier run");
    } else {
        println!("\n④ Load sample data 导入样例数据 (through the HTTP APIs)");
        load::load(&cluster, &api, options.members, options.products)?;
    }
    println!("\n⑤ Sync 同步: waiting until HQ and the three stores hold the same data…");
    let (converged, list, took) = wait_converged(&cluster, &api, converge_timeout, true)?;
    if !converged {
        show_digests(&list);
        bail!(
            "the replicas did not agree within {} s; see the logs in {}",
            converge_timeout.as_secs(),
            dir.display()
        );
    }
    println!("  ✓ all four replicas agree ({:.1} s)", took.as_secs_f64());
    if let Some(counts) = replica_counts(&cluster) {
        println!("  each replica holds {counts}");
    }
    if options.scenario {
        let passed = scenario::run(&mut cluster, &api)?;
        if !passed {
            // Keep the evidence.
            if let Some(temp) = temp.as_mut() {
                temp.disable_cleanup(true);
            }
            println!("\nlogs and data kept in {}", dir.display());
        }
        println!("\nstopping the hub and the stores…");
        return Ok(passed);
    }
    print_access(&cluster, temp.is_some());
    wait_for_stop(signals);
    Ok(true)
}

fn main() -> ExitCode {
    let options = match options() {
        Ok(Some(options)) => options,
        Ok(None) => return ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("demo: {error:#}");
            return ExitCode::from(2);
        }
    };
    let signals = match procs::watch_signals() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("demo: cannot watch for Ctrl-C: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = run(&options, &signals);
    // Every server is stopped by now (run's guard).
    match outcome {
        Ok(true) => {
            println!("stopped — 已停止");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            eprintln!("demo: the scenario failed (see above)");
            ExitCode::FAILURE
        }
        Err(_) if procs::is_interrupted() => {
            eprintln!("demo: interrupted; everything it started is stopped");
            ExitCode::from(130)
        }
        Err(error) => {
            eprintln!("demo failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

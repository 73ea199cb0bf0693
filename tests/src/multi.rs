//! Harness for tests with a hub and several store nodes, each a real process on loopback.
//!
//! - [`Hub`]: `hq-hub init` (QUIC on a free UDP port, HTTP on a free TCP port, both kept across
//!   restarts), an `hq-ops` user, `serve`; enroll and revoke stores; kill -9 and restart.
//! - [`Store`]: `store-node init --bundle`, a cashier and a manager, `serve`.
//! - [`UdpRelay`]: a UDP forwarder between one store and the hub that can be cut (drops every
//!   datagram) and restored, to partition a store without stopping anything.
//! - [`wait_until`]: polls a condition with a bound.
//!
//! Server logs go to files in the test's directory; [`Hub::log`] reads the hub's.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{Api, Reply, cli_timeout, run_bounded, start_timeout, store_node_bin};

static HUB_BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Path of the `hq-hub` binary (next to `store-node`), built once per test process.
pub fn hq_hub_bin() -> Result<PathBuf> {
    HUB_BIN
        .get_or_init(|| {
            let store = store_node_bin().map_err(|e| format!("{e:#}"))?;
            let root = Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .ok_or("no workspace root")?;
            let profile = store.parent().ok_or("no profile dir")?;
            let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cargo
                .current_dir(root)
                .args(["build", "-q", "-p", "hq-hub"]);
            if profile.file_name().is_some_and(|name| name == "release") {
                cargo.arg("--release");
            }
            let built =
                run_bounded(cargo, Duration::from_secs(20 * 60)).map_err(|e| format!("{e:#}"))?;
            if !built.success {
                return Err(format!("building hq-hub failed: {}", built.stderr));
            }
            Ok(profile.join("hq-hub"))
        })
        .clone()
        .map_err(|e| anyhow!("hq-hub binary unavailable: {e}"))
}

/// Poll `condition` every 100 ms until it holds or `timeout` passes.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match condition() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            bail!("{what}: not true after {timeout:?} (last error: {last_error:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn cli(bin: &Path, args: &[&str]) -> Result<String> {
    let mut command = Command::new(bin);
    command.args(args);
    let out = run_bounded(command, cli_timeout)?;
    if !out.success {
        bail!("{} {args:?} failed: {}", bin.display(), out.stderr);
    }
    Ok(out.stdout.trim().to_owned())
}

/// Start a server and wait for each `prefix ADDR` line on its stdout.
fn spawn_server(
    bin: &Path,
    args: &[String],
    env: &[(String, String)],
    log: &Path,
    prefixes: &[&str],
) -> Result<(Child, Vec<String>)> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    let mut child = Command::new(bin)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
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
            let line =
                match received.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(line) => line,
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        bail!(
                            "{} did not start: {}",
                            bin.display(),
                            std::fs::read_to_string(log).unwrap_or_default()
                        );
                    }
                };
            if let Some(address) = line.strip_prefix(prefix) {
                addresses.push(address.trim().to_owned());
                break;
            }
        }
    }
    Ok((child, addresses))
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn free_udp() -> Result<SocketAddr> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?)
}

fn free_tcp() -> Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

pub struct Hub {
    pub dir: PathBuf,
    pub quic: SocketAddr,
    pub token: String,
    pub api: Api,
    child: Option<Child>,
    log: PathBuf,
    env: Vec<(String, String)>,
}

impl Hub {
    /// Initialize a hub in `dir/hub` and serve it.
    pub fn start(dir: &Path) -> Result<Hub> {
        Hub::start_with_env(dir, &[])
    }

    /// Like [`Hub::start`], `serve` running with these environment variables (also on restart),
    /// e.g. the test clock (`CHAINSYNC_TEST_CLOCK_FILE`, see [`TestClock`]).
    pub fn start_with_env(dir: &Path, env: &[(String, String)]) -> Result<Hub> {
        let bin = hq_hub_bin()?;
        let data = dir.join("hub");
        let quic = free_udp()?;
        let http = free_tcp()?;
        let data_text = data.display().to_string();
        cli(
            &bin,
            &[
                "init",
                "--data-dir",
                &data_text,
                "--public-addr",
                &quic.to_string(),
                "--quic-listen",
                &quic.to_string(),
                "--http-listen",
                &http.to_string(),
            ],
        )?;
        let token = cli(
            &bin,
            &[
                "user",
                "add",
                "--data-dir",
                &data_text,
                "--name",
                "ops",
                "--role",
                "hq-ops",
            ],
        )?;
        let mut hub = Hub {
            dir: data,
            quic,
            token,
            api: Api::new(&format!("http://{http}")),
            child: None,
            log: dir.join("hub.log"),
            env: env.to_vec(),
        };
        hub.serve()?;
        Ok(hub)
    }

    fn serve(&mut self) -> Result<()> {
        let args = vec![
            "serve".to_owned(),
            "--data-dir".to_owned(),
            self.dir.display().to_string(),
        ];
        let (child, _) = spawn_server(
            &hq_hub_bin()?,
            &args,
            &self.env,
            &self.log,
            &["quic listening on", "http listening on"],
        )?;
        self.child = Some(child);
        Ok(())
    }

    /// Enroll a store; returns the bundle path.
    pub fn enroll(&self, store_id: &str, out_dir: &Path) -> Result<PathBuf> {
        let bundle = out_dir.join(format!("{store_id}.bundle"));
        cli(
            &hq_hub_bin()?,
            &[
                "enroll",
                "--data-dir",
                &self.dir.display().to_string(),
                "--store-id",
                store_id,
                "--name",
                &format!("门店 {store_id}"),
                "--region",
                "east",
                "--out",
                &bundle.display().to_string(),
            ],
        )?;
        Ok(bundle)
    }

    pub fn revoke(&self, store_id: &str) -> Result<()> {
        cli(
            &hq_hub_bin()?,
            &[
                "revoke",
                "--data-dir",
                &self.dir.display().to_string(),
                "--store-id",
                store_id,
            ],
        )?;
        Ok(())
    }

    pub fn kill9(&mut self) {
        kill(&mut self.child);
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.serve()
    }

    /// Everything the hub logged so far (all runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Result<Reply> {
        self.api.get(path, Some(&self.token))
    }

    /// PUT a JSON body as HQ's admin.
    pub fn put(&self, path: &str, body: &Value) -> Result<Reply> {
        self.api.request(
            "PUT",
            path,
            Some(&self.token),
            None,
            Some(&body.to_string()),
            None,
        )
    }

    pub fn digest(&self) -> Result<String> {
        digest_of(self.get("/api/v1/sync/digest")?)
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn digest_of((status, body): Reply) -> Result<String> {
    if status != 200 {
        bail!("digest: {status} {body}");
    }
    body["digest"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no digest in {body}"))
}

pub struct Store {
    pub id: String,
    pub dir: PathBuf,
    pub cashier: String,
    pub manager: String,
    pub api: Api,
    child: Option<Child>,
    log: PathBuf,
    listen: SocketAddr,
    env: Vec<(String, String)>,
}

impl Store {
    /// `init --bundle`, add a cashier and a manager, serve on a free port (kept on restart).
    pub fn start(id: &str, dir: &Path, bundle: &Path) -> Result<Store> {
        Store::start_with_env(id, dir, bundle, &[])
    }

    /// Like [`Store::start`], `serve` running with these environment variables (also on
    /// restart).
    pub fn start_with_env(
        id: &str,
        dir: &Path,
        bundle: &Path,
        env: &[(String, String)],
    ) -> Result<Store> {
        let bin = store_node_bin()?;
        let data = dir.join(id);
        let data_text = data.display().to_string();
        cli(
            &bin,
            &[
                "init",
                "--data-dir",
                &data_text,
                "--bundle",
                &bundle.display().to_string(),
            ],
        )?;
        let cashier = cli(
            &bin,
            &[
                "user",
                "add",
                "--data-dir",
                &data_text,
                "--name",
                "收银员",
                "--role",
                "cashier",
            ],
        )?;
        let manager = cli(
            &bin,
            &[
                "user",
                "add",
                "--data-dir",
                &data_text,
                "--name",
                "店长",
                "--role",
                "manager",
            ],
        )?;
        let listen = free_tcp()?;
        let mut store = Store {
            id: id.to_owned(),
            dir: data,
            cashier,
            manager,
            api: Api::new(&format!("http://{listen}")),
            child: None,
            log: dir.join(format!("{id}.log")),
            listen,
            env: env.to_vec(),
        };
        store.serve()?;
        Ok(store)
    }

    fn serve(&mut self) -> Result<()> {
        let args = vec![
            "serve".to_owned(),
            "--data-dir".to_owned(),
            self.dir.display().to_string(),
            "--listen".to_owned(),
            self.listen.to_string(),
        ];
        let (child, _) = spawn_server(
            &store_node_bin()?,
            &args,
            &self.env,
            &self.log,
            &["listening on"],
        )?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill9(&mut self) {
        kill(&mut self.child);
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill9();
        self.serve()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Result<Reply> {
        self.api.get(path, Some(&self.manager))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.api.post(path, Some(&self.manager), body, None)
    }

    /// POST and require a 2xx; return the body.
    pub fn ok(&self, path: &str, body: &Value) -> Result<Value> {
        let (status, reply) = self.post(path, body)?;
        if !(200..300).contains(&status) {
            bail!("{} POST {path}: {status} {reply}", self.id);
        }
        Ok(reply)
    }

    pub fn digest(&self) -> Result<String> {
        digest_of(self.get("/api/v1/sync/digest")?)
    }

    pub fn sync_status(&self) -> Result<Value> {
        let (status, body) = self.get("/api/v1/sync/status")?;
        if status != 200 {
            bail!("sync status: {status} {body}");
        }
        Ok(body)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A clock shared by the nodes of a test cluster: a file holding an offset in ms that both
/// binaries add to their wall clock when `CHAINSYNC_TEST_CLOCK_FILE` names it (test only).
/// Move it forward only, so every node's HLC stays monotone.
pub struct TestClock {
    pub path: PathBuf,
}

impl TestClock {
    pub fn new(dir: &Path) -> Result<TestClock> {
        let clock = TestClock {
            path: dir.join("test-clock-offset-ms"),
        };
        clock.set_offset_ms(0)?;
        Ok(clock)
    }

    /// The environment a node needs to follow this clock.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "CHAINSYNC_TEST_CLOCK_FILE".to_owned(),
            self.path.display().to_string(),
        )]
    }

    pub fn set_offset_ms(&self, offset_ms: i64) -> Result<()> {
        // Written whole then renamed, so a node never reads half a number.
        let staging = self.path.with_extension("new");
        std::fs::write(&staging, offset_ms.to_string())?;
        std::fs::rename(&staging, &self.path)?;
        Ok(())
    }

    /// The cluster's time now (the wall clock plus the offset in the file).
    pub fn now_ms(&self) -> Result<u64> {
        let offset: i64 = std::fs::read_to_string(&self.path)?.trim().parse()?;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        Ok(wall.saturating_add_signed(offset))
    }
}

/// Rewrite a bundle's hub address (to send a store through a relay).
pub fn point_bundle_at(bundle: &Path, address: SocketAddr) -> Result<()> {
    let text = std::fs::read_to_string(bundle)?;
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.starts_with("hub_addr") {
            lines.push(format!("hub_addr = \"{address}\""));
        } else {
            lines.push(line.to_owned());
        }
    }
    std::fs::write(bundle, lines.join("\n") + "\n")?;
    Ok(())
}

/// Forwards UDP datagrams between one client and `target`; `cut` makes it drop everything.
pub struct UdpRelay {
    pub address: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl UdpRelay {
    pub fn start(target: SocketAddr) -> Result<UdpRelay> {
        let front = UdpSocket::bind("127.0.0.1:0")?;
        let back = UdpSocket::bind("127.0.0.1:0")?;
        back.connect(target)?;
        front.set_read_timeout(Some(Duration::from_millis(50)))?;
        back.set_read_timeout(Some(Duration::from_millis(50)))?;
        let address = front.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::new(Mutex::new(None));
        let (front2, back2) = (front.try_clone()?, back.try_clone()?);
        {
            let (cut, stop, client) = (cut.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, from)) = front.recv_from(&mut buffer) {
                        if let Ok(mut known) = client.lock() {
                            *known = Some(from);
                        }
                        if !cut.load(Ordering::Relaxed) {
                            let _ = back.send(&buffer[..len]);
                        }
                    }
                }
            });
        }
        {
            let (cut, stop) = (cut.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(len) = back2.recv(&mut buffer) {
                        let to = client.lock().ok().and_then(|known| *known);
                        if let (Some(to), false) = (to, cut.load(Ordering::Relaxed)) {
                            let _ = front2.send_to(&buffer[..len], to);
                        }
                    }
                }
            });
        }
        Ok(UdpRelay { address, cut, stop })
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::Relaxed);
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::Relaxed);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// True when the hub and every store report the same digest.
pub fn converged(hub: &Hub, stores: &[&Store]) -> Result<bool> {
    let expected = hub.digest()?;
    for store in stores {
        if store.digest()? != expected {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Check at a node that every member's balance and points equal the sums of its ledger.
pub fn balances_match_ledgers(api: &Api, token: &str) -> Result<usize> {
    let (status, list) = api.get("/api/v1/members?limit=500", Some(token))?;
    if status != 200 {
        bail!("members: {status} {list}");
    }
    let members = list["members"].as_array().cloned().unwrap_or_default();
    for member in &members {
        let id = member["id"].as_str().context("member id")?;
        let (_, ledger) = api.get(&format!("/api/v1/members/{id}/ledger"), Some(token))?;
        let entries = ledger["entries"].as_array().cloned().unwrap_or_default();
        let sum = |points: bool| -> i64 {
            entries
                .iter()
                .filter(|e| (e["account"] == "points") == points)
                .map(|e| e["amount"].as_i64().unwrap_or(0))
                .sum()
        };
        if member["balance_fen"].as_i64() != Some(sum(false))
            || member["points"].as_i64() != Some(sum(true))
        {
            bail!(
                "member {id}: balance {} / points {} but ledger sums {} / {}",
                member["balance_fen"],
                member["points"],
                sum(false),
                sum(true)
            );
        }
    }
    Ok(members.len())
}

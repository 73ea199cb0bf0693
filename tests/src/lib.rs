#![allow(non_upper_case_globals)]
//! Harness for cross-process tests of the `store-node` binary.
//!
//! - [`store_node_bin`] finds the binary next to the running test executable
//!   (`<target>/<profile>/store-node`) and runs `cargo build -p store-node` once per process
//!   first, so `cargo test -p tests` always tests the current source. `STORE_NODE_BIN` names a
//!   prebuilt binary instead (no build).
//! - [`StoreNode`] initializes a data directory, adds a cashier and a manager, and runs
//!   `serve` on a free loopback port. It can be killed with SIGKILL and restarted on the same
//!   data directory; dropping it kills the process.
//! - [`Api`] is a small HTTP client (ureq) for which 4xx/5xx are answers, not errors. Every call
//!   returns `(status, json)`; a body that is not JSON comes back as a JSON string, an empty
//!   body as `null`.
//!
//! Nothing here sleeps to synchronize: waits are channel receives with a bounded timeout.
//! Set `STORE_NODE_LOG=1` to copy the node's stderr to the test's stderr.

pub mod machine;
pub mod multi;
pub mod sim;
pub mod webhook;

use anyhow::{Context, Result, anyhow, bail};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

pub use serde_json::{Value, json};

/// `(HTTP status, JSON body)`.
pub type Reply = (u16, Value);

/// How long a CLI command (`init`, `user add`) may take.
pub const cli_timeout: Duration = Duration::from_secs(60);
/// How long `serve` may take to print `listening on ADDR`.
pub const start_timeout: Duration = Duration::from_secs(60);
/// How long a graceful stop (SIGTERM) may take before SIGKILL.
pub const stop_timeout: Duration = Duration::from_secs(15);
/// Whole-request timeout for HTTP calls.
pub const request_timeout: Duration = Duration::from_secs(30);
/// How long building the binary may take.
pub const build_timeout: Duration = Duration::from_secs(20 * 60);

/// Store id used by [`StoreNode::start`].
pub const test_store_id: &str = "test-store-1";

// ---------------------------------------------------------------------------------------------
// Finding and building the binary
// ---------------------------------------------------------------------------------------------

static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Path of the `store-node` binary, built (once per test process) if needed.
pub fn store_node_bin() -> Result<PathBuf> {
    BIN.get_or_init(|| locate_and_build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("store-node binary unavailable: {e}"))
}

fn workspace_root() -> Result<PathBuf> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| anyhow!("tests package has no parent directory"))
}

/// `(target dir, profile dir name)` of the running test executable.
fn target_and_profile(workspace: &Path) -> (PathBuf, String) {
    let from_exe = std::env::current_exe().ok().and_then(|exe| {
        let deps = exe.parent()?;
        if deps.file_name()? != "deps" {
            return None;
        }
        let profile_dir = deps.parent()?;
        let profile = profile_dir.file_name()?.to_str()?.to_owned();
        let target = profile_dir.parent()?.to_path_buf();
        Some((target, profile))
    });
    from_exe.unwrap_or_else(|| {
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) => {
                let dir = PathBuf::from(dir);
                if dir.is_absolute() {
                    dir
                } else {
                    workspace.join(dir)
                }
            }
            None => workspace.join("target"),
        };
        (target, "debug".to_owned())
    })
}

fn locate_and_build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("STORE_NODE_BIN") {
        let bin = PathBuf::from(bin);
        if !bin.is_file() {
            bail!("STORE_NODE_BIN={} is not a file", bin.display());
        }
        return Ok(bin);
    }
    let workspace = workspace_root()?;
    let (target, profile) = target_and_profile(&workspace);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .env("CARGO_TARGET_DIR", &target)
        .args(["build", "-p", "store-node", "--bin", "store-node"]);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = run_bounded(cmd, build_timeout).context("cargo build -p store-node")?;
    if !out.success {
        bail!(
            "cargo build -p store-node failed:\n{}",
            tail(&out.stderr, 60)
        );
    }
    let bin = target
        .join(&profile)
        .join(format!("store-node{}", std::env::consts::EXE_SUFFIX));
    if !bin.is_file() {
        bail!("built store-node but {} does not exist", bin.display());
    }
    Ok(bin)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Running processes with bounded waits
// ---------------------------------------------------------------------------------------------

/// Output of a finished command.
#[derive(Debug)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

fn read_all_in_thread<R: Read + Send + 'static>(mut pipe: R) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = tx.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    rx
}

/// Run a command to completion, killing it if it takes longer than `timeout`.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {shown}"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    let stdout_rx = read_all_in_thread(stdout);
    let stderr_rx = read_all_in_thread(stderr);
    let deadline = Instant::now() + timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    // The pipes close when the process exits (or closes them), so these bound the wait.
    let stdout = stdout_rx.recv_timeout(left());
    let stderr = stderr_rx.recv_timeout(left());
    let (Ok(stdout), Ok(stderr)) = (stdout, stderr) else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("{shown} did not finish within {timeout:?}");
    };
    let status = child
        .wait()
        .with_context(|| format!("waiting for {shown}"))?;
    Ok(Output {
        success: status.success(),
        stdout,
        stderr,
    })
}

// ---------------------------------------------------------------------------------------------
// The store node process
// ---------------------------------------------------------------------------------------------

enum OutEvent {
    Line(String),
    Eof,
}

/// A running (or stopped) `store-node serve` on a data directory of its own.
pub struct StoreNode {
    data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    child: Option<Child>,
    stdout_rx: Option<Receiver<OutEvent>>,
    stderr_tail: Arc<Mutex<VecDeque<String>>>,
    addr: String,
    api: Api,
    /// Token of a user with role `cashier`.
    pub cashier: String,
    /// Token of a user with role `manager`.
    pub manager: String,
}

impl StoreNode {
    /// Initialize a new data directory in a fresh temporary directory and serve it.
    pub fn start_temp() -> Result<StoreNode> {
        let temp = tempfile::Builder::new()
            .prefix("chainsync-it-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let data_dir = temp.path().join("data");
        let mut node = StoreNode::start(&data_dir)?;
        node._temp = Some(temp);
        Ok(node)
    }

    /// `init` the data directory `dir` (which must not be initialized yet), add a cashier and a
    /// manager, and `serve` it on a free loopback port.
    pub fn start(dir: &Path) -> Result<StoreNode> {
        let bin = store_node_bin()?;
        let dir_arg = dir.as_os_str();
        let mut init = Command::new(&bin);
        init.arg("init").arg("--data-dir").arg(dir_arg).args([
            "--store-id",
            test_store_id,
            "--name",
            "测试门店 Test Store",
        ]);
        let out = run_bounded(init, cli_timeout)?;
        if !out.success {
            bail!("store-node init failed:\n{}", tail(&out.stderr, 40));
        }
        let cashier = add_user(&bin, dir, "收银员 Alice", "cashier")?;
        let manager = add_user(&bin, dir, "店长 Bob", "manager")?;
        let mut node = StoreNode {
            data_dir: dir.to_path_buf(),
            _temp: None,
            child: None,
            stdout_rx: None,
            stderr_tail: Arc::new(Mutex::new(VecDeque::new())),
            addr: String::new(),
            api: Api::new("http://127.0.0.1:1"),
            cashier,
            manager,
        };
        node.serve()?;
        Ok(node)
    }

    /// Spawn `serve` and wait for `listening on ADDR`.
    fn serve(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("store-node is already running");
        }
        let bin = store_node_bin()?;
        let mut child = Command::new(&bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("no stderr pipe"))?;
        self.child = Some(child);
        self.spawn_stderr_reader(stderr);
        let rx = spawn_stdout_reader(stdout);
        let deadline = Instant::now() + start_timeout;
        let mut seen = Vec::new();
        let addr = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(OutEvent::Line(line)) => {
                    if let Some(rest) = line.trim().strip_prefix("listening on") {
                        let addr = rest
                            .trim()
                            .trim_start_matches("http://")
                            .split_whitespace()
                            .next()
                            .unwrap_or("")
                            .trim_end_matches('/')
                            .to_owned();
                        if addr.is_empty() {
                            bail!("cannot parse the address in {line:?}");
                        }
                        break addr;
                    }
                    seen.push(line);
                }
                Ok(OutEvent::Eof) | Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().map(|c| c.wait());
                    self.child = None;
                    bail!(
                        "store-node serve exited before listening ({status:?}); stdout: {seen:?}\nstderr:\n{}",
                        self.stderr_tail()
                    );
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.kill9()?;
                    bail!(
                        "store-node serve did not print `listening on` within {start_timeout:?}; stdout: {seen:?}\nstderr:\n{}",
                        self.stderr_tail()
                    );
                }
            }
        };
        self.stdout_rx = Some(rx);
        self.api = Api::new(&format!("http://{addr}"));
        self.addr = addr;
        Ok(())
    }

    fn spawn_stderr_reader(&self, stderr: std::process::ChildStderr) {
        let tail = Arc::clone(&self.stderr_tail);
        let echo = std::env::var_os("STORE_NODE_LOG").is_some();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if echo {
                    eprintln!("[store-node] {line}");
                }
                if let Ok(mut tail) = tail.lock() {
                    if tail.len() >= 200 {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            }
        });
    }

    /// The last lines the node wrote to stderr (for failure messages).
    pub fn stderr_tail(&self) -> String {
        match self.stderr_tail.lock() {
            Ok(tail) => tail.iter().cloned().collect::<Vec<_>>().join("\n"),
            Err(_) => String::new(),
        }
    }

    /// Kill the process with SIGKILL (no chance to clean up) and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        self.stdout_rx = None;
        if let Some(mut child) = self.child.take() {
            child.kill().context("kill store-node")?;
            child.wait().context("wait for store-node")?;
        }
        Ok(())
    }

    /// Stop gracefully: SIGTERM, then wait (bounded) for the process to exit; SIGKILL if it
    /// does not. Returns whether it stopped by itself with a success status.
    pub fn stop(&mut self) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        let rx = self.stdout_rx.take();
        let termed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        let mut graceful = false;
        if termed && let Some(rx) = rx {
            let deadline = Instant::now() + stop_timeout;
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(OutEvent::Line(_)) => continue,
                    Ok(OutEvent::Eof) | Err(RecvTimeoutError::Disconnected) => {
                        graceful = true;
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                }
            }
        }
        if !graceful {
            let _ = child.kill();
        }
        let status = child.wait().context("wait for store-node")?;
        Ok(graceful && status.success())
    }

    /// Stop (gracefully if it is running) and serve the same data directory again, on a new
    /// port. After [`StoreNode::kill9`] this is a crash recovery.
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.serve()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `host:port` the node listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn api(&self) -> &Api {
        &self.api
    }

    // --- requests as the cashier -------------------------------------------------------------

    pub fn get(&self, path: &str) -> Result<Reply> {
        self.api.get(path, Some(&self.cashier))
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Reply> {
        self.api.post(path, Some(&self.cashier), body, None)
    }

    pub fn post_idem(&self, path: &str, body: &Value, key: &str) -> Result<Reply> {
        self.api.post(path, Some(&self.cashier), body, Some(key))
    }

    pub fn patch(&self, path: &str, body: &Value) -> Result<Reply> {
        self.api.patch(path, Some(&self.cashier), body)
    }

    // --- domain helpers (fail unless the expected status comes back) ------------------------

    /// `GET /healthz` (no token).
    pub fn healthz(&self) -> Result<Reply> {
        self.api.get("/healthz", None)
    }

    /// Register a member (cashier); expects 201.
    pub fn register(&self, name: &str, phone: &str) -> Result<Value> {
        let reply = self.post("/api/v1/members", &json!({"name": name, "phone": phone}))?;
        expect_status(reply, &[201], "register member")
    }

    /// Recharge stored value (cashier, cash); expects 201.
    pub fn recharge(&self, member_id: &str, amount_fen: i64) -> Result<Value> {
        let reply = self.post(
            &format!("/api/v1/members/{member_id}/recharges"),
            &json!({"amount_fen": amount_fen, "method": "cash"}),
        )?;
        expect_status(reply, &[201], "recharge")
    }

    /// Add or replace a product (manager); expects 201 or 200.
    pub fn add_product(&self, sku: &str, name: &str, price_fen: i64) -> Result<Value> {
        let reply = self.api.post(
            "/api/v1/products",
            Some(&self.manager),
            &json!({"sku": sku, "name": name, "price_fen": price_fen}),
            None,
        )?;
        expect_status(reply, &[200, 201], "add product")
    }

    /// Check out (cashier); expects 201.
    pub fn checkout(&self, body: &Value) -> Result<Value> {
        let reply = self.post("/api/v1/checkouts", body)?;
        expect_status(reply, &[201], "checkout")
    }

    /// Refund a checkout (manager); expects 201.
    pub fn refund(&self, checkout_id: &str) -> Result<Value> {
        let reply = self.api.post(
            &format!("/api/v1/checkouts/{checkout_id}/refunds"),
            Some(&self.manager),
            &json!({"reason": "customer returned the goods"}),
            None,
        )?;
        expect_status(reply, &[201], "refund")
    }

    /// `GET /api/v1/members/{id}`; expects 200.
    pub fn member(&self, member_id: &str) -> Result<Value> {
        let reply = self.get(&format!("/api/v1/members/{member_id}"))?;
        expect_status(reply, &[200], "get member")
    }

    /// `GET /api/v1/members/{id}/ledger`; expects 200.
    pub fn ledger(&self, member_id: &str) -> Result<Value> {
        let reply = self.get(&format!("/api/v1/members/{member_id}/ledger"))?;
        expect_status(reply, &[200], "get ledger")
    }

    /// `GET /api/v1/checkouts/{id}`; expects 200.
    pub fn get_checkout(&self, checkout_id: &str) -> Result<Value> {
        let reply = self.get(&format!("/api/v1/checkouts/{checkout_id}"))?;
        expect_status(reply, &[200], "get checkout")
    }

    /// `GET /api/v1/checkouts?limit=N`; expects 200; returns the array.
    pub fn checkouts(&self, limit: usize) -> Result<Vec<Value>> {
        let reply = self.get(&format!("/api/v1/checkouts?limit={limit}"))?;
        let body = expect_status(reply, &[200], "list checkouts")?;
        body.get("checkouts")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| anyhow!("no `checkouts` array in {body}"))
    }
}

impl Drop for StoreNode {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn add_user(bin: &Path, dir: &Path, name: &str, role: &str) -> Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(["user", "add", "--data-dir"])
        .arg(dir)
        .args(["--name", name, "--role", role]);
    let out = run_bounded(cmd, cli_timeout)?;
    if !out.success {
        bail!(
            "store-node user add ({role}) failed:\n{}",
            tail(&out.stderr, 40)
        );
    }
    let lines: Vec<&str> = out
        .stdout
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [token] if !token.contains(char::is_whitespace) => Ok((*token).to_owned()),
        _ => bail!(
            "store-node user add should print the token alone on one line, printed {:?}",
            out.stdout
        ),
    }
}

fn spawn_stdout_reader(stdout: ChildStdout) -> Receiver<OutEvent> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        // Keep draining after `listening on` so the node never blocks on a full pipe.
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(OutEvent::Line(line)).is_err() {
                // Nobody listens any more; keep reading so the pipe stays open and drained.
                continue;
            }
        }
        let _ = tx.send(OutEvent::Eof);
    });
    rx
}

// ---------------------------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------------------------

/// A JSON-over-HTTP client for one node. 4xx and 5xx are answers, not errors; transport
/// failures and timeouts are errors.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
}

impl Api {
    pub fn new(base: &str) -> Api {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(request_timeout))
            .timeout_connect(Some(Duration::from_secs(5)))
            .proxy(None)
            .build();
        Api {
            agent: ureq::Agent::new_with_config(config),
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Send any request. `body` is sent as is with `content_type` (default
    /// `application/json`) for POST/PATCH/PUT.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        idempotency_key: Option<&str>,
        body: Option<&str>,
        content_type: Option<&str>,
    ) -> Result<Reply> {
        let url = format!("{}{}", self.base, path);
        let auth = token.map(|t| format!("Bearer {t}"));
        macro_rules! with_headers {
            ($builder:expr) => {{
                let mut b = $builder;
                if let Some(auth) = &auth {
                    b = b.header("Authorization", auth.as_str());
                }
                if let Some(key) = idempotency_key {
                    b = b.header("Idempotency-Key", key);
                }
                b
            }};
        }
        let ct = content_type.unwrap_or("application/json");
        let result = match method {
            "GET" => with_headers!(self.agent.get(&url)).call(),
            "DELETE" => with_headers!(self.agent.delete(&url)).call(),
            "POST" | "PATCH" | "PUT" => {
                let b = match method {
                    "POST" => self.agent.post(&url),
                    "PATCH" => self.agent.patch(&url),
                    _ => self.agent.put(&url),
                };
                let b = with_headers!(b);
                match body {
                    Some(body) => b.content_type(ct).send(body),
                    None => b.send_empty(),
                }
            }
            other => bail!("unsupported method {other}"),
        };
        let mut response = result.with_context(|| format!("{method} {url}"))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the body of {method} {url}"))?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Result<Reply> {
        self.request("GET", path, token, None, None, None)
    }

    pub fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        idempotency_key: Option<&str>,
    ) -> Result<Reply> {
        let text = body.to_string();
        self.request("POST", path, token, idempotency_key, Some(&text), None)
    }

    pub fn patch(&self, path: &str, token: Option<&str>, body: &Value) -> Result<Reply> {
        let text = body.to_string();
        self.request("PATCH", path, token, None, Some(&text), None)
    }

    /// POST a raw body (for malformed JSON) as `application/json`.
    pub fn post_raw(&self, path: &str, token: Option<&str>, body: &str) -> Result<Reply> {
        self.request("POST", path, token, None, Some(body), None)
    }

    /// PATCH a raw body as `application/json`.
    pub fn patch_raw(&self, path: &str, token: Option<&str>, body: &str) -> Result<Reply> {
        self.request("PATCH", path, token, None, Some(body), None)
    }
}

// ---------------------------------------------------------------------------------------------
// JSON helpers
// ---------------------------------------------------------------------------------------------

/// The body if the status is one of `expected`, else an error showing both.
pub fn expect_status(reply: Reply, expected: &[u16], what: &str) -> Result<Value> {
    let (status, body) = reply;
    if expected.contains(&status) {
        Ok(body)
    } else {
        bail!("{what}: expected status {expected:?}, got {status} {body}")
    }
}

/// `body.error.code` of an error reply.
pub fn error_code(body: &Value) -> Option<&str> {
    body.get("error")?.get("code")?.as_str()
}

/// An integer field.
pub fn int(value: &Value, key: &str) -> Result<i64> {
    value
        .get(key)
        .and_then(Value::as_i64)
        .ok_or_else(|| anyhow!("no integer `{key}` in {value}"))
}

/// A string field.
pub fn string(value: &Value, key: &str) -> Result<String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("no string `{key}` in {value}"))
}

/// An array field.
pub fn array<'a>(value: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    value
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("no array `{key}` in {value}"))
}

/// Sums of a ledger reply's entries: `(principal + bonus in 分, points)`.
pub fn ledger_sums(ledger: &Value) -> Result<(i64, i64)> {
    let mut stored = 0i64;
    let mut points = 0i64;
    for entry in array(ledger, "entries")? {
        let amount = int(entry, "amount")?;
        let slot = match string(entry, "account")?.as_str() {
            "principal" | "bonus" => &mut stored,
            "points" => &mut points,
            other => bail!("unknown ledger account {other:?} in {entry}"),
        };
        *slot = slot
            .checked_add(amount)
            .ok_or_else(|| anyhow!("ledger sum overflows"))?;
    }
    Ok((stored, points))
}

/// A fresh random-looking key (unique within the process), e.g. for `Idempotency-Key`.
pub fn unique_key(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

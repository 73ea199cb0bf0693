//! Child processes: building and finding the binaries, running CLI commands, starting servers,
//! and making sure every server the demo started is stopped however the demo ends (normal exit,
//! error, panic, Ctrl-C, SIGTERM or SIGHUP). Only `kill -9` of the demo itself leaves them running.

use anyhow::{Context, Result, anyhow, bail};
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Set by the first Ctrl-C / SIGTERM / SIGHUP; long-running steps check it and give up.
static interrupted: AtomicBool = AtomicBool::new(false);

/// Every server the demo has started and not yet stopped.
static children: Mutex<Vec<Server>> = Mutex::new(Vec::new());

pub fn is_interrupted() -> bool {
    interrupted.load(Ordering::SeqCst)
}

/// Fail with "interrupted" once a stop signal has arrived.
pub fn check_interrupt() -> Result<()> {
    if is_interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleep, but wake up (with an error) if a stop signal arrives.
pub fn sleep(duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        check_interrupt()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// Listen for Ctrl-C, SIGTERM and SIGHUP. The first sets the interrupted flag and is sent on the
/// returned channel (the demo then winds down in order); a second one stops every server at
/// once and exits.
pub fn watch_signals() -> Result<mpsc::Receiver<&'static str>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (send, receive) = mpsc::channel();
    #[cfg(unix)]
    let mut signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let _entered = runtime.enter();
        [
            (signal(SignalKind::interrupt())?, "Ctrl-C"),
            (signal(SignalKind::terminate())?, "SIGTERM"),
            (signal(SignalKind::hangup())?, "SIGHUP"),
        ]
    };
    std::thread::spawn(move || {
        runtime.block_on(async move {
            loop {
                #[cfg(unix)]
                let name = {
                    let [(a, a_name), (b, b_name), (c, c_name)] = &mut signals;
                    tokio::select! {
                        _ = a.recv() => *a_name,
                        _ = b.recv() => *b_name,
                        _ = c.recv() => *c_name,
                    }
                };
                #[cfg(not(unix))]
                let name = {
                    let _ = tokio::signal::ctrl_c().await;
                    "Ctrl-C"
                };
                if interrupted.swap(true, Ordering::SeqCst) {
                    eprintln!("\n{name} again: stopping the servers now");
                    stop_all();
                    std::process::exit(130);
                }
                let _ = send.send(name);
            }
        })
    });
    Ok(receive)
}

/// Stops every server still running when dropped: keep one alive for the whole of `main`.
pub struct ServersGuard;

impl Drop for ServersGuard {
    fn drop(&mut self) {
        stop_all();
    }
}

fn lock() -> std::sync::MutexGuard<'static, Vec<Server>> {
    children
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// SIGTERM every server, wait for them to drain (10 s at most), SIGKILL what is left.
pub fn stop_all() {
    let mut servers = std::mem::take(&mut *lock());
    stop(&mut servers);
}

/// Stop the named server (used to take the hub down in the scenario).
pub fn stop_server(name: &str) {
    let mut stopped: Vec<Server> = {
        let mut list = lock();
        let (matching, others) = std::mem::take(&mut *list)
            .into_iter()
            .partition(|server| server.name == name);
        *list = others;
        matching
    };
    stop(&mut stopped);
}

/// Servers that exited by themselves since the last call: (name, exit status, log).
pub fn exited_servers() -> Vec<(String, String, PathBuf)> {
    let mut list = lock();
    let mut exited = Vec::new();
    list.retain_mut(|server| match server.child.try_wait() {
        Ok(Some(status)) => {
            exited.push((server.name.clone(), status.to_string(), server.log.clone()));
            false
        }
        _ => true,
    });
    exited
}

fn stop(servers: &mut [Server]) {
    for server in servers.iter_mut() {
        if let Ok(None) = server.child.try_wait() {
            // SIGTERM lets a node drain its writer; std only offers SIGKILL.
            let _ = Command::new("kill")
                .args(["-TERM", &server.child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for server in servers.iter_mut() {
        loop {
            match server.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = server.child.kill();
                    let _ = server.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

struct Server {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The two server binaries.
pub struct Binaries {
    pub hub: PathBuf,
    pub store: PathBuf,
}

/// Build `hq-hub` and `store-node` with the demo's own profile into the demo's own target
/// directory (so `cargo run --release -p tests --bin demo` is all one needs), and return them.
pub fn build(skip_build: bool) -> Result<Binaries> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the workspace root")?;
    let exe = std::env::current_exe().context("cannot find the demo's own executable")?;
    let exe_dir = exe.parent().context("the demo's directory")?.to_path_buf();
    let profile_dir = exe_dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    // Cargo puts binaries in <target>/<profile>/ or <target>/<triple>/<profile>/ and marks the
    // target directory with CACHEDIR.TAG.
    let is_target = |dir: &Path| dir.join("CACHEDIR.TAG").is_file();
    let layout = match (exe_dir.parent(), exe_dir.parent().and_then(Path::parent)) {
        (Some(target), _) if is_target(target) => Some((target.to_path_buf(), None)),
        (Some(triple), Some(target)) if is_target(target) => Some((
            target.to_path_buf(),
            triple.file_name().map(|n| n.to_string_lossy().into_owned()),
        )),
        _ => None,
    };
    let mut args: Vec<String> = ["build", "-p", "hq-hub", "-p", "store-node"]
        .map(String::from)
        .to_vec();
    let bin_dir = match &layout {
        Some((target, triple)) => {
            let profile = if profile_dir == "debug" {
                "dev"
            } else {
                profile_dir
            };
            args.extend(["--profile".into(), profile.into()]);
            args.extend(["--target-dir".into(), target.display().to_string()]);
            if let Some(triple) = triple {
                args.extend(["--target".into(), triple.clone()]);
            }
            exe_dir.clone()
        }
        None => {
            // Not run from a cargo target directory: fall back to the workspace's own.
            let release = !cfg!(debug_assertions);
            if release {
                args.push("--release".into());
            }
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| root.join("target"))
                .join(if release { "release" } else { "debug" })
        }
    };
    let binaries = Binaries {
        hub: bin_dir.join(format!("hq-hub{}", std::env::consts::EXE_SUFFIX)),
        store: bin_dir.join(format!("store-node{}", std::env::consts::EXE_SUFFIX)),
    };
    if skip_build {
        println!(
            "  (--no-build: using the binaries in {})",
            bin_dir.display()
        );
    } else {
        println!("  cargo {}", args.join(" "));
        let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        // `cargo run` describes the demo's own package in the environment; some build scripts
        // (ring's) rerun when CARGO_MANIFEST_DIR changes, which would rebuild half the
        // dependency tree on every start. Build as if from a plain shell.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("CARGO_PKG_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                ]
                .contains(&name_text.as_ref())
            {
                cargo.env_remove(&name);
            }
        }
        cargo.current_dir(root).args(&args).stdin(Stdio::null());
        // Its own process group, so that an interrupted build can be stopped with its rustc
        // processes (the demo forwards Ctrl-C itself).
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut cargo, 0);
        let mut child = cargo
            .spawn()
            .context("cannot run cargo (is the Rust toolchain installed?)")?;
        let status = loop {
            if is_interrupted() {
                let _ = Command::new("kill")
                    .args(["-TERM", "--", &format!("-{}", child.id())])
                    .stderr(Stdio::null())
                    .status();
                let _ = child.wait();
                bail!("interrupted");
            }
            if let Some(status) = child.try_wait()? {
                break status;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        if !status.success() {
            bail!("building hq-hub and store-node failed ({status})");
        }
    }
    for binary in [&binaries.hub, &binaries.store] {
        if !binary.is_file() {
            bail!("{} is missing", binary.display());
        }
    }
    Ok(binaries)
}

/// Run a CLI command to completion; return its stdout, trimmed.
pub fn run(program: &Path, args: &[&str]) -> Result<String> {
    check_interrupt()?;
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", program.display()))?;
    if !output.status.success() {
        bail!(
            "`{} {}` failed ({}): {}",
            program.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Start a server under supervision (stdout and stderr appended to `log`); wait until it has
/// printed a line starting with each of `prefixes`, in order; return what followed each prefix.
pub fn start(
    name: &str,
    program: &Path,
    args: &[String],
    log: &Path,
    prefixes: &[&str],
    timeout: Duration,
) -> Result<Vec<String>> {
    check_interrupt()?;
    let open_log = || {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))
    };
    let mut stdout_log = open_log()?;
    let _ = writeln!(stdout_log, "=== demo: starting {name}: {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(open_log()?))
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let stdout = child.stdout.take();
    // Supervised from here on, even if it never gets ready.
    lock().push(Server {
        name: name.to_owned(),
        child,
        log: log.to_path_buf(),
    });
    let stdout = stdout.context("the server's stdout")?;
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        // Keep reading to the end, so the server never writes into a closed pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = writeln!(stdout_log, "{line}");
            let _ = lines.send(line);
        }
    });
    let deadline = Instant::now() + timeout;
    let mut found = Vec::new();
    for prefix in prefixes {
        loop {
            check_interrupt()?;
            if Instant::now() >= deadline {
                bail!(
                    "{name} did not start within {} s; see {}",
                    timeout.as_secs(),
                    log.display()
                );
            }
            match received.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        found.push(rest.trim().to_owned());
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    stop_server(name);
                    return Err(anyhow!(
                        "{name} exited during start-up; see {}",
                        log.display()
                    ));
                }
            }
        }
    }
    Ok(found)
}

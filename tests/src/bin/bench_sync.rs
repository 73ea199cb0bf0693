//! Sync benchmarks: hub ingest with 50 concurrent stores over QUIC + mTLS, a store catching up
//! 10,000 entries (both directions), and replicating 1,000 member edits per side on 10,000
//! members, next to automerge's own sync doing the same.
//!
//! `cargo run --release -p tests --bin bench_sync -- [--stores 50] [--entries 2000]`

use anyhow::{Context, Result, anyhow, bail};
use automerge::sync::{State as SyncState, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{AutoCommit, ObjType, ROOT};
use chainsync_core::StoreId;
use chainsync_core::hlc::HlcTimestamp;
use chainsync_core::ledger::{Account, EntryKind, LedgerEntry};
use chainsync_core::member::{MemberDoc, Profile, ProfilePatch};
use chainsync_core::op::{Envelope, Op, OpV1};
use chainsync_core::sync::{
    Message, MessageV1, StoreSession, StoreSessionState, protocol_version_current,
    sync_batch_ops_max,
};
use chainsync_core::sync_memory::MemoryStore;
use chainsync_net::EnrollmentBundle;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn binaries() -> Result<(PathBuf, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let release = !cfg!(debug_assertions);
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cargo
        .current_dir(root)
        .args(["build", "-q", "-p", "hq-hub", "-p", "store-node"]);
    if release {
        cargo.arg("--release");
    }
    if !cargo.status()?.success() {
        bail!("build failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let profile = target.join(if release { "release" } else { "debug" });
    Ok((profile.join("hq-hub"), profile.join("store-node")))
}

fn cli(bin: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(bin).args(args).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn serve(bin: &Path, args: &[&str], prefix: &str) -> Result<(Process, String)> {
    let mut child = Command::new(bin)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let process = Process(child);
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    loop {
        let line = received
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| anyhow!("server did not start"))?;
        if let Some(address) = line.strip_prefix(prefix) {
            return Ok((process, address.trim().to_owned()));
        }
    }
}

struct HubUnderTest {
    process: Process,
    dir: PathBuf,
    quic: SocketAddr,
    http: String,
    token: String,
    bin: PathBuf,
}

fn start_hub(bin: &Path, dir: &Path) -> Result<HubUnderTest> {
    let quic: SocketAddr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let data = dir.join("hub");
    let data_text = data.display().to_string();
    cli(
        bin,
        &[
            "init",
            "--data-dir",
            &data_text,
            "--public-addr",
            &quic.to_string(),
            "--quic-listen",
            &quic.to_string(),
            "--http-listen",
            "127.0.0.1:0",
        ],
    )?;
    let token = cli(
        bin,
        &[
            "user",
            "add",
            "--data-dir",
            &data_text,
            "--name",
            "bench",
            "--role",
            "hq-ops",
        ],
    )?;
    let (process, _) = serve(
        bin,
        &["serve", "--data-dir", &data_text],
        "quic listening on",
    )?;
    // The http line follows the quic one; the address is not needed beyond the token here.
    Ok(HubUnderTest {
        process,
        dir: data,
        quic,
        http: String::new(),
        token,
        bin: bin.to_path_buf(),
    })
}

fn enroll(hub: &HubUnderTest, store: &str, out: &Path) -> Result<EnrollmentBundle> {
    let path = out.join(format!("{store}.bundle"));
    cli(
        &hub.bin,
        &[
            "enroll",
            "--data-dir",
            &hub.dir.display().to_string(),
            "--store-id",
            store,
            "--name",
            store,
            "--region",
            "bench",
            "--out",
            &path.display().to_string(),
        ],
    )?;
    Ok(EnrollmentBundle::read_from(&path)?)
}

/// Members every ingest run registers at the hub before the timed part.
const members_registered: u64 = 10_000;

/// A store holding `count` ledger entries of its own (recharges and points earned, for
/// members drawn at random from the `members_registered` registered by [`registering_store`]).
fn filled_store(id: &StoreId, count: u64) -> MemoryStore {
    let mut store = MemoryStore::new(id.clone());
    let actor = id.actor_bytes();
    let mut rng = u64::from_be_bytes([
        actor[0], actor[1], actor[2], actor[3], actor[4], actor[5], actor[6], actor[7],
    ]) | 1;
    for seq in 1..=count {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let hlc = HlcTimestamp {
            wall_ms: 1_000 + seq,
            counter: 0,
        };
        let (kind, account, amount) = if seq % 2 == 0 {
            (EntryKind::RechargePrincipal, Account::Principal, 10_000)
        } else {
            (EntryKind::PointsEarn, Account::Points, 100)
        };
        let entry = LedgerEntry {
            id: Uuid::from_u128(
                (u128::from(seq) << 64)
                    | u128::from(u32::from_be_bytes([actor[0], actor[1], actor[2], actor[3]])),
            ),
            origin: id.clone(),
            seq,
            hlc,
            member_id: member_uuid(rng % members_registered),
            kind,
            account,
            amount,
            checkout_id: None,
            reason: None,
            rule_version: 1,
        };
        store.write_local(Envelope {
            origin: id.clone(),
            seq,
            hlc,
            op: Op::V1(OpV1::Ledger(entry)),
        });
    }
    store
}

fn member_uuid(n: u64) -> Uuid {
    Uuid::from_u128((0x0190_0000_0000_7000_8000_u128 << 48) | u128::from(n))
}

/// A store holding the registrations (first member-document change) of `count` members.
fn registering_store(id: &StoreId, count: u64) -> Result<MemoryStore> {
    let mut store = MemoryStore::new(id.clone());
    for n in 0..count {
        let profile = Profile {
            name: format!("会员{n}"),
            phone: format!("138{:08}", n),
            card_no: format!("{:08}", 10_000_000 + n),
            ..Profile::default()
        };
        let (_, change) = MemberDoc::create(id, &profile, 1_000 + n)?;
        let seq = n + 1;
        store.write_local(Envelope {
            origin: id.clone(),
            seq,
            hlc: HlcTimestamp {
                wall_ms: 1_000 + n,
                counter: 0,
            },
            op: Op::V1(OpV1::MemberChange {
                member_id: member_uuid(n),
                change,
            }),
        });
    }
    Ok(store)
}

/// Push everything a store holds to the hub over QUIC; return when the hub acknowledged all.
/// Batches the hub relays meanwhile (other stores' operations) are applied to the in-memory
/// replica and acknowledged, as a store does.
/// What one store's push session saw.
struct Pushed {
    /// Operations the hub relayed to the store meanwhile (applied and acknowledged).
    relayed: usize,
    /// The hub's log head as last told.
    log_head: u64,
}

async fn push_all(
    bundle: EnrollmentBundle,
    hub: SocketAddr,
    mut store: MemoryStore,
) -> Result<Pushed> {
    let config =
        chainsync_net::tls::client_config(&bundle.ca_cert_pem, &bundle.cert_pem, &bundle.key_pem)?;
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    endpoint.set_default_client_config(config);
    let connection = endpoint.connect(hub, &bundle.hub_server_name)?.await?;
    let (mut send, mut recv) = connection.open_bi().await?;
    let id = StoreId::parse(&bundle.store_id)?;
    let mut session = StoreSession::new(id, &store, 0).map_err(|e| anyhow!("{e}"))?;
    let target = store.own_max();
    let mut relayed = 0;
    loop {
        while let Some(message) = session.poll_transmit() {
            chainsync_net::frame::write_frame(
                &mut send,
                &message.encode_for(session.peer_version()),
            )
            .await?;
        }
        if session.state() == StoreSessionState::Ready && session.hub_acked() >= target {
            break;
        }
        let frame = chainsync_net::frame::read_frame(&mut recv)
            .await?
            .context("hub closed")?;
        let message = Message::decode(&frame)?;
        relayed += match &message {
            Message::V1(MessageV1::Relay { ops, .. }) => ops.len(),
            Message::V1(MessageV1::RelayCompact { ops, .. }) => ops.len(),
            _ => 0,
        };
        session
            .handle_message(message, &mut store, 0)
            .map_err(|e| anyhow!("{e}"))?;
    }
    connection.close(quinn::VarInt::from_u32(0), b"done");
    Ok(Pushed {
        relayed,
        log_head: session.log_head(),
    })
}

/// CPU seconds (user, system) a process has used so far, all its threads (Linux `/proc`).
fn cpu_seconds(pid: &str) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, in clock ticks (100 per second).
    let ticks = |n: usize| fields.get(n)?.parse::<f64>().ok().map(|t| t / 100.0);
    Some((ticks(11)?, ticks(12)?))
}

/// What one ingest run measured.
struct IngestFigures {
    rate: f64,
    elapsed: Duration,
    /// CPU seconds (user + system) of the hub process during the timed part.
    hub_cpu: f64,
    /// CPU seconds of this process (the 50 clients) during the timed part.
    clients_cpu: f64,
    /// Time from the start until every entry was projected, and the hub's CPU seconds by then.
    projected: Option<(Duration, f64)>,
    /// Operations relayed to the pushing stores during the timed part, all stores together.
    relayed: usize,
}

/// Where the pushing stores' replicas stand when the burst starts.
#[derive(Clone, Copy, PartialEq)]
enum Replicas {
    /// Each already holds the members registered before (its relay cursor at the hub's log
    /// head): during the burst the hub relays only the other stores' new entries.
    Current,
    /// Each is empty: the hub also relays it the 10,000 registrations while it pushes.
    Empty,
}

fn ingest(
    hub_bin: &Path,
    stores: usize,
    entries: u64,
    replicas: Replicas,
) -> Result<IngestFigures> {
    let dir = tempfile::tempdir()?;
    let hub = start_hub(hub_bin, dir.path())?;
    let mut work = Vec::new();
    for n in 0..stores {
        let bundle = enroll(&hub, &format!("b{n}"), dir.path())?;
        let id = StoreId::parse(&bundle.store_id)?;
        work.push((bundle, filled_store(&id, entries)));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Not timed: the members the entries belong to, registered at one more store.
    let registrar = enroll(&hub, "members", dir.path())?;
    let registrar_id = StoreId::parse(&registrar.store_id)?;
    let registered = runtime.block_on(push_all(
        registrar,
        hub.quic,
        registering_store(&registrar_id, members_registered)?,
    ))?;
    if replicas == Replicas::Current {
        for (_, store) in &mut work {
            store.relay_cursor = registered.log_head;
        }
    }
    let hub_pid = hub.process.0.id().to_string();
    let cpu = |pid: &str| cpu_seconds(pid).map_or(0.0, |(user, system)| user + system);
    let (hub_before, clients_before) = (cpu(&hub_pid), cpu("self"));
    let started = Instant::now();
    let relayed = runtime.block_on(async {
        let tasks: Vec<_> = work
            .into_iter()
            .map(|(bundle, store)| tokio::spawn(push_all(bundle, hub.quic, store)))
            .collect();
        let mut relayed = 0;
        for task in tasks {
            relayed += task.await??.relayed;
        }
        anyhow::Ok(relayed)
    })?;
    let elapsed = started.elapsed();
    let (hub_after, clients_after) = (cpu(&hub_pid), cpu("self"));
    let projected = projection_caught_up(&hub.dir.join("hub.db"), started)?
        .map(|at| (at, cpu(&hub_pid) - hub_before));
    let _ = &hub.http;
    let _ = &hub.token;
    Ok(IngestFigures {
        rate: (stores as u64 * entries) as f64 / elapsed.as_secs_f64(),
        elapsed,
        hub_cpu: hub_after - hub_before,
        clients_cpu: clients_after - clients_before,
        projected,
        relayed,
    })
}

/// Wait until the hub's deferred projection has reached its log head (read from its database
/// file, polled every 5 ms); the time since `started`. `None` for a hub without one.
fn projection_caught_up(database: &Path, started: Instant) -> Result<Option<Duration>> {
    let conn = rusqlite::Connection::open_with_flags(
        database,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let has_cursor: bool = conn.query_row(
        "SELECT COUNT(*) > 0 FROM sqlite_master WHERE name = 'projection_cursor'",
        [],
        |row| row.get(0),
    )?;
    if !has_cursor {
        return Ok(None);
    }
    loop {
        let (cursor, head): (i64, i64) = conn.query_row(
            "SELECT (SELECT projected_upto FROM projection_cursor),
                    (SELECT COALESCE(MAX(hub_seq), 0) FROM relay_log)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        if cursor >= head {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("projection did not catch up");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The hub's write path alone, no network: a hub database (the hub's own migrations), the
/// 10,000 members registered, then `stores` threads, one per store, each ingesting its entries
/// in batches of 256 through the same group-committing queue the sync sessions use
/// (`storage::ingest_grouped`), waiting for each batch to be committed before the next.
fn ingest_writer_only(stores: usize, entries: u64) -> Result<IngestFigures> {
    use chainsync_core::sync::StoreSide;
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("hub.db");
    let writer = hq_hub::db::open_writer(&path)?;
    chainsync_replica::node::checkpoint_in_background(&writer, &path)?;
    let writer = Arc::new(Mutex::new(writer));
    let queue = Arc::new(hq_hub::storage::IngestQueue::default());
    let projection = Arc::new(hq_hub::storage::Projection::default());
    hq_hub::storage::spawn_projector(writer.clone(), projection.clone(), queue.clone(), || 1)?;
    let add_store = |id: &str| -> Result<()> {
        let conn = writer.lock().map_err(|_| anyhow!("poisoned"))?;
        conn.execute(
            "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES (?1, ?1, 'bench', 0)",
            [id],
        )?;
        Ok(())
    };
    let registrar = StoreId::parse("members")?;
    add_store(registrar.as_str())?;
    let members = registering_store(&registrar, members_registered)?;
    let mut after = 0;
    loop {
        let ops = members
            .own_ops_after(after, sync_batch_ops_max)
            .map_err(|e| anyhow!("{e}"))?;
        let Some(last) = ops.last() else { break };
        after = last.seq;
        hq_hub::storage::ingest_grouped(&writer, &queue, None, &registrar, &ops, 1)?;
    }
    let mut work = Vec::new();
    for n in 0..stores {
        let id = StoreId::parse(&format!("b{n}"))?;
        add_store(id.as_str())?;
        let store = filled_store(&id, entries);
        let batches: Vec<Vec<Envelope>> = (0..entries)
            .step_by(sync_batch_ops_max)
            .map(|after| store.own_ops_after(after, sync_batch_ops_max))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("{e}"))?;
        work.push((id, batches));
    }
    let cpu = || cpu_seconds("self").map_or(0.0, |(user, system)| user + system);
    let before = cpu();
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = work
            .iter()
            .map(|(id, batches)| {
                let (writer, queue, projection) =
                    (writer.clone(), queue.clone(), projection.clone());
                scope.spawn(move || -> Result<()> {
                    for batch in batches {
                        hq_hub::storage::ingest_grouped(
                            &writer,
                            &queue,
                            Some(&projection),
                            id,
                            batch,
                            1,
                        )?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle
                .join()
                .map_err(|_| anyhow!("ingest thread panicked"))??;
        }
        Ok(())
    })?;
    let elapsed = started.elapsed();
    let acked_cpu = cpu() - before;
    while projection.backlog() > 0 {
        if started.elapsed() > Duration::from_secs(600) {
            bail!("projection did not catch up");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let projected = started.elapsed();
    let total = (stores as u64 * entries) as f64;
    Ok(IngestFigures {
        rate: total / elapsed.as_secs_f64(),
        elapsed,
        hub_cpu: acked_cpu,
        clients_cpu: 0.0,
        projected: Some((projected, cpu() - before)),
        relayed: 0,
    })
}

/// A fresh store-node enrolled on a hub that holds `count` entries: time until it has applied
/// them all (its relay cursor reaches the hub's log head).
fn relay_catch_up(hub_bin: &Path, store_bin: &Path, count: u64) -> Result<Duration> {
    let dir = tempfile::tempdir()?;
    let hub = start_hub(hub_bin, dir.path())?;
    let source = enroll(&hub, "src", dir.path())?;
    let id = StoreId::parse("src")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(push_all(source, hub.quic, filled_store(&id, count)))?;
    enroll(&hub, "fresh", dir.path())?;
    let data = dir.path().join("fresh").display().to_string();
    cli(
        store_bin,
        &[
            "init",
            "--data-dir",
            &data,
            "--bundle",
            &dir.path().join("fresh.bundle").display().to_string(),
        ],
    )?;
    let token = cli(
        store_bin,
        &[
            "user",
            "add",
            "--data-dir",
            &data,
            "--name",
            "b",
            "--role",
            "manager",
        ],
    )?;
    let started = Instant::now();
    let (_node, address) = serve(
        store_bin,
        &["serve", "--data-dir", &data, "--listen", "127.0.0.1:0"],
        "listening on ",
    )?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    loop {
        let status: serde_json::Value = agent
            .get(&format!("http://{address}/api/v1/sync/status"))
            .header("Authorization", &format!("Bearer {token}"))
            .call()?
            .into_body()
            .read_json()?;
        if status["relay_cursor"].as_u64() == Some(count) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("fresh store did not catch up: {status}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct EditFigures {
    /// On the wire at the current protocol (3: member changes compact, batches deflated).
    ours_bytes: usize,
    /// The same batches as protocol 2 sent them (whole changes, deflated).
    ours_v2: usize,
    /// The same batches as protocol version 1 sent them (not deflated).
    ours_deflated: usize,
    ours_ms: f64,
    per_doc_bytes: usize,
    per_doc_rounds: usize,
    per_doc_ms: f64,
    one_doc_bytes: usize,
    one_doc_rounds: usize,
    one_doc_ms: f64,
}

/// `random_ids`: member ids as real ones are (UUIDv7: a millisecond time and 74 random bits)
/// instead of 0, 1, 2, … (which deflate squeezes to almost nothing).
fn member_edits(members: usize, edits_per_side: usize, random_ids: bool) -> Result<EditFigures> {
    let (a, b) = (StoreId::parse("ea")?, StoreId::parse("eb")?);
    let mut id_rng = 0x9e37_79b9_7f4a_7c15u64;
    let member_ids: Vec<Uuid> = (0..members)
        .map(|n| {
            if !random_ids {
                return Uuid::from_u128(n as u128);
            }
            id_rng ^= id_rng << 13;
            id_rng ^= id_rng >> 7;
            id_rng ^= id_rng << 17;
            let random = u128::from(id_rng) << 64 | u128::from(id_rng.rotate_left(29) ^ n as u64);
            // Registered over about a year from 2026-01-01.
            let ms = 1_767_225_600_000u128 + (n as u128 * 3_153_600);
            Uuid::from_u128(
                (ms << 80) | (0x7 << 76) | (random & 0x0fff_3fff_ffff_ffff_ffff) | (0x8 << 60),
            )
        })
        .collect();
    let member_index: std::collections::HashMap<Uuid, usize> = member_ids
        .iter()
        .enumerate()
        .map(|(n, id)| (*id, n))
        .collect();
    // Our way: one automerge document per member, changes shipped as operations in batches.
    let mut saved = Vec::with_capacity(members);
    for n in 0..members {
        let profile = Profile {
            name: format!("会员{n}"),
            phone: format!("139{:08}", n),
            card_no: format!("{:06}", 100_000 + n),
            ..Profile::default()
        };
        let (mut doc, _) = MemberDoc::create(&a, &profile, 1)?;
        saved.push(doc.save());
    }
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut side_ops: Vec<Vec<Envelope>> = vec![Vec::new(), Vec::new()];
    let mut edited: Vec<Vec<usize>> = vec![Vec::new(), Vec::new()];
    for (side, store) in [&a, &b].into_iter().enumerate() {
        let mut docs: std::collections::HashMap<usize, MemberDoc> =
            std::collections::HashMap::new();
        for e in 0..edits_per_side {
            let member = (next() % members as u64) as usize;
            let doc = match docs.entry(member) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => {
                    entry.insert(MemberDoc::load(store, &saved[member])?)
                }
            };
            let patch = ProfilePatch {
                note: Some(Some(format!("note {side}-{e}"))),
                ..Default::default()
            };
            if let Some(change) = doc.edit(&patch, 2 + e as u64)? {
                side_ops[side].push(Envelope {
                    origin: store.clone(),
                    seq: e as u64 + 1,
                    hlc: HlcTimestamp {
                        wall_ms: 2 + e as u64,
                        counter: 0,
                    },
                    op: Op::V1(OpV1::MemberChange {
                        member_id: member_ids[member],
                        change,
                    }),
                });
                edited[side].push(member);
            }
        }
    }
    let mut ours_bytes = 0;
    let mut ours_v2 = 0;
    let mut ours_deflated = 0;
    for ops in &side_ops {
        for batch in ops.chunks(sync_batch_ops_max) {
            let push = Message::V1(MessageV1::Push {
                ops: batch.to_vec(),
            });
            // On the wire today (protocol 3: member changes compact, batches deflated), and
            // as protocols 2 and 1 sent them.
            ours_bytes += push.encode_for(protocol_version_current).len() + 4;
            ours_v2 += push.encode_for(2).len() + 4;
            ours_deflated += push.encode_for(1).len() + 4;
        }
    }

    // Applying at the receiving side as a replica does: load, apply, save, per operation.
    let started = Instant::now();
    for (side, ops) in side_ops.iter().enumerate() {
        let receiver = if side == 0 { &b } else { &a };
        let mut current: std::collections::HashMap<usize, Vec<u8>> =
            std::collections::HashMap::new();
        for envelope in ops {
            if let Op::V1(OpV1::MemberChange { member_id, change }) = &envelope.op {
                let member = member_index[member_id];
                let bytes = current.get(&member).unwrap_or(&saved[member]);
                let mut doc = MemberDoc::load(receiver, bytes)?;
                doc.apply_changes(std::slice::from_ref(change))?;
                current.insert(member, doc.save());
            }
        }
    }
    let ours_ms = started.elapsed().as_secs_f64() * 1_000.0;

    // automerge's own sync, one session per changed document.
    let started = Instant::now();
    let (mut per_doc_bytes, mut per_doc_rounds) = (0, 0);
    let mut changed: Vec<usize> = edited[0].iter().chain(edited[1].iter()).copied().collect();
    changed.sort_unstable();
    changed.dedup();
    for &member in &changed {
        let mut left = AutoCommit::load(&saved[member])?;
        let mut right = AutoCommit::load(&saved[member])?;
        for envelope in &side_ops[0] {
            if let Op::V1(OpV1::MemberChange { member_id, change }) = &envelope.op
                && member_index[member_id] == member
            {
                left.apply_changes([automerge::Change::from_bytes(change.clone())?])?;
            }
        }
        for envelope in &side_ops[1] {
            if let Op::V1(OpV1::MemberChange { member_id, change }) = &envelope.op
                && member_index[member_id] == member
            {
                right.apply_changes([automerge::Change::from_bytes(change.clone())?])?;
            }
        }
        let (bytes, rounds) = automerge_sync(&mut left, &mut right)?;
        per_doc_bytes += bytes;
        per_doc_rounds += rounds;
    }
    let per_doc_ms = started.elapsed().as_secs_f64() * 1_000.0;

    // automerge's own sync on one document holding every member.
    let mut big = AutoCommit::new();
    let mut ids = Vec::with_capacity(members);
    for n in 0..members {
        let id = big.put_object(ROOT, format!("m{n}"), ObjType::Map)?;
        big.put(&id, "name", format!("会员{n}"))?;
        big.put(&id, "phone", format!("139{:08}", n))?;
        ids.push(id);
    }
    big.commit();
    let mut left = big.fork();
    let mut right = big.fork();
    for (side, doc) in [&mut left, &mut right].into_iter().enumerate() {
        for (e, member) in edited[side].iter().enumerate() {
            doc.put(&ids[*member], "note", format!("note {side}-{e}"))?;
            doc.commit();
        }
    }
    let started = Instant::now();
    let (one_doc_bytes, one_doc_rounds) = automerge_sync(&mut left, &mut right)?;
    let one_doc_ms = started.elapsed().as_secs_f64() * 1_000.0;
    Ok(EditFigures {
        ours_bytes,
        ours_v2,
        ours_deflated,
        ours_ms,
        per_doc_bytes,
        per_doc_rounds,
        per_doc_ms,
        one_doc_bytes,
        one_doc_rounds,
        one_doc_ms,
    })
}

/// Run automerge's sync protocol between two documents until neither has anything to send.
fn automerge_sync(left: &mut AutoCommit, right: &mut AutoCommit) -> Result<(usize, usize)> {
    let (mut left_state, mut right_state) = (SyncState::new(), SyncState::new());
    let (mut bytes, mut rounds) = (0, 0);
    loop {
        let mut moved = false;
        if let Some(message) = left.sync().generate_sync_message(&mut left_state) {
            let encoded = message.encode();
            bytes += encoded.len();
            right.sync().receive_sync_message(
                &mut right_state,
                automerge::sync::Message::decode(&encoded)?,
            )?;
            moved = true;
        }
        if let Some(message) = right.sync().generate_sync_message(&mut right_state) {
            let encoded = message.encode();
            bytes += encoded.len();
            left.sync().receive_sync_message(
                &mut left_state,
                automerge::sync::Message::decode(&encoded)?,
            )?;
            moved = true;
        }
        if !moved {
            return Ok((bytes, rounds));
        }
        rounds += 1;
        if rounds > 100 {
            bail!("automerge sync did not finish");
        }
    }
}

fn main() -> Result<()> {
    let mut stores = 50usize;
    let mut entries = 2_000u64;
    let mut only: Option<String> = None;
    let mut replicas = Replicas::Current;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--replicas" => {
                replicas = match args.next().as_deref() {
                    Some("current") => Replicas::Current,
                    Some("empty") => Replicas::Empty,
                    _ => bail!("--replicas current|empty"),
                }
            }
            "--stores" => stores = args.next().context("--stores N")?.parse()?,
            "--entries" => entries = args.next().context("--entries N")?.parse()?,
            "--only" => only = Some(args.next().context("--only ingest|writer|catchup|edits")?),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let wanted = |part: &str| only.as_deref().is_none_or(|o| o == part);
    if wanted("ingest") || wanted("writer") {
        // Before the load, so that nothing of it runs beside this.
        let dir = tempfile::tempdir()?;
        println!("{}", tests::machine::reference_row(dir.path()));
    }
    if wanted("edits") && only.is_some() {
        // Needs no server binaries.
        return edits();
    }
    if wanted("writer") && only.is_some() {
        let figures = ingest_writer_only(stores, entries)?;
        println!(
            "| hub write path alone (no network), {stores} threads × {entries} entries | {:.0} entries/s ({:.2} s); CPU {:.2} s ({:.1} µs/entry) |",
            figures.rate,
            figures.elapsed.as_secs_f64(),
            figures.hub_cpu,
            figures.hub_cpu / (stores as u64 * entries) as f64 * 1e6,
        );
        print_projected(&figures, (stores as u64 * entries) as f64);
        return Ok(());
    }
    let (hub_bin, store_bin) = binaries()?;
    if wanted("ingest") {
        let figures = ingest(&hub_bin, stores, entries, replicas)?;
        let total = (stores as u64 * entries) as f64;
        let replicas = match replicas {
            Replicas::Current => "replicas current",
            Replicas::Empty => "replicas empty",
        };
        println!(
            "| hub ingest, {stores} concurrent stores × {entries} entries over QUIC+mTLS, {replicas} | {:.0} entries/s ({:.2} s); CPU: hub {:.2} s ({:.1} µs/entry), clients {:.2} s ({:.1} µs/entry); {} operations relayed to them meanwhile |",
            figures.rate,
            figures.elapsed.as_secs_f64(),
            figures.hub_cpu,
            figures.hub_cpu / total * 1e6,
            figures.clients_cpu,
            figures.clients_cpu / total * 1e6,
            figures.relayed,
        );
        print_projected(&figures, total);
    }
    if wanted("catchup") {
        catch_up(&hub_bin, &store_bin)?;
    }
    if wanted("edits") {
        edits()?;
    }
    Ok(())
}

fn print_projected(figures: &IngestFigures, total: f64) {
    if let Some((at, cpu)) = figures.projected {
        println!(
            "| same, until every entry is also projected (balances, exceptions) | {:.0} entries/s ({:.2} s); hub CPU by then {:.2} s ({:.1} µs/entry) |",
            total / at.as_secs_f64(),
            at.as_secs_f64(),
            cpu,
            cpu / total * 1e6
        );
    }
}

fn catch_up(hub_bin: &Path, store_bin: &Path) -> Result<()> {
    // The store also receives the 10,000 registrations meanwhile, as a store back from a long
    // outage receives what happened while it was away.
    let push = ingest(hub_bin, 1, 10_000, Replicas::Empty)?.elapsed;
    println!(
        "| store with 10,000 waiting entries pushes them all (acknowledged durable) | {:.2} s |",
        push.as_secs_f64()
    );
    let relay = relay_catch_up(hub_bin, store_bin, 10_000)?;
    println!(
        "| fresh store-node receives and applies 10,000 entries from the hub | {:.2} s |",
        relay.as_secs_f64()
    );
    Ok(())
}

fn edits() -> Result<()> {
    let edits = member_edits(10_000, 1_000, false)?;
    println!(
        "| 1,000 member edits per side on 10,000 members, our operations (batches of 256, protocol {protocol_version_current}: compact member changes, deflated) | {} bytes; apply {:.0} ms |",
        edits.ours_bytes, edits.ours_ms
    );
    println!(
        "| same, as protocol 2 sent them (whole changes, deflated) | {} bytes |",
        edits.ours_v2
    );
    println!(
        "| same, as protocol 1 sent them (not deflated) | {} bytes |",
        edits.ours_deflated
    );
    println!(
        "| same, automerge sync per changed document | {} bytes, {} rounds in all; {:.0} ms |",
        edits.per_doc_bytes, edits.per_doc_rounds, edits.per_doc_ms
    );
    println!(
        "| same, automerge sync of one document holding all members | {} bytes, {} rounds; {:.0} ms |",
        edits.one_doc_bytes, edits.one_doc_rounds, edits.one_doc_ms
    );
    println!(
        "| bytes, automerge one-document sync ÷ ours | {:.1}× |",
        edits.one_doc_bytes as f64 / edits.ours_bytes.max(1) as f64
    );
    println!(
        "| bytes, automerge per-document sync ÷ ours | {:.1}× |",
        edits.per_doc_bytes as f64 / edits.ours_bytes.max(1) as f64
    );
    let random = member_edits(10_000, 1_000, true)?;
    println!(
        "| same with member ids as real ones are (UUIDv7), ours at protocol {protocol_version_current} / 2 | {} / {} bytes; automerge one document {} bytes ({:.1}× ours) |",
        random.ours_bytes,
        random.ours_v2,
        random.one_doc_bytes,
        random.one_doc_bytes as f64 / random.ours_bytes.max(1) as f64
    );
    Ok(())
}

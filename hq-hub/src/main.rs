//! `hq-hub`: init, enroll, revoke, user add, serve, status, report.

use anyhow::{Context, bail};
use chainsync_core::StoreId;
use chainsync_core::rules::Rules;
use chainsync_net::EnrollmentBundle;
use chainsync_net::bundle::bundle_version;
use chainsync_net::pki::{self, CertificateAuthority};
use chainsync_replica::read::ReadPool;
use clap::{Parser, Subcommand};
use hq_hub::config::{self, HubConfig};
use hq_hub::http::{self, HubState};
use hq_hub::server::SyncServer;
use hq_hub::{db, now_ms, storage, users};
use rusqlite::OptionalExtension;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(name = "hq-hub", version, about = "chainsync HQ hub")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the hub's data directory: certificate authority, hub certificate, config, database.
    Init {
        #[arg(long, env = "HQ_HUB_DATA_DIR")]
        data_dir: PathBuf,
        /// Address stores dial (written into enrollment bundles).
        #[arg(long, default_value = config::default_public_addr)]
        public_addr: String,
        #[arg(long, default_value = config::default_quic_listen)]
        quic_listen: String,
        #[arg(long, default_value = config::default_http_listen)]
        http_listen: String,
    },
    /// Enroll a store: write its bundle (certificate, key, CA, hub address) to --out.
    Enroll {
        #[arg(long, env = "HQ_HUB_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        store_id: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a store: its next connection attempt is refused.
    Revoke {
        #[arg(long, env = "HQ_HUB_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        store_id: String,
    },
    /// Manage HQ users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Serve stores (QUIC) and HQ's API (HTTP).
    Serve {
        #[arg(long, env = "HQ_HUB_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long, env = "HQ_HUB_QUIC_LISTEN")]
        quic_listen: Option<String>,
        #[arg(long, env = "HQ_HUB_HTTP_LISTEN")]
        http_listen: Option<String>,
    },
    /// Show enrolled stores and what the hub holds.
    Status {
        #[arg(long, env = "HQ_HUB_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// Ask a running hub for a report, segments or a member search (prints a table or
    /// writes --out FILE.csv / FILE.xlsx).
    Report(hq_hub::reports::cli::ReportArgs),
    /// Import or export HQ's catalog as CSV, through a running hub.
    Catalog(hq_hub::catalog_cli::CatalogArgs),
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user and print its API token (shown once).
    Add {
        #[arg(long, env = "HQ_HUB_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// admin, hq-ops, regional-manager or auditor
        #[arg(long)]
        role: String,
        /// The region a regional manager sees (required for regional-manager).
        #[arg(long)]
        region: Option<String>,
        /// A password for login (hashed with argon2).
        #[arg(long, conflicts_with = "password_stdin")]
        password: Option<String>,
        /// Read the password from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
    },
}

fn main() -> anyhow::Result<()> {
    chainsync_replica::node::init_tracing();
    match Cli::parse().command {
        Command::Init {
            data_dir,
            public_addr,
            quic_listen,
            http_listen,
        } => init(&data_dir, public_addr, quic_listen, http_listen),
        Command::Enroll {
            data_dir,
            store_id,
            name,
            region,
            out,
        } => enroll(&data_dir, &store_id, &name, &region, &out),
        Command::Revoke { data_dir, store_id } => revoke(&data_dir, &store_id),
        Command::User {
            command:
                UserCommand::Add {
                    data_dir,
                    name,
                    role,
                    region,
                    password,
                    password_stdin,
                },
        } => {
            HubConfig::load(&data_dir)?;
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                Some(line.trim_end_matches(['\r', '\n']).to_owned())
            } else {
                password
            };
            let conn = db::open_writer(&data_dir.join(config::database_file_name))?;
            let token = users::add_user_with(
                &conn,
                &name,
                &role,
                region.as_deref(),
                password.as_deref(),
                now_ms(),
            )?;
            eprintln!("API token for {name} ({role}), shown only once:");
            println!("{token}");
            Ok(())
        }
        Command::Serve {
            data_dir,
            quic_listen,
            http_listen,
        } => serve(&data_dir, quic_listen, http_listen),
        Command::Status { data_dir } => status(&data_dir),
        Command::Report(args) => hq_hub::reports::cli::run(args),
        Command::Catalog(args) => hq_hub::catalog_cli::run(args),
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

fn init(
    data_dir: &Path,
    public_addr: String,
    quic_listen: String,
    http_listen: String,
) -> anyhow::Result<()> {
    public_addr
        .parse::<std::net::SocketAddr>()
        .with_context(|| {
            format!("--public-addr {public_addr:?} is not host:port with an IP address")
        })?;
    let hub = HubConfig {
        quic_listen,
        http_listen,
        public_addr,
        server_name: config::default_server_name.to_owned(),
    };
    hub.write_new(data_dir)?;
    let (ca, ca_key) = CertificateAuthority::generate("chainsync HQ CA")?;
    let hub_cert = ca.issue_hub_certificate(&pki::hub_names(&hub.server_name))?;
    config::write_secret(&data_dir.join(config::ca_key_file_name), &ca_key)?;
    std::fs::write(data_dir.join(config::ca_cert_file_name), &ca.cert_pem)?;
    config::write_secret(&data_dir.join(config::hub_key_file_name), &hub_cert.key_pem)?;
    std::fs::write(
        data_dir.join(config::hub_cert_file_name),
        &hub_cert.cert_pem,
    )?;
    db::open_writer(&data_dir.join(config::database_file_name))?;
    println!(
        "initialized hub in {} (stores will dial {})",
        data_dir.display(),
        hub.public_addr
    );
    Ok(())
}

fn enroll(
    data_dir: &Path,
    store_id: &str,
    name: &str,
    region: &str,
    out: &Path,
) -> anyhow::Result<()> {
    let hub = HubConfig::load(data_dir)?;
    let store = StoreId::parse(store_id).context("--store-id")?;
    if store == StoreId::hub() {
        bail!("store id {store} is reserved for the hub");
    }
    let name = name.trim();
    let region = region.trim();
    if name.is_empty() || name.chars().count() > 64 {
        bail!("--name must be 1 to 64 characters");
    }
    if region.is_empty() || region.chars().count() > 64 {
        bail!("--region must be 1 to 64 characters");
    }
    let conn = db::open_writer(&data_dir.join(config::database_file_name))?;
    let revoked: Option<Option<i64>> = conn
        .query_row(
            "SELECT revoked_ms FROM stores WHERE store_id = ?1",
            [store.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(Some(_)) = revoked {
        bail!("store {store} was revoked; enroll the replacement under a new store id");
    }
    let ca = CertificateAuthority::from_pem(
        &read(&data_dir.join(config::ca_cert_file_name))?,
        &read(&data_dir.join(config::ca_key_file_name))?,
    )?;
    let certified = ca.issue_store_certificate(store.as_str())?;
    let bundle = EnrollmentBundle {
        version: bundle_version,
        store_id: store.to_string(),
        store_name: name.to_owned(),
        region: region.to_owned(),
        hub_addr: hub.public_addr.clone(),
        hub_server_name: hub.server_name.clone(),
        ca_cert_pem: ca.cert_pem.clone(),
        cert_pem: certified.cert_pem,
        key_pem: certified.key_pem,
    };
    bundle.write_to(out)?;
    conn.execute(
        "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (store_id) DO UPDATE SET name = excluded.name, region = excluded.region",
        (store.as_str(), name, region, now_ms() as i64),
    )?;
    println!(
        "enrolled store {store} ({name}, {region}); bundle written to {}",
        out.display()
    );
    Ok(())
}

fn revoke(data_dir: &Path, store_id: &str) -> anyhow::Result<()> {
    HubConfig::load(data_dir)?;
    let conn = db::open_writer(&data_dir.join(config::database_file_name))?;
    let changed = conn.execute(
        "UPDATE stores SET revoked_ms = COALESCE(revoked_ms, ?2) WHERE store_id = ?1",
        (store_id, now_ms() as i64),
    )?;
    if changed == 0 {
        bail!("no enrolled store {store_id:?}");
    }
    println!("revoked store {store_id}: its next connection is refused");
    Ok(())
}

fn status(data_dir: &Path) -> anyhow::Result<()> {
    let hub = HubConfig::load(data_dir)?;
    let conn = db::open_reader(&data_dir.join(config::database_file_name))?;
    println!(
        "hub: stores dial {} (QUIC listen {}, HTTP {})",
        hub.public_addr, hub.quic_listen, hub.http_listen
    );
    println!("operations held: {}", storage::log_head(&conn)?);
    let mut statement = conn.prepare(
        "SELECT store_id, name, region, acked_seq, relay_acked, last_seen_ms, revoked_ms IS NOT NULL
         FROM stores ORDER BY store_id",
    )?;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let store_id: String = row.get(0)?;
        let name: String = row.get(1)?;
        let region: String = row.get(2)?;
        let acked: i64 = row.get(3)?;
        let relay: i64 = row.get(4)?;
        let seen: Option<i64> = row.get(5)?;
        let revoked: bool = row.get(6)?;
        println!(
            "store {store_id} ({name}, {region}): holds its ops to #{acked}, it has the log to #{relay}, last seen {}{}",
            seen.map(|ms| format!("{ms} ms"))
                .unwrap_or_else(|| "never".into()),
            if revoked { ", REVOKED" } else { "" }
        );
    }
    Ok(())
}

fn serve(
    data_dir: &Path,
    quic_listen: Option<String>,
    http_listen: Option<String>,
) -> anyhow::Result<()> {
    let hub = HubConfig::load(data_dir)?;
    let quic_listen = quic_listen.unwrap_or(hub.quic_listen.clone());
    let http_listen = http_listen.unwrap_or(hub.http_listen.clone());
    let database = data_dir.join(config::database_file_name);
    let mut writer = db::open_writer(&database)?;
    // Ledger entries acknowledged before a stop but not projected yet.
    storage::project_all(&mut writer, now_ms())?;
    chainsync_replica::node::checkpoint_in_background(&writer, &database)?;
    let head = storage::log_head(&writer)?;
    let server_config = chainsync_net::tls::server_config(
        &read(&data_dir.join(config::ca_cert_file_name))?,
        &read(&data_dir.join(config::hub_cert_file_name))?,
        &read(&data_dir.join(config::hub_key_file_name))?,
    )?;
    let online = Arc::new(Mutex::new(HashMap::new()));
    let reads = Arc::new(ReadPool::open(&database, 4)?);
    let book = storage::load_book(&writer)?;
    let (log_grew, _) = tokio::sync::watch::channel(head);
    let writer = Arc::new(Mutex::new(writer));
    let projection = Arc::new(storage::Projection::default());
    let queue = Arc::new(storage::IngestQueue::default());
    storage::spawn_projector(writer.clone(), projection.clone(), queue.clone(), now_ms)?;
    let sync = SyncServer {
        database: database.clone(),
        writer: writer.clone(),
        log_grew: log_grew.clone(),
        online: online.clone(),
        reservations: Arc::new(Mutex::new(book)),
        queue,
        projection: projection.clone(),
        relay_cache: Arc::new(Default::default()),
        readers: Arc::new(Default::default()),
    };
    let state = HubState {
        reads,
        online,
        rules: Arc::new(Rules::default()),
        writer,
        log_grew,
        projection,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let quic_addr: std::net::SocketAddr = quic_listen
            .parse()
            .with_context(|| format!("--quic-listen {quic_listen:?}"))?;
        let endpoint = quinn::Endpoint::server(server_config, quic_addr)
            .with_context(|| format!("cannot listen on {quic_addr}/udp"))?;
        let quic_bound = endpoint.local_addr()?;
        let listener = tokio::net::TcpListener::bind(&http_listen)
            .await
            .with_context(|| format!("cannot listen on {http_listen}"))?;
        let http_bound = listener.local_addr()?;
        tracing::info!(%quic_bound, %http_bound, "hub serving");
        println!("quic listening on {quic_bound}");
        println!("http listening on {http_bound}");
        let sync_task = tokio::spawn(sync.run(endpoint.clone()));
        axum::serve(listener, http::router(state))
            .with_graceful_shutdown(chainsync_replica::node::shutdown_signal())
            .await
            .context("HTTP server failed")?;
        endpoint.close(quinn::VarInt::from_u32(0), b"hub shutting down");
        // Let the close reach the stores, so they know at once that the link is down.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), endpoint.wait_idle()).await;
        sync_task.abort();
        anyhow::Ok(())
    })?;
    tracing::info!("stopped");
    Ok(())
}

//! `store-node`: init, user add, serve, status.

use anyhow::{Context, bail};
use chainsync_core::StoreId;
use chainsync_core::rules::Rules;
use chainsync_replica::read::ReadPool;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::sync::Arc;
use store_node::auth::{self, Role};
use store_node::commands::Local;
use store_node::config::{self, StoreConfig};
use store_node::http::{self, AppState};
use store_node::writer::Writer;
use store_node::{db, now_ms};

#[derive(Parser)]
#[command(
    name = "store-node",
    version,
    about = "chainsync store node: the store's own server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data directory for a new store.
    Init {
        #[arg(long, env = "STORE_NODE_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        store_id: String,
        #[arg(long)]
        name: String,
    },
    /// Manage API users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Serve the HTTP API.
    Serve {
        #[arg(long, env = "STORE_NODE_DATA_DIR")]
        data_dir: PathBuf,
        /// Address to listen on (overrides the config file).
        #[arg(long, env = "STORE_NODE_LISTEN")]
        listen: Option<String>,
    },
    /// Show the store's identity and what it holds.
    Status {
        #[arg(long, env = "STORE_NODE_DATA_DIR")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user and print its API token (shown once).
    Add {
        #[arg(long, env = "STORE_NODE_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(long)]
        name: String,
        /// cashier or manager
        #[arg(long)]
        role: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Init {
            data_dir,
            store_id,
            name,
        } => init(data_dir, &store_id, &name),
        Command::User {
            command:
                UserCommand::Add {
                    data_dir,
                    name,
                    role,
                },
        } => {
            let role = Role::parse(&role).context("role must be cashier or manager")?;
            StoreConfig::load(&data_dir)?;
            let conn = db::open_writer(&config::database_path(&data_dir))?;
            let token = auth::add_user(&conn, &name, role, now_ms())?;
            eprintln!("API token for {name} ({}), shown only once:", role.as_str());
            println!("{token}");
            Ok(())
        }
        Command::Serve { data_dir, listen } => serve(data_dir, listen),
        Command::Status { data_dir } => status(data_dir),
    }
}

fn init(data_dir: PathBuf, store_id: &str, name: &str) -> anyhow::Result<()> {
    let store_id = StoreId::parse(store_id).context("--store-id")?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        bail!("--name must be 1 to 64 characters");
    }
    let config = StoreConfig {
        store_id: store_id.clone(),
        name: name.to_owned(),
        listen: config::default_listen.to_owned(),
    };
    config.write_new(&data_dir)?;
    let conn = db::open_writer(&config::database_path(&data_dir))?;
    db::set_meta(&conn, "store_id", store_id.as_str())?;
    db::set_meta(&conn, "store_name", name)?;
    println!(
        "initialized store {store_id} ({name}) in {}",
        data_dir.display()
    );
    Ok(())
}

fn status(data_dir: PathBuf) -> anyhow::Result<()> {
    let config = StoreConfig::load(&data_dir)?;
    let conn = db::open_reader(&config::database_path(&data_dir))?;
    let count = |sql: &str| -> anyhow::Result<i64> { Ok(conn.query_row(sql, [], |r| r.get(0))?) };
    println!("store: {} ({})", config.store_id, config.name);
    println!("members: {}", count("SELECT COUNT(*) FROM members")?);
    println!("checkouts: {}", count("SELECT COUNT(*) FROM sales")?);
    println!("ledger entries: {}", count("SELECT COUNT(*) FROM ledger")?);
    println!("operations written: {}", count("SELECT COUNT(*) FROM ops")?);
    Ok(())
}

fn serve(data_dir: PathBuf, listen: Option<String>) -> anyhow::Result<()> {
    let config = StoreConfig::load(&data_dir)?;
    let listen = listen.unwrap_or_else(|| config.listen.clone());
    let database = config::database_path(&data_dir);
    let conn = db::open_writer(&database)?;
    let rules = Rules::default();
    let local = Local::load(&conn, config.store_id.clone(), rules.clone())?;
    let reads = Arc::new(ReadPool::open(&database, 4)?);
    let (writer, writer_thread) = Writer::start(conn, local)?;
    let app = AppState {
        writer,
        reads,
        store_id: config.store_id.to_string(),
        rules: Arc::new(rules),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let address = listener.local_addr()?;
        tracing::info!(store = %config.store_id, %address, "serving");
        println!("listening on {address}");
        axum::serve(listener, http::router(app))
            .with_graceful_shutdown(shutdown_signal())
            .await
            .context("HTTP server failed")
    })?;
    // The router (and with it every writer handle) is gone: the writer drains and stops.
    writer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

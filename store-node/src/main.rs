//! `store-node`: init, user add, serve, status.

use anyhow::{Context, bail};
use chainsync_core::StoreId;
use chainsync_core::rules::Rules;
use chainsync_net::EnrollmentBundle;
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
        /// Store id (taken from the bundle if omitted).
        #[arg(long)]
        store_id: Option<String>,
        /// Store name (taken from the bundle if omitted).
        #[arg(long)]
        name: Option<String>,
        /// Enrollment bundle from `hq-hub enroll`: the store then syncs with the hub.
        #[arg(long)]
        bundle: Option<PathBuf>,
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
        /// Webhook for outbox messages (overrides `webhook_url` in the config file).
        #[arg(long, env = "STORE_NODE_WEBHOOK_URL")]
        webhook_url: Option<String>,
        /// Sell below zero stock, flagged (true) or refuse it (false); overrides
        /// `allow_negative_stock` in the config file (default: true).
        #[arg(long, env = "STORE_NODE_ALLOW_NEGATIVE_STOCK")]
        allow_negative_stock: Option<bool>,
        /// The store's UTC offset, e.g. +08:00 (overrides `utc_offset` in the config file).
        #[arg(long, env = "STORE_NODE_UTC_OFFSET")]
        utc_offset: Option<String>,
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
    chainsync_replica::node::init_tracing();
    match Cli::parse().command {
        Command::Init {
            data_dir,
            store_id,
            name,
            bundle,
        } => init(data_dir, store_id, name, bundle),
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
        Command::Serve {
            data_dir,
            listen,
            webhook_url,
            allow_negative_stock,
            utc_offset,
        } => serve(
            data_dir,
            listen,
            webhook_url,
            allow_negative_stock,
            utc_offset,
        ),
        Command::Status { data_dir } => status(data_dir),
    }
}

fn init(
    data_dir: PathBuf,
    store_id: Option<String>,
    name: Option<String>,
    bundle_path: Option<PathBuf>,
) -> anyhow::Result<()> {
    let bundle = bundle_path
        .as_deref()
        .map(EnrollmentBundle::read_from)
        .transpose()?;
    let store_id = match (&store_id, &bundle) {
        (Some(given), Some(bundle)) if *given != bundle.store_id => bail!(
            "--store-id {given} does not match the bundle, which is for store {}",
            bundle.store_id
        ),
        (Some(given), _) => given.clone(),
        (None, Some(bundle)) => bundle.store_id.clone(),
        (None, None) => bail!("give --store-id (or --bundle)"),
    };
    let name = match (&name, &bundle) {
        (Some(given), Some(bundle)) if given.trim() != bundle.store_name.trim() => bail!(
            "--name {given:?} does not match the bundle, which names the store {:?}",
            bundle.store_name
        ),
        (Some(given), _) => given.clone(),
        (None, Some(bundle)) => bundle.store_name.clone(),
        (None, None) => bail!("give --name (or --bundle)"),
    };
    if let Some(bundle) = &bundle {
        // Fail now, not at the first sync, if the bundle's certificates are unusable.
        chainsync_net::tls::client_config(&bundle.ca_cert_pem, &bundle.cert_pem, &bundle.key_pem)
            .context("the bundle's certificates cannot be used")?;
    }
    let store_id = StoreId::parse(&store_id).context("--store-id")?;
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        bail!("--name must be 1 to 64 characters");
    }
    let config = StoreConfig {
        store_id: store_id.clone(),
        name: name.to_owned(),
        listen: config::default_listen.to_owned(),
        webhook_url: None,
        allow_negative_stock: None,
        utc_offset: None,
    };
    config.write_new(&data_dir)?;
    let conn = db::open_writer(&config::database_path(&data_dir))?;
    db::set_meta(&conn, "store_id", store_id.as_str())?;
    db::set_meta(&conn, "store_name", name)?;
    if let Some(bundle) = &bundle {
        bundle.write_to(&config::bundle_path(&data_dir))?;
        println!(
            "initialized store {store_id} ({name}) in {}; it syncs with the hub at {}",
            data_dir.display(),
            bundle.hub_addr
        );
    } else {
        println!(
            "initialized store {store_id} ({name}) in {} (standalone)",
            data_dir.display()
        );
    }
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
    println!("operations held: {}", count("SELECT COUNT(*) FROM ops")?);
    let sync = store_node::sync_side::read_sync_figures(&conn, &config.store_id)?;
    if config::bundle_path(&data_dir).exists() {
        println!(
            "link: {} (as last recorded by the running node)",
            sync.link_state
        );
        println!(
            "last successful sync: {}",
            sync.last_sync_ms
                .map(|ms| format!("{ms} (Unix ms)"))
                .unwrap_or_else(|| "never".into())
        );
        println!("entries waiting to go out: {}", sync.waiting);
    } else {
        println!("link: standalone (not enrolled with a hub)");
    }
    Ok(())
}

fn serve(
    data_dir: PathBuf,
    listen: Option<String>,
    webhook_url: Option<String>,
    allow_negative_stock: Option<bool>,
    utc_offset: Option<String>,
) -> anyhow::Result<()> {
    let config = StoreConfig::load(&data_dir)?;
    let utc_offset_seconds = config::utc_offset_seconds(&config, utc_offset.as_deref())?;
    let listen = listen.unwrap_or_else(|| config.listen.clone());
    let webhook_url = webhook_url
        .or_else(|| config.webhook_url.clone())
        .map(|url| url.trim().to_owned())
        .filter(|url| !url.is_empty());
    if let Some(url) = &webhook_url
        && !(url.starts_with("http://") || url.starts_with("https://"))
    {
        bail!("webhook_url must start with http:// or https:// (got {url:?})");
    }
    let database = config::database_path(&data_dir);
    let conn = db::open_writer(&database)?;
    chainsync_replica::node::checkpoint_in_background(&conn, &database)?;
    let rules = Rules::default();
    let mut local = Local::load(&conn, config.store_id.clone(), rules.clone())?;
    local.allow_negative_stock = allow_negative_stock
        .or(config.allow_negative_stock)
        .unwrap_or(true);
    local.utc_offset_seconds = utc_offset_seconds;
    let reads = Arc::new(ReadPool::open(&database, 4)?);
    let (writer, writer_thread) = Writer::start(conn, local)?;
    let bundle_path = config::bundle_path(&data_dir);
    let mut authorizer = None;
    let sync_client = if bundle_path.exists() {
        let bundle = EnrollmentBundle::read_from(&bundle_path)?;
        let client_config = chainsync_net::tls::client_config(
            &bundle.ca_cert_pem,
            &bundle.cert_pem,
            &bundle.key_pem,
        )?;
        let status = Arc::new(std::sync::Mutex::new(store_node::sync_client::LinkStatus {
            link: store_node::sync_client::LinkState::Connecting,
            hub_addr: Some(bundle.hub_addr.clone()),
            last_error: None,
            connected_since_ms: None,
        }));
        let (asker, authorizations) = store_node::sync_client::Authorizer::new(status.clone());
        authorizer = Some(asker);
        Some(store_node::sync_client::SyncClient {
            store: config.store_id.clone(),
            database: database.clone(),
            writer: writer.clone(),
            hub_addr: bundle.hub_addr.clone(),
            server_name: bundle.hub_server_name.clone(),
            client_config,
            status,
            authorizations: Some(authorizations),
        })
    } else {
        None
    };
    let link = sync_client
        .as_ref()
        .map(|client| client.status.clone())
        .unwrap_or_else(store_node::sync_client::standalone_status);
    let outbox_sender = webhook_url.map(|url| store_node::outbox::Sender {
        url,
        store_id: config.store_id.to_string(),
        reads: reads.clone(),
        writer: writer.clone(),
    });
    let daily_writer = writer.clone();
    let app = AppState {
        writer,
        reads,
        store_id: config.store_id.to_string(),
        rules: Arc::new(rules),
        link,
        authorizer,
        utc_offset_seconds,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (stop_sync, sync_stopped) = tokio::sync::watch::channel(false);
    runtime.block_on(async move {
        let outbox_task =
            outbox_sender.map(|sender| tokio::spawn(sender.run(sync_stopped.clone())));
        let daily_task = tokio::spawn(store_node::membership_http::daily_timer(
            daily_writer,
            sync_stopped.clone(),
        ));
        let sync_task = sync_client.map(|client| tokio::spawn(client.run(sync_stopped)));
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let address = listener.local_addr()?;
        tracing::info!(store = %config.store_id, %address, "serving");
        println!("listening on {address}");
        let served = axum::serve(listener, http::router(app))
            .with_graceful_shutdown(chainsync_replica::node::shutdown_signal())
            .await
            .context("HTTP server failed");
        let _ = stop_sync.send(true);
        if let Some(task) = sync_task {
            let _ = task.await;
        }
        if let Some(task) = outbox_task {
            let _ = task.await;
        }
        let _ = daily_task.await;
        served
    })?;
    // The router (and with it every writer handle) is gone: the writer drains and stops.
    writer_thread
        .join()
        .map_err(|_| anyhow::anyhow!("writer thread panicked"))?;
    tracing::info!("stopped");
    Ok(())
}

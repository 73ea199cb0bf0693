//! What both server binaries need around the replica: logging, graceful shutdown, opening the
//! database with its migrations. (The wall clock is read in each binary, never under shared/.)

use anyhow::Context;
use rusqlite::Connection;
use rusqlite_migration::Migrations;
use std::path::Path;

/// Tests only: if `CHAINSYNC_TEST_CLOCK_FILE` names a file, the signed number of ms written in
/// it, which both binaries add to their wall clock (read at every call; missing or malformed
/// counts as 0). A cluster test points all its nodes at one file to move their days forward
/// together (check-in streaks, points expiry). Not a config setting; unset in production.
pub fn test_clock_offset_ms() -> i64 {
    static file: std::sync::OnceLock<Option<std::path::PathBuf>> = std::sync::OnceLock::new();
    file.get_or_init(|| std::env::var_os("CHAINSYNC_TEST_CLOCK_FILE").map(Into::into))
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse::<i64>().ok())
        .unwrap_or(0)
}

/// Structured logs to stderr (`RUST_LOG` filters; default `info`); colours only on a terminal.
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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

/// Open a database for writing and bring its schema up to date.
pub fn open_writer(path: &Path, migrations: &Migrations<'static>) -> anyhow::Result<Connection> {
    let mut conn =
        Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    crate::sqlite::configure(&conn)?;
    migrations
        .to_latest(&mut conn)
        .context("schema migration failed")?;
    Ok(conn)
}

/// How often the background checkpointer copies the write-ahead log into the database.
pub const checkpoint_interval_ms: u64 = 500;

/// Move WAL checkpoints off the writer: `writer` stops checkpointing on commit, and a thread
/// with its own connection runs a passive checkpoint every [`checkpoint_interval_ms`] (it
/// never blocks the writer or readers; what it cannot copy now it copies next time). Durability
/// is unchanged: a commit is durable once its WAL frames are synced. The thread ends with the
/// process.
pub fn checkpoint_in_background(writer: &Connection, path: &Path) -> anyhow::Result<()> {
    let conn = Connection::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    writer.pragma_update(None, "wal_autocheckpoint", 0)?;
    std::thread::Builder::new()
        .name("wal-checkpoint".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_millis(checkpoint_interval_ms));
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "background checkpoint failed");
                }
            }
        })
        .context("cannot start the checkpoint thread")?;
    Ok(())
}

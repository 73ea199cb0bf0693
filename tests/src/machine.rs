//! Reference figures of the machine a benchmark runs on, measured in the same run, so that
//! figures from different machines (of the same class, on different hosts) can be compared.

use std::path::Path;
use std::time::{Duration, Instant};

/// Single-row INSERT + COMMIT with WAL and synchronous=FULL, as the nodes' writers use: the
/// latency of each commit.
pub fn raw_commits(dir: &Path, count: usize) -> rusqlite::Result<Vec<Duration>> {
    let conn = rusqlite::Connection::open(dir.join("raw.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")?;
    let body = vec![7u8; 200];
    let mut latencies = Vec::with_capacity(count);
    for _ in 0..count {
        let started = Instant::now();
        conn.execute_batch("BEGIN IMMEDIATE")?;
        conn.execute("INSERT INTO t (body) VALUES (?1)", [&body])?;
        conn.execute_batch("COMMIT")?;
        latencies.push(started.elapsed());
    }
    Ok(latencies)
}

/// One core's speed at fixed work that none of our code touches: deflate (fast level, as the
/// sync protocol packs batches) of the same 8 MiB of text-like bytes; MiB per second.
pub fn deflate_mib_per_s() -> f64 {
    let mut input = Vec::with_capacity(8 << 20);
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    while input.len() < 8 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // Digits and a few letters, like the decimal amounts and ids in a batch.
        input.push(b"0123456789abcdef-,"[(state % 18) as usize]);
    }
    let started = Instant::now();
    let mut encoder = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
    let written = std::io::Write::write_all(&mut encoder, &input);
    let deflated = encoder.finish().map(|out| out.len()).unwrap_or(0);
    let elapsed = started.elapsed().as_secs_f64();
    if written.is_err() || deflated == 0 || elapsed == 0.0 {
        return 0.0;
    }
    8.0 / elapsed
}

/// One line for a results table: commits per second and deflate speed.
pub fn reference_row(dir: &Path) -> String {
    let commits = raw_commits(dir, 1_000).unwrap_or_default();
    let total: f64 = commits.iter().map(Duration::as_secs_f64).sum();
    let rate = if total > 0.0 {
        commits.len() as f64 / total
    } else {
        0.0
    };
    format!(
        "| machine reference: raw SQLite commits (WAL, synchronous=FULL, 1 row) / deflate on one core | {rate:.0} commits/s / {:.0} MiB/s |",
        deflate_mib_per_s()
    )
}

//! Soak the deterministic simulation: `cargo run --release -p tests --bin sim -- --seeds N --from S`
//! (`--stores K`, `--steps N`, `--seconds T` to stop after T seconds). Prints failing seeds
//! (rerun one with `--seeds 1 --from SEED`) and exits non-zero if any failed.

use std::time::Instant;
use tests::simulation::{SimConfig, run_seed};

fn main() {
    let mut seeds: u64 = 1_000;
    let mut from: u64 = 1;
    let mut seconds: Option<u64> = None;
    let mut config = SimConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        match (arg.as_str(), value) {
            ("--seeds", Some(v)) => seeds = v,
            ("--from", Some(v)) => from = v,
            ("--stores", Some(v)) => config.stores = v as usize,
            ("--steps", Some(v)) => config.steps = v as usize,
            ("--seconds", Some(v)) => seconds = Some(v),
            _ => {
                eprintln!(
                    "usage: sim [--seeds N] [--from S] [--stores K] [--steps N] [--seconds T]"
                );
                std::process::exit(2);
            }
        }
    }
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, Vec::new());
    let (mut store_days, mut ops, mut exceptions, mut crashes, mut partitions) =
        (0.0, 0usize, 0usize, 0u64, 0u64);
    for seed in from..from.saturating_add(seeds) {
        if seconds.is_some_and(|limit| started.elapsed().as_secs() >= limit) {
            break;
        }
        match run_seed(seed, &config) {
            Ok(report) => {
                passed += 1;
                store_days += report.store_days();
                ops += report.ops;
                exceptions += report.exceptions;
                crashes += report.crashes;
                partitions += report.partitions;
            }
            Err(message) => {
                eprintln!("FAILED {message}");
                failed.push(seed);
            }
        }
        if (passed + failed.len() as u64).is_multiple_of(100) {
            eprintln!(
                "… {} seeds, {:.0} s",
                passed + failed.len() as u64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{passed} passed, {} failed: {ops} operations, {crashes} crashes, {partitions} partitions, {exceptions} exceptions found, {store_days:.0} simulated store-days in {elapsed:.1} s ({:.0} store-days per 10 minutes)",
        failed.len(),
        store_days / elapsed.max(1e-9) * 600.0
    );
    if !failed.is_empty() {
        eprintln!("failing seeds: {failed:?}");
        std::process::exit(1);
    }
}

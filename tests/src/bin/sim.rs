//! Soak the deterministic simulation (`tests::sim`):
//!
//! ```text
//! cargo run --release -p tests --bin sim -- --seeds N --from S [--stores K] [--days D]
//!     [--hours H] [--rate R] [--seconds T] [--jobs J] [--cross-store-refunds] [--strict]
//!     [--verbose]
//! ```
//!
//! Runs seeds `S, S+1, …, S+N-1` (on J threads; each seed is independent and deterministic),
//! prints progress, a summary with the simulated store-days covered, and every failing seed
//! with how to rerun it. `--seconds T` stops starting new seeds after T seconds (for
//! "how much does a 10-minute soak cover"). Exits 1 if any seed failed.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use tests::sim::{Failure, SimConfig, SimReport, run_seed};

struct Options {
    seeds: u64,
    from: u64,
    seconds: Option<u64>,
    jobs: usize,
    config: SimConfig,
    /// The arguments that shape a run (to rerun a failing seed exactly).
    shape: Vec<String>,
}

const usage: &str = "usage: sim [--seeds N] [--from S] [--stores K] [--days D] [--hours H] \
                     [--rate COMMANDS_PER_STORE_HOUR] [--phones P] [--seconds T] [--jobs J] \
                     [--cross-store-refunds] [--strict] [--verbose]";

fn parse() -> Result<Options, String> {
    let mut options = Options {
        seeds: 100,
        from: 1,
        seconds: None,
        jobs: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        config: SimConfig::default(),
        shape: Vec::new(),
    };
    let mut phones = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--verbose" => {
                options.config.verbose = true;
                continue;
            }
            "--cross-store-refunds" => {
                options.config.cross_store_refunds = true;
                options.shape.push(arg);
                continue;
            }
            "--strict" => {
                options.config.documented_gaps_only = true;
                options.shape.push(arg);
                continue;
            }
            "--help" | "-h" => return Err(usage.into()),
            _ => {}
        }
        let value = args
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("{arg} needs a whole number\n{usage}"))?;
        if matches!(
            arg.as_str(),
            "--stores" | "--days" | "--hours" | "--rate" | "--phones"
        ) {
            options.shape.push(format!("{arg} {value}"));
        }
        match arg.as_str() {
            "--seeds" => options.seeds = value,
            "--from" => options.from = value,
            "--stores" if (1..=64).contains(&value) => options.config.stores = value as usize,
            "--days" if (1..=365).contains(&value) => options.config.days = value as u32,
            "--hours" if (1..=24).contains(&value) => options.config.day_ms = value * 3_600_000,
            "--rate" if (1..=10_000).contains(&value) => {
                options.config.commands_per_store_hour = value
            }
            "--phones" if value >= 1 => phones = Some(value),
            "--seconds" => options.seconds = Some(value),
            "--jobs" if value >= 1 => options.jobs = value as usize,
            _ => return Err(format!("bad argument {arg} {value}\n{usage}")),
        }
    }
    // Enough phones for the members a run registers, few enough that the same phone is
    // registered at two stores (the CI run's 60 for 3 stores × 1 day).
    let config = &mut options.config;
    config.phone_pool = phones.unwrap_or(20 * config.stores as u64 * u64::from(config.days.max(1)));
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let config = &options.config;
    eprintln!(
        "sim: seeds {}..{} on {} threads; {} stores × {} day(s) of {} h, {} commands/store-hour",
        options.from,
        options.from.saturating_add(options.seeds),
        options.jobs,
        config.stores,
        config.days,
        config.day_ms / 3_600_000,
        config.commands_per_store_hour
    );
    let started = Instant::now();
    let deadline = options.seconds.map(|s| started + Duration::from_secs(s));
    let next = AtomicU64::new(options.from);
    let end = options.from.saturating_add(options.seeds);
    let stop = AtomicBool::new(false);
    let total = Mutex::new(SimReport::default());
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    let (progress, ticks) = mpsc::channel::<()>();
    let shape = &options.shape.join(" ");
    std::thread::scope(|scope| {
        for _ in 0..options.jobs.max(1) {
            let progress = progress.clone();
            let (next, stop, total, failures) = (&next, &stop, &total, &failures);
            scope.spawn(move || {
                loop {
                    if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d)
                    {
                        break;
                    }
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        break;
                    }
                    match run_seed(seed, config) {
                        Ok(report) => {
                            if let Ok(mut total) = total.lock() {
                                total.add(&report);
                            }
                        }
                        Err(failure) => {
                            eprintln!(
                                "FAILED seed {} at virtual {}: {}\n  rerun: cargo run --release -p \
                                 tests --bin sim -- --seeds 1 --from {} {} --verbose",
                                failure.seed, failure.at, failure.message, failure.seed, shape
                            );
                            if let Ok(mut failures) = failures.lock() {
                                failures.push(failure);
                            }
                        }
                    }
                    let _ = progress.send(());
                }
            });
        }
        drop(progress);
        let mut done = 0u64;
        let mut last_print = Instant::now();
        while ticks.recv().is_ok() {
            done += 1;
            if last_print.elapsed() >= Duration::from_secs(10) {
                last_print = Instant::now();
                let (days, failed) = (
                    total.lock().map(|t| t.store_days).unwrap_or(0.0),
                    failures.lock().map(|f| f.len()).unwrap_or(0),
                );
                eprintln!(
                    "… {done} seeds, {failed} failed, {days:.0} store-days, {:.0} s",
                    started.elapsed().as_secs_f64()
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed().as_secs_f64();
    let total = total.into_inner().unwrap_or_default();
    let mut failures = failures.into_inner().unwrap_or_default();
    failures.sort_by_key(|f| f.seed);
    println!("{total}");
    println!(
        "{} passed, {} failed in {elapsed:.1} s on {} threads: {:.0} simulated store-days per \
         10 minutes",
        total.seeds,
        failures.len(),
        options.jobs,
        total.store_days / elapsed.max(1e-9) * 600.0
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        let seeds: Vec<u64> = failures.iter().map(|f| f.seed).collect();
        println!(
            "failing seeds: {seeds:?} (rerun one with --seeds 1 --from SEED {shape})",
            shape = options.shape.join(" ")
        );
        ExitCode::FAILURE
    }
}

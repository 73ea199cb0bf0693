//! The deterministic simulation (`tests::sim`) in CI: 500 seeds, split over a few tests so the
//! test harness runs them on every core. A failure names its seed and how to rerun it
//! (`cargo run -p tests --bin sim -- --seeds 1 --from SEED --verbose`).

use tests::sim::{SimConfig, SimReport, run_seed};

/// The CI configuration: strict, every online grant's hold must last until its spend arrives.
fn ci_config() -> SimConfig {
    SimConfig {
        documented_gaps_only: true,
        ..SimConfig::default()
    }
}

/// Seeds `from..from + count` with the CI configuration; panics listing every failure.
fn run_seeds(from: u64, count: u64) -> SimReport {
    let config = ci_config();
    let mut total = SimReport::default();
    let mut failures = Vec::new();
    for seed in from..from + count {
        match run_seed(seed, &config) {
            Ok(report) => total.add(&report),
            Err(failure) => failures.push(failure.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!("seeds {from}..{}: {total}", from + count);
    total
}

#[test]
fn seeds_1_to_125() {
    run_seeds(1, 125);
}

#[test]
fn seeds_126_to_250() {
    run_seeds(126, 125);
}

#[test]
fn seeds_251_to_375() {
    run_seeds(251, 125);
}

#[test]
fn seeds_376_to_500() {
    let total = run_seeds(376, 125);
    // The faults and the money paths actually happen (a quiet simulation proves nothing).
    assert!(total.partitions > 0 && total.store_crashes > 0 && total.hub_crashes > 0);
    assert!(total.offline_spends > 0 && total.online_grants > 0 && total.refunds > 0);
    assert!(total.session_errors > 0 && total.duplicated > 0 && total.reordered > 0);
    // And what the checks look for exists: overdrafts, double redemptions, merged members.
    assert!(total.overdrawn_members > 0 && total.double_redemptions > 0);
    assert!(total.merged_groups > 0 && total.twins > 0);
    // Count cards are sold and used, also at stores apart past their uses.
    assert!(total.count_cards.bought > 0 && total.count_cards.uses > 0);
    assert!(total.count_cards.shared_uses > 0 && total.count_cards.overused_cards > 0);
    // Stock moves every way: sales (bundle lines as their components) and their returns,
    // receipts, damage; transfers asked for by stores and by HQ, shipped, received short and
    // received before the shipment had reached the destination; stocktakes with adjustments,
    // and counted SKUs that moved between their count and the finish.
    let stock = &total.stock;
    assert!(stock.sale_batches > 0 && stock.bundle_lines > 0 && stock.sale_returns > 0);
    assert!(stock.receipts > 0 && stock.damages > 0);
    assert!(stock.transfers_requested_by_stores > 0 && stock.transfers_requested_by_hq > 0);
    assert!(stock.shipped > 0 && stock.received_short > 0);
    assert!(stock.received_before_shipment_arrived > 0);
    assert!(stock.stocktakes_finished > 0 && stock.adjustments > 0);
    assert!(stock.moved_during_count > 0);
    // Every message went through the binaries' encoding (protocol 3: compact member changes).
    assert!(total.wire_bytes > 0 && total.compact_batches > 0);
}

#[test]
fn a_seed_reruns_exactly() {
    let config = SimConfig::default();
    let (Ok(a), Ok(b)) = (run_seed(42, &config), run_seed(42, &config)) else {
        panic!("seed 42 failed");
    };
    assert_eq!(a.trace, b.trace, "same seed, same sequence of events");
    assert_eq!((a.ops, a.deliveries), (b.ops, b.deliveries));
    let Ok(c) = run_seed(43, &config) else {
        panic!("seed 43 failed");
    };
    assert_ne!(a.trace, c.trace, "another seed, another run");
}

//! The deterministic simulation in CI: 500 seeds. A failure names its seed; rerun it with
//! `cargo run -p tests --bin sim -- --seeds 1 --from SEED`.

use tests::simulation::{SimConfig, run_seed};

#[test]
fn five_hundred_seeds_converge_without_losing_or_hiding_anything() {
    let config = SimConfig::default();
    let failures: Vec<String> = (1..=500u64)
        .filter_map(|seed| run_seed(seed, &config).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} seeds failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

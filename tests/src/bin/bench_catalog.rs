//! Benchmark of HQ's catalog CSV import at chain scale: writes a file of N SKUs (every 50th a
//! bundle of two plain SKUs, a third with a member price), then on a fresh hub database (the
//! hub's schema and migrations, in a temporary directory) times what `POST
//! /api/v1/catalog/import` runs (`hq_hub::catalog::import`: parse, check every row against the
//! file and the catalog, author every item as an operation with its relay-log row and report
//! index upkeep in one durable transaction), then the same file again (every row unchanged,
//! nothing authored), then the export.
//!
//! `cargo run --release -p tests --bin bench_catalog -- [--skus N] [--runs N]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, bail};
use std::time::Instant;

fn file_of(skus: usize) -> String {
    let mut file = String::with_capacity(skus * 64);
    file.push_str("sku,barcode,name,category,price,member_price,active,bundle\n");
    for i in 0..skus {
        let bundle = if i % 50 == 49 {
            format!("P{:06}*2;P{:06}*1", i - 1, i - 2)
        } else {
            String::new()
        };
        let member = if i % 3 == 0 {
            format!("{}.{:02}", i % 900, i % 100)
        } else {
            String::new()
        };
        file.push_str(&format!(
            "P{i:06},69{i:011},商品 {i},类别{},{}.{:02},{member},true,{bundle}\n",
            i % 40,
            i % 1_000 + 1,
            i % 100,
        ));
    }
    file
}

fn main() -> Result<()> {
    let mut skus = 100_000usize;
    let mut runs = 3usize;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().context("missing value");
        match flag.as_str() {
            "--skus" => skus = value()?.parse()?,
            "--runs" => runs = value()?.parse()?,
            other => bail!("unknown flag {other}"),
        }
    }
    let file = file_of(skus);
    println!(
        "catalog import: {skus} SKUs, {:.1} MB of CSV, {runs} runs (fresh hub database each)",
        file.len() as f64 / 1e6
    );
    let mut first = Vec::new();
    let mut again = Vec::new();
    let mut export = Vec::new();
    let mut parse = Vec::new();
    for _ in 0..runs {
        let started = Instant::now();
        let (rows, errors) = hq_hub::catalog::parse_csv(file.as_bytes());
        parse.push(started.elapsed().as_secs_f64());
        assert!(errors.is_empty() && rows.len() == skus);

        let dir = tempfile::tempdir()?;
        let mut conn = hq_hub::db::open_writer(&dir.path().join("hub.db"))?;
        let started = Instant::now();
        let (report, _) = hq_hub::catalog::import(&mut conn, file.as_bytes(), 1_800_000_000_000)
            .map_err(|_| anyhow::anyhow!("import refused"))?;
        first.push(started.elapsed().as_secs_f64());
        assert_eq!(report.created, skus);

        let started = Instant::now();
        let (report, _) = hq_hub::catalog::import(&mut conn, file.as_bytes(), 1_800_000_001_000)
            .map_err(|_| anyhow::anyhow!("import refused"))?;
        again.push(started.elapsed().as_secs_f64());
        assert_eq!(report.unchanged, skus);

        let started = Instant::now();
        let bytes = hq_hub::catalog::export_csv(&conn)?;
        export.push(started.elapsed().as_secs_f64());
        assert!(bytes.len() > skus * 20);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let (p, f, a, e) = (
        median(&mut parse),
        median(&mut first),
        median(&mut again),
        median(&mut export),
    );
    println!("| step | median s | SKUs/s |");
    println!("|---|---|---|");
    for (name, seconds) in [
        ("parse and check the CSV only", p),
        (
            "import into an empty catalog (all authored, one transaction)",
            f,
        ),
        (
            "import the same file again (all unchanged, nothing authored)",
            a,
        ),
        ("export the catalog as CSV", e),
    ] {
        println!("| {name} | {seconds:.2} | {:.0} |", skus as f64 / seconds);
    }
    Ok(())
}

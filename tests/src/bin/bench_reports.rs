//! Benchmark of HQ reports at chain scale: generates members and sales lines straight into a
//! hub database (the hub's schema and migrations; sales go through the replica's projection
//! and the hub's report-index maintenance, as ingest does, minus the `ops` table and sync),
//! then times segmentation, the sales report and a few searches on a read-only connection.
//!
//! `cargo run --release -p tests --bin bench_reports -- [--members N] [--lines N]
//!  [--stores N] [--days N] [--dir DIR] [--reuse]`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, bail};
use chainsync_core::checkout::{Payment, PaymentMethod};
use chainsync_core::member::Profile;
use chainsync_core::op::{SaleLine, SaleRecord};
use chainsync_core::rules::Rules;
use chainsync_core::{Fen, StoreId};
use hq_hub::reports::http::{ReportQuery, compute_report};
use hq_hub::reports::members::{SearchQuery, search_table};
use hq_hub::reports::scope::Scope;
use hq_hub::reports::segments::{SegmentQuery, counts, segment};
use hq_hub::reports::{day_ms, day_of, format_date};
use hq_hub::users::User;
use std::path::PathBuf;
use std::time::Instant;
use uuid::Uuid;

struct Args {
    members: u64,
    lines: u64,
    stores: u64,
    days: u64,
    dir: Option<PathBuf>,
    reuse: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        members: 1_000_000,
        lines: 10_000_000,
        stores: 50,
        days: 365,
        dir: None,
        reuse: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().context("missing value");
        match flag.as_str() {
            "--members" => args.members = value()?.parse()?,
            "--lines" => args.lines = value()?.parse()?,
            "--stores" => args.stores = value()?.parse()?,
            "--days" => args.days = value()?.parse()?,
            "--dir" => args.dir = Some(PathBuf::from(value()?)),
            "--reuse" => args.reuse = true,
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn store_name(i: u64) -> String {
    format!("store-{i:03}")
}

fn generate(conn: &mut rusqlite::Connection, args: &Args, now: u64) -> Result<()> {
    conn.pragma_update(None, "synchronous", "OFF")?;
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for i in 0..args.stores {
        conn.execute(
            "INSERT INTO stores (store_id, name, region, enrolled_ms) VALUES (?1, ?1, ?2, 0)",
            (store_name(i), format!("region-{}", i % 5)),
        )?;
    }
    let start = now - args.days * day_ms as u64;
    let clock = Instant::now();
    let batch = 20_000u64;
    let tags = ["vip", "coffee", "student", "family", "office"];
    let mut done = 0;
    while done < args.members {
        let tx = conn.transaction()?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO members (id, phone, card_no, name, profile_json, doc, origin,
                     created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, x'', ?6, ?7)",
            )?;
            for i in done..(done + batch).min(args.members) {
                let id = Uuid::from_u128(u128::from(i) + 1);
                let home = store_name(rng.below(args.stores));
                let month = rng.below(12) + 1;
                let profile = Profile {
                    name: format!("会员{i}"),
                    phone: format!("13{:09}", i),
                    card_no: format!("C{i:08}"),
                    birthday: Some(format!(
                        "19{:02}-{month:02}-1{}",
                        50 + rng.below(50),
                        rng.below(9)
                    )),
                    home_store: Some(home.clone()),
                    tags: [tags[rng.below(5) as usize].to_owned()]
                        .into_iter()
                        .collect(),
                    ..Default::default()
                };
                let created =
                    start - rng.below(365 * day_ms as u64) + rng.below(args.days * day_ms as u64);
                insert.execute((
                    id.to_string(),
                    &profile.phone,
                    &profile.card_no,
                    &profile.name,
                    serde_json::to_string(&profile)?,
                    &home,
                    created as i64,
                ))?;
                hq_hub::reports::index::refresh_member(&tx, &id.to_string(), true)?;
            }
        }
        tx.commit()?;
        done = (done + batch).min(args.members);
    }
    let members_s = clock.elapsed().as_secs_f64();
    println!("generated {} members in {members_s:.1} s", args.members);
    let clock = Instant::now();
    let skus: Vec<(String, i64)> = (0..500)
        .map(|i| (format!("69{i:011}"), 100 + (i * 37 % 200) * 50))
        .collect();
    let (mut lines_done, mut sales_done, mut sale_id) = (0u64, 0u64, 0u128);
    let store_ids: Vec<StoreId> = (0..args.stores)
        .map(|i| StoreId::parse(&store_name(i)).unwrap())
        .collect();
    while lines_done < args.lines {
        let tx = conn.transaction()?;
        let goal = (lines_done + 60_000).min(args.lines);
        while lines_done < goal {
            let count = (1 + rng.below(5)).min(args.lines - lines_done);
            let mut lines = Vec::with_capacity(count as usize);
            for _ in 0..count {
                let (sku, price) = &skus[rng.below(skus.len() as u64) as usize];
                let qty = 1 + rng.below(3) as i64;
                lines.push(SaleLine {
                    sku: sku.clone(),
                    name: sku.clone(),
                    qty,
                    unit_price: Fen(*price),
                    amount: Fen(price * qty),
                });
            }
            lines_done += count;
            let total: i64 = lines.iter().map(|l| l.amount.0).sum();
            // Four sales in five are members'; a skewed draw gives regulars and one-timers.
            let member = (rng.below(5) != 0).then(|| {
                let r = rng.below(1 << 20) as f64 / f64::from(1 << 20);
                Uuid::from_u128((r * r * args.members as f64) as u128 + 1)
            });
            sale_id += 1;
            let sale = SaleRecord {
                id: Uuid::from_u128(sale_id << 64),
                member_id: member,
                lines,
                payments: vec![Payment {
                    method: PaymentMethod::Cash,
                    amount: Fen(total),
                }],
                subtotal: Fen(total),
                discount: Fen(0),
                total: Fen(total),
                points_earned: total / 100,
                tier: "普通".into(),
                rule_version: 1,
                at_ms: start + rng.below(args.days * day_ms as u64),
            };
            let store = &store_ids[rng.below(args.stores) as usize];
            chainsync_replica::project::project_sale(&tx, &sale, store)?;
            hq_hub::reports::index::on_sale(&tx, &sale, store.as_str())?;
            sales_done += 1;
        }
        tx.commit()?;
    }
    let sales_s = clock.elapsed().as_secs_f64();
    println!(
        "generated {lines_done} sales lines in {sales_done} sales in {sales_s:.1} s ({:.0} sales/s with index upkeep)",
        sales_done as f64 / sales_s
    );
    conn.execute_batch("ANALYZE")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(())
}

fn time<T>(what: &str, runs: usize, mut f: impl FnMut() -> T) -> T {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..runs {
        let clock = Instant::now();
        last = Some(f());
        times.push(clock.elapsed().as_secs_f64());
    }
    let shown: Vec<String> = times.iter().map(|t| format!("{t:.2}")).collect();
    println!("{what}: {} s", shown.join(" / "));
    last.unwrap()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("bench-reports-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("hub.db");
    let now = hq_hub::now_ms();
    if !(args.reuse && path.exists()) {
        let _ = std::fs::remove_file(&path);
        let mut conn = hq_hub::db::open_writer(&path)?;
        generate(&mut conn, &args, now)?;
    }
    let conn = hq_hub::db::open_reader(&path)?;
    let counted: (i64, i64) = conn.query_row(
        "SELECT (SELECT COUNT(*) FROM report_members), (SELECT COUNT(*) FROM sales)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let lines: i64 = conn.query_row("SELECT COUNT(*) FROM report_daily_sku", [], |r| r.get(0))?;
    println!(
        "database {}: {} members, {} sales ({} day x store x product rows), {:.0} MiB",
        path.display(),
        counted.0,
        counted.1,
        lines,
        std::fs::metadata(&path)?.len() as f64 / 1_048_576.0
    );
    let admin = User {
        name: "bench".into(),
        role: "admin".into(),
        region: None,
    };
    let manager = User {
        name: "bench-east".into(),
        role: "regional-manager".into(),
        region: Some("region-0".into()),
    };
    let rules = Rules::default();
    let today = format_date(day_of(now));
    let year_ago = format_date(day_of(now) - 364);
    let quarter_ago = format_date(day_of(now) - 89);
    let scope = Scope::load(&conn, &admin)?;
    let query = SegmentQuery {
        from: Some(quarter_ago.clone()),
        to: Some(today.clone()),
        ..Default::default()
    };
    let segmentation = time(
        "segmentation, 90-day window, dormant 30 days, chain",
        3,
        || {
            let s = segment(&conn, &scope, &query, now).unwrap();
            counts(&s, &scope, Some("region")).unwrap()
        },
    );
    println!(
        "  {} rows; e.g. {:?}",
        segmentation.rows.len(),
        segmentation.rows.first()
    );
    let east = Scope::load(&conn, &manager)?;
    time(
        "segmentation, 90-day window, one region's manager",
        3,
        || {
            let s = segment(&conn, &east, &query, now).unwrap();
            counts(&s, &east, Some("store")).unwrap()
        },
    );
    for by in ["store", "region", "day", "store,customer"] {
        let report = ReportQuery {
            from: Some(year_ago.clone()),
            to: Some(today.clone()),
            by: Some(by.into()),
            limit: None,
            format: None,
        };
        let table = time(&format!("sales report, 365 days, by {by}"), 3, || {
            compute_report(&conn, &admin, &rules, "sales", &report, now).unwrap()
        });
        println!("  {} rows", table.rows.len());
    }
    let report = ReportQuery {
        from: Some(year_ago.clone()),
        to: Some(today.clone()),
        by: Some("store".into()),
        limit: None,
        format: None,
    };
    time("categories report, 365 days, by store", 3, || {
        compute_report(&conn, &admin, &rules, "categories", &report, now).unwrap()
    });
    time("top customers, 365 days", 3, || {
        compute_report(&conn, &admin, &rules, "top-customers", &report, now).unwrap()
    });
    time("tier distribution by store", 3, || {
        compute_report(&conn, &admin, &rules, "tiers", &report, now).unwrap()
    });
    let searches = [
        (
            "search visits >= 20, by spend, page 1",
            SearchQuery {
                visits_min: Some(20),
                ..Default::default()
            },
        ),
        (
            "search spend 1000-2000 yuan, birthday in May, page 1",
            SearchQuery {
                spend_min_fen: Some(100_000),
                spend_max_fen: Some(200_000),
                birthday_month: Some(5),
                ..Default::default()
            },
        ),
        (
            "search tag vip, home store-007, last visit before 60 days ago",
            SearchQuery {
                tag: Some("vip".into()),
                store: Some("store-007".into()),
                last_visit_before: Some(format_date(day_of(now) - 60)),
                ..Default::default()
            },
        ),
        (
            "search page 100 of all members by last visit",
            SearchQuery {
                sort: Some("last_visit".into()),
                page: Some(100),
                ..Default::default()
            },
        ),
    ];
    for (what, query) in searches {
        let table = time(what, 3, || {
            search_table(&conn, &scope, &query, &rules, now).unwrap()
        });
        println!("  {} of {:?} rows", table.rows.len(), table.total);
    }
    Ok(())
}

//! `hq-hub report` against a running hub fed by a real store: a regional manager logs in with a
//! password (from the command line and from stdin), prints the sales table, writes CSV and
//! xlsx files that agree, and the exports land in the audit log.

use anyhow::{Context, Result, bail};
use serde_json::json;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use tests::multi::{Hub, Store, hq_hub_bin, wait_until};

fn hub_cli(args: &[&str], stdin: Option<&str>) -> Result<(bool, String, String)> {
    let mut child = Command::new(hq_hub_bin()?)
        .args(args)
        .env_remove("HQ_HUB_TOKEN")
        .env_remove("HQ_HUB_USER")
        .env_remove("HQ_HUB_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(mut input), Some(text)) = (child.stdin.take(), stdin) {
        input.write_all(text.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[test]
fn a_regional_manager_reports_from_the_command_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let hub = Hub::start(dir.path())?;
    let store = Store::start("sa", dir.path(), &hub.enroll("sa", dir.path())?)?;
    store.ok(
        "/api/v1/products",
        &json!({"sku": "P1", "name": "咖啡", "price_fen": 1_500}),
    )?;
    let member = store.ok(
        "/api/v1/members",
        &json!({"name": "李四", "phone": "13900002222"}),
    )?;
    let id = member["id"].as_str().context("id")?;
    store.ok(
        &format!("/api/v1/members/{id}/recharges"),
        &json!({"amount_fen": 10_000}),
    )?;
    store.ok(
        "/api/v1/checkouts",
        &json!({"member_id": id, "lines": [{"sku": "P1", "qty": 2}],
                "payments": [{"method": "stored_value", "amount_fen": 3_000}]}),
    )?;
    store.ok(
        "/api/v1/checkouts",
        &json!({"lines": [{"sku": "P1", "qty": 1}],
                "payments": [{"method": "cash", "amount_fen": 1_500}]}),
    )?;
    wait_until("both sales at the hub", Duration::from_secs(60), || {
        let (status, table) = hub.get("/api/v1/reports/sales?by=store")?;
        Ok(status == 200 && table["rows"][0][1] == 2)
    })?;
    let data = hub.dir.display().to_string();
    let (ok, _, stderr) = hub_cli(
        &[
            "user",
            "add",
            "--data-dir",
            &data,
            "--name",
            "华东经理",
            "--role",
            "regional-manager",
            "--region",
            "east",
            "--password-stdin",
        ],
        Some("s3cret-东\n"),
    )?;
    assert!(ok, "{stderr}");
    let (ok, admin_token, stderr) = hub_cli(
        &[
            "user",
            "add",
            "--data-dir",
            &data,
            "--name",
            "root",
            "--role",
            "admin",
        ],
        None,
    )?;
    assert!(ok, "{stderr}");
    let base = hub.api.base().to_owned();
    let common = ["--hub", base.as_str(), "--user", "华东经理"];

    // A table on stdout (password on the command line).
    let mut args = vec!["report", "sales", "--by", "store"];
    args.extend(common);
    args.extend(["--password", "s3cret-东"]);
    let (ok, stdout, stderr) = hub_cli(&args, None)?;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("store"), "{stdout}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    // store, orders, sales_fen, refunds, refund_fen, net_fen, avg_basket_fen
    assert_eq!(
        cells,
        ["sa", "2", "4500", "0", "0", "4500", "2250"],
        "{stdout}"
    );

    // Files (password from stdin): CSV and xlsx agree.
    let csv_path = dir.path().join("sales.csv");
    let xlsx_path = dir.path().join("sales.xlsx");
    for path in [&csv_path, &xlsx_path] {
        let out = path.display().to_string();
        let mut args = vec!["report", "sales", "--by", "store,customer", "--out", &out];
        args.extend(common);
        let (ok, _, stderr) = hub_cli(&args, Some("s3cret-东\n"))?;
        assert!(ok, "{stderr}");
    }
    let mut reader = csv::Reader::from_path(&csv_path)?;
    let mut csv_rows = vec![
        reader
            .headers()?
            .iter()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    ];
    for record in reader.records() {
        csv_rows.push(record?.iter().map(str::to_owned).collect());
    }
    assert_eq!(
        csv_rows.len(),
        3,
        "member and non-member rows: {csv_rows:?}"
    );
    use calamine::Reader;
    let mut workbook: calamine::Xlsx<_> = calamine::open_workbook(&xlsx_path)?;
    let range = workbook.worksheet_range("report")?;
    let xlsx_rows: Vec<Vec<String>> = range
        .rows()
        .map(|row| {
            row.iter()
                .map(|cell| match cell {
                    calamine::Data::Float(f) => format!("{}", *f as i64),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    assert_eq!(xlsx_rows, csv_rows);

    // Wrong password: refused, nothing written.
    let mut args = vec!["report", "sales"];
    args.extend(common);
    args.extend(["--password", "wrong"]);
    let (ok, _, stderr) = hub_cli(&args, None)?;
    assert!(!ok);
    assert!(stderr.contains("login failed"), "{stderr}");

    // Both file exports are in the audit log, by the manager.
    let (status, audit) = hub
        .api
        .get("/api/v1/audit?action=export", Some(admin_token.trim()))?;
    if status != 200 {
        bail!("audit: {status} {audit}");
    }
    let entries = audit["entries"].as_array().context("entries")?;
    assert_eq!(entries.len(), 2, "{audit}");
    assert!(entries.iter().all(|e| e["user"] == "华东经理"));
    Ok(())
}

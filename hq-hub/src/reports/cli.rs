//! `hq-hub report NAME …`: a client of a running hub. Logs in (or uses a token), asks for a
//! report, member search or segments, and prints a table or writes a CSV/xlsx file.

use anyhow::{Context, bail};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::{Cell, Table};

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// A report (sales, categories, active-members, new-members, tiers, top-customers,
    /// liability, settlement, coupons), `segments`, `segment/CLASS` (its members) or
    /// `members` (member search).
    pub name: String,
    /// First day, YYYY-MM-DD.
    #[arg(long)]
    pub from: Option<String>,
    /// Last day, inclusive.
    #[arg(long)]
    pub to: Option<String>,
    /// Grouping, e.g. `store`, `region`, `day,store`.
    #[arg(long)]
    pub by: Option<String>,
    /// More query parameters, e.g. `--param limit=10 --param tier=黄金`.
    #[arg(long = "param", value_name = "KEY=VALUE")]
    pub params: Vec<String>,
    /// The hub's HTTP address.
    #[arg(long, env = "HQ_HUB_URL", default_value = "http://127.0.0.1:8080")]
    pub hub: String,
    /// Log in as this user (the password comes from --password, HQ_HUB_PASSWORD or stdin).
    #[arg(long, env = "HQ_HUB_USER")]
    pub user: Option<String>,
    #[arg(long, env = "HQ_HUB_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// An API token instead of a login.
    #[arg(long, env = "HQ_HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Write the result to this file: .xlsx as Excel, anything else as CSV.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print as `table` (default), `csv` or `json`.
    #[arg(long, default_value = "table")]
    pub print: String,
}

pub fn agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(600)))
        .timeout_connect(Some(Duration::from_secs(10)))
        .proxy(None)
        .build();
    ureq::Agent::new_with_config(config)
}

pub fn error_text(status: u16, body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(|e| Some((e.get("code")?.as_str()?, e.get("message")?.as_str()?)))
    {
        Some((code, message)) => format!("hub answered {status} {code}: {message}"),
        None => format!("hub answered {status}"),
    }
}

fn token(agent: &ureq::Agent, args: &ReportArgs) -> anyhow::Result<String> {
    login(
        agent,
        &args.hub,
        args.user.as_deref(),
        args.password.as_deref(),
        args.token.as_deref(),
    )
}

/// A token for the hub at `hub`: `token` itself, or a login as `user` (the password from
/// `password` or a line of stdin).
pub fn login(
    agent: &ureq::Agent,
    hub: &str,
    user: Option<&str>,
    password: Option<&str>,
    token: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(token) = token {
        return Ok(token.to_owned());
    }
    let Some(user) = user else {
        bail!("give --user (and a password) or --token");
    };
    let password = match password {
        Some(password) => password.to_owned(),
        None => {
            eprint!("password for {user}: ");
            let _ = std::io::stderr().flush();
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let url = format!("{}/api/v1/login", hub.trim_end_matches('/'));
    let body = serde_json::json!({"name": user, "password": password}).to_string();
    let mut response = agent
        .post(&url)
        .content_type("application/json")
        .send(body.as_str())
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status().as_u16();
    let bytes = response.body_mut().read_to_vec()?;
    if status != 200 {
        bail!("login failed: {}", error_text(status, &bytes));
    }
    let session: serde_json::Value = serde_json::from_slice(&bytes)?;
    session
        .get("token")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .context("login answer has no token")
}

fn path_of(name: &str) -> anyhow::Result<String> {
    Ok(match name {
        "members" => "/api/v1/member-search".to_owned(),
        "segments" => "/api/v1/segments".to_owned(),
        _ => match name.strip_prefix("segment/") {
            Some(class) if !class.is_empty() => format!("/api/v1/segments/{class}/members"),
            Some(_) => bail!("segment/CLASS needs a class"),
            None if name.chars().all(|c| c.is_ascii_lowercase() || c == '-') => {
                format!("/api/v1/reports/{name}")
            }
            None => bail!("unknown report {name:?}"),
        },
    })
}

fn encode(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// Run `hq-hub report`.
pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let agent = agent();
    let token = token(&agent, &args)?;
    let mut query: Vec<(String, String)> = Vec::new();
    for (key, value) in [("from", &args.from), ("to", &args.to), ("by", &args.by)] {
        if let Some(value) = value {
            query.push((key.to_owned(), value.clone()));
        }
    }
    for param in &args.params {
        let Some((key, value)) = param.split_once('=') else {
            bail!("--param {param:?} is not KEY=VALUE");
        };
        query.push((key.to_owned(), value.to_owned()));
    }
    let format = match (&args.out, args.print.as_str()) {
        (Some(out), _) if out.extension().is_some_and(|e| e == "xlsx") => "xlsx",
        (Some(_), _) | (None, "csv") => "csv",
        (None, "table" | "json") => "json",
        (None, other) => bail!("--print {other:?} is not table, csv or json"),
    };
    query.push(("format".into(), format.into()));
    let url = format!(
        "{}{}?{}",
        args.hub.trim_end_matches('/'),
        path_of(&args.name)?,
        query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    );
    let mut response = agent
        .get(&url)
        .header("Authorization", format!("Bearer {token}"))
        .call()
        .with_context(|| format!("cannot reach {url}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()?;
    if status != 200 {
        bail!("{}", error_text(status, &bytes));
    }
    if let Some(out) = &args.out {
        std::fs::write(out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
        eprintln!("wrote {}", out.display());
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    if format == "csv" || args.print == "json" {
        stdout.write_all(&bytes)?;
        return Ok(());
    }
    let value: serde_json::Value = serde_json::from_slice(&bytes)?;
    let table_value = value.get("counts").cloned().unwrap_or(value.clone());
    if let Some(object) = value.as_object().filter(|o| o.contains_key("counts")) {
        for (key, v) in object.iter().filter(|(k, _)| *k != "counts") {
            writeln!(stdout, "{key}: {v}")?;
        }
    }
    let table: Table = serde_json::from_value(table_value).context("answer is not a table")?;
    write!(stdout, "{}", render(&table))?;
    if let Some(total) = table.total {
        writeln!(stdout, "({} of {total} rows)", table.rows.len())?;
    }
    Ok(())
}

/// A plain text table: columns padded to their widest cell, numbers right-aligned.
pub fn render(table: &Table) -> String {
    let width = |text: &str| {
        text.chars()
            .map(|c| if c.is_ascii() { 1 } else { 2 })
            .sum::<usize>()
    };
    let mut widths: Vec<usize> = table.columns.iter().map(|c| width(c)).collect();
    for row in &table.rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(width(&cell.text()));
            }
        }
    }
    let mut out = String::new();
    let pad = |out: &mut String, text: &str, w: usize, right: bool| {
        let fill = " ".repeat(w.saturating_sub(width(text)));
        if right {
            out.push_str(&fill);
            out.push_str(text);
        } else {
            out.push_str(text);
            out.push_str(&fill);
        }
    };
    for (i, column) in table.columns.iter().enumerate() {
        if i > 0 {
            out.push_str("  ");
        }
        pad(&mut out, column, widths[i], false);
    }
    out.push('\n');
    for row in &table.rows {
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let w = widths.get(i).copied().unwrap_or(0);
            pad(&mut out, &cell.text(), w, matches!(cell, Cell::Int(_)));
        }
        out.push('\n');
    }
    out
}

//! `hq-hub catalog import FILE` / `hq-hub catalog export [--out FILE]`: clients of a running
//! hub (the hub's writer relays what it authors at once; a second writer on the data directory
//! would not). The import uploads the file with a progress bar and prints the hub's per-row
//! error report when the file is refused (nothing is applied then).

use anyhow::{Context, bail};
use std::io::{Read, Write};
use std::path::PathBuf;

use crate::reports::cli::{agent, error_text, login};

#[derive(Debug, clap::Args)]
pub struct CatalogArgs {
    #[command(subcommand)]
    pub command: CatalogCommand,
    /// The hub's HTTP address.
    #[arg(
        long,
        global = true,
        env = "HQ_HUB_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub hub: String,
    /// Log in as this user (the password comes from --password, HQ_HUB_PASSWORD or stdin).
    #[arg(long, global = true, env = "HQ_HUB_USER")]
    pub user: Option<String>,
    #[arg(long, global = true, env = "HQ_HUB_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// An API token instead of a login.
    #[arg(long, global = true, env = "HQ_HUB_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum CatalogCommand {
    /// Import a CSV file (columns sku,barcode,name,category,price,member_price,active,bundle;
    /// prices in yuan): every row or none.
    Import { file: PathBuf },
    /// Write the whole catalog as CSV (the import's format) to --out, or to stdout.
    Export {
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Counts bytes read into a progress bar.
struct Progress<R> {
    inner: R,
    bar: indicatif::ProgressBar,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bar.inc(n as u64);
        Ok(n)
    }
}

pub fn run(args: CatalogArgs) -> anyhow::Result<()> {
    let agent = agent();
    let token = login(
        &agent,
        &args.hub,
        args.user.as_deref(),
        args.password.as_deref(),
        args.token.as_deref(),
    )?;
    let base = args.hub.trim_end_matches('/');
    match args.command {
        CatalogCommand::Import { file } => {
            let size = std::fs::metadata(&file)
                .with_context(|| format!("cannot read {}", file.display()))?
                .len();
            if size > crate::catalog::import_bytes_max as u64 {
                bail!(
                    "{} is {size} bytes; an import takes at most {}",
                    file.display(),
                    crate::catalog::import_bytes_max
                );
            }
            let opened = std::fs::File::open(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let bar = indicatif::ProgressBar::new(size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} ({eta})",
                )
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .progress_chars("=> "),
            );
            bar.set_message("uploading");
            let mut reader = Progress {
                inner: std::io::BufReader::new(opened),
                bar: bar.clone(),
            };
            let url = format!("{base}/api/v1/catalog/import");
            let started = std::time::Instant::now();
            let mut response = agent
                .post(&url)
                .header("Authorization", &format!("Bearer {token}"))
                .content_type("text/csv")
                .send(ureq::SendBody::from_reader(&mut reader))
                .with_context(|| format!("cannot reach {url}"))?;
            bar.finish_and_clear();
            let status = response.status().as_u16();
            let bytes = response.body_mut().read_to_vec()?;
            let answer: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
            if status == 200 {
                let answer = answer.context("the hub's answer is not JSON")?;
                println!(
                    "imported {} rows in {:.1} s: {} created, {} changed, {} unchanged",
                    answer["rows"],
                    started.elapsed().as_secs_f64(),
                    answer["created"],
                    answer["changed"],
                    answer["unchanged"]
                );
                return Ok(());
            }
            if let Some(errors) = answer
                .as_ref()
                .and_then(|a| a.get("errors"))
                .and_then(|e| e.as_array())
            {
                let stderr = std::io::stderr();
                let mut out = stderr.lock();
                for error in errors {
                    writeln!(
                        out,
                        "line {}: {}: {} ({})",
                        error["line"],
                        error["field"].as_str().unwrap_or(""),
                        error["message"].as_str().unwrap_or(""),
                        error["code"].as_str().unwrap_or(""),
                    )?;
                }
            }
            bail!("{}", error_text(status, &bytes));
        }
        CatalogCommand::Export { out } => {
            let url = format!("{base}/api/v1/catalog/export");
            let mut response = agent
                .get(&url)
                .header("Authorization", &format!("Bearer {token}"))
                .call()
                .with_context(|| format!("cannot reach {url}"))?;
            let status = response.status().as_u16();
            let bytes = response
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_vec()?;
            if status != 200 {
                bail!("{}", error_text(status, &bytes));
            }
            match out {
                Some(path) => {
                    std::fs::write(&path, &bytes)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                    eprintln!("wrote {}", path.display());
                }
                None => std::io::stdout().lock().write_all(&bytes)?,
            }
            Ok(())
        }
    }
}

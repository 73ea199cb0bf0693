//! The data directory: `store.toml` (identity and settings) and `store.db` (SQLite).

use anyhow::{Context, bail};
use chainsync_core::StoreId;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const config_file_name: &str = "store.toml";
pub const database_file_name: &str = "store.db";
pub const default_listen: &str = "127.0.0.1:8180";
/// The enrollment bundle from `hq-hub enroll`, copied here by `init --bundle`.
pub const bundle_file_name: &str = "enrollment.toml";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub store_id: StoreId,
    pub name: String,
    /// HTTP listen address; `--listen` and `STORE_NODE_LISTEN` override it.
    #[serde(default = "default_listen_string")]
    pub listen: String,
    /// Where outbox messages are POSTed (none: they wait in the outbox);
    /// `STORE_NODE_WEBHOOK_URL` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// Sell below zero stock (flagged in the answer and the stock view) or refuse with 409
    /// `insufficient_stock`; `STORE_NODE_ALLOW_NEGATIVE_STOCK` overrides it. Default: allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_negative_stock: Option<bool>,
    /// The store's time zone as a UTC offset (`+08:00`, `-05:30`, `UTC+8`; default `+08:00`),
    /// used for birthdays, check-in days and every other local-date rule;
    /// `STORE_NODE_UTC_OFFSET` and `--utc-offset` override it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
}

fn default_listen_string() -> String {
    default_listen.to_owned()
}

pub fn config_path(data_dir: &Path) -> PathBuf {
    data_dir.join(config_file_name)
}

pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join(database_file_name)
}

impl StoreConfig {
    pub fn load(data_dir: &Path) -> anyhow::Result<StoreConfig> {
        let path = config_path(data_dir);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "cannot read {}: run `store-node init` first",
                path.display()
            )
        })?;
        let config: StoreConfig =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        if config.name.trim().is_empty() {
            bail!("{}: name may not be empty", path.display());
        }
        Ok(config)
    }

    pub fn write_new(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = config_path(data_dir);
        if path.exists() {
            bail!(
                "{} already exists: this data directory is initialized",
                path.display()
            );
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let text = toml::to_string_pretty(self)?;
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// The store's UTC offset in seconds: `given` (flag or environment) else the config's, else
/// UTC+8. A malformed offset is an error naming the accepted forms.
pub fn utc_offset_seconds(config: &StoreConfig, given: Option<&str>) -> anyhow::Result<i32> {
    let text = given
        .map(str::to_owned)
        .or_else(|| config.utc_offset.clone())
        .filter(|t| !t.trim().is_empty());
    match text {
        None => Ok(chainsync_core::engagement::default_utc_offset_seconds),
        Some(text) => chainsync_core::engagement::parse_utc_offset(&text).with_context(|| {
            format!(
                "utc_offset {text:?} is not a UTC offset from -12:00 to +14:00 \
                 (write it like +08:00, -05:30 or UTC+8)"
            )
        }),
    }
}

pub fn bundle_path(data_dir: &Path) -> PathBuf {
    data_dir.join(bundle_file_name)
}

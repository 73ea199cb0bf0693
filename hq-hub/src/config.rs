//! The hub's data directory.

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const config_file_name: &str = "hub.toml";
pub const database_file_name: &str = "hub.db";
pub const ca_cert_file_name: &str = "ca.pem";
pub const ca_key_file_name: &str = "ca.key";
pub const hub_cert_file_name: &str = "hub.pem";
pub const hub_key_file_name: &str = "hub.key";

pub const default_quic_listen: &str = "0.0.0.0:7443";
pub const default_http_listen: &str = "127.0.0.1:8080";
pub const default_public_addr: &str = "127.0.0.1:7443";
pub const default_server_name: &str = "hub.chainsync";

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// UDP address the hub listens on for stores; `--quic-listen` overrides.
    pub quic_listen: String,
    /// HTTP address of HQ's API; `--http-listen` overrides.
    pub http_listen: String,
    /// The address stores dial (written into enrollment bundles).
    pub public_addr: String,
    /// The name in the hub's certificate that stores check.
    pub server_name: String,
}

impl HubConfig {
    pub fn load(data_dir: &Path) -> anyhow::Result<HubConfig> {
        let path = data_dir.join(config_file_name);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}: run `hq-hub init` first", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))
    }

    pub fn write_new(&self, data_dir: &Path) -> anyhow::Result<()> {
        let path = data_dir.join(config_file_name);
        if path.exists() {
            bail!(
                "{} already exists: this data directory is initialized",
                path.display()
            );
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        std::fs::write(&path, toml::to_string_pretty(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

pub fn path(data_dir: &Path, file: &str) -> PathBuf {
    data_dir.join(file)
}

/// Write a secret file readable only by its owner.
pub fn write_secret(path: &Path, contents: &str) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("cannot write {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

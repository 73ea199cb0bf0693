//! The enrollment bundle: everything a store needs to reach the hub, in one TOML file written
//! by `hq-hub enroll` and read by `store-node init --bundle`. It holds the store's private key:
//! it is written readable by its owner only.

use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentBundle {
    /// Bundle format version.
    pub version: u32,
    pub store_id: String,
    pub store_name: String,
    pub region: String,
    /// `host:port` (UDP) of the hub.
    pub hub_addr: String,
    /// The name in the hub's certificate.
    pub hub_server_name: String,
    pub ca_cert_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

pub const bundle_version: u32 = 1;
/// Largest bundle file accepted, in bytes.
pub const bundle_bytes_max: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is larger than {bundle_bytes_max} bytes: not an enrollment bundle")]
    TooLarge { path: String },
    #[error("{path} is not a valid enrollment bundle: {reason}")]
    Invalid { path: String, reason: String },
}

impl EnrollmentBundle {
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    pub fn write_to(&self, path: &Path) -> Result<(), BundleError> {
        let show = path.display().to_string();
        let text = self.to_toml().map_err(|e| BundleError::Invalid {
            path: show.clone(),
            reason: e.to_string(),
        })?;
        write_private(path, &text).map_err(|source| BundleError::Write { path: show, source })
    }

    pub fn read_from(path: &Path) -> Result<EnrollmentBundle, BundleError> {
        let show = path.display().to_string();
        let size = std::fs::metadata(path)
            .map_err(|source| BundleError::Read {
                path: show.clone(),
                source,
            })?
            .len();
        if size > bundle_bytes_max {
            return Err(BundleError::TooLarge { path: show });
        }
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::Read {
            path: show.clone(),
            source,
        })?;
        let bundle: EnrollmentBundle = toml::from_str(&text).map_err(|e| BundleError::Invalid {
            path: show.clone(),
            reason: e.to_string(),
        })?;
        if bundle.version != bundle_version {
            return Err(BundleError::Invalid {
                path: show,
                reason: format!(
                    "bundle version {} (this build reads {bundle_version})",
                    bundle.version
                ),
            });
        }
        for (field, value) in [
            ("ca_cert_pem", &bundle.ca_cert_pem),
            ("cert_pem", &bundle.cert_pem),
            ("key_pem", &bundle.key_pem),
        ] {
            if !value.contains("-----BEGIN ") {
                return Err(BundleError::Invalid {
                    path: show,
                    reason: format!("{field} is not PEM"),
                });
            }
        }
        Ok(bundle)
    }
}

/// Write a file readable and writable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EnrollmentBundle {
        EnrollmentBundle {
            version: bundle_version,
            store_id: "sh-001".into(),
            store_name: "上海一号店".into(),
            region: "east".into(),
            hub_addr: "127.0.0.1:7443".into(),
            hub_server_name: "hub.chainsync".into(),
            ca_cert_pem: "-----BEGIN CERTIFICATE-----\nx\n".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----\ny\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nz\n".into(),
        }
    }

    #[test]
    fn bundles_round_trip_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.bundle");
        sample().write_to(&path).unwrap();
        assert_eq!(EnrollmentBundle::read_from(&path).unwrap(), sample());
        std::fs::write(&path, "store_id = 3\n").unwrap();
        assert!(matches!(
            EnrollmentBundle::read_from(&path),
            Err(BundleError::Invalid { .. })
        ));
        std::fs::write(&path, vec![b'a'; (bundle_bytes_max + 1) as usize]).unwrap();
        assert!(matches!(
            EnrollmentBundle::read_from(&path),
            Err(BundleError::TooLarge { .. })
        ));
        assert!(EnrollmentBundle::read_from(&dir.path().join("missing")).is_err());
    }
}

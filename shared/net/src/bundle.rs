//! The enrollment bundle: everything a store needs to reach the hub, in one TOML file written
//! by `hq-hub enroll` and read by `store-node init --bundle`. It holds the store's private key:
//! it is written readable by its owner only (mode 0600 on unix, also when it replaces a file).
//!
//! Format (UTF-8 TOML, at most [`bundle_bytes_max`] bytes, unknown keys refused):
//!
//! ```toml
//! version = 1                       # bundle_version
//! store_id = "sh-001"               # also the SAN `sh-001.stores.chainsync` of cert_pem
//! store_name = "上海一号店"
//! region = "east"
//! hub_addr = "203.0.113.7:7443"     # host:port (UDP) of the hub
//! hub_server_name = "hub.chainsync" # the name in the hub's certificate
//! ca_cert_pem = """-----BEGIN CERTIFICATE-----..."""  # the HQ CA: the only trusted root
//! cert_pem = """-----BEGIN CERTIFICATE-----..."""     # the store's client certificate
//! key_pem = """-----BEGIN PRIVATE KEY-----..."""      # its PKCS#8 private key
//! ```
//!
//! Reading checks more than the syntax, so a damaged or mismatched bundle is refused at
//! `store-node init`, not at the first sync: the certificate must be issued by the bundle's CA
//! for the bundle's store id, and the key must belong to it. The local clock is not consulted
//! (an expired certificate is the hub's to refuse; the store keeps selling offline).

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::Path;

use crate::{pki, tls};

pub use crate::limits::bundle_bytes_max;

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl std::fmt::Debug for EnrollmentBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentBundle")
            .field("version", &self.version)
            .field("store_id", &self.store_id)
            .field("store_name", &self.store_name)
            .field("region", &self.region)
            .field("hub_addr", &self.hub_addr)
            .field("hub_server_name", &self.hub_server_name)
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

pub const bundle_version: u32 = 1;

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

    /// Writes the bundle, mode 0600, after checking it as [`EnrollmentBundle::read_from`] would.
    pub fn write_to(&self, path: &Path) -> Result<(), BundleError> {
        let show = path.display().to_string();
        let invalid = |reason: String| BundleError::Invalid {
            path: show.clone(),
            reason,
        };
        self.check().map_err(invalid)?;
        let text = self.to_toml().map_err(|e| invalid(e.to_string()))?;
        write_private(path, &text).map_err(|source| BundleError::Write { path: show, source })
    }

    /// Reads and checks a bundle. Never panics on bad input: every problem is a [`BundleError`]
    /// naming the file and what is wrong.
    pub fn read_from(path: &Path) -> Result<EnrollmentBundle, BundleError> {
        let show = path.display().to_string();
        let read_error = |source| BundleError::Read {
            path: show.clone(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_error)?;
        let mut bytes = Vec::new();
        file.take(bundle_bytes_max + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > bundle_bytes_max {
            return Err(BundleError::TooLarge { path: show });
        }
        let invalid = |reason: String| BundleError::Invalid {
            path: show.clone(),
            reason,
        };
        let text = String::from_utf8(bytes).map_err(|_| invalid("not UTF-8 text".into()))?;
        let bundle: EnrollmentBundle = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        bundle.check().map_err(invalid)?;
        Ok(bundle)
    }

    /// What is wrong with this bundle, if anything.
    fn check(&self) -> Result<(), String> {
        if self.version != bundle_version {
            return Err(format!(
                "bundle version {} (this build reads {bundle_version})",
                self.version
            ));
        }
        pki::check_store_id(&self.store_id).map_err(|e| e.to_string())?;
        for (field, value) in [
            ("store_name", &self.store_name),
            ("region", &self.region),
            ("hub_addr", &self.hub_addr),
            ("hub_server_name", &self.hub_server_name),
        ] {
            if value.trim().is_empty() {
                return Err(format!("{field} is empty"));
            }
        }
        pki::certificates_from_pem(&self.ca_cert_pem).map_err(|e| format!("ca_cert_pem: {e}"))?;
        let certs =
            pki::certificates_from_pem(&self.cert_pem).map_err(|e| format!("cert_pem: {e}"))?;
        let leaf = certs.first().ok_or("cert_pem holds no certificate")?;
        // Checked as of the certificate's own start, not the local clock: an offline store with
        // a wrong clock must still start; whether the certificate is in date is the hub's call.
        let issued = pki::certificate_not_before(leaf).map_err(|e| format!("cert_pem: {e}"))?;
        let certified_store =
            tls::verify_store_certificate_at(&self.ca_cert_pem, &self.cert_pem, issued)
                .map_err(|e| format!("cert_pem is not a store certificate of ca_cert_pem: {e}"))?;
        if certified_store != self.store_id {
            return Err(format!(
                "cert_pem is for store {certified_store:?}, the bundle for store {:?}",
                self.store_id
            ));
        }
        pki::check_key_matches(leaf, &self.key_pem).map_err(|e| format!("key_pem: {e}"))?;
        Ok(())
    }
}

/// Write a file readable and writable by its owner only (on unix, mode 0600 is also set on a
/// file that existed before with wider permissions).
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
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::CertificateAuthority;

    fn sample() -> EnrollmentBundle {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let store = ca.issue_store_certificate("sh-001").unwrap();
        EnrollmentBundle {
            version: bundle_version,
            store_id: "sh-001".into(),
            store_name: "上海一号店".into(),
            region: "east".into(),
            hub_addr: "127.0.0.1:7443".into(),
            hub_server_name: "hub.chainsync".into(),
            ca_cert_pem: ca.cert_pem.clone(),
            cert_pem: store.cert_pem,
            key_pem: store.key_pem,
        }
    }

    fn invalid_reason(path: &Path) -> String {
        match EnrollmentBundle::read_from(path) {
            Err(BundleError::Invalid { reason, .. }) => reason,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn bundles_round_trip_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.bundle");
        let bundle = sample();
        bundle.write_to(&path).unwrap();
        assert_eq!(EnrollmentBundle::read_from(&path).unwrap(), bundle);
        assert!(!format!("{bundle:?}").contains("PRIVATE KEY"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&path), 0o600);
            // Replacing a file that was world-readable tightens it too.
            let replaced = dir.path().join("old.bundle");
            std::fs::write(&replaced, "old").unwrap();
            std::fs::set_permissions(&replaced, std::fs::Permissions::from_mode(0o644)).unwrap();
            bundle.write_to(&replaced).unwrap();
            assert_eq!(mode(&replaced), 0o600);
        }
    }

    #[test]
    fn an_expired_certificate_still_reads_but_does_not_verify_now() {
        let (ca, ca_key) = CertificateAuthority::generate("test CA").unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec![crate::pki::store_dns_name("sh-001")]).unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(2001, 1, 1);
        params.not_after = rcgen::date_time_ymd(2002, 1, 1);
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &ca.cert_pem,
            rcgen::KeyPair::from_pem(&ca_key).unwrap(),
        )
        .unwrap();
        let expired = params.signed_by(&key, &issuer).unwrap();
        let bundle = EnrollmentBundle {
            cert_pem: expired.pem(),
            key_pem: key.serialize_pem(),
            ca_cert_pem: ca.cert_pem.clone(),
            ..sample()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.bundle");
        bundle.write_to(&path).unwrap();
        assert_eq!(EnrollmentBundle::read_from(&path).unwrap(), bundle);
        let now = tls::verify_store_certificate(&bundle.ca_cert_pem, &bundle.cert_pem);
        assert!(now.unwrap_err().to_string().contains("expired"));
    }

    #[test]
    fn damaged_bundles_are_errors_not_panics() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.bundle");
        let good = sample().to_toml().unwrap();

        std::fs::write(&path, "store_id = 3\n").unwrap();
        invalid_reason(&path);
        std::fs::write(&path, [0xff, 0xfe, 0x00, 0x80]).unwrap();
        assert_eq!(invalid_reason(&path), "not UTF-8 text");
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        invalid_reason(&path);
        std::fs::write(&path, "").unwrap();
        invalid_reason(&path);
        std::fs::write(&path, format!("{good}\nextra = 1\n")).unwrap();
        assert!(invalid_reason(&path).contains("extra"));
        std::fs::write(&path, good.replace("version = 1", "version = 2")).unwrap();
        assert!(invalid_reason(&path).contains("version 2"));

        // A flipped character inside the certificate's base64.
        let bundle = sample();
        let body_start = bundle.cert_pem.find('\n').unwrap() + 20;
        let mut damaged = bundle.clone();
        let flipped = if &bundle.cert_pem[body_start..=body_start] == "A" {
            "B"
        } else {
            "A"
        };
        damaged
            .cert_pem
            .replace_range(body_start..=body_start, flipped);
        std::fs::write(&path, damaged.to_toml().unwrap()).unwrap();
        assert!(invalid_reason(&path).contains("cert_pem"));

        let mut wrong_store = bundle.clone();
        wrong_store.store_id = "sh-002".into();
        std::fs::write(&path, wrong_store.to_toml().unwrap()).unwrap();
        assert!(invalid_reason(&path).contains("sh-002"));

        let other = sample();
        let mut foreign_ca = bundle.clone();
        foreign_ca.ca_cert_pem = other.ca_cert_pem.clone();
        std::fs::write(&path, foreign_ca.to_toml().unwrap()).unwrap();
        assert!(invalid_reason(&path).contains("cert_pem"));

        let mut wrong_key = bundle.clone();
        wrong_key.key_pem = other.key_pem.clone();
        std::fs::write(&path, wrong_key.to_toml().unwrap()).unwrap();
        assert!(invalid_reason(&path).contains("key_pem"));
        assert!(matches!(
            wrong_key.write_to(&dir.path().join("never")),
            Err(BundleError::Invalid { .. })
        ));
        assert!(!dir.path().join("never").exists());

        std::fs::write(&path, vec![b'a'; (bundle_bytes_max + 1) as usize]).unwrap();
        assert!(matches!(
            EnrollmentBundle::read_from(&path),
            Err(BundleError::TooLarge { .. })
        ));
        assert!(matches!(
            EnrollmentBundle::read_from(&dir.path().join("missing")),
            Err(BundleError::Read { .. })
        ));
        assert!(matches!(
            EnrollmentBundle::read_from(dir.path()),
            Err(BundleError::Read { .. })
        ));
    }
}

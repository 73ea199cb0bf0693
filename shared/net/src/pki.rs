//! Certificates. The hub is the chain's certificate authority: it signs its own server
//! certificate and one client certificate per store. A store's identity is the DNS name
//! `<store-id>.stores.chainsync` among its certificate's subject alternative names (the store id
//! is also its common name, for people reading the certificate; only the SAN is authoritative).
//!
//! Keys are ECDSA P-256 (rcgen's default) and serialize as PKCS#8 PEM.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use std::time::Duration;

pub use crate::limits::store_id_bytes_max;

/// Suffix of the DNS name that carries a store's identity.
pub const store_name_suffix: &str = ".stores.chainsync";

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("certificate cannot be read: {0}")]
    Parse(String),
    #[error("certificate names no store (expected a DNS name ending in {store_name_suffix})")]
    NoStoreIdentity,
    #[error("certificate names more than one store")]
    AmbiguousStoreIdentity,
    #[error(
        "invalid store id {0:?}: 1 to {store_id_bytes_max} bytes of a-z, 0-9 and '-', \
         not starting or ending with '-'"
    )]
    InvalidStoreId(String),
    #[error("the private key does not belong to the certificate")]
    KeyMismatch,
    #[error("the certificate is not a certificate authority")]
    NotCa,
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertifiedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedKey")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<secret>")
            .finish()
    }
}

/// The HQ certificate authority.
pub struct CertificateAuthority {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// A new CA with a fresh ECDSA P-256 key. Returns it and its key PEM (keep it secret; it is
    /// also available later through [`CertificateAuthority::key_pem`]).
    pub fn generate(common_name: &str) -> Result<(CertificateAuthority, String), PkiError> {
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key)?;
        let cert_pem = cert.pem();
        let issuer = Issuer::new(params, key);
        Ok((CertificateAuthority { cert_pem, issuer }, key_pem))
    }

    /// Load a CA from its certificate and key PEM. Refuses a certificate that is not a CA and a
    /// key that does not belong to it (certificates signed with it would never verify).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let der = first_certificate(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::Parse(e.to_string()))?;
        if !cert.is_ca() {
            return Err(PkiError::NotCa);
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(PkiError::KeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The CA's private key, PEM (PKCS#8). Secret.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// The hub's server certificate for the given subject alternative names: DNS names, or IP
    /// addresses written as such (`"127.0.0.1"` becomes an IP SAN).
    pub fn issue_hub_certificate(&self, names: &[String]) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.to_vec())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "chainsync hub");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A store's client certificate: common name `<store_id>`, SAN `<store_id>.stores.chainsync`,
    /// usable for client authentication only.
    pub fn issue_store_certificate(&self, store_id: &str) -> Result<CertifiedKey, PkiError> {
        check_store_id(store_id)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![store_dns_name(store_id)])?;
        params.distinguished_name.push(DnType::CommonName, store_id);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A store id usable in a certificate: one DNS label of lower-case letters, digits and '-'.
/// (chainsync-core's `StoreId` is stricter in length; every valid `StoreId` passes.)
pub fn check_store_id(store_id: &str) -> Result<(), PkiError> {
    let valid = !store_id.is_empty()
        && store_id.len() <= store_id_bytes_max
        && store_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !store_id.starts_with('-')
        && !store_id.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(PkiError::InvalidStoreId(store_id.to_owned()))
    }
}

/// The DNS name that carries a store's identity in its certificate.
pub fn store_dns_name(store_id: &str) -> String {
    format!("{store_id}{store_name_suffix}")
}

/// The store id a (verified) certificate was issued for: the one SAN DNS name ending in
/// `.stores.chainsync`. Certificates naming no store, or several, are refused.
pub fn store_id_from_certificate(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(e.to_string()))?
        .ok_or(PkiError::NoStoreIdentity)?;
    let mut found: Option<&str> = None;
    for name in &names.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name
            && let Some(store_id) = dns.strip_suffix(store_name_suffix)
        {
            if found.is_some() {
                return Err(PkiError::AmbiguousStoreIdentity);
            }
            found = Some(store_id);
        }
    }
    let store_id = found.ok_or(PkiError::NoStoreIdentity)?;
    check_store_id(store_id)?;
    Ok(store_id.to_owned())
}

/// The certificates in a PEM text, in order; an error if there are none or one is damaged.
pub fn certificates_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Parse(format!("PEM: {e}")))?;
    if certs.is_empty() {
        return Err(PkiError::Parse("no certificate in PEM text".into()));
    }
    Ok(certs)
}

fn first_certificate(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    certificates_from_pem(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| PkiError::Parse("no certificate in PEM text".into()))
}

/// Checks that `key_pem` is a usable private key and that it belongs to the certificate `der`.
pub fn check_key_matches(der: &[u8], key_pem: &str) -> Result<(), PkiError> {
    let key = KeyPair::from_pem(key_pem)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    if cert.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(PkiError::KeyMismatch);
    }
    Ok(())
}

/// The start of a certificate's validity.
pub fn certificate_not_before(der: &[u8]) -> Result<UnixTime, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let seconds = cert.validity().not_before.timestamp();
    Ok(UnixTime::since_unix_epoch(Duration::from_secs(
        u64::try_from(seconds).unwrap_or(0),
    )))
}

/// The SAN entries for a hub reachable as `server_name`.
pub fn hub_names(server_name: &str) -> Vec<String> {
    vec![server_name.to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    #[test]
    fn store_identity_round_trips_through_a_certificate() {
        let (ca, ca_key) = CertificateAuthority::generate("test CA").unwrap();
        let store = ca.issue_store_certificate("sh-001").unwrap();
        assert_eq!(
            store_id_from_certificate(&der(&store.cert_pem)).unwrap(),
            "sh-001"
        );
        check_key_matches(&der(&store.cert_pem), &store.key_pem).unwrap();
        let hub = ca
            .issue_hub_certificate(&hub_names("hub.chainsync"))
            .unwrap();
        assert!(matches!(
            store_id_from_certificate(&der(&hub.cert_pem)),
            Err(PkiError::NoStoreIdentity)
        ));
        assert_eq!(ca.key_pem(), ca_key);
        let reloaded = CertificateAuthority::from_pem(&ca.cert_pem, &ca_key).unwrap();
        let again = reloaded.issue_store_certificate("sh-002").unwrap();
        assert_eq!(
            store_id_from_certificate(&der(&again.cert_pem)).unwrap(),
            "sh-002"
        );
        assert!(store_id_from_certificate(b"not a certificate").is_err());
        assert!(store_id_from_certificate(&[]).is_err());
    }

    #[test]
    fn hub_certificates_carry_ip_addresses_as_ip_names() {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        let hub = ca
            .issue_hub_certificate(&["hub.chainsync".into(), "127.0.0.1".into()])
            .unwrap();
        let der = der(&hub.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let names = cert.subject_alternative_name().unwrap().unwrap();
        assert!(names.value.general_names.iter().any(|name| matches!(
            name,
            x509_parser::extensions::GeneralName::IPAddress([127, 0, 0, 1])
        )));
    }

    #[test]
    fn bad_store_ids_are_refused_at_issue() {
        let (ca, _) = CertificateAuthority::generate("test CA").unwrap();
        for bad in ["", "-a", "a-", "A1", "a.b", "a b", "店", &"a".repeat(64)] {
            assert!(
                matches!(
                    ca.issue_store_certificate(bad),
                    Err(PkiError::InvalidStoreId(_))
                ),
                "{bad:?}"
            );
        }
        assert!(ca.issue_store_certificate(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn a_ca_needs_its_own_key_and_a_ca_certificate() {
        let (ca, ca_key) = CertificateAuthority::generate("test CA").unwrap();
        let (_, other_key) = CertificateAuthority::generate("other CA").unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&ca.cert_pem, &other_key),
            Err(PkiError::KeyMismatch)
        ));
        let store = ca.issue_store_certificate("sh-001").unwrap();
        assert!(matches!(
            CertificateAuthority::from_pem(&store.cert_pem, &store.key_pem),
            Err(PkiError::NotCa)
        ));
        assert!(CertificateAuthority::from_pem("garbage", &ca_key).is_err());
        assert!(CertificateAuthority::from_pem(&ca.cert_pem, "garbage").is_err());
        assert!(matches!(
            check_key_matches(&der(&store.cert_pem), &ca_key),
            Err(PkiError::KeyMismatch)
        ));
    }
}

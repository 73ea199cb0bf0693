//! Certificates. The hub is the chain's certificate authority: it signs its own server
//! certificate and one client certificate per store. A store's identity is the DNS name
//! `<store-id>.stores.chainsync` in its certificate's subject alternative names.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

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
}

/// A certificate and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The HQ certificate authority.
pub struct CertificateAuthority {
    pub cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl CertificateAuthority {
    /// A new CA with a fresh ECDSA P-256 key. Returns it and its key PEM (keep it secret).
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

    /// Load a CA from its certificate and key PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<CertificateAuthority, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(CertificateAuthority {
            cert_pem: cert_pem.to_owned(),
            issuer,
        })
    }

    /// The hub's server certificate for the given DNS names / IP addresses.
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

    /// A store's client certificate; its identity is `<store_id>.stores.chainsync`.
    pub fn issue_store_certificate(&self, store_id: &str) -> Result<CertifiedKey, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![format!("{store_id}{store_name_suffix}")])?;
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

/// The store id a (verified) certificate was issued for.
pub fn store_id_from_certificate(der: &[u8]) -> Result<String, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Parse(e.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(e.to_string()))?
        .ok_or(PkiError::NoStoreIdentity)?;
    for name in &names.value.general_names {
        if let x509_parser::extensions::GeneralName::DNSName(dns) = name
            && let Some(store_id) = dns.strip_suffix(store_name_suffix)
            && !store_id.is_empty()
        {
            return Ok(store_id.to_owned());
        }
    }
    Err(PkiError::NoStoreIdentity)
}

/// The SAN entries for a hub reachable as `server_name` (and any IP given).
pub fn hub_names(server_name: &str) -> Vec<String> {
    vec![server_name.to_owned()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn store_identity_round_trips_through_a_certificate() {
        let (ca, ca_key) = CertificateAuthority::generate("test CA").unwrap();
        let store = ca.issue_store_certificate("sh-001").unwrap();
        let der = CertificateDer::from_pem_slice(store.cert_pem.as_bytes()).unwrap();
        assert_eq!(store_id_from_certificate(&der).unwrap(), "sh-001");
        let hub = ca
            .issue_hub_certificate(&hub_names("hub.chainsync"))
            .unwrap();
        let der = CertificateDer::from_pem_slice(hub.cert_pem.as_bytes()).unwrap();
        assert!(matches!(
            store_id_from_certificate(&der),
            Err(PkiError::NoStoreIdentity)
        ));
        let reloaded = CertificateAuthority::from_pem(&ca.cert_pem, &ca_key).unwrap();
        assert!(reloaded.issue_store_certificate("sh-002").is_ok());
        assert!(store_id_from_certificate(b"not a certificate").is_err());
    }
}

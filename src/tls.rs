//! TLS on the public listener: PEM certificate and key → a rustls
//! `CertifiedKey`, checked once at `ssegate check` time and again on every
//! reload, and a certificate resolver that can be swapped under live traffic.
//!
//! The listener's rustls `ServerConfig` is built once at startup and kept;
//! it gets a `ResolvesServerCert` (`CertStore`) instead of file paths: each
//! handshake asks it for the current key, and SIGHUP swaps that key
//! atomically. Open connections keep the session keys they negotiated and
//! are not touched.

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which of the two files a problem is about, so that `check` can point at
/// the `tls.cert` or the `tls.key` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub part: Part,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Problem {}

fn cert_problem(message: String) -> Problem {
    Problem {
        part: Part::Cert,
        message,
    }
}

fn key_problem(message: String) -> Problem {
    Problem {
        part: Part::Key,
        message,
    }
}

/// Read, parse and cross-check a certificate chain and its private key.
/// Refuses what no browser would accept from us anyway: an unreadable or
/// non-PEM file, a key that does not sign for the certificate, and a
/// certificate outside its validity period.
pub(crate) fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, Problem> {
    let chain = read_chain(cert).map_err(cert_problem)?;
    let der_key = read_key(key).map_err(key_problem)?;
    // ok: index 0 exists, read_chain refuses an empty chain.
    check_validity(&chain[0]).map_err(|e| cert_problem(format!("{}: {e}", cert.display())))?;
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(der_key)
        .map_err(|e| key_problem(format!("{}: unusable private key: {e}", key.display())))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(key_problem(format!(
                "{} is not the private key of the certificate in {}",
                key.display(),
                cert.display()
            )))
        }
        Err(e) => Err(cert_problem(format!("{}: {e}", cert.display()))),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read_file(path)?;
    let chain = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate file: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        format!(
            "{}: no PEM private key in it (PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

fn check_validity(der: &CertificateDer<'_>) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let validity = cert.validity();
    if validity.not_after.timestamp() < now {
        return Err(format!("certificate expired on {}", validity.not_after));
    }
    if validity.not_before.timestamp() > now {
        return Err(format!(
            "certificate is not valid before {}",
            validity.not_before
        ));
    }
    Ok(())
}

/// The certificate the listener presents, swappable while it serves.
#[derive(Debug)]
pub(crate) struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    pub(crate) fn open(cert: &Path, key: &Path) -> Result<Arc<CertStore>, Problem> {
        let certified = load(cert, key)?;
        Ok(Arc::new(CertStore {
            current: ArcSwap::from_pointee(certified),
        }))
    }

    /// Read `cert` and `key` (the same files, or new ones a reloaded config
    /// names). On any problem the certificate in use stays: a half-written
    /// file during a renewal must not take the listener down.
    pub(crate) fn reload_from(&self, cert: &Path, key: &Path) -> Result<(), Problem> {
        let certified = load(cert, key)?;
        self.current.store(Arc::new(certified));
        Ok(())
    }

    /// Unix time at which the certificate now served expires (its leaf's
    /// notAfter), for `ssegate_tls_certificate_expiry_timestamp_seconds`.
    pub(crate) fn not_after(&self) -> Option<i64> {
        let current = self.current.load();
        let leaf = current.cert.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
        Some(cert.validity().not_after.timestamp())
    }

    /// The public listener's rustls settings: this store as the resolver,
    /// TLS 1.2 and 1.3 (ring), ALPN `h2` then `http/1.1`.
    pub(crate) fn server_config(
        self: &Arc<Self>,
    ) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_a_matching_pair_and_refuses_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (c1, k1) = pair(dir.path(), "a");
        let (_, k2) = pair(dir.path(), "b");
        assert!(load(&c1, &k1).is_ok());
        let e = load(&c1, &k2).unwrap_err();
        assert_eq!(e.part, Part::Key);
        assert!(e.message.contains("is not the private key"), "{e:?}");
    }

    #[test]
    fn names_the_file_that_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "hello\n").unwrap();
        let e = load(&junk, &k).unwrap_err();
        assert_eq!(e.part, Part::Cert);
        assert!(e.message.contains("junk.pem"), "{e:?}");
        let e = load(&c, &junk).unwrap_err();
        assert_eq!(e.part, Part::Key);
        let e = load(&dir.path().join("missing.crt"), &k).unwrap_err();
        assert!(e.message.contains("cannot read"), "{e:?}");
    }

    #[test]
    fn reload_keeps_the_old_key_on_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a");
        let store = CertStore::open(&c, &k).unwrap();
        let before = store.current.load_full();
        std::fs::write(&c, "garbage").unwrap();
        assert!(store.reload_from(&c, &k).is_err());
        assert!(Arc::ptr_eq(&before, &store.current.load_full()));
        let (c2, k2) = pair(dir.path(), "b");
        std::fs::rename(c2, &c).unwrap();
        std::fs::rename(k2, &k).unwrap();
        store.reload_from(&c, &k).unwrap();
        assert!(!Arc::ptr_eq(&before, &store.current.load_full()));
    }

    #[test]
    fn tells_when_the_served_certificate_expires() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = pair(dir.path(), "a");
        let store = CertStore::open(&c, &k).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        // rcgen's default validity runs to 4096.
        assert!(store.not_after().unwrap() > now + 365 * 86400);
    }
}

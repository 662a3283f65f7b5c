//! TLS client side (rustls with the ring provider): trust either a CA file
//! (`--ca`) or, for self-signed test certificates, anything (`--insecure`,
//! which still checks the handshake signatures).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How the server's certificate is checked.
#[derive(Debug, Clone)]
pub enum Trust {
    /// PEM file with the CA (or the self-signed certificate itself).
    CaFile(String),
    /// Accept any certificate (test certificates on loopback only).
    Insecure,
}

/// ALPN protocol names we offer.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_H1: &[u8] = b"http/1.1";

/// Build a client config offering exactly `alpn`.
pub fn client_config(trust: &Trust, alpn: &[u8]) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("tls: {e}"))?;
    let mut cfg = match trust {
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("--ca {path}: {e}"))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("--ca {path}: {e}"))?;
            if certs.is_empty() {
                return Err(format!("--ca {path}: no PEM certificate in it"));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("--ca {path}: bad certificate: {e}"))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
            .with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(cfg))
}

/// TLS handshake over `tcp`, bounded by `limit`. Returns the stream and
/// whether the server agreed to the ALPN protocol we offered.
pub async fn handshake(
    cfg: &Arc<ClientConfig>,
    host: &str,
    tcp: TcpStream,
    limit: Duration,
) -> Result<(TlsStream<TcpStream>, bool), String> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| format!("tls server name {host:?}: {e}"))?;
    let s = tokio::time::timeout(limit, TlsConnector::from(cfg.clone()).connect(name, tcp))
        .await
        .map_err(|_| "tls handshake timed out".to_string())?
        .map_err(|e| format!("tls handshake: {e}"))?;
    let agreed = match (s.get_ref().1.alpn_protocol(), cfg.alpn_protocols.first()) {
        (Some(got), Some(want)) => got == want.as_slice(),
        // A server without ALPN speaks HTTP/1.1.
        (None, Some(want)) => want.as_slice() == ALPN_H1,
        _ => true,
    };
    Ok((s, agreed))
}

/// Accepts any server certificate, but still verifies that the handshake is
/// signed by the key in it (so the TLS work on both sides is the real one).
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_configs() {
        let c = client_config(&Trust::Insecure, ALPN_H2).unwrap();
        assert_eq!(c.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(client_config(&Trust::CaFile("/nonexistent.pem".into()), ALPN_H1).is_err());
        let dir = std::env::temp_dir().join(format!("loadgen-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("empty.pem");
        std::fs::write(&p, "not a certificate\n").unwrap();
        let e = client_config(&Trust::CaFile(p.display().to_string()), ALPN_H1).unwrap_err();
        assert!(e.contains("no PEM certificate"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

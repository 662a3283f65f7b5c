//! TLS and HTTP/2 for tests: a throwaway CA that issues certificates for
//! 127.0.0.1/localhost (made fresh in each test with rcgen), reqwest clients
//! that trust only that CA, and a bare `h2` client so that a test controls
//! exactly which TCP connection its streams share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    pub pem: String,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("ssegate test CA {name}"));
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        TestCa { cert, key, pem }
    }

    /// A server certificate for 127.0.0.1 and localhost, written as
    /// `{name}.crt` / `{name}.key` in `dir`.
    pub fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.issue_with(dir, name, |_| {})
    }

    pub fn issue_with(
        &self,
        dir: &Path,
        name: &str,
        tweak: impl FnOnce(&mut rcgen::CertificateParams),
    ) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("ssegate test {name}"));
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// reqwest over rustls, trusting this CA only. `http1_only` offers just
    /// `http/1.1` in ALPN.
    pub fn reqwest(&self, http1_only: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .timeout(super::WAIT);
        if http1_only {
            b = b.http1_only();
        }
        b.build().unwrap()
    }

    /// As `reqwest`, for streams that outlive `WAIT`: only connecting is bounded.
    pub fn reqwest_streaming(&self, http1_only: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .connect_timeout(super::WAIT);
        if http1_only {
            b = b.http1_only();
        }
        b.build().unwrap()
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert.der().clone()).unwrap();
        roots
    }

    /// A TLS connection to 127.0.0.1:port offering only `h2` in ALPN.
    pub async fn connect_h2(
        &self,
        port: u16,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        self.connect_alpn(port, &[b"h2"]).await
    }

    /// A TLS connection to 127.0.0.1:port offering `alpn` (none: HTTP/1).
    pub async fn connect_alpn(
        &self,
        port: u16,
        alpn: &[&[u8]],
    ) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(self.roots())
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }
}

/// An HTTP/2 client on one connection we opened ourselves: every stream it
/// sends shares that connection. Generous windows, like a browser's.
pub async fn h2_client<T>(io: T) -> h2::client::SendRequest<bytes::Bytes>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 26)
        .handshake(io)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send
}

/// One response body on an h2 stream, read into text in the background.
pub struct H2Body {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub text: Arc<std::sync::Mutex<String>>,
    pub ended: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl H2Body {
    pub fn snapshot(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    pub fn has_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reset the stream (what a browser does when an EventSource closes).
    pub fn abort(self) {
        self.task.abort();
    }
}

impl Drop for H2Body {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// GET `path` as a new stream on `send`; waits for the response head.
pub async fn h2_get(
    send: &mut h2::client::SendRequest<bytes::Bytes>,
    authority: &str,
    scheme: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> H2Body {
    let mut req = http::Request::builder()
        .method("GET")
        .uri(format!("{scheme}://{authority}{path}"))
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).unwrap();
    let ready = tokio::time::timeout(super::WAIT, send.clone().ready())
        .await
        .expect("h2 stream slot within WAIT")
        .unwrap();
    *send = ready;
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(super::WAIT, resp)
        .await
        .expect("h2 response head within WAIT")
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let mut body = resp.into_body();
    let text = Arc::new(std::sync::Mutex::new(String::new()));
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (t2, e2) = (text.clone(), ended.clone());
    let task = tokio::spawn(async move {
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else { break };
            let _ = body.flow_control().release_capacity(chunk.len());
            t2.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk));
        }
        e2.store(true, std::sync::atomic::Ordering::Release);
    });
    H2Body {
        status,
        headers,
        text,
        ended,
        task,
    }
}

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

/// What an HTTPS backend saw: the SNI of each completed handshake.
#[derive(Clone, Default)]
pub struct TlsSeen {
    pub snis: Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

/// An HTTPS backend with a certificate of a test CA for `names`, speaking
/// HTTP/1.1 and HTTP/2 (chosen by ALPN), serving an axum app in a thread
/// of its own; stopped when dropped.
pub struct TlsBackend {
    pub addr: std::net::SocketAddr,
    pub seen: TlsSeen,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TlsBackend {
    pub fn start(ca: &TestCa, dir: &Path, names: &[&str], app: axum::Router) -> TlsBackend {
        use rustls::pki_types::pem::PemObject;
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let (cert, key) = ca.issue_with(dir, "tls-backend", |p| {
            *p = rcgen::CertificateParams::new(names).unwrap();
        });
        let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = TlsSeen::default();
        let seen2 = seen.clone();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (tcp, _) = tokio::select! {
                        a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                        _ = &mut stopped => return,
                    };
                    let (acceptor, app, seen) = (acceptor.clone(), app.clone(), seen2.clone());
                    tokio::spawn(async move {
                        // A client that does not trust the certificate ends here.
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let sni = tls.get_ref().1.server_name().map(str::to_string);
                        seen.snis.lock().unwrap().push(sni);
                        let service = hyper_util::service::TowerToHyperService::new(app);
                        let _ = hyper_util::server::conn::auto::Builder::new(
                            hyper_util::rt::TokioExecutor::new(),
                        )
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                    });
                }
            });
        });
        TlsBackend {
            addr,
            seen,
            stop: Some(stop),
        }
    }

    pub fn snis(&self) -> Vec<Option<String>> {
        self.seen.snis.lock().unwrap().clone()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// A route that answers what it was asked: method, path, HTTP version
/// and headers, as JSON.
pub fn echo_app() -> axum::Router {
    axum::Router::new().fallback(|req: axum::extract::Request| async move {
        let headers: std::collections::BTreeMap<String, String> = req
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let v = serde_json::json!({
            "method": req.method().to_string(),
            "uri": req.uri().path_and_query().map(|p| p.to_string()),
            "version": format!("{:?}", req.version()),
            "headers": headers,
        });
        ([("content-type", "application/json")], v.to_string())
    })
}

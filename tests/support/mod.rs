//! Test support: the real `ssegate` binary on free loopback ports, a real HTTP
//! backend (axum), an SSE client we did not write (`eventsource-stream` over
//! reqwest) and a raw-socket reader for byte-exact checks. Every wait is bounded.
#![allow(dead_code, unreachable_pub)]

pub mod browser;
pub mod chat;
pub mod faults;
pub mod replies;
pub mod tls;

use futures_util::StreamExt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(10);

/// A loopback port that was free a moment ago and not handed out before in
/// this test process (tests run in parallel and the OS may reuse a port).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut seen = HANDED_OUT.lock().unwrap();
    loop {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if !seen.contains(&port) {
            seen.push(port);
            return port;
        }
    }
}

pub fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// The prelude at the start of an SSE body: everything up to and including
/// its `:ok` comment block (`retry:`, the starting `id:`, `:ok`).
pub fn prelude_of(body: &str) -> &str {
    body.find(":ok\n\n")
        .map_or("", |i| &body[..i + ":ok\n\n".len()])
}

/// A tool a test needs is not installed: in CI (`CI` set) that is a
/// failure, since CI installs it; on a developer machine the caller skips
/// the test after this note saying how to install it.
pub fn missing_tool(tool: &str, install: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{tool} is missing and CI is set: it must be installed ({install})"
    );
    eprintln!("skipped: no {tool} ({install})");
}

/// Poll `f` until it is Some, or panic after `timeout` naming `what`.
pub async fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config body with the gateway's listen addresses added.
fn config_text(body: &str, port: u16, admin_port: u16) -> String {
    let has_admin = body.lines().any(|l| l.starts_with("admin:"));
    let mut text = format!("listen: 127.0.0.1:{port}\n");
    if has_admin {
        text.push_str(&body.replace(
            "admin:\n",
            &format!("admin:\n  listen: 127.0.0.1:{admin_port}\n"),
        ));
    } else {
        text.push_str(&format!("admin:\n  listen: 127.0.0.1:{admin_port}\n{body}"));
    }
    text
}

/// One `ssegate run` process; stopped (SIGKILL) when dropped.
pub struct Gateway {
    pub port: u16,
    pub admin_port: u16,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub child: Option<Child>,
    pub log_path: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ssegate")
}

impl Gateway {
    /// `body` is the config without `listen`/`admin.listen`, which are added.
    pub fn start(body: &str) -> Gateway {
        Self::start_with_env(body, &[])
    }

    pub fn start_with_env(body: &str, env: &[(&str, &str)]) -> Gateway {
        Self::start_with_args(body, env, &[])
    }

    /// With extra command line arguments after `run -c FILE`.
    pub fn start_with_args(body: &str, env: &[(&str, &str)], args: &[&str]) -> Gateway {
        // Another process may take a "free" port between our check and the
        // gateway's bind: try fresh ports a few times before failing.
        for _ in 0..3 {
            match Self::try_start(body, env, args) {
                Ok(gw) => return gw,
                Err(log) if log.contains("cannot listen") => continue,
                Err(log) => panic!("{log}"),
            }
        }
        panic!("no free ports for ssegate after 3 tries")
    }

    fn try_start(body: &str, env: &[(&str, &str)], args: &[&str]) -> Result<Gateway, String> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let admin_port = free_port();
        let text = config_text(body, port, admin_port);
        let config_path = dir.path().join("ssegate.yaml");
        std::fs::write(&config_path, &text).unwrap();
        let log_path = dir.path().join("ssegate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["run", "-c"])
            .arg(&config_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let mut gw = Gateway {
            port,
            admin_port,
            dir,
            config_path,
            child: Some(child),
            log_path,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !(port_open(port) && port_open(admin_port)) {
            if let Some(status) = gw.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!(
                    "ssegate exited early ({status}); config:\n{text}\nlog:\n{}",
                    gw.log()
                ));
            }
            assert!(
                Instant::now() < deadline,
                "ssegate did not listen within 20s; log:\n{}",
                gw.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(gw)
    }

    /// Write `body` (as for `start`) over the config file, send SIGHUP and
    /// wait until the gateway counted the reload; true if it was accepted.
    pub async fn reload(&self, body: &str) -> bool {
        std::fs::write(
            &self.config_path,
            config_text(body, self.port, self.admin_port),
        )
        .unwrap();
        let ok = r#"ssegate_config_reloads_total{result="ok"}"#;
        let err = r#"ssegate_config_reloads_total{result="error"}"#;
        let before = (self.metric(ok).await, self.metric(err).await);
        self.signal("-HUP");
        let deadline = Instant::now() + WAIT;
        loop {
            let now = (self.metric(ok).await, self.metric(err).await);
            if now.0 > before.0 {
                return true;
            }
            if now.1 > before.1 {
                return false;
            }
            assert!(
                Instant::now() < deadline,
                "no reload counted within {WAIT:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `upgrade`, then this (old) process exits 0 within 30 s: pingora's
    /// 5 s overlap, then its drain.
    pub fn take_over(&mut self, env: &[(&str, &str)]) -> Gateway {
        let new = self.upgrade(env);
        let exit = self.wait_exit(Duration::from_secs(30));
        assert_eq!(exit, Some(0), "old log:\n{}", self.log());
        new
    }

    /// `ssegate run --upgrade` on this gateway's config (and so its ports
    /// and upgrade socket), with `env`; returns once the new process has
    /// finished taking over (or given up), which it logs. The new process
    /// reads the config at start: keep `self` (its directory) alive.
    pub fn upgrade(&self, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("ssegate.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["run", "--upgrade", "-c"])
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        cmd.env("RUST_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut new = Gateway {
            port: self.port,
            admin_port: self.admin_port,
            dir,
            config_path: self.config_path.clone(),
            child: Some(cmd.spawn().unwrap()),
            log_path,
        };
        // pingora's 5 s of overlap, the handoff, then the listeners open.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = new.log();
            if [
                "streams adopted",
                "no stream handed over",
                "streams not adopted",
            ]
            .iter()
            .any(|l| log.contains(l))
            {
                return new;
            }
            if let Some(status) = new.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the new ssegate exited ({status}); log:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "no handoff within 30s; new log:\n{log}\nold log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Resident set size of the gateway, in bytes (from /proc).
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse().ok())
            .unwrap();
        kb * 1024
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Wait for the process to exit; its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn publish(&self, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = client()
            .post(self.admin("/publish"))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v = r.json().await.unwrap_or(serde_json::Value::Null);
        (status, v)
    }

    pub async fn publish_ok(&self, channel: &str, data: serde_json::Value) {
        let (s, v) = self
            .publish(serde_json::json!({"channel": channel, "data": data}))
            .await;
        assert_eq!(s, 200, "publish answered {s} {v}");
    }

    /// The Prometheus text exposition.
    pub async fn metrics_text(&self) -> String {
        client()
            .get(self.admin("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Prometheus sample value (sum over label sets matching `prefix`).
    pub async fn metric(&self, prefix: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

// ---------------------------------------------------------------------------
// SSE client we did not write: eventsource-stream over reqwest.

#[derive(Debug, Clone, PartialEq)]
pub struct Ev {
    pub event: String,
    pub data: String,
    pub id: String,
}

pub struct Sse {
    pub status: u16,
    pub version: reqwest::Version,
    pub headers: reqwest::header::HeaderMap,
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<Ev, String>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sse {
    pub async fn connect(url: &str) -> Sse {
        Self::connect_with(url, &[]).await
    }

    pub async fn connect_with(url: &str, headers: &[(&str, &str)]) -> Sse {
        Self::connect_using(&reqwest::Client::new(), url, headers).await
    }

    /// With a client of the test's choosing (TLS, HTTP/2, ...).
    pub async fn connect_using(
        client: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Sse {
        Self::try_connect_using(client, url, headers)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }

    /// `connect_using`, or why the request failed.
    pub async fn try_connect_using(
        client: &reqwest::Client,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Sse, String> {
        use eventsource_stream::Eventsource;
        let mut req = client.get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(WAIT, req.send())
            .await
            .map_err(|_| format!("connect timed out after {WAIT:?}"))?
            .map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let version = resp.version();
        let headers = resp.headers().clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let mut s = resp.bytes_stream().eventsource();
            while let Some(item) = s.next().await {
                let msg = item
                    .map(|e| Ev {
                        event: e.event,
                        data: e.data,
                        id: e.id,
                    })
                    .map_err(|e| e.to_string());
                if tx.send(msg).is_err() {
                    break;
                }
            }
            let _ = tx.send(Err("eof".into()));
        });
        Ok(Sse {
            status,
            version,
            headers,
            rx,
            task,
        })
    }

    pub async fn next(&mut self) -> Ev {
        match tokio::time::timeout(WAIT, self.rx.recv()).await {
            Ok(Some(Ok(ev))) => ev,
            Ok(Some(Err(e))) => panic!("stream ended: {e}"),
            Ok(None) => panic!("stream ended"),
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }

    /// The next event, or why there is none: "eof", a parse error, or
    /// "timeout" after `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Ev, String> {
        match tokio::time::timeout(timeout, self.rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err("eof".into()),
            Err(_) => Err("timeout".into()),
        }
    }

    pub async fn take(&mut self, n: usize) -> Vec<Ev> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// The stream ends (EOF) within `timeout`, after any events still queued.
    pub async fn ends(&mut self, timeout: Duration) -> Vec<Ev> {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(Ok(ev))) => seen.push(ev),
                Ok(Some(Err(_))) | Ok(None) => return seen,
                Err(_) => panic!("stream did not end within {timeout:?}; saw {seen:?}"),
            }
        }
    }

    /// No event arrives for `quiet`.
    pub async fn silent_for(&mut self, quiet: Duration) {
        if let Ok(Some(m)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            panic!("expected silence, got {m:?}");
        }
    }
}

impl Drop for Sse {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------
// Raw socket: exact bytes.

pub struct Raw {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub fn get(port: u16, target: &str, headers: &[(&str, &str)]) -> Raw {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Read until `pred(text so far)` holds; panics after `timeout`.
    pub fn read_until(
        &mut self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 65536];
        loop {
            let text = String::from_utf8_lossy(&self.buf).to_string();
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {text:?}"
            );
            if !self.read_some(&mut chunk, what) {
                let text = String::from_utf8_lossy(&self.buf).to_string();
                assert!(pred(&text), "EOF before {what}; got {text:?}");
                return text;
            }
        }
    }

    /// The server closes the connection within `timeout` (whatever else it sends).
    pub fn closes_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline {
            if !self.read_some(&mut chunk, "the close") {
                return true;
            }
        }
        false
    }

    /// One read into `buf`; false at EOF. A read timeout is no error.
    fn read_some(&mut self, chunk: &mut [u8], what: &str) -> bool {
        match self.stream.read(chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                true
            }
            Err(e) => panic!("read error {e} waiting for {what}"),
        }
    }

    /// Read whatever arrives during `window` (to show that nothing does).
    pub fn read_for(&mut self, window: Duration) -> String {
        let deadline = Instant::now() + window;
        let mut chunk = [0u8; 65536];
        while Instant::now() < deadline && self.read_some(&mut chunk, "quiet") {}
        String::from_utf8_lossy(&self.buf).to_string()
    }

    /// The body so far with chunked framing removed.
    pub fn body(&self) -> String {
        let text = String::from_utf8_lossy(&self.buf).to_string();
        let Some((_, mut rest)) = text.split_once("\r\n\r\n") else {
            return String::new();
        };
        let mut out = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
                break;
            };
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after.get(n + 2..).unwrap_or("");
        }
        out
    }
}

// ---------------------------------------------------------------------------
// A real HTTP backend.

/// (method, uri, headers) of one request the backend saw.
pub type SeenRequest = (String, String, Vec<(String, String)>);

#[derive(Clone, Default)]
pub struct BackendLog {
    pub requests: Arc<Mutex<Vec<SeenRequest>>>,
    pub bytes_in: Arc<AtomicU64>,
}

pub struct Backend {
    pub addr: SocketAddr,
    pub log: BackendLog,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Backend {
    /// Echo JSON for any path, plus /status/{code}, /big/{n} (streamed), /slow,
    /// /upload (counts streamed request bytes), /sleep/{ms} and /drip/{n}/{ms}
    /// (n lines, one every ms).
    pub fn start() -> Backend {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Backend {
        use axum::body::Body;
        use axum::extract::{Path, Request};
        use axum::response::{IntoResponse, Response};
        use axum::routing::{any, get, post};
        let log = BackendLog::default();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let addr = listener.local_addr().unwrap();
        let l2 = log.clone();
        let (stop_tx, thread) = serve_in_thread(listener, move || {
            let echo_log = l2.clone();
            let upload_log = l2.clone();
            let app = axum::Router::new()
                    .route(
                        "/status/{code}",
                        any(|Path(code): Path<u16>| async move {
                            (axum::http::StatusCode::from_u16(code).unwrap(), format!("backend status {code}"))
                        }),
                    )
                    .route(
                        "/big/{n}",
                        get(|Path(n): Path<usize>| async move {
                            let chunks = (0..n.div_ceil(65536)).map(move |i| {
                                let len = (n - i * 65536).min(65536);
                                Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a' + (i % 26) as u8; len]))
                            });
                            Response::builder()
                                .header("content-length", n.to_string())
                                .body(Body::from_stream(futures_util::stream::iter(chunks)))
                                .unwrap()
                        }),
                    )
                    .route(
                        "/drip/{n}/{ms}",
                        get(|Path((n, ms)): Path<(usize, u64)>| async move {
                            // n lines, one every ms: a streamed body whose
                            // parts must reach the client as they are sent.
                            let chunks = futures_util::stream::iter(0..n).then(move |i| async move {
                                if i > 0 {
                                    tokio::time::sleep(Duration::from_millis(ms)).await;
                                }
                                Ok::<_, std::io::Error>(bytes::Bytes::from(format!("drip {i}\n")))
                            });
                            Response::builder()
                                .header("content-type", "text/plain")
                                .body(Body::from_stream(chunks))
                                .unwrap()
                        }),
                    )
                    .route(
                        "/sleep/{ms}",
                        get(|Path(ms): Path<u64>| async move {
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            "slept"
                        }),
                    )
                    .route(
                        "/upload",
                        post(move |req: Request| {
                            let log = upload_log.clone();
                            async move {
                                let mut s = req.into_body().into_data_stream();
                                let mut n = 0u64;
                                let mut chunks = 0u64;
                                while let Some(Ok(c)) = s.next().await {
                                    n += c.len() as u64;
                                    chunks += 1;
                                    log.bytes_in.fetch_add(c.len() as u64, Ordering::Relaxed);
                                }
                                format!("{{\"bytes\":{n},\"chunks\":{chunks}}}")
                            }
                        }),
                    )
                    .fallback(move |req: Request| {
                        let log = echo_log.clone();
                        async move {
                            let method = req.method().to_string();
                            let uri = req.uri().to_string();
                            let headers: Vec<(String, String)> = req
                                .headers()
                                .iter()
                                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                                .collect();
                            log.requests.lock().unwrap().push((method.clone(), uri.clone(), headers.clone()));
                            let body = axum::body::to_bytes(req.into_body(), 16 << 20).await.unwrap_or_default();
                            let v = serde_json::json!({
                                "method": method, "uri": uri,
                                "headers": headers.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                                "body": String::from_utf8_lossy(&body),
                            });
                            ([("x-backend", "echo"), ("content-type", "application/json")], v.to_string()).into_response()
                        }
                    });
            app
        });
        Backend {
            addr,
            log,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        // Not joined: an upstream keep-alive connection may hold it open a while.
        drop(self.thread.take());
    }
}

/// Serve the app `make` builds on `listener`, in a thread with its own
/// runtime (so a test's runtime pauses never stall it), until the sender fires.
pub fn serve_in_thread(
    listener: std::net::TcpListener,
    make: impl FnOnce() -> axum::Router + Send + 'static,
) -> (
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<()>,
) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    listener.set_nonblocking(true).unwrap();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, make())
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
        });
    });
    (stop_tx, thread)
}

// ---------------------------------------------------------------------------
// A real redis-server on a free port, with an append-only file so that a
// restart keeps its data (as a production Redis would).

pub struct Redis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Redis {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Redis {
            port,
            dir,
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port and data directory.
    pub fn restart(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while !port_open(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

//! Support for the hardening tests (issue 18): a gateway launched under a
//! wrapper (`prlimit`) or allowed to refuse its config, a redis-server without
//! persistence that can be paused and restarted by PID, a raw HTTP/1.1 backend
//! that records the bytes it was sent (axum would normalise them), raw HTTP
//! exchanges, and a WHATWG event-stream parser over de-chunked bytes (so that
//! binary or unterminated content is judged as a browser would judge it).

use super::{bin, client, free_port, port_open, Ev, Gateway, Raw, WAIT};
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether an external tool can run. Missing: the test is skipped with a
/// note, except under CI (`CI` set), where a missing tool fails the test.
pub fn tool_available(tool: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "`{tool}` is required for this test under CI (apt-get install it)"
        );
        eprintln!("SKIPPED: `{tool}` is not installed");
    }
    found
}

/// Send `sig` (e.g. "-STOP") to one process, by its PID.
pub fn signal_pid(pid: u32, sig: &str) {
    // A PID of 0 or 1 would signal a process group or init: never.
    assert!(pid > 1, "refusing to signal pid {pid}");
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid} failed");
}

/// Poll an async check until it gives Some, or panic after `timeout`.
pub async fn within<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(v)) = tokio::time::timeout_at(deadline.into(), check()).await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET `url`'s status (0 when it could not be asked).
pub async fn status_of(url: &str) -> u16 {
    match client().get(url).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Wait until `/readyz` answers 200.
pub async fn ready_within(gw: &Gateway, timeout: Duration) {
    let url = gw.admin("/readyz");
    within(timeout, "/readyz to answer 200", || async {
        (status_of(&url).await == 200).then_some(())
    })
    .await;
}

/// POST a publish body as text (so that the test, not serde_json, decides
/// every byte of it); (status, response body).
pub async fn publish_text(gw: &Gateway, body: &str) -> (u16, String) {
    let r = client()
        .post(gw.admin("/publish"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("publish request");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// Events until `n` arrived or none came for `quiet` (never panics on a
/// quiet stream: the caller asserts on what arrived).
pub async fn gather(sse: &mut super::Sse, n: usize, quiet: Duration) -> Vec<Ev> {
    let mut out = Vec::new();
    while out.len() < n {
        match tokio::time::timeout(quiet, sse.next()).await {
            Ok(ev) => out.push(ev),
            Err(_) => break,
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The gateway under a wrapper command, or expected to refuse its config.

/// Start `ssegate run` with `body` (no `listen`/`admin` keys: they are added)
/// behind `wrapper` (e.g. `["prlimit", "--nofile=256:256"]`; empty for none).
/// Err(log) when the process exits before it listens.
pub fn launch(body: &str, wrapper: &[&str]) -> Result<Gateway, String> {
    assert!(
        !body.lines().any(|l| l.starts_with("admin:")),
        "launch adds the admin block itself"
    );
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let text =
        format!("listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n{body}");
    let config_path = dir.path().join("ssegate.yaml");
    std::fs::write(&config_path, &text).unwrap();
    let log_path = dir.path().join("ssegate.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut argv: Vec<&str> = wrapper.to_vec();
    argv.push(bin());
    let mut cmd = Command::new(argv[0]);
    cmd.args(&argv[1..])
        .args(["run", "-c"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {argv:?}: {e}"));
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
            return Err(format!("exited {status}:\n{}", gw.log()));
        }
        assert!(
            Instant::now() < deadline,
            "ssegate did not listen within 20s:\n{}",
            gw.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(gw)
}

/// `ssegate check -c FILE` with `text` as FILE, stopped (by PID) after
/// `limit`: (exit code, stdout + stderr, time taken), code None if stopped.
pub fn check_config(text: &[u8], limit: Duration) -> (Option<i32>, String, Duration, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hostile.yaml");
    std::fs::write(&path, text).unwrap();
    let out_path = dir.path().join("out.txt");
    let out = std::fs::File::create(&out_path).unwrap();
    let started = Instant::now();
    let mut child = Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code();
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let output = std::fs::read_to_string(&out_path).unwrap_or_default();
    (code, output, elapsed, path.display().to_string())
}

// ---------------------------------------------------------------------------
// redis-server without persistence: a restart loses everything, as a cache
// Redis or one that lost its disk would.

pub struct VolatileRedis {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl VolatileRedis {
    /// None (test skipped) when redis-server is missing outside CI.
    pub fn start() -> Option<VolatileRedis> {
        if !tool_available("redis-server") {
            return None;
        }
        let mut r = VolatileRedis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.restart();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server runs").id()
    }

    /// Start on the same port, empty.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server still runs");
        let log = std::fs::File::create(self.dir.path().join("redis.log")).unwrap();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while !port_open(self.port) {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM and wait: without persistence its data is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal_pid(c.id(), "-TERM");
            let _ = c.wait();
        }
    }

    /// Freeze the process (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        signal_pid(self.pid(), "-STOP");
    }

    pub fn resume(&self) {
        signal_pid(self.pid(), "-CONT");
    }

    /// One command over RESP; the reply flattened to text (nil → "").
    /// While a script runs Redis answers BUSY: asked again, for up to 30 s.
    pub fn cmd(&self, args: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_cmd(args) {
                Ok(v) => return v,
                Err(e) if e.starts_with("BUSY") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("redis {args:?}: {e}"),
            }
        }
    }

    pub fn try_cmd(&self, args: &[&str]) -> Result<String, String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(WAIT)).map_err(|e| e.to_string())?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
        let mut r = std::io::BufReader::new(s);
        resp_value(&mut r)
    }
}

fn resp_value(r: &mut impl std::io::BufRead) -> Result<String, String> {
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    let line = line.trim_end().to_string();
    let (kind, rest) = line.split_at(1.min(line.len()));
    match kind {
        "+" | ":" => Ok(rest.to_string()),
        "-" => Err(rest.to_string()),
        "$" => {
            let n: i64 = rest.parse().map_err(|_| line.clone())?;
            if n < 0 {
                return Ok(String::new());
            }
            let mut buf = vec![0u8; n as usize + 2];
            r.read_exact(&mut buf).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&buf[..n as usize]).to_string())
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| line.clone())?;
            let items: Result<Vec<String>, String> = (0..n.max(0)).map(|_| resp_value(r)).collect();
            Ok(items?.join("\n"))
        }
        _ => Err(format!("unexpected redis reply {line:?}")),
    }
}

impl Drop for VolatileRedis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// A raw HTTP/1.1 backend: records each request head exactly as received and
// the body as a lenient server would read it (first Content-Length value, or
// chunked), then answers 200 with its name.

#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Request line and header lines, as received (no final blank line).
    pub head: String,
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    /// The request-target of the request line.
    pub fn target(&self) -> &str {
        self.request_line().split(' ').nth(1).unwrap_or("")
    }

    /// Values of every header line named `name` (any case), as received.
    pub fn headers(&self, name: &str) -> Vec<String> {
        header_values(&self.head, name)
    }
}

/// Values of the header lines named `name` (any case) in a message head.
fn header_values(head: &str, name: &str) -> Vec<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

pub struct RawBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<RawRequest>>>,
    stop: Arc<AtomicBool>,
}

impl RawBackend {
    pub fn start(name: &'static str) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Acquire) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let seen = seen2.clone();
                std::thread::spawn(move || serve_raw(conn, name, &seen));
            }
        });
        RawBackend { addr, seen, stop }
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_raw(mut conn: TcpStream, name: &str, seen: &Mutex<Vec<RawRequest>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Some(end) = fill_until(&mut conn, &mut buf, |b| find(b, b"\r\n\r\n")) else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end + 4);
        let req = RawRequest {
            head,
            body: Vec::new(),
        };
        let chunked = req
            .headers("transfer-encoding")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("chunked"));
        let body = if chunked {
            let Some(end) = fill_until(&mut conn, &mut buf, |b| {
                find(b, b"0\r\n\r\n").map(|i| i + 5)
            }) else {
                return;
            };
            dechunk(&buf.drain(..end).collect::<Vec<_>>())
        } else {
            // Lenient, as the backends a smuggler looks for: the first number.
            let len: usize = req
                .headers("content-length")
                .first()
                .and_then(|v| v.split(',').next()?.trim().parse().ok())
                .unwrap_or(0);
            let Some(_) = fill_until(&mut conn, &mut buf, |b| (b.len() >= len).then_some(len))
            else {
                return;
            };
            buf.drain(..len).collect()
        };
        seen.lock().unwrap().push(RawRequest { body, ..req });
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{name}",
            name.len()
        );
        if conn.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Read into `buf` until `done(buf)` gives Some; None on EOF or error.
fn fill_until(
    conn: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let mut chunk = [0u8; 16384];
    loop {
        if let Some(v) = done(buf) {
            return Some(v);
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---------------------------------------------------------------------------
// Raw HTTP exchanges with the gateway.

#[derive(Debug, Default)]
pub struct RawResponse {
    /// Status line and headers (empty when nothing came back).
    pub head: String,
    pub body: Vec<u8>,
    /// The connection ended (EOF or reset) while reading.
    pub closed: bool,
}

impl RawResponse {
    pub fn status(&self) -> u16 {
        self.head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header_values(&self.head, name).into_iter().next()
    }
}

/// Connect to the gateway's public port with a read timeout.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the gateway");
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    s
}

/// Read into `buf` until `done(buf)` or `timeout`; false when the peer
/// closed (EOF or reset). The stream must have a short read timeout.
pub fn read_while(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    timeout: Duration,
    done: impl Fn(&[u8]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 65536];
    while !done(buf) && Instant::now() < deadline {
        match s.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
    true
}

/// Read one response head within `timeout`; `body` holds whatever followed
/// it in the same reads.
pub fn read_head(s: &mut TcpStream, timeout: Duration) -> RawResponse {
    let mut buf = Vec::new();
    let open = read_while(s, &mut buf, timeout, |b| find(b, b"\r\n\r\n").is_some());
    let mut out = RawResponse {
        closed: !open,
        ..RawResponse::default()
    };
    if let Some(end) = find(&buf, b"\r\n\r\n") {
        out.head = String::from_utf8_lossy(&buf[..end]).to_string();
        out.body = buf[end + 4..].to_vec();
    }
    out
}

/// Read one response: its head, and its body when it has a Content-Length.
pub fn read_response(s: &mut TcpStream, timeout: Duration) -> RawResponse {
    let started = Instant::now();
    let mut out = read_head(s, timeout);
    if let Some(n) = out
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let left = timeout.saturating_sub(started.elapsed());
        let open = read_while(s, &mut out.body, left, |b| b.len() >= n);
        out.closed |= !open;
    }
    out
}

/// Send `request` on a fresh connection and read the response.
pub fn exchange(port: u16, request: &[u8], timeout: Duration) -> RawResponse {
    let mut s = connect(port);
    s.write_all(request).expect("send request");
    read_response(&mut s, timeout)
}

// ---------------------------------------------------------------------------
// Event streams judged as a WHATWG parser would.

/// The body of a chunked response: every complete chunk, joined.
pub fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = find(rest, b"\r\n") {
        let size = std::str::from_utf8(&rest[..nl])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
        let Some(n) = size else { break };
        let data = &rest[nl + 2..];
        if n == 0 || data.len() < n {
            break;
        }
        out.extend_from_slice(&data[..n]);
        rest = data.get(n + 2..).unwrap_or(&[]);
    }
    out
}

/// What a WHATWG EventSource makes of `stream`: the dispatched events and the
/// last event ID buffer at the end (set by `id:` even without an event).
pub fn whatwg(stream: &[u8]) -> (Vec<Ev>, String) {
    let text = String::from_utf8_lossy(stream);
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let (mut events, mut last_id) = (Vec::new(), String::new());
    let (mut data, mut event) = (String::new(), String::new());
    let mut rest = text;
    // Only complete lines count: a line without its end is still arriving.
    while let Some(i) = rest.find(['\r', '\n']) {
        let line = &rest[..i];
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let name = if event.is_empty() { "message" } else { &event };
                events.push(Ev {
                    event: name.to_string(),
                    data: std::mem::take(&mut data),
                    id: last_id.clone(),
                });
            }
            data.clear();
            event.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "event" => event = value.to_string(),
            "id" if !value.contains('\0') => last_id = value.to_string(),
            _ => {}
        }
    }
    (events, last_id)
}

/// Read more of a raw SSE response until `pred(de-chunked body)` holds, or
/// `timeout`; whether it held. Never panics on EOF (the caller asserts).
pub fn read_body_until(raw: &mut Raw, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> bool {
    let holds = |buf: &[u8]| pred(&body_after_head(buf));
    read_while(&mut raw.stream, &mut raw.buf, timeout, holds);
    holds(&raw.buf)
}

/// The de-chunked body a raw SSE response has delivered so far.
pub fn body_of(raw: &Raw) -> Vec<u8> {
    body_after_head(&raw.buf)
}

fn body_after_head(buf: &[u8]) -> Vec<u8> {
    find(buf, b"\r\n\r\n")
        .map(|end| dechunk(&buf[end + 4..]))
        .unwrap_or_default()
}

/// RFC 3986 §5.2.4 on a path, after one round of percent-decoding (what a
/// lenient backend or file server resolves a request path to).
pub fn resolved_path(target: &str) -> String {
    let path = target.split(['?', '#']).next().unwrap_or("");
    // An absolute-form target: keep only its path.
    let path = match path.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => path,
    };
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

// ---------------------------------------------------------------------------
// Measuring the process.

/// POST /publish over a raw socket, for tests without a runtime; the status.
pub fn publish_blocking(gw: &Gateway, body: &str) -> u16 {
    let req = format!(
        "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(gw.admin_port, req.as_bytes(), WAIT).status()
}

/// How many descriptors the process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Resident memory once it stops moving: three samples in a row, 100 ms
/// apart, within 1 % of each other.
pub fn settled_rss(gw: &Gateway) -> u64 {
    let deadline = Instant::now() + WAIT;
    let (mut last, mut steady) = (gw.rss(), 0);
    while steady < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        let now = gw.rss();
        steady = if now.abs_diff(last) * 100 <= last {
            steady + 1
        } else {
            0
        };
        last = now;
    }
    last
}

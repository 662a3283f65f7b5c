//! GRIP holds through the real binary, with a backend written against
//! Pushpin's own client library (Python `gripcontrol`): hold headers and
//! grip-instruct bodies, the backend's head and body first, keep-alives while
//! idle, published content after, `action: close`, `Grip-Sig` verified by
//! `validate_sig`, and ordinary responses on a grip route passed through.

mod support;

use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

const KEY: &str = "grip-test-key";

const BACKEND: &str = r#"
import sys
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
from gripcontrol import (create_hold_stream, create_grip_channel_header,
                         validate_sig, Channel, Response)

KEY = sys.argv[1]

class H(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *a):
        pass

    def sig(self):
        s = self.headers.get('Grip-Sig')
        if s is None:
            return 'none'
        return 'ok' if validate_sig(s, KEY) else 'bad'

    def send(self, code, headers, body):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split('?')[0]
        parts = path.strip('/').split('/')
        if parts[0] == 'hold':
            self.send(200, [
                ('Content-Type', 'text/plain'),
                ('X-App', 'held'),
                ('Grip-Hold', 'stream'),
                ('Grip-Channel', create_grip_channel_header([Channel(parts[1], prev_id='p0')])),
                ('Grip-Keep-Alive', 'ka\\n; format=cstring; timeout=1'),
            ], ('welcome sig=%s\n' % self.sig()).encode())
        elif parts[0] == 'quiet':
            self.send(200, [
                ('Content-Type', 'text/plain'),
                ('Grip-Hold', 'stream'),
                ('Grip-Channel', parts[1]),
            ], b'quiet\n')
        elif parts[0] == 'instruct':
            body = create_hold_stream(parts[1], Response(
                code=200, headers={'Content-Type': 'text/event-stream'},
                body='data: hello instruct\n\n'))
            self.send(200, [('Content-Type', 'application/grip-instruct')], body.encode())
        elif parts[0] == 'badchannel':
            self.send(200, [('Grip-Hold', 'stream'), ('Grip-Channel', 'a*')], b'x')
        elif parts[0] == 'big':
            self.send(200, [('Content-Type', 'application/octet-stream')], b'b' * int(parts[1]))
        else:
            self.send(200, [('Content-Type', 'text/plain'), ('X-Plain', 'yes')],
                      ('plain sig=%s' % self.sig()).encode())

    def do_POST(self):
        n = int(self.headers.get('Content-Length', '0'))
        body = self.rfile.read(n)
        self.send(201, [('Content-Type', 'text/plain')], b'got ' + str(len(body)).encode())

class Server(ThreadingHTTPServer):
    request_queue_size = 64  # the default 5 drops connects on busy machines

server = Server(('127.0.0.1', 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// The Python backend; killed when dropped.
struct PyBackend {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for PyBackend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn python() -> String {
    std::env::var("SSEGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn py_backend() -> PyBackend {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("backend.py");
    std::fs::write(&script, BACKEND).unwrap();
    // The backend binds port 0 and prints the port it got: no race for a port.
    let mut child = Command::new(python())
        .arg(&script)
        .arg(KEY)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("python backend did not start within 20s");
    let port: u16 = line.trim().parse().unwrap_or_else(|_| {
        panic!("python backend did not start (is gripcontrol installed? set SSEGATE_TEST_PYTHON): {line:?}")
    });
    PyBackend {
        port,
        child,
        _dir: dir,
    }
}

fn gateway(backend: u16, signed: bool) -> Gateway {
    gateway_with(backend, signed, "")
}

/// `gateway`, with `extra` (a top-level config block) first.
fn gateway_with(backend: u16, signed: bool, extra: &str) -> Gateway {
    let key = if signed {
        "grip: { key_env: GRIP_KEY }\n"
    } else {
        ""
    };
    Gateway::start_with_env(
        &format!(
            "{extra}{key}limits: {{ max_channels_per_client: 4 }}
sse: {{ heartbeat: 1s }}
upstreams:
  py: {{ servers: [\"127.0.0.1:{backend}\"] }}
routes:
  - path: /{{*rest}}
    proxy: py
    grip: true
"
        ),
        &[("GRIP_KEY", KEY)],
    )
}

async fn publish_grip(gw: &Gateway, item: serde_json::Value) {
    let r = client()
        .post(gw.admin("/publish/"))
        .json(&json!({ "items": [item] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

fn content(channel: &str, text: &str) -> serde_json::Value {
    json!({"channel": channel, "formats": {"http-stream": {"content": text}}})
}

#[tokio::test]
async fn hold_sends_backend_head_and_body_then_published_content() {
    let py = py_backend();
    let gw = gateway(py.port, true);
    let mut raw = Raw::get(gw.port, "/hold/h1", &[]);
    let head = raw.read_until(WAIT, "body", |t| t.contains("welcome"));
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{head}");
    assert!(lower.contains("content-type: text/plain"), "{head}");
    assert!(lower.contains("x-app: held"), "{head}");
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");
    assert!(
        !lower.contains("grip-"),
        "Grip-* headers are stripped: {head}"
    );
    assert!(!lower.contains("content-length"), "{head}");
    assert!(
        raw.body().starts_with("welcome sig=ok\n"),
        "{:?}",
        raw.body()
    );
    publish_grip(&gw, content("h1", "first\n")).await;
    publish_grip(&gw, content("h1", "second\n")).await;
    raw.read_until(WAIT, "published content", |t| t.contains("second\n"));
    let body = raw.body();
    let first = body.find("first\n").unwrap();
    assert!(first < body.find("second\n").unwrap(), "{body:?}");
}

#[tokio::test]
async fn keep_alive_content_arrives_while_idle_and_not_without_the_header() {
    let py = py_backend();
    let gw = gateway(py.port, true);
    let mut raw = Raw::get(gw.port, "/hold/idle", &[]);
    raw.read_until(WAIT, "welcome", |t| t.contains("welcome"));
    let t = Instant::now();
    raw.read_until(Duration::from_secs(5), "keep-alive", |t| t.contains("ka\n"));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    assert!(
        raw.body().starts_with("welcome sig=ok\nka\n"),
        "{:?}",
        raw.body()
    );
    // A hold without Grip-Keep-Alive stays silent while idle: nothing in
    // 2.5 heartbeat ticks (`sse.heartbeat: 1s` below), neither a keep-alive
    // nor the SSE heartbeat comment.
    let mut quiet = Raw::get(gw.port, "/quiet/q1", &[]);
    quiet.read_until(WAIT, "quiet", |t| t.contains("quiet\n"));
    quiet.read_for(Duration::from_millis(2500));
    assert_eq!(quiet.body(), "quiet\n");
}

#[tokio::test]
async fn grip_instruct_body_holds_with_sse_content_and_resume_ids() {
    let py = py_backend();
    let gw = gateway(py.port, false);
    let mut sse = Sse::connect(&gw.url("/instruct/i1")).await;
    assert_eq!(sse.status, 200);
    assert!(sse.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    assert_eq!(sse.next().await.data, "hello instruct");
    publish_grip(&gw, content("i1", "event: update\ndata: one\n\n")).await;
    let ev = sse.next().await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("update", "one"));
    assert!(
        !ev.id.is_empty(),
        "the gateway adds its cursor to SSE content"
    );
}

#[tokio::test]
async fn close_action_ends_the_hold() {
    let py = py_backend();
    let gw = gateway(py.port, true);
    let mut raw = Raw::get(gw.port, "/hold/c1", &[]);
    raw.read_until(WAIT, "welcome", |t| t.contains("welcome"));
    publish_grip(&gw, content("c1", "bye\n")).await;
    publish_grip(
        &gw,
        json!({"channel": "c1", "formats": {"http-stream": {"action": "close"}}}),
    )
    .await;
    let text = raw.read_until(WAIT, "end of the chunked body", |t| {
        t.ends_with("0\r\n\r\n")
    });
    assert!(raw.body().contains("bye\n"), "{text:?}");
}

async fn text(url: &str, headers: &[(&str, &str)]) -> String {
    let mut rb = client().get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn grip_sig_is_sent_only_by_a_keyed_gateway_and_never_forged() {
    let py = py_backend();
    let signed = gateway(py.port, true);
    let unsigned = gateway(py.port, false);
    assert_eq!(text(&signed.url("/plain"), &[]).await, "plain sig=ok");
    assert_eq!(text(&unsigned.url("/plain"), &[]).await, "plain sig=none");
    // A client's own Grip-Sig never reaches the backend.
    let forged = text(
        &unsigned.url("/plain"),
        &[("grip-sig", "eyJhbGciOiJub25lIn0.e30.")],
    )
    .await;
    assert_eq!(forged, "plain sig=none");
}

#[tokio::test]
async fn non_hold_responses_are_proxied_unchanged_and_streamed() {
    let py = py_backend();
    let gw = gateway(py.port, true);
    let c = client();
    let r = c.get(gw.url("/plain")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["x-plain"], "yes");
    assert_eq!(r.headers()["content-length"], "12");
    assert_eq!(r.text().await.unwrap(), "plain sig=ok");
    let n = 3 * 1024 * 1024;
    let r = c.get(gw.url(&format!("/big/{n}"))).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], n.to_string().as_str());
    let bytes = r.bytes().await.unwrap();
    assert_eq!(bytes.len(), n);
    let r = c
        .post(gw.url("/upload"))
        .body(vec![b'u'; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(r.text().await.unwrap(), "got 100000");
    // A hold naming a channel outside the alphabet is the backend's error.
    let r = c.get(gw.url("/badchannel")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 502);
}

#[tokio::test]
async fn holds_over_tls_on_http2_and_http11_get_the_backend_head_and_content() {
    use support::tls::{h2_client, h2_get, TestCa};
    let py = py_backend();
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("grip");
    let (cert, key) = ca.issue(dir.path(), "server");
    let tls = format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}\n",
        cert.display(),
        key.display()
    );
    let gw = gateway_with(py.port, true, &tls);
    let authority = format!("127.0.0.1:{}", gw.port);
    // HTTP/2: the stream is taken out of pingora after the backend's head.
    let mut send = h2_client(ca.connect_h2(gw.port).await.unwrap()).await;
    let h2 = h2_get(&mut send, &authority, "https", "/hold/tls", &[]).await;
    assert_eq!(h2.status, 200);
    assert_eq!(h2.headers["x-app"], "held");
    assert_eq!(h2.headers["content-type"], "text/plain");
    assert!(
        h2.headers.keys().all(|k| !k.as_str().starts_with("grip-")),
        "{:?}",
        h2.headers
    );
    // HTTP/1.1 over TLS: taken out with its TLS session.
    let mut h1 = ca
        .reqwest(true)
        .get(format!("https://{authority}/hold/tls"))
        .send()
        .await
        .unwrap();
    assert_eq!(h1.version(), reqwest::Version::HTTP_11);
    assert_eq!(h1.headers()["transfer-encoding"], "chunked");
    assert_eq!(h1.headers()["x-app"], "held");
    eventually(WAIT, "welcome on h2", || {
        h2.snapshot().starts_with("welcome sig=ok\n").then_some(())
    })
    .await;
    publish_grip(&gw, content("tls", "first\n")).await;
    let text = eventually(WAIT, "content and keep-alive on h2", || {
        let t = h2.snapshot();
        (t.contains("first\n") && t.contains("ka\n")).then_some(t)
    })
    .await;
    assert!(text.starts_with("welcome sig=ok\n"), "{text:?}");
    let mut body = String::new();
    while !body.contains("first\n") {
        let chunk = tokio::time::timeout(WAIT, h1.chunk())
            .await
            .expect("content on TLS HTTP/1.1 within WAIT")
            .unwrap()
            .expect("body still open");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.starts_with("welcome sig=ok\n"), "{body:?}");
}

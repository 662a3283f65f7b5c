//! A chat-like backend for recorded routes (`record:`): `/chat`, any method,
//! answers with its own SSE reply — `n` events, one every `ms` (query
//! `?n=&ms=`, default 50 every 100 ms, as an LLM streams tokens; `pad=`
//! bytes more per event) — and logs
//! every request, the events it wrote, and whether the gateway cut it
//! before its end. `/plain` answers JSON; `/app/page` serves a page given
//! at start and `/app/report` collects what that page reports. Plus the
//! test clients we did not write: Node's `eventsource` and Python's
//! `httpx` with `httpx-sse`, pinned (tests/node/package.json, scripts/test).

use super::serve_in_thread;
use axum::body::Body;
use axum::extract::{Query, Request};
use axum::response::Response;
use axum::routing::{any, get, post};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The data of event `i` of a reply (every tenth has two lines).
pub fn token(i: usize) -> String {
    if i.is_multiple_of(10) {
        format!("token {i}\nline two of {i}")
    } else {
        format!("token {i}")
    }
}

/// (method, headers, body) of one `/chat` request.
pub type ChatRequest = (String, Vec<(String, String)>, String);

#[derive(Default)]
pub struct ChatLog {
    pub requests: Mutex<Vec<ChatRequest>>,
    /// Events written by every reply together.
    pub written: AtomicUsize,
    /// Replies dropped before their last event (the gateway cut them).
    pub cut: AtomicUsize,
    /// Replies that ran to their end.
    pub finished: AtomicUsize,
    /// JSON bodies the page POSTed to `/app/report`.
    pub reports: Mutex<Vec<serde_json::Value>>,
}

impl ChatLog {
    pub fn chat_requests(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The page's first report of `kind`; panics after `timeout`.
    pub async fn report(&self, kind: &str, timeout: Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let found = self
                .reports
                .lock()
                .unwrap()
                .iter()
                .find(|v| v["kind"] == kind)
                .cloned();
            if let Some(v) = found {
                return v;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no `{kind}` report from the page within {timeout:?}; reports so far: {:?}",
                self.reports.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub struct Chat {
    pub addr: std::net::SocketAddr,
    pub log: Arc<ChatLog>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Marks the reply cut when dropped before its end.
struct Reply {
    log: Arc<ChatLog>,
    done: bool,
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.done {
            self.log.cut.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl Chat {
    pub fn start(page: &str) -> Chat {
        let log = Arc::new(ChatLog::default());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (l, l2, page) = (log.clone(), log.clone(), page.to_string());
        let (stop, _thread) = serve_in_thread(listener, move || {
            axum::Router::new()
                .route("/chat", any(move |q, req| chat(l.clone(), q, req)))
                .route(
                    "/plain",
                    any(|| async { ([("content-type", "application/json")], "{\"plain\":true}") }),
                )
                .route(
                    "/app/page",
                    get(move || {
                        let page = page.clone();
                        async move { ([("content-type", "text/html; charset=utf-8")], page) }
                    }),
                )
                .route(
                    "/app/report",
                    post(move |body: String| {
                        let log = l2.clone();
                        async move {
                            if let Ok(v) = serde_json::from_str(&body) {
                                log.reports.lock().unwrap().push(v);
                            }
                            "ok"
                        }
                    }),
                )
        });
        Chat {
            addr,
            log,
            _stop: stop,
        }
    }
}

async fn chat(
    log: Arc<ChatLog>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Response {
    let n: usize = q.get("n").and_then(|v| v.parse().ok()).unwrap_or(50);
    let ms: u64 = q.get("ms").and_then(|v| v.parse().ok()).unwrap_or(100);
    // Bytes added to each event's data (an LLM's JSON chunk is ~100-200 B).
    let pad: usize = q.get("pad").and_then(|v| v.parse().ok()).unwrap_or(0);
    let method = req.method().to_string();
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let body = axum::body::to_bytes(req.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    log.requests.lock().unwrap().push((
        method,
        headers,
        String::from_utf8_lossy(&body).to_string(),
    ));
    let reply = Reply {
        log: log.clone(),
        done: false,
    };
    let events = futures_util::stream::unfold((1usize, reply), move |(i, mut reply)| async move {
        if i > n {
            reply.done = true;
            reply.log.finished.fetch_add(1, Ordering::SeqCst);
            return None;
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        reply.log.written.fetch_add(1, Ordering::SeqCst);
        // The backend's own ids and a comment: the gateway replaces the one
        // and drops the other.
        let mut frame = format!(": tick\nid: backend-{i}\n");
        for line in token(i).split('\n') {
            frame.push_str(&format!("data: {line}\n"));
        }
        if pad > 0 {
            frame.push_str(&format!("data: {}\n", "x".repeat(pad)));
        }
        frame.push('\n');
        Some((
            Ok::<_, std::io::Error>(bytes::Bytes::from(frame)),
            (i + 1, reply),
        ))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("x-app", "chat")
        .body(Body::from_stream(events))
        .unwrap()
}

/// The venv Python with httpx and httpx-sse (scripts/test makes it).
pub fn python() -> Option<String> {
    let py = std::env::var("SSEGATE_TEST_PYTHON")
        .unwrap_or_else(|_| format!("{}/target/test-venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    let ok = std::process::Command::new(&py)
        .args(["-c", "import httpx, httpx_sse"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

/// The directory holding `node_modules/eventsource` (scripts/test makes it).
pub fn node_modules() -> Option<String> {
    let dir = std::env::var("SSEGATE_TEST_NODE_MODULES").unwrap_or_else(|_| {
        format!(
            "{}/target/node-tools/node_modules",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let ok = std::path::Path::new(&dir).join("eventsource").is_dir()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    ok.then_some(dir)
}

/// Run a script to its end (bounded by `limit`); its stdout lines as JSON.
pub async fn run_script(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    limit: Duration,
) -> Vec<serde_json::Value> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(limit, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish within {limit:?}"))
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{program} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Node's `eventsource` (GET), starting from `last` with `auth`; one JSON
/// line per message (`id`, `data`), then how it stopped.
pub const NODE_EVENTSOURCE: &str = r#"
const { EventSource } = require(process.env.ES_PATH);
const [url, last, auth] = process.argv.slice(1);
let first = true;
const es = new EventSource(url, {
  fetch: (input, init) => {
    const headers = { ...init.headers, Authorization: auth };
    if (first) { headers['Last-Event-ID'] = last; first = false; }
    return fetch(input, { ...init, headers });
  },
});
const out = (v) => process.stdout.write(JSON.stringify(v) + '\n');
es.onmessage = (e) => out({ id: e.lastEventId, data: e.data });
es.onerror = (e) => {
  if (es.readyState === EventSource.CLOSED) {
    out({ closed: true, code: e.code ?? null });
    process.exit(0);
  }
  out({ reconnecting: true });
};
setTimeout(() => { out({ timeout: true }); process.exit(1); }, 20000);
"#;

/// httpx + httpx-sse: the same request method as the original (POST, with
/// its JSON body) carrying `Last-Event-ID`; one JSON line per event.
pub const PYTHON_HTTPX: &str = r#"
import json, sys
import httpx
from httpx_sse import connect_sse
url, last, auth = sys.argv[1:4]
def out(v):
    print(json.dumps(v), flush=True)
with httpx.Client(timeout=20) as c:
    headers = {"Last-Event-ID": last, "Authorization": auth}
    with connect_sse(c, "POST", url, json={"prompt": "hi"}, headers=headers) as es:
        out({"status": es.response.status_code})
        for sse in es.iter_sse():
            # httpx-sse also dispatches blocks without data (the prelude's
            # `retry:`/`id:`), which a WHATWG client does not.
            if sse.data == "":
                continue
            out({"id": sse.id, "event": sse.event, "data": sse.data})
out({"end": True})
"#;

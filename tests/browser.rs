//! A real browser over TLS + HTTP/2: one page, served by the gateway itself
//! (proxied to a small backend, so same origin), opens 20 EventSources.
//! Over HTTP/1.1 Chromium would open only 6 connections per origin and the
//! other 14 would wait; over HTTP/2 all 20 share one connection and all 20
//! must open and then receive an event published after they opened.
//!
//! The page reports back by POSTing to the backend through the gateway, so
//! the test needs no DevTools protocol and no virtual time: it waits (with a
//! timeout) for the page's reports and publishes in between. Skipped only
//! when no Chromium binary is installed (`apt-get install -y chromium`), and
//! failed instead under `scripts/test` (which installs it) and in CI.

mod support;

use axum::routing::{get, post};
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::tls::TestCa;
use support::*;

const STREAMS: usize = 20;

const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>ssegate h2 test</title>
<body><pre id="log"></pre>
<script>
const N = __N__;
const got = new Array(N).fill(null);
let opened = 0, errors = 0;
const proto = () => (performance.getEntriesByType('navigation')[0] || {}).nextHopProtocol || '';
function report(kind, extra) {
  const body = Object.assign({kind, opened, errors, proto: proto(),
    received: got.filter(x => x !== null).length}, extra || {});
  document.getElementById('log').textContent += JSON.stringify(body) + '\n';
  fetch('/app/report', {method: 'POST', headers: {'content-type': 'application/json'},
    body: JSON.stringify(body)});
}
for (let i = 0; i < N; i++) {
  const es = new EventSource('/events/b' + i);
  let once = false;
  es.onopen = () => { if (once) return; once = true; opened++; if (opened === N) report('open'); };
  es.onerror = () => { errors++; };
  es.onmessage = (e) => {
    if (got[i] !== null) return;
    got[i] = e.data;
    if (got.every(x => x !== null)) report('all', {data: got});
  };
}
</script>
"#;

fn chromium() -> Option<String> {
    if let Ok(p) = std::env::var("SSEGATE_CHROMIUM") {
        return Some(p);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(|name| {
            let out = Command::new("which").arg(name).output().ok()?;
            out.status
                .success()
                .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        })
}

/// The browser, killed on drop; its helper processes (zygote, renderers,
/// crashpad) exit by themselves once the browser process is gone.
struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn launch(bin: &str, url: &str) -> Browser {
    let profile = tempfile::tempdir().unwrap();
    let child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--ignore-certificate-errors",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Browser {
        child,
        _profile: profile,
    }
}

/// Serves the page and collects the page's reports.
fn page_backend(reports: Arc<Mutex<Vec<serde_json::Value>>>) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let page = PAGE.replace("__N__", &STREAMS.to_string());
            let app = axum::Router::new()
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
                        let reports = reports.clone();
                        async move {
                            if let Ok(v) = serde_json::from_str(&body) {
                                reports.lock().unwrap().push(v);
                            }
                            "ok"
                        }
                    }),
                );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let _ = axum::serve(listener, app).await;
        });
    });
    addr
}

async fn report(
    reports: &Arc<Mutex<Vec<serde_json::Value>>>,
    kind: &str,
    timeout: Duration,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = reports
            .lock()
            .unwrap()
            .iter()
            .find(|v| v["kind"] == kind)
            .cloned()
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no `{kind}` report from the page within {timeout:?}; reports so far: {:?}",
            reports.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn chromium_opens_twenty_event_sources_on_one_origin_over_h2() {
    let Some(bin) = chromium() else {
        missing_tool("chromium", "apt-get install -y chromium");
        return;
    };
    let reports = Arc::new(Mutex::new(Vec::new()));
    let backend = page_backend(reports.clone());
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("browser");
    let (cert, key) = ca.issue(dir.path(), "server");
    let gw = Gateway::start(&format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}
sse: {{ heartbeat: 2s }}
upstreams:
  page: {{ servers: [\"{backend}\"] }}
routes:
  - path: /app/{{*rest}}
    proxy: page
  - path: /events/{{name}}
    sse: {{ channels: [\"room:{{name}}\"] }}
",
        cert.display(),
        key.display()
    ));
    let _browser = launch(&bin, &format!("https://127.0.0.1:{}/app/page", gw.port));

    // A cold browser start on two busy cores can take a while.
    let open = report(&reports, "open", Duration::from_secs(60)).await;
    assert_eq!(open["opened"], STREAMS, "{open}");
    assert_eq!(open["proto"], "h2", "the page itself came over h2: {open}");
    assert_eq!(gw.metric("ssegate_connections{").await, STREAMS as f64);

    for i in 0..STREAMS {
        gw.publish_ok(&format!("room:b{i}"), json!(format!("hello {i}")))
            .await;
    }
    let all = report(&reports, "all", Duration::from_secs(20)).await;
    let data: Vec<String> = (0..STREAMS).map(|i| format!("hello {i}")).collect();
    assert_eq!(all["data"], json!(data), "{all}");
    assert_eq!(all["errors"], 0, "{all}");
}

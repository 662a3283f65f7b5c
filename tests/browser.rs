//! A real browser over TLS + HTTP/2: one page, served by the gateway itself
//! (proxied to a small backend, so same origin), opens 20 EventSources.
//! Over HTTP/1.1 Chromium would open only 6 connections per origin and the
//! other 14 would wait; over HTTP/2 all 20 share one connection and all 20
//! must open and then receive an event published after they opened.
//!
//! The page (served by the test backend `support::chat`) reports back by
//! POSTing to the backend through the gateway, so
//! the test needs no DevTools protocol and no virtual time: it waits (with a
//! timeout) for the page's reports and publishes in between. Skipped only
//! when no Chromium binary is installed (`apt-get install -y chromium`), and
//! failed instead under `scripts/test` (which installs it) and in CI.

mod support;

use axum::routing::{get, post};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::browser::{chromium_or_skip, launch};
use support::chat::Chat;
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

/// A page at `page_path`, and the reports it POSTs to `report_path`.
fn page_app(
    page_path: &str,
    page: String,
    report_path: &str,
    reports: Arc<Mutex<Vec<serde_json::Value>>>,
) -> axum::Router {
    axum::Router::new()
        .route(
            page_path,
            get(move || {
                let page = page.clone();
                async move { ([("content-type", "text/html; charset=utf-8")], page) }
            }),
        )
        .route(
            report_path,
            post(move |body: String| {
                let reports = reports.clone();
                async move {
                    if let Ok(v) = serde_json::from_str(&body) {
                        reports.lock().unwrap().push(v);
                    }
                    "ok"
                }
            }),
        )
}

#[tokio::test]
async fn chromium_opens_twenty_event_sources_on_one_origin_over_h2() {
    let Some(bin) = chromium_or_skip() else {
        return;
    };
    let pages = Chat::start(&PAGE.replace("__N__", &STREAMS.to_string()));
    let backend = pages.addr;
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
    let _browser = launch(
        &bin,
        &format!("https://127.0.0.1:{}/app/page", gw.port),
        &[],
    );

    // A cold browser start on two busy cores can take a while.
    let open = pages.log.report("open", Duration::from_secs(60)).await;
    assert_eq!(open["opened"], STREAMS, "{open}");
    assert_eq!(open["proto"], "h2", "the page itself came over h2: {open}");
    assert_eq!(gw.metric("ssegate_connections{").await, STREAMS as f64);

    for i in 0..STREAMS {
        gw.publish_ok(&format!("room:b{i}"), json!(format!("hello {i}")))
            .await;
    }
    let all = pages.log.report("all", Duration::from_secs(20)).await;
    let data: Vec<String> = (0..STREAMS).map(|i| format!("hello {i}")).collect();
    assert_eq!(all["data"], json!(data), "{all}");
    assert_eq!(all["errors"], 0, "{all}");
}

/// A page on one origin and its reports, for the CORS test.
const CORS_PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>ssegate cors test</title>
<body><pre id="log"></pre>
<script>
const GW = '__GW__';
function report(body) {
  document.getElementById('log').textContent += JSON.stringify(body) + '\n';
  fetch('/report', {method: 'POST', headers: {'content-type': 'application/json'},
    body: JSON.stringify(body)});
}
// [name, path, withCredentials]
const cases = [
  ['open', '/open/open', false],
  ['open-cred', '/open/open-cred', true],
  ['cred', '/cred/cred', true],
  ['cred-plain', '/cred/cred-plain', false],
  ['other', '/other/other', false],
  ['none', '/none/none', false],
  ['any', '/any/any', false],
  ['any-cred', '/any/any-cred', true],
];
for (const [name, path, withCredentials] of cases) {
  const es = new EventSource(GW + path, {withCredentials});
  let done = false;
  es.onopen = () => report({name, kind: 'open'});
  es.onmessage = (e) => { report({name, kind: 'message', data: e.data}); es.close(); };
  es.onerror = () => {
    if (!done && es.readyState === EventSource.CLOSED) { done = true; report({name, kind: 'closed'}); }
  };
}
// Last-Event-ID is no CORS-safelisted header: these fetches are preflighted.
for (const [name, path] of [['preflight-open', '/open/pf'], ['preflight-none', '/none/pf']]) {
  const ctl = new AbortController();
  fetch(GW + path, {headers: {'Last-Event-ID': 'x'}, signal: ctl.signal})
    .then(r => { report({name, kind: 'fetched', status: r.status}); ctl.abort(); })
    .catch(e => report({name, kind: 'refused'}));
}
</script>
"#;

/// Serves the CORS page on an origin of its own, and collects reports.
fn cors_page_backend(
    port: u16,
    gw_origin: String,
    reports: Arc<Mutex<Vec<serde_json::Value>>>,
) -> tokio::sync::oneshot::Sender<()> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let page = CORS_PAGE.replace("__GW__", &gw_origin);
    let (stop, _thread) = serve_in_thread(listener, move || {
        page_app("/page", page, "/report", reports)
    });
    stop
}

fn kinds_of(reports: &Arc<Mutex<Vec<serde_json::Value>>>, name: &str) -> Vec<String> {
    reports
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == name)
        .map(|r| r["kind"].as_str().unwrap_or("").to_string())
        .collect()
}

/// A page on another origin receives events only from routes whose `cors:`
/// lists its origin — with `withCredentials` only where credentials are
/// allowed (and never from `"*"`); a preflighted request passes only where
/// CORS is configured.
#[tokio::test]
async fn chromium_reads_cross_origin_streams_only_where_cors_allows() {
    let Some(bin) = chromium_or_skip() else {
        return;
    };
    let reports = Arc::new(Mutex::new(Vec::new()));
    // Another port is another origin.
    let page_port = free_port();
    let page_origin = format!("http://127.0.0.1:{page_port}");
    let gw = Gateway::start(&format!(
        r#"
sse: {{ heartbeat: 2s }}
routes:
  - path: /open/{{ch}}
    sse: {{ channels: ["{{ch}}"], cors: {{ origins: ["{page_origin}"] }} }}
  - path: /cred/{{ch}}
    sse: {{ channels: ["{{ch}}"], cors: {{ origins: ["{page_origin}"], credentials: true }} }}
  - path: /other/{{ch}}
    sse: {{ channels: ["{{ch}}"], cors: {{ origins: ["http://elsewhere.example"] }} }}
  - path: /none/{{ch}}
    sse: {{ channels: ["{{ch}}"] }}
  - path: /any/{{ch}}
    sse: {{ channels: ["{{ch}}"], cors: {{ origins: ["*"] }} }}
"#
    ));
    let _page = cors_page_backend(
        page_port,
        format!("http://127.0.0.1:{}", gw.port),
        reports.clone(),
    );
    let _browser = launch(&bin, &format!("{page_origin}/page"), &[]);

    let allowed = ["open", "cred", "cred-plain", "any"];
    let refused = ["open-cred", "other", "none", "any-cred"];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let opened = allowed
            .iter()
            .all(|n| kinds_of(&reports, n).contains(&"open".into()));
        let closed = refused
            .iter()
            .all(|n| kinds_of(&reports, n).contains(&"closed".into()));
        let fetched = ["preflight-open", "preflight-none"]
            .iter()
            .all(|n| !kinds_of(&reports, n).is_empty());
        if opened && closed && fetched {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page did not settle; reports: {:?}",
            reports.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in allowed.iter().chain(&refused) {
        gw.publish_ok(name, json!(format!("to {name}"))).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while !allowed
        .iter()
        .all(|n| kinds_of(&reports, n).contains(&"message".into()))
    {
        assert!(
            Instant::now() < deadline,
            "allowed streams got no event; reports: {:?}",
            reports.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in refused {
        let kinds = kinds_of(&reports, name);
        assert_eq!(
            kinds,
            ["closed"],
            "{name}: the browser refused it: {kinds:?}"
        );
    }
    assert_eq!(kinds_of(&reports, "preflight-open"), ["fetched"]);
    assert_eq!(kinds_of(&reports, "preflight-none"), ["refused"]);
}

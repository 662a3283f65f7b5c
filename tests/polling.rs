//! Polling end to end: the real binary polls a legacy backend written here
//! (an axum app whose answers the test sets and whose requests it counts) and
//! pushes what changed to real SSE clients. Timings use 100–200ms intervals
//! and counts with slack, so two busy cores do not make them flaky.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

// ---------------------------------------------------------------------------
// A legacy backend that can only be asked.

#[derive(Default)]
struct Answers {
    body: Mutex<String>,
    /// When set, sent as ETag, and a matching If-None-Match gets 304.
    etag: Mutex<Option<String>>,
    /// Non-zero: answer this status instead.
    status: AtomicU16,
    requests: AtomicU64,
    conditional: AtomicU64,
    not_modified: AtomicU64,
    /// Requests per Authorization value ("" when absent).
    by_auth: Mutex<HashMap<String, u64>>,
}

struct Legacy {
    port: u16,
    answers: Arc<Answers>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Legacy {
    fn start(body: &str) -> Legacy {
        Self::start_on(free_port(), body)
    }

    /// `/me` answers with the caller's Authorization; any other path with `body`.
    fn start_on(port: u16, body: &str) -> Legacy {
        use axum::extract::Request;
        use axum::http::{HeaderValue, StatusCode};
        use axum::response::{IntoResponse, Response};
        let answers = Arc::new(Answers::default());
        *answers.body.lock().unwrap() = body.to_string();
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
        let a = answers.clone();
        let (stop_tx, _thread) = serve_in_thread(listener, move || {
            let app = axum::Router::new().fallback(move |req: Request| {
                let a = a.clone();
                async move {
                    a.requests.fetch_add(1, Ordering::SeqCst);
                    let header = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string)
                    };
                    let auth = header("authorization").unwrap_or_default();
                    *a.by_auth.lock().unwrap().entry(auth.clone()).or_default() += 1;
                    let status = a.status.load(Ordering::SeqCst);
                    if status != 0 {
                        return StatusCode::from_u16(status).unwrap().into_response();
                    }
                    let etag = a.etag.lock().unwrap().clone();
                    if let Some(inm) = header("if-none-match") {
                        a.conditional.fetch_add(1, Ordering::SeqCst);
                        if etag.as_deref() == Some(inm.as_str()) {
                            a.not_modified.fetch_add(1, Ordering::SeqCst);
                            return StatusCode::NOT_MODIFIED.into_response();
                        }
                    }
                    let body = if req.uri().path() == "/me" {
                        format!("me:{auth}")
                    } else {
                        a.body.lock().unwrap().clone()
                    };
                    let mut resp: Response = body.into_response();
                    if let Some(e) = etag {
                        resp.headers_mut()
                            .insert("etag", HeaderValue::from_str(&e).unwrap());
                    }
                    resp
                }
            });
            app
        });
        Legacy {
            port,
            answers,
            stop: Some(stop_tx),
        }
    }

    fn set(&self, body: &str) {
        *self.answers.body.lock().unwrap() = body.to_string();
    }

    fn requests(&self) -> u64 {
        self.answers.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Legacy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

fn config(port: u16, routes: &str) -> String {
    format!(
        "hub:\n  history: {{ size: 100, ttl: 1h }}\nsse:\n  heartbeat: 1s\nupstreams:\n  legacy: {{ servers: [\"127.0.0.1:{port}\"], connect_timeout: 200ms }}\nroutes:\n{routes}"
    )
}

/// Wait (bounded) until the metric's value satisfies `ok`.
async fn wait_metric(gw: &Gateway, name: &str, ok: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let v = gw.metric(name).await;
        if ok(v) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {v} for {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn settle(d: Duration) {
    tokio::time::sleep(d).await;
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn fifty_subscribers_share_one_poller() {
    let legacy = Legacy::start("p1");
    let port = legacy.port;
    let gw = Gateway::start(&config(
        port,
        "  - path: /prices\n    sse:\n      poll: { upstream: legacy, path: /prices, interval: 100ms, event: prices }\n",
    ));
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(Sse::connect(&gw.url("/prices")).await);
    }
    for c in &mut clients {
        let ev = c.next().await;
        assert_eq!((ev.event.as_str(), ev.data.as_str()), ("snapshot", "p1"));
    }
    // The snapshot carries no cursor of its own: the client's resume point
    // stays the one its prelude gave it.
    let mut raw = Raw::get(gw.port, "/prices", &[]);
    raw.read_until(WAIT, "the snapshot", |t| t.contains("event: snapshot"));
    let body = raw.body();
    let prelude = prelude_of(&body);
    assert!(prelude.contains("\nid: "), "{body:?}");
    assert_eq!(&body[prelude.len()..], "event: snapshot\ndata: p1\n\n");
    assert_eq!(gw.metric("ssegate_pollers_active").await, 1.0);
    let before = legacy.requests();
    settle(Duration::from_secs(1)).await;
    let during = legacy.requests() - before;
    assert!(
        (3..=15).contains(&during),
        "50 subscribers over 1s at 100ms made {during} upstream requests"
    );
    legacy.set("p2");
    for c in &mut clients {
        let ev = c.next().await;
        assert_eq!((ev.event.as_str(), ev.data.as_str()), ("prices", "p2"));
        assert!(
            !ev.id.is_empty(),
            "changes go through the hub and can be resumed"
        );
    }
    assert!(gw.metric("ssegate_poll_changes_total").await >= 1.0);
    assert!(gw.metric("ssegate_poll_duration_seconds_count").await >= 3.0);
}

#[tokio::test]
async fn per_client_pollers_isolate_and_share() {
    let legacy = Legacy::start("unused");
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /me\n    sse:\n      poll: { upstream: legacy, path: /me, interval: 100ms, scope: per-client, forward_headers: [authorization] }\n",
    ));
    let mut a1 = Sse::connect_with(&gw.url("/me"), &[("authorization", "Bearer alice")]).await;
    let mut a2 = Sse::connect_with(&gw.url("/me"), &[("authorization", "Bearer alice")]).await;
    let mut b = Sse::connect_with(&gw.url("/me"), &[("authorization", "Bearer bob")]).await;
    assert_eq!(a1.next().await.data, "me:Bearer alice");
    assert_eq!(a2.next().await.data, "me:Bearer alice");
    assert_eq!(b.next().await.data, "me:Bearer bob");
    assert_eq!(
        gw.metric("ssegate_pollers_active").await,
        2.0,
        "same credentials share, different ones do not"
    );
    // Nobody ever sees the other's data, and the backend saw each credential.
    a1.silent_for(Duration::from_millis(400)).await;
    b.silent_for(Duration::from_millis(100)).await;
    let by_auth = legacy.answers.by_auth.lock().unwrap().clone();
    assert!(
        by_auth.get("Bearer alice").copied().unwrap_or(0) >= 1,
        "{by_auth:?}"
    );
    assert!(
        by_auth.get("Bearer bob").copied().unwrap_or(0) >= 1,
        "{by_auth:?}"
    );
    assert!(
        !by_auth.contains_key(""),
        "a per-client poll never goes out without the client's header: {by_auth:?}"
    );
    // Credentials never reach the logs, not even hashed channel names reveal them.
    assert!(!gw.log().contains("alice") && !gw.log().contains("bob"));
}

#[tokio::test]
async fn poller_stops_linger_after_the_last_subscriber() {
    let legacy = Legacy::start("x");
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /x\n    sse:\n      poll: { upstream: legacy, path: /x, interval: 100ms, linger: 300ms }\n",
    ));
    assert_eq!(
        legacy.requests(),
        0,
        "no poller runs for a route nobody listens to"
    );
    let mut c = Sse::connect(&gw.url("/x")).await;
    assert_eq!(c.next().await.event, "snapshot");
    drop(c);
    // Stopped within linger + one interval (+ slack for busy cores).
    wait_metric(&gw, "ssegate_pollers_active", |v| v == 0.0).await;
    let after = legacy.requests();
    settle(Duration::from_millis(600)).await;
    assert_eq!(
        legacy.requests(),
        after,
        "requests went on after the poller stopped"
    );
    // A new subscriber starts it again.
    let mut c = Sse::connect(&gw.url("/x")).await;
    assert_eq!(c.next().await.data, "x");
    assert_eq!(gw.metric("ssegate_pollers_active").await, 1.0);
}

#[tokio::test]
async fn etag_polls_conditionally_and_304_is_no_change() {
    let legacy = Legacy::start("v1 body");
    *legacy.answers.etag.lock().unwrap() = Some("\"v1\"".into());
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /e\n    sse:\n      poll: { upstream: legacy, path: /e, interval: 100ms, diff: etag }\n",
    ));
    let mut c = Sse::connect(&gw.url("/e")).await;
    assert_eq!(c.next().await.data, "v1 body");
    c.silent_for(Duration::from_millis(500)).await;
    let a = &legacy.answers;
    assert!(
        a.conditional.load(Ordering::SeqCst) >= 2,
        "polls after the first must be conditional"
    );
    assert!(
        a.not_modified.load(Ordering::SeqCst) >= 2,
        "the backend answered 304"
    );
    *a.etag.lock().unwrap() = Some("\"v2\"".into());
    legacy.set("v2 body");
    let ev = c.next().await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("update", "v2 body"));
    c.silent_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn json_items_emit_created_updated_deleted() {
    let legacy = Legacy::start(r#"{"data":[{"id":1,"v":"a"},{"id":2,"v":"b"}]}"#);
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /orders\n    sse:\n      poll: { upstream: legacy, path: /orders, interval: 100ms, diff: json-items, items: /data, key: id, events: { deleted: removed } }\n",
    ));
    let mut c = Sse::connect(&gw.url("/orders")).await;
    let snap = c.next().await;
    assert_eq!(
        (snap.event.as_str(), snap.data.as_str()),
        ("snapshot", r#"[{"id":1,"v":"a"},{"id":2,"v":"b"}]"#)
    );
    legacy.set(r#"{"data":[{"id":1,"v":"A"},{"id":3,"v":"c"}]}"#);
    let got: Vec<(String, String)> = c
        .take(3)
        .await
        .into_iter()
        .map(|e| (e.event, e.data))
        .collect();
    assert_eq!(
        got,
        vec![
            ("updated".to_string(), r#"{"id":1,"v":"A"}"#.to_string()),
            ("created".to_string(), r#"{"id":3,"v":"c"}"#.to_string()),
            ("removed".to_string(), "2".to_string()),
        ]
    );
    // Reformatting alone is no change.
    legacy.set(r#"{ "data": [ {"v":"A","id":1}, {"id":3,"v":"c"} ] }"#);
    c.silent_for(Duration::from_millis(400)).await;
    // A body that is not JSON is a poll error, not a crash and not an event.
    legacy.set("<html>oops</html>");
    wait_metric(&gw, "ssegate_poll_errors_total", |v| v >= 1.0).await;
    legacy.set(r#"{"data":[{"id":3,"v":"c"}]}"#);
    assert_eq!(c.next().await.event, "removed");
}

#[tokio::test]
async fn json_items_burst_becomes_one_snapshot() {
    let items = |v: &str| {
        let list: Vec<String> = (0..10)
            .map(|i| format!(r#"{{"id":{i},"v":"{v}"}}"#))
            .collect();
        format!("[{}]", list.join(","))
    };
    let legacy = Legacy::start(&items("a"));
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /many\n    sse:\n      client_queue: 8\n      poll: { upstream: legacy, path: /many, interval: 100ms, diff: json-items, items: \"\", key: id }\n",
    ));
    let mut c = Sse::connect(&gw.url("/many")).await;
    assert_eq!(c.next().await.data, items("a"));
    // Ten updates against a queue of eight: one snapshot instead, and the client stays.
    legacy.set(&items("b"));
    let ev = c.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("snapshot", items("b").as_str())
    );
    assert!(!ev.id.is_empty(), "it went through the hub");
    legacy.set(&items("b").replace(r#"{"id":3,"v":"b"}"#, r#"{"id":3,"v":"c"}"#));
    assert_eq!(c.next().await.data, r#"{"id":3,"v":"c"}"#);
}

#[tokio::test]
async fn json_patch_sends_rfc6902_patches() {
    let legacy = Legacy::start(r#"{"price":1,"tags":["a"]}"#);
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /doc\n    sse:\n      poll: { upstream: legacy, path: /doc, interval: 100ms, diff: json-patch }\n",
    ));
    let mut c = Sse::connect(&gw.url("/doc")).await;
    assert_eq!(c.next().await.data, r#"{"price":1,"tags":["a"]}"#);
    legacy.set(r#"{"price":2,"tags":["a"]}"#);
    let ev = c.next().await;
    assert_eq!(ev.event, "update");
    let patch: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        patch,
        serde_json::json!([{"op": "replace", "path": "/price", "value": 2}])
    );
}

#[tokio::test]
async fn new_subscriber_gets_the_latest_snapshot_at_once_and_resume_gets_replay() {
    let legacy = Legacy::start("s1");
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /s\n    sse:\n      poll: { upstream: legacy, path: /s, interval: 100ms }\n",
    ));
    let mut first = Sse::connect(&gw.url("/s")).await;
    assert_eq!(first.next().await.data, "s1");
    legacy.set("s2");
    let change = first.next().await;
    assert_eq!(change.data, "s2");
    let t = Instant::now();
    let mut late = Sse::connect(&gw.url("/s")).await;
    let ev = late.next().await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("snapshot", "s2"));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a warm poller answers at once: {:?}",
        t.elapsed()
    );
    // Resuming from before a change replays it, without a snapshot.
    legacy.set("s3");
    let s3 = first.next().await;
    let mut resumed = Sse::connect_with(&gw.url("/s"), &[("last-event-id", &change.id)]).await;
    let ev = resumed.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str(), ev.id.as_str()),
        ("update", "s3", s3.id.as_str())
    );
}

#[tokio::test]
async fn backend_down_then_up_backs_off_recovers_and_delivers() {
    let port = free_port();
    let gw = Gateway::start(&config(
        port,
        "  - path: /flaky\n    sse:\n      poll: { upstream: legacy, path: /flaky, interval: 100ms, timeout: 300ms, max_backoff: 400ms, error_event: poll.status }\n  - path: /other\n    sse: { channels: [other] }\n",
    ));
    let mut c = Sse::connect(&gw.url("/flaky")).await;
    let ev = c.next().await;
    assert_eq!(ev.event, "poll.status");
    let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(v["state"], "failing", "{v}");
    settle(Duration::from_millis(800)).await;
    let errors = gw.metric("ssegate_poll_errors_total").await;
    assert!(errors >= 2.0, "errors are counted: {errors}");
    // Backoff: at 100ms without it there would be ~8 errors in 800ms plus the first.
    assert!(
        errors <= 12.0,
        "{errors} errors in under a second: no backoff?"
    );
    // Other routes are untouched.
    let mut other = Sse::connect(&gw.url("/other")).await;
    gw.publish_ok("other", serde_json::json!("fine")).await;
    assert_eq!(other.next().await.data, "fine");

    let legacy = Legacy::start_on(port, "back");
    let got: Vec<(String, String)> = c
        .take(2)
        .await
        .into_iter()
        .map(|e| (e.event, e.data))
        .collect();
    assert_eq!(
        got[0],
        ("snapshot".to_string(), "back".to_string()),
        "{got:?}"
    );
    assert_eq!(got[1].0, "poll.status");
    assert!(got[1].1.contains("recovered"), "{got:?}");
    legacy.set("changed");
    assert_eq!(c.next().await.data, "changed");
    // 5xx counts as failing too, and recovers the same way.
    legacy.answers.status.store(503, Ordering::SeqCst);
    assert!(c.next().await.data.contains("503"));
    legacy.answers.status.store(0, Ordering::SeqCst);
    assert!(c.next().await.data.contains("recovered"));
    let log = gw.log();
    assert_eq!(
        log.matches("poll failing").count(),
        2,
        "one log line per state change:\n{log}"
    );
    assert_eq!(log.matches("poll recovered").count(), 2, "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[tokio::test]
async fn hundred_clients_at_once_start_exactly_one_poller() {
    let legacy = Legacy::start("crowd");
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /crowd\n    sse:\n      poll: { upstream: legacy, path: /crowd, interval: 200ms }\nlimits: { max_connections_per_ip: 0 }\n",
    ));
    let url = gw.url("/crowd");
    let connects = (0..100).map(|_| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut s = Sse::connect(&url).await;
            let ev = s.next().await;
            (s, ev)
        })
    });
    let mut streams = Vec::new();
    for j in futures_util::future::join_all(connects).await {
        let (s, ev) = j.unwrap();
        assert_eq!((ev.event.as_str(), ev.data.as_str()), ("snapshot", "crowd"));
        streams.push(s);
    }
    assert_eq!(gw.metric("ssegate_pollers_active").await, 1.0);
    let first_burst = legacy.requests();
    assert!(
        first_burst <= 5,
        "100 clients at once made {first_burst} upstream requests"
    );
}

#[tokio::test]
async fn poll_channels_cannot_be_named_by_clients() {
    let legacy = Legacy::start("secret");
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /open\n    sse: { allow_channels: [\"*\"] }\n",
    ));
    let r = client()
        .get(gw.url("/open?channel=poll:0:00"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

/// Upstream requests per second with 1, 100, 1,000 … subscribers on one shared
/// route: must stay at one poller's rate. Ignored by default (it holds many
/// sockets); run with
/// `SSEGATE_POLL_SUBSCRIBERS=1,100,10000 cargo test --test polling -- --ignored --nocapture upstream_rate`.
#[tokio::test]
#[ignore]
async fn upstream_rate_is_flat_in_subscribers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let counts: Vec<usize> = std::env::var("SSEGATE_POLL_SUBSCRIBERS")
        .unwrap_or_else(|_| "1,100,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let legacy = Legacy::start("rate");
    let gw = Gateway::start(&config(
        legacy.port,
        "  - path: /rate\n    sse:\n      poll: { upstream: legacy, path: /rate, interval: 100ms, linger: 1h }\nlimits: { max_connections_per_ip: 0 }\n",
    ));
    let mut held = Vec::new();
    for n in counts {
        let started = Instant::now();
        while held.len() < n {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
                .await
                .unwrap();
            s.write_all(b"GET /rate HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
                .await
                .unwrap();
            let mut buf = vec![0u8; 1024];
            let mut seen = Vec::new();
            while !String::from_utf8_lossy(&seen).contains("event: snapshot") {
                let k = tokio::time::timeout(WAIT, s.read(&mut buf))
                    .await
                    .expect("snapshot in time")
                    .unwrap();
                assert!(k > 0, "stream closed");
                seen.extend_from_slice(&buf[..k]);
            }
            held.push(s);
        }
        let connect = started.elapsed();
        let before = legacy.requests();
        settle(Duration::from_secs(3)).await;
        let rate = (legacy.requests() - before) as f64 / 3.0;
        println!(
            "subscribers={n} upstream_requests_per_s={rate:.1} (connect {connect:?}, rss {} MiB)",
            gw.rss() >> 20
        );
        assert!(
            rate <= 15.0,
            "{n} subscribers: {rate} requests/s at a 100ms interval"
        );
    }
}

//! Change without losing anyone (issue 12, SPEC §6): reload on SIGHUP and
//! reconnect-storm admission, through the real binary.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

const BASE: &str = "sse: { heartbeat: 1s, retry: 2s }
upstreams:
  app: { servers: [\"BACKEND\"] }
routes:
  - path: /api/{*rest}
    proxy: app
  - path: /events/{room}
    sse: { channels: [\"room:{room}\"] }
  - path: /other/{room}
    sse: { channels: [\"other:{room}\"] }
";

fn base(backend: &Backend) -> String {
    BASE.replace("BACKEND", &backend.addr.to_string())
}

/// The raw stream's event data lines, in order.
fn datas(raw: &Raw) -> Vec<String> {
    raw.body()
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn a_reload_changes_routes_and_webhooks_while_unchanged_streams_keep_flowing() {
    let backend = Backend::start();
    let gw = Gateway::start(&base(&backend));
    // Two raw streams: one on a route that stays, one on a route that changes.
    let mut kept = Raw::get(gw.port, "/events/a", &[]);
    kept.read_until(WAIT, "prelude", |t| t.contains(":ok"));
    let mut changed = Raw::get(gw.port, "/other/a", &[]);
    changed.read_until(WAIT, "prelude", |t| t.contains(":ok"));
    gw.publish_ok("room:a", json!("before")).await;
    kept.read_until(WAIT, "before", |t| t.contains("data: before"));
    let digest_before = client()
        .get(gw.admin("/stats"))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap()["config"]["digest"]
        .clone();

    // The new file: /events unchanged; /other's channel template changed;
    // a route and a webhook added; the proxy route removed.
    let new = format!(
        "sse: {{ heartbeat: 1s, retry: 2s }}
upstreams:
  app: {{ servers: [\"{}\"] }}
routes:
  - path: /events/{{room}}
    sse: {{ channels: [\"room:{{room}}\"] }}
  - path: /other/{{room}}
    sse: {{ channels: [\"renamed:{{room}}\"] }}
  - path: /new/{{room}}
    sse: {{ channels: [\"new:{{room}}\"] }}
webhooks:
  - path: /hooks/added
    channel: \"room:{{/room}}\"
",
        backend.addr
    );
    assert!(gw.reload(&new).await, "reload refused; log:\n{}", gw.log());

    // The stream on the unchanged route is the same TCP connection and gets
    // every event, before and after.
    gw.publish_ok("room:a", json!("after")).await;
    kept.read_until(WAIT, "after", |t| t.contains("data: after"));
    assert_eq!(datas(&kept), vec!["before", "after"]);
    // The stream on the changed route was told when to come back, and closed.
    let text = changed.read_until(WAIT, "retry and end", |t| t.ends_with("0\r\n\r\n"));
    let body = changed.body();
    let retry: u64 = body
        .lines()
        .filter_map(|l| l.strip_prefix("retry: "))
        .next_back()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no retry: in {text:?}"));
    assert!(
        (2000..=8000).contains(&retry),
        "a jittered retry from [retry, retry + max(2×retry, 5s)): {retry}"
    );
    // New routes and webhooks work; removed ones are gone.
    let mut fresh = Sse::connect(&gw.url("/new/x")).await;
    assert_eq!(fresh.status, 200);
    gw.publish_ok("new:x", json!("hello")).await;
    assert_eq!(fresh.next().await.data, "hello");
    let hook = client()
        .post(gw.admin("/hooks/added"))
        .json(&json!({"room": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(hook.status(), 202);
    kept.read_until(WAIT, "the webhook's event", |t| t.contains(r#""room":"a""#));
    let gone = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(gone.status(), 404, "the removed proxy route");
    let stats: serde_json::Value = client()
        .get(gw.admin("/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(stats["config"]["digest"], digest_before);
    assert!(stats["config"]["loaded_at"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
}

#[tokio::test]
async fn an_invalid_reload_keeps_the_running_config_and_names_every_error() {
    let backend = Backend::start();
    let gw = Gateway::start(&base(&backend));
    let mut s = Sse::connect(&gw.url("/events/b")).await;
    let bad = "sse: { heartbeat: soon }
routes:
  - path: /events/{room}
    sse: { channels: [\"room:{nope}\"] }
";
    assert!(!gw.reload(bad).await, "an invalid file must be refused");
    let log = gw.log();
    let written = std::fs::read_to_string(&gw.config_path).unwrap();
    let line_of = |needle: &str| 1 + written.lines().position(|l| l.contains(needle)).unwrap();
    for (needle, says) in [("soon", "not a duration"), ("{nope}", "{nope}")] {
        let at = format!("ssegate.yaml:{}:", line_of(needle));
        assert!(
            log.lines().any(|l| l.contains(&at) && l.contains(says)),
            "{at} {says}: {log}"
        );
    }
    // Still serving the old config: the stream flows, the proxy route works.
    gw.publish_ok("room:b", json!("still")).await;
    assert_eq!(s.next().await.data, "still");
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn settings_that_need_a_restart_are_logged_and_the_rest_applied() {
    let backend = Backend::start();
    let gw = Gateway::start(&base(&backend));
    let moved = base(&backend).replace(
        "routes:\n",
        "shutdown_grace: 3s\nhub: { history: { size: 5 } }\nroutes:\n  - path: /added/{room}\n    sse: { channels: [\"room:{room}\"] }\n",
    );
    assert!(gw.reload(&moved).await, "{}", gw.log());
    let log = gw.log();
    assert!(log.contains("`hub` changed"), "{log}");
    assert!(log.contains("`shutdown_grace` changed"), "{log}");
    let mut s = Sse::connect(&gw.url("/added/c")).await;
    assert_eq!(s.status, 200, "the rest was applied");
    gw.publish_ok("room:c", json!("x")).await;
    assert_eq!(s.next().await.data, "x");
}

#[tokio::test]
async fn over_the_stream_rate_clients_are_told_to_retry_later_never_refused() {
    let backend = Backend::start();
    let gw = Gateway::start(&base(&backend).replace(
        "routes:\n",
        "limits: { stream_rate: { per_second: 1, burst: 2 } }\nroutes:\n",
    ));
    let mut statuses = Vec::new();
    let mut deferred = Vec::new();
    for i in 0..6 {
        let mut raw = Raw::get(gw.port, &format!("/events/s{i}"), &[]);
        let text = raw.read_until(WAIT, "an answer", |t| {
            t.contains("\r\n\r\n") && t.contains("retry:")
        });
        statuses.push(text.split(' ').nth(1).unwrap_or("").to_string());
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: text/event-stream"),
            "{head}"
        );
        if !raw.body().contains(":ok") {
            assert!(raw.closes_within(WAIT), "a deferral closes its connection");
            deferred.push(body.to_string());
        }
    }
    assert!(statuses.iter().all(|s| s == "200"), "{statuses:?}");
    assert!(
        deferred.len() >= 3,
        "at most the burst (2) plus one refill streams: {deferred:?}"
    );
    for body in &deferred {
        let retry: u64 = body
            .trim()
            .strip_prefix("retry: ")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("only a retry: {body:?}"));
        assert!(
            (2000..=8000).contains(&retry),
            "in [retry, 4×retry]: {retry}"
        );
    }
    assert_eq!(
        gw.metric("ssegate_streams_deferred_total").await,
        deferred.len() as f64
    );
}

/// The forward-auth backend for the storm: allows every `Bearer u<n>`, a
/// little slowly (so that identical requests overlap), and counts calls.
fn slow_auth_backend() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    impl Drop,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let app = axum::Router::new().route(
        "/auth",
        axum::routing::get(move |h: axum::http::HeaderMap| {
            let c = c.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                let ok = h
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.starts_with("Bearer u"));
                if ok {
                    axum::http::StatusCode::OK
                } else {
                    axum::http::StatusCode::UNAUTHORIZED
                }
            }
        }),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, _thread) = serve_in_thread(listener, move || app);
    (addr, calls, StopOnDrop(Some(stop)))
}

struct StopOnDrop(Option<tokio::sync::oneshot::Sender<()>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            let _ = s.send(());
        }
    }
}

/// One storm client: connects until it gets a stream (honouring each
/// deferral's `retry:` as EventSource does), then waits for `data: go`.
/// Ok(times deferred), or the status of a refusal.
async fn storm_client(
    port: u16,
    user: usize,
    streaming: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> Result<usize, String> {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut deferred = 0;
    loop {
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!(
            "GET /storm HTTP/1.1\r\nHost: storm\r\nAccept: text/event-stream\r\nAuthorization: Bearer u{user}\r\n\r\n"
        );
        tcp.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Until the prelude (streaming) or the end of a deferral (EOF).
        let text = loop {
            let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if n == 0 || text.contains(":ok") {
                break text;
            }
        };
        let status = text.split(' ').nth(1).unwrap_or("").to_string();
        if status != "200" {
            return Err(status);
        }
        if text.contains(":ok") {
            streaming.fetch_add(1, Ordering::SeqCst);
            let mut seen = text;
            while !seen.contains("data: go") {
                let n = tcp.read(&mut chunk).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("stream ended".into());
                }
                seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
            return Ok(deferred);
        }
        deferred += 1;
        let retry: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("retry: "))
            .next_back()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("a deferral without retry: {text:?}"))?;
        tokio::time::sleep(std::time::Duration::from_millis(retry)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_client_reconnect_storm_with_stream_rate_gets_no_5xx_and_one_auth_call_per_credential(
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const CLIENTS: usize = 10_000;
    const USERS: usize = 50;
    // This process holds every client socket.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let (auth, calls, _auth_server) = slow_auth_backend();
    // Bursts of 100 at 1,000/s: even a loaded machine accepts these clients
    // faster than that, so the storm is always over the rate.
    let gw = Gateway::start(&format!(
        "sse: {{ heartbeat: 5s, retry: 1s }}
limits: {{ max_connections: 0, stream_rate: {{ per_second: 1000, burst: 100 }} }}
upstreams:
  auth: {{ servers: [\"{auth}\"] }}
routes:
  - path: /storm
    sse:
      channels: [storm]
      auth: {{ forward: {{ upstream: auth, path: /auth, forward_headers: [authorization], cache_ttl: 5m }} }}
"
    ));
    let streaming = Arc::new(AtomicUsize::new(0));
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| tokio::spawn(storm_client(gw.port, i % USERS, streaming.clone())))
        .collect();
    // Every client streams, or one ended with an error (reported below).
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while streaming.load(Ordering::SeqCst) + clients.iter().filter(|c| c.is_finished()).count()
        < CLIENTS
    {
        assert!(
            std::time::Instant::now() < deadline,
            "after 120 s {} of {CLIENTS} streaming, {} ended; auth calls {}; deferred {}",
            streaming.load(Ordering::SeqCst),
            clients.iter().filter(|c| c.is_finished()).count(),
            calls.load(Ordering::SeqCst),
            gw.metric("ssegate_streams_deferred_total").await,
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    gw.publish_ok("storm", json!("go")).await;
    let mut deferrals = 0;
    let mut refused = Vec::new();
    for c in clients {
        match tokio::time::timeout(Duration::from_secs(60), c).await {
            Ok(Ok(Ok(d))) => deferrals += d,
            Ok(Ok(Err(why))) => refused.push(why),
            other => panic!("a storm client: {other:?}"),
        }
    }
    assert!(
        refused.is_empty(),
        "{} refused: {:?}",
        refused.len(),
        &refused[..refused.len().min(5)]
    );
    assert!(
        deferrals > 0,
        "the storm was over the rate, so some were deferred"
    );
    assert_eq!(
        gw.metric("ssegate_streams_deferred_total").await,
        deferrals as f64
    );
    let calls = calls.load(Ordering::SeqCst);
    assert!(
        calls <= USERS,
        "{calls} forward-auth calls for {USERS} distinct credentials"
    );
    eprintln!(
        "{CLIENTS} clients streaming after {took:?}; {deferrals} deferrals; {calls} auth calls"
    );
}

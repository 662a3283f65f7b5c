//! Seeing it (SPEC §6): the series `/metrics` adds (event age by source,
//! process, build, hub, proxy duration, auth decisions, forward-auth cache)
//! and the access log with request ids, through the real binary.

mod support;

use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use support::*;

/// A legacy endpoint whose body changes on every request: each poll is a change.
fn counter() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let n = Arc::new(AtomicU64::new(0));
    let (stop, _thread) = serve_in_thread(listener, move || {
        axum::Router::new().route(
            "/n",
            axum::routing::get(move || {
                let n = n.clone();
                async move { format!("{{\"n\":{}}}", n.fetch_add(1, Ordering::Relaxed)) }
            }),
        )
    });
    (addr, stop)
}

#[tokio::test]
async fn metrics_show_event_age_by_source_and_the_gateway_around_it() {
    let backend = Backend::start();
    let (feed, _stop) = counter();
    let gw = Gateway::start_with_env(
        &format!(
            "
upstreams:
  app: {{ servers: [\"{}\"] }}
  feed: {{ servers: [\"{feed}\"] }}
routes:
  - path: /api/{{*rest}}
    proxy: app
  - path: /events/{{name}}
    sse: {{ channels: [\"room:{{name}}\"] }}
  - path: /private/{{name}}
    sse:
      channels: [\"room:{{name}}\"]
      auth: {{ forward: {{ upstream: app, path: \"/allow/{{name}}\", cache_ttl: 30s }} }}
  - path: /me
    sse:
      channels: [\"me\"]
      auth: {{ jwt: {{ secret_env: JWT_SECRET, algorithms: [HS256] }} }}
  - path: /ticks
    sse:
      poll: {{ upstream: feed, path: /n, interval: 100ms }}
webhooks:
  - path: /hooks/x
    channel: \"room:{{/room}}\"
",
            backend.addr
        ),
        &[("JWT_SECRET", "s3cret")],
    );
    let mut a = Sse::connect(&gw.url("/events/a")).await;
    gw.publish_ok("room:a", json!("native")).await;
    let grip = json!({"items": [{"channel": "room:a",
        "formats": {"http-stream": {"content": "data: grip\n\n"}}}]});
    let r = client()
        .post(gw.admin("/publish/"))
        .json(&grip)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .post(gw.admin("/hooks/x"))
        .json(&json!({"room": "a", "what": "hook"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let got: Vec<String> = a.take(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got[0], "native");
    assert_eq!(got[1], "grip");
    assert!(got[2].contains("hook"), "{got:?}");

    // A poll route: the snapshot goes straight to the client (not an event
    // of any source); each later change is a poll event.
    let mut ticks = Sse::connect(&gw.url("/ticks")).await;
    let first = ticks.take(3).await;
    assert_eq!(first[0].event, "snapshot", "{first:?}");

    // Forward auth: one backend call, then the cache.
    let _p1 = Sse::connect(&gw.url("/private/a")).await;
    let _p2 = Sse::connect(&gw.url("/private/a")).await;
    // JWT: no token, denied.
    let r = client().get(gw.url("/me")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    // One pass-through request.
    let r = client().get(gw.url("/api/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();

    let gw = &gw;
    let m = |s: &'static str| async move { gw.metric(s).await };
    for source in ["publish", "grip", "webhook"] {
        let n = gw
            .metric(&format!(
                "ssegate_event_age_seconds_count{{source=\"{source}\"}}"
            ))
            .await;
        assert_eq!(n, 1.0, "one {source} event written to one client");
    }
    assert!(m("ssegate_event_age_seconds_count{source=\"poll\"}").await >= 2.0);
    assert_eq!(
        m("ssegate_event_age_seconds_count{source=\"record\"}").await,
        0.0
    );
    assert!(m("ssegate_event_age_seconds_sum{source=\"publish\"}").await < 5.0);
    assert_eq!(
        m("ssegate_auth_decisions_total{kind=\"forward\",outcome=\"allow\"}").await,
        2.0
    );
    assert_eq!(
        m("ssegate_auth_decisions_total{kind=\"jwt\",outcome=\"deny\"}").await,
        1.0
    );
    assert_eq!(
        m("ssegate_forward_auth_lookups_total{result=\"miss\"}").await,
        1.0
    );
    assert_eq!(
        m("ssegate_forward_auth_lookups_total{result=\"hit\"}").await,
        1.0
    );
    assert_eq!(
        m("ssegate_proxy_request_duration_seconds_count{upstream=\"app\"}").await,
        1.0
    );
    // Streams on /events/a, /ticks and twice /private/a.
    assert_eq!(m("ssegate_hub_subscriptions ").await, 4.0);
    assert!(m("ssegate_hub_channels ").await >= 2.0);
    assert!(m("ssegate_hub_history_events ").await >= 3.0);
    assert_eq!(m("ssegate_broker_up ").await, 1.0);
    assert_eq!(m("ssegate_draining ").await, 0.0);
    assert!(m("process_open_fds ").await >= 4.0);
    assert!(m("process_max_fds ").await > 0.0);
    assert!(m("process_resident_memory_bytes ").await > 0.0);
    let text = gw.metrics_text().await;
    let build = text
        .lines()
        .find(|l| l.starts_with("ssegate_build_info{"))
        .expect("ssegate_build_info");
    assert!(
        build.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build.contains("revision=\"")
            && build.ends_with(" 1"),
        "{build}"
    );
}

/// The log lines of target `ssegate::access`.
fn access_lines(gw: &Gateway) -> Vec<String> {
    gw.log()
        .lines()
        .filter(|l| l.contains("ssegate::access"))
        .map(str::to_string)
        .collect()
}

async fn access_line(gw: &Gateway, what: &str, pred: impl Fn(&str) -> bool) -> String {
    eventually(WAIT, what, || {
        access_lines(gw).into_iter().find(|l| pred(l))
    })
    .await
}

#[tokio::test]
async fn access_log_has_a_line_per_request_and_per_ended_stream_with_request_ids() {
    let backend = Backend::start();
    let gw = Gateway::start(&format!(
        "
access_log: true
upstreams:
  app: {{ servers: [\"{}\"] }}
routes:
  - path: /api/{{*rest}}
    proxy: app
  - path: /events/{{name}}
    sse: {{ channels: [\"room:{{name}}\"] }}
",
        backend.addr
    ));
    // The client's id is kept: upstream and back.
    let r = client()
        .get(gw.url("/api/given?access_token=secret"))
        .header("x-request-id", "req-given-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-given-1");
    let echoed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-request-id"], "req-given-1");
    let line = access_line(&gw, "the proxied request's line", |l| {
        l.contains("req-given-1")
    })
    .await;
    for part in [
        "kind=request",
        "route=/api/{*rest}",
        "method=GET",
        "path=/api/given",
        "status=200",
        "upstream=app",
        "end=done",
        "client=127.0.0.1",
    ] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    assert!(line.contains("duration_ms="), "{line}");
    assert!(!line.contains("secret"), "a query is never logged: {line}");

    // None given: one is made, sent upstream and returned.
    let r = client().get(gw.url("/api/fresh")).send().await.unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "{id}");
    let echoed: serde_json::Value = r.json().await.unwrap();
    assert_eq!(echoed["headers"]["x-request-id"], id.as_str());
    access_line(&gw, "the generated id's line", |l| l.contains(&id)).await;

    // A refused request has its line too.
    let r = client().get(gw.url("/nowhere")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    access_line(&gw, "the 404's line", |l| {
        l.contains("path=/nowhere") && l.contains("status=404")
    })
    .await;

    // A stream: its line comes when it ends, with what it wrote.
    let mut s = Sse::connect_with(&gw.url("/events/a"), &[("x-request-id", "stream-1")]).await;
    assert!(
        access_lines(&gw).iter().all(|l| !l.contains("stream-1")),
        "no line while the stream is open"
    );
    gw.publish_ok("room:a", json!("one")).await;
    gw.publish_ok("room:a", json!("two")).await;
    assert_eq!(s.take(2).await.len(), 2);
    drop(s);
    let line = access_line(&gw, "the stream's line", |l| l.contains("stream-1")).await;
    for part in [
        "kind=stream",
        "route=/events/{name}",
        "status=200",
        "events=2",
        "end=client_gone",
    ] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    let bytes: u64 = line
        .split("bytes=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(bytes > 20, "the prelude and two frames: {line}");
}

/// An HTTP/2 stream's events mostly go out through the hub's direct path,
/// which the stream never sees: its line counts them all the same.
#[tokio::test]
async fn an_http2_stream_s_line_counts_the_events_the_hub_wrote_directly() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::TestCa::new("access-h2");
    let (cert, key) = ca.issue(dir.path(), "server");
    let gw = Gateway::start(&format!(
        "access_log: true\ntls: {{ cert: \"{}\", key: \"{}\" }}\nroutes:\n  - path: /e/{{n}}\n    sse: {{ channels: [\"c:{{n}}\"] }}\n",
        cert.display(),
        key.display()
    ));
    let url = format!("https://localhost:{}/e/h2", gw.port);
    let mut s =
        Sse::connect_using(&ca.reqwest(false), &url, &[("x-request-id", "h2-stream-1")]).await;
    assert_eq!(s.version, reqwest::Version::HTTP_2);
    // One at a time: the stream is parked between them, so the hub writes
    // each one into the stream's send half itself.
    for n in 0..3 {
        gw.publish_ok("c:h2", json!(n)).await;
        assert_eq!(s.next().await.data, n.to_string());
    }
    drop(s);
    let line = access_line(&gw, "the h2 stream's line", |l| l.contains("h2-stream-1")).await;
    assert!(line.contains("events=3"), "{line}");
}

/// A stream a live upgrade moves ends in the old process as `handed_off`
/// (not as a client gone: the client saw nothing), and goes on in the new
/// one, which writes no line for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_a_live_upgrade_moves_ends_its_line_as_handed_off() {
    let gw = Gateway::start(
        "
access_log: true
upgrade_socket: up.sock
routes:
  - path: /events/{name}
    sse: { channels: [\"room:{name}\"] }
",
    );
    let mut s = Sse::connect_with(&gw.url("/events/a"), &[("x-request-id", "moved-1")]).await;
    gw.publish_ok("room:a", json!("one")).await;
    assert_eq!(s.take(1).await.len(), 1);
    let mut old = gw;
    let new = old.take_over(&[]);
    let line = access_lines(&old)
        .into_iter()
        .find(|l| l.contains("moved-1"))
        .unwrap_or_else(|| panic!("no line for the moved stream; old log:\n{}", old.log()));
    for part in ["kind=stream", "events=1", "end=handed_off"] {
        assert!(line.contains(part), "`{part}` missing from: {line}");
    }
    new.publish_ok("room:a", json!("two")).await;
    assert_eq!(s.next().await.data, "two", "the same connection goes on");
    assert!(
        access_lines(&new).iter().all(|l| !l.contains("moved-1")),
        "the new process writes no line for an adopted stream"
    );
}

#[tokio::test]
async fn access_lines_follow_the_json_log_format() {
    let gw = Gateway::start_with_args(
        "
access_log: true
routes:
  - path: /events/{name}
    sse: { channels: [\"room:{name}\"] }
",
        &[],
        &["--log-format", "json"],
    );
    let r = client().get(gw.url("/missing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let line = access_line(&gw, "a JSON access line", |l| l.contains("/missing")).await;
    let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object per line");
    assert_eq!(v["target"], "ssegate::access", "{v}");
    let f = &v["fields"];
    assert_eq!(f["status"], 404, "{v}");
    assert_eq!(f["method"], "GET", "{v}");
    assert_eq!(f["path"], "/missing", "{v}");
    assert!(f["duration_ms"].is_number(), "{v}");
    assert_eq!(f["request_id"].as_str().map(str::len), Some(32), "{v}");
}

#[tokio::test]
async fn without_access_log_requests_are_left_as_they_are() {
    let backend = Backend::start();
    let gw = Gateway::start(&format!(
        "
upstreams:
  app: {{ servers: [\"{}\"] }}
routes:
  - path: /api/{{*rest}}
    proxy: app
",
        backend.addr
    ));
    let r = client().get(gw.url("/api/x")).send().await.unwrap();
    assert!(r.headers().get("x-request-id").is_none());
    let echoed: serde_json::Value = r.json().await.unwrap();
    assert!(echoed["headers"].get("x-request-id").is_none(), "{echoed}");
    assert!(access_lines(&gw).is_empty());
}

/// Series names in a text: `ssegate_…` and `process_…` words, without the
/// histogram suffixes.
fn series_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("ssegate_") || word.starts_with("process_") {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| word.strip_suffix(s))
                .unwrap_or(word);
            out.insert(base.to_string());
        }
    }
    out
}

#[tokio::test]
async fn every_series_is_documented_and_the_operating_docs_name_real_ones() {
    let root = env!("CARGO_MANIFEST_DIR");
    let read = |p: &str| std::fs::read_to_string(format!("{root}/{p}")).unwrap();
    let metrics_md = read("docs/metrics.md");
    let documented: std::collections::BTreeSet<String> = metrics_md
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(str::to_string)
        .collect();
    assert!(documented.len() > 30, "{documented:?}");

    // What the binary exports (families with children once used) is documented.
    let gw = Gateway::start("routes:\n  - path: /e/{n}\n    sse: { channels: [\"c:{n}\"] }\n");
    let _s = Sse::connect(&gw.url("/e/1")).await;
    gw.publish_ok("c:1", json!(1)).await;
    let text = gw.metrics_text().await;
    let exported: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    assert!(exported.len() > 20, "{text}");
    for name in &exported {
        assert!(
            documented.contains(*name),
            "{name} is not in docs/metrics.md"
        );
    }
    // Every documented ssegate series exists in the code.
    let mut src = String::new();
    for dir in ["src", "src/metrics"] {
        for f in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "rs") {
                src.push_str(&std::fs::read_to_string(p).unwrap());
            }
        }
    }
    for name in documented.iter().filter(|n| n.starts_with("ssegate_")) {
        assert!(
            src.contains(&format!("\"{name}\"")),
            "{name} is documented but never registered"
        );
    }

    // The operating guide's graphs and rules name documented series only,
    // and its rules are a Prometheus rule file with the five alerts.
    let operating = read("docs/monitoring.md");
    for name in series_in(&operating) {
        assert!(
            documented.contains(&name),
            "docs/monitoring.md names {name}, which does not exist"
        );
    }
    let rules = operating
        .split("## Alert rules")
        .nth(1)
        .and_then(|r| r.split("```yaml\n").nth(1))
        .and_then(|r| r.split("```").next())
        .expect("a yaml block under ## Alert rules");
    let rules: serde_json::Value = serde_yaml::from_str(rules).expect("the rules are YAML");
    let alerts: Vec<&str> = rules["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for want in [
        "SsegateDeliveryLatencyHigh",
        "SsegateSlowClientDisconnects",
        "SsegatePollErrors",
        "SsegateBrokerDown",
        "SsegateFileDescriptorsNearLimit",
    ] {
        assert!(alerts.contains(&want), "{want} missing: {alerts:?}");
    }
}

#[tokio::test]
async fn the_served_certificate_s_expiry_is_a_metric() {
    let dir = tempfile::tempdir().unwrap();
    let ca = support::tls::TestCa::new("expiry");
    let (cert, key) = ca.issue(dir.path(), "server");
    let gw = Gateway::start(&format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}\nroutes:\n  - path: /e/{{n}}\n    sse: {{ channels: [\"c:{{n}}\"] }}\n",
        cert.display(),
        key.display()
    ));
    let expiry = gw
        .metric("ssegate_tls_certificate_expiry_timestamp_seconds ")
        .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert!(expiry > now + 86400.0, "{expiry} is not after tomorrow");
}

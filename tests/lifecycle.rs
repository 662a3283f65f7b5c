//! Change without losing anyone (issue 12, SPEC §6): reload on SIGHUP and
//! reconnect-storm admission, through the real binary.

mod support;

use serde_json::json;
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

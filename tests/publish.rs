//! The admin listener end to end: publish API (native and GRIP, with Pushpin's
//! own `gripcontrol` library), dedupe, refusals, health, metrics, stats,
//! dashboard, and the SIGTERM drain.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

const BASE: &str = "
sse: { heartbeat: 5s, retry: 1s }
limits: { max_body: 4KiB }
routes:
  - path: /events/{room}
    sse: { channels: [\"room:{room}\"] }
";

#[tokio::test]
async fn single_and_batch_publish_answer_counts() {
    let gw = Gateway::start(BASE);
    let mut s = Sse::connect(&gw.url("/events/b")).await;
    let (st, v) = gw.publish(json!({"channel": "room:b", "event": "one", "data": "1"})).await;
    assert_eq!((st, v), (200, json!({"published": 1})));
    let items: Vec<_> = (0..3).map(|i| json!({"channel": "room:b", "data": i})).collect();
    let (st, v) = gw.publish(json!({ "items": items })).await;
    assert_eq!((st, v), (200, json!({"published": 3})));
    let evs = s.take(4).await;
    assert_eq!(evs[0].event, "one");
    assert_eq!(evs.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(), vec!["1", "0", "1", "2"]);
}

#[tokio::test]
async fn publisher_ids_are_deduplicated() {
    let gw = Gateway::start(BASE);
    let mut s = Sse::connect(&gw.url("/events/d")).await;
    let (_, v) = gw.publish(json!({"channel": "room:d", "id": "evt-1", "data": "first"})).await;
    assert_eq!(v, json!({"published": 1}));
    let (st, v) = gw.publish(json!({"channel": "room:d", "id": "evt-1", "data": "again"})).await;
    assert_eq!(st, 200);
    assert_eq!(v, json!({"published": 0, "duplicates": 1}));
    gw.publish_ok("room:d", json!("after")).await;
    let got: Vec<String> = s.take(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec!["first", "after"]);
}

#[tokio::test]
async fn bad_publishes_are_refused_with_reasons_and_publish_nothing() {
    let gw = Gateway::start(BASE);
    let mut s = Sse::connect(&gw.url("/events/bad")).await;
    let c = client();
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"not json".to_vec(), 400, "not JSON"),
        (br#"{"data":"x"}"#.to_vec(), 400, "channel"),
        (br#"{"channel":"room:bad x","data":"x"}"#.to_vec(), 400, "outside"),
        (br#"{"channel":"room:bad","event":"a\nb","data":"x"}"#.to_vec(), 400, "CR or LF"),
        (br#"{"items":[{"channel":"room:bad","data":"ok"},{"channel":"room:bad"}]}"#.to_vec(), 400, "items[1]"),
        (format!(r#"{{"channel":"room:bad","data":"{}"}}"#, "x".repeat(5000)).into_bytes(), 413, "max_body"),
    ];
    for (body, status, why) in cases {
        let r = c.post(gw.admin("/publish")).body(body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status);
        let v: serde_json::Value = r.json().await.unwrap();
        assert!(v["error"].as_str().unwrap().contains(why), "{v} should say {why}");
    }
    gw.publish_ok("room:bad", json!("only this")).await;
    assert_eq!(s.next().await.data, "only this", "nothing from a refused request was published");
}

#[tokio::test]
async fn admin_token_guards_publish() {
    let body = format!("{BASE}admin:\n  token_env: TEST_ADMIN_TOKEN\n");
    let gw = Gateway::start_with_env(&body, &[("TEST_ADMIN_TOKEN", "t0ken")]);
    let c = client();
    let msg = json!({"channel": "room:t", "data": "x"});
    let r = c.post(gw.admin("/publish")).json(&msg).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c.post(gw.admin("/publish")).bearer_auth("wrong").json(&msg).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = c.post(gw.admin("/publish")).bearer_auth("t0ken").json(&msg).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

fn python() -> String {
    std::env::var("SSEGATE_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Run Pushpin's `gripcontrol` publisher against the admin listener.
fn gripcontrol(admin: &str, script: &str) {
    let prog = format!(
        "from gripcontrol import GripPubControl, HttpStreamFormat\nfrom pubcontrol import Item\npub = GripPubControl({{'control_uri': '{admin}'}})\n{script}\npub.close()\n"
    );
    let out = std::process::Command::new(python()).args(["-c", &prog]).output().expect("python");
    assert!(
        out.status.success(),
        "gripcontrol failed (run the tests with scripts/test, which installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn pushpin_gripcontrol_publishes_unchanged() {
    let gw = Gateway::start(BASE);
    let mut s = Sse::connect(&gw.url("/events/grip")).await;
    let mut raw = Raw::get(gw.port, "/events/grip", &[]);
    raw.read_until(WAIT, "prelude", |t| t.contains(":ok"));
    let admin = gw.admin("");
    tokio::task::spawn_blocking(move || {
        gripcontrol(
            &admin,
            "pub.publish_http_stream('room:grip', 'event: greet\\ndata: hello grip\\n\\n', blocking=True)\n\
             pub.publish_http_stream('room:grip', 'data: with id\\n\\n', id='g-2', prev_id='g-1', blocking=True)",
        )
    })
    .await
    .unwrap();
    let ev = s.next().await;
    assert_eq!((ev.event.as_str(), ev.data.as_str()), ("greet", "hello grip"));
    assert!(!ev.id.is_empty(), "the gateway adds its cursor to GRIP SSE content");
    let ev2 = s.next().await;
    assert_eq!(ev2.data, "with id");
    raw.read_until(WAIT, "raw grip content", |t| t.contains("with id"));
    let body = raw.body();
    assert!(body.contains("event: greet\ndata: hello grip\n\n"), "content must reach clients verbatim: {body:?}");
    // The GRIP item id dedupes like a native id.
    let admin = gw.admin("");
    tokio::task::spawn_blocking(move || {
        gripcontrol(&admin, "pub.publish_http_stream('room:grip', 'data: with id\\n\\n', id='g-2', blocking=True)")
    })
    .await
    .unwrap();
    gw.publish_ok("room:grip", json!("native after")).await;
    assert_eq!(s.next().await.data, "native after");
    // Resume works for GRIP publishers too.
    let mut again = Sse::connect_with(&gw.url("/events/grip"), &[("last-event-id", &ev.id)]).await;
    let replay: Vec<String> = again.take(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(replay, vec!["with id", "native after"]);
}

#[tokio::test]
async fn grip_close_action_ends_streams() {
    let gw = Gateway::start(BASE);
    let mut s = Sse::connect(&gw.url("/events/bye")).await;
    gw.publish_ok("room:bye", json!("last words")).await;
    let admin = gw.admin("");
    tokio::task::spawn_blocking(move || {
        gripcontrol(&admin, "pub.publish('room:bye', Item(HttpStreamFormat(close=True)), blocking=True)")
    })
    .await
    .unwrap();
    let seen = s.ends(WAIT).await;
    assert_eq!(seen.into_iter().map(|e| e.data).collect::<Vec<_>>(), vec!["last words"]);
}

#[tokio::test]
async fn health_readiness_metrics_stats_and_dashboard() {
    let gw = Gateway::start(BASE);
    let c = client();
    let r = c.get(gw.admin("/healthz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = c.get(gw.admin("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let mut s = Sse::connect(&gw.url("/events/m")).await;
    gw.publish_ok("room:m", json!("x")).await;
    s.next().await;
    let text = c.get(gw.admin("/metrics")).send().await.unwrap().text().await.unwrap();
    for name in [
        "ssegate_connections{route=\"/events/{room}\"} 1",
        "ssegate_events_published_total 1",
        "ssegate_events_delivered_total 1",
        "ssegate_delivery_latency_seconds_count 1",
        "ssegate_slow_client_disconnects_total 0",
    ] {
        assert!(text.contains(name), "/metrics lacks {name:?}:\n{text}");
    }
    let stats: serde_json::Value = c.get(gw.admin("/stats")).send().await.unwrap().json().await.unwrap();
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["events"]["published"], 1);
    assert_eq!(stats["hub"]["subscriptions"], 1);
    let page = c.get(gw.admin("/")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("EventSource('/stats/stream')"));
    let mut feed = Sse::connect(&gw.admin("/stats/stream")).await;
    let ev = feed.next().await;
    assert_eq!(ev.event, "stats");
    let v: serde_json::Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(v["connections"], 1);
    let r = c.get(gw.admin("/nope")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn sigterm_drains_with_jittered_retry_and_exits_zero() {
    let mut gw = Gateway::start(&format!("shutdown_grace: 5s\n{BASE}"));
    let mut raws: Vec<Raw> = (0..6).map(|_| Raw::get(gw.port, "/events/drain", &[])).collect();
    for r in &mut raws {
        r.read_until(WAIT, "prelude", |t| t.contains(":ok"));
    }
    let t = std::time::Instant::now();
    gw.signal("-TERM");
    let mut retries = Vec::new();
    for r in &mut raws {
        r.read_until(WAIT, "drain retry and close", |t| t.ends_with("0\r\n\r\n"));
        let body = r.body();
        let retry: u64 = body
            .lines()
            .filter_map(|l| l.strip_prefix("retry: "))
            .next_back()
            .and_then(|v| v.parse().ok())
            .unwrap();
        retries.push(retry);
    }
    assert!(retries.iter().all(|r| (1000..=6000).contains(r)), "{retries:?}");
    let distinct: std::collections::HashSet<_> = retries.iter().collect();
    assert!(distinct.len() > 1, "retry values are not jittered: {retries:?}");
    let code = gw.wait_exit(Duration::from_secs(8));
    assert_eq!(code, Some(0), "log:\n{}", gw.log());
    assert!(t.elapsed() < Duration::from_secs(4), "drained streams should exit at once, took {:?}", t.elapsed());
}

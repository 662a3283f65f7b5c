//! Cluster mode: gateways sharing one real redis-server act as one.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

fn config(redis: &str) -> String {
    format!(
        "
hub:
  broker: redis
  redis: {{ url: \"{redis}\", prefix: t }}
  history: {{ size: 50, ttl: 1h }}
sse: {{ heartbeat: 1s }}
routes:
  - path: /events/{{room}}
    sse: {{ channels: [\"room:{{room}}\"] }}
"
    )
}

async fn ready(gw: &Gateway) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = client().get(gw.admin("/readyz")).send().await.unwrap();
        if r.status().as_u16() == 200 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gateway never became ready:\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn publish_on_one_instance_reaches_subscribers_of_the_other() {
    let redis = Redis::start();
    let a = Gateway::start(&config(&redis.url()));
    let b = Gateway::start(&config(&redis.url()));
    ready(&a).await;
    ready(&b).await;
    let mut on_a = Sse::connect(&a.url("/events/x")).await;
    let mut on_b = Sse::connect(&b.url("/events/x")).await;
    for i in 0..20 {
        let gw = if i % 2 == 0 { &a } else { &b };
        gw.publish_ok("room:x", json!(i)).await;
    }
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    let got_a: Vec<String> = on_a.take(20).await.into_iter().map(|e| e.data).collect();
    let got_b: Vec<Ev> = on_b.take(20).await;
    assert_eq!(got_a, want);
    assert_eq!(
        got_b.iter().map(|e| e.data.clone()).collect::<Vec<_>>(),
        want
    );
    // One cursor space: both instances label the same event alike.
    let ids: std::collections::HashSet<_> = got_b.iter().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 20);
}

#[tokio::test]
async fn resume_on_another_instance_without_loss_or_duplicates() {
    let redis = Redis::start();
    let a = Gateway::start(&config(&redis.url()));
    let b = Gateway::start(&config(&redis.url()));
    ready(&a).await;
    ready(&b).await;
    let mut s = Sse::connect(&a.url("/events/r")).await;
    a.publish_ok("room:r", json!("seen")).await;
    let last = s.next().await.id;
    drop(s);
    for i in 0..5 {
        a.publish_ok("room:r", json!(format!("missed{i}"))).await;
    }
    let mut again = Sse::connect_with(&b.url("/events/r"), &[("last-event-id", &last)]).await;
    b.publish_ok("room:r", json!("live")).await;
    let got: Vec<String> = again.take(6).await.into_iter().map(|e| e.data).collect();
    assert_eq!(
        got,
        vec!["missed0", "missed1", "missed2", "missed3", "missed4", "live"]
    );
    again.silent_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn history_gap_and_dedupe_work_across_instances() {
    let redis = Redis::start();
    let a = Gateway::start(&config(&redis.url()));
    let b = Gateway::start(&config(&redis.url()));
    ready(&a).await;
    ready(&b).await;
    let (s, v) = a
        .publish(json!({"channel": "room:d", "id": "once", "data": 1}))
        .await;
    assert_eq!((s, v), (200, json!({"published": 1})));
    let (s, v) = b
        .publish(json!({"channel": "room:d", "id": "once", "data": 1}))
        .await;
    assert_eq!((s, v), (200, json!({"published": 0, "duplicates": 1})));
    let mut s = Sse::connect(&a.url("/events/g")).await;
    a.publish_ok("room:g", json!("first")).await;
    let last = s.next().await.id;
    drop(s);
    let items: Vec<_> = (0..60)
        .map(|i| json!({"channel": "room:g", "data": i}))
        .collect();
    let (st, _) = a.publish(json!({ "items": items })).await;
    assert_eq!(st, 200);
    let mut again = Sse::connect_with(&b.url("/events/g"), &[("last-event-id", &last)]).await;
    assert_eq!(
        again.next().await.event,
        "ssegate.reset",
        "history holds 50: 60 missed is a gap"
    );
}

#[tokio::test]
async fn redis_restart_mid_stream_loses_nothing() {
    let mut redis = Redis::start();
    let a = Gateway::start(&config(&redis.url()));
    let b = Gateway::start(&config(&redis.url()));
    ready(&a).await;
    ready(&b).await;
    let mut s = Sse::connect(&a.url("/events/k")).await;
    b.publish_ok("room:k", json!("before")).await;
    assert_eq!(s.next().await.data, "before");
    redis.stop();
    // While Redis is away: new subscriptions and publishes are refused, open streams stay.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = client().get(a.admin("/readyz")).send().await.unwrap();
        if r.status().as_u16() == 503 {
            assert!(r.text().await.unwrap().contains("redis"));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "readyz never reported the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = client().get(a.url("/events/other")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let (st, _) = b
        .publish(json!({"channel": "room:k", "data": "refused"}))
        .await;
    assert_eq!(st, 503);
    redis.restart();
    ready(&a).await;
    ready(&b).await;
    b.publish_ok("room:k", json!("after")).await;
    assert_eq!(
        s.next().await.data,
        "after",
        "the open stream survived the outage"
    );
}

#[tokio::test]
async fn unreachable_redis_at_start_is_503_then_recovers() {
    let port = free_port();
    let gw = Gateway::start(&config(&format!("redis://127.0.0.1:{port}")));
    let r = client().get(gw.admin("/readyz")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    let r = client().get(gw.url("/events/z")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.text().await.unwrap().contains("redis"));
    let _redis = Redis::start_on(port);
    ready(&gw).await;
    let mut s = Sse::connect(&gw.url("/events/z")).await;
    gw.publish_ok("room:z", json!("up")).await;
    assert_eq!(s.next().await.data, "up");
}

/// A legacy endpoint for polling: answers the current body, counts requests.
struct Legacy {
    port: u16,
    body: std::sync::Arc<std::sync::Mutex<String>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Legacy {
    fn start(body: &str) -> Legacy {
        let body = std::sync::Arc::new(std::sync::Mutex::new(body.to_string()));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (b, h) = (body.clone(), hits.clone());
        let (stop, _thread) = serve_in_thread(listener, move || {
            axum::Router::new().fallback(move || {
                let (b, h) = (b.clone(), h.clone());
                async move {
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let text = b.lock().unwrap().clone();
                    text
                }
            })
        });
        Legacy {
            port,
            body,
            hits,
            _stop: stop,
        }
    }

    fn hits(&self) -> u64 {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn poll_config(redis: &str, legacy: u16) -> String {
    format!(
        "
hub:
  broker: redis
  redis: {{ url: \"{redis}\", prefix: p }}
sse: {{ heartbeat: 1s }}
upstreams:
  legacy: {{ servers: [\"127.0.0.1:{legacy}\"] }}
routes:
  - path: /prices
    sse:
      poll: {{ upstream: legacy, path: /prices, interval: 100ms, linger: 5s }}
"
    )
}

#[tokio::test]
async fn each_poll_key_is_polled_by_one_instance_and_handed_over_when_it_dies() {
    let redis = Redis::start();
    let legacy = Legacy::start("v1");
    let a = Gateway::start(&poll_config(&redis.url(), legacy.port));
    let b = Gateway::start(&poll_config(&redis.url(), legacy.port));
    ready(&a).await;
    ready(&b).await;
    let mut on_a = Sse::connect(&a.url("/prices")).await;
    let mut on_b = Sse::connect(&b.url("/prices")).await;
    // Both get the snapshot, whichever instance polls.
    assert_eq!(on_a.next().await.data, "v1");
    assert_eq!(on_b.next().await.data, "v1");
    // One instance's worth of polls, not two: over ~1 s at 100 ms, ≤ 15.
    let before = legacy.hits();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_second = legacy.hits() - before;
    assert!(
        (3..=15).contains(&per_second),
        "{per_second} polls in one second from two instances"
    );
    *legacy.body.lock().unwrap() = "v2".to_string();
    assert_eq!(on_a.next().await.data, "v2");
    assert_eq!(on_b.next().await.data, "v2");
    // Kill the instance that polls; the other takes over within a lease period.
    let polls_of = |gw: &Gateway| {
        let gw_url = gw.admin("/metrics");
        async move {
            let text = client()
                .get(gw_url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .filter(|l| l.starts_with("ssegate_poll_requests_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        }
    };
    let (pa, pb) = (polls_of(&a).await, polls_of(&b).await);
    assert!(
        pa == 0.0 || pb == 0.0,
        "both instances polled: {pa} and {pb}"
    );
    let (survivor, mut stream, leader) = if pa > 0.0 { (b, on_b, a) } else { (a, on_a, b) };
    drop(leader);
    *legacy.body.lock().unwrap() = "v3".to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(8);
    loop {
        let ev = stream.next().await;
        if ev.data == "v3" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no takeover: last event {ev:?}"
        );
    }
    assert!(polls_of(&survivor).await > 0.0, "the survivor polls now");
}

#[tokio::test]
async fn an_event_keeps_its_source_and_age_across_instances() {
    let redis = Redis::start();
    let hooks = format!(
        "{}webhooks:\n  - path: /hooks/x\n    channel: \"room:{{/room}}\"\n",
        config(&redis.url())
    );
    let a = Gateway::start(&hooks);
    let b = Gateway::start(&hooks);
    ready(&a).await;
    ready(&b).await;
    let mut on_b = Sse::connect(&b.url("/events/x")).await;
    let r = client()
        .post(a.admin("/hooks/x"))
        .json(&json!({"room": "x", "n": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(on_b.next().await.data.contains("\"n\":1"));
    // Received by A as a webhook, written by B: B counts a webhook's age.
    let b = &b;
    let age = |s: &'static str| async move {
        b.metric(&format!(
            "ssegate_event_age_seconds_count{{source=\"{s}\"}}"
        ))
        .await
    };
    assert_eq!(age("webhook").await, 1.0);
    assert_eq!(age("publish").await, 0.0);
    assert!(
        b.metric("ssegate_event_age_seconds_sum{source=\"webhook\"}")
            .await
            < 5.0
    );
}

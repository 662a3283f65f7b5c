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

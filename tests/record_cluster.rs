//! Recorded replies with the Redis broker, through the real binary: resumed
//! on another instance while the first still reads the backend; the oldest
//! records of a route dropped for `max_total` (the Lua script's eviction);
//! a draining instance lets a reply run for its grace, then marks it
//! `interrupted`, and what it recorded outlives it.

mod support;

use futures_util::StreamExt;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::chat::Chat;
use support::replies::*;
use support::*;

#[tokio::test]
async fn resume_on_another_instance_through_redis() {
    let redis = Redis::start();
    let chat = Chat::start("");
    let hub = format!(
        "hub: {{ broker: redis, redis: {{ url: \"{}\", prefix: rec }} }}\n",
        redis.url()
    );
    let a = Gateway::start(&config(&chat, &hub, "{ ttl: 1m }"));
    let b = Gateway::start(&config(&chat, &hub, "{ ttl: 1m }"));
    ready_on(&a).await;
    ready_on(&b).await;
    let mut reply = Reply::open(&client(), &a.url("/chat"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.take(10).await, 1, 10);
    drop(reply);
    let last = format!("{rec}.10");
    // On B, while A's writer still reads the backend; and on A again.
    let on_b = resume(&b, &last);
    let on_a = resume(&a, &last);
    let (on_b, on_a) = tokio::join!(on_b, on_a);
    expect_events(&rec, &on_b, 11, 50);
    expect_events(&rec, &on_a, 11, 50);
    assert_eq!(chat.log.chat_requests(), 1);
    for gw in [&a, &b] {
        let (s, _) = status_with(
            gw,
            "GET",
            &[
                ("last-event-id", &format!("{rec}.50")),
                ("authorization", ALICE),
            ],
        )
        .await;
        assert_eq!(s, 204);
        let (s, _) = status_with(
            gw,
            "GET",
            &[("last-event-id", &last), ("authorization", "Bearer eve")],
        )
        .await;
        assert_eq!(s, 403);
    }
}

#[tokio::test]
async fn the_oldest_records_go_first_in_redis() {
    let redis = Redis::start();
    let chat = Chat::start("");
    let hub = format!(
        "hub: {{ broker: redis, redis: {{ url: \"{}\", prefix: evict }} }}\n",
        redis.url()
    );
    // Room for about 8 events of one route.
    let gw = Gateway::start(&config(&chat, &hub, "{ max_total: 500B }"));
    ready_on(&gw).await;
    let mut old = Reply::open(&client(), &gw.url("/chat?n=3&ms=10"), ALICE).await;
    let old_rec = old.record.clone();
    old.rest().await;
    let mut new = Reply::open(&client(), &gw.url("/chat?n=8&ms=10"), ALICE).await;
    let new_rec = new.record.clone();
    expect_events(&new_rec, &new.rest().await, 1, 8);
    // The first record was dropped for the second; the second is whole.
    let (s, _) = status_with(
        &gw,
        "GET",
        &[
            ("last-event-id", &format!("{old_rec}.0")),
            ("authorization", ALICE),
        ],
    )
    .await;
    assert_eq!(s, 404);
    let evs = resume(&gw, &format!("{new_rec}.6")).await;
    expect_events(&new_rec, &evs, 7, 8);
    assert_eq!(gw.metric("ssegate_records_evicted_total").await, 1.0);
}

#[tokio::test]
async fn a_draining_instance_lets_the_reply_run_for_its_grace_then_marks_it_interrupted() {
    let redis = Redis::start();
    let chat = Chat::start("");
    let hub = format!(
        "shutdown_grace: 3s\nhub: {{ broker: redis, redis: {{ url: \"{}\", prefix: drain }} }}\n",
        redis.url()
    );
    let mut a = Gateway::start(&config(&chat, &hub, "{}"));
    let b = Gateway::start(&config(&chat, &hub, "{}"));
    ready_on(&a).await;
    ready_on(&b).await;
    let mut reply = Reply::open(&client(), &a.url("/chat?n=100&ms=100"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.take(5).await, 1, 5);
    drop(reply);
    let resp = client()
        .get(b.url("/chat"))
        .header("last-event-id", format!("{rec}.5"))
        .header("authorization", ALICE)
        .send()
        .await
        .unwrap();
    let mut on_b = events(resp);
    let first = tokio::time::timeout(WAIT, on_b.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, format!("{rec}.6"));
    a.signal("-TERM");
    let rest: Vec<Ev> = tokio::time::timeout(WAIT, on_b.collect()).await.unwrap();
    let (marker, events) = rest.split_last().unwrap();
    let k = 6 + events.len();
    expect_events(&rec, events, 7, k);
    assert!(k < 100, "the reply was cut by the drain, after {k}");
    assert_eq!(marker.event, "ssegate.incomplete");
    assert_eq!(marker.data, r#"{"reason":"interrupted"}"#);
    assert_eq!(marker.id, format!("{rec}.{}", k + 1));
    assert_eq!(a.wait_exit(Duration::from_secs(5)), Some(0));
    assert_eq!(chat.log.cut.load(Ordering::SeqCst), 1);
    // What A recorded outlives A.
    let again = resume(&b, &format!("{rec}.{}", k - 2)).await;
    assert_eq!(again.len(), 3);
    let (s, _) = status_with(
        &b,
        "GET",
        &[("last-event-id", &marker.id), ("authorization", ALICE)],
    )
    .await;
    assert_eq!(s, 204);
}

//! SSE streams end to end through the real binary: headers and prelude,
//! framing, ordering, multi-channel, resume, reset, limits, slow clients.

mod support;

use serde_json::json;
use std::time::Duration;
use support::*;

const BASE: &str = "
hub:
  history: { size: 100, ttl: 1h }
sse:
  heartbeat: 300ms
  retry: 2s
  client_queue: 64
limits: { max_channels_per_client: 3, max_connections_per_ip: 0 }
routes:
  - path: /events/{room}
    sse:
      channels: [\"room:{room}\"]
      allow_channels: [\"news:*\"]
  - path: /multi/{x}
    sse: { channels: [\"left:{x}\", \"right:{x}\"] }
  - path: /q
    sse: { channels: [\"q:{query.topic}\"] }
";

#[tokio::test]
async fn headers_prelude_and_heartbeat_are_exact() {
    let gw = Gateway::start(BASE);
    let mut raw = Raw::get(gw.port, "/events/r1", &[]);
    let head = raw.read_until(WAIT, "headers", |t| t.contains("\r\n\r\n"));
    let lower = head.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{head}");
    assert!(lower.contains("content-type: text/event-stream"), "{head}");
    assert!(lower.contains("cache-control: no-cache"), "{head}");
    assert!(lower.contains("x-accel-buffering: no"), "{head}");
    assert!(lower.contains("transfer-encoding: chunked"), "{head}");
    raw.read_until(WAIT, "prelude", |_| true);
    let body = loop {
        raw.read_until(Duration::from_secs(5), "heartbeat", |t| {
            t.matches(":\n\n").count() >= 2
        });
        let b = raw.body();
        if b.contains(":\n\n") {
            break b;
        }
    };
    // The prelude: retry, the cursor the stream starts from (a bare `id:`,
    // SPEC §3), and a comment so that `open` fires at once.
    let prelude = prelude_of(&body);
    assert!(
        prelude.starts_with("retry: 2000\nid: ") && prelude.ends_with("\n:ok\n\n"),
        "prelude was {body:?}"
    );
    let id = &prelude["retry: 2000\nid: ".len()..prelude.len() - "\n:ok\n\n".len()];
    assert!(
        id.split_once('-').is_some_and(|(e, n)| {
            u64::from_str_radix(e, 16).is_ok() && n.parse::<u64>().is_ok()
        }),
        "the starting id {id:?} is a cursor"
    );
    assert!(
        body[prelude.len()..].starts_with(":\n\n"),
        "heartbeat comment expected: {body:?}"
    );
}

#[tokio::test]
async fn framing_is_whatwg_and_json_is_compact() {
    let gw = Gateway::start(BASE);
    let mut sse = Sse::connect(&gw.url("/events/fr")).await;
    assert_eq!(sse.status, 200);
    let mut raw = Raw::get(gw.port, "/events/fr", &[]);
    raw.read_until(WAIT, "raw prelude", |t| t.contains(":ok"));
    for (ev, data) in [
        (None, json!("a\nb\nc")),
        (Some("kind"), json!("x\r\ny")),
        (None, json!("p\rq")),
        (None, json!({"b": [1, 2, {"k": "v"}], "ok": true})),
    ] {
        let mut body = json!({"channel": "room:fr", "data": data});
        if let Some(e) = ev {
            body["event"] = json!(e);
        }
        let (s, _) = gw.publish(body).await;
        assert_eq!(s, 200);
    }
    let evs = sse.take(4).await;
    assert_eq!(evs[0].data, "a\nb\nc");
    assert_eq!(evs[0].event, "message");
    assert_eq!(
        (evs[1].event.as_str(), evs[1].data.as_str()),
        ("kind", "x\ny")
    );
    assert_eq!(evs[2].data, "p\nq");
    assert_eq!(evs[3].data, r#"{"b":[1,2,{"k":"v"}],"ok":true}"#);
    let ids: Vec<&str> = evs.iter().map(|e| e.id.as_str()).collect();
    assert!(ids.iter().all(|i| !i.is_empty()), "{ids:?}");
    let body = {
        raw.read_until(WAIT, "raw events", |t| t.contains("\"ok\":true"));
        raw.body()
    };
    assert!(body.contains("data: a\ndata: b\ndata: c\n\n"), "{body:?}");
    assert!(
        body.contains("event: kind\ndata: x\ndata: y\n\n"),
        "{body:?}"
    );
    assert!(!body.contains("event: message"), "{body:?}");
    assert!(!body.contains('\r'), "{body:?}");
}

#[tokio::test]
async fn events_arrive_in_order_each_flushed_at_once() {
    let gw = Gateway::start(BASE);
    let mut sse = Sse::connect(&gw.url("/events/ord")).await;
    for i in 0..50 {
        gw.publish_ok("room:ord", json!(format!("m{i}"))).await;
    }
    let got: Vec<String> = sse.take(50).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, (0..50).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // One event, no further traffic: it must arrive by itself (no buffering).
    let t = std::time::Instant::now();
    gw.publish_ok("room:ord", json!("alone")).await;
    assert_eq!(sse.next().await.data, "alone");
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "single event took {:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn multi_channel_and_allowed_extra_channels() {
    let gw = Gateway::start(BASE);
    let mut m = Sse::connect(&gw.url("/multi/7")).await;
    let mut extra =
        Sse::connect(&gw.url("/events/base?channel=news:sport&channel=news:tech")).await;
    assert_eq!(extra.status, 200);
    gw.publish_ok("left:7", json!("L")).await;
    gw.publish_ok("right:7", json!("R")).await;
    gw.publish_ok("news:tech", json!("T")).await;
    gw.publish_ok("room:base", json!("B")).await;
    gw.publish_ok("news:other", json!("nope")).await;
    gw.publish_ok("news:sport", json!("S")).await;
    let got: Vec<String> = m.take(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec!["L", "R"]);
    let got: Vec<String> = extra.take(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec!["T", "B", "S"]);
}

#[tokio::test]
async fn refused_subscriptions_say_why() {
    let gw = Gateway::start(BASE);
    let c = client();
    for (path, status, reason) in [
        ("/nowhere", 404, "no route"),
        ("/events/x?channel=secret", 403, "not allowed"),
        (
            "/events/x?channel=news:a&channel=news:b&channel=news:c",
            400,
            "at most 3",
        ),
        ("/events/a%2Ab", 400, "bad channel"),
        ("/events/a%2Cb", 400, "bad channel"),
        ("/events/a%0Ab", 400, "bad channel"),
        ("/q", 400, "required"),
        ("/q?topic=a:b:*", 400, "bad channel"),
    ] {
        let r = c
            .get(gw.url(path))
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{path}");
        let ct = r
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        assert!(
            !ct.starts_with("text/event-stream"),
            "{path}: refusal must not be a stream"
        );
        let body = r.text().await.unwrap();
        assert!(
            body.contains(reason),
            "{path}: body {body:?} should say {reason:?}"
        );
        assert_eq!(
            body.lines().count(),
            1,
            "{path}: one-line reason, got {body:?}"
        );
    }
    let r = c.post(gw.url("/events/x")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert!(gw.metric("ssegate_requests_refused_total").await >= 9.0);
}

#[tokio::test]
async fn resume_replays_missed_events_without_gap_or_duplicate() {
    let gw = Gateway::start(BASE);
    let mut first = Sse::connect(&gw.url("/multi/r")).await;
    gw.publish_ok("left:r", json!("before")).await;
    let last = first.next().await.id;
    drop(first);
    for i in 0..5 {
        let ch = if i % 2 == 0 { "left:r" } else { "right:r" };
        gw.publish_ok(ch, json!(format!("missed{i}"))).await;
    }
    // Header form.
    let mut again = Sse::connect_with(&gw.url("/multi/r"), &[("last-event-id", &last)]).await;
    // Query form, for clients that cannot set headers.
    let mut by_query = Sse::connect(&gw.url(&format!("/multi/r?lastEventId={last}"))).await;
    gw.publish_ok("right:r", json!("live")).await;
    let want: Vec<String> = (0..5)
        .map(|i| format!("missed{i}"))
        .chain(["live".to_string()])
        .collect();
    for s in [&mut again, &mut by_query] {
        let got: Vec<String> = s.take(6).await.into_iter().map(|e| e.data).collect();
        assert_eq!(got, want);
        s.silent_for(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn replay_and_live_interleave_without_loss_under_concurrent_publish() {
    let gw = Gateway::start(BASE);
    let mut s = Sse::connect(&gw.url("/events/race")).await;
    gw.publish_ok("room:race", json!(0)).await;
    let last = s.next().await.id;
    drop(s);
    let publisher = {
        let url = gw.admin("/publish");
        tokio::spawn(async move {
            let c = client();
            for i in 1..=60 {
                let r = c
                    .post(&url)
                    .json(&json!({"channel": "room:race", "data": i}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut again = Sse::connect_with(&gw.url("/events/race"), &[("last-event-id", &last)]).await;
    publisher.await.unwrap();
    let got: Vec<i64> = again
        .take(60)
        .await
        .into_iter()
        .map(|e| e.data.parse().unwrap())
        .collect();
    assert_eq!(got, (1..=60).collect::<Vec<_>>());
    again.silent_for(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn history_gap_sends_reset_then_live() {
    let gw = Gateway::start(&BASE.replace("size: 100", "size: 3"));
    let mut s = Sse::connect(&gw.url("/events/gap")).await;
    gw.publish_ok("room:gap", json!("first")).await;
    let last = s.next().await.id;
    drop(s);
    for i in 0..10 {
        gw.publish_ok("room:gap", json!(i)).await;
    }
    let mut again = Sse::connect_with(&gw.url("/events/gap"), &[("last-event-id", &last)]).await;
    let reset = again.next().await;
    assert_eq!(reset.event, "ssegate.reset");
    assert_eq!(reset.data, r#"{"reason":"history-gap"}"#);
    assert!(!reset.id.is_empty());
    gw.publish_ok("room:gap", json!("live")).await;
    assert_eq!(again.next().await.data, "live");
    // A cursor from another run (or garbage) cannot be trusted either.
    let mut foreign =
        Sse::connect_with(&gw.url("/events/gap"), &[("last-event-id", "abc-1")]).await;
    assert_eq!(foreign.next().await.event, "ssegate.reset");
}

#[tokio::test]
async fn connection_limits_answer_429() {
    let gw =
        Gateway::start(&BASE.replace("max_connections_per_ip: 0", "max_connections_per_ip: 2"));
    let _a = Sse::connect(&gw.url("/events/l")).await;
    let _b = Sse::connect(&gw.url("/events/l")).await;
    let r = client().get(gw.url("/events/l")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.text().await.unwrap().contains("max_connections_per_ip"));
    drop(_a);
    // The slot comes back once the gateway sees the disconnect.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let r = client().get(gw.url("/events/l")).send().await.unwrap();
        if r.status().as_u16() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let global = Gateway::start(&format!("{BASE}\n").replace(
        "limits: { max_channels_per_client: 3, max_connections_per_ip: 0 }",
        "limits: { max_connections: 1 }",
    ));
    let _one = Sse::connect(&global.url("/events/g")).await;
    let r = client().get(global.url("/events/g")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
}

#[tokio::test]
async fn slow_client_is_cut_and_costs_bounded_memory() {
    let gw = Gateway::start(&BASE.replace("client_queue: 64", "client_queue: 1024"));
    // A client that sends its request and then never reads.
    let mut stalled = Raw::get(gw.port, "/events/slow", &[]);
    stalled.read_until(WAIT, "stalled client's headers", |t| t.contains(":ok"));
    let mut fast = Sse::connect(&gw.url("/events/slow")).await;
    let rss_before = gw.rss();
    let payload = "x".repeat(200);
    let total = 50_000usize;
    let (progress_tx, mut progress) = tokio::sync::watch::channel(0usize);
    let reader = tokio::spawn(async move {
        for n in 1..=total {
            let ev = fast.next().await;
            assert_eq!(ev.data.len(), 200);
            if n % 50 == 0 {
                let _ = progress_tx.send(n);
            }
        }
        total
    });
    let c = client();
    let mut published = 0;
    while published < total {
        // Stay within the fast client's queue: it reads, so it must get everything.
        let lag_ok = published.saturating_sub(500);
        tokio::time::timeout(WAIT, progress.wait_for(|n| *n >= lag_ok))
            .await
            .expect("fast reader stalled")
            .unwrap();
        let items: Vec<_> = (0..50)
            .map(|_| json!({"channel": "room:slow", "data": payload}))
            .collect();
        let r = c
            .post(gw.admin("/publish"))
            .json(&json!({ "items": items }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        published += 50;
    }
    let got = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("fast reader")
        .unwrap();
    assert_eq!(got, total);
    let rss_after = gw.rss();
    assert!(
        rss_after < rss_before + 40 * 1024 * 1024,
        "RSS grew from {rss_before} to {rss_after} with one stalled client"
    );
    assert!(gw.metric("ssegate_slow_client_disconnects_total").await >= 1.0);
    drop(stalled);
}

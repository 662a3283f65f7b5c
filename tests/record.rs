//! Resumable backend streams (`record:` on a proxy route) through the real
//! binary: a backend streams its own SSE reply (50 events over 5 s on
//! `POST /chat`, as an LLM streams tokens); the client reads 10 and
//! disconnects; real clients we did not write resume it — Node's
//! `eventsource` (GET, `Last-Event-ID`) and Python's httpx (the original
//! POST, with `Last-Event-ID`) — and get exactly events 11..50, in order,
//! once; the backend saw one request and was read to its end; afterwards
//! the record answers 204; other credentials 403; unknown ids 404. Then the
//! same over HTTP/2, and `max_events`. Redis: tests/record_cluster.rs; a
//! browser: tests/record_browser.rs. Shared: tests/support/{chat,replies}.rs.

mod support;

use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::chat::{self, Chat};
use support::replies::*;
use support::*;

#[tokio::test]
async fn a_reply_outlives_its_client_and_resumes_exactly_once_with_real_clients() {
    let (Some(py), Some(modules)) = (chat::python(), chat::node_modules()) else {
        missing_tool(
            "node eventsource and python httpx",
            "scripts/test installs them under target/",
        );
        return;
    };
    let chat = Chat::start("");
    let gw = Gateway::start(&config(&chat, "", "{ ttl: 1m, max_events: 1000 }"));
    let mut reply = Reply::open(&client(), &gw.url("/chat"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.take(10).await, 1, 10);
    drop(reply);

    // Two clients resume at once while the backend is still streaming.
    let url = gw.url("/chat");
    let last = format!("{rec}.10");
    let es_path = format!("{modules}/eventsource");
    let node_args = ["-e", chat::NODE_EVENTSOURCE, &url, &last, ALICE];
    let node_env = [("ES_PATH", es_path.as_str())];
    let py_args = ["-c", chat::PYTHON_HTTPX, &url, &last, ALICE];
    let limit = Duration::from_secs(20);
    let node = chat::run_script("node", &node_args, &node_env, limit);
    let httpx = chat::run_script(&py, &py_args, &[], limit);
    let (node, httpx) = tokio::join!(node, httpx);
    expect_lines(&rec, &node, 11, 50, "node eventsource");
    expect_lines(&rec, &httpx, 11, 50, "httpx");
    assert_eq!(httpx[0], json!({"status": 200}));
    assert_eq!(httpx.last().unwrap(), &json!({"end": true}));
    // EventSource reconnected after the end and was told 204: it stopped.
    let tail: Vec<&Value> = node.iter().filter(|l| l.get("data").is_none()).collect();
    assert_eq!(
        tail,
        [
            &json!({"reconnecting": true}),
            &json!({"closed": true, "code": 204})
        ],
        "{node:?}"
    );

    let log = &chat.log;
    assert_eq!(log.chat_requests(), 1, "the backend saw one request");
    assert_eq!(log.written.load(Ordering::SeqCst), 50);
    assert_eq!(log.finished.load(Ordering::SeqCst), 1);
    assert_eq!(log.cut.load(Ordering::SeqCst), 0, "read to its end");
    {
        let reqs = log.requests.lock().unwrap();
        let (method, headers, body) = &reqs[0];
        assert_eq!(method, "POST");
        assert_eq!(body, r#"{"prompt":"hi"}"#);
        assert!(headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == ALICE));
    }

    // Complete and delivered: 204, for any method; the backend is never called.
    let done = format!("{rec}.50");
    for method in ["GET", "POST"] {
        let (s, _) = status_with(
            &gw,
            method,
            &[("last-event-id", &done), ("authorization", ALICE)],
        )
        .await;
        assert_eq!(s, 204, "{method}");
    }
    let query = client()
        .get(gw.url(&format!("/chat?lastEventId={done}")))
        .header("authorization", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 204);
    // Someone else: 403. Not ours or unknown: 404, one line each.
    let (s, body) = status_with(
        &gw,
        "GET",
        &[
            ("last-event-id", &last),
            ("authorization", "Bearer mallory"),
        ],
    )
    .await;
    assert_eq!(
        (s, body.as_str()),
        (403, "the record was made with other credentials\n")
    );
    let (s, _) = status_with(&gw, "GET", &[("last-event-id", &last)]).await;
    assert_eq!(s, 403, "no credentials are other credentials");
    let unknown = format!("{}.3", "0".repeat(32));
    let (s, body) = status_with(
        &gw,
        "GET",
        &[("last-event-id", &unknown), ("authorization", ALICE)],
    )
    .await;
    assert_eq!((s, body.as_str()), (404, "unknown or expired record\n"));
    let (s, _) = status_with(
        &gw,
        "POST",
        &[("last-event-id", "17a3-9"), ("authorization", ALICE)],
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(log.chat_requests(), 1, "no resume ever reached the backend");
    assert_eq!(gw.metric("ssegate_records_started_total").await, 1.0);
    assert_eq!(
        gw.metric("ssegate_records_ended_total{reason=\"complete\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("ssegate_requests_refused_total{reason=\"record_forbidden\"")
            .await,
        2.0
    );
}

#[tokio::test]
async fn the_first_reader_gets_every_event_and_ordinary_answers_pass_through() {
    let chat = Chat::start("");
    let gw = Gateway::start(&config(&chat, "", "{}"));
    // The original client stays: every event once, the backend's id and
    // comments replaced by the record's, then the end of the body.
    let mut raw = Raw::get(gw.port, "/chat?n=3&ms=20", &[("authorization", ALICE)]);
    let text = raw.read_until(WAIT, "the end of the body", |t| t.ends_with("0\r\n\r\n"));
    let lower = text.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{text}");
    assert!(lower.contains("x-app: chat\r\n"), "{text}");
    assert!(lower.contains("transfer-encoding: chunked\r\n"), "{text}");
    let rec = lower
        .split(&format!("{RECORD_HEADER}: "))
        .nth(1)
        .and_then(|r| r.split("\r\n").next())
        .unwrap()
        .to_string();
    assert_eq!(
        raw.body(),
        format!(
            "retry: 200\nid: {rec}.0\n:ok\n\nid: {rec}.1\ndata: token 1\n\nid: {rec}.2\ndata: token 2\n\nid: {rec}.3\ndata: token 3\n\n"
        )
    );
    // A client cut before the first event resumes from `.0`: all of it.
    let mut again = Raw::get(
        gw.port,
        "/chat",
        &[
            ("authorization", ALICE),
            ("last-event-id", &format!("{rec}.0")),
        ],
    );
    again.read_until(WAIT, "the end", |t| t.ends_with("0\r\n\r\n"));
    assert_eq!(
        again.body(),
        format!(
            "retry: 200\nid: {rec}.0\n:ok\n\nid: {rec}.1\ndata: token 1\n\nid: {rec}.2\ndata: token 2\n\nid: {rec}.3\ndata: token 3\n\n"
        )
    );
    // HEAD: the status a GET would get, no body.
    let head = client()
        .head(gw.url("/chat"))
        .header("authorization", ALICE)
        .header("last-event-id", format!("{rec}.1"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()[RECORD_HEADER], rec.as_str());
    assert_eq!(head.bytes().await.unwrap().len(), 0);
    let (s, _) = status_with(
        &gw,
        "HEAD",
        &[
            ("authorization", ALICE),
            ("last-event-id", &format!("{rec}.3")),
        ],
    )
    .await;
    assert_eq!(s, 204);
    // Not an event stream: passed through as it is, nothing recorded.
    let r = client().get(gw.url("/plain")).send().await.unwrap();
    assert!(r.headers().get(RECORD_HEADER).is_none());
    assert_eq!(r.text().await.unwrap(), "{\"plain\":true}");
    assert_eq!(gw.metric("ssegate_records_started_total").await, 1.0);
}

#[tokio::test]
async fn max_events_cuts_the_backend_and_the_reader_is_told() {
    let chat = Chat::start("");
    let gw = Gateway::start(&config(&chat, "", "{ max_events: 5 }"));
    let mut reply = Reply::open(&client(), &gw.url("/chat?n=50&ms=20"), ALICE).await;
    let rec = reply.record.clone();
    let evs = reply.rest().await;
    expect_events(&rec, &evs[..5], 1, 5);
    assert_eq!(evs.len(), 6, "{evs:?}");
    assert_eq!(evs[5].event, "ssegate.incomplete");
    assert_eq!(evs[5].data, r#"{"reason":"max-events"}"#);
    assert_eq!(evs[5].id, format!("{rec}.6"));
    eventually(WAIT, "the backend to be cut", || {
        (chat.log.cut.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert!(chat.log.written.load(Ordering::SeqCst) < 50);
    let (s, _) = status_with(
        &gw,
        "GET",
        &[
            ("last-event-id", &format!("{rec}.6")),
            ("authorization", ALICE),
        ],
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        gw.metric("ssegate_records_ended_total{reason=\"max-events\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_reply_being_recorded_counts_as_its_clients_connection_until_the_backend_ends() {
    let chat = Chat::start("");
    let gw = Gateway::start(&config(
        &chat,
        "limits: { max_connections_per_ip: 2 }\n",
        "{}",
    ));
    let url = gw.url("/chat?n=15&ms=100");
    for _ in 0..2 {
        let mut r = Reply::open(&client(), &url, ALICE).await;
        r.take(1).await;
    }
    // Both clients left; their backends are still read: no third one.
    let (s, body) = status_with(&gw, "POST", &[("authorization", ALICE)]).await;
    assert_eq!(
        (s, body.as_str()),
        (
            429,
            "too many connections from this address (limits.max_connections_per_ip)\n"
        )
    );
    assert_eq!(
        chat.log.chat_requests(),
        2,
        "refused before the backend was called"
    );
    eventually(WAIT, "both replies to end", || {
        (chat.log.finished.load(Ordering::SeqCst) == 2).then_some(())
    })
    .await;
    let mut r = eventually_reply(&gw, &url).await;
    r.take(1).await;
    assert_eq!(chat.log.chat_requests(), 3);
}

/// A new reply, once the connection slots of the ended ones are back (a
/// resume of no record is admitted, then answered 404, without the backend).
async fn eventually_reply(gw: &Gateway, url: &str) -> Reply {
    let nothing = format!("{}.1", "0".repeat(32));
    for _ in 0..100 {
        let (s, _) = status_with(gw, "GET", &[("last-event-id", &nothing)]).await;
        if s == 404 {
            return Reply::open(&client(), url, ALICE).await;
        }
        assert_eq!(s, 429);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("still 429 after the replies ended");
}

#[tokio::test]
async fn resumes_over_http2_like_http11() {
    let chat = Chat::start("");
    let gw = Gateway::start(&config(&chat, "http2: { h2c: true }\n", "{}"));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(WAIT)
        .build()
        .unwrap();
    let mut reply = Reply::open(&h2, &gw.url("/chat?n=20&ms=50"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.take(5).await, 1, 5);
    drop(reply);
    let resp = h2
        .get(gw.url("/chat"))
        .header("last-event-id", format!("{rec}.5"))
        .header("authorization", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[RECORD_HEADER], rec.as_str());
    let evs = all_events(resp).await;
    expect_events(&rec, &evs, 6, 20);
    assert_eq!(chat.log.chat_requests(), 1);
}

/// The memory of 1,000 concurrent recorded replies (the figures in
/// docs/record.md): each of 1,000 clients POSTs at once, reads the first
/// event and leaves; the backend streams 100 events of ~150 B each over
/// 5 s to every one of them. Measured with a `max_total` that holds them
/// all, and with one that holds a fraction (the oldest records go first).
/// Run: `cargo test --test record -- --ignored --nocapture memory_of`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints the figures of docs/record.md"]
async fn memory_of_a_thousand_concurrent_recorded_replies() {
    const REPLIES: usize = 1000;
    for max_total in ["1GiB", "4MiB"] {
        let chat = Chat::start("");
        let gw = Gateway::start(&config(
            &chat,
            "limits: { max_connections_per_ip: 0 }\n",
            &format!("{{ ttl: 2m, max_total: {max_total} }}"),
        ));
        let url = gw.url("/chat?n=100&ms=50&pad=120");
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        // Warm: the first request starts the runtime's pools.
        let mut w = Reply::open(&c, &url, ALICE).await;
        w.take(1).await;
        drop(w);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let base = gw.rss();
        let started = std::time::Instant::now();
        let clients: Vec<_> = (0..REPLIES)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move {
                    let mut r = Reply::open(&c, &url, ALICE).await;
                    r.take(1).await;
                    r.record
                })
            })
            .collect();
        let mut records = Vec::new();
        for t in clients {
            records.push(t.await.unwrap());
        }
        let opened = started.elapsed();
        let mut peak = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let ended =
            || chat.log.finished.load(Ordering::SeqCst) + chat.log.cut.load(Ordering::SeqCst);
        while ended() < REPLIES + 1 {
            peak = peak.max(gw.rss());
            assert!(
                std::time::Instant::now() < deadline,
                "the backend did not finish"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every writer has ended its record: what is held now is records
        // (the store's own count, updated once a second).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let held = gw.rss();
        let mut whole = 0;
        for r in records.iter().step_by(50) {
            let resp = client()
                .get(gw.url("/chat"))
                .header("last-event-id", format!("{r}.0"))
                .header("authorization", ALICE)
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                whole += usize::from(all_events(resp).await.len() == 100);
            }
        }
        let events = gw.metric("ssegate_record_events_total").await;
        let held_records = gw.metric("ssegate_records ").await;
        let held_bytes = gw.metric("ssegate_record_bytes ").await;
        let evicted = gw.metric("ssegate_records_evicted_total").await;
        println!(
            "max_total {max_total}: {REPLIES} replies opened in {opened:.1?}; {events} events recorded; \
             gateway RSS {:.1} MiB before, {:.1} MiB peak while the backends streamed, \
             {:.1} MiB with every record ended; {held_records} records held, {:.1} MiB of frames; \
             {evicted} evicted; {whole}/{} sampled records whole",
            base as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            held as f64 / 1048576.0,
            held_bytes / 1048576.0,
            records.len().div_ceil(50)
        );
        assert_eq!(chat.log.chat_requests(), REPLIES + 1);
    }
}

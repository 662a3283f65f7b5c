//! Subscribers against small servers on 127.0.0.1 written for the test:
//! a deferred-admission HTTP/1.1 server (200 with only `retry:`, then a
//! stream) and an h2c server with several streams on one connection.

use crate::conn::{H2Slot, Opener, Transport};
use crate::sse_client::{run_subscriber, Action, Ctl, Policy, Shared, SubResult, SubSpec};
use crate::target::parse_url;
use bytes::Bytes;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

const WAIT: Duration = Duration::from_secs(10);

fn transport(h2: bool) -> Arc<Transport> {
    Arc::new(Transport {
        h2,
        tls: None,
        connect_timeout: Duration::from_secs(2),
        header_timeout: Duration::from_secs(2),
        h2_stream_window: 65_535,
        h2_conn_window: 1 << 20,
    })
}

fn probe(seq: u64) -> String {
    format!(
        r#"data: {{"seq":{seq},"t":{}}}"#,
        crate::sse_client::now_unix_nanos()
    )
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Read a request head (test server only: up to the blank line).
async fn read_request(s: &mut tokio::net::TcpStream) -> String {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .expect("request in time")
            .expect("read");
        assert!(n > 0, "client closed before its request");
        buf.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// First request: `200` with only `retry: 80` and close (deferred). Later
/// ones: a stream with a prelude whose cursor is 42, then one probe event.
async fn deferred_server(l: TcpListener, heads: Arc<Mutex<Vec<(Instant, String)>>>) {
    let mut n = 0;
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            return;
        };
        let head = read_request(&mut s).await;
        heads.lock().unwrap().push((Instant::now(), head));
        n += 1;
        if n == 1 {
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\nretry: 80\n\n")
                .await;
            continue; // dropped: closed
        }
        tokio::spawn(async move {
            let body = format!("retry: 3000\n: ok\n\nid: 42\n\n{}\n\n", probe(0));
            let chunk = format!("{:x}\r\n{body}\r\n", body.len());
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
                .await;
            let _ = s.write_all(chunk.as_bytes()).await;
            let mut b = [0u8; 64];
            let _ = tokio::time::timeout(WAIT, s.read(&mut b)).await; // until the client goes
        });
    }
}

fn spec(index: usize, url: &str, opener: Opener, events: u64, policy: Arc<Policy>) -> SubSpec {
    SubSpec {
        index,
        target: parse_url(url).unwrap(),
        src: None,
        opener,
        events,
        stride: 1,
        offset: 0,
        policy,
    }
}

#[tokio::test]
async fn deferred_answer_then_stream_then_resume_with_last_event_id() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events/a", l.local_addr().unwrap());
    let heads = Arc::new(Mutex::new(Vec::new()));
    let server = tokio::spawn(deferred_server(l, heads.clone()));
    let policy = Arc::new(Policy {
        reconnect: true,
        ready_on_prelude: true,
        default_retry: Duration::from_secs(5),
        max_attempts: 10,
        ..Policy::default()
    });
    let shared = Shared::new(1);
    let (ctl, rx) = watch::channel(Ctl {
        gen: 0,
        action: Action::Run,
    });
    let task = tokio::spawn(run_subscriber(
        spec(0, &url, Opener::H1(transport(false)), 1, policy),
        shared.clone(),
        Arc::new(Semaphore::new(1)),
        rx,
    ));
    let g0 = &shared.gens[0];
    let t = Instant::now();
    while g0.ready.load(Ordering::Acquire) != 1 && t.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        g0.ready.load(Ordering::Acquire),
        1,
        "deferred {} empty {} attempts {} net {} errors {:?} heads {:?}",
        g0.deferred.load(Ordering::Acquire),
        g0.empty.load(Ordering::Acquire),
        g0.attempts.load(Ordering::Acquire),
        g0.network_errors.load(Ordering::Acquire),
        crate::sse_client::lock(&shared.errors),
        heads.lock().unwrap()
    );
    assert_eq!(g0.deferred.load(Ordering::Acquire), 1);
    assert_eq!(g0.attempts.load(Ordering::Acquire), 2);
    until("the probe event", || {
        shared.done.load(Ordering::Acquire) == 1
    })
    .await;
    {
        let h = heads.lock().unwrap();
        assert_eq!(h.len(), 2);
        // It waited the retry it was told (80 ms), not its default (5 s).
        let gap = h[1].0 - h[0].0;
        assert!(gap >= Duration::from_millis(75), "{gap:?}");
        assert!(gap < Duration::from_secs(4), "{gap:?}");
        assert!(!h[0].1.contains("Last-Event-ID"));
        assert!(h[0].1.contains("Accept: text/event-stream"));
    }

    // Storm: drop, then reconnect with the cursor of the prelude.
    ctl.send(Ctl {
        gen: 0,
        action: Action::Drop,
    })
    .unwrap();
    until("the drop", || shared.dropped.load(Ordering::Acquire) == 1).await;
    shared.gens[1]
        .start_ns
        .store(shared.since_base_ns(), Ordering::Release);
    ctl.send(Ctl {
        gen: 1,
        action: Action::Run,
    })
    .unwrap();
    until("streaming again", || {
        shared.gens[1].ready.load(Ordering::Acquire) == 1
    })
    .await;
    assert!(heads.lock().unwrap()[2].1.contains("Last-Event-ID: 42\r\n"));
    assert_eq!(shared.gens[1].resumed.load(Ordering::Acquire), 1);
    assert_eq!(g0.resumed.load(Ordering::Acquire), 0);
    ctl.send(Ctl {
        gen: 1,
        action: Action::Stop,
    })
    .unwrap();
    let r: SubResult = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
    assert!(r.streaming);
    assert_eq!((r.distinct, r.dups), (1, 1)); // the replayed probe is a duplicate
    server.abort();
}

#[tokio::test]
async fn refused_status_is_counted_and_one_shot_gives_up() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events/a", l.local_addr().unwrap());
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            read_request(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let shared = Shared::new(0);
    let (_ctl, rx) = watch::channel(Ctl {
        gen: 0,
        action: Action::Run,
    });
    let policy = Arc::new(Policy::default());
    let r = tokio::time::timeout(
        WAIT,
        run_subscriber(
            spec(0, &url, Opener::H1(transport(false)), 0, policy),
            shared.clone(),
            Arc::new(Semaphore::new(1)),
            rx,
        ),
    )
    .await
    .unwrap();
    assert!(!r.streaming);
    assert_eq!(shared.failed(), 1);
    assert_eq!(shared.gens[0].statuses().get(&503), Some(&1));
    server.abort();
}

/// h2c server: each request gets 200 text/event-stream, a prelude, one
/// probe, and stays open; `/bad` gets 429.
async fn h2c_server(l: TcpListener, conns: Arc<Mutex<u32>>) {
    while let Ok((s, _)) = l.accept().await {
        *conns.lock().unwrap() += 1;
        tokio::spawn(async move {
            let Ok(mut c) = h2::server::handshake(s).await else {
                return;
            };
            while let Some(Ok((req, mut respond))) = c.accept().await {
                let bad = req.uri().path() == "/bad";
                let ok =
                    req.headers().get("accept").map(|v| v.as_bytes()) == Some(b"text/event-stream");
                let status = if bad {
                    429
                } else if ok {
                    200
                } else {
                    406
                };
                let resp = ::http::Response::builder()
                    .status(status)
                    .header("content-type", "text/event-stream")
                    .body(())
                    .unwrap();
                let Ok(mut send) = respond.send_response(resp, status != 200) else {
                    continue;
                };
                if status == 200 {
                    let body = format!(": ok\n\nid: 9\n\n{}\n\n", probe(0));
                    let _ = send.send_data(Bytes::from(body), false);
                    // Keep the stream open until the client resets it.
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(
                            WAIT,
                            std::future::poll_fn(|cx| send.poll_reset(cx)),
                        )
                        .await;
                    });
                }
            }
        });
    }
}

#[tokio::test]
async fn h2c_streams_share_one_connection() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(Mutex::new(0));
    let server = tokio::spawn(h2c_server(l, conns.clone()));
    let good = format!("http://{addr}/events/a");
    let bad = format!("http://{addr}/bad");
    let slot = H2Slot::new(transport(true), parse_url(&good).unwrap(), None);
    let shared = Shared::new(1);
    let (ctl, rx) = watch::channel(Ctl {
        gen: 0,
        action: Action::Run,
    });
    let policy = Arc::new(Policy::default());
    let sem = Arc::new(Semaphore::new(8));
    let tasks: Vec<_> = (0..5)
        .map(|i| {
            let url = if i == 4 { &bad } else { &good };
            tokio::spawn(run_subscriber(
                spec(i, url, Opener::H2(slot.clone()), 1, policy.clone()),
                shared.clone(),
                sem.clone(),
                rx.clone(),
            ))
        })
        .collect();
    until("all resolved", || shared.gens[0].resolved() == 5).await;
    until("probes delivered", || {
        shared.done.load(Ordering::Acquire) == 5
    })
    .await;
    assert_eq!(shared.streaming(), 4);
    assert_eq!(shared.gens[0].statuses().get(&429), Some(&1));
    assert_eq!(shared.deliveries.load(Ordering::Acquire), 4);
    assert_eq!(slot.connects.load(Ordering::Acquire), 1);
    assert_eq!(*conns.lock().unwrap(), 1);
    ctl.send(Ctl {
        gen: 0,
        action: Action::Stop,
    })
    .unwrap();
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    slot.close().await;
    server.abort();
}

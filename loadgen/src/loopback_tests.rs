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
async fn read_request<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> String {
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

/// One one-shot subscriber expecting nothing, run to its end.
async fn one_attempt(url: &str, opener: Opener, shared: &Arc<Shared>) -> SubResult {
    let (_ctl, rx) = watch::channel(Ctl {
        gen: 0,
        action: Action::Run,
    });
    let policy = Arc::new(Policy::default());
    tokio::time::timeout(
        WAIT,
        run_subscriber(
            spec(0, url, opener, 0, policy),
            shared.clone(),
            Arc::new(Semaphore::new(1)),
            rx,
        ),
    )
    .await
    .unwrap()
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
    let r = one_attempt(&url, Opener::H1(transport(false)), &shared).await;
    assert!(!r.streaming);
    assert_eq!(shared.failed(), 1);
    assert_eq!(shared.gens[0].statuses().get(&503), Some(&1));
    server.abort();
}

/// HTTP/2 on `io`: each request gets 200 text/event-stream, a prelude, one
/// probe, and stays open; `/bad` gets 429, a request without
/// `Accept: text/event-stream` 406 (as nchan).
async fn serve_h2<T>(io: T)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Ok(mut c) = h2::server::handshake(io).await else {
        return;
    };
    while let Some(Ok((req, mut respond))) = c.accept().await {
        let bad = req.uri().path() == "/bad";
        let ok = req.headers().get("accept").map(|v| v.as_bytes()) == Some(b"text/event-stream");
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
                let _ = tokio::time::timeout(WAIT, std::future::poll_fn(|cx| send.poll_reset(cx)))
                    .await;
            });
        }
    }
}

/// h2c server (prior knowledge): counts its connections.
async fn h2c_server(l: TcpListener, conns: Arc<Mutex<u32>>) {
    while let Ok((s, _)) = l.accept().await {
        *conns.lock().unwrap() += 1;
        tokio::spawn(serve_h2(s));
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
    let slot = H2Slot::new(transport(true), parse_url(&good).unwrap(), None, 5);
    let url = |i: usize| if i == 4 { bad.clone() } else { good.clone() };
    let shared = deliver_all(5, url, |_| Opener::H2(slot.clone())).await;
    assert_eq!(shared.streaming(), 4);
    assert_eq!(shared.gens[0].statuses().get(&429), Some(&1));
    assert_eq!(shared.deliveries.load(Ordering::Acquire), 4);
    assert_eq!(slot.connects.load(Ordering::Acquire), 1);
    assert_eq!(*conns.lock().unwrap(), 1);
    slot.close().await;
    server.abort();
}

/// A test CA (PEM written to `dir/ca.pem`) and a server config for
/// 127.0.0.1 signed by it, offering `alpn`.
fn tls_server(dir: &std::path::Path, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// TLS in front of `serve`: every accepted connection is handshaken, then
/// HTTP/2 (ALPN h2) gets an SSE answer per stream, HTTP/1.1 one chunked stream.
async fn tls_sse_server(l: TcpListener, cfg: Arc<rustls::ServerConfig>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    while let Ok((s, _)) = l.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(s).await else {
                return;
            };
            if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
                serve_h2(tls).await;
            } else {
                read_request(&mut tls).await;
                let body = format!(": ok\n\n{}\n\n", probe(0));
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n",
                    body.len()
                );
                let _ = tls.write_all(resp.as_bytes()).await;
                let _ = tls.flush().await;
                let mut b = [0u8; 64];
                let _ = tokio::time::timeout(WAIT, tls.read(&mut b)).await;
            }
        });
    }
}

/// Run `n` one-shot subscribers of `url(i)` with `opener(i)` until each has
/// its probe or failed.
async fn deliver_all(
    n: usize,
    url: impl Fn(usize) -> String,
    opener: impl Fn(usize) -> Opener,
) -> Arc<Shared> {
    let shared = Shared::new(1);
    let (ctl, rx) = watch::channel(Ctl {
        gen: 0,
        action: Action::Run,
    });
    let policy = Arc::new(Policy::default());
    let sem = Arc::new(Semaphore::new(4));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(run_subscriber(
                spec(i, &url(i), opener(i), 1, policy.clone()),
                shared.clone(),
                sem.clone(),
                rx.clone(),
            ))
        })
        .collect();
    until("all resolved", || shared.gens[0].resolved() == n).await;
    until("all done", || shared.done.load(Ordering::Acquire) == n).await;
    ctl.send(Ctl {
        gen: 0,
        action: Action::Stop,
    })
    .unwrap();
    for t in tasks {
        tokio::time::timeout(WAIT, t).await.unwrap().unwrap();
    }
    shared
}

fn tls_transport(h2: bool, ca: &std::path::Path) -> Arc<Transport> {
    use crate::tls::{client_config, Trust, ALPN_H1, ALPN_H2};
    let trust = Trust::CaFile(ca.display().to_string());
    let mut t = Arc::unwrap_or_clone(transport(h2));
    t.tls = Some(client_config(&trust, if h2 { ALPN_H2 } else { ALPN_H1 }).unwrap());
    Arc::new(t)
}

#[tokio::test]
async fn tls_h1_and_h2_streams_with_a_ca_file() {
    let dir = std::env::temp_dir().join(format!("loadgen-tls-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/events/a", l.local_addr().unwrap());
    let server = tokio::spawn(tls_sse_server(l, tls_server(&dir, &[b"h2", b"http/1.1"])));
    let ca = dir.join("ca.pem");

    // HTTP/1.1 over TLS: the project's HTTP/1 reader behind rustls.
    let h1 = tls_transport(false, &ca);
    let shared = deliver_all(3, |_| url.clone(), |_| Opener::H1(h1.clone())).await;
    assert_eq!(shared.streaming(), 3);
    assert_eq!(shared.deliveries.load(Ordering::Acquire), 3);

    // HTTP/2 over TLS: six streams on one connection.
    let slot = H2Slot::new(tls_transport(true, &ca), parse_url(&url).unwrap(), None, 6);
    let shared = deliver_all(6, |_| url.clone(), |_| Opener::H2(slot.clone())).await;
    assert_eq!(shared.streaming(), 6);
    assert_eq!(shared.deliveries.load(Ordering::Acquire), 6);
    assert_eq!(slot.connects.load(Ordering::Acquire), 1);
    slot.close().await;
    server.abort();

    // A server that only speaks HTTP/1.1 refuses h2: a network error, said so.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/events/a", l.local_addr().unwrap());
    let server = tokio::spawn(tls_sse_server(l, tls_server(&dir, &[b"http/1.1"])));
    let slot = H2Slot::new(
        tls_transport(true, &dir.join("ca.pem")),
        parse_url(&url).unwrap(),
        None,
        1,
    );
    let shared = Shared::new(0);
    let r = one_attempt(&url, Opener::H2(slot), &shared).await;
    assert!(!r.streaming);
    assert_eq!(shared.gens[0].network_errors.load(Ordering::Acquire), 1);
    let errs = crate::sse_client::lock(&shared.errors).join("\n");
    // rustls' server refuses the handshake (no_application_protocol); a
    // server without ALPN support would complete it and be refused by us.
    assert!(
        errs.contains("did not agree to ALPN h2") || errs.contains("NoApplicationProtocol"),
        "{errs}"
    );
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

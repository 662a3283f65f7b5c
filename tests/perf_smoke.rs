//! A CI-sized guard for the performance design (seconds, not minutes): it
//! fails when the cost of an idle stream or the fan-out time regresses
//! grossly, e.g. if streams stopped being detached from pingora. The real
//! figures come from benches/compare.sh (see docs/benchmarks.md).

mod support;

use std::time::{Duration, Instant};
use support::tls::{h2_client, h2_get, TestCa};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENTS: usize = 2000;

async fn open(port: u16, i: usize) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let req = format!(
        "GET /events/smoke HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nX-N: {i}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    read_until(&mut s, ":ok").await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_stay_small_and_fan_out_stays_fast() {
    let gw = Gateway::start(
        "
sse: { heartbeat: 30s, client_queue: 64 }
routes:
  - path: /events/{room}
    sse: { channels: [\"room:{room}\"] }
",
    );
    // Warm up the allocator and pingora's worker tasks.
    let warm: Vec<TcpStream> =
        futures_util::future::join_all((0..100).map(|i| open(gw.port, i))).await;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = gw.rss();
    let mut clients = Vec::with_capacity(CLIENTS);
    for chunk in (0..CLIENTS).collect::<Vec<_>>().chunks(200) {
        clients
            .extend(futures_util::future::join_all(chunk.iter().map(|i| open(gw.port, *i))).await);
    }
    let per_conn = (gw.rss().saturating_sub(before)) / CLIENTS as u64;
    // Release build: ≈2.5 KB. Held in pingora it was ≈35 KB. Debug builds sit
    // in between; 8 KB catches the regression without flaking.
    assert!(per_conn < 8 * 1024, "an idle stream costs {per_conn} bytes");

    let t = Instant::now();
    gw.publish_ok("room:smoke", serde_json::json!("fan")).await;
    let reads = clients.iter_mut().map(|s| async move {
        let mut buf = [0u8; 256];
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("data: \"fan\"")
            && !String::from_utf8_lossy(&seen).contains("data: fan")
        {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .expect("event")
                .unwrap();
            assert!(n > 0);
            seen.extend_from_slice(&buf[..n]);
        }
    });
    futures_util::future::join_all(reads).await;
    let last = t.elapsed();
    assert!(
        last < Duration::from_secs(2),
        "fan-out to {CLIENTS} took {last:?}"
    );
    eprintln!(
        "perf smoke: {per_conn} B per idle stream (debug build), fan-out to {CLIENTS} in {last:?}"
    );
}

/// A TLS HTTP/1.1 stream: request sent, prelude read; the connection stays open.
async fn open_tls_h1(
    ca: &TestCa,
    port: u16,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut s = ca.connect_alpn(port, &[b"http/1.1"]).await.unwrap();
    s.write_all(b"GET /events/smoke HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    // rustls may hold the request until flushed.
    s.flush().await.unwrap();
    read_until(&mut s, ":ok").await;
    s
}

async fn read_until<S: AsyncReadExt + Unpin>(s: &mut S, needle: &str) {
    let mut buf = [0u8; 512];
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("bytes within WAIT")
            .unwrap();
        assert!(n > 0, "closed before {needle:?}");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// The browser path: HTTP/2 and HTTP/1.1 streams over TLS are taken out of
/// pingora too. Held in its session they cost ≈22 KB (h2) and ≈58 KB (TLS
/// HTTP/1.1) each; detached ≈3 KB and ≈10 KB (release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tls_and_h2_streams_stay_small_and_fan_out_stays_fast() {
    const H2_CONNS: usize = 20;
    const PER_CONN: usize = 100;
    const TLS_H1: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("smoke");
    let (cert, key) = ca.issue(dir.path(), "server");
    let gw = Gateway::start(&format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}
http2: {{ max_concurrent_streams: 1000 }}
sse: {{ heartbeat: 30s, client_queue: 64 }}
limits: {{ max_connections_per_ip: 0 }}
routes:
  - path: /events/{{room}}
    sse: {{ channels: [\"room:{{room}}\"] }}
",
        cert.display(),
        key.display()
    ));
    let port = gw.port;
    let authority = format!("127.0.0.1:{port}");
    let h2_conn = || {
        let (ca, authority) = (&ca, authority.clone());
        async move {
            let mut send = h2_client(ca.connect_h2(port).await.unwrap()).await;
            let mut bodies = Vec::with_capacity(PER_CONN);
            for _ in 0..PER_CONN {
                bodies.push(h2_get(&mut send, &authority, "https", "/events/smoke", &[]).await);
            }
            (send, bodies)
        }
    };
    // Warm up the allocator, pingora's tasks and the TLS session cache.
    let warm = h2_conn().await;
    let warm_h1 = open_tls_h1(&ca, gw.port).await;
    drop((warm, warm_h1));
    tokio::time::sleep(Duration::from_millis(300)).await;

    let before = gw.rss();
    let conns = futures_util::future::join_all((0..H2_CONNS).map(|_| h2_conn())).await;
    for (_, bodies) in &conns {
        for b in bodies {
            eventually(WAIT, "h2 prelude", || {
                b.snapshot().contains(":ok").then_some(())
            })
            .await;
        }
    }
    let h2_streams = H2_CONNS * PER_CONN;
    let per_h2 = gw.rss().saturating_sub(before) / h2_streams as u64;

    let before = gw.rss();
    let mut h1 = Vec::with_capacity(TLS_H1);
    for chunk in (0..TLS_H1).collect::<Vec<_>>().chunks(50) {
        h1.extend(
            futures_util::future::join_all(chunk.iter().map(|_| open_tls_h1(&ca, gw.port))).await,
        );
    }
    let per_h1 = gw.rss().saturating_sub(before) / TLS_H1 as u64;
    // Debug build; 8 KB and 24 KB catch a stream held in pingora again.
    assert!(
        per_h2 < 8 * 1024,
        "an idle HTTP/2 stream costs {per_h2} bytes"
    );
    assert!(
        per_h1 < 24 * 1024,
        "an idle TLS HTTP/1.1 stream costs {per_h1} bytes"
    );

    let t = Instant::now();
    gw.publish_ok("room:smoke", serde_json::json!("fan")).await;
    for (_, bodies) in &conns {
        for b in bodies {
            eventually(WAIT, "event on every h2 stream", || {
                b.snapshot().contains("data: fan\n").then_some(())
            })
            .await;
        }
    }
    futures_util::future::join_all(h1.iter_mut().map(|s| read_until(s, "data: fan\n"))).await;
    let last = t.elapsed();
    assert!(
        last < Duration::from_secs(2),
        "fan-out to {h2_streams} h2 + {TLS_H1} TLS streams took {last:?}"
    );
    eprintln!(
        "perf smoke (TLS): {per_h2} B per idle h2 stream, {per_h1} B per idle TLS HTTP/1.1 stream (debug build), fan-out in {last:?}"
    );
}

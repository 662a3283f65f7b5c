//! A rough measurement, not a test (ignored by default): the gateway's
//! resident memory per idle SSE stream over plain HTTP/1.1, HTTP/1.1 over
//! TLS and HTTP/2 over TLS, and the fan-out latency of one event to every
//! HTTP/2 stream. Run with
//!   cargo test --test bench_tls -- --ignored --nocapture
//! Results and method: docs/benchmarks-tls.md.

mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::tls::{h2_client, h2_get, TestCa};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const STREAMS: usize = 2000;
const PER_H2_CONNECTION: usize = 500;

const ROUTES: &str = "
sse: { heartbeat: 60s }
limits: { max_connections_per_ip: 0 }
routes:
  - path: /events/{room}
    sse: { channels: [\"room:{room}\"] }
";

async fn settle(gw: &Gateway) -> u64 {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    gw.rss()
}

fn per_stream(before: u64, after: u64) -> f64 {
    (after.saturating_sub(before)) as f64 / STREAMS as f64 / 1024.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn idle_memory_per_stream_and_h2_fan_out() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("bench");
    let (cert, key) = ca.issue(dir.path(), "server");

    // Plain HTTP/1.1: detached streams.
    let gw = Gateway::start(ROUTES);
    let before = settle(&gw).await;
    let mut socks = Vec::new();
    for i in 0..STREAMS {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let req = format!("GET /events/r{} HTTP/1.1\r\nHost: x\r\n\r\n", i % 10);
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = [0u8; 512];
        let _ = tokio::time::timeout(WAIT, s.read(&mut buf)).await.unwrap();
        socks.push(s);
    }
    let h1 = per_stream(before, settle(&gw).await);
    drop(socks);
    drop(gw);

    // HTTP/1.1 over TLS: held in pingora.
    let body = format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}\n{ROUTES}",
        cert.display(),
        key.display()
    );
    let gw = Gateway::start(&body);
    let before = settle(&gw).await;
    let client = ca.reqwest(true);
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let mut r = client
            .get(format!("https://127.0.0.1:{}/events/r{}", gw.port, i % 10))
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .unwrap();
        let _ = tokio::time::timeout(WAIT, r.chunk()).await.unwrap();
        streams.push(r);
    }
    let tls_h1 = per_stream(before, settle(&gw).await);
    drop(streams);
    drop(gw);

    // HTTP/2 over TLS: 500 streams per connection.
    let gw = Gateway::start(&body);
    let before = settle(&gw).await;
    let authority = format!("127.0.0.1:{}", gw.port);
    let mut bodies = Vec::new();
    let mut conns = Vec::new();
    for c in 0..STREAMS / PER_H2_CONNECTION {
        let mut send = h2_client(ca.connect_h2(gw.port).await.unwrap()).await;
        for _ in 0..PER_H2_CONNECTION {
            let room = if c == 0 { "all" } else { "idle" };
            bodies.push(
                h2_get(
                    &mut send,
                    &authority,
                    "https",
                    &format!("/events/{room}"),
                    &[],
                )
                .await,
            );
        }
        conns.push(send);
    }
    let h2 = per_stream(before, settle(&gw).await);

    // Fan-out: one event to the 500 streams of the first connection.
    let sum = "ssegate_delivery_latency_seconds_sum";
    let count = "ssegate_delivery_latency_seconds_count";
    let (sum0, count0) = (gw.metric(sum).await, gw.metric(count).await);
    let mut lat = Vec::new();
    for round in 0..5 {
        let started = Instant::now();
        gw.publish_ok("room:all", json!(format!("fan{round}")))
            .await;
        let needle = format!("data: fan{round}\n");
        eventually(WAIT, "fan-out to every h2 stream", || {
            bodies[..PER_H2_CONNECTION]
                .iter()
                .all(|b| b.snapshot().contains(&needle))
                .then_some(())
        })
        .await;
        lat.push(started.elapsed());
    }
    let writes = gw.metric(count).await - count0;
    let mean_ms = (gw.metric(sum).await - sum0) / writes * 1000.0;
    eprintln!(
        "BENCH idle KiB/stream ({STREAMS} streams, debug build): plain h1 {h1:.1}, tls h1 {tls_h1:.1}, tls h2 {h2:.1} ({PER_H2_CONNECTION}/conn)"
    );
    eprintln!(
        "BENCH h2 fan-out to {PER_H2_CONNECTION} streams on one connection: publish→write mean {mean_ms:.2} ms over {writes} writes; publish→all seen by the client (20 ms polling) {lat:?}"
    );
    drop(conns);
}

//! Pass-through proxying through the real binary (SPEC §2, §3): requests and
//! responses unchanged, forwarding headers, streamed bodies both ways, status
//! pass-through, upstream failures, round robin, passive health, and routes
//! narrowed by method and host.

mod support;

use futures_util::StreamExt;
use std::time::Duration;
use support::*;

/// One upstream named `name` with these servers, and a catch-all proxy route.
fn catch_all(name: &str, servers: &[String], extra: &str) -> String {
    let list = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "upstreams:\n  {name}: {{ servers: [{list}]{extra} }}\nroutes:\n  - path: /{{*rest}}\n    proxy: {name}\n"
    )
}

fn addr(b: &Backend) -> String {
    b.addr.to_string()
}

/// A loopback address that nobody listens on (bound a moment ago, then released).
fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// GET through the gateway; (status, headers, body).
async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let r = client()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r
        .text()
        .await
        .unwrap_or_else(|e| panic!("GET {url} body: {e}"));
    (status, headers, body)
}

fn header<'a>(seen: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    seen["headers"][name].as_str()
}

fn requests_seen(b: &Backend) -> usize {
    b.log.requests.lock().unwrap().len()
}

#[tokio::test]
async fn request_reaches_backend_unchanged_and_response_comes_back() {
    let backend = Backend::start();
    let gw = Gateway::start(&catch_all("app", &[addr(&backend)], ""));
    let target = "/api/things/42?a=1&b=two%20words&c=%2Fslash&a=again";
    let r = client()
        .get(gw.url(target))
        .header("x-custom", "hello world")
        .header("x-trace-id", "abc-123")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers().get("x-backend").and_then(|v| v.to_str().ok()),
        Some("echo")
    );
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["method"], "GET", "{seen}");
    assert_eq!(
        seen["uri"], target,
        "path and query must reach the backend unchanged: {seen}"
    );
    assert_eq!(header(&seen, "x-custom"), Some("hello world"), "{seen}");
    assert_eq!(header(&seen, "x-trace-id"), Some("abc-123"), "{seen}");
    assert_eq!(header(&seen, "accept"), Some("application/json"), "{seen}");

    // A POST with a small body and another method go through as well.
    let r = client()
        .put(gw.url("/api/put/here?x=y"))
        .header("content-type", "text/plain")
        .body("payload line\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["method"], "PUT", "{seen}");
    assert_eq!(seen["uri"], "/api/put/here?x=y", "{seen}");
    assert_eq!(seen["body"], "payload line\n", "{seen}");
    assert_eq!(requests_seen(&backend), 2);
}

#[tokio::test]
async fn forwarding_headers_are_set() {
    let backend = Backend::start();
    let gw = Gateway::start(&catch_all("app", &[addr(&backend)], ""));

    // No X-Forwarded-For yet: it becomes the client address.
    let r = client().get(gw.url("/fwd/one")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        header(&seen, "x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen}"
    );
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("http"), "{seen}");
    let host = format!("127.0.0.1:{}", gw.port);
    assert_eq!(
        header(&seen, "x-forwarded-host"),
        Some(host.as_str()),
        "{seen}"
    );

    // A client's own X-Forwarded-For is not passed on: without
    // `trusted_proxies` the client is the peer (tests/edges.rs has more).
    let r = client()
        .get(gw.url("/fwd/two"))
        .header("x-forwarded-for", "203.0.113.7, 198.51.100.2")
        .header("host", "app.example:8443")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        header(&seen, "x-forwarded-for"),
        Some("127.0.0.1"),
        "{seen}"
    );
    assert_eq!(header(&seen, "x-forwarded-proto"), Some("http"), "{seen}");
    assert_eq!(
        header(&seen, "x-forwarded-host"),
        Some("app.example:8443"),
        "{seen}"
    );
}

/// Repro for a bug in src/proxy.rs `upstream_request_filter`: only the first
/// of several X-Forwarded-For header lines was read (`headers.get` +
/// `insert_header` replaces them all), so earlier hops were silently
/// dropped. Behind trusted proxies every line counts.
#[tokio::test]
async fn forwarded_for_reads_every_header_line() {
    let backend = Backend::start();
    let mut config = catch_all("app", &[addr(&backend)], "");
    config.push_str("trusted_proxies: [127.0.0.1, \"10.0.0.0/8\"]\n");
    let gw = Gateway::start(&config);
    let r = client()
        .get(gw.url("/fwd/many"))
        .header("x-forwarded-for", "203.0.113.7, 10.0.0.1")
        .header("x-forwarded-for", "10.0.0.2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let seen = backend.log.requests.lock().unwrap()[0].2.clone();
    let xff: Vec<&str> = seen
        .iter()
        .filter(|(k, _)| k == "x-forwarded-for")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(
        xff.join(", "),
        "203.0.113.7, 10.0.0.1, 10.0.0.2, 127.0.0.1",
        "{seen:?}"
    );
}

const FIVE_MB: usize = 5 * 1024 * 1024;
const CHUNK: usize = 65536;

#[tokio::test]
async fn large_response_streams_through_intact() {
    let backend = Backend::start();
    let gw = Gateway::start(&catch_all("app", &[addr(&backend)], ""));
    let r = client()
        .get(gw.url(&format!("/big/{FIVE_MB}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    if let Some(len) = r.headers().get("content-length") {
        assert_eq!(len.to_str().unwrap(), FIVE_MB.to_string());
    }
    let mut body = r.bytes_stream();
    let mut offset = 0usize;
    let read = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk.expect("body chunk");
            for (j, b) in chunk.iter().enumerate() {
                let i = offset + j;
                let want = b'a' + ((i / CHUNK) % 26) as u8;
                assert_eq!(
                    *b, want,
                    "byte {i} is {:?}, want {:?}",
                    *b as char, want as char
                );
            }
            offset += chunk.len();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("5 MB body within 30s");
    assert_eq!(offset, FIVE_MB, "whole body arrived");
}

#[tokio::test]
async fn large_request_body_streams_to_backend() {
    let backend = Backend::start();
    let gw = Gateway::start(&catch_all("app", &[addr(&backend)], ""));
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = (0..FIVE_MB / CHUNK)
        .map(|k| Ok(bytes::Bytes::from(vec![b'a' + (k % 26) as u8; CHUNK])))
        .collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
        .post(gw.url("/upload"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["bytes"].as_u64(), Some(FIVE_MB as u64), "{v}");
    let chunks = v["chunks"].as_u64().unwrap();
    assert!(
        chunks > 1,
        "the upload arrived in {chunks} chunk(s): buffered, not streamed ({v})"
    );
    assert_eq!(
        backend
            .log
            .bytes_in
            .load(std::sync::atomic::Ordering::Relaxed),
        FIVE_MB as u64
    );
}

#[tokio::test]
async fn backend_statuses_pass_through() {
    let backend = Backend::start();
    let gw = Gateway::start(&catch_all("app", &[addr(&backend)], ""));
    for code in [404u16, 500, 503, 201, 418] {
        let (status, _, body) = get(&gw.url(&format!("/status/{code}"))).await;
        assert_eq!(status, code, "body {body:?}");
        assert_eq!(
            body,
            format!("backend status {code}"),
            "the backend's own body comes back"
        );
    }
}

fn assert_short_reason(body: &str, upstream: &str) {
    let text = body.trim_end();
    assert_eq!(text.lines().count(), 1, "one line expected: {body:?}");
    assert!(text.len() < 200, "short reason expected: {body:?}");
    assert!(
        text.contains(upstream),
        "reason should name upstream `{upstream}`: {body:?}"
    );
}

#[tokio::test]
async fn upstream_down_is_502_with_reason() {
    let gw = Gateway::start(&catch_all(
        "legacy_app",
        &[dead_addr()],
        ", connect_timeout: 2s",
    ));
    for _ in 0..2 {
        let (status, _, body) = get(&gw.url("/anything?x=1")).await;
        assert_eq!(status, 502, "body {body:?}");
        assert_short_reason(&body, "legacy_app");
    }
    // The gateway itself stays up and keeps answering.
    assert!(port_open(gw.port));
}

#[tokio::test]
async fn upstream_read_timeout_is_504() {
    let backend = Backend::start();
    let gw = Gateway::start(&catch_all(
        "slow_app",
        &[addr(&backend)],
        ", read_timeout: 300ms",
    ));
    let started = std::time::Instant::now();
    let (status, _, body) = get(&gw.url("/sleep/2000")).await;
    let took = started.elapsed();
    assert_eq!(status, 504, "body {body:?}");
    assert_short_reason(&body, "slow_app");
    assert!(
        took < Duration::from_millis(1900),
        "504 came after {took:?}, not after the 300ms read timeout"
    );
    // A fast request on the same upstream still works.
    let (status, _, body) = get(&gw.url("/sleep/1")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "slept");
}

#[tokio::test]
async fn round_robin_spreads_over_servers() {
    let a = Backend::start();
    let b = Backend::start();
    let gw = Gateway::start(&catch_all("app", &[addr(&a), addr(&b)], ""));
    for i in 0..10 {
        let (status, headers, body) = get(&gw.url(&format!("/rr/{i}"))).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers.get("x-backend").unwrap(), "echo");
    }
    let (na, nb) = (requests_seen(&a), requests_seen(&b));
    assert_eq!(na + nb, 10, "a={na} b={nb}");
    assert!(
        na >= 3 && nb >= 3,
        "round robin should spread 10 requests over both servers: a={na} b={nb}"
    );
}

#[tokio::test]
async fn passive_health_retries_and_skips_dead_server() {
    let live = Backend::start();
    // The dead server is listed first, so the very first pick goes to it.
    let gw = Gateway::start(&catch_all(
        "app",
        &[dead_addr(), addr(&live)],
        ", fail_timeout: 60s",
    ));
    for i in 0..10 {
        let (status, _, body) = get(&gw.url(&format!("/ph/{i}"))).await;
        assert_eq!(
            status,
            200,
            "request {i} failed although one server is up: {body:?}\nlog:\n{}",
            gw.log()
        );
    }
    assert_eq!(requests_seen(&live), 10);
    // Each retried connect failure is logged by pingora ("Fail to proxy ... retry: true");
    // once marked down, the dead server is not tried again within fail_timeout.
    let log = gw.log();
    let retried = log.lines().filter(|l| l.contains("Fail to proxy")).count();
    assert!(
        retried <= 1,
        "the dead server was tried {retried} times, not skipped after the first failure:\n{log}"
    );
}

#[tokio::test]
async fn methods_narrow_routes_with_405_and_allow() {
    let backend = Backend::start();
    let body = format!(
        "upstreams:\n  app: {{ servers: [\"{}\"] }}\nroutes:\n  - path: /submit\n    proxy: app\n    methods: [POST]\n  - path: /both\n    proxy: app\n    methods: [POST, PUT]\n",
        addr(&backend)
    );
    let gw = Gateway::start(&body);
    let (status, headers, text) = get(&gw.url("/submit")).await;
    assert_eq!(status, 405, "{text}");
    let allow = headers
        .get("allow")
        .expect("405 carries Allow")
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(allow.replace(' ', ""), "POST", "{allow}");
    assert_eq!(
        requests_seen(&backend),
        0,
        "a refused method does not reach the backend"
    );

    let r = client()
        .post(gw.url("/submit"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let seen: serde_json::Value = r.json().await.unwrap();
    assert_eq!(seen["method"], "POST");
    assert_eq!(seen["body"], "x");

    let r = client().delete(gw.url("/both")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let allow = r
        .headers()
        .get("allow")
        .expect("405 carries Allow")
        .to_str()
        .unwrap()
        .to_string();
    let mut listed: Vec<&str> = allow.split(',').map(str::trim).collect();
    listed.sort_unstable();
    assert_eq!(listed, vec!["POST", "PUT"], "{allow}");

    // No route at all is 404, not 405.
    let (status, _, _) = get(&gw.url("/nowhere")).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn host_narrows_routes() {
    let a = Backend::start();
    let b = Backend::start();
    let body = format!(
        "upstreams:\n  for_a: {{ servers: [\"{}\"] }}\n  other: {{ servers: [\"{}\"] }}\nroutes:\n  - path: /h/{{*rest}}\n    proxy: for_a\n    host: a.example\n  - path: /h/{{*rest}}\n    proxy: other\n",
        addr(&a),
        addr(&b)
    );
    let gw = Gateway::start(&body);
    let send = |host: &'static str| {
        let url = gw.url("/h/x");
        async move {
            let r = client().get(url).header("host", host).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "host {host}");
        }
    };
    send("a.example").await;
    assert_eq!(
        (requests_seen(&a), requests_seen(&b)),
        (1, 0),
        "Host a.example picks the host route"
    );
    send("A.Example:8080").await;
    assert_eq!(
        (requests_seen(&a), requests_seen(&b)),
        (2, 0),
        "host match ignores case and port"
    );
    send("b.example").await;
    assert_eq!(
        (requests_seen(&a), requests_seen(&b)),
        (2, 1),
        "another host falls back to the route without host"
    );
    let (status, _, _) = get(&gw.url("/h/y")).await;
    assert_eq!(status, 200);
    assert_eq!((requests_seen(&a), requests_seen(&b)), (2, 2));
    // The backend sees the original Host header.
    let seen = a.log.requests.lock().unwrap()[0].2.clone();
    let host = seen
        .iter()
        .find(|(k, _)| k == "host")
        .map(|(_, v)| v.as_str());
    assert_eq!(host, Some("a.example"));
}

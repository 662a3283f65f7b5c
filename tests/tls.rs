//! TLS and HTTP/2 on the public listener, end to end through the real binary:
//! many SSE streams over one connection, h2c, ALPN fallback to HTTP/1.1,
//! flush per event over h2 (held and proxied), resume, heartbeat, reset as
//! disconnect, slow clients, drain, pass-through to HTTP/1.1 backends,
//! SIGHUP certificate reload, bad certificates refused by `check`, and
//! handshake garbage kept out of the log.

mod support;

use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use support::tls::{h2_client, h2_get, H2Body, TestCa};
use support::*;

const ROUTES: &str = "
sse:
  heartbeat: 300ms
  retry: 2s
  client_queue: 64
hub:
  history: { size: 100, ttl: 1h }
routes:
  - path: /events/{room}
    sse: { channels: [\"room:{room}\"] }
";

fn tls_block(cert: &Path, key: &Path) -> String {
    format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}\n",
        cert.display(),
        key.display()
    )
}

/// A gateway with TLS from a fresh CA; the CA and cert dir stay alive with it.
struct TlsGateway {
    gw: Gateway,
    ca: TestCa,
    dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsGateway {
    /// A new HTTP/2 connection over TLS, and the authority to put in requests.
    async fn h2(&self) -> (h2::client::SendRequest<bytes::Bytes>, String) {
        let tls = self.ca.connect_h2(self.gw.port).await.unwrap();
        let authority = format!("127.0.0.1:{}", self.gw.port);
        (h2_client(tls).await, authority)
    }
}

fn start_tls(extra: &str) -> TlsGateway {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("one");
    let (cert, key) = ca.issue(dir.path(), "server");
    let gw = Gateway::start(&format!("{}{ROUTES}{extra}", tls_block(&cert, &key)));
    TlsGateway {
        gw,
        ca,
        dir,
        cert,
        key,
    }
}

/// Poll the admin metrics until `ok(value)`, or fail saying `what`.
async fn wait_metric(gw: &Gateway, name: &str, ok: impl Fn(f64) -> bool, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !ok(gw.metric(name).await) {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Appended to ROUTES: every other path goes to `backend`.
fn proxy_everything_else(backend: &Backend) -> String {
    format!(
        "  - path: /{{*rest}}\n    proxy: app\nupstreams:\n  app: {{ servers: [\"{}\"] }}\n",
        backend.addr
    )
}

fn https(gw: &Gateway, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", gw.port)
}

async fn until_text(body: &H2Body, what: &str, pred: impl Fn(&str) -> bool) -> String {
    eventually(WAIT, what, || {
        let t = body.snapshot();
        pred(&t).then_some(t)
    })
    .await
}

#[tokio::test]
async fn two_hundred_streams_share_one_tls_connection() {
    let t = start_tls("");
    let gw = &t.gw;
    // One TCP connection, opened here: every stream below rides on it.
    let tls = t.ca.connect_h2(gw.port).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut send = h2_client(tls).await;
    let authority = format!("127.0.0.1:{}", gw.port);
    let mut bodies = Vec::new();
    for i in 0..200 {
        let room = format!("r{}", i % 10);
        let b = h2_get(
            &mut send,
            &authority,
            "https",
            &format!("/events/{room}"),
            &[],
        )
        .await;
        if i == 0 {
            // The server's SETTINGS have arrived with the first response.
            assert_eq!(
                send.current_max_send_streams(),
                1000,
                "default per connection"
            );
        }
        assert_eq!(b.status, 200);
        assert!(b.headers.get("transfer-encoding").is_none());
        assert_eq!(
            b.headers.get("content-type").unwrap(),
            "text/event-stream; charset=utf-8"
        );
        bodies.push(b);
    }
    for b in &bodies {
        until_text(b, "prelude on every stream", |t| t.contains(":ok\n\n")).await;
    }
    assert_eq!(gw.metric("ssegate_connections{").await, 200.0);
    for round in 0..2 {
        for r in 0..10 {
            gw.publish_ok(&format!("room:r{r}"), json!(format!("ev{round}-r{r}")))
                .await;
        }
    }
    for (i, b) in bodies.iter().enumerate() {
        let r = i % 10;
        let text = until_text(b, "both events on every stream", |t| {
            t.contains(&format!("data: ev1-r{r}\n"))
        })
        .await;
        let first = text
            .find(&format!("data: ev0-r{r}\n"))
            .expect("first event");
        assert!(first < text.find(&format!("data: ev1-r{r}\n")).unwrap());
    }
}

#[tokio::test]
async fn each_event_is_flushed_alone_over_h2() {
    // cloudflare/pingora#841: SSE bodies held back downstream. Over h2, one
    // event with no traffic after it must arrive by itself, both on a
    // gateway stream and through a proxied streaming response.
    let backend = Backend::start();
    let t = start_tls(&proxy_everything_else(&backend));
    let (gw, client) = (&t.gw, t.ca.reqwest(false));
    let mut sse = Sse::connect_using(&client, &https(gw, "/events/flush"), &[]).await;
    assert_eq!(sse.version, reqwest::Version::HTTP_2);
    for i in 0..5 {
        let started = Instant::now();
        gw.publish_ok("room:flush", json!(format!("alone{i}")))
            .await;
        assert_eq!(sse.next().await.data, format!("alone{i}"));
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "event {i} took {:?}",
            started.elapsed()
        );
    }
    // Proxied: 3 lines 700 ms apart. The first must arrive long before the last is sent.
    let started = Instant::now();
    let mut resp = client.get(https(gw, "/drip/3/700")).send().await.unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let first = tokio::time::timeout(WAIT, resp.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"drip 0\n");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "first proxied chunk took {:?}",
        started.elapsed()
    );
    let mut rest = Vec::new();
    while let Some(c) = tokio::time::timeout(WAIT, resp.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        rest.extend_from_slice(&c);
    }
    assert_eq!(String::from_utf8_lossy(&rest), "drip 1\ndrip 2\n");
}

#[tokio::test]
async fn http11_only_clients_still_get_sse_over_tls() {
    let t = start_tls("");
    let client = t.ca.reqwest(true);
    let mut sse = Sse::connect_using(&client, &https(&t.gw, "/events/h1"), &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.version, reqwest::Version::HTTP_11);
    assert_eq!(
        sse.headers.get("transfer-encoding").unwrap(),
        "chunked",
        "{:?}",
        sse.headers
    );
    t.gw.publish_ok("room:h1", json!({"k": 1})).await;
    let ev = sse.next().await;
    assert_eq!(ev.data, r#"{"k":1}"#);
    // And a plain-text request to the TLS port is not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{}/events/h1", t.gw.port))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        plain.map(|r| r.status().as_u16() != 200).unwrap_or(true),
        "plain HTTP must not get a stream on the TLS port"
    );
}

#[tokio::test]
async fn resume_and_heartbeat_over_h2() {
    let t = start_tls("");
    let client = t.ca.reqwest(false);
    let mut first = Sse::connect_using(&client, &https(&t.gw, "/events/res"), &[]).await;
    t.gw.publish_ok("room:res", json!("one")).await;
    let last = first.next().await.id;
    drop(first);
    for i in 0..3 {
        t.gw.publish_ok("room:res", json!(format!("missed{i}")))
            .await;
    }
    let mut again = Sse::connect_using(
        &client,
        &https(&t.gw, "/events/res"),
        &[("last-event-id", &last)],
    )
    .await;
    assert_eq!(again.version, reqwest::Version::HTTP_2);
    let got: Vec<String> = again.take(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec!["missed0", "missed1", "missed2"]);

    // Heartbeats are comments: watch the raw h2 body for them.
    let (mut send, authority) = t.h2().await;
    let b = h2_get(&mut send, &authority, "https", "/events/hb", &[]).await;
    let text = until_text(&b, "two heartbeats", |t| t.matches(":\n\n").count() >= 2).await;
    let prelude = prelude_of(&text);
    assert!(
        prelude.starts_with("retry: 2000\nid: ") && prelude.ends_with("\n:ok\n\n"),
        "{text:?}"
    );
    assert!(text[prelude.len()..].starts_with(":\n\n"), "{text:?}");
}

#[tokio::test]
async fn a_reset_stream_is_a_disconnect_and_its_neighbours_live_on() {
    let t = start_tls("");
    let (mut send, authority) = t.h2().await;
    let keep = h2_get(&mut send, &authority, "https", "/events/keep", &[]).await;
    let gone = h2_get(&mut send, &authority, "https", "/events/gone", &[]).await;
    until_text(&gone, "prelude", |t| t.contains(":ok")).await;
    assert_eq!(t.gw.metric("ssegate_connections{").await, 2.0);
    gone.abort(); // drops the stream: the client sends RST_STREAM(CANCEL)
    let gw = &t.gw;
    wait_metric(
        gw,
        "ssegate_connections{",
        |v| v == 1.0,
        "reset stream still counted open",
    )
    .await;
    gw.publish_ok("room:keep", json!("still here")).await;
    until_text(&keep, "event on the surviving stream", |t| {
        t.contains("data: still here\n")
    })
    .await;
}

#[tokio::test]
async fn a_slow_h2_stream_is_evicted_without_stalling_its_connection() {
    let t = start_tls("");
    let gw = &t.gw;
    let tls = t.ca.connect_h2(gw.port).await.unwrap();
    // The slow stream's data is never read, so its 64 KiB window is never
    // released. The connection window stays generous, as a browser's.
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(65_535)
        .initial_connection_window_size(1 << 26)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let req = http::Request::get(format!("https://127.0.0.1:{}/events/slow", gw.port))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let slow = tokio::time::timeout(WAIT, resp).await.unwrap().unwrap();
    assert_eq!(slow.status(), 200);
    let authority = format!("127.0.0.1:{}", gw.port);
    let fast = h2_get(&mut send, &authority, "https", "/events/slow", &[]).await;
    let big = "x".repeat(4000);
    for i in 0..100 {
        gw.publish_ok("room:slow", json!(format!("{i}{big}"))).await;
    }
    wait_metric(
        gw,
        "ssegate_slow_client_disconnects_total",
        |v| v >= 1.0,
        "slow h2 stream was never evicted",
    )
    .await;
    // The fast stream, on the same connection, gets all 100 events: the
    // slow one's closed window holds back nothing but itself.
    let fast_window = until_text(&fast, "all events on the fast stream", |t| {
        t.contains(&format!("data: 99{big}\n"))
    })
    .await;
    assert_eq!(fast_window.matches(&big).count(), 100);
    drop(slow);
}

#[tokio::test]
async fn drain_over_h2_sends_a_retry_and_ends_the_stream() {
    let t = start_tls("shutdown_grace: 5s\n");
    let (mut send, authority) = t.h2().await;
    let b = h2_get(&mut send, &authority, "https", "/events/drain", &[]).await;
    until_text(&b, "prelude", |t| t.contains(":ok")).await;
    let mut gw = t.gw;
    gw.signal("-TERM");
    eventually(WAIT, "stream to end after a retry", || {
        (b.has_ended() && b.snapshot().matches("retry: ").count() >= 2).then_some(())
    })
    .await;
    assert_eq!(gw.wait_exit(WAIT), Some(0), "log:\n{}", gw.log());
}

#[tokio::test]
async fn pass_through_over_h2_reaches_http11_backends() {
    let backend = Backend::start();
    let t = start_tls(&proxy_everything_else(&backend));
    let (gw, client) = (&t.gw, t.ca.reqwest(false));
    let r = client
        .post(https(gw, "/api/items?x=1"))
        .header("content-type", "application/json")
        .body(r#"{"a":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers().get("x-backend").unwrap(), "echo");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["uri"], "/api/items?x=1");
    assert_eq!(v["body"], r#"{"a":1}"#);
    assert_eq!(v["headers"]["x-forwarded-proto"], "https");
    assert_eq!(
        v["headers"]["host"],
        format!("127.0.0.1:{}", gw.port),
        "{v}"
    );
    // A big streamed body too.
    let r = client.get(https(gw, "/big/300000")).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);
}

#[tokio::test]
async fn h2c_prior_knowledge_and_http11_share_the_plain_port() {
    let backend = Backend::start();
    let gw = Gateway::start(&format!(
        "http2: {{ h2c: true, max_concurrent_streams: 300 }}\n{ROUTES}  - path: /{{*rest}}\n    proxy: app\nupstreams:\n  app: {{ servers: [\"{}\"] }}\n",
        backend.addr
    ));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
        .await
        .unwrap();
    let mut send = h2_client(tcp).await;
    let authority = format!("127.0.0.1:{}", gw.port);
    let mut bodies = Vec::new();
    for _ in 0..50 {
        bodies.push(h2_get(&mut send, &authority, "http", "/events/c", &[]).await);
    }
    assert_eq!(send.current_max_send_streams(), 300, "as configured");
    for b in &bodies {
        until_text(b, "prelude", |t| t.contains(":ok")).await;
    }
    gw.publish_ok("room:c", json!("over h2c")).await;
    for b in &bodies {
        until_text(b, "event over h2c", |t| t.contains("data: over h2c\n")).await;
    }
    let proxied = h2_get(&mut send, &authority, "http", "/api/hello", &[]).await;
    assert_eq!(proxied.status, 200);
    until_text(&proxied, "proxied body", |t| t.contains("\"/api/hello\"")).await;
    // HTTP/1.1 on the same port still works, and still streams.
    let mut sse = Sse::connect(&gw.url("/events/c")).await;
    assert_eq!(sse.version, reqwest::Version::HTTP_11);
    gw.publish_ok("room:c", json!("over h1")).await;
    assert_eq!(sse.next().await.data, "over h1");
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_keeps_open_streams() {
    let t = start_tls("");
    let gw = &t.gw;
    let old_client = t.ca.reqwest(false);
    let mut open = Sse::connect_using(&old_client, &https(gw, "/events/hup"), &[]).await;
    assert_eq!(open.status, 200);

    // A reload that fails (half-written file) keeps the current certificate.
    let good_cert = std::fs::read(&t.cert).unwrap();
    std::fs::write(&t.cert, "-----BEGIN CERTIFICATE-----\ntrunc").unwrap();
    gw.signal("-HUP");
    wait_metric(
        gw,
        "ssegate_tls_reloads_total{result=\"error\"}",
        |v| v >= 1.0,
        "failed reload not counted",
    )
    .await;
    std::fs::write(&t.cert, good_cert).unwrap();
    let r = old_client.get(https(gw, "/nowhere")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);

    // Renewal by another CA: new handshakes must present the new certificate.
    let ca2 = TestCa::new("two");
    let (c2, k2) = ca2.issue(t.dir.path(), "renewed");
    std::fs::rename(c2, &t.cert).unwrap();
    std::fs::rename(k2, &t.key).unwrap();
    gw.signal("-HUP");
    wait_metric(
        gw,
        "ssegate_tls_reloads_total{result=\"ok\"}",
        |v| v >= 1.0,
        "reload not counted",
    )
    .await;
    let new_client = ca2.reqwest(false);
    let r = new_client.get(https(gw, "/nowhere")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let fresh_old = TestCa::reqwest(&t.ca, false);
    assert!(
        fresh_old.get(https(gw, "/nowhere")).send().await.is_err(),
        "a client trusting only the old CA must now fail the handshake"
    );
    // The stream opened before both reloads is alive and receives events.
    gw.publish_ok("room:hup", json!("after reload")).await;
    assert_eq!(open.next().await.data, "after reload");
    assert!(gw.log().contains("tls certificate reloaded"));
}

#[tokio::test]
async fn handshake_garbage_costs_nothing_and_stays_out_of_the_log() {
    use tokio::io::AsyncWriteExt;
    let t = start_tls("");
    let gw = &t.gw;
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.port))
            .await
            .unwrap();
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, 0xff, 0, 1, 2]).await;
    }
    // A client that does not trust our certificate aborts the handshake.
    let stranger = TestCa::new("stranger").reqwest(false);
    for _ in 0..5 {
        assert!(stranger.get(https(gw, "/x")).send().await.is_err());
    }
    // Still serving.
    let mut sse = Sse::connect_using(&t.ca.reqwest(false), &https(gw, "/events/g"), &[]).await;
    gw.publish_ok("room:g", json!("fine")).await;
    assert_eq!(sse.next().await.data, "fine");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = gw.log();
    assert!(
        !log.contains("ERROR") && !log.contains("WARN"),
        "handshake failures must log at debug only:\n{log}"
    );
}

// ---------------------------------------------------------------------------
// `ssegate check`: bad TLS input is a config error that names file and line.

fn check(config: &Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(bin())
        .args(["check", "-c"])
        .arg(config)
        .output()
        .unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn check_refuses_bad_certificates_and_keys_with_their_position() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new("check");
    let (cert, key) = ca.issue(d, "good");
    let (_, other_key) = ca.issue(d, "other");
    let (expired, expired_key) = ca.issue_with(d, "expired", |p| {
        p.not_before = rcgen::date_time_ymd(2001, 1, 1);
        p.not_after = rcgen::date_time_ymd(2002, 1, 1);
    });
    std::fs::write(d.join("junk.pem"), "this is not PEM\n").unwrap();
    let cfg = d.join("ssegate.yaml");
    let write = |cert: &str, key: &str| {
        std::fs::write(
            &cfg,
            format!("listen: 127.0.0.1:0\ntls:\n  cert: {cert}\n  key: {key}\n"),
        )
        .unwrap();
    };
    let name = |p: &Path| p.file_name().unwrap().to_str().unwrap().to_string();
    let file = cfg.display().to_string();

    // Relative paths are resolved against the config file's directory.
    write(&name(&cert), &name(&key));
    assert_eq!(check(&cfg), (Some(0), "ok\n".to_string()));

    for (c, k, at, says) in [
        (
            name(&cert),
            name(&other_key),
            "4:3",
            "is not the private key",
        ),
        (name(&cert), "missing.key".into(), "4:3", "cannot read"),
        ("missing.crt".into(), name(&key), "3:3", "cannot read"),
        ("junk.pem".into(), name(&key), "3:3", "no PEM certificate"),
        (name(&cert), "junk.pem".into(), "4:3", "no PEM private key"),
        (name(&expired), name(&expired_key), "3:3", "expired"),
    ] {
        write(&c, &k);
        let (code, out) = check(&cfg);
        assert_eq!(code, Some(2), "{c} {k}: {out}");
        assert!(
            out.starts_with(&format!("{file}:{at}: ")),
            "{c} {k}: expected {file}:{at}, got {out}"
        );
        assert!(out.contains(says), "{c} {k}: {out}");
        let named = if at.starts_with('3') { &c } else { &k };
        assert!(out.contains(named.as_str()), "names the file: {out}");
    }

    // h2c makes no sense next to tls.
    std::fs::write(
        &cfg,
        format!(
            "tls: {{ cert: {}, key: {} }}\nhttp2:\n  h2c: true\n",
            name(&cert),
            name(&key)
        ),
    )
    .unwrap();
    let (code, out) = check(&cfg);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains(":3:3: ") && out.contains("h2c"), "{out}");
}

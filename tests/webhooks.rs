//! Webhooks end to end (SPEC §4): real signatures computed here, posted to
//! the real binary's admin listener, and the mapped events read back by an
//! SSE client; every refusal answers its status and publishes nothing.

mod support;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::*;

const GH_SECRET: &str = "gh-s3cret";
const STRIPE_SECRET: &str = "whsec_stripe_test";
/// "whsec_" + base64 of the key bytes, as Standard Webhooks senders hand it out.
const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "t0ken";

const CONFIG: &str = r#"
limits: { max_body: 4KiB }
routes:
  - path: /events/{ch}
    sse: { channels: ["{ch}"] }
webhooks:
  - path: /hooks/github
    verify: { hmac_sha256: { secret_env: GH_SECRET, header: X-Hub-Signature-256, prefix: "sha256=" } }
    channel: "repo:{/repository/name}"
    event: "{header.x-github-event}"
    id: "{header.x-github-delivery}"
    data: /head_commit
  - path: /hooks/stripe
    verify: { stripe: { secret_env: STRIPE_SECRET, tolerance: 5m } }
    channel: "customer:{/data/object/customer}"
    event: "{/type}"
    id: "{/id}"
    data: /data/object
  - path: /hooks/std
    verify: { standard_webhooks: { secret_env: STD_SECRET } }
    channel: "user:{/user}"
    event: "{/type}"
  - path: /hooks/token
    methods: [POST, PUT]
    verify: { token: { header: X-Token, value_env: HOOK_TOKEN } }
    channel: ["orders", "order:{/order/id}"]
    event: "{query.kind}"
    data: /order
  - path: /hooks/builds
    each: /builds
    channel: "build:{/id}"
    event: "{/status}"
    id: "{/id}-{/status}"
  - path: /hooks/form
    channel: "ticket:{form.ticket}"
    event: ticket
  - path: /hooks/form-text
    channel: "ticket:{/ticket}"
    data: "{form.state}"
"#;

fn start() -> Gateway {
    Gateway::start_with_env(
        CONFIG,
        &[
            ("GH_SECRET", GH_SECRET),
            ("STRIPE_SECRET", STRIPE_SECRET),
            ("STD_SECRET", STD_SECRET),
            ("HOOK_TOKEN", TOKEN),
        ],
    )
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn stripe_header(body: &str, t: u64) -> String {
    format!(
        "t={t},v1={}",
        hex::encode(hmac(
            STRIPE_SECRET.as_bytes(),
            &[t.to_string().as_bytes(), b".", body.as_bytes()]
        ))
    )
}

fn std_headers(id: &str, body: &str) -> Vec<(&'static str, String)> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(STD_SECRET.trim_start_matches("whsec_")).unwrap();
    let ts = now().to_string();
    let sig = b64.encode(hmac(
        &key,
        &[id.as_bytes(), b".", ts.as_bytes(), b".", body.as_bytes()],
    ));
    vec![
        ("webhook-id", id.to_string()),
        ("webhook-timestamp", ts),
        ("webhook-signature", format!("v1,{sig}")),
    ]
}

async fn send(
    gw: &Gateway,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, String)],
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = client()
        .request(method, gw.admin(path))
        .body(body.to_string());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn post(gw: &Gateway, path: &str, body: &str, headers: &[(&str, String)]) -> (u16, Value) {
    send(gw, "POST", path, body, headers).await
}

fn github(body: &str, delivery: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "x-hub-signature-256",
            format!(
                "sha256={}",
                hex::encode(hmac(GH_SECRET.as_bytes(), &[body.as_bytes()]))
            ),
        ),
        ("x-github-event", "push".into()),
        ("x-github-delivery", delivery.into()),
    ]
}

/// Refused with `status` and a reason mentioning `why`.
fn refused(got: (u16, Value), status: u16, why: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    let reason = got.1["error"].as_str().unwrap_or_default();
    assert!(reason.contains(why), "`{reason}` should mention `{why}`");
}

const PUSH: &str =
    r#"{"repository":{"name":"ssegate"},"head_commit":{"id":"abc", "message":"fix"}}"#;

#[tokio::test]
async fn github_style_signature_publishes_the_mapped_event_once() {
    let gw = start();
    let mut s = Sse::connect(&gw.url("/events/repo:ssegate")).await;
    let r = post(&gw, "/hooks/github", PUSH, &github(PUSH, "d-1")).await;
    assert_eq!(
        r,
        (202, json!({"published": 1, "channels": ["repo:ssegate"]}))
    );
    let ev = s.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("push", r#"{"id":"abc","message":"fix"}"#)
    );
    assert!(!ev.id.is_empty(), "the gateway's cursor is the SSE id");
    // A redelivery of the same delivery id publishes nothing.
    assert_eq!(
        post(&gw, "/hooks/github", PUSH, &github(PUSH, "d-1")).await,
        (200, json!({"duplicate": true}))
    );
    assert_eq!(
        post(&gw, "/hooks/github", PUSH, &github(PUSH, "d-2"))
            .await
            .0,
        202
    );
    assert_eq!(s.next().await.data, r#"{"id":"abc","message":"fix"}"#);
    s.silent_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn bad_or_missing_signatures_are_401_and_publish_nothing() {
    let gw = start();
    let mut s = Sse::connect(&gw.url("/events/repo:ssegate")).await;
    let good = github(PUSH, "d-1");
    let sig = good[0].1.clone();
    let other_body = github(r#"{"x":1}"#, "d-1")[0].1.clone();
    for (value, why) in [
        (None, "missing x-hub-signature-256 header"),
        (
            Some(sig.trim_start_matches("sha256=").to_string()),
            "does not match",
        ),
        (Some(other_body), "does not match"),
        (Some("sha256=zz".to_string()), "not hex"),
    ] {
        let mut headers = good[1..].to_vec();
        headers.extend(value.map(|v| ("x-hub-signature-256", v)));
        refused(post(&gw, "/hooks/github", PUSH, &headers).await, 401, why);
    }
    let mut wrong_token = vec![("x-token", "t0ke".to_string())];
    refused(
        post(&gw, "/hooks/token", r#"{"order":{"id":1}}"#, &wrong_token).await,
        401,
        "does not match",
    );
    wrong_token.clear();
    refused(
        post(&gw, "/hooks/token", r#"{"order":{"id":1}}"#, &wrong_token).await,
        401,
        "missing x-token",
    );
    assert_eq!(post(&gw, "/hooks/github", PUSH, &good).await.0, 202);
    assert_eq!(
        s.next().await.event,
        "push",
        "the first event is the valid one"
    );
    assert_eq!(
        gw.metric("ssegate_webhooks_total{outcome=\"bad_signature\",path=\"/hooks/github\"}")
            .await,
        4.0
    );
}

#[tokio::test]
async fn stripe_style_accepts_fresh_and_refuses_replays() {
    let gw = start();
    let mut s = Sse::connect(&gw.url("/events/customer:cus_1")).await;
    let body = r#"{"id":"evt_1","type":"invoice.paid","data":{"object":{"customer":"cus_1","amount":500}}}"#;
    let stale = stripe_header(body, now() - 600);
    refused(
        post(&gw, "/hooks/stripe", body, &[("stripe-signature", stale)]).await,
        401,
        "tolerance",
    );
    refused(
        post(
            &gw,
            "/hooks/stripe",
            body,
            &[("stripe-signature", "t=1,v1=00".into())],
        )
        .await,
        401,
        "does not match",
    );
    refused(
        post(
            &gw,
            "/hooks/stripe",
            body,
            &[("stripe-signature", "v1=00".into())],
        )
        .await,
        401,
        "malformed",
    );
    let fresh = stripe_header(body, now());
    assert_eq!(
        post(
            &gw,
            "/hooks/stripe",
            body,
            &[("stripe-signature", fresh.clone())]
        )
        .await
        .0,
        202
    );
    let ev = s.next().await;
    assert_eq!(
        // The backend's JSON as it sent it: its key order kept.
        (ev.event.as_str(), ev.data.as_str()),
        ("invoice.paid", r#"{"customer":"cus_1","amount":500}"#)
    );
    // Stripe retries carry the same event id.
    assert_eq!(
        post(&gw, "/hooks/stripe", body, &[("stripe-signature", fresh)]).await,
        (200, json!({"duplicate": true}))
    );
    assert_eq!(
        gw.metric("ssegate_webhooks_total{outcome=\"stale\"").await,
        1.0
    );
}

#[tokio::test]
async fn standard_webhooks_id_dedupes_redeliveries() {
    let gw = start();
    let mut s = Sse::connect(&gw.url("/events/user:u1")).await;
    let body = r#"{"type":"user.updated","user":"u1"}"#;
    assert_eq!(
        post(&gw, "/hooks/std", body, &std_headers("msg_1", body)).await,
        (202, json!({"published": 1, "channels": ["user:u1"]}))
    );
    // A redelivery is signed anew (new timestamp) but keeps its webhook-id.
    assert_eq!(
        post(&gw, "/hooks/std", body, &std_headers("msg_1", body)).await,
        (200, json!({"duplicate": true}))
    );
    assert_eq!(
        post(&gw, "/hooks/std", body, &std_headers("msg_2", body))
            .await
            .0,
        202
    );
    let mut tampered = std_headers("msg_3", body);
    tampered[0].1 = "msg_4".into();
    refused(
        post(&gw, "/hooks/std", body, &tampered).await,
        401,
        "does not match",
    );
    refused(
        post(&gw, "/hooks/std", body, &[]).await,
        401,
        "missing webhook-id",
    );
    let got = s.take(2).await;
    assert!(
        got.iter()
            .all(|e| e.event == "user.updated" && e.data == body),
        "{got:?}"
    );
    s.silent_for(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn token_scheme_with_methods_and_a_channel_list() {
    let gw = start();
    let mut all = Sse::connect(&gw.url("/events/orders")).await;
    let mut one = Sse::connect(&gw.url("/events/order:5")).await;
    let token = [("x-token", TOKEN.to_string())];
    let body = r#"{"order":{"id":5,"state":"paid"}}"#;
    let r = send(&gw, "PUT", "/hooks/token?kind=order.paid", body, &token).await;
    assert_eq!(
        r,
        (
            202,
            json!({"published": 2, "channels": ["orders", "order:5"]})
        )
    );
    for s in [&mut all, &mut one] {
        let ev = s.next().await;
        assert_eq!(
            (ev.event.as_str(), ev.data.as_str()),
            ("order.paid", r#"{"id":5,"state":"paid"}"#)
        );
    }
    let r = client()
        .get(gw.admin("/hooks/token"))
        .header("x-token", TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "POST, PUT");
    refused(
        send(&gw, "DELETE", "/hooks/token", body, &token).await,
        405,
        "method not allowed",
    );
    refused(
        post(&gw, "/hooks/nope", body, &token).await,
        404,
        "no admin endpoint",
    );
}

#[tokio::test]
async fn bodies_over_max_body_are_413_without_being_read() {
    let gw = start();
    // Declared too large: answered from the headers, before any body byte is sent.
    let mut sock = std::net::TcpStream::connect(("127.0.0.1", gw.admin_port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let head = "POST /hooks/builds HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n";
    sock.write_all(head.as_bytes()).unwrap();
    let deadline = Instant::now() + WAIT;
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("max_body") {
        assert!(
            Instant::now() < deadline,
            "no 413 within {WAIT:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        let mut buf = [0u8; 4096];
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    // Chunked, with no declared length: refused once the limit is crossed.
    let chunks = (0..64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024])));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    // The gateway answers and closes without reading the rest, so the client
    // may see the 413 or, if it was still sending, a broken pipe; the metric
    // below proves which path the gateway took either way.
    match client()
        .post(gw.admin("/hooks/builds"))
        .body(body)
        .send()
        .await
    {
        Ok(r) => assert_eq!(r.status().as_u16(), 413),
        Err(e) => assert!(e.is_request(), "unexpected error {e}"),
    }
    assert_eq!(
        gw.metric("ssegate_webhooks_total{outcome=\"too_large\"")
            .await,
        2.0
    );
}

#[tokio::test]
async fn bad_bodies_are_400_with_the_reason_and_publish_nothing() {
    let gw = start();
    let mut s = Sse::connect(&gw.url("/events/build:b1")).await;
    let cases = [
        ("not json", "body is not JSON", "bad_json"),
        (
            r#"{"builds":[{"id":"b1","status":"ok"},{"id":"b2"}]}"#,
            "pointer /status matches nothing in element 1 of /builds",
            "missing_pointer",
        ),
        (r#"{"nothing":[]}"#, "pointer /builds", "missing_pointer"),
        (
            r#"{"builds":[{"id":"b1","status":"ok"},{"id":"b1,b2","status":"ok"}]}"#,
            "outside [A-Za-z0-9_.:@-]",
            "bad_channel",
        ),
        (
            r#"{"builds":[{"id":"b1","status":"ok"},{"id":"*","status":"ok"}]}"#,
            "outside",
            "bad_channel",
        ),
    ];
    for (body, why, _) in cases {
        refused(post(&gw, "/hooks/builds", body, &[]).await, 400, why);
    }
    for (_, _, outcome) in cases {
        let n = gw
            .metric(&format!(
                "ssegate_webhooks_total{{outcome=\"{outcome}\",path=\"/hooks/builds\"}}"
            ))
            .await;
        assert!(n >= 1.0, "{outcome} counted");
    }
    let r = post(
        &gw,
        "/hooks/builds",
        r#"{"builds":[{"id":"b1","status":"done"}]}"#,
        &[],
    )
    .await;
    assert_eq!(r.0, 202);
    assert_eq!(
        s.next().await.event,
        "done",
        "nothing from the refused requests was published"
    );
}

#[tokio::test]
async fn each_fans_out_one_event_per_element() {
    let gw = start();
    let mut a = Sse::connect(&gw.url("/events/build:a")).await;
    let mut b = Sse::connect(&gw.url("/events/build:b")).await;
    let body = r#"{"builds":[{"id":"a","status":"started"},{"id":"b","status":"started"},{"id":"a","status":"passed"}]}"#;
    let r = post(&gw, "/hooks/builds", body, &[]).await;
    assert_eq!(
        r,
        (
            202,
            json!({"published": 3, "channels": ["build:a", "build:b"]})
        )
    );
    let got: Vec<(String, String)> = a
        .take(2)
        .await
        .into_iter()
        .map(|e| (e.event, e.data))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "started".to_string(),
                r#"{"id":"a","status":"started"}"#.to_string()
            ),
            (
                "passed".to_string(),
                r#"{"id":"a","status":"passed"}"#.to_string()
            )
        ]
    );
    assert_eq!(b.next().await.event, "started");
    // Ids are per element: the whole redelivery is a duplicate, a new status is not.
    assert_eq!(
        post(&gw, "/hooks/builds", body, &[]).await,
        (200, json!({"duplicate": true}))
    );
    let more = r#"{"builds":[{"id":"a","status":"passed"},{"id":"b","status":"failed"}]}"#;
    assert_eq!(
        post(&gw, "/hooks/builds", more, &[]).await,
        (
            202,
            json!({"published": 1, "channels": ["build:a", "build:b"], "duplicates": 1})
        )
    );
    assert_eq!(b.next().await.event, "failed");
}

#[tokio::test]
async fn form_bodies_map_fields() {
    let gw = start();
    let mut s = Sse::connect(&gw.url("/events/ticket:42")).await;
    let form = [(
        "content-type",
        "application/x-www-form-urlencoded".to_string(),
    )];
    let body = "ticket=42&state=open&note=caf%C3%A9+au+lait";
    assert_eq!(
        post(&gw, "/hooks/form", body, &form).await,
        (202, json!({"published": 1, "channels": ["ticket:42"]}))
    );
    let ev = s.next().await;
    assert_eq!(ev.event, "ticket");
    let data: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(
        data,
        json!({"ticket": "42", "state": "open", "note": "café au lait"})
    );
    assert_eq!(
        post(&gw, "/hooks/form-text", "ticket=42&state=closed", &form)
            .await
            .0,
        202
    );
    assert_eq!(s.next().await.data, "closed");
    refused(
        post(&gw, "/hooks/form", "state=open", &form).await,
        400,
        "{form.ticket} has no value",
    );
}

#[tokio::test]
async fn metrics_count_accepted_and_duplicates_per_path() {
    let gw = start();
    let body = r#"{"builds":[{"id":"m","status":"ok"}]}"#;
    assert_eq!(post(&gw, "/hooks/builds", body, &[]).await.0, 202);
    assert_eq!(post(&gw, "/hooks/builds", body, &[]).await.0, 200);
    assert_eq!(
        gw.metric("ssegate_webhooks_total{outcome=\"accepted\",path=\"/hooks/builds\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("ssegate_webhooks_total{outcome=\"duplicate\",path=\"/hooks/builds\"}")
            .await,
        1.0
    );
}

#[test]
fn check_locates_webhook_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "webhooks:\n  - path: /metrics\n    channel: \"o:{jwt.sub}\"\n    verify: { hmac_sha256: { secret_env: SSEGATE_TEST_UNSET_SECRET, header: X-Sig } }\n  - path: /h\n    channel: \"o:{/a~2}\"\n    event: \"{cookie.x}\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .env_remove("SSEGATE_TEST_UNSET_SECRET")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(2), "{text}");
    let file = path.display().to_string();
    for (at, what) in [
        ("2:5", "admin listener's own endpoints"),
        ("3:5", "`{jwt.sub}` (jwt) is not available in webhooks"),
        ("4:", "`SSEGATE_TEST_UNSET_SECRET` is not set"),
        ("6:5", "`~` must be followed by 0 or 1"),
        ("7:5", "unknown placeholder kind `cookie`"),
    ] {
        assert!(
            text.contains(&format!("{file}:{at}"))
                && text
                    .lines()
                    .any(|l| l.starts_with(&format!("{file}:{at}")) && l.contains(what)),
            "{at} {what}:\n{text}"
        );
    }
}

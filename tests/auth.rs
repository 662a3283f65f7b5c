//! Per-client streams through the real binary: JWT (HS256 from env, RS256 from
//! a PEM file, ES256 from a JWKS), forward auth against a real backend (allow,
//! deny, cache, failure), channels claims, injection attempts through every
//! kind of value, users isolated under concurrent publishing, and streams
//! closed at `exp` with `ssegate.expired`.

mod support;

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use support::*;

const SECRET: &str = "test-jwt-secret";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs(claims: Value) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn user(sub: &str) -> String {
    hs(json!({"sub": sub, "aud": "app", "iss": "issuer1", "exp": now() + 600}))
}

/// The forward-auth backend: decides by `Authorization`, exposes `X-User`
/// (the client's `X-Want-User`, so tests can choose hostile values), counts calls.
struct AuthBackend {
    port: u16,
    calls: Arc<AtomicUsize>,
    _rt: std::thread::JoinHandle<()>,
}

fn auth_backend() -> AuthBackend {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let rt = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/auth/orders/{id}",
                axum::routing::get(move |h: HeaderMap| {
                    let c = c.clone();
                    async move {
                        c.fetch_add(1, Ordering::SeqCst);
                        let auth = h
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        let who = h
                            .get("x-want-user")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("42")
                            .to_string();
                        match auth {
                            "Bearer good" => {
                                (StatusCode::OK, [("x-user", who)], "ok").into_response()
                            }
                            "Bearer bad" => {
                                (StatusCode::FORBIDDEN, "not your order\nmore").into_response()
                            }
                            "Bearer boom" => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                            _ => (StatusCode::UNAUTHORIZED, "login first").into_response(),
                        }
                    }
                }),
            );
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    AuthBackend {
        port,
        calls,
        _rt: rt,
    }
}

fn config(auth_port: u16) -> String {
    format!(
        "
limits: {{ max_channels_per_client: 8 }}
sse: {{ heartbeat: 5s }}
upstreams:
  auth: {{ servers: [\"127.0.0.1:{auth_port}\"], read_timeout: 3s }}
  dead: {{ servers: [\"127.0.0.1:{dead}\"], connect_timeout: 1s }}
routes:
  - path: /p/{{room}}
    sse: {{ channels: [\"room:{{room}}\"] }}
  - path: /q
    sse: {{ channels: [\"q:{{query.topic}}\"] }}
  - path: /h
    sse: {{ channels: [\"h:{{header.x-room}}\"] }}
  - path: /me
    sse:
      channels: [\"user:{{jwt.sub}}\"]
      auth:
        jwt:
          secret_env: JWT_SECRET
          algorithms: [HS256]
          audience: app
          issuer: issuer1
          token_from: [header, \"query:access_token\", \"cookie:token\"]
  - path: /orders/{{order_id}}
    sse:
      channels: [\"order:{{order_id}}\", \"user:{{auth.x-user}}\"]
      auth:
        forward:
          upstream: auth
          path: \"/auth/orders/{{order_id}}\"
          forward_headers: [authorization, x-want-user]
          expose: [X-User]
          cache_ttl: 30s
  - path: /nocache/{{order_id}}
    sse:
      channels: [\"order:{{order_id}}\"]
      auth: {{ forward: {{ upstream: auth, path: \"/auth/orders/{{order_id}}\" }} }}
  - path: /dead
    sse:
      channels: [\"x\"]
      auth: {{ forward: {{ upstream: dead, path: /auth }} }}
  - path: /rs
    sse:
      channels: [\"rs:{{jwt.sub}}\"]
      auth: {{ jwt: {{ public_key: \"{rsa}\", algorithms: [RS256] }} }}
  - path: /jwks
    sse:
      channels: [\"k:{{jwt.sub}}\"]
      auth: {{ jwt: {{ jwks: \"{jwks}\" }} }}
",
        dead = free_port(),
        rsa = fixture("rsa_public.pem"),
        jwks = fixture("jwks.json"),
    )
}

fn start(auth_port: u16) -> Gateway {
    Gateway::start_with_env(&config(auth_port), &[("JWT_SECRET", SECRET)])
}

async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String, reqwest::header::HeaderMap) {
    let mut rb = client().get(url);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    let status = r.status().as_u16();
    let h = r.headers().clone();
    // A refusal is short; an accepted stream is not read here.
    let body = if status == 200 {
        String::new()
    } else {
        r.text().await.unwrap()
    };
    (status, body, h)
}

/// The status of a request sent byte for byte (clients normalise `..`).
fn raw_status(port: u16, target: &str, headers: &[(&str, &str)]) -> u16 {
    let mut raw = Raw::get(port, target, headers);
    let head = raw.read_until(WAIT, "status line", |t| t.contains("\r\n"));
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn jwt_from_header_query_and_cookie() {
    let b = auth_backend();
    let gw = start(b.port);
    let t = user("u1");
    let bearer = format!("Bearer {t}");
    let cookie = format!("other=1; token={t}");
    let mut by_header = Sse::connect_with(&gw.url("/me"), &[("authorization", &bearer)]).await;
    let mut by_query = Sse::connect(&gw.url(&format!("/me?access_token={t}"))).await;
    let mut by_cookie = Sse::connect_with(&gw.url("/me"), &[("cookie", &cookie)]).await;
    for s in [&by_header, &by_query, &by_cookie] {
        assert_eq!(s.status, 200);
    }
    gw.publish_ok("user:u1", json!("for u1")).await;
    for s in [&mut by_header, &mut by_query, &mut by_cookie] {
        assert_eq!(s.next().await.data, "for u1");
    }
}

#[tokio::test]
async fn bad_tokens_get_401_with_a_one_line_reason() {
    let b = auth_backend();
    let gw = start(b.port);
    let n = now();
    let wrong_key = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u", "aud": "app", "iss": "issuer1", "exp": n + 600}),
        &EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let cases = [
        (None, "missing token"),
        (Some("not.a.jwt".to_string()), "malformed token"),
        (Some(wrong_key), "invalid signature"),
        (
            Some(hs(
                json!({"sub": "u", "aud": "app", "iss": "issuer1", "exp": n - 30}),
            )),
            "token expired",
        ),
        (
            Some(hs(
                json!({"sub": "u", "aud": "web", "iss": "issuer1", "exp": n + 600}),
            )),
            "wrong audience",
        ),
        (
            Some(hs(
                json!({"sub": "u", "aud": "app", "iss": "evil", "exp": n + 600}),
            )),
            "wrong issuer",
        ),
        (
            Some(hs(
                json!({"sub": "u", "aud": "app", "iss": "issuer1", "exp": n + 600, "nbf": n + 300}),
            )),
            "token not yet valid",
        ),
        (
            Some(hs(json!({"sub": "u", "aud": "app", "iss": "issuer1"}))),
            "token has no exp",
        ),
    ];
    for (token, why) in cases {
        let bearer = token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("authorization", b)])
            .unwrap_or_default();
        let (status, body, h) = get(&gw.url("/me"), &headers).await;
        assert_eq!((status, body.as_str()), (401, format!("{why}\n").as_str()));
        assert!(h.get("www-authenticate").is_none());
    }
    // An RS256 route does not take an HS256 token signed with its public key.
    let pem = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u", "exp": n + 600}),
        &EncodingKey::from_secret(&pem),
    )
    .unwrap();
    let (status, _, _) = get(
        &gw.url("/rs"),
        &[("authorization", &format!("Bearer {confused}"))],
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn rs256_public_key_and_es256_jwks() {
    let b = auth_backend();
    let gw = start(b.port);
    let rsa =
        EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).unwrap()).unwrap();
    let ec = EncodingKey::from_ec_pem(&std::fs::read(fixture("ec_private.pem")).unwrap()).unwrap();
    let claims = json!({"sub": "k1", "exp": now() + 600});
    let rs_token = encode(&Header::new(Algorithm::RS256), &claims, &rsa).unwrap();
    let mut es_header = Header::new(Algorithm::ES256);
    es_header.kid = Some("ec-1".into());
    let es_token = encode(&es_header, &claims, &ec).unwrap();
    let mut rs_header = Header::new(Algorithm::RS256);
    rs_header.kid = Some("rsa-1".into());
    let rs_kid_token = encode(&rs_header, &claims, &rsa).unwrap();
    let mut rs = Sse::connect(&gw.url("/rs")).await;
    assert_eq!(rs.status, 401, "no token");
    drop(rs);
    rs = Sse::connect_with(
        &gw.url("/rs"),
        &[("authorization", &format!("Bearer {rs_token}"))],
    )
    .await;
    let mut es = Sse::connect_with(
        &gw.url("/jwks"),
        &[("authorization", &format!("Bearer {es_token}"))],
    )
    .await;
    let mut by_kid = Sse::connect_with(
        &gw.url("/jwks"),
        &[("authorization", &format!("Bearer {rs_kid_token}"))],
    )
    .await;
    assert_eq!((rs.status, es.status, by_kid.status), (200, 200, 200));
    // No kid, with two keys in the set: refused.
    let (status, body, _) = get(
        &gw.url("/jwks"),
        &[("authorization", &format!("Bearer {rs_token}"))],
    )
    .await;
    assert_eq!((status, body.as_str()), (401, "token has no kid\n"));
    gw.publish_ok("rs:k1", json!("rsa")).await;
    gw.publish_ok("k:k1", json!("jwks")).await;
    assert_eq!(rs.next().await.data, "rsa");
    assert_eq!(es.next().await.data, "jwks");
    assert_eq!(by_kid.next().await.data, "jwks");
}

#[tokio::test]
async fn subscribe_claim_limits_extra_channels() {
    let b = auth_backend();
    let gw = start(b.port);
    let t = hs(
        json!({"sub": "u9", "aud": "app", "iss": "issuer1", "exp": now() + 600,
        "subscribe": ["news:*", "team:blue"]}),
    );
    let bearer = format!("Bearer {t}");
    let mut ok = Sse::connect_with(
        &gw.url("/me?channel=news:sport&channel=team:blue"),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(ok.status, 200);
    for bad in ["team:red", "user:u8", "news"] {
        let (status, _, _) = get(
            &gw.url(&format!("/me?channel={bad}")),
            &[("authorization", &bearer)],
        )
        .await;
        assert_eq!(status, 403, "{bad}");
    }
    // Without the claim, ?channel= is closed on a route without allow_channels.
    let (status, _, _) = get(
        &gw.url("/me?channel=news:sport"),
        &[("authorization", &format!("Bearer {}", user("u9")))],
    )
    .await;
    assert_eq!(status, 403);
    gw.publish_ok("user:u9", json!("mine")).await;
    gw.publish_ok("team:blue", json!("team")).await;
    gw.publish_ok("news:sport", json!("news")).await;
    let got: Vec<String> = ok.take(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(got, vec!["mine", "team", "news"]);
}

#[tokio::test]
async fn two_users_never_see_each_others_events() {
    let b = auth_backend();
    let gw = Arc::new(start(b.port));
    let mut a = Sse::connect_with(
        &gw.url("/me"),
        &[("authorization", &format!("Bearer {}", user("alice")))],
    )
    .await;
    let zed_url = gw.url(&format!("/me?access_token={}", user("zed")));
    let mut z = Sse::connect(&zed_url).await;
    assert_eq!((a.status, z.status), (200, 200));
    const N: usize = 60;
    let mut tasks = Vec::new();
    for who in ["alice", "zed"] {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..N {
                gw.publish_ok(&format!("user:{who}"), json!(format!("{who}-{i}")))
                    .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (s, who) in [(&mut a, "alice"), (&mut z, "zed")] {
        let got: Vec<String> = s.take(N).await.into_iter().map(|e| e.data).collect();
        assert_eq!(
            got,
            (0..N).map(|i| format!("{who}-{i}")).collect::<Vec<_>>()
        );
        // Nothing else is queued behind them.
        gw.publish_ok(&format!("user:{who}"), json!("end")).await;
        assert_eq!(s.next().await.data, "end");
    }
}

#[tokio::test]
async fn injection_attempts_are_refused_everywhere() {
    let b = auth_backend();
    let gw = start(b.port);
    let long = "a".repeat(300);
    let evil = [
        "..",
        "a*",
        "a,b",
        "%0A",
        "a%0Ab",
        "%2A",
        "a%2Cb",
        "",
        long.as_str(),
    ];
    for v in evil {
        if !v.is_empty() {
            // `/p/..` is resolved to `/` before routing (RFC 3986), which no
            // route serves.
            let refused = if v == ".." { 404 } else { 400 };
            assert_eq!(
                raw_status(gw.port, &format!("/p/{v}"), &[]),
                refused,
                "path {v:?}"
            );
        }
        let (s, _, _) = get(&gw.url(&format!("/q?topic={v}")), &[]).await;
        assert_eq!(s, 400, "query {v:?}");
        let decoded = percent_encoding::percent_decode_str(v)
            .decode_utf8_lossy()
            .to_string();
        if !decoded.contains('\n') {
            let (s, _, _) = get(&gw.url("/h"), &[("x-room", &decoded)]).await;
            assert_eq!(s, 400, "header {decoded:?}");
            let (s, _, _) = get(
                &gw.url("/orders/o1"),
                &[("authorization", "Bearer good"), ("x-want-user", &decoded)],
            )
            .await;
            assert_eq!(s, 400, "auth header {decoded:?}");
        }
        let t = hs(json!({"sub": decoded, "aud": "app", "iss": "issuer1", "exp": now() + 600}));
        let (s, _, _) = get(&gw.url("/me"), &[("authorization", &format!("Bearer {t}"))]).await;
        assert_eq!(s, 400, "jwt claim {decoded:?}");
    }
    // A `sub` that is not a string makes the token malformed.
    let t = hs(json!({"sub": ["a", "b"], "aud": "app", "iss": "issuer1", "exp": now() + 600}));
    let (s, _, _) = get(&gw.url("/me"), &[("authorization", &format!("Bearer {t}"))]).await;
    assert_eq!(s, 401);
    // A path value cannot walk the auth backend's path: `%2E%2E` is a
    // dot-segment, resolved before routing (to `/`, which no route serves).
    let good = [("authorization", "Bearer good")];
    assert_eq!(raw_status(gw.port, "/orders/%2E%2E", &good), 404);
    assert_eq!(
        raw_status(gw.port, "/orders/a%2F..%2Fb", &good),
        400,
        "not a channel value either"
    );
    // The same values, clean, are accepted.
    let ok = Sse::connect(&gw.url("/q?topic=a.b:c@d-e_f")).await;
    assert_eq!(ok.status, 200);
}

#[tokio::test]
async fn forward_auth_allows_denies_caches_and_fails_closed() {
    let b = auth_backend();
    let gw = start(b.port);
    let mut s = Sse::connect_with(&gw.url("/orders/o1"), &[("authorization", "Bearer good")]).await;
    assert_eq!(s.status, 200);
    assert_eq!(b.calls.load(Ordering::SeqCst), 1);
    gw.publish_ok("user:42", json!("for 42")).await;
    assert_eq!(s.next().await.data, "for 42");
    gw.publish_ok("order:o1", json!("order")).await;
    assert_eq!(s.next().await.data, "order");
    // Same path and header values: cached.
    let s2 = Sse::connect_with(&gw.url("/orders/o1"), &[("authorization", "Bearer good")]).await;
    assert_eq!(s2.status, 200);
    assert_eq!(
        b.calls.load(Ordering::SeqCst),
        1,
        "second check came from the cache"
    );
    // Another user header value is another key.
    let s3 = Sse::connect_with(
        &gw.url("/orders/o1"),
        &[("authorization", "Bearer good"), ("x-want-user", "7")],
    )
    .await;
    assert_eq!(s3.status, 200);
    assert_eq!(b.calls.load(Ordering::SeqCst), 2);

    let (status, body, _) = get(&gw.url("/orders/o1"), &[("authorization", "Bearer bad")]).await;
    assert_eq!((status, body.as_str()), (403, "not your order\n"));
    let (status, body, _) = get(&gw.url("/orders/o1"), &[]).await;
    assert_eq!((status, body.as_str()), (401, "login first\n"));
    let (status, _, _) = get(&gw.url("/orders/o1"), &[("authorization", "Bearer boom")]).await;
    assert_eq!(status, 502);
    let (status, _, _) = get(&gw.url("/dead"), &[("authorization", "Bearer good")]).await;
    assert_eq!(status, 502);

    // Without cache_ttl every subscription asks.
    let before = b.calls.load(Ordering::SeqCst);
    for _ in 0..2 {
        let s =
            Sse::connect_with(&gw.url("/nocache/o2"), &[("authorization", "Bearer good")]).await;
        assert_eq!(s.status, 200);
    }
    assert_eq!(b.calls.load(Ordering::SeqCst), before + 2);
    // Credentials never reach the log.
    assert!(!gw.log().contains("Bearer good"));
}

#[tokio::test]
async fn stream_is_closed_at_exp_with_ssegate_expired() {
    let b = auth_backend();
    let gw = start(b.port);
    let short = hs(json!({"sub": "late", "aud": "app", "iss": "issuer1", "exp": now() + 2}));
    let long = user("late");
    let mut s = Sse::connect_with(
        &gw.url("/me"),
        &[("authorization", &format!("Bearer {short}"))],
    )
    .await;
    let mut keeps = Sse::connect_with(
        &gw.url("/me"),
        &[("authorization", &format!("Bearer {long}"))],
    )
    .await;
    assert_eq!((s.status, keeps.status), (200, 200));
    gw.publish_ok("user:late", json!("before")).await;
    assert_eq!(s.next().await.data, "before");
    assert_eq!(keeps.next().await.data, "before");
    let ev = s.next().await;
    assert_eq!(
        (ev.event.as_str(), ev.data.as_str()),
        ("ssegate.expired", r#"{"reason":"token-expired"}"#)
    );
    let rest = s.ends(WAIT).await;
    assert!(rest.is_empty(), "{rest:?}");
    // The other user's stream goes on.
    gw.publish_ok("user:late", json!("after")).await;
    assert_eq!(keeps.next().await.data, "after");
}

#[test]
fn unreadable_or_invalid_keys_are_config_errors_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let bad_pem = dir.path().join("bad.pem");
    std::fs::write(
        &bad_pem,
        "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        format!(
            "routes:
  - path: /a
    sse:
      channels: [\"a:{{jwt.sub}}\"]
      auth: {{ jwt: {{ public_key: missing.pem }} }}
  - path: /b
    sse:
      channels: [b]
      auth:
        jwt:
          public_key: \"{}\"
  - path: /c
    sse:
      channels: [\"c:{{auth.x-user}}\"]
      auth: {{ jwt: {{ secret_env: NOT_SET_ANYWHERE }} }}
",
            bad_pem.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "-c"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    let name = cfg.display().to_string();
    for (line, what) in [
        (5, "missing.pem"),
        (11, "is not an RSA, EC or Ed25519 public key"),
        (14, "auth.x-user"),
        (15, "NOT_SET_ANYWHERE"),
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(&format!("{name}:{line}:")) && l.contains(what)),
            "expected {what} at line {line}: {text}"
        );
    }
}

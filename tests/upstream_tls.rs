//! TLS to upstreams through the real binary, against a real HTTPS backend
//! whose certificate a test CA signed: proxying (HTTP/1.1 and HTTP/2),
//! polling, forward auth and GRIP holds all connect through the one
//! outbound pool; the right CA works, a wrong one (or the system's roots)
//! is a 502, the configured SNI is sent. Host names in `servers` resolve.
//! And `auth.jwt.jwks_url`: keys fetched over HTTPS, followed through a
//! rotation, kept while the URL fails.

mod support;

use axum::routing::get;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::tls::{echo_app, TestCa, TlsBackend};
use support::*;

/// The echo app, plus a GRIP hold at /grip/{channel}.
fn backend_app() -> axum::Router {
    echo_app().route(
        "/grip/{ch}",
        get(
            |axum::extract::Path(ch): axum::extract::Path<String>| async move {
                (
                    [
                        ("content-type", "text/event-stream".to_string()),
                        ("grip-hold", "stream".to_string()),
                        ("grip-channel", ch),
                    ],
                    ": held over tls\n\n",
                )
            },
        ),
    )
}

struct Setup {
    _dir: tempfile::TempDir,
    backend: TlsBackend,
    gw: Gateway,
}

/// A TLS backend for `backend.test`, and a gateway with upstreams:
/// `good` (the right CA, SNI backend.test), `h2` (the same, HTTP/2),
/// `wrong` (another CA), `system` (`tls: true`: the system's roots) and
/// `lax` (another CA, `verify: false`).
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("backend");
    let other = TestCa::new("other");
    std::fs::write(dir.path().join("ca.pem"), &ca.pem).unwrap();
    std::fs::write(dir.path().join("other.pem"), &other.pem).unwrap();
    let backend = TlsBackend::start(&ca, dir.path(), &["backend.test"], backend_app());
    let b = backend.addr;
    let ca_pem = dir.path().join("ca.pem");
    let other_pem = dir.path().join("other.pem");
    let (ca_pem, other_pem) = (ca_pem.display(), other_pem.display());
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  good: {{ servers: ["{b}"], tls: {{ ca: "{ca_pem}", sni: backend.test }} }}
  h2: {{ servers: ["{b}"], tls: {{ ca: "{ca_pem}", sni: backend.test, http2: true }} }}
  wrong: {{ servers: ["{b}"], tls: {{ ca: "{other_pem}", sni: backend.test }} }}
  system: {{ servers: ["{b}"], tls: true }}
  lax: {{ servers: ["{b}"], tls: {{ ca: "{other_pem}", verify: false }} }}
routes:
  - path: /good/{{*rest}}
    proxy: good
  - path: /h2/{{*rest}}
    proxy: h2
  - path: /wrong/{{*rest}}
    proxy: wrong
  - path: /system/{{*rest}}
    proxy: system
  - path: /lax/{{*rest}}
    proxy: lax
  - path: /grip/{{*rest}}
    proxy: good
    grip: true
  - path: /polled
    sse:
      poll: {{ upstream: h2, path: /status, interval: 1s }}
  - path: /guarded/{{id}}
    sse:
      channels: ["g:{{id}}"]
      auth: {{ forward: {{ upstream: good, path: "/auth/{{id}}" }} }}
  - path: /guarded-wrong/{{id}}
    sse:
      channels: ["g:{{id}}"]
      auth: {{ forward: {{ upstream: wrong, path: "/auth/{{id}}" }} }}
"#
    ));
    Setup {
        _dir: dir,
        backend,
        gw,
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn proxying_over_tls_checks_the_certificate_and_sends_the_sni() {
    let s = setup();
    let gw = &s.gw;
    let (status, v) = get_json(&gw.url("/good/hello?x=1")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["uri"], "/good/hello?x=1");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(
        s.backend.snis(),
        [Some("backend.test".to_string())],
        "the configured SNI"
    );

    let (status, v) = get_json(&gw.url("/h2/hello")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["version"], "HTTP/2.0", "ALPN picked h2: {v}");

    // Same address and SNI as `good`, whose connection may be idle in the
    // pool: another CA must still fail, on a handshake of its own.
    let r = client().get(gw.url("/wrong/x")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 502);
    let r = client().get(gw.url("/system/x")).send().await.unwrap();
    assert_eq!(
        r.status().as_u16(),
        502,
        "a test CA is not in the system's roots"
    );
    // Turning verification off is explicit, and then works.
    let (status, _) = get_json(&gw.url("/lax/x")).await;
    assert_eq!(status, 200);
    assert_eq!(
        s.backend.snis().len(),
        3,
        "one handshake each for good, h2 and lax; none completed for the others"
    );
}

#[tokio::test]
async fn polling_forward_auth_and_grip_connect_over_tls() {
    let s = setup();
    let gw = &s.gw;
    // Polling (over HTTP/2): the first snapshot is the backend's answer.
    let mut polled = Sse::connect(&gw.url("/polled")).await;
    assert_eq!(polled.status, 200);
    let ev = polled.next().await;
    let body: Value = serde_json::from_str(&ev.data).unwrap();
    assert_eq!(body["uri"], "/status", "{body}");
    assert_eq!(body["version"], "HTTP/2.0", "{body}");

    // Forward auth: allowed by the TLS backend (its echo answers 200)...
    let mut guarded = Sse::connect(&gw.url("/guarded/7")).await;
    assert_eq!(guarded.status, 200);
    gw.publish_ok("g:7", json!("allowed")).await;
    assert_eq!(guarded.next().await.data, "allowed");
    // ...and unavailable when the backend's certificate is not trusted.
    let r = client()
        .get(gw.url("/guarded-wrong/7"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 502);

    // A GRIP hold from a TLS backend.
    let mut held = Sse::connect(&gw.url("/grip/room")).await;
    assert_eq!(held.status, 200);
    gw.publish_ok("room", json!("to the hold")).await;
    assert_eq!(held.next().await.data, "to the hold");
}

/// `servers:` may name hosts: `localhost` resolves (to ::1 and 127.0.0.1
/// here; the backend listens on the second only, so the first is skipped).
#[tokio::test]
async fn servers_may_be_host_names() {
    let backend = Backend::start();
    let port = backend.addr.port();
    let gw = Gateway::start(&format!(
        r#"
upstreams:
  app: {{ servers: ["localhost:{port}"], resolve_interval: 1s }}
routes:
  - path: /{{*rest}}
    proxy: app
  - path: /polled
    sse:
      poll: {{ upstream: app, path: /p, interval: 1s }}
"#
    ));
    for _ in 0..3 {
        let (status, v) = get_json(&gw.url("/named")).await;
        assert_eq!(status, 200, "{v}");
    }
    // A request the gateway makes itself names the server as configured.
    let mut polled = Sse::connect(&gw.url("/polled")).await;
    let body: Value = serde_json::from_str(&polled.next().await.data).unwrap();
    assert_eq!(
        body["headers"]["host"],
        format!("localhost:{port}"),
        "{body}"
    );
}

// ---------------------------------------------------------------------------
// auth.jwt.jwks_url

/// An identity provider's JWKS endpoint: the keys it serves, its
/// Cache-Control, whether it fails, and how often it was asked.
#[derive(Clone, Default)]
struct Idp {
    jwks: Arc<Mutex<Value>>,
    failing: Arc<Mutex<bool>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    fn app(&self) -> axum::Router {
        let idp = self.clone();
        axum::Router::new().route(
            "/.well-known/jwks.json",
            get(move || {
                let idp = idp.clone();
                async move {
                    idp.fetches.fetch_add(1, Ordering::SeqCst);
                    if *idp.failing.lock().unwrap() {
                        return (
                            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                            [("cache-control", "no-store")],
                            "down".to_string(),
                        );
                    }
                    (
                        axum::http::StatusCode::OK,
                        // Clamped up to jwks_refetch (1s here).
                        [("cache-control", "public, max-age=0")],
                        idp.jwks.lock().unwrap().to_string(),
                    )
                }
            }),
        )
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// An ES256 signing key and its JWK.
struct SigningKey {
    kid: String,
    pem: String,
    jwk: Value,
}

fn signing_key(kid: &str) -> SigningKey {
    use base64::Engine;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = key.public_key_raw(); // 0x04 || X || Y
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    SigningKey {
        kid: kid.into(),
        pem: key.serialize_pem(),
        jwk: json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": b64(&raw[1..33]), "y": b64(&raw[33..65]),
        }),
    }
}

fn token(key: &SigningKey, sub: &str) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(key.kid.clone());
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &h,
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_ec_pem(key.pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

async fn subscribe_status(gw: &Gateway, token: &str) -> u16 {
    client()
        .get(gw.url("/events/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn jwks_url_keys_follow_a_rotation_and_survive_the_url_failing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("idp");
    std::fs::write(dir.path().join("idp-ca.pem"), &ca.pem).unwrap();
    let idp = Idp::default();
    let k1 = signing_key("k1");
    let k2 = signing_key("k2");
    *idp.jwks.lock().unwrap() = json!({"keys": [k1.jwk]});
    let server = TlsBackend::start(&ca, dir.path(), &["127.0.0.1"], idp.app());
    let gw = Gateway::start(&format!(
        r#"
routes:
  - path: /events/me
    sse:
      channels: ["user:{{jwt.sub}}"]
      auth:
        jwt:
          jwks_url: "https://{}/.well-known/jwks.json"
          jwks_ca: "{}"
          jwks_refetch: 1s
  - path: /events/unreachable
    sse:
      channels: ["nobody"]
      auth: {{ jwt: {{ jwks_url: "https://127.0.0.1:{}/jwks.json", jwks_ca: "{}" }} }}
"#,
        server.addr,
        dir.path().join("idp-ca.pem").display(),
        free_port(),
        dir.path().join("idp-ca.pem").display()
    ));

    assert_eq!(subscribe_status(&gw, &token(&k1, "u1")).await, 200);
    assert_eq!(idp.fetches(), 1, "fetched on first use");
    // No set could ever be fetched: unavailable, not unauthorized.
    let r = client()
        .get(gw.url("/events/unreachable"))
        .bearer_auth(token(&k1, "u1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(r.text().await.unwrap().trim(), "signing keys unavailable");

    // The provider rotates: k2 signs from now on, k1 is gone.
    *idp.jwks.lock().unwrap() = json!({"keys": [k2.jwk]});
    let t2 = token(&k2, "u2");
    let started = Instant::now();
    let mut refused = 0;
    while subscribe_status(&gw, &t2).await != 200 {
        // Unknown kid within 1s of the last fetch: refused, not fetched.
        refused += 1;
        assert!(started.elapsed() < WAIT, "k2 never accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        idp.fetches(),
        2,
        "one refetch for the new kid, after {refused} refusals"
    );
    let mut sse = Sse::connect_with(
        &gw.url("/events/me"),
        &[("authorization", &format!("Bearer {t2}"))],
    )
    .await;
    gw.publish_ok("user:u2", json!("rotated")).await;
    assert_eq!(sse.next().await.data, "rotated");

    // A flood of unknown kids fetches at most once per jwks_refetch.
    let before = idp.fetches();
    let flood = Instant::now();
    for i in 0..30 {
        let stranger = signing_key(&format!("x{i}"));
        assert_eq!(subscribe_status(&gw, &token(&stranger, "evil")).await, 401);
    }
    let allowed = flood.elapsed().as_secs() as usize + 1;
    assert!(
        idp.fetches() - before <= allowed,
        "{} fetches in {:?}",
        idp.fetches() - before,
        flood.elapsed()
    );
    // The removed key is refused.
    assert_eq!(subscribe_status(&gw, &token(&k1, "u1")).await, 401);

    // The URL fails: the last good set still verifies.
    *idp.failing.lock().unwrap() = true;
    let failed_at = idp.fetches();
    let started = Instant::now();
    while idp.fetches() == failed_at {
        assert!(
            started.elapsed() < WAIT,
            "the stale set was never refreshed"
        );
        assert_eq!(subscribe_status(&gw, &t2).await, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(subscribe_status(&gw, &t2).await, 200);
    assert_eq!(subscribe_status(&gw, &token(&k1, "u1")).await, 401);
}

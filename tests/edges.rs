//! The edges a gateway on the internet has (SPEC §6 "Edges"), through the
//! real binary: webhooks on the public listener, CORS on streams (SSE and
//! GRIP holds, detached and held in pingora), the client IP behind trusted
//! proxies — and, for each, a check that a client cannot widen its trust
//! by what it sends. Config mistakes at these edges are refused with their
//! position by `ssegate check`.

mod support;

use serde_json::{json, Value};
use support::tls::TestCa;
use support::*;

const TOKEN: &str = "hook-t0ken";

// ---------------------------------------------------------------------------
// Webhooks on the public listener.

#[tokio::test]
async fn a_public_webhook_is_served_on_the_public_listener_and_nowhere_else() {
    let backend = Backend::start();
    let gw = Gateway::start_with_env(
        &format!(
            r#"
upstreams:
  app: {{ servers: ["{}"] }}
routes:
  - path: /events/{{ch}}
    sse: {{ channels: ["{{ch}}"] }}
  - path: /{{*rest}}
    proxy: app
webhooks:
  - path: /hooks/pay
    listener: public
    verify: {{ token: {{ header: X-Token, value_env: HOOK_TOKEN }} }}
    channel: "pay:{{/id}}"
    event: paid
  - path: /hooks/internal
    verify: {{ token: {{ header: X-Token, value_env: HOOK_TOKEN }} }}
    channel: "internal"
"#,
            backend.addr
        ),
        &[("HOOK_TOKEN", TOKEN)],
    );
    let mut sse = Sse::connect(&gw.url("/events/pay:7")).await;
    assert_eq!(sse.status, 200);

    let post = |url: String, token: &'static str| async move {
        let r = client()
            .post(url)
            .header("x-token", token)
            .json(&json!({"id": 7, "amount": 10}))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json::<Value>().await.unwrap_or(Value::Null))
    };

    // Wrong token on the public listener: refused, nothing published.
    let (status, body) = post(gw.url("/hooks/pay"), "guess").await;
    assert_eq!(status, 401, "{body}");
    // Right token: published, and the stream on the same listener gets it.
    let (status, body) = post(gw.url("/hooks/pay"), TOKEN).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["channels"], json!(["pay:7"]), "{body}");
    let ev = sse.next().await;
    assert_eq!(ev.event, "paid", "the refused post published nothing first");
    assert_eq!(
        serde_json::from_str::<Value>(&ev.data).unwrap()["amount"],
        10
    );
    // The admin listener does not serve a public webhook...
    let (status, _) = post(gw.admin("/hooks/pay"), TOKEN).await;
    assert_eq!(status, 404);
    // ...and the public listener no admin one: that path goes on to the
    // catch-all route like any other request.
    let (status, body) = post(gw.url("/hooks/internal"), TOKEN).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["uri"], "/hooks/internal", "proxied to the app: {body}");
    let (status, _) = post(gw.url("/publish"), TOKEN).await;
    assert_eq!(status, 200, "the publish API is not on the public listener");
    let proxied: Vec<String> = backend
        .log
        .requests
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.1.clone())
        .collect();
    assert!(
        !proxied.iter().any(|u| u.starts_with("/hooks/pay")),
        "a public webhook's requests never reach the app: {proxied:?}"
    );
    assert_eq!(
        gw.metric("ssegate_webhooks_total{outcome=\"accepted\",path=\"/hooks/pay\"}")
            .await,
        1.0
    );
}

// ---------------------------------------------------------------------------
// Config mistakes at the edges.

/// `ssegate check` on `text`: (exit code, output).
fn check(text: &str, files: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let path = dir.path().join("edges.yaml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(bin())
        .args(["check", "-c"])
        .arg(&path)
        .env("HOOK_TOKEN", TOKEN)
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), all, path.display().to_string())
}

/// The 1-based line of the first line of `text` holding `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

/// Each (needle, words) must have an error on needle's line holding `words`.
fn assert_errors(text: &str, files: &[(&str, &str)], expected: &[(&str, &str)]) {
    let (code, all, file) = check(text, files);
    assert_eq!(code, Some(2), "{all}");
    for (needle, words) in expected {
        let at = format!("{file}:{}:", line_of(text, needle));
        assert!(
            all.lines().any(|l| l.starts_with(&at) && l.contains(words)),
            "expected an error at {at} saying {words:?}:\n{all}"
        );
    }
}

#[test]
fn edge_config_mistakes_are_refused_where_they_are() {
    let text = r#"
trusted_proxies: ["10.0.0.0/8", "0.0.0.0/0", "10.0.0.300"]
upstreams:
  app: { servers: ["127.0.0.1:9"], tls: { verfy: false } }
  tls: { servers: ["127.0.0.1:9"], tls: { sni: "bad name!" } }
  pem: { servers: ["127.0.0.1:9"], tls: { ca: nothing-here.pem } }
routes:
  - path: /hooks/{name}
    sse:
      channels: ["a"]
      cors: { origins: ["*"], credentials: true }
  - path: /b
    sse:
      channels: ["b"]
      cors: { origins: ["https://ok.example", "null", "https://x.example/path"] }
  - path: /c
    sse:
      channels: ["c"]
      auth: { jwt: { jwks_url: "http://idp.example/jwks.json" } }
webhooks:
  - path: /hooks/open
    listener: public
    channel: "x"
  - path: /hooks/colliding
    listener: public
    verify: { token: { header: X-Token, value_env: HOOK_TOKEN } }
    channel: "x"
"#;
    let (code, all, _) = check(text, &[]);
    assert_eq!(code, Some(2), "{all}");
    // serde stops at the first unknown key: the typo inside `tls:` is
    // located and explained as such (not as an "untagged enum" mismatch).
    assert!(
        all.contains("unknown key `verfy`") && all.contains("verify"),
        "{all}"
    );
    let text = text.replace("verfy: false", "verify: false");
    assert_errors(
        &text,
        &[],
        &[
            ("0.0.0.0/0", "trusts every address"),
            ("sni: \"bad name!\"", "not a DNS name"),
            ("nothing-here.pem", "cannot read"),
            ("credentials: true", "needs listed origins"),
            ("\"null\"", "origin `null` cannot be allowed"),
            ("\"null\"", "no path"),
            ("http://idp.example", "not an https:// URL"),
            ("listener: public", "needs `verify:`"),
            ("path: /hooks/colliding", "collides with route #1"),
        ],
    );
    // The bad CIDR is on the same line as the too-wide one: both named.
    let (_, all, _) = check(&text, &[]);
    assert!(
        all.contains("`10.0.0.300` is not an address or a CIDR"),
        "{all}"
    );

    // Redis: a password in the file is a secret outside the environment,
    // and a CA without TLS is a mistake.
    let redis =
        "hub:\n  broker: redis\n  redis: { url: \"redis://:pw@127.0.0.1:6379\", ca: ca.pem }\n";
    assert_errors(
        redis,
        &[("ca.pem", "")],
        &[
            ("redis:", "holds a password"),
            ("redis:", "`ca` needs a `rediss://` URL"),
        ],
    );
    let (_, all, _) = check(redis, &[]);
    assert!(!all.contains(":pw@"), "the password is not repeated: {all}");

    // A catch-all route yields to a public webhook: no error.
    let ok = r#"
upstreams:
  app: { servers: ["127.0.0.1:9"] }
routes:
  - path: /{*rest}
    proxy: app
webhooks:
  - path: /hooks/pay
    listener: public
    verify: { token: { header: X-Token, value_env: HOOK_TOKEN } }
    channel: "x"
"#;
    let (code, all, _) = check(ok, &[]);
    assert_eq!(code, Some(0), "{all}");
}

// ---------------------------------------------------------------------------
// CORS.

const PAGE_ORIGIN: &str = "http://app.example:3000";

fn header<'h>(h: &'h reqwest::header::HeaderMap, name: &str) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn preflight(url: &str, origin: &str) -> reqwest::Response {
    client()
        .request(reqwest::Method::OPTIONS, url)
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "last-event-id")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn streams_carry_cors_headers_only_for_listed_origins() {
    let gw = Gateway::start(
        r#"
routes:
  - path: /listed/{ch}
    sse:
      channels: ["{ch}"]
      cors: { origins: ["HTTP://App.Example:3000"], credentials: true, max_age: 2m }
  - path: /any/{ch}
    sse:
      channels: ["{ch}"]
      cors: { origins: ["*"] }
  - path: /none/{ch}
    sse: { channels: ["{ch}"] }
  - path: /get-only/{ch}
    methods: [GET]
    sse:
      channels: ["{ch}"]
      cors: { origins: ["HTTP://App.Example:3000"] }
"#,
    );
    // A listed origin: named back, with credentials and Vary (plain
    // HTTP/1.1: the detached socket writes this head itself).
    let mut sse = Sse::connect_with(&gw.url("/listed/a"), &[("origin", PAGE_ORIGIN)]).await;
    assert_eq!(sse.status, 200);
    let h = &sse.headers;
    assert_eq!(header(h, "access-control-allow-origin"), Some(PAGE_ORIGIN));
    assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
    assert_eq!(header(h, "vary"), Some("Origin"));
    assert!(header(h, "content-type").is_some_and(|c| c.starts_with("text/event-stream")));
    gw.publish_ok("a", json!("still a stream")).await;
    assert_eq!(sse.next().await.data, "still a stream");

    // An origin not listed: the same stream, no permission.
    for origin in ["http://evil.example", "http://app.example:3001", "null"] {
        let sse = Sse::connect_with(&gw.url("/listed/a"), &[("origin", origin)]).await;
        assert_eq!(sse.status, 200);
        assert_eq!(
            header(&sse.headers, "access-control-allow-origin"),
            None,
            "{origin}"
        );
        assert_eq!(
            header(&sse.headers, "access-control-allow-credentials"),
            None
        );
        assert_eq!(header(&sse.headers, "vary"), Some("Origin"));
    }
    // "*": any origin, never with credentials.
    let sse = Sse::connect_with(&gw.url("/any/a"), &[("origin", "http://x.example")]).await;
    assert_eq!(
        header(&sse.headers, "access-control-allow-origin"),
        Some("*")
    );
    assert_eq!(
        header(&sse.headers, "access-control-allow-credentials"),
        None
    );
    // No `cors:`: nothing.
    let sse = Sse::connect_with(&gw.url("/none/a"), &[("origin", PAGE_ORIGIN)]).await;
    assert_eq!(header(&sse.headers, "access-control-allow-origin"), None);
    assert_eq!(header(&sse.headers, "vary"), None);

    // Preflight: answered for a listed origin...
    let r = preflight(&gw.url("/listed/a"), PAGE_ORIGIN).await;
    assert_eq!(r.status().as_u16(), 204);
    let h = r.headers();
    assert_eq!(header(h, "access-control-allow-origin"), Some(PAGE_ORIGIN));
    assert_eq!(header(h, "access-control-allow-methods"), Some("GET"));
    assert!(
        header(h, "access-control-allow-headers").is_some_and(|v| v.contains("last-event-id")),
        "{h:?}"
    );
    assert_eq!(header(h, "access-control-max-age"), Some("120"));
    assert_eq!(header(h, "access-control-allow-credentials"), Some("true"));
    // ...without any permission for another...
    let r = preflight(&gw.url("/listed/a"), "http://evil.example").await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(header(r.headers(), "access-control-allow-origin"), None);
    assert_eq!(header(r.headers(), "access-control-allow-methods"), None);
    // ...also on a route narrowed to `methods: [GET]`...
    let r = preflight(&gw.url("/get-only/a"), PAGE_ORIGIN).await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        header(r.headers(), "access-control-allow-origin"),
        Some(PAGE_ORIGIN)
    );
    // ...and not at all where no `cors:` is configured.
    let r = preflight(&gw.url("/none/a"), PAGE_ORIGIN).await;
    assert_eq!(r.status().as_u16(), 405);
}

/// Streams held in pingora's session (TLS, HTTP/2) and GRIP holds carry
/// the same headers; a GRIP backend's own CORS headers are replaced.
#[tokio::test]
async fn held_streams_and_grip_holds_carry_cors_headers() {
    let grip = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(|| async {
            (
                [
                    ("content-type", "text/event-stream"),
                    ("grip-hold", "stream"),
                    ("grip-channel", "held"),
                    // A backend that allows everyone: the gateway's `cors:` wins.
                    ("access-control-allow-origin", "*"),
                    ("vary", "Accept-Encoding"),
                ],
                ": welcome\n\n",
            )
        });
        let (stop, _t) = serve_in_thread(listener, move || app);
        (addr, stop)
    };
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cors");
    let (cert, key) = ca.issue(dir.path(), "server");
    let gw = Gateway::start(&format!(
        r#"
tls: {{ cert: "{}", key: "{}" }}
sse:
  cors: {{ origins: ["{PAGE_ORIGIN}"] }}
upstreams:
  grip: {{ servers: ["{}"] }}
routes:
  - path: /events/{{ch}}
    sse: {{ channels: ["{{ch}}"] }}
  - path: /grip/{{*rest}}
    proxy: grip
    grip: true
"#,
        cert.display(),
        key.display(),
        grip.0
    ));
    let base = format!("https://127.0.0.1:{}", gw.port);
    for http1 in [true, false] {
        let c = ca.reqwest(http1);
        let sse = Sse::connect_using(
            &c,
            &format!("{base}/events/held"),
            &[("origin", PAGE_ORIGIN)],
        )
        .await;
        assert_eq!(sse.status, 200);
        let want = if http1 {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(sse.version, want);
        assert_eq!(
            header(&sse.headers, "access-control-allow-origin"),
            Some(PAGE_ORIGIN),
            "the route inherits `sse.cors`"
        );
        assert_eq!(header(&sse.headers, "vary"), Some("Origin"));

        let mut held = Sse::connect_using(
            &c,
            &format!("{base}/grip/x"),
            &[("origin", "http://evil.example")],
        )
        .await;
        assert_eq!(held.status, 200);
        assert_eq!(
            header(&held.headers, "access-control-allow-origin"),
            None,
            "the backend's `*` is not passed on for an origin not listed"
        );
        let vary: Vec<&str> = held
            .headers
            .get_all("vary")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert!(vary.contains(&"Origin"), "{vary:?}");
        let held_ok =
            Sse::connect_using(&c, &format!("{base}/grip/y"), &[("origin", PAGE_ORIGIN)]).await;
        assert_eq!(
            header(&held_ok.headers, "access-control-allow-origin"),
            Some(PAGE_ORIGIN)
        );
        gw.publish_ok("held", json!("to the holds")).await;
        assert_eq!(held.next().await.data, "to the holds");
    }
}

// ---------------------------------------------------------------------------
// The client IP.

fn seen_header(backend: &Backend, name: &str) -> Vec<String> {
    let log = backend.log.requests.lock().unwrap();
    let last = log.last().expect("a request reached the backend");
    last.2
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .collect()
}

fn limits_config(backend: &Backend, trusted: &str) -> String {
    format!(
        r#"
{trusted}
limits: {{ max_connections_per_ip: 1 }}
upstreams:
  app: {{ servers: ["{}"] }}
routes:
  - path: /events/{{ch}}
    sse: {{ channels: ["{{ch}}"] }}
  - path: /{{*rest}}
    proxy: app
"#,
        backend.addr
    )
}

/// Without `trusted_proxies` nothing a client sends names it: not for the
/// per-IP limit, not for the backend. (This test fails if `X-Forwarded-For`
/// or `X-Forwarded-Proto` from a client were believed.)
#[tokio::test]
async fn without_trusted_proxies_no_client_header_is_believed() {
    let backend = Backend::start();
    let gw = Gateway::start(&limits_config(&backend, ""));
    let a = Sse::connect_with(&gw.url("/events/a"), &[("x-forwarded-for", "203.0.113.1")]).await;
    assert_eq!(a.status, 200);
    let b = client()
        .get(gw.url("/events/a"))
        .header("x-forwarded-for", "203.0.113.2")
        .send()
        .await
        .unwrap();
    assert_eq!(
        b.status().as_u16(),
        429,
        "a second stream from 127.0.0.1, whatever it claims"
    );
    let r = client()
        .get(gw.url("/api"))
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(seen_header(&backend, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen_header(&backend, "x-forwarded-proto"), ["http"]);
}

/// Behind a trusted balancer the client is the right-most address of
/// `X-Forwarded-For` that is not a trusted proxy; what the client wrote to
/// the left of it is neither counted nor passed on.
#[tokio::test]
async fn behind_a_trusted_proxy_the_client_is_the_rightmost_untrusted_hop() {
    let backend = Backend::start();
    let gw = Gateway::start_with_env(
        &limits_config(&backend, "trusted_proxies: [127.0.0.1/32, \"10.0.0.0/8\"]"),
        &[("RUST_LOG", "info,ssegate=debug")],
    );
    let xff = |v: &'static str| [("x-forwarded-for", v)];
    // The balancer saw 203.0.113.7; the client had written 198.51.100.1 itself.
    let a = Sse::connect_with(&gw.url("/events/a"), &xff("198.51.100.1, 203.0.113.7")).await;
    assert_eq!(a.status, 200);
    // Another client behind the same balancer has its own allowance.
    let b = Sse::connect_with(&gw.url("/events/a"), &xff("203.0.113.8, 10.1.2.3")).await;
    assert_eq!(b.status, 200);
    // The first client again, claiming to be someone else on the left: 429.
    let again = client()
        .get(gw.url("/events/a"))
        .header("x-forwarded-for", "192.0.2.99, 203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 429);

    let r = client()
        .get(gw.url("/api"))
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.7, 10.1.2.3")
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        seen_header(&backend, "x-forwarded-for"),
        ["203.0.113.7, 10.1.2.3, 127.0.0.1"],
        "the client first, then each trusted hop; the client's own claim dropped"
    );
    assert_eq!(seen_header(&backend, "x-forwarded-proto"), ["https"]);

    // Logs name the client, not the balancer.
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("stream opened") && l.contains("client=Some(203.0.113.7)")),
        "{log}"
    );
    drop((a, b));
}

//! OpenTelemetry (`telemetry: { otlp, sample }`): spans for proxied
//! requests (pass-through and GRIP), publish, webhooks and poll cycles reach
//! an OTLP/HTTP collector started by the test (it decodes the protobuf the
//! exporter sends); `traceparent` is taken from clients and sent upstream;
//! with telemetry off nothing changes and no exporter runs.

mod support;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use support::*;

/// One span as the collector received it.
#[derive(Debug, Clone)]
struct Got {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    attrs: BTreeMap<String, String>,
    failed: bool,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Got>>>,
    posts: Arc<Mutex<Vec<String>>>,
    /// The server stops when the last clone is dropped.
    _stop: Arc<Mutex<Option<tokio::sync::oneshot::Sender<()>>>>,
}

impl Collector {
    /// An OTLP/HTTP endpoint on a free port: POST /v1/traces, protobuf.
    fn start() -> (Collector, std::net::SocketAddr) {
        let c = Collector::default();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = c.clone();
        let (stop, _) = serve_in_thread(listener, move || {
            axum::Router::new().route(
                "/v1/traces",
                axum::routing::post(
                    move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                        let state = state.clone();
                        async move {
                            let ct = headers
                                .get("content-type")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            state.posts.lock().unwrap().push(ct);
                            let req = ExportTraceServiceRequest::decode(body).unwrap();
                            let mut spans = state.spans.lock().unwrap();
                            for rs in req.resource_spans {
                                for ss in rs.scope_spans {
                                    for s in ss.spans {
                                        spans.push(Got {
                                            name: s.name,
                                            trace_id: hex(&s.trace_id),
                                            span_id: hex(&s.span_id),
                                            parent: hex(&s.parent_span_id),
                                            attrs: s
                                                .attributes
                                                .into_iter()
                                                .map(|kv| (kv.key, text(kv.value)))
                                                .collect(),
                                            failed: s.status.is_some_and(|st| st.code == 2),
                                        });
                                    }
                                }
                            }
                            ([("content-type", "application/x-protobuf")], Vec::new())
                        }
                    },
                ),
            )
        });
        *c._stop.lock().unwrap() = Some(stop);
        (c, addr)
    }

    async fn span(&self, what: &str, pred: impl Fn(&Got) -> bool) -> Got {
        eventually(WAIT, what, || {
            self.spans.lock().unwrap().iter().find(|s| pred(s)).cloned()
        })
        .await
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn text(v: Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.and_then(|v| v.value) {
        Some(AnyValue::StringValue(s)) => s,
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// A legacy endpoint that changes on every poll and records each poll's
/// traceparent; it stops when the sender is dropped.
type Stop = tokio::sync::oneshot::Sender<()>;

fn legacy() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>, Stop) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = seen.clone();
    let (stop, _) = serve_in_thread(listener, move || {
        axum::Router::new().route(
            "/n",
            axum::routing::get(move |headers: axum::http::HeaderMap| {
                let log = log.clone();
                async move {
                    let tp = headers
                        .get("traceparent")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let mut log = log.lock().unwrap();
                    log.push(tp);
                    format!("{{\"n\":{}}}", log.len())
                }
            }),
        )
    });
    (addr, seen, stop)
}

/// The traceparent the echo backend saw on the request with `path`.
fn seen_traceparent(backend: &Backend, path: &str) -> Option<String> {
    backend
        .log
        .requests
        .lock()
        .unwrap()
        .iter()
        .find(|(_, uri, _)| uri == path)
        .and_then(|(_, _, h)| h.iter().find(|(k, _)| k == "traceparent"))
        .map(|(_, v)| v.clone())
}

/// GET `path` on the public listener (with a `traceparent` when given), read whole; 200 expected.
async fn get_ok(gw: &Gateway, path: &str, traceparent: Option<&str>) {
    let mut req = client().get(gw.url(path));
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), 200, "{path}");
    r.text().await.unwrap();
}

/// The names of the gateway's threads.
fn threads(gw: &Gateway) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{}/task", gw.pid()))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect()
}

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

fn config(backend: &Backend, legacy: std::net::SocketAddr, telemetry: &str) -> String {
    format!(
        "
{telemetry}
upstreams:
  app: {{ servers: [\"{}\"] }}
  legacy: {{ servers: [\"{legacy}\"] }}
routes:
  - path: /api/{{*rest}}
    proxy: app
  - path: /grip/{{*rest}}
    proxy: app
    grip: true
  - path: /ticks
    sse:
      poll: {{ upstream: legacy, path: /n, interval: 200ms }}
webhooks:
  - path: /hooks/x
    channel: \"room:{{/room}}\"
",
        backend.addr
    )
}

/// A collector, the backends and a gateway sending spans at `sample`.
struct Traced {
    collector: Collector,
    backend: Backend,
    polled: Arc<Mutex<Vec<String>>>,
    gw: Gateway,
    _stop: Stop,
}

fn traced(sample: f64) -> Traced {
    let (collector, at) = Collector::start();
    let backend = Backend::start();
    let (legacy, polled, stop) = legacy();
    let gw = Gateway::start(&config(
        &backend,
        legacy,
        &format!("telemetry: {{ otlp: \"http://{at}\", sample: {sample:?} }}"),
    ));
    Traced {
        collector,
        backend,
        polled,
        gw,
        _stop: stop,
    }
}

#[tokio::test]
async fn spans_reach_the_collector_and_traceparent_goes_upstream() {
    let Traced {
        collector,
        backend,
        polled,
        gw,
        _stop,
    } = traced(1.0);
    assert!(threads(&gw).iter().any(|t| t == "ssegate-otlp"));

    // A proxied request in the client's trace.
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    get_ok(&gw, "/api/traced", Some(&parent)).await;
    let proxy = collector
        .span("the proxy span", |s| {
            s.name == "proxy" && s.attrs.get("url.path").is_some_and(|p| p == "/api/traced")
        })
        .await;
    assert_eq!(proxy.trace_id, CLIENT_TRACE, "{proxy:?}");
    assert_eq!(proxy.parent, CLIENT_SPAN, "{proxy:?}");
    assert_eq!(proxy.attrs["http.route"], "/api/{*rest}");
    assert_eq!(proxy.attrs["http.request.method"], "GET");
    assert_eq!(proxy.attrs["http.response.status_code"], "200");
    assert_eq!(proxy.attrs["ssegate.upstream"], "app");
    let upstream = seen_traceparent(&backend, "/api/traced").expect("traceparent upstream");
    assert_eq!(
        upstream,
        format!("00-{CLIENT_TRACE}-{}-01", proxy.span_id),
        "the upstream is the proxy span's child"
    );

    // A GRIP route (answered normally): a new trace, sent to the backend.
    get_ok(&gw, "/grip/plain", None).await;
    let grip = collector
        .span("the GRIP route's span", |s| {
            s.name == "proxy" && s.attrs.get("url.path").is_some_and(|p| p == "/grip/plain")
        })
        .await;
    assert_eq!(grip.parent, "", "no traceparent given: a root span");
    let upstream = seen_traceparent(&backend, "/grip/plain").expect("traceparent upstream");
    assert_eq!(
        upstream,
        format!("00-{}-{}-01", grip.trace_id, grip.span_id)
    );

    // Publish (in the client's trace) and a webhook.
    let r = client()
        .post(gw.admin("/publish"))
        .header("traceparent", &parent)
        .json(&json!({"channel": "room:a", "data": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let publish = collector
        .span("the publish span", |s| s.name == "publish")
        .await;
    assert_eq!(
        (publish.trace_id.as_str(), publish.parent.as_str()),
        (CLIENT_TRACE, CLIENT_SPAN)
    );
    assert_eq!(publish.attrs["ssegate.published"], "1");
    let r = client()
        .post(gw.admin("/hooks/x"))
        .json(&json!({"room": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let hook = collector
        .span("the webhook span", |s| s.name == "webhook")
        .await;
    assert_eq!(hook.attrs["ssegate.outcome"], "accepted");
    assert_eq!(hook.attrs["http.route"], "/hooks/x");
    assert!(!hook.failed);
    let r = client()
        .post(gw.admin("/hooks/x"))
        .json(&json!({"no_room": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let refused = collector
        .span("the refused webhook's span", |s| {
            s.name == "webhook" && s.failed
        })
        .await;
    assert_eq!(refused.attrs["ssegate.outcome"], "missing_pointer");

    // Poll cycles: each its own trace, sent to the legacy endpoint.
    let mut ticks = Sse::connect(&gw.url("/ticks")).await;
    ticks.take(2).await;
    let poll = collector
        .span("a poll span that found a change", |s| {
            s.name == "poll" && s.attrs.get("ssegate.changed").is_some_and(|c| c == "true")
        })
        .await;
    assert_eq!(poll.attrs["ssegate.route"], "/ticks");
    assert_eq!(poll.attrs["ssegate.upstream"], "legacy");
    let want = format!("00-{}-{}-01", poll.trace_id, poll.span_id);
    assert!(
        polled.lock().unwrap().contains(&want),
        "{want} not among {:?}",
        polled.lock().unwrap()
    );
    assert!(collector
        .posts
        .lock()
        .unwrap()
        .iter()
        .all(|ct| ct == "application/x-protobuf"));
}

#[tokio::test]
async fn the_sample_ratio_decides_new_traces_and_a_client_decides_its_own() {
    let Traced {
        collector,
        backend,
        gw,
        _stop,
        ..
    } = traced(0.0);
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    get_ok(&gw, "/api/unsampled", None).await;
    get_ok(&gw, "/api/sampled", Some(&parent)).await;
    collector
        .span("the client-sampled span", |s| s.trace_id == CLIENT_TRACE)
        .await;
    // Exported in order, in batches: had the first been sampled, it would be here.
    let names: Vec<String> = collector
        .spans
        .lock()
        .unwrap()
        .iter()
        .filter_map(|s| s.attrs.get("url.path").cloned())
        .collect();
    assert_eq!(names, vec!["/api/sampled"]);
    // Unsampled, the upstream still gets the trace, flagged as not sampled.
    let tp = seen_traceparent(&backend, "/api/unsampled").expect("a traceparent");
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
}

#[tokio::test]
async fn without_telemetry_traceparent_passes_through_and_nothing_exports() {
    let backend = Backend::start();
    let (legacy, _, _stop) = legacy();
    let gw = Gateway::start(&config(&backend, legacy, ""));
    let parent = format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01");
    get_ok(&gw, "/api/x", Some(&parent)).await;
    assert_eq!(
        seen_traceparent(&backend, "/api/x").as_deref(),
        Some(parent.as_str())
    );
    assert!(!threads(&gw).iter().any(|t| t == "ssegate-otlp"));
}

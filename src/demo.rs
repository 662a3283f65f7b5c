//! `ssegate demo`: the gateway in front of a small built-in legacy backend,
//! all on loopback, with a page that shows live events. The backend is the
//! kind of app ssegate is for: it serves pages and JSON, and publishes what
//! happens (a clock tick every second, messages posted from the page) to the
//! gateway's hub — the page gets them over SSE through the gateway.

use crate::app::{self, StartError};
use crate::config::{load_str, ConfigErrors};
use crate::gateway::Gateway;
use crate::http::{body, respond};
use crate::hub::{Event, Payload};
use async_trait::async_trait;
use http::Method;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::{ProxyHttp, Session};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const PAGE: &str = include_str!("demo.html");

const CONFIG: &str = "
listen: LISTEN
admin: { listen: ADMIN }
sse: { heartbeat: 15s, retry: 2s }
upstreams:
  demo_app: { servers: [\"BACKEND\"] }
routes:
  - path: /
    proxy: demo_app
  - path: /api/{*rest}
    proxy: demo_app
  - path: /events/{room}
    sse: { channels: [\"room:{room}\"] }
";

/// Why the demo did not start.
#[derive(Debug)]
pub enum DemoError {
    Port(SocketAddr, std::io::Error),
    Config(ConfigErrors),
    Start(StartError),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Port(a, e) => write!(f, "cannot find a free port on {}: {e}", a.ip()),
            DemoError::Config(e) => e.fmt(f),
            DemoError::Start(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for DemoError {}

/// `port 0` means any free port: pingora cannot tell us which one it took,
/// so pick it here.
fn concrete(addr: SocketAddr) -> Result<SocketAddr, DemoError> {
    if addr.port() != 0 {
        return Ok(addr);
    }
    TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map_err(|e| DemoError::Port(addr, e))
}

pub fn run(listen: SocketAddr, admin: SocketAddr) -> Result<(), DemoError> {
    let listen = concrete(listen)?;
    let admin = concrete(admin)?;
    let backend = concrete(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let text = CONFIG
        .replace("LISTEN", &listen.to_string())
        .replace("ADMIN", &admin.to_string())
        .replace("BACKEND", &backend.to_string());
    let config = load_str(&text, Path::new("<demo>"), &|_| None).map_err(DemoError::Config)?;
    app::check_bindable(backend, "demo backend").map_err(DemoError::Start)?;
    // Written, not println!-ed: a reader that closed our stdout (a pipe)
    // must not make the demo panic.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ssegate demo\n  open the live page:   http://{listen}/\n  admin dashboard:      http://{admin}/\n  subscribe with curl:  curl -N http://{listen}/events/demo\n  publish with curl:    curl -XPOST http://{admin}/publish -d '{{\"channel\":\"room:demo\",\"event\":\"message\",\"data\":\"hi\"}}'"
    );
    let _ = out.flush();
    drop(out);
    app::run_with(
        config,
        app::Start::default(),
        |server: &mut Server, gw: &Arc<Gateway>| {
            let mut svc = pingora_proxy::http_proxy_service_with_name(
                &server.configuration,
                DemoBackend { gw: gw.clone() },
                "demo backend",
            );
            svc.threads = Some(1);
            svc.add_tcp(&backend.to_string());
            server.add_service(svc);
            server.add_service(background_service("demo clock", Clock { gw: gw.clone() }));
        },
    )
    .map_err(DemoError::Start)
}

/// What the demo app publishes goes to the page's channel, `room:demo`.
async fn publish(
    gw: &Gateway,
    event: &str,
    data: String,
) -> Result<crate::hub::PublishReport, crate::hub::BrokerError> {
    gw.hub
        .publish(vec![Event {
            channel: "room:demo".into(),
            dedupe_id: None,
            payload: Payload::Message {
                event: Some(event.into()),
                data,
            },
        }])
        .await
}

/// Publishes the time every second, as a legacy app would publish its news.
#[derive(Debug)]
struct Clock {
    gw: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for Clock {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = t.tick() => {}
                _ = shutdown.changed() => return,
            }
            n += 1;
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let data = serde_json::json!({ "tick": n, "time": now }).to_string();
            let _ = publish(&self.gw, "tick", data).await;
        }
    }
}

/// The legacy app: a page, a JSON endpoint, and a form that publishes.
#[derive(Debug)]
struct DemoBackend {
    gw: Arc<Gateway>,
}

#[async_trait]
impl ProxyHttp for DemoBackend {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match (method, path.as_str()) {
            (Method::GET, "/") => {
                respond::send(session, 200, "text/html; charset=utf-8", PAGE, &[]).await?;
            }
            (Method::GET, "/api/hello") => {
                respond::json(
                    session,
                    200,
                    &serde_json::json!({ "hello": "from the legacy app" }),
                )
                .await?;
            }
            (Method::POST, "/api/say") => {
                let body = match body::read(session, 4096).await {
                    Ok(b) => b,
                    Err(_) => {
                        let e = serde_json::json!({ "error": "message too long" });
                        respond::json(session, 413, &e).await?;
                        return Ok(true);
                    }
                };
                let text = String::from_utf8_lossy(&body).trim().to_string();
                if text.is_empty() {
                    let e = serde_json::json!({ "error": "empty message" });
                    respond::json(session, 400, &e).await?;
                    return Ok(true);
                }
                let data = serde_json::json!({ "text": text }).to_string();
                let published = publish(&self.gw, "message", data).await;
                match published {
                    Ok(_) => {
                        respond::json(session, 202, &serde_json::json!({ "published": 1 })).await?
                    }
                    Err(e) => {
                        let e = serde_json::json!({ "error": e.to_string() });
                        respond::json(session, 503, &e).await?
                    }
                }
            }
            _ => respond::text(session, 404, "not found").await?,
        }
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::HTTPStatus(404),
            "the demo backend proxies nothing",
        )
    }
}

//! `ssegate demo`: the gateway in front of a small built-in legacy app
//! (`legacy`), all on loopback, with one page that shows what ssegate is
//! for, live: the app's signed webhook becoming an event, a polled endpoint
//! of which only changes are pushed, two users each on their own stream
//! (JWT), and a dropped connection resumed with `Last-Event-ID`.

mod legacy;

use crate::app::{self, StartError};
use crate::config::{load_str, ConfigErrors, Upstream};
use crate::gateway::Gateway;
use crate::outbound::Pool;
use async_trait::async_trait;
use legacy::{publish, AppState, LegacyApp};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const CONFIG: &str = "
listen: LISTEN
admin: { listen: ADMIN }
hub: { history: { size: 1000, ttl: 1h } }
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
  - path: /events/me
    sse:
      channels: [\"user:{jwt.sub}\"]
      auth: { jwt: { secret_env: DEMO_JWT_SECRET, token_from: [\"query:token\"] } }
  - path: /events/prices
    sse:
      poll: { upstream: demo_app, path: /api/prices, interval: 1s, diff: body, event: prices }
webhooks:
  - path: /hooks/orders
    verify: { hmac_sha256: { secret_env: DEMO_HOOK_SECRET, header: X-Signature, prefix: \"sha256=\" } }
    channel: room:demo
    event: \"{/type}\"
    data: /order
";

/// A fresh secret per run: the demo's JWTs and webhook signatures.
fn secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

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
    let (jwt_secret, hook_secret) = (secret(), secret());
    let env = |k: &str| match k {
        "DEMO_JWT_SECRET" => Some(jwt_secret.clone()),
        "DEMO_HOOK_SECRET" => Some(hook_secret.clone()),
        _ => None,
    };
    let config = load_str(&text, Path::new("<demo>"), &env).map_err(DemoError::Config)?;
    let admin_pool = Pool::new(Upstream::fixed("demo admin", vec![admin]));
    let state = Arc::new(AppState::new(
        jwt_secret.clone(),
        hook_secret.clone(),
        admin_pool,
    ));
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
            let app = LegacyApp {
                gw: gw.clone(),
                state: state.clone(),
            };
            let mut svc = pingora_proxy::http_proxy_service_with_name(
                &server.configuration,
                app,
                "demo backend",
            );
            svc.threads = Some(1);
            svc.add_tcp(&backend.to_string());
            server.add_service(svc);
            let clock = Clock {
                gw: gw.clone(),
                state: state.clone(),
            };
            server.add_service(background_service("demo clock", clock));
        },
    )
    .map_err(DemoError::Start)
}

/// Publishes the time every second to `room:demo`, as a legacy app would
/// publish its news: what a dropped page misses and gets replayed.
#[derive(Debug)]
struct Clock {
    gw: Arc<Gateway>,
    state: Arc<AppState>,
}

#[async_trait]
impl BackgroundService for Clock {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut t = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = t.tick() => {}
                _ = shutdown.changed() => return,
            }
            let n = self.state.ticks.fetch_add(1, Ordering::Relaxed) + 1;
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let data = serde_json::json!({ "tick": n, "time": now }).to_string();
            let _ = publish(&self.gw, "room:demo", "tick", data).await;
        }
    }
}

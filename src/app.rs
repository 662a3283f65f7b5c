//! Build the pingora server from a validated config and run it: the public
//! listener (TLS with ALPN h2/http1.1, or plain text with optional h2c), the
//! admin listener, and background services for drain, SIGHUP reload and
//! housekeeping (broker upkeep, JWT expiry, the dashboard's feed).

use crate::config::{Config, Http2};
use crate::gateway::{BuildError, Gateway};
use crate::hangup::{self, Hangup};
use crate::http::admin::{self, AdminApp};
use crate::http::public::PublicProxy;
use crate::shutdown::DrainOnSignal;
use crate::tls::{self, CertStore};
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::protocols::http::v2::server::default_h2_options;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// Why the gateway did not start.
#[derive(Debug)]
pub enum StartError {
    /// A listen address is taken or not ours to bind.
    Bind {
        addr: SocketAddr,
        what: &'static str,
        error: std::io::Error,
    },
    /// The certificate or key changed since `check` and no longer loads.
    Tls(tls::Problem),
    Build(BuildError),
    Signals(std::io::Error),
    Server(Box<pingora_error::Error>),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { addr, what, error } => {
                write!(f, "cannot listen on {addr} ({what}): {error}")
            }
            StartError::Tls(p) => p.fmt(f),
            StartError::Build(e) => e.fmt(f),
            StartError::Signals(e) => write!(f, "cannot handle SIGHUP: {e}"),
            StartError::Server(e) => write!(f, "server: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Broker upkeep, the JWT expiry sweep and the dashboard's feed.
#[derive(Debug)]
struct Housekeeping {
    gw: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.gw.hub.clone().run() => {}
            _ = self.gw.streams.expiries.run() => {}
            _ = admin::feed_dashboard(&self.gw) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Fail early and clearly when an address is taken, instead of a half-started server.
pub fn check_bindable(addr: SocketAddr, what: &'static str) -> Result<(), StartError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|error| StartError::Bind { addr, what, error })
}

pub fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// HTTP/2 settings of the public proxy: h2c on plain text when asked, and a
/// per-connection stream limit well above pingora's default of 100.
fn apply_http2<A>(proxy: &mut pingora_proxy::HttpProxy<A>, http2: &Http2)
where
    A: pingora_proxy::ProxyHttp,
{
    let mut server = HttpServerOptions::default();
    server.h2c = http2.h2c;
    proxy.server_options = Some(server);
    let mut h2 = default_h2_options();
    h2.max_concurrent_streams(http2.max_concurrent_streams);
    proxy.h2_options = Some(h2);
}

/// Run until SIGTERM/SIGINT; returns only on a startup error.
pub fn run(config: Config) -> Result<(), StartError> {
    run_with(config, |_, _| {})
}

/// `run`, letting the caller add services of its own (the demo's backend).
pub fn run_with(
    config: Config,
    extra: impl FnOnce(&mut Server, &Arc<Gateway>),
) -> Result<(), StartError> {
    // Every stream is a socket: use the whole hard limit, as nginx's
    // worker_rlimit_nofile would.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("could not raise the open-file limit: {e}");
    }
    check_bindable(config.listen, "listen")?;
    check_bindable(config.admin.listen, "admin.listen")?;
    let grace = config.shutdown_grace;
    let public_addr = config.listen.to_string();
    let admin_addr = config.admin.listen.to_string();
    let http2 = config.http2.clone();
    // Checked by `config::load` already; read again here because the files
    // may have changed since, and a listener without a certificate is useless.
    let certs = match &config.tls {
        Some(t) => Some(CertStore::open(&t.cert, &t.key).map_err(StartError::Tls)?),
        None => None,
    };
    hangup::ignore_early().map_err(StartError::Signals)?;
    let gw = Gateway::new(config).map_err(StartError::Build)?;

    let conf = ServerConf {
        threads: worker_threads(),
        // Our drain service exits as soon as streams are closed; pingora's own
        // fixed sleep only applies if that somehow does not happen.
        grace_period_seconds: Some(grace.as_secs().saturating_add(2)),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let mut public = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        PublicProxy { gw: gw.clone() },
        "public",
    );
    if let Some(proxy) = public.app_logic_mut() {
        apply_http2(proxy, &http2);
    }
    match &certs {
        Some(store) => {
            let settings = store.settings().map_err(StartError::Server)?;
            public.add_tls_with_settings(&public_addr, None, settings)
        }
        None => public.add_tcp(&public_addr),
    }
    let mut admin = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        AdminApp { gw: gw.clone() },
        "admin",
    );
    admin.threads = Some(1);
    admin.add_tcp(&admin_addr);

    server.add_service(public);
    server.add_service(admin);
    let woken = gw.clone();
    let hub = gw.hub.clone();
    server.add_service(background_service(
        "drain",
        DrainOnSignal {
            shutdown: gw.streams.shutdown.clone(),
            grace,
            wake_streams: Box::new(move || woken.streams.heartbeats.wake_all()),
            before_exit: Box::new(move || {
                let hub = hub.clone();
                Box::pin(async move { hub.stop().await })
            }),
        },
    ));
    server.add_service(background_service(
        "hangup",
        Hangup {
            gw: gw.clone(),
            certs: certs.clone(),
        },
    ));
    server.add_service(background_service(
        "housekeeping",
        Housekeeping { gw: gw.clone() },
    ));
    extra(&mut server, &gw);
    tracing::info!(public = %public_addr, admin = %admin_addr, tls = certs.is_some(), h2c = http2.h2c, routes = gw.site().config.routes.len(), "ssegate listening");
    server.run_forever()
}

//! Build the pingora server from a validated config and run it: the public
//! listener (TLS through our front with ALPN h2/http1.1, or plain text with
//! optional h2c), the admin listener, and background services for drain
//! (and the live upgrade's handoff), SIGHUP reload and housekeeping (broker
//! and records upkeep, JWT expiry, the dashboard's feed).

use crate::config::{Config, Http2};
use crate::gateway::{BuildError, Gateway};
use crate::hangup::{self, Hangup};
use crate::http::admin::AdminApp;
use crate::http::dashboard;
use crate::http::front;
use crate::http::gate::HeadGate;
use crate::http::listener::PlainListener;
use crate::http::public::PublicProxy;
use crate::stream::limits::FdBudget;
use crate::tls::{self, CertStore};
use crate::upgrade::{self, systemd, Adopter, Drain, Reexec};
use async_trait::async_trait;
use pingora_core::apps::HttpServerOptions;
use pingora_core::protocols::http::v2::server::default_h2_options;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::background::{background_service, BackgroundService};
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};

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
    /// `--upgrade`: the socket the streams move on cannot be made.
    Upgrade(std::io::Error),
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
            StartError::Upgrade(e) => write!(f, "cannot take over from the running process: {e}"),
            StartError::Server(e) => write!(f, "server: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Broker and records upkeep, the JWT expiry sweep and the dashboard's feed.
#[derive(Debug)]
struct Housekeeping {
    gw: Arc<Gateway>,
}

#[async_trait]
impl BackgroundService for Housekeeping {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            _ = self.gw.hub.clone().run() => {}
            _ = self.gw.records.clone().run() => {}
            _ = self.gw.streams.expiries.run() => {}
            _ = dashboard::feed(&self.gw) => {}
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
    // A stream whose client stops reading has at most this much buffered in
    // h2 before it has no room left and its frames wait in its own bounded
    // queue (which evicts it when full); h2's default is 400 KiB.
    h2.max_send_buffer_size(64 * 1024);
    proxy.h2_options = Some(h2);
}

/// How to start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Start {
    /// `run --upgrade`: take the listeners and streams over from the
    /// running process (which is sent SIGQUIT).
    pub upgrade: bool,
}

/// Run until SIGTERM/SIGINT (or SIGQUIT, handing over to a new process);
/// returns only on a startup error.
pub fn run(config: Config, start: Start) -> Result<(), StartError> {
    run_with(config, start, |_, _| {})
}

/// `run`, letting the caller add services of its own (the demo's backend).
pub fn run_with(
    config: Config,
    start: Start,
    extra: impl FnOnce(&mut Server, &Arc<Gateway>),
) -> Result<(), StartError> {
    // Before anything could replace the binary: SIGUSR2 starts this path.
    let reexec = Reexec::of_this_process().map_err(StartError::Upgrade)?;
    // Every stream is a socket: use the whole hard limit, as nginx's
    // worker_rlimit_nofile would.
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!("could not raise the open-file limit: {e}");
    }
    // A free public address means there is nothing to take over.
    let upgrading = start.upgrade && TcpListener::bind(config.listen).is_err();
    if start.upgrade && !upgrading {
        tracing::warn!(listen = %config.listen, "--upgrade: no running gateway on this address; starting afresh");
    }
    if !upgrading {
        check_bindable(config.listen, "listen")?;
        check_bindable(config.admin.listen, "admin.listen")?;
    }
    let grace = config.shutdown_grace;
    let public_addr = config.listen.to_string();
    let config_listen = config.listen;
    let admin_addr = config.admin.listen.to_string();
    let http2 = config.http2.clone();
    let upgrade_socket = config.upgrade_socket.clone();
    // Checked by `config::load` already; read again here because the files
    // may have changed since, and a listener without a certificate is useless.
    let certs = match &config.tls {
        Some(t) => Some(CertStore::open(&t.cert, &t.key).map_err(StartError::Tls)?),
        None => None,
    };
    hangup::ignore_early().map_err(StartError::Signals)?;
    let gw = if upgrading {
        Gateway::taking_over(config)
    } else {
        Gateway::new(config)
    }
    .map_err(StartError::Build)?;
    if let Some(store) = &certs {
        gw.metrics.tls_expiry.set(store.not_after().unwrap_or(0));
    }
    // Bound before the running process is told to go, so that its streams
    // find this process whenever it gets there.
    let streams_listener = if upgrading {
        let l = upgrade::listen(&upgrade_socket).map_err(StartError::Upgrade)?;
        // systemd must know the new main process before the old one exits.
        if let Err(e) = systemd::notify(&format!("MAINPID={}", std::process::id())) {
            tracing::warn!("systemd notify (MAINPID): {e}");
        }
        upgrade::signal_when_listening(upgrade_socket.clone());
        Some(l)
    } else {
        None
    };

    let conf = ServerConf {
        threads: worker_threads(),
        // Our drain service exits as soon as streams are closed; pingora's own
        // fixed sleep only applies if that somehow does not happen.
        grace_period_seconds: Some(grace.as_secs().saturating_add(2)),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: upgrade_socket.to_string_lossy().into_owned(),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: upgrading,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    let phases = server.watch_execution_phase();
    server.bootstrap();

    let mut proxy =
        pingora_proxy::http_proxy(&server.configuration, PublicProxy { gw: gw.clone() });
    apply_http2(&mut proxy, &http2);
    let limits_of = gw.clone();
    let gate = HeadGate::new(
        proxy,
        Box::new(move || limits_of.site().config.limits.header_timeout),
        FdBudget::current().waiting,
        gw.metrics.clone(),
    );
    let public = match &certs {
        Some(store) => {
            // Our TLS front, on a pingora listener: its socket is in
            // pingora's fd table, so a live upgrade passes it on as before.
            let config = store.server_config().map_err(|e| {
                StartError::Tls(tls::Problem {
                    part: tls::Part::Cert,
                    message: format!("tls setup: {e}"),
                })
            })?;
            server.add_service(front::service("public", gate, config, &public_addr))
        }
        None => server.add_service(PlainListener::new(
            "public",
            config_listen,
            gate,
            gw.metrics.clone(),
        )),
    };
    let mut admin = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        AdminApp { gw: gw.clone() },
        "admin",
    );
    admin.threads = Some(1);
    admin.add_tcp(&admin_addr);

    let admin = server.add_service(admin);
    if let Some(listener) = streams_listener {
        // One process at a time hands out cursors: the listeners accept
        // only once the streams (and the memory hub) are here.
        let adopter = server.add_service(background_service(
            "upgrade",
            Adopter {
                gw: gw.clone(),
                listener: Mutex::new(Some(listener)),
                path: upgrade::streams_socket(&upgrade_socket),
            },
        ));
        public.add_dependency(&adopter);
        admin.add_dependency(&adopter);
    }
    server.add_service(background_service(
        "drain",
        Drain {
            gw: gw.clone(),
            grace,
            socket: upgrade_socket.clone(),
            phases: Mutex::new(Some(phases)),
        },
    ));
    let ready = server.add_service(background_service("systemd", systemd::Ready));
    ready.add_dependency(&public);
    ready.add_dependency(&admin);
    server.add_service(background_service("reexec", reexec));
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
    if let Err(e) = upgrade::write_pid(&upgrade_socket) {
        tracing::warn!("upgrade: cannot write the pid file next to {} ({e}); `run --upgrade` will wait for a manual SIGQUIT", upgrade_socket.display());
    }
    tracing::info!(public = %public_addr, admin = %admin_addr, tls = certs.is_some(), h2c = http2.h2c, routes = gw.site().config.routes.len(), upgraded = upgrading, "ssegate listening");
    server.run_forever()
}

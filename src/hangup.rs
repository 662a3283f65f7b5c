//! SIGHUP: re-read and validate the whole config file, then put it in force
//! without dropping anyone.
//!
//! - Invalid: the running config stays; every error is logged as
//!   `FILE:LINE:COL: message`.
//! - Valid: routes, upstreams, webhooks, auth, limits, `sse` defaults,
//!   pollers and the TLS certificate change at once (`Gateway::swap_site`):
//!   a request takes the config once and finishes on it. Open streams whose
//!   route is unchanged (same fingerprint) keep flowing on their connection;
//!   the others are told a jittered `retry:` and closed, and reconnect to
//!   the new routes. Pollers of changed routes stop when their last stream
//!   goes; new ones start on demand.
//! - Settings that need a restart (listen addresses, TLS on or off, HTTP/2
//!   settings, the broker, `shutdown_grace`) are logged as such and keep
//!   their running values; the rest is applied.
//!
//! pingora installs handlers for SIGTERM, SIGINT and SIGQUIT only; SIGHUP
//! keeps its default action, which is to kill the process. `ignore_early`
//! takes the signal over before any listener opens.

use crate::config::{self, Config};
use crate::gateway::{Gateway, Site};
use crate::tls::CertStore;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::collections::HashSet;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// Replace the default actions of SIGHUP (terminate), SIGUSR2 (terminate)
/// and SIGQUIT (core dump) before the server starts, so that a reload, a
/// self-upgrade or an upgrade signal sent during startup is ignored instead
/// of fatal. tokio keeps its handler installed for the life of the process
/// once registered, even after this short-lived runtime is gone.
pub(crate) fn ignore_early() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        for kind in [
            SignalKind::hangup(),
            SignalKind::user_defined2(),
            SignalKind::quit(),
        ] {
            drop(signal(kind)?);
        }
        Ok(())
    })
}

#[derive(Debug)]
pub(crate) struct Hangup {
    pub gw: Arc<Gateway>,
    pub certs: Option<Arc<CertStore>>,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Reloaded {
    /// Streams told to reconnect because their route changed or went away.
    pub retired: usize,
    /// Keys whose new value waits for a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Why a reload changed nothing.
#[derive(Debug)]
pub(crate) enum ReloadError {
    Config(config::ConfigErrors),
    Build(crate::gateway::BuildError),
    Tls(crate::tls::Problem),
}

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "{} config error(s)", e.0.len()),
            ReloadError::Build(e) => e.fmt(f),
            ReloadError::Tls(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ReloadError {}

/// The keys a running process cannot change, with their running values put
/// back into `new` (so `/stats` shows what is in force).
fn keep_running(running: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if new.listen != running.listen {
        changed.push("listen");
        new.listen = running.listen;
    }
    if new.admin.listen != running.admin.listen {
        changed.push("admin.listen");
        new.admin.listen = running.admin.listen;
    }
    if new.tls.is_some() != running.tls.is_some() {
        changed.push("tls (on/off)");
        new.tls = running.tls.clone();
    }
    if new.http2 != running.http2 {
        changed.push("http2");
        new.http2 = running.http2.clone();
    }
    if new.hub.broker != running.hub.broker
        || new.hub.history_size != running.hub.history_size
        || new.hub.history_ttl != running.hub.history_ttl
        || new.hub.persist != running.hub.persist
    {
        changed.push("hub");
        new.hub = running.hub.clone();
    }
    if new.upgrade_socket != running.upgrade_socket {
        changed.push("upgrade_socket");
        new.upgrade_socket = running.upgrade_socket.clone();
    }
    if new.shutdown_grace != running.shutdown_grace {
        changed.push("shutdown_grace");
        new.shutdown_grace = running.shutdown_grace;
    }
    // The exporter and its thread are made once, at start.
    if new.telemetry != running.telemetry {
        changed.push("telemetry");
        new.telemetry = running.telemetry.clone();
    }
    changed
}

/// Validate `new` and put it in force on `gw`.
pub(crate) fn reload(
    gw: &Gateway,
    certs: Option<&CertStore>,
    mut new: Config,
) -> Result<Reloaded, ReloadError> {
    let running = gw.site();
    let needs_restart = keep_running(&running.config, &mut new);
    // Checked by `config::load` already; read again here, where it counts.
    if let (Some(store), Some(tls)) = (certs, &new.tls) {
        store
            .reload_from(&tls.cert, &tls.key)
            .map_err(ReloadError::Tls)?;
    }
    let site = Site::new(new).map_err(ReloadError::Build)?;
    let kept: HashSet<u64> = site.routes().map(|r| r.route.fingerprint).collect();
    gw.swap_site(site);
    let mut retired = 0;
    for sub in gw.streams.heartbeats.members() {
        // Route 0: not a route's stream (the dashboard's feed).
        if sub.route() != 0 && !kept.contains(&sub.route()) {
            sub.retire();
            retired += 1;
        }
    }
    Ok(Reloaded {
        retired,
        needs_restart,
    })
}

#[async_trait]
impl BackgroundService for Hangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, the config will not reload: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { return },
                _ = shutdown.changed() => return,
            }
            let path = self.gw.site().config.source.clone();
            // A small file, read once: fine on this task.
            let result = config::load(&path)
                .map_err(ReloadError::Config)
                .and_then(|c| reload(&self.gw, self.certs.as_deref(), c));
            let m = &self.gw.metrics;
            match result {
                // Logged first, counted after: whoever watches the counter
                // finds the log lines already written.
                Ok(done) => {
                    for key in &done.needs_restart {
                        tracing::warn!(key, "SIGHUP: `{key}` changed; it takes effect at the next restart, the running value stays");
                    }
                    let site = self.gw.site();
                    tracing::info!(
                        digest = %site.config.digest,
                        routes = site.config.routes.len(),
                        retired = done.retired,
                        "SIGHUP: config reloaded"
                    );
                    if let Some(certs) = &self.certs {
                        tracing::info!("SIGHUP: tls certificate reloaded; new handshakes use it");
                        m.tls_reloads.with_label_values(&["ok"]).inc();
                        m.tls_expiry.set(certs.not_after().unwrap_or(0));
                    }
                    m.config_reloads.with_label_values(&["ok"]).inc();
                }
                Err(e) => {
                    if let ReloadError::Config(errors) = &e {
                        for line in &errors.0 {
                            tracing::error!("{line}");
                        }
                    }
                    tracing::error!("SIGHUP: reload refused ({e}); the running config stays");
                    // Whatever failed, the certificate in use was not replaced.
                    if self.certs.is_some() {
                        m.tls_reloads.with_label_values(&["error"]).inc();
                    }
                    m.config_reloads.with_label_values(&["error"]).inc();
                }
            }
        }
    }
}

//! SIGHUP: re-read the TLS certificate and key without dropping anything.
//!
//! pingora installs handlers for SIGTERM, SIGINT and SIGQUIT only; SIGHUP
//! keeps its default action, which is to kill the process. `ignore_early`
//! takes the signal over before any listener opens, and the `Hangup`
//! background service then reloads certificates on each one.

use crate::metrics::Metrics;
use crate::tls::CertStore;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};

/// Replace SIGHUP's default action (terminate) before the server starts, so
/// that a reload sent during startup is ignored instead of fatal. tokio keeps
/// its handler installed for the life of the process once registered, even
/// after this short-lived runtime is gone.
pub(crate) fn ignore_early() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async { signal(SignalKind::hangup()).map(drop) })
}

#[derive(Debug)]
pub(crate) struct Hangup {
    pub certs: Option<Arc<CertStore>>,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl BackgroundService for Hangup {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot listen for SIGHUP, certificates will not reload: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hup.recv() => if got.is_none() { return },
                _ = shutdown.changed() => return,
            }
            let Some(certs) = &self.certs else {
                tracing::info!("SIGHUP: no tls configured, nothing to reload");
                continue;
            };
            // Reading two small files: fine to do inline on this task.
            match certs.reload() {
                Ok(()) => {
                    self.metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    self.metrics.tls_expiry.set(certs.not_after().unwrap_or(0));
                    tracing::info!("SIGHUP: tls certificate reloaded; new handshakes use it");
                }
                Err(e) => {
                    self.metrics.tls_reloads.with_label_values(&["error"]).inc();
                    tracing::error!(
                        "SIGHUP: tls reload failed, keeping the current certificate: {e}"
                    );
                }
            }
        }
    }
}

//! SIGUSR2: the running gateway starts its own successor — the binary at
//! the path it was started from (a package upgrade replaces that file),
//! with the same arguments and `--upgrade` — which then takes over as any
//! `run --upgrade` does. Started this way the successor stays in the
//! service's cgroup, which is what lets a systemd unit upgrade without a
//! restart (`systemctl kill -s USR2 ssegate`, docs/operations.md). If the
//! successor dies before it takes over, this process keeps running and
//! says so.

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::signal::unix::{signal, SignalKind};

#[derive(Debug)]
pub(crate) struct Reexec {
    /// The binary's path as it was at start.
    pub exe: PathBuf,
    /// This process's arguments, without `--upgrade`.
    pub args: Vec<OsString>,
}

impl Reexec {
    /// From this process's own start: call before anything can replace the binary.
    pub(crate) fn of_this_process() -> std::io::Result<Reexec> {
        Ok(Reexec {
            exe: std::env::current_exe()?,
            args: std::env::args_os()
                .skip(1)
                .filter(|a| a != "--upgrade")
                .collect(),
        })
    }

    fn start_successor(&self) {
        let child = tokio::process::Command::new(&self.exe)
            .args(&self.args)
            .arg("--upgrade")
            .stdin(Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(exe = %self.exe.display(), "SIGUSR2: cannot start the new process: {e}");
                return;
            }
        };
        tracing::info!(pid = child.id(), exe = %self.exe.display(), "SIGUSR2: started the new process; it takes over");
        tokio::spawn(async move {
            // Reaped here; a successor that took over outlives this process.
            if let Ok(status) = child.wait().await {
                tracing::error!(%status, "the new process exited before taking over; this one keeps running");
            }
        });
    }
}

#[async_trait]
impl BackgroundService for Reexec {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut usr2 = match signal(SignalKind::user_defined2()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("SIGUSR2 (self-upgrade) not available: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                Some(()) = usr2.recv() => self.start_successor(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

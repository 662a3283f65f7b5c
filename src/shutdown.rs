//! Drain on SIGTERM. pingora's handlers never see the signal, so a background
//! service relays pingora's `ShutdownWatch` into our own watch that every
//! stream selects on; then it waits for streams and proxied requests to end,
//! or for `shutdown_grace`, and exits — instead of pingora's fixed sleep.

use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    /// Requests and streams still open.
    active: Arc<AtomicUsize>,
}

/// Counts one open request or stream while alive.
#[derive(Debug)]
pub struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            tx: Arc::new(watch::channel(false).0),
            active: Arc::default(),
        }
    }

    pub fn watch(&self) -> watch::Receiver<bool> {
        self.tx.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn begin(&self) {
        self.tx.send_replace(true);
    }

    pub fn track(&self) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        Active(self.active.clone())
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Wait until nothing is open or `grace` has passed.
    pub async fn drained(&self, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if self.active() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.active() == 0
    }
}

/// The background service that turns SIGTERM into a drain and an exit.
pub struct DrainOnSignal {
    pub shutdown: Shutdown,
    pub grace: Duration,
    /// Wakes streams that do not watch the signal themselves (detached ones).
    pub wake_streams: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for DrainOnSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainOnSignal")
            .field("grace", &self.grace)
            .finish()
    }
}

#[async_trait]
impl BackgroundService for DrainOnSignal {
    async fn start(&self, mut signal: ShutdownWatch) {
        let _ = signal.changed().await;
        let open = self.shutdown.active();
        tracing::info!(open, grace = ?self.grace, "shutdown: draining");
        self.shutdown.begin();
        (self.wake_streams)();
        let clean = self.shutdown.drained(self.grace).await;
        tracing::info!(clean, left = self.shutdown.active(), "shutdown: exiting");
        std::process::exit(0);
    }
}

//! The drain flag and the count of open requests and streams. pingora's
//! handlers never see SIGTERM; `upgrade::Drain` relays pingora's
//! `ShutdownWatch` into this flag, wakes every stream so that each sees it,
//! then waits here for streams and proxied requests to end, or for
//! `shutdown_grace`, and exits — instead of pingora's fixed sleep.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often the drain looks whether everything has closed.
const DRAIN_POLL: Duration = Duration::from_millis(20);

#[derive(Debug, Clone)]
pub struct Shutdown {
    draining: Arc<AtomicBool>,
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
            draining: Arc::default(),
            active: Arc::default(),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn begin(&self) {
        self.draining.store(true, Ordering::Release);
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
        let deadline = Instant::now().checked_add(grace);
        loop {
            if self.active() == 0 {
                return true;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            // Polled: streams end on their own tasks and nothing else needs
            // to know the count reached zero.
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_streams_and_gives_up_after_grace() {
        let s = Shutdown::new();
        let a = s.track();
        let b = s.track();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(a);
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop(b);
        });
        let t = Instant::now();
        assert!(s.drained(Duration::from_secs(10)).await);
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(6) && took < Duration::from_millis(6100),
            "{took:?}"
        );
        closer.await.unwrap();
        let _stuck = s.track();
        let t = Instant::now();
        assert!(!s.drained(Duration::from_secs(5)).await);
        assert!(t.elapsed() >= Duration::from_secs(5));
    }

    #[test]
    fn draining_is_seen_by_everyone() {
        let s = Shutdown::new();
        let other = s.clone();
        assert!(!other.is_draining());
        s.begin();
        assert!(other.is_draining());
    }
}

//! Upstream server pools: round robin with passive health. A server that
//! refuses or times out a connection is skipped for `fail_timeout`; when every
//! server is marked down the pool tries them anyway rather than fail closed.
//!
//! The pool also makes the `HttpPeer` for a server, so the proxy path and
//! the gateway's own requests connect the same way (timeouts, and TLS when
//! an upstream asks for it).

use crate::config::Upstream;
use pingora_core::upstreams::peer::HttpPeer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::time::Instant;

#[derive(Debug)]
pub struct Pool {
    pub config: Upstream,
    /// The pool's name, shared by every error that mentions it.
    pub name: Arc<str>,
    next: AtomicUsize,
    /// Milliseconds since `born` until which each server is skipped.
    down_until: Vec<AtomicU64>,
    born: Instant,
}

impl Pool {
    pub fn new(config: Upstream) -> Pool {
        let down_until = config.servers.iter().map(|_| AtomicU64::new(0)).collect();
        Pool {
            name: config.name.as_str().into(),
            config,
            next: AtomicUsize::new(0),
            down_until,
            born: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// The next healthy server not in `tried`, else the next one not in `tried`.
    pub fn pick(&self, tried: &[usize]) -> Option<(usize, SocketAddr)> {
        let n = self.config.servers.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let order = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.contains(i));
        let mut fallback = None;
        for i in order {
            if self.down_until[i].load(Ordering::Relaxed) <= now {
                return Some((i, self.config.servers[i]));
            }
            fallback.get_or_insert(i);
        }
        fallback.map(|i| (i, self.config.servers[i]))
    }

    pub fn mark_failed(&self, index: usize) {
        if let Some(slot) = self.down_until.get(index) {
            let until = self.now_ms() + self.config.fail_timeout.as_millis() as u64;
            slot.store(until, Ordering::Relaxed);
        }
    }

    /// How to reach `addr`: the pool's connect and read timeouts.
    pub fn peer(&self, addr: SocketAddr) -> HttpPeer {
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.config.connect_timeout);
        peer.options.read_timeout = Some(self.config.read_timeout);
        peer.options.write_timeout = Some(self.config.read_timeout);
        peer
    }

    pub fn len(&self) -> usize {
        self.config.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.config.servers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pool(n: u16) -> Pool {
        Pool::new(Upstream {
            name: "app".into(),
            servers: (0..n)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i)))
                .collect(),
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            fail_timeout: Duration::from_secs(60),
        })
    }

    #[test]
    fn round_robin_skips_failed() {
        let p = pool(3);
        let picks: Vec<usize> = (0..3).map(|_| p.pick(&[]).unwrap().0).collect();
        assert_eq!(picks, vec![0, 1, 2]);
        p.mark_failed(1);
        let picks: Vec<usize> = (0..4).map(|_| p.pick(&[]).unwrap().0).collect();
        assert!(!picks.contains(&1), "{picks:?}");
        assert_eq!(
            p.pick(&[0, 2]).unwrap().0,
            1,
            "a down server is still tried when nothing else is left"
        );
        assert!(p.pick(&[0, 1, 2]).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_server_returns_after_fail_timeout() {
        let p = pool(2);
        p.mark_failed(0);
        assert!((0..4).all(|_| p.pick(&[]).unwrap().0 == 1));
        tokio::time::advance(Duration::from_secs(61)).await;
        let picks: Vec<usize> = (0..2).map(|_| p.pick(&[]).unwrap().0).collect();
        assert!(picks.contains(&0), "{picks:?}");
    }
}

//! Upstream server pools: round robin with passive health. A server that
//! refuses or times out a connection is skipped for `fail_timeout`; when every
//! server is marked down the pool tries them anyway rather than fail closed.
//! Host names are re-resolved while the pool is used (`resolve`).
//!
//! The pool also makes the `HttpPeer` for a server, so the proxy path and
//! the gateway's own requests connect the same way: timeouts, and TLS with
//! the pool's SNI, CAs, verification and ALPN.

use super::resolve::{system_resolver, Resolution, Resolver, Target};
use crate::config::Upstream;
use crate::metrics::{Metrics, UpstreamSeries};
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, WrappedX509};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::time::Instant;

pub struct Pool {
    pub config: Upstream,
    /// The pool's name, shared by every error that mentions it.
    pub name: Arc<str>,
    next: AtomicUsize,
    resolution: Arc<Resolution>,
    born: Instant,
    /// The pool's CAs, parsed once for every connection.
    ca: Option<Arc<[WrappedX509]>>,
    /// Keeps connections of different pools apart even when they share an
    /// address: pingora's reuse key does not include the CAs.
    group: u64,
    /// This pool's metric series, resolved at the first request (a pool
    /// belongs to one gateway, so to one `Metrics`).
    series: OnceLock<UpstreamSeries>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("resolution", &self.resolution)
            .finish_non_exhaustive()
    }
}

impl Pool {
    pub fn new(config: Upstream) -> Pool {
        Self::with_resolver(config, system_resolver())
    }

    pub(crate) fn with_resolver(config: Upstream, resolver: Resolver) -> Pool {
        let born = Instant::now();
        let resolution = Resolution::new(
            config.servers.clone(),
            config.resolve_interval,
            resolver,
            born,
        );
        // ok: `config::load` checked that each certificate parses.
        let ca = config.tls.as_ref().and_then(|t| t.ca.as_ref()).map(|ders| {
            ders.iter()
                .map(|d| WrappedX509::new(d.clone(), parse_x509))
                .collect::<Arc<[WrappedX509]>>()
        });
        if config.tls.as_ref().is_some_and(|t| !t.verify) {
            tracing::warn!(upstream = %config.name, "TLS to this upstream checks no certificate (tls.verify: false)");
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        config.name.hash(&mut h);
        Pool {
            name: config.name.as_str().into(),
            config,
            next: AtomicUsize::new(0),
            resolution,
            born,
            ca,
            group: h.finish(),
            series: OnceLock::new(),
        }
    }

    pub fn series(&self, metrics: &Metrics) -> &UpstreamSeries {
        self.series.get_or_init(|| metrics.upstream(&self.name))
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// The next healthy server not in `tried`, else the next one not in `tried`.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Target> {
        self.resolution.refresh_if_due();
        let targets = self.resolution.targets.load();
        let n = targets.list.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        let order = (0..n)
            .map(|k| (start + k) % n)
            .filter(|i| !tried.contains(&targets.list[*i].addr));
        let mut fallback = None;
        for i in order {
            if targets.down_until[i].load(Ordering::Relaxed) <= now {
                return Some(targets.list[i].clone());
            }
            fallback.get_or_insert(i);
        }
        fallback.map(|i| targets.list[i].clone())
    }

    pub fn mark_failed(&self, addr: SocketAddr) {
        let targets = self.resolution.targets.load();
        if let Some(i) = targets.position(addr) {
            let until = self.now_ms() + self.config.fail_timeout.as_millis() as u64;
            targets.down_until[i].store(until, Ordering::Relaxed);
        }
    }

    /// How to reach `target`: the pool's timeouts and TLS settings.
    pub fn peer(&self, target: &Target) -> HttpPeer {
        let tls = self.config.tls.as_ref();
        let sni = match tls {
            Some(t) => t.sni.clone().unwrap_or_else(|| target.host.to_string()),
            None => String::new(),
        };
        let mut peer = HttpPeer::new(target.addr, tls.is_some(), sni);
        peer.group_key = self.group;
        let o = &mut peer.options;
        o.connection_timeout = Some(self.config.connect_timeout);
        o.read_timeout = Some(self.config.read_timeout);
        o.write_timeout = Some(self.config.read_timeout);
        if let Some(t) = tls {
            // pingora verifies nothing for an empty SNI; ours is never empty.
            o.verify_cert = t.verify;
            o.verify_hostname = t.verify;
            o.ca = self.ca.clone();
            o.alpn = if t.http2 { ALPN::H2H1 } else { ALPN::H1 };
        }
        peer
    }

    /// The `Host` of a request the gateway makes itself: the server's
    /// name as configured, with its port unless it is the scheme's default.
    pub fn authority(&self, target: &Target) -> String {
        let default_port = if self.config.tls.is_some() { 443 } else { 80 };
        let host = if target.host.contains(':') {
            format!("[{}]", target.host)
        } else {
            target.host.to_string()
        };
        match target.port == default_port {
            true => host,
            false => format!("{host}:{}", target.port),
        }
    }

    /// How many addresses the pool has now.
    pub fn len(&self) -> usize {
        self.resolution.targets.load().list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Server;
    use std::sync::Mutex;
    use std::time::Duration;

    fn pool(n: u16) -> Pool {
        Pool::new(Upstream {
            fail_timeout: Duration::from_secs(60),
            ..Upstream::fixed(
                "app",
                (0..n)
                    .map(|i| SocketAddr::from(([127, 0, 0, 1], 1000 + i)))
                    .collect(),
            )
        })
    }

    fn port(t: Option<Target>) -> u16 {
        t.unwrap().addr.port()
    }

    #[test]
    fn round_robin_skips_failed() {
        let p = pool(3);
        let picks: Vec<u16> = (0..3).map(|_| port(p.pick(&[]))).collect();
        assert_eq!(picks, vec![1000, 1001, 1002]);
        p.mark_failed(SocketAddr::from(([127, 0, 0, 1], 1001)));
        let picks: Vec<u16> = (0..4).map(|_| port(p.pick(&[]))).collect();
        assert!(!picks.contains(&1001), "{picks:?}");
        let a = |port| SocketAddr::from(([127, 0, 0, 1], port));
        assert_eq!(
            port(p.pick(&[a(1000), a(1002)])),
            1001,
            "a down server is still tried when nothing else is left"
        );
        assert!(p.pick(&[a(1000), a(1001), a(1002)]).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_server_returns_after_fail_timeout() {
        let p = pool(2);
        p.mark_failed(SocketAddr::from(([127, 0, 0, 1], 1000)));
        assert!((0..4).all(|_| port(p.pick(&[])) == 1001));
        tokio::time::advance(Duration::from_secs(61)).await;
        let picks: Vec<u16> = (0..2).map(|_| port(p.pick(&[]))).collect();
        assert!(picks.contains(&1000), "{picks:?}");
    }

    /// A resolver that answers from a table the test changes.
    fn table(addrs: Arc<Mutex<Option<Vec<SocketAddr>>>>) -> Resolver {
        Arc::new(move |_host, _port| {
            let answer = addrs.lock().unwrap().clone();
            Box::pin(async move { answer.ok_or_else(|| std::io::Error::other("no such host")) })
        })
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn names_are_resolved_again_each_interval_and_keep_their_last_addresses() {
        let a = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let answer = Arc::new(Mutex::new(Some(vec![a(2000)])));
        let up = Upstream {
            servers: vec![Server {
                host: "backend.internal".into(),
                port: 80,
                addrs: vec![a(1000)],
            }],
            resolve_interval: Duration::from_secs(30),
            fail_timeout: Duration::from_secs(120),
            ..Upstream::fixed("app", vec![])
        };
        let p = Pool::with_resolver(up, table(answer.clone()));
        // Until the first interval has passed: what the config resolved.
        assert_eq!(port(p.pick(&[])), 1000);
        settle().await;
        assert_eq!(
            port(p.pick(&[])),
            1000,
            "not resolved again before the interval"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        let t = p.pick(&[]);
        settle().await;
        assert_eq!(
            port(t),
            1000,
            "the pick that starts a resolution does not wait for it"
        );
        let t = p.pick(&[]).unwrap();
        assert_eq!(t.addr.port(), 2000);
        assert_eq!(&*t.host, "backend.internal");
        assert_eq!(p.authority(&t), "backend.internal");

        // DNS fails: the last addresses stay.
        *answer.lock().unwrap() = None;
        tokio::time::advance(Duration::from_secs(31)).await;
        p.pick(&[]);
        settle().await;
        assert_eq!(port(p.pick(&[])), 2000);

        // Two addresses, one marked down: the mark survives a resolution.
        *answer.lock().unwrap() = Some(vec![a(2000), a(2001)]);
        tokio::time::advance(Duration::from_secs(31)).await;
        p.pick(&[]);
        settle().await;
        assert_eq!(p.len(), 2);
        p.mark_failed(a(2000));
        tokio::time::advance(Duration::from_secs(31)).await;
        p.pick(&[]);
        settle().await;
        assert!((0..4).all(|_| port(p.pick(&[])) == 2001));
    }

    #[test]
    fn tls_peers_verify_with_a_name() {
        let mut up = Upstream::fixed("app", vec![SocketAddr::from(([127, 0, 0, 1], 8443))]);
        up.tls = Some(crate::config::UpstreamTls {
            sni: None,
            ca: None,
            verify: true,
            http2: true,
        });
        let p = Pool::new(up);
        let t = p.pick(&[]).unwrap();
        let peer = p.peer(&t);
        assert!(peer.is_tls());
        assert_eq!(peer.sni, "127.0.0.1", "an address stands for itself");
        assert!(peer.options.verify_cert && peer.options.verify_hostname);
        assert_eq!(peer.options.alpn, ALPN::H2H1);
        assert_eq!(p.authority(&t), "127.0.0.1:8443");
    }
}

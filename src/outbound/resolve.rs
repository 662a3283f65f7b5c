//! The addresses behind a pool's `servers:`: host names are resolved again
//! every `resolve_interval` while the pool is in use (a backend behind DNS
//! that moves is followed without a restart). A resolution runs in the
//! background, started by a pick that finds the last one too old, so no
//! request waits for DNS; a name that fails to resolve keeps its last
//! addresses. IP addresses are never resolved.

use crate::config::Server;
use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// `host:port` → its addresses (tokio's `lookup_host`, or a test's table).
pub(crate) type Resolver =
    Arc<dyn Fn(String, u16) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

pub(crate) fn system_resolver() -> Resolver {
    Arc::new(|host, port| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    })
}

/// One address to connect to, and the name it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    /// The server's host as configured (SNI, `Host` of own requests).
    pub host: Arc<str>,
    pub port: u16,
}

/// The current addresses, each with its passive-health mark.
#[derive(Debug)]
pub(crate) struct Targets {
    pub list: Vec<Target>,
    /// Milliseconds since the pool's birth until which each is skipped.
    pub down_until: Vec<AtomicU64>,
}

impl Targets {
    fn new(list: Vec<Target>, old: Option<&Targets>) -> Targets {
        // A server marked down stays down across a resolution.
        let down_until = list
            .iter()
            .map(|t| {
                let was = old
                    .and_then(|o| o.list.iter().position(|x| x.addr == t.addr))
                    .map_or(0, |i| {
                        old.map_or(0, |o| o.down_until[i].load(Ordering::Relaxed))
                    });
                AtomicU64::new(was)
            })
            .collect();
        Targets { list, down_until }
    }

    pub(crate) fn position(&self, addr: SocketAddr) -> Option<usize> {
        self.list.iter().position(|t| t.addr == addr)
    }
}

fn targets_of<'a>(server: &Server, addrs: &'a [SocketAddr]) -> impl Iterator<Item = Target> + 'a {
    let host: Arc<str> = server.host.as_str().into();
    let port = server.port;
    addrs.iter().map(move |a| Target {
        addr: *a,
        host: host.clone(),
        port,
    })
}

/// A pool's addresses and their upkeep.
pub(crate) struct Resolution {
    servers: Vec<Server>,
    pub targets: ArcSwap<Targets>,
    interval: Duration,
    resolver: Resolver,
    born: Instant,
    /// Milliseconds since `born` of the last resolution started.
    last: AtomicU64,
    running: AtomicBool,
}

impl std::fmt::Debug for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolution")
            .field("targets", &self.targets.load().list)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Resolution {
    /// Starting from what the config resolved at load.
    pub(crate) fn new(
        servers: Vec<Server>,
        interval: Duration,
        resolver: Resolver,
        born: Instant,
    ) -> Arc<Resolution> {
        let list = servers
            .iter()
            .flat_map(|s| targets_of(s, &s.addrs))
            .collect();
        Arc::new(Resolution {
            targets: ArcSwap::from_pointee(Targets::new(list, None)),
            servers,
            interval,
            resolver,
            born,
            last: AtomicU64::new(0),
            running: AtomicBool::new(false),
        })
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Start a resolution in the background when the last one is older
    /// than the interval (and none runs).
    pub(crate) fn refresh_if_due(self: &Arc<Self>) {
        if !self.servers.iter().any(Server::is_name) {
            return;
        }
        let now = self.now_ms();
        if now.saturating_sub(self.last.load(Ordering::Relaxed)) < self.interval.as_millis() as u64
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.last.store(now, Ordering::Relaxed);
        let me = self.clone();
        runtime.spawn(async move {
            me.resolve().await;
            me.running.store(false, Ordering::Release);
        });
    }

    /// Resolve every name once; swap the addresses in if they changed.
    pub(crate) async fn resolve(&self) {
        let current = self.targets.load_full();
        let mut list = Vec::new();
        for s in &self.servers {
            if !s.is_name() {
                list.extend(targets_of(s, &s.addrs));
                continue;
            }
            match (self.resolver)(s.host.clone(), s.port).await {
                Ok(addrs) if !addrs.is_empty() => list.extend(targets_of(s, &addrs)),
                outcome => {
                    let why = outcome
                        .err()
                        .map_or("no address".to_string(), |e| e.to_string());
                    tracing::warn!(server = %s.host, error = %why, "cannot resolve upstream server; keeping its last addresses");
                    list.extend(current.list.iter().filter(|t| *t.host == *s.host).cloned());
                }
            }
        }
        if list != current.list {
            tracing::info!(addresses = ?list.iter().map(|t| t.addr).collect::<Vec<_>>(), "upstream servers resolved to new addresses");
            self.targets
                .store(Arc::new(Targets::new(list, Some(&current))));
        }
    }
}

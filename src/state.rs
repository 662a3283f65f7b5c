//! What every handler shares: config, router, hub, metrics, pools, limits.

use crate::auth::expiry::Expiries;
use crate::config::{BrokerKind, Config, RouteKind};
use crate::fetch::Fetcher;
use crate::heartbeat::Heartbeats;
use crate::hub::memory::MemoryBroker;
use crate::hub::redis::{RedisBroker, RedisSettings};
use crate::hub::Broker;
use crate::limits::ConnLimiter;
use crate::metrics::Metrics;
use crate::routing::Router;
use crate::shutdown::Shutdown;
use crate::sources::poll::Pollers;
use crate::upstream::UpstreamPool;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug)]
pub struct Gateway {
    pub config: Arc<Config>,
    pub router: Router,
    pub hub: Arc<dyn Broker>,
    /// The memory broker, for its periodic sweep (None with other brokers).
    pub memory: Option<Arc<MemoryBroker>>,
    /// The Redis broker, whose connection task housekeeping runs.
    pub redis: Option<Arc<RedisBroker>>,
    pub metrics: Arc<Metrics>,
    pub upstreams: HashMap<String, Arc<UpstreamPool>>,
    /// Running pollers of `poll:` routes, keyed by poll channel.
    pub pollers: Arc<Pollers>,
    pub limiter: Arc<ConnLimiter>,
    pub heartbeats: Heartbeats,
    pub shutdown: Shutdown,
    pub started: Instant,
    /// Requests the gateway makes itself: forward auth, GRIP routes.
    pub fetcher: Fetcher,
    /// JWT streams, closed when their token expires.
    pub expiries: Arc<Expiries>,
    next_id: AtomicU64,
}

impl Gateway {
    pub fn new(config: Config) -> Result<Arc<Gateway>, String> {
        let metrics = Arc::new(Metrics::new());
        let router = Router::build(&config.routes).map_err(|p| {
            p.into_iter()
                .map(|(i, m)| format!("route #{}: {m}", i + 1))
                .collect::<Vec<_>>()
                .join("; ")
        })?;
        let (hub, memory, redis): (Arc<dyn Broker>, _, _) = match &config.hub.broker {
            BrokerKind::Memory => {
                let m = Arc::new(MemoryBroker::new(
                    config.hub.history_size,
                    config.hub.history_ttl,
                    metrics.clone(),
                ));
                (m.clone(), Some(m), None)
            }
            BrokerKind::Redis { url, prefix } => {
                let r = RedisBroker::new(
                    RedisSettings {
                        url: url.clone(),
                        prefix: prefix.clone(),
                        history_size: config.hub.history_size,
                        history_ttl: config.hub.history_ttl,
                    },
                    metrics.clone(),
                )?;
                (r.clone(), None, Some(r))
            }
        };
        let upstreams: HashMap<String, Arc<UpstreamPool>> = config
            .upstreams
            .iter()
            .map(|(n, u)| (n.clone(), Arc::new(UpstreamPool::new(u.clone()))))
            .collect();
        let pollers = Pollers::new(
            hub.clone(),
            redis.clone(),
            metrics.clone(),
            upstreams.clone(),
        );
        let fetcher = Fetcher::new(&upstreams)?;
        let mut intervals: BTreeSet<_> = config
            .routes
            .iter()
            .filter_map(|r| match &r.kind {
                RouteKind::Sse(s) => Some(s.settings.heartbeat),
                RouteKind::Proxy { .. } => None,
            })
            .collect();
        intervals.insert(config.sse.heartbeat);
        intervals.insert(crate::admin::DASHBOARD_TICK);
        Ok(Arc::new(Gateway {
            limiter: ConnLimiter::new(
                config.limits.max_connections,
                config.limits.max_connections_per_ip,
            ),
            config: Arc::new(config),
            router,
            hub,
            memory,
            redis,
            metrics,
            upstreams,
            pollers,
            heartbeats: Heartbeats::new(intervals),
            shutdown: Shutdown::new(),
            started: Instant::now(),
            fetcher,
            expiries: Arc::default(),
            next_id: AtomicU64::new(1),
        }))
    }

    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

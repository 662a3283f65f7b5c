//! What every request handler shares, as a few capability handles: the
//! `Site` (everything the config file decides, resolved once: routes bound
//! to their upstream pools and auth), the hub, the pollers, the outbound
//! client, the stream bookkeeping, and metrics.

use crate::auth::expiry::Expiries;
use crate::auth::Guard;
use crate::config::{BrokerKind, Config, GripRoute, Route, RouteKind, SseRoute};
use crate::hub::memory::MemoryBroker;
use crate::hub::redis::{RedisBroker, RedisSettings};
use crate::hub::{Broker, Feed};
use crate::metrics::Metrics;
use crate::outbound::{Client, Pool};
use crate::routing::Router;
use crate::shutdown::Shutdown;
use crate::sources::poll::{PollRoute, Pollers};
use crate::stream::heartbeat::Heartbeats;
use crate::stream::limits::Admission;
use crate::stream::limits::ConnLimiter;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why the gateway could not be built from a valid config.
#[derive(Debug)]
pub enum BuildError {
    Redis(redis::RedisError),
    Persist(crate::hub::persist::PersistError),
    /// A route names an upstream the config does not define (`config::load`
    /// refuses such a file, so only a config built some other way gets here).
    UnknownUpstream(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Redis(e) => write!(f, "bad redis url: {e}"),
            BuildError::Persist(e) => e.fmt(f),
            BuildError::UnknownUpstream(u) => write!(f, "unknown upstream `{u}`"),
        }
    }
}

impl std::error::Error for BuildError {}

#[derive(Debug)]
pub struct Gateway {
    /// Swapped whole by a reload; a request takes it once (`site()`) and
    /// finishes on the one it took.
    site: ArcSwap<Site>,
    pub hub: Arc<dyn Broker>,
    pub pollers: Arc<Pollers>,
    pub client: Arc<Client>,
    pub streams: Streams,
    pub metrics: Arc<Metrics>,
    /// The dashboard's stats, offered to its viewers once a tick.
    pub dashboard: Arc<Feed>,
    pub started: std::time::Instant,
}

/// The bookkeeping of open streams.
#[derive(Debug)]
pub struct Streams {
    pub limiter: Arc<ConnLimiter>,
    pub heartbeats: Heartbeats,
    pub shutdown: Shutdown,
    /// JWT streams, closed when their token expires.
    pub expiries: Arc<Expiries>,
    next_id: AtomicU64,
}

impl Streams {
    /// A subscriber id, unique in this process.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Everything the config file decides, resolved: routes are bound to their
/// pools and auth here, once, so a request never looks an upstream up by name.
#[derive(Debug)]
pub struct Site {
    pub config: Arc<Config>,
    pub router: Router<Arc<RouteEntry>>,
    pub pools: BTreeMap<String, Arc<Pool>>,
    /// `limits.stream_rate`: admission of new streams.
    pub admission: Option<Admission>,
    /// When this config was loaded (shown by /stats and the dashboard).
    pub loaded: std::time::SystemTime,
}

/// A route ready to serve.
#[derive(Debug)]
pub struct RouteEntry {
    pub route: Route,
    pub action: Action,
}

#[derive(Debug)]
pub enum Action {
    Proxy(Arc<Pool>),
    Grip(Arc<Pool>, GripRoute),
    Sse(Box<SseEntry>),
}

/// An sse route with its auth and its poll route resolved.
#[derive(Debug)]
pub struct SseEntry {
    pub sse: SseRoute,
    pub auth: Guard,
    pub poll: Option<Arc<PollRoute>>,
}

impl RouteEntry {
    pub fn label(&self) -> &str {
        &self.route.path
    }

    pub fn is_sse(&self) -> bool {
        matches!(self.action, Action::Sse(_))
    }
}

impl Site {
    pub fn new(config: Config) -> Result<Site, BuildError> {
        let pools: BTreeMap<String, Arc<Pool>> = config
            .upstreams
            .iter()
            .map(|(n, u)| (n.clone(), Arc::new(Pool::new(u.clone()))))
            .collect();
        let pool = |name: &str| -> Result<Arc<Pool>, BuildError> {
            pools
                .get(name)
                .cloned()
                .ok_or_else(|| BuildError::UnknownUpstream(name.to_string()))
        };
        let mut entries: Vec<Arc<RouteEntry>> = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let action = match &r.kind {
                RouteKind::Proxy {
                    upstream,
                    grip: None,
                } => Action::Proxy(pool(upstream)?),
                RouteKind::Proxy {
                    upstream,
                    grip: Some(g),
                } => Action::Grip(pool(upstream)?, g.clone()),
                RouteKind::Sse(s) => {
                    let forward = match &s.auth.forward {
                        Some(f) => Some(pool(&f.upstream)?),
                        None => None,
                    };
                    let poll = match &s.poll {
                        Some(p) => Some(Arc::new(PollRoute {
                            label: r.path.clone(),
                            poll: p.clone(),
                            pool: pool(&p.upstream)?,
                            burst_limit: (s.settings.client_queue / 2).max(1),
                        })),
                        None => None,
                    };
                    Action::Sse(Box::new(SseEntry {
                        auth: Guard::new(&s.auth, forward),
                        poll,
                        sse: (**s).clone(),
                    }))
                }
            };
            entries.push(Arc::new(RouteEntry {
                route: r.clone(),
                action,
            }));
        }
        // The table `config::load` built and checked, bound to these entries.
        let router = config.router.map(|i| entries[*i].clone());
        Ok(Site {
            admission: config
                .limits
                .stream_rate
                .map(|r| Admission::new(r.per_second, r.burst)),
            config: Arc::new(config),
            router,
            pools,
            loaded: std::time::SystemTime::now(),
        })
    }

    /// Every route, for metrics labels and the dashboard.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<RouteEntry>> {
        self.router.values()
    }
}

impl Gateway {
    /// The config in force now.
    pub fn site(&self) -> Arc<Site> {
        self.site.load_full()
    }

    /// Put `site` in force for every request from now on.
    pub fn swap_site(&self, site: Site) {
        let limits = &site.config.limits;
        self.streams
            .limiter
            .set_limits(limits.max_connections, limits.max_connections_per_ip);
        self.site.store(Arc::new(site));
    }

    pub fn new(config: Config) -> Result<Arc<Gateway>, BuildError> {
        let metrics = Arc::new(Metrics::new());
        let hub: Arc<dyn Broker> = match &config.hub.broker {
            BrokerKind::Memory => match &config.hub.persist {
                None => Arc::new(MemoryBroker::new(
                    config.hub.history_size,
                    config.hub.history_ttl,
                    metrics.clone(),
                )),
                Some(p) => Arc::new(
                    MemoryBroker::persistent(
                        config.hub.history_size,
                        config.hub.history_ttl,
                        metrics.clone(),
                        p,
                    )
                    .map_err(BuildError::Persist)?,
                ),
            },
            BrokerKind::Redis { url, prefix } => RedisBroker::new(
                RedisSettings {
                    url: url.clone(),
                    prefix: prefix.clone(),
                    history_size: config.hub.history_size,
                    history_ttl: config.hub.history_ttl,
                },
                metrics.clone(),
            )
            .map_err(BuildError::Redis)?,
        };
        let client = Arc::new(Client::new());
        let limiter = ConnLimiter::new(
            config.limits.max_connections,
            config.limits.max_connections_per_ip,
        );
        Ok(Arc::new(Gateway {
            pollers: Pollers::new(hub.clone(), metrics.clone(), client.clone()),
            site: ArcSwap::from_pointee(Site::new(config)?),
            hub,
            client,
            streams: Streams {
                limiter,
                heartbeats: Heartbeats::new(),
                shutdown: Shutdown::new(),
                expiries: Arc::default(),
                next_id: AtomicU64::new(1),
            },
            metrics,
            dashboard: Arc::default(),
            started: std::time::Instant::now(),
        }))
    }
}

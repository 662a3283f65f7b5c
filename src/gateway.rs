//! What every request handler shares, as a few capability handles: the
//! `Site` (everything the config file decides, resolved once: routes bound
//! to their upstream pools and auth), the hub, the pollers, the outbound
//! client, the stream bookkeeping, and metrics.

use crate::auth::expiry::Expiries;
use crate::auth::Guard;
use crate::config::{
    BrokerKind, Config, GripRoute, Limits, RecordRoute, Route, RouteKind, SseRoute,
};
use crate::hub::memory::MemoryBroker;
use crate::hub::record::memory::MemoryRecords;
use crate::hub::record::Records;
use crate::hub::redis::{RedisBroker, RedisSettings};
use crate::hub::{Broker, Feed};
use crate::metrics::Metrics;
use crate::outbound::{Client, Pool};
use crate::routing::Router;
use crate::shutdown::Shutdown;
use crate::sources::poll::{PollRoute, Pollers};
use crate::stream::heartbeat::Heartbeats;
use crate::stream::limits::Admission;
use crate::stream::limits::{ConnLimiter, FdBudget};
use crate::telemetry::Tracing;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Why the gateway could not be built from a valid config.
#[derive(Debug)]
pub enum BuildError {
    Redis(redis::RedisError),
    Persist(crate::hub::persist::PersistError),
    Telemetry(crate::telemetry::TelemetryError),
    /// A route names an upstream the config does not define (`config::load`
    /// refuses such a file, so only a config built some other way gets here).
    UnknownUpstream(String),
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildError::Redis(e) => write!(f, "bad redis url: {e}"),
            BuildError::Persist(e) => e.fmt(f),
            BuildError::Telemetry(e) => e.fmt(f),
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
    /// Recorded backend replies (`record:` routes), kept where the hub is.
    pub records: Arc<dyn Records>,
    pub pollers: Arc<Pollers>,
    pub client: Arc<Client>,
    pub streams: Streams,
    pub metrics: Arc<Metrics>,
    /// The dashboard's stats, offered to its viewers once a tick.
    pub dashboard: Arc<Feed>,
    pub started: std::time::Instant,
    /// OpenTelemetry spans; None when `telemetry:` is not configured.
    pub telemetry: Option<Arc<Tracing>>,
}

/// The bookkeeping of open streams.
#[derive(Debug)]
pub struct Streams {
    pub limiter: Arc<ConnLimiter>,
    pub heartbeats: Heartbeats,
    pub shutdown: Shutdown,
    /// JWT streams, closed when their token expires.
    pub expiries: Arc<Expiries>,
    /// Where detached streams go in a live upgrade.
    pub(crate) handoff: crate::stream::handoff::Handoff,
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
    /// A proxy route whose SSE replies are recorded for resume.
    Record(Arc<Pool>, RecordRoute),
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
                    record: None,
                } => Action::Proxy(pool(upstream)?),
                RouteKind::Proxy {
                    upstream,
                    grip: Some(g),
                    ..
                } => Action::Grip(pool(upstream)?, g.clone()),
                RouteKind::Proxy {
                    upstream,
                    grip: None,
                    record: Some(r),
                } => Action::Record(pool(upstream)?, r.clone()),
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

/// `limits.max_connections`, or what the open-file limit allows when unset.
fn max_connections(limits: &Limits) -> usize {
    limits
        .max_connections
        .unwrap_or_else(|| FdBudget::current().streams)
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
            .set_limits(max_connections(limits), limits.max_connections_per_ip);
        self.pollers.set_max(limits.max_pollers);
        self.site.store(Arc::new(site));
    }

    pub fn new(config: Config) -> Result<Arc<Gateway>, BuildError> {
        Self::build(config, false)
    }

    /// `run --upgrade`: the hub's files (`hub.persist`) are opened only
    /// once the previous process has handed over (`Broker::open_after_handoff`).
    pub fn taking_over(config: Config) -> Result<Arc<Gateway>, BuildError> {
        Self::build(config, true)
    }

    fn build(config: Config, upgrading: bool) -> Result<Arc<Gateway>, BuildError> {
        let metrics = Arc::new(Metrics::new());
        let (hub, records): (Arc<dyn Broker>, Arc<dyn Records>) = match &config.hub.broker {
            BrokerKind::Memory => {
                let hub = match &config.hub.persist {
                    None => MemoryBroker::new(
                        config.hub.history_size,
                        config.hub.history_ttl,
                        metrics.clone(),
                    ),
                    Some(p) if upgrading => MemoryBroker::persistent_later(
                        config.hub.history_size,
                        config.hub.history_ttl,
                        metrics.clone(),
                        p,
                    ),
                    Some(p) => MemoryBroker::persistent(
                        config.hub.history_size,
                        config.hub.history_ttl,
                        metrics.clone(),
                        p,
                    )
                    .map_err(BuildError::Persist)?,
                };
                let records = Arc::new(MemoryRecords::new(metrics.clone()));
                // hub.persist saves them with the history.
                hub.keep_records(records.clone());
                (Arc::new(hub), records)
            }
            BrokerKind::Redis { url, prefix, ca } => {
                let redis = RedisBroker::new(
                    RedisSettings {
                        url: url.clone(),
                        ca: ca.clone(),
                        prefix: prefix.clone(),
                        history_size: config.hub.history_size,
                        history_ttl: config.hub.history_ttl,
                    },
                    metrics.clone(),
                )
                .map_err(BuildError::Redis)?;
                (redis.clone(), redis)
            }
        };
        let client = Arc::new(Client::new());
        let telemetry = match &config.telemetry {
            Some(t) => Some(Arc::new(Tracing::start(t).map_err(BuildError::Telemetry)?)),
            None => None,
        };
        let max_connections = max_connections(&config.limits);
        if config.limits.max_connections.is_none() {
            tracing::info!(
                files = FdBudget::current().files,
                max_connections,
                "limits.max_connections derived from the open-file limit"
            );
        }
        let limiter = ConnLimiter::new(max_connections, config.limits.max_connections_per_ip);
        Ok(Arc::new(Gateway {
            pollers: Pollers::new(
                hub.clone(),
                metrics.clone(),
                client.clone(),
                telemetry.clone(),
                config.limits.max_pollers,
            ),
            site: ArcSwap::from_pointee(Site::new(config)?),
            hub,
            records,
            client,
            streams: Streams {
                limiter,
                heartbeats: Heartbeats::new(),
                shutdown: Shutdown::new(),
                expiries: Arc::default(),
                handoff: Default::default(),
                next_id: AtomicU64::new(1),
            },
            metrics,
            dashboard: Arc::default(),
            started: std::time::Instant::now(),
            telemetry,
        }))
    }
}

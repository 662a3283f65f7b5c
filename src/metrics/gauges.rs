//! Series read only when `/metrics` is scraped: the hub's figures, whether
//! the broker answers, the drain flag. Also what never changes (build info)
//! and the process collector (open file descriptors first of all: every
//! stream is one).

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

/// The hub's figures of `/stats`, as gauges.
#[derive(Debug, Clone)]
pub struct HubGauges {
    pub channels: IntGauge,
    pub subscriptions: IntGauge,
    pub history_events: IntGauge,
    pub broker_up: IntGauge,
    pub draining: IntGauge,
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("metric"); // ok: static, valid names
    r.register(Box::new(g.clone()))
        .expect("metric registration"); // ok: distinct names
    g
}

impl HubGauges {
    pub(super) fn register(r: &Registry) -> HubGauges {
        register_build_info(r);
        register_process(r);
        HubGauges {
            channels: gauge(
                r,
                "ssegate_hub_channels",
                "Channels the hub knows (with subscribers or history)",
            ),
            subscriptions: gauge(
                r,
                "ssegate_hub_subscriptions",
                "Subscriptions: one per stream per channel",
            ),
            history_events: gauge(
                r,
                "ssegate_hub_history_events",
                "Events kept in history for resume (memory broker)",
            ),
            broker_up: gauge(
                r,
                "ssegate_broker_up",
                "1 when the broker serves subscriptions and publishes",
            ),
            draining: gauge(
                r,
                "ssegate_draining",
                "1 while the gateway drains on shutdown",
            ),
        }
    }

    /// Set from what `/stats` shows.
    pub fn set(
        &self,
        channels: usize,
        subscriptions: usize,
        history: usize,
        up: bool,
        draining: bool,
    ) {
        let n = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.channels.set(n(channels));
        self.subscriptions.set(n(subscriptions));
        self.history_events.set(n(history));
        self.broker_up.set(i64::from(up));
        self.draining.set(i64::from(draining));
    }
}

/// The git revision the binary was built from, when the build knew it.
pub fn revision() -> &'static str {
    option_env!("SSEGATE_GIT_REV")
        .filter(|r| !r.is_empty())
        .unwrap_or("unknown")
}

fn register_build_info(r: &Registry) {
    let info = IntGaugeVec::new(
        Opts::new(
            "ssegate_build_info",
            "Always 1; the labels say which build runs",
        ),
        &["version", "revision"],
    )
    .expect("metric"); // ok: static name
    info.with_label_values(&[env!("CARGO_PKG_VERSION"), revision()])
        .set(1);
    r.register(Box::new(info)).expect("metric registration"); // ok: distinct names
}

/// `process_*`: CPU, memory, open and maximum file descriptors, threads,
/// start time (Linux).
fn register_process(r: &Registry) {
    #[cfg(target_os = "linux")]
    {
        let pc = prometheus::process_collector::ProcessCollector::for_self();
        r.register(Box::new(pc)).expect("metric registration"); // ok: registered once per registry
    }
    #[cfg(not(target_os = "linux"))]
    let _ = r;
}

//! Prometheus metrics of SPEC §5 and §6 "Seeing it", registered once and
//! shared. docs/metrics.md lists every series with its labels.
//!
//! - `gauges`: what is read only when scraped (hub, broker, drain, build).
//! - `timeline`: the last minutes, a point a second, for the dashboard.

mod gauges;
mod timeline;

pub use gauges::{revision, HubGauges};
pub use timeline::{Point, Timeline};

use crate::origin::Source;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// One upstream's pass-through series, looked up once (`Metrics::upstream`)
/// instead of hashing the labels on every proxied request.
#[derive(Debug, Clone)]
pub struct UpstreamSeries {
    pub duration: Histogram,
    /// `ssegate_proxy_responses_total` by class: 1xx..5xx, then "none".
    by_class: [IntCounter; 6],
}

impl UpstreamSeries {
    /// The response counter for `status` (0 when none was written).
    pub fn responses(&self, status: u16) -> &IntCounter {
        let i = match status {
            100..=599 => usize::from(status / 100 - 1),
            _ => 5,
        };
        &self.by_class[i]
    }
}

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open SSE streams per route.
    pub connections: IntGaugeVec,
    pub connections_opened: IntCounterVec,
    pub published: IntCounter,
    pub duplicates: IntCounter,
    pub delivered: IntCounter,
    /// Frames not delivered, by reason (slow_client, ...).
    pub dropped: IntCounterVec,
    pub slow_disconnects: IntCounter,
    /// Publish → written to the client socket.
    pub latency: Histogram,
    /// Refused requests by status.
    pub refused: IntCounterVec,
    pub proxied: IntCounterVec,
    pub poll_requests: IntCounterVec,
    pub poll_changes: IntCounterVec,
    pub poll_errors: IntCounterVec,
    /// Upstream poll request duration per route, failures included.
    pub poll_duration: HistogramVec,
    pub pollers: IntGauge,
    pub webhooks: IntCounterVec,
    /// Certificate reloads on SIGHUP, by result (ok, error).
    pub tls_reloads: IntCounterVec,
    /// `hub.persist` saves by kind (delta, checkpoint) and result (ok, error).
    pub persist_saves: IntCounterVec,
    pub persist_seconds: HistogramVec,
    /// How the saved history was found at start (fresh, corrupt, clean, unclean).
    pub persist_starts: IntCounterVec,
    /// The newest cursor (its sequence number) on disk: how far behind the
    /// hub it is says what an unclean stop would lose.
    pub persist_saved: IntGauge,
    /// Received → written to a client, one per event source
    /// (`Source::EVENTS` order), resolved once: no label lookup per delivery.
    event_age: [Histogram; 5],
    /// Pass-through and GRIP requests, first byte in → response done, per upstream.
    pub proxy_duration: HistogramVec,
    /// Auth decisions by kind (jwt, forward) and outcome (allow, deny, error).
    pub auth: IntCounterVec,
    /// Forward-auth answers by where they came from (hit, miss, coalesced).
    pub auth_cache: IntCounterVec,
    /// Unix time at which the served TLS certificate expires.
    pub tls_expiry: IntGauge,
    /// Set from the hub and the drain flag at each scrape.
    pub hub: HubGauges,
    /// The dashboard's charts: sampled once a second.
    pub timeline: std::sync::Arc<Timeline>,
    /// Backend SSE replies recorded, per route.
    pub records_started: IntCounterVec,
    /// Events read from backends into records.
    pub record_events: IntCounter,
    /// Records ended, by reason (complete, backend-error, max-events, ttl, …).
    pub record_ends: IntCounterVec,
    /// Requests answered from a record, by result (stream, no_content).
    pub record_resumes: IntCounterVec,
    /// Records dropped to keep their route within `max_total`.
    pub record_evictions: IntCounter,
    /// Records held in this process, and their frames' bytes (memory store).
    pub records_held: IntGauge,
    pub record_bytes: IntGauge,
    /// Public connections waiting for a request head (`http::gate`).
    pub waiting: IntGauge,
    /// Connections closed before a request, by reason.
    pub turned_away: IntCounterVec,
    /// Config reloads on SIGHUP, by result (ok, error).
    pub config_reloads: IntCounterVec,
    /// New streams told to come back later (`limits.stream_rate`).
    pub streams_deferred: IntCounter,
    /// Streams this process took over from the one it replaced (live upgrade).
    pub streams_adopted: IntCounter,
}

/// Buckets of the latency histograms, in seconds: 100 µs to 30 s.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // ok: every name below is distinct and valid, so registering cannot fail.
    r.register(Box::new(m.clone()))
        .expect("metric registration"); // ok: static, distinct metric names
    m
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn upstream(&self, name: &str) -> UpstreamSeries {
        let by = |class: &str| self.proxied.with_label_values(&[name, class]);
        UpstreamSeries {
            duration: self.proxy_duration.with_label_values(&[name]),
            by_class: ["1xx", "2xx", "3xx", "4xx", "5xx", "none"].map(by),
        }
    }

    pub fn new() -> Metrics {
        let r = Registry::new();
        let counter =
            |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("metric")); // ok: static names
        let cvec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("metric"), // ok: static, distinct metric names
            ) // ok: static names
        };
        Metrics {
            connections: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("ssegate_connections", "Open SSE streams per route"),
                    &["route"],
                )
                .expect("metric"), // ok: static names
            ),
            connections_opened: cvec(
                "ssegate_connections_opened_total",
                "SSE streams opened per route",
                &["route"],
            ),
            published: counter(
                "ssegate_events_published_total",
                "Events accepted by the hub",
            ),
            duplicates: counter(
                "ssegate_events_duplicate_total",
                "Events dropped as duplicates of a publisher id",
            ),
            delivered: counter(
                "ssegate_events_delivered_total",
                "Event frames written to clients",
            ),
            dropped: cvec(
                "ssegate_events_dropped_total",
                "Event frames not delivered, by reason",
                &["reason"],
            ),
            slow_disconnects: counter(
                "ssegate_slow_client_disconnects_total",
                "Clients disconnected because their queue filled",
            ),
            latency: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "ssegate_delivery_latency_seconds",
                        "Publish to socket write latency",
                    )
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5,
                    ]),
                )
                .expect("metric"), // ok: static buckets
            ),
            refused: cvec(
                "ssegate_requests_refused_total",
                "Requests refused by the gateway, by status and kind of refusal",
                &["status", "reason"],
            ),
            proxied: cvec(
                "ssegate_proxy_responses_total",
                "Pass-through responses by upstream and status class",
                &["upstream", "class"],
            ),
            poll_requests: cvec(
                "ssegate_poll_requests_total",
                "Upstream poll requests",
                &["route"],
            ),
            poll_changes: cvec(
                "ssegate_poll_changes_total",
                "Polls that found a change",
                &["route"],
            ),
            poll_errors: cvec("ssegate_poll_errors_total", "Failed polls", &["route"]),
            poll_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ssegate_poll_duration_seconds",
                        "Upstream poll request duration",
                    )
                    .buckets(vec![
                        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                        10.0,
                    ]),
                    &["route"],
                )
                .expect("metric"), // ok: static name and buckets
            ),
            pollers: reg(
                &r,
                IntGauge::new("ssegate_pollers_active", "Running pollers").expect("metric"), // ok: static, distinct metric names
            ), // ok: static name
            webhooks: cvec(
                "ssegate_webhooks_total",
                "Webhook requests by path and outcome",
                &["path", "outcome"],
            ),
            tls_reloads: cvec(
                "ssegate_tls_reloads_total",
                "TLS certificate reloads on SIGHUP, by result",
                &["result"],
            ),
            persist_saves: cvec(
                "ssegate_persist_saves_total",
                "hub.persist saves by kind (delta, checkpoint) and result",
                &["kind", "result"],
            ),
            persist_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ssegate_persist_save_seconds",
                        "hub.persist save duration (write and fsync, off the hub lock)",
                    )
                    .buckets(vec![
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ]),
                    &["kind"],
                )
                .expect("metric"), // ok: static name and buckets
            ),
            persist_starts: cvec(
                "ssegate_persist_starts_total",
                "How hub.persist found the saved history at start",
                &["state"],
            ),
            persist_saved: reg(
                &r,
                IntGauge::new(
                    "ssegate_persist_saved_cursor",
                    "Sequence number of the newest cursor hub.persist has on disk",
                )
                .expect("metric"), // ok: static name
            ),
            event_age: {
                let v = reg(
                    &r,
                    HistogramVec::new(
                        HistogramOpts::new(
                            "ssegate_event_age_seconds",
                            "From when the gateway received an event to each write of it to a client",
                        )
                        .buckets(LATENCY_BUCKETS.to_vec()),
                        &["source"],
                    )
                    .expect("metric"), // ok: static name and buckets
                );
                Source::EVENTS.map(|s| v.with_label_values(&[s.label()]))
            },
            proxy_duration: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "ssegate_proxy_request_duration_seconds",
                        "Proxied requests (pass-through and GRIP), from the request to the end of the response",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["upstream"],
                )
                .expect("metric"), // ok: static name and buckets
            ),
            auth: cvec(
                "ssegate_auth_decisions_total",
                "Subscriber auth decisions by kind (jwt, forward) and outcome (allow, deny, error)",
                &["kind", "outcome"],
            ),
            auth_cache: cvec(
                "ssegate_forward_auth_lookups_total",
                "Forward-auth answers by where they came from: hit (cache), miss (backend), coalesced (joined a request in flight)",
                &["result"],
            ),
            tls_expiry: reg(
                &r,
                IntGauge::new(
                    "ssegate_tls_certificate_expiry_timestamp_seconds",
                    "Unix time at which the certificate served on the public listener expires",
                )
                .expect("metric"), // ok: static name
            ),
            hub: HubGauges::register(&r),
            timeline: std::sync::Arc::default(),
            records_started: cvec(
                "ssegate_records_started_total",
                "Backend SSE replies recorded, per route",
                &["route"],
            ),
            record_events: counter(
                "ssegate_record_events_total",
                "Events read from backends into records",
            ),
            record_ends: cvec(
                "ssegate_records_ended_total",
                "Records ended, by reason",
                &["reason"],
            ),
            record_resumes: cvec(
                "ssegate_record_resumes_total",
                "Requests answered from a record, by result",
                &["result"],
            ),
            record_evictions: counter(
                "ssegate_records_evicted_total",
                "Records dropped to keep their route within max_total",
            ),
            records_held: reg(
                &r,
                IntGauge::new("ssegate_records", "Records held in this process").expect("metric"), // ok: static name
            ),
            record_bytes: reg(
                &r,
                IntGauge::new(
                    "ssegate_record_bytes",
                    "Bytes of the records held in this process",
                )
                .expect("metric"), // ok: static name
            ),
            waiting: reg(
                &r,
                IntGauge::new(
                    "ssegate_connections_waiting",
                    "Public connections waiting for a request head",
                )
                .expect("metric"), // ok: static, distinct metric names
            ),
            turned_away: cvec(
                "ssegate_connections_turned_away_total",
                "Public connections closed before a request (header_timeout, idle_timeout, head_too_large, evicted)",
                &["reason"],
            ),
            config_reloads: cvec(
                "ssegate_config_reloads_total",
                "Config reloads on SIGHUP, by result",
                &["result"],
            ),
            streams_deferred: counter(
                "ssegate_streams_deferred_total",
                "New SSE streams over limits.stream_rate, told to retry later",
            ),
            streams_adopted: counter(
                "ssegate_streams_adopted_total",
                "SSE streams taken over, connection and all, from the process this one replaced",
            ),
            registry: r,
        }
    }

    /// The event-age histogram of `source`; None for the gateway's own frames.
    pub fn event_age(&self, source: Source) -> Option<&Histogram> {
        let i = match source {
            Source::Publish => 0,
            Source::Grip => 1,
            Source::Webhook => 2,
            Source::Poll => 3,
            Source::Record => 4,
            Source::Gateway => return None,
        };
        self.event_age.get(i)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }

    /// `reason` is a fixed word naming the kind of refusal, never request data.
    pub fn refuse(&self, status: u16, reason: &'static str) {
        self.refused
            .with_label_values(&[status_label(status), reason])
            .inc();
    }
}

fn status_label(s: u16) -> &'static str {
    match s {
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        413 => "413",
        429 => "429",
        502 => "502",
        503 => "503",
        504 => "504",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_upstream_s_responses_count_under_their_class() {
        let m = super::Metrics::new();
        let s = m.upstream("app");
        for status in [101, 204, 304, 404, 503, 0, 600] {
            s.responses(status).inc();
        }
        let got = |class: &str| m.proxied.with_label_values(&["app", class]).get();
        let all = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"].map(got);
        assert_eq!(all, [1, 1, 1, 1, 1, 2]);
    }
}

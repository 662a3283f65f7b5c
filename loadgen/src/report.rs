//! Run report: one struct, printed as text or as a single JSON object.

use crate::procstat::MemSample;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Default, Serialize)]
pub struct Quantiles {
    pub count: u64,
    pub p50: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p90: Option<f64>,
    pub p99: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p999: Option<f64>,
    pub max: f64,
}

/// Quantiles in milliseconds from a histogram recorded in microseconds.
pub fn quantiles_ms(h: &Histogram<u64>, full: bool) -> Option<Quantiles> {
    if h.is_empty() {
        return None;
    }
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Some(Quantiles {
        count: h.len(),
        p50: ms(0.5),
        p90: full.then(|| ms(0.9)),
        p99: ms(0.99),
        p999: full.then(|| ms(0.999)),
        max: h.max() as f64 / 1000.0,
    })
}

#[derive(Debug, Default, Serialize)]
pub struct ServerStats {
    pub pids: Vec<u32>,
    pub before_connect: Option<MemSample>,
    pub after_connect: Option<MemSample>,
    pub per_conn_rss_bytes: Option<f64>,
    pub per_conn_pss_bytes: Option<f64>,
    /// `idle`: memory again at the end of the hold, once transient buffers of
    /// the connect storm are freed (steady-state cost of an idle stream).
    pub after_hold: Option<MemSample>,
    pub per_conn_pss_bytes_after_hold: Option<f64>,
    /// Server CPU (utime+stime) as % of one core, per phase.
    pub cpu_pct: BTreeMap<String, f64>,
    pub cpu_seconds: BTreeMap<String, f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    pub subscribers_requested: usize,
    pub subscribers_streaming: usize,
    pub subscribers_failed: usize,
    pub subscribers_ended_early: usize,
    pub connect_all_streaming_s: f64,
    pub channels: Option<usize>,
    pub events_requested: Option<u64>,
    pub events_published: Option<u64>,
    pub events_publish_failed: Option<u64>,
    pub publish_requests: Option<u64>,
    pub publish_statuses: Option<BTreeMap<u16, u64>>,
    pub publish_duration_s: Option<f64>,
    pub publish_rate_eps: Option<f64>,
    pub deliveries_expected: Option<u64>,
    pub deliveries_received: Option<u64>,
    pub missing: Option<u64>,
    pub duplicates: Option<u64>,
    pub unexpected: Option<u64>,
    pub non_probe_events: Option<u64>,
    pub drain_timed_out: Option<bool>,
    pub delivery_window_s: Option<f64>,
    pub deliveries_per_s: Option<f64>,
    pub latency_ms: Option<Quantiles>,
    pub last_subscriber_latency_ms: Option<Quantiles>,
    pub hold_s: Option<f64>,
    /// This load generator's own CPU during publish+drain, % of one core.
    pub client_cpu_pct: Option<f64>,
    pub server: Option<ServerStats>,
    /// RLIMIT_NOFILE soft limit of the load generator after raising it.
    pub loadgen_nofile: u64,
    pub errors: Vec<String>,
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> Option<String> {
    v.as_ref().map(|x| x.to_string())
}

impl Report {
    pub fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("report serializes")
            );
            return;
        }
        let mut lines: Vec<(String, String)> = Vec::new();
        let mut add = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                lines.push((k.to_string(), v));
            }
        };
        add("mode", Some(self.mode.clone()));
        add(
            "subscribers",
            Some(format!(
                "{} requested, {} streaming, {} failed, {} ended early",
                self.subscribers_requested,
                self.subscribers_streaming,
                self.subscribers_failed,
                self.subscribers_ended_early
            )),
        );
        add(
            "all streaming within",
            Some(format!("{:.3} s", self.connect_all_streaming_s)),
        );
        add("channels", opt(&self.channels));
        add("events requested", opt(&self.events_requested));
        add("events published (2xx)", opt(&self.events_published));
        add("events publish failed", opt(&self.events_publish_failed));
        add("publish requests", opt(&self.publish_requests));
        add(
            "publish statuses",
            self.publish_statuses.as_ref().map(|m| format!("{m:?}")),
        );
        add(
            "publish duration",
            self.publish_duration_s.map(|v| format!("{v:.3} s")),
        );
        add(
            "publish rate",
            self.publish_rate_eps.map(|v| format!("{v:.1} events/s")),
        );
        add("deliveries expected", opt(&self.deliveries_expected));
        add("deliveries received", opt(&self.deliveries_received));
        add("missing", opt(&self.missing));
        add("duplicates", opt(&self.duplicates));
        add("unexpected seqs", opt(&self.unexpected));
        add("non-probe events", opt(&self.non_probe_events));
        add("drain timed out", opt(&self.drain_timed_out));
        add(
            "delivery window",
            self.delivery_window_s.map(|v| format!("{v:.3} s")),
        );
        add(
            "deliveries/s",
            self.deliveries_per_s.map(|v| format!("{v:.1}")),
        );
        if let Some(q) = &self.latency_ms {
            add(
                "latency ms",
                Some(format!(
                    "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
                    q.p50,
                    q.p90.unwrap_or(0.0),
                    q.p99,
                    q.p999.unwrap_or(0.0),
                    q.max,
                    q.count
                )),
            );
        }
        if let Some(q) = &self.last_subscriber_latency_ms {
            add(
                "last-subscriber latency ms",
                Some(format!(
                    "p50 {:.3}  p99 {:.3}  max {:.3}  (events={})",
                    q.p50, q.p99, q.max, q.count
                )),
            );
        }
        add(
            "loadgen RLIMIT_NOFILE",
            Some(self.loadgen_nofile.to_string()),
        );
        add("hold", self.hold_s.map(|v| format!("{v:.1} s")));
        add(
            "loadgen CPU publish+drain",
            self.client_cpu_pct.map(|v| format!("{v:.1}% of one core")),
        );
        if let Some(s) = &self.server {
            add("server pids", Some(format!("{:?}", s.pids)));
            let mem = |m: &Option<MemSample>| {
                m.map(|m| format!("RSS {} kB, PSS {} kB", m.rss_kb, m.pss_kb))
            };
            add("server mem before connect", mem(&s.before_connect));
            add("server mem after connect", mem(&s.after_connect));
            add(
                "server mem per connection",
                s.per_conn_rss_bytes.map(|r| {
                    format!(
                        "RSS {:.0} B, PSS {:.0} B",
                        r,
                        s.per_conn_pss_bytes.unwrap_or(0.0)
                    )
                }),
            );
            for (phase, pct) in &s.cpu_pct {
                add(
                    &format!("server CPU {phase}"),
                    Some(format!(
                        "{pct:.1}% of one core ({:.2} s CPU)",
                        s.cpu_seconds.get(phase).copied().unwrap_or(0.0)
                    )),
                );
            }
        }
        let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in lines {
            println!("{k:<w$} : {v}");
        }
        for e in &self.errors {
            println!("error: {e}");
        }
    }
}

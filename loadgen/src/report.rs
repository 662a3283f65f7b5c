//! Run report: one struct, printed as text or as a single JSON object.

use crate::procstat::{MemSample, Samples};
use crate::redis::RedisReport;
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

/// The storm: everyone dropped at once, then reconnecting at once.
#[derive(Debug, Default, Serialize)]
pub struct StormReport {
    /// Streaming before the drop (of `subscribers_requested`).
    pub streaming_before: usize,
    /// Seconds for every subscriber to let go of its connection.
    pub drop_s: f64,
    /// Reconnects spread uniformly over this many ms (0 = all at once).
    pub spread_ms: u64,
    /// Streaming again (prelude received) after the drop.
    pub streaming_again: usize,
    /// Seconds from the reconnect signal until all stream again; null when
    /// some never did (see `gave_up`, `statuses`).
    pub all_streaming_again_s: Option<f64>,
    /// Per subscriber: ms from the reconnect signal to streaming.
    pub reconnect_ms: Option<Quantiles>,
    pub gave_up: usize,
    pub attempts: u64,
    /// Attempts that carried a `Last-Event-ID` (the server had given an id).
    pub with_last_event_id: u64,
    pub network_errors: u64,
    /// 200 answers holding only `retry:` (deferred admission), each followed
    /// by a reconnect after the retry it gave.
    pub deferred: u64,
    pub empty_answers: u64,
    pub ended_after_streaming: u64,
    pub wrong_content_type: u64,
    /// Non-200 answers by status during the storm.
    pub statuses: BTreeMap<u16, u64>,
    /// Answers with a 5xx status: EventSource gives up on those.
    pub status_5xx: u64,
    /// Server RSS and CPU sampled from the drop until `--after` seconds
    /// past the end of the storm.
    pub server: Option<Samples>,
    /// Server CPU from the drop until all stream again (or the deadline),
    /// % of one core.
    pub server_cpu_pct_storm: Option<f64>,
    /// HTTP/2 connections opened during the storm.
    pub h2_reconnects: Option<u64>,
    /// This load generator's CPU from the drop until all stream again, % of
    /// one core: near 200 % on this 2-core box means the client limits the
    /// figure (TLS handshakes are paid on both sides).
    pub client_cpu_pct: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub mode: String,
    /// h1, h1-tls, h2c or h2-tls.
    pub transport: String,
    pub h2_connections: Option<usize>,
    /// Gateway instances (distinct --sse-url) and load generator processes.
    pub instances: usize,
    pub procs: usize,
    /// Seed of the randomness (reconnect spread); rerun with --seed.
    pub seed: u64,
    pub subscribers_requested: usize,
    pub subscribers_streaming: usize,
    pub subscribers_failed: usize,
    pub subscribers_ended_early: usize,
    pub connect_all_streaming_s: f64,
    /// Non-200 answers while connecting (by status) and network errors.
    pub subscribe_statuses: BTreeMap<u16, u64>,
    pub subscribe_network_errors: u64,
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
    /// `idle`: frames (blank lines: heartbeats, pings) received per stream
    /// during the hold, and the mean interval they imply.
    pub hold_frames_per_stream: Option<f64>,
    pub heartbeat_interval_s: Option<f64>,
    pub storm: Option<StormReport>,
    pub redis: Option<RedisReport>,
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
        add("transport", Some(self.transport.clone()));
        add("h2 connections", opt(&self.h2_connections));
        if self.procs > 1 || self.instances > 1 {
            add(
                "instances / processes",
                Some(format!("{} / {}", self.instances, self.procs)),
            );
        }
        add("seed", Some(self.seed.to_string()));
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
        if !self.subscribe_statuses.is_empty() || self.subscribe_network_errors > 0 {
            add(
                "subscribe failures",
                Some(format!(
                    "statuses {:?}, network errors {}",
                    self.subscribe_statuses, self.subscribe_network_errors
                )),
            );
        }
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
            "frames per stream in hold",
            self.hold_frames_per_stream.map(|v| format!("{v:.2}")),
        );
        add(
            "heartbeat interval seen",
            self.heartbeat_interval_s.map(|v| format!("{v:.1} s")),
        );
        if let Some(st) = &self.storm {
            add(
                "storm: streaming before drop",
                Some(st.streaming_before.to_string()),
            );
            add("storm: drop took", Some(format!("{:.3} s", st.drop_s)));
            add("storm: spread", Some(format!("{} ms", st.spread_ms)));
            add(
                "storm: all streaming again",
                Some(match st.all_streaming_again_s {
                    Some(v) => format!("{v:.3} s"),
                    None => format!(
                        "NO ({} streaming, {} gave up)",
                        st.streaming_again, st.gave_up
                    ),
                }),
            );
            if let Some(q) = &st.reconnect_ms {
                add(
                    "storm: time to stream ms",
                    Some(format!(
                        "p50 {:.0}  p90 {:.0}  p99 {:.0}  max {:.0}",
                        q.p50,
                        q.p90.unwrap_or(0.0),
                        q.p99,
                        q.max
                    )),
                );
            }
            add(
                "storm: attempts",
                Some(format!(
                    "{} ({} with Last-Event-ID, {} network errors, {} deferred retry-only, {} empty, {} ended after streaming)",
                    st.attempts,
                    st.with_last_event_id, st.network_errors, st.deferred, st.empty_answers, st.ended_after_streaming
                )),
            );
            add("storm: statuses", Some(format!("{:?}", st.statuses)));
            if st.status_5xx > 0 {
                add(
                    "storm: 5xx ANSWERS",
                    Some(format!("{} (EventSource gives up on these)", st.status_5xx)),
                );
            }
            if let Some(sv) = &st.server {
                add(
                    "storm: server RSS",
                    Some(format!(
                        "start {} kB, peak {} kB, end {} kB",
                        sv.rss_start_kb, sv.rss_peak_kb, sv.rss_end_kb
                    )),
                );
                add(
                    "storm: server CPU",
                    Some(format!(
                        "avg {:.1}%, peak {:.1}% of one core ({} ms samples, {:.1} s)",
                        sv.cpu_pct_avg, sv.cpu_pct_peak, sv.interval_ms, sv.wall_s
                    )),
                );
            }
            add(
                "storm: server CPU drop→all streaming",
                st.server_cpu_pct_storm
                    .map(|v| format!("{v:.1}% of one core")),
            );
            add("storm: h2 connections opened", opt(&st.h2_reconnects));
            add(
                "storm: loadgen CPU",
                Some(format!("{:.1}% of one core", st.client_cpu_pct)),
            );
        }
        if let Some(rd) = &self.redis {
            add(
                "redis commands",
                Some(format!(
                    "{} total, {} per event: {:?}",
                    rd.commands_total,
                    rd.commands_per_event
                        .map(|v| format!("{v:.2}"))
                        .unwrap_or_else(|| "-".into()),
                    rd.commands
                )),
            );
            add(
                "redis CPU",
                rd.cpu_pct.map(|v| {
                    format!(
                        "{v:.1}% of one core ({:.2} s)",
                        rd.cpu_seconds.unwrap_or(0.0)
                    )
                }),
            );
        }
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

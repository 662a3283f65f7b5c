//! The pieces every mode shares: building subscribers for a transport,
//! opening them (bounded), measuring the server, publishing and draining,
//! and turning what the subscribers saw into a report.

use crate::conn::{H2Slot, Opener, Transport};
use crate::publish::{self, PubCfg, PubResult};
use crate::report::{quantiles_ms, Report, ServerStats};
use crate::sse_client::{
    self, lock, new_histogram, Action, Ctl, Policy, Shared, SubResult, SubSpec,
};
use crate::{group, procstat, target, tls, SubArgs};
use hdrhistogram::Histogram;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};

pub fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, 86_400.0))
}

/// The transport the options ask for, and its name for the report.
pub fn transport(a: &SubArgs) -> Result<(Arc<Transport>, String), String> {
    let first = a.sse_url.first().ok_or("--sse-url is required")?;
    let tls_url = target::parse_url(&target::substitute(first, 0, "x"))?.tls;
    for u in &a.sse_url {
        if target::parse_url(&target::substitute(u, 0, "x"))?.tls != tls_url {
            return Err("--sse-url: mix of http:// and https:// URLs".into());
        }
    }
    let trust = match (&a.ca, a.insecure) {
        (Some(_), true) => return Err("--ca and --insecure exclude each other".into()),
        (Some(f), false) => Some(tls::Trust::CaFile(f.clone())),
        (None, true) => Some(tls::Trust::Insecure),
        (None, false) => None,
    };
    let tls = if tls_url {
        let trust = trust.ok_or("https:// needs --ca FILE or --insecure")?;
        let alpn = if a.h2 { tls::ALPN_H2 } else { tls::ALPN_H1 };
        Some(tls::client_config(&trust, alpn)?)
    } else {
        None
    };
    let name = match (a.h2, tls_url) {
        (false, false) => "h1",
        (false, true) => "h1-tls",
        (true, false) => "h2c",
        (true, true) => "h2-tls",
    };
    Ok((
        Arc::new(Transport {
            h2: a.h2,
            tls,
            connect_timeout: secs(a.connect_timeout),
            header_timeout: secs(a.header_timeout),
            h2_stream_window: a.h2_window,
            h2_conn_window: a.h2_conn_window,
        }),
        name.into(),
    ))
}

/// One subscriber to build: its global index, URL, and seq stride/offset.
pub struct Want {
    pub index: usize,
    pub url: String,
    pub stride: u64,
    pub offset: u64,
}

/// Subscribers ready to spawn, and the HTTP/2 connections they share.
pub struct Built {
    pub specs: Vec<SubSpec>,
    pub slots: Vec<Arc<H2Slot>>,
    pub transport: String,
}

/// Streams per HTTP/2 connection: `--conns` spreads `n` evenly, otherwise
/// `--streams-per-conn`.
pub fn streams_per_conn(a: &SubArgs, n: usize) -> usize {
    match a.conns {
        Some(c) if c > 0 => n.div_ceil(c).max(1),
        _ => a.streams_per_conn.max(1),
    }
}

pub fn build(
    a: &SubArgs,
    policy: Arc<Policy>,
    events: u64,
    wants: Vec<Want>,
) -> Result<Built, String> {
    let sources: Vec<Ipv4Addr> = target::parse_sources(&a.sources)?;
    let (tr, name) = transport(a)?;
    let per_conn = streams_per_conn(a, wants.len());
    let mut slots: Vec<Arc<H2Slot>> = Vec::new();
    // Per authority: the slot being filled and how many streams it has.
    let mut filling: Vec<(std::net::SocketAddr, String, Arc<H2Slot>, usize)> = Vec::new();
    let mut specs = Vec::with_capacity(wants.len());
    for w in wants {
        let t = target::parse_url(&w.url)?;
        let (src, opener) = if tr.h2 {
            let pos = filling
                .iter()
                .position(|f| f.0 == t.addr && f.1 == t.host_header && f.3 < per_conn);
            let pos = match pos {
                Some(p) => p,
                None => {
                    let src = sources[slots.len() % sources.len()];
                    let slot = H2Slot::new(tr.clone(), t.clone(), Some(src), per_conn);
                    slots.push(slot.clone());
                    filling.retain(|f| !(f.0 == t.addr && f.1 == t.host_header));
                    filling.push((t.addr, t.host_header.clone(), slot, 0));
                    filling.len() - 1
                }
            };
            filling[pos].3 += 1;
            (None, Opener::H2(filling[pos].2.clone()))
        } else {
            (
                Some(sources[w.index % sources.len()]),
                Opener::H1(tr.clone()),
            )
        };
        specs.push(SubSpec {
            index: w.index,
            target: t,
            src,
            opener,
            events,
            stride: w.stride,
            offset: w.offset,
            policy: policy.clone(),
        });
    }
    Ok(Built {
        specs,
        slots,
        transport: name,
    })
}

/// URL of subscriber `i`: round robin over the `--sse-url`s.
pub fn url_for(a: &SubArgs, i: usize, ch: &str) -> String {
    let u = &a.sse_url[i % a.sse_url.len().max(1)];
    target::substitute(u, i, ch)
}

/// Subscribers `range` (global indexes), all on `channel`.
pub fn on_channel(a: &SubArgs, range: std::ops::Range<usize>, channel: &str) -> Vec<Want> {
    range
        .map(|i| Want {
            index: i,
            url: url_for(a, i, channel),
            stride: 1,
            offset: 0,
        })
        .collect()
}

/// Build and open the subscribers, measuring the server around the connect.
pub async fn connect_measured(
    a: &SubArgs,
    server: &mut Server,
    policy: Arc<Policy>,
    events: u64,
    wants: Vec<Want>,
) -> Result<Opened, String> {
    let built = build(a, policy.clone(), events, wants)?;
    server.stats.before_connect = server.mem();
    server.cpu_start();
    let mut o = open_subscribers(a, events, built).await;
    o.seed = policy.seed;
    server.cpu_end("connect");
    server.after_connect(o.shared.streaming());
    Ok(o)
}

/// The fields every single-process report ends with.
pub fn finish_report(r: &mut Report, o: &Opened, server: Server, a: &SubArgs) {
    copy_errors(r, &o.shared);
    r.server = server.finish();
    r.seed = o.seed;
    r.instances = crate::distinct_urls(a);
    r.procs = 1;
}

/// Subscribers that have been opened, plus the means to control them.
pub struct Opened {
    pub shared: Arc<Shared>,
    pub groups: Vec<group::Group>,
    /// Subscribers in all groups.
    pub subscribers: usize,
    pub ctl: watch::Sender<Ctl>,
    pub slots: Vec<Arc<H2Slot>>,
    pub transport: String,
    pub all_streaming_s: f64,
    pub seed: u64,
    /// Limits connection setups in flight (`--connect-concurrency`).
    pub sem: Arc<Semaphore>,
    pub concurrency: usize,
}

impl Opened {
    pub fn n(&self) -> usize {
        self.subscribers
    }

    /// Wait (bounded) until every subscriber of generation `gen` streams or
    /// gave up. Returns false at the deadline.
    pub async fn wait_resolved(&self, gen: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let n = self.n();
        loop {
            let up = self.shared.gens[gen].resolved();
            if up >= n {
                return true;
            }
            if Instant::now() >= deadline {
                self.shared.note_error(format!(
                    "deadline reached with {up}/{n} subscribers resolved (generation {gen})"
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Allow `c` connection setups in flight from now on (0 = no limit).
    pub fn set_concurrency(&mut self, c: usize) {
        let want = if c == 0 { self.n().max(1) } else { c };
        if want > self.concurrency {
            self.sem.add_permits(want - self.concurrency);
            self.concurrency = want;
        }
    }

    /// Seconds from the start of generation `gen` to its last streaming one.
    pub fn all_streaming_s(&self, gen: usize) -> f64 {
        let g = &self.shared.gens[gen];
        let (s, l) = (
            g.start_ns.load(Ordering::Acquire),
            g.last_ready_ns.load(Ordering::Acquire),
        );
        l.saturating_sub(s) as f64 / 1e9
    }
}

/// Spawn all subscribers and wait (bounded) until each is streaming or failed.
pub async fn open_subscribers(a: &SubArgs, events: u64, built: Built) -> Opened {
    let shared = Shared::new(events);
    let sem = Arc::new(Semaphore::new(a.connect_concurrency.max(1)));
    let (ctl, rx) = watch::channel(Ctl {
        gen: 0,
        action: Action::Run,
    });
    shared.gens[0]
        .start_ns
        .store(shared.since_base_ns(), Ordering::Release);
    let subscribers = built.specs.len();
    let groups = group::spawn(built.specs, &shared, &sem, &rx);
    let mut o = Opened {
        shared,
        groups,
        subscribers,
        ctl,
        slots: built.slots,
        transport: built.transport,
        all_streaming_s: 0.0,
        seed: 0,
        sem,
        concurrency: a.connect_concurrency.max(1),
    };
    o.wait_resolved(0, secs(a.connect_deadline)).await;
    o.all_streaming_s = o.all_streaming_s(0);
    o
}

/// Stop all subscribers and collect their results (bounded).
pub async fn close_subscribers(o: &mut Opened) -> Vec<SubResult> {
    let gen = o.ctl.borrow().gen;
    let _ = o.ctl.send(Ctl {
        gen,
        action: Action::Stop,
    });
    let mut out = Vec::with_capacity(o.subscribers);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for g in o.groups.drain(..) {
        let abort = g.handle.abort_handle();
        match tokio::time::timeout_at(deadline, g.handle).await {
            Ok(Ok(r)) => out.extend(r),
            Ok(Err(_)) => out.resize_with(out.len() + g.size, SubResult::default),
            Err(_) => {
                abort.abort();
                out.resize_with(out.len() + g.size, SubResult::default);
            }
        }
    }
    for s in &o.slots {
        s.close().await;
    }
    out
}

pub fn base_report(mode: &str, requested: usize, o: &Opened) -> Report {
    let g = &o.shared.gens[0];
    Report {
        mode: mode.into(),
        transport: o.transport.clone(),
        h2_connections: (!o.slots.is_empty()).then_some(o.slots.len()),
        subscribers_requested: requested,
        subscribers_streaming: o.shared.streaming(),
        subscribers_failed: o.shared.failed(),
        subscribe_statuses: g.statuses(),
        subscribe_network_errors: g.network_errors.load(Ordering::Acquire),
        connect_all_streaming_s: o.all_streaming_s,
        ..Default::default()
    }
}

/// Server measurement helper (no-op without --server-pid).
pub struct Server {
    pub pids: Vec<u32>,
    pub stats: ServerStats,
    mark: Option<(Instant, f64)>,
}

impl Server {
    pub fn new(arg: &Option<String>) -> Result<Self, String> {
        let pids = match arg {
            Some(s) => procstat::parse_pids(s)?,
            None => Vec::new(),
        };
        if !pids.is_empty() {
            procstat::cpu_seconds(&pids)?; // validate early
        }
        Ok(Server {
            stats: ServerStats {
                pids: pids.clone(),
                ..Default::default()
            },
            pids,
            mark: None,
        })
    }
    pub fn mem(&self) -> Option<procstat::MemSample> {
        if self.pids.is_empty() {
            return None;
        }
        procstat::mem(&self.pids).ok()
    }
    /// Start a CPU measurement window.
    pub fn cpu_start(&mut self) {
        if !self.pids.is_empty() {
            self.mark = procstat::cpu_seconds(&self.pids)
                .ok()
                .map(|c| (Instant::now(), c));
        }
    }
    /// Close the CPU window under `phase` name.
    pub fn cpu_end(&mut self, phase: &str) {
        if let Some((t0, c0)) = self.mark.take() {
            if let Ok(c1) = procstat::cpu_seconds(&self.pids) {
                let wall = t0.elapsed().as_secs_f64().max(1e-9);
                let used = c1 - c0;
                self.stats.cpu_seconds.insert(phase.into(), used);
                self.stats.cpu_pct.insert(phase.into(), used / wall * 100.0);
            }
        }
    }
    pub fn after_connect(&mut self, n: usize) {
        self.stats.after_connect = self.mem();
        if let (Some(b), Some(a)) = (self.stats.before_connect, self.stats.after_connect) {
            if n > 0 {
                let per = |x: u64, y: u64| (x as f64 - y as f64) * 1024.0 / n as f64;
                self.stats.per_conn_rss_bytes = Some(per(a.rss_kb, b.rss_kb));
                self.stats.per_conn_pss_bytes = Some(per(a.pss_kb, b.pss_kb));
            }
        }
    }
    pub fn after_hold(&mut self, n: usize) {
        self.stats.after_hold = self.mem();
        if let (Some(b), Some(a)) = (self.stats.before_connect, self.stats.after_hold) {
            if n > 0 {
                self.stats.per_conn_pss_bytes_after_hold =
                    Some((a.pss_kb as f64 - b.pss_kb as f64) * 1024.0 / n as f64);
            }
        }
    }
    pub fn finish(self) -> Option<ServerStats> {
        (!self.pids.is_empty()).then_some(self.stats)
    }
}

/// Publish on a dedicated thread (its own runtime) so that pacing is not
/// disturbed by subscriber work.
pub async fn publish(cfg: PubCfg, base: Instant) -> PubResult {
    let th = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map(|rt| rt.block_on(publish::run_publisher(cfg, base)))
            .map_err(|e| e.to_string())
    });
    let pr = tokio::task::spawn_blocking(move || th.join())
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_else(|| Err("publisher thread panicked".into()));
    pr.unwrap_or_else(|e| PubResult {
        errors: vec![e],
        ..Default::default()
    })
}

/// Wait (bounded) until every subscriber has all it expects. True = timed out.
pub async fn drain(o: &Opened, limit: Duration) -> bool {
    let n = o.n();
    let deadline = Instant::now() + limit;
    while o.shared.done.load(Ordering::Acquire) < n {
        if Instant::now() >= deadline {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Publish, then wait for deliveries to drain; server CPU is measured over
/// both. Returns the publish result, whether the drain timed out, and this
/// process's CPU % meanwhile.
pub async fn publish_and_drain(
    o: &Opened,
    cfg: PubCfg,
    drain_timeout: f64,
    server: &mut Server,
) -> (PubResult, bool, f64) {
    server.cpu_start();
    let (t0, c0) = (Instant::now(), procstat::self_cpu_seconds());
    let pr = publish(cfg, o.shared.base).await;
    let timed_out = drain(o, secs(drain_timeout)).await;
    server.cpu_end("publish+drain");
    let client_pct =
        (procstat::self_cpu_seconds() - c0) / t0.elapsed().as_secs_f64().max(1e-9) * 100.0;
    (pr, timed_out, client_pct)
}

/// What the subscribers of one process saw, in a form that several
/// processes' results can be merged from.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Deliveries {
    pub expected: u64,
    pub received: u64,
    pub dups: u64,
    pub unexpected: u64,
    pub non_probe: u64,
    pub ended_early: usize,
    /// Latency histogram as (µs, count) pairs.
    pub latency_us: Vec<(u64, u64)>,
    /// Per seq: 1 + the largest latency (µs) over subscribers; 0 = none.
    pub per_seq_max_us: Vec<u64>,
    /// Unix time (ns) of the last delivery; 0 = none.
    pub last_delivery_unix_ns: u64,
}

impl Deliveries {
    pub fn collect(o: &Opened, results: &[SubResult]) -> Self {
        let sh = &o.shared;
        let base_unix = sse_client::now_unix_nanos().saturating_sub(sh.since_base_ns());
        let last = sh.last_delivery_ns.load(Ordering::Acquire);
        Deliveries {
            expected: results
                .iter()
                .filter(|s| s.streaming)
                .map(|s| s.expected)
                .sum(),
            received: results.iter().map(|s| s.distinct).sum(),
            dups: results.iter().map(|s| s.dups).sum(),
            unexpected: results.iter().map(|s| s.unexpected).sum(),
            non_probe: results.iter().map(|s| s.other_events).sum(),
            ended_early: results.iter().filter(|s| s.ended_early).count(),
            latency_us: sh
                .merged_latency()
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
            per_seq_max_us: sh.per_seq_max_us.merged(),
            last_delivery_unix_ns: if last > 0 { base_unix + last } else { 0 },
        }
    }

    pub fn merge(&mut self, other: &Deliveries) {
        self.expected += other.expected;
        self.received += other.received;
        self.dups += other.dups;
        self.unexpected += other.unexpected;
        self.non_probe += other.non_probe;
        self.ended_early += other.ended_early;
        self.latency_us.extend_from_slice(&other.latency_us);
        if self.per_seq_max_us.len() < other.per_seq_max_us.len() {
            self.per_seq_max_us.resize(other.per_seq_max_us.len(), 0);
        }
        for (a, b) in self.per_seq_max_us.iter_mut().zip(&other.per_seq_max_us) {
            *a = (*a).max(*b);
        }
        self.last_delivery_unix_ns = self.last_delivery_unix_ns.max(other.last_delivery_unix_ns);
    }

    fn histogram(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for &(v, n) in &self.latency_us {
            let _ = h.record_n(v.max(1), n);
        }
        h
    }

    /// Fill the delivery part of `r`. `first_send_unix_ns`: when publishing began.
    pub fn fill(&self, r: &mut Report, pr: &PubResult, requested: u64, first_send_unix_ns: u64) {
        r.events_requested = Some(requested);
        r.events_published = Some(pr.published);
        r.events_publish_failed = Some(pr.failed);
        r.publish_requests = Some(pr.requests);
        r.publish_statuses = Some(pr.statuses.clone());
        if let (Some(a), Some(b)) = (pr.first_send, pr.last_done) {
            let d = (b.saturating_sub(a)).as_secs_f64();
            r.publish_duration_s = Some(d);
            if d > 0.0 {
                r.publish_rate_eps = Some((pr.published + pr.failed) as f64 / d);
            }
        }
        r.deliveries_expected = Some(self.expected);
        r.deliveries_received = Some(self.received);
        r.missing = Some(self.expected.saturating_sub(self.received));
        r.duplicates = Some(self.dups);
        r.unexpected = Some(self.unexpected);
        r.non_probe_events = Some(self.non_probe);
        r.subscribers_ended_early = self.ended_early;
        if self.last_delivery_unix_ns > 0 {
            let w = self
                .last_delivery_unix_ns
                .saturating_sub(first_send_unix_ns) as f64
                / 1e9;
            if self.received > 0 && w > 0.0 {
                r.delivery_window_s = Some(w);
                r.deliveries_per_s = Some(self.received as f64 / w);
            }
        }
        r.latency_ms = quantiles_ms(&self.histogram(), true);
        let mut last_h = new_histogram();
        for &v in &self.per_seq_max_us {
            if v > 0 {
                last_h.saturating_record((v - 1).max(1));
            }
        }
        r.last_subscriber_latency_ms = quantiles_ms(&last_h, false);
        r.errors.extend(pr.errors.iter().cloned());
    }
}

/// Unix time (ns) of an offset from the run's base instant.
pub fn unix_ns_of(shared: &Shared, offset: Option<Duration>) -> u64 {
    let base_unix = sse_client::now_unix_nanos().saturating_sub(shared.since_base_ns());
    base_unix + offset.map(|d| d.as_nanos() as u64).unwrap_or(0)
}

pub fn copy_errors(r: &mut Report, shared: &Shared) {
    r.errors.extend(lock(&shared.errors).iter().cloned());
}

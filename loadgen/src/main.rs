//! ssegate-loadgen: fan-out / idle / many-channel load generator for SSE
//! gateways (ssegate, nchan, pushpin). Loopback targets only.

mod http;
mod procstat;
mod publish;
mod report;
mod sse;
mod sse_client;
mod target;

use clap::{Args, Parser, Subcommand};
use publish::{Format, PubCfg, PubResult};
use report::{quantiles_ms, Report, ServerStats};
use sse_client::{new_histogram, Shared, SubResult, SubSpec};
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

#[derive(Parser)]
#[command(
    name = "loadgen",
    version,
    about = "SSE gateway load generator (loopback only)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N subscribers on one channel, E events published at R/s.
    Fanout(FanoutArgs),
    /// Open N idle streams, measure server memory and CPU while holding them.
    Idle(IdleArgs),
    /// N channels (ch-0..ch-N-1) with one subscriber each, E events round-robin.
    Channels(ChannelsArgs),
}

#[derive(Args, Clone)]
struct SubArgs {
    /// SSE URL; `{i}` = subscriber index, `{ch}` = channel name.
    #[arg(long)]
    sse_url: String,
    /// Comma separated loopback source IPs, used round-robin.
    #[arg(
        long,
        default_value = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8"
    )]
    sources: String,
    /// Max connections being set up at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Per-connection TCP connect timeout (s).
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Per-connection timeout for the response head (s).
    #[arg(long, default_value_t = 10.0)]
    header_timeout: f64,
    /// Overall limit for getting all subscribers streaming (s).
    #[arg(long, default_value_t = 180.0)]
    connect_deadline: f64,
    /// Server PID(s) to measure, comma separated (summed), e.g. nginx workers.
    #[arg(long)]
    server_pid: Option<String>,
    /// Print a single JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct PubArgs {
    /// Publish URL (`{ch}` is substituted, e.g. nchan `/pub?id={ch}`).
    #[arg(long)]
    publish_url: String,
    #[arg(long, value_enum, default_value_t = Format::Ssegate)]
    publish_format: Format,
    /// Prefix for channel names in publish bodies (ssegate/pushpin), e.g. `room:`.
    #[arg(long, default_value = "")]
    channel_prefix: String,
    /// Number of events to publish.
    #[arg(long)]
    events: u64,
    /// Events per request (ssegate `items` / pushpin `items`).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Approximate size of each event's JSON data.
    #[arg(long, default_value_t = 64)]
    payload_bytes: usize,
    /// Parallel keep-alive publish connections (requests stay paced to --rate).
    #[arg(long, default_value_t = 1)]
    publish_concurrency: usize,
    /// Per publish request timeout (s).
    #[arg(long, default_value_t = 10.0)]
    request_timeout: f64,
    /// Wait after all subscribers stream, before publishing (ms).
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// Max wait for outstanding deliveries after publishing ends (s).
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
}

#[derive(Args)]
struct FanoutArgs {
    #[command(flatten)]
    sub: SubArgs,
    #[command(flatten)]
    publ: PubArgs,
    /// Channel name (substituted for `{ch}`; body channel = prefix + name).
    #[arg(long, default_value = "loadtest")]
    channel: String,
    #[arg(long)]
    subscribers: usize,
    /// Publish rate, events/s (0 = as fast as possible).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    sub: SubArgs,
    #[arg(long, default_value = "loadtest")]
    channel: String,
    #[arg(long)]
    subscribers: usize,
    /// Seconds to hold the connections open after all are streaming.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
}

#[derive(Args)]
struct ChannelsArgs {
    #[command(flatten)]
    sub: SubArgs,
    #[command(flatten)]
    publ: PubArgs,
    #[arg(long)]
    channels: usize,
    /// Publish rate, events/s (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

/// Subscribers that have been opened, plus the means to stop them.
struct Opened {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<SubResult>>,
    stop: watch::Sender<bool>,
    all_streaming_s: f64,
}

/// Server measurement helper (no-op without --server-pid).
struct Server {
    pids: Vec<u32>,
    stats: ServerStats,
    mark: Option<(Instant, f64)>,
}

impl Server {
    fn new(arg: &Option<String>) -> Result<Self, String> {
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
    fn mem(&self) -> Option<procstat::MemSample> {
        if self.pids.is_empty() {
            return None;
        }
        procstat::mem(&self.pids).ok()
    }
    /// Start a CPU measurement window.
    fn cpu_start(&mut self) {
        if !self.pids.is_empty() {
            self.mark = procstat::cpu_seconds(&self.pids)
                .ok()
                .map(|c| (Instant::now(), c));
        }
    }
    /// Close the CPU window under `phase` name.
    fn cpu_end(&mut self, phase: &str) {
        if let Some((t0, c0)) = self.mark.take() {
            if let Ok(c1) = procstat::cpu_seconds(&self.pids) {
                let wall = t0.elapsed().as_secs_f64().max(1e-9);
                let used = c1 - c0;
                self.stats.cpu_seconds.insert(phase.into(), used);
                self.stats.cpu_pct.insert(phase.into(), used / wall * 100.0);
            }
        }
    }
    fn after_connect(&mut self, n: usize) {
        self.stats.after_connect = self.mem();
        if let (Some(b), Some(a)) = (self.stats.before_connect, self.stats.after_connect) {
            if n > 0 {
                let per = |x: u64, y: u64| (x as f64 - y as f64) * 1024.0 / n as f64;
                self.stats.per_conn_rss_bytes = Some(per(a.rss_kb, b.rss_kb));
                self.stats.per_conn_pss_bytes = Some(per(a.pss_kb, b.pss_kb));
            }
        }
    }
    fn after_hold(&mut self, n: usize) {
        self.stats.after_hold = self.mem();
        if let (Some(b), Some(a)) = (self.stats.before_connect, self.stats.after_hold) {
            if n > 0 {
                self.stats.per_conn_pss_bytes_after_hold =
                    Some((a.pss_kb as f64 - b.pss_kb as f64) * 1024.0 / n as f64);
            }
        }
    }
    fn finish(self) -> Option<ServerStats> {
        (!self.pids.is_empty()).then_some(self.stats)
    }
}

fn secs(v: f64) -> Duration {
    Duration::from_secs_f64(v.clamp(0.0, 86_400.0))
}

/// Spawn all subscribers and wait (bounded) until each is streaming or failed.
async fn open_subscribers(
    args: &SubArgs,
    events: u64,
    specs: impl Iterator<Item = (String, u64, u64)>,
) -> Result<Opened, String> {
    let sources: Vec<Ipv4Addr> = target::parse_sources(&args.sources)?;
    let mut list = Vec::new();
    for (i, (url, stride, offset)) in specs.enumerate() {
        let t = target::parse_url(&url)?;
        list.push(SubSpec {
            index: i,
            target: t,
            src: Some(sources[i % sources.len()]),
            events,
            stride,
            offset,
            connect_timeout: secs(args.connect_timeout),
            header_timeout: secs(args.header_timeout),
        });
    }
    let n = list.len();
    let shared = Shared::new(events);
    let sem = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (stop, rx) = watch::channel(false);
    let start = shared.since_base_ns();
    let handles: Vec<_> = list
        .into_iter()
        .map(|spec| {
            tokio::spawn(sse_client::run_subscriber(
                spec,
                shared.clone(),
                sem.clone(),
                rx.clone(),
            ))
        })
        .collect();
    let deadline = Instant::now() + secs(args.connect_deadline);
    loop {
        let up = shared.streaming.load(Ordering::Acquire) + shared.failed.load(Ordering::Acquire);
        if up >= n {
            break;
        }
        if Instant::now() >= deadline {
            shared.note_error(format!(
                "connect deadline reached with {up}/{n} subscribers resolved"
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = shared.last_streaming_ns.load(Ordering::Acquire);
    let all_streaming_s = last.saturating_sub(start) as f64 / 1e9;
    Ok(Opened {
        shared,
        handles,
        stop,
        all_streaming_s,
    })
}

/// Stop all subscribers and collect their results (bounded).
async fn close_subscribers(o: &mut Opened) -> Vec<SubResult> {
    let _ = o.stop.send(true);
    let mut out = Vec::with_capacity(o.handles.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for h in o.handles.drain(..) {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(deadline, h).await {
            Ok(Ok(r)) => out.push(r),
            Ok(Err(_)) => out.push(SubResult::default()),
            Err(_) => {
                abort.abort();
                out.push(SubResult::default());
            }
        }
    }
    out
}

fn base_report(mode: &str, requested: usize, o: &Opened) -> Report {
    Report {
        mode: mode.into(),
        subscribers_requested: requested,
        subscribers_streaming: o.shared.streaming.load(Ordering::Acquire),
        subscribers_failed: o.shared.failed.load(Ordering::Acquire),
        connect_all_streaming_s: o.all_streaming_s,
        ..Default::default()
    }
}

/// Publish on a dedicated thread (its own runtime) so that pacing is not
/// disturbed by subscriber work, then wait for deliveries to drain.
async fn publish_and_drain(
    o: &Opened,
    cfg: PubCfg,
    drain_timeout: f64,
    server: &mut Server,
) -> (PubResult, bool, f64) {
    let base = o.shared.base;
    server.cpu_start();
    let (t0, c0) = (Instant::now(), procstat::self_cpu_seconds());
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
    let pr = pr.unwrap_or_else(|e| PubResult {
        errors: vec![e],
        ..Default::default()
    });
    let n = o.handles.len();
    let deadline = Instant::now() + secs(drain_timeout);
    let mut timed_out = false;
    while o.shared.done.load(Ordering::Acquire) < n {
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.cpu_end("publish+drain");
    let client_pct =
        (procstat::self_cpu_seconds() - c0) / t0.elapsed().as_secs_f64().max(1e-9) * 100.0;
    (pr, timed_out, client_pct)
}

fn fill_delivery_report(
    r: &mut Report,
    o: &Opened,
    results: &[SubResult],
    pr: &PubResult,
    requested: u64,
) {
    let expected: u64 = results
        .iter()
        .filter(|s| s.streaming)
        .map(|s| s.expected)
        .sum();
    let received: u64 = results.iter().map(|s| s.distinct).sum();
    r.events_requested = Some(requested);
    r.events_published = Some(pr.published);
    r.events_publish_failed = Some(pr.failed);
    r.publish_requests = Some(pr.requests);
    r.publish_statuses = Some(pr.statuses.clone());
    if let (Some(a), Some(b)) = (pr.first_send, pr.last_done) {
        let d = (b - a).as_secs_f64();
        r.publish_duration_s = Some(d);
        if d > 0.0 {
            r.publish_rate_eps = Some((pr.published + pr.failed) as f64 / d);
        }
    }
    r.deliveries_expected = Some(expected);
    r.deliveries_received = Some(received);
    r.missing = Some(expected.saturating_sub(received));
    r.duplicates = Some(results.iter().map(|s| s.dups).sum());
    r.unexpected = Some(results.iter().map(|s| s.unexpected).sum());
    r.non_probe_events = Some(results.iter().map(|s| s.other_events).sum());
    r.subscribers_ended_early = results.iter().filter(|s| s.ended_early).count();
    let last = o.shared.last_delivery_ns.load(Ordering::Acquire);
    if let Some(first) = pr.first_send {
        let w = (last as f64 / 1e9 - first.as_secs_f64()).max(0.0);
        if received > 0 && w > 0.0 {
            r.delivery_window_s = Some(w);
            r.deliveries_per_s = Some(received as f64 / w);
        }
    }
    r.latency_ms = quantiles_ms(&o.shared.merged_latency(), true);
    let mut last_h = new_histogram();
    for v in &o.shared.per_seq_max_us {
        let v = v.load(Ordering::Acquire);
        if v > 0 {
            last_h.saturating_record((v - 1).max(1));
        }
    }
    r.last_subscriber_latency_ms = quantiles_ms(&last_h, false);
    r.errors.extend(pr.errors.iter().cloned());
    r.errors
        .extend(o.shared.errors.lock().unwrap().iter().cloned());
}

fn pub_cfg(p: &PubArgs, channels: Vec<String>, rate: f64) -> PubCfg {
    PubCfg {
        url_template: p.publish_url.clone(),
        format: p.publish_format,
        channels,
        channel_prefix: p.channel_prefix.clone(),
        events: p.events,
        rate: rate.max(0.0),
        batch: p.batch.max(1),
        payload_bytes: p.payload_bytes,
        request_timeout: secs(p.request_timeout),
        concurrency: p.publish_concurrency.clamp(1, 256),
    }
}

async fn fanout(a: FanoutArgs) -> Result<Report, String> {
    let cfg = pub_cfg(&a.publ, vec![a.channel.clone()], a.rate);
    publish::check_url(&cfg)?;
    let mut server = Server::new(&a.sub.server_pid)?;
    server.stats.before_connect = server.mem();
    server.cpu_start();
    let specs =
        (0..a.subscribers).map(|i| (target::substitute(&a.sub.sse_url, i, &a.channel), 1, 0));
    let mut o = open_subscribers(&a.sub, a.publ.events, specs).await?;
    server.cpu_end("connect");
    server.after_connect(o.shared.streaming.load(Ordering::Acquire));
    tokio::time::sleep(Duration::from_millis(a.publ.settle_ms)).await;
    let (pr, timed_out, client_pct) =
        publish_and_drain(&o, cfg, a.publ.drain_timeout, &mut server).await;
    let results = close_subscribers(&mut o).await;
    let mut r = base_report("fanout", a.subscribers, &o);
    fill_delivery_report(&mut r, &o, &results, &pr, a.publ.events);
    r.drain_timed_out = Some(timed_out);
    r.client_cpu_pct = Some(client_pct);
    r.server = server.finish();
    Ok(r)
}

async fn idle(a: IdleArgs) -> Result<Report, String> {
    let mut server = Server::new(&a.sub.server_pid)?;
    server.stats.before_connect = server.mem();
    server.cpu_start();
    let specs =
        (0..a.subscribers).map(|i| (target::substitute(&a.sub.sse_url, i, &a.channel), 1, 0));
    let mut o = open_subscribers(&a.sub, 0, specs).await?;
    server.cpu_end("connect");
    server.after_connect(o.shared.streaming.load(Ordering::Acquire));
    server.cpu_start();
    let t0 = Instant::now();
    tokio::time::sleep(secs(a.hold)).await;
    server.cpu_end("hold");
    server.after_hold(o.shared.streaming.load(Ordering::Acquire));
    let hold = t0.elapsed().as_secs_f64();
    let ended = o.shared.ended.load(Ordering::Acquire);
    let _ = close_subscribers(&mut o).await;
    let mut r = base_report("idle", a.subscribers, &o);
    r.subscribers_ended_early = ended;
    r.hold_s = Some(hold);
    r.errors
        .extend(o.shared.errors.lock().unwrap().iter().cloned());
    r.server = server.finish();
    Ok(r)
}

async fn channels(a: ChannelsArgs) -> Result<Report, String> {
    if a.channels == 0 {
        return Err("--channels must be > 0".into());
    }
    let names: Vec<String> = (0..a.channels).map(|i| format!("ch-{i}")).collect();
    let cfg = pub_cfg(&a.publ, names.clone(), a.rate);
    publish::check_url(&cfg)?;
    let mut server = Server::new(&a.sub.server_pid)?;
    server.stats.before_connect = server.mem();
    server.cpu_start();
    let n = a.channels as u64;
    let specs = names
        .iter()
        .enumerate()
        .map(|(i, ch)| (target::substitute(&a.sub.sse_url, i, ch), n, i as u64));
    let mut o = open_subscribers(&a.sub, a.publ.events, specs).await?;
    server.cpu_end("connect");
    server.after_connect(o.shared.streaming.load(Ordering::Acquire));
    tokio::time::sleep(Duration::from_millis(a.publ.settle_ms)).await;
    let (pr, timed_out, client_pct) =
        publish_and_drain(&o, cfg, a.publ.drain_timeout, &mut server).await;
    let results = close_subscribers(&mut o).await;
    let mut r = base_report("channels", a.channels, &o);
    r.channels = Some(a.channels);
    fill_delivery_report(&mut r, &o, &results, &pr, a.publ.events);
    r.drain_timed_out = Some(timed_out);
    r.client_cpu_pct = Some(client_pct);
    r.server = server.finish();
    Ok(r)
}

fn main() {
    let cli = Cli::parse();
    let nofile = procstat::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (json, res) = rt.block_on(async {
        match cli.cmd {
            Cmd::Fanout(a) => (a.sub.json, fanout(a).await),
            Cmd::Idle(a) => (a.sub.json, idle(a).await),
            Cmd::Channels(a) => (a.sub.json, channels(a).await),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match res {
        Ok(mut r) => {
            r.loadgen_nofile = nofile;
            r.print(json);
        }
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            std::process::exit(2);
        }
    }
}

//! ssegate-loadgen: fan-out / idle / many-channel / storm load generator
//! for SSE gateways (ssegate, nchan, pushpin) over HTTP/1.1, TLS and
//! HTTP/2, across one or several gateway instances and load generator
//! processes. Loopback targets only.

mod conn;
mod group;
mod http;
#[cfg(test)]
mod loopback_tests;
mod multi;
mod procstat;
mod publish;
mod redis;
mod report;
mod run;
mod seqmax;
mod sse;
mod sse_client;
mod storm;
mod target;
mod tls;
mod tracker;

use clap::{Args, Parser, Subcommand};
use publish::{Format, PubCfg};
use report::Report;
use run::{secs, Server, Want};
use sse_client::Policy;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// N streams, all dropped at once and reconnecting at once (EventSource-like).
    Storm(storm::StormArgs),
}

/// When a subscriber counts as streaming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Ready {
    /// At the 200 response head.
    Head,
    /// At the first thing in the body other than `retry:` (the prelude).
    Prelude,
}

#[derive(Args, Clone)]
pub struct SubArgs {
    /// SSE URL, http:// or https://; `{i}` = subscriber index, `{ch}` =
    /// channel name. Repeat for several gateway instances: subscriber i
    /// uses URL number i mod count.
    #[arg(long, required = true)]
    pub sse_url: Vec<String>,
    /// Comma separated loopback source IPs, used round-robin.
    #[arg(
        long,
        default_value = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7,127.0.0.8"
    )]
    pub sources: String,
    /// Max connections (or HTTP/2 streams) being set up at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Per-connection TCP connect (and TLS handshake) timeout (s).
    #[arg(long, default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Per-stream timeout for the response head (s).
    #[arg(long, default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Overall limit for getting all subscribers streaming (s).
    #[arg(long, default_value_t = 180.0)]
    pub connect_deadline: f64,
    /// Server PID(s) to measure, comma separated (summed), e.g. nginx workers
    /// or several gateway instances.
    #[arg(long)]
    pub server_pid: Option<String>,
    /// Print a single JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// HTTP/2: over TLS (ALPN h2) for https:// URLs, h2c with prior
    /// knowledge for http:// URLs. Streams share connections.
    #[arg(long)]
    pub h2: bool,
    /// HTTP/2 streams per connection.
    #[arg(long, default_value_t = 100)]
    pub streams_per_conn: usize,
    /// HTTP/2 connections: spread the subscribers evenly over this many
    /// (instead of --streams-per-conn).
    #[arg(long)]
    pub conns: Option<usize>,
    /// PEM file of the CA (or self-signed certificate) that signs the
    /// server's certificate, for https:// URLs.
    #[arg(long)]
    pub ca: Option<String>,
    /// Accept any server certificate (self-signed test certificates).
    #[arg(long)]
    pub insecure: bool,
    /// HTTP/2 receive window per stream (bytes).
    #[arg(long, default_value_t = 1 << 20)]
    pub h2_window: u32,
    /// HTTP/2 receive window per connection (bytes).
    #[arg(long, default_value_t = 16 << 20)]
    pub h2_conn_window: u32,
    /// When a subscriber counts as streaming (default: head; storm: prelude).
    #[arg(long, value_enum)]
    pub ready: Option<Ready>,
    /// Seed for the randomness (printed in the report; default: from the clock).
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Args, Clone)]
pub struct PubArgs {
    /// Publish URL, plain http:// (`{ch}` is substituted, e.g. nchan `/pub?id={ch}`).
    #[arg(long)]
    pub publish_url: String,
    #[arg(long, value_enum, default_value_t = Format::Ssegate)]
    pub publish_format: Format,
    /// Prefix for channel names in publish bodies (ssegate/pushpin), e.g. `room:`.
    #[arg(long, default_value = "")]
    pub channel_prefix: String,
    /// Number of events to publish.
    #[arg(long)]
    pub events: u64,
    /// Events per request (ssegate `items` / pushpin `items`).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Approximate size of each event's JSON data.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Parallel keep-alive publish connections (requests stay paced to --rate).
    #[arg(long, default_value_t = 1)]
    pub publish_concurrency: usize,
    /// Per publish request timeout (s).
    #[arg(long, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Wait after all subscribers stream, before publishing (ms).
    #[arg(long, default_value_t = 500)]
    pub settle_ms: u64,
    /// Max wait for outstanding deliveries after publishing ends (s).
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
}

/// Redis behind the gateways (cluster mode): its cost per event.
#[derive(Args, Clone)]
pub struct RedisArgs {
    /// Port of redis-server on 127.0.0.1: `redis-cli info commandstats`
    /// before and after publishing gives commands per event.
    #[arg(long)]
    pub redis_port: Option<u16>,
    /// redis-server PID(s): CPU while publishing (idle: while holding).
    #[arg(long)]
    pub redis_pid: Option<String>,
}

#[derive(Args)]
pub struct FanoutArgs {
    #[command(flatten)]
    pub sub: SubArgs,
    #[command(flatten)]
    pub publ: PubArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    /// Channel name (substituted for `{ch}`; body channel = prefix + name).
    #[arg(long, default_value = "loadtest")]
    pub channel: String,
    /// Subscribers in all (over all --sse-url and all --procs).
    #[arg(long)]
    pub subscribers: usize,
    /// Publish rate, events/s (0 = as fast as possible).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Load generator processes holding the subscribers (each process may
    /// hold about 19,000 sockets here); this one publishes and merges.
    #[arg(long, default_value_t = 1)]
    pub procs: usize,
    /// Internal: run as worker K of --procs (started by the parent).
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    sub: SubArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[arg(long, default_value = "loadtest")]
    channel: String,
    #[arg(long)]
    subscribers: usize,
    /// Seconds to wait after all are streaming before the hold window starts.
    #[arg(long, default_value_t = 0.0)]
    settle: f64,
    /// Seconds to hold the connections open (the measured window).
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
}

#[derive(Args)]
struct ChannelsArgs {
    #[command(flatten)]
    sub: SubArgs,
    #[command(flatten)]
    publ: PubArgs,
    #[command(flatten)]
    redis: RedisArgs,
    #[arg(long)]
    channels: usize,
    /// Publish rate, events/s (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

pub fn pub_cfg(p: &PubArgs, channels: Vec<String>, rate: f64) -> PubCfg {
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

/// The seed to use: the one given, or one from the clock.
pub fn seed(a: &SubArgs) -> u64 {
    a.seed
        .unwrap_or_else(|| sse_client::now_unix_nanos() ^ 0x5EED)
}

/// Policy of the measuring modes: one attempt per subscriber.
pub fn one_shot(a: &SubArgs) -> Arc<Policy> {
    Arc::new(Policy {
        ready_on_prelude: a.ready == Some(Ready::Prelude),
        seed: seed(a),
        ..Policy::default()
    })
}

pub fn distinct_urls(a: &SubArgs) -> usize {
    let mut v = a.sse_url.clone();
    v.sort();
    v.dedup();
    v.len()
}

/// Redis measurement window: commandstats and CPU before/after.
pub struct RedisWindow {
    port: Option<u16>,
    pids: Vec<u32>,
    before: Option<std::collections::BTreeMap<String, u64>>,
    cpu0: Option<(Instant, f64)>,
}

impl RedisWindow {
    pub async fn start(a: &RedisArgs) -> Result<Self, String> {
        let pids = match &a.redis_pid {
            Some(p) => procstat::parse_pids(p)?,
            None => Vec::new(),
        };
        let before = match a.redis_port {
            Some(p) => Some(redis::commandstats(p).await?),
            None => None,
        };
        let cpu0 = (!pids.is_empty())
            .then(|| {
                procstat::cpu_seconds(&pids)
                    .ok()
                    .map(|c| (Instant::now(), c))
            })
            .flatten();
        Ok(RedisWindow {
            port: a.redis_port,
            pids,
            before,
            cpu0,
        })
    }

    pub async fn finish(self, events: u64) -> Option<redis::RedisReport> {
        if self.port.is_none() && self.pids.is_empty() {
            return None;
        }
        let mut r = redis::RedisReport {
            port: self.port,
            pids: self.pids.clone(),
            ..Default::default()
        };
        if let Some((t0, c0)) = self.cpu0 {
            if let Ok(c1) = procstat::cpu_seconds(&self.pids) {
                r.cpu_seconds = Some(c1 - c0);
                r.cpu_pct = Some((c1 - c0) / t0.elapsed().as_secs_f64().max(1e-9) * 100.0);
            }
        }
        if let (Some(p), Some(b)) = (self.port, &self.before) {
            if let Ok(a) = redis::commandstats(p).await {
                r.commands = redis::delta(b, &a);
                r.commands_total = r.commands.values().sum();
                if events > 0 {
                    r.commands_per_event = Some(r.commands_total as f64 / events as f64);
                }
            }
        }
        Some(r)
    }
}

/// Open `wants`, publish `cfg`, drain, and report (fanout and channels).
async fn deliver(
    mode: &str,
    requested: usize,
    sub: &SubArgs,
    publ: &PubArgs,
    redis: &RedisArgs,
    cfg: PubCfg,
    wants: Vec<Want>,
) -> Result<Report, String> {
    publish::check_url(&cfg)?;
    let mut server = Server::new(&sub.server_pid)?;
    let policy = one_shot(sub);
    let mut o = run::connect_measured(sub, &mut server, policy, publ.events, wants).await?;
    tokio::time::sleep(Duration::from_millis(publ.settle_ms)).await;
    let rw = RedisWindow::start(redis).await?;
    let (pr, timed_out, client_pct) =
        run::publish_and_drain(&o, cfg, publ.drain_timeout, &mut server).await;
    let redis = rw.finish(pr.published).await;
    let results = run::close_subscribers(&mut o).await;
    let mut r = run::base_report(mode, requested, &o);
    let d = run::Deliveries::collect(&o, &results);
    let first = run::unix_ns_of(&o.shared, pr.first_send);
    d.fill(&mut r, &pr, publ.events, first);
    r.drain_timed_out = Some(timed_out);
    r.client_cpu_pct = Some(client_pct);
    r.redis = redis;
    run::finish_report(&mut r, &o, server, sub);
    Ok(r)
}

async fn fanout(a: FanoutArgs) -> Result<Report, String> {
    if a.procs > 1 || a.worker_index.is_some() {
        return multi::fanout(a).await;
    }
    let cfg = pub_cfg(&a.publ, vec![a.channel.clone()], a.rate);
    let wants = run::on_channel(&a.sub, 0..a.subscribers, &a.channel);
    deliver(
        "fanout",
        a.subscribers,
        &a.sub,
        &a.publ,
        &a.redis,
        cfg,
        wants,
    )
    .await
}

async fn idle(a: IdleArgs) -> Result<Report, String> {
    let mut server = Server::new(&a.sub.server_pid)?;
    let wants = run::on_channel(&a.sub, 0..a.subscribers, &a.channel);
    let mut o = run::connect_measured(&a.sub, &mut server, one_shot(&a.sub), 0, wants).await?;
    tokio::time::sleep(secs(a.settle)).await;
    let rw = RedisWindow::start(&a.redis).await?;
    let frames0 = o.shared.frames.load(Ordering::Acquire);
    server.cpu_start();
    let t0 = Instant::now();
    tokio::time::sleep(secs(a.hold)).await;
    server.cpu_end("hold");
    let hold = t0.elapsed().as_secs_f64();
    let frames = o.shared.frames.load(Ordering::Acquire) - frames0;
    let redis = rw.finish(0).await;
    server.after_hold(o.shared.streaming());
    let ended = o.shared.ended.load(Ordering::Acquire);
    let _ = run::close_subscribers(&mut o).await;
    let mut r = run::base_report("idle", a.subscribers, &o);
    r.subscribers_ended_early = ended;
    r.hold_s = Some(hold);
    let n = o.shared.streaming();
    if n > 0 {
        let per = frames as f64 / n as f64;
        r.hold_frames_per_stream = Some(per);
        r.heartbeat_interval_s = (per > 0.0).then(|| hold / per);
    }
    r.redis = redis;
    run::finish_report(&mut r, &o, server, &a.sub);
    Ok(r)
}

async fn channels(a: ChannelsArgs) -> Result<Report, String> {
    if a.channels == 0 {
        return Err("--channels must be > 0".into());
    }
    let names: Vec<String> = (0..a.channels).map(|i| format!("ch-{i}")).collect();
    let cfg = pub_cfg(&a.publ, names.clone(), a.rate);
    let n = a.channels as u64;
    let wants = names
        .iter()
        .enumerate()
        .map(|(i, ch)| Want {
            index: i,
            url: run::url_for(&a.sub, i, ch),
            stride: n,
            offset: i as u64,
        })
        .collect();
    let mut r = deliver(
        "channels", a.channels, &a.sub, &a.publ, &a.redis, cfg, wants,
    )
    .await?;
    r.channels = Some(a.channels);
    Ok(r)
}

fn main() {
    let cli = Cli::parse();
    let nofile = procstat::raise_nofile();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loadgen: error: tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    let (json, res) = rt.block_on(async {
        match cli.cmd {
            Cmd::Fanout(a) => {
                let json = a.sub.json || a.worker_index.is_some();
                (json, fanout(a).await)
            }
            Cmd::Idle(a) => (a.sub.json, idle(a).await),
            Cmd::Channels(a) => (a.sub.json, channels(a).await),
            Cmd::Storm(a) => (a.sub.json, storm::run(a).await),
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match res {
        Ok(mut r) => {
            r.loadgen_nofile = nofile;
            if r.mode != "worker" {
                if r.seed != 0 {
                    eprintln!("loadgen: seed {}", r.seed);
                }
                let s5: u64 = r.subscribe_statuses.range(500..600).map(|(_, n)| n).sum();
                if s5 > 0 {
                    eprintln!(
                        "loadgen: LOUD: {s5} subscribe answers with a 5xx status {:?}",
                        r.subscribe_statuses
                    );
                }
                r.print(json);
            }
        }
        Err(e) => {
            eprintln!("loadgen: error: {e}");
            std::process::exit(2);
        }
    }
}

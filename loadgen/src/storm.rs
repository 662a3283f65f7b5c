//! Reconnect storm: N EventSource-like clients stream, are all dropped at
//! once, and all reconnect at once (with `Last-Event-ID`, after an optional
//! random spread). Measures the time until every one streams again, the
//! answers on the way (5xx loudly), and the server's peak RSS and CPU.

use crate::report::{quantiles_ms, Report, StormReport};
use crate::run::{self, secs, Server};
use crate::sse_client::{lock, new_histogram, Action, Ctl, Policy};
use crate::{procstat, Ready, SubArgs};
use clap::Args;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct StormArgs {
    #[command(flatten)]
    pub sub: SubArgs,
    #[arg(long, default_value = "loadtest")]
    pub channel: String,
    #[arg(long)]
    pub subscribers: usize,
    /// Seconds everyone stays streaming before the drop.
    #[arg(long, default_value_t = 2.0)]
    pub before: f64,
    /// Spread the reconnects uniformly over this many ms (0 = all at once).
    #[arg(long, default_value_t = 0)]
    pub spread_ms: u64,
    /// Reconnection time until the server sends `retry:` (ms), as in a
    /// browser's EventSource.
    #[arg(long, default_value_t = 3000)]
    pub default_retry_ms: u64,
    /// Also retry after non-200 answers (a browser's EventSource gives up).
    #[arg(long)]
    pub retry_status: bool,
    /// Attempts per subscriber per phase before it gives up.
    #[arg(long, default_value_t = 1000)]
    pub max_attempts: u32,
    /// Max seconds from the reconnect signal until all stream again.
    #[arg(long, default_value_t = 120.0)]
    pub storm_deadline: f64,
    /// Connection setups in flight during the storm (0 = no limit: everyone
    /// at once, as real clients do; --connect-concurrency applies to the
    /// first connect). Can only raise the limit.
    #[arg(long, default_value_t = 0)]
    pub storm_concurrency: usize,
    /// Server RSS/CPU sampling interval (ms).
    #[arg(long, default_value_t = 100)]
    pub sample_ms: u64,
    /// Seconds to keep streaming (and sampling) after all stream again.
    #[arg(long, default_value_t = 1.0)]
    pub after: f64,
}

pub async fn run(a: StormArgs) -> Result<Report, String> {
    let mut server = Server::new(&a.sub.server_pid)?;
    let policy = Arc::new(Policy {
        reconnect: true,
        retry_status: a.retry_status,
        ready_on_prelude: a.sub.ready != Some(Ready::Head),
        default_retry: Duration::from_millis(a.default_retry_ms),
        max_attempts: a.max_attempts.max(1),
        spread: Duration::from_millis(a.spread_ms),
        seed: crate::seed(&a.sub),
    });
    let wants = run::on_channel(&a.sub, 0..a.subscribers, &a.channel);
    let mut o = run::connect_measured(&a.sub, &mut server, policy.clone(), 0, wants).await?;
    let n = o.n();
    let sh = o.shared.clone();
    tokio::time::sleep(secs(a.before)).await;
    let connects_before: u64 = o
        .slots
        .iter()
        .map(|s| s.connects.load(Ordering::Acquire))
        .sum();
    let streaming_before = sh.streaming();

    // Sample the server from the drop until a little after the storm.
    let limit = secs(a.storm_deadline + a.after + 60.0);
    let sampler = (!server.pids.is_empty()).then(|| {
        procstat::Sampler::start(
            server.pids.clone(),
            Duration::from_millis(a.sample_ms),
            limit,
        )
    });

    // Drop everyone at once.
    let t_drop = Instant::now();
    let c_drop = procstat::self_cpu_seconds();
    let s_drop = procstat::cpu_seconds(&server.pids).ok();
    let _ = o.ctl.send(Ctl {
        gen: 0,
        action: Action::Drop,
    });
    let deadline = t_drop + Duration::from_secs(30);
    while sh.dropped.load(Ordering::Acquire) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for s in &o.slots {
        s.close().await;
    }
    let drop_s = t_drop.elapsed().as_secs_f64();
    if sh.dropped.load(Ordering::Acquire) < n {
        sh.note_error(format!(
            "only {}/{n} subscribers let go within 30 s",
            sh.dropped.load(Ordering::Acquire)
        ));
    }

    // Reconnect everyone at once.
    o.set_concurrency(a.storm_concurrency);
    sh.gens[1]
        .start_ns
        .store(sh.since_base_ns(), Ordering::Release);
    let _ = o.ctl.send(Ctl {
        gen: 1,
        action: Action::Run,
    });
    let all = o.wait_resolved(1, secs(a.storm_deadline)).await;
    let storm_wall = t_drop.elapsed().as_secs_f64().max(1e-9);
    let server_cpu_pct_storm = match (s_drop, procstat::cpu_seconds(&server.pids)) {
        (Some(a), Ok(b)) if !server.pids.is_empty() => Some((b - a) / storm_wall * 100.0),
        _ => None,
    };
    let client_cpu_pct =
        (procstat::self_cpu_seconds() - c_drop) / t_drop.elapsed().as_secs_f64().max(1e-9) * 100.0;
    let g = &sh.gens[1];
    let again = g.ready.load(Ordering::Acquire);
    tokio::time::sleep(secs(a.after)).await;
    let samples = sampler.and_then(|s| s.stop());
    server.after_hold(sh.gens[1].ready.load(Ordering::Acquire));

    let statuses = g.statuses();
    let status_5xx: u64 = statuses
        .iter()
        .filter(|(s, _)| (500..600).contains(*s))
        .map(|(_, n)| n)
        .sum();
    if status_5xx > 0 {
        eprintln!(
            "loadgen: LOUD: {status_5xx} answers with a 5xx status during the storm {statuses:?}: a browser's EventSource gives up on those"
        );
    }
    let mut h = new_histogram();
    for &ms in lock(&g.ready_ms).iter() {
        h.saturating_record(ms.max(1) * 1000);
    }
    let connects_after: u64 = o
        .slots
        .iter()
        .map(|s| s.connects.load(Ordering::Acquire))
        .sum();
    let storm = StormReport {
        streaming_before,
        drop_s,
        spread_ms: a.spread_ms,
        streaming_again: again,
        all_streaming_again_s: (all && again == n).then(|| o.all_streaming_s(1)),
        reconnect_ms: quantiles_ms(&h, true),
        gave_up: g.gave_up.load(Ordering::Acquire),
        attempts: g.attempts.load(Ordering::Acquire),
        with_last_event_id: g.resumed.load(Ordering::Acquire),
        network_errors: g.network_errors.load(Ordering::Acquire),
        deferred: g.deferred.load(Ordering::Acquire),
        empty_answers: g.empty.load(Ordering::Acquire),
        ended_after_streaming: g.ended_after_ready.load(Ordering::Acquire),
        wrong_content_type: g.wrong_content_type.load(Ordering::Acquire),
        statuses,
        status_5xx,
        server: samples,
        h2_reconnects: (!o.slots.is_empty()).then(|| connects_after - connects_before),
        client_cpu_pct,
        server_cpu_pct_storm,
    };
    let _ = run::close_subscribers(&mut o).await;
    let mut r = run::base_report("storm", a.subscribers, &o);
    let g0 = &sh.gens[0];
    r.subscribe_network_errors = g0.network_errors.load(Ordering::Acquire);
    r.storm = Some(storm);
    run::finish_report(&mut r, &o, server, &a.sub);
    Ok(r)
}

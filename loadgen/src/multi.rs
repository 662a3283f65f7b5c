//! One fan-out run held by several load generator processes (each process
//! may hold about 19,000 sockets here). The parent starts `--procs` copies
//! of itself as workers, each with a slice of the subscribers; a worker
//! prints `READY {json}` once its slice streams, waits for `GO` on stdin
//! (sent when publishing is over), drains, and prints `RESULT {json}`.
//! The parent publishes and merges histograms, so p99 and last-subscriber
//! latency are those of all subscribers, not medians of parts.

use crate::report::Report;
use crate::run::{self, secs, Deliveries, Server};
use crate::sse_client::now_unix_nanos;
use crate::{publish, FanoutArgs, RedisWindow};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// What a worker says once its subscribers are streaming.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerReady {
    streaming: usize,
    failed: usize,
    all_streaming_s: f64,
    statuses: BTreeMap<u16, u64>,
    network_errors: u64,
    h2_connections: usize,
    transport: String,
}

/// What a worker says at the end.
#[derive(Debug, Default, Serialize, Deserialize)]
struct WorkerResult {
    deliveries: Deliveries,
    /// This worker's CPU seconds from READY to RESULT (the parent adds
    /// them to its own for the load generator's CPU %).
    cpu_seconds: f64,
    drain_timed_out: bool,
    errors: Vec<String>,
}

/// Subscribers of worker `k` of `procs` (global indexes).
pub fn slice(n: usize, procs: usize, k: usize) -> Range<usize> {
    let p = procs.max(1);
    n * k / p..n * (k + 1) / p
}

pub async fn fanout(a: FanoutArgs) -> Result<Report, String> {
    match a.worker_index {
        Some(k) => worker(a, k).await,
        None => parent(a).await,
    }
}

/// Longest a worker waits for `GO`: the publishing time plus a margin.
fn publish_bound(a: &FanoutArgs) -> Duration {
    let t = if a.rate > 0.0 {
        a.publ.events as f64 / a.rate
    } else {
        3600.0
    };
    secs(t + a.publ.request_timeout * 4.0 + a.publ.settle_ms as f64 / 1e3 + 300.0)
}

async fn worker(a: FanoutArgs, k: usize) -> Result<Report, String> {
    if k >= a.procs.max(1) {
        return Err(format!(
            "--worker-index {k} is not below --procs {}",
            a.procs
        ));
    }
    let policy = crate::one_shot(&a.sub);
    let wants = run::on_channel(&a.sub, slice(a.subscribers, a.procs, k), &a.channel);
    let built = run::build(&a.sub, policy, a.publ.events, wants)?;
    let mut o = run::open_subscribers(&a.sub, a.publ.events, built).await;
    let g = &o.shared.gens[0];
    let ready = WorkerReady {
        streaming: o.shared.streaming(),
        failed: o.shared.failed(),
        all_streaming_s: o.all_streaming_s,
        statuses: g.statuses(),
        network_errors: g.network_errors.load(Ordering::Acquire),
        h2_connections: o.slots.len(),
        transport: o.transport.clone(),
    };
    let cpu0 = crate::procstat::self_cpu_seconds();
    println!(
        "READY {}",
        serde_json::to_string(&ready).map_err(|e| e.to_string())?
    );
    // Wait for GO (or the parent going away), bounded.
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let _ = tokio::time::timeout(publish_bound(&a), lines.next_line()).await;
    let timed_out = run::drain(&o, secs(a.publ.drain_timeout)).await;
    let results = run::close_subscribers(&mut o).await;
    let res = WorkerResult {
        deliveries: Deliveries::collect(&o, &results),
        cpu_seconds: crate::procstat::self_cpu_seconds() - cpu0,
        drain_timed_out: timed_out,
        errors: crate::sse_client::lock(&o.shared.errors).clone(),
    };
    println!(
        "RESULT {}",
        serde_json::to_string(&res).map_err(|e| e.to_string())?
    );
    Ok(Report {
        mode: "worker".into(),
        ..Default::default()
    })
}

/// A started worker process and its pipes.
struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: tokio::io::Lines<BufReader<ChildStdout>>,
}

impl Worker {
    /// The next line starting with `tag`, parsed (bounded by `limit`).
    async fn expect<T: for<'de> Deserialize<'de>>(
        &mut self,
        tag: &str,
        limit: Duration,
    ) -> Result<T, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let line = tokio::time::timeout_at(deadline, self.lines.next_line())
                .await
                .map_err(|_| format!("worker: no {tag} line in time"))?
                .map_err(|e| format!("worker: {e}"))?
                .ok_or_else(|| format!("worker ended before {tag}"))?;
            if let Some(js) = line.strip_prefix(tag).map(str::trim_start) {
                return serde_json::from_str(js).map_err(|e| format!("worker {tag}: {e}"));
            }
        }
    }

    /// Wait (bounded) for the process to end; kill it otherwise.
    async fn reap(mut self) {
        drop(self.stdin.take());
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
    }
}

fn spawn_workers(procs: usize) -> Result<Vec<Worker>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut out = Vec::new();
    for k in 0..procs {
        let mut child = Command::new(&exe)
            .args(&args)
            .arg("--worker-index")
            .arg(k.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting worker {k}: {e}"))?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        out.push(Worker {
            stdin: child.stdin.take(),
            lines: BufReader::new(stdout).lines(),
            child,
        });
    }
    Ok(out)
}

async fn parent(a: FanoutArgs) -> Result<Report, String> {
    let cfg = crate::pub_cfg(&a.publ, vec![a.channel.clone()], a.rate);
    publish::check_url(&cfg)?;
    crate::run::transport(&a.sub)?; // refuse bad TLS options before starting anyone
    let mut server = Server::new(&a.sub.server_pid)?;
    let base = Instant::now();
    server.stats.before_connect = server.mem();
    server.cpu_start();
    let mut workers = spawn_workers(a.procs)?;
    let mut r = Report {
        mode: "fanout".into(),
        subscribers_requested: a.subscribers,
        instances: crate::distinct_urls(&a.sub),
        procs: a.procs,
        seed: crate::seed(&a.sub),
        ..Default::default()
    };
    let mut h2 = 0;
    let connect_limit = secs(a.sub.connect_deadline + 60.0);
    for w in workers.iter_mut() {
        let rd: WorkerReady = w.expect("READY", connect_limit).await?;
        r.subscribers_streaming += rd.streaming;
        r.subscribers_failed += rd.failed;
        r.connect_all_streaming_s = r.connect_all_streaming_s.max(rd.all_streaming_s);
        r.subscribe_network_errors += rd.network_errors;
        for (s, n) in rd.statuses {
            *r.subscribe_statuses.entry(s).or_default() += n;
        }
        h2 += rd.h2_connections;
        r.transport = rd.transport;
    }
    r.h2_connections = (h2 > 0).then_some(h2);
    server.cpu_end("connect");
    server.after_connect(r.subscribers_streaming);
    tokio::time::sleep(Duration::from_millis(a.publ.settle_ms)).await;

    let rw = RedisWindow::start(&a.redis).await?;
    server.cpu_start();
    let (t0, c0) = (Instant::now(), crate::procstat::self_cpu_seconds());
    let base_unix = now_unix_nanos().saturating_sub(base.elapsed().as_nanos() as u64);
    let pr = run::publish(cfg, base).await;
    // Before the workers close their streams (their UNSUBSCRIBEs are not
    // the events' cost).
    let redis = rw.finish(pr.published).await;
    for w in workers.iter_mut() {
        if let Some(s) = w.stdin.as_mut() {
            let _ = s.write_all(b"GO\n").await;
            let _ = s.flush().await;
        }
    }
    let mut all = Deliveries::default();
    let mut timed_out = false;
    let mut worker_cpu = 0.0;
    let result_limit = secs(a.publ.drain_timeout + 60.0);
    for w in workers.iter_mut() {
        let wr: WorkerResult = w.expect("RESULT", result_limit).await?;
        all.merge(&wr.deliveries);
        timed_out |= wr.drain_timed_out;
        worker_cpu += wr.cpu_seconds;
        for e in wr.errors {
            if r.errors.len() < 16 {
                r.errors.push(e);
            }
        }
    }
    server.cpu_end("publish+drain");
    // Approximate: the workers' share is counted from their READY on.
    let client_pct = (crate::procstat::self_cpu_seconds() - c0 + worker_cpu)
        / t0.elapsed().as_secs_f64().max(1e-9)
        * 100.0;
    r.redis = redis;
    for w in workers {
        w.reap().await;
    }
    let first = base_unix + pr.first_send.map(|d| d.as_nanos() as u64).unwrap_or(0);
    all.fill(&mut r, &pr, a.publ.events, first);
    r.drain_timed_out = Some(timed_out);
    r.client_cpu_pct = Some(client_pct);
    r.server = server.finish();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_everyone_once() {
        for (n, p) in [(10, 3), (57_000, 3), (5, 8), (0, 2), (7, 1)] {
            let mut seen = Vec::new();
            for k in 0..p {
                seen.extend(slice(n, p, k));
            }
            assert_eq!(seen, (0..n).collect::<Vec<_>>(), "n={n} p={p}");
        }
    }

    #[test]
    fn deliveries_merge() {
        let a = Deliveries {
            expected: 10,
            received: 9,
            latency_us: vec![(100, 5), (2000, 4)],
            per_seq_max_us: vec![101, 0, 50],
            last_delivery_unix_ns: 7,
            ..Default::default()
        };
        let b = Deliveries {
            expected: 10,
            received: 10,
            dups: 1,
            latency_us: vec![(300, 10)],
            per_seq_max_us: vec![5, 9, 60, 1],
            last_delivery_unix_ns: 9,
            ..Default::default()
        };
        let mut m = a.clone();
        m.merge(&b);
        assert_eq!((m.expected, m.received, m.dups), (20, 19, 1));
        assert_eq!(m.per_seq_max_us, vec![101, 9, 60, 1]);
        assert_eq!(m.last_delivery_unix_ns, 9);
        let mut r = Report::default();
        let pr = crate::publish::PubResult::default();
        m.fill(&mut r, &pr, 4, 0);
        let lat = r.latency_ms.unwrap();
        assert_eq!(lat.count, 19);
        assert!((lat.max - 2.0).abs() < 0.01, "{}", lat.max);
        assert_eq!(r.missing, Some(1));
        assert_eq!(r.last_subscriber_latency_ms.unwrap().count, 4);
    }
}

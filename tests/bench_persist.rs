//! A measurement, not a test (ignored by default): `hub.persist` with a
//! 100 MB history (100,000 channels × 10 events of ~100 B, half with a
//! dedupe id), through the real binary. It reports, per run:
//!
//! - publish latency (one event per request, every 5 ms) while the gateway
//!   folds its log into a new 100 MB checkpoint, against the same probe just
//!   before, and the fold's own time (from the gateway's log line);
//! - the mean time of an interval's save while the history was filled;
//! - the final save at SIGTERM, and the load of the whole history at the
//!   next start.
//!
//! Run (release build, ~2 min a run; figures in docs/benchmarks.md):
//!   cargo test --release --test bench_persist -- --ignored --nocapture
//! `BENCH_RUNS` (default 3) and `BENCH_CHANNELS` (default 100000) scale it.

mod support;

use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};
use support::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn conf(path: &Path) -> String {
    format!(
        "hub:
  history: {{ size: 10, ttl: 1h }}
  persist: {{ path: \"{}\", interval: 1s }}
limits: {{ max_body: 8MiB }}
",
        path.display()
    )
}

/// One round: an event on every channel, in batches of 2,000.
async fn round(gw: &Gateway, channels: usize, round: usize) {
    let pad = "x".repeat(60);
    let c = client();
    for start in (0..channels).step_by(2000) {
        let items: Vec<_> = (start..(start + 2000).min(channels))
            .map(|ch| {
                let mut item = json!({"channel": format!("c:{ch:06}"), "data": pad});
                if (ch + round).is_multiple_of(2) {
                    item["id"] = json!(format!("r{round}-{ch}"));
                }
                item
            })
            .collect();
        let r = c
            .post(gw.admin("/publish"))
            .json(&json!({ "items": items }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);
    }
}

fn size(p: &str) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// A field `name=value` of the last log line holding `what`, and that
/// line's timestamp.
fn logged(log: &str, what: &str, name: &str) -> Option<(SystemTime, f64)> {
    let line = log.lines().rev().find(|l| l.contains(what))?;
    let at = humantime::parse_rfc3339(line.split_whitespace().next()?).ok()?;
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))?
        .trim_matches('"')
        .parse()
        .ok()?;
    Some((at, value))
}

async fn wait_logged(gw: &Gateway, what: &str, name: &str, after: usize) -> (SystemTime, f64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let log = gw.log();
        if log.matches(what).count() > after {
            return logged(&log, what, name).unwrap_or_else(|| panic!("no {name} in {what}"));
        }
        assert!(Instant::now() < deadline, "no `{what}` in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn stats(mut v: Vec<f64>) -> (usize, f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    (
        v.len(),
        pct(&v, 0.5),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN),
    )
}

struct Run {
    fold_ms: f64,
    fold_mb: f64,
    during: (usize, f64, f64, f64),
    before: (usize, f64, f64, f64),
    /// Mean save while filling (100,000 events, ~12 MB, a save).
    fill_delta_ms: f64,
    /// Mean save with only the probe publishing (~150 events a save).
    delta_ms: f64,
    stop_ms: f64,
    load_ms: f64,
    load_mb: f64,
    events: f64,
    rss_before_mb: f64,
    rss_peak_mb: f64,
}

/// Sum and count of the interval saves' histogram.
async fn saves(gw: &Gateway) -> (f64, f64) {
    let sum = gw
        .metric("ssegate_persist_save_seconds_sum{kind=\"delta\"}")
        .await;
    let count = gw
        .metric("ssegate_persist_save_seconds_count{kind=\"delta\"}")
        .await;
    (sum, count)
}

async fn one_run(channels: usize) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let (ckpt, log) = (
        path.display().to_string(),
        format!("{}.log", path.display()),
    );
    let mut gw = Gateway::start(&conf(&path));
    // Fill: a full history, then rounds until the log is one round short of
    // being folded (the fold writes the whole history, whatever its parts).
    let mut r = 0;
    loop {
        round(&gw, channels, r).await;
        r += 1;
        // Its save lands before we look. A fold in progress keeps the log
        // over the threshold until it is done, so the loop goes on then.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let threshold = (64u64 << 20).max(2 * size(&ckpt));
        let per_round = size(&log) / r as u64;
        let (c, l) = (size(&ckpt), size(&log));
        if r >= 10 && c > 1024 && l < threshold && l + per_round * 3 / 2 >= threshold {
            break;
        }
        assert!(r < 60, "the log never got near a fold");
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let folds = gw.log().matches("log folded").count();
    let (fill_sum, fill_count) = saves(&gw).await;
    // Probe: one small event every 5 ms, its request's round trip.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = {
        let url = gw.admin("/publish");
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = client();
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let at = SystemTime::now();
                let t = Instant::now();
                let r = c
                    .post(&url)
                    .json(&json!({"channel": "probe", "data": 1}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 200);
                seen.push((at, t.elapsed().as_secs_f64() * 1e3));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet_end = SystemTime::now();
    let (quiet_sum, quiet_count) = saves(&gw).await;
    let rss_before = gw.rss();
    // Push the log over the threshold (a round, then time for its save to
    // land), and publish nothing more while the fold runs.
    let mut rss_peak = rss_before;
    loop {
        round(&gw, channels, r).await;
        r += 1;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        rss_peak = rss_peak.max(gw.rss());
        let threshold = (64u64 << 20).max(2 * size(&ckpt));
        if gw.log().matches("log folded").count() > folds || size(&log) > threshold {
            break;
        }
        assert!(r < 80, "no fold");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while gw.log().matches("log folded").count() == folds {
        rss_peak = rss_peak.max(gw.rss());
        assert!(Instant::now() < deadline, "no fold within 2 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (end, fold_ms) = wait_logged(&gw, "log folded", "ms", folds).await;
    let (_, fold_bytes) = wait_logged(&gw, "log folded", "bytes", folds).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = probe.await.unwrap();
    let start = end - Duration::from_secs_f64(fold_ms / 1e3);
    if std::env::var_os("BENCH_TRACE").is_some() {
        for (at, ms) in &seen {
            let rel = |t: SystemTime| match at.duration_since(t) {
                Ok(d) => d.as_secs_f64(),
                Err(e) => -e.duration().as_secs_f64(),
            };
            if *ms > 5.0 || (rel(start) > -0.1 && rel(end) < 0.1) {
                println!(
                    "probe at start{:+.3}s end{:+.3}s took {ms:.2} ms",
                    rel(start),
                    rel(end)
                );
            }
        }
    }
    let during: Vec<f64> = seen
        .iter()
        .filter(|(at, _)| *at >= start && *at <= end)
        .map(|s| s.1)
        .collect();
    let before: Vec<f64> = seen
        .iter()
        .filter(|(at, _)| *at < quiet_end)
        .map(|s| s.1)
        .collect();
    // Stop (the final save), then load everything at the next start.
    gw.signal("-TERM");
    assert_eq!(
        gw.wait_exit(Duration::from_secs(60)),
        Some(0),
        "{}",
        gw.log()
    );
    let (_, stop_ms) = logged(&gw.log(), "saved at stop", "ms").expect("stop save logged");
    let gw2 = Gateway::start(&conf(&path));
    let text = gw2.log();
    let (_, load_ms) = logged(&text, "history loaded", "ms").expect("load logged");
    let (_, load_bytes) = logged(&text, "history loaded", "bytes").expect("load logged");
    let (_, events) = logged(&text, "history loaded", "events").expect("load logged");
    Run {
        fold_ms,
        fold_mb: fold_bytes / 1e6,
        during: stats(during),
        before: stats(before),
        fill_delta_ms: fill_sum / fill_count * 1e3,
        delta_ms: (quiet_sum - fill_sum) / (quiet_count - fill_count) * 1e3,
        stop_ms,
        load_ms,
        load_mb: load_bytes / 1e6,
        events,
        rss_before_mb: rss_before as f64 / 1e6,
        rss_peak_mb: rss_peak as f64 / 1e6,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn persist_a_100mb_history() {
    let runs = env("BENCH_RUNS", 3);
    let channels = env("BENCH_CHANNELS", 100_000);
    let mut all = Vec::new();
    for i in 0..runs {
        let r = one_run(channels).await;
        println!(
            "run {i}: fold {:.0} ms writing {:.1} MB; publish during fold n={} p50 {:.2} p99 {:.2} max {:.2} ms; \
             before n={} p50 {:.2} p99 {:.2} max {:.2} ms; interval save mean {:.2} ms (while filling: {:.0} ms); stop save {:.0} ms; \
             load {:.0} ms of {:.1} MB ({} events); RSS {:.0} MB, peak {:.0} MB around the fold",
            r.fold_ms, r.fold_mb, r.during.0, r.during.1, r.during.2, r.during.3,
            r.before.0, r.before.1, r.before.2, r.before.3, r.delta_ms, r.fill_delta_ms, r.stop_ms,
            r.load_ms, r.load_mb, r.events, r.rss_before_mb, r.rss_peak_mb
        );
        all.push(r);
    }
    let median = |f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = all.iter().map(f).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    println!(
        "median of {runs}: fold {:.0} ms ({:.1} MB); publish during fold p50 {:.2} / p99 {:.2} / max {:.2} ms \
         vs before p50 {:.2} / p99 {:.2} / max {:.2} ms; interval save {:.2} ms (while filling {:.0} ms); stop save {:.0} ms; load {:.0} ms ({:.1} MB)",
        median(&|r| r.fold_ms),
        median(&|r| r.fold_mb),
        median(&|r| r.during.1),
        median(&|r| r.during.2),
        median(&|r| r.during.3),
        median(&|r| r.before.1),
        median(&|r| r.before.2),
        median(&|r| r.before.3),
        median(&|r| r.delta_ms),
        median(&|r| r.fill_delta_ms),
        median(&|r| r.stop_ms),
        median(&|r| r.load_ms),
        median(&|r| r.load_mb),
    );
}

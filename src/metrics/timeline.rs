//! The last minutes, one point a second, for the dashboard's charts: events
//! published and delivered per second, open streams, and the p50/p99 event
//! age of the deliveries of that second (from the event-age histograms'
//! bucket counts, interpolated as Prometheus' `histogram_quantile` does).
//! Sampled from the counters the gateway keeps anyway: a few atomic reads
//! a second, whether or not anyone watches, so a dashboard opened now
//! shows the minutes before it.

use super::Metrics;
use prometheus::core::Metric;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Points kept: five minutes at one a second.
const POINTS: usize = 300;

/// One second of the gateway.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Point {
    /// Unix time, milliseconds.
    pub t: u64,
    /// Events published per second.
    pub events: f64,
    /// Frames written to clients per second.
    pub deliveries: f64,
    /// Open SSE streams.
    pub streams: u64,
    /// Event age of the second's deliveries, milliseconds; None without any.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Slow clients disconnected in that second.
    pub slow: u64,
}

#[derive(Debug, Default)]
pub struct Timeline {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    points: VecDeque<Point>,
    last: Option<Counters>,
}

/// The counters a point is the difference of.
#[derive(Debug, Clone)]
struct Counters {
    t: u64,
    published: u64,
    delivered: u64,
    slow: u64,
    /// Cumulative event-age bucket counts, all sources added up.
    ages: Vec<u64>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Timeline {
    /// Add the point since the previous sample (none on the first call).
    pub fn sample(&self, m: &Metrics, streams: usize) {
        let now = Counters {
            t: now_ms(),
            published: m.published.get(),
            delivered: m.delivered.get(),
            slow: m.slow_disconnects.get(),
            ages: age_buckets(m),
        };
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(prev) = st.last.replace(now.clone()) {
            let secs = (now.t.saturating_sub(prev.t) as f64 / 1000.0).max(0.001);
            let ages: Vec<u64> = now
                .ages
                .iter()
                .zip(&prev.ages)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            let point = Point {
                t: now.t,
                events: now.published.saturating_sub(prev.published) as f64 / secs,
                deliveries: now.delivered.saturating_sub(prev.delivered) as f64 / secs,
                streams: streams as u64,
                p50_ms: quantile(0.5, &ages).map(|s| s * 1000.0),
                p99_ms: quantile(0.99, &ages).map(|s| s * 1000.0),
                slow: now.slow.saturating_sub(prev.slow),
            };
            if st.points.len() == POINTS {
                st.points.pop_front();
            }
            st.points.push_back(point);
        }
    }

    pub fn points(&self) -> Vec<Point> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.points.iter().cloned().collect()
    }

    pub fn latest(&self) -> Option<Point> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.points.back().cloned()
    }
}

/// Cumulative bucket counts (`LATENCY_BUCKETS` order, +Inf last) of every
/// source's event-age histogram, added up.
fn age_buckets(m: &Metrics) -> Vec<u64> {
    let mut out = vec![0u64; super::LATENCY_BUCKETS.len() + 1];
    for h in &m.event_age {
        let metric = h.metric();
        let hist = metric.get_histogram();
        for (slot, b) in out.iter_mut().zip(hist.get_bucket()) {
            *slot += b.cumulative_count();
        }
        if let Some(inf) = out.last_mut() {
            *inf += hist.get_sample_count();
        }
    }
    out
}

/// The `q` quantile, in seconds, of observations counted in cumulative
/// `buckets` (`LATENCY_BUCKETS` upper bounds, then +Inf); linear within a
/// bucket, and the highest finite bound for what lies above it.
fn quantile(q: f64, buckets: &[u64]) -> Option<f64> {
    let total = *buckets.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let bounds = &super::LATENCY_BUCKETS;
    let mut below = 0u64;
    for (i, &cum) in buckets.iter().enumerate() {
        if cum as f64 >= rank {
            let Some(&upper) = bounds.get(i) else {
                return bounds.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { bounds[i - 1] };
            let inside = (cum - below) as f64;
            let into = if inside > 0.0 {
                (rank - below as f64) / inside
            } else {
                1.0
            };
            return Some(lower + (upper - lower) * into);
        }
        below = cum;
    }
    bounds.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{count_written, Delivery, Source};

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let n = super::super::LATENCY_BUCKETS.len() + 1;
        let mut b = vec![0u64; n];
        // 100 observations, all in the (1 ms, 2.5 ms] bucket (index 4).
        for slot in b.iter_mut().skip(4) {
            *slot = 100;
        }
        let p50 = quantile(0.5, &b).unwrap();
        assert!((p50 - 0.00175).abs() < 1e-9, "{p50}");
        assert_eq!(quantile(0.5, &vec![0; n]), None);
    }

    #[test]
    fn a_point_is_the_second_since_the_previous_sample() {
        let m = Metrics::new();
        let t = Timeline::default();
        t.sample(&m, 0);
        assert!(t.points().is_empty(), "the first sample is the baseline");
        m.published.inc_by(3);
        let d = Delivery {
            source: Source::Publish,
            ..Delivery::uncounted(bytes::Bytes::new())
        };
        count_written(&[d.clone(), d], &m);
        t.sample(&m, 7);
        let p = t.latest().unwrap();
        assert!(p.events > 0.0 && p.deliveries > 0.0, "{p:?}");
        assert_eq!(p.streams, 7);
        assert!(p.p50_ms.is_some_and(|ms| ms < 1.0), "{p:?}");
        for _ in 0..POINTS + 5 {
            t.sample(&m, 0);
        }
        assert_eq!(t.points().len(), POINTS);
    }
}

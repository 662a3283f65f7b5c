//! What a subscriber records per delivery: the probe's seq and timestamp,
//! missing / duplicate / unexpected seqs, latency (batched into the shared
//! histograms), and the shared counters the run's controller reads.

use crate::sse::Event;
use crate::sse_client::{lock, now_unix_nanos, Shared, SubResult, SubSpec, HIST_SHARDS};
use serde::Deserialize;
use std::sync::atomic::Ordering;

const LAT_BATCH: usize = 256;

#[derive(Deserialize)]
struct Probe {
    seq: u64,
    t: u64,
}

/// Seqs received, one bit each. Up to 256 inline: at the arrival of an
/// event the subscriber's state is cold (10,000 of them), and every pointer
/// followed is one more cache miss per delivery.
enum Seen {
    Inline([u64; 4]),
    Heap(Vec<u64>),
}

impl Seen {
    fn new(n: usize) -> Self {
        if n <= 256 {
            Seen::Inline([0; 4])
        } else {
            Seen::Heap(vec![0; n.div_ceil(64)])
        }
    }

    /// Mark `i` received; false when it already was.
    fn insert(&mut self, i: usize) -> bool {
        let words: &mut [u64] = match self {
            Seen::Inline(w) => w,
            Seen::Heap(v) => v,
        };
        let (w, b) = (&mut words[i / 64], 1u64 << (i % 64));
        let new = *w & b == 0;
        *w |= b;
        new
    }
}

/// Per-subscriber bookkeeping; the spec's numbers are copied in so that an
/// event touches this struct and not the spec too.
pub struct Tracker<'a> {
    events: u64,
    stride: u64,
    offset: u64,
    shard: usize,
    shared: &'a Shared,
    seen: Seen,
    pub res: SubResult,
    lat_buf: Vec<u64>,
    /// Deliveries not yet added to `Shared::deliveries`.
    unpublished: u64,
    counted_done: bool,
}

impl Tracker<'_> {
    pub fn on_event(&mut self, ev: &Event) {
        let Ok(p) = serde_json::from_slice::<Probe>(ev.data) else {
            self.res.other_events += 1;
            return;
        };
        let now = now_unix_nanos();
        let lat_us = now.saturating_sub(p.t) / 1000;
        if p.seq >= self.events || p.seq % self.stride != self.offset {
            self.res.unexpected += 1;
            return;
        }
        if !self.seen.insert((p.seq / self.stride) as usize) {
            self.res.dups += 1;
            return;
        }
        self.res.distinct += 1;
        self.lat_buf.push(lat_us.max(1));
        if self.lat_buf.len() >= LAT_BATCH {
            self.flush();
        }
        self.shared.per_seq_max_us.raise(p.seq as usize, lat_us + 1);
        self.unpublished += 1;
        if self.res.distinct == self.res.expected {
            self.mark_done();
        }
    }

    /// Add this read's deliveries to the shared counters: once per read
    /// (one HTTP/2 DATA frame, or what one socket read held), not per
    /// event.
    pub fn publish_counts(&mut self) {
        if self.unpublished == 0 {
            return;
        }
        let sh = self.shared;
        sh.deliveries
            .fetch_add(std::mem::take(&mut self.unpublished), Ordering::Relaxed);
        sh.last_delivery_ns
            .fetch_max(sh.since_base_ns(), Ordering::Relaxed);
    }

    pub fn mark_done(&mut self) {
        // The controller reads the counters once everyone is done.
        self.publish_counts();
        if !self.counted_done {
            self.counted_done = true;
            self.shared.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn flush(&mut self) {
        if self.lat_buf.is_empty() {
            return;
        }
        let shard = &self.shared.shards[self.shard];
        let mut h = lock(shard);
        for &v in &self.lat_buf {
            h.saturating_record(v);
        }
        drop(h);
        self.lat_buf.clear();
    }
}

impl<'a> Tracker<'a> {
    pub fn new(spec: &SubSpec, shared: &'a Shared, expected: u64) -> Self {
        Tracker {
            events: spec.events,
            stride: spec.stride,
            offset: spec.offset,
            shard: spec.index % HIST_SHARDS,
            shared,
            seen: Seen::new(expected as usize),
            res: SubResult {
                expected,
                ..Default::default()
            },
            lat_buf: Vec::new(),
            unpublished: 0,
            counted_done: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_marks_each_seq_once() {
        for n in [1, 256, 257, 1000] {
            let mut s = Seen::new(n);
            assert_eq!(matches!(s, Seen::Inline(_)), n <= 256);
            for i in 0..n {
                assert!(s.insert(i), "{i} of {n}");
            }
            assert!(!s.insert(0) && !s.insert(n - 1), "{n}");
        }
    }
}

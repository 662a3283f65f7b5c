//! SSE subscriber tasks: raw HTTP/1.1 GET, body de-framing, SSE parsing and
//! per-delivery bookkeeping (latency, missing, duplicates).

use crate::http::{self, BodyDecoder};
use crate::sse::{Event, SseParser};
use crate::target::Target;
use bytes::BytesMut;
use hdrhistogram::Histogram;
use serde::Deserialize;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{watch, Semaphore};

const HIST_SHARDS: usize = 32;
const LAT_BATCH: usize = 256;
const MAX_ERRORS: usize = 8;

pub fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 1 h, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("histogram bounds")
}

/// State shared by all subscribers of one run.
pub struct Shared {
    pub base: Instant,
    pub streaming: AtomicUsize,
    pub failed: AtomicUsize,
    /// ns since `base` when the last subscriber became streaming.
    pub last_streaming_ns: AtomicU64,
    /// Subscribers that have everything they expect, or that ended.
    pub done: AtomicUsize,
    /// Subscribers whose stream ended (EOF / error) before shutdown.
    pub ended: AtomicUsize,
    pub deliveries: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    /// Per seq: 1 + max latency (µs) over subscribers; 0 = never received.
    pub per_seq_max_us: Vec<AtomicU64>,
    shards: Vec<Mutex<Histogram<u64>>>,
    pub errors: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new(events: u64) -> Arc<Self> {
        Arc::new(Shared {
            base: Instant::now(),
            streaming: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            last_streaming_ns: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            deliveries: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            per_seq_max_us: (0..events).map(|_| AtomicU64::new(0)).collect(),
            shards: (0..HIST_SHARDS)
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
            errors: Mutex::new(Vec::new()),
        })
    }

    pub fn since_base_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    pub fn note_error(&self, e: String) {
        let mut errs = self.errors.lock().unwrap();
        if errs.len() < MAX_ERRORS {
            errs.push(e);
        }
    }

    /// Merge all latency shards into one histogram.
    pub fn merged_latency(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in &self.shards {
            h.add(&*s.lock().unwrap()).expect("same bounds");
        }
        h
    }
}

/// Everything one subscriber needs to know.
pub struct SubSpec {
    pub index: usize,
    pub target: Target,
    pub src: Option<Ipv4Addr>,
    /// Total events published in the run (seq space 0..events).
    pub events: u64,
    /// This subscriber expects seqs with `seq % stride == offset`.
    pub stride: u64,
    pub offset: u64,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
}

impl SubSpec {
    pub fn expected(&self) -> u64 {
        if self.offset >= self.events {
            0
        } else {
            (self.events - 1 - self.offset) / self.stride + 1
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct SubResult {
    pub streaming: bool,
    pub expected: u64,
    pub distinct: u64,
    pub dups: u64,
    /// Valid probe events whose seq this subscriber should not get.
    pub unexpected: u64,
    /// Events whose data is not a {"seq","t"} probe.
    pub other_events: u64,
    /// Stream ended (EOF / error) before shutdown.
    pub ended_early: bool,
}

#[derive(Deserialize)]
struct Probe {
    seq: u64,
    t: u64,
}

struct Tracker<'a> {
    spec: &'a SubSpec,
    shared: &'a Shared,
    seen: Vec<u64>,
    res: SubResult,
    lat_buf: Vec<u64>,
    counted_done: bool,
}

impl Tracker<'_> {
    fn on_event(&mut self, ev: &Event) {
        let Ok(p) = serde_json::from_slice::<Probe>(&ev.data) else {
            self.res.other_events += 1;
            return;
        };
        let now = now_unix_nanos();
        let lat_us = now.saturating_sub(p.t) / 1000;
        if p.seq >= self.spec.events || p.seq % self.spec.stride != self.spec.offset {
            self.res.unexpected += 1;
            return;
        }
        let local = (p.seq / self.spec.stride) as usize;
        let (w, b) = (local / 64, 1u64 << (local % 64));
        if self.seen[w] & b != 0 {
            self.res.dups += 1;
            return;
        }
        self.seen[w] |= b;
        self.res.distinct += 1;
        self.lat_buf.push(lat_us.max(1));
        if self.lat_buf.len() >= LAT_BATCH {
            self.flush();
        }
        let sh = self.shared;
        sh.per_seq_max_us[p.seq as usize].fetch_max(lat_us + 1, Ordering::Relaxed);
        sh.deliveries.fetch_add(1, Ordering::Relaxed);
        sh.last_delivery_ns
            .fetch_max(sh.since_base_ns(), Ordering::Relaxed);
        if self.res.distinct == self.res.expected {
            self.mark_done();
        }
    }

    fn mark_done(&mut self) {
        if !self.counted_done {
            self.counted_done = true;
            self.shared.done.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn flush(&mut self) {
        if self.lat_buf.is_empty() {
            return;
        }
        let shard = &self.shared.shards[self.spec.index % HIST_SHARDS];
        let mut h = shard.lock().unwrap();
        for &v in &self.lat_buf {
            h.saturating_record(v);
        }
        drop(h);
        self.lat_buf.clear();
    }
}

/// Connect, stream and track until `shutdown` flips to true or the stream ends.
pub async fn run_subscriber(
    spec: SubSpec,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) -> SubResult {
    let expected = spec.expected();
    let mut tr = Tracker {
        spec: &spec,
        shared: &shared,
        seen: vec![0u64; (expected as usize).div_ceil(64)],
        res: SubResult {
            expected,
            ..Default::default()
        },
        lat_buf: Vec::new(),
        counted_done: false,
    };

    // --- connect phase (bounded by connect + header timeouts) ---
    let connect = async {
        let _permit = sem.acquire().await.map_err(|e| e.to_string())?;
        let mut stream =
            http::connect_from(spec.src, spec.target.addr, spec.connect_timeout).await?;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\nUser-Agent: ssegate-loadgen\r\n\r\n",
            spec.target.path, spec.target.host_header
        );
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write request: {e}"))?;
        let mut raw = BytesMut::with_capacity(4096);
        let head = http::read_head(&mut stream, &mut raw, spec.header_timeout).await?;
        if head.status != 200 {
            return Err(format!("status {} from {}", head.status, spec.target.path));
        }
        Ok((stream, raw, head))
    };
    let conn = tokio::select! {
        r = connect => r,
        _ = shutdown.wait_for(|v| *v) => Err("shutdown while connecting".to_string()),
    };
    let (mut stream, mut raw, head) = match conn {
        Ok(c) => c,
        Err(e) => {
            shared.failed.fetch_add(1, Ordering::AcqRel);
            shared.note_error(format!("subscriber {}: {e}", spec.index));
            tr.mark_done();
            return tr.res;
        }
    };
    if !head
        .content_type
        .as_deref()
        .is_some_and(|c| c.to_ascii_lowercase().contains("text/event-stream"))
    {
        shared.note_error(format!(
            "subscriber {}: content-type {:?} is not text/event-stream",
            spec.index, head.content_type
        ));
    }
    tr.res.streaming = true;
    shared
        .last_streaming_ns
        .fetch_max(shared.since_base_ns(), Ordering::Relaxed);
    shared.streaming.fetch_add(1, Ordering::AcqRel);
    if expected == 0 {
        tr.mark_done();
    }

    // --- streaming phase ---
    let mut body = BodyDecoder::new(head.framing);
    let mut parser = SseParser::new();
    loop {
        if !raw.is_empty() {
            let r = body.decode(&mut raw, &mut |chunk: &[u8]| {
                parser.feed(chunk, &mut |ev: &Event| tr.on_event(ev))
            });
            if let Err(e) = r {
                shared.note_error(format!("subscriber {}: body: {e}", spec.index));
                tr.res.ended_early = true;
                break;
            }
            if body.is_done() {
                tr.res.ended_early = true;
                break;
            }
        }
        if raw.capacity() - raw.len() < 1024 {
            raw.reserve(4096);
        }
        tokio::select! {
            r = stream.read_buf(&mut raw) => match r {
                Ok(0) => { tr.res.ended_early = true; break; }
                Ok(_) => {}
                Err(e) => {
                    shared.note_error(format!("subscriber {}: read: {e}", spec.index));
                    tr.res.ended_early = true;
                    break;
                }
            },
            _ = shutdown.wait_for(|v| *v) => break,
        }
    }
    tr.flush();
    tr.mark_done();
    if tr.res.ended_early {
        shared.ended.fetch_add(1, Ordering::AcqRel);
    }
    tr.res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_counts() {
        let mk = |events, stride, offset| SubSpec {
            index: 0,
            target: crate::target::parse_url("http://127.0.0.1:1/").unwrap(),
            src: None,
            events,
            stride,
            offset,
            connect_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(1),
        };
        assert_eq!(mk(10, 1, 0).expected(), 10);
        assert_eq!(mk(10, 3, 0).expected(), 4); // 0,3,6,9
        assert_eq!(mk(10, 3, 2).expected(), 3); // 2,5,8
        assert_eq!(mk(2, 5, 4).expected(), 0);
        assert_eq!(mk(0, 1, 0).expected(), 0);
    }
}

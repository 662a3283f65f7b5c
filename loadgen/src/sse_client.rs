//! SSE subscriber tasks: open a stream over any transport (`conn`), parse
//! it per WHATWG, and keep per-delivery bookkeeping (latency, missing,
//! duplicates). With a reconnecting policy a subscriber behaves like a
//! browser's EventSource: it reconnects after network errors and ended
//! streams, waits the `retry:` it was told, and sends `Last-Event-ID`.

use crate::conn::{OpenError, Opener};
use crate::seqmax::SeqMax;
use crate::sse::{Event, SseParser};
use crate::target::Target;
use crate::tracker::Tracker;
use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{watch, Semaphore};

pub(crate) const HIST_SHARDS: usize = 32;
const MAX_ERRORS: usize = 8;
/// Generations of a run: 0 = the first connect, 1 = after a storm's drop.
pub const GENERATIONS: usize = 2;

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

/// A poisoned lock only means another subscriber panicked; the data (counters,
/// histograms) is still good to read.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the run's controller tells every subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Be connected and streaming (in generation `gen`).
    Run,
    /// Close the connection now and wait (a storm's drop).
    Drop,
    /// Close and end.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ctl {
    pub gen: usize,
    pub action: Action,
}

/// How a subscriber behaves when a stream cannot be opened or ends.
#[derive(Debug, Clone)]
pub struct Policy {
    /// EventSource-like: reconnect after network errors, retry-only answers
    /// and ended streams. Off: one attempt, as in the fan-out tests.
    pub reconnect: bool,
    /// Also reconnect after a non-200 status (a browser does not).
    pub retry_status: bool,
    /// Count as streaming at the prelude (anything but `retry:`), not at
    /// the response head.
    pub ready_on_prelude: bool,
    /// Reconnection time until the server sends `retry:` (ms).
    pub default_retry: Duration,
    /// Attempts per generation before giving up.
    pub max_attempts: u32,
    /// After a drop, wait a uniform random time in [0, spread] first.
    pub spread: Duration,
    pub seed: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            reconnect: false,
            retry_status: false,
            ready_on_prelude: false,
            default_retry: Duration::from_secs(3),
            max_attempts: 1,
            spread: Duration::ZERO,
            seed: 0,
        }
    }
}

/// Counters of one generation.
#[derive(Default)]
pub struct GenStats {
    /// Subscribers streaming in this generation (counted once each).
    pub ready: AtomicUsize,
    /// ns since `Shared::base` when the controller started the generation.
    pub start_ns: AtomicU64,
    pub last_ready_ns: AtomicU64,
    /// Subscribers that stopped trying in this generation.
    pub gave_up: AtomicUsize,
    pub attempts: AtomicU64,
    pub network_errors: AtomicU64,
    /// 200 answers with only `retry:` before their end (deferred admission).
    pub deferred: AtomicU64,
    /// 200 answers that ended with nothing at all.
    pub empty: AtomicU64,
    /// Streams that ended after they were streaming (then reconnected).
    pub ended_after_ready: AtomicU64,
    /// Attempts that sent a `Last-Event-ID`.
    pub resumed: AtomicU64,
    /// 200 answers whose content type was not text/event-stream.
    pub wrong_content_type: AtomicU64,
    /// Non-200 statuses.
    pub statuses: Mutex<BTreeMap<u16, u64>>,
    /// Per subscriber: ms from the generation's start to streaming.
    pub ready_ms: Mutex<Vec<u64>>,
}

impl GenStats {
    pub fn resolved(&self) -> usize {
        self.ready.load(Ordering::Acquire) + self.gave_up.load(Ordering::Acquire)
    }
    pub fn statuses(&self) -> BTreeMap<u16, u64> {
        lock(&self.statuses).clone()
    }
}

/// State shared by all subscribers of one run.
pub struct Shared {
    pub base: Instant,
    pub gens: Vec<GenStats>,
    /// Subscribers that have everything they expect, or that ended.
    pub done: AtomicUsize,
    /// Subscribers whose stream ended (EOF / error) before shutdown, without
    /// reconnecting.
    pub ended: AtomicUsize,
    /// Subscribers that have closed their connection after a `Drop`.
    pub dropped: AtomicUsize,
    pub deliveries: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    /// Blank lines (events, heartbeats) and body bytes received, all streams.
    pub frames: AtomicU64,
    pub body_bytes: AtomicU64,
    /// Per seq: 1 + max latency (µs) over subscribers; 0 = never received.
    pub per_seq_max_us: SeqMax,
    pub(crate) shards: Vec<Mutex<Histogram<u64>>>,
    pub errors: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new(events: u64) -> Arc<Self> {
        Arc::new(Shared {
            base: Instant::now(),
            gens: (0..GENERATIONS).map(|_| GenStats::default()).collect(),
            done: AtomicUsize::new(0),
            ended: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            deliveries: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            body_bytes: AtomicU64::new(0),
            per_seq_max_us: SeqMax::new(events as usize),
            shards: (0..HIST_SHARDS)
                .map(|_| Mutex::new(new_histogram()))
                .collect(),
            errors: Mutex::new(Vec::new()),
        })
    }

    pub fn since_base_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    /// Streaming subscribers of the first generation.
    pub fn streaming(&self) -> usize {
        self.gens[0].ready.load(Ordering::Acquire)
    }

    /// Subscribers of the first generation that never got a stream.
    pub fn failed(&self) -> usize {
        self.gens[0].gave_up.load(Ordering::Acquire)
    }

    pub fn note_error(&self, e: String) {
        let mut errs = lock(&self.errors);
        if errs.len() < MAX_ERRORS {
            errs.push(e);
        }
    }

    /// Merge all latency shards into one histogram.
    pub fn merged_latency(&self) -> Histogram<u64> {
        let mut h = new_histogram();
        for s in &self.shards {
            let _ = h.add(&*lock(s));
        }
        h
    }
}

/// Everything one subscriber needs to know.
pub struct SubSpec {
    pub index: usize,
    pub target: Target,
    pub src: Option<Ipv4Addr>,
    pub opener: Opener,
    /// Total events published in the run (seq space 0..events).
    pub events: u64,
    /// This subscriber expects seqs with `seq % stride == offset`.
    pub stride: u64,
    pub offset: u64,
    pub policy: Arc<Policy>,
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
    /// Stream ended (EOF / error) before shutdown, and was not reopened.
    pub ended_early: bool,
}

/// splitmix64: small, seeded, reproducible (not for anything secret).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, d].
    pub fn upto(&mut self, d: Duration) -> Duration {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        if ns == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % (ns + 1))
    }
}

/// Why a wait was cut short.
enum Wake {
    /// The timer ran out (or the controller still says Run, same gen).
    Elapsed,
    /// The controller said something else (Drop, Stop, a new generation).
    Ctl,
}

/// True while the controller wants this generation running.
fn running(c: &Ctl, gen: usize) -> bool {
    c.action == Action::Run && c.gen == gen
}

/// Sleep `d` unless the controller changes its mind first.
async fn sleep_or_ctl(d: Duration, ctl: &mut watch::Receiver<Ctl>, gen: usize) -> Wake {
    tokio::select! {
        _ = tokio::time::sleep(d) => Wake::Elapsed,
        _ = ctl.wait_for(|c| !running(c, gen)) => Wake::Ctl,
    }
}

/// Connect, stream and track until the controller says `Stop` (or, without
/// a reconnecting policy, until the stream ends or fails).
pub async fn run_subscriber(
    spec: SubSpec,
    shared: Arc<Shared>,
    sem: Arc<Semaphore>,
    mut ctl: watch::Receiver<Ctl>,
) -> SubResult {
    let expected = spec.expected();
    let policy = spec.policy.clone();
    let mut tr = Tracker::new(&spec, &shared, expected);
    let mut rng = Rng::new(
        policy
            .seed
            .wrapping_add((spec.index as u64).wrapping_mul(0xA24B_AED4_963E_E407)),
    );
    // The EventSource's last event ID string and reconnection time.
    let mut last_id: Option<String> = None;
    let mut retry = policy.default_retry;
    let mut gen = 0usize;
    let mut attempts = 0u32;
    // Counted as streaming in this generation (once, however often reopened).
    let mut counted = false;
    let mut gave_up = false;
    let mut acked_drop: Option<usize> = None;

    loop {
        // Wait until the controller wants us streaming.
        let c = *ctl.borrow_and_update();
        match c.action {
            Action::Stop => break,
            Action::Drop => {
                // Every path here has already let go of its connection.
                if acked_drop != Some(c.gen) {
                    acked_drop = Some(c.gen);
                    shared.dropped.fetch_add(1, Ordering::AcqRel);
                }
                if ctl.changed().await.is_err() {
                    break;
                }
                continue;
            }
            Action::Run => {}
        }
        if c.gen != gen {
            gen = c.gen.min(GENERATIONS - 1);
            (attempts, counted, gave_up) = (0, false, false);
            if !policy.spread.is_zero() {
                if let Wake::Ctl = sleep_or_ctl(rng.upto(policy.spread), &mut ctl, c.gen).await {
                    continue;
                }
            }
        }
        let g = &shared.gens[gen];
        if gave_up || attempts >= policy.max_attempts {
            if !gave_up {
                gave_up = true;
                g.gave_up.fetch_add(1, Ordering::AcqRel);
                tr.mark_done();
            }
            if !policy.reconnect {
                break;
            }
            // Stay given up for this generation; a new one tries again.
            if ctl.wait_for(|x| !running(x, c.gen)).await.is_err() {
                break;
            }
            continue;
        }
        attempts += 1;
        g.attempts.fetch_add(1, Ordering::Relaxed);
        if last_id.as_deref().is_some_and(|s| !s.is_empty()) {
            g.resumed.fetch_add(1, Ordering::Relaxed);
        }

        let open = async {
            let _permit = sem
                .acquire()
                .await
                .map_err(|e| OpenError::Network(e.to_string()))?;
            spec.opener
                .open(spec.src, &spec.target, last_id.as_deref())
                .await
        };
        let opened = tokio::select! {
            r = open => r,
            _ = ctl.wait_for(|x| !running(x, c.gen)) => continue,
        };
        let mut opened = match opened {
            Ok(o) => o,
            Err(e) => {
                let retry_it = match e {
                    OpenError::Network(e) => {
                        g.network_errors.fetch_add(1, Ordering::Relaxed);
                        shared.note_error(format!("subscriber {}: {e}", spec.index));
                        policy.reconnect
                    }
                    OpenError::Status(s) => {
                        *lock(&g.statuses).entry(s).or_default() += 1;
                        shared.note_error(format!(
                            "subscriber {}: status {s} from {}",
                            spec.index, spec.target.path
                        ));
                        policy.reconnect && policy.retry_status
                    }
                };
                if retry_it {
                    sleep_or_ctl(retry, &mut ctl, c.gen).await;
                } else {
                    attempts = policy.max_attempts;
                }
                continue;
            }
        };
        if !opened.event_stream {
            g.wrong_content_type.fetch_add(1, Ordering::Relaxed);
            shared.note_error(format!(
                "subscriber {}: content-type is not text/event-stream",
                spec.index
            ));
        }
        // This stream is streaming: count it (once per generation).
        let mut stream_ready = false;
        let mut mark_ready = |stream_ready: &mut bool, tr: &mut Tracker| {
            *stream_ready = true;
            tr.res.streaming = true;
            if counted {
                return;
            }
            counted = true;
            let now = shared.since_base_ns();
            let start = g.start_ns.load(Ordering::Acquire);
            lock(&g.ready_ms).push(now.saturating_sub(start) / 1_000_000);
            g.last_ready_ns.fetch_max(now, Ordering::Relaxed);
            g.ready.fetch_add(1, Ordering::AcqRel);
            if expected == 0 {
                tr.mark_done();
            }
        };
        if !policy.ready_on_prelude {
            mark_ready(&mut stream_ready, &mut tr);
        }

        // --- streaming ---
        let mut parser = SseParser::new();
        let mut frames_seen = 0u64;
        // Ok(None): the controller wants the connection closed.
        let outcome: Result<Option<()>, String> = {
            // One watch registration per stream, not one per read: a fresh
            // `wait_for` per read locks and unlocks the watch's waiter list
            // around every event.
            let stop = ctl.wait_for(|x| !running(x, c.gen));
            tokio::pin!(stop);
            loop {
                let mut bytes = 0usize;
                let mut sink = |chunk: &[u8]| {
                    bytes += chunk.len();
                    parser.feed(chunk, &mut |ev: &Event| tr.on_event(ev))
                };
                let r = tokio::select! {
                    biased;
                    _ = &mut stop => break Ok(None),
                    r = opened.body.read(&mut sink) => r,
                };
                tr.publish_counts();
                shared.body_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                if parser.frames != frames_seen {
                    shared
                        .frames
                        .fetch_add(parser.frames - frames_seen, Ordering::Relaxed);
                    frames_seen = parser.frames;
                }
                if !stream_ready && parser.prelude_seen() {
                    mark_ready(&mut stream_ready, &mut tr);
                }
                match r {
                    Ok(true) => {}
                    Ok(false) => break Ok(Some(())),
                    Err(e) => break Err(e),
                }
            }
        };
        drop(opened);
        // What the EventSource keeps for its next connection.
        if let Some(id) = parser.last_event_id() {
            last_id = Some(id.to_string());
        }
        if let Some(ms) = parser.retry {
            retry = Duration::from_millis(ms);
        }
        if let Ok(None) = outcome {
            continue; // dropped on purpose (storm) or stopped
        }
        // --- the stream ended ---
        if let Err(e) = &outcome {
            shared.note_error(format!("subscriber {}: body: {e}", spec.index));
        }
        if stream_ready {
            g.ended_after_ready.fetch_add(1, Ordering::Relaxed);
        } else if parser.retry.is_some() {
            g.deferred.fetch_add(1, Ordering::Relaxed);
        } else {
            g.empty.fetch_add(1, Ordering::Relaxed);
        }
        if !policy.reconnect {
            tr.res.ended_early = true;
            shared.ended.fetch_add(1, Ordering::AcqRel);
            if !counted {
                g.gave_up.fetch_add(1, Ordering::AcqRel);
            }
            break;
        }
        // Reconnect like an EventSource after its reconnection time.
        sleep_or_ctl(retry, &mut ctl, c.gen).await;
    }
    tr.flush();
    tr.mark_done();
    tr.res
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::Transport;

    fn transport() -> Arc<Transport> {
        Arc::new(Transport {
            h2: false,
            tls: None,
            connect_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(1),
            h2_stream_window: 65_535,
            h2_conn_window: 1 << 20,
        })
    }

    #[test]
    fn expected_counts() {
        let mk = |events, stride, offset| SubSpec {
            index: 0,
            target: crate::target::parse_url("http://127.0.0.1:1/").unwrap(),
            src: None,
            opener: Opener::H1(transport()),
            events,
            stride,
            offset,
            policy: Arc::new(Policy::default()),
        };
        assert_eq!(mk(10, 1, 0).expected(), 10);
        assert_eq!(mk(10, 3, 0).expected(), 4); // 0,3,6,9
        assert_eq!(mk(10, 3, 2).expected(), 3); // 2,5,8
        assert_eq!(mk(2, 5, 4).expected(), 0);
        assert_eq!(mk(0, 1, 0).expected(), 0);
    }

    #[test]
    fn rng_is_seeded_and_bounded() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..100 {
            let d = a.upto(Duration::from_millis(50));
            assert_eq!(d, b.upto(Duration::from_millis(50)));
            assert!(d <= Duration::from_millis(50));
        }
        assert_eq!(a.upto(Duration::ZERO), Duration::ZERO);
    }
}

//! One client's bounded queue. The hub offers frames without waiting; the
//! client's stream drains them. A full queue evicts the client (it resumes
//! from history on reconnect), so a slow reader costs bounded memory and
//! never slows a publisher.

use super::direct::{Direct, Slot, Tried};
use crate::origin::Source;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Instant;
use tokio::sync::Notify;

/// A frame on its way to one client. Cloning shares the bytes; it is
/// cloned per subscriber per event, so it stays small (64 bytes).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The hub cursor (0 for frames that carry none).
    pub seq: u64,
    pub frame: Bytes,
    /// When the hub published it.
    pub published: Instant,
    /// Microseconds from when the gateway received the event to `published`
    /// (saturating): the event's age is `published.elapsed()` plus this.
    pub ingest_us: u32,
    pub source: Source,
    /// GRIP content that is not whole SSE events: only GRIP holds take it.
    pub grip_only: bool,
}

impl Delivery {
    /// A frame that moves no resume point and is no event of any source: a
    /// comment, a snapshot, a reset, a local feed's update (no event age).
    pub fn uncounted(frame: Bytes) -> Delivery {
        Delivery {
            seq: 0,
            frame,
            published: Instant::now(),
            ingest_us: 0,
            source: Source::Gateway,
            grip_only: false,
        }
    }

    /// Frame `seq` of a recorded backend reply (`record:` routes), as this
    /// instance got it at `published`.
    pub fn recorded(seq: u64, frame: Bytes, published: Instant) -> Delivery {
        Delivery {
            seq,
            frame,
            published,
            ingest_us: 0,
            source: Source::Record,
            grip_only: false,
        }
    }
}

/// Microseconds from `received` to `published`, as a `Delivery` keeps them.
pub fn ingest_us(received: Instant, published: Instant) -> u32 {
    let us = published.saturating_duration_since(received).as_micros();
    u32::try_from(us).unwrap_or(u32::MAX)
}

/// Count a batch of frames written to one client: deliveries, publish-to-
/// write latency and each event's age by source. Called by the stream
/// engine after each write (and by the benches, which measure what it costs
/// per delivery): one clock read per batch, two histogram observations per
/// event frame.
pub fn count_written(batch: &[Delivery], metrics: &crate::metrics::Metrics) {
    metrics.delivered.inc_by(batch.len() as u64);
    let now = Instant::now();
    for d in batch {
        let since = now.saturating_duration_since(d.published).as_secs_f64();
        metrics.latency.observe(since);
        if let Some(age) = metrics.event_age(d.source) {
            age.observe(since + f64::from(d.ingest_us) * 1e-6);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubState {
    Open,
    /// Evicted because its queue filled.
    Slow,
    /// Closed by a publisher (GRIP `action: close`) or by the gateway.
    Closed,
    /// Its JWT expired: the stream says so (`ssegate.expired`) and ends.
    Expired,
    /// Its route changed in a reload: the stream tells the client to come
    /// back (a jittered `retry:`) and ends.
    Retired,
    /// A live upgrade takes it: the stream stops where it is, writes
    /// nothing more, and its socket goes to the new process.
    HandingOff,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// Handed to the client's connection directly (`Direct`).
    Sent,
    /// This offer filled the queue: the client is evicted now, and these
    /// many queued frames were dropped with it.
    Evicted(usize),
    /// The client was already gone.
    Gone,
    /// GRIP content a native SSE client cannot take.
    NotForThisClient,
}

const OPEN: u8 = 0;
const SLOW: u8 = 1;
const CLOSED: u8 = 2;
const EXPIRED: u8 = 3;
const RETIRED: u8 = 4;
const HANDING_OFF: u8 = 5;

#[derive(Debug)]
pub struct Subscriber {
    id: u64,
    capacity: usize,
    /// A GRIP hold: takes GRIP content whatever its format.
    grip: bool,
    /// The fingerprint of the route it was opened on (0: none), so that a
    /// reload can end the streams of routes that changed.
    route: u64,
    movable: std::sync::atomic::AtomicBool,
    state: AtomicU8,
    // A std Mutex: held only to push or swap, never across an await.
    queue: Mutex<VecDeque<Delivery>>,
    wake: Notify,
    /// Set by a stream whose connection the hub may write into (`Direct`).
    direct: OnceLock<Mutex<Slot>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Subscriber {
    pub fn new(id: u64, capacity: usize) -> Subscriber {
        Subscriber {
            id,
            capacity: capacity.max(1),
            grip: false,
            route: 0,
            movable: std::sync::atomic::AtomicBool::new(false),
            state: AtomicU8::new(OPEN),
            queue: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            direct: OnceLock::new(),
        }
    }

    /// The subscriber of a stream on route `route` (a fingerprint); `grip`
    /// for a GRIP hold, which takes GRIP content whatever its format.
    pub fn on_route(id: u64, capacity: usize, route: u64, grip: bool) -> Subscriber {
        Subscriber {
            grip,
            route,
            ..Subscriber::new(id, capacity)
        }
    }

    pub fn route(&self) -> u64 {
        self.route
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn state(&self) -> SubState {
        match self.state.load(Ordering::Acquire) {
            OPEN => SubState::Open,
            SLOW => SubState::Slow,
            EXPIRED => SubState::Expired,
            RETIRED => SubState::Retired,
            HANDING_OFF => SubState::HandingOff,
            _ => SubState::Closed,
        }
    }

    pub fn offer(&self, d: &Delivery) -> Offer {
        if self.state.load(Ordering::Acquire) != OPEN {
            return Offer::Gone;
        }
        if d.grip_only && !self.grip {
            return Offer::NotForThisClient;
        }
        // The slot first, then the queue: a frame sent directly can never
        // overtake one still queued.
        let mut slot = self.direct.get().map(lock);
        let mut q = lock(&self.queue);
        if let Some(slot) = slot.as_mut() {
            match slot.try_send(d.seq, &d.frame, q.is_empty()) {
                Tried::Sent => return Offer::Sent,
                Tried::Duplicate => return Offer::Queued,
                Tried::Queue => {}
            }
        }
        if q.len() >= self.capacity {
            let dropped = q.len() + 1;
            *q = VecDeque::new();
            drop(q);
            drop(slot);
            self.state.store(SLOW, Ordering::Release);
            self.wake.notify_one();
            return Offer::Evicted(dropped);
        }
        let was_empty = q.is_empty();
        q.push_back(d.clone());
        drop(q);
        drop(slot);
        if was_empty {
            self.wake.notify_one();
        }
        Offer::Queued
    }

    /// A write waiting on this client's full socket stops waiting: it was
    /// evicted as slow, its credentials expired, its route changed, or a
    /// live upgrade takes it (with the rest of the write). A closed
    /// subscriber (its publisher or its record ended) is not cut: what it
    /// was sent before the close is still written.
    pub fn is_cut(&self) -> bool {
        matches!(
            self.state(),
            SubState::Slow | SubState::Expired | SubState::Retired | SubState::HandingOff
        )
    }

    /// End the stream (publisher close or shutdown).
    pub fn close(&self) {
        self.end_as(CLOSED);
    }

    /// End the stream because its credentials expired; the stream writes
    /// `ssegate.expired` before it closes.
    pub fn expire(&self) {
        self.end_as(EXPIRED);
    }

    /// End the stream because its route changed (reload); the stream tells
    /// the client when to come back before it closes.
    pub fn retire(&self) {
        self.end_as(RETIRED);
    }

    /// Freeze the stream for a live upgrade.
    pub fn hand_off(&self) {
        self.end_as(HANDING_OFF);
    }

    /// Whether its stream can be handed to a new process (a plain HTTP/1.1
    /// SSE stream detached from pingora).
    pub fn movable(&self) -> bool {
        self.movable.load(Ordering::Acquire)
    }

    pub fn set_movable(&self) {
        self.movable.store(true, Ordering::Release);
    }

    fn end_as(&self, state: u8) {
        if self
            .state
            .compare_exchange(OPEN, state, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// Move everything queued into `out` (appending).
    pub fn drain_into(&self, out: &mut Vec<Delivery>) {
        let mut q = lock(&self.queue);
        out.extend(q.drain(..));
        // A burst may have grown the buffer; an idle client should not keep it.
        if q.capacity() > 64 {
            *q = VecDeque::new();
        }
    }

    /// Wake the stream without queueing anything (heartbeat tick, drain): it
    /// looks at the world again.
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// The wake-up future itself, for a stream that polls it by hand.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Drain like `drain_into`, dropping frames at or below `last_seq` (a
    /// replay already held them: live and replay may overlap, never gap),
    /// and move `last_seq` past what is kept.
    pub fn drain_after(&self, out: &mut Vec<Delivery>, last_seq: &mut u64) {
        // Under the slot's lock: what went out directly moves the floor too.
        let mut slot = self.direct.get().map(lock);
        self.drain_into(out);
        let floor = slot.as_ref().map_or(*last_seq, |s| s.floor.max(*last_seq));
        out.retain(|d| d.seq == 0 || d.seq > floor);
        *last_seq = out.iter().map(|d| d.seq).fold(floor, u64::max);
        if let Some(slot) = slot.as_mut() {
            slot.floor = *last_seq;
        }
    }

    /// Give the hub a way to write into the client's connection itself.
    /// It is used only while the stream is parked (`arm` .. `disarm`).
    pub fn set_direct(&self, sink: Box<dyn Direct>) {
        lock(self.direct.get_or_init(Mutex::default)).sink = Some(sink);
    }

    /// Run `f` on the direct sink, as its concrete type (None when there is
    /// none, or of another type).
    pub fn with_direct<T: Direct, R>(&self, f: impl FnOnce(&mut T) -> R) -> Option<R> {
        let mut slot = lock(self.direct.get()?);
        slot.sink_mut::<T>().map(f)
    }

    /// The stream parks: frames may go directly from now on. False (and
    /// nothing changed) when frames are already queued — drain them first.
    pub fn arm(&self) -> bool {
        let Some(slot) = self.direct.get() else {
            return false;
        };
        let mut slot = lock(slot);
        if !lock(&self.queue).is_empty() || slot.sink.is_none() {
            return false;
        }
        slot.armed = true;
        true
    }

    /// The stream woke: every frame goes through the queue again.
    pub fn disarm(&self) {
        if let Some(slot) = self.direct.get() {
            lock(slot).armed = false;
        }
    }

    /// The stream ends: give the direct sink back (to close it) and stop
    /// the hub from using it.
    pub fn take_direct(&self) -> Option<Box<dyn Direct>> {
        let mut slot = lock(self.direct.get()?);
        slot.armed = false;
        slot.sink.take()
    }

    /// Resolves after the next offer or state change (a wake-up sent while
    /// nobody waited is kept, so none is lost).
    pub async fn woken(&self) {
        self.wake.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(seq: u64) -> Delivery {
        Delivery {
            seq,
            ..Delivery::uncounted(Bytes::from_static(b"x"))
        }
    }

    #[test]
    fn a_delivery_stays_small() {
        // Cloned per subscriber per event.
        assert!(std::mem::size_of::<Delivery>() <= 64);
    }

    #[test]
    fn event_age_counts_ingest_and_skips_gateway_frames() {
        let m = crate::metrics::Metrics::new();
        let d = Delivery {
            seq: 1,
            frame: Bytes::from_static(b"x"),
            published: Instant::now(),
            ingest_us: 2_000_000,
            source: Source::Webhook,
            grip_only: false,
        };
        count_written(&[d, Delivery::uncounted(Bytes::new())], &m);
        assert_eq!(m.delivered.get(), 2);
        assert_eq!(m.latency.get_sample_count(), 2);
        let age = m.event_age(Source::Webhook).unwrap();
        assert_eq!(age.get_sample_count(), 1);
        assert!(age.get_sample_sum() >= 2.0, "{}", age.get_sample_sum());
        assert!(m.event_age(Source::Gateway).is_none());
    }

    #[test]
    fn grip_only_content_reaches_grip_holds_only() {
        let raw = Delivery {
            grip_only: true,
            ..d(1)
        };
        let sse = Subscriber::new(1, 4);
        let hold = Subscriber::on_route(2, 4, 7, true);
        assert_eq!(sse.offer(&raw), Offer::NotForThisClient);
        assert_eq!(hold.offer(&raw), Offer::Queued);
        let mut out = Vec::new();
        sse.drain_into(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn full_queue_evicts_and_frees() {
        let s = Subscriber::new(1, 2);
        assert_eq!(s.offer(&d(1)), Offer::Queued);
        assert_eq!(s.offer(&d(2)), Offer::Queued);
        assert_eq!(s.offer(&d(3)), Offer::Evicted(3));
        assert_eq!(s.state(), SubState::Slow);
        assert_eq!(s.offer(&d(4)), Offer::Gone);
        let mut out = Vec::new();
        s.drain_into(&mut out);
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn wake_is_not_lost() {
        let s = Subscriber::new(1, 8);
        s.offer(&d(1));
        tokio::time::timeout(std::time::Duration::from_secs(1), s.woken())
            .await
            .unwrap();
        let mut out = Vec::new();
        s.drain_into(&mut out);
        assert_eq!(out.len(), 1);
    }

    /// A direct path that records what it was given and takes it only
    /// while `room` says so.
    struct Fake {
        got: std::sync::Arc<Mutex<Vec<Bytes>>>,
        room: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl Direct for Fake {
        fn try_send(&mut self, frame: &Bytes) -> bool {
            if !self.room.load(Ordering::Relaxed) {
                return false;
            }
            self.got.lock().unwrap().push(frame.clone());
            true
        }
    }

    fn frame(seq: u64) -> Delivery {
        Delivery {
            seq,
            ..Delivery::uncounted(Bytes::from(format!("f{seq}")))
        }
    }

    #[test]
    fn direct_path_only_while_parked_and_never_ahead_of_the_queue() {
        let got = std::sync::Arc::new(Mutex::new(Vec::new()));
        let room = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let s = Subscriber::new(1, 8);
        s.set_direct(Box::new(Fake {
            got: got.clone(),
            room: room.clone(),
        }));
        // Not parked yet: queued.
        assert_eq!(s.offer(&frame(1)), Offer::Queued);
        assert!(!s.arm(), "frames are queued: drain them first");
        let (mut out, mut last) = (Vec::new(), 0);
        s.drain_after(&mut out, &mut last);
        assert_eq!((out.len(), last), (1, 1));
        // Parked with an empty queue: straight through.
        assert!(s.arm());
        assert_eq!(s.offer(&frame(2)), Offer::Sent);
        // No room: this one and every later one queue, in order.
        room.store(false, Ordering::Relaxed);
        assert_eq!(s.offer(&frame(3)), Offer::Queued);
        room.store(true, Ordering::Relaxed);
        assert_eq!(s.offer(&frame(4)), Offer::Queued, "disarmed by the miss");
        assert_eq!(got.lock().unwrap().as_slice(), &[Bytes::from("f2")]);
        out.clear();
        s.drain_after(&mut out, &mut last);
        let seqs: Vec<u64> = out.iter().map(|d| d.seq).collect();
        assert_eq!((seqs, last), (vec![3, 4], 4));
        // A frame the client already has (a replay overlapping live) is dropped.
        assert!(s.arm());
        assert_eq!(s.offer(&frame(4)), Offer::Queued);
        assert_eq!(s.offer(&frame(5)), Offer::Sent);
        s.disarm();
        assert_eq!(s.offer(&frame(5)), Offer::Queued);
        out.clear();
        s.drain_after(&mut out, &mut last);
        assert!(out.is_empty(), "f5 went directly: {out:?}");
        assert_eq!(last, 5);
        assert!(s.take_direct().is_some());
        assert!(!s.arm(), "no direct path left");
    }
}

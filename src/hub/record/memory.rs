//! Records in this process: one mutex over every record, as the memory
//! broker keeps its channels. An append stores the frame once and offers
//! those shared bytes to each reader's bounded queue, under the lock, so a
//! reader registering at the same time sees every frame exactly once.
//!
//! Bounded three ways: a record holds at most `max_events` (its writer
//! stops there), lives until its deadline (swept once a second), and the
//! records of one route hold at most `max_total` bytes together — past
//! that, the one closest to its deadline (the oldest) is dropped first.
//!
//! With `hub.persist` every change is also journaled for the memory
//! broker's saver, and the records are restored at start (`saved`).

use super::{
    Appended, Credentials, EndReason, Following, NewRecord, RecordError, RecordId, Records,
    LOST_END,
};
use crate::hub::persist;
use crate::hub::{offer_all, Delivery, Subscriber};
use crate::metrics::Metrics;
use crate::wire;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

mod saved;

/// How often expired records are looked for.
const SWEEP: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct MemoryRecords {
    state: Mutex<State>,
    metrics: Arc<Metrics>,
}

#[derive(Debug, Default)]
struct State {
    records: HashMap<RecordId, Rec>,
    routes: HashMap<Arc<str>, RouteUse>,
    /// Changes for `hub.persist`'s next save, when it is on.
    journal: Option<saved::Journal>,
    /// Handed over to a new process: nothing more is appended here.
    handed: bool,
}

#[derive(Debug)]
struct Rec {
    route: Arc<str>,
    credentials: Credentials,
    /// Frame n is `frames[n - 1]`.
    frames: Vec<Bytes>,
    ended: bool,
    deadline: Instant,
    bytes: usize,
    readers: HashMap<u64, Arc<Subscriber>>,
    /// When it was made (wall clock, unix ms), its ttl and its route's
    /// `max_total` then: what `hub.persist` keeps.
    created_ms: u64,
    ttl_ms: u64,
    max_total: u64,
    /// Restored unended (its writer was lost with the previous process):
    /// the `ssegate.incomplete` that ends it, numbered `LOST_END`.
    lost_end: Option<Bytes>,
}

/// The records of one route, soonest deadline first, and their bytes.
#[derive(Debug, Default)]
struct RouteUse {
    bytes: usize,
    by_deadline: BTreeSet<(Instant, RecordId)>,
}

impl Rec {
    /// Append a frame and hand it to the readers.
    fn push(&mut self, frame: Bytes, metrics: &Metrics) -> usize {
        self.frames.push(frame.clone());
        let d = Delivery::recorded(self.frames.len() as u64, frame, std::time::Instant::now());
        offer_all(self.readers.values(), &d, metrics);
        let size = d.frame.len();
        self.bytes += size;
        size
    }

    /// No more frames: the readers' streams end once they have written
    /// what they hold.
    fn close(&mut self) {
        self.ended = true;
        for r in self.readers.drain().map(|(_, r)| r) {
            r.close();
        }
    }
}

impl State {
    fn note(&mut self, change: impl FnOnce() -> persist::ReplyChange) {
        if let Some(j) = self.journal.as_mut() {
            j.note(change());
        }
    }

    /// Forget a record; its readers are told why unless it had ended.
    fn remove(&mut self, id: RecordId, why: EndReason, metrics: &Metrics) -> Option<Rec> {
        let mut rec = self.records.remove(&id)?;
        self.note(|| persist::ReplyChange::Drop { id: *id.bytes() });
        if let Some(u) = self.routes.get_mut(&rec.route) {
            u.bytes -= rec.bytes;
            u.by_deadline.remove(&(rec.deadline, id));
            if u.by_deadline.is_empty() {
                self.routes.remove(&rec.route);
            }
        }
        if !rec.ended {
            let next = rec.frames.len() as u64 + 1;
            rec.push(wire::incomplete(&id.event_id(next), why.as_str()), metrics);
            metrics.record_ends.with_label_values(&[why.as_str()]).inc();
        }
        rec.close();
        Some(rec)
    }

    /// Drop `route`'s oldest records while they hold more than `max`.
    fn evict(&mut self, route: &str, max: usize, metrics: &Metrics) {
        loop {
            let oldest = match self.routes.get(route) {
                Some(u) if u.bytes > max => u.by_deadline.first().map(|(_, id)| *id),
                _ => None,
            };
            let Some(id) = oldest else { return };
            self.remove(id, EndReason::Evicted, metrics);
            metrics.record_evictions.inc();
        }
    }
}

impl MemoryRecords {
    pub fn new(metrics: Arc<Metrics>) -> MemoryRecords {
        MemoryRecords {
            state: Mutex::default(),
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Drop every record whose deadline has passed.
    pub fn sweep(&self, now: Instant) {
        let mut st = self.lock();
        let due: Vec<RecordId> = st
            .records
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            st.remove(id, EndReason::Ttl, &self.metrics);
        }
        if st.records.capacity() > 64 && st.records.capacity() > st.records.len() * 4 {
            st.records.shrink_to_fit();
        }
        let bytes: usize = st.routes.values().map(|u| u.bytes).sum();
        self.metrics.records_held.set(st.records.len() as i64);
        self.metrics.record_bytes.set(bytes as i64);
    }

    /// Records held and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let st = self.lock();
        (st.records.len(), st.routes.values().map(|u| u.bytes).sum())
    }
}

#[async_trait]
impl Records for MemoryRecords {
    async fn start(&self, rec: &NewRecord, first: &Arc<Subscriber>) -> Result<(), RecordError> {
        let deadline = Instant::now() + rec.ttl;
        let r = Rec {
            route: rec.route.clone(),
            credentials: rec.credentials,
            frames: Vec::new(),
            ended: false,
            deadline,
            bytes: 0,
            readers: HashMap::from([(first.id(), first.clone())]),
            created_ms: persist::now_ms(),
            ttl_ms: u64::try_from(rec.ttl.as_millis()).unwrap_or(u64::MAX),
            max_total: rec.max_total as u64,
            lost_end: None,
        };
        let mut st = self.lock();
        st.note(|| persist::ReplyChange::Start {
            id: *rec.id.bytes(),
            head: r.head(),
        });
        st.records.insert(rec.id, r);
        st.routes
            .entry(rec.route.clone())
            .or_default()
            .by_deadline
            .insert((deadline, rec.id));
        Ok(())
    }

    async fn append(&self, rec: &NewRecord, n: u64, frame: Bytes) -> Result<Appended, RecordError> {
        let mut st = self.lock();
        let handed = st.handed;
        let Some(r) = st.records.get_mut(&rec.id) else {
            return Ok(Appended::Gone);
        };
        if handed || r.ended || r.frames.len() as u64 + 1 != n {
            return Ok(Appended::Gone);
        }
        let size = r.push(frame.clone(), &self.metrics);
        if let Some(u) = st.routes.get_mut(&rec.route) {
            u.bytes += size;
        }
        let id = *rec.id.bytes();
        st.note(|| persist::ReplyChange::Frame { id, n, frame });
        st.evict(&rec.route, rec.max_total, &self.metrics);
        Ok(match st.records.contains_key(&rec.id) {
            true => Appended::Kept,
            false => Appended::Gone,
        })
    }

    async fn end(&self, rec: &NewRecord, reason: EndReason) -> Result<(), RecordError> {
        let mut st = self.lock();
        let Some(r) = st.records.get_mut(&rec.id) else {
            return Ok(());
        };
        if r.ended {
            return Ok(());
        }
        let mut size = 0;
        let mut last = None;
        if reason != EndReason::Complete {
            let next = r.frames.len() as u64 + 1;
            let frame = wire::incomplete(&rec.id.event_id(next), reason.as_str());
            size = r.push(frame.clone(), &self.metrics);
            last = Some((next, frame));
        }
        r.close();
        if let Some(u) = st.routes.get_mut(&rec.route) {
            u.bytes += size;
        }
        let id = *rec.id.bytes();
        if let Some((n, frame)) = last {
            st.note(|| persist::ReplyChange::Frame { id, n, frame });
        }
        st.note(|| persist::ReplyChange::End { id });
        self.metrics
            .record_ends
            .with_label_values(&[reason.as_str()])
            .inc();
        st.evict(&rec.route, rec.max_total, &self.metrics);
        Ok(())
    }

    async fn follow(
        &self,
        sub: &Arc<Subscriber>,
        id: RecordId,
        route: &str,
        after: u64,
        credentials: &Credentials,
    ) -> Result<Following, RecordError> {
        let now = Instant::now();
        let mut st = self.lock();
        let r = match st.records.get_mut(&id) {
            Some(r) if &*r.route == route && r.deadline > now => r,
            _ => return Err(RecordError::Unknown),
        };
        if !r.credentials.matches(credentials) {
            return Err(RecordError::Forbidden);
        }
        let held = r.frames.len() as u64;
        let published = std::time::Instant::now();
        let mut frames: Vec<Delivery> = r
            .frames
            .iter()
            .enumerate()
            .skip(after.min(held) as usize)
            .map(|(i, f)| Delivery::recorded(i as u64 + 1, f.clone(), published))
            .collect();
        if let Some(end) = r.lost_end.as_ref().filter(|_| after < LOST_END) {
            frames.push(Delivery::recorded(LOST_END, end.clone(), published));
        }
        if !r.ended {
            r.readers.insert(sub.id(), sub.clone());
        }
        Ok(Following {
            frames,
            ended: r.ended,
        })
    }

    fn unfollow(&self, sub: &Subscriber, id: RecordId) {
        if let Some(r) = self.lock().records.get_mut(&id) {
            r.readers.remove(&sub.id());
        }
    }

    fn hand_over(&self) -> persist::Replies {
        self.lock().whole()
    }

    fn take_over(&self, replies: persist::Replies) -> (usize, usize) {
        self.restore(replies)
    }

    fn handed_over(&self) {
        self.lock().handed = true;
    }

    async fn run(self: Arc<Self>) {
        let mut t = tokio::time::interval(SWEEP);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            self.sweep(Instant::now());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::hub::SubState;

    pub(crate) fn store() -> MemoryRecords {
        MemoryRecords::new(Arc::new(Metrics::new()))
    }

    pub(crate) fn new_record(route: &str, max_total: usize) -> NewRecord {
        NewRecord {
            id: RecordId::random(),
            route: route.into(),
            credentials: Credentials([7; 32]),
            ttl: Duration::from_secs(60),
            max_total,
        }
    }

    pub(crate) fn frame(rec: &NewRecord, n: u64) -> Bytes {
        wire::encode(Some(&rec.id.event_id(n)), None, &format!("e{n}")).unwrap()
    }

    fn drained(sub: &Subscriber) -> Vec<u64> {
        let mut out = Vec::new();
        sub.drain_into(&mut out);
        out.iter().map(|d| d.seq).collect()
    }

    #[tokio::test]
    async fn readers_get_every_frame_once_then_the_end() {
        let s = store();
        let rec = new_record("/chat", 1 << 20);
        let first = Arc::new(Subscriber::new(1, 64));
        s.start(&rec, &first).await.unwrap();
        for n in 1..=3 {
            assert_eq!(
                s.append(&rec, n, frame(&rec, n)).await.unwrap(),
                Appended::Kept
            );
        }
        let late = Arc::new(Subscriber::new(2, 64));
        let f = s
            .follow(&late, rec.id, "/chat", 1, &rec.credentials)
            .await
            .unwrap();
        assert_eq!(f.frames.iter().map(|d| d.seq).collect::<Vec<_>>(), [2, 3]);
        assert!(!f.ended);
        s.append(&rec, 4, frame(&rec, 4)).await.unwrap();
        s.end(&rec, EndReason::Complete).await.unwrap();
        assert_eq!(drained(&first), [1, 2, 3, 4]);
        assert_eq!(drained(&late), [4]);
        assert_eq!(first.state(), SubState::Closed);
        assert_eq!(late.state(), SubState::Closed);
        // After the end: the rest, marked ended; nothing left is 204's case.
        let again = Arc::new(Subscriber::new(3, 64));
        let f = s
            .follow(&again, rec.id, "/chat", 2, &rec.credentials)
            .await
            .unwrap();
        assert_eq!(f.frames.len(), 2);
        assert!(f.ended);
        let f = s.follow(&again, rec.id, "/chat", 4, &rec.credentials).await;
        let f = f.unwrap();
        assert!(f.ended && f.frames.is_empty());
    }

    #[tokio::test]
    async fn strangers_and_other_routes_are_refused() {
        let s = store();
        let rec = new_record("/chat", 1 << 20);
        let sub = Arc::new(Subscriber::new(1, 8));
        s.start(&rec, &sub).await.unwrap();
        let other = Credentials([8; 32]);
        let r = s.follow(&sub, rec.id, "/chat", 0, &other).await;
        assert_eq!(r.unwrap_err(), RecordError::Forbidden);
        let r = s.follow(&sub, rec.id, "/jobs", 0, &rec.credentials).await;
        assert_eq!(r.unwrap_err(), RecordError::Unknown);
        let r = s
            .follow(&sub, RecordId::random(), "/chat", 0, &rec.credentials)
            .await;
        assert_eq!(r.unwrap_err(), RecordError::Unknown);
    }

    #[tokio::test]
    async fn an_incomplete_end_is_the_next_event() {
        let s = store();
        let rec = new_record("/chat", 1 << 20);
        let sub = Arc::new(Subscriber::new(1, 8));
        s.start(&rec, &sub).await.unwrap();
        s.append(&rec, 1, frame(&rec, 1)).await.unwrap();
        s.end(&rec, EndReason::MaxEvents).await.unwrap();
        let mut out = Vec::new();
        sub.drain_into(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            out[1].frame,
            wire::incomplete(&rec.id.event_id(2), "max-events")
        );
        let r = Arc::new(Subscriber::new(2, 8));
        let f = s.follow(&r, rec.id, "/chat", 1, &rec.credentials).await;
        assert_eq!(f.unwrap().frames.len(), 1);
        let f = s.follow(&r, rec.id, "/chat", 2, &rec.credentials).await;
        assert!(f.unwrap().frames.is_empty());
    }

    #[tokio::test]
    async fn the_oldest_records_of_a_route_go_first() {
        let s = store();
        let size = frame(&new_record("/a", 0), 1).len();
        let old = new_record("/a", size * 3);
        let mid = new_record("/a", size * 3);
        let elsewhere = new_record("/b", size);
        let reader = Arc::new(Subscriber::new(1, 8));
        s.start(&old, &reader).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        s.start(&mid, &Arc::new(Subscriber::new(2, 8)))
            .await
            .unwrap();
        s.start(&elsewhere, &Arc::new(Subscriber::new(3, 8)))
            .await
            .unwrap();
        s.append(&elsewhere, 1, frame(&elsewhere, 1)).await.unwrap();
        s.append(&old, 1, frame(&old, 1)).await.unwrap();
        s.append(&old, 2, frame(&old, 2)).await.unwrap();
        s.append(&mid, 1, frame(&mid, 1)).await.unwrap();
        assert_eq!(s.usage(), (3, size * 4));
        // A fourth frame on /a: `old` is dropped, its reader told and closed.
        let kept = s.append(&mid, 2, frame(&mid, 2)).await.unwrap();
        assert_eq!(kept, Appended::Kept);
        assert_eq!(
            s.append(&old, 3, frame(&old, 3)).await.unwrap(),
            Appended::Gone
        );
        let mut out = Vec::new();
        reader.drain_into(&mut out);
        assert_eq!(
            out.last().unwrap().frame,
            wire::incomplete(&old.id.event_id(3), "evicted")
        );
        assert_eq!(reader.state(), SubState::Closed);
        let r = s.follow(&reader, old.id, "/a", 0, &old.credentials).await;
        assert_eq!(r.unwrap_err(), RecordError::Unknown);
        assert_eq!(s.usage(), (2, size * 3));
    }

    #[tokio::test(start_paused = true)]
    async fn records_expire_at_their_deadline() {
        let s = store();
        let rec = new_record("/chat", 1 << 20);
        let sub = Arc::new(Subscriber::new(1, 8));
        s.start(&rec, &sub).await.unwrap();
        s.append(&rec, 1, frame(&rec, 1)).await.unwrap();
        tokio::time::advance(Duration::from_secs(59)).await;
        s.sweep(Instant::now());
        assert_eq!(s.usage().0, 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        // Not swept yet, but past its deadline: unknown already.
        let r = s.follow(&sub, rec.id, "/chat", 0, &rec.credentials).await;
        assert_eq!(r.unwrap_err(), RecordError::Unknown);
        s.sweep(Instant::now());
        assert_eq!(s.usage(), (0, 0));
        assert_eq!(sub.state(), SubState::Closed);
    }
}

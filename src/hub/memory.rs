//! The embedded broker: all state in this process.
//!
//! One mutex guards cursors, history and subscriber lists. Publishing takes it
//! once per batch, and fan-out happens inside it, so every client sees events
//! in cursor order across all its channels — which is what makes a single
//! `Last-Event-ID` enough to resume a multi-channel stream without duplicates.
//! Fan-out only pushes shared `Bytes` into bounded queues, never waits.
//!
//! With `hub.persist` (`durable`), the state is loaded at start and saved
//! every interval and at stop.

mod durable;

use super::cursor;
use super::history::History;
use super::subs::Subs;
use super::{
    offer_all, Broker, BrokerError, ChannelState, Delivery, Event, EventState, HubState, HubStats,
    Payload, PublishReport, Replay, Resume, Subscriber,
};
use crate::metrics::Metrics;
use crate::wire;
use async_trait::async_trait;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug)]
pub struct MemoryBroker {
    state: Mutex<State>,
    /// Distinguishes this history's cursors from those of another: a
    /// cursor from another epoch cannot be resumed and gets a reset. Set at
    /// start, or taken over from the previous process in a live upgrade.
    epoch: AtomicU64,
    /// A live upgrade is handing the state over: publishes are refused.
    sealed: AtomicBool,
    history_size: usize,
    history_ttl: Duration,
    /// The history's clock starts here (`clock`).
    born: Instant,
    metrics: Arc<Metrics>,
    /// `hub.persist`: the saver, once the files are open.
    durable: durable::Slot,
    tail: super::Tail,
}

#[derive(Debug, Default)]
struct State {
    seq: u64,
    /// Keyed by the name the journal shares (not a copy in each channel: the
    /// many channels kept only for their history pay for every field).
    channels: HashMap<Arc<str>, Channel>,
    /// Highest cursor of any channel dropped from memory: a resume from before
    /// it onto a channel we no longer know may have missed events.
    forgotten: u64,
    /// Cursor ranges `(from, to]` handed out before an unclean stop and never
    /// saved: a resume from one of them cannot be served.
    lost: Vec<(u64, u64)>,
    /// `hub.persist`: what the next save writes, and the reservation.
    journal: Option<durable::Journal>,
}

#[derive(Debug, Default)]
struct Channel {
    subs: Subs,
    history: History,
    /// Highest cursor evicted from this channel's history.
    evicted: u64,
}

impl Channel {
    /// `now` and `ttl` in milliseconds on the broker's `clock`.
    fn expire(&mut self, now: u32, ttl: u32, size: usize) {
        while let Some(at) = self.history.front_at() {
            if self.history.len() <= size && now.wrapping_sub(at) < ttl {
                break;
            }
            if let Some(seq) = self.history.pop_front() {
                self.evicted = seq;
            }
        }
    }

    fn idle(&self) -> bool {
        self.subs.is_empty() && self.history.is_empty()
    }
}

impl MemoryBroker {
    pub fn new(history_size: usize, history_ttl: Duration, metrics: Arc<Metrics>) -> MemoryBroker {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Self::with_epoch(epoch, history_size, history_ttl, metrics)
    }

    fn with_epoch(
        epoch: u64,
        history_size: usize,
        history_ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> MemoryBroker {
        MemoryBroker {
            state: Mutex::new(State::default()),
            epoch: AtomicU64::new(epoch),
            sealed: AtomicBool::new(false),
            history_size,
            history_ttl,
            born: Instant::now(),
            metrics,
            durable: durable::Slot::default(),
            tail: super::Tail::default(),
        }
    }

    /// Milliseconds since the broker started, wrapping (history is bounded
    /// to 30 days, so ages — differences — never wrap).
    fn clock(&self) -> u32 {
        Instant::now().duration_since(self.born).as_millis() as u32
    }

    fn ttl_ms(&self) -> u32 {
        self.history_ttl.as_millis().min(u32::MAX as u128) as u32
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the hub down with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cursor(&self, seq: u64) -> String {
        cursor::format(self.epoch.load(Ordering::Acquire), seq)
    }

    /// Drop expired history and forget idle channels. Runs on a timer so that
    /// channels nobody publishes to still release their memory.
    pub fn sweep(&self) {
        let now = self.clock();
        let mut st = self.lock();
        let mut forgotten = st.forgotten;
        st.channels.retain(|_, ch| {
            ch.expire(now, self.ttl_ms(), self.history_size);
            if ch.idle() {
                forgotten = forgotten.max(ch.evicted);
                return false;
            }
            true
        });
        st.forgotten = forgotten;
        if st.channels.capacity() > 64 && st.channels.capacity() > st.channels.len() * 4 {
            st.channels.shrink_to_fit();
        }
    }

    /// What to replay after `after` on `channels`.
    fn missed(&self, st: &mut State, channels: &[String], after: &str) -> Replay {
        let head = self.cursor(st.seq);
        let reset = || Replay {
            reset: Some(wire::reset(&head)),
            ..Replay::default()
        };
        let Some((epoch, seq)) = cursor::parse(after) else {
            return reset();
        };
        if epoch != self.epoch.load(Ordering::Acquire) {
            return reset();
        }
        // A cursor we never gave out (from the future, or lost in an unclean
        // stop) cannot be resumed from: pretending would skip events.
        if seq > st.seq || st.lost.iter().any(|&(from, to)| from < seq && seq <= to) {
            return reset();
        }
        if seq == st.seq {
            return Replay::default();
        }
        let now = self.clock();
        let mut frames = Vec::new();
        for name in channels {
            let Some(ch) = st.channels.get_mut(name.as_str()) else {
                if seq < st.forgotten {
                    return reset();
                }
                continue;
            };
            ch.expire(now, self.ttl_ms(), self.history_size);
            if ch.evicted > seq {
                return reset();
            }
            ch.history.after(seq, &mut frames);
        }
        frames.sort_by_key(|d| d.seq);
        frames.dedup_by_key(|d| d.seq);
        Replay {
            frames,
            ..Replay::default()
        }
    }

    /// A channel as a publish or a subscribe finds it: one forgotten earlier
    /// may come back, and what it had is gone, so a resume from before then
    /// must be told (reset), not skipped.
    fn channel<'s>(
        channels: &'s mut HashMap<Arc<str>, Channel>,
        forgotten: u64,
        name: &str,
    ) -> &'s mut Channel {
        Self::named_channel(channels, forgotten, name).1
    }

    /// `channel`, with the map's shared name (for the journal).
    fn named_channel<'s>(
        channels: &'s mut HashMap<Arc<str>, Channel>,
        forgotten: u64,
        name: &str,
    ) -> (Arc<str>, &'s mut Channel) {
        match channels.entry(Arc::from(name)) {
            Entry::Occupied(e) => (e.key().clone(), e.into_mut()),
            Entry::Vacant(e) => {
                let key = e.key().clone();
                let ch = e.insert(Channel {
                    evicted: forgotten,
                    ..Channel::default()
                });
                (key, ch)
            }
        }
    }

    /// Missed events of `channels` after `after`, without subscribing.
    #[cfg(test)]
    fn replay(&self, channels: &[String], after: &str) -> Replay {
        let mut st = self.lock();
        self.missed(&mut st, channels, after)
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish(&self, events: Vec<Event>) -> Result<PublishReport, BrokerError> {
        if self.sealed.load(Ordering::Acquire) {
            return Err(BrokerError::Unavailable(
                "upgrading: publish to the new process".into(),
            ));
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let mut report = PublishReport::default();
        let now = self.clock();
        let published = std::time::Instant::now();
        let mut recent = self.tail.is_watched().then(Vec::new);
        let mut guard = self.lock();
        let st = &mut *guard;
        let at_ms = st.journal.as_ref().map_or(0, |_| super::persist::now_ms());
        let mut refused = None;
        let mut poke = false;
        for ev in events {
            if let Payload::Close = ev.payload {
                if let Some(ch) = st.channels.get(ev.channel.as_str()) {
                    for sub in ch.subs.values() {
                        sub.close();
                    }
                    report.closed += ch.subs.len();
                }
                continue;
            }
            let (name, ch) = Self::named_channel(&mut st.channels, st.forgotten, &ev.channel);
            ch.expire(now, self.ttl_ms(), self.history_size);
            let dedupe_id: Option<Arc<str>> = ev.dedupe_id.as_deref().map(Arc::from);
            if let Some(id) = &dedupe_id {
                if ch.history.has_id(id) {
                    report.duplicates += 1;
                    continue;
                }
            }
            if let Some(why) = st.journal.as_ref().and_then(|j| j.refuse(st.seq)) {
                refused = Some(why);
                break;
            }
            st.seq += 1;
            let seq = st.seq;
            let cursor = cursor::format(epoch, seq);
            let (bytes, grip_only) = match &ev.payload {
                Payload::Message { event, data } => (
                    wire::encode(Some(&cursor), event.as_deref(), data).unwrap_or_else(|_| {
                        wire::encode(Some(&cursor), None, data).unwrap_or_default()
                    }),
                    false,
                ),
                Payload::Raw(content) => {
                    let g = wire::grip_frame(content, &cursor);
                    (g.frame, !g.sse)
                }
                Payload::Close => continue,
            };
            let delivery = Delivery {
                seq,
                frame: bytes,
                published,
                ingest_us: super::ingest_us(ev.received, published),
                source: ev.source,
                grip_only,
            };
            offer_all(ch.subs.values(), &delivery, &self.metrics);
            if let Some(r) = &mut recent {
                r.push(super::tail::entry(&ev, cursor));
            }
            if let Some(j) = st.journal.as_mut() {
                poke |= j.record(&name, &delivery, &dedupe_id, at_ms);
            }
            if self.history_size > 0 {
                ch.history.push(
                    seq,
                    now,
                    &delivery.frame,
                    grip_only,
                    dedupe_id,
                    self.history_size,
                );
                ch.expire(now, self.ttl_ms(), self.history_size);
            } else {
                ch.evicted = seq;
            }
            report.published += 1;
        }
        drop(guard);
        if let Some(r) = recent {
            self.tail.record(r);
        }
        if poke {
            if let Some(d) = self.durable.get() {
                d.poke.notify_one();
            }
        }
        self.metrics.published.inc_by(report.published as u64);
        self.metrics.duplicates.inc_by(report.duplicates as u64);
        match refused {
            None => Ok(report),
            Some(why) if report.published == 0 && report.duplicates == 0 => {
                Err(BrokerError::Unavailable(why.into()))
            }
            Some(why) => Err(BrokerError::Interrupted {
                report,
                why: why.into(),
            }),
        }
    }

    async fn subscribe(
        &self,
        sub: &Arc<Subscriber>,
        channels: &[String],
        resume: &Resume,
    ) -> Result<Replay, BrokerError> {
        let mut st = self.lock();
        for name in channels {
            let forgotten = st.forgotten;
            Self::channel(&mut st.channels, forgotten, name)
                .subs
                .insert(sub);
        }
        let mut replay = match resume {
            Resume::Live => Replay {
                start: Some(self.cursor(st.seq)),
                ..Replay::default()
            },
            Resume::After(after) => self.missed(&mut st, channels, after),
        };
        replay.head = st.seq;
        Ok(replay)
    }

    fn unsubscribe(&self, sub: &Subscriber, channels: &[String]) {
        let mut st = self.lock();
        let mut forgotten = st.forgotten;
        for name in channels {
            if let Some(ch) = st.channels.get_mut(name.as_str()) {
                ch.subs.remove(sub.id());
                if ch.idle() {
                    forgotten = forgotten.max(ch.evicted);
                    st.channels.remove(name.as_str());
                }
            }
        }
        st.forgotten = forgotten;
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        Ok(())
    }

    async fn run(self: Arc<Self>) {
        // Its own task: the saver keeps saving while the drain runs, after
        // the housekeeping that runs this has been stopped.
        tokio::spawn(self.clone().save_every());
        let mut t = tokio::time::interval(Duration::from_secs(1));
        loop {
            t.tick().await;
            self.sweep();
        }
    }

    fn busiest(&self, n: usize) -> Vec<super::ChannelStat> {
        let now = self.clock();
        let st = self.lock();
        let kept = super::top(st.channels.iter(), n, |(_, ch)| {
            (ch.subs.len(), ch.history.len())
        });
        kept.into_iter()
            .map(|(name, ch)| super::ChannelStat {
                name: name.to_string(),
                subscribers: ch.subs.len(),
                history: Some(ch.history.len()),
                // A channel without history shows no idle time: one field
                // less in every channel's slot (issue 17, history cost).
                idle_ms: ch
                    .history
                    .back_at()
                    .map(|at| u64::from(now.wrapping_sub(at))),
            })
            .collect()
    }

    fn tail(&self) -> Option<&super::Tail> {
        Some(&self.tail)
    }

    fn cursor(&self, seq: u64) -> String {
        MemoryBroker::cursor(self, seq)
    }

    fn identity(&self) -> String {
        "memory".into()
    }

    fn seal(&self) {
        // Under the lock: a publish in progress finishes before the state is read.
        let _st = self.lock();
        self.sealed.store(true, Ordering::Release);
    }

    fn state(&self) -> Option<HubState> {
        let st = self.lock();
        let now = self.clock();
        let channels = st
            .channels
            .iter()
            .map(|(name, ch)| ChannelState {
                name: name.to_string(),
                evicted: ch.evicted,
                events: ch
                    .history
                    .iter()
                    .map(|e| EventState {
                        seq: e.seq,
                        age_ms: now.wrapping_sub(e.at) as u64,
                        dedupe_id: e.dedupe_id.map(|id| id.to_string()),
                        frame: e.frame,
                        grip_only: e.grip_only,
                    })
                    .collect(),
            })
            .collect();
        Some(HubState {
            epoch: self.epoch.load(Ordering::Acquire),
            seq: st.seq,
            forgotten: st.forgotten,
            channels,
        })
    }

    fn restore(&self, state: HubState) {
        let now = self.clock();
        let mut st = self.lock();
        self.durable.handed_over();
        self.epoch.store(state.epoch, Ordering::Release);
        st.seq = state.seq;
        st.forgotten = state.forgotten;
        for c in state.channels {
            let forgotten = st.forgotten;
            let ch = Self::channel(&mut st.channels, forgotten, &c.name);
            ch.evicted = ch.evicted.max(c.evicted);
            for e in c.events {
                let dedupe_id: Option<Arc<str>> = e.dedupe_id.as_deref().map(Arc::from);
                // Older than the clock: as old as it can be here.
                let age = e.age_ms.min(now as u64) as u32;
                ch.history.push(
                    e.seq,
                    now.wrapping_sub(age),
                    &e.frame,
                    e.grip_only,
                    dedupe_id,
                    self.history_size,
                );
            }
        }
    }

    async fn stop(&self) {
        self.save_at_stop().await;
    }

    async fn open_after_handoff(
        &self,
        lock_wait: Duration,
    ) -> Result<(), super::persist::PersistError> {
        self.open_files_now(lock_wait).await
    }

    fn add_section(&self, section: Arc<dyn super::persist::Section>) -> bool {
        self.add_persisted_section(section)
    }

    fn restored_section(&self, key: &str) -> Option<bytes::Bytes> {
        self.persisted_section(key)
    }

    fn stats(&self) -> HubStats {
        let st = self.lock();
        HubStats {
            channels: st.channels.len(),
            subscriptions: st.channels.values().map(|c| c.subs.len()).sum(),
            history_events: st.channels.values().map(|c| c.history.len()).sum(),
            cursor: self.cursor(st.seq),
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn broker(size: usize) -> MemoryBroker {
        MemoryBroker::new(size, Duration::from_secs(3600), Arc::new(Metrics::new()))
    }

    pub(crate) fn msg(ch: &str, data: &str, id: Option<&str>) -> Event {
        Event::new(
            ch.into(),
            id.map(String::from),
            Payload::Message {
                event: None,
                data: data.into(),
            },
            super::super::Source::Publish,
        )
    }

    fn drained(s: &Subscriber) -> Vec<String> {
        let mut v = Vec::new();
        s.drain_into(&mut v);
        v.iter()
            .map(|d| String::from_utf8_lossy(&d.frame).to_string())
            .collect()
    }

    #[tokio::test]
    async fn fan_out_shares_one_frame() {
        let b = broker(10);
        let subs: Vec<_> = (0..3).map(|i| Arc::new(Subscriber::new(i, 8))).collect();
        for s in &subs {
            b.subscribe(s, &["a".into()], &Resume::Live).await.unwrap();
        }
        b.publish(vec![msg("a", "hi", None)]).await.unwrap();
        let mut frames = Vec::new();
        for s in &subs {
            s.drain_into(&mut frames);
        }
        assert_eq!(frames.len(), 3);
        assert!(frames
            .iter()
            .all(|f| f.frame.as_ptr() == frames[0].frame.as_ptr()));
    }

    #[tokio::test]
    async fn resume_replays_in_order_across_channels() {
        let b = broker(10);
        let first = Arc::new(Subscriber::new(1, 64));
        b.subscribe(&first, &["a".into(), "b".into()], &Resume::Live)
            .await
            .unwrap();
        b.publish(vec![msg("a", "1", None)]).await.unwrap();
        let mut got = Vec::new();
        first.drain_into(&mut got);
        let last = b.cursor(got[0].seq);
        b.publish(vec![
            msg("b", "2", None),
            msg("a", "3", None),
            msg("c", "x", None),
            msg("b", "4", None),
        ])
        .await
        .unwrap();
        let again = Arc::new(Subscriber::new(2, 64));
        let r = b
            .subscribe(&again, &["a".into(), "b".into()], &Resume::After(last))
            .await
            .unwrap();
        assert!(r.reset.is_none());
        let datas: Vec<String> = r
            .frames
            .iter()
            .map(|d| String::from_utf8_lossy(&d.frame).to_string())
            .collect();
        assert!(
            datas[0].ends_with("data: 2\n\n")
                && datas[1].ends_with("data: 3\n\n")
                && datas[2].ends_with("data: 4\n\n"),
            "{datas:?}"
        );
        assert_eq!(datas.len(), 3);
        b.publish(vec![msg("a", "5", None)]).await.unwrap();
        assert_eq!(drained(&again).len(), 1);
    }

    #[tokio::test]
    async fn gap_and_foreign_cursor_reset() {
        let b = broker(2);
        let s = Arc::new(Subscriber::new(1, 64));
        b.subscribe(&s, &["a".into()], &Resume::Live).await.unwrap();
        b.publish(vec![msg("a", "1", None)]).await.unwrap();
        let first = b.cursor(1);
        b.publish((2..6).map(|i| msg("a", &i.to_string(), None)).collect())
            .await
            .unwrap();
        let r = b.replay(&["a".into()], &first);
        assert!(r.reset.is_some() && r.frames.is_empty());
        let r = b.replay(&["a".into()], "garbage");
        assert!(r.reset.is_some());
        let r = b.replay(&["a".into()], &b.cursor(4));
        assert!(r.reset.is_none() && r.frames.len() == 1);
    }

    #[tokio::test]
    async fn busiest_channels_come_first_and_the_tail_records_while_watched() {
        let b = broker(10);
        let subs: Vec<_> = (0..3).map(|i| Arc::new(Subscriber::new(i, 8))).collect();
        b.subscribe(&subs[0], &["quiet".into()], &Resume::Live)
            .await
            .unwrap();
        for s in &subs {
            b.subscribe(s, &["busy".into()], &Resume::Live)
                .await
                .unwrap();
        }
        b.publish(vec![msg("busy", "1", None)]).await.unwrap();
        b.tail.watch(true);
        b.publish(vec![msg("history-only", "1", None), msg("busy", "2", None)])
            .await
            .unwrap();
        let top = b.busiest(2);
        let names: Vec<&str> = top.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["busy", "quiet"]);
        assert_eq!((top[0].subscribers, top[0].history), (3, Some(2)));
        assert!(top[0].idle_ms.is_some() && top[1].idle_ms.is_none());
        let tail = b.tail.recent();
        let channels: Vec<&str> = tail.iter().map(|r| r.channel.as_str()).collect();
        assert_eq!(
            channels,
            ["busy", "history-only"],
            "newest first, only while watched"
        );
        assert_eq!(tail[0].source, "publish");
    }

    #[tokio::test]
    async fn dedupe_within_history() {
        let b = broker(10);
        let r = b
            .publish(vec![
                msg("a", "1", Some("x")),
                msg("a", "1", Some("x")),
                msg("b", "1", Some("x")),
            ])
            .await
            .unwrap();
        assert_eq!(
            r,
            PublishReport {
                published: 2,
                duplicates: 1,
                closed: 0
            }
        );
    }

    #[tokio::test]
    async fn forgotten_channel_resumes_with_reset() {
        let b = MemoryBroker::new(10, Duration::ZERO, Arc::new(Metrics::new()));
        b.publish(vec![msg("a", "1", None), msg("a", "2", None)])
            .await
            .unwrap();
        b.sweep();
        assert_eq!(b.stats().channels, 0);
        let r = b.replay(&["a".into()], &b.cursor(1));
        assert!(r.reset.is_some());
    }

    #[tokio::test]
    async fn a_channel_recreated_by_a_subscriber_still_reports_the_gap() {
        let b = MemoryBroker::new(10, Duration::ZERO, Arc::new(Metrics::new()));
        b.publish(vec![msg("a", "1", None)]).await.unwrap();
        let seen = b.cursor(1);
        b.publish(vec![msg("a", "2", None)]).await.unwrap();
        b.sweep();
        let other = Arc::new(Subscriber::new(1, 8));
        b.subscribe(&other, &["a".into()], &Resume::Live)
            .await
            .unwrap();
        let again = Arc::new(Subscriber::new(2, 8));
        let r = b
            .subscribe(&again, &["a".into()], &Resume::After(seen))
            .await
            .unwrap();
        assert!(
            r.reset.is_some(),
            "event 2 is gone: the client must get a reset"
        );
    }

    #[tokio::test]
    async fn recreated_channel_still_reports_the_gap() {
        let b = MemoryBroker::new(10, Duration::ZERO, Arc::new(Metrics::new()));
        b.publish(vec![msg("a", "1", None)]).await.unwrap();
        let seen = b.cursor(1);
        b.publish(vec![msg("a", "2", None)]).await.unwrap();
        b.sweep();
        b.publish(vec![msg("a", "3", None)]).await.unwrap();
        let r = b.replay(&["a".into()], &seen);
        assert!(
            r.reset.is_some(),
            "event 2 is gone: the client must get a reset"
        );
    }
}

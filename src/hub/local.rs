//! The clients of this instance, by channel, for brokers whose history lives
//! elsewhere (Redis): which channels to listen to, whom to hand each frame,
//! and the last cursor each channel delivered (to catch up after an outage).

use super::{offer_all, Delivery, Subscriber};
use crate::metrics::Metrics;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Where a channel's upstream subscription stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Confirm {
    Pending,
    Ok,
    Failed,
}

type Confirmed = watch::Sender<Confirm>;

#[derive(Debug, Default)]
pub(super) struct Local {
    channels: Mutex<HashMap<String, LocalChannel>>,
}

#[derive(Debug)]
struct LocalChannel {
    subs: HashMap<u64, Arc<Subscriber>>,
    /// The newest cursor handed to this channel's clients (live or caught up).
    last_seq: u64,
    /// The cursor before this instance subscribed upstream: after an
    /// outage, a channel that delivered nothing yet catches up from here.
    floor: u64,
    confirmed: Confirmed,
    /// When its last frame was handed to local clients.
    last_at: Option<std::time::Instant>,
}

impl Local {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, LocalChannel>> {
        self.channels.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Register `sub`. `on_fresh` runs under the lock with the channels this
    /// instance did not listen to yet (to subscribe upstream, in order). The
    /// receivers are for channels whose upstream subscription is still pending.
    pub(super) fn add(
        &self,
        sub: &Arc<Subscriber>,
        channels: &[String],
        on_fresh: impl FnOnce(&[String]),
    ) -> (Vec<String>, Vec<watch::Receiver<Confirm>>) {
        let mut map = self.lock();
        let mut fresh = Vec::new();
        let mut waits = Vec::new();
        for name in channels {
            let ch = map.entry(name.clone()).or_insert_with(|| {
                fresh.push(name.clone());
                LocalChannel {
                    subs: HashMap::new(),
                    last_seq: 0,
                    floor: 0,
                    confirmed: watch::channel(Confirm::Pending).0,
                    last_at: None,
                }
            });
            ch.subs.insert(sub.id(), sub.clone());
            if !fresh.contains(name) && *ch.confirmed.borrow() != Confirm::Ok {
                waits.push(ch.confirmed.subscribe());
            }
        }
        if !fresh.is_empty() {
            on_fresh(&fresh);
        }
        (fresh, waits)
    }

    /// Record the upstream subscription's outcome; `floor` is the cursor
    /// read before it was made.
    pub(super) fn confirm(&self, channels: &[String], ok: bool, floor: u64) {
        let mut map = self.lock();
        for name in channels {
            if let Some(ch) = map.get_mut(name) {
                ch.floor = ch.floor.max(floor);
                ch.confirmed
                    .send_replace(if ok { Confirm::Ok } else { Confirm::Failed });
            }
        }
    }

    /// Unregister `sub`; `on_emptied` runs under the lock with the channels
    /// no local client listens to any more.
    pub(super) fn remove(
        &self,
        sub: &Subscriber,
        channels: &[String],
        on_emptied: impl FnOnce(Vec<String>),
    ) {
        let mut map = self.lock();
        let mut emptied = Vec::new();
        for name in channels {
            if let Some(ch) = map.get_mut(name) {
                ch.subs.remove(&sub.id());
                if ch.subs.is_empty() {
                    map.remove(name);
                    emptied.push(name.clone());
                }
            }
        }
        if !emptied.is_empty() {
            on_emptied(emptied);
        }
    }

    /// Hand a frame to every local client of `channel`, once per cursor.
    pub(super) fn deliver(&self, channel: &str, d: &Delivery, metrics: &Metrics) {
        let mut map = self.lock();
        let Some(ch) = map.get_mut(channel) else {
            return;
        };
        if d.seq != 0 {
            if d.seq <= ch.last_seq {
                return;
            }
            ch.last_seq = d.seq;
        }
        ch.last_at = Some(std::time::Instant::now());
        offer_all(ch.subs.values(), d, metrics);
    }

    /// A frame for every local client (a comment while the broker is away).
    pub(super) fn broadcast(&self, d: &Delivery) {
        let map = self.lock();
        for ch in map.values() {
            for s in ch.subs.values() {
                s.offer(d);
            }
        }
    }

    pub(super) fn close_channel(&self, channel: &str) {
        if let Some(ch) = self.lock().get(channel) {
            ch.subs.values().for_each(|s| s.close());
        }
    }

    pub(super) fn close_all(&self) {
        for ch in self.lock().values() {
            ch.subs.values().for_each(|s| s.close());
        }
    }

    pub(super) fn channels(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Where `channel` catches up from after an outage.
    pub(super) fn caught_up_to(&self, channel: &str) -> u64 {
        self.lock()
            .get(channel)
            .map_or(0, |c| c.last_seq.max(c.floor))
    }

    /// The last cursor `channel` delivered (0: none yet), whatever it
    /// subscribed at: a record's channel counts its own events.
    pub(super) fn delivered_up_to(&self, channel: &str) -> u64 {
        self.lock().get(channel).map_or(0, |c| c.last_seq)
    }

    /// The broker lost its data and cursors restart: forget every position,
    /// or the new, smaller cursors would all look like duplicates.
    pub(super) fn forget_cursors(&self) {
        for ch in self.lock().values_mut() {
            ch.last_seq = 0;
            ch.floor = 0;
        }
    }

    pub(super) fn max_seq(&self) -> u64 {
        self.lock().values().map(|c| c.last_seq).max().unwrap_or(0)
    }

    /// The `n` channels with the most local clients.
    pub(super) fn busiest(&self, n: usize) -> Vec<super::ChannelStat> {
        let map = self.lock();
        super::top(map.iter(), n, |(_, ch)| ch.subs.len())
            .into_iter()
            .map(|(name, ch)| super::ChannelStat {
                name: name.clone(),
                subscribers: ch.subs.len(),
                history: None,
                idle_ms: ch.last_at.map(|t| t.elapsed().as_millis() as u64),
            })
            .collect()
    }

    pub(super) fn counts(&self) -> (usize, usize) {
        let map = self.lock();
        (map.len(), map.values().map(|c| c.subs.len()).sum())
    }
}

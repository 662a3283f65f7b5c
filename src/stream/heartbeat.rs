//! One shared tick per heartbeat interval instead of a timer per client.
//!
//! A stream registers its subscriber with the tick of its interval; each tick
//! bumps an epoch and wakes every member through the subscriber's own
//! `Notify` — the one thing an idle stream waits on. The stream sees the
//! epoch move and writes its heartbeat (or GRIP keep-alive). The drain on
//! shutdown uses the same wake-up.

use crate::hub::Subscriber;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Distinct intervals at most: the config's own, plus GRIP keep-alive
/// timeouts chosen by backends at run time (whole seconds up to an hour).
const MAX_INTERVALS: usize = 4096;

#[derive(Debug, Default)]
pub struct Heartbeats {
    beats: Mutex<HashMap<Duration, Arc<Beat>>>,
}

/// One interval's tick: an epoch and the subscribers to wake.
#[derive(Debug)]
struct Beat {
    interval: Duration,
    /// Whether the tick runs yet (it starts with the first member).
    driving: AtomicBool,
    epoch: AtomicU64,
    members: Mutex<HashMap<u64, Weak<Subscriber>>>,
}

/// A stream's place in its interval; leaves when dropped.
#[derive(Debug)]
pub struct Membership {
    beat: Arc<Beat>,
    id: u64,
}

impl Membership {
    /// Moves once per interval.
    pub fn epoch(&self) -> u64 {
        self.beat.epoch.load(Ordering::Acquire)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let mut m = self.beat.members.lock().unwrap_or_else(|p| p.into_inner());
        m.remove(&self.id);
        if m.capacity() > 64 && m.capacity() > m.len() * 4 {
            m.shrink_to_fit();
        }
    }
}

impl Beat {
    fn wake_members(&self) {
        // Collect first: waking under the lock would serialise with joins and leaves.
        let subs: Vec<Arc<Subscriber>> = {
            let m = self.members.lock().unwrap_or_else(|p| p.into_inner());
            m.values().filter_map(Weak::upgrade).collect()
        };
        for s in subs {
            s.nudge();
        }
    }

    /// The tick runs on the runtime of the streams it wakes (started by the
    /// first `join`, from a request handler): a wake-up from inside that
    /// runtime is a local queue push, one from another runtime is a
    /// cross-thread injection and often a thread unpark — per stream, per tick.
    fn drive(self: &Arc<Self>) {
        if self.driving.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.driving.store(false, Ordering::Release);
            return;
        };
        let beat = self.clone();
        rt.spawn(async move {
            let mut t = tokio::time::interval(beat.interval);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t.tick().await;
            loop {
                t.tick().await;
                beat.epoch.fetch_add(1, Ordering::AcqRel);
                beat.wake_members();
            }
        });
    }
}

impl Heartbeats {
    pub fn new() -> Heartbeats {
        Heartbeats::default()
    }

    /// Register a stream's subscriber to be woken every `interval`. None for
    /// a zero interval, past `MAX_INTERVALS` distinct ones, or outside a runtime.
    pub fn join(&self, interval: Duration, sub: &Arc<Subscriber>) -> Option<Membership> {
        if interval.is_zero() {
            return None;
        }
        let beat = {
            let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = beats.get(&interval) {
                b.clone()
            } else if beats.len() >= MAX_INTERVALS {
                return None;
            } else {
                let b = Arc::new(Beat {
                    interval,
                    driving: AtomicBool::new(false),
                    epoch: AtomicU64::new(0),
                    members: Mutex::new(HashMap::new()),
                });
                beats.insert(interval, b.clone());
                b
            }
        };
        beat.drive();
        beat.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sub.id(), Arc::downgrade(sub));
        Some(Membership { beat, id: sub.id() })
    }

    /// Every open stream's subscriber (every stream joins a tick).
    pub(crate) fn members(&self) -> Vec<Arc<Subscriber>> {
        let beats: Vec<Arc<Beat>> = {
            let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
            beats.values().cloned().collect()
        };
        let mut out = Vec::new();
        for beat in beats {
            let m = beat.members.lock().unwrap_or_else(|p| p.into_inner());
            out.extend(m.values().filter_map(Weak::upgrade));
        }
        out
    }

    /// Wake every stream now (shutdown: they look at the drain flag).
    pub fn wake_all(&self) {
        let beats: Vec<Arc<Beat>> = {
            let beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
            beats.values().cloned().collect()
        };
        for beat in beats {
            beat.wake_members();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Subscriber;

    #[tokio::test(start_paused = true)]
    async fn members_are_woken_each_interval_and_leave_when_dropped() {
        let hb = Heartbeats::new();
        let sub = Arc::new(Subscriber::new(1, 4));
        let m = hb.join(Duration::from_secs(15), &sub).unwrap();
        assert_eq!(m.epoch(), 0);
        tokio::time::sleep(Duration::from_secs(14)).await;
        assert_eq!(m.epoch(), 0, "no tick before the interval");
        tokio::time::timeout(Duration::from_secs(2), sub.woken())
            .await
            .expect("woken by the tick");
        assert_eq!(m.epoch(), 1);
        let other = Arc::new(Subscriber::new(2, 4));
        let m2 = hb.join(Duration::from_secs(15), &other).unwrap();
        drop(m);
        tokio::time::timeout(Duration::from_secs(16), other.woken())
            .await
            .expect("the remaining member is still woken");
        assert_eq!(m2.epoch(), 2, "one tick shared by every member");
        assert_eq!(m2.beat.members.lock().unwrap().len(), 1);
        assert!(hb.join(Duration::ZERO, &sub).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn wake_all_reaches_every_interval() {
        let hb = Heartbeats::new();
        let a = Arc::new(Subscriber::new(1, 4));
        let b = Arc::new(Subscriber::new(2, 4));
        let _ma = hb.join(Duration::from_secs(15), &a).unwrap();
        let _mb = hb.join(Duration::from_secs(55), &b).unwrap();
        hb.wake_all();
        for s in [&a, &b] {
            tokio::time::timeout(Duration::from_millis(1), s.woken())
                .await
                .expect("woken at once");
        }
    }
}

//! One shared tick per heartbeat interval instead of a timer per client.
//!
//! Streams held in pingora watch a `watch` channel. Detached streams cost
//! less: they register their subscriber here, and each tick bumps an epoch and
//! wakes every member through the subscriber's own `Notify` — the one thing an
//! idle detached stream waits on. The drain on shutdown uses the same wake-up.

use crate::hub::Subscriber;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Default)]
pub struct Heartbeats {
    ticks: HashMap<Duration, Arc<Beat>>,
    /// Intervals first asked for at run time (GRIP keep-alive timeouts chosen
    /// by backends), each driven by its own task from first use on. Bounded:
    /// callers pass whole seconds, and at most `MAX_EXTRA` are created.
    extra: Mutex<HashMap<Duration, Arc<Beat>>>,
}

/// Run-time intervals at most (whole seconds up to an hour fit).
const MAX_EXTRA: usize = 3600;

/// One interval's tick: an epoch, a watch for held streams, and the
/// subscribers of detached streams to wake.
#[derive(Debug)]
pub struct Beat {
    interval: Duration,
    /// Whether the member-waking tick runs yet (it starts with the first member).
    driving: std::sync::atomic::AtomicBool,
    epoch: AtomicU64,
    watch: watch::Sender<u64>,
    members: Mutex<HashMap<u64, Weak<Subscriber>>>,
}

/// A detached stream's place in its interval; leaves when dropped.
#[derive(Debug)]
pub struct Membership {
    beat: Arc<Beat>,
    id: u64,
}

impl Membership {
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
    fn new(interval: Duration) -> Beat {
        Beat {
            interval,
            driving: std::sync::atomic::AtomicBool::new(false),
            epoch: AtomicU64::new(0),
            watch: watch::channel(0).0,
            members: Mutex::new(HashMap::new()),
        }
    }

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

    /// The member tick runs on the runtime of the streams it wakes (started
    /// by the first `join`, from a request handler): a wake-up from inside
    /// that runtime is a local queue push, one from another runtime is a
    /// cross-thread injection and often a thread unpark — per stream, per tick.
    fn drive_members(self: &Arc<Self>) {
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
    pub fn new(intervals: impl IntoIterator<Item = Duration>) -> Heartbeats {
        let ticks = intervals
            .into_iter()
            .map(|d| (d, Arc::new(Beat::new(d))))
            .collect();
        Heartbeats {
            ticks,
            extra: Mutex::default(),
        }
    }

    /// The tick for `interval`: one registered at startup, else one created
    /// now and driven on the current runtime. None past `MAX_EXTRA` or
    /// outside a runtime.
    fn beat(&self, interval: Duration) -> Option<Arc<Beat>> {
        if let Some(b) = self.ticks.get(&interval) {
            return Some(b.clone());
        }
        let mut extra = self.extra.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = extra.get(&interval) {
            return Some(b.clone());
        }
        if extra.len() >= MAX_EXTRA || interval.is_zero() {
            return None;
        }
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let beat = Arc::new(Beat::new(interval));
        rt.spawn(drive(beat.clone(), interval));
        extra.insert(interval, beat.clone());
        Some(beat)
    }

    /// A receiver that changes every `interval`.
    pub fn subscribe(&self, interval: Duration) -> Option<watch::Receiver<u64>> {
        self.beat(interval).map(|b| {
            let mut rx = b.watch.subscribe();
            rx.mark_unchanged();
            rx
        })
    }

    /// Register a detached stream's subscriber to be woken every `interval`.
    pub fn join(&self, interval: Duration, sub: &Arc<Subscriber>) -> Option<Membership> {
        let beat = self.beat(interval)?;
        beat.drive_members();
        beat.members
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(sub.id(), Arc::downgrade(sub));
        Some(Membership { beat, id: sub.id() })
    }

    /// Wake every detached stream now (shutdown: they look at the drain flag).
    pub fn wake_all(&self) {
        for beat in self.ticks.values() {
            beat.wake_members();
        }
        let extra: Vec<Arc<Beat>> = {
            let extra = self.extra.lock().unwrap_or_else(|p| p.into_inner());
            extra.values().cloned().collect()
        };
        for beat in extra {
            beat.wake_members();
        }
    }

    /// Drive every tick; runs until the process ends.
    pub async fn run(&self) {
        let mut tasks = tokio::task::JoinSet::new();
        for (interval, beat) in &self.ticks {
            tasks.spawn(drive(beat.clone(), *interval));
        }
        while tasks.join_next().await.is_some() {}
    }
}

async fn drive(beat: Arc<Beat>, interval: Duration) {
    let mut t = tokio::time::interval(interval);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t.tick().await;
    loop {
        t.tick().await;
        beat.watch.send_modify(|n| *n += 1);
    }
}

//! Streams whose JWT expires are closed at `exp`, without a timer per client.
//!
//! Every JWT stream registers `(exp, subscriber)` in one ordered map; a single
//! sweep a second (run by the housekeeping service) takes every entry whose
//! time has come and expires its subscriber. The stream wakes through the
//! subscriber's own `Notify` (the one thing an idle stream waits on), writes
//! `event: ssegate.expired` and ends. Cost per JWT stream: one map entry
//! (≈64 B); an idle stream does no work until its second comes. Precision is
//! the sweep's: a stream ends within a second after `exp`.

use crate::hub::Subscriber;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// How often due streams are looked for: the precision of expiry.
const SWEEP: Duration = Duration::from_secs(1);

type Due = BTreeMap<(Instant, u64), Weak<Subscriber>>;

#[derive(Debug, Default)]
pub struct Expiries {
    // A std Mutex: held only to insert, remove or split, never across an await.
    due: Mutex<Due>,
}

/// A stream's entry; removed when the stream ends, whatever ends it.
#[derive(Debug)]
pub struct ExpiryGuard {
    owner: Arc<Expiries>,
    key: (Instant, u64),
}

impl ExpiryGuard {
    /// When the stream expires, in unix seconds (to register it again in
    /// another process).
    pub fn expires_unix(&self) -> u64 {
        let left = self.key.0.saturating_duration_since(Instant::now());
        unix_now().saturating_add(left.as_secs())
    }
}

impl Drop for ExpiryGuard {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.key);
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Expiries {
    fn lock(&self) -> std::sync::MutexGuard<'_, Due> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expire `sub` once the wall clock passes `at` (unix seconds, as in a
    /// JWT's `exp`). Kept as a deadline on tokio's clock from here on.
    pub fn register(self: &Arc<Self>, at: u64, sub: &Arc<Subscriber>) -> ExpiryGuard {
        let left = Duration::from_secs(at.saturating_sub(unix_now()));
        let deadline = Instant::now()
            .checked_add(left)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365 * 30));
        let key = (deadline, sub.id());
        self.lock().insert(key, Arc::downgrade(sub));
        ExpiryGuard {
            owner: self.clone(),
            key,
        }
    }

    /// Expire every subscriber due at or before `now`; how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let due = {
            let mut map = self.lock();
            // Subscriber ids never reach u64::MAX: everything due is below this key.
            let later = map.split_off(&(now, u64::MAX));
            std::mem::replace(&mut *map, later)
        };
        // Expire outside the lock: waking streams must not wait on it.
        let mut n = 0;
        for sub in due.values().filter_map(Weak::upgrade) {
            sub.expire();
            n += 1;
        }
        n
    }

    /// Sweep once a second, for the life of the process.
    pub async fn run(&self) {
        let mut t = tokio::time::interval(SWEEP);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            self.sweep(Instant::now());
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::SubState;

    #[tokio::test(start_paused = true)]
    async fn streams_expire_at_exp_and_guards_clean_up() {
        let ex = Arc::new(Expiries::default());
        let sweeper = {
            let ex = ex.clone();
            tokio::spawn(async move { ex.run().await })
        };
        let a = Arc::new(Subscriber::new(1, 4));
        let b = Arc::new(Subscriber::new(2, 4));
        let now = unix_now();
        let _ga = ex.register(now + 10, &a);
        let gb = ex.register(now + 100, &b);
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(a.state(), SubState::Open);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(a.state(), SubState::Expired, "within a second after exp");
        assert_eq!(b.state(), SubState::Open);
        drop(gb);
        assert!(ex.is_empty());
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert_eq!(b.state(), SubState::Open, "a dropped guard expires nothing");
        sweeper.abort();
    }

    #[test]
    fn an_exp_already_past_is_due_at_once() {
        let ex = Arc::new(Expiries::default());
        let a = Arc::new(Subscriber::new(1, 4));
        let _g = ex.register(1, &a);
        assert_eq!(ex.sweep(Instant::now()), 1);
        assert_eq!(a.state(), SubState::Expired);
    }
}

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
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug, Default)]
pub struct Expiries {
    // A std Mutex: held only to insert, remove or split, never across an await.
    due: Mutex<BTreeMap<(u64, u64), Weak<Subscriber>>>,
}

/// A stream's entry; removed when the stream ends, whatever ends it.
#[derive(Debug)]
pub struct ExpiryGuard {
    owner: Arc<Expiries>,
    key: (u64, u64),
}

impl Drop for ExpiryGuard {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.key);
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Expiries {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u64, u64), Weak<Subscriber>>> {
        self.due.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Expire `sub` once the clock passes `at` (unix seconds).
    pub fn register(self: &Arc<Self>, at: u64, sub: &Arc<Subscriber>) -> ExpiryGuard {
        let key = (at, sub.id());
        self.lock().insert(key, Arc::downgrade(sub));
        ExpiryGuard {
            owner: self.clone(),
            key,
        }
    }

    /// Expire every subscriber due at or before `now`; how many.
    pub fn sweep(&self, now: u64) -> usize {
        let due = {
            let mut map = self.lock();
            let later = map.split_off(&(now + 1, 0));
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

    #[test]
    fn sweeps_only_what_is_due_and_guards_clean_up() {
        let ex = Arc::new(Expiries::default());
        let a = Arc::new(Subscriber::new(1, 4));
        let b = Arc::new(Subscriber::new(2, 4));
        let _ga = ex.register(100, &a);
        let gb = ex.register(200, &b);
        assert_eq!(ex.sweep(99), 0);
        assert_eq!(ex.sweep(100), 1);
        assert_eq!(a.state(), SubState::Expired);
        assert_eq!(b.state(), SubState::Open);
        drop(gb);
        assert!(ex.is_empty());
        assert_eq!(ex.sweep(1000), 0);
    }
}

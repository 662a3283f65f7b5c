//! The last events this instance published, for the dashboard's tail: the
//! channel, event name, cursor, source and size — never the data, which may
//! be private. Recorded only while someone watches (`watch`): otherwise a
//! publish pays one relaxed atomic load for it.

use super::{Event, Payload};
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Entries kept.
const KEEP: usize = 50;

/// One published event, as the tail shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Recent {
    /// Unix time, milliseconds.
    pub t: u64,
    pub channel: String,
    /// `message` for the default event; `(grip)` for GRIP content.
    pub event: String,
    pub cursor: String,
    pub source: &'static str,
    /// Bytes of its frame.
    pub bytes: usize,
}

#[derive(Debug, Default)]
pub struct Tail {
    watching: AtomicBool,
    recent: Mutex<VecDeque<Recent>>,
}

impl Tail {
    /// Record from now on (true) or stop and forget (false).
    pub fn watch(&self, on: bool) {
        if !self.watching.swap(on, Ordering::Relaxed) || on {
            return;
        }
        self.lock().clear();
    }

    pub fn is_watched(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Recent>> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Add entries (oldest first); call only when `is_watched`.
    pub fn record(&self, entries: impl IntoIterator<Item = Recent>) {
        let mut q = self.lock();
        for e in entries {
            if q.len() == KEEP {
                q.pop_front();
            }
            q.push_back(e);
        }
    }

    /// Newest first.
    pub fn recent(&self) -> Vec<Recent> {
        self.lock().iter().rev().cloned().collect()
    }
}

/// The entry of `ev`, published now under `cursor`; `bytes` is the size
/// of its data (or GRIP content).
pub(crate) fn entry(ev: &Event, cursor: String) -> Recent {
    let (event, bytes) = match &ev.payload {
        Payload::Message { event, data } => (event.as_deref().unwrap_or("message"), data.len()),
        Payload::Raw(content) => ("(grip)", content.len()),
        Payload::Close => ("(close)", 0),
    };
    Recent {
        t: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        channel: ev.channel.clone(),
        event: event.to_string(),
        cursor,
        source: ev.source.label(),
        bytes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_while_watched_and_forgets_after() {
        let t = Tail::default();
        assert!(!t.is_watched());
        t.watch(true);
        let ev = Event::new(
            "c".into(),
            None,
            Payload::Message {
                event: None,
                data: "xy".into(),
            },
            crate::origin::Source::Poll,
        );
        t.record((0..60).map(|i| entry(&ev, i.to_string())));
        let r = t.recent();
        assert_eq!(r.len(), KEEP);
        assert_eq!(r[0].cursor, "59");
        assert_eq!(
            (r[0].event.as_str(), r[0].bytes, r[0].source),
            ("message", 2, "poll")
        );
        t.watch(false);
        assert!(t.recent().is_empty());
    }
}

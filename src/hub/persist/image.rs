//! The hub's saved state in memory: what a checkpoint holds, what replaying
//! a log onto it gives, and what the memory broker is rebuilt from.
//!
//! Replaying applies `history.size` as it goes and `history.ttl` by wall clock
//! at the end, so gap marks (`evicted`, `forgotten`) come out as the running
//! hub had them, or higher: a resume may get a reset it could have been
//! spared, never a silent gap.

use super::format::{Damage, Ev, Marks, Record};
use super::replies::{self, Replies};
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// One event, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    pub seq: u64,
    pub at_ms: u64,
    pub dedupe: Option<Arc<str>>,
    pub grip_only: bool,
    pub frame: Bytes,
}

impl Saved {
    pub(super) fn ev(&self) -> Ev<'_> {
        Ev {
            seq: self.seq,
            at_ms: self.at_ms,
            dedupe: self.dedupe.as_deref(),
            grip_only: self.grip_only,
            frame: &self.frame,
        }
    }
}

/// A channel's history and gap mark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kept {
    pub evicted: u64,
    pub events: VecDeque<Saved>,
}

/// What history is kept: the broker's `history.size` and `history.ttl`.
#[derive(Debug, Clone, Copy)]
pub struct Trim {
    pub size: usize,
    pub ttl: Duration,
}

/// At most this many lost ranges are remembered; older ones are merged
/// (which only widens what gets a reset).
const MAX_LOST: usize = 32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub epoch: u64,
    pub seq: u64,
    pub reserved: u64,
    pub forgotten: u64,
    pub lost: Vec<(u64, u64)>,
    pub channels: HashMap<Arc<str>, Kept>,
    /// Other components' state, by key (`persist::Section`).
    pub sections: BTreeMap<String, Bytes>,
    /// Recorded backend replies (`record:` routes), by id.
    pub replies: Replies,
    /// The last record read was `Clean`.
    pub clean: bool,
}

impl Image {
    pub fn empty(epoch: u64) -> Image {
        Image {
            epoch,
            seq: 0,
            reserved: 0,
            forgotten: 0,
            lost: Vec::new(),
            channels: HashMap::new(),
            sections: BTreeMap::new(),
            replies: Replies::new(),
            clean: false,
        }
    }

    pub fn events(&self) -> usize {
        self.channels.values().map(|k| k.events.len()).sum()
    }

    pub(super) fn marks(&self) -> Marks {
        Marks {
            seq: self.seq,
            reserved: self.reserved,
            forgotten: self.forgotten,
            lost: self.lost.clone(),
        }
    }

    pub(super) fn set_marks(&mut self, m: Marks) {
        self.seq = m.seq;
        self.reserved = m.reserved;
        self.forgotten = m.forgotten;
        self.lost = m.lost;
    }

    fn push(&mut self, buf: &Bytes, name: &str, ev: &Ev<'_>, size: usize) -> Result<(), Damage> {
        let kept = match self.channels.get_mut(name) {
            Some(k) => k,
            None => self.channels.entry(Arc::from(name)).or_default(),
        };
        if kept.events.back().is_some_and(|last| last.seq >= ev.seq) || ev.seq <= kept.evicted {
            return Err(Damage::Inconsistent(format!(
                "event {} of `{name}` is out of order",
                ev.seq
            )));
        }
        kept.events.push_back(Saved {
            seq: ev.seq,
            at_ms: ev.at_ms,
            dedupe: ev.dedupe.map(Arc::from),
            grip_only: ev.grip_only,
            frame: buf.slice_ref(ev.frame),
        });
        while kept.events.len() > size {
            if let Some(old) = kept.events.pop_front() {
                kept.evicted = old.seq;
            }
        }
        Ok(())
    }

    /// Apply one record read from `buf` (frames are slices of it, not copies).
    pub(super) fn apply(
        &mut self,
        buf: &Bytes,
        rec: Record<'_>,
        size: usize,
    ) -> Result<(), Damage> {
        let clean = matches!(rec, Record::Clean { .. });
        match rec {
            Record::Channel {
                name,
                evicted,
                events,
            } => {
                let kept = self.channels.entry(Arc::from(name)).or_default();
                kept.evicted = kept.evicted.max(evicted);
                for ev in &events {
                    if ev.seq > self.seq {
                        return Err(Damage::Inconsistent(format!(
                            "event {} is past the checkpoint's cursor {}",
                            ev.seq, self.seq
                        )));
                    }
                    self.push(buf, name, ev, size)?;
                }
            }
            Record::Delta {
                seq,
                reserved,
                forgotten,
                events,
            } => {
                if seq < self.seq || seq > reserved {
                    return Err(Damage::Inconsistent(format!(
                        "a save of cursor {seq} after {} (reserved {reserved})",
                        self.seq
                    )));
                }
                for (name, ev) in &events {
                    if ev.seq <= self.seq || ev.seq > seq {
                        return Err(Damage::Inconsistent(format!(
                            "event {} outside its save ({}, {seq}]",
                            ev.seq, self.seq
                        )));
                    }
                    self.push(buf, name, ev, size)?;
                }
                self.seq = seq;
                self.reserved = self.reserved.max(reserved);
                self.forgotten = self.forgotten.max(forgotten);
            }
            Record::Lost { from, to } => {
                if from > to || to > self.reserved {
                    return Err(Damage::Inconsistent(format!(
                        "lost range ({from}, {to}] past the reservation {}",
                        self.reserved
                    )));
                }
                self.add_lost(from, to);
            }
            Record::Clean { seq } => {
                if seq != self.seq {
                    return Err(Damage::Inconsistent(format!(
                        "a clean stop at {seq}, but the saves end at {}",
                        self.seq
                    )));
                }
            }
            Record::Section { key, body } => {
                self.sections.insert(key.to_string(), buf.slice_ref(body));
            }
            Record::Replies { ops } => replies::apply(&mut self.replies, buf, ops),
            Record::Head(_) | Record::Marks(_) | Record::End { .. } => {
                return Err(Damage::Inconsistent(
                    "a header in the middle of a file".into(),
                ));
            }
        }
        self.clean = clean;
        Ok(())
    }

    pub fn add_lost(&mut self, from: u64, to: u64) {
        if to > from {
            self.lost.push((from, to));
        }
        while self.lost.len() > MAX_LOST {
            let (a, _) = self.lost.remove(0);
            self.lost[0].0 = a;
        }
    }

    /// Apply `history.ttl` (by wall clock) and `size`, drop channels left
    /// empty into the `forgotten` floor, forget lost ranges no resume can
    /// reach any more, and drop expired replies.
    pub fn trim(&mut self, trim: Trim, now_ms: u64) {
        let ttl_ms = u64::try_from(trim.ttl.as_millis()).unwrap_or(u64::MAX);
        let mut forgotten = self.forgotten;
        self.channels.retain(|_, kept| {
            while let Some(front) = kept.events.front() {
                let fresh = front.at_ms.saturating_add(ttl_ms) > now_ms;
                if kept.events.len() <= trim.size && fresh {
                    break;
                }
                kept.evicted = front.seq;
                kept.events.pop_front();
            }
            if kept.events.is_empty() {
                forgotten = forgotten.max(kept.evicted);
                return false;
            }
            true
        });
        self.forgotten = forgotten;
        let floor = self
            .channels
            .values()
            .map(|k| k.evicted)
            .min()
            .unwrap_or(u64::MAX)
            .min(self.forgotten);
        self.lost.retain(|&(_, to)| to > floor);
        replies::expire(&mut self.replies, now_ms);
    }

    /// Frames copied out of the file buffers they were read from, one
    /// allocation per channel, so that the buffers can go.
    pub fn detach(&mut self) {
        for kept in self.channels.values_mut() {
            let total = kept.events.iter().map(|s| s.frame.len()).sum();
            let mut all = bytes::BytesMut::with_capacity(total);
            for s in &kept.events {
                all.extend_from_slice(&s.frame);
            }
            let all = all.freeze();
            let mut at = 0;
            for s in kept.events.iter_mut() {
                let n = s.frame.len();
                s.frame = all.slice(at..at + n);
                at += n;
            }
        }
        for body in self.sections.values_mut() {
            *body = Bytes::copy_from_slice(body);
        }
        replies::detach(&mut self.replies);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, at_ms: u64) -> Ev<'static> {
        Ev {
            seq,
            at_ms,
            dedupe: None,
            grip_only: false,
            frame: b"data: x\n\n",
        }
    }

    fn delta(seq: u64, events: Vec<(&'static str, Ev<'static>)>) -> Record<'static> {
        Record::Delta {
            seq,
            reserved: seq + 100,
            forgotten: 0,
            events,
        }
    }

    #[test]
    fn replay_keeps_size_and_marks_what_it_dropped() {
        let buf = Bytes::from_static(b"data: x\n\n");
        let mut img = Image::empty(1);
        img.apply(
            &buf,
            delta(3, vec![("a", ev(1, 0)), ("a", ev(2, 0)), ("b", ev(3, 0))]),
            1,
        )
        .unwrap();
        assert_eq!(img.channels["a"].evicted, 1);
        assert_eq!(img.channels["a"].events.len(), 1);
        assert_eq!((img.seq, img.reserved), (3, 103));
        img.apply(&buf, Record::Clean { seq: 3 }, 1).unwrap();
        assert!(img.clean);
        img.apply(&buf, delta(3, vec![]), 1).unwrap();
        assert!(!img.clean, "anything after a clean stop makes it unclean");
    }

    #[test]
    fn ttl_by_wall_clock_drops_channels_into_the_floor() {
        let buf = Bytes::from_static(b"data: x\n\n");
        let mut img = Image::empty(1);
        img.apply(
            &buf,
            delta(
                3,
                vec![
                    ("a", ev(1, 1_000)),
                    ("b", ev(2, 1_000)),
                    ("b", ev(3, 9_000)),
                ],
            ),
            10,
        )
        .unwrap();
        img.add_lost(0, 1);
        img.trim(
            Trim {
                size: 10,
                ttl: Duration::from_secs(5),
            },
            10_000,
        );
        assert!(!img.channels.contains_key("a"));
        assert_eq!(img.forgotten, 1);
        assert_eq!(img.channels["b"].evicted, 2);
        assert!(img.lost.is_empty(), "no resume can land in (0, 1] any more");
    }

    #[test]
    fn out_of_order_or_out_of_range_events_are_refused() {
        let buf = Bytes::from_static(b"data: x\n\n");
        let mut img = Image::empty(1);
        img.apply(&buf, delta(2, vec![("a", ev(2, 0))]), 10)
            .unwrap();
        assert!(img
            .apply(&buf, delta(4, vec![("a", ev(2, 0))]), 10)
            .is_err());
        assert!(img
            .apply(&buf, delta(4, vec![("a", ev(5, 0))]), 10)
            .is_err());
        assert!(img.apply(&buf, Record::Clean { seq: 9 }, 10).is_err());
        assert!(img
            .apply(&buf, Record::Lost { from: 2, to: 1_000 }, 10)
            .is_err());
    }

    #[test]
    fn many_lost_ranges_merge_oldest_first() {
        let mut img = Image::empty(1);
        for i in 0..40 {
            img.add_lost(i * 10, i * 10 + 5);
        }
        assert_eq!(img.lost.len(), MAX_LOST);
        assert_eq!(img.lost[0], (0, 85));
    }
}

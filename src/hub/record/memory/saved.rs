//! The memory store's records in `hub.persist`: the journal of changes the
//! memory broker's saver takes at each save (appended to its log with the
//! hub's events), every record whole for a checkpoint, and the records the
//! files held, restored at start.
//!
//! A record restored unended lost its writer with the previous process: it
//! ends with `ssegate.incomplete` (`interrupted`) numbered `LOST_END`, not
//! its next number. Frames are delivered before they are saved, so a
//! client may hold later events of it than the files do; the next number
//! could be one of them, with other content.

use super::{MemoryRecords, Rec, RouteUse, State};
use crate::hub::persist::{self, Replies, Reply, ReplyChange, ReplyHead};
use crate::hub::record::{Credentials, EndReason, RecordId, LOST_END};
use crate::wire;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Unsaved change bytes past which the journal gives up and the next save
/// writes every record whole instead (a disk that stalled for long).
const MAX_PENDING_BYTES: usize = 256 << 20;

#[derive(Debug, Default)]
pub(super) struct Journal {
    changes: Vec<ReplyChange>,
    bytes: usize,
    overflowed: bool,
}

impl Journal {
    pub(super) fn note(&mut self, c: ReplyChange) {
        if self.overflowed {
            return;
        }
        self.bytes += c.size();
        self.changes.push(c);
        if self.bytes > MAX_PENDING_BYTES {
            *self = Journal {
                overflowed: true,
                ..Journal::default()
            };
        }
    }
}

impl Rec {
    pub(super) fn head(&self) -> ReplyHead {
        ReplyHead {
            route: self.route.clone(),
            credentials: self.credentials.0,
            created_ms: self.created_ms,
            ttl_ms: self.ttl_ms,
            max_total: self.max_total,
        }
    }

    fn saved(&self) -> Reply {
        Reply {
            head: self.head(),
            frames: self.frames.clone(),
            // Saved as the files had it: a later start ends it the same way.
            ended: self.ended && self.lost_end.is_none(),
        }
    }
}

impl State {
    pub(super) fn whole(&self) -> Replies {
        self.records
            .iter()
            .map(|(id, r)| (*id.bytes(), r.saved()))
            .collect()
    }
}

impl MemoryRecords {
    /// Journal every change from now on (`hub.persist` is on).
    pub fn journal_on(&self) {
        self.lock().journal.get_or_insert_with(Journal::default);
    }

    /// Something changed since the last save.
    pub fn changed(&self) -> bool {
        self.lock()
            .journal
            .as_ref()
            .is_some_and(|j| j.overflowed || !j.changes.is_empty())
    }

    /// The changes since the last call, for a save to append; after an
    /// overflow, every record whole.
    pub fn take_changes(&self) -> Vec<ReplyChange> {
        let mut st = self.lock();
        let Some(j) = st.journal.as_mut() else {
            return Vec::new();
        };
        if !j.overflowed {
            j.bytes = 0;
            return std::mem::take(&mut j.changes);
        }
        *j = Journal::default();
        let mut out = vec![ReplyChange::Reset];
        for (id, r) in st.whole() {
            persist::changes_of(id, &r, &mut out);
        }
        out
    }

    /// Every record whole, for a new checkpoint; the journal starts over.
    pub fn take_whole(&self) -> Replies {
        let mut st = self.lock();
        if let Some(j) = st.journal.as_mut() {
            *j = Journal::default();
        }
        st.whole()
    }

    /// Take the records the files held (at start). Expired ones are
    /// skipped; each route is held to the `max_total` of its newest record.
    /// How many were restored, and how many of them had lost their writer.
    pub fn restore(&self, saved: Replies) -> (usize, usize) {
        let mut counts = (0, 0);
        let (now, wall) = (Instant::now(), persist::now_ms());
        let mut st = self.lock();
        let mut max_totals: HashMap<Arc<str>, (u64, u64)> = HashMap::new();
        for (bytes, s) in saved {
            let id = RecordId(bytes);
            let expires = s.head.expires_ms();
            if expires <= wall || st.records.contains_key(&id) {
                continue;
            }
            let deadline = now + Duration::from_millis(expires - wall);
            counts.0 += 1;
            counts.1 += usize::from(!s.ended);
            let lost_end = (!s.ended)
                .then(|| wire::incomplete(&id.event_id(LOST_END), EndReason::Interrupted.as_str()));
            let route = s.head.route.clone();
            let rec = Rec {
                route: route.clone(),
                credentials: Credentials(s.head.credentials),
                bytes: s.frames.iter().map(Bytes::len).sum::<usize>()
                    + lost_end.as_ref().map_or(0, Bytes::len),
                frames: s.frames,
                ended: true,
                deadline,
                readers: HashMap::new(),
                created_ms: s.head.created_ms,
                ttl_ms: s.head.ttl_ms,
                max_total: s.head.max_total,
                lost_end,
            };
            let newest = max_totals.entry(route.clone()).or_default();
            if s.head.created_ms >= newest.0 {
                *newest = (s.head.created_ms, s.head.max_total);
            }
            let u: &mut RouteUse = st.routes.entry(route).or_default();
            u.bytes += rec.bytes;
            u.by_deadline.insert((deadline, id));
            st.records.insert(id, rec);
        }
        for (route, (_, max)) in max_totals {
            let max = usize::try_from(max).unwrap_or(usize::MAX);
            st.evict(&route, max, &self.metrics);
        }
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{frame, new_record, store};
    use super::*;
    use crate::hub::record::{NewRecord, RecordError, Records};
    use crate::hub::Subscriber;

    /// The changes replayed as the files would hold them.
    fn replayed(changes: &[ReplyChange]) -> Replies {
        let mut out = Replies::new();
        for c in changes {
            match c {
                ReplyChange::Reset => out.clear(),
                ReplyChange::Start { id, head } => {
                    out.insert(
                        *id,
                        Reply {
                            head: head.clone(),
                            frames: Vec::new(),
                            ended: false,
                        },
                    );
                }
                ReplyChange::Frame { id, n, frame } => {
                    let r = out.get_mut(id).unwrap();
                    assert_eq!(*n, r.frames.len() as u64 + 1);
                    r.frames.push(frame.clone());
                }
                ReplyChange::End { id } => out.get_mut(id).unwrap().ended = true,
                ReplyChange::Drop { id } => {
                    out.remove(id);
                }
            }
        }
        out
    }

    async fn reader_of(s: &MemoryRecords, rec: &NewRecord, after: u64) -> Vec<(u64, Bytes)> {
        let sub = Arc::new(Subscriber::new(9, 64));
        let f = s
            .follow(&sub, rec.id, &rec.route, after, &rec.credentials)
            .await
            .unwrap();
        assert!(f.ended, "a restored record has no writer");
        f.frames.into_iter().map(|d| (d.seq, d.frame)).collect()
    }

    #[tokio::test]
    async fn journaled_records_restore_and_a_live_one_ends_out_of_band() {
        let s = store();
        s.journal_on();
        let done = new_record("/chat", 1 << 20);
        let live = new_record("/chat", 1 << 20);
        let gone = new_record("/chat", 1 << 20);
        for r in [&done, &live, &gone] {
            s.start(r, &Arc::new(Subscriber::new(1, 8))).await.unwrap();
            s.append(r, 1, frame(r, 1)).await.unwrap();
        }
        s.end(&done, EndReason::Complete).await.unwrap();
        let mut changes = s.take_changes();
        s.append(&live, 2, frame(&live, 2)).await.unwrap();
        s.sweep(Instant::now() + Duration::from_secs(61));
        assert_eq!(s.usage().0, 0);
        changes.extend(s.take_changes());
        assert!(!s.changed());
        // Expired here but not in the files: restore drops what expired by
        // the wall clock; the drops were journaled too.
        let files = replayed(&changes);
        assert!(files.is_empty(), "{files:?}");

        let s = store();
        s.journal_on();
        for r in [&done, &live] {
            s.start(r, &Arc::new(Subscriber::new(1, 8))).await.unwrap();
            s.append(r, 1, frame(r, 1)).await.unwrap();
        }
        s.end(&done, EndReason::Complete).await.unwrap();
        s.append(&live, 2, frame(&live, 2)).await.unwrap();
        let files = replayed(&s.take_changes());
        assert_eq!(files, s.take_whole(), "the journal and a checkpoint agree");
        let back = store();
        back.restore(files);
        assert_eq!(reader_of(&back, &done, 0).await, [(1, frame(&done, 1))]);
        let end = wire::incomplete(&live.id.event_id(LOST_END), "interrupted");
        assert_eq!(
            reader_of(&back, &live, 1).await,
            [(2, frame(&live, 2)), (LOST_END, end.clone())]
        );
        // A client that got more than was saved gets the end, not a number
        // it may hold already.
        assert_eq!(reader_of(&back, &live, 7).await, [(LOST_END, end)]);
        assert!(reader_of(&back, &live, LOST_END).await.is_empty());
        // Saved again, it stays unended in the files: the next start ends
        // it the same way.
        assert!(!back.take_whole()[live.id.bytes()].ended);
        let other = Credentials([8; 32]);
        let sub = Arc::new(Subscriber::new(3, 8));
        let r = back.follow(&sub, live.id, "/chat", 0, &other).await;
        assert_eq!(r.unwrap_err(), RecordError::Forbidden);
    }

    #[tokio::test]
    async fn an_overflowed_journal_saves_every_record_whole() {
        let s = store();
        s.journal_on();
        let rec = new_record("/chat", 1 << 20);
        s.start(&rec, &Arc::new(Subscriber::new(1, 8)))
            .await
            .unwrap();
        s.lock().journal.as_mut().unwrap().overflowed = true;
        s.append(&rec, 1, frame(&rec, 1)).await.unwrap();
        let changes = s.take_changes();
        assert_eq!(changes[0], ReplyChange::Reset);
        assert_eq!(replayed(&changes), s.take_whole());
    }

    #[tokio::test]
    async fn restore_applies_max_total_oldest_first() {
        let s = store();
        let size = frame(&new_record("/a", 0), 1).len();
        let mut saved = Replies::new();
        for (i, created) in [3_000u64, 1_000, 2_000].into_iter().enumerate() {
            let rec = new_record("/a", size * 2);
            saved.insert(
                *rec.id.bytes(),
                Reply {
                    head: ReplyHead {
                        route: "/a".into(),
                        credentials: rec.credentials.0,
                        created_ms: persist::now_ms() - created,
                        ttl_ms: 60_000 + i as u64,
                        max_total: (size * 2) as u64,
                    },
                    frames: vec![frame(&rec, 1)],
                    ended: true,
                },
            );
        }
        s.restore(saved);
        assert_eq!(s.usage(), (2, size * 2));
    }
}

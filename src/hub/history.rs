//! One channel's bounded history in the memory broker, packed: the frames
//! back to back in one buffer and a 16-byte index entry each, instead of a
//! shared `Bytes` (its own allocation, rounded up by the allocator, and a
//! 32-byte handle) plus a timestamp and an id per event. An event kept in
//! history costs its frame and ~30 bytes; the frames handed to live
//! subscribers are separate and go away once delivered.
//!
//! The `id:` line the broker writes first in every frame is not stored:
//! it is the cursor, which the entry's seq and the history's epoch give
//! back exactly when a frame is read out (~24 bytes an event).
//!
//! Buffers grow geometrically but never past what `size` events of the
//! sizes seen so far need, so a full history sits in about one allocation
//! of its own size.

use super::{cursor, Delivery};
use bytes::Bytes;
use std::collections::{HashSet, VecDeque};
use std::io::Write as _;
use std::num::NonZeroU64;
use std::sync::Arc;

/// One stored event: where its frame is, and what the broker needs to know.
#[derive(Debug, Clone, Copy)]
struct Entry {
    seq: u64,
    /// Milliseconds on the broker's clock (`History::push`), wrapping: ages
    /// are differences, and history is bounded to 30 days, well within u32.
    at: u32,
    /// The frame's length; the two top bits are flags.
    len_flags: u32,
}

const GRIP_ONLY: u32 = 1 << 31;
const HAS_ID: u32 = 1 << 30;
/// The frame began with `id: <cursor(epoch, seq)>\n`, left out of `frames`.
const ID_LINE: u32 = 1 << 29;
const LEN: u32 = ID_LINE - 1;

impl Entry {
    fn len(&self) -> usize {
        (self.len_flags & LEN) as usize
    }
}

/// Publisher ids of the events in history (dedupe), with their order so
/// that each leaves with its event. Boxed: most channels never see one.
#[derive(Debug, Default)]
struct Ids {
    set: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
}

/// A stored event, as the broker's state for a live upgrade sees it.
#[derive(Debug)]
pub(super) struct Stored<'a> {
    pub(super) seq: u64,
    pub(super) at: u32,
    pub(super) frame: Bytes,
    pub(super) grip_only: bool,
    pub(super) dedupe_id: Option<&'a Arc<str>>,
}

#[derive(Debug, Default)]
pub(super) struct History {
    frames: VecDeque<u8>,
    index: VecDeque<Entry>,
    ids: Option<Box<Ids>>,
    /// The epoch of the stripped `id:` lines; one per history, so a frame
    /// of another epoch (none in practice) is kept whole.
    epoch: Option<NonZeroU64>,
}

/// The epoch of `frame`'s first line when it is exactly the cursor of
/// `seq` (`id: <epoch hex>-<seq>\n`), and that line's length.
fn id_line(frame: &[u8], seq: u64) -> Option<(NonZeroU64, usize)> {
    let rest = frame.strip_prefix(b"id: ")?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    let value = std::str::from_utf8(&rest[..end]).ok()?;
    let (epoch, at) = cursor::parse(value)?;
    // Only a canonical cursor comes back byte for byte from (epoch, seq);
    // written on the stack, as this runs for every event published.
    let mut canonical = [0u8; 48];
    let mut w = &mut canonical[..];
    write!(w, "{}", cursor::Cursor(epoch, seq)).ok()?;
    let n = 48 - w.len();
    (at == seq && &canonical[..n] == value.as_bytes()).then_some(())?;
    Some((NonZeroU64::new(epoch)?, 4 + end + 1))
}

/// Room for `extra` more, growing to at most `cap_at` (but always enough).
fn grow<T>(q: &mut VecDeque<T>, extra: usize, cap_at: usize) {
    let need = q.len() + extra;
    if need <= q.capacity() {
        return;
    }
    let target = (q.capacity() * 2).min(cap_at).max(need);
    q.reserve_exact(target - q.len());
}

impl History {
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Whether a publisher id is in history.
    pub(super) fn has_id(&self, id: &str) -> bool {
        self.ids.as_ref().is_some_and(|ids| ids.set.contains(id))
    }

    /// Append an event; `size` is the history's bound (it sizes the buffers,
    /// the caller evicts).
    pub(super) fn push(
        &mut self,
        seq: u64,
        at: u32,
        frame: &[u8],
        grip_only: bool,
        dedupe_id: Option<Arc<str>>,
        size: usize,
    ) {
        let mut frame = frame;
        let mut len_flags = 0;
        if let Some((epoch, line)) = id_line(frame, seq) {
            if self.epoch.is_none() {
                self.epoch = Some(epoch);
            }
            if self.epoch == Some(epoch) {
                frame = &frame[line..];
                len_flags |= ID_LINE;
            }
        }
        len_flags |= (frame.len() as u32).min(LEN);
        if grip_only {
            len_flags |= GRIP_ONLY;
        }
        if let Some(id) = dedupe_id {
            len_flags |= HAS_ID;
            let ids = self.ids.get_or_insert_with(Box::default);
            ids.set.insert(id.clone());
            ids.order.push_back(id);
        }
        let events = size.max(self.index.len() + 1);
        grow(&mut self.index, 1, events);
        let per_event = (self.frames.len() + frame.len()).div_ceil(self.index.len() + 1);
        grow(&mut self.frames, frame.len(), per_event * events);
        self.index.push_back(Entry { seq, at, len_flags });
        self.frames.extend(frame);
    }

    /// The oldest event's time.
    pub(super) fn front_at(&self) -> Option<u32> {
        self.index.front().map(|e| e.at)
    }

    /// The newest event's time.
    pub(super) fn back_at(&self) -> Option<u32> {
        self.index.back().map(|e| e.at)
    }

    /// Drop the oldest event; its cursor.
    pub(super) fn pop_front(&mut self) -> Option<u64> {
        let e = self.index.pop_front()?;
        self.frames.drain(..e.len());
        if e.len_flags & HAS_ID != 0 {
            if let Some(ids) = self.ids.as_mut() {
                if let Some(id) = ids.order.pop_front() {
                    ids.set.remove(&id);
                }
                if ids.order.is_empty() {
                    self.ids = None;
                }
            }
        }
        if self.index.is_empty() {
            // A channel whose history emptied keeps no buffers.
            *self = History::default();
        }
        Some(e.seq)
    }

    /// Every event, oldest first (frames copied: for a live upgrade's state).
    pub(super) fn iter(&self) -> impl Iterator<Item = Stored<'_>> {
        let mut ids = self.ids.iter().flat_map(|ids| ids.order.iter());
        let mut offset = 0;
        self.index.iter().map(move |e| {
            let frame = self.frame_at(e, offset);
            offset += e.len();
            Stored {
                seq: e.seq,
                at: e.at,
                frame,
                grip_only: e.len_flags & GRIP_ONLY != 0,
                dedupe_id: if e.len_flags & HAS_ID != 0 {
                    ids.next()
                } else {
                    None
                },
            }
        })
    }

    /// The events after cursor `seq`, as deliveries (their frames copied).
    pub(super) fn after(&self, seq: u64, out: &mut Vec<Delivery>) {
        let start = self.index.partition_point(|e| e.seq <= seq);
        let skip: usize = self.index.range(..start).map(Entry::len).sum();
        let mut offset = skip;
        for e in self.index.range(start..) {
            let frame = self.frame_at(e, offset);
            offset += e.len();
            // Replayed frames go out in the opening, not counted by source.
            out.push(Delivery {
                seq: e.seq,
                grip_only: e.len_flags & GRIP_ONLY != 0,
                ..Delivery::uncounted(frame)
            });
        }
    }

    /// A copy of entry `e`'s frame, stored from `offset`, with its `id:`
    /// line back in front.
    fn frame_at(&self, e: &Entry, offset: usize) -> Bytes {
        let (a, b) = self.frames.as_slices();
        let len = e.len();
        let mut out = Vec::with_capacity(len + 32);
        if let (true, Some(epoch)) = (e.len_flags & ID_LINE != 0, self.epoch) {
            let _ = writeln!(out, "id: {}", cursor::Cursor(epoch.get(), e.seq));
        }
        let end = offset + len;
        if offset < a.len() {
            out.extend_from_slice(&a[offset..end.min(a.len())]);
        }
        if end > a.len() {
            out.extend_from_slice(&b[offset.max(a.len()) - a.len()..end - a.len()]);
        }
        Bytes::from(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(h: &History) -> Vec<(u64, Bytes)> {
        h.iter().map(|s| (s.seq, s.frame)).collect()
    }

    #[test]
    fn keeps_frames_in_order_across_the_wrap_and_sizes_its_buffers() {
        let mut h = History::default();
        let frame =
            |i: u64| Bytes::from(format!("id: {i}\ndata: {}\n\n", "x".repeat(i as usize % 7)));
        for i in 1..=10 {
            h.push(i, 0, &frame(i), false, None, 10);
        }
        let full = h.frames.capacity();
        assert!(full <= h.frames.len() + 30, "sized to what 10 need: {full}");
        assert_eq!(h.index.capacity(), 10);
        // Keep it at 10 for a while: the ring wraps, nothing grows.
        for i in 11..=40 {
            h.pop_front();
            h.push(i, 0, &frame(i), i % 3 == 0, None, 10);
            let got = frames(&h);
            let want: Vec<(u64, Bytes)> = (i - 9..=i).map(|k| (k, frame(k))).collect();
            assert_eq!(got, want);
        }
        assert!(h.frames.capacity() <= full + 30);
        let mut out = Vec::new();
        h.after(35, &mut out);
        let seqs: Vec<u64> = out.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, vec![36, 37, 38, 39, 40]);
        assert_eq!(out[0].frame, frame(36));
        assert_eq!(out.iter().filter(|d| d.grip_only).count(), 2);
    }

    #[test]
    fn leaves_out_the_cursor_line_and_writes_it_back_exactly() {
        let ev = |epoch: u64, seq: u64| {
            Bytes::from(format!(
                "id: {}\ndata: {}\n\n",
                cursor::format(epoch, seq),
                "y".repeat(200)
            ))
        };
        let mut h = History::default();
        let frames_in: Vec<(u64, Bytes)> = vec![
            (1, ev(0x19a, 1)),
            // Not this entry's cursor, another epoch, not canonical, a
            // GRIP frame with its own id: all kept whole.
            (2, ev(0x19a, 7)),
            (3, ev(0x19b, 3)),
            (4, Bytes::from_static(b"id: 19a-04\ndata: x\n\n")),
            (5, Bytes::from_static(b"id: mine\ndata: x\n\n")),
            (6, Bytes::from_static(b"data: no id\n\n")),
            (7, ev(0x19a, 7)),
        ];
        for (seq, f) in &frames_in {
            h.push(*seq, 0, f, false, None, 10);
        }
        let stored = frames_in.iter().map(|(_, f)| f.len()).sum::<usize>() - h.frames.len();
        assert_eq!(stored, 2 * "id: 19a-1\n".len(), "two id lines left out");
        assert_eq!(frames(&h), frames_in);
        let mut out = Vec::new();
        h.after(0, &mut out);
        let replayed: Vec<(u64, Bytes)> = out.into_iter().map(|d| (d.seq, d.frame)).collect();
        assert_eq!(replayed, frames_in);
    }

    #[test]
    fn ids_leave_with_their_events() {
        let mut h = History::default();
        h.push(1, 5, b"a", false, Some("x".into()), 3);
        h.push(2, 6, b"b", false, None, 3);
        h.push(3, 7, b"c", false, Some("y".into()), 3);
        assert!(h.has_id("x") && h.has_id("y"));
        let ids: Vec<Option<&str>> = h.iter().map(|s| s.dedupe_id.map(|i| &**i)).collect();
        assert_eq!(ids, vec![Some("x"), None, Some("y")]);
        assert_eq!(h.front_at(), Some(5));
        assert_eq!(h.pop_front(), Some(1));
        assert!(!h.has_id("x") && h.has_id("y"));
        h.pop_front();
        h.pop_front();
        assert!(h.is_empty() && !h.has_id("y"));
        assert_eq!(
            h.frames.capacity(),
            0,
            "an emptied history keeps no buffers"
        );
    }
}

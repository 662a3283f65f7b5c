//! Recorded backend replies (`record:` routes, `hub::record::memory`) in
//! `hub.persist`'s files: the owned form the record store hands the saver
//! and gets back at start, and how the files' `Replies` records build it.
//!
//! The store journals every change (a reply made, a frame, its end, its
//! drop) and each save appends them to the log next to the hub's events; a
//! checkpoint holds every reply whole. A change that does not fit what the
//! files hold (a frame out of order) drops that one reply rather than refuse
//! the hub's history: a reply not restored is a 404, never a wrong event.

use super::format::{Chunk, ReplyOp};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a reply is, apart from its frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHead {
    pub route: Arc<str>,
    /// The digest of the credentials of the request that made it.
    pub credentials: [u8; 32],
    /// Wall clock, unix ms.
    pub created_ms: u64,
    pub ttl_ms: u64,
    pub max_total: u64,
}

impl ReplyHead {
    pub fn expires_ms(&self) -> u64 {
        self.created_ms.saturating_add(self.ttl_ms)
    }
}

/// One reply as saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub head: ReplyHead,
    /// Frame n is `frames[n - 1]`, as written to clients.
    pub frames: Vec<Bytes>,
    /// Its end was saved. A reply saved unended was still being read from
    /// its backend: at start it ends as interrupted.
    pub ended: bool,
}

pub type ReplyId = [u8; 16];

/// The replies the files hold, by id.
pub type Replies = BTreeMap<ReplyId, Reply>;

/// One change, as the record store journals it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyChange {
    /// Forget every reply; the changes that follow write them whole.
    Reset,
    Start {
        id: ReplyId,
        head: ReplyHead,
    },
    Frame {
        id: ReplyId,
        n: u64,
        frame: Bytes,
    },
    End {
        id: ReplyId,
    },
    Drop {
        id: ReplyId,
    },
}

impl ReplyChange {
    /// Roughly what it costs to keep until the next save.
    pub fn size(&self) -> usize {
        match self {
            ReplyChange::Start { head, .. } => 96 + head.route.len(),
            ReplyChange::Frame { frame, .. } => 32 + frame.len(),
            _ => 24,
        }
    }
}

/// `reply` as the changes that make it.
pub fn changes_of(id: ReplyId, reply: &Reply, out: &mut Vec<ReplyChange>) {
    out.push(ReplyChange::Start {
        id,
        head: reply.head.clone(),
    });
    for (i, frame) in reply.frames.iter().enumerate() {
        out.push(ReplyChange::Frame {
            id,
            n: i as u64 + 1,
            frame: frame.clone(),
        });
    }
    if reply.ended {
        out.push(ReplyChange::End { id });
    }
}

/// The changes as the file's ops: consecutive frames of one reply together.
pub(super) fn ops_of(changes: &[ReplyChange]) -> Vec<ReplyOp<'_>> {
    let mut ops: Vec<ReplyOp<'_>> = Vec::with_capacity(changes.len());
    for c in changes {
        let op = match c {
            ReplyChange::Reset => ReplyOp::Reset,
            ReplyChange::Start { id, head } => ReplyOp::Start {
                id: *id,
                route: &head.route,
                credentials: head.credentials,
                created_ms: head.created_ms,
                ttl_ms: head.ttl_ms,
                max_total: head.max_total,
            },
            ReplyChange::Frame { id, n, frame } => {
                if let Some(ReplyOp::Frames {
                    id: last,
                    first,
                    frames,
                }) = ops.last_mut()
                {
                    if last == id && *first + frames.len() as u64 == *n {
                        frames.push(Chunk(frame));
                        continue;
                    }
                }
                ReplyOp::Frames {
                    id: *id,
                    first: *n,
                    frames: vec![Chunk(frame)],
                }
            }
            ReplyChange::End { id } => ReplyOp::End { id: *id },
            ReplyChange::Drop { id } => ReplyOp::Drop { id: *id },
        };
        ops.push(op);
    }
    ops
}

/// Apply ops read from `buf` (frames become slices of it).
pub(super) fn apply(replies: &mut Replies, buf: &Bytes, ops: Vec<ReplyOp<'_>>) {
    for op in ops {
        match op {
            ReplyOp::Reset => replies.clear(),
            ReplyOp::Start {
                id,
                route,
                credentials,
                created_ms,
                ttl_ms,
                max_total,
            } => {
                let head = ReplyHead {
                    route: Arc::from(route),
                    credentials,
                    created_ms,
                    ttl_ms,
                    max_total,
                };
                let reply = Reply {
                    head,
                    frames: Vec::new(),
                    ended: false,
                };
                // Ids are 128 random bits: a second start is damage, and
                // the reply is not trusted.
                if replies.insert(id, reply).is_some() {
                    replies.remove(&id);
                }
            }
            ReplyOp::Frames { id, first, frames } => {
                let Some(r) = replies.get_mut(&id) else {
                    continue;
                };
                if r.ended || first != r.frames.len() as u64 + 1 {
                    replies.remove(&id);
                    continue;
                }
                r.frames
                    .extend(frames.into_iter().map(|c| buf.slice_ref(c.0)));
            }
            ReplyOp::End { id } => {
                if let Some(r) = replies.get_mut(&id) {
                    r.ended = true;
                }
            }
            ReplyOp::Drop { id } => {
                replies.remove(&id);
            }
        }
    }
}

/// Drop the replies expired at `now_ms`.
pub(super) fn expire(replies: &mut Replies, now_ms: u64) {
    replies.retain(|_, r| r.head.expires_ms() > now_ms);
}

/// Frames copied out of the file buffers they were read from.
pub(super) fn detach(replies: &mut Replies) {
    for r in replies.values_mut() {
        let total = r.frames.iter().map(Bytes::len).sum();
        let mut all = bytes::BytesMut::with_capacity(total);
        for f in &r.frames {
            all.extend_from_slice(f);
        }
        let all = all.freeze();
        let mut at = 0;
        for f in r.frames.iter_mut() {
            let n = f.len();
            *f = all.slice(at..at + n);
            at += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> ReplyHead {
        ReplyHead {
            route: "/chat".into(),
            credentials: [1; 32],
            created_ms: 1_000,
            ttl_ms: 60_000,
            max_total: 1 << 20,
        }
    }

    fn frame(n: u64) -> Bytes {
        Bytes::from(format!("id: r.{n}\ndata: {n}\n\n"))
    }

    /// Through the file's bytes and back, as a load reads them.
    fn replay(changes: &[ReplyChange]) -> Replies {
        use super::super::format::{self, Record, Records};
        let mut file = format::preamble();
        let ops = ops_of(changes);
        format::frame(&Record::Replies { ops }, &mut file);
        let buf = Bytes::from(file);
        let mut rd = Records::new(&buf).unwrap();
        let mut out = Replies::new();
        match rd.next_record() {
            Some(Ok(Record::Replies { ops })) => apply(&mut out, &buf, ops),
            other => panic!("{other:?}"),
        }
        assert!(rd.next_record().is_none());
        detach(&mut out);
        out
    }

    #[test]
    fn changes_round_trip_through_ops() {
        let reply = Reply {
            head: head(),
            frames: (1..=3).map(frame).collect(),
            ended: true,
        };
        let mut changes = Vec::new();
        changes_of([5; 16], &reply, &mut changes);
        let ops = ops_of(&changes);
        assert_eq!(ops.len(), 3, "the frames go together: {ops:?}");
        let back = replay(&changes);
        assert_eq!(back.get(&[5; 16]), Some(&reply));
    }

    #[test]
    fn a_frame_out_of_order_drops_that_reply_only() {
        let mut changes = Vec::new();
        for id in [[1; 16], [2; 16]] {
            changes.push(ReplyChange::Start { id, head: head() });
            changes.push(ReplyChange::Frame {
                id,
                n: 1,
                frame: frame(1),
            });
        }
        changes.push(ReplyChange::Frame {
            id: [1; 16],
            n: 3,
            frame: frame(3),
        });
        changes.push(ReplyChange::Frame {
            id: [9; 16],
            n: 1,
            frame: frame(1),
        });
        let back = replay(&changes);
        assert_eq!(back.keys().collect::<Vec<_>>(), [&[2; 16]]);
        assert!(!back[&[2; 16]].ended);
    }

    #[test]
    fn drop_reset_and_expiry() {
        let mut changes = vec![
            ReplyChange::Start {
                id: [1; 16],
                head: head(),
            },
            ReplyChange::Start {
                id: [2; 16],
                head: ReplyHead {
                    ttl_ms: 1,
                    ..head()
                },
            },
            ReplyChange::Drop { id: [1; 16] },
        ];
        let mut back = replay(&changes);
        assert_eq!(back.len(), 1);
        expire(&mut back, 1_001);
        assert!(back.is_empty());
        changes.push(ReplyChange::Reset);
        assert!(replay(&changes).is_empty());
    }
}

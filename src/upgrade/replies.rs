//! Recorded replies (`record:` routes, memory broker) in a live upgrade,
//! protocol version 2: the old process sends every record after the hub's
//! state (`RECORDS` frames), the new one takes them before it answers. A
//! record still being read from its backend moves as it is then and ends
//! as interrupted here (`hub::record::LOST_END`); once the new process
//! committed, the old one's writers stop and cut their backends (what they
//! would read would reach no one), and its clients, drained there, resume
//! here.
//!
//! With `hub.persist` the files carry them too (saved at the old process's
//! stop); a record that came over the socket is not loaded over.

use super::wire::{self, Kind};
use crate::hub::persist::{Replies, Reply, ReplyHead};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::io;
use std::os::unix::net::UnixStream;

/// The first protocol version that carries records.
pub(crate) const SINCE: u16 = 2;
/// Bytes of frames per `RECORDS` frame, well under `wire::MAX_FRAME`.
const BATCH: usize = 16 << 20;
/// A record larger than this stays behind (a frame that large would fail
/// the whole handoff): resumes of it get 404 here, or find it in
/// `hub.persist`'s files.
const MAX_ONE: usize = 128 << 20;

/// One record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Handed {
    pub id: [u8; 16],
    pub route: String,
    pub credentials: [u8; 32],
    pub created_ms: u64,
    pub ttl_ms: u64,
    pub max_total: u64,
    pub frames: Vec<Bytes>,
    pub ended: bool,
}

/// `replies` in frames of about `BATCH` bytes.
pub(crate) fn send(sock: &UnixStream, replies: Replies) -> io::Result<()> {
    let mut batch = Vec::new();
    let mut size = 0;
    let mut replies = replies.into_iter().peekable();
    while let Some((id, r)) = replies.next() {
        let bytes = r.frames.iter().map(Bytes::len).sum::<usize>();
        if bytes > MAX_ONE {
            tracing::warn!(
                bytes,
                "upgrade: a recorded reply too large to hand over stays behind"
            );
        } else {
            size += bytes + 128;
            batch.push(Handed {
                id,
                route: r.head.route.to_string(),
                credentials: r.head.credentials,
                created_ms: r.head.created_ms,
                ttl_ms: r.head.ttl_ms,
                max_total: r.head.max_total,
                frames: r.frames,
                ended: r.ended,
            });
        }
        if !batch.is_empty() && (size >= BATCH || replies.peek().is_none()) {
            wire::send_frame(sock, Kind::Records, &wire::encode(&batch)?, &[])?;
            batch.clear();
            size = 0;
        }
    }
    Ok(())
}

/// Add a `RECORDS` frame's records to `into`.
pub(crate) fn receive(payload: &[u8], into: &mut Replies) -> io::Result<()> {
    let batch: Vec<Handed> = wire::decode(payload)?;
    for h in batch {
        let head = ReplyHead {
            route: h.route.into(),
            credentials: h.credentials,
            created_ms: h.created_ms,
            ttl_ms: h.ttl_ms,
            max_total: h.max_total,
        };
        let reply = Reply {
            head,
            frames: h.frames,
            ended: h.ended,
        };
        into.insert(h.id, reply);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(n: usize, ended: bool) -> Reply {
        Reply {
            head: ReplyHead {
                route: "/chat".into(),
                credentials: [4; 32],
                created_ms: 1_790_000_000_000,
                ttl_ms: 600_000,
                max_total: 1 << 20,
            },
            frames: (1..=n)
                .map(|i| Bytes::from(format!("id: r.{i}\ndata: {}\n\n", "x".repeat(i))))
                .collect(),
            ended,
        }
    }

    #[test]
    fn records_cross_the_socket_whole_in_batches() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut sent = Replies::new();
        sent.insert([1; 16], reply(3, true));
        sent.insert([2; 16], reply(0, false));
        // Over one batch's bytes, first in order: two frames.
        sent.insert([0; 16], reply(6_000, false));
        let copy = sent.clone();
        let sender = std::thread::spawn(move || send(&a, copy));
        let mut rx = wire::Receiver::new(b);
        let mut got = Replies::new();
        let mut frames = 0;
        while got.len() < sent.len() {
            let f = rx.next().unwrap().unwrap();
            assert_eq!(f.kind, Kind::Records);
            receive(&f.payload, &mut got).unwrap();
            frames += 1;
        }
        sender.join().unwrap().unwrap();
        assert_eq!(got, sent);
        assert_eq!(frames, 2);
    }
}

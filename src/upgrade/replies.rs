//! Recorded replies (`record:` routes, memory broker) in a live upgrade,
//! protocol version 2: the old process sends every record after the hub's
//! state (`RECORDS` frames), the new one takes them before it answers. A
//! record still being read from its backend moves as it is then and ends
//! as interrupted here (`hub::record::LOST_END`): its writer stays behind
//! and its clients, drained there, resume here.
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
        size += r.frames.iter().map(Bytes::len).sum::<usize>() + 128;
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
        if size >= BATCH || replies.peek().is_none() {
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

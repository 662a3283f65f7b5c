//! A detached stream taken by a live upgrade, and the same stream adopted by
//! the new process (`upgrade` moves it between the two).
//!
//! Freezing happens inside the stream's own task, at a safe point: the
//! subscriber's state turns `HandingOff`, which wakes the task; it stops
//! before writing anything more — or, if a write was waiting on a full
//! socket, right there, keeping the unwritten rest of that chunk (`tail`)
//! — and sends what the new process needs (`Frozen`) to the collector. The
//! client sees nothing: no byte is written and the socket is not closed.

use super::{Guards, Sink, Start, Stream};
use crate::hub::{Delivery, Replay, Subscriber};
use bytes::{Bytes, BytesMut};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Where frozen streams go during a live upgrade. Cheap to clone: every
/// stream carries one.
#[derive(Debug, Clone, Default)]
pub(crate) struct Handoff {
    collector: Arc<Mutex<Option<mpsc::UnboundedSender<Handed>>>>,
}

/// What became of a stream asked to hand itself over.
#[derive(Debug)]
pub(crate) enum Handed {
    Frozen(Box<Frozen>),
    /// It ended some other way first (the client left).
    Gone,
}

impl Handoff {
    /// Start collecting frozen streams.
    pub(crate) fn open(&self) -> mpsc::UnboundedReceiver<Handed> {
        let (tx, rx) = mpsc::unbounded_channel();
        *self.collector.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }

    /// Stop collecting: a stream frozen from now on ends as on a drain.
    pub(crate) fn close(&self) {
        self.collector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    fn send(&self, frozen: Box<Frozen>) -> Result<(), Box<Frozen>> {
        let tx = self.collector.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            // The collector drops its receiver only after the handoff is
            // over, which it cannot be while this stream is still missing.
            Some(tx) if !tx.is_closed() => {
                let _ = tx.send(Handed::Frozen(frozen));
                Ok(())
            }
            _ => Err(frozen),
        }
    }

    /// A stream asked to hand itself over ended some other way.
    pub(crate) fn gone(&self) {
        let tx = self.collector.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            let _ = tx.send(Handed::Gone);
        }
    }
}

/// A stream stopped for a live upgrade: everything the new process needs to
/// go on where this one stopped.
#[derive(Debug)]
pub(crate) struct Frozen {
    pub tcp: tokio::net::TcpStream,
    /// The unwritten rest of a chunk the client has begun to receive: the
    /// new process writes it first, as it is.
    pub tail: Bytes,
    /// The newest cursor written or being written (in `tail`).
    pub last_seq: u64,
    /// Frames queued for the client and not written yet, in order.
    pub queued: Vec<Delivery>,
    pub channels: Vec<String>,
    /// The route's fingerprint: the new process goes on if it has the same route.
    pub route: u64,
    pub retry: std::time::Duration,
    pub client_ip: Option<IpAddr>,
    /// JWT streams: when to close, unix seconds.
    pub expires: Option<u64>,
}

/// Stop the stream where it is and hand it over; if nobody collects it
/// (the upgrade gave up), end it as a drain would.
pub(super) async fn freeze<S: Sink>(stream: Stream, sink: S, mut last_seq: u64) -> super::End {
    let sub = stream.subscription.sub.clone();
    let Some((tcp, tail)) = sink.surrender() else {
        return super::End::WriteFailed;
    };
    let mut queued = Vec::new();
    sub.drain_after(&mut queued, &mut last_seq);
    let Stream {
        subscription,
        retry,
        guards,
        handoff,
        ..
    } = stream;
    let Guards {
        slot,
        _active,
        gauge,
        expiry,
        keep,
    } = guards;
    let frozen = Box::new(Frozen {
        tcp,
        tail,
        last_seq,
        queued,
        channels: subscription.channels().to_vec(),
        route: sub.route(),
        retry,
        client_ip: slot.as_ref().and_then(|s| s.ip()),
        expires: expiry.as_ref().map(|e| e.expires_unix()),
    });
    // Unsubscribed, uncounted: the stream lives on in the other process.
    drop((subscription, slot, _active, gauge, expiry, keep));
    match handoff.send(frozen) {
        Ok(()) => super::End::HandedOff,
        Err(frozen) => {
            drain(*frozen).await;
            super::End::Shutdown
        }
    }
}

/// The bytes that end a frozen stream the way a drain ends it: the rest of
/// the chunk it was in, the frames it had queued, a jittered `retry:` and
/// the end of the chunked body. Nothing is lost: the client resumes after
/// its last frame.
pub(crate) fn drain_bytes(frozen: &Frozen) -> Bytes {
    let mut out = BytesMut::from(&frozen.tail[..]);
    let mut body = BytesMut::new();
    for d in &frozen.queued {
        body.extend_from_slice(&d.frame);
    }
    body.extend_from_slice(&crate::wire::retry_only(
        super::jittered(frozen.retry).as_millis(),
    ));
    out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    out.extend_from_slice(&body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out.freeze()
}

/// End a frozen stream as a drain would (the upgrade fell back).
pub(crate) async fn drain(frozen: Frozen) {
    use tokio::io::AsyncWriteExt;
    let bytes = drain_bytes(&frozen);
    let mut tcp = frozen.tcp;
    let _ = tokio::time::timeout(super::WRITE_TIMEOUT, tcp.write_all(&bytes)).await;
}

/// The stream of an adopted socket: it starts by writing `tail` and the
/// frames queued before the upgrade (and, with a shared broker, what was
/// published meanwhile), then goes on as any stream.
pub(crate) fn adopt<S: Sink>(
    stream: Stream,
    sink: S,
    tail: Bytes,
    last_seq: u64,
    queued: Vec<Delivery>,
    replay: Replay,
) -> impl std::future::Future<Output = super::End> {
    let mut frames = queued;
    frames.extend(replay.frames);
    let last_seq = frames
        .iter()
        .map(|d| d.seq)
        .fold(last_seq.max(replay.head), u64::max);
    let mut body = BytesMut::new();
    if let Some(reset) = &replay.reset {
        body.extend_from_slice(reset);
    }
    for d in &frames {
        body.extend_from_slice(&d.frame);
    }
    let replayed = frames.len() as u64;
    let start = Box::new(Start {
        body: body.freeze(),
        headers: Vec::new(),
        adopted: Some(tail),
    });
    stream.serve(sink, start, last_seq, replayed)
}

/// The subscriber of an adopted stream.
pub(crate) fn subscriber(id: u64, capacity: usize, route: u64) -> Arc<Subscriber> {
    let sub = Subscriber::on_route(id, capacity, route, false);
    sub.set_movable();
    Arc::new(sub)
}

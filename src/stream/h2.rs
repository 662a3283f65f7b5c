//! The sink of an HTTP/2 stream taken out of pingora (`http::detach_tls`):
//! the response head is already sent, and the stream owns h2's send half.
//!
//! The send half lives in the subscriber's direct slot (`hub::Direct`), so
//! while the stream is parked the hub writes events into it itself: no task
//! wakes per stream, and h2's connection task then sends the frames of all
//! of a connection's streams in one TLS record and one syscall. The stream's
//! task only writes what did not fit (no flow-control window), heartbeats
//! and the ending, and watches for the client's `RST_STREAM` (also how a
//! dropped connection shows).
//!
//! Held inside pingora an idle HTTP/2 stream kept its whole request state
//! (~20 KB); here it is this small future and h2's own stream slot.

use super::{Head, Sink, Wake, WRITE_TIMEOUT};
use crate::hub::{Direct, Subscriber};
use ::h2::{Reason, SendStream};
use bytes::Bytes;
use std::future::Future;
use std::io;
use std::task::{Context, Poll};

/// h2's send half, as the hub's direct path, with what the hub sent through
/// it: the stream never sees those frames, but its access-log line counts
/// them.
#[derive(Debug)]
pub(crate) struct H2Direct {
    tx: SendStream<Bytes>,
    events: u64,
    bytes: usize,
}

impl Direct for H2Direct {
    fn try_send(&mut self, frame: &Bytes) -> bool {
        if frame.is_empty() {
            return true;
        }
        self.tx.reserve_capacity(frame.len());
        let sent =
            self.tx.capacity() >= frame.len() && self.tx.send_data(frame.clone(), false).is_ok();
        if sent {
            self.events += 1;
            self.bytes += frame.len();
        }
        sent
    }
}

/// A detached HTTP/2 stream: its send half is in the subscriber's slot.
#[derive(Debug, Default)]
pub(crate) struct H2Sink;

impl H2Sink {
    /// Install `tx` as `sub`'s direct path and return the sink that drives it.
    pub(crate) fn new(sub: &Subscriber, tx: SendStream<Bytes>) -> H2Sink {
        sub.set_direct(Box::new(H2Direct {
            tx,
            events: 0,
            bytes: 0,
        }));
        H2Sink
    }
}

fn with_tx<R>(sub: &Subscriber, f: impl FnOnce(&mut SendStream<Bytes>) -> R) -> Option<R> {
    sub.with_direct(|d: &mut H2Direct| f(&mut d.tx))
}

fn gone() -> io::Error {
    io::ErrorKind::BrokenPipe.into()
}

/// What a write waiting for flow-control window saw.
enum Room {
    /// Some bytes may be sent now.
    Ready,
    /// The stream was reset, or its connection failed.
    Gone,
}

fn poll_room(sub: &Subscriber, want: usize, cx: &mut Context<'_>) -> Poll<Room> {
    with_tx(sub, |tx| {
        tx.reserve_capacity(want);
        let now = tx.capacity();
        if now > 0 {
            return Poll::Ready(Room::Ready);
        }
        if tx.poll_reset(cx).is_ready() {
            return Poll::Ready(Room::Gone);
        }
        match tx.poll_capacity(cx) {
            Poll::Ready(Some(Ok(n))) if n > 0 => Poll::Ready(Room::Ready),
            Poll::Ready(Some(Ok(_))) => {
                // Capacity moved but none is left: look again.
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Poll::Ready(None | Some(Err(_))) => Poll::Ready(Room::Gone),
            Poll::Pending => Poll::Pending,
        }
    })
    .unwrap_or(Poll::Ready(Room::Gone))
}

/// Send all of `bytes` as the client's window allows; Ok(false) when the
/// subscriber is cut while the window stays shut.
async fn send(sub: &Subscriber, bytes: &Bytes) -> io::Result<bool> {
    let mut rest = bytes.clone();
    while !rest.is_empty() {
        let sent = with_tx(sub, |tx| {
            tx.reserve_capacity(rest.len());
            let n = tx.capacity().min(rest.len());
            if n == 0 {
                return Ok(0);
            }
            tx.send_data(rest.split_to(n), false).map(|_| n)
        });
        match sent {
            None | Some(Err(_)) => return Err(gone()),
            Some(Ok(0)) => {
                // Boxed: only a stream whose window is shut pays for waiting.
                if !Box::pin(wait_room(sub, rest.len())).await? {
                    return Ok(false);
                }
            }
            Some(Ok(_)) => {}
        }
    }
    Ok(true)
}

/// Wait for window; Ok(false) when the subscriber is cut meanwhile.
async fn wait_room(sub: &Subscriber, want: usize) -> io::Result<bool> {
    let deadline = tokio::time::sleep(WRITE_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            room = std::future::poll_fn(|cx| poll_room(sub, want, cx)) => match room {
                Room::Ready => return Ok(true),
                Room::Gone => return Err(gone()),
            },
            _ = sub.woken() => {
                if sub.is_cut() {
                    return Ok(false);
                }
            }
            _ = &mut deadline => return Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

impl Sink for H2Sink {
    async fn open(&mut self, sub: &Subscriber, _head: Head<'_>, body: Bytes) -> io::Result<bool> {
        // The head went out through pingora before the stream was taken.
        send(sub, &body).await
    }

    async fn resume(&mut self, sub: &Subscriber, tail: Bytes, body: Bytes) -> io::Result<bool> {
        // HTTP/2 streams are never handed over (their connection stays in
        // this process); writing in order is still right.
        Ok(send(sub, &tail).await? && send(sub, &body).await?)
    }

    async fn write(&mut self, sub: &Subscriber, bytes: &Bytes) -> io::Result<bool> {
        send(sub, bytes).await
    }

    async fn idle(&mut self, sub: &Subscriber) -> Wake {
        if !sub.arm() {
            return Wake::Nudged;
        }
        let notified = sub.notified();
        tokio::pin!(notified);
        let wake = std::future::poll_fn(|cx| {
            if notified.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Wake::Nudged);
            }
            match with_tx(sub, |tx| tx.poll_reset(cx).is_ready()) {
                Some(false) => Poll::Pending,
                Some(true) | None => Poll::Ready(Wake::ClientGone),
            }
        })
        .await;
        sub.disarm();
        wake
    }

    async fn finish(&mut self, sub: &Subscriber, last: Option<Bytes>) {
        match last {
            Some(last) => {
                if send(sub, &last).await.unwrap_or(false) {
                    with_tx(sub, |tx| tx.send_data(Bytes::new(), true));
                } else {
                    with_tx(sub, |tx| tx.send_reset(Reason::CANCEL));
                }
            }
            None => {
                with_tx(sub, |tx| tx.send_reset(Reason::CANCEL));
            }
        }
        // h2 still sends what it buffered; the stream is done with it.
        drop(sub.take_direct());
    }

    fn surrender(self) -> Option<(tokio::net::TcpStream, Bytes)> {
        None
    }

    fn direct_written(&mut self, sub: &Subscriber) -> (u64, usize) {
        sub.with_direct(|d: &mut H2Direct| (d.events, d.bytes))
            .unwrap_or((0, 0))
    }
}

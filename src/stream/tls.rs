//! The sink of an HTTP/1.1 stream over a connection that is not a bare
//! socket — TLS, taken out of pingora with its rustls session
//! (`http::detach_tls`): chunked frames written through the connection's
//! `AsyncWrite`, a closed client noticed by reading (EOF, reset, or TLS
//! `close_notify`).
//!
//! Held inside pingora a TLS HTTP/1.1 stream kept its whole HTTP session and
//! pingora's buffers (~58 KB); here it is this future, the connection and
//! rustls's own state.

use super::chunked::{head_bytes, rest, slices_from, Chunked, Framing, MAX_PARTS};
use super::{Head, Sink, Wake, WRITE_TIMEOUT};
use crate::hub::Subscriber;
use bytes::Bytes;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// How long a closing stream waits to say goodbye (TLS `close_notify`).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// One detached stream's connection.
#[derive(Debug)]
pub(crate) struct TlsSink<T> {
    io: T,
}

impl<T> TlsSink<T> {
    pub(crate) fn new(io: T) -> TlsSink<T> {
        TlsSink { io }
    }
}

/// Write as much of `parts` (past `done` bytes) as the connection takes now,
/// then flush; true when all of it is written and flushed.
fn write_now<T: AsyncWrite + Unpin>(
    io: &mut T,
    cx: &mut Context<'_>,
    parts: &[&[u8]],
    done: &mut usize,
) -> io::Result<bool> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    while *done < total {
        let mut slices = [IoSlice::new(&[]); MAX_PARTS];
        let used = slices_from(parts, *done, &mut slices);
        match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..used]) {
            Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => *done += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => return Ok(false),
        }
    }
    match Pin::new(io).poll_flush(cx) {
        Poll::Ready(r) => r.map(|_| true),
        Poll::Pending => Ok(false),
    }
}

/// Write `parts`; Ok(false) when the subscriber is cut while the connection does
/// not take them (evicted as slow, expired, retired).
async fn send<T: AsyncWrite + Unpin>(
    io: &mut T,
    sub: &Subscriber,
    parts: &[&[u8]],
) -> io::Result<bool> {
    let mut done = 0;
    let written = std::future::poll_fn(|cx| Poll::Ready(write_now(io, cx, parts, &mut done)));
    if written.await? {
        return Ok(true);
    }
    // Boxed: only a stream whose connection is full pays for waiting.
    Box::pin(send_rest(io, sub, parts, done)).await
}

async fn send_rest<T: AsyncWrite + Unpin>(
    io: &mut T,
    sub: &Subscriber,
    parts: &[&[u8]],
    mut done: usize,
) -> io::Result<bool> {
    let deadline = tokio::time::sleep(WRITE_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        let written = std::future::poll_fn(|cx| match write_now(io, cx, parts, &mut done) {
            Ok(false) => Poll::Pending,
            r => Poll::Ready(r),
        });
        tokio::select! {
            r = written => return r,
            _ = sub.woken() => {
                if sub.is_cut() {
                    return Ok(false);
                }
            }
            _ = &mut deadline => return Err(io::ErrorKind::TimedOut.into()),
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Sink for TlsSink<T> {
    async fn open(&mut self, sub: &Subscriber, head: Head<'_>, body: Bytes) -> io::Result<bool> {
        let head = head_bytes(head, Framing::Chunked);
        send(&mut self.io, sub, &Chunked::default().opening(&head, &body)).await
    }

    async fn resume(&mut self, sub: &Subscriber, tail: Bytes, body: Bytes) -> io::Result<bool> {
        // TLS streams are never handed over (their session keys stay in this
        // process); the tail goes out as it is, as a head would.
        send(&mut self.io, sub, &Chunked::default().opening(&tail, &body)).await
    }

    async fn write(&mut self, sub: &Subscriber, bytes: &Bytes) -> io::Result<bool> {
        // Framed and written inside one poll: what an idle stream's future
        // keeps for this call is only the (boxed) rest of a write the
        // connection did not take at once.
        let io = &mut self.io;
        let left = std::future::poll_fn(|cx| {
            let mut chunked = Chunked::default();
            let parts = chunked.chunk(bytes);
            let mut done = 0;
            Poll::Ready(match write_now(io, cx, &parts, &mut done) {
                Ok(true) => Ok(None),
                Ok(false) => Ok(Some(rest(&parts, done))),
                Err(e) => Err(e),
            })
        })
        .await?;
        match left {
            None => Ok(true),
            Some(left) => Box::pin(send(&mut self.io, sub, &[&left])).await,
        }
    }

    async fn idle(&mut self, sub: &Subscriber) -> Wake {
        let notified = sub.notified();
        tokio::pin!(notified);
        loop {
            let read = std::future::poll_fn(|cx| {
                if notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                let mut buf = [0u8; 64];
                let mut buf = ReadBuf::new(&mut buf);
                match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => Poll::Ready(Some(!buf.filled().is_empty())),
                    Poll::Ready(Err(_)) => Poll::Ready(Some(false)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match read {
                None => return Wake::Nudged,
                // EOF, reset or close_notify: the client is gone.
                Some(false) => return Wake::ClientGone,
                // Bytes a client should not send on a stream: read, ignored.
                Some(true) => {}
            }
        }
    }

    async fn finish(&mut self, sub: &Subscriber, last: Option<Bytes>) {
        let Some(last) = last else {
            return;
        };
        let mut chunked = Chunked::default();
        if send(&mut self.io, sub, &chunked.ending(&last))
            .await
            .unwrap_or(false)
        {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.io.shutdown()).await;
        }
    }

    fn surrender(self) -> Option<(tokio::net::TcpStream, Bytes)> {
        None
    }
}

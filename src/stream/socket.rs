//! The sink of a plain HTTP/1.1 stream whose socket was taken out of
//! pingora (`http::detach`): it writes the response head and chunked frames
//! itself, with vectored writes of the hub's shared bytes behind a chunk
//! head built on the stack (no copy, no allocation per event per client),
//! and notices a closed client through read readiness.
//!
//! Held inside pingora a stream keeps its whole HTTP session (read buffer,
//! header maps, the proxy task): tens of KB per idle client. Here a stream
//! is one small task and this socket.

use super::chunked::{head_bytes, rest, Chunked, MAX_PARTS};
use super::{Head, Sink, Wake, WRITE_TIMEOUT};
use crate::hub::{SubState, Subscriber};
use bytes::Bytes;
use std::future::Future;
use std::io::{self, IoSlice};
use std::task::Poll;
use tokio::net::TcpStream;

/// The socket of one detached stream.
#[derive(Debug)]
pub(crate) struct SocketSink {
    tcp: TcpStream,
}

impl SocketSink {
    pub(crate) fn new(tcp: TcpStream) -> SocketSink {
        SocketSink { tcp }
    }
}

impl Sink for SocketSink {
    async fn open(&mut self, sub: &Subscriber, head: Head<'_>, body: Bytes) -> io::Result<bool> {
        let head = head_bytes(head);
        send(&self.tcp, sub, &Chunked::default().opening(&head, &body)).await
    }

    async fn write(&mut self, sub: &Subscriber, bytes: &Bytes) -> io::Result<bool> {
        send(&self.tcp, sub, &Chunked::default().chunk(bytes)).await
    }

    async fn idle(&mut self, sub: &Subscriber) -> Wake {
        // Holding nothing but the `Notified`; read readiness is polled in place.
        let notified = sub.notified();
        tokio::pin!(notified);
        loop {
            let readable = std::future::poll_fn(|cx| {
                if notified.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                match self.tcp.poll_read_ready(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r.is_ok())),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            match readable {
                None => return Wake::Nudged,
                Some(ok) if !ok || client_closed(&self.tcp) => return Wake::ClientGone,
                // Bytes a client should not send on a stream: drained, ignored.
                Some(_) => {}
            }
        }
    }

    async fn finish(&mut self, sub: &Subscriber, last: Option<Bytes>) {
        if let Some(last) = last {
            let _ = send(&self.tcp, sub, &Chunked::default().ending(&last)).await;
        }
    }
}

/// Read readiness on an SSE stream means the client closed (EOF or reset) or
/// sent bytes it should not; either way, drain a little and look.
fn client_closed(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 256];
    match tcp.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

/// Write as much of `parts` as the socket takes now; the number of bytes
/// written, or an error other than WouldBlock.
fn write_now(tcp: &TcpStream, parts: &[&[u8]], mut done: usize) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    while done < total {
        let mut slices = [IoSlice::new(&[]); MAX_PARTS];
        let used = rest(parts, done, &mut slices);
        match tcp.try_write_vectored(&slices[..used]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(done),
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Write all of `parts`; Ok(false) when the client is evicted as slow while
/// its socket is full.
async fn send(tcp: &TcpStream, sub: &Subscriber, parts: &[&[u8]]) -> io::Result<bool> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let done = write_now(tcp, parts, 0)?;
    if done == total {
        return Ok(true);
    }
    // Boxed: only a stream whose socket is full pays for waiting.
    Box::pin(send_rest(tcp, sub, parts, done, total)).await
}

async fn send_rest(
    tcp: &TcpStream,
    sub: &Subscriber,
    parts: &[&[u8]],
    mut done: usize,
    total: usize,
) -> io::Result<bool> {
    let deadline = tokio::time::sleep(WRITE_TIMEOUT);
    tokio::pin!(deadline);
    while done < total {
        tokio::select! {
            r = tcp.writable() => r?,
            _ = sub.woken() => {
                if sub.state() != SubState::Open {
                    return Ok(false);
                }
                continue;
            }
            _ = &mut deadline => return Err(io::ErrorKind::TimedOut.into()),
        }
        done = write_now(tcp, parts, done)?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Replay;
    use crate::stream::size_probe::{idle_stream, loopback};

    /// What an idle detached stream costs is mostly its task's future: keep
    /// it from growing back unnoticed.
    #[tokio::test]
    async fn idle_stream_future_stays_small() {
        let fut = idle_stream().run(SocketSink::new(loopback()), Replay::default());
        let size = std::mem::size_of_val(&fut);
        println!("idle detached stream future: {size} bytes");
        assert!(
            size <= 800,
            "the detached stream future grew to {size} bytes"
        );
    }
}

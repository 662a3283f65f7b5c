//! The sink of a plain HTTP/1.1 stream whose socket was taken out of
//! pingora (`http::detach`): it writes the response head and chunked frames
//! itself, with vectored writes of the hub's shared bytes behind a chunk
//! head built on the stack (no copy, no allocation per event per client),
//! and notices a closed client through read readiness.
//!
//! Held inside pingora a stream keeps its whole HTTP session (read buffer,
//! header maps, the proxy task): tens of KB per idle client. Here a stream
//! is one small task and this socket.

use super::chunked::{head_bytes, rest, slices_from, Chunked, MAX_PARTS};
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
    /// The unwritten rest of a write that was given up (boxed: it exists
    /// only for a stream cut short, and every idle stream carries the field).
    tail: Option<Box<Bytes>>,
}

impl SocketSink {
    pub(crate) fn new(tcp: TcpStream) -> SocketSink {
        SocketSink { tcp, tail: None }
    }

    /// Write all of `parts`, keeping the rest if the write is given up.
    async fn send(&mut self, sub: &Subscriber, parts: &[&[u8]]) -> io::Result<bool> {
        match send(&self.tcp, sub, parts).await? {
            Sent::All => Ok(true),
            Sent::Cut(done) => {
                self.tail = Some(Box::new(rest(parts, done)));
                Ok(false)
            }
        }
    }
}

impl Sink for SocketSink {
    async fn open(&mut self, sub: &Subscriber, head: Head<'_>, body: Bytes) -> io::Result<bool> {
        let head = head_bytes(head);
        self.send(sub, &Chunked::default().opening(&head, &body))
            .await
    }

    async fn resume(&mut self, sub: &Subscriber, tail: Bytes, body: Bytes) -> io::Result<bool> {
        // The tail goes out as it is, as a head would.
        self.send(sub, &Chunked::default().opening(&tail, &body))
            .await
    }

    async fn write(&mut self, sub: &Subscriber, bytes: &Bytes) -> io::Result<bool> {
        // Framed and written without awaiting: what an idle stream's future
        // keeps for this call is only the (boxed) rest of a write the socket
        // did not take at once.
        let rest = {
            let mut chunked = Chunked::default();
            let parts = chunked.chunk(bytes);
            let done = write_now(&self.tcp, &parts, 0)?;
            if done == parts.iter().map(|p| p.len()).sum::<usize>() {
                return Ok(true);
            }
            rest(&parts, done)
        };
        Box::pin(self.send(sub, &[&rest])).await
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
            let _ = self.send(sub, &Chunked::default().ending(&last)).await;
        }
    }

    fn surrender(self) -> Option<(TcpStream, Bytes)> {
        Some((self.tcp, self.tail.map(|t| *t).unwrap_or_default()))
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
        let used = slices_from(parts, done, &mut slices);
        match tcp.try_write_vectored(&slices[..used]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(done),
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// How a write ended.
enum Sent {
    All,
    /// Given up after `done` bytes: the subscriber stopped being open while
    /// the socket was full.
    Cut(usize),
}

/// Write all of `parts`, unless the subscriber stops being open while its
/// socket is full.
async fn send(tcp: &TcpStream, sub: &Subscriber, parts: &[&[u8]]) -> io::Result<Sent> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let done = write_now(tcp, parts, 0)?;
    if done == total {
        return Ok(Sent::All);
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
) -> io::Result<Sent> {
    let deadline = tokio::time::sleep(WRITE_TIMEOUT);
    tokio::pin!(deadline);
    while done < total {
        tokio::select! {
            r = tcp.writable() => r?,
            _ = sub.woken() => {
                if sub.state() != SubState::Open {
                    return Ok(Sent::Cut(done));
                }
                continue;
            }
            _ = &mut deadline => return Err(io::ErrorKind::TimedOut.into()),
        }
        done = write_now(tcp, parts, done)?;
    }
    Ok(Sent::All)
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

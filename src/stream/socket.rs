//! The sink of a plain HTTP/1.1 stream whose socket was taken out of
//! pingora (`http::detach`): it writes the response head and chunked frames
//! itself, with vectored writes of the hub's shared bytes behind a chunk
//! head built on the stack (no copy, no allocation per event per client),
//! and notices a closed client through read readiness.
//!
//! Held inside pingora a stream keeps its whole HTTP session (read buffer,
//! header maps, the proxy task): tens of KB per idle client. Here a stream
//! is one small task and this socket.

pub(crate) use super::chunked::Framing;
use super::chunked::{head_bytes, rest, slices_from, MAX_PARTS};
use super::{Head, Sink, Wake, WRITE_TIMEOUT};
use crate::hub::Subscriber;
use bytes::Bytes;
use std::future::Future;
use std::io::{self, IoSlice};
use std::task::Poll;
use tokio::net::TcpStream;

/// The socket of one detached stream.
#[derive(Debug)]
pub(crate) struct SocketSink {
    tcp: TcpStream,
    /// None: chunked, nothing left unwritten — every idle stream carries
    /// this field, so the rare rest is boxed.
    rare: Option<Box<Rare>>,
}

/// What few detached streams need.
#[derive(Debug, Default)]
struct Rare {
    framing: Framing,
    /// The unwritten rest of a write that was given up.
    tail: Bytes,
}

impl SocketSink {
    pub(crate) fn new(tcp: TcpStream, framing: Framing) -> SocketSink {
        let rare = (framing != Framing::Chunked).then(|| {
            Box::new(Rare {
                framing,
                ..Rare::default()
            })
        });
        SocketSink { tcp, rare }
    }

    pub(crate) fn framing(&self) -> Framing {
        self.rare.as_ref().map_or(Framing::Chunked, |r| r.framing)
    }

    /// Write all of `parts`, keeping the rest if the write is given up.
    async fn send(&mut self, sub: &Subscriber, parts: &[&[u8]]) -> io::Result<bool> {
        let sent = send(&self.tcp, sub, parts).await?;
        Ok(self.keep_rest(sent, parts))
    }

    /// True if all was sent; else keeps what was not.
    fn keep_rest(&mut self, sent: Sent, parts: &[&[u8]]) -> bool {
        match sent {
            Sent::All => true,
            Sent::Cut(done) => {
                self.rare.get_or_insert_default().tail = rest(parts, done);
                false
            }
        }
    }
}

impl Sink for SocketSink {
    async fn open(&mut self, sub: &Subscriber, head: Head<'_>, body: Bytes) -> io::Result<bool> {
        let head = head_bytes(head, self.framing());
        if body.is_empty() {
            // An empty chunk would end the body before it started.
            return self.send(sub, &[&head]).await;
        }
        let mut size = [0u8; 18];
        let (before, after) = self.framing().around(body.len(), &mut size);
        self.send(sub, &[&head, before, &body, after]).await
    }

    async fn resume(&mut self, sub: &Subscriber, tail: Bytes, body: Bytes) -> io::Result<bool> {
        if body.is_empty() {
            return self.send(sub, &[&tail]).await;
        }
        let mut size = [0u8; 18];
        let (before, after) = self.framing().around(body.len(), &mut size);
        self.send(sub, &[&tail, before, &body, after]).await
    }

    async fn write(&mut self, sub: &Subscriber, bytes: &Bytes) -> io::Result<bool> {
        if bytes.is_empty() {
            // An empty chunk would end the body.
            return Ok(true);
        }
        let mut size = [0u8; 18];
        // `send` inlined: this is the write every idle stream's future has room for.
        let parts: [&[u8]; 3] = {
            let (before, after) = self.framing().around(bytes.len(), &mut size);
            [before, bytes, after]
        };
        let sent = send(&self.tcp, sub, &parts).await?;
        Ok(self.keep_rest(sent, &parts))
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
        let Some(last) = last else {
            return;
        };
        // Until-close: dropping the socket ends the body.
        let end: &[u8] = match self.framing() {
            Framing::Chunked => b"0\r\n\r\n",
            Framing::UntilClose => b"",
        };
        let mut size = [0u8; 18];
        let (before, after) = match last.is_empty() {
            true => (&b""[..], &b""[..]),
            false => self.framing().around(last.len(), &mut size),
        };
        let _ = self.send(sub, &[before, &last, after, end]).await;
    }

    fn surrender(self) -> Option<(TcpStream, Bytes)> {
        Some((self.tcp, self.rare.map(|r| r.tail).unwrap_or_default()))
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
                if sub.is_cut() {
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
        let fut = idle_stream().run(
            SocketSink::new(loopback(), Framing::Chunked),
            Replay::default(),
            Vec::new(),
        );
        let size = std::mem::size_of_val(&fut);
        println!("idle detached stream future: {size} bytes");
        assert!(
            size <= 800,
            "the detached stream future grew to {size} bytes"
        );
    }
}

//! The sink of a plain HTTP/1.1 stream whose socket was taken out of
//! pingora (`http::detach`): it writes the response head and chunked frames
//! itself, with vectored writes of the hub's shared bytes behind a chunk
//! head built on the stack (no copy, no allocation per event per client),
//! and notices a closed client through read readiness.
//!
//! Held inside pingora a stream keeps its whole HTTP session (read buffer,
//! header maps, the proxy task): tens of KB per idle client. Here a stream
//! is one small task and this socket.

use super::{Head, Sink, Wake, WRITE_TIMEOUT};
use crate::hub::Subscriber;
use crate::wire;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::io::{self, IoSlice};
use std::sync::LazyLock;
use std::task::Poll;
use tokio::net::TcpStream;

/// How a detached stream's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Framing {
    /// HTTP/1.1: chunked, so the connection could outlive the stream.
    #[default]
    Chunked,
    /// HTTP/1.0 has no chunked encoding: the body is every byte until the
    /// connection closes (`connection: close`).
    UntilClose,
}

impl Framing {
    /// What ends the response head: the framing's headers and the blank line.
    fn head_end(self) -> &'static [u8] {
        match self {
            Framing::Chunked => b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n",
            Framing::UntilClose => b"connection: close\r\n\r\n",
        }
    }
}

/// `200` with the SSE headers, then `framing`'s.
fn sse_head(framing: Framing) -> Bytes {
    let mut out = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
    for (k, v) in wire::SSE_HEADERS {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(framing.head_end());
    out.freeze()
}

static SSE_HEAD_CHUNKED: LazyLock<Bytes> = LazyLock::new(|| sse_head(Framing::Chunked));
static SSE_HEAD_UNTIL_CLOSE: LazyLock<Bytes> = LazyLock::new(|| sse_head(Framing::UntilClose));

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

impl Framing {
    /// What goes before and after `len` body bytes: a chunk's size line and
    /// end, or nothing.
    fn around(self, len: usize, size: &mut [u8; 18]) -> (&[u8], &'static [u8]) {
        match self {
            Framing::Chunked => (chunk_head(len, size), b"\r\n"),
            Framing::UntilClose => (b"", b""),
        }
    }
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

/// The bytes of `parts` after the first `done`.
fn rest(parts: &[&[u8]], mut done: usize) -> Bytes {
    let mut out = BytesMut::new();
    for p in parts {
        if done >= p.len() {
            done -= p.len();
            continue;
        }
        out.extend_from_slice(&p[done..]);
        done = 0;
    }
    out.freeze()
}

impl Sink for SocketSink {
    async fn open(&mut self, sub: &Subscriber, head: Head<'_>, body: Bytes) -> io::Result<bool> {
        let built;
        let framing = self.framing();
        let base: &Bytes = match framing {
            Framing::Chunked => &SSE_HEAD_CHUNKED,
            Framing::UntilClose => &SSE_HEAD_UNTIL_CLOSE,
        };
        let head: &[u8] = match head {
            Head::Sse([]) => base,
            Head::Sse(extra) => {
                built = sse_head_with(base, extra);
                &built
            }
            Head::Given(h) => {
                built = h1_head(h, framing);
                &built
            }
        };
        if body.is_empty() {
            // An empty chunk would end the body before it started.
            return self.send(sub, &[head]).await;
        }
        let mut size = [0u8; 18];
        let (before, after) = self.framing().around(body.len(), &mut size);
        self.send(sub, &[head, before, &body, after]).await
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

/// An SSE head (`base`) with `extra` headers before its blank line.
fn sse_head_with(base: &Bytes, extra: &[(http::HeaderName, http::HeaderValue)]) -> Bytes {
    let head = &base[..base.len() - 2];
    let mut out = BytesMut::with_capacity(base.len() + 64 * extra.len());
    out.extend_from_slice(head);
    header_lines(&mut out, extra.iter().map(|(k, v)| (k, v)));
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// `name: value` lines.
fn header_lines<'h>(
    out: &mut BytesMut,
    headers: impl Iterator<Item = (&'h http::HeaderName, &'h http::HeaderValue)>,
) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A stream's own response head (a GRIP hold's, a recorded reply's) as
/// HTTP/1.1 bytes: its status and headers, then `framing`'s (the stream
/// has no end we know of).
fn h1_head(head: &pingora_http::ResponseHeader, framing: Framing) -> Bytes {
    let status = head.status;
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    header_lines(&mut out, head.headers.iter());
    out.extend_from_slice(match framing {
        Framing::Chunked => b"transfer-encoding: chunked\r\n\r\n",
        Framing::UntilClose => framing.head_end(),
    });
    out.freeze()
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

/// `len` as a chunk-size line, in a stack buffer.
fn chunk_head(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    let mut n = 0;
    let mut digits = [0u8; 16];
    let mut v = len;
    loop {
        digits[n] = b"0123456789abcdef"[v & 0xf];
        n += 1;
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = digits[n - 1 - i];
    }
    buf[n] = b'\r';
    buf[n + 1] = b'\n';
    &buf[..n + 2]
}

/// Slices at most per write: a response head, a chunk head, the bytes and
/// the chunk's end.
const MAX_PARTS: usize = 4;

/// Write as much of `parts` as the socket takes now; the number of bytes
/// written, or an error other than WouldBlock.
fn write_now(tcp: &TcpStream, parts: &[&[u8]], mut done: usize) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    while done < total {
        let mut slices = [IoSlice::new(&[]); MAX_PARTS];
        let mut used = 0;
        let mut skip = done;
        for p in parts.iter().take(MAX_PARTS) {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices[used] = IoSlice::new(&p[skip..]);
            skip = 0;
            used += 1;
        }
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
    use crate::hub::memory::MemoryBroker;
    use crate::hub::{Broker, Replay};
    use crate::metrics::Metrics;
    use crate::shutdown::Shutdown;
    use crate::stream::{Guards, Stream, Subscription};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn chunk_heads() {
        let mut b = [0u8; 18];
        assert_eq!(chunk_head(0, &mut b), b"0\r\n");
        assert_eq!(chunk_head(255, &mut b), b"ff\r\n");
        assert_eq!(chunk_head(4096, &mut b), b"1000\r\n");
    }

    /// What an idle detached stream costs is mostly its task's future: keep
    /// it from growing back unnoticed.
    #[tokio::test]
    async fn idle_stream_future_stays_small() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        c.set_nonblocking(true).unwrap();
        let tcp = TcpStream::from_std(c).unwrap();
        let metrics = Arc::new(Metrics::new());
        let hub: Arc<dyn Broker> = Arc::new(MemoryBroker::new(
            10,
            Duration::from_secs(1),
            metrics.clone(),
        ));
        let sub = Arc::new(Subscriber::new(1, 8));
        let limiter = crate::stream::limits::ConnLimiter::new(0, 0);
        let shutdown = Shutdown::new();
        let stream = Stream {
            subscription: Subscription::hub(hub, sub, vec!["a".into()]),
            retry: Duration::from_secs(1),
            heartbeat: None,
            shutdown: shutdown.clone(),
            metrics,
            guards: Guards {
                slot: Some(limiter.acquire(None).unwrap()),
                _active: shutdown.track(),
                gauge: None,
                keep: None,
                expiry: None,
            },
            opening: None,
            handoff: Default::default(),
            report: None,
        };
        let fut = stream.run(
            SocketSink::new(tcp, Framing::Chunked),
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

//! SSE streams on plain-text HTTP/1.1, taken out of pingora once the request
//! is accepted.
//!
//! Held inside pingora a stream keeps its whole HTTP session (read buffer,
//! header maps, the proxy task): tens of KB per idle client. Here the socket
//! is duplicated out of the session, pingora gets a do-nothing placeholder to
//! finish with, and the stream lives on as one small task that owns the
//! socket, writes chunked frames with vectored writes (no copy, no per-event
//! allocation) and notices a closed client through read readiness. TLS and
//! HTTP/2 sessions cannot be taken apart like this and stay in `stream`.

use super::frame;
use super::stream::{jittered, End, GripOpening, StreamGuards, Subscription};
use crate::heartbeat::Membership;
use crate::hub::{Delivery, Replay, SubState, Subscriber};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_proxy::Session;
use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A client that stops reading for this long is cut even without new events.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What pingora finishes the request with once the real socket is ours:
/// reads see EOF, writes vanish.
#[derive(Debug)]
struct Placeholder;

impl AsyncRead for Placeholder {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Placeholder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl VirtualSocket for Placeholder {
    fn set_socket_option(&self, _: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}

/// Take the client's TCP socket out of a plain-text HTTP/1 session. None (and
/// the session untouched) for anything else.
pub fn take_socket(session: &mut Session) -> Option<TcpStream> {
    let plain_h1 = matches!(*session.downstream_session, ServerSession::H1(_))
        && session
            .downstream_session
            .stream()
            .is_some_and(|s| s.as_any().is::<L4Stream>());
    if !plain_h1 {
        return None;
    }
    let mut placeholder = ServerSession::new_http1(Box::new(L4Stream::from(
        VirtualSocketStream::new(Box::new(Placeholder)),
    )));
    placeholder.set_keepalive(None);
    let real = std::mem::replace(&mut *session.downstream_session, placeholder);
    let ServerSession::H1(v1) = real else {
        return None;
    };
    let l4 = v1.into_inner().into_any().downcast::<L4Stream>().ok()?;
    let fd = dup(&l4).ok()?;
    drop(l4);
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true).ok()?;
    TcpStream::from_std(std).ok()
}

/// Duplicate the socket so it outlives pingora's `Stream`, which owns the
/// original descriptor and closes it when dropped.
#[allow(unsafe_code)]
fn dup(stream: &L4Stream) -> io::Result<OwnedFd> {
    // SAFETY: `stream` owns this open descriptor and is borrowed for the whole
    // call, so the descriptor stays valid while we duplicate it.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    fd.try_clone_to_owned()
}

/// Everything one detached stream owns; moved into its task.
#[derive(Debug)]
pub struct DetachedStream {
    pub tcp: TcpStream,
    pub subscription: Subscription,
    /// The route's `retry` (prelude, and drain's jittered retry).
    pub retry: std::time::Duration,
    pub heartbeat: Option<Membership>,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    pub guards: StreamGuards,
    /// A GRIP hold: the backend's head and body open the stream instead of
    /// the SSE prelude. Boxed: SSE streams pay one pointer for it.
    pub grip: Option<Box<GripOpening>>,
}

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n";

/// Why an idle stream woke up.
enum Wake {
    /// Its subscriber was notified: frames, a state change, a tick, a drain.
    Nudged,
    /// The socket is readable: the client closed, or sent bytes.
    Readable(bool),
}

impl DetachedStream {
    pub fn spawn(self, replay: Replay) {
        tokio::spawn(async move {
            let end = self.run(replay).await;
            tracing::debug!(?end, "sse stream ended");
        });
    }

    /// Response head, prelude (or a GRIP hold's own head and body), reset
    /// and replay: one write.
    fn opening(&self, grip: Option<&GripOpening>, replay: Replay) -> (Bytes, u64) {
        let (head, mut body) = match grip {
            None => (
                Bytes::from_static(RESPONSE_HEAD),
                BytesMut::from(&frame::prelude(self.retry.as_millis())[..]),
            ),
            Some(g) => (h1_head(g), BytesMut::from(&g.body[..])),
        };
        if let Some(reset) = &replay.reset {
            body.extend_from_slice(reset);
        }
        for d in &replay.frames {
            body.extend_from_slice(&d.frame);
        }
        let mut out = BytesMut::with_capacity(head.len() + body.len() + 16);
        out.extend_from_slice(&head);
        // An empty chunk would end the body before it started.
        if !body.is_empty() {
            out.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
            out.extend_from_slice(&body);
            out.extend_from_slice(b"\r\n");
        }
        (out.freeze(), replay.frames.last().map_or(0, |d| d.seq))
    }

    // The future of this function is what every idle client costs, so it
    // awaits as little as possible: one `Notified` and the socket's read
    // readiness while idle; writes are tried synchronously and only a full
    // socket boxes a future to wait in.
    async fn run(mut self, replay: Replay) -> End {
        let sub = self.subscription.sub.clone();
        let (opening, mut last_seq) = self.opening(self.grip.as_deref(), replay);
        if let Some(g) = &mut self.grip {
            // Sent: only the keep-alive is needed from here on.
            g.body = Bytes::new();
        }
        // A GRIP hold's keep-alive is its backend's content, sent only after
        // a tick without other writes; an SSE heartbeat is the comment.
        let mut wrote = false;
        match send(&self.tcp, &sub, &[&opening]).await {
            Ok(true) => {}
            Ok(false) => return End::Slow,
            Err(_) => return End::WriteFailed,
        }
        drop(opening);
        let mut last_beat = self.heartbeat.as_ref().map_or(0, Membership::epoch);
        let mut batch: Vec<Delivery> = Vec::new();
        let end = loop {
            batch.clear();
            sub.drain_after(&mut batch, &mut last_seq);
            if !batch.is_empty() {
                match send_frames(&self.tcp, &sub, &batch).await {
                    Ok(true) => {}
                    Ok(false) => break End::Slow,
                    Err(_) => break End::WriteFailed,
                }
                wrote = true;
                self.metrics.delivered.inc_by(batch.len() as u64);
                for d in &batch {
                    self.metrics
                        .latency
                        .observe(d.published.elapsed().as_secs_f64());
                }
                if batch.capacity() > 64 {
                    batch = Vec::new();
                }
                continue;
            }
            match sub.state() {
                SubState::Open => {}
                SubState::Slow => break End::Slow,
                SubState::Closed => break End::ClosedByPublisher,
                SubState::Expired => break End::Expired,
            }
            if self.shutdown.is_draining() {
                break End::Shutdown;
            }
            let beat = self.heartbeat.as_ref().map_or(0, Membership::epoch);
            if beat != last_beat {
                last_beat = beat;
                let idle = self.grip.is_none() || !std::mem::take(&mut wrote);
                let keep_alive: &[u8] = match &self.grip {
                    None => frame::HEARTBEAT,
                    Some(g) => g.keep_alive.as_deref().unwrap_or_default(),
                };
                if idle && !keep_alive.is_empty() {
                    let mut head = [0u8; 18];
                    let head = chunk_head(keep_alive.len(), &mut head);
                    match send(&self.tcp, &sub, &[head, keep_alive, b"\r\n"]).await {
                        Ok(true) => {}
                        Ok(false) => break End::Slow,
                        Err(_) => break End::WriteFailed,
                    }
                }
                continue;
            }
            match idle(&self.tcp, &sub).await {
                Wake::Nudged => {}
                Wake::Readable(ok) => {
                    if !ok || client_closed(&self.tcp) {
                        break End::ClientGone;
                    }
                }
            }
        };
        let last = match end {
            End::Shutdown if self.grip.is_none() => {
                Some(frame::retry_only(jittered(self.retry).as_millis()))
            }
            End::Expired => Some(frame::expired()),
            End::Shutdown | End::ClosedByPublisher => Some(Bytes::new()),
            _ => None,
        };
        if let Some(last) = last {
            let mut head = [0u8; 18];
            let head: &[u8] = if last.is_empty() {
                &[]
            } else {
                chunk_head(last.len(), &mut head)
            };
            let tail: &[u8] = if last.is_empty() {
                b"0\r\n\r\n"
            } else {
                b"\r\n0\r\n\r\n"
            };
            let _ = send(&self.tcp, &sub, &[head, &last, tail]).await;
        }
        drop(self.guards);
        end
    }
}

/// A GRIP hold's response head as HTTP/1.1 bytes: the backend's status and
/// headers, chunked because the stream has no end we know of.
fn h1_head(g: &GripOpening) -> Bytes {
    let status = g.head.status;
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    for (name, value) in g.head.headers.iter() {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    out.freeze()
}

/// Wait until the subscriber is nudged or the socket turns readable, holding
/// nothing but the `Notified` (read readiness is polled in place).
async fn idle(tcp: &TcpStream, sub: &Subscriber) -> Wake {
    let notified = sub.notified();
    tokio::pin!(notified);
    std::future::poll_fn(|cx| {
        if notified.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Wake::Nudged);
        }
        match tcp.poll_read_ready(cx) {
            Poll::Ready(r) => Poll::Ready(Wake::Readable(r.is_ok())),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
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

/// One chunk for the batch. A single frame (the common case) is written from
/// the hub's shared bytes as they are, vectored behind a stack-built chunk
/// head: no copy and no allocation per client. Only a backlog is joined.
async fn send_frames(tcp: &TcpStream, sub: &Subscriber, batch: &[Delivery]) -> io::Result<bool> {
    let joined;
    let body: &[u8] = match batch {
        [one] => &one.frame,
        many => {
            joined = super::stream::join(many);
            &joined
        }
    };
    let mut head = [0u8; 18];
    let head = chunk_head(body.len(), &mut head);
    send(tcp, sub, &[head, body, b"\r\n"]).await
}

/// Write as much of `parts` (at most three) as the socket takes now; the
/// number of bytes written, or an error other than WouldBlock.
fn write_now(tcp: &TcpStream, parts: &[&[u8]], mut done: usize) -> io::Result<usize> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    while done < total {
        let mut slices = [IoSlice::new(&[]), IoSlice::new(&[]), IoSlice::new(&[])];
        let mut used = 0;
        let mut skip = done;
        for p in parts.iter().take(slices.len()) {
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
                if sub.state() == SubState::Slow {
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
    use super::chunk_head;

    #[test]
    fn chunk_heads() {
        let mut b = [0u8; 18];
        assert_eq!(chunk_head(0, &mut b), b"0\r\n");
        assert_eq!(chunk_head(255, &mut b), b"ff\r\n");
        assert_eq!(chunk_head(4096, &mut b), b"1000\r\n");
    }
}

#[cfg(test)]
mod size_probe {
    use super::*;
    use crate::hub::memory::MemoryBroker;
    use crate::hub::Broker;

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
        let limiter = crate::limits::ConnLimiter::new(0, 0);
        let shutdown = Shutdown::new();
        let ds = DetachedStream {
            tcp,
            subscription: Subscription {
                hub,
                sub,
                channels: vec!["a".into()],
            },
            retry: Duration::from_secs(1),
            heartbeat: None,
            shutdown: shutdown.clone(),
            metrics,
            guards: StreamGuards {
                slot: limiter.acquire(None).unwrap(),
                active: shutdown.track(),
                gauge: prometheus::IntGauge::new("g", "g").unwrap(),
                poll: None,
                expiry: None,
            },
            grip: None,
        };
        let fut = ds.run(Replay::default());
        let size = std::mem::size_of_val(&fut);
        assert!(
            size <= 800,
            "the detached stream future grew to {size} bytes"
        );
    }
}

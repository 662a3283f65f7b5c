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
use super::stream::{jittered, End, Signals, StreamGuards, Subscription};
use crate::config::SseSettings;
use crate::hub::{Delivery, Replay, SubState, Subscriber};
use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_proxy::Session;
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
    pub replay: Replay,
    pub settings: SseSettings,
    pub signals: Signals,
    pub metrics: Arc<Metrics>,
    pub guards: StreamGuards,
}

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n";

impl DetachedStream {
    pub fn spawn(self) {
        tokio::spawn(async move {
            let end = self.run().await;
            tracing::debug!(?end, "sse stream ended");
        });
    }

    async fn run(mut self) -> End {
        let sub = self.subscription.sub.clone();
        let mut first = BytesMut::from(RESPONSE_HEAD);
        let mut body = BytesMut::from(&frame::prelude(self.settings.retry.as_millis())[..]);
        if let Some(reset) = self.replay.reset.take() {
            body.extend_from_slice(&reset);
        }
        let replay = std::mem::take(&mut self.replay.frames);
        let mut last_seq = replay.last().map_or(0, |d| d.seq);
        for d in &replay {
            body.extend_from_slice(&d.frame);
        }
        drop(replay);
        push_chunk(&mut first, &body);
        drop(body);
        match send(&self.tcp, &sub, &[&first]).await {
            Ok(true) => {}
            Ok(false) => return End::Slow,
            Err(_) => return End::WriteFailed,
        }
        drop(first);

        let mut batch: Vec<Delivery> = Vec::new();
        let end = loop {
            batch.clear();
            sub.drain_into(&mut batch);
            if !batch.is_empty() {
                batch.retain(|d| d.seq == 0 || d.seq > last_seq);
                if let Some(d) = batch.last() {
                    last_seq = last_seq.max(d.seq);
                }
                match send_frames(&self.tcp, &sub, &batch).await {
                    Ok(true) => {}
                    Ok(false) => break End::Slow,
                    Err(_) => break End::WriteFailed,
                }
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
            }
            if *self.signals.shutdown.borrow() {
                break End::Shutdown;
            }
            tokio::select! {
                _ = sub.woken() => {}
                _ = super::stream::tick(&mut self.signals.heartbeat) => {
                    match send_frames(&self.tcp, &sub, &[heartbeat()]).await {
                        Ok(true) => {}
                        Ok(false) => break End::Slow,
                        Err(_) => break End::WriteFailed,
                    }
                }
                _ = self.signals.shutdown.changed() => {}
                r = self.tcp.readable() => {
                    if r.is_err() || client_closed(&self.tcp) {
                        break End::ClientGone;
                    }
                }
            }
        };
        if end == End::Shutdown {
            let retry = frame::retry_only(jittered(self.settings.retry).as_millis());
            let _ = send_frames(
                &self.tcp,
                &sub,
                &[Delivery {
                    seq: 0,
                    frame: retry,
                    published: std::time::Instant::now(),
                }],
            )
            .await;
        }
        if matches!(end, End::Shutdown | End::ClosedByPublisher) {
            let _ = send(&self.tcp, &sub, &[b"0\r\n\r\n"]).await;
        }
        drop(self.guards);
        end
    }
}

fn heartbeat() -> Delivery {
    Delivery {
        seq: 0,
        frame: Bytes::from_static(frame::HEARTBEAT),
        published: std::time::Instant::now(),
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

fn push_chunk(out: &mut BytesMut, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
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

/// Write all of `parts` (at most three), waiting for the socket as needed;
/// Ok(false) when the client is evicted as slow meanwhile (its queue filled
/// while we waited).
async fn send(tcp: &TcpStream, sub: &Subscriber, parts: &[&[u8]]) -> io::Result<bool> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
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
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::select! {
                    r = tcp.writable() => r?,
                    _ = sub.woken() => {
                        if sub.state() == SubState::Slow {
                            return Ok(false);
                        }
                    }
                    _ = tokio::time::sleep(WRITE_TIMEOUT) => return Err(io::ErrorKind::TimedOut.into()),
                }
            }
            Err(e) => return Err(e),
        }
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

//! The public listener's door: a connection is handed to pingora only once
//! its whole request head has arrived, and until then it costs a socket and
//! a small future.
//!
//! pingora times each read of a request head, not the head: a client that
//! trickles one header line now and then keeps its connection, and pingora's
//! per-connection state (session, buffers, the proxy's future), for ever.
//! Here the head is read first, under one deadline (`limits.header_timeout`
//! from the connection's first byte, or from its accept), then given to
//! pingora's HTTP/1 session as already-read bytes.
//!
//! Connections waiting for a head are also counted: past a share of the
//! open-file limit (`stream::limits::FdBudget`) the oldest one is let go if
//! it has waited `EVICT_AFTER` (and at the open-file limit, whatever its
//! age), so a crowd of connections that never send a request cannot take
//! every file descriptor and shut the listener to real clients. The age
//! spares a reconnect storm: thousands of real clients are accepted faster
//! than their heads, already sent, are read.
//!
//! Plain connections come from our own accept loop (`http::listener`), so
//! that nothing of pingora's exists for them before their head is in; TLS
//! ones from pingora's listener, after the handshake (this is then its
//! `ServerApp`). HTTP/2 (ALPN `h2`, or h2c's prior-knowledge preface) goes to
//! pingora as it comes: its framing and limits are its own.

use crate::metrics::Metrics;
use async_trait::async_trait;
use bytes::BytesMut;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{GetSocketDigest, SocketDigest, Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use std::collections::BTreeMap;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long a kept-alive connection may wait for its next request (pingora's
/// own keep-alive timeout).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// A longer request head is refused (431); a browser's is a few KB.
const MAX_HEAD: usize = 64 * 1024;
/// h2c's connection preface starts so (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

/// `limits.header_timeout` as it is now (a reload may change it).
pub(crate) type HeaderTimeout = Box<dyn Fn() -> Duration + Send + Sync>;

/// `app` behind the door.
pub(crate) struct HeadGate<A> {
    app: Arc<A>,
    waiting: Waiting,
    header_timeout: HeaderTimeout,
    metrics: Arc<Metrics>,
}

impl<A> std::fmt::Debug for HeadGate<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadGate")
            .field("header_timeout", &(self.header_timeout)())
            .field("max_waiting", &self.waiting.max)
            .finish_non_exhaustive()
    }
}

impl<A> HeadGate<A> {
    /// At most `max_waiting` connections wait for a request head at once.
    pub(crate) fn new(
        app: A,
        header_timeout: HeaderTimeout,
        max_waiting: usize,
        metrics: Arc<Metrics>,
    ) -> HeadGate<A> {
        HeadGate {
            app: Arc::new(app),
            waiting: Waiting::new(max_waiting.max(1), &metrics),
            header_timeout,
            metrics,
        }
    }

    /// At the open-file limit: let the oldest waiting connection go, whatever
    /// its age, so that its descriptor serves a new client. False when none
    /// waits.
    pub(crate) fn evict_oldest_waiter(&self) -> bool {
        let mut q = self.waiting.lock();
        self.waiting.evict_oldest(&mut q)
    }
}

/// What became of a connection while its request head was awaited.
#[derive(Debug)]
enum Head {
    /// The head (and whatever followed it in the same reads).
    Ready(BytesMut),
    /// The client closed, or was let go to make room.
    Gone,
    /// The deadline passed; `partial`: some of a request had come.
    TimedOut {
        partial: bool,
    },
    /// A kept-alive connection sent no next request.
    Idle,
    TooLarge,
}

/// The TLS listener stays pingora's: each connection comes here after its
/// handshake.
#[async_trait]
impl<A> ServerApp for HeadGate<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        match self.read_head(&mut stream, true).await {
            Head::Ready(head) => self.serve(stream, head, shutdown).await,
            other => {
                self.turn_away(stream, other).await;
                None
            }
        }
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

impl<A> HeadGate<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// A plain connection from our own listener (`http::listener`): until
    /// its head is in, it is this socket and this future, nothing of pingora's.
    pub(crate) async fn serve_tcp(self: Arc<Self>, mut tcp: TcpStream, shutdown: ShutdownWatch) {
        let _ = tcp.set_nodelay(true);
        let head = match self.read_head(&mut tcp, true).await {
            Head::Ready(head) => head,
            other => return self.turn_away(tcp, other).await,
        };
        let mut l4 = L4Stream::from(tcp);
        let fd = l4.as_raw_fd();
        l4.set_socket_digest(SocketDigest::from_raw_fd(fd));
        self.serve(Box::new(l4), head, &shutdown).await;
    }

    /// From a connection's first request head on: h2c's preface goes to
    /// pingora as it is; HTTP/1 requests go one by one, each head read under
    /// the deadline before pingora's session is made for it.
    async fn serve(
        self: &Arc<Self>,
        mut stream: Stream,
        mut head: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let h2c = self.app.server_options().is_some_and(|o| o.h2c);
        if h2c && head.starts_with(H2_PREFACE) {
            let stream = unread(stream, &head)?;
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let mut persisted: Option<HttpPersistentSettings> = None;
        let mut first = true;
        loop {
            // As pingora's own HTTP/1 loop sets up each session.
            let mut session = ServerSession::new_http1(stream);
            match persisted.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None if first => {
                    let keepalive = (!*shutdown.borrow()).then_some(KEEPALIVE_IDLE.as_secs());
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(
                        self.app
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
                None => {}
            }
            // Pipelining is off, so no settings carry a prefix of their own.
            session.set_pipelined_prefix(head);
            let reused = self.app.process_new_http(session, shutdown).await?;
            (stream, persisted) = reused.consume();
            first = false;
            head = match self.read_head(&mut stream, false).await {
                Head::Ready(head) => head,
                other => {
                    self.turn_away(stream, other).await;
                    return None;
                }
            };
        }
    }
}

impl<A> HeadGate<A> {
    /// Read until the end of a request head: the first byte within
    /// `header_timeout` of the accept (or, kept alive, within the keep-alive
    /// idle time), the whole head within `header_timeout` of the accept (or
    /// of its first byte).
    async fn read_head<S: AsyncRead + Unpin>(&self, stream: &mut S, first: bool) -> Head {
        let ticket = self.waiting.enter();
        let started = Instant::now();
        let header_timeout = (self.header_timeout)();
        let first_byte_by = started
            + if first {
                header_timeout
            } else {
                KEEPALIVE_IDLE
            };
        // Nothing is allocated until the client sends something.
        let mut byte = [0u8; 1];
        let read = tokio::select! {
            r = stream.read(&mut byte) => r,
            _ = tokio::time::sleep_until(first_byte_by) => {
                return match first {
                    true => Head::TimedOut { partial: false },
                    false => Head::Idle,
                };
            }
            _ = ticket.evicted() => return Head::Gone,
        };
        if !matches!(read, Ok(1)) {
            return Head::Gone;
        }
        let whole_by = match first {
            true => started + header_timeout,
            false => Instant::now() + header_timeout,
        };
        let deadline = tokio::time::sleep_until(whole_by);
        tokio::pin!(deadline);
        let mut buf = BytesMut::with_capacity(1024);
        buf.extend_from_slice(&byte);
        let mut scan = HeadScan::default();
        loop {
            if scan.complete(&buf) {
                return Head::Ready(buf);
            }
            if buf.len() >= MAX_HEAD {
                return Head::TooLarge;
            }
            // Most heads fit the first 1 KiB: grown only once it is full.
            if buf.len() == buf.capacity() {
                buf.reserve(4096.min(MAX_HEAD - buf.len()));
            }
            tokio::select! {
                r = stream.read_buf(&mut buf) => {
                    if !matches!(r, Ok(n) if n > 0) {
                        return Head::Gone;
                    }
                }
                _ = &mut deadline => return Head::TimedOut { partial: true },
                _ = ticket.evicted() => return Head::Gone,
            }
        }
    }

    /// Close a connection that brought no request: a partial one is told why.
    async fn turn_away<S: AsyncWrite + Unpin>(&self, mut stream: S, why: Head) {
        let (label, answer): (&str, &[u8]) = match why {
            Head::TimedOut { partial: true } => (
                "header_timeout",
                b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            ),
            Head::TimedOut { partial: false } => ("idle_timeout", b""),
            Head::TooLarge => (
                "head_too_large",
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            ),
            Head::Gone | Head::Idle | Head::Ready(_) => return,
        };
        self.metrics.turned_away.with_label_values(&[label]).inc();
        if !answer.is_empty() {
            // A client that does not read gets no more of our time.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = stream.write_all(answer).await;
                let _ = stream.flush().await;
                let _ = stream.shutdown().await;
            })
            .await;
        }
    }
}

/// Where the search for the end of a request head stands: a line ending
/// right after another (`\n\n` or `\n\r\n`; httparse accepts bare LF), not
/// counting the empty lines a client may send before its request line.
/// Each byte is looked at once, however the head trickles in.
#[derive(Debug, Default)]
struct HeadScan {
    /// Where the request line starts, once a byte other than CR/LF came.
    start: Option<usize>,
    scanned: usize,
}

impl HeadScan {
    fn complete(&mut self, buf: &[u8]) -> bool {
        let start = match self.start {
            Some(start) => start,
            None => {
                let skipped = buf[self.scanned..]
                    .iter()
                    .position(|b| !matches!(b, b'\r' | b'\n'));
                let Some(i) = skipped else {
                    self.scanned = buf.len();
                    return false;
                };
                self.start = Some(self.scanned + i);
                self.scanned + i
            }
        };
        let from = self.scanned.max(start + 1);
        let found = (from..buf.len()).any(|at| {
            buf[at] == b'\n'
                && (buf[at - 1] == b'\n'
                    || (buf[at - 1] == b'\r' && at >= start + 2 && buf[at - 2] == b'\n'))
        });
        self.scanned = buf.len();
        found
    }
}

/// Put bytes read from a plain connection back in front of it.
fn unread(stream: Stream, bytes: &[u8]) -> Option<Stream> {
    let mut l4 = stream.into_any().downcast::<L4Stream>().ok()?;
    l4.rewind(bytes);
    Some(l4)
}

/// Connections waiting for a request head, oldest first.
#[derive(Debug)]
struct Waiting {
    max: usize,
    queue: Mutex<Queue>,
    gauge: prometheus::IntGauge,
    evictions: prometheus::IntCounter,
}

#[derive(Debug, Default)]
struct Queue {
    next: u64,
    tickets: BTreeMap<u64, (Instant, Arc<Notify>)>,
}

/// Past the cap, a waiter younger than this is not let go: a real client's
/// head is read well within it even in a storm.
const EVICT_AFTER: Duration = Duration::from_secs(1);

/// One connection's place in `Waiting`, given back when dropped.
struct Ticket<'w> {
    waiting: &'w Waiting,
    id: u64,
    evicted: Arc<Notify>,
}

impl Waiting {
    fn new(max: usize, metrics: &Metrics) -> Waiting {
        Waiting {
            max,
            queue: Mutex::default(),
            gauge: metrics.waiting.clone(),
            evictions: metrics.turned_away.with_label_values(&["evicted"]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place in the queue; past `max`, the oldest waiter is let go if it
    /// has waited `EVICT_AFTER`.
    fn enter(&self) -> Ticket<'_> {
        let evicted = Arc::new(Notify::new());
        let now = Instant::now();
        let mut q = self.lock();
        if q.tickets.len() >= self.max
            && q.tickets
                .first_key_value()
                .is_some_and(|(_, (since, _))| now.duration_since(*since) >= EVICT_AFTER)
        {
            self.evict_oldest(&mut q);
        }
        let id = q.next;
        q.next += 1;
        q.tickets.insert(id, (now, evicted.clone()));
        self.gauge.set(q.tickets.len() as i64);
        Ticket {
            waiting: self,
            id,
            evicted,
        }
    }
}

impl Waiting {
    fn evict_oldest(&self, q: &mut Queue) -> bool {
        let Some((_, (_, oldest))) = q.tickets.pop_first() else {
            return false;
        };
        oldest.notify_one();
        self.evictions.inc();
        self.gauge.set(q.tickets.len() as i64);
        true
    }
}

impl Ticket<'_> {
    /// Resolves once this connection was let go to make room (a stored
    /// permit: never missed, whenever it is awaited).
    fn evicted(&self) -> impl Future<Output = ()> + '_ {
        self.evicted.notified()
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let mut q = self.waiting.lock();
        q.tickets.remove(&self.id);
        self.waiting.gauge.set(q.tickets.len() as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ends(chunks: &[&[u8]]) -> bool {
        let (mut buf, mut scan, mut found) = (Vec::new(), HeadScan::default(), false);
        for c in chunks {
            buf.extend_from_slice(c);
            found = scan.complete(&buf);
        }
        found
    }

    #[test]
    fn a_head_ends_with_an_empty_line() {
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"\r", b"\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\nHost: a\n\r\n"]));
        assert!(ends(&[b"GET / HTTP/1.0\r\n\r\nbody"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: a\r\r"]));
        // Empty lines before the request line do not end a head.
        assert!(!ends(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n"]));
        assert!(ends(&[b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"]));
        assert!(ends(&[b"\r\n", b"\r\nG", b"ET / HTTP/1.1\n", b"\n"]));
        assert!(!ends(&[b"\n", b"\n", b"G\r\n"]));
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_oldest_waiter_is_let_go_once_it_has_waited() {
        let metrics = Metrics::new();
        let evicted = || metrics.turned_away.with_label_values(&["evicted"]).get();
        let w = Waiting::new(2, &metrics);
        let a = w.enter();
        let b = w.enter();
        // A storm: everyone just arrived, nobody is let go.
        let c = w.enter();
        assert_eq!((metrics.waiting.get(), evicted()), (3, 0));
        tokio::time::advance(EVICT_AFTER).await;
        let d = w.enter();
        tokio::time::timeout(Duration::from_secs(1), a.evicted())
            .await
            .expect("the oldest is let go");
        assert_eq!((metrics.waiting.get(), evicted()), (3, 1));
        // At the file limit, age does not matter.
        assert!(w.evict_oldest(&mut w.lock()));
        tokio::time::timeout(Duration::from_secs(1), b.evicted())
            .await
            .expect("the next oldest is let go");
        drop((c, d));
        assert!(w.lock().tickets.is_empty());
        assert_eq!((metrics.waiting.get(), evicted()), (0, 2));
        drop((a, b));
    }
}

//! One SSE stream's life, written once: open (response head, prelude or a
//! GRIP hold's head and body, reset, replay), deliver (drain the subscriber's
//! queue, write, count), keep alive (the shared heartbeat tick), and end
//! (the terminal event or drain retry, then the end of the body).
//!
//! The engine is generic over a `Sink`, the thing the bytes go to: a plain
//! HTTP/1.1 socket taken out of pingora (`socket`), an HTTP/2 stream's send
//! half (`h2`), a TLS connection (`tls`), or — the fallback — a request held
//! in pingora's session (`http::held`). Every kind of stream — SSE routes,
//! GRIP holds, recorded backend replies, the dashboard's feed — runs here.
//!
//! - `request`: what a request subscribes to (channels, resume point).
//! - `heartbeat`: one tick per interval for every stream.
//! - `limits`: connection caps.
//! - `socket`: the detached socket's sink.
//! - `h2`: the detached HTTP/2 stream's sink (and the hub's direct path).
//! - `tls`: the sink of a detached TLS HTTP/1.1 connection.
//! - `handoff`: a detached stream frozen for a live upgrade, and adopted.

mod chunked;
pub(crate) mod h2;
pub(crate) mod handoff;
pub(crate) mod heartbeat;
pub(crate) mod limits;
pub(crate) mod request;
pub(crate) mod socket;
pub(crate) mod tls;

use crate::auth::expiry::ExpiryGuard;
use crate::hub::record::{RecordId, Records};
use crate::hub::{Broker, BrokerError, Delivery, Feed, Replay, Resume, SubState, Subscriber};
use crate::metrics::Metrics;
use crate::shutdown::{Active, Shutdown};
use crate::sources::poll::Lease;
use crate::wire;
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use heartbeat::Membership;
use limits::ConnSlot;
use pingora_http::ResponseHeader;
use rand::Rng;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// A stream that stops reading for this long is cut even without new events.
pub(crate) const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A poll route's latest snapshot frame, for a subscriber that needs one.
pub(crate) type Snapshot = BoxFuture<'static, Option<Bytes>>;

/// Register `sub` on `channels` and collect what its stream opens with:
/// what it missed since `resume` and, on a poll route, the latest snapshot.
/// Subscribed first, then the snapshot: a change in between arrives twice
/// rather than never. A resume whose replay is complete needs no snapshot;
/// one with a history gap gets it right after the reset.
pub(crate) async fn subscribe(
    hub: &Arc<dyn Broker>,
    sub: Arc<Subscriber>,
    channels: Vec<String>,
    resume: &Resume,
    snapshot: Option<Snapshot>,
) -> Result<(Subscription, Replay), BrokerError> {
    let mut replay = match hub.subscribe(&sub, &channels, resume).await {
        Ok(r) => r,
        Err(e) => {
            hub.unsubscribe(&sub, &channels);
            return Err(e);
        }
    };
    let subscription = Subscription::hub(hub.clone(), sub, channels);
    if let Some(snapshot) = snapshot {
        if *resume == Resume::Live || replay.reset.is_some() {
            if let Some(frame) = snapshot.await {
                // Cursor 0: it carries no `id:` and moves no resume point.
                replay.frames.insert(0, Delivery::uncounted(frame));
            }
        }
    }
    Ok((subscription, replay))
}

/// Where a stream's subscriber is registered; unregistered when dropped,
/// however the stream ends.
#[derive(Debug)]
pub(crate) struct Subscription {
    pub sub: Arc<Subscriber>,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Hub {
        hub: Arc<dyn Broker>,
        channels: Vec<String>,
    },
    Feed(Arc<Feed>),
    Record {
        records: Arc<dyn Records>,
        id: RecordId,
    },
}

impl Subscription {
    /// `sub`, already subscribed to `channels` on `hub`.
    pub(crate) fn hub(
        hub: Arc<dyn Broker>,
        sub: Arc<Subscriber>,
        channels: Vec<String>,
    ) -> Subscription {
        Subscription {
            sub,
            source: Source::Hub { hub, channels },
        }
    }

    /// The hub channels it listens to (none for a feed or a record).
    pub(crate) fn channels(&self) -> &[String] {
        match &self.source {
            Source::Hub { channels, .. } => channels,
            Source::Feed(_) | Source::Record { .. } => &[],
        }
    }

    /// `sub`, already reading record `id`.
    pub(crate) fn record(
        records: Arc<dyn Records>,
        sub: Arc<Subscriber>,
        id: RecordId,
    ) -> Subscription {
        Subscription {
            sub,
            source: Source::Record { records, id },
        }
    }

    /// `sub`, added to `feed` here.
    pub(crate) fn feed(feed: Arc<Feed>, sub: Arc<Subscriber>) -> Subscription {
        feed.add(&sub);
        Subscription {
            sub,
            source: Source::Feed(feed),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        match &self.source {
            Source::Hub { hub, channels } => hub.unsubscribe(&self.sub, channels),
            Source::Feed(feed) => feed.remove(&self.sub),
            Source::Record { records, id } => records.unfollow(&self.sub, *id),
        }
    }
}

/// What an open stream holds on to: its connection slot, its place in the
/// drain count, its route's gauge, the poller it keeps alive and its JWT
/// expiry entry. Dropping it releases all.
#[derive(Debug)]
pub(crate) struct Guards {
    pub slot: Option<ConnSlot>,
    /// Its place in the drain count (held for its `Drop`).
    pub _active: Active,
    pub gauge: Option<Counted>,
    pub keep: Option<Keep>,
    /// Boxed: every idle stream carries this field in its future.
    pub expiry: Option<Box<ExpiryGuard>>,
}

/// Something else a stream keeps alive while it lives: held only for its
/// `Drop`, never read.
#[derive(Debug)]
#[allow(dead_code)]
pub(crate) enum Keep {
    /// The poller of its poll route.
    Poll(Lease),
    /// The connection slot it shares with a recorded reply's writer.
    Slot(Arc<ConnSlot>),
}

/// A route's open-streams gauge, counted up while this lives.
#[derive(Debug)]
pub(crate) struct Counted(prometheus::IntGauge);

impl Counted {
    pub(crate) fn new(gauge: prometheus::IntGauge) -> Counted {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What a stream sends instead of the SSE opening: a response head and
/// first body bytes of its own, and what it writes when idle. A GRIP hold:
/// the backend's status, headers (Grip-* and Content-Length already
/// removed) and body, and its `Grip-Keep-Alive` content. A recorded reply:
/// the backend's head (or, for a resume, the SSE head) naming the record,
/// the prelude, and the heartbeat comment.
#[derive(Debug, Clone)]
pub(crate) struct Opening {
    pub head: ResponseHeader,
    pub body: Bytes,
    /// Written after a tick without other writes. None: nothing is sent idle.
    pub keep_alive: Option<Bytes>,
    /// The body is an event stream: a drain ends it with a jittered `retry:`.
    pub event_stream: bool,
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    ClientGone,
    Slow,
    ClosedByPublisher,
    /// Handed to the new process of a live upgrade: nothing was written or
    /// closed, the socket goes on there.
    HandedOff,
    /// The client's JWT expired (`ssegate.expired` was sent).
    Expired,
    /// Its route changed in a reload (a jittered `retry:` was sent).
    Retired,
    Shutdown,
    WriteFailed,
}

impl End {
    /// The word the access log and the dashboard use.
    pub(crate) fn label(self) -> &'static str {
        match self {
            End::ClientGone => "client_gone",
            End::Slow => "slow_client",
            End::ClosedByPublisher => "closed",
            End::Expired => "expired",
            End::Retired => "retired",
            End::HandedOff => "handed_off",
            End::Shutdown => "shutdown",
            End::WriteFailed => "write_failed",
        }
    }
}

/// Told what a stream wrote and how it ended (the access log). Optional
/// and boxed: a stream without one pays a pointer and a branch per write.
pub(crate) trait Report: Send + std::fmt::Debug {
    /// `events` event frames (replayed or live) in `bytes` body bytes.
    fn wrote(&mut self, events: u64, bytes: usize);
    fn ended(self: Box<Self>, end: End);
}

/// Why an idle stream woke up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Its subscriber was nudged: frames, a state change, a tick, a drain.
    Nudged,
    /// The client went away.
    ClientGone,
}

/// Response headers a stream adds to its head (CORS).
pub(crate) type ExtraHeaders = Vec<(http::HeaderName, http::HeaderValue)>;

/// What a stream writes once, at its start: boxed, so that the future of
/// a stream (what every idle client costs) holds only a pointer to it,
/// and only until it is written.
pub(crate) struct Start {
    /// The prelude or GRIP body, the reset, the replay; for an adopted
    /// stream, what was queued for it.
    pub body: Bytes,
    pub headers: ExtraHeaders,
    /// A stream adopted in a live upgrade: no head, and first the
    /// unwritten rest of the chunk it was in, as it is.
    pub adopted: Option<Bytes>,
}

/// The response head a stream opens with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Head<'a> {
    /// `200` with `wire::SSE_HEADERS`, then these.
    Sse(&'a [(http::HeaderName, http::HeaderValue)]),
    /// The stream's own `Opening` head.
    Given(&'a ResponseHeader),
}

/// Where a stream's bytes go. `Ok(false)` from a write: the write waited on
/// a full socket and the subscriber was cut meanwhile (evicted as slow,
/// expired, retired by a reload: `Subscriber::is_cut`), so it was given up. A subscriber that was
/// closed (its publisher or its record ended) still gets what it was sent.
pub(crate) trait Sink {
    /// The response head and the first body bytes.
    async fn open(&mut self, sub: &Subscriber, head: Head<'_>, body: Bytes) -> io::Result<bool>;
    /// An adopted stream's first bytes: `tail`, the rest of a chunk the
    /// previous process had begun, as it is; then `body` as a chunk.
    async fn resume(&mut self, sub: &Subscriber, tail: Bytes, body: Bytes) -> io::Result<bool>;
    /// One body chunk. The hub's frames are shared by every client: a sink
    /// writes them as they are, never copies them.
    async fn write(&mut self, sub: &Subscriber, bytes: &Bytes) -> io::Result<bool>;
    /// Wait until the subscriber is nudged or the client goes away.
    async fn idle(&mut self, sub: &Subscriber) -> Wake;
    /// End the body after `last` (when given) — or, for a stream cut short
    /// (`last` None), just close.
    async fn finish(&mut self, sub: &Subscriber, last: Option<Bytes>);
    /// The socket and the unwritten rest of a chunk cut short, for a live
    /// upgrade; None for a sink whose stream cannot move.
    fn surrender(self) -> Option<(tokio::net::TcpStream, Bytes)>;
    /// Events and bytes the hub wrote through the subscriber's direct path
    /// (`hub::Direct`) so far, which the stream itself never saw.
    fn direct_written(&mut self, _sub: &Subscriber) -> (u64, usize) {
        (0, 0)
    }
}

/// Everything one stream owns while it runs.
#[derive(Debug)]
pub(crate) struct Stream {
    pub subscription: Subscription,
    /// The route's `retry` (prelude, and drain's jittered retry).
    pub retry: Duration,
    pub heartbeat: Option<Membership>,
    pub shutdown: Shutdown,
    pub metrics: Arc<Metrics>,
    pub guards: Guards,
    /// A GRIP hold or a recorded reply: its own head and body open the
    /// stream instead of the SSE prelude. Boxed: SSE streams pay one
    /// pointer for it.
    pub opening: Option<Box<Opening>>,
    /// Where the stream goes if a live upgrade takes it.
    pub handoff: handoff::Handoff,
    /// Doubly boxed: a thin pointer, since every idle stream's future
    /// holds this field (twice: as the argument and as a local).
    pub report: Option<Box<Box<dyn Report>>>,
}

impl Stream {
    /// Run the stream to its end on `sink`, opening with `replay`.
    ///
    /// The replay is turned into the opening bytes here, before the future
    /// exists: the future (what every idle detached client costs) keeps
    /// only those bytes, not the replay. `headers` go on an SSE head
    /// (CORS); like the opening bytes, they are gone once it is written.
    pub(crate) fn run<S: Sink>(
        mut self,
        sink: S,
        replay: Replay,
        headers: ExtraHeaders,
    ) -> impl Future<Output = End> {
        let last_seq = replay.frames.last().map_or(0, |d| d.seq).max(replay.head);
        let replayed = replay.frames.len() as u64;
        let body = self.opening(replay);
        // Told here, before the write: the future keeps nothing for it.
        self.tally(replayed, body.len());
        let start = Box::new(Start {
            body,
            headers,
            adopted: None,
        });
        self.serve(sink, start, last_seq, replayed)
    }

    // Awaits as little as possible and keeps little across awaits.
    async fn serve<S: Sink>(
        mut self,
        mut sink: S,
        start: Box<Start>,
        mut last_seq: u64,
        replayed: u64,
    ) -> End {
        let sub = self.subscription.sub.clone();
        // Boxed, as is the end: each happens once, and unboxed their futures
        // (with the opening bytes and headers) would sit in every idle
        // stream's future for its life.
        let opened = Box::pin(open(&mut sink, &sub, self.opening.as_deref(), start)).await;
        match opened {
            Ok(true) => {}
            Ok(false) => return Box::pin(self.end(sink, cut(&sub), last_seq)).await,
            Err(_) => return Box::pin(self.end(sink, End::WriteFailed, last_seq)).await,
        }
        self.metrics.delivered.inc_by(replayed);
        if let Some(g) = &mut self.opening {
            // Sent: only the keep-alive is needed from here on.
            g.body = Bytes::new();
        }
        // A given opening's keep-alive (a GRIP backend's content) is sent
        // only after a tick without other writes; an SSE heartbeat is the
        // comment, every tick.
        let mut wrote = false;
        let mut last_beat = self.heartbeat.as_ref().map_or(0, Membership::epoch);
        let mut batch: Vec<Delivery> = Vec::new();
        let end = loop {
            batch.clear();
            sub.drain_after(&mut batch, &mut last_seq);
            if !batch.is_empty() {
                // A single frame (the common case) is written from the hub's
                // shared bytes as they are: no copy and no allocation per
                // client. Only a backlog is joined into one chunk.
                let joined;
                let bytes = match batch.as_slice() {
                    [one] => &one.frame,
                    many => {
                        joined = join(many);
                        &joined
                    }
                };
                match sink.write(&sub, bytes).await {
                    Ok(true) => {}
                    Ok(false) => break cut(&sub),
                    Err(_) => break End::WriteFailed,
                }
                wrote = true;
                crate::hub::count_written(&batch, &self.metrics);
                // From the batch, which the loop keeps anyway: nothing more
                // is held across the write.
                let written = batch.iter().map(|d| d.frame.len()).sum();
                self.tally(batch.len() as u64, written);
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
                SubState::Retired => break End::Retired,
                SubState::HandingOff => break End::HandedOff,
            }
            if self.shutdown.is_draining() {
                break End::Shutdown;
            }
            let beat = self.heartbeat.as_ref().map_or(0, Membership::epoch);
            if beat != last_beat {
                last_beat = beat;
                let idle = self.opening.is_none() || !std::mem::take(&mut wrote);
                let keep_alive = match &self.opening {
                    None => Bytes::from_static(wire::HEARTBEAT),
                    Some(g) => g.keep_alive.clone().unwrap_or_default(),
                };
                if idle && !keep_alive.is_empty() {
                    match sink.write(&sub, &keep_alive).await {
                        Ok(true) => {}
                        Ok(false) => break cut(&sub),
                        Err(_) => break End::WriteFailed,
                    }
                    self.tally(0, keep_alive.len());
                }
                continue;
            }
            if sink.idle(&sub).await == Wake::ClientGone {
                break End::ClientGone;
            }
        };
        Box::pin(self.end(sink, end, last_seq)).await
    }

    /// Tell the report (if any) what was written.
    fn tally(&mut self, events: u64, bytes: usize) {
        if let Some(r) = &mut self.report {
            r.wrote(events, bytes);
        }
    }

    /// The first body bytes: the prelude (or a GRIP hold's body), the reset
    /// and the replayed frames, as one write.
    fn opening(&self, replay: Replay) -> Bytes {
        let mut body = match &self.opening {
            None => {
                BytesMut::from(&wire::prelude(self.retry.as_millis(), replay.start.as_deref())[..])
            }
            Some(g) => BytesMut::from(&g.body[..]),
        };
        if let Some(reset) = &replay.reset {
            body.extend_from_slice(reset);
        }
        for d in &replay.frames {
            body.extend_from_slice(&d.frame);
        }
        body.freeze()
    }

    /// The last words (drain retry, `ssegate.expired`, or only the end of
    /// the body), then everything the stream held is released. A stream a
    /// live upgrade takes says nothing: it is frozen and handed over.
    async fn end<S: Sink>(mut self, mut sink: S, end: End, last_seq: u64) -> End {
        if end == End::HandedOff {
            let report = self.report.take();
            // Handed over, or ended as a drain if the upgrade gave up.
            let end = handoff::freeze(self, sink, last_seq).await;
            if let Some(r) = report {
                (*r).ended(end);
            }
            return end;
        }
        if self.subscription.sub.state() == SubState::HandingOff {
            // Asked to hand itself over, it ended first: the upgrade must
            // not wait for it.
            self.handoff.gone();
        }
        let (events, bytes) = sink.direct_written(&self.subscription.sub);
        self.tally(events, bytes);
        let sub = &self.subscription.sub;
        let last = match end {
            End::Shutdown | End::Retired
                if self.opening.as_ref().is_none_or(|o| o.event_stream) =>
            {
                Some(wire::retry_only(jittered(self.retry).as_millis()))
            }
            End::Expired => Some(wire::expired()),
            End::Shutdown | End::Retired | End::ClosedByPublisher => Some(Bytes::new()),
            End::ClientGone | End::Slow | End::WriteFailed | End::HandedOff => None,
        };
        let last_len = last.as_ref().map_or(0, Bytes::len);
        sink.finish(sub, last).await;
        if let Some(mut r) = self.report.take() {
            r.wrote(0, last_len);
            (*r).ended(end);
        }
        drop(self.guards);
        end
    }
}

/// Write the response head and the opening bytes.
async fn open<S: Sink>(
    sink: &mut S,
    sub: &Subscriber,
    given: Option<&Opening>,
    start: Box<Start>,
) -> io::Result<bool> {
    let Start {
        body,
        headers,
        adopted,
    } = *start;
    if let Some(tail) = adopted {
        return sink.resume(sub, tail, body).await;
    }
    let head = match given {
        Some(g) => Head::Given(&g.head),
        None => Head::Sse(&headers),
    };
    sink.open(sub, head, body).await
}

/// Why a write that waited on a full socket was given up: the client was
/// evicted as slow, or its credentials expired or its route changed
/// meanwhile — either way nothing more is written to it — or a live
/// upgrade takes it, with the rest of the write.
fn cut(sub: &Subscriber) -> End {
    match sub.state() {
        SubState::Slow => End::Slow,
        SubState::HandingOff => End::HandedOff,
        _ => End::WriteFailed,
    }
}

/// A backlog as one chunk.
fn join(batch: &[Delivery]) -> Bytes {
    let mut out = BytesMut::with_capacity(batch.iter().map(|d| d.frame.len()).sum());
    for d in batch {
        out.extend_from_slice(&d.frame);
    }
    out.freeze()
}

/// The retry sent on drain: spread over [retry, retry + max(2×retry, 5s)) so
/// that clients do not all reconnect in the same instant.
pub(crate) fn jittered(retry: Duration) -> Duration {
    // Saturating: config bounds the retry, this keeps a bad value from panicking.
    let spread = retry.saturating_mul(2).max(Duration::from_secs(5));
    retry.saturating_add(spread.mul_f64(rand::rng().random::<f64>()))
}

#[cfg(test)]
mod size_probe;

//! The two steps every stream on the public listener shares, whatever it
//! reads (hub channels, a record): admission (not while draining, within the
//! connection limits) before anything else is done for it, and, once it is
//! subscribed, running it on the stream engine — detached from pingora (a
//! plain socket, an HTTP/2 stream's send half, a TLS HTTP/1.1 connection
//! from our front), held in its session otherwise.

use super::access;
use super::held::{sse_head, SessionSink};
use super::refuse::Refusal;
use super::upstream::forwarded;
use super::{detach, detach_tls};
use crate::auth::expiry::ExpiryGuard;
use crate::gateway::Gateway;
use crate::hub::Replay;
use crate::stream::h2::H2Sink;
use crate::stream::limits::ConnSlot;
use crate::stream::socket::Framing;
use crate::stream::tls::TlsSink;
use crate::stream::{Counted, ExtraHeaders, Guards, Keep, Opening, Stream, Subscription};
use pingora_proxy::Session;
use std::time::Duration;

/// A connection slot for a new stream, or why there is none. The client is
/// the peer, or what a trusted proxy says it saw.
pub(super) fn admit(gw: &Gateway, session: &Session) -> Result<ConnSlot, Refusal> {
    let streams = &gw.streams;
    if streams.shutdown.is_draining() {
        return Err(Refusal::new(503, "draining", "shutting down"));
    }
    let ip = forwarded(session, &gw.site().config.trusted_proxies).client_ip();
    Ok(streams.limiter.acquire(ip)?)
}

/// A subscribed stream, ready to run.
pub(super) struct Ready {
    pub subscription: Subscription,
    pub replay: Replay,
    /// None: the slot is shared, and held in `keep`.
    pub slot: Option<ConnSlot>,
    /// The route's `retry` (prelude, and drain's jittered retry).
    pub retry: Duration,
    /// The tick for heartbeats (SSE) or keep-alives (a given opening).
    pub heartbeat: Duration,
    pub opening: Option<Box<Opening>>,
    /// What else must live as long as the stream (poll lease, shared slot).
    pub keep: Option<Keep>,
    /// Closes the stream with `ssegate.expired` when the client's JWT expires.
    pub expiry: Option<Box<ExpiryGuard>>,
    /// Added to an SSE head (CORS).
    pub headers: ExtraHeaders,
}

/// Run the stream to its end, counted under the route's `label`. With the
/// access log on, `access` is its request's line: the stream writes it
/// when it ends.
pub(super) async fn run(
    gw: &Gateway,
    session: &mut Session,
    label: &str,
    r: Ready,
    access: Option<access::Request>,
) {
    let streams = &gw.streams;
    let sub = r.subscription.sub.clone();
    // A plain SSE stream can move to a new process in a live upgrade; GRIP
    // holds, recorded replies and poll streams drain instead (their state
    // lives in this process: a backend's hold or reply, a poller).
    let movable = r.opening.is_none() && r.keep.is_none();
    let gauge = Counted::new(gw.metrics.connections.with_label_values(&[label]));
    gw.metrics
        .connections_opened
        .with_label_values(&[label])
        .inc();
    let stream = Stream {
        heartbeat: streams.heartbeats.join(r.heartbeat, &sub),
        subscription: r.subscription,
        retry: r.retry,
        shutdown: streams.shutdown.clone(),
        metrics: gw.metrics.clone(),
        guards: Guards {
            slot: r.slot,
            _active: streams.shutdown.track(),
            gauge: Some(gauge),
            keep: r.keep,
            expiry: r.expiry,
        },
        report: access.map(|req| access::stream_report(req, label, r.opening.as_deref())),
        opening: r.opening,
        handoff: streams.handoff.clone(),
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        let client = forwarded(session, &gw.site().config.trusted_proxies).client_ip();
        tracing::debug!(route = label, client = ?client, "stream opened");
    }
    if let Some(sink) = detach::take_sink(session) {
        // A close-delimited (HTTP/1.0) stream is not movable: a new process
        // would write it chunked.
        if movable && sink.framing() == Framing::Chunked {
            sub.set_movable();
        }
        // The stream's own future is the task: nothing wraps it, so an
        // idle stream costs what the size probe in `stream::socket` measures.
        tokio::spawn(stream.run(sink, r.replay, r.headers));
        return;
    }
    // TLS and HTTP/2 streams stay in this process on a live upgrade: they
    // drain (a `retry:`) and their clients reconnect to the new one.
    if detach_tls::is_h2(session) {
        // The head goes out through pingora before the send half is taken.
        let head = match &stream.opening {
            Some(o) => Ok(o.head.clone()),
            None => sse_head(&r.headers),
        };
        let taken = match head {
            Ok(head) => detach_tls::take_send_stream(session, head).await,
            Err(e) => Err(e),
        };
        match taken {
            Ok(tx) => {
                let sink = H2Sink::new(&sub, tx);
                tokio::spawn(stream.run(sink, r.replay, r.headers));
            }
            // The client is gone (or the head could not be built): the
            // stream's guards are released with it.
            Err(e) => tracing::debug!(route = label, error = %e, "HTTP/2 stream not opened"),
        }
        return;
    }
    if let Some(tls) = detach_tls::take_tls(session) {
        tokio::spawn(stream.run(TlsSink::new(tls), r.replay, r.headers));
        return;
    }
    let end = stream
        .run(SessionSink::new(session), r.replay, r.headers)
        .await;
    tracing::debug!(route = label, ?end, "stream ended");
}

//! One client's SSE connection, held inside pingora's `request_filter`:
//! headers and prelude, replay, then live frames from the subscriber queue,
//! shared heartbeat ticks, disconnect detection and drain on shutdown.

use super::frame;
use crate::config::SseSettings;
use crate::hub::{Broker, Delivery, Replay, SubState, Subscriber};
use crate::metrics::Metrics;
use bytes::{Bytes, BytesMut};
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use rand::Rng;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Unsubscribes however the stream ends.
#[derive(Debug)]
pub struct Subscription {
    pub hub: Arc<dyn Broker>,
    pub sub: Arc<Subscriber>,
    pub channels: Vec<String>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.sub, &self.channels);
    }
}

/// What an open stream holds on to: its connection slot, its place in the
/// drain count, and its route's gauge. Dropping it releases all three.
#[derive(Debug)]
pub struct StreamGuards {
    pub slot: crate::limits::ConnSlot,
    pub active: crate::shutdown::Active,
    pub gauge: prometheus::IntGauge,
    /// The poller this stream keeps alive (poll routes).
    pub poll: Option<crate::sources::poll::Lease>,
    /// JWT streams: their place in the expiry sweep. Boxed: every idle
    /// detached stream carries this field in its future.
    pub expiry: Option<Box<crate::auth::expiry::ExpiryGuard>>,
}

impl Drop for StreamGuards {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Everything the loop selects on besides the client itself.
#[derive(Debug)]
pub struct Signals {
    pub heartbeat: Option<watch::Receiver<u64>>,
    pub shutdown: watch::Receiver<bool>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum End {
    ClientGone,
    Slow,
    ClosedByPublisher,
    /// The client's JWT expired (`ssegate.expired` was sent).
    Expired,
    Shutdown,
    WriteFailed,
}

/// What a GRIP hold sends instead of the SSE opening: the backend's status,
/// headers (Grip-* and Content-Length already removed) and body, and its
/// `Grip-Keep-Alive` content in place of the heartbeat comment.
#[derive(Debug, Clone)]
pub struct GripOpening {
    pub head: ResponseHeader,
    pub body: Bytes,
    /// None: the backend asked for no keep-alive, so nothing is sent idle.
    pub keep_alive: Option<Bytes>,
}

/// A stream that stops reading for this long is cut even without new events.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

pub fn response_header(is_h2: bool) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(6))?;
    resp.insert_header("content-type", "text/event-stream; charset=utf-8")?;
    resp.insert_header("cache-control", "no-cache")?;
    resp.insert_header("x-accel-buffering", "no")?;
    if !is_h2 {
        // Without a length pingora would close-delimit the body and lose keep-alive.
        resp.insert_header("transfer-encoding", "chunked")?;
    }
    Ok(resp)
}

pub async fn serve(
    session: &mut Session,
    subscription: &Subscription,
    replay: Replay,
    settings: &SseSettings,
    mut signals: Signals,
    metrics: &Metrics,
    grip: Option<&GripOpening>,
) -> Result<End> {
    let sub = &subscription.sub;
    let is_h2 = session.as_downstream().is_http2();
    session
        .downstream_session
        .set_write_timeout(Some(WRITE_TIMEOUT));
    let head = match grip {
        None => response_header(is_h2)?,
        Some(g) => {
            let mut head = g.head.clone();
            if !is_h2 {
                head.insert_header("transfer-encoding", "chunked")?;
            }
            head
        }
    };
    session.write_response_header(Box::new(head), false).await?;
    let keep_alive = match grip {
        None => Bytes::from_static(frame::HEARTBEAT),
        Some(g) => g.keep_alive.clone().unwrap_or_default(),
    };

    let mut first = match grip {
        None => BytesMut::from(&frame::prelude(settings.retry.as_millis())[..]),
        Some(g) => BytesMut::from(&g.body[..]),
    };
    if let Some(reset) = &replay.reset {
        first.extend_from_slice(reset);
    }
    let mut last_seq = 0;
    for d in &replay.frames {
        first.extend_from_slice(&d.frame);
        last_seq = d.seq;
    }
    if !write(session, sub, first.freeze()).await? {
        return Ok(End::Slow);
    }
    metrics.delivered.inc_by(replay.frames.len() as u64);
    drop(replay);

    let mut batch: Vec<Delivery> = Vec::new();
    // GRIP keep-alives go only to streams that were idle for a whole tick.
    let mut wrote = false;
    let end = loop {
        batch.clear();
        sub.drain_after(&mut batch, &mut last_seq);
        if !batch.is_empty() {
            let bytes = join(&batch);
            if !write(session, sub, bytes).await? {
                break End::Slow;
            }
            wrote = true;
            metrics.delivered.inc_by(batch.len() as u64);
            for d in &batch {
                metrics.latency.observe(d.published.elapsed().as_secs_f64());
            }
            continue;
        }
        match sub.state() {
            SubState::Open => {}
            SubState::Slow => break End::Slow,
            SubState::Closed => break End::ClosedByPublisher,
            SubState::Expired => break End::Expired,
        }
        if *signals.shutdown.borrow() {
            break End::Shutdown;
        }
        tokio::select! {
            _ = sub.woken() => {}
            _ = tick(&mut signals.heartbeat) => {
                let idle = grip.is_none() || !std::mem::take(&mut wrote);
                if idle && !write(session, sub, keep_alive.clone()).await? {
                    break End::Slow;
                }
            }
            _ = signals.shutdown.changed() => {}
            _ = session.downstream_session.read_body_or_idle(true) => break End::ClientGone,
        }
    };
    if end == End::Shutdown && grip.is_none() {
        let retry = jittered(settings.retry);
        let _ = write(session, sub, frame::retry_only(retry.as_millis())).await;
    }
    if end == End::Expired {
        let _ = write(session, sub, frame::expired()).await;
    }
    if end != End::ClientGone {
        let _ = session.write_response_body(None, true).await;
    }
    session.downstream_session.set_keepalive(None);
    Ok(end)
}

pub(crate) async fn tick(rx: &mut Option<watch::Receiver<u64>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await
            }
        }
        None => std::future::pending().await,
    }
}

pub(crate) fn join(batch: &[Delivery]) -> Bytes {
    if let [one] = batch {
        return one.frame.clone();
    }
    let mut out = BytesMut::with_capacity(batch.iter().map(|d| d.frame.len()).sum());
    for d in batch {
        out.extend_from_slice(&d.frame);
    }
    out.freeze()
}

/// Write, unless the client is evicted meanwhile (its socket is full, so the
/// write would otherwise wait for the timeout). Ok(false) = evicted.
async fn write(session: &mut Session, sub: &Subscriber, bytes: Bytes) -> Result<bool> {
    if bytes.is_empty() {
        // An empty chunk would end a chunked body.
        return Ok(true);
    }
    let w = session.write_response_body(Some(bytes), false);
    tokio::pin!(w);
    loop {
        tokio::select! {
            r = &mut w => return r.map(|_| true),
            _ = sub.woken() => {
                if sub.state() == SubState::Slow {
                    return Ok(false);
                }
            }
        }
    }
}

/// The retry sent on drain: spread over [retry, retry + max(2×retry, 5s)) so
/// that clients do not all reconnect in the same instant.
pub fn jittered(retry: Duration) -> Duration {
    let spread = (retry * 2).max(Duration::from_secs(5));
    retry + spread.mul_f64(rand::rng().random::<f64>())
}

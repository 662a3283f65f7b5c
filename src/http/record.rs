//! A request on a `record:` route. Without `Last-Event-ID` it goes to the
//! backend (`upstream`, any method, the body streamed); an answer `200
//! text/event-stream` is recorded — a writer task reads the backend to its
//! end into a new record, and the client's stream is the record's first
//! reader — and any other answer is streamed through as it is. With a
//! `Last-Event-ID: <record id>.<n>` (any method) it is answered from the
//! record alone: the events after `n`, then live until the record ends;
//! `204` once everything was delivered. The backend is never called again.

use super::access;
use super::body;
use super::refuse::Refusal;
use super::streams::{self, Ready};
use super::upstream::{self, forwarded, BadHead};
use crate::config::{RecordRoute, Route};
use crate::gateway::{Gateway, RouteEntry, Site};
use crate::hub::record::{NewRecord, RecordError, RecordId};
use crate::hub::{Replay, Subscriber};
use crate::outbound::{BodyStream, Pool};
use crate::record::writer::Writer;
use crate::record::{self, Ask};
use crate::routing::Matched;
use crate::stream::{Keep, Opening, Subscription};
use crate::values::RequestValues;
use crate::wire;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::sync::Arc;

/// The response header naming the record a reply is kept in.
pub(super) const RECORD_HEADER: &str = "ssegate-record-id";

/// One request on a record route: the gateway, the config it took, the
/// route and its `record:` settings.
struct On<'a> {
    gw: &'a Arc<Gateway>,
    site: &'a Site,
    route: &'a Route,
    record: &'a RecordRoute,
}

impl On<'_> {
    fn label(&self) -> &str {
        &self.route.path
    }

    /// A reader's subscriber, on this route, with the SSE defaults' queue.
    fn subscriber(&self) -> Arc<Subscriber> {
        Arc::new(Subscriber::on_route(
            self.gw.streams.next_id(),
            self.site.config.sse.client_queue,
            self.route.fingerprint,
            false,
        ))
    }
}

/// Answer a request on a record route.
pub(super) async fn serve(
    gw: &Arc<Gateway>,
    site: &Site,
    session: &mut Session,
    m: &Matched<'_, Arc<RouteEntry>>,
    pool: &Pool,
    record: &RecordRoute,
    access: &mut Option<access::Request>,
) -> Result<(), Refusal> {
    let ask = {
        let req = session.req_header();
        record::ask(&RequestValues::new(
            &m.params,
            req.uri.query(),
            &req.headers,
        ))
    };
    let on = On {
        gw,
        site,
        route: &m.value.route,
        record,
    };
    match ask {
        Ask::New => start(&on, session, pool, access).await,
        Ask::Resume { id, after } => resume(&on, session, id, after, access).await,
        Ask::NotARecord => Err(RecordError::Unknown.into()),
    }
}

/// A new request: to the backend, and recorded when it answers SSE.
async fn start(
    on: &On<'_>,
    session: &mut Session,
    pool: &Pool,
    access: &mut Option<access::Request>,
) -> Result<(), Refusal> {
    let gw = on.gw;
    // Admitted first: over the limits, or without a store to record into,
    // the backend is not called at all. The slot is held by the client's
    // stream and by the writer: a reply being recorded counts as one
    // connection of its client until the client left and the backend ended.
    let slot = Arc::new(streams::admit(gw, session)?);
    gw.hub.ready().await?;
    let mut who = forwarded(session, &on.site.config.trusted_proxies);
    let request_id = access.as_ref().map(|a| a.id.clone());
    who.request_id = request_id.clone();
    let resp = upstream::send(&gw.client, session, pool, &who, None).await?;
    let event_stream = resp
        .header("content-type")
        .is_some_and(|ct| ct.trim_start().starts_with("text/event-stream"));
    let is_head = session.req_header().method == http::Method::HEAD;
    if resp.status() != 200 || !event_stream || is_head {
        upstream::stream_through(session, resp, request_id.as_deref()).await;
        return Ok(());
    }
    let id = RecordId::random();
    let mut head = upstream::given_head(200, resp.head().headers.iter())
        .map_err(|BadHead(why)| Refusal::new(502, "upstream", why))?;
    named(&mut head, id)?;
    let head = access::tagged(head, request_id.as_deref());
    let rec = NewRecord {
        id,
        route: on.label().into(),
        credentials: record::credentials(id, &session.req_header().headers, &on.record.credentials),
        ttl: on.record.ttl,
        max_total: on.record.max_total,
    };
    let sub = on.subscriber();
    // A store that is away: the backend's connection is dropped with `resp`.
    gw.records.start(&rec, &sub).await?;
    gw.metrics
        .records_started
        .with_label_values(&[on.label()])
        .inc();
    let config = &on.site.config;
    let writer = Writer {
        records: gw.records.clone(),
        rec,
        max_events: on.record.max_events,
        max_event_size: config.limits.max_body,
        shutdown: gw.streams.shutdown.clone(),
        grace: config.shutdown_grace,
        metrics: gw.metrics.clone(),
        _active: gw.streams.shutdown.track(),
        _keep: Box::new(slot.clone()),
    };
    tokio::spawn(writer.run(chunks(resp.into_body())));
    let subscription = Subscription::record(gw.records.clone(), sub, id);
    let mut ready = ready(on, subscription, id, 0, Replay::default(), None, head);
    ready.keep = Some(Keep::Slot(slot));
    streams::run(gw, session, on.label(), ready, access.take()).await;
    Ok(())
}

/// A request with a record's event id: the rest of that record.
async fn resume(
    on: &On<'_>,
    session: &mut Session,
    id: RecordId,
    after: u64,
    access: &mut Option<access::Request>,
) -> Result<(), Refusal> {
    let gw = on.gw;
    let slot = streams::admit(gw, session)?;
    // A fetch-based client retries with its original body: read, not sent on.
    body::read(session, on.site.config.limits.max_body).await?;
    let credentials =
        record::credentials(id, &session.req_header().headers, &on.record.credentials);
    let sub = on.subscriber();
    let following = gw
        .records
        .follow(&sub, id, on.label(), after, &credentials)
        .await?;
    // From here on the reader leaves the record however the request ends.
    let subscription = Subscription::record(gw.records.clone(), sub.clone(), id);
    if following.ended && following.frames.is_empty() {
        gw.metrics
            .record_resumes
            .with_label_values(&["no_content"])
            .inc();
        no_content(session, id).await;
        return Ok(());
    }
    gw.metrics
        .record_resumes
        .with_label_values(&["stream"])
        .inc();
    if following.ended {
        // Not registered: the replay is all there is, then the end.
        sub.close();
    }
    let mut head = ResponseHeader::build(200, Some(5))
        .map_err(|_| Refusal::new(500, "internal", "response head"))?;
    for (k, v) in wire::SSE_HEADERS {
        head.insert_header(k, v)
            .map_err(|_| Refusal::new(500, "internal", "response head"))?;
    }
    named(&mut head, id)?;
    let replay = Replay {
        frames: following.frames,
        ..Replay::default()
    };
    if session.req_header().method == http::Method::HEAD {
        // The answer a GET would get, without its body.
        let _ = session.write_response_header(Box::new(head), true).await;
        return Ok(());
    }
    let ready = ready(on, subscription, id, after, replay, Some(slot), head);
    streams::run(gw, session, on.label(), ready, access.take()).await;
    Ok(())
}

fn named(head: &mut ResponseHeader, id: RecordId) -> Result<(), Refusal> {
    head.insert_header(RECORD_HEADER, id.to_string())
        .map_err(|_| Refusal::new(500, "internal", "response head"))
}

/// A record reader's stream: its head, then the prelude whose `id:` is the
/// reader's place (`<record id>.0` for a new reply, so that a client cut
/// before the first event resumes it), then what it missed.
fn ready(
    on: &On<'_>,
    subscription: Subscription,
    id: RecordId,
    after: u64,
    replay: Replay,
    slot: Option<crate::stream::limits::ConnSlot>,
    head: ResponseHeader,
) -> Ready {
    let sse = &on.site.config.sse;
    Ready {
        subscription,
        replay,
        slot,
        retry: sse.retry,
        heartbeat: sse.heartbeat,
        opening: Some(Box::new(Opening {
            head,
            body: wire::prelude(sse.retry.as_millis(), Some(&id.event_id(after))),
            keep_alive: Some(Bytes::from_static(wire::HEARTBEAT)),
            event_stream: true,
        })),
        keep: None,
        expiry: None,
        headers: Vec::new(),
    }
}

/// `204 No Content`: the record ended and the client has all of it
/// (EventSource stops reconnecting on a 204).
async fn no_content(session: &mut Session, id: RecordId) {
    let Ok(mut head) = ResponseHeader::build(204, Some(2)) else {
        return;
    };
    let _ = head.insert_header("cache-control", "no-store");
    let _ = head.insert_header(RECORD_HEADER, id.to_string());
    let _ = session.write_response_header(Box::new(head), true).await;
}

/// The backend's body as a stream of chunks, for the writer's task.
fn chunks(
    body: BodyStream,
) -> impl futures_util::Stream<Item = Result<Bytes, crate::outbound::OutboundError>> + Unpin + Send
{
    Box::pin(futures_util::stream::unfold(body, |mut b| async move {
        match b.chunk().await {
            Ok(Some(c)) => Some((Ok(c), b)),
            Ok(None) => None,
            Err(e) => Some((Err(e), b)),
        }
    }))
}

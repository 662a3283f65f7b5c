//! The public listener: each request is routed to an SSE stream the gateway
//! holds itself (after the route's auth), to a GRIP route whose backend may
//! hold the client, or passed through to an upstream pool by pingora.

use super::access;
use super::canonical;
use super::cors;
use super::grip::{self, HoldStart};
use super::record;
use super::refuse::{Refusal, Style};
use super::streams;
use super::upstream::forwarded;
use crate::gateway::{Action, Gateway, RouteEntry, Site, SseEntry};
use crate::hub::{Resume, Subscriber};
use crate::outbound::{Forwarded, Pool};
use crate::routing::{Matched, Miss};
use crate::shutdown::Active;
use crate::stream::request::{self, Offer};
use crate::stream::{self, Keep, Opening};
use crate::telemetry;
use crate::values::RequestValues;
use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct PublicProxy {
    pub gw: Arc<Gateway>,
}

#[derive(Debug)]
pub(crate) struct Ctx {
    pool: Option<Arc<Pool>>,
    tried: Vec<std::net::SocketAddr>,
    _active: Option<Active>,
    /// When the request head was read.
    started: Instant,
    route: Option<Arc<RouteEntry>>,
    /// With `access_log: true`: the request's line, written by `logging`
    /// unless a stream took it over (the stream writes it when it ends).
    access: Option<access::Request>,
    /// With `telemetry:`, a proxied request's span (pass-through or GRIP).
    span: Option<telemetry::Span>,
}

/// Who the client is (the peer, or what a trusted proxy says it saw), with
/// this request's id and span for the upstream.
fn forwarded_for(session: &Session, ctx: &Ctx, trusted_proxies: &[ipnet::IpNet]) -> Forwarded {
    let mut who = forwarded(session, trusted_proxies);
    who.request_id = ctx.access.as_ref().map(|a| a.id.clone());
    who.traceparent = ctx.span.as_ref().map(telemetry::Span::traceparent);
    who
}

/// What a stream subscribes to and how it behaves.
struct StreamSpec {
    channels: Vec<String>,
    resume: Resume,
    retry: Duration,
    client_queue: usize,
    /// The tick for heartbeats (SSE) or keep-alives (GRIP).
    heartbeat: Duration,
    grip: Option<Box<Opening>>,
    /// A poll route's latest snapshot, for a subscriber that needs one.
    snapshot: Option<stream::Snapshot>,
    /// The poller the stream keeps alive (poll routes).
    poll: Option<crate::sources::poll::Lease>,
    /// Unix seconds at which the stream is closed with `ssegate.expired`.
    expires: Option<u64>,
    /// Added to the SSE head (CORS).
    headers: stream::ExtraHeaders,
}

impl PublicProxy {
    async fn refuse(&self, session: &mut Session, r: impl Into<Refusal>) -> Result<bool> {
        r.into().send(session, Style::Text, &self.gw.metrics).await
    }

    async fn open_stream(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        site: &Site,
        m: &Matched<'_, Arc<RouteEntry>>,
        entry: &SseEntry,
    ) -> Result<bool> {
        let gw = &self.gw;
        let cors = entry.sse.settings.cors.as_deref();
        if let Some(cors) = cors.filter(|_| cors::is_preflight(session.req_header())) {
            return cors::preflight(session, cors).await;
        }
        let method = &session.req_header().method;
        if method != http::Method::GET && method != http::Method::HEAD {
            let r = Refusal::method_not_allowed(&[http::Method::GET], "sse routes answer GET only");
            return self.refuse(session, r).await;
        }
        // Over the rate, before any work (auth included): a reconnect storm
        // spreads itself out instead of reaching the backends at once.
        if site.admission.as_ref().is_some_and(|a| !a.admit()) {
            return self.defer(session, entry.sse.settings.retry).await;
        }
        let max_channels = site.config.limits.max_channels_per_client;
        let req = session.req_header();
        let mut values = RequestValues::new(&m.params, req.uri.query(), &req.headers);
        if let Err(e) = entry.auth.check(&gw.client, &mut values, &gw.metrics).await {
            return self.refuse(session, e).await;
        }
        let offer = Offer {
            channels: &entry.sse.channels,
            allow_channels: &entry.sse.allow_channels,
            polls: entry.poll.is_some(),
            max_channels,
        };
        let mut wanted = match request::resolve(&values, offer) {
            Ok(w) => w,
            Err(e) => return self.refuse(session, e).await,
        };
        if session.req_header().method == http::Method::HEAD {
            // The head a GET would get, and nothing more: no subscription,
            // no connection slot, no poller.
            drop(values);
            let extra = cors.map_or_else(Vec::new, |c| cors::headers(c, session.req_header()));
            let head = super::held::sse_head(&extra)?;
            session.write_response_header(Box::new(head), true).await?;
            return Ok(true);
        }
        // Counted before anything is awaited; released with the stream
        // however it ends.
        let lease = match &entry.poll {
            None => None,
            Some(p) => {
                match crate::sources::poll::target(&values, m.value.route.fingerprint, &p.poll)
                    .map_err(crate::sources::poll::PollError::Target)
                    .and_then(|t| gw.pollers.acquire(t, p))
                {
                    Ok(l) => Some(l),
                    Err(e) => return self.refuse(session, e).await,
                }
            }
        };
        // Closed at `exp` (plus the leeway validation allowed).
        let expires = entry.auth.jwt().and_then(|jwt| {
            let exp = values.identity.claims.as_ref()?.exp?;
            Some(exp.saturating_add(jwt.leeway))
        });
        drop(values);
        let snapshot = match (&lease, &entry.poll) {
            (Some(l), Some(p)) if p.poll.initial => {
                Some(l.snapshot_source(p.poll.timeout + crate::sources::poll::SNAPSHOT_SLACK))
            }
            _ => None,
        };
        if let Some(l) = &lease {
            wanted.channels.push(l.channel().to_string());
        }
        let spec = StreamSpec {
            channels: wanted.channels,
            resume: wanted.resume,
            retry: entry.sse.settings.retry,
            client_queue: entry.sse.settings.client_queue,
            heartbeat: entry.sse.settings.heartbeat,
            grip: None,
            snapshot,
            poll: lease,
            expires,
            headers: cors.map_or_else(Vec::new, |c| cors::headers(c, session.req_header())),
        };
        self.hold_stream(session, ctx, &m.value.route, spec).await
    }

    /// A GRIP route: the backend answers, and may hold the client.
    async fn grip(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        site: &Site,
        entry: &RouteEntry,
        pool: &Pool,
        route: &crate::config::GripRoute,
    ) -> Result<bool> {
        let gw = &self.gw;
        let limits = &site.config.limits;
        let who = forwarded_for(session, ctx, &site.config.trusted_proxies);
        let outcome = grip::forward(
            &gw.client,
            session,
            pool,
            route,
            &who,
            limits.max_channels_per_client,
            limits.max_body,
        )
        .await;
        if let (Some(span), Ok(grip::Outcome::Hold(_))) = (&mut ctx.span, &outcome) {
            // The span is the backend request; the hold is a stream.
            span.set("ssegate.grip_hold", true);
        }
        let start = match outcome {
            Ok(grip::Outcome::Done) => {
                pool.series(&gw.metrics)
                    .duration
                    .observe(ctx.started.elapsed().as_secs_f64());
                return Ok(true);
            }
            Ok(grip::Outcome::Hold(start)) => start,
            Err(r) => {
                tracing::debug!(upstream = %pool.name, client = ?who.client_ip(), status = r.status, reason = %r.reason, "grip route refused");
                return self.refuse(session, r).await;
            }
        };
        let HoldStart {
            hold,
            mut head,
            body,
        } = *start;
        if let Some(mut span) = ctx.span.take() {
            span.set("http.response.status_code", i64::from(head.status.as_u16()));
        }
        if let Some(cors) = &site.config.sse.cors {
            cors::apply(cors, session.req_header(), &mut head);
        }
        // Without Grip-Keep-Alive nothing is sent idle, but the stream still
        // joins a tick so that a drain on shutdown wakes it.
        let sse = &site.config.sse;
        let (heartbeat, keep_alive) = match hold.keep_alive {
            Some(k) => (k.timeout, Some(k.content)),
            None => (sse.heartbeat, None),
        };
        let spec = StreamSpec {
            channels: hold.channels,
            resume: Resume::Live,
            retry: sse.retry,
            client_queue: sse.client_queue,
            heartbeat,
            grip: Some(Box::new(Opening {
                head,
                body,
                keep_alive,
                event_stream: false,
            })),
            snapshot: None,
            poll: None,
            expires: None,
            headers: Vec::new(),
        };
        self.hold_stream(session, ctx, &entry.route, spec).await
    }

    /// Over `limits.stream_rate`: `200 text/event-stream` with only a
    /// `retry:` drawn from [retry, 4×retry], then the end. EventSource comes
    /// back after that delay; a 5xx would make it give up for good.
    async fn defer(&self, session: &mut Session, retry: Duration) -> Result<bool> {
        self.gw.metrics.streams_deferred.inc();
        let wait = retry.mul_f64(1.0 + 3.0 * rand::random::<f64>());
        let body = crate::wire::retry_only(wait.as_millis());
        // Closed after: a deferred client's next try is a new connection,
        // spread out like the streams (EventSource reconnects either way).
        session.set_keepalive(None);
        super::respond::send(session, 200, crate::wire::SSE_HEADERS[0].1, body, &[]).await?;
        Ok(true)
    }

    /// Admit, subscribe and run the stream.
    async fn hold_stream(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &crate::config::Route,
        spec: StreamSpec,
    ) -> Result<bool> {
        let gw = &self.gw;
        let streams = &gw.streams;
        let label = route.path.as_str();
        let slot = match streams::admit(gw, session) {
            Ok(s) => s,
            Err(r) => return self.refuse(session, r).await,
        };
        let id = streams.next_id();
        let sub = Arc::new(Subscriber::on_route(
            id,
            spec.client_queue,
            route.fingerprint,
            spec.grip.is_some(),
        ));
        let opened = stream::subscribe(
            &gw.hub,
            sub.clone(),
            spec.channels,
            &spec.resume,
            spec.snapshot,
        )
        .await;
        let (subscription, replay) = match opened {
            Ok(o) => o,
            Err(e) => return self.refuse(session, e).await,
        };
        let expiry = spec
            .expires
            .map(|at| Box::new(streams.expiries.register(at, &sub)));
        let ready = streams::Ready {
            subscription,
            replay,
            slot: Some(slot),
            retry: spec.retry,
            heartbeat: spec.heartbeat,
            opening: spec.grip,
            keep: spec.poll.map(Keep::Poll),
            expiry,
            headers: spec.headers,
        };
        streams::run(gw, session, label, ready, ctx.access.take()).await;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for PublicProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            pool: None,
            tried: Vec::new(),
            _active: None,
            started: Instant::now(),
            route: None,
            access: None,
            span: None,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let site = self.gw.site();
        if site.config.access_log {
            // The request as the client sent it (before canonicalization).
            let client = forwarded(session, &site.config.trusted_proxies).client_ip();
            ctx.access = Some(access::Request::of(session, ctx.started, client));
        }
        // Routed as the upstream will see it: one path, one host, one length.
        let host = match canonical::canonicalize(session.req_header_mut()) {
            Ok(h) => h,
            Err(e) => return Box::pin(self.refuse(session, e)).await,
        };
        let req = session.req_header();
        let public_hook = crate::sources::webhook::find(
            &site.config.webhooks,
            crate::config::Listener::Public,
            req.uri.path(),
        );
        if let Some(hook) = public_hook {
            return Box::pin(super::webhook::serve(&self.gw, hook, session)).await;
        }
        let found = site
            .router
            .lookup(&req.method, host.as_deref(), req.uri.path());
        let m = match found {
            Ok(m) => m,
            Err(Miss::NotFound) => {
                let reason = format!("no route for {}", req.uri.path());
                let r = Refusal::new(404, "no_route", reason);
                return Box::pin(self.refuse(session, r)).await;
            }
            Err(Miss::MethodNotAllowed(allowed)) => {
                // A preflight for an sse route narrowed to `methods: [GET]`.
                let cors = cors::is_preflight(req)
                    .then(|| {
                        let m =
                            site.router
                                .lookup(&http::Method::GET, host.as_deref(), req.uri.path());
                        match &m.ok()?.value.action {
                            Action::Sse(sse) => sse.sse.settings.cors.clone(),
                            _ => None,
                        }
                    })
                    .flatten();
                if let Some(c) = cors {
                    return Box::pin(cors::preflight(session, &c)).await;
                }
                let r = Refusal::method_not_allowed(&allowed, "method not allowed on this route");
                return Box::pin(self.refuse(session, r)).await;
            }
        };
        let entry = m.value.clone();
        // Every branch but pass-through is boxed: async_trait allocates and
        // moves this future for every request, and inline those branches
        // made it ~12 KB — a memcpy per pass-through request for nothing.
        if let (Some(t), Action::Proxy(pool) | Action::Grip(pool, _)) =
            (&self.gw.telemetry, &entry.action)
        {
            let req = session.req_header();
            let mut span = t.request_span("proxy", telemetry::Kind::Server, &req.headers);
            span.set("http.request.method", req.method.to_string());
            span.set("http.route", entry.label().to_string());
            span.set("url.path", req.uri.path().to_string());
            span.set("ssegate.upstream", pool.name.to_string());
            ctx.span = Some(span);
        }
        ctx.route = Some(entry.clone());
        match &entry.action {
            Action::Sse(sse) => Box::pin(self.open_stream(session, ctx, &site, &m, sse)).await,
            Action::Grip(pool, g) => {
                ctx._active = Some(self.gw.streams.shutdown.track());
                Box::pin(self.grip(session, ctx, &site, &entry, pool, g)).await
            }
            Action::Record(pool, r) => {
                ctx._active = Some(self.gw.streams.shutdown.track());
                Box::pin(async {
                    match record::serve(&self.gw, &site, session, &m, pool, r, &mut ctx.access)
                        .await
                    {
                        Ok(()) => Ok(true),
                        Err(refusal) => self.refuse(session, refusal).await,
                    }
                })
                .await
            }
            Action::Proxy(pool) => {
                ctx.pool = Some(pool.clone());
                ctx._active = Some(self.gw.streams.shutdown.track());
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .pool
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "route has no upstream"))?;
        let target = pool.pick(&ctx.tried).ok_or_else(|| {
            Error::explain(ErrorType::ConnectError, "no upstream server left to try")
        })?;
        ctx.tried.push(target.addr);
        let mut peer = pool.peer(&target);
        if session.is_upgrade_req() {
            // An upgraded connection (WebSocket) is HTTP/1.1 only.
            peer.options.alpn = pingora_core::protocols::ALPN::H1;
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(pool), Some(&last)) = (&ctx.pool, ctx.tried.last()) {
            pool.mark_failed(last);
            if ctx.tried.len() < pool.len() {
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        forwarded_for(session, ctx, &self.gw.site().config.trusted_proxies).apply(upstream_request)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(a) = &ctx.access {
            upstream_response.insert_header(access::REQUEST_ID, a.id.as_str())?;
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        if let Some(mut span) = ctx.span.take() {
            span.set("http.response.status_code", i64::from(status));
            if let Some(e) = e {
                span.fail(e.etype().as_str());
            } else if status >= 500 {
                span.fail("upstream answered 5xx");
            }
        }
        if let Some(req) = &ctx.access {
            let upstream = ctx.route.as_ref().and_then(|r| match &r.action {
                Action::Proxy(p) | Action::Grip(p, _) | Action::Record(p, _) => Some(&*p.name),
                Action::Sse(_) => None,
            });
            access::request(
                req,
                ctx.route.as_ref().map(|r| r.label()),
                upstream,
                status,
                session.body_bytes_sent(),
                e.map(|e| e.etype().as_str()),
            );
        }
        if let Some(pool) = &ctx.pool {
            let series = pool.series(&self.gw.metrics);
            series.duration.observe(ctx.started.elapsed().as_secs_f64());
            series.responses(status).inc();
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let upstream = ctx.pool.as_ref().map_or("?", |p| &*p.name);
        let (code, reason) = match (e.etype(), e.esource()) {
            (HTTPStatus(c), _) => (
                *c,
                format!(
                    "upstream {upstream}: {}",
                    e.context.as_ref().map(|c| c.as_str()).unwrap_or("failed")
                ),
            ),
            (ConnectTimedout, _) => (504, format!("upstream {upstream}: connect timed out")),
            (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => {
                (504, format!("upstream {upstream}: timed out"))
            }
            (ConnectRefused, _) => (502, format!("upstream {upstream}: connection refused")),
            (_, ErrorSource::Upstream) | (ConnectError | ConnectNoRoute, _) => {
                (502, format!("upstream {upstream}: {}", e.etype().as_str()))
            }
            (ReadError | WriteError | ConnectionClosed, ErrorSource::Downstream) => {
                (0, String::new())
            }
            (_, ErrorSource::Downstream) => (400, "bad request".to_string()),
            _ => (502, format!("upstream {upstream}: {}", e.etype().as_str())),
        };
        if code > 0 {
            let r = Refusal::new(code, "upstream", reason);
            if session.response_written().is_none() {
                let _ = r.send(session, Style::Text, &self.gw.metrics).await;
            } else {
                self.gw.metrics.refuse(code, r.label);
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

//! The public listener: each request is routed to an SSE stream the gateway
//! holds itself (after the route's auth), to a GRIP route whose backend may
//! hold the client, or passed through to an upstream pool.

use crate::auth;
use crate::config::{GripRoute, RouteKind, SseRoute, SseSettings};
use crate::grip::{self, backend::Forwarded, backend::HoldStart};
use crate::hub::{Delivery, Resume};
use crate::respond;
use crate::routing::{Matched, Miss};
use crate::shutdown::Active;
use crate::sources::poll;
use crate::sse::detached::{self, DetachedStream};
use crate::sse::request::{self, Refusal};
use crate::sse::stream::{self, GripOpening, Signals, StreamGuards, Subscription};
use crate::state::Gateway;
use crate::upstream::UpstreamPool;
use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use std::sync::Arc;

#[derive(Debug)]
pub struct PublicProxy {
    pub gw: Arc<Gateway>,
}

#[derive(Debug, Default)]
pub struct Ctx {
    upstream: Option<Arc<UpstreamPool>>,
    tried: Vec<usize>,
    _active: Option<Active>,
}

fn host_of(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
}

impl PublicProxy {
    async fn refuse(&self, session: &mut Session, status: u16, reason: &str) -> Result<bool> {
        self.gw.metrics.refuse(status);
        respond::text(session, status, reason).await?;
        Ok(true)
    }

    async fn open_stream(
        &self,
        session: &mut Session,
        m: &Matched,
        route: &SseRoute,
    ) -> Result<bool> {
        let gw = &self.gw;
        let method = &session.req_header().method;
        if method != http::Method::GET && method != http::Method::HEAD {
            gw.metrics.refuse(405);
            respond::send(
                session,
                405,
                "text/plain",
                "sse routes answer GET only\n",
                &[("allow", "GET".into())],
            )
            .await?;
            return Ok(true);
        }
        let identity = match auth::authorize(&gw.fetcher, session.req_header(), route, &m.params)
            .await
        {
            Ok(id) => id,
            Err(Refusal { status, reason }) => return self.refuse(session, status, &reason).await,
        };
        let mut wanted = match request::resolve(
            session.req_header(),
            route,
            &m.params,
            gw.config.limits.max_channels_per_client,
            &identity,
        ) {
            Ok(w) => w,
            Err(Refusal { status, reason }) => return self.refuse(session, status, &reason).await,
        };
        // Counted before anything is awaited; released by the guards' Drop
        // however the stream ends.
        let lease = match &route.poll {
            None => None,
            Some(p) => match poll::target(session.req_header(), m.route.index, p, &m.params)
                .and_then(|t| gw.pollers.acquire(t, &m.route))
            {
                Ok(l) => Some(l),
                Err(Refusal { status, reason }) => {
                    return self.refuse(session, status, &reason).await
                }
            },
        };
        if let Some(l) = &lease {
            wanted.channels.push(l.channel().to_string());
        }
        // Closed at `exp` (plus the leeway validation allowed).
        let expires = route.auth.jwt.as_ref().and_then(|jwt| {
            let exp = identity.claims.as_ref()?.exp?;
            Some(exp.saturating_add(jwt.leeway))
        });
        let spec = StreamSpec {
            channels: wanted.channels,
            resume: wanted.resume,
            settings: route.settings.clone(),
            heartbeat: route.settings.heartbeat,
            expires,
            grip: None,
            snapshot_wait: route
                .poll
                .as_ref()
                .filter(|p| p.initial)
                .map(|p| p.timeout + poll::SNAPSHOT_SLACK),
            poll: lease,
        };
        self.hold_stream(session, m.route.label(), spec).await
    }

    /// A GRIP route: the backend answers, and may hold the client.
    async fn grip(
        &self,
        session: &mut Session,
        m: &Matched,
        upstream: &str,
        route: &GripRoute,
    ) -> Result<bool> {
        let gw = &self.gw;
        let start = match grip::backend::forward(gw, session, upstream, route).await {
            Ok(Forwarded::Done) => return Ok(true),
            Ok(Forwarded::Hold(start)) => start,
            Err(Refusal { status, reason }) => {
                tracing::debug!(upstream, status, %reason, "grip route refused");
                return self.refuse(session, status, &reason).await;
            }
        };
        let HoldStart { hold, head, body } = *start;
        // Without Grip-Keep-Alive nothing is sent idle, but the stream still
        // joins a tick so that a drain on shutdown wakes it.
        let (heartbeat, keep_alive) = match hold.keep_alive {
            Some(k) => (k.timeout, Some(k.content)),
            None => (gw.config.sse.heartbeat, None),
        };
        let spec = StreamSpec {
            channels: hold.channels,
            resume: Resume::Live,
            settings: gw.config.sse.clone(),
            heartbeat,
            expires: None,
            grip: Some(Box::new(GripOpening {
                head,
                body,
                keep_alive,
            })),
            poll: None,
            snapshot_wait: None,
        };
        self.hold_stream(session, m.route.label(), spec).await
    }

    /// Subscribe and hold the client: detached from pingora on plain
    /// HTTP/1.1, held in its session otherwise.
    async fn hold_stream(
        &self,
        session: &mut Session,
        label: &str,
        spec: StreamSpec,
    ) -> Result<bool> {
        let gw = &self.gw;
        if gw.shutdown.is_draining() {
            return self.refuse(session, 503, "shutting down").await;
        }
        let ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let slot = match gw.limiter.acquire(ip) {
            Ok(s) => s,
            Err(reason) => return self.refuse(session, 429, reason).await,
        };
        let sub = Arc::new(crate::hub::Subscriber::new(
            gw.next_id(),
            spec.settings.client_queue,
        ));
        let replay = match gw.hub.subscribe(&sub, &spec.channels, &spec.resume).await {
            Ok(r) => r,
            Err(e) => {
                gw.hub.unsubscribe(&sub, &spec.channels);
                return self.refuse(session, 503, &e.to_string()).await;
            }
        };
        // Subscribed first, then the snapshot: a change in between arrives twice
        // rather than never. A resume whose replay is complete needs none; one
        // with a history gap gets it right after the reset.
        let mut replay = replay;
        if let (Some(l), Some(wait)) = (&spec.poll, spec.snapshot_wait) {
            if spec.resume == Resume::Live || replay.reset.is_some() {
                if let Some(frame) = l.snapshot(wait).await {
                    // Cursor 0: it carries no `id:` and moves no resume point.
                    let snapshot = Delivery {
                        seq: 0,
                        frame,
                        published: std::time::Instant::now(),
                    };
                    replay.frames.insert(0, snapshot);
                }
            }
        }
        let expiry = spec
            .expires
            .map(|at| Box::new(gw.expiries.register(at, &sub)));
        let subscription = Subscription {
            hub: gw.hub.clone(),
            sub,
            channels: spec.channels,
        };
        let gauge = gw.metrics.connections.with_label_values(&[label]);
        gauge.inc();
        gw.metrics
            .connections_opened
            .with_label_values(&[label])
            .inc();
        let guards = StreamGuards {
            slot,
            active: gw.shutdown.track(),
            gauge,
            poll: spec.poll,
            expiry,
        };
        if let Some(tcp) = detached::take_socket(session) {
            DetachedStream {
                tcp,
                heartbeat: gw.heartbeats.join(spec.heartbeat, &subscription.sub),
                subscription,
                retry: spec.settings.retry,
                shutdown: gw.shutdown.clone(),
                metrics: gw.metrics.clone(),
                guards,
                grip: spec.grip,
            }
            .spawn(replay);
            return Ok(true);
        }
        let signals = Signals {
            heartbeat: gw.heartbeats.subscribe(spec.heartbeat),
            shutdown: gw.shutdown.watch(),
        };
        let end = stream::serve(
            session,
            &subscription,
            replay,
            &spec.settings,
            signals,
            &gw.metrics,
            spec.grip.as_deref(),
        )
        .await;
        drop(guards);
        tracing::debug!(route = label, end = ?end, "stream ended");
        Ok(true)
    }
}

/// What a held stream subscribes to and how it behaves.
struct StreamSpec {
    channels: Vec<String>,
    resume: Resume,
    settings: SseSettings,
    /// The tick for heartbeats (SSE) or keep-alives (GRIP).
    heartbeat: std::time::Duration,
    /// Unix seconds at which the stream is closed with `ssegate.expired`.
    expires: Option<u64>,
    grip: Option<Box<GripOpening>>,
    /// Poll routes: the poller this stream keeps alive, and how long a new
    /// subscriber may wait for its first snapshot (None: `initial: false`).
    poll: Option<poll::Lease>,
    snapshot_wait: Option<std::time::Duration>,
}

#[async_trait]
impl ProxyHttp for PublicProxy {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        let found = self
            .gw
            .router
            .lookup(&req.method, host_of(req), req.uri.path());
        let m = match found {
            Ok(m) => m,
            Err(Miss::NotFound) => {
                let reason = format!("no route for {}", session.req_header().uri.path());
                return self.refuse(session, 404, &reason).await;
            }
            Err(Miss::MethodNotAllowed(allowed)) => {
                self.gw.metrics.refuse(405);
                let allow = allowed
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                respond::send(
                    session,
                    405,
                    "text/plain",
                    "method not allowed on this route\n",
                    &[("allow", allow)],
                )
                .await?;
                return Ok(true);
            }
        };
        match &m.route.kind {
            RouteKind::Sse(route) => self.open_stream(session, &m, route).await,
            RouteKind::Proxy {
                upstream,
                grip: Some(g),
            } => {
                ctx._active = Some(self.gw.shutdown.track());
                self.grip(session, &m, upstream, g).await
            }
            RouteKind::Proxy { upstream, .. } => {
                ctx.upstream = self.gw.upstreams.get(upstream).cloned();
                ctx._active = Some(self.gw.shutdown.track());
                Ok(false)
            }
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let pool = ctx
            .upstream
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(502), "route has no upstream"))?;
        let (index, addr) = pool.pick(&ctx.tried).ok_or_else(|| {
            Error::explain(ErrorType::ConnectError, "no upstream server left to try")
        })?;
        ctx.tried.push(index);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(pool.config.connect_timeout);
        peer.options.read_timeout = Some(pool.config.read_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(pool), Some(&last)) = (&ctx.upstream, ctx.tried.last()) {
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
        _ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(ip) = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_string())
        {
            // Several X-Forwarded-For lines are one list: keep every earlier hop.
            let mut hops: Vec<&str> = upstream_request
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            hops.push(&ip);
            let xff = hops.join(", ");
            upstream_request.insert_header("x-forwarded-for", xff)?;
        }
        // This listener terminates the client connection: what the client
        // claims about scheme and host is not passed on as fact.
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        upstream_request.insert_header("x-forwarded-proto", if tls { "https" } else { "http" })?;
        if let Some(host) = host_of(session.req_header()).map(str::to_string) {
            upstream_request.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(pool) = &ctx.upstream {
            let status = session
                .response_written()
                .map(|r| r.status.as_u16())
                .unwrap_or(0);
            let class = match status {
                100..=199 => "1xx",
                200..=299 => "2xx",
                300..=399 => "3xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "none",
            };
            self.gw
                .metrics
                .proxied
                .with_label_values(&[&pool.config.name, class])
                .inc();
        }
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        let upstream = ctx
            .upstream
            .as_ref()
            .map(|p| p.config.name.as_str())
            .unwrap_or("?");
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
            self.gw.metrics.refuse(code);
            if session.response_written().is_none() {
                let _ = respond::text(session, code, &reason).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }
}

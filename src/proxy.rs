//! The public listener: each request is routed to an SSE stream the gateway
//! holds itself, or passed through to an upstream pool.

use crate::config::{RouteKind, SseRoute};
use crate::respond;
use crate::routing::{Matched, Miss};
use crate::shutdown::Active;
use crate::sse::detached::{self, DetachedStream};
use crate::sse::request::{self, Refusal};
use crate::sse::stream::{self, Signals, StreamGuards, Subscription};
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
        let wanted = match request::resolve(
            session.req_header(),
            route,
            &m.params,
            gw.config.limits.max_channels_per_client,
        ) {
            Ok(w) => w,
            Err(Refusal { status, reason }) => return self.refuse(session, status, &reason).await,
        };
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
            route.settings.client_queue,
        ));
        let replay = match gw
            .hub
            .subscribe(&sub, &wanted.channels, &wanted.resume)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                gw.hub.unsubscribe(&sub, &wanted.channels);
                return self.refuse(session, 503, &e.to_string()).await;
            }
        };
        let subscription = Subscription {
            hub: gw.hub.clone(),
            sub,
            channels: wanted.channels,
        };
        let label = m.route.label();
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
        };
        if let Some(tcp) = detached::take_socket(session) {
            DetachedStream {
                tcp,
                heartbeat: gw
                    .heartbeats
                    .join(route.settings.heartbeat, &subscription.sub),
                subscription,
                settings: route.settings.clone(),
                shutdown: gw.shutdown.clone(),
                metrics: gw.metrics.clone(),
                guards,
            }
            .spawn(replay);
            return Ok(true);
        }
        let signals = Signals {
            heartbeat: gw.heartbeats.subscribe(route.settings.heartbeat),
            shutdown: gw.shutdown.watch(),
        };
        let end = stream::serve(
            session,
            &subscription,
            replay,
            &route.settings,
            signals,
            &gw.metrics,
        )
        .await;
        drop(guards);
        tracing::debug!(route = label, end = ?end, "sse stream ended");
        Ok(true)
    }
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

//! The admin listener: publish API, webhooks, health, readiness, metrics,
//! stats and a live dashboard. Answered entirely in `request_filter`;
//! nothing is proxied.

use super::body;
use super::dashboard;
use super::detach;
use super::held::SessionSink;
use super::refuse::{Refusal, Style};
use super::respond;
use crate::config::{Listener, ADMIN_PATHS};
use crate::gateway::Gateway;
use crate::hub::{Replay, Subscriber};
use crate::sources::{publish, webhook};
use crate::stream::{Guards, Stream, Subscription};
use crate::telemetry;
use async_trait::async_trait;
use http::Method;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::{ProxyHttp, Session};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

#[derive(Debug)]
pub(crate) struct AdminApp {
    pub gw: Arc<Gateway>,
}

impl AdminApp {
    async fn refuse(&self, session: &mut Session, r: impl Into<Refusal>) -> Result<bool> {
        r.into().send(session, Style::Json, &self.gw.metrics).await
    }

    fn authorized(&self, session: &Session) -> bool {
        let site = self.gw.site();
        let Some(token) = &site.config.admin.token else {
            return true;
        };
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                // The scheme is case-insensitive (RFC 9110 §11.1).
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .unwrap_or("");
        bool::from(given.as_bytes().ct_eq(token.as_bytes()))
    }

    /// Refuse, marking the request's span failed with the refusal's label.
    async fn refuse_traced(
        &self,
        session: &mut Session,
        span: Option<telemetry::Span>,
        r: impl Into<Refusal>,
    ) -> Result<bool> {
        let r = r.into();
        if let Some(mut s) = span {
            s.set("http.response.status_code", i64::from(r.status));
            s.fail(r.label);
        }
        self.refuse(session, r).await
    }

    async fn publish(&self, session: &mut Session) -> Result<bool> {
        let mut span = super::access::span(&self.gw, session, "publish");
        if !self.authorized(session) {
            let r = Refusal::new(401, "auth", "missing or wrong bearer token");
            return self.refuse_traced(session, span, r).await;
        }
        let body = match body::read(session, self.gw.site().config.limits.max_body).await {
            Ok(b) => b,
            Err(e) => return self.refuse_traced(session, span, e).await,
        };
        let events = match publish::parse(&body) {
            Ok(e) => e,
            Err(e) => return self.refuse_traced(session, span, e).await,
        };
        if let Some(s) = &mut span {
            s.set("ssegate.events", events.len() as i64);
        }
        match self.gw.hub.publish(events).await {
            Ok(r) => {
                if let Some(s) = &mut span {
                    s.set("ssegate.published", r.published as i64);
                    s.set("ssegate.duplicates", r.duplicates as i64);
                    s.set("http.response.status_code", 200_i64);
                }
                let mut out = json!({ "published": r.published });
                if r.duplicates > 0 {
                    out["duplicates"] = r.duplicates.into();
                }
                if r.closed > 0 {
                    out["closed"] = r.closed.into();
                }
                respond::json(session, 200, &out).await?;
                Ok(true)
            }
            Err(e) => self.refuse_traced(session, span, e).await,
        }
    }

    /// The dashboard's feed: the stats object as an SSE event every tick,
    /// on the same stream engine as every client stream.
    async fn stats_stream(&self, session: &mut Session) -> Result<bool> {
        let gw = &self.gw;
        let streams = &gw.streams;
        if streams.shutdown.is_draining() {
            let r = Refusal::new(503, "draining", "shutting down");
            return self.refuse(session, r).await;
        }
        let site = gw.site();
        let sse = &site.config.sse;
        let sub = Arc::new(Subscriber::new(streams.next_id(), 16));
        let stream = Stream {
            heartbeat: streams.heartbeats.join(sse.heartbeat, &sub),
            subscription: Subscription::feed(gw.dashboard.clone(), sub),
            retry: Duration::from_secs(2),
            shutdown: streams.shutdown.clone(),
            metrics: gw.metrics.clone(),
            guards: Guards {
                slot: None,
                _active: streams.shutdown.track(),
                gauge: None,
                keep: None,
                expiry: None,
            },
            opening: None,
            handoff: streams.handoff.clone(),
            report: None,
        };
        // The first stats at once, not a tick later.
        let first = Replay {
            frames: vec![crate::hub::Delivery::uncounted(dashboard::frame(gw, true))],
            ..Replay::default()
        };
        if let Some(sink) = detach::take_sink(session) {
            tokio::spawn(stream.run(sink, first, Vec::new()));
            return Ok(true);
        }
        stream
            .run(SessionSink::new(session), first, Vec::new())
            .await;
        Ok(true)
    }
}

#[async_trait]
impl ProxyHttp for AdminApp {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let gw = &self.gw;
        match (method, path.as_str()) {
            (Method::POST, "/publish" | "/publish/") => self.publish(session).await,
            (Method::GET | Method::HEAD, "/healthz") => {
                respond::text(session, 200, "ok").await?;
                Ok(true)
            }
            (Method::GET | Method::HEAD, "/readyz") => match gw.hub.ready().await {
                Ok(()) if !gw.streams.shutdown.is_draining() => {
                    respond::text(session, 200, "ready").await?;
                    Ok(true)
                }
                Ok(()) => {
                    let r = Refusal::new(503, "draining", "draining");
                    r.send(session, Style::Text, &gw.metrics).await
                }
                Err(e) => {
                    Refusal::from(e)
                        .send(session, Style::Text, &gw.metrics)
                        .await
                }
            },
            (Method::GET, "/metrics") => {
                let up = gw.hub.ready().await.is_ok();
                let hub = gw.hub.stats();
                let draining = gw.streams.shutdown.is_draining();
                gw.metrics.hub.set(
                    hub.channels,
                    hub.subscriptions,
                    hub.history_events,
                    up,
                    draining,
                );
                let body = gw.metrics.render();
                respond::send(session, 200, "text/plain; version=0.0.4", body, &[]).await?;
                Ok(true)
            }
            (Method::GET, "/stats") => {
                respond::json(session, 200, &dashboard::stats(gw)).await?;
                Ok(true)
            }
            (Method::GET, "/stats/stream") => self.stats_stream(session).await,
            (Method::GET, "/") => {
                let page = dashboard::PAGE;
                respond::send(session, 200, "text/html; charset=utf-8", page, &[]).await?;
                Ok(true)
            }
            (_, p) if ADMIN_PATHS.contains(&p) => {
                let r = Refusal::new(405, "method", "method not allowed");
                self.refuse(session, r).await
            }
            _ => match webhook::find(&gw.site().config.webhooks, Listener::Admin, &path) {
                Some(hook) => super::webhook::serve(gw, hook, session).await,
                None => {
                    let r = Refusal::new(404, "no_route", format!("no admin endpoint {path}"));
                    self.refuse(session, r).await
                }
            },
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::HTTPStatus(404),
            "the admin listener proxies nothing",
        )
    }
}

//! The admin listener: publish API, webhooks, health, readiness, metrics, stats and a
//! live dashboard. Answered entirely in `request_filter`; nothing is proxied.

use crate::respond;
use crate::sources::{publish, webhook};
use crate::sse::{frame, stream};
use crate::state::Gateway;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::Method;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::{ProxyHttp, Session};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// How often the dashboard's stats stream updates.
pub const DASHBOARD_TICK: Duration = Duration::from_secs(1);

const DASHBOARD: &str = include_str!("dashboard.html");

#[derive(Debug)]
pub struct AdminApp {
    pub gw: Arc<Gateway>,
}

#[derive(Debug)]
pub enum BodyError {
    TooLarge,
    Read,
}

/// Read a request body of at most `max` bytes, refusing early when the
/// declared length is already too large.
pub async fn read_body(session: &mut Session, max: usize) -> Result<Bytes, BodyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(BodyError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(_) => return Err(BodyError::Read),
        }
    }
}

impl AdminApp {
    fn authorized(&self, session: &Session) -> bool {
        let Some(token) = &self.gw.config.admin.token else {
            return true;
        };
        let given = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        bool::from(given.as_bytes().ct_eq(token.as_bytes()))
    }

    async fn refuse(&self, session: &mut Session, status: u16, reason: &str) -> Result<bool> {
        self.gw.metrics.refuse(status);
        respond::json_error(session, status, reason).await?;
        Ok(true)
    }

    async fn publish(&self, session: &mut Session) -> Result<bool> {
        if !self.authorized(session) {
            return self
                .refuse(session, 401, "missing or wrong bearer token")
                .await;
        }
        let body = match read_body(session, self.gw.config.limits.max_body).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => {
                let reason = format!(
                    "body larger than limits.max_body ({} bytes)",
                    self.gw.config.limits.max_body
                );
                return self.refuse(session, 413, &reason).await;
            }
            Err(BodyError::Read) => {
                return self.refuse(session, 400, "could not read the body").await
            }
        };
        let events = match publish::parse(&body) {
            Ok(e) => e,
            Err(why) => return self.refuse(session, 400, &why).await,
        };
        match self.gw.hub.publish(events).await {
            Ok(r) => {
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
            Err(e) => self.refuse(session, 503, &e.to_string()).await,
        }
    }

    pub fn stats(&self) -> serde_json::Value {
        let gw = &self.gw;
        let m = &gw.metrics;
        let routes: serde_json::Map<String, serde_json::Value> = gw
            .router
            .routes()
            .filter(|r| r.is_sse())
            .map(|r| {
                (
                    r.label().to_string(),
                    m.connections.with_label_values(&[r.label()]).get().into(),
                )
            })
            .collect();
        json!({
            "uptime_seconds": gw.started.elapsed().as_secs(),
            "connections": gw.limiter.open(),
            "routes": routes,
            "hub": gw.hub.stats(),
            "events": {
                "published": m.published.get(),
                "duplicates": m.duplicates.get(),
                "delivered": m.delivered.get(),
                "slow_client_disconnects": m.slow_disconnects.get(),
            },
            "draining": gw.shutdown.is_draining(),
        })
    }

    /// The dashboard's feed: the stats object as an SSE event every tick.
    async fn stats_stream(&self, session: &mut Session) -> Result<bool> {
        let gw = &self.gw;
        let _active = gw.shutdown.track();
        session
            .write_response_header(
                Box::new(stream::response_header(session.as_downstream().is_http2())?),
                false,
            )
            .await?;
        session
            .write_response_body(Some(frame::prelude(2000)), false)
            .await?;
        let mut tick = gw.heartbeats.subscribe(DASHBOARD_TICK);
        let mut shutdown = gw.shutdown.watch();
        loop {
            let data = self.stats().to_string();
            let ev = frame::encode(None, Some("stats"), &data).unwrap_or_default();
            session.write_response_body(Some(ev), false).await?;
            tokio::select! {
                _ = async { match tick.as_mut() { Some(t) => { let _ = t.changed().await; } None => tokio::time::sleep(DASHBOARD_TICK).await } } => {}
                _ = shutdown.changed() => break,
                _ = session.downstream_session.read_body_or_idle(true) => break,
            }
        }
        session.downstream_session.set_keepalive(None);
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
            (Method::GET | Method::HEAD, "/readyz") => {
                match gw.hub.ready().await {
                    Ok(()) if !gw.shutdown.is_draining() => {
                        respond::text(session, 200, "ready").await?
                    }
                    Ok(()) => respond::text(session, 503, "draining").await?,
                    Err(e) => respond::text(session, 503, &e.to_string()).await?,
                }
                Ok(true)
            }
            (Method::GET, "/metrics") => {
                let body = gw.metrics.render();
                respond::send(session, 200, "text/plain; version=0.0.4", body, &[]).await?;
                Ok(true)
            }
            (Method::GET, "/stats") => {
                respond::json(session, 200, &self.stats()).await?;
                Ok(true)
            }
            (Method::GET, "/stats/stream") => self.stats_stream(session).await,
            (Method::GET, "/") => {
                respond::send(session, 200, "text/html; charset=utf-8", DASHBOARD, &[]).await?;
                Ok(true)
            }
            (
                _,
                "/publish" | "/publish/" | "/healthz" | "/readyz" | "/metrics" | "/stats"
                | "/stats/stream" | "/",
            ) => self.refuse(session, 405, "method not allowed").await,
            _ => match webhook::find(&gw.config.webhooks, &path) {
                Some(hook) => webhook::serve(gw, hook, session).await,
                None => {
                    self.refuse(session, 404, &format!("no admin endpoint {path}"))
                        .await
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

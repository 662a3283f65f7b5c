//! The demo's legacy app: what ssegate is put in front of. It serves the
//! page and a JSON API through the gateway, and cannot push by itself: it
//! sends a signed webhook when an order is paid, answers `GET /api/prices`
//! when asked (the gateway polls it), hands out per-user JWTs, and publishes
//! notes for one user and a clock tick for everybody to the hub.

use crate::gateway::Gateway;
use crate::http::{body, respond};
use crate::hub::{Event, Payload, Source};
use crate::outbound::{Body, Client, Pool};
use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::Method;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::{ProxyHttp, Session};
use serde_json::json;
use sha2::Sha256;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const PAGE: &str = include_str!("../demo.html");

/// The two demo users, each with their own stream (`user:{jwt.sub}`).
const USERS: [&str; 2] = ["alice", "bob"];

/// What the app knows, shared with its clock.
#[derive(Debug)]
pub(super) struct AppState {
    pub(super) ticks: AtomicU64,
    polls: AtomicU64,
    price_changes: AtomicU64,
    orders: AtomicU64,
    notes: AtomicU64,
    jwt_secret: String,
    hook_secret: String,
    /// The gateway's admin listener, where the app's webhooks go.
    admin: Pool,
    client: Client,
}

impl AppState {
    pub(super) fn new(jwt_secret: String, hook_secret: String, admin: Pool) -> AppState {
        AppState {
            ticks: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            price_changes: AtomicU64::new(0),
            orders: AtomicU64::new(0),
            notes: AtomicU64::new(0),
            jwt_secret,
            hook_secret,
            admin,
            client: Client::new(),
        }
    }
}

/// Publishes one event straight to the hub, as an app with a publish
/// client would (the page's chat, the clock, the per-user notes).
pub(super) async fn publish(
    gw: &Gateway,
    channel: &str,
    event: &str,
    data: String,
) -> Result<crate::hub::PublishReport, crate::hub::BrokerError> {
    gw.hub
        .publish(vec![Event::new(
            channel.into(),
            None,
            Payload::Message {
                event: Some(event.into()),
                data,
            },
            Source::Publish,
        )])
        .await
}

#[derive(Debug)]
pub(super) struct LegacyApp {
    pub(super) gw: Arc<Gateway>,
    pub(super) state: Arc<AppState>,
}

/// Why an action of the app failed; answered as 502 with the reason.
#[derive(Debug)]
struct ActionError(String);

impl LegacyApp {
    /// `POST /api/orders/pay`: the app's "order paid" webhook, signed with
    /// HMAC-SHA256 like any integration webhook, sent to the admin listener.
    async fn pay(&self) -> Result<serde_json::Value, ActionError> {
        let s = &self.state;
        let n = s.orders.fetch_add(1, Ordering::Relaxed) + 1;
        let body = json!({
            "type": "order.paid",
            "order": { "id": 1000 + n, "total": format!("{}.00 EUR", 10 + 7 * n % 90) }
        })
        .to_string();
        let mut mac = Hmac::<Sha256>::new_from_slice(s.hook_secret.as_bytes())
            .map_err(|e| ActionError(e.to_string()))?;
        mac.update(body.as_bytes());
        let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let mut req = pingora_http::RequestHeader::build("POST", b"/hooks/orders", None)
            .map_err(|e| ActionError(e.to_string()))?;
        for (k, v) in [
            ("content-type", "application/json".to_string()),
            ("content-length", body.len().to_string()),
            ("x-signature", signature.clone()),
        ] {
            req.insert_header(k, v)
                .map_err(|e| ActionError(e.to_string()))?;
        }
        let body = Bytes::from(body);
        let resp = s
            .client
            .send(&s.admin, &req, Body::Full(&body))
            .await
            .map_err(|e| ActionError(e.to_string()))?;
        let status = resp.status();
        let answer = resp
            .read_bounded(4096)
            .await
            .map_err(|e| ActionError(e.to_string()))?;
        Ok(json!({
            "webhook": "POST /hooks/orders (admin listener)",
            "signature": signature,
            "status": status,
            "answer": String::from_utf8_lossy(&answer),
        }))
    }

    /// `GET /api/prices`: changes every 5 s on its own, or when bumped.
    fn prices(&self) -> serde_json::Value {
        let s = &self.state;
        s.polls.fetch_add(1, Ordering::Relaxed);
        let epoch = s.ticks.load(Ordering::Relaxed) / 5 + s.price_changes.load(Ordering::Relaxed);
        let eur = 10_800 + (epoch * 37) % 200;
        let btc = 61_000 + (epoch * 331) % 3_000;
        json!({ "EURUSD": format!("{}.{:04}", eur / 10_000, eur % 10_000), "BTCUSD": btc })
    }

    fn token(&self, user: &str) -> Result<String, ActionError> {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|e| ActionError(e.to_string()))?
            .as_secs()
            + 3600;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({ "sub": user, "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(self.state.jwt_secret.as_bytes()),
        )
        .map_err(|e| ActionError(e.to_string()))
    }

    async fn note(&self, user: &str) -> Result<serde_json::Value, ActionError> {
        let n = self.state.notes.fetch_add(1, Ordering::Relaxed) + 1;
        let data = json!({ "n": n, "text": format!("note #{n}, for {user} only") }).to_string();
        publish(&self.gw, &format!("user:{user}"), "note", data)
            .await
            .map_err(|e| ActionError(e.to_string()))?;
        Ok(json!({ "published": 1, "channel": format!("user:{user}") }))
    }

    async fn say(&self, session: &mut Session) -> Result<(u16, serde_json::Value)> {
        let Ok(body) = body::read(session, 4096).await else {
            return Ok((413, json!({ "error": "message too long" })));
        };
        let text = String::from_utf8_lossy(&body).trim().to_string();
        if text.is_empty() {
            return Ok((400, json!({ "error": "empty message" })));
        }
        let data = json!({ "text": text }).to_string();
        Ok(
            match publish(&self.gw, "room:demo", "message", data).await {
                Ok(_) => (202, json!({ "published": 1 })),
                Err(e) => (503, json!({ "error": e.to_string() })),
            },
        )
    }

    async fn route(&self, session: &mut Session) -> Result<(u16, serde_json::Value)> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        let query = session.req_header().uri.query().unwrap_or("").to_string();
        let done = |r: Result<serde_json::Value, ActionError>| match r {
            Ok(v) => (200, v),
            Err(e) => (502, json!({ "error": e.0 })),
        };
        Ok(match (method, path.as_str()) {
            (Method::GET, "/api/hello") => (200, json!({ "hello": "from the legacy app" })),
            (Method::POST, "/api/say") => return self.say(session).await,
            (Method::POST, "/api/orders/pay") => done(self.pay().await),
            (Method::GET, "/api/prices") => (200, self.prices()),
            (Method::POST, "/api/prices/change") => {
                self.state.price_changes.fetch_add(1, Ordering::Relaxed);
                (200, json!({ "changed": true }))
            }
            (Method::GET, "/api/stats") => {
                let s = &self.state;
                let polls = s.polls.load(Ordering::Relaxed);
                let tick = s.ticks.load(Ordering::Relaxed);
                (200, json!({ "polls": polls, "tick": tick }))
            }
            (Method::GET, "/api/token") => {
                let user = form_urlencoded::parse(query.as_bytes())
                    .find(|(k, _)| k == "user")
                    .map(|(_, v)| v.into_owned());
                match user.as_deref().filter(|u| USERS.contains(u)) {
                    Some(u) => done(self.token(u).map(|t| json!({ "user": u, "token": t }))),
                    None => (404, json!({ "error": "no such user", "users": USERS })),
                }
            }
            (Method::POST, p) if p.starts_with("/api/notes/") => {
                match USERS.iter().find(|u| p == format!("/api/notes/{u}")) {
                    Some(u) => done(self.note(u).await),
                    None => (404, json!({ "error": "no such user", "users": USERS })),
                }
            }
            _ => (404, json!({ "error": "not found" })),
        })
    }
}

#[async_trait]
impl ProxyHttp for LegacyApp {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let req = session.req_header();
        if req.method == Method::GET && req.uri.path() == "/" {
            respond::send(session, 200, "text/html; charset=utf-8", PAGE, &[]).await?;
            return Ok(true);
        }
        let (status, value) = self.route(session).await?;
        respond::json(session, status, &value).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(
            ErrorType::HTTPStatus(404),
            "the demo backend proxies nothing",
        )
    }
}

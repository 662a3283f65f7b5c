//! One request to a webhook's path, on whichever listener serves it: the
//! method, the bounded body, verification and mapping (`sources::webhook`),
//! the publish, the answer and the `ssegate_webhooks_total` count. The admin
//! and public listeners both call `serve`, so a webhook behaves the same on
//! either.

use super::body;
use super::refuse::{Refusal, Style};
use super::respond;
use crate::config::Webhook;
use crate::gateway::Gateway;
use crate::sources::webhook;
use pingora_error::Result;
use pingora_proxy::Session;
use serde_json::json;
use std::time::SystemTime;

/// Answer one webhook request; Ok(true) as `request_filter` expects.
pub(crate) async fn serve(gw: &Gateway, hook: &Webhook, session: &mut Session) -> Result<bool> {
    let span = std::sync::Mutex::new(super::access::span(gw, session, "webhook"));
    let count = |outcome: &'static str| {
        gw.metrics
            .webhooks
            .with_label_values(&[hook.path.as_str(), outcome])
            .inc();
        if let Some(s) = span.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            s.set("http.route", hook.path.clone());
            s.set("ssegate.outcome", outcome);
            if !matches!(outcome, "accepted" | "duplicate") {
                s.fail(outcome);
            }
        }
    };
    if !hook.methods.contains(&session.req_header().method) {
        count("bad_method");
        let r = Refusal::method_not_allowed(&hook.methods, "method not allowed");
        return refuse(gw, session, r).await;
    }
    let body = match body::read(session, gw.site().config.limits.max_body).await {
        Ok(b) => b,
        Err(e) => {
            count(match e {
                body::BodyError::TooLarge(_) => "too_large",
                body::BodyError::Read => "bad_request",
            });
            return refuse(gw, session, e.into()).await;
        }
    };
    let head = session.req_header();
    let req = webhook::Inbound {
        headers: &head.headers,
        query: head.uri.query().unwrap_or(""),
        body: &body,
    };
    let events = match webhook::check(hook, &req, SystemTime::now()) {
        Ok(events) => events,
        Err(e) => {
            tracing::debug!(path = %hook.path, reason = %e, "webhook refused");
            count(e.outcome());
            return refuse(gw, session, e.into()).await;
        }
    };
    let mut channels: Vec<String> = Vec::new();
    for e in &events {
        if !channels.contains(&e.channel) {
            channels.push(e.channel.clone());
        }
    }
    let total = events.len();
    match gw.hub.publish(events).await {
        Ok(r) if total > 0 && r.duplicates == total => {
            count("duplicate");
            respond::json(session, 200, &json!({ "duplicate": true })).await?;
        }
        Ok(r) => {
            count("accepted");
            let mut out = json!({ "published": r.published, "channels": channels });
            if r.duplicates > 0 {
                out["duplicates"] = r.duplicates.into();
            }
            respond::json(session, 202, &out).await?;
        }
        Err(e) => {
            count("unavailable");
            return refuse(gw, session, e.into()).await;
        }
    }
    Ok(true)
}

/// Webhook senders get JSON on both listeners.
async fn refuse(gw: &Gateway, session: &mut Session, r: Refusal) -> Result<bool> {
    r.send(session, Style::Json, &gw.metrics).await
}

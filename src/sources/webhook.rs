//! Webhooks: a backend's callback → verified → mapped by its YAML entry into
//! hub events → one answer. Nothing is published unless every event of the
//! request could be built.
//!
//! The body is JSON, or a form when `Content-Type` says
//! `application/x-www-form-urlencoded`; a form becomes a JSON object of
//! field → value (the first value of a repeated field), so `{/field}`,
//! `{form.field}` and the default `data` (the whole form as JSON) all work.
//! A form-labelled body that starts with `{` or `[` and parses as JSON is
//! JSON: that is what `curl -d '{…}'` sends.
//! With `each: /items` the pointers of channel, event, id and data are
//! relative to each element, while `{header.x}`, `{query.x}` and `{form.x}`
//! still read the request.

use crate::admin::{read_body, BodyError};
use crate::auth::signature;
use crate::config::template::{RenderError, Template, Var};
use crate::config::{Webhook, WebhookData};
use crate::hub::{Event, Payload};
use crate::respond;
use crate::sse::frame::check_event_name;
use crate::state::Gateway;
use http::HeaderMap;
use pingora_proxy::Session;
use serde_json::{json, Map, Value};
use std::borrow::Cow;
use std::time::SystemTime;

/// Events one request may publish: `each` over a large array must not turn
/// one POST into an unbounded batch under the hub's lock.
pub const MAX_EVENTS: usize = 10_000;

/// The parts of a request that mapping and verification read.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'r> {
    pub headers: &'r HeaderMap,
    /// The raw query string, without `?`.
    pub query: &'r str,
    pub body: &'r [u8],
}

/// A refused request: its status, metrics outcome and one-line reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub outcome: &'static str,
    pub reason: String,
}

fn refused(status: u16, outcome: &'static str, reason: impl Into<String>) -> Refused {
    Refused {
        status,
        outcome,
        reason: reason.into(),
    }
}

/// The webhook configured at exactly `path`.
pub fn find<'w>(hooks: &'w [Webhook], path: &str) -> Option<&'w Webhook> {
    hooks.iter().find(|h| h.path == path)
}

/// Verify, then map: the events this request publishes, or why it is refused.
pub fn check(hook: &Webhook, req: &Inbound<'_>, now: SystemTime) -> Result<Vec<Event>, Refused> {
    let verified = match &hook.verify {
        Some(scheme) => signature::verify(scheme, req.headers, req.body, now)
            .map_err(|r| refused(401, r.outcome(), r.to_string()))?,
        None => signature::Verified::default(),
    };
    map(hook, req, verified.delivery_id.as_deref())
}

/// The body as JSON, and whether it came from a form.
fn parse_body(req: &Inbound<'_>) -> Result<(Value, bool), Refused> {
    let is_form = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    // curl -d and some legacy clients label JSON as a form; no real form
    // starts with `{` or `[`, so such a body that parses as JSON is JSON.
    let looks_json = req.body.trim_ascii_start().starts_with(b"{")
        || req.body.trim_ascii_start().starts_with(b"[");
    if is_form && looks_json {
        if let Ok(v) = serde_json::from_slice(req.body) {
            return Ok((v, false));
        }
    }
    if is_form {
        let mut fields = Map::new();
        for (k, v) in form_urlencoded::parse(req.body) {
            fields
                .entry(k.into_owned())
                .or_insert_with(|| Value::String(v.into_owned()));
        }
        return Ok((Value::Object(fields), true));
    }
    serde_json::from_slice(req.body)
        .map(|v| (v, false))
        .map_err(|e| refused(400, "bad_json", format!("body is not JSON: {e}")))
}

/// A JSON value as template text; null counts as no value.
fn text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        other => Some(Cow::Owned(other.to_string())),
    }
}

/// Where one element's placeholders take their values.
struct Scope<'a> {
    req: &'a Inbound<'a>,
    root: &'a Value,
    is_form: bool,
    element: &'a Value,
    /// "in the body" or "in element 3 of /items", for error messages.
    place: String,
}

impl<'a> Scope<'a> {
    fn lookup(&self, v: &Var) -> Option<Cow<'a, str>> {
        match v {
            Var::Pointer(p) => self.element.pointer(p).and_then(text),
            Var::Header(h) => self
                .req
                .headers
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
                .map(Cow::Borrowed),
            Var::Query(q) => form_urlencoded::parse(self.req.query.as_bytes())
                .find(|(k, _)| k == q)
                .map(|(_, v)| v),
            Var::Form(f) if self.is_form => self.root.get(f.as_str()).and_then(text),
            // Rejected at load: path parameters, jwt and auth do not exist here.
            _ => None,
        }
    }

    fn refusal(&self, what: &str, e: RenderError) -> Refused {
        match e {
            RenderError::Missing(v) if v.starts_with("{/") => refused(
                400,
                "missing_pointer",
                format!(
                    "{what}: pointer {} matches nothing {}",
                    v.trim_matches(['{', '}']),
                    self.place
                ),
            ),
            RenderError::Missing(v) => refused(
                400,
                "missing_value",
                format!("{what}: {v} has no value in this request"),
            ),
            RenderError::BadValue(v, why) => {
                refused(400, "bad_channel", format!("{what}: {v}: {why}"))
            }
        }
    }

    fn render(&self, what: &str, t: &Template) -> Result<String, Refused> {
        t.render(|v| self.lookup(v))
            .map_err(|e| self.refusal(what, e))
    }

    fn data(&self, data: &WebhookData) -> Result<String, Refused> {
        match data {
            WebhookData::Template(t) => self.render("data", t),
            WebhookData::Pointer(p) => match self.element.pointer(p) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Ok(v.to_string()),
                None => Err(refused(
                    400,
                    "missing_pointer",
                    format!("data: pointer {p} matches nothing {}", self.place),
                )),
            },
        }
    }
}

/// The events of a verified request. `delivery_id` (Standard Webhooks'
/// `webhook-id`) dedupes when no `id:` is configured.
pub fn map(
    hook: &Webhook,
    req: &Inbound<'_>,
    delivery_id: Option<&str>,
) -> Result<Vec<Event>, Refused> {
    let (root, is_form) = parse_body(req)?;
    let elements: Vec<&Value> = match &hook.each {
        None => vec![&root],
        Some(p) => match root.pointer(p) {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(_) => {
                return Err(refused(
                    400,
                    "bad_json",
                    format!("each: pointer {p} is not an array"),
                ))
            }
            None => {
                return Err(refused(
                    400,
                    "missing_pointer",
                    format!("each: pointer {p} matches nothing in the body"),
                ))
            }
        },
    };
    if elements.len().saturating_mul(hook.channels.len()) > MAX_EVENTS {
        return Err(refused(
            400,
            "too_many",
            format!("this request would publish more than {MAX_EVENTS} events"),
        ));
    }
    let mut events = Vec::new();
    for (i, element) in elements.iter().enumerate() {
        let place = match &hook.each {
            Some(p) if p.is_empty() => format!("in element {i} of the body"),
            Some(p) => format!("in element {i} of {p}"),
            None => "in the body".to_string(),
        };
        let scope = Scope {
            req,
            root: &root,
            is_form,
            element,
            place,
        };
        let event = match &hook.event {
            Some(t) => Some(scope.render("event", t)?).filter(|e| !e.is_empty()),
            None => None,
        };
        if let Some(e) = &event {
            check_event_name(e).map_err(|e| refused(400, "bad_value", format!("event: {e}")))?;
        }
        let id = match (&hook.id, delivery_id) {
            (Some(t), _) => Some(scope.render("id", t)?).filter(|id| !id.is_empty()),
            // One delivery fans out to several events: each needs its own id.
            (None, Some(d)) if hook.each.is_some() => Some(format!("{d}:{i}")),
            (None, d) => d.map(str::to_string),
        };
        if id
            .as_ref()
            .is_some_and(|id| id.len() > 256 || id.contains(['\r', '\n', '\0']))
        {
            return Err(refused(
                400,
                "bad_value",
                "id: must be at most 256 bytes without CR, LF or NUL",
            ));
        }
        let data = scope.data(&hook.data)?;
        for t in &hook.channels {
            let channel = t
                .render_channel(|v| scope.lookup(v))
                .map_err(|e| scope.refusal("channel", e))?;
            events.push(Event {
                channel,
                dedupe_id: id.clone(),
                payload: Payload::Message {
                    event: event.clone(),
                    data: data.clone(),
                },
            });
        }
    }
    Ok(events)
}

/// Answer one request to `hook`'s path on the admin listener.
pub async fn serve(
    gw: &Gateway,
    hook: &Webhook,
    session: &mut Session,
) -> pingora_error::Result<bool> {
    let count = |outcome: &str| {
        gw.metrics
            .webhooks
            .with_label_values(&[hook.path.as_str(), outcome])
            .inc()
    };
    let method = &session.req_header().method;
    if !hook.methods.contains(method) {
        count("bad_method");
        gw.metrics.refuse(405);
        let allow = hook
            .methods
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let body = json!({ "error": "method not allowed" }).to_string();
        respond::send(session, 405, "application/json", body, &[("allow", allow)]).await?;
        return Ok(true);
    }
    let max = gw.config.limits.max_body;
    let result = match read_body(session, max).await {
        Err(BodyError::TooLarge) => Err(refused(
            413,
            "too_large",
            format!("body larger than limits.max_body ({max} bytes)"),
        )),
        Err(BodyError::Read) => Err(refused(400, "bad_request", "could not read the body")),
        Ok(body) => {
            let head = session.req_header();
            let req = Inbound {
                headers: &head.headers,
                query: head.uri.query().unwrap_or(""),
                body: &body,
            };
            check(hook, &req, SystemTime::now())
        }
    };
    let events = match result {
        Ok(events) => events,
        Err(r) => {
            tracing::debug!(path = %hook.path, status = r.status, reason = %r.reason, "webhook refused");
            count(r.outcome);
            gw.metrics.refuse(r.status);
            respond::json_error(session, r.status, &r.reason).await?;
            return Ok(true);
        }
    };
    let mut channels: Vec<&str> = Vec::new();
    for e in &events {
        if !channels.contains(&e.channel.as_str()) {
            channels.push(&e.channel);
        }
    }
    let channels: Vec<String> = channels.into_iter().map(str::to_string).collect();
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
            gw.metrics.refuse(503);
            respond::json_error(session, 503, &e.to_string()).await?;
        }
    }
    Ok(true)
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;

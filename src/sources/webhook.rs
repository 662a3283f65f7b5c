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

use crate::auth::signature::{self, SignatureError};
use crate::channel;
use crate::config::{Listener, Webhook, WebhookData};
use crate::hub::{Event, Payload, Source};
use crate::template::{RenderError, Template, Var};
use crate::values::RequestValues;
use crate::wire::check_event_name;
use http::HeaderMap;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::time::SystemTime;

/// Events one request may publish: `each` over a large array must not turn
/// one POST into an unbounded batch under the hub's lock.
pub(crate) const MAX_EVENTS: usize = 10_000;

/// The parts of a request that mapping and verification read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Inbound<'r> {
    pub headers: &'r HeaderMap,
    /// The raw query string, without `?`.
    pub query: &'r str,
    pub body: &'r [u8],
}

/// Why a webhook request publishes nothing; each sentence says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WebhookError {
    /// Verification failed (missing, malformed, wrong or stale signature).
    Signature(SignatureError),
    /// The body is not JSON, or a pointer that must find an array does not.
    BadJson(String),
    /// A JSON pointer of the mapping matches nothing.
    MissingPointer(String),
    /// A `{header.x}`, `{query.x}` or `{form.x}` has no value.
    MissingValue(String),
    /// A value would put a forbidden character into a channel name.
    BadChannel(String),
    /// An event name or id that cannot be sent.
    BadValue(String),
    /// More events than one request may publish.
    TooMany,
}

impl WebhookError {
    /// The `outcome` label of `ssegate_webhooks_total`.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            WebhookError::Signature(e) => e.outcome(),
            WebhookError::BadJson(_) => "bad_json",
            WebhookError::MissingPointer(_) => "missing_pointer",
            WebhookError::MissingValue(_) => "missing_value",
            WebhookError::BadChannel(_) => "bad_channel",
            WebhookError::BadValue(_) => "bad_value",
            WebhookError::TooMany => "too_many",
        }
    }
}

impl fmt::Display for WebhookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WebhookError::Signature(e) => e.fmt(f),
            WebhookError::BadJson(why)
            | WebhookError::MissingPointer(why)
            | WebhookError::MissingValue(why)
            | WebhookError::BadChannel(why)
            | WebhookError::BadValue(why) => f.write_str(why),
            WebhookError::TooMany => write!(
                f,
                "this request would publish more than {MAX_EVENTS} events"
            ),
        }
    }
}

impl std::error::Error for WebhookError {}

/// The webhook `listener` serves at exactly `path`.
pub(crate) fn find<'w>(
    hooks: &'w [Webhook],
    listener: Listener,
    path: &str,
) -> Option<&'w Webhook> {
    hooks
        .iter()
        .find(|h| h.listener == listener && h.path == path)
}

/// Verify, then map: the events this request publishes, or why it is refused.
pub(crate) fn check(
    hook: &Webhook,
    req: &Inbound<'_>,
    now: SystemTime,
) -> Result<Vec<Event>, WebhookError> {
    let verified = match &hook.verify {
        Some(scheme) => signature::verify(scheme, req.headers, req.body, now)
            .map_err(WebhookError::Signature)?,
        None => signature::Verified::default(),
    };
    map(hook, req, verified.delivery_id.as_deref())
}

/// The body as JSON, and whether it came from a form.
fn parse_body(req: &Inbound<'_>) -> Result<(Value, bool), WebhookError> {
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
        .map_err(|e| WebhookError::BadJson(format!("body is not JSON: {e}")))
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
    /// `{header.x}` and `{query.x}`, as for any request.
    values: &'a RequestValues<'a>,
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
            Var::Form(f) if self.is_form => self.root.get(f.as_str()).and_then(text),
            Var::Form(_) => None,
            // Path parameters, jwt and auth are refused at load: none here.
            other => self.values.get(other),
        }
    }

    fn refusal(&self, what: &str, e: RenderError) -> WebhookError {
        match e {
            RenderError::Missing(v) if v.starts_with("{/") => {
                WebhookError::MissingPointer(format!(
                    "{what}: pointer {} matches nothing {}",
                    v.trim_matches(['{', '}']),
                    self.place
                ))
            }
            RenderError::Missing(v) => {
                WebhookError::MissingValue(format!("{what}: {v} has no value in this request"))
            }
            RenderError::BadValue(v, why) => {
                WebhookError::BadChannel(format!("{what}: {v}: {why}"))
            }
        }
    }

    fn render(&self, what: &str, t: &Template) -> Result<String, WebhookError> {
        t.render(|v| self.lookup(v))
            .map_err(|e| self.refusal(what, e))
    }

    fn data(&self, data: &WebhookData) -> Result<String, WebhookError> {
        match data {
            WebhookData::Template(t) => self.render("data", t),
            WebhookData::Pointer(p) => match self.element.pointer(p) {
                Some(Value::String(s)) => Ok(s.clone()),
                Some(v) => Ok(v.to_string()),
                None => Err(WebhookError::MissingPointer(format!(
                    "data: pointer {p} matches nothing {}",
                    self.place
                ))),
            },
        }
    }
}

/// The events of a verified request. `delivery_id` (Standard Webhooks'
/// `webhook-id`) dedupes when no `id:` is configured.
pub(crate) fn map(
    hook: &Webhook,
    req: &Inbound<'_>,
    delivery_id: Option<&str>,
) -> Result<Vec<Event>, WebhookError> {
    let (root, is_form) = parse_body(req)?;
    let values = RequestValues::new(&[], Some(req.query), req.headers);
    let elements: Vec<&Value> = match &hook.each {
        None => vec![&root],
        Some(p) => match root.pointer(p) {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(_) => {
                return Err(WebhookError::BadJson(format!(
                    "each: pointer {p} is not an array"
                )))
            }
            None => {
                return Err(WebhookError::MissingPointer(format!(
                    "each: pointer {p} matches nothing in the body"
                )))
            }
        },
    };
    if elements.len().saturating_mul(hook.channels.len()) > MAX_EVENTS {
        return Err(WebhookError::TooMany);
    }
    let mut events = Vec::new();
    for (i, element) in elements.iter().enumerate() {
        let place = match &hook.each {
            Some(p) if p.is_empty() => format!("in element {i} of the body"),
            Some(p) => format!("in element {i} of {p}"),
            None => "in the body".to_string(),
        };
        let scope = Scope {
            values: &values,
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
            check_event_name(e).map_err(|e| WebhookError::BadValue(format!("event: {e}")))?;
            if channel::is_reserved_event(e) {
                return Err(WebhookError::BadValue(format!(
                    "event: `{e}` is in the gateway's own `ssegate.` namespace"
                )));
            }
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
            return Err(WebhookError::BadValue(
                "id: must be at most 256 bytes without CR, LF or NUL".into(),
            ));
        }
        let data = scope.data(&hook.data)?;
        for t in &hook.channels {
            let channel = t
                .render_channel(|v| scope.lookup(v))
                .map_err(|e| scope.refusal("channel", e))?;
            events.push(Event::new(
                channel,
                id.clone(),
                Payload::Message {
                    event: event.clone(),
                    data: data.clone(),
                },
                Source::Webhook,
            ));
        }
    }
    Ok(events)
}

#[cfg(test)]
#[path = "webhook_tests.rs"]
mod tests;

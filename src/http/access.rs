//! The access log (`access_log: true`): one line per request on the public
//! listener — passed through, answered by a GRIP or recorded route's
//! backend, or refused — and, for a request that became a stream (SSE, a
//! GRIP hold, a record reader), one line when that ends, reported by the
//! stream engine itself (`stream::Report`, given in `streams::run`) with
//! what it wrote and why it ended.
//!
//! Lines are INFO events of target `ssegate::access`, so they come out in
//! the process's log format (`--log-format json|text`) with everything else;
//! `RUST_LOG=warn,ssegate::access=info` keeps only them. Query strings are
//! never logged: they may carry tokens (`?access_token=`).
//!
//! Each such request has an `X-Request-Id`: the client's when it sent a
//! usable one, else a new one. It is set on the request (so it goes to the
//! upstream with it) and returned on the answers of upstreams. Also here:
//! the server span of a request the gateway answers itself (`span`).

use crate::gateway::Gateway;
use crate::stream::{End, Opening, Report};
use crate::telemetry;
use http::HeaderValue;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::net::IpAddr;
use std::time::Instant;

pub(crate) const REQUEST_ID: &str = "x-request-id";

/// What every line says about the request.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub id: String,
    pub method: http::Method,
    /// Without the query.
    pub path: String,
    pub client: Option<IpAddr>,
    pub started: Instant,
}

impl Request {
    /// The request's line data; its `X-Request-Id` is made sure of here.
    /// `client` is the client as the gateway established it (the peer, or
    /// what a trusted proxy says it saw).
    pub(crate) fn of(session: &mut Session, started: Instant, client: Option<IpAddr>) -> Request {
        let id = request_id(session.req_header().headers.get(REQUEST_ID));
        // ok to ignore: an id is a valid header value (checked or generated).
        let _ = session
            .req_header_mut()
            .insert_header(REQUEST_ID, id.as_str());
        let req = session.req_header();
        Request {
            id,
            method: req.method.clone(),
            path: req.uri.path().to_string(),
            client,
            started,
        }
    }

    fn client(&self) -> String {
        self.client.map_or_else(|| "-".into(), |ip| ip.to_string())
    }
}

/// The response head with the request's id, when it has one.
pub(crate) fn tagged(mut head: ResponseHeader, request_id: Option<&str>) -> ResponseHeader {
    if let Some(id) = request_id {
        // ok to ignore: an id is a valid header value.
        let _ = head.insert_header(REQUEST_ID, id);
    }
    head
}

/// A server span for a request the gateway answers itself, when tracing is on.
pub(crate) fn span(gw: &Gateway, session: &Session, name: &'static str) -> Option<telemetry::Span> {
    let t = gw.telemetry.as_ref()?;
    let req = session.req_header();
    let mut span = t.request_span(name, telemetry::Kind::Server, &req.headers);
    span.set("url.path", req.uri.path().to_string());
    Some(span)
}

/// The client's id when it is usable (1 to 128 visible ASCII characters),
/// else a new random one.
pub(crate) fn request_id(given: Option<&HeaderValue>) -> String {
    let usable = given
        .and_then(|v| v.to_str().ok())
        .filter(|v| (1..=128).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_graphic()));
    match usable {
        Some(v) => v.to_string(),
        None => format!("{:032x}", rand::random::<u128>()),
    }
}

fn millis(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

/// The line of a request that did not become a stream.
pub(crate) fn request(
    req: &Request,
    route: Option<&str>,
    upstream: Option<&str>,
    status: u16,
    bytes: usize,
    error: Option<&str>,
) {
    tracing::info!(
        target: "ssegate::access",
        kind = %"request",
        route = %route.unwrap_or("-"),
        method = %req.method,
        path = %req.path,
        status,
        duration_ms = millis(req.started),
        bytes,
        upstream = %upstream.unwrap_or("-"),
        end = %error.unwrap_or("done"),
        client = %req.client(),
        request_id = %req.id,
    );
}

/// The report (a `StreamLine`) of a stream on route `label` that opens
/// with `opening` (None: the SSE opening). A given opening is a GRIP
/// hold's, or a recorded reply's (the one whose body is an event stream).
pub(crate) fn stream_report(
    req: Request,
    label: &str,
    opening: Option<&Opening>,
) -> Box<Box<dyn Report>> {
    let (kind, status) = match opening {
        None => ("stream", 200),
        Some(o) if o.event_stream => ("record", o.head.status.as_u16()),
        Some(o) => ("hold", o.head.status.as_u16()),
    };
    Box::new(Box::new(StreamLine {
        req,
        route: label.to_string(),
        kind,
        status,
        events: 0,
        bytes: 0,
    }))
}

/// A stream's, a GRIP hold's or a record reader's line, written when the
/// stream ends.
#[derive(Debug)]
struct StreamLine {
    req: Request,
    route: String,
    /// "stream" (an SSE route), "hold" (a GRIP hold) or "record" (a
    /// recorded reply's reader).
    kind: &'static str,
    status: u16,
    events: u64,
    bytes: u64,
}

impl Report for StreamLine {
    fn wrote(&mut self, events: u64, bytes: usize) {
        self.events += events;
        self.bytes += bytes as u64;
    }

    fn ended(self: Box<Self>, end: End) {
        let req = &self.req;
        tracing::info!(
            target: "ssegate::access",
            kind = %self.kind,
            route = %self.route,
            method = %req.method,
            path = %req.path,
            status = self.status,
            duration_ms = millis(req.started),
            bytes = self.bytes,
            events = self.events,
            end = %end.label(),
            client = %req.client(),
            request_id = %req.id,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usable_id_is_kept_and_anything_else_replaced() {
        let keep = HeaderValue::from_static("abc-123_x.y");
        assert_eq!(request_id(Some(&keep)), "abc-123_x.y");
        let spaced = HeaderValue::from_static("a b");
        let long = HeaderValue::from_str(&"x".repeat(129)).unwrap();
        for bad in [None, Some(&spaced), Some(&long)] {
            let id = request_id(bad);
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        assert_ne!(request_id(None), request_id(None));
    }
}

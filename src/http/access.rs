//! The access log (`access_log: true`): one line per request on the public
//! listener — passed through, answered by a GRIP backend, or refused — and,
//! for a request that became an SSE stream or a GRIP hold, one line when
//! that ends, reported by the stream engine itself (`stream::Report`) with
//! what it wrote and why it ended.
//!
//! Lines are INFO events of target `ssegate::access`, so they come out in
//! the process's log format (`--log-format json|text`) with everything else;
//! `RUST_LOG=warn,ssegate::access=info` keeps only them. Query strings are
//! never logged: they may carry tokens (`?access_token=`).
//!
//! Each such request has an `X-Request-Id`: the client's when it sent a
//! usable one, else a new one. It is set on the request (so it goes to the
//! upstream with it) and returned on proxied and GRIP responses.

use crate::stream::{End, Report};
use http::HeaderValue;
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
    pub(crate) fn of(session: &mut Session, started: Instant) -> Request {
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
            client: session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip()),
            started,
        }
    }

    fn client(&self) -> String {
        self.client.map_or_else(|| "-".into(), |ip| ip.to_string())
    }
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

/// A stream's or a GRIP hold's line, written when the stream ends.
#[derive(Debug)]
pub(crate) struct StreamLine {
    pub req: Request,
    pub route: String,
    /// "stream" (an SSE route) or "hold" (a GRIP hold).
    pub kind: &'static str,
    pub status: u16,
    pub events: u64,
    pub bytes: u64,
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

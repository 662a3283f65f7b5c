//! CORS for streams (`cors:` of `sse`): which headers a stream's response
//! carries for the request's `Origin`, and the answer to a preflight.
//!
//! An origin is allowed only when listed (or with `"*"`, which never comes
//! with credentials); the answer then names that one origin and says
//! `Vary: Origin`, so no cache hands one origin's answer to another. A
//! request from an origin not listed gets no CORS header at all: the
//! browser refuses the response, the stream itself is the same.

use crate::config::{Cors, CorsOrigins};
use http::header::{self, HeaderName, HeaderValue};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Request headers a cross-origin stream may carry. `Last-Event-ID` is
/// what EventSource sends on a reconnect; polyfills send the others.
const ALLOW_HEADERS: &str = "last-event-id, authorization, cache-control";

/// Extra response headers of one stream.
pub(crate) type Headers = Vec<(HeaderName, HeaderValue)>;

/// The request's `Origin` when `cors` allows it, as the value to answer.
fn allowed(cors: &Cors, req: &RequestHeader) -> Option<HeaderValue> {
    let origin = req.headers.get(header::ORIGIN)?;
    match &cors.origins {
        CorsOrigins::Any => Some(HeaderValue::from_static("*")),
        CorsOrigins::List(list) => {
            let given = origin.to_str().ok()?.to_ascii_lowercase();
            list.contains(&given).then(|| origin.clone())
        }
    }
}

/// The CORS headers of a response to `req`.
pub(crate) fn headers(cors: &Cors, req: &RequestHeader) -> Headers {
    let mut out = Headers::new();
    if let Some(origin) = allowed(cors, req) {
        out.push((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin));
        if cors.credentials {
            out.push((
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            ));
        }
    }
    if matches!(cors.origins, CorsOrigins::List(_)) {
        out.push((header::VARY, HeaderValue::from_static("Origin")));
    }
    out
}

/// A CORS preflight: `OPTIONS` with `Origin` and the method it asks for.
pub(crate) fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(header::ORIGIN)
        && req
            .headers
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answer a preflight for a stream (`GET` only): `204`, with the
/// permissions only when the origin is allowed.
pub(crate) async fn preflight(session: &mut Session, cors: &Cors) -> pingora_error::Result<bool> {
    let req = session.req_header();
    let mut resp = ResponseHeader::build(204, Some(8))?;
    if allowed(cors, req).is_some() {
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_METHODS, "GET")?;
        resp.insert_header(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS)?;
        resp.insert_header(
            header::ACCESS_CONTROL_MAX_AGE,
            cors.max_age.as_secs().to_string(),
        )?;
    }
    for (k, v) in headers(cors, req) {
        resp.append_header(k, v)?;
    }
    resp.insert_header(header::CONTENT_LENGTH, "0")?;
    session.write_response_header(Box::new(resp), true).await?;
    Ok(true)
}

/// Put the CORS headers of `req` on a GRIP hold's response head, in place
/// of any the backend sent.
pub(crate) fn apply(cors: &Cors, req: &RequestHeader, head: &mut ResponseHeader) {
    head.remove_header(&header::ACCESS_CONTROL_ALLOW_ORIGIN);
    head.remove_header(&header::ACCESS_CONTROL_ALLOW_CREDENTIALS);
    for (k, v) in headers(cors, req) {
        // ok to ignore: a known name and a value that was a header already.
        let _ = match k {
            header::VARY => head.append_header(k, v).map(drop),
            _ => head.insert_header(k, v),
        };
    }
}

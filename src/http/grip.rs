//! A request on a `grip: true` route, sent to the backend by the gateway
//! itself (not by pingora's proxy loop), through the one outbound client:
//! that way the gateway sees the response head before anything reaches the
//! client, and a hold does not pin an upstream connection for its lifetime
//! (the backend's connection goes back to the pool once the hold's body is
//! read).
//!
//! An ordinary response is streamed through chunk by chunk as it arrives
//! (never buffered whole); a request body is streamed to the backend the
//! same way. A hold returns its head and body to `public`, which runs it on
//! the stream engine like any SSE stream.

use super::refuse::Refusal;
use crate::config::GripRoute;
use crate::grip::{self, Hold, InstructionError};
use crate::outbound::{Body, BodySource, Client, Forwarded, Pool, Response};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// What became of the request.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// An ordinary response was sent (or the client went away).
    Done,
    /// The backend holds the client: `head` and `body` go first.
    Hold(Box<HoldStart>),
}

#[derive(Debug)]
pub(crate) struct HoldStart {
    pub hold: Hold,
    pub head: ResponseHeader,
    pub body: Bytes,
}

/// Connection-level headers that are not passed on in either direction.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// The client's body, read as the backend takes it.
struct ClientBody<'s>(&'s mut Session);

#[async_trait]
impl BodySource for ClientBody<'_> {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ()> {
        self.0.read_request_body().await.map_err(|_| ())
    }
}

/// The request as the backend gets it: the client's method, target and
/// headers without GRIP headers (a client must not forge the gateway's
/// signature) or connection-level ones; who the client is; and `Grip-Sig`.
fn backend_request(
    session: &Session,
    route: &GripRoute,
    forwarded: &Forwarded,
) -> Result<(RequestHeader, bool), Refusal> {
    let bad = |_| Refusal::new(400, "bad_request", "the request cannot be forwarded");
    let client = session.req_header();
    let target = client.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut req =
        RequestHeader::build(client.method.clone(), target.as_bytes(), None).map_err(bad)?;
    for (name, value) in client.headers.iter() {
        let n = name.as_str();
        if n.starts_with("grip-") || HOP_BY_HOP.contains(&n) {
            continue;
        }
        req.append_header(name.clone(), value.clone())
            .map_err(bad)?;
    }
    let length = client
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let chunked = client.headers.contains_key(http::header::TRANSFER_ENCODING);
    let has_body = chunked || length.is_some_and(|n| n > 0);
    match length {
        Some(n) if !chunked => req.insert_header("content-length", n.to_string()),
        _ if has_body => req.insert_header("transfer-encoding", "chunked"),
        _ => Ok(()),
    }
    .map_err(bad)?;
    forwarded.apply(&mut req).map_err(bad)?;
    if let Some(sig) = route.key.as_ref().and_then(grip::signature) {
        req.insert_header("grip-sig", sig).map_err(bad)?;
    }
    Ok((req, has_body))
}

/// Send the client's request to `pool` and answer it, or return the hold.
pub(crate) async fn forward(
    client: &Client,
    session: &mut Session,
    pool: &Pool,
    route: &GripRoute,
    forwarded: &Forwarded,
    max_channels: usize,
    max_body: usize,
) -> Result<Outcome, Refusal> {
    let (req, has_body) = backend_request(session, route, forwarded)?;
    let resp = if has_body {
        // Not retried: the body can be sent once.
        client
            .send_streaming(pool, &req, &mut ClientBody(session))
            .await?
    } else {
        client.send(pool, &req, Body::Empty).await?
    };
    let id = forwarded.request_id.as_deref();
    let head = resp.head();
    if let Some(hold) = grip::from_headers(&head.headers, max_channels)? {
        let head = tagged(hold_head(head.status.as_u16(), head.headers.iter())?, id);
        let body = read_bounded(resp, max_body).await?;
        return Ok(Outcome::Hold(Box::new(HoldStart { hold, head, body })));
    }
    let instruct = resp
        .header("content-type")
        .is_some_and(|ct| ct.trim_start().starts_with("application/grip-instruct"));
    if instruct {
        let body = read_bounded(resp, max_body).await?;
        let (hold, r) = grip::from_instruct(&body, max_channels)?;
        let pairs: Vec<(http::HeaderName, http::HeaderValue)> = r
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
            .collect();
        let head = tagged(hold_head(r.code, pairs.iter().map(|(k, v)| (k, v)))?, id);
        return match hold {
            Some(hold) => Ok(Outcome::Hold(Box::new(HoldStart {
                hold,
                head,
                body: r.body,
            }))),
            None => {
                write_whole(session, head, r.body).await;
                Ok(Outcome::Done)
            }
        };
    }
    stream_through(session, resp, id).await;
    Ok(Outcome::Done)
}

/// The response head with the request's id, when it has one.
fn tagged(mut head: ResponseHeader, request_id: Option<&str>) -> ResponseHeader {
    if let Some(id) = request_id {
        // ok to ignore: an id is a valid header value.
        let _ = head.insert_header(super::access::REQUEST_ID, id);
    }
    head
}

/// The head a held client gets: the backend's status and headers without
/// Grip-* (instructions for us), Content-Length (the stream has none) and
/// connection-level headers.
fn hold_head<'a>(
    status: u16,
    headers: impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)>,
) -> Result<ResponseHeader, InstructionError> {
    let mut head = ResponseHeader::build(status, None)
        .map_err(|_| InstructionError::from("bad status from backend"))?;
    for (k, v) in headers {
        let n = k.as_str();
        if n.starts_with("grip-") || HOP_BY_HOP.contains(&n) {
            continue;
        }
        head.append_header(k.clone(), v.clone())
            .map_err(|_| InstructionError::from("bad header from backend"))?;
    }
    Ok(head)
}

/// A hold's initial body (or an instruct body): read whole, bounded by `max_body`.
async fn read_bounded(resp: Response<'_>, max: usize) -> Result<Bytes, Refusal> {
    resp.read_bounded(max).await.map_err(|e| match e.kind {
        crate::outbound::OutboundErrorKind::TooLarge(_) => {
            Refusal::new(502, "grip", "backend hold body larger than max_body")
        }
        _ => Refusal::from(e),
    })
}

fn has_no_body(session: &Session, status: u16) -> bool {
    session.req_header().method == http::Method::HEAD
        || status == 204
        || status == 304
        || (100..200).contains(&status)
}

/// An ordinary response, passed through as it arrives: each chunk is
/// written (and flushed) when the backend sends it.
async fn stream_through(session: &mut Session, mut resp: Response<'_>, request_id: Option<&str>) {
    let status = resp.status();
    // The status was parsed from the backend's response: it builds.
    let Ok(mut head) = ResponseHeader::build(status, None) else {
        session.downstream_session.set_keepalive(None);
        return;
    };
    let mut length_known = false;
    for (k, v) in resp.head().headers.iter() {
        let n = k.as_str();
        if n == "content-length" {
            length_known = true;
        } else if HOP_BY_HOP.contains(&n) {
            continue;
        }
        let _ = head.append_header(k.clone(), v.clone());
    }
    let mut head = tagged(head, request_id);
    let no_body = has_no_body(session, status);
    if !no_body && !length_known && !session.as_downstream().is_http2() {
        // Without a length pingora would close-delimit the body.
        let _ = head.insert_header("transfer-encoding", "chunked");
    }
    if session
        .write_response_header(Box::new(head), no_body)
        .await
        .is_err()
        || no_body
    {
        return;
    }
    loop {
        match resp.chunk().await {
            Ok(Some(c)) if c.is_empty() => {}
            Ok(Some(c)) => {
                if session.write_response_body(Some(c), false).await.is_err() {
                    return;
                }
            }
            Ok(None) => {
                let _ = session.write_response_body(None, true).await;
                resp.release().await;
                return;
            }
            Err(e) => {
                // The backend broke off: so does the client's response.
                tracing::debug!(error = %e, "grip route: backend body failed mid-stream");
                session.downstream_session.set_keepalive(None);
                return;
            }
        }
    }
}

/// A whole small response (a grip-instruct without a hold).
async fn write_whole(session: &mut Session, mut head: ResponseHeader, body: Bytes) {
    let no_body = has_no_body(session, head.status.as_u16());
    let _ = head.insert_header("content-length", body.len().to_string());
    if session
        .write_response_header(Box::new(head), no_body || body.is_empty())
        .await
        .is_ok()
        && !no_body
        && !body.is_empty()
    {
        let _ = session.write_response_body(Some(body), true).await;
    }
}

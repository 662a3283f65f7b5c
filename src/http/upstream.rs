//! A route's request sent to its backend by the gateway itself (not by
//! pingora's proxy loop), through the one outbound client — for GRIP routes
//! (`grip`) and recorded routes (`record`), which must see the response
//! head before anything reaches the client. The request body is streamed
//! to the backend as the client sends it; an ordinary response is streamed
//! back chunk by chunk as it arrives (never buffered whole).

use super::refuse::Refusal;
use crate::outbound::{Body, BodySource, Client, Forwarded, Pool, Response};
use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

/// Who the client is: the peer, or what a trusted proxy says it saw.
pub(crate) fn forwarded(session: &Session, trusted_proxies: &[ipnet::IpNet]) -> Forwarded {
    let req = session.req_header();
    Forwarded::new(
        session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip()),
        session.digest().is_some_and(|d| d.ssl_digest.is_some()),
        super::canonical::authority(req).map(str::to_string),
        &req.headers,
        trusted_proxies,
    )
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
/// signature) or connection-level ones; who the client is; and `Grip-Sig`
/// when given.
fn backend_request(
    session: &Session,
    forwarded: &Forwarded,
    grip_sig: Option<String>,
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
    if let Some(sig) = grip_sig {
        req.insert_header("grip-sig", sig).map_err(bad)?;
    }
    Ok((req, has_body))
}

/// Send the client's request (its body streamed) to `pool`; the response
/// with its head read.
pub(super) async fn send<'c>(
    client: &'c Client,
    session: &mut Session,
    pool: &Pool,
    forwarded: &Forwarded,
    grip_sig: Option<String>,
) -> Result<Response<'c>, Refusal> {
    let (req, has_body) = backend_request(session, forwarded, grip_sig)?;
    let resp = if has_body {
        // Not retried: the body can be sent once.
        client
            .send_streaming(pool, &req, &mut ClientBody(session))
            .await?
    } else {
        client.send(pool, &req, Body::Empty).await?
    };
    Ok(resp)
}

/// Why a backend's head cannot be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadHead(pub &'static str);

/// The head a client gets from a backend when the gateway keeps the
/// response open itself: the backend's status and headers without Grip-*
/// (instructions for us), Content-Length (the stream has none) and
/// connection-level headers.
pub(super) fn given_head<'a>(
    status: u16,
    headers: impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)>,
) -> Result<ResponseHeader, BadHead> {
    let mut head =
        ResponseHeader::build(status, None).map_err(|_| BadHead("bad status from backend"))?;
    for (k, v) in headers {
        let n = k.as_str();
        if n.starts_with("grip-") || HOP_BY_HOP.contains(&n) {
            continue;
        }
        head.append_header(k.clone(), v.clone())
            .map_err(|_| BadHead("bad header from backend"))?;
    }
    Ok(head)
}

fn has_no_body(session: &Session, status: u16) -> bool {
    session.req_header().method == http::Method::HEAD
        || status == 204
        || status == 304
        || (100..200).contains(&status)
}

/// An ordinary response, passed through as it arrives: each chunk is
/// written (and flushed) when the backend sends it. With a request id, the
/// head carries it.
pub(super) async fn stream_through(
    session: &mut Session,
    mut resp: Response<'_>,
    request_id: Option<&str>,
) {
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
    let mut head = super::access::tagged(head, request_id);
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
                tracing::debug!(error = %e, "backend body failed mid-stream");
                session.downstream_session.set_keepalive(None);
                return;
            }
        }
    }
}

/// A whole small response (a grip-instruct without a hold).
pub(super) async fn write_whole(session: &mut Session, mut head: ResponseHeader, body: Bytes) {
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

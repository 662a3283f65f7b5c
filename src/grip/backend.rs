//! A request on a `grip: true` route, sent to the backend by the gateway
//! itself (not by pingora's proxy loop): that way the gateway sees the
//! response head before anything reaches the client, and a hold does not pin
//! an upstream connection for its lifetime (the backend's connection goes
//! back to the pool once the hold's body is read).
//!
//! An ordinary response is streamed through chunk by chunk as it arrives
//! (never buffered whole); a request body is streamed to the backend the
//! same way. A hold returns its head and body to `proxy`, which runs it on
//! the same stream machinery as SSE routes.

use super::{from_headers, from_instruct, Hold};
use crate::config::GripRoute;
use crate::sse::request::Refusal;
use crate::state::Gateway;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// What became of the request.
#[derive(Debug)]
pub enum Forwarded {
    /// An ordinary response was sent (or the client went away).
    Done,
    /// The backend holds the client: `head` and `body` go first.
    Hold(Box<HoldStart>),
}

#[derive(Debug)]
pub struct HoldStart {
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

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// Send the client's request to `upstream` and answer it, or return the hold.
pub async fn forward(
    gw: &Gateway,
    session: &mut Session,
    upstream: &str,
    route: &GripRoute,
) -> Result<Forwarded, Refusal> {
    let req = session.req_header();
    let method = req.method.clone();
    let target = req
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in req.headers.iter() {
        let n = name.as_str();
        // A client must not be able to forge the gateway's signature or
        // other GRIP headers meant for the backend.
        if n.starts_with("grip-") || (HOP_BY_HOP.contains(&n) && n != "content-length") {
            continue;
        }
        headers.append(name.clone(), value.clone());
    }
    let client_ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_string());
    if let Some(ip) = client_ip {
        let mut hops: Vec<String> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        hops.push(ip);
        if let Ok(v) = hops.join(", ").parse() {
            headers.insert("x-forwarded-for", v);
        }
    }
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    headers.insert(
        "x-forwarded-proto",
        http::HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    if let Some(host) = req.headers.get(http::header::HOST).cloned() {
        headers.insert("x-forwarded-host", host);
    }
    if let Some(sig) = route.key.as_ref().and_then(super::signature) {
        if let Ok(v) = sig.parse() {
            headers.insert("grip-sig", v);
        }
    }
    let has_body = req.headers.contains_key(http::header::TRANSFER_ENCODING)
        || req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");

    let resp = if has_body {
        send_with_body(gw, session, upstream, method, &target, headers).await?
    } else {
        gw.fetcher
            .send(upstream, true, |client, addr| {
                client
                    .request(method.clone(), format!("http://{addr}{target}"))
                    .headers(headers.clone())
            })
            .await
            .map_err(|e| refuse(e.status(), e.to_string()))?
    };

    let max_channels = gw.config.limits.max_channels_per_client;
    let hold = from_headers(resp.headers(), max_channels).map_err(|e| refuse(502, e))?;
    let instruct = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/grip-instruct"));
    if let Some(hold) = hold {
        let head = hold_head(resp.status().as_u16(), resp.headers().iter())?;
        let body = read_bounded(resp, gw.config.limits.max_body).await?;
        return Ok(Forwarded::Hold(Box::new(HoldStart { hold, head, body })));
    }
    if instruct {
        let body = read_bounded(resp, gw.config.limits.max_body).await?;
        let (hold, r) = from_instruct(&body, max_channels).map_err(|e| refuse(502, e))?;
        let pairs: Vec<(http::HeaderName, http::HeaderValue)> = r
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?)))
            .collect();
        let head = hold_head(r.code, pairs.iter().map(|(k, v)| (k, v)))?;
        return match hold {
            Some(hold) => Ok(Forwarded::Hold(Box::new(HoldStart {
                hold,
                head,
                body: r.body,
            }))),
            None => {
                write_whole(session, head, r.body).await;
                Ok(Forwarded::Done)
            }
        };
    }
    stream_through(session, resp).await;
    Ok(Forwarded::Done)
}

/// Send while streaming the client's body to the backend: a pending chunk is
/// handed over only as fast as the backend takes it, and the response may
/// arrive before the body is done.
async fn send_with_body(
    gw: &Gateway,
    session: &mut Session,
    upstream: &str,
    method: http::Method,
    target: &str,
    headers: reqwest::header::HeaderMap,
) -> Result<reqwest::Response, Refusal> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut body = Some(reqwest::Body::wrap_stream(stream));
    // Not retried: the body can be sent once.
    let send = gw.fetcher.send(upstream, false, move |client, addr| {
        let mut rb = client
            .request(method.clone(), format!("http://{addr}{target}"))
            .headers(headers.clone());
        if let Some(b) = body.take() {
            rb = rb.body(b);
        }
        rb
    });
    tokio::pin!(send);
    let mut tx = Some(tx);
    let mut pending: Option<Bytes> = None;
    loop {
        // Set inside the select, applied after it: the branches borrow `tx`.
        let mut body_done = false;
        tokio::select! {
            r = &mut send => return r.map_err(|e| refuse(e.status(), e.to_string())),
            ok = reserve(&tx), if pending.is_some() => match ok {
                Some(permit) => {
                    if let Some(chunk) = pending.take() {
                        permit.send(Ok(chunk));
                    }
                }
                // The backend stopped reading: let the response tell why.
                None => body_done = true,
            },
            chunk = session.read_request_body(), if pending.is_none() && tx.is_some() => match chunk {
                Ok(Some(c)) => pending = Some(c),
                Ok(None) => body_done = true,
                Err(_) => return Err(refuse(400, "could not read the request body")),
            },
        }
        if body_done {
            // Dropping the sender ends the body the backend reads.
            pending = None;
            tx = None;
        }
    }
}

async fn reserve(
    tx: &Option<tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>>,
) -> Option<tokio::sync::mpsc::Permit<'_, Result<Bytes, std::io::Error>>> {
    match tx {
        Some(tx) => tx.reserve().await.ok(),
        None => None,
    }
}

/// The head a held client gets: the backend's status and headers without
/// Grip-* (instructions for us), Content-Length (the stream has none) and
/// connection-level headers.
fn hold_head<'a>(
    status: u16,
    headers: impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)>,
) -> Result<ResponseHeader, Refusal> {
    let mut head =
        ResponseHeader::build(status, None).map_err(|_| refuse(502, "bad status from backend"))?;
    for (k, v) in headers {
        let n = k.as_str();
        if n.starts_with("grip-") || HOP_BY_HOP.contains(&n) {
            continue;
        }
        head.append_header(k.clone(), v.clone())
            .map_err(|_| refuse(502, "bad header from backend"))?;
    }
    Ok(head)
}

/// A hold's initial body (or an instruct body): read whole, bounded by `max_body`.
async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Bytes, Refusal> {
    let mut out = bytes::BytesMut::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if out.len() + c.len() > max {
                    return Err(refuse(502, "backend hold body larger than max_body"));
                }
                out.extend_from_slice(&c);
            }
            Ok(None) => return Ok(out.freeze()),
            Err(_) => return Err(refuse(502, "backend body could not be read")),
        }
    }
}

fn has_no_body(session: &Session, status: u16) -> bool {
    session.req_header().method == http::Method::HEAD
        || status == 204
        || status == 304
        || (100..200).contains(&status)
}

/// An ordinary response, passed through as it arrives: each chunk is
/// written (and flushed) when the backend sends it.
async fn stream_through(session: &mut Session, mut resp: reqwest::Response) {
    let status = resp.status().as_u16();
    let Ok(mut head) = ResponseHeader::build(status, None) else {
        let _ = crate::respond::text(session, 502, "bad status from backend").await;
        return;
    };
    let mut length_known = false;
    for (k, v) in resp.headers() {
        let n = k.as_str();
        if n == "content-length" {
            length_known = true;
        } else if HOP_BY_HOP.contains(&n) {
            continue;
        }
        let _ = head.append_header(k.clone(), v.clone());
    }
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

//! Requests the gateway makes itself — forward auth, GRIP routes, pollers —
//! through pingora's own client connector, the same stack the proxy path
//! uses: one connection pool, one way to pick a server (`pool`), one way to
//! state who the client is (`forwarded`).
//!
//! A server is picked round robin with the pool's passive health; a refused
//! connection marks it down and moves on to the next one, and a pooled
//! connection that the server closed meanwhile is retried once on a fresh
//! one — as long as the request can be sent again (a streamed body cannot).
//! Bodies read back are bounded by the caller's limit.

pub(crate) mod forwarded;
pub(crate) mod pool;
pub(crate) mod resolve;

pub(crate) use forwarded::Forwarded;
pub(crate) use pool::Pool;
pub(crate) use resolve::Target;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_http::{RequestHeader, ResponseHeader};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// How long an idle upstream connection is kept for the next request.
const IDLE_KEEP: Duration = Duration::from_secs(60);

/// Why a request to an upstream got no (usable) response. The text names
/// the upstream and the kind of failure, never a header value or a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundError {
    pub upstream: Arc<str>,
    pub kind: OutboundErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundErrorKind {
    /// The pool has no server at all.
    NoServer,
    /// Every server tried refused or could not be reached.
    Connect(&'static str),
    Timeout,
    /// The exchange broke after the connection was made.
    Io(&'static str),
    /// The response body is larger than allowed.
    TooLarge(usize),
    /// The request could not be sent as given (bad header, body source failed).
    Request(&'static str),
}

impl fmt::Display for OutboundError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let u = &self.upstream;
        match &self.kind {
            OutboundErrorKind::NoServer => write!(f, "upstream {u}: no server"),
            OutboundErrorKind::Connect(why) => write!(f, "upstream {u}: connect: {why}"),
            OutboundErrorKind::Timeout => write!(f, "upstream {u}: timed out"),
            OutboundErrorKind::Io(why) => write!(f, "upstream {u}: {why}"),
            OutboundErrorKind::TooLarge(n) => write!(f, "upstream {u}: body over {n} bytes"),
            OutboundErrorKind::Request(why) => write!(f, "upstream {u}: {why}"),
        }
    }
}

impl std::error::Error for OutboundError {}

fn kind_of(e: &Error) -> OutboundErrorKind {
    use ErrorType::*;
    match e.etype() {
        ConnectTimedout | ReadTimedout | WriteTimedout => OutboundErrorKind::Timeout,
        other => OutboundErrorKind::Io(other.as_str()),
    }
}

/// A request body produced while it is sent (a client's body on a GRIP route).
#[async_trait]
pub trait BodySource: Send {
    /// The next chunk; None at the end.
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, ()>;
}

/// What goes with a request header.
#[derive(Debug)]
pub enum Body<'a> {
    Empty,
    /// A whole body: the request may be sent again on another server.
    Full(&'a Bytes),
}

/// The gateway's HTTP client.
pub struct Client {
    connector: Connector,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").finish_non_exhaustive()
    }
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

/// A response whose head has been read; the body is read on demand and the
/// connection goes back to the pool once the body is read to its end.
pub struct Response<'c> {
    client: &'c Client,
    // Boxed: a client session is over a kilobyte, and responses are moved.
    session: Box<HttpSession>,
    peer: Box<HttpPeer>,
    upstream: Arc<str>,
}

impl fmt::Debug for Response<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("upstream", &self.upstream)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// One try on one connection; a failure happened before any response
/// byte, so the request may be sent again on a new connection.
enum Attempt<'c> {
    Done(Response<'c>),
    BeforeResponse(OutboundError),
}

impl Client {
    pub fn new() -> Client {
        Client {
            connector: Connector::new(None),
        }
    }

    fn error(pool: &Pool, kind: OutboundErrorKind) -> OutboundError {
        OutboundError {
            upstream: pool.name.clone(),
            kind,
        }
    }

    /// Send `req` with `body` to a server of `pool` and read the response head.
    pub async fn send<'c>(
        &'c self,
        pool: &Pool,
        req: &RequestHeader,
        body: Body<'_>,
    ) -> Result<Response<'c>, OutboundError> {
        let mut tried = Vec::new();
        let mut last = Self::error(pool, OutboundErrorKind::NoServer);
        while let Some(target) = pool.pick(&tried) {
            tried.push(target.addr);
            let peer = pool.peer(&target);
            // A pooled connection the server has closed since fails on first
            // use; that is not the server's fault, so try once more.
            for _ in 0..2 {
                let (session, reused) = match self.connector.get_http_session(&peer).await {
                    Ok(s) => s,
                    Err(e) => {
                        pool.mark_failed(target.addr);
                        last = Self::error(pool, OutboundErrorKind::Connect(e.etype().as_str()));
                        break;
                    }
                };
                match self
                    .exchange(pool, session, &peer, with_host(req, pool, &target), &body)
                    .await
                {
                    Attempt::Done(r) => return Ok(r),
                    Attempt::BeforeResponse(e) if reused => last = e,
                    Attempt::BeforeResponse(e) => return Err(e),
                }
            }
        }
        Err(last)
    }

    async fn exchange<'c>(
        &'c self,
        pool: &Pool,
        mut session: HttpSession,
        peer: &HttpPeer,
        req: Box<RequestHeader>,
        body: &Body<'_>,
    ) -> Attempt<'c> {
        let before = |e: Box<Error>| Attempt::BeforeResponse(Self::error(pool, kind_of(&e)));
        if let Err(e) = session.write_request_header(req).await {
            return before(e);
        }
        if let Body::Full(b) = body {
            if !b.is_empty() {
                if let Err(e) = session.write_request_body((*b).clone(), true).await {
                    return before(e);
                }
            }
        }
        if let Err(e) = session.finish_request_body().await {
            return before(e);
        }
        if let Err(e) = session.read_response_header().await {
            return before(e);
        }
        Attempt::Done(Response {
            client: self,
            session: Box::new(session),
            peer: Box::new(peer.clone()),
            upstream: pool.name.clone(),
        })
    }

    /// Send `req` while streaming its body from `source`, then read the
    /// response head. Not retried once the body has started: it cannot be
    /// sent twice. A connection that is refused still moves on to the next server.
    pub async fn send_streaming<'c>(
        &'c self,
        pool: &Pool,
        req: &RequestHeader,
        source: &mut dyn BodySource,
    ) -> Result<Response<'c>, OutboundError> {
        let mut tried = Vec::new();
        let mut last = Self::error(pool, OutboundErrorKind::NoServer);
        let (mut session, peer, target) = loop {
            let Some(target) = pool.pick(&tried) else {
                return Err(last);
            };
            tried.push(target.addr);
            let peer = pool.peer(&target);
            match self.connector.get_http_session(&peer).await {
                Ok((s, _)) => break (s, peer, target),
                Err(e) => {
                    pool.mark_failed(target.addr);
                    last = Self::error(pool, OutboundErrorKind::Connect(e.etype().as_str()));
                }
            }
        };
        let io = |e: Box<Error>| Self::error(pool, kind_of(&e));
        session
            .write_request_header(with_host(req, pool, &target))
            .await
            .map_err(io)?;
        loop {
            match source.next_chunk().await {
                Ok(Some(chunk)) if chunk.is_empty() => {}
                Ok(Some(chunk)) => {
                    // A backend that answers before reading everything stops
                    // taking the body; its answer is what counts then.
                    if session.write_request_body(chunk, false).await.is_err() {
                        break;
                    }
                }
                Ok(None) => {
                    session.finish_request_body().await.map_err(io)?;
                    break;
                }
                Err(()) => {
                    return Err(Self::error(
                        pool,
                        OutboundErrorKind::Request("the client's body could not be read"),
                    ))
                }
            }
        }
        session.read_response_header().await.map_err(io)?;
        Ok(Response {
            client: self,
            session: Box::new(session),
            peer: Box::new(peer),
            upstream: pool.name.clone(),
        })
    }
}

async fn read_chunk(
    session: &mut HttpSession,
    upstream: &Arc<str>,
) -> Result<Option<Bytes>, OutboundError> {
    session
        .read_response_body()
        .await
        .map_err(|e| OutboundError {
            upstream: upstream.clone(),
            kind: kind_of(&e),
        })
}

/// A response body that owns its connection (`Response::into_body`).
pub struct BodyStream {
    session: Box<HttpSession>,
    upstream: Arc<str>,
}

impl fmt::Debug for BodyStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyStream")
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

impl BodyStream {
    /// The next body chunk; None at the end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, OutboundError> {
        read_chunk(&mut self.session, &self.upstream).await
    }
}

/// The request as sent to `target`: a request without `Host` (one the
/// gateway makes itself) names the server it goes to.
fn with_host(req: &RequestHeader, pool: &Pool, target: &Target) -> Box<RequestHeader> {
    let mut req = Box::new(req.clone());
    if !req.headers.contains_key(http::header::HOST) {
        // ok to ignore: a host checked at load and a port are a valid value.
        let _ = req.insert_header(http::header::HOST, pool.authority(target));
    }
    req
}

impl Response<'_> {
    pub fn head(&self) -> &ResponseHeader {
        // ok: a Response exists only after `read_response_header` succeeded.
        self.session
            .response_header()
            .expect("response header was read") // ok: see above
    }

    pub fn status(&self) -> u16 {
        self.session
            .response_header()
            .map_or(0, |h| h.status.as_u16())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.session
            .response_header()?
            .headers
            .get(name)?
            .to_str()
            .ok()
    }

    /// The next body chunk; None at the end (the connection then goes back
    /// to the pool when the response is released).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, OutboundError> {
        read_chunk(&mut self.session, &self.upstream).await
    }

    /// The whole body, at most `max` bytes; the connection is reused after.
    pub async fn read_bounded(mut self, max: usize) -> Result<Bytes, OutboundError> {
        let mut body = BytesMut::new();
        while let Some(chunk) = self.chunk().await? {
            if body.len() + chunk.len() > max {
                return Err(OutboundError {
                    upstream: self.upstream.clone(),
                    kind: OutboundErrorKind::TooLarge(max),
                });
            }
            body.extend_from_slice(&chunk);
        }
        self.release().await;
        Ok(body.freeze())
    }

    /// The body alone, to be read by a task of its own (a recorded reply
    /// outlives the request that started it). Its connection is closed
    /// when the body is dropped, never reused.
    pub fn into_body(self) -> BodyStream {
        BodyStream {
            session: self.session,
            upstream: self.upstream,
        }
    }

    /// Give the connection back for reuse when the body was read to its
    /// end; otherwise it is closed (cheaper than draining an unread body).
    pub async fn release(mut self) {
        if self.session.response_done() {
            self.client
                .connector
                .release_http_session(*self.session, &*self.peer, Some(IDLE_KEEP))
                .await;
        }
    }
}

//! The sink of a stream held inside pingora's session: TLS and HTTP/2
//! connections cannot be taken apart like a plain socket, so their streams
//! write through `write_response_body` and notice a gone client through
//! `read_body_or_idle` (on HTTP/2, the client's `RST_STREAM`).

use crate::hub::Subscriber;
use crate::stream::{Head, Sink, Wake, WRITE_TIMEOUT};
use crate::wire;
use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::io;
use std::time::Duration;

/// A stream's view of the request it answers.
pub(crate) struct SessionSink<'s> {
    session: &'s mut Session,
}

impl<'s> SessionSink<'s> {
    pub(crate) fn new(session: &'s mut Session) -> SessionSink<'s> {
        session
            .downstream_session
            .set_write_timeout(Some(WRITE_TIMEOUT));
        SessionSink { session }
    }

    /// Write, unless the subscriber stops being open meanwhile (its socket
    /// is full, so the write would otherwise wait for the timeout).
    async fn write_bytes(&mut self, sub: &Subscriber, bytes: Bytes) -> io::Result<bool> {
        if bytes.is_empty() {
            // An empty chunk would end a chunked body.
            return Ok(true);
        }
        let w = self.session.write_response_body(Some(bytes), false);
        tokio::pin!(w);
        loop {
            tokio::select! {
                r = &mut w => return r.map(|_| true).map_err(io::Error::other),
                _ = sub.woken() => {
                    if sub.is_cut() {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

/// How a held stream's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delimit {
    /// HTTP/2 frames its own body.
    Frames,
    /// HTTP/1.1: chunked (without a length pingora would close-delimit the
    /// body and lose keep-alive).
    Chunked,
    /// HTTP/1.0 has no chunked encoding: the body ends with the connection.
    Close,
}

impl Delimit {
    pub(crate) fn of(session: &Session) -> Delimit {
        if session.as_downstream().is_http2() {
            return Delimit::Frames;
        }
        match session.req_header().version {
            http::Version::HTTP_09 | http::Version::HTTP_10 => Delimit::Close,
            _ => Delimit::Chunked,
        }
    }

    fn apply(self, head: &mut ResponseHeader) -> pingora_error::Result<()> {
        match self {
            Delimit::Frames => Ok(()),
            Delimit::Chunked => head.insert_header("transfer-encoding", "chunked"),
            Delimit::Close => head.insert_header("connection", "close"),
        }
    }
}

/// The SSE response head with `extra` headers (CORS), without any body
/// delimiting (as a HEAD answer is sent).
pub(crate) fn sse_head(
    extra: &[(http::HeaderName, http::HeaderValue)],
) -> pingora_error::Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(200, Some(4 + extra.len()))?;
    for (k, v) in wire::SSE_HEADERS {
        resp.insert_header(k, v)?;
    }
    for (k, v) in extra {
        resp.append_header(k, v)?;
    }
    Ok(resp)
}

impl Sink for SessionSink<'_> {
    async fn open(&mut self, sub: &Subscriber, head: Head<'_>, body: Bytes) -> io::Result<bool> {
        let mut head = match head {
            Head::Sse(extra) => sse_head(extra).map_err(io::Error::other)?,
            Head::Given(h) => h.clone(),
        };
        Delimit::of(self.session)
            .apply(&mut head)
            .map_err(io::Error::other)?;
        self.session
            .write_response_header(Box::new(head), false)
            .await
            .map_err(io::Error::other)?;
        self.write_bytes(sub, body).await
    }

    async fn write(&mut self, sub: &Subscriber, bytes: &Bytes) -> io::Result<bool> {
        self.write_bytes(sub, bytes.clone()).await
    }

    async fn resume(&mut self, sub: &Subscriber, tail: Bytes, body: Bytes) -> io::Result<bool> {
        // Held streams are never handed over (TLS and HTTP/2 sessions stay
        // in the process that holds them); writing in order is still right.
        Ok(self.write_bytes(sub, tail).await? && self.write_bytes(sub, body).await?)
    }

    async fn idle(&mut self, sub: &Subscriber) -> Wake {
        tokio::select! {
            _ = sub.woken() => Wake::Nudged,
            _ = self.session.downstream_session.read_body_or_idle(true) => Wake::ClientGone,
        }
    }

    async fn finish(&mut self, sub: &Subscriber, last: Option<Bytes>) {
        match last {
            Some(last) => {
                if self.write_bytes(sub, last).await.is_ok() {
                    let _ = self.session.write_response_body(None, true).await;
                }
            }
            // Cut short: pingora would still try to end the body when the
            // request finishes; a full socket must not hold it for long.
            None => self
                .session
                .downstream_session
                .set_write_timeout(Some(Duration::from_millis(1))),
        }
        self.session.downstream_session.set_keepalive(None);
    }

    fn surrender(self) -> Option<(tokio::net::TcpStream, Bytes)> {
        None
    }
}

//! One poll request through pingora's own client connector: a server picked
//! from the upstream pool (round robin, passive health, the next server on a
//! refused connection), conditional headers for `diff: etag`, a body bounded
//! by `max_body`, and the whole exchange bounded by `timeout`.

use super::poll_target::Target;
use crate::config::Poll;
use crate::upstream::UpstreamPool;
use bytes::{Bytes, BytesMut};
use pingora_core::connectors::http::Connector;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::RequestHeader;
use std::fmt;
use std::time::Duration;

/// How long an idle upstream connection is kept for the next poll.
const IDLE_KEEP: Duration = Duration::from_secs(60);

/// From the previous good response, for If-None-Match / If-Modified-Since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    pub fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

#[derive(Debug)]
pub enum Fetched {
    /// 304: the upstream says nothing changed.
    NotModified,
    Body {
        body: Bytes,
        validators: Validators,
    },
}

/// Why a poll failed; the text goes to logs and `error_event`, so it holds
/// no header value and no body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    NoServer,
    Connect(String),
    Timeout,
    Io(String),
    Status(u16),
    TooLarge(usize),
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::NoServer => write!(f, "the upstream has no server"),
            FetchError::Connect(e) => write!(f, "connect: {e}"),
            FetchError::Timeout => write!(f, "timed out"),
            FetchError::Io(e) => write!(f, "{e}"),
            FetchError::Status(s) => write!(f, "upstream answered {s}"),
            FetchError::TooLarge(n) => write!(f, "body over {n} bytes"),
        }
    }
}

/// One poll request and everything it needs.
#[allow(missing_debug_implementations)] // pingora's Connector has no Debug
pub struct Fetch<'a> {
    pub connector: &'a Connector,
    pub pool: &'a UpstreamPool,
    pub target: &'a Target,
    pub poll: &'a Poll,
    /// Set for conditional requests (`diff: etag` after a good response).
    pub validators: Option<&'a Validators>,
}

enum Exchange {
    /// Failed before any response byte: safe to retry on a new connection.
    BeforeResponse(FetchError),
    After(FetchError),
}

impl Fetch<'_> {
    /// Poll once. Never takes longer than `poll.timeout`.
    pub async fn run(&self) -> Result<Fetched, FetchError> {
        tokio::time::timeout(self.poll.timeout, self.attempt())
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }

    async fn attempt(&self) -> Result<Fetched, FetchError> {
        let (pool, timeout) = (self.pool, self.poll.timeout);
        let mut tried = Vec::new();
        let mut last = FetchError::NoServer;
        while let Some((index, addr)) = pool.pick(&tried) {
            tried.push(index);
            let mut peer = HttpPeer::new(addr, false, String::new());
            peer.options.connection_timeout = Some(pool.config.connect_timeout.min(timeout));
            peer.options.read_timeout = Some(timeout);
            peer.options.write_timeout = Some(timeout);
            // A pooled connection the server has closed since fails on first use;
            // that is not the server's fault, so try once more on a fresh one.
            for _ in 0..2 {
                let (session, reused) = match self.connector.get_http_session(&peer).await {
                    Ok(s) => s,
                    Err(e) => {
                        pool.mark_failed(index);
                        last = FetchError::Connect(e.etype().as_str().to_string());
                        break;
                    }
                };
                match self.exchange(session, &peer, &addr.to_string()).await {
                    Err(Exchange::BeforeResponse(e)) if reused => last = e,
                    Err(Exchange::BeforeResponse(e)) | Err(Exchange::After(e)) => return Err(e),
                    Ok(f) => return Ok(f),
                }
            }
        }
        Err(last)
    }

    async fn exchange(
        &self,
        mut session: HttpSession,
        peer: &HttpPeer,
        host: &str,
    ) -> Result<Fetched, Exchange> {
        let io = |e: Box<pingora_error::Error>| FetchError::Io(e.etype().as_str().to_string());
        let req = request(host, self.target, self.poll, self.validators)
            .map_err(|e| Exchange::After(io(e)))?;
        let before = |e| Exchange::BeforeResponse(io(e));
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(before)?;
        session.finish_request_body().await.map_err(before)?;
        session.read_response_header().await.map_err(before)?;
        let Some(head) = session.response_header() else {
            return Err(Exchange::After(FetchError::Io("no response header".into())));
        };
        let status = head.status.as_u16();
        let header = |name: &str| {
            head.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let got = Validators {
            etag: header("etag"),
            last_modified: header("last-modified"),
        };
        if status == 304 {
            self.connector
                .release_http_session(session, peer, Some(IDLE_KEEP))
                .await;
            return Ok(Fetched::NotModified);
        }
        if !(200..300).contains(&status) {
            // The connection is dropped with its unread body: cheaper than draining an error page.
            return Err(Exchange::After(FetchError::Status(status)));
        }
        let max = self.poll.max_body;
        let mut body = BytesMut::new();
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| Exchange::After(io(e)))?
        {
            if body.len() + chunk.len() > max {
                return Err(Exchange::After(FetchError::TooLarge(max)));
            }
            body.extend_from_slice(&chunk);
        }
        self.connector
            .release_http_session(session, peer, Some(IDLE_KEEP))
            .await;
        Ok(Fetched::Body {
            body: body.freeze(),
            validators: got,
        })
    }
}

fn request(
    host: &str,
    target: &Target,
    poll: &Poll,
    validators: Option<&Validators>,
) -> pingora_error::Result<RequestHeader> {
    let mut req = RequestHeader::build(target.method.clone(), target.path.as_bytes(), None)?;
    req.insert_header("host", host)?;
    req.insert_header(
        "user-agent",
        concat!("ssegate-poller/", env!("CARGO_PKG_VERSION")),
    )?;
    for (k, v) in &poll.headers {
        req.insert_header(k.clone(), v.as_str())?;
    }
    for (k, v) in &target.forwarded {
        req.append_header(k.clone(), v.as_str())?;
    }
    if let Some(v) = validators {
        if let Some(etag) = &v.etag {
            req.insert_header("if-none-match", etag.as_str())?;
        }
        if let Some(lm) = &v.last_modified {
            req.insert_header("if-modified-since", lm.as_str())?;
        }
    }
    Ok(req)
}

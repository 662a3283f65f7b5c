//! One poll request through the gateway's client (`outbound`):
//! conditional headers for `diff: etag`, a body bounded by `max_body`, and
//! the whole exchange bounded by `timeout`.

use super::target::Target;
use crate::config::Poll;
use crate::outbound::{Body, Client, OutboundError, Pool};
use bytes::Bytes;
use pingora_http::RequestHeader;
use std::fmt;

/// From the previous good response, for If-None-Match / If-Modified-Since.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    pub(super) fn is_empty(&self) -> bool {
        self.etag.is_none() && self.last_modified.is_none()
    }
}

#[derive(Debug)]
pub(super) enum Fetched {
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
pub(super) enum FetchError {
    Upstream(OutboundError),
    Timeout,
    Status(u16),
    /// A poll request could not be built from the target (bad header value).
    Request,
}

impl fmt::Display for FetchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FetchError::Upstream(e) => e.fmt(f),
            FetchError::Timeout => write!(f, "timed out"),
            FetchError::Status(s) => write!(f, "upstream answered {s}"),
            FetchError::Request => write!(f, "the poll request could not be built"),
        }
    }
}

impl std::error::Error for FetchError {}

/// One poll request and everything it needs.
#[derive(Debug)]
pub(super) struct Fetch<'a> {
    pub client: &'a Client,
    pub pool: &'a Pool,
    pub target: &'a Target,
    pub poll: &'a Poll,
    /// Set for conditional requests (`diff: etag` after a good response).
    pub validators: Option<&'a Validators>,
    /// The poll cycle's span, sent as the request's `traceparent`.
    pub traceparent: Option<String>,
}

impl Fetch<'_> {
    /// Poll once. Never takes longer than `poll.timeout`.
    pub(super) async fn run(&self) -> Result<Fetched, FetchError> {
        tokio::time::timeout(self.poll.timeout, self.attempt())
            .await
            .unwrap_or(Err(FetchError::Timeout))
    }

    async fn attempt(&self) -> Result<Fetched, FetchError> {
        let mut req =
            request(self.target, self.poll, self.validators).map_err(|_| FetchError::Request)?;
        if let Some(tp) = &self.traceparent {
            req.insert_header("traceparent", tp.as_str())
                .map_err(|_| FetchError::Request)?;
        }
        let resp = self
            .client
            .send(self.pool, &req, Body::Empty)
            .await
            .map_err(FetchError::Upstream)?;
        let status = resp.status();
        let validators = Validators {
            etag: resp.header("etag").map(str::to_string),
            last_modified: resp.header("last-modified").map(str::to_string),
        };
        if status == 304 {
            resp.release().await;
            return Ok(Fetched::NotModified);
        }
        if !(200..300).contains(&status) {
            // The connection is dropped with its unread body: cheaper than draining an error page.
            return Err(FetchError::Status(status));
        }
        let body = resp
            .read_bounded(self.poll.max_body)
            .await
            .map_err(FetchError::Upstream)?;
        Ok(Fetched::Body { body, validators })
    }
}

fn request(
    target: &Target,
    poll: &Poll,
    validators: Option<&Validators>,
) -> pingora_error::Result<RequestHeader> {
    let mut req = RequestHeader::build(target.method.clone(), target.path.as_bytes(), None)?;
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

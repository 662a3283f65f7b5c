//! A request on a `grip: true` route, sent to the backend by the gateway
//! itself (`upstream`): that way the gateway sees the response head before
//! anything reaches the client, and a hold does not pin an upstream
//! connection for its lifetime (the backend's connection goes back to the
//! pool once the hold's body is read).
//!
//! An ordinary response is streamed through as it arrives. A hold returns
//! its head and body to `public`, which runs it on the stream engine like
//! any SSE stream.

use super::access::tagged;
use super::refuse::Refusal;
use super::upstream::{self, BadHead};
use crate::config::GripRoute;
use crate::grip::{self, Hold, InstructionError};
use crate::outbound::{Client, Forwarded, Pool, Response};
use bytes::Bytes;
use pingora_http::ResponseHeader;
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
    let sig = route.key.as_ref().and_then(grip::signature);
    let resp = upstream::send(client, session, pool, forwarded, sig).await?;
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
                upstream::write_whole(session, head, r.body).await;
                Ok(Outcome::Done)
            }
        };
    }
    upstream::stream_through(session, resp, id).await;
    Ok(Outcome::Done)
}

/// The head a held client gets (`upstream::given_head`).
fn hold_head<'a>(
    status: u16,
    headers: impl Iterator<Item = (&'a http::HeaderName, &'a http::HeaderValue)>,
) -> Result<ResponseHeader, InstructionError> {
    upstream::given_head(status, headers).map_err(|BadHead(why)| InstructionError::from(why))
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

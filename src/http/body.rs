//! Request bodies the gateway reads itself (publish, webhooks): bounded by
//! `limits.max_body`, refused early when the declared length is already over.

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyError {
    TooLarge(usize),
    Read,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::TooLarge(max) => {
                write!(f, "body larger than limits.max_body ({max} bytes)")
            }
            BodyError::Read => f.write_str("could not read the body"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Read a request body of at most `max` bytes.
pub(crate) async fn read(session: &mut Session, max: usize) -> Result<Bytes, BodyError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyError::TooLarge(max));
    }
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > max {
                    return Err(BodyError::TooLarge(max));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body.freeze()),
            Err(_) => return Err(BodyError::Read),
        }
    }
}

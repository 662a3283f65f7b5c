//! Taking TLS and HTTP/2 streams out of pingora once their request is
//! accepted, as `http::detach` does for plain sockets, so that an idle
//! stream does not keep pingora's per-request state (~14 KB of request
//! future, the session, both header maps) for its whole life:
//!
//! - HTTP/2 (over TLS or h2c): the response head goes out through pingora,
//!   then the stream's send half is taken from the session. pingora finishes
//!   the request without touching the stream (its `finish` has nothing left
//!   to end), h2 keeps the stream open while we hold the send half, and the
//!   connection stays driven by pingora's accept loop (`stream::h2`).
//! - HTTP/1.1 over our TLS front (`http::front`): the connection, rustls
//!   session included, is taken like a plain socket (`stream::tls`).

use super::detach::take_h1_stream;
use super::front::FrontTls;
use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::Stream;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Whether the request came over HTTP/2.
pub(crate) fn is_h2(session: &Session) -> bool {
    matches!(*session.downstream_session, ServerSession::H2(_))
}

/// Send `head` and take the HTTP/2 stream's send half. Only for an HTTP/2
/// session (`is_h2`).
pub(crate) async fn take_send_stream(
    session: &mut Session,
    head: ResponseHeader,
) -> Result<h2::SendStream<Bytes>> {
    session.write_response_header(Box::new(head), false).await?;
    match &mut *session.downstream_session {
        ServerSession::H2(s) => s.take_response_body_writer(),
        _ => None,
    }
    .ok_or_else(|| Error::explain(ErrorType::InternalError, "no HTTP/2 stream to take"))
}

/// Take an HTTP/1.1 connection that came through our TLS front. None (and
/// the session untouched) for anything else — HTTP/1.0 included, whose
/// close-delimited body stays with the held sink.
pub(crate) fn take_tls(session: &mut Session) -> Option<Stream> {
    let ours = matches!(*session.downstream_session, ServerSession::H1(_))
        && session.req_header().version == http::Version::HTTP_11
        && session
            .downstream_session
            .stream()
            .is_some_and(|s| s.as_any().is::<FrontTls>());
    if !ours {
        return None;
    }
    take_h1_stream(session)
}

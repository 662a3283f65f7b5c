//! Taking a plain HTTP/1.1 client socket out of pingora once its SSE request
//! is accepted: the socket is duplicated out of the session, pingora gets a
//! do-nothing placeholder session to finish the request with, and the stream
//! lives on as one small task (`stream::socket`). TLS and HTTP/2 streams are
//! taken out in `http::detach_tls`.

use crate::stream::socket::{Framing, SocketSink};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_proxy::Session;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// What pingora finishes the request with once the real socket is ours:
/// reads see EOF, writes vanish.
#[derive(Debug)]
struct Placeholder;

impl AsyncRead for Placeholder {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Placeholder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl VirtualSocket for Placeholder {
    fn set_socket_option(&self, _: VirtualSockOpt) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `take_sink` would take this session.
pub(crate) fn is_plain_h1(session: &Session) -> bool {
    matches!(*session.downstream_session, ServerSession::H1(_))
        && session
            .downstream_session
            .stream()
            .is_some_and(|s| s.as_any().is::<L4Stream>())
}

/// Take the client's TCP socket out of a plain-text HTTP/1 session, as the
/// sink of its stream (chunked on HTTP/1.1, delimited by the connection's
/// close on HTTP/1.0). None, and the session untouched, for anything else or
/// when the socket cannot be duplicated (out of file descriptors): the
/// stream is then held in the session instead, never dropped.
pub(crate) fn take_sink(session: &mut Session) -> Option<SocketSink> {
    if !is_plain_h1(session) {
        return None;
    }
    let framing = match session.req_header().version {
        http::Version::HTTP_09 | http::Version::HTTP_10 => Framing::UntilClose,
        _ => Framing::Chunked,
    };
    let l4 = session
        .downstream_session
        .stream()?
        .as_any()
        .downcast_ref::<L4Stream>()?;
    // Everything that can fail happens before the session is touched.
    let fd = match dup(l4) {
        Ok(fd) => fd,
        Err(e) => {
            // Only at the file limit; a warning per client would flood the log.
            tracing::debug!(error = %e, "cannot duplicate a client socket: its stream stays in pingora's session");
            return None;
        }
    };
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true).ok()?;
    let tcp = TcpStream::from_std(std).ok()?;
    // pingora's stream (and its descriptor) goes with the real session.
    drop(take_h1_stream(session));
    Some(SocketSink::new(tcp, framing))
}

/// Take an HTTP/1 session's connection, leaving pingora a placeholder to
/// finish the request with. None (and the session untouched) for HTTP/2.
pub(super) fn take_h1_stream(session: &mut Session) -> Option<pingora_core::protocols::Stream> {
    if !matches!(*session.downstream_session, ServerSession::H1(_)) {
        return None;
    }
    let mut placeholder = ServerSession::new_http1(Box::new(L4Stream::from(
        VirtualSocketStream::new(Box::new(Placeholder)),
    )));
    placeholder.set_keepalive(None);
    let real = std::mem::replace(&mut *session.downstream_session, placeholder);
    let ServerSession::H1(v1) = real else {
        return None;
    };
    Some(v1.into_inner())
}

/// Duplicate the socket so it outlives pingora's `Stream`, which owns the
/// original descriptor and closes it when dropped.
#[allow(unsafe_code)]
fn dup(stream: &L4Stream) -> io::Result<OwnedFd> {
    // SAFETY: `stream` owns this open descriptor and is borrowed for the whole
    // call, so the descriptor stays valid while we duplicate it.
    let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    fd.try_clone_to_owned()
}

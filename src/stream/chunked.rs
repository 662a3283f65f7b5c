//! HTTP/1 framing of a detached stream's bytes, shared by the plain socket
//! and the TLS sinks: the response head, and the body as chunks — each write
//! a few slices for one vectored write (the chunk-size line on the stack,
//! the hub's frame as it is: no copy).

use super::Head;
use crate::wire;
use bytes::{Bytes, BytesMut};
use std::io::IoSlice;
use std::ops::Deref;
use std::sync::LazyLock;

/// How a detached stream's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Framing {
    /// HTTP/1.1: chunked, so the connection could outlive the stream.
    #[default]
    Chunked,
    /// HTTP/1.0 has no chunked encoding: the body is every byte until the
    /// connection closes (`connection: close`).
    UntilClose,
}

impl Framing {
    /// What ends the response head: the framing's headers and the blank line.
    fn head_end(self) -> &'static [u8] {
        match self {
            Framing::Chunked => b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n",
            Framing::UntilClose => b"connection: close\r\n\r\n",
        }
    }

    /// What goes before and after `len` body bytes: a chunk's size line and
    /// end, or nothing.
    pub(super) fn around(self, len: usize, size: &mut [u8; 18]) -> (&[u8], &'static [u8]) {
        match self {
            Framing::Chunked => (chunk_head(len, size), b"\r\n"),
            Framing::UntilClose => (b"", b""),
        }
    }
}

/// `200` with the SSE headers, then `framing`'s.
fn sse_head(framing: Framing) -> Bytes {
    let mut out = BytesMut::from(&b"HTTP/1.1 200 OK\r\n"[..]);
    for (k, v) in wire::SSE_HEADERS {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(framing.head_end());
    out.freeze()
}

static SSE_HEAD_CHUNKED: LazyLock<Bytes> = LazyLock::new(|| sse_head(Framing::Chunked));
static SSE_HEAD_UNTIL_CLOSE: LazyLock<Bytes> = LazyLock::new(|| sse_head(Framing::UntilClose));

/// The response head as HTTP/1.1 bytes, delimited by `framing`.
pub(super) fn head_bytes(head: Head<'_>, framing: Framing) -> Bytes {
    let base: &Bytes = match framing {
        Framing::Chunked => &SSE_HEAD_CHUNKED,
        Framing::UntilClose => &SSE_HEAD_UNTIL_CLOSE,
    };
    match head {
        Head::Sse([]) => base.clone(),
        Head::Sse(extra) => sse_head_with(base, extra),
        Head::Given(h) => h1_head(h, framing),
    }
}

/// An SSE head (`base`) with `extra` headers before its blank line.
fn sse_head_with(base: &Bytes, extra: &[(http::HeaderName, http::HeaderValue)]) -> Bytes {
    let head = &base[..base.len() - 2];
    let mut out = BytesMut::with_capacity(base.len() + 64 * extra.len());
    out.extend_from_slice(head);
    header_lines(&mut out, extra.iter().map(|(k, v)| (k, v)));
    out.extend_from_slice(b"\r\n");
    out.freeze()
}

/// `name: value` lines.
fn header_lines<'h>(
    out: &mut BytesMut,
    headers: impl Iterator<Item = (&'h http::HeaderName, &'h http::HeaderValue)>,
) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// A stream's own response head (a GRIP hold's, a recorded reply's) as
/// HTTP/1.1 bytes: its status and headers, then `framing`'s (the stream
/// has no end we know of).
fn h1_head(head: &pingora_http::ResponseHeader, framing: Framing) -> Bytes {
    let status = head.status;
    let mut out = BytesMut::with_capacity(256);
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\n",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        )
        .as_bytes(),
    );
    header_lines(&mut out, head.headers.iter());
    out.extend_from_slice(match framing {
        Framing::Chunked => b"transfer-encoding: chunked\r\n\r\n",
        Framing::UntilClose => framing.head_end(),
    });
    out.freeze()
}

/// Slices at most per write: a chunk head, two parts and the chunk's end.
pub(super) const MAX_PARTS: usize = 4;

/// The slices of one write.
#[derive(Debug)]
pub(super) struct Parts<'a> {
    parts: [&'a [u8]; MAX_PARTS],
    used: usize,
}

impl<'a> Parts<'a> {
    fn of(list: &[&'a [u8]]) -> Parts<'a> {
        let mut parts: [&[u8]; MAX_PARTS] = [&[]; MAX_PARTS];
        parts[..list.len()].copy_from_slice(list);
        Parts {
            parts,
            used: list.len(),
        }
    }
}

impl<'a> Deref for Parts<'a> {
    type Target = [&'a [u8]];
    fn deref(&self) -> &Self::Target {
        &self.parts[..self.used]
    }
}

/// What is left of `parts` after `done` bytes, as slices for a vectored
/// write; how many of `out` are used.
pub(super) fn slices_from<'a>(
    parts: &[&'a [u8]],
    done: usize,
    out: &mut [IoSlice<'a>; MAX_PARTS],
) -> usize {
    let mut used = 0;
    let mut skip = done;
    for p in parts.iter().take(MAX_PARTS) {
        if skip >= p.len() {
            skip -= p.len();
            continue;
        }
        out[used] = IoSlice::new(&p[skip..]);
        skip = 0;
        used += 1;
    }
    used
}

/// The bytes of `parts` after the first `done`, as one buffer of their own.
pub(super) fn rest(parts: &[&[u8]], mut done: usize) -> Bytes {
    let mut out = BytesMut::new();
    for p in parts {
        if done >= p.len() {
            done -= p.len();
            continue;
        }
        out.extend_from_slice(&p[done..]);
        done = 0;
    }
    out.freeze()
}

/// Where a write's chunk-size line is built.
#[derive(Debug, Default)]
pub(super) struct Chunked {
    size: [u8; 18],
}

impl Chunked {
    /// The head, then `body` as the first chunk (an empty chunk would end
    /// the body before it started, so none for an empty body).
    pub(super) fn opening<'a>(&'a mut self, head: &'a [u8], body: &'a [u8]) -> Parts<'a> {
        if body.is_empty() {
            return Parts::of(&[head]);
        }
        Parts::of(&[head, chunk_head(body.len(), &mut self.size), body, b"\r\n"])
    }

    /// `bytes` as one chunk; nothing for no bytes (an empty chunk would end
    /// the body).
    pub(super) fn chunk<'a>(&'a mut self, bytes: &'a [u8]) -> Parts<'a> {
        if bytes.is_empty() {
            return Parts::of(&[]);
        }
        Parts::of(&[chunk_head(bytes.len(), &mut self.size), bytes, b"\r\n"])
    }

    /// `last` as a chunk (when there is any), then the end of the body.
    pub(super) fn ending<'a>(&'a mut self, last: &'a [u8]) -> Parts<'a> {
        if last.is_empty() {
            return Parts::of(&[b"0\r\n\r\n"]);
        }
        Parts::of(&[
            chunk_head(last.len(), &mut self.size),
            last,
            b"\r\n0\r\n\r\n",
        ])
    }
}

/// `len` as a chunk-size line, in a stack buffer.
fn chunk_head(len: usize, buf: &mut [u8; 18]) -> &[u8] {
    let mut n = 0;
    let mut digits = [0u8; 16];
    let mut v = len;
    loop {
        digits[n] = b"0123456789abcdef"[v & 0xf];
        n += 1;
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    for i in 0..n {
        buf[i] = digits[n - 1 - i];
    }
    buf[n] = b'\r';
    buf[n + 1] = b'\n';
    &buf[..n + 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_heads() {
        let mut b = [0u8; 18];
        assert_eq!(chunk_head(0, &mut b), b"0\r\n");
        assert_eq!(chunk_head(255, &mut b), b"ff\r\n");
        assert_eq!(chunk_head(4096, &mut b), b"1000\r\n");
    }

    #[test]
    fn writes_are_whole_chunks_and_never_an_early_end() {
        let mut c = Chunked::default();
        assert_eq!(c.opening(b"H", b"").concat(), b"H");
        assert_eq!(c.opening(b"H", b"abc").concat(), b"H3\r\nabc\r\n");
        assert!(c.chunk(b"").is_empty());
        assert_eq!(c.chunk(b"x").concat(), b"1\r\nx\r\n");
        assert_eq!(c.ending(b"").concat(), b"0\r\n\r\n");
        assert_eq!(c.ending(b"zz").concat(), b"2\r\nzz\r\n0\r\n\r\n");
    }
}

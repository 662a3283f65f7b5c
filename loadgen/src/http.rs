//! Minimal raw HTTP/1.1 client pieces: connecting from a chosen source IP,
//! reading a response head, and decoding chunked / length / close bodies.

use bytes::{Buf, BytesMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

const MAX_HEAD: usize = 64 * 1024;

/// Connect to `dst` from `src` (port chosen by the kernel at connect time).
pub async fn connect_from(
    src: Option<Ipv4Addr>,
    dst: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = src {
        set_bind_no_port(&sock);
        sock.bind(SocketAddr::V4(SocketAddrV4::new(ip, 0)))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = timeout(limit, sock.connect(dst))
        .await
        .map_err(|_| format!("connect to {dst}: timed out"))?
        .map_err(|e| format!("connect to {dst}: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// IP_BIND_ADDRESS_NO_PORT lets the kernel choose the port at connect() so the
/// ephemeral range is shared per (src, dst) 4-tuple instead of per source IP.
fn set_bind_no_port(sock: &TcpSocket) {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: valid fd owned by `sock`, pointer/len describe a c_int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Chunked,
    Length(u64),
    Close,
}

#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    pub framing: Framing,
    pub connection_close: bool,
    pub content_type: Option<String>,
}

/// Read a response head from `stream` into `buf`; on return `buf` holds any
/// body bytes already read after the head.
pub async fn read_head<R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut BytesMut,
    limit: Duration,
) -> Result<ResponseHead, String> {
    let fut = async {
        loop {
            if let Some(head) = try_parse_head(buf)? {
                return Ok(head);
            }
            if buf.len() > MAX_HEAD {
                return Err("response head too large".to_string());
            }
            buf.reserve(4096);
            let n = stream
                .read_buf(buf)
                .await
                .map_err(|e| format!("read head: {e}"))?;
            if n == 0 {
                return Err("connection closed before response head".to_string());
            }
        }
    };
    timeout(limit, fut)
        .await
        .map_err(|_| "timed out reading response head".to_string())?
}

fn try_parse_head(buf: &mut BytesMut) -> Result<Option<ResponseHead>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("bad response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let http10 = resp.version == Some(0);
    let mut chunked = false;
    let mut length = None;
    let mut close = http10;
    let mut content_type = None;
    for h in resp.headers.iter() {
        let v = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v
                .rsplit(',')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse::<u64>().ok();
        } else if h.name.eq_ignore_ascii_case("connection") {
            let l = v.to_ascii_lowercase();
            if l.contains("close") {
                close = true;
            } else if l.contains("keep-alive") {
                close = false;
            }
        } else if h.name.eq_ignore_ascii_case("content-type") {
            content_type = Some(v.into_owned());
        }
    }
    let framing = if chunked {
        Framing::Chunked
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Framing::Length(0)
    } else if let Some(l) = length {
        Framing::Length(l)
    } else {
        Framing::Close
    };
    buf.advance(n);
    Ok(Some(ResponseHead {
        status,
        framing,
        connection_close: close || framing == Framing::Close,
        content_type,
    }))
}

#[derive(Debug, Clone, Copy)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailer,
}

/// Incremental body decoder. Feed raw bytes, get payload bytes.
#[derive(Debug)]
pub struct BodyDecoder {
    framing: Framing,
    chunk: ChunkState,
    remaining: u64,
    done: bool,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> Self {
        let remaining = match framing {
            Framing::Length(l) => l,
            _ => 0,
        };
        BodyDecoder {
            framing,
            chunk: ChunkState::Size,
            remaining,
            done: matches!(framing, Framing::Length(0)),
        }
    }

    /// True once the body is complete (last chunk / length reached).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Consume as much of `raw` as possible, calling `out` with payload slices.
    /// Unconsumed bytes (an incomplete chunk-size line) stay in `raw`.
    pub fn decode(
        &mut self,
        raw: &mut BytesMut,
        out: &mut impl FnMut(&[u8]),
    ) -> Result<(), String> {
        match self.framing {
            Framing::Close => {
                if !raw.is_empty() {
                    out(raw);
                    raw.clear();
                }
                Ok(())
            }
            Framing::Length(_) => {
                let n = (raw.len() as u64).min(self.remaining) as usize;
                if n > 0 {
                    out(&raw[..n]);
                    raw.advance(n);
                    self.remaining -= n as u64;
                }
                if self.remaining == 0 {
                    self.done = true;
                }
                Ok(())
            }
            Framing::Chunked => self.decode_chunked(raw, out),
        }
    }

    fn decode_chunked(
        &mut self,
        raw: &mut BytesMut,
        out: &mut impl FnMut(&[u8]),
    ) -> Result<(), String> {
        while !self.done && !raw.is_empty() {
            match self.chunk {
                ChunkState::Size => {
                    let Some(eol) = raw.iter().position(|&b| b == b'\n') else {
                        if raw.len() > 1024 {
                            return Err("chunk size line too long".into());
                        }
                        return Ok(());
                    };
                    let line = &raw[..eol];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let hex_end = line
                        .iter()
                        .position(|b| !b.is_ascii_hexdigit())
                        .unwrap_or(line.len());
                    if hex_end == 0 || hex_end > 15 {
                        return Err(format!(
                            "bad chunk size line {:?}",
                            String::from_utf8_lossy(line)
                        ));
                    }
                    let size = u64::from_str_radix(
                        std::str::from_utf8(&line[..hex_end]).unwrap_or("0"),
                        16,
                    )
                    .map_err(|e| format!("bad chunk size: {e}"))?;
                    raw.advance(eol + 1);
                    self.chunk = if size == 0 {
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    let n = (raw.len() as u64).min(left) as usize;
                    out(&raw[..n]);
                    raw.advance(n);
                    let left = left - n as u64;
                    self.chunk = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::DataEnd => {
                    // Expect CRLF (tolerate bare LF).
                    if raw[0] == b'\r' {
                        if raw.len() < 2 {
                            return Ok(());
                        }
                        if raw[1] != b'\n' {
                            return Err("missing LF after chunk data".into());
                        }
                        raw.advance(2);
                    } else if raw[0] == b'\n' {
                        raw.advance(1);
                    } else {
                        return Err("missing CRLF after chunk data".into());
                    }
                    self.chunk = ChunkState::Size;
                }
                ChunkState::Trailer => {
                    let Some(eol) = raw.iter().position(|&b| b == b'\n') else {
                        return Ok(());
                    };
                    let empty = eol == 0 || (eol == 1 && raw[0] == b'\r');
                    raw.advance(eol + 1);
                    if empty {
                        self.done = true;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(framing: Framing, pieces: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut d = BodyDecoder::new(framing);
        let mut raw = BytesMut::new();
        let mut got = Vec::new();
        for p in pieces {
            raw.extend_from_slice(p);
            d.decode(&mut raw, &mut |s: &[u8]| got.extend_from_slice(s))
                .unwrap();
        }
        (got, d.is_done())
    }

    #[test]
    fn chunked_split_everywhere() {
        let wire = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..wire.len() {
            let (a, b) = wire.split_at(split);
            let (got, done) = run(Framing::Chunked, &[a, b]);
            assert_eq!(got, b"hello world", "split {split}");
            assert!(done);
        }
        // byte by byte
        let pieces: Vec<&[u8]> = wire.chunks(1).collect();
        let (got, done) = run(Framing::Chunked, &pieces);
        assert_eq!(got, b"hello world");
        assert!(done);
    }

    #[test]
    fn length_and_close() {
        let (got, done) = run(Framing::Length(3), &[b"ab", b"cdef"]);
        assert_eq!(got, b"abc");
        assert!(done);
        let (got, done) = run(Framing::Close, &[b"ab", b"cd"]);
        assert_eq!(got, b"abcd");
        assert!(!done);
    }

    #[test]
    fn head_parsing() {
        let mut b = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc"[..],
        );
        let h = try_parse_head(&mut b).unwrap().unwrap();
        assert_eq!(h.status, 200);
        assert_eq!(h.framing, Framing::Chunked);
        assert_eq!(&b[..], b"3\r\nabc");
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"[..]);
        let h = try_parse_head(&mut b).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Close);
        assert!(h.connection_close);
        let mut b = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(try_parse_head(&mut b).unwrap().is_none());
    }
}

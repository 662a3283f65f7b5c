//! The handoff protocol between the running process (old) and its
//! replacement (new) on `<upgrade_socket>.streams`.
//!
//! ```text
//!   old → new  HELLO  24 bytes, frozen for every version: MAGIC[16] | min u16 | max u16 | flags u32
//!   new → old  HELLO  24 bytes: MAGIC[16] | chosen u16 (0 = refused) | reason u16 | flags u32
//!   then frames:  len u32 | kind u8 | 0 u8 | nfds u16 | crc32(payload) u32 | payload
//!   (little endian; payload postcard-encoded; a STREAMS frame carries `nfds`
//!   sockets, SCM_RIGHTS, in the same sendmsg as its header)
//!   old → new  SETUP, HUB (memory broker), RECORDS × n (memory broker,
//!              version 2), STREAMS × n, END
//!   new → old  DONE (the streams are staged, nothing written yet) or ABORT
//!   old → new  COMMIT: the old process lets go; only now does the new one write
//! ```
//!
//! postcard is not self-describing: any change to a record is a new
//! protocol version. Both sides announce what they speak and refuse what
//! they cannot parse; a refusal costs a drain (clients reconnect and
//! resume), never a corrupted stream. All of it is safe Rust: rustix hands
//! received descriptors back as `OwnedFd`.

use bytes::Bytes;
use rustix::net::{
    recvmsg, sendmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

pub(crate) const MAGIC: &[u8; 16] = b"SSEGATE-HANDOFF\0";
/// The protocol versions this binary speaks: 2 added RECORDS.
pub(crate) const VERSIONS: (u16, u16) = (1, 2);
/// Linux `SCM_MAX_FD`: more descriptors in one message fail with EINVAL.
pub(crate) const MAX_FDS: usize = 253;
const MAX_FRAME: usize = 256 << 20;
const HEADER: usize = 12;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Setup = 1,
    Hub = 2,
    Streams = 3,
    End = 4,
    Done = 5,
    Abort = 6,
    Commit = 7,
    Records = 8,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Setup,
            2 => Kind::Hub,
            3 => Kind::Streams,
            4 => Kind::End,
            5 => Kind::Done,
            6 => Kind::Abort,
            7 => Kind::Commit,
            8 => Kind::Records,
            _ => return None,
        })
    }
}

/// Why the new process refused a handoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub(crate) enum Refusal {
    NoCommonVersion = 1,
    BrokerDiffers = 2,
}

pub(crate) fn hello(min: u16, max: u16) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[..16].copy_from_slice(MAGIC);
    b[16..18].copy_from_slice(&min.to_le_bytes());
    b[18..20].copy_from_slice(&max.to_le_bytes());
    b
}

/// The two numbers of a HELLO, or None when it is not one of ours.
pub(crate) fn parse_hello(b: &[u8; 24]) -> Option<(u16, u16)> {
    if &b[..16] != MAGIC {
        return None;
    }
    Some((
        u16::from_le_bytes([b[16], b[17]]),
        u16::from_le_bytes([b[18], b[19]]),
    ))
}

/// What the old process runs, so the new one can refuse what does not fit.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Setup {
    /// `memory` or `redis:<url>#<prefix>`: streams move only between equal brokers.
    pub broker: String,
    pub streams: u32,
}

/// A frame queued for a client and not written yet.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Queued {
    pub seq: u64,
    pub frame: Bytes,
    pub grip_only: bool,
}

/// One stream; the i-th record of a STREAMS frame owns its i-th socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StreamRecord {
    /// The route's fingerprint: the new process goes on if it has that route.
    pub route: u64,
    pub channels: Vec<String>,
    /// The newest cursor written or being written (in `tail`), as a cursor
    /// string the new process resumes after (a shared broker replays what
    /// was published during the handoff).
    pub last_seq: u64,
    pub resume: String,
    /// The unwritten rest of a chunk the client has begun to receive.
    pub tail: Bytes,
    pub queued: Vec<Queued>,
    pub retry_ms: u64,
    pub client_ip: Option<IpAddr>,
    pub expires: Option<u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct End {
    pub streams: u32,
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Done {
    pub adopted: u32,
}

pub(crate) fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(io::Error::other)
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(b: &'a [u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Header and payload in one sendmsg, with `fds` attached to it.
pub(crate) fn send_frame(
    sock: &UnixStream,
    kind: Kind,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    if fds.len() > MAX_FDS || payload.len() > MAX_FRAME {
        return Err(io::Error::other("frame too large"));
    }
    let mut head = [0u8; HEADER];
    head[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    head[4] = kind as u8;
    head[6..8].copy_from_slice(&(fds.len() as u16).to_le_bytes());
    head[8..12].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let mut space = vec![MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !cmsg.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    let total = HEADER + payload.len();
    let sent = loop {
        match sendmsg(
            sock,
            &[IoSlice::new(&head), IoSlice::new(payload)],
            &mut cmsg,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // A blocking stream socket takes it all unless a signal cut it short;
    // the descriptors went with the first byte either way.
    if sent < total {
        let mut all = Vec::with_capacity(total);
        all.extend_from_slice(&head);
        all.extend_from_slice(payload);
        (&*sock).write_all(&all[sent..])?;
    }
    Ok(())
}

#[derive(Debug)]
pub(crate) struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Reads frames; descriptors are queued as they arrive and handed to the
/// frame that declares them.
#[derive(Debug)]
pub(crate) struct Receiver {
    sock: UnixStream,
    buf: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    space: Vec<MaybeUninit<u8>>,
    tmp: Vec<u8>,
}

impl Receiver {
    pub(crate) fn new(sock: UnixStream) -> Receiver {
        Receiver {
            sock,
            buf: Vec::new(),
            fds: VecDeque::new(),
            space: vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))],
            tmp: vec![0u8; 256 * 1024],
        }
    }

    pub(crate) fn socket(&self) -> &UnixStream {
        &self.sock
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut cmsg = RecvAncillaryBuffer::new(&mut self.space);
        let r = loop {
            match recvmsg(
                &self.sock,
                &mut [IoSliceMut::new(&mut self.tmp)],
                &mut cmsg,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(r) => break r,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if r.flags.contains(ReturnFlags::CTRUNC) {
            // The kernel dropped descriptors: the stream table no longer matches.
            return Err(io::Error::other(
                "control data truncated (descriptors lost)",
            ));
        }
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                self.fds.extend(fds);
            }
        }
        self.buf.extend_from_slice(&self.tmp[..r.bytes]);
        Ok(r.bytes)
    }

    /// The next frame; None at a clean end of the connection.
    pub(crate) fn next(&mut self) -> io::Result<Option<Frame>> {
        loop {
            if let Some(frame) = self.take()? {
                return Ok(Some(frame));
            }
            if self.fill()? == 0 {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(io::ErrorKind::UnexpectedEof.into())
                };
            }
        }
    }

    /// A whole frame from what was received, if there is one.
    fn take(&mut self) -> io::Result<Option<Frame>> {
        let Some(head) = self.buf.get(..HEADER) else {
            return Ok(None);
        };
        let u32_at =
            |i: usize| u32::from_le_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
        let len = u32_at(0) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "frame too large",
            ));
        }
        if self.buf.len() < HEADER + len {
            return Ok(None);
        }
        let kind = Kind::from_u8(head[4])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown frame kind"))?;
        let nfds = u16::from_le_bytes([head[6], head[7]]) as usize;
        let crc = u32_at(8);
        let payload = self.buf[HEADER..HEADER + len].to_vec();
        self.buf.drain(..HEADER + len);
        if crc32fast::hash(&payload) != crc {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "bad checksum"));
        }
        if self.fds.len() < nfds {
            return Err(io::Error::other(
                "a frame declares more sockets than arrived",
            ));
        }
        let fds = self.fds.drain(..nfds).collect();
        Ok(Some(Frame { kind, payload, fds }))
    }
}

/// Blocking read of the 24 bytes of a HELLO.
pub(crate) fn read_hello(mut sock: &UnixStream) -> io::Result<[u8; 24]> {
    let mut b = [0u8; 24];
    sock.read_exact(&mut b)?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn frames_carry_payloads_and_sockets_and_refuse_corruption() {
        let (a, b) = UnixStream::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let payload = encode(&End { streams: 7 }).unwrap();
        send_frame(&a, Kind::End, &payload, &[c.as_fd()]).unwrap();
        let mut r = Receiver::new(b);
        let f = r.next().unwrap().unwrap();
        assert_eq!(f.kind, Kind::End);
        assert_eq!(decode::<End>(&f.payload).unwrap().streams, 7);
        assert_eq!(f.fds.len(), 1);
        let moved = std::net::TcpStream::from(f.fds.into_iter().next().unwrap());
        assert_eq!(moved.local_addr().unwrap(), c.local_addr().unwrap());
        // A flipped byte is refused, not decoded.
        let mut raw = vec![0u8; HEADER];
        raw[..4].copy_from_slice(&3u32.to_le_bytes());
        raw[4] = Kind::Done as u8;
        raw[8..12].copy_from_slice(&crc32fast::hash(b"abc").to_le_bytes());
        raw.extend_from_slice(b"abd");
        (&a).write_all(&raw).unwrap();
        assert!(r.next().is_err());
    }

    #[test]
    fn hello_is_ours_or_nothing() {
        assert_eq!(parse_hello(&hello(1, 3)), Some((1, 3)));
        let mut other = hello(1, 1);
        other[0] = b'X';
        assert_eq!(parse_hello(&other), None);
    }
}

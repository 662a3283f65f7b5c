//! The bytes of `hub.persist`'s two files.
//!
//! Both files are `MAGIC | version u32 LE` followed by records, each framed as
//! `len u32 LE | crc32 u32 LE | postcard body`. The CRC makes every record
//! all-or-nothing: a record cut by a crash, or changed on disk, is refused as
//! a whole and never half-applied. postcard (serde) writes the bodies, so the
//! layout is one Rust type, checked by a golden test; changing it means a new
//! `VERSION`.

use serde::{Deserialize, Serialize};
use std::fmt;

pub(super) const MAGIC: &[u8; 8] = b"SSEGHUB\0";
/// Bump on any change to `Record`'s layout: an older ssegate then refuses
/// the file (warning, fresh start) instead of misreading it. Version 2 added
/// `Record::Replies` (recorded backend replies) at the end of the enum, so a
/// version 1 file reads as it always did.
pub(super) const VERSION: u32 = 2;
/// The oldest version this ssegate still reads.
pub(super) const OLDEST: u32 = 1;
pub(super) const PREAMBLE: usize = MAGIC.len() + 4;
const FRAME: usize = 8;

/// One event as saved: what a restart needs to serve it again exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Ev<'a> {
    pub seq: u64,
    /// Wall-clock publish time, for `history.ttl` across restarts.
    pub at_ms: u64,
    #[serde(borrow)]
    pub dedupe: Option<&'a str>,
    pub grip_only: bool,
    /// The encoded SSE frame, its `id:` included (the epoch carries over).
    #[serde(with = "serde_bytes")]
    pub frame: &'a [u8],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Kind {
    Checkpoint,
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Head {
    pub kind: Kind,
    /// A checkpoint and the log written after it share a generation; a log
    /// of an older one is already inside the checkpoint.
    pub generation: u64,
    pub epoch: u64,
    pub created_ms: u64,
}

/// The hub's counters as of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(super) struct Marks {
    /// The newest cursor whose events are all in the file.
    pub seq: u64,
    /// No cursor above this was handed out before the file was written.
    pub reserved: u64,
    pub forgotten: u64,
    /// Cursor ranges `(from, to]` lost in unclean stops.
    pub lost: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Record<'a> {
    /// The first record of either file.
    Head(Head),
    /// Checkpoint, second record.
    Marks(Marks),
    /// Checkpoint: a channel's gap mark and (a slice of) its history, oldest
    /// first; a long history takes several records.
    Channel {
        #[serde(borrow)]
        name: &'a str,
        evicted: u64,
        #[serde(borrow)]
        events: Vec<Ev<'a>>,
    },
    /// Checkpoint, last record: without it the file was cut short.
    End { channels: u64, events: u64 },
    /// Log: one save, the events published since the previous one.
    Delta {
        seq: u64,
        reserved: u64,
        forgotten: u64,
        #[serde(borrow)]
        events: Vec<(&'a str, Ev<'a>)>,
    },
    /// Log: cursors in `(from, to]` were handed out but never saved.
    Lost { from: u64, to: u64 },
    /// Log: the process stopped after saving everything up to `seq`.
    Clean { seq: u64 },
    /// Another component's state, whole (see `persist::Section`).
    Section {
        #[serde(borrow)]
        key: &'a str,
        #[serde(with = "serde_bytes")]
        body: &'a [u8],
    },
    /// Version 2. Recorded backend replies (`record:` routes): in a
    /// checkpoint one reply whole, in the log what changed since the
    /// previous save, applied in order.
    Replies {
        #[serde(borrow)]
        ops: Vec<ReplyOp<'a>>,
    },
}

/// One change to the recorded replies. A reply is named by its 16 id bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum ReplyOp<'a> {
    /// Forget every reply (what follows writes them whole again).
    Reset,
    Start {
        id: [u8; 16],
        #[serde(borrow)]
        route: &'a str,
        credentials: [u8; 32],
        /// Wall clock, unix ms: with `ttl_ms`, when it expires.
        created_ms: u64,
        ttl_ms: u64,
        /// The route's `record.max_total` when it was made.
        max_total: u64,
    },
    /// Frames `first`, `first + 1`, … as written to clients, their ids in them.
    Frames {
        id: [u8; 16],
        first: u64,
        #[serde(borrow)]
        frames: Vec<Chunk<'a>>,
    },
    /// The reply ended; its last frame (an `ssegate.incomplete`) is already
    /// among its frames when it did not end complete.
    End { id: [u8; 16] },
    /// Dropped (expired or evicted).
    Drop { id: [u8; 16] },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Chunk<'a>(#[serde(with = "serde_bytes")] pub &'a [u8]);

/// Why a file or a record was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Damage {
    NotOurs,
    Version(u32),
    /// A record runs past the end of the file: the tail of a write cut short.
    Torn {
        at: u64,
    },
    Checksum {
        at: u64,
    },
    Garbled {
        at: u64,
        why: String,
    },
    Inconsistent(String),
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Damage::NotOurs => write!(f, "not an ssegate history file"),
            Damage::Version(v) => write!(
                f,
                "format version {v}, this ssegate reads versions {OLDEST} to {VERSION}"
            ),
            Damage::Torn { at } => write!(f, "cut short at byte {at}"),
            Damage::Checksum { at } => write!(f, "checksum mismatch in the record at byte {at}"),
            Damage::Garbled { at, why } => write!(f, "unreadable record at byte {at}: {why}"),
            Damage::Inconsistent(why) => write!(f, "inconsistent: {why}"),
        }
    }
}

pub(super) fn preamble() -> Vec<u8> {
    let mut b = Vec::with_capacity(PREAMBLE);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b
}

/// The version a file was written with (its header, unchecked).
pub(super) fn version_of(buf: &[u8]) -> Option<u32> {
    let v = buf.get(MAGIC.len()..PREAMBLE)?;
    Some(u32::from_le_bytes([v[0], v[1], v[2], v[3]]))
}

/// Append `rec` to `out`, framed.
pub(super) fn frame(rec: &Record<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME]);
    if postcard::to_io(rec, &mut *out).is_err() {
        // Writing plain structs into a Vec cannot fail; if it ever did, the
        // record is left out whole rather than framed half-written.
        out.truncate(start);
        return;
    }
    let len = (out.len() - start - FRAME) as u32;
    let crc = crc32fast::hash(&out[start + FRAME..]);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + FRAME].copy_from_slice(&crc.to_le_bytes());
}

/// The records of a file, in order. Stops at the first bad one and says why,
/// with the offset where the good part ends.
#[derive(Debug)]
pub(super) struct Records<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Records<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Result<Records<'a>, Damage> {
        if buf.len() < PREAMBLE || &buf[..MAGIC.len()] != MAGIC {
            return Err(Damage::NotOurs);
        }
        let mut v = [0; 4];
        v.copy_from_slice(&buf[MAGIC.len()..PREAMBLE]);
        match u32::from_le_bytes(v) {
            OLDEST..=VERSION => Ok(Records { buf, at: PREAMBLE }),
            other => Err(Damage::Version(other)),
        }
    }

    /// Where the records read so far end.
    pub(super) fn offset(&self) -> u64 {
        self.at as u64
    }

    pub(super) fn next_record(&mut self) -> Option<Result<Record<'a>, Damage>> {
        let rest = &self.buf[self.at..];
        if rest.is_empty() {
            return None;
        }
        let at = self.at as u64;
        if rest.len() < FRAME {
            return Some(Err(Damage::Torn { at }));
        }
        let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
        let (len, crc) = (word(0) as usize, word(4));
        let Some(body) = rest.get(FRAME..FRAME + len) else {
            return Some(Err(Damage::Torn { at }));
        };
        if crc32fast::hash(body) != crc {
            return Some(Err(Damage::Checksum { at }));
        }
        match postcard::take_from_bytes(body) {
            Ok((rec, [])) => {
                self.at += FRAME + len;
                Some(Ok(rec))
            }
            Ok(_) => Some(Err(Damage::Garbled {
                at,
                why: "bytes after the record".into(),
            })),
            Err(e) => Some(Err(Damage::Garbled {
                at,
                why: e.to_string(),
            })),
        }
    }

    /// Nothing follows the record that failed: a write cut by a crash, not
    /// damage in the middle of the file. A crash may also leave the file
    /// longer than what reached the disk, filled with zeros.
    pub(super) fn at_tail(&self, damage: &Damage) -> bool {
        let at = match damage {
            Damage::Torn { .. } => return true,
            Damage::Checksum { at } | Damage::Garbled { at, .. } => *at as usize,
            _ => return false,
        };
        let rest = &self.buf[at.min(self.buf.len())..];
        if rest.iter().all(|b| *b == 0) {
            return true;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        matches!(damage, Damage::Checksum { .. }) && rest.len() == FRAME + len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record<'static>> {
        let ev = |seq, dedupe| Ev {
            seq,
            at_ms: 1_790_000_000_000 + seq,
            dedupe,
            grip_only: false,
            frame: b"id: 1a-1\ndata: x\n\n",
        };
        vec![
            Record::Head(Head {
                kind: Kind::Log,
                generation: 3,
                epoch: 0x1a,
                created_ms: 1_790_000_000_000,
            }),
            Record::Marks(Marks {
                seq: 7,
                reserved: 7 + (1 << 24),
                forgotten: 2,
                lost: vec![(3, 5)],
            }),
            Record::Channel {
                name: "a",
                evicted: 1,
                events: vec![ev(2, Some("x")), ev(4, None)],
            },
            Record::End {
                channels: 1,
                events: 2,
            },
            Record::Delta {
                seq: 9,
                reserved: 9 + (1 << 24),
                forgotten: 2,
                events: vec![("b", ev(8, None)), ("a", ev(9, Some("y")))],
            },
            Record::Lost { from: 9, to: 12 },
            Record::Clean { seq: 12 },
            Record::Section {
                key: "record",
                body: b"\x00\x01",
            },
            Record::Replies {
                ops: vec![
                    ReplyOp::Start {
                        id: [7; 16],
                        route: "/chat",
                        credentials: [9; 32],
                        created_ms: 1_790_000_000_000,
                        ttl_ms: 600_000,
                        max_total: 1 << 20,
                    },
                    ReplyOp::Frames {
                        id: [7; 16],
                        first: 1,
                        frames: vec![Chunk(b"id: x.1\ndata: a\n\n"), Chunk(b"id: x.2\n\n")],
                    },
                    ReplyOp::End { id: [7; 16] },
                    ReplyOp::Drop { id: [7; 16] },
                    ReplyOp::Reset,
                ],
            },
        ]
    }

    fn file(recs: &[Record<'_>]) -> Vec<u8> {
        let mut b = preamble();
        for r in recs {
            frame(r, &mut b);
        }
        b
    }

    #[test]
    fn records_round_trip() {
        let recs = sample();
        let bytes = file(&recs);
        let mut rd = Records::new(&bytes).unwrap();
        let mut back = Vec::new();
        while let Some(r) = rd.next_record() {
            back.push(r.unwrap());
        }
        assert_eq!(back, recs);
        assert_eq!(rd.offset(), bytes.len() as u64);
    }

    /// The layout of version 2, byte for byte. If this fails, the format
    /// changed: bump `VERSION` and update the expected digest.
    #[test]
    fn version_2_layout_is_frozen() {
        let bytes = file(&sample());
        let digest = crc32fast::hash(&bytes);
        assert_eq!(
            (bytes.len(), format!("{digest:08x}")),
            (GOLDEN_LEN, GOLDEN_CRC.to_string()),
            "the on-disk layout changed: bump format::VERSION"
        );
    }
    const GOLDEN_LEN: usize = 407;
    const GOLDEN_CRC: &str = "faf05cf4";

    #[test]
    fn a_cut_tail_is_torn_and_damage_inside_is_not() {
        let bytes = file(&sample());
        let whole = {
            let mut rd = Records::new(&bytes).unwrap();
            let mut ends = Vec::new();
            while let Some(Ok(_)) = rd.next_record() {
                ends.push(rd.offset() as usize);
            }
            ends
        };
        // Cut inside the last record: torn, at the tail.
        let cut = &bytes[..bytes.len() - 3];
        let mut rd = Records::new(cut).unwrap();
        let err = loop {
            match rd.next_record() {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the cut was not seen"),
            }
        };
        assert!(rd.at_tail(&err), "{err}");
        assert_eq!(rd.offset() as usize, whole[whole.len() - 2]);
        // One bit flipped in the middle: checksum, not at the tail.
        let mut flipped = bytes.clone();
        flipped[whole[3] + 8 + 5] ^= 0x10;
        let mut rd = Records::new(&flipped).unwrap();
        let err = loop {
            match rd.next_record() {
                Some(Ok(_)) => {}
                Some(Err(e)) => break e,
                None => panic!("the flip was not seen"),
            }
        };
        assert!(matches!(err, Damage::Checksum { .. }), "{err}");
        assert!(!rd.at_tail(&err));
    }

    #[test]
    fn foreign_and_future_files_are_refused() {
        assert_eq!(Records::new(b"").unwrap_err(), Damage::NotOurs);
        assert_eq!(
            Records::new(b"GIF89a\0\0\0\0\0\0").unwrap_err(),
            Damage::NotOurs
        );
        let mut future = MAGIC.to_vec();
        future.extend_from_slice(&3u32.to_le_bytes());
        assert_eq!(Records::new(&future).unwrap_err(), Damage::Version(3));
        assert_eq!(version_of(&future), Some(3));
    }

    /// A version 1 file (no replies) reads as before: the new kind was added
    /// at the end of the enum, so the old ones keep their tags.
    #[test]
    fn version_1_files_still_read() {
        let old: Vec<Record<'_>> = sample()
            .into_iter()
            .filter(|r| !matches!(r, Record::Replies { .. }))
            .collect();
        let mut bytes = file(&old);
        bytes[MAGIC.len()..PREAMBLE].copy_from_slice(&1u32.to_le_bytes());
        // The digest of version 1's golden file, before replies existed.
        assert_eq!(
            (bytes.len(), format!("{:08x}", crc32fast::hash(&bytes))),
            (248, "7f5017fa".to_string())
        );
        let mut rd = Records::new(&bytes).unwrap();
        let mut back = Vec::new();
        while let Some(r) = rd.next_record() {
            back.push(r.unwrap());
        }
        assert_eq!(back, old);
    }
}

//! Reading `hub.persist`'s files back: a checkpoint must be whole; the log
//! is replayed onto it up to a cut tail (the last save of a process that
//! died while writing it), and any other damage refuses both.

use super::format::{self, Damage, Kind, Record, Records};
use super::image::Image;
use bytes::Bytes;
use std::fs;
use std::io::ErrorKind;
use std::path::Path;

/// Read a whole checkpoint: any damage refuses it.
pub(super) fn read_checkpoint(buf: &Bytes, size: usize) -> Result<(Image, u64), Damage> {
    let mut recs = Records::new(buf)?;
    let mut next = || recs.next_record().unwrap_or(Err(Damage::Torn { at: 0 }));
    let head = match next()? {
        Record::Head(h) if h.kind == Kind::Checkpoint => h,
        _ => return Err(Damage::Inconsistent("no checkpoint header".into())),
    };
    let mut image = Image::empty(head.epoch);
    match next()? {
        Record::Marks(m) => image.set_marks(m),
        _ => return Err(Damage::Inconsistent("no marks after the header".into())),
    }
    let (mut channels, mut events) = (0u64, 0u64);
    loop {
        match next()? {
            Record::End {
                channels: c,
                events: e,
            } => {
                if (c, e) != (channels, events) {
                    return Err(Damage::Inconsistent(format!(
                        "{channels} channel records and {events} events, the end says {c} and {e}"
                    )));
                }
                break;
            }
            rec => {
                if let Record::Channel { events: evs, .. } = &rec {
                    channels += 1;
                    events += evs.len() as u64;
                }
                image.apply(buf, rec, size)?;
            }
        }
    }
    if recs.next_record().is_some() {
        return Err(Damage::Inconsistent("records after the end".into()));
    }
    Ok((image, head.generation))
}

/// How the log relates to the checkpoint.
pub(super) enum LogState {
    /// Replayed; its good part ends at `len` (a cut tail beyond it).
    Current {
        len: u64,
        cut: Option<(u64, String)>,
    },
    /// Of an older generation, already inside the checkpoint: a crash came
    /// between writing a checkpoint and starting its log.
    Stale,
}

pub(super) fn replay_log(
    buf: &Bytes,
    image: &mut Image,
    generation: u64,
    size: usize,
) -> Result<LogState, Damage> {
    let mut recs = Records::new(buf)?;
    match recs.next_record() {
        Some(Ok(Record::Head(h))) if h.kind == Kind::Log && h.epoch == image.epoch => {
            if h.generation < generation {
                return Ok(LogState::Stale);
            }
            if h.generation > generation {
                return Err(Damage::Inconsistent(format!(
                    "log of generation {} after checkpoint {generation}",
                    h.generation
                )));
            }
        }
        Some(Ok(_)) => {
            return Err(Damage::Inconsistent(
                "the log is not this checkpoint's".into(),
            ))
        }
        // A crash while the log header itself was written cannot happen (it
        // is renamed into place whole): any damage here is real.
        Some(Err(e)) => return Err(e),
        None => return Err(Damage::Torn { at: 0 }),
    }
    loop {
        let good = recs.offset();
        match recs.next_record() {
            None => {
                return Ok(LogState::Current {
                    len: good,
                    cut: None,
                })
            }
            Some(Ok(rec)) => image.apply(buf, rec, size)?,
            Some(Err(e)) if recs.at_tail(&e) => {
                return Ok(LogState::Current {
                    len: good,
                    cut: Some((buf.len() as u64 - good, e.to_string())),
                })
            }
            Some(Err(e)) => return Err(e),
        }
    }
}

pub(super) enum Found {
    Nothing,
    Damaged(String),
    Good {
        image: Box<Image>,
        generation: u64,
        checkpoint_len: u64,
        log: LogState,
        read: u64,
        /// Either file is of an older format version.
        old: bool,
    },
}

pub(super) fn read_file(path: &Path) -> Result<Option<Bytes>, String> {
    match fs::read(path) {
        Ok(b) => Ok(Some(Bytes::from(b))),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

pub(super) fn find(path: &Path, log_path: &Path, size: usize) -> Found {
    let checkpoint = match read_file(path) {
        Ok(Some(b)) => b,
        Ok(None) if log_path.exists() => {
            return Found::Damaged(format!("{} is missing, its log is not", path.display()))
        }
        Ok(None) => return Found::Nothing,
        Err(e) => return Found::Damaged(e),
    };
    let (mut image, generation) = match read_checkpoint(&checkpoint, size) {
        Ok(x) => x,
        Err(d) => return Found::Damaged(format!("{}: {d}", path.display())),
    };
    let log = match read_file(log_path) {
        Ok(Some(b)) => b,
        Ok(None) => return Found::Damaged(format!("{} is missing", log_path.display())),
        Err(e) => return Found::Damaged(e),
    };
    let old = [&checkpoint, &log]
        .iter()
        .any(|b| format::version_of(b).is_some_and(|v| v < format::VERSION));
    match replay_log(&log, &mut image, generation, size) {
        Ok(state) => Found::Good {
            image: Box::new(image),
            generation,
            checkpoint_len: checkpoint.len() as u64,
            log: state,
            read: (checkpoint.len() + log.len()) as u64,
            old,
        },
        Err(d) => Found::Damaged(format!("{}: {d}", log_path.display())),
    }
}

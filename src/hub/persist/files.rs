//! The files of `hub.persist` on disk: the lock, appending a save, and
//! writing a new generation (`load` reads them back).

use super::format::{self, Damage, Head, Kind, Record};
use super::image::{Image, Saved, Trim};
use super::load::{find, read_checkpoint, read_file, replay_log, Found, LogState};
use super::replies::{self, ReplyChange};
use super::{new_epoch, now_ms, PersistError, Start};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events per checkpoint `Channel` record: a huge channel is written (and
/// checked) in pieces, never as one giant record.
const CHUNK: usize = 1024;
/// Writes go out in pieces of about this size.
const FLUSH: usize = 1 << 20;
/// The smallest log worth folding into a new checkpoint.
const COMPACT_OVER: u64 = 64 << 20;

/// The open files: the lock is held and the log is appended to for the life
/// of the process.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    log_path: PathBuf,
    /// None once let go of (`release`): nothing is written after.
    lock: Option<File>,
    log: File,
    generation: u64,
    epoch: u64,
    checkpoint_len: u64,
    log_len: u64,
    /// An append failed part way: the log may end in a partial record, so the
    /// next save writes a new generation from memory instead.
    broken: bool,
    /// Sections as last written, carried into every new generation.
    sections: BTreeMap<String, Bytes>,
    /// The log is folded into a new checkpoint when it is larger than this
    /// and than twice the checkpoint.
    pub compact_over: u64,
}

/// What `Store::open` found.
#[derive(Debug)]
pub struct Opened {
    pub store: Store,
    /// Trimmed to the current `history` settings, frames detached from the
    /// file buffers.
    pub image: Image,
    pub start: Start,
    /// Bytes read (checkpoint and log).
    pub read: u64,
    /// A cut tail dropped from the log: (bytes dropped, why).
    pub cut: Option<(u64, String)>,
}

/// One save: what `Store::save` appends as one write and one fdatasync.
#[derive(Debug)]
pub struct Batch<'a> {
    pub seq: u64,
    pub reserved: u64,
    pub forgotten: u64,
    pub events: &'a [(Arc<str>, Saved)],
    /// An unclean start's lost range, recorded before anything else.
    pub lost: Option<(u64, u64)>,
    pub sections: Vec<(&'static str, Bytes)>,
    /// Recorded replies' changes since the previous save, in order.
    pub replies: &'a [ReplyChange],
    /// The process stops after this save.
    pub clean: bool,
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut s = OsString::from(path.as_os_str());
    s.push(suffix);
    PathBuf::from(s)
}

/// A new file only the gateway's user can read: history holds what was
/// published, which may be private.
fn create_private(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> PersistError + 'a {
    move |error| PersistError::Io {
        path: path.to_path_buf(),
        what,
        error,
    }
}

fn take_lock(path: &Path, wait: Duration) -> Result<File, PersistError> {
    let lock_path = sibling(path, ".lock");
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
    }
    .map_err(io_err(&lock_path, "open"))?;
    let deadline = Instant::now() + wait;
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                // Startup only: the previous process may still be saving.
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(PersistError::Locked {
                    path: path.to_path_buf(),
                })
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path, "lock")(e)),
        }
    }
}

/// Write `image` as checkpoint `generation`: temporary file, fsync, rename,
/// fsync of the directory. `stop` abandons it (the old checkpoint stays).
fn write_checkpoint(
    path: &Path,
    image: &Image,
    sections: &BTreeMap<String, Bytes>,
    generation: u64,
    stop: &AtomicBool,
) -> io::Result<u64> {
    let tmp = sibling(path, ".tmp");
    let written = (|| {
        let mut w = BufWriter::with_capacity(FLUSH, create_private(&tmp)?);
        let mut buf = format::preamble();
        let head = Head {
            kind: Kind::Checkpoint,
            generation,
            epoch: image.epoch,
            created_ms: now_ms(),
        };
        format::frame(&Record::Head(head), &mut buf);
        format::frame(&Record::Marks(image.marks()), &mut buf);
        let (mut channels, mut events, mut len) = (0u64, 0u64, 0u64);
        for (name, kept) in &image.channels {
            if stop.load(Ordering::Acquire) {
                return Err(io::Error::new(ErrorKind::Interrupted, "stopping"));
            }
            let mut evs = Vec::with_capacity(kept.events.len().min(CHUNK));
            let mut it = kept.events.iter().peekable();
            loop {
                evs.extend(it.by_ref().take(CHUNK).map(Saved::ev));
                events += evs.len() as u64;
                channels += 1;
                format::frame(
                    &Record::Channel {
                        name,
                        evicted: kept.evicted,
                        events: std::mem::take(&mut evs),
                    },
                    &mut buf,
                );
                if buf.len() >= FLUSH {
                    w.write_all(&buf)?;
                    len += buf.len() as u64;
                    buf.clear();
                }
                if it.peek().is_none() {
                    break;
                }
            }
        }
        for (key, body) in sections {
            format::frame(&Record::Section { key, body }, &mut buf);
        }
        let mut changes = Vec::new();
        for (id, reply) in &image.replies {
            changes.clear();
            replies::changes_of(*id, reply, &mut changes);
            let ops = replies::ops_of(&changes);
            format::frame(&Record::Replies { ops }, &mut buf);
            if buf.len() >= FLUSH {
                w.write_all(&buf)?;
                len += buf.len() as u64;
                buf.clear();
            }
        }
        format::frame(&Record::End { channels, events }, &mut buf);
        w.write_all(&buf)?;
        len += buf.len() as u64;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(len)
    })();
    match written {
        Ok(len) => {
            fs::rename(&tmp, path)?;
            sync_dir(path)?;
            Ok(len)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Start an empty log of `generation`, whole or not at all.
fn new_log(log_path: &Path, generation: u64, epoch: u64) -> io::Result<(File, u64)> {
    let tmp = sibling(log_path, ".tmp");
    let mut buf = format::preamble();
    let head = Head {
        kind: Kind::Log,
        generation,
        epoch,
        created_ms: now_ms(),
    };
    format::frame(&Record::Head(head), &mut buf);
    let mut f = create_private(&tmp)?;
    f.write_all(&buf)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, log_path)?;
    sync_dir(log_path)?;
    let log = OpenOptions::new().append(true).open(log_path)?;
    Ok((log, buf.len() as u64))
}

impl Store {
    /// Take the lock (waiting up to `lock_wait` for a previous process) and
    /// load what is saved. A missing file is a fresh start; damage is a
    /// fresh start too, with the bad files kept as `PATH.corrupt` and
    /// `PATH.log.corrupt`. Errors only when the files cannot be locked or
    /// written at all.
    pub fn open(path: &Path, trim: Trim, lock_wait: Duration) -> Result<Opened, PersistError> {
        let lock = take_lock(path, lock_wait)?;
        let log_path = sibling(path, ".log");
        let (damage, found) = match find(path, &log_path, trim.size) {
            Found::Good {
                image,
                generation,
                checkpoint_len,
                log,
                read,
                old,
            } => (
                None,
                Some((*image, generation, checkpoint_len, log, read, old)),
            ),
            Found::Nothing => (None, None),
            Found::Damaged(why) => {
                for p in [path, &log_path] {
                    let _ = fs::rename(p, sibling(p, ".corrupt"));
                }
                (Some(why), None)
            }
        };
        let Some((mut image, generation, checkpoint_len, log, read, old)) = found else {
            let image = Image::empty(new_epoch());
            let sections = BTreeMap::new();
            let never = AtomicBool::new(false);
            let checkpoint_len = write_checkpoint(path, &image, &sections, 1, &never)
                .map_err(io_err(path, "write"))?;
            let (log, log_len) =
                new_log(&log_path, 1, image.epoch).map_err(io_err(&log_path, "write"))?;
            let store = Store::new(
                path,
                log_path,
                lock,
                log,
                1,
                &image,
                checkpoint_len,
                log_len,
            );
            return Ok(Opened {
                store,
                image,
                start: Start::Fresh { damage },
                read: 0,
                cut: None,
            });
        };
        let (log, log_len, cut) = match log {
            LogState::Current { len, cut } => {
                let f = OpenOptions::new()
                    .append(true)
                    .open(&log_path)
                    .map_err(io_err(&log_path, "open"))?;
                if cut.is_some() {
                    f.set_len(len)
                        .and_then(|_| f.sync_all())
                        .map_err(io_err(&log_path, "cut the torn tail of"))?;
                }
                (f, len, cut)
            }
            LogState::Stale => {
                let (f, len) = new_log(&log_path, generation, image.epoch)
                    .map_err(io_err(&log_path, "write"))?;
                (f, len, None)
            }
        };
        let start = if image.clean {
            Start::Clean
        } else {
            Start::Unclean {
                saved: image.seq,
                reserved: image.reserved,
            }
        };
        image.trim(trim, now_ms());
        image.detach();
        let mut store = Store::new(
            path,
            log_path,
            lock,
            log,
            generation,
            &image,
            checkpoint_len,
            log_len,
        );
        if old {
            // Written by an older ssegate: a new generation in this version,
            // so that the log never mixes two versions' records.
            store
                .rewrite(&image, &AtomicBool::new(false))
                .map_err(io_err(path, "rewrite"))?;
        }
        Ok(Opened {
            store,
            image,
            start,
            read,
            cut,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        path: &Path,
        log_path: PathBuf,
        lock: File,
        log: File,
        generation: u64,
        image: &Image,
        checkpoint_len: u64,
        log_len: u64,
    ) -> Store {
        Store {
            path: path.to_path_buf(),
            log_path,
            lock: Some(lock),
            log,
            generation,
            epoch: image.epoch,
            checkpoint_len,
            log_len,
            broken: false,
            sections: image.sections.clone(),
            compact_over: COMPACT_OVER,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The next save must write a new generation from memory.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Append one save: one write, one fdatasync. On failure the log is
    /// marked broken and the next save writes a new generation.
    pub fn save(&mut self, b: &Batch<'_>) -> io::Result<u64> {
        self.held()?;
        if self.broken {
            return Err(io::Error::other("the log needs a new generation"));
        }
        let mut buf = Vec::with_capacity(
            256 + b
                .events
                .iter()
                .map(|(n, s)| n.len() + s.frame.len() + 32)
                .sum::<usize>()
                + b.replies.iter().map(ReplyChange::size).sum::<usize>(),
        );
        if let Some((from, to)) = b.lost {
            format::frame(&Record::Lost { from, to }, &mut buf);
        }
        let events: Vec<(&str, format::Ev<'_>)> =
            b.events.iter().map(|(n, s)| (&**n, s.ev())).collect();
        format::frame(
            &Record::Delta {
                seq: b.seq,
                reserved: b.reserved,
                forgotten: b.forgotten,
                events,
            },
            &mut buf,
        );
        for (key, body) in &b.sections {
            format::frame(&Record::Section { key, body }, &mut buf);
        }
        if !b.replies.is_empty() {
            let ops = replies::ops_of(b.replies);
            format::frame(&Record::Replies { ops }, &mut buf);
        }
        if b.clean {
            format::frame(&Record::Clean { seq: b.seq }, &mut buf);
        }
        match self.log.write_all(&buf).and_then(|_| self.log.sync_data()) {
            Ok(()) => {
                self.log_len += buf.len() as u64;
                for (key, body) in &b.sections {
                    self.sections.insert(key.to_string(), body.clone());
                }
                Ok(buf.len() as u64)
            }
            Err(e) => {
                self.broken = true;
                Err(e)
            }
        }
    }

    /// Record that the process stops now, after everything already saved.
    pub fn clean(&mut self, seq: u64) -> io::Result<()> {
        let mut buf = Vec::new();
        format::frame(&Record::Clean { seq }, &mut buf);
        self.log
            .write_all(&buf)
            .and_then(|_| self.log.sync_data())
            .map(|_| self.log_len += buf.len() as u64)
    }

    fn held(&self) -> io::Result<()> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(io::Error::other("the files were let go of")),
        }
    }

    /// Let go of the files (the lock) for the next process; nothing more
    /// is saved.
    pub fn release(&mut self) {
        self.lock = None;
    }

    pub fn wants_compaction(&self) -> bool {
        self.log_len > self.compact_over.max(self.checkpoint_len.saturating_mul(2))
    }

    /// A new generation from `image` (a snapshot of the hub, or checkpoint
    /// and log folded together): checkpoint first, then an empty log. A
    /// crash between the two leaves the new checkpoint and the old log,
    /// which the next load recognizes as stale.
    pub fn rewrite(&mut self, image: &Image, stop: &AtomicBool) -> io::Result<u64> {
        self.held()?;
        let generation = self.generation + 1;
        let len = write_checkpoint(&self.path, image, &self.sections, generation, stop)?;
        // The new checkpoint is in place: the old log is stale now, and
        // appending to it would write saves the next load skips.
        self.broken = true;
        let (log, log_len) = new_log(&self.log_path, generation, image.epoch)?;
        self.log = log;
        self.log_len = log_len;
        self.checkpoint_len = len;
        self.generation = generation;
        self.broken = false;
        Ok(len)
    }

    /// Fold the log into a new checkpoint, from the files, without the hub:
    /// the bytes written (0 when abandoned because the process stops).
    pub fn compact(&mut self, trim: Trim, stop: &AtomicBool) -> io::Result<u64> {
        let bad = |d: Damage| io::Error::new(ErrorKind::InvalidData, d.to_string());
        let missing = || io::Error::new(ErrorKind::NotFound, "vanished");
        let checkpoint = read_file(&self.path)
            .map_err(io::Error::other)?
            .ok_or_else(missing)?;
        let log = read_file(&self.log_path)
            .map_err(io::Error::other)?
            .ok_or_else(missing)?;
        let stopping = || stop.load(Ordering::Acquire);
        if stopping() {
            return Ok(0);
        }
        let (mut image, generation) = read_checkpoint(&checkpoint, trim.size).map_err(bad)?;
        if stopping() {
            return Ok(0);
        }
        if generation != self.generation {
            return Err(io::Error::other("the checkpoint changed under us"));
        }
        match replay_log(&log, &mut image, generation, trim.size).map_err(bad)? {
            LogState::Current { cut: None, .. } => {}
            _ => return Err(io::Error::other("the log changed under us")),
        }
        image.trim(trim, now_ms());
        match self.rewrite(&image, stop) {
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(0),
            other => other,
        }
    }

    pub fn sizes(&self) -> (u64, u64) {
        (self.checkpoint_len, self.log_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRIM: Trim = Trim {
        size: 100,
        ttl: Duration::from_secs(3600),
    };

    fn event(seq: u64) -> (Arc<str>, Saved) {
        let frame = Bytes::from(format!("id: 1-{seq}\ndata: {seq}\n\n"));
        let saved = Saved {
            seq,
            at_ms: now_ms(),
            dedupe: None,
            grip_only: false,
            frame,
        };
        (Arc::from("a"), saved)
    }

    fn open(path: &Path) -> Opened {
        Store::open(path, TRIM, Duration::ZERO).unwrap()
    }

    fn save(store: &mut Store, seqs: std::ops::RangeInclusive<u64>) {
        let events: Vec<_> = seqs.clone().map(event).collect();
        let seq = *seqs.end();
        store
            .save(&Batch {
                seq,
                reserved: seq + 100,
                forgotten: 0,
                events: &events,
                lost: None,
                sections: Vec::new(),
                replies: &[],
                clean: false,
            })
            .unwrap();
    }

    fn seqs(image: &Image) -> Vec<u64> {
        image.channels["a"].events.iter().map(|s| s.seq).collect()
    }

    #[test]
    fn a_crash_between_checkpoint_and_log_leaves_a_stale_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.bin");
        let log = sibling(&path, ".log");
        let mut o = open(&path);
        save(&mut o.store, 1..=3);
        let old_log = fs::read(&log).unwrap();
        o.store.compact(TRIM, &AtomicBool::new(false)).unwrap();
        drop(o);
        // As if the process died after the new checkpoint's rename and
        // before the new log's.
        fs::write(&log, old_log).unwrap();
        let o = open(&path);
        assert_eq!(
            o.start,
            Start::Unclean {
                saved: 3,
                reserved: 103
            }
        );
        assert_eq!(seqs(&o.image), [1, 2, 3]);
        drop(o);
        // The stale log was replaced by the checkpoint's own.
        assert!(matches!(open(&path).start, Start::Unclean { saved: 3, .. }));
    }

    #[test]
    fn a_fold_abandoned_at_stop_leaves_the_files_as_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.bin");
        let mut o = open(&path);
        save(&mut o.store, 1..=3);
        let before = (fs::read(&path).unwrap(), o.store.sizes());
        assert_eq!(o.store.compact(TRIM, &AtomicBool::new(true)).unwrap(), 0);
        assert!(!o.store.broken(), "the old generation is intact");
        assert_eq!((fs::read(&path).unwrap(), o.store.sizes()), before);
        assert!(!sibling(&path, ".tmp").exists());
        save(&mut o.store, 4..=4);
        drop(o);
        assert_eq!(seqs(&open(&path).image), [1, 2, 3, 4]);
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.bin");
        let _o = open(&path);
        for p in [
            path.clone(),
            sibling(&path, ".log"),
            sibling(&path, ".lock"),
        ] {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    #[test]
    fn a_zero_filled_tail_is_a_cut_save_not_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.bin");
        let mut o = open(&path);
        save(&mut o.store, 1..=2);
        drop(o);
        let mut f = OpenOptions::new()
            .append(true)
            .open(sibling(&path, ".log"))
            .unwrap();
        f.write_all(&[0; 4096]).unwrap();
        drop(f);
        let o = open(&path);
        assert_eq!(o.cut.as_ref().map(|c| c.0), Some(4096));
        assert_eq!(seqs(&o.image), [1, 2]);
    }

    #[test]
    fn damage_inside_the_log_is_a_fresh_start_with_the_files_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.bin");
        let mut o = open(&path);
        let epoch = o.image.epoch;
        save(&mut o.store, 1..=2);
        let (_, inside) = o.store.sizes();
        save(&mut o.store, 3..=4);
        drop(o);
        let log = sibling(&path, ".log");
        let mut bytes = fs::read(&log).unwrap();
        // In the save of 1..=2, with the save of 3..=4 after it: not a cut.
        bytes[inside as usize - 10] ^= 0x01;
        fs::write(&log, &bytes).unwrap();
        let o = open(&path);
        assert!(
            matches!(&o.start, Start::Fresh { damage: Some(why) } if why.contains("hub.bin.log")),
            "{:?}",
            o.start
        );
        assert_ne!(o.image.epoch, epoch, "a fresh start is a new epoch");
        assert_eq!(fs::read(sibling(&log, ".corrupt")).unwrap(), bytes);
        assert!(sibling(&path, ".corrupt").exists());
    }

    #[test]
    fn files_of_version_1_load_and_become_a_new_generation_of_this_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.bin");
        let log = sibling(&path, ".log");
        let mut o = open(&path);
        save(&mut o.store, 1..=3);
        drop(o);
        // Nothing version 2 added is in them: as version 1 wrote them.
        for p in [&path, &log] {
            let mut bytes = fs::read(p).unwrap();
            bytes[format::MAGIC.len()..format::PREAMBLE].copy_from_slice(&1u32.to_le_bytes());
            fs::write(p, bytes).unwrap();
        }
        let o = open(&path);
        assert_eq!(seqs(&o.image), [1, 2, 3]);
        for p in [&path, &log] {
            assert_eq!(
                format::version_of(&fs::read(p).unwrap()),
                Some(format::VERSION)
            );
        }
        drop(o);
        assert_eq!(seqs(&open(&path).image), [1, 2, 3]);
    }

    #[test]
    fn a_cut_save_of_replies_drops_that_save_only() {
        use crate::hub::persist::{ReplyChange, ReplyHead};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.bin");
        let mut o = open(&path);
        let id = [3; 16];
        let head = ReplyHead {
            route: "/chat".into(),
            credentials: [1; 32],
            created_ms: now_ms(),
            ttl_ms: 60_000,
            max_total: 1 << 20,
        };
        let frame = |n: u64| ReplyChange::Frame {
            id,
            n,
            frame: Bytes::from(format!("id: r.{n}\ndata: {n}\n\n")),
        };
        let batch = |replies| Batch {
            seq: 0,
            reserved: 100,
            forgotten: 0,
            events: &[],
            lost: None,
            sections: Vec::new(),
            replies,
            clean: false,
        };
        let first = [ReplyChange::Start { id, head }, frame(1)];
        o.store.save(&batch(&first)).unwrap();
        o.store
            .save(&batch(&[frame(2), ReplyChange::End { id }]))
            .unwrap();
        drop(o);
        let log = sibling(&path, ".log");
        let bytes = fs::read(&log).unwrap();
        fs::write(&log, &bytes[..bytes.len() - 3]).unwrap();
        let o = open(&path);
        assert!(o.cut.is_some());
        let r = &o.image.replies[&id];
        assert_eq!(r.frames.len(), 1);
        assert!(!r.ended);
    }

    #[test]
    fn the_lock_is_one_writer_per_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.bin");
        let first = open(&path);
        let second = Store::open(&path, TRIM, Duration::from_millis(100));
        assert!(
            matches!(second, Err(PersistError::Locked { .. })),
            "{second:?}"
        );
        drop(first);
        assert!(Store::open(&path, TRIM, Duration::ZERO).is_ok());
    }
}

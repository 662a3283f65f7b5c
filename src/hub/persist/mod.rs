//! `hub.persist`: the memory broker's history, cursor and dedupe ids on disk,
//! so that `Last-Event-ID` resumes cross restarts.
//!
//! Two files next to each other, both a version header and CRC-framed
//! records (`format`):
//!
//! - `PATH`, the **checkpoint**: the whole history at one moment, written to
//!   a temporary file, fsynced, renamed over the old one (then the directory
//!   fsynced), so it is always either the old or the new one, whole;
//! - `PATH.log`, the **log**: one `Delta` record appended (and fdatasynced)
//!   per `interval` with the events published since the previous one. A save
//!   costs the hub lock one `Vec` swap, whatever the history's size; a crash
//!   can cut only the last record, which is then dropped whole.
//!
//! When the log outgrows the checkpoint, the saver folds both into a new
//! checkpoint (a new *generation*) from the files, off the hub lock.
//! `PATH.lock` is held (flock) for the life of the process: one writer per
//! path.
//!
//! Recorded backend replies (`record:` routes) ride along (`replies`): their
//! changes go into the same saves, their whole state into each checkpoint.
//!
//! Ids are never reused after an unclean stop: every save also records a
//! *reservation*, and the hub hands out no cursor above the last one on disk.
//! A start after a stop without a `Clean` record continues above it and
//! remembers the range in between as lost (a resume from there gets
//! `ssegate.reset`).

mod files;
mod format;
mod image;
mod load;
mod replies;

pub use files::{Batch, Opened, Store};
pub use format::Damage;
pub use image::{Image, Kept, Saved, Trim};
pub use replies::{changes_of, Replies, Reply, ReplyChange, ReplyHead, ReplyId};

use bytes::Bytes;
use std::fmt;
use std::path::PathBuf;

/// How far above the newest cursor every save reserves: the ids a crash can
/// skip (at most this many per crash, free in a u64) and the publishes the
/// hub can take while the disk is stuck before it refuses with 503.
pub const RESERVE: u64 = 1 << 24;

/// How the saved state was found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Nothing saved yet, or nothing usable (`damage` says why): a new epoch.
    Fresh { damage: Option<String> },
    /// The last stop saved everything: cursors continue exactly.
    Clean,
    /// The last stop did not finish (SIGKILL, power loss): cursors in
    /// `(saved, reserved]` may have been handed out and are lost.
    Unclean { saved: u64, reserved: u64 },
}

/// Why persistence cannot run at all (the gateway does not start).
#[derive(Debug)]
pub enum PersistError {
    /// Another process holds `PATH.lock`.
    Locked { path: PathBuf },
    Io {
        path: PathBuf,
        what: &'static str,
        error: std::io::Error,
    },
}

impl fmt::Display for PersistError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PersistError::Locked { path } => write!(
                f,
                "hub.persist: {} is in use by another ssegate process (it holds {}.lock)",
                path.display(),
                path.display()
            ),
            PersistError::Io { path, what, error } => {
                write!(f, "hub.persist: cannot {what} {}: {error}", path.display())
            }
        }
    }
}

impl std::error::Error for PersistError {}

/// The hook for other small state that should survive restarts in the
/// hub's files, saved whole (recorded replies are journaled instead:
/// `replies`, `Batch::replies`). Register one with
/// `Broker::add_section` once it exists; take what the files held at
/// start with `Broker::restored_section(key)` before that.
///
/// A section is saved whole, as opaque bytes, whenever it says it changed:
/// `snapshot` is called at every save (every `interval` and at stop), off
/// the hub lock, and returns `None` when nothing changed since its last
/// call. Keep it small or make the bytes a digest of what the owner keeps
/// elsewhere; a large section is rewritten at every change. The bytes are
/// the section's own format: put a version in them.
pub trait Section: Send + Sync + fmt::Debug {
    /// Stable key in the file; never reused for a different layout.
    fn key(&self) -> &'static str;
    fn snapshot(&self) -> Option<Bytes>;
}

/// Run `work` on a thread of its own at a lower CPU priority (nice 10):
/// folding a large history is a second or more of one core, and on a busy
/// machine it must yield to the threads that publish and deliver. `None`
/// if the thread could not be started or panicked.
pub async fn in_background<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("ssegate-persist".into())
        .spawn(move || {
            // Best effort: at the default priority it only competes more.
            let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
            let _ = tx.send(work());
        });
    match spawned {
        Ok(_) => rx.await.ok(),
        Err(_) => None,
    }
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A new epoch for a fresh start: random, so that a clock stepped back can
/// never give an old epoch again.
pub fn new_epoch() -> u64 {
    (rand::random::<u64>() >> 16).max(1)
}

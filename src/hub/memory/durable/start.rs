//! `hub.persist` at an ordinary start: what the files hold becomes the
//! hub, its cursor continuing above anything an unclean stop may have
//! handed out.

use super::{restored, Journal};
use crate::config::Persist;
use crate::hub::memory::{Channel, MemoryBroker, State};
use crate::hub::persist::{self, Image, PersistError, Start};
use std::collections::HashMap;
use std::sync::atomic::Ordering;

impl MemoryBroker {
    /// Take the saved state as the hub's (a start): the cursor continues
    /// from it, above anything an unclean stop may have handed out.
    pub(in crate::hub::memory) fn load(
        &self,
        opened: persist::Opened,
        settings: &Persist,
        reserve: u64,
    ) -> Result<(), PersistError> {
        let took = std::time::Instant::now();
        let (mut image, mut store) = (opened.image, opened.store);
        let (channels, events) = (image.channels.len(), image.events());
        let path = settings.path.display().to_string();
        let (state_label, seq, lost) = announce(&opened.start, image.seq, &path);
        self.metrics
            .persist_starts
            .with_label_values(&[state_label])
            .inc();
        self.metrics.persist_saved.set(seq as i64);
        if let Some((n, why)) = &opened.cut {
            tracing::warn!(
                path,
                bytes = n,
                "hub.persist: dropped the last save, cut short by the stop ({why})"
            );
        }
        let reserved = seq + reserve;
        let batch = persist::Batch {
            seq,
            reserved,
            forgotten: image.forgotten,
            events: &[],
            lost,
            sections: Vec::new(),
            replies: &[],
            clean: false,
        };
        store.save(&batch).map_err(|error| PersistError::Io {
            path: settings.path.clone(),
            what: "write",
            error,
        })?;
        let mut state = state_of(&mut image, seq, self.clock(), self.history_size);
        if let Some((from, to)) = lost {
            if to > from {
                state.lost.push((from, to));
            }
        }
        state.journal = Some(Journal::new(reserved, reserve));
        tracing::info!(
            path,
            start = state_label,
            channels,
            events,
            bytes = opened.read,
            cursor = %crate::hub::cursor::format(image.epoch, seq),
            ms = took.elapsed().as_millis() as u64,
            "hub.persist: history loaded"
        );
        self.epoch.store(image.epoch, Ordering::Release);
        *self.lock() = state;
        let sections = std::mem::take(&mut image.sections);
        let replies = std::mem::take(&mut image.replies);
        self.durable
            .set(self.durable_for(settings, store, sections, replies));
        Ok(())
    }
}

/// Log how the files were found; the label for the metric, the cursor to
/// continue from, and the range an unclean stop lost.
fn announce(start: &Start, saved_seq: u64, path: &str) -> (&'static str, u64, Option<(u64, u64)>) {
    match start {
        Start::Fresh { damage: None } => {
            tracing::info!(
                path,
                "hub.persist: nothing saved yet, starting with empty history"
            );
            ("fresh", saved_seq, None)
        }
        Start::Fresh { damage: Some(why) } => {
            tracing::warn!(path, "hub.persist: {why}; starting with empty history and a new epoch (the unreadable files are kept as {path}.corrupt and {path}.log.corrupt)");
            ("corrupt", saved_seq, None)
        }
        Start::Clean => ("clean", saved_seq, None),
        Start::Unclean { saved, reserved } => {
            tracing::warn!(path, saved, reserved, "hub.persist: the last stop was not clean: events published after cursor {saved} were not saved; cursors up to {reserved} are never given out again and a resume from one of them gets ssegate.reset");
            (
                "unclean",
                (*reserved).max(*saved),
                Some((*saved, *reserved)),
            )
        }
    }
}

/// The hub's state rebuilt from a loaded image (its channels moved out),
/// cursor at `seq`.
fn state_of(image: &mut Image, seq: u64, clock: u32, size: usize) -> State {
    let now_ms = persist::now_ms();
    let mut channels = HashMap::with_capacity(image.channels.len());
    for (name, kept) in std::mem::take(&mut image.channels) {
        let ch = Channel {
            history: restored(kept.events, clock, now_ms, size),
            evicted: kept.evicted,
            ..Channel::default()
        };
        channels.insert(name, ch);
    }
    State {
        seq,
        channels,
        forgotten: image.forgotten,
        lost: std::mem::take(&mut image.lost),
        journal: None,
    }
}

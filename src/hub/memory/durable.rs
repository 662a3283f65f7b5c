//! `hub.persist` for the memory broker: the journal the publish path feeds
//! (shared frames, no copies), and the saver that writes it every
//! `interval` and at stop. Loading at start is `start`; opening the files
//! after a live upgrade's handoff is `takeover`.
//!
//! Under the hub lock a save only swaps the journal's `Vec` out; encoding,
//! writing, fsync and compaction run on a blocking thread. The hub never
//! gives out a cursor above the last reservation on disk, so a crash can
//! lose recent events but never gives one id to two events.

use super::{MemoryBroker, State};
use crate::config::Persist;
use crate::hub::history::{History, Stored};
use crate::hub::persist::{
    self, Image, Kept, PersistError, Replies, ReplyChange, Saved, Section, Store, Trim, RESERVE,
};
use crate::hub::record::memory::MemoryRecords;
use crate::hub::Delivery;
use crate::metrics::Metrics;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// How long a start waits for the previous process to let go of the files.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Unsaved events (or bytes of them) past which the journal gives up and the
/// next save writes the whole history from memory instead (a disk that
/// stalled for a long time).
const MAX_PENDING: usize = 1 << 20;
const MAX_PENDING_BYTES: usize = 256 << 20;

/// What the publish path records for the saver (inside the hub's `State`).
#[derive(Debug)]
pub(super) struct Journal {
    pending: Vec<(Arc<str>, Saved)>,
    bytes: usize,
    /// `pending` overflowed and was dropped: the next save writes everything.
    overflowed: bool,
    /// The last reservation on disk: no cursor above it may be handed out.
    reserved: u64,
    /// The final save has run: nothing more can be saved.
    sealed: bool,
    /// How far each save reserves (`RESERVE`; smaller in tests).
    reserve: u64,
}

impl Journal {
    pub(super) fn new(reserved: u64, reserve: u64) -> Journal {
        Journal {
            pending: Vec::new(),
            bytes: 0,
            overflowed: false,
            reserved,
            sealed: false,
            reserve,
        }
    }

    /// Why the event after `seq` may not be published now.
    pub(super) fn refuse(&self, seq: u64) -> Option<&'static str> {
        if self.sealed {
            Some("shutting down: history is saved")
        } else if seq >= self.reserved {
            Some("history persistence is behind (disk stalled?)")
        } else {
            None
        }
    }

    /// Note a published event; true when the reservation runs low and the
    /// saver should run now rather than at the next tick.
    pub(super) fn record(
        &mut self,
        channel: &Arc<str>,
        d: &Delivery,
        dedupe: &Option<Arc<str>>,
        at_ms: u64,
    ) -> bool {
        if !self.overflowed {
            self.bytes += d.frame.len();
            self.pending.push((
                channel.clone(),
                Saved {
                    seq: d.seq,
                    at_ms,
                    dedupe: dedupe.clone(),
                    grip_only: d.grip_only,
                    frame: d.frame.clone(),
                },
            ));
            if self.pending.len() > MAX_PENDING || self.bytes > MAX_PENDING_BYTES {
                self.pending = Vec::new();
                self.bytes = 0;
                self.overflowed = true;
            }
        }
        d.seq.saturating_add(self.reserve / 2) > self.reserved
    }
}

/// `hub.persist`'s place in the broker.
#[derive(Debug, Default)]
pub(in crate::hub) struct Slot {
    /// The saver, once the files are open.
    now: std::sync::OnceLock<Durable>,
    /// `run --upgrade`: the settings (and reservation) to open the files
    /// with once this process owns the hub.
    pub(super) later: Option<(Persist, u64)>,
    /// The previous process handed its hub over (`Broker::restore`).
    handed: AtomicBool,
    opened: Notify,
    /// The recorded replies saved with the hub (`keep_records`).
    records: std::sync::OnceLock<Arc<MemoryRecords>>,
}

impl Slot {
    pub(super) fn get(&self) -> Option<&Durable> {
        self.now.get()
    }

    pub(super) fn set(&self, d: Durable) {
        let _ = self.now.set(d);
        self.opened.notify_waiters();
    }

    pub(super) fn handed_over(&self) {
        self.handed.store(true, Ordering::Release);
    }

    pub(super) fn was_handed_over(&self) -> bool {
        self.handed.load(Ordering::Acquire)
    }

    /// The saver, once there is one (at once for an ordinary start).
    async fn opened(&self) -> Option<&Durable> {
        loop {
            let opened = self.opened.notified();
            if let Some(d) = self.get() {
                return Some(d);
            }
            self.later.as_ref()?;
            opened.await;
        }
    }
}

/// The saver's side.
pub(super) struct Durable {
    interval: Duration,
    store: Arc<Mutex<Store>>,
    /// One save at a time (interval, poke or stop).
    saving: tokio::sync::Mutex<()>,
    pub(super) poke: Notify,
    stopping: Arc<AtomicBool>,
    sections: Mutex<Vec<Arc<dyn Section>>>,
    restored: BTreeMap<String, Bytes>,
    /// The replies the files held, until the record store takes them.
    restored_replies: Mutex<Replies>,
    trim: Trim,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Job {
    Delta(Vec<(Arc<str>, Saved)>, Vec<ReplyChange>),
    /// Everything, from memory: after an overflow or a failed append.
    Rewrite(Box<Image>),
}

/// A stored event as a save writes it; `clock` is the broker's clock now
/// and `now_ms` the wall clock.
fn saved(s: Stored<'_>, clock: u32, now_ms: u64) -> Saved {
    let age = u64::from(clock.wrapping_sub(s.at));
    Saved {
        seq: s.seq,
        at_ms: now_ms.saturating_sub(age),
        dedupe: s.dedupe_id.cloned(),
        grip_only: s.grip_only,
        frame: s.frame,
    }
}

/// A saved channel's events as its history, on the broker's clock (`clock`
/// now; `now_ms` the wall clock).
fn restored(
    events: impl IntoIterator<Item = Saved>,
    clock: u32,
    now_ms: u64,
    size: usize,
) -> History {
    let mut history = History::default();
    for s in events {
        // Older than the clock: as old as it can be here.
        let age = now_ms.saturating_sub(s.at_ms).min(u64::from(clock)) as u32;
        let at = clock.wrapping_sub(age);
        history.push(s.seq, at, &s.frame, s.grip_only, s.dedupe, size);
    }
    history
}

impl MemoryBroker {
    /// A memory broker whose state survives restarts (`hub.persist`).
    pub fn persistent(
        history_size: usize,
        history_ttl: Duration,
        metrics: Arc<Metrics>,
        settings: &Persist,
    ) -> Result<MemoryBroker, PersistError> {
        Self::persistent_with(history_size, history_ttl, metrics, settings, RESERVE)
    }

    pub(super) fn persistent_with(
        history_size: usize,
        history_ttl: Duration,
        metrics: Arc<Metrics>,
        settings: &Persist,
        reserve: u64,
    ) -> Result<MemoryBroker, PersistError> {
        let b = MemoryBroker::new(history_size, history_ttl, metrics);
        let opened = Store::open(&settings.path, b.trim(), LOCK_WAIT)?;
        b.load(opened, settings, reserve)?;
        Ok(b)
    }

    /// `run --upgrade`: a memory broker whose files are opened only once
    /// this process owns the hub (`open_files_now`).
    pub fn persistent_later(
        history_size: usize,
        history_ttl: Duration,
        metrics: Arc<Metrics>,
        settings: &Persist,
    ) -> MemoryBroker {
        let mut b = MemoryBroker::new(history_size, history_ttl, metrics);
        b.durable.later = Some((settings.clone(), RESERVE));
        b
    }

    pub(super) fn trim(&self) -> Trim {
        Trim {
            size: self.history_size,
            ttl: self.history_ttl,
        }
    }

    pub(super) fn durable_for(
        &self,
        settings: &Persist,
        store: Store,
        restored: BTreeMap<String, Bytes>,
        replies: Replies,
    ) -> Durable {
        Durable {
            interval: settings.interval,
            store: Arc::new(Mutex::new(store)),
            saving: tokio::sync::Mutex::new(()),
            poke: Notify::new(),
            stopping: Arc::default(),
            sections: Mutex::default(),
            restored,
            restored_replies: Mutex::new(replies),
            trim: self.trim(),
            metrics: self.metrics.clone(),
        }
    }

    /// The whole history as it is now, for a save from memory.
    fn image_of(&self, st: &State, reserved: u64) -> Image {
        let (clock, now_ms) = (self.clock(), persist::now_ms());
        let mut img = Image::empty(self.epoch.load(Ordering::Acquire));
        img.seq = st.seq;
        img.reserved = reserved;
        img.forgotten = st.forgotten;
        img.lost = st.lost.clone();
        img.channels = st
            .channels
            .iter()
            .map(|(name, ch)| {
                let events = ch.history.iter().map(|s| saved(s, clock, now_ms)).collect();
                (
                    name.clone(),
                    Kept {
                        evicted: ch.evicted,
                        events,
                    },
                )
            })
            .collect();
        img
    }

    /// Save what was published since the last save (and, at stop, seal the
    /// hub and mark the stop clean). Never holds the hub lock while writing.
    pub(super) async fn save(&self, stopping: bool) {
        let Some(d) = self.durable.get() else { return };
        let _one = d.saving.lock().await;
        let sections: Vec<(&'static str, Bytes)> = locked(&d.sections)
            .iter()
            .filter_map(|s| s.snapshot().map(|b| (s.key(), b)))
            .collect();
        let broken = locked(&d.store).broken();
        let records = self.durable.records.get();
        let (job, seq, reserved, forgotten) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let (seq, forgotten) = (st.seq, st.forgotten);
            let Some(j) = st.journal.as_mut() else { return };
            if j.sealed {
                return;
            }
            j.sealed = stopping;
            let reserved = (seq + j.reserve).max(j.reserved);
            let fresh = seq.saturating_add(j.reserve / 2) <= j.reserved;
            let idle = j.pending.is_empty()
                && !j.overflowed
                && sections.is_empty()
                && !records.is_some_and(|r| r.changed());
            if idle && fresh && !stopping && !broken {
                return;
            }
            let job = if j.overflowed || broken {
                j.pending = Vec::new();
                j.bytes = 0;
                j.overflowed = false;
                let mut image = self.image_of(st, reserved);
                image.replies = records.map(|r| r.take_whole()).unwrap_or_default();
                Job::Rewrite(Box::new(image))
            } else {
                j.bytes = 0;
                let replies = records.map(|r| r.take_changes()).unwrap_or_default();
                Job::Delta(std::mem::take(&mut j.pending), replies)
            };
            (job, seq, reserved, forgotten)
        };
        let kind = match &job {
            Job::Delta(..) => "delta",
            Job::Rewrite(_) => "checkpoint",
        };
        let store = d.store.clone();
        let trim = d.trim;
        let written = tokio::task::spawn_blocking(move || {
            let mut s = locked(&store);
            let took = std::time::Instant::now();
            let mut batch = persist::Batch {
                seq,
                reserved,
                forgotten,
                events: &[],
                lost: None,
                sections,
                replies: &[],
                clean: stopping,
            };
            let bytes = match job {
                Job::Delta(events, replies) => {
                    batch.events = &events;
                    batch.replies = &replies;
                    s.save(&batch)?
                }
                Job::Rewrite(mut image) => {
                    image.trim(trim, persist::now_ms());
                    s.rewrite(&image, &AtomicBool::new(false))? + s.save(&batch)?
                }
            };
            Ok::<_, std::io::Error>((bytes, took.elapsed()))
        })
        .await;
        match written {
            Ok(Ok((bytes, took))) => {
                if let Some(j) = self.lock().journal.as_mut() {
                    j.reserved = j.reserved.max(reserved);
                }
                d.metrics
                    .persist_saves
                    .with_label_values(&[kind, "ok"])
                    .inc();
                d.metrics.persist_saved.set(seq as i64);
                d.metrics
                    .persist_seconds
                    .with_label_values(&[kind])
                    .observe(took.as_secs_f64());
                if kind == "checkpoint" {
                    tracing::info!(
                        bytes,
                        ms = took.as_millis() as u64,
                        "hub.persist: wrote the whole history"
                    );
                }
            }
            Ok(Err(e)) => {
                if let (Some(j), "checkpoint") = (self.lock().journal.as_mut(), kind) {
                    // What it was to write is in no file: the next save
                    // tries the whole history again.
                    j.overflowed = true;
                }
                d.metrics
                    .persist_saves
                    .with_label_values(&[kind, "error"])
                    .inc();
                tracing::error!(
                    "hub.persist: save failed, the next one writes the whole history: {e}"
                );
            }
            Err(e) => tracing::error!("hub.persist: save task failed: {e}"),
        }
        if !stopping {
            self.compact_if_due(d).await;
        }
    }

    async fn compact_if_due(&self, d: &Durable) {
        let store = d.store.clone();
        let (trim, stop) = (d.trim, d.stopping.clone());
        if !locked(&store).wants_compaction() {
            return;
        }
        let done = persist::in_background(move || {
            let mut s = locked(&store);
            let took = std::time::Instant::now();
            let before = s.sizes();
            (s.compact(trim, &stop), before, took.elapsed())
        })
        .await;
        match done {
            Some((Ok(0), _, _)) => {}
            Some((Ok(bytes), (checkpoint, log), took)) => {
                d.metrics
                    .persist_saves
                    .with_label_values(&["checkpoint", "ok"])
                    .inc();
                d.metrics
                    .persist_seconds
                    .with_label_values(&["checkpoint"])
                    .observe(took.as_secs_f64());
                tracing::info!(
                    bytes,
                    folded_checkpoint = checkpoint,
                    folded_log = log,
                    ms = took.as_millis() as u64,
                    "hub.persist: log folded into a new checkpoint"
                );
            }
            Some((Err(e), _, _)) => {
                d.metrics
                    .persist_saves
                    .with_label_values(&["checkpoint", "error"])
                    .inc();
                tracing::error!("hub.persist: folding the log into a new checkpoint failed (the log stays, and grows): {e}");
            }
            None => tracing::error!("hub.persist: the thread folding the log failed"),
        }
    }

    /// Every `interval`, or sooner when the reservation runs low.
    pub(super) async fn save_every(self: Arc<Self>) {
        let Some(d) = self.durable.opened().await else {
            return;
        };
        let mut tick = tokio::time::interval(d.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = d.poke.notified() => {}
            }
            if d.stopping.load(Ordering::Acquire) {
                return;
            }
            self.save(false).await;
        }
    }

    /// The final save: publishes are refused from here on.
    pub(super) async fn save_at_stop(&self) {
        let Some(d) = self.durable.get() else { return };
        if d.stopping.swap(true, Ordering::AcqRel) {
            return;
        }
        let took = std::time::Instant::now();
        self.save(true).await;
        // The next process may open the files now: this one writes no more.
        locked(&d.store).release();
        tracing::info!(
            ms = took.elapsed().as_millis() as u64,
            "hub.persist: saved at stop"
        );
    }

    pub(super) fn add_persisted_section(&self, s: Arc<dyn Section>) -> bool {
        match self.durable.get() {
            Some(d) => {
                locked(&d.sections).push(s);
                true
            }
            None => false,
        }
    }

    pub(super) fn persisted_section(&self, key: &str) -> Option<Bytes> {
        self.durable.get()?.restored.get(key).cloned()
    }

    /// Save `records` (the recorded replies of `record:` routes) with the
    /// hub, and give them what the files held: at once when the files are
    /// open, else once they are (`run --upgrade`). Without `hub.persist`
    /// nothing is journaled.
    pub fn keep_records(&self, records: Arc<MemoryRecords>) {
        let _ = self.durable.records.set(records);
        self.hand_records();
    }

    pub(super) fn hand_records(&self) {
        let (Some(d), Some(records)) = (self.durable.get(), self.durable.records.get()) else {
            return;
        };
        let saved = std::mem::take(&mut *locked(&d.restored_replies));
        let found = saved.len();
        let (restored, interrupted) = records.restore(saved);
        records.journal_on();
        if found > 0 {
            // Skipped: expired, evicted, or already handed over in a live upgrade.
            tracing::info!(
                restored,
                interrupted,
                skipped = found - restored,
                "hub.persist: recorded replies restored"
            );
        }
    }
}

mod start;
mod takeover;

#[cfg(test)]
mod tests;

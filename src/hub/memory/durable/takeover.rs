//! `hub.persist` in a live upgrade (`run --upgrade`). The new process
//! opens the files only once it owns the hub, so the two processes never
//! write them at the same time:
//!
//! - the old process seals its hub, makes its final save and lets go of
//!   the files (`Broker::stop`) before it sends the hub's state;
//! - the new process, once the handoff is over, takes the lock and checks
//!   that the files hold exactly the state it was handed (epoch, cursor, a
//!   clean stop): then it only appends a new reservation. Otherwise (the
//!   old process's last save failed, or it did not persist) it writes the
//!   handed-over state as a new checkpoint. Either way the files never go
//!   back behind a cursor that was handed out, and never load over the
//!   state that came over the socket;
//! - when nothing was handed over (refused, failed, an older release), it
//!   waits for the old process to let go of the files at the end of its
//!   drain and loads them, as an ordinary start would.

use super::{Journal, Store};
use crate::config::Persist;
use crate::hub::memory::MemoryBroker;
use crate::hub::persist::{self, Opened, PersistError, Start};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

impl MemoryBroker {
    /// Open the files now that this process owns the hub; nothing to do
    /// unless the broker was built with `persistent_later`.
    pub(in crate::hub::memory) async fn open_files_now(
        &self,
        lock_wait: Duration,
    ) -> Result<(), PersistError> {
        let Some((settings, reserve)) = self.durable.later.clone() else {
            return Ok(());
        };
        if self.durable.get().is_some() {
            return Ok(());
        }
        let (path, trim) = (settings.path.clone(), self.trim());
        let opened = tokio::task::spawn_blocking(move || Store::open(&path, trim, lock_wait))
            .await
            .map_err(|e| PersistError::Io {
                path: settings.path.clone(),
                what: "open",
                error: std::io::Error::other(e),
            })??;
        if self.durable.was_handed_over() {
            self.continue_files(opened, &settings, reserve)?;
        } else {
            self.load(opened, &settings, reserve)?;
        }
        // The recorded replies come from the files either way: the old
        // process saved them at its stop, before it handed the hub over.
        self.hand_records();
        Ok(())
    }

    /// The hub came over the upgrade socket: keep it, and make the files
    /// say the same before any cursor is handed out.
    fn continue_files(
        &self,
        opened: Opened,
        settings: &Persist,
        reserve: u64,
    ) -> Result<(), PersistError> {
        let Opened {
            image,
            mut store,
            start,
            ..
        } = opened;
        let io = |error| PersistError::Io {
            path: settings.path.clone(),
            what: "write",
            error,
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let (rewrite, seq, reserved, forgotten) = {
            let mut st = self.lock();
            let same_history = image.epoch == epoch;
            if same_history {
                // Ranges lost in an unclean stop before the old process
                // started: the handoff does not carry them, the files do.
                st.lost = image.lost.clone();
            }
            let matches = same_history && start == Start::Clean && image.seq == st.seq;
            let reserved = st.seq + reserve;
            // Nothing is published before the reservation is on disk.
            st.journal = Some(Journal::new(st.seq, reserve));
            let rewrite = if matches {
                None
            } else {
                tracing::warn!(
                    path = %settings.path.display(),
                    saved = %crate::hub::cursor::format(image.epoch, image.seq),
                    handed = %crate::hub::cursor::format(epoch, st.seq),
                    "hub.persist: the files do not hold the state the previous process handed over (its last save failed, or it did not persist); writing the handed-over state"
                );
                let mut img = self.image_of(&st, reserved);
                img.replies = image.replies.clone();
                img.trim(self.trim(), persist::now_ms());
                Some(img)
            };
            (rewrite, st.seq, reserved, st.forgotten)
        };
        if let Some(img) = &rewrite {
            store.rewrite(img, &AtomicBool::new(false)).map_err(io)?;
        }
        let batch = persist::Batch {
            seq,
            reserved,
            forgotten,
            events: &[],
            lost: None,
            sections: Vec::new(),
            replies: &[],
            clean: false,
        };
        store.save(&batch).map_err(io)?;
        self.metrics
            .persist_starts
            .with_label_values(&["handed_over"])
            .inc();
        self.metrics.persist_saved.set(seq as i64);
        if let Some(j) = self.lock().journal.as_mut() {
            j.reserved = reserved;
        }
        let durable = self.durable_for(settings, store, image.sections, image.replies);
        self.durable.set(durable);
        tracing::info!(
            path = %settings.path.display(),
            cursor = %crate::hub::cursor::format(epoch, seq),
            rewritten = rewrite.is_some(),
            "hub.persist: took the files over with the hub handed over"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{open, settings};
    use super::*;
    use crate::hub::memory::tests::msg;
    use crate::hub::memory::MemoryBroker;
    use crate::hub::{cursor, Broker};
    use crate::metrics::Metrics;
    use std::sync::Arc;
    use std::time::Duration;

    fn later(dir: &tempfile::TempDir) -> MemoryBroker {
        MemoryBroker::persistent_later(
            10,
            Duration::from_secs(3600),
            Arc::new(Metrics::new()),
            &settings(dir),
        )
    }

    #[tokio::test]
    async fn a_handed_over_hub_continues_the_files_of_the_old_process() {
        let dir = tempfile::tempdir().unwrap();
        let old = open(&dir, persist::RESERVE);
        old.publish(vec![msg("a", "1", Some("x")), msg("a", "2", None)])
            .await
            .unwrap();
        // The old process's order: seal, final save (lets go), hand over.
        old.seal();
        old.stop().await;
        let state = old.state().unwrap();
        let epoch = state.epoch;
        let new = Arc::new(later(&dir));
        new.restore(state);
        let checkpoint = std::fs::read(&settings(&dir).path).unwrap();
        new.open_files_now(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            std::fs::read(&settings(&dir).path).unwrap(),
            checkpoint,
            "the files matched: the checkpoint stays, a reservation is appended"
        );
        new.publish(vec![msg("a", "3", None)]).await.unwrap();
        new.stop().await;
        drop((old, new));
        let again = open(&dir, persist::RESERVE);
        assert_eq!(again.stats().cursor, cursor::format(epoch, 3));
        let r = again.replay(&["a".into()], &cursor::format(epoch, 0));
        assert_eq!(r.frames.len(), 3);
        assert!(r.reset.is_none());
    }

    #[tokio::test]
    async fn without_a_handoff_the_new_process_loads_what_the_old_one_saved_at_its_stop() {
        let dir = tempfile::tempdir().unwrap();
        let old = open(&dir, persist::RESERVE);
        old.publish(vec![msg("a", "1", None)]).await.unwrap();
        let epoch = old.epoch.load(Ordering::Acquire);
        let new = later(&dir);
        let waiting = new.open_files_now(Duration::from_secs(5));
        let stopping = async {
            // The old process drains, then saves and lets go.
            tokio::time::sleep(Duration::from_millis(200)).await;
            old.stop().await;
        };
        let (opened, ()) = tokio::join!(waiting, stopping);
        opened.unwrap();
        assert_eq!(new.stats().cursor, cursor::format(epoch, 1));
    }
}

//! What each poller is doing: for the dashboard, its state, failures in a
//! row, and when it last polled and last found a change (updated once per
//! poll cycle under a lock of its own, read once a dashboard tick); for
//! logs and clients, the moments it starts failing and recovers.

use super::{PollFailure, Poller, Pollers, Shared};
use crate::config::Poll;
use serde::Serialize;
use std::sync::MutexGuard;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// No poll finished yet.
    Starting,
    Ok,
    Failing,
    /// Cluster mode: another instance holds the lease and polls.
    Following,
}

#[derive(Debug)]
pub(super) struct Status {
    pub state: State,
    pub failures: u32,
    pub last_poll: Option<Instant>,
    pub last_change: Option<Instant>,
}

impl Default for Status {
    fn default() -> Status {
        Status {
            state: State::Starting,
            failures: 0,
            last_poll: None,
            last_change: None,
        }
    }
}

/// One poller as the dashboard lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PollerInfo {
    pub route: String,
    pub channel: String,
    pub subscribers: usize,
    /// starting, ok, failing, following; `lingering` when nobody listens.
    pub state: &'static str,
    pub failures: u32,
    /// Milliseconds since the last poll and the last change.
    pub last_poll_ms: Option<u64>,
    pub last_change_ms: Option<u64>,
}

impl Shared {
    pub(super) fn status(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A poll cycle ended in `state` (with `failures` in a row).
    pub(super) fn polled(&self, state: State, failures: u32) {
        let mut s = self.status();
        s.state = state;
        s.failures = failures;
        if state != State::Following {
            s.last_poll = Some(Instant::now());
        }
    }
}

impl Pollers {
    /// Every running poller, by route then channel.
    pub fn list(&self) -> Vec<PollerInfo> {
        let now = Instant::now();
        let ago =
            |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t).as_millis() as u64);
        let mut out: Vec<PollerInfo> = self
            .lock()
            .values()
            .map(|e| {
                let s = e.shared.status();
                let state = match (e.subscribers, s.state) {
                    (0, _) => "lingering",
                    (_, State::Starting) => "starting",
                    (_, State::Ok) => "ok",
                    (_, State::Failing) => "failing",
                    (_, State::Following) => "following",
                };
                PollerInfo {
                    route: e.shared.label.clone(),
                    channel: e.shared.channel.clone(),
                    subscribers: e.subscribers,
                    state,
                    failures: s.failures,
                    last_poll_ms: ago(s.last_poll),
                    last_change_ms: ago(s.last_change),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.route, &a.channel).cmp(&(&b.route, &b.channel)));
        out
    }
}

impl Poller {
    /// Count every failure; log and notify only on healthy → failing.
    pub(super) async fn failed(&mut self, poll: &Poll, label: &str, why: PollFailure) {
        self.pollers
            .metrics
            .poll_errors
            .with_label_values(&[label])
            .inc();
        self.failures = self.failures.saturating_add(1);
        if self.failures > 1 {
            return;
        }
        self.failing_since = Some(Instant::now());
        tracing::warn!(route = label, upstream = %poll.upstream, channel = %self.target.channel, error = %why, "poll failing");
        if let Some(name) = &poll.error_event {
            let data =
                serde_json::json!({"state": "failing", "error": why.to_string()}).to_string();
            self.notify(name, data).await;
        }
    }

    /// Log and notify only on failing → healthy.
    pub(super) async fn recovered(&mut self, poll: &Poll, label: &str) {
        if self.failures == 0 {
            return;
        }
        let failures = std::mem::take(&mut self.failures);
        let down = self
            .failing_since
            .take()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        tracing::info!(route = label, upstream = %poll.upstream, channel = %self.target.channel, failures, down = ?down, "poll recovered");
        if let Some(name) = &poll.error_event {
            let data = serde_json::json!({"state": "recovered", "failures": failures}).to_string();
            self.notify(name, data).await;
        }
    }
}

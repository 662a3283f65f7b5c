//! Polling legacy endpoints (SPEC §4 Polling): one poller per resolved poll
//! request however many clients listen, started by the first subscriber and
//! stopped `linger` after the last.
//!
//! The registry is one map under one std mutex (held only to look up, count
//! and insert, never across an await), keyed by the poll channel. Whoever
//! inserts the entry spawns its task, so a crowd arriving at once starts one
//! poller. Each subscriber holds a `Lease`; dropping it, however the stream
//! ended, releases the count.
//!
//! Changes go through the hub like any other event (so history and resume
//! apply); the snapshot goes straight to each new client, encoded once.

mod caps;
mod fetch;
mod status;
pub(crate) mod target;

pub(crate) use caps::Cap;
pub(crate) use target::{resolve as target, Target, TargetError};

use crate::config::{Poll, PollDiff};
use crate::hub::{Broker, BrokerError, Event, Payload, Source};
use crate::metrics::Metrics;
use crate::outbound::{Client, Pool};
use crate::sources::diff::{self, Compared, DiffError, Kind};
use crate::telemetry::{self, Tracing};
use crate::wire;
use bytes::Bytes;
use fetch::{Fetch, FetchError, Fetched, Validators};
use futures_util::future::BoxFuture;
use rand::Rng;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// A poll route, resolved once from the config: what its pollers poll and
/// where.
#[derive(Debug)]
pub struct PollRoute {
    /// The route's path, the metrics label.
    pub label: String,
    pub poll: Poll,
    pub pool: Arc<Pool>,
    /// Most change events one poll may publish: half the route's client queue.
    pub burst_limit: usize,
}

/// Why a subscriber got no poller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollError {
    Target(TargetError),
    /// Two different poll requests hashed to one channel (never seen; 128-bit
    /// hashes do not collide in practice — but refusing beats showing one
    /// client another's data).
    Collision,
    /// A new poller would exceed a cap, and every running one has subscribers.
    Full(Cap),
}

impl fmt::Display for PollError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollError::Target(e) => e.fmt(f),
            PollError::Collision => f.write_str("poll key collision"),
            PollError::Full(cap) => cap.fmt(f),
        }
    }
}

impl std::error::Error for PollError {}

/// Why one poll failed; its text goes to logs and `error_event`.
#[derive(Debug)]
enum PollFailure {
    Fetch(FetchError),
    /// A 304 to a request that was not conditional.
    UnexpectedNotModified,
    Diff(DiffError),
    DiffTask,
    Hub(BrokerError),
}

impl fmt::Display for PollFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PollFailure::Fetch(e) => e.fmt(f),
            PollFailure::UnexpectedNotModified => f.write_str("304 without a previous response"),
            PollFailure::Diff(e) => e.fmt(f),
            PollFailure::DiffTask => f.write_str("the diff task failed"),
            PollFailure::Hub(e) => e.fmt(f),
        }
    }
}

/// Bodies above this are diffed on a blocking thread, so a large document
/// never stalls the client streams sharing the runtime.
const BLOCKING_DIFF: usize = 256 * 1024;
/// Never retry sooner than this, whatever the jitter drew.
const MIN_RETRY: Duration = Duration::from_millis(10);
/// A waiting subscriber allows the first poll this much beyond its timeout.
pub(crate) const SNAPSHOT_SLACK: Duration = Duration::from_millis(500);

/// What a new subscriber can be sent.
#[derive(Debug, Clone)]
pub(crate) enum Snapshot {
    /// The first poll is still in flight.
    Pending,
    /// No good poll yet (or `initial: false`).
    Missing,
    /// The `event: snapshot` frame of the latest state.
    Ready(Bytes),
}

/// One poller's state that its subscribers share.
#[derive(Debug)]
struct Shared {
    pollers: Arc<Pollers>,
    /// The route's path (metrics label).
    label: String,
    channel: String,
    status: Mutex<status::Status>,
    snapshot: watch::Sender<Snapshot>,
    /// Wakes the poller when its last subscriber leaves, to start the linger clock.
    idle: Notify,
}

#[derive(Debug)]
struct Entry {
    target: Arc<Target>,
    subscribers: usize,
    /// When the poller started: how long it served decides its linger.
    started: Instant,
    idle_since: Option<Instant>,
    shared: Arc<Shared>,
}

pub struct Pollers {
    entries: Mutex<HashMap<String, Entry>>,
    /// Where changes are published; with a shared broker, also who leads
    /// each poll key (`Broker::leases`).
    hub: Arc<dyn Broker>,
    metrics: Arc<Metrics>,
    client: Arc<Client>,
    /// A span per poll cycle, when tracing is on.
    telemetry: Option<Arc<Tracing>>,
    /// `limits.max_pollers` (0 = unlimited), as reloaded.
    max_total: AtomicUsize,
}

impl std::fmt::Debug for Pollers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pollers")
            .field("active", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// One subscriber's hold on a poller: a single pointer, since every
/// stream of a poll route carries one for its whole life.
#[derive(Debug)]
pub struct Lease {
    shared: Arc<Shared>,
}

impl Lease {
    pub fn channel(&self) -> &str {
        &self.shared.channel
    }

    /// `snapshot`, as a future that owns what it needs.
    pub fn snapshot_source(&self, wait: Duration) -> BoxFuture<'static, Option<Bytes>> {
        let shared = self.shared.clone();
        Box::pin(async move { shared.snapshot(wait).await })
    }

    /// The latest snapshot frame; waits up to `wait` while the first poll is in flight.
    pub async fn snapshot(&self, wait: Duration) -> Option<Bytes> {
        self.shared.snapshot(wait).await
    }
}

impl Shared {
    async fn snapshot(&self, wait: Duration) -> Option<Bytes> {
        let mut rx = self.snapshot.subscribe();
        let got = tokio::time::timeout(wait, async {
            rx.wait_for(|s| !matches!(s, Snapshot::Pending))
                .await
                .map(|s| s.clone())
                .ok()
        })
        .await;
        match got {
            Ok(Some(Snapshot::Ready(b))) => Some(b),
            _ => None,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut entries = self.shared.pollers.lock();
        let Some(e) = entries.get_mut(&self.shared.channel) else {
            return;
        };
        // A poller that died and was replaced is not ours to count down.
        if !Arc::ptr_eq(&e.shared, &self.shared) {
            return;
        }
        e.subscribers = e.subscribers.saturating_sub(1);
        if e.subscribers == 0 {
            e.idle_since = Some(Instant::now());
            e.shared.idle.notify_one();
        }
    }
}

impl Pollers {
    pub fn new(
        hub: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        client: Arc<Client>,
        telemetry: Option<Arc<Tracing>>,
        max_total: usize,
    ) -> Arc<Pollers> {
        Arc::new(Pollers {
            entries: Mutex::new(HashMap::new()),
            hub,
            metrics,
            client,
            telemetry,
            max_total: AtomicUsize::new(max_total),
        })
    }

    /// A new `limits.max_pollers` (a reload); running pollers go on.
    pub fn set_max(&self, max_total: usize) {
        self.max_total.store(max_total, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere must not stop every poller with it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Running pollers.
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    /// Count a subscriber on `target`'s poller, starting it if none runs.
    /// Must be called inside the tokio runtime.
    pub fn acquire(
        self: &Arc<Self>,
        target: Target,
        route: &Arc<PollRoute>,
    ) -> Result<Lease, PollError> {
        let mut entries = self.lock();
        if let Some(e) = entries.get_mut(&target.channel) {
            if *e.target != target {
                return Err(PollError::Collision);
            }
            e.subscribers += 1;
            e.idle_since = None;
            return Ok(Lease {
                shared: e.shared.clone(),
            });
        }
        caps::make_room(
            &mut entries,
            self.max_total.load(Ordering::Relaxed),
            target.route,
            route.poll.max_pollers,
        )?;
        let shared = Arc::new(Shared {
            pollers: self.clone(),
            label: route.label.clone(),
            channel: target.channel.clone(),
            status: Mutex::default(),
            snapshot: watch::channel(Snapshot::Pending).0,
            idle: Notify::new(),
        });
        let target = Arc::new(target);
        entries.insert(
            target.channel.clone(),
            Entry {
                target: target.clone(),
                subscribers: 1,
                started: Instant::now(),
                idle_since: None,
                shared: shared.clone(),
            },
        );
        drop(entries);
        self.metrics.pollers.inc();
        let task = Poller {
            pollers: self.clone(),
            target,
            route: route.clone(),
            shared: shared.clone(),
            state: None,
            validators: None,
            failures: 0,
            failing_since: None,
            takeover: false,
        };
        tokio::spawn(task.run());
        Ok(Lease { shared })
    }
}

/// One poller's task and its private state.
struct Poller {
    pollers: Arc<Pollers>,
    target: Arc<Target>,
    route: Arc<PollRoute>,
    shared: Arc<Shared>,
    state: Option<diff::State>,
    validators: Option<Validators>,
    failures: u32,
    failing_since: Option<Instant>,
    /// Cluster mode: this instance just took the poll over from another.
    takeover: bool,
}

impl Drop for Poller {
    fn drop(&mut self) {
        // Normally the entry is already gone; after a panic this frees the key
        // so the next subscriber starts a fresh poller.
        let mut entries = self.pollers.lock();
        if entries
            .get(&self.target.channel)
            .is_some_and(|e| Arc::ptr_eq(&e.shared, &self.shared))
        {
            entries.remove(&self.target.channel);
        }
        drop(entries);
        self.pollers.metrics.pollers.dec();
    }
}

impl Poller {
    async fn run(mut self) {
        let route = self.route.clone();
        let (poll, pool, label) = (&route.poll, &route.pool, route.label.as_str());
        tracing::debug!(route = label, channel = %self.target.channel, "poller started");
        let mut first = true;
        loop {
            let started = Instant::now();
            if !self.lead(poll).await {
                self.shared.polled(status::State::Following, 0);
                first = false;
                if !self.wait(started + poll.interval, poll).await {
                    return;
                }
                continue;
            }
            let mut span = self.pollers.telemetry.as_ref().map(|t| {
                let mut s = t.root_span("poll", telemetry::Kind::Client);
                s.set("ssegate.route", label.to_string());
                s.set("ssegate.upstream", poll.upstream.clone());
                s
            });
            let polled = self.poll_once(poll, pool, label, span.as_mut()).await;
            if let (Some(s), Err(why)) = (&mut span, &polled) {
                s.fail(why.to_string());
            }
            drop(span);
            let state = match &polled {
                Ok(()) => status::State::Ok,
                Err(_) => status::State::Failing,
            };
            let delay = match polled {
                Ok(()) => {
                    self.recovered(poll, label).await;
                    if first {
                        // A random phase: pollers started together do not stay in step.
                        poll.interval.mul_f64(rand::rng().random::<f64>())
                    } else {
                        poll.interval.mul_f64(rand::rng().random_range(0.9..1.1))
                    }
                }
                Err(why) => {
                    self.failed(poll, label, why).await;
                    backoff(poll.interval, poll.max_backoff, self.failures)
                }
            };
            self.shared.polled(state, self.failures);
            if first && matches!(*self.shared.snapshot.borrow(), Snapshot::Pending) {
                self.shared.snapshot.send_replace(Snapshot::Missing);
            }
            first = false;
            if !self.wait(started + delay, poll).await {
                tracing::debug!(route = label, channel = %self.target.channel, "poller stopped: no subscriber");
                return;
            }
        }
    }

    /// Sleep until `due`; false when the poller should stop because nobody
    /// listened for its linger (the entry is removed under the lock, so a
    /// new subscriber either kept it alive or starts a new poller), or a cap
    /// made another poller take its place.
    async fn wait(&self, due: Instant, poll: &Poll) -> bool {
        loop {
            let stop_at = {
                let mut entries = self.pollers.lock();
                let Some(e) = entries
                    .get(&self.target.channel)
                    .filter(|e| Arc::ptr_eq(&e.shared, &self.shared))
                else {
                    return false;
                };
                let linger = e.linger(poll.linger, poll.interval);
                match e.idle_since {
                    Some(since) if since + linger <= Instant::now() => {
                        entries.remove(&self.target.channel);
                        return false;
                    }
                    Some(since) => Some(since + linger),
                    None => None,
                }
            };
            let until = stop_at.map_or(due, |s| s.min(due));
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {
                    if Instant::now() >= due {
                        return true;
                    }
                }
                _ = self.shared.idle.notified() => {}
            }
        }
    }

    async fn poll_once(
        &mut self,
        poll: &Poll,
        pool: &Pool,
        label: &str,
        mut span: Option<&mut telemetry::Span>,
    ) -> Result<(), PollFailure> {
        let m = &self.pollers.metrics;
        m.poll_requests.with_label_values(&[label]).inc();
        let t = Instant::now();
        let conditional = match (&poll.diff, &self.validators, &self.state) {
            (PollDiff::Etag, Some(v), Some(_)) if !v.is_empty() => Some(v),
            _ => None,
        };
        let fetched = Fetch {
            client: &self.pollers.client,
            pool,
            target: &self.target,
            poll,
            validators: conditional,
            traceparent: span.as_ref().map(|s| s.traceparent()),
        }
        .run()
        .await;
        m.poll_duration
            .with_label_values(&[label])
            .observe(t.elapsed().as_secs_f64());
        let received = std::time::Instant::now();
        let (body, validators) = match fetched.map_err(PollFailure::Fetch)? {
            Fetched::NotModified if self.state.is_some() => return Ok(()),
            Fetched::NotModified => return Err(PollFailure::UnexpectedNotModified),
            Fetched::Body { body, validators } => (body, validators),
        };
        let mode = poll.diff.clone();
        let prev = self.state.take();
        let (prev, compared) = if body.len() > BLOCKING_DIFF {
            tokio::task::spawn_blocking(move || {
                let c = diff::compare(&mode, prev.as_ref(), &body);
                (prev, c)
            })
            .await
            .map_err(|_| PollFailure::DiffTask)?
        } else {
            let c = diff::compare(&mode, prev.as_ref(), &body);
            (prev, c)
        };
        self.state = prev;
        let (changes, snapshot, state) = match compared.map_err(PollFailure::Diff)? {
            Compared::Unchanged => {
                self.validators = Some(validators);
                return Ok(());
            }
            Compared::Changed {
                changes,
                snapshot,
                state,
            } => (changes, snapshot, state),
        };
        let baseline = self.state.is_none();
        let frame = poll
            .initial
            .then(|| wire::encode(None, Some("snapshot"), &snapshot).ok())
            .flatten();
        let mut events: Vec<Event> = if changes.len() > self.route.burst_limit {
            // More per-item events than half a client queue would evict every
            // subscriber as slow; one whole snapshot says the same in one event.
            vec![self.event("snapshot", snapshot.clone(), received)]
        } else {
            changes
                .into_iter()
                .map(|c| self.event(event_name(poll, c.kind), c.data, received))
                .collect()
        };
        // Subscribers who waited for a first poll that failed got no snapshot:
        // the first good poll after that brings it to them through the hub.
        // So do clients of an instance that took the poll over from another
        // (cluster mode): changes between the two leaders are unknown.
        let missed = frame.is_some() && matches!(*self.shared.snapshot.borrow(), Snapshot::Missing);
        let takeover = std::mem::take(&mut self.takeover);
        if baseline && (missed || takeover) {
            events.push(self.event("snapshot", snapshot, received));
        }
        let changed = !events.is_empty();
        if let Some(s) = &mut span {
            s.set("ssegate.changed", changed);
            s.set("ssegate.events", events.len() as i64);
        }
        if changed {
            // Not committed on failure: the next poll diffs against the old state again.
            self.pollers
                .hub
                .publish(events)
                .await
                .map_err(PollFailure::Hub)?;
            if !baseline {
                m.poll_changes.with_label_values(&[label]).inc();
                self.shared.status().last_change = Some(Instant::now());
            }
        }
        self.state = Some(state);
        self.validators = Some(validators);
        if let (Some(cluster), Some(f)) = (self.pollers.hub.leases(), &frame) {
            let keep = (poll.interval * 3).max(Duration::from_secs(2)) + poll.linger;
            cluster.store_snapshot(&self.target.channel, f, keep).await;
        }
        self.shared
            .snapshot
            .send_replace(frame.map_or(Snapshot::Missing, Snapshot::Ready));
        Ok(())
    }

    /// In cluster mode: true when this instance holds the poll lease. A
    /// follower keeps the leader's snapshot for its own new subscribers and
    /// forgets its diff state, so that if it takes over it starts afresh.
    async fn lead(&mut self, poll: &Poll) -> bool {
        let Some(cluster) = self.pollers.hub.leases() else {
            return true;
        };
        let ttl = (poll.interval * 3).max(Duration::from_secs(2));
        if cluster.lease(&self.target.channel, ttl).await {
            if self.state.is_none() {
                // Taking over from a leader that stopped: clients may have
                // missed changes in between, so the first poll republishes
                // the whole snapshot.
                self.takeover = cluster.load_snapshot(&self.target.channel).await.is_some();
            }
            return true;
        }
        self.state = None;
        self.validators = None;
        let snap = cluster.load_snapshot(&self.target.channel).await;
        self.shared
            .snapshot
            .send_replace(snap.map_or(Snapshot::Missing, Snapshot::Ready));
        false
    }

    /// An event of this poller's channel; `received` is when the response
    /// it comes from arrived (its age counts the diff).
    fn event(&self, name: &str, data: String, received: std::time::Instant) -> Event {
        Event {
            received,
            ..Event::new(
                self.target.channel.clone(),
                None,
                Payload::Message {
                    event: Some(name.to_string()),
                    data,
                },
                Source::Poll,
            )
        }
    }

    /// Publish an `error_event` (failing, recovered) now; best effort.
    async fn notify(&self, name: &str, data: String) {
        let event = self.event(name, data, std::time::Instant::now());
        let _ = self.pollers.hub.publish(vec![event]).await;
    }
}

fn event_name(poll: &Poll, kind: Kind) -> &str {
    match kind {
        Kind::Update => &poll.events.update,
        Kind::Created => &poll.events.created,
        Kind::Updated => &poll.events.updated,
        Kind::Deleted => &poll.events.deleted,
    }
}

/// Exponential backoff with full jitter: uniform in [0, min(max, interval·2^n)).
pub(crate) fn backoff(interval: Duration, max: Duration, failures: u32) -> Duration {
    let ceiling = interval.saturating_mul(1u32 << failures.min(20)).min(max);
    ceiling.mul_f64(rand::rng().random::<f64>()).max(MIN_RETRY)
}

#[cfg(test)]
mod tests;

//! The hub: every source publishes `Event`s here; the broker gives each a
//! cursor, keeps it in bounded per-channel history, encodes its SSE frame once
//! and offers those shared bytes to every subscriber's bounded queue.
//! `record` keeps a backend's own SSE replies the same way, for resume.

pub mod cursor;
mod direct;
mod feed;
mod history;
mod local;
pub mod memory;
pub mod persist;
pub mod record;
pub mod redis;
mod redis_client;
mod subs;
mod subscriber;
mod tail;

pub use crate::origin::Source;
pub use direct::Direct;
pub use feed::Feed;
pub use subscriber::{count_written, ingest_us, Delivery, Offer, SubState, Subscriber};
pub use tail::{Recent, Tail};

use async_trait::async_trait;
use bytes::Bytes;

/// Offer one frame to many subscribers, counting the slow ones it evicts.
pub(crate) fn offer_all<'a>(
    subs: impl Iterator<Item = &'a std::sync::Arc<Subscriber>>,
    d: &Delivery,
    metrics: &crate::metrics::Metrics,
) {
    let mut dropped = 0;
    let mut not_sse = 0;
    for sub in subs {
        match sub.offer(d) {
            Offer::Evicted(n) => {
                metrics.slow_disconnects.inc();
                dropped += n;
            }
            Offer::NotForThisClient => not_sse += 1,
            // Counted here, as the stream engine counts what it writes: the
            // stream never sees a frame sent directly.
            Offer::Sent => count_written(std::slice::from_ref(d), metrics),
            Offer::Queued | Offer::Gone => {}
        }
    }
    if not_sse > 0 {
        metrics
            .dropped
            .with_label_values(&["not_sse"])
            .inc_by(not_sse);
    }
    if dropped > 0 {
        metrics
            .dropped
            .with_label_values(&["slow_client"])
            .inc_by(dropped as u64);
    }
}

/// What a source publishes.
#[derive(Debug, Clone)]
pub struct Event {
    pub channel: String,
    /// Publisher-given id: a second event with the same id on the same
    /// channel, while the first is still in history, is dropped.
    pub dedupe_id: Option<String>,
    pub payload: Payload,
    /// Where it came from (`ssegate_event_age_seconds{source}`).
    pub source: Source,
    /// When the gateway received it: the event's age at each write to a
    /// client is measured from here.
    pub received: std::time::Instant,
}

impl Event {
    /// An event received now.
    pub fn new(
        channel: String,
        dedupe_id: Option<String>,
        payload: Payload,
        source: Source,
    ) -> Event {
        Event {
            channel,
            dedupe_id,
            payload,
            source,
            received: std::time::Instant::now(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum Payload {
    /// An SSE event; `data` is already text (JSON compacted by the source).
    Message { event: Option<String>, data: String },
    /// GRIP `http-stream` content, written verbatim (an `id:` is added when
    /// it is an SSE event without one).
    Raw(Bytes),
    /// GRIP `action: close`: end every stream subscribed to the channel.
    Close,
}

/// Where a subscriber starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// Live events only.
    Live,
    /// After this `Last-Event-ID`, as the client sent it.
    After(String),
}

/// What a new subscriber gets before live events.
#[derive(Debug, Default)]
pub struct Replay {
    /// A live subscriber: the cursor of the newest event at the moment it
    /// was registered. Sent as a bare `id:` so that a client cut before its
    /// first event resumes from where it started, not from nothing.
    pub start: Option<String>,
    /// `event: ssegate.reset`, when the missed events are no longer in history.
    pub reset: Option<Bytes>,
    /// Missed events, in publish order.
    pub frames: Vec<Delivery>,
    /// The hub's newest sequence number when the subscriber was registered:
    /// after the replay the client has everything of its channels up to it.
    /// The stream's floor, so that a stream that has written no event yet
    /// still knows where it is (a live upgrade resumes it from there).
    pub head: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PublishReport {
    pub published: usize,
    pub duplicates: usize,
    pub closed: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HubStats {
    pub channels: usize,
    pub subscriptions: usize,
    pub history_events: usize,
    pub cursor: String,
}

/// One channel as the dashboard's busiest list shows it.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
pub struct ChannelStat {
    pub name: String,
    /// Streams subscribed on this instance.
    pub subscribers: usize,
    /// Events kept for resume; None where this instance does not know
    /// (Redis keeps the history).
    pub history: Option<usize>,
    /// Milliseconds since its last event here; None before the first.
    pub idle_ms: Option<u64>,
}

/// Keep the `n` largest of `items` by `key`, largest first: one pass, and
/// only the kept ones are turned into a `ChannelStat`.
pub(crate) fn top<T, K: Ord + Copy>(
    items: impl Iterator<Item = T>,
    n: usize,
    key: impl Fn(&T) -> K,
) -> Vec<T> {
    let mut kept: Vec<(K, T)> = Vec::with_capacity(n + 1);
    for item in items {
        let k = key(&item);
        if kept.len() == n && kept.last().is_some_and(|(min, _)| *min >= k) {
            continue;
        }
        let at = kept.partition_point(|(other, _)| *other >= k);
        kept.insert(at, (k, item));
        kept.truncate(n);
    }
    kept.into_iter().map(|(_, t)| t).collect()
}

#[derive(Debug, Clone)]
pub enum BrokerError {
    /// The broker cannot be reached: subscriptions get 503.
    Unavailable(String),
    /// A publish failed part way: what `report` counts was committed (and
    /// delivered), the rest was not, so a publisher retries only the rest.
    Interrupted { report: PublishReport, why: String },
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerError::Unavailable(why) => write!(f, "broker unavailable: {why}"),
            BrokerError::Interrupted { report, why } => write!(
                f,
                "broker unavailable after {} events were published ({} duplicates): {why}",
                report.published, report.duplicates
            ),
        }
    }
}

impl std::error::Error for BrokerError {}

/// The hub's contract; `memory` is the embedded default, a Redis broker
/// implements the same for cluster mode.
#[async_trait]
pub trait Broker: Send + Sync + std::fmt::Debug {
    /// Publish a batch in order; one call is one lock/round trip for all items.
    async fn publish(&self, events: Vec<Event>) -> Result<PublishReport, BrokerError>;

    /// Register `sub` on `channels` and return what it missed since `resume`.
    /// Registration and the history read are one step, so there is no gap and
    /// no duplicate between replay and live events.
    async fn subscribe(
        &self,
        sub: &std::sync::Arc<Subscriber>,
        channels: &[String],
        resume: &Resume,
    ) -> Result<Replay, BrokerError>;

    fn unsubscribe(&self, sub: &Subscriber, channels: &[String]);

    /// Ok when subscriptions and publishes can be served.
    async fn ready(&self) -> Result<(), BrokerError>;

    fn stats(&self) -> HubStats;

    /// The broker's own upkeep (history sweeps, connections), run by the
    /// gateway for the life of the process.
    async fn run(self: std::sync::Arc<Self>);

    /// Called when the process stops on its own terms (after the SIGTERM
    /// drain, just before it exits; in a live upgrade, once the hub is
    /// sealed and before its state is handed over): a broker that keeps
    /// state on disk saves it here, lets go of its files and takes no
    /// publish after. Calling it again does nothing.
    async fn stop(&self) {}

    /// `run --upgrade`: a broker that keeps state on disk opens it only now
    /// that this process owns the hub (the handoff is over, or failed),
    /// waiting up to `lock_wait` for the previous process to let go of it.
    /// Until then it writes nothing; after a handoff the files must match
    /// the state handed over, and are not loaded over it.
    async fn open_after_handoff(
        &self,
        _lock_wait: std::time::Duration,
    ) -> Result<(), persist::PersistError> {
        Ok(())
    }

    /// The hook for other state saved with the hub (`persist::Section`):
    /// false when this broker keeps nothing on disk.
    fn add_section(&self, _section: std::sync::Arc<dyn persist::Section>) -> bool {
        false
    }

    /// What a section's key held in the files at start.
    fn restored_section(&self, _key: &str) -> Option<Bytes> {
        None
    }

    /// Poll leadership, when several instances share this broker.
    fn leases(&self) -> Option<&dyn Leases> {
        None
    }

    /// The `n` channels with the most subscribers here (then the most
    /// history), for the dashboard: one pass over the channels.
    fn busiest(&self, _n: usize) -> Vec<ChannelStat> {
        Vec::new()
    }

    /// The last events this instance published, while a dashboard watches.
    fn tail(&self) -> Option<&Tail> {
        None
    }

    /// A cursor of this broker (`id:` of the event with sequence `seq`).
    fn cursor(&self, seq: u64) -> String;

    /// Which broker this is, for a live upgrade: streams move only between
    /// processes on equal brokers. Holds no secret.
    fn identity(&self) -> String;

    /// A live upgrade is handing over: publishes are refused from now on
    /// (they go to the new process), so the state handed over is final.
    fn seal(&self) {}

    /// The whole state of a broker that lives in this process (memory), to
    /// hand over in a live upgrade; None for a shared broker.
    fn state(&self) -> Option<HubState> {
        None
    }

    /// Take over the state a previous process handed over.
    fn restore(&self, _state: HubState) {}
}

/// The memory broker's state: cursor, history and dedupe ids, as a live
/// upgrade moves it to the new process.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct HubState {
    pub epoch: u64,
    pub seq: u64,
    pub forgotten: u64,
    pub channels: Vec<ChannelState>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct ChannelState {
    pub name: String,
    pub evicted: u64,
    pub events: Vec<EventState>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct EventState {
    pub seq: u64,
    /// How long ago it was published (history expires by age).
    pub age_ms: u64,
    pub dedupe_id: Option<String>,
    pub frame: Bytes,
    pub grip_only: bool,
}

/// One instance at a time polls a given key; the others serve the leader's
/// snapshot. Implemented by brokers that several instances share.
#[async_trait]
pub trait Leases: Send + Sync + std::fmt::Debug {
    /// Take or renew the lease on `key`: true while this instance holds it.
    /// A holder that dies stops renewing, and after `ttl` another takes over.
    async fn lease(&self, key: &str, ttl: std::time::Duration) -> bool;

    /// The leader keeps the latest snapshot frame here for the followers.
    async fn store_snapshot(&self, key: &str, frame: &[u8], ttl: std::time::Duration);

    async fn load_snapshot(&self, key: &str) -> Option<Bytes>;
}

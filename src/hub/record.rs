//! Records: a backend's own SSE reply, kept by the gateway (`record:` on a
//! proxy route) so that a client that lost the connection gets the rest of
//! it without the backend being called again.
//!
//! A record is a bounded sequence of frames numbered 1, 2, … whose SSE ids
//! are `<record id>.<n>`, an end, the digest of the credentials of the
//! request that made it, and a deadline. Its readers are subscribers like
//! any stream's: a reader registered on a record gets its frames in order
//! (the subscriber's cursor is `n`), and is closed when the record ends, so
//! the stream engine ends the body. The `Records` store lives next to the
//! brokers because it shares their job and their place: in this process
//! (`memory`), or in Redis, where any instance serves any record
//! (`hub::redis`).

pub mod memory;

use super::{persist, Delivery, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A record's id: 128 random bits from the thread's CSPRNG, written as 32
/// lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId([u8; 16]);

impl RecordId {
    pub fn random() -> RecordId {
        // `rand::rng()` is ChaCha12 seeded and reseeded from the OS: unguessable.
        RecordId(rand::random())
    }

    pub fn parse(hex_id: &str) -> Option<RecordId> {
        let mut b = [0u8; 16];
        if hex_id.len() != 32
            || !hex_id
                .bytes()
                .all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        hex::decode_to_slice(hex_id, &mut b).ok()?;
        Some(RecordId(b))
    }

    pub fn bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The SSE id of the record's `n`th event.
    pub fn event_id(&self, n: u64) -> String {
        format!("{self}.{n}")
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

/// `<record id>.<n>`: a record and the last event a client has.
pub fn parse_event_id(s: &str) -> Option<(RecordId, u64)> {
    let (id, n) = s.trim().split_once('.')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((RecordId::parse(id)?, n.parse().ok()?))
}

/// The digest of the credentials a request carried; compared in constant time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Credentials(pub [u8; 32]);

impl Credentials {
    pub fn matches(&self, other: &Credentials) -> bool {
        use subtle::ConstantTimeEq;
        self.0.ct_eq(&other.0).into()
    }

    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(s: &str) -> Option<Credentials> {
        let mut b = [0u8; 32];
        hex::decode_to_slice(s, &mut b).ok()?;
        Some(Credentials(b))
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// The number of the `ssegate.incomplete` that ends a record whose writer
/// was lost with the process (restored by `hub.persist` or after a live
/// upgrade unended). Its last saved frame may not be the last one a client
/// got, so the next number could name an event the client already has;
/// a writer never numbers this far (`max_events` ≤ 1,000,000).
pub const LOST_END: u64 = u64::MAX;

/// How a record ended. Every end but `Complete` is told to readers by a
/// last event, `ssegate.incomplete`, numbered as the record's next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The backend ended its reply.
    Complete,
    /// The backend's connection broke or timed out.
    BackendError,
    /// `max_events` were recorded; the backend was cut.
    MaxEvents,
    /// The record reached its `ttl` while the backend still sent.
    Ttl,
    /// One event was larger than `limits.max_body`.
    TooLarge,
    /// Dropped to keep the route's records within `max_total`.
    Evicted,
    /// The gateway stopped (or lost its store) before the backend ended.
    Interrupted,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Complete => "complete",
            EndReason::BackendError => "backend-error",
            EndReason::MaxEvents => "max-events",
            EndReason::Ttl => "ttl",
            EndReason::TooLarge => "event-too-large",
            EndReason::Evicted => "evicted",
            EndReason::Interrupted => "interrupted",
        }
    }
}

/// A record being made, as its writer knows it.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub id: RecordId,
    /// The route it was made on (its path): only that route resumes it.
    pub route: Arc<str>,
    pub credentials: Credentials,
    pub ttl: Duration,
    /// Bytes the route's records may hold together; the oldest go first.
    pub max_total: usize,
}

/// Whether an appended frame was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Kept,
    /// The record is gone (evicted, expired, or ended by another party):
    /// the writer stops reading the backend.
    Gone,
}

/// What a reader gets first.
#[derive(Debug, Default)]
pub struct Following {
    /// The frames after the reader's last one, in order (`seq` = n).
    pub frames: Vec<Delivery>,
    /// The record has ended: nothing follows these frames (none at all:
    /// the reader has every event already).
    pub ended: bool,
}

/// Why a record cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// No such record on this route, or it expired or was evicted.
    Unknown,
    /// The request's credentials are not those of the request that made it.
    Forbidden,
    /// The store cannot be reached.
    Unavailable(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Unknown => f.write_str("unknown or expired record"),
            RecordError::Forbidden => f.write_str("the record was made with other credentials"),
            RecordError::Unavailable(why) => write!(f, "records unavailable: {why}"),
        }
    }
}

impl std::error::Error for RecordError {}

/// Where records are kept. One writer per record appends to it; any number
/// of readers follow it.
#[async_trait]
pub trait Records: Send + Sync + fmt::Debug {
    /// Create `rec`, with `first` (the client whose request made it)
    /// reading it from its start.
    async fn start(&self, rec: &NewRecord, first: &Arc<Subscriber>) -> Result<(), RecordError>;

    /// Store frame `n` (1, 2, …, in order) and hand it to the readers.
    async fn append(&self, rec: &NewRecord, n: u64, frame: Bytes) -> Result<Appended, RecordError>;

    /// End the record; readers are told (a last `ssegate.incomplete` event,
    /// numbered after the record's last, unless `Complete`) and closed.
    async fn end(&self, rec: &NewRecord, reason: EndReason) -> Result<(), RecordError>;

    /// The writer is alive (a store shared by several instances ends the
    /// records whose writer stopped saying so).
    async fn touch(&self, _rec: &NewRecord) {}

    /// Register `sub` as a reader of record `id` of `route` after its event
    /// `after`, and return what it missed. Registration and the read are
    /// one step: nothing falls between them.
    async fn follow(
        &self,
        sub: &Arc<Subscriber>,
        id: RecordId,
        route: &str,
        after: u64,
        credentials: &Credentials,
    ) -> Result<Following, RecordError>;

    fn unfollow(&self, sub: &Subscriber, id: RecordId);

    /// A live upgrade: every record as it is now, for the new process. A
    /// store shared by several instances has nothing to hand over.
    fn hand_over(&self) -> persist::Replies {
        persist::Replies::new()
    }

    /// Take the records a previous process handed over; how many, and how
    /// many of them lost their writer with it.
    fn take_over(&self, _replies: persist::Replies) -> (usize, usize) {
        (0, 0)
    }

    /// The records were handed over (and the new process committed): what
    /// the writers here still read would reach no one, so they stop.
    fn handed_over(&self) {}

    /// The store's upkeep (expiry), run for the life of the process.
    async fn run(self: Arc<Self>);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_round_trip_and_refuse_anything_else() {
        let id = RecordId::random();
        assert_eq!(parse_event_id(&id.event_id(42)), Some((id, 42)));
        assert_eq!(id.to_string().len(), 32);
        let hex = id.to_string();
        for bad in [
            String::new(),
            hex.clone(),
            format!("{hex}."),
            format!("{hex}.x"),
            format!("{hex}.-1"),
            format!("{hex}.+1"),
            format!("{}.1", &hex[1..]),
            format!("{}.1", hex.to_uppercase()),
            format!("{hex}.1.2"),
            "17a3f-5".to_string(),
        ] {
            assert_eq!(parse_event_id(&bad), None, "{bad}");
        }
    }

    #[test]
    fn credentials_compare_whole() {
        let a = Credentials([1; 32]);
        let mut b = a;
        assert!(a.matches(&b));
        b.0[31] = 2;
        assert!(!a.matches(&b));
        assert_eq!(Credentials::from_hex(&a.to_hex()), Some(a));
    }
}

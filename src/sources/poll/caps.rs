//! How many pollers may run, and for how long without a subscriber.
//!
//! Every poller costs the backend a request per interval, and one is started
//! by any subscriber with a new poll key (a path value, a forwarded
//! credential): so pollers are capped, in total (`limits.max_pollers`) and
//! per route (`poll.max_pollers`). A new poller over a cap first takes the
//! place of a lingering one (no subscriber left, oldest first); only when
//! every poller still has subscribers is the new one refused.
//!
//! And `linger` is earned: a poller outlives its last subscriber by at most
//! as long as it had subscribers (at least one interval), so a client that
//! subscribes and leaves at once does not keep a poller running for the
//! whole `linger`.

use super::{Entry, PollError};
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Which cap a new poller would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cap {
    /// `limits.max_pollers`
    Total(usize),
    /// The route's `poll.max_pollers`
    Route(usize),
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cap::Total(n) => write!(f, "{n} pollers already run (limits.max_pollers)"),
            Cap::Route(n) => write!(
                f,
                "{n} pollers of this route already run (its poll.max_pollers)"
            ),
        }
    }
}

/// Make room for one more poller of `route` (its fingerprint), stopping a lingering poller if
/// a cap is reached (0 = no total cap).
pub(super) fn make_room(
    entries: &mut HashMap<String, Entry>,
    max_total: usize,
    route: u64,
    max_route: Option<usize>,
) -> Result<(), PollError> {
    if let Some(max) = max_route {
        let of_route = entries.values().filter(|e| e.target.route == route);
        if of_route.count() >= max {
            stop_lingering(entries, Some(route)).ok_or(PollError::Full(Cap::Route(max)))?;
        }
    }
    if max_total > 0 && entries.len() >= max_total {
        stop_lingering(entries, None).ok_or(PollError::Full(Cap::Total(max_total)))?;
    }
    Ok(())
}

/// Stop the poller (of `route`, if given) idle the longest; None if every
/// one has subscribers. Its task sees its entry gone and ends.
fn stop_lingering(entries: &mut HashMap<String, Entry>, route: Option<u64>) -> Option<()> {
    let key = entries
        .iter()
        .filter(|(_, e)| route.is_none_or(|r| e.target.route == r))
        .filter_map(|(k, e)| Some((e.idle_since?, k)))
        .min()
        .map(|(_, k)| k.clone())?;
    let stopped = entries.remove(&key)?;
    stopped.shared.idle.notify_one();
    Some(())
}

impl Entry {
    /// How long this poller outlives its last subscriber: `linger`, but no
    /// longer than it had subscribers, and at least `interval`.
    pub(super) fn linger(&self, linger: Duration, interval: Duration) -> Duration {
        let served = self
            .idle_since
            .map_or(Duration::ZERO, |since| since.duration_since(self.started));
        linger.min(served.max(interval))
    }
}

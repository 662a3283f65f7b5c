//! The task that reads one backend's SSE reply into its record: it parses
//! the events (`wire::EventParser`), numbers them, appends each to the
//! record as soon as it is read, and ends the record when the backend ends
//! — or when a bound is reached (`max_events`, the record's ttl, one event
//! over `max_body`), the backend fails, the record is dropped from the
//! store, or the gateway stops. It never waits for a client: the client's
//! stream is a reader of the record like any other.
//!
//! On a drain (SIGTERM) the writer keeps reading for the shutdown grace
//! (less a margin) so that a reply about to finish still does, then ends
//! the record as `interrupted`: the drain waits for it (it holds an
//! `Active`).

use crate::hub::record::{Appended, EndReason, NewRecord, Records};
use crate::metrics::Metrics;
use crate::outbound::OutboundError;
use crate::shutdown::{Active, Shutdown};
use crate::wire::{self, EventParser, Parsed};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{sleep_until, Instant};

/// How often the writer looks at the drain flag.
const TICK: Duration = Duration::from_secs(1);
/// Ticks between two signs of life to a shared store.
const TOUCH_EVERY: u32 = 5;
/// Left of the shutdown grace for the writer to end its record.
const DRAIN_MARGIN: Duration = Duration::from_secs(1);
/// Longest wait between two tries of a store that is away.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct Writer {
    pub records: Arc<dyn Records>,
    pub rec: NewRecord,
    pub max_events: u64,
    /// One event's bytes at most (`limits.max_body`).
    pub max_event_size: usize,
    pub shutdown: Shutdown,
    pub grace: Duration,
    pub metrics: Arc<Metrics>,
    /// Its place in the drain count (held for its `Drop`).
    pub _active: Active,
    /// Whatever else it holds until the backend ends (its client's
    /// connection slot).
    pub _keep: Box<dyn std::any::Any + Send + Sync>,
}

/// Why the loop stopped: the record's end, or the record is gone already.
enum Stop {
    End(EndReason),
    Gone,
}

impl Writer {
    /// Read `body` into the record until it ends; how it ended.
    pub(crate) async fn run<S>(self, mut body: S) -> EndReason
    where
        S: Stream<Item = Result<Bytes, OutboundError>> + Unpin + Send,
    {
        let mut parser = EventParser::new(self.max_event_size);
        let mut parsed = Vec::new();
        let mut n = 0u64;
        let mut deadline = Instant::now() + self.rec.ttl;
        let mut at_deadline = EndReason::Ttl;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        let stop = 'read: loop {
            let next = tokio::select! {
                next = body.next() => next,
                _ = sleep_until(deadline) => break Stop::End(at_deadline),
                _ = tick.tick() => {
                    ticks = ticks.wrapping_add(1);
                    if self.shutdown.is_draining() && at_deadline != EndReason::Interrupted {
                        deadline = deadline.min(Instant::now() + self.grace.saturating_sub(DRAIN_MARGIN));
                        at_deadline = EndReason::Interrupted;
                    }
                    if ticks.is_multiple_of(TOUCH_EVERY) {
                        self.records.touch(&self.rec).await;
                    }
                    continue;
                }
            };
            let chunk = match next {
                Some(Ok(c)) => c,
                None => break Stop::End(EndReason::Complete),
                Some(Err(e)) => {
                    tracing::debug!(error = %e, record = %self.rec.id, "recorded backend failed mid-reply");
                    break Stop::End(EndReason::BackendError);
                }
            };
            if parser.feed(&chunk, &mut parsed).is_err() {
                break Stop::End(EndReason::TooLarge);
            }
            for ev in parsed.drain(..) {
                if n == self.max_events {
                    break 'read Stop::End(EndReason::MaxEvents);
                }
                n += 1;
                let frame = frame(&self.rec, n, &ev);
                match self.append(n, frame, deadline).await {
                    Some(Appended::Kept) => self.metrics.record_events.inc(),
                    Some(Appended::Gone) => break 'read Stop::Gone,
                    None => break 'read Stop::End(at_deadline),
                }
            }
        };
        // Dropped before the end is recorded: the backend is cut at once.
        drop(body);
        match stop {
            Stop::Gone => EndReason::Evicted,
            Stop::End(reason) => {
                if let Err(e) = self.records.end(&self.rec, reason).await {
                    tracing::warn!(error = %e, record = %self.rec.id, "could not end a record");
                }
                tracing::debug!(record = %self.rec.id, events = n, reason = reason.as_str(), "record ended");
                reason
            }
        }
    }

    /// Append, trying again while the store is away, until `deadline`.
    async fn append(&self, n: u64, frame: Bytes, deadline: Instant) -> Option<Appended> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.records.append(&self.rec, n, frame.clone()).await {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!(error = %e, record = %self.rec.id, "record append failed; trying again");
                    if Instant::now() + wait >= deadline {
                        return None;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// A backend event as the record keeps it: the gateway's id, the backend's
/// type, data and `retry:`.
fn frame(rec: &NewRecord, n: u64, ev: &Parsed) -> Bytes {
    let id = rec.id.event_id(n);
    // ok to fall back: a parsed event type holds no line break, the id no NUL.
    let body = wire::encode(Some(&id), ev.event.as_deref(), &ev.data)
        .unwrap_or_else(|_| wire::encode(Some(&id), None, &ev.data).unwrap_or_default());
    match ev.retry {
        None => body,
        Some(ms) => {
            let mut out = BytesMut::with_capacity(body.len() + 24);
            out.put_slice(format!("retry: {ms}\n").as_bytes());
            out.put_slice(&body);
            out.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::record::memory::MemoryRecords;
    use crate::hub::record::{Credentials, RecordId};
    use crate::hub::{SubState, Subscriber};
    use tokio::sync::mpsc;

    struct Setup {
        records: Arc<MemoryRecords>,
        rec: NewRecord,
        reader: Arc<Subscriber>,
        shutdown: Shutdown,
    }

    async fn setup(ttl: Duration) -> Setup {
        let records = Arc::new(MemoryRecords::new(Arc::new(Metrics::new())));
        let rec = NewRecord {
            id: RecordId::random(),
            route: "/chat".into(),
            credentials: Credentials([0; 32]),
            ttl,
            max_total: 1 << 20,
        };
        let reader = Arc::new(Subscriber::new(1, 1024));
        records.start(&rec, &reader).await.unwrap();
        Setup {
            records,
            rec,
            reader,
            shutdown: Shutdown::new(),
        }
    }

    fn writer(s: &Setup, max_events: u64) -> Writer {
        Writer {
            records: s.records.clone(),
            rec: s.rec.clone(),
            max_events,
            max_event_size: 64,
            shutdown: s.shutdown.clone(),
            grace: Duration::from_secs(10),
            metrics: Arc::new(Metrics::new()),
            _active: s.shutdown.track(),
            _keep: Box::new(()),
        }
    }

    type Tx = mpsc::UnboundedSender<Result<Bytes, OutboundError>>;

    fn backend() -> (
        Tx,
        impl Stream<Item = Result<Bytes, OutboundError>> + Unpin + Send,
    ) {
        let (tx, rx) = mpsc::unbounded_channel();
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        (tx, Box::pin(body))
    }

    fn text(sub: &Subscriber) -> String {
        let mut out = Vec::new();
        sub.drain_into(&mut out);
        out.iter()
            .map(|d| String::from_utf8_lossy(&d.frame).to_string())
            .collect()
    }

    #[tokio::test]
    async fn events_get_record_ids_and_the_end_closes_readers() {
        let s = setup(Duration::from_secs(60)).await;
        let (tx, body) = backend();
        let task = tokio::spawn(writer(&s, 10).run(body));
        tx.send(Ok(Bytes::from_static(
            b"id: b1\nretry: 500\nevent: tok\ndata: he",
        )))
        .unwrap();
        tx.send(Ok(Bytes::from_static(
            b"llo\n\n: ping\n\ndata: 2\r\n\r\ndata: half",
        )))
        .unwrap();
        drop(tx);
        assert_eq!(task.await.unwrap(), EndReason::Complete);
        let id = s.rec.id;
        assert_eq!(
            text(&s.reader),
            format!("retry: 500\nid: {id}.1\nevent: tok\ndata: hello\n\nid: {id}.2\ndata: 2\n\n")
        );
        assert_eq!(s.reader.state(), SubState::Closed);
    }

    #[tokio::test]
    async fn max_events_cuts_the_backend_and_says_so() {
        let s = setup(Duration::from_secs(60)).await;
        let (tx, body) = backend();
        let task = tokio::spawn(writer(&s, 2).run(body));
        tx.send(Ok(Bytes::from_static(b"data: 1\n\ndata: 2\n\ndata: 3\n\n")))
            .unwrap();
        assert_eq!(task.await.unwrap(), EndReason::MaxEvents);
        assert!(tx.is_closed(), "the backend's body was dropped");
        let id = s.rec.id;
        assert!(text(&s.reader).ends_with(&format!(
            "id: {id}.3\nevent: ssegate.incomplete\ndata: {{\"reason\":\"max-events\"}}\n\n"
        )));
    }

    #[tokio::test]
    async fn a_broken_backend_or_a_huge_event_ends_the_record() {
        let s = setup(Duration::from_secs(60)).await;
        let (tx, body) = backend();
        let task = tokio::spawn(writer(&s, 10).run(body));
        tx.send(Ok(Bytes::from_static(b"data: 1\n\n"))).unwrap();
        tx.send(Err(OutboundError {
            upstream: "app".into(),
            kind: crate::outbound::OutboundErrorKind::Io("reset"),
        }))
        .unwrap();
        assert_eq!(task.await.unwrap(), EndReason::BackendError);
        assert!(text(&s.reader).contains("backend-error"));

        let s = setup(Duration::from_secs(60)).await;
        let (tx, body) = backend();
        let task = tokio::spawn(writer(&s, 10).run(body));
        tx.send(Ok(Bytes::from(format!("data: {}", "x".repeat(100)))))
            .unwrap();
        assert_eq!(task.await.unwrap(), EndReason::TooLarge);
    }

    #[tokio::test(start_paused = true)]
    async fn the_ttl_bounds_the_backend() {
        let s = setup(Duration::from_secs(30)).await;
        let (tx, body) = backend();
        let start = Instant::now();
        let task = tokio::spawn(writer(&s, 10).run(body));
        tx.send(Ok(Bytes::from_static(b"data: 1\n\n"))).unwrap();
        assert_eq!(task.await.unwrap(), EndReason::Ttl);
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        assert!(tx.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_gives_the_reply_the_grace_then_interrupts() {
        let s = setup(Duration::from_secs(600)).await;
        let (tx, body) = backend();
        let start = Instant::now();
        let task = tokio::spawn(writer(&s, 10).run(body));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        s.shutdown.begin();
        let drained = s.shutdown.clone();
        let reason = task.await.unwrap();
        assert_eq!(reason, EndReason::Interrupted);
        // Seen on the next tick (2 s), then the grace less the margin (9 s).
        assert_eq!(start.elapsed(), Duration::from_secs(11));
        assert_eq!(drained.active(), 0, "the writer left the drain count");
        assert!(text(&s.reader).contains("interrupted"));
        drop(tx);
    }
}

//! `hub.persist` through the memory broker: saves on the interval, clean
//! and unclean restarts, the reservation, rewrites, compaction, sections.
//! Compiled only under `#[cfg(test)]` (see `mod tests` in the parent).

use super::*;
use crate::hub::memory::tests::msg;
use crate::hub::{cursor, Broker, BrokerError, Replay, Resume, Subscriber};

pub(super) fn settings(dir: &tempfile::TempDir) -> Persist {
    Persist {
        path: dir.path().join("hub.bin"),
        interval: Duration::from_secs(1),
    }
}

pub(super) fn open(dir: &tempfile::TempDir, reserve: u64) -> Arc<MemoryBroker> {
    let m = Arc::new(Metrics::new());
    Arc::new(
        MemoryBroker::persistent_with(10, Duration::from_secs(3600), m, &settings(dir), reserve)
            .unwrap(),
    )
}

fn datas(r: &Replay) -> Vec<String> {
    r.frames
        .iter()
        .map(|d| {
            let f = String::from_utf8_lossy(&d.frame);
            f.rsplit("data: ").next().unwrap_or("").trim().to_string()
        })
        .collect()
}

/// One event per save, `n` times: a log of many small records.
async fn publish_and_save(b: &MemoryBroker, n: usize) {
    for i in 0..n {
        b.publish(vec![msg("a", &i.to_string(), None)])
            .await
            .unwrap();
        b.save(false).await;
    }
}

fn saves(b: &MemoryBroker, kind: &str) -> u64 {
    b.metrics
        .persist_saves
        .with_label_values(&[kind, "ok"])
        .get()
}

#[tokio::test(start_paused = true)]
async fn saves_every_interval_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, RESERVE);
    let saver = tokio::spawn(b.clone().save_every());
    b.publish(vec![msg("a", "1", None)]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        saves(&b, "delta"),
        0,
        "nothing is written before the interval"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while saves(&b, "delta") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no save after the interval"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after_first = saves(&b, "delta");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        saves(&b, "delta"),
        after_first,
        "an idle hub writes nothing"
    );
    saver.abort();
    let _ = saver.await;
    let epoch = b.epoch.load(Ordering::Acquire);
    drop(b);
    // The process "died" here: no clean stop, but the save holds event 1.
    let b = open(&dir, RESERVE);
    assert_eq!(b.epoch.load(Ordering::Acquire), epoch);
    let r = b.replay(&["a".into()], &cursor::format(epoch, 0));
    assert!(r.reset.is_none());
    assert_eq!(datas(&r), ["1"]);
}

#[tokio::test]
async fn a_clean_stop_continues_exactly_and_refuses_publishes_after() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, RESERVE);
    b.publish(vec![
        msg("a", "1", Some("x")),
        msg("b", "2", None),
        msg("a", "3", None),
    ])
    .await
    .unwrap();
    b.stop().await;
    assert!(matches!(
        b.publish(vec![msg("a", "late", None)]).await,
        Err(BrokerError::Unavailable(_))
    ));
    let epoch = b.epoch.load(Ordering::Acquire);
    drop(b);
    let b = open(&dir, RESERVE);
    assert_eq!(b.stats().cursor, cursor::format(epoch, 3));
    let r = b.replay(&["a".into(), "b".into()], &cursor::format(epoch, 1));
    assert!(r.reset.is_none());
    assert_eq!(datas(&r), ["2", "3"]);
    let again = b.publish(vec![msg("a", "1", Some("x"))]).await.unwrap();
    assert_eq!((again.published, again.duplicates), (0, 1));
    let sub = Arc::new(Subscriber::new(1, 8));
    let r = b
        .subscribe(&sub, &["a".into()], &Resume::Live)
        .await
        .unwrap();
    assert_eq!(r.start, Some(cursor::format(epoch, 3)));
}

#[tokio::test]
async fn no_cursor_beyond_the_reservation_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, 8);
    let r = b
        .publish((1..=10).map(|i| msg("a", &i.to_string(), None)).collect())
        .await;
    match r {
        Err(BrokerError::Interrupted { report, .. }) => assert_eq!(report.published, 8),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        b.publish(vec![msg("a", "x", None)]).await,
        Err(BrokerError::Unavailable(_))
    ));
    b.save(false).await;
    b.publish(vec![msg("a", "9", None)]).await.unwrap();
    let epoch = b.epoch.load(Ordering::Acquire);
    drop(b);
    // Unclean: cursors up to the last reservation (9 + 8) are skipped.
    let b = open(&dir, 8);
    for lost in [10, 17] {
        let r = b.replay(&["a".into()], &cursor::format(epoch, lost));
        assert!(r.reset.is_some(), "cursor {lost} was never saved");
    }
    let r = b.replay(&["a".into()], &cursor::format(epoch, 7));
    assert!(r.reset.is_none());
    assert_eq!(datas(&r), ["8"], "event 9 was never saved");
    b.publish(vec![msg("a", "new", None)]).await.unwrap();
    assert_eq!(b.stats().cursor, cursor::format(epoch, 17));
    // The lost range itself survives the next unclean stop.
    drop(b);
    let b = open(&dir, 8);
    assert!(b
        .replay(&["a".into()], &cursor::format(epoch, 12))
        .reset
        .is_some());
    assert!(b
        .replay(&["a".into()], &cursor::format(epoch, 7))
        .reset
        .is_none());
}

#[tokio::test]
async fn after_an_overflow_the_whole_history_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, RESERVE);
    b.publish(vec![msg("a", "1", None), msg("b", "2", Some("y"))])
        .await
        .unwrap();
    if let Some(j) = b.lock().journal.as_mut() {
        j.pending.clear();
        j.overflowed = true;
    }
    b.publish(vec![msg("a", "3", None)]).await.unwrap();
    b.save(false).await;
    assert_eq!(saves(&b, "checkpoint"), 1);
    let epoch = b.epoch.load(Ordering::Acquire);
    drop(b);
    let b = open(&dir, RESERVE);
    let r = b.replay(&["a".into(), "b".into()], &cursor::format(epoch, 0));
    assert_eq!(datas(&r), ["1", "2", "3"]);
    assert_eq!(
        b.publish(vec![msg("b", "2", Some("y"))])
            .await
            .unwrap()
            .duplicates,
        1
    );
}

#[tokio::test]
async fn compaction_folds_the_log_and_keeps_gap_marks() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, RESERVE);
    locked(&b.durable.get().unwrap().store).compact_over = 1;
    publish_and_save(&b, 15).await;
    assert!(saves(&b, "checkpoint") >= 1, "the log was folded");
    b.stop().await;
    let epoch = b.epoch.load(Ordering::Acquire);
    drop(b);
    let b = open(&dir, RESERVE);
    // Size 10: events 1..5 were evicted, and a resume from there says so.
    assert!(b
        .replay(&["a".into()], &cursor::format(epoch, 2))
        .reset
        .is_some());
    let r = b.replay(&["a".into()], &cursor::format(epoch, 5));
    assert!(r.reset.is_none());
    assert_eq!(datas(&r).len(), 10);
    assert_eq!(b.stats().cursor, cursor::format(epoch, 15));
}

#[derive(Debug)]
struct Records(Mutex<Option<Bytes>>);

impl Section for Records {
    fn key(&self) -> &'static str {
        "record"
    }
    fn snapshot(&self) -> Option<Bytes> {
        locked(&self.0).take()
    }
}

#[tokio::test]
async fn sections_ride_along_and_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let b = open(&dir, RESERVE);
    assert_eq!(b.restored_section("record"), None);
    let rec = Arc::new(Records(Mutex::new(Some(Bytes::from_static(b"v1:state")))));
    assert!(b.add_section(rec.clone()));
    b.save(false).await;
    *locked(&rec.0) = Some(Bytes::from_static(b"v1:newer"));
    b.stop().await;
    drop(b);
    let b = open(&dir, RESERVE);
    assert_eq!(
        b.restored_section("record"),
        Some(Bytes::from_static(b"v1:newer"))
    );
    // And through a new generation.
    locked(&b.durable.get().unwrap().store).compact_over = 0;
    publish_and_save(&b, 5).await;
    assert!(saves(&b, "checkpoint") >= 1, "the log was folded");
    drop(b);
    let b = open(&dir, RESERVE);
    assert_eq!(
        b.restored_section("record"),
        Some(Bytes::from_static(b"v1:newer"))
    );
}

mod replies {
    use super::*;
    use crate::hub::record::memory::tests::{frame, new_record as record_on};
    use crate::hub::record::memory::MemoryRecords;
    use crate::hub::record::{EndReason, NewRecord, Records, LOST_END};

    fn new_record() -> NewRecord {
        record_on("/chat", 1 << 20)
    }

    /// A broker on `dir` with its record store.
    fn open_with_records(dir: &tempfile::TempDir) -> (Arc<MemoryBroker>, Arc<MemoryRecords>) {
        let b = open(dir, RESERVE);
        let records = Arc::new(MemoryRecords::new(b.metrics.clone()));
        b.keep_records(records.clone());
        (b, records)
    }

    async fn seqs_after(records: &MemoryRecords, rec: &NewRecord, after: u64) -> Vec<u64> {
        let sub = Arc::new(Subscriber::new(1, 64));
        let f = records
            .follow(&sub, rec.id, "/chat", after, &rec.credentials)
            .await
            .unwrap();
        assert!(f.ended);
        f.frames.iter().map(|d| d.seq).collect()
    }

    async fn write(records: &MemoryRecords, rec: &NewRecord, ns: std::ops::RangeInclusive<u64>) {
        for n in ns {
            records.append(rec, n, frame(rec, n)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn recorded_replies_cross_an_unclean_stop_a_fold_and_a_rewrite() {
        let dir = tempfile::tempdir().unwrap();
        let (b, records) = open_with_records(&dir);
        let (done, live) = (new_record(), new_record());
        for r in [&done, &live] {
            let first = Arc::new(Subscriber::new(1, 64));
            records.start(r, &first).await.unwrap();
        }
        write(&records, &done, 1..=3).await;
        records.end(&done, EndReason::Complete).await.unwrap();
        write(&records, &live, 1..=2).await;
        b.save(false).await;
        // Delivered, never saved: the process dies now.
        write(&records, &live, 3..=3).await;
        drop((b, records));

        let (b, records) = open_with_records(&dir);
        assert_eq!(seqs_after(&records, &done, 0).await, [1, 2, 3]);
        assert_eq!(seqs_after(&records, &live, 0).await, [1, 2, LOST_END]);
        // Through a fold of the files, then a whole rewrite from memory.
        locked(&b.durable.get().unwrap().store).compact_over = 0;
        publish_and_save(&b, 3).await;
        assert!(saves(&b, "checkpoint") >= 1, "the log was folded");
        drop((b, records));
        let (b, records) = open_with_records(&dir);
        assert_eq!(seqs_after(&records, &live, 1).await, [2, LOST_END]);
        let third = new_record();
        records
            .start(&third, &Arc::new(Subscriber::new(1, 64)))
            .await
            .unwrap();
        write(&records, &third, 1..=1).await;
        b.lock().journal.as_mut().unwrap().overflowed = true;
        b.stop().await;
        drop((b, records));
        let (_b, records) = open_with_records(&dir);
        assert_eq!(seqs_after(&records, &done, 1).await, [2, 3]);
        assert_eq!(seqs_after(&records, &live, 0).await, [1, 2, LOST_END]);
        assert_eq!(seqs_after(&records, &third, 0).await, [1, LOST_END]);
    }
}

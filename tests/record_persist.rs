//! Recorded backend replies with `hub.persist` (broker: memory), through the
//! real binary: a reply recorded whole resumes exactly after a SIGTERM
//! restart, with the same answers (204 after the end, 403 to others, 404
//! once expired by the saved wall-clock time); a reply cut by SIGKILL
//! resumes with what was saved, then ends with `ssegate.incomplete` under an
//! id no client can hold already; and a live upgrade carries records over
//! (complete ones whole, one still streaming as in a restart).

mod support;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::chat::Chat;
use support::replies::*;
use support::*;

/// The id of the event that ends a record whose writer was lost.
const LOST_END: u64 = u64::MAX;

fn persisted(chat: &Chat, path: &Path, extra: &str, record: &str) -> String {
    let top = format!(
        "{extra}hub:\n  persist: {{ path: \"{}\", interval: 100ms }}\n",
        path.display()
    );
    config(chat, &top, record)
}

/// A chat backend, and the config of a gateway that records its replies
/// (`record`) and keeps the hub in a file of the returned directory.
fn setup(record: &str) -> (tempfile::TempDir, Chat, String) {
    let dir = tempfile::tempdir().unwrap();
    let chat = Chat::start("");
    let conf = persisted(&chat, &dir.path().join("hub.bin"), "", record);
    (dir, chat, conf)
}

fn stop(gw: &mut Gateway) {
    gw.signal("-TERM");
    assert_eq!(gw.wait_exit(WAIT), Some(0), "log:\n{}", gw.log());
}

/// Ids `<rec>.from..=to` with the chat's data, then the lost writer's end.
fn expect_cut(rec: &str, evs: &[Ev], from: usize) -> usize {
    let (last, events) = evs.split_last().expect("at least the end");
    let to = from + events.len() - 1;
    expect_events(rec, events, from, to);
    assert_eq!(last.event, "ssegate.incomplete", "{evs:?}");
    assert_eq!(last.id, format!("{rec}.{LOST_END}"));
    assert_eq!(last.data, r#"{"reason":"interrupted"}"#);
    to
}

#[tokio::test]
async fn a_recorded_reply_resumes_exactly_after_a_sigterm_restart() {
    let (_dir, chat, conf) = setup("{ ttl: 1m }");
    let mut gw = Gateway::start(&conf);
    let mut reply = Reply::open(&client(), &gw.url("/chat"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.rest().await, 1, 50);
    stop(&mut gw);

    let gw = Gateway::start(&conf);
    assert!(
        gw.log()
            .contains("recorded replies restored restored=1 interrupted=0"),
        "{}",
        gw.log()
    );
    expect_events(&rec, &resume(&gw, &format!("{rec}.10")).await, 11, 50);
    let done = format!("{rec}.50");
    let (s, _) = status_with(
        &gw,
        "POST",
        &[("last-event-id", &done), ("authorization", ALICE)],
    )
    .await;
    assert_eq!(s, 204, "complete and delivered");
    let (s, _) = status_with(
        &gw,
        "GET",
        &[
            ("last-event-id", &done),
            ("authorization", "Bearer mallory"),
        ],
    )
    .await;
    assert_eq!(s, 403, "the credentials digest came back too");
    assert_eq!(chat.log.chat_requests(), 1, "the backend saw one request");
}

#[tokio::test]
async fn a_reply_cut_by_sigkill_resumes_what_was_saved_then_ends() {
    let (_dir, chat, conf) = setup("{ ttl: 1m }");
    let mut gw = Gateway::start(&conf);
    let mut reply = Reply::open(&client(), &gw.url("/chat"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.take(20).await, 1, 20);
    gw.signal("-KILL");
    gw.wait_exit(WAIT);
    let killed = gw.child.as_mut().unwrap().try_wait().unwrap();
    assert!(killed.is_some_and(|s| !s.success()), "{killed:?}");
    drop(reply);

    let gw = Gateway::start(&conf);
    assert!(
        gw.log().contains("the last stop was not clean"),
        "{}",
        gw.log()
    );
    // Saved every 100 ms while events came every 100 ms: most of the 20.
    let saved = expect_cut(&rec, &resume(&gw, &format!("{rec}.10")).await, 11);
    assert!((15..50).contains(&saved), "{saved} events saved");
    // A client that got more than was saved gets the end, not a number it
    // may hold with other content.
    let evs = resume(&gw, &format!("{rec}.{}", saved + 3)).await;
    assert_eq!(evs.len(), 1, "{evs:?}");
    expect_cut(&rec, &evs, saved + 4);
    let end = format!("{rec}.{LOST_END}");
    let (s, _) = status_with(
        &gw,
        "GET",
        &[("last-event-id", &end), ("authorization", ALICE)],
    )
    .await;
    assert_eq!(s, 204, "the client has the end");
    assert_eq!(chat.log.chat_requests(), 1, "never asked again");
}

#[tokio::test]
async fn a_record_expires_after_a_restart_at_its_saved_time() {
    let (_dir, _chat, conf) = setup("{ ttl: 2s }");
    let mut gw = Gateway::start(&conf);
    let made = std::time::Instant::now();
    let mut reply = Reply::open(&client(), &gw.url("/chat?n=3&ms=10"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.rest().await, 1, 3);
    stop(&mut gw);
    let mut gw = Gateway::start(&conf);
    expect_events(&rec, &resume(&gw, &format!("{rec}.1")).await, 2, 3);
    stop(&mut gw);
    // Its ttl runs out while no gateway runs.
    let expired = made + Duration::from_millis(2_200);
    tokio::time::sleep(expired.saturating_duration_since(std::time::Instant::now())).await;
    let gw = Gateway::start(&conf);
    let (s, body) = status_with(
        &gw,
        "GET",
        &[
            ("last-event-id", &format!("{rec}.1")),
            ("authorization", ALICE),
        ],
    )
    .await;
    assert_eq!((s, body.as_str()), (404, "unknown or expired record\n"));
}

/// A live upgrade with or without `hub.persist`: the records move over the
/// upgrade socket (and, with it, are in the files too).
async fn an_upgrade_carries_records_over(persist: bool) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let chat = Chat::start("");
    let sock = format!(
        "upgrade_socket: \"{}\"\nshutdown_grace: 2s\n",
        dir.path().join("up.sock").display()
    );
    let conf = match persist {
        true => persisted(&chat, &path, &sock, "{ ttl: 1m }"),
        false => config(&chat, &sock, "{ ttl: 1m }"),
    };
    let old = Gateway::start(&conf);
    let mut done = Reply::open(&client(), &old.url("/chat?n=5&ms=10"), ALICE).await;
    let evs = done.rest().await;
    expect_events(&done.record, &evs, 1, 5);
    // Still streaming (200 events over 20 s) when the upgrade comes.
    let mut live = Reply::open(&client(), &old.url("/chat?n=200&ms=100"), ALICE).await;
    let evs = live.take(10).await;
    expect_events(&live.record, &evs, 1, 10);
    let mut old = old;
    let new = old.take_over(&[]);
    assert!(
        new.log()
            .contains("upgrade: recorded replies taken over restored=2 interrupted=1"),
        "new log:\n{}",
        new.log()
    );
    let rec = &done.record;
    expect_events(rec, &resume(&new, &format!("{rec}.2")).await, 3, 5);
    let rec = &live.record;
    let moved = expect_cut(rec, &resume(&new, &format!("{rec}.10")).await, 11);
    assert!((10..200).contains(&moved), "{moved}");
    // The old process cut the backend at the handoff rather than read it
    // through its drain (a second, 10 events, at 100 ms each).
    let cut = tokio::time::timeout(WAIT, async {
        while chat.log.cut.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(cut.await.is_ok(), "the backend was never cut");
    let written = chat.log.written.load(Ordering::SeqCst);
    assert!(written <= 5 + moved + 5, "{written} written, {moved} moved");
    assert_eq!(chat.log.chat_requests(), 2, "one request per reply");
    if persist {
        // Saved at the old process's stop, taken over already.
        assert!(
            new.log()
                .contains("recorded replies restored restored=0 interrupted=0 skipped=2"),
            "new log:\n{}",
            new.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_upgrade_carries_records_over() {
    an_upgrade_carries_records_over(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_upgrade_with_hub_persist_carries_records_over() {
    an_upgrade_carries_records_over(true).await;
}

//! `hub.persist` through the real binary: history, cursors and dedupe ids
//! cross a SIGTERM restart exactly; after a SIGKILL no id is given twice and
//! a cursor past the save gets `ssegate.reset`; damaged or missing files are
//! a warning and a fresh start; one file, one process.

mod support;

use rand::{RngCore, SeedableRng};
use serde_json::json;
use std::path::Path;
use std::time::Duration;
use support::*;

fn conf(path: &Path, interval: &str) -> String {
    format!(
        "hub:
  history: {{ size: 100, ttl: 1h }}
  persist: {{ path: \"{}\", interval: {interval} }}
sse:
  heartbeat: 300ms
  retry: 1s
routes:
  - path: /events/{{room}}
    sse:
      channels: [\"room:{{room}}\"]
",
        path.display()
    )
}

/// `conf` with an upgrade socket in `dir`, for `run --upgrade`.
fn upgradable(dir: &Path, path: &Path) -> String {
    format!(
        "upgrade_socket: \"{}\"\n{}",
        dir.join("up.sock").display(),
        conf(path, "1h")
    )
}

fn seq_of(id: &str) -> u64 {
    id.split_once('-')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("{id:?} is not a cursor"))
}

fn stop(gw: &mut Gateway) {
    gw.signal("-TERM");
    assert_eq!(gw.wait_exit(WAIT), Some(0), "log:\n{}", gw.log());
}

fn kill(gw: &mut Gateway) {
    gw.signal("-KILL");
    let child = gw.child.as_mut().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running after SIGKILL"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success(), "{status}");
}

async fn resume(gw: &Gateway, room: &str, last: &str) -> Sse {
    Sse::connect_with(
        &gw.url(&format!("/events/{room}")),
        &[("last-event-id", last)],
    )
    .await
}

/// Publish `datas` to `room` and return their ids, as a live client saw them.
async fn publish_seen(gw: &Gateway, room: &str, datas: &[serde_json::Value]) -> Vec<String> {
    let mut s = Sse::connect(&gw.url(&format!("/events/{room}"))).await;
    for d in datas {
        gw.publish_ok(&format!("room:{room}"), d.clone()).await;
    }
    let got = s.take(datas.len()).await;
    let seen: Vec<serde_json::Value> = got
        .iter()
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(&seen, datas);
    got.into_iter().map(|e| e.id).collect()
}

#[tokio::test]
async fn a_sigterm_restart_keeps_history_cursor_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    // An interval longer than the test: everything must come from the save
    // at stop.
    let mut gw = Gateway::start(&conf(&path, "1h"));
    let datas: Vec<_> = (1..=6).map(|i| json!(i)).collect();
    let mut ids = publish_seen(&gw, "a", &datas).await;
    let (s, v) = gw
        .publish(json!({"channel": "room:a", "data": "once", "id": "evt-1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    let mut tail = Sse::connect_with(&gw.url("/events/a"), &[("last-event-id", &ids[5])]).await;
    ids.push(tail.next().await.id);
    drop(tail);
    stop(&mut gw);
    assert!(
        gw.log().contains("hub.persist: saved at stop"),
        "{}",
        gw.log()
    );

    let gw2 = Gateway::start(&conf(&path, "1h"));
    assert_eq!(
        gw2.metric("ssegate_persist_starts_total{state=\"clean\"}")
            .await,
        1.0
    );
    // Exactly what was missed after event 3, same ids, no reset.
    let mut again = resume(&gw2, "a", &ids[2]).await;
    let got = again.take(4).await;
    let datas: Vec<&str> = got.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(datas, ["4", "5", "6", "once"]);
    let got_ids: Vec<&str> = got.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(
        got_ids,
        ids[3..7].iter().map(String::as_str).collect::<Vec<_>>()
    );
    // The dedupe id is remembered across the restart.
    let (s, v) = gw2
        .publish(json!({"channel": "room:a", "data": "once", "id": "evt-1"}))
        .await;
    assert_eq!((s, &v["duplicates"]), (200, &json!(1)), "{v}");
    // The cursor continues: the next event is the one after the last.
    gw2.publish_ok("room:a", json!("after")).await;
    let next = again.next().await;
    assert_eq!(next.data, "after");
    let (epoch, _) = ids[6].split_once('-').unwrap();
    assert_eq!(next.id, format!("{epoch}-{}", seq_of(&ids[6]) + 1));
    // An up-to-date client is simply live.
    let mut live = resume(&gw2, "a", &next.id).await;
    gw2.publish_ok("room:a", json!("live")).await;
    assert_eq!(live.next().await.data, "live");
}

#[tokio::test]
async fn after_sigkill_no_id_is_reused_and_cursors_past_the_save_reset() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let mut gw = Gateway::start(&conf(&path, "2s"));
    let saved = publish_seen(&gw, "k", &[json!(1), json!(2), json!(3)]).await;
    let on_disk = seq_of(&saved[2]) as f64;
    let deadline = std::time::Instant::now() + WAIT;
    while gw.metric("ssegate_persist_saved_cursor").await < on_disk {
        assert!(
            std::time::Instant::now() < deadline,
            "events 1..3 not saved within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Right after a save: the next one is two seconds away.
    let unsaved = publish_seen(&gw, "k", &[json!(4), json!(5)]).await;
    kill(&mut gw);

    let gw2 = Gateway::start(&conf(&path, "2s"));
    assert!(
        gw2.log().contains("the last stop was not clean"),
        "{}",
        gw2.log()
    );
    assert_eq!(
        gw2.metric("ssegate_persist_starts_total{state=\"unclean\"}")
            .await,
        1.0
    );
    // Cursors of events that never reached the disk cannot be resumed from.
    for id in &unsaved {
        let mut s = resume(&gw2, "k", id).await;
        assert_eq!(s.next().await.event, "ssegate.reset", "resume from {id}");
    }
    // Saved cursors resume without a reset.
    let mut from2 = resume(&gw2, "k", &saved[1]).await;
    let mut from3 = resume(&gw2, "k", &saved[2]).await;
    let three = from2.next().await;
    assert_eq!(
        (three.data.as_str(), three.id.as_str()),
        ("3", saved[2].as_str())
    );
    gw2.publish_ok("room:k", json!("six")).await;
    let six = from3.next().await;
    assert_eq!(six.data, "six", "nothing replayed after 3, no reset");
    assert_eq!(from2.next().await, six);
    // A new event never gets an id an event before the crash had.
    assert!(
        !saved.contains(&six.id) && !unsaved.contains(&six.id),
        "{six:?}"
    );
    assert!(
        seq_of(&six.id) > seq_of(&unsaved[1]) + (1 << 23),
        "{six:?} vs {unsaved:?}"
    );
    assert_eq!(
        six.id.split_once('-').unwrap().0,
        saved[0].split_once('-').unwrap().0,
        "same epoch"
    );
}

/// Run a gateway on `path`, publish three events and stop it cleanly; the
/// id of the last one.
async fn history_on_disk(path: &Path) -> String {
    let mut gw = Gateway::start(&conf(path, "1h"));
    let ids = publish_seen(&gw, "d", &[json!(1), json!(2), json!(3)]).await;
    stop(&mut gw);
    ids[2].clone()
}

/// A gateway on damaged files starts, warns, and serves with a new epoch.
async fn starts_fresh(path: &Path, old: &str, what: &str) {
    let mut gw = Gateway::start(&conf(path, "1h"));
    let log = gw.log();
    assert!(
        log.lines().any(
            |l| l.contains("WARN") && l.contains("starting with empty history and a new epoch")
        ),
        "{what}: a warning in the log: {log}"
    );
    assert_eq!(
        gw.metric("ssegate_persist_starts_total{state=\"corrupt\"}")
            .await,
        1.0,
        "{what}"
    );
    let mut s = resume(&gw, "d", old).await;
    assert_eq!(s.next().await.event, "ssegate.reset", "{what}");
    gw.publish_ok("room:d", json!("new")).await;
    assert_eq!(s.next().await.data, "new", "{what}");
    let kept = [".corrupt", ".log.corrupt"]
        .map(|ext| Path::new(&format!("{}{ext}", path.display())).exists());
    assert!(kept.contains(&true), "{what}: the bad files are kept");
    // And it stops as cleanly as any other start.
    stop(&mut gw);
}

#[tokio::test]
async fn a_truncated_or_random_checkpoint_is_a_warning_and_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let old = history_on_disk(&path).await;
    let whole = std::fs::read(&path).unwrap();
    std::fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    starts_fresh(&path, &old, "truncated checkpoint").await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let old = history_on_disk(&path).await;
    let seed: u64 = rand::random();
    eprintln!("random checkpoint: seed {seed}");
    let mut junk = vec![0u8; 64 << 10];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut junk);
    std::fs::write(&path, &junk).unwrap();
    starts_fresh(&path, &old, "random checkpoint").await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let old = history_on_disk(&path).await;
    std::fs::write(format!("{}.log", path.display()), &junk).unwrap();
    starts_fresh(&path, &old, "random log").await;
}

#[tokio::test]
async fn a_log_cut_short_keeps_what_was_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let ids = {
        let mut gw = Gateway::start(&conf(&path, "1h"));
        let ids = publish_seen(&gw, "c", &[json!(1), json!(2)]).await;
        // Wait for nothing: the second batch is written with the stop's save.
        stop(&mut gw);
        let mut gw = Gateway::start(&conf(&path, "1h"));
        let more = publish_seen(&gw, "c", &[json!(3)]).await;
        stop(&mut gw);
        [ids, more].concat()
    };
    // Cut into the last save (event 3 and the clean mark): as if the power
    // went out while it was written.
    let log = format!("{}.log", path.display());
    let len = std::fs::metadata(&log).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(len - 20)
        .unwrap();
    let gw = Gateway::start(&conf(&path, "1h"));
    let text = gw.log();
    assert!(text.contains("dropped the last save"), "{text}");
    assert!(text.contains("the last stop was not clean"), "{text}");
    // Events 1 and 2 survived; event 3 did not, and its id is not given again.
    let mut s = resume(&gw, "c", &ids[0]).await;
    assert_eq!(s.next().await.data, "2");
    let mut past = resume(&gw, "c", &ids[2]).await;
    assert_eq!(past.next().await.event, "ssegate.reset");
    gw.publish_ok("room:c", json!("new")).await;
    let new = s.next().await;
    assert_eq!(new.data, "new");
    assert!(seq_of(&new.id) > seq_of(&ids[2]), "{new:?} after {ids:?}");
}

#[tokio::test]
async fn missing_files_are_a_fresh_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let old = history_on_disk(&path).await;
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(format!("{}.log", path.display())).unwrap();
    let gw = Gateway::start(&conf(&path, "1h"));
    assert!(gw.log().contains("nothing saved yet"), "{}", gw.log());
    let mut s = resume(&gw, "d", &old).await;
    assert_eq!(s.next().await.event, "ssegate.reset");
    // Only the checkpoint gone (its log still there) is damage, not a start.
    let mut gw = gw;
    stop(&mut gw);
    std::fs::remove_file(&path).unwrap();
    starts_fresh(&path, &old, "checkpoint without its log").await;
}

#[tokio::test]
async fn two_processes_never_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let _first = Gateway::start(&conf(&path, "1s"));
    let cfg = dir.path().join("second.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: 127.0.0.1:{}\nadmin:\n  listen: 127.0.0.1:{}\n{}",
            free_port(),
            free_port(),
            conf(&path, "1s")
        ),
    )
    .unwrap();
    let mut second = std::process::Command::new(bin())
        .args(["run", "-c"])
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second process did not give up");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(second.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "{err}");
    assert!(err.contains("in use by another ssegate process"), "{err}");
}

/// A live upgrade with `hub.persist`: the old process saves and lets go of
/// the files before it hands its hub over, the new one continues them
/// (it does not load them over the state it was handed), and a SIGTERM
/// restart after that resumes exactly, with the cursor going on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_then_a_sigterm_restart_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let config = upgradable(dir.path(), &path);
    let mut old = Gateway::start(&config);
    // A client that moves with the upgrade, having seen every event.
    let mut moved = Sse::connect(&old.url("/events/u")).await;
    for i in 1..=3 {
        old.publish_ok("room:u", json!(i)).await;
    }
    let before: Vec<String> = moved.take(3).await.into_iter().map(|e| e.id).collect();
    let new = old.take_over(&[]);
    let (old_log, new_log) = (old.log(), new.log());
    assert!(
        old_log.contains("hub.persist: saved at stop"),
        "old log:\n{old_log}"
    );
    assert!(
        new_log.contains("streams adopted") && new_log.contains("took the files over"),
        "new log:\n{new_log}"
    );
    assert!(
        !new_log.contains("history loaded") && !new_log.contains("rewritten=true"),
        "the files matched the handed-over hub; new log:\n{new_log}"
    );
    let mut new = new;
    new.publish_ok("room:u", json!(4)).await;
    new.publish_ok("room:u", json!(5)).await;
    let after = moved.take(2).await;
    assert_eq!(
        after.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["4", "5"],
        "the moved client goes on"
    );
    let (epoch, _) = before[2].split_once('-').unwrap();
    assert_eq!(after[0].id, format!("{epoch}-{}", seq_of(&before[2]) + 1));
    stop(&mut new);

    let gw = Gateway::start(&config);
    assert_eq!(
        gw.metric("ssegate_persist_starts_total{state=\"clean\"}")
            .await,
        1.0,
        "{}",
        gw.log()
    );
    // From before the upgrade: everything since, the same ids, no reset.
    let mut from1 = resume(&gw, "u", &before[0]).await;
    let got = from1.take(4).await;
    let want: Vec<&str> = before[1..]
        .iter()
        .chain(after.iter().map(|e| &e.id))
        .map(String::as_str)
        .collect();
    assert_eq!(got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), want);
    assert_eq!(
        got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["2", "3", "4", "5"]
    );
    // From the newest: nothing replayed, and the next id is the next one.
    let mut newest = resume(&gw, "u", &after[1].id).await;
    gw.publish_ok("room:u", json!(6)).await;
    let six = newest.next().await;
    assert_eq!(six.data, "6", "no reset, no duplicate");
    assert_eq!(six.id, format!("{epoch}-{}", seq_of(&after[1].id) + 1));
    assert_eq!(from1.next().await, six);
}

/// A handoff the new process refuses (another protocol version): the old
/// process drains, saves at its stop and lets go of the files; the new one
/// waits for that and loads them, so clients resume exactly anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handoff_starts_the_new_process_from_what_the_old_one_saved() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hub.bin");
    let config = upgradable(dir.path(), &path);
    let mut old = Gateway::start(&config);
    let before = publish_seen(&old, "r", &[json!(1), json!(2), json!(3)]).await;
    let new = old.take_over(&[("SSEGATE_TEST_HANDOFF_VERSION", "9")]);
    assert!(
        old.log().contains("hub.persist: saved at stop"),
        "{}",
        old.log()
    );
    let mut from1 = resume(&new, "r", &before[0]).await;
    let got = from1.take(2).await;
    assert_eq!(
        got.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        [before[1].as_str(), before[2].as_str()]
    );
    let log = new.log();
    assert!(
        log.contains("streams not adopted") && log.contains("history loaded"),
        "{log}"
    );
    assert_eq!(
        new.metric("ssegate_persist_starts_total{state=\"clean\"}")
            .await,
        1.0
    );
    new.publish_ok("room:r", json!(4)).await;
    let four = from1.next().await;
    assert_eq!(four.data, "4");
    assert_eq!(seq_of(&four.id), seq_of(&before[2]) + 1);
}

/// `hub.persist` is read at start only: a change on SIGHUP is logged as
/// needing a restart, and the running files stay in use.
#[tokio::test]
async fn a_changed_hub_persist_on_sighup_needs_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (path, other) = (dir.path().join("hub.bin"), dir.path().join("other.bin"));
    let mut gw = Gateway::start(&conf(&path, "1h"));
    assert!(gw.reload(&conf(&other, "2s")).await, "{}", gw.log());
    assert!(gw.log().contains("`hub` changed"), "{}", gw.log());
    let ids = publish_seen(&gw, "h", &[json!(1)]).await;
    stop(&mut gw);
    assert!(!other.exists(), "the new path is not used before a restart");
    let gw = Gateway::start(&conf(&path, "1h"));
    let mut s = resume(&gw, "h", &ids[0]).await;
    gw.publish_ok("room:h", json!(2)).await;
    assert_eq!(
        s.next().await.data,
        "2",
        "saved on the running path, no reset"
    );
}

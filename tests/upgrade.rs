//! Live upgrade (issue 12, SPEC §6) through the real binary: `ssegate run
//! --upgrade` takes the listeners and the open plain HTTP/1.1 streams over
//! from the running gateway, which exits 0. The clients are
//! eventsource-stream over reqwest: a dropped connection ends their stream,
//! so "still streaming" means "never reconnected".

mod support;

use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::*;

const ROOMS: u64 = 10;

fn config(hub: &str) -> String {
    format!(
        "upgrade_socket: up.sock
sse: {{ heartbeat: 1s, retry: 1s }}
{hub}routes:
  - path: /events/{{room}}
    sse: {{ channels: [\"room:{{room}}\"] }}
"
    )
}

/// Publishes event n to room n % ROOMS, with dedupe id `e<n>`, every 10 ms
/// until stopped; a refused or failed publish (the old process sealed, a
/// connection closed under it) is sent again with the same id, so each n is
/// published exactly once whoever answers.
struct Publisher {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(admin: String) -> Publisher {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let (s, c) = (stop.clone(), count.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut n = 0u64;
            let mut failures = 0;
            while !s.load(Ordering::Acquire) {
                tick.tick().await;
                let body = json!({"channel": format!("room:{}", n % ROOMS), "id": format!("e{n}"), "data": n});
                match http
                    .post(format!("{admin}/publish"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        n += 1;
                        c.store(n, Ordering::Release);
                        failures = 0;
                    }
                    _ => {
                        failures += 1;
                        assert!(failures < 1500, "publishing failed for 15s");
                    }
                }
            }
        });
        Publisher { stop, count, task }
    }

    /// Once 50 more events went through (the new process, after an
    /// upgrade), stop; how many were published in all.
    async fn stop_after_50_more(self) -> u64 {
        let at = self.count.load(Ordering::Acquire);
        eventually(WAIT, "50 more events", || {
            (self.count.load(Ordering::Acquire) > at + 50).then_some(())
        })
        .await;
        self.stop().await
    }

    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Release);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("publisher stops")
            .expect("publisher did not panic");
        self.count.load(Ordering::Acquire)
    }
}

/// `/readyz` answers 200 (the Redis broker has connected).
async fn wait_ready(gw: &Gateway) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = client().get(gw.admin("/readyz")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What one client saw: the data of every event, and how its stream ended.
#[derive(Default)]
struct Seen {
    data: Vec<u64>,
    ended: Option<String>,
}

/// `n` clients on rooms 0..ROOMS, each collecting in its own task.
async fn subscribe(gw: &Gateway, n: usize) -> Vec<(u64, Arc<Mutex<Seen>>)> {
    let mut out = Vec::with_capacity(n);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    for i in 0..n as u64 {
        let room = i % ROOMS;
        let mut sse = Sse::connect_using(&http, &gw.url(&format!("/events/{room}")), &[]).await;
        assert_eq!(sse.status, 200);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mine = seen.clone();
        tokio::spawn(async move {
            loop {
                match sse.next_within(Duration::from_secs(60)).await {
                    Ok(ev) => mine.lock().unwrap().data.push(ev.data.parse().unwrap()),
                    Err(e) => {
                        mine.lock().unwrap().ended = Some(e);
                        return;
                    }
                }
            }
        });
        out.push((room, seen));
    }
    out
}

/// Every client got exactly the events of its room, in order, and is still connected.
async fn check_exactly_once(clients: &[(u64, Arc<Mutex<Seen>>)], published: u64) {
    let expected: BTreeMap<u64, Vec<u64>> = (0..ROOMS)
        .map(|r| (r, (0..published).filter(|n| n % ROOMS == r).collect()))
        .collect();
    eventually(
        Duration::from_secs(30),
        "every client has every event",
        || {
            clients
                .iter()
                .all(|(room, s)| {
                    let s = s.lock().unwrap();
                    s.ended.is_some() || s.data.len() >= expected[room].len()
                })
                .then_some(())
        },
    )
    .await;
    let mut problems = Vec::new();
    for (i, (room, seen)) in clients.iter().enumerate() {
        let s = seen.lock().unwrap();
        if let Some(why) = &s.ended {
            problems.push(format!("client {i}: stream ended ({why})"));
        }
        if s.data != expected[room] {
            let want = &expected[room];
            let first_diff = s.data.iter().zip(want).position(|(a, b)| a != b);
            problems.push(format!(
                "client {i} (room {room}): {} events, want {}; first difference at {first_diff:?}",
                s.data.len(),
                want.len()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{} of {} clients: {}",
        problems.len(),
        clients.len(),
        problems[..problems.len().min(10)].join("; ")
    );
}

async fn upgrade_keeps_every_stream(hub: &str, streams: usize) {
    let old = Gateway::start(&config(hub));
    wait_ready(&old).await;
    let clients = subscribe(&old, streams).await;
    let publisher = Publisher::start(old.admin(""));
    // Some events through the old process first.
    eventually(WAIT, "first events", || {
        (publisher.count.load(Ordering::Acquire) > 50).then_some(())
    })
    .await;
    let mut old = old;
    let new = old.take_over(&[]);
    assert!(
        new.log().contains("streams adopted"),
        "new log:\n{}\nold log:\n{}",
        new.log(),
        old.log()
    );
    // And events through the new one after.
    let published = publisher.stop_after_50_more().await;
    check_exactly_once(&clients, published).await;
    assert_eq!(
        new.metric("ssegate_streams_adopted_total").await,
        streams as f64
    );
    assert_eq!(new.metric("ssegate_connections{").await, streams as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_1000_plain_streams_over_with_every_event_once_memory_broker() {
    upgrade_keeps_every_stream("", 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_hands_plain_streams_over_with_every_event_once_redis_broker() {
    let redis = Redis::start();
    let hub = format!(
        "hub:\n  broker: redis\n  redis: {{ url: \"{}\", prefix: up }}\n",
        redis.url()
    );
    upgrade_keeps_every_stream(&hub, 200).await;
}

/// A client that reconnects as EventSource does: after its stream ends it
/// comes back with `Last-Event-ID`. What it saw, and how often it came back.
#[derive(Default)]
struct Resuming {
    data: Vec<u64>,
    resets: usize,
    reconnects: usize,
    /// Attempts that found no listener or were refused (while the old process stopped).
    failed_connects: usize,
}

/// A resuming client: what it saw, and its task.
type Resumer = (Arc<Mutex<Resuming>>, tokio::task::JoinHandle<()>);

/// Each resuming client got every event of its room once, in order, with
/// no reset (from history or Redis); `also` checks how it got there. Then
/// the clients stop.
async fn every_event_once_after_resuming(
    clients: Vec<(u64, Resumer)>,
    published: u64,
    stop: &AtomicBool,
    also: impl Fn(u64, &Resuming),
) {
    for (room, (seen, _)) in &clients {
        let want: Vec<u64> = (0..published).filter(|n| n % ROOMS == *room).collect();
        eventually(WAIT, "every event after resuming", || {
            (seen.lock().unwrap().data.len() >= want.len()).then_some(())
        })
        .await;
        let s = seen.lock().unwrap();
        assert_eq!(
            s.data, want,
            "room {room}: every event once, in order ({} failed reconnects)",
            s.failed_connects
        );
        assert_eq!(s.resets, 0, "room {room}: resumed, no reset");
        also(*room, &s);
    }
    stop.store(true, Ordering::Release);
    for (_, (_, task)) in clients {
        let _ = tokio::time::timeout(WAIT, task).await;
    }
}

fn resume_forever(
    http: reqwest::Client,
    url: String,
    first: Sse,
    stop: Arc<AtomicBool>,
) -> Resumer {
    let seen = Arc::new(Mutex::new(Resuming::default()));
    let mine = seen.clone();
    let task = tokio::spawn(async move {
        let mut sse = first;
        let mut last_id = String::new();
        while !stop.load(Ordering::Acquire) {
            match sse.next_within(Duration::from_millis(200)).await {
                Ok(ev) if ev.event == "ssegate.reset" => mine.lock().unwrap().resets += 1,
                Ok(ev) => {
                    last_id = ev.id.clone();
                    mine.lock().unwrap().data.push(ev.data.parse().unwrap());
                }
                Err(e) if e == "timeout" => {}
                Err(_) => {
                    // The retry: the gateway sent is ≥ 1 s; the test need not wait it out.
                    mine.lock().unwrap().reconnects += 1;
                    let headers: &[(&str, &str)] = if last_id.is_empty() {
                        &[]
                    } else {
                        &[("last-event-id", &last_id)]
                    };
                    loop {
                        match Sse::try_connect_using(&http, &url, headers).await {
                            Ok(s) if s.status == 200 => {
                                sse = s;
                                break;
                            }
                            _ => mine.lock().unwrap().failed_connects += 1,
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_http2_clients_reconnect_across_an_upgrade_and_resume_without_gap() {
    let ca = support::tls::TestCa::new("upgrade");
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = ca.issue(certs.path(), "server");
    let tls = format!(
        "tls: {{ cert: \"{}\", key: \"{}\" }}\nhub: {{ history: {{ size: 10000, ttl: 1h }} }}\n",
        cert.display(),
        key.display()
    );
    let old = Gateway::start(&config(&tls));
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for (i, http1_only) in [(0u64, true), (1, false), (2, true), (3, false)] {
        let http = ca.reqwest_streaming(http1_only);
        let url = format!("https://127.0.0.1:{}/events/{i}", old.port);
        let first = Sse::connect_using(&http, &url, &[]).await;
        assert_eq!(first.status, 200);
        let want = if http1_only {
            reqwest::Version::HTTP_11
        } else {
            reqwest::Version::HTTP_2
        };
        assert_eq!(first.version, want);
        clients.push((i, resume_forever(http, url, first, stop.clone())));
    }
    let publisher = Publisher::start(old.admin(""));
    eventually(WAIT, "first events", || {
        (publisher.count.load(Ordering::Acquire) > 50).then_some(())
    })
    .await;
    let mut old = old;
    let new = old.take_over(&[]);
    let published = publisher.stop_after_50_more().await;
    every_event_once_after_resuming(clients, published, &stop, |room, s| {
        assert!(
            s.reconnects >= 1,
            "room {room}: TLS streams drain and come back"
        );
    })
    .await;
    assert_eq!(new.metric("ssegate_streams_adopted_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_process_that_cannot_parse_the_handoff_refuses_it_and_streams_drain_and_resume() {
    let redis = Redis::start();
    let hub = format!(
        "hub:\n  broker: redis\n  redis: {{ url: \"{}\", prefix: refuse }}\n",
        redis.url()
    );
    let old = Gateway::start(&config(&hub));
    wait_ready(&old).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..ROOMS {
        let http = reqwest::Client::new();
        let url = old.url(&format!("/events/{i}"));
        let first = Sse::connect_using(&http, &url, &[]).await;
        clients.push((i, resume_forever(http, url, first, stop.clone())));
    }
    let publisher = Publisher::start(old.admin(""));
    eventually(WAIT, "first events", || {
        (publisher.count.load(Ordering::Acquire) > 50).then_some(())
    })
    .await;
    let mut old = old;
    // A binary that speaks only a later protocol version.
    let new = old.take_over(&[("SSEGATE_TEST_HANDOFF_VERSION", "9")]);
    assert!(
        old.log().contains("no common handoff protocol version"),
        "old log:\n{}",
        old.log()
    );
    let published = publisher.stop_after_50_more().await;
    every_event_once_after_resuming(clients, published, &stop, |room, s| {
        assert_eq!(
            s.reconnects, 1,
            "room {room}: drained once, not handed over"
        );
    })
    .await;
    assert_eq!(new.metric("ssegate_streams_adopted_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stopped_in_the_middle_of_a_write_goes_on_in_the_new_process_byte_exact() {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let old = Gateway::start(&config("sse: { client_queue: 1000 }\n").replace(
        "sse: { heartbeat: 1s, retry: 1s }\nsse: { client_queue: 1000 }\n",
        "sse: { heartbeat: 1s, retry: 1s, client_queue: 1000 }\n",
    ));
    // A client that does not read: the gateway's write stops part way
    // through an event once the socket buffers are full.
    let resp = reqwest::Client::new()
        .get(old.url("/events/big"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let filler = "x".repeat(200_000);
    const EVENTS: u64 = 60;
    for n in 0..EVENTS {
        let (status, body) = old
            .publish(json!({"channel": "room:big", "data": format!("{n} {filler}")}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let mut old = old;
    let new = old.take_over(&[]);
    assert!(
        old.log().contains("mid_chunk=1"),
        "the write was cut part way; old log:\n{}",
        old.log()
    );
    for n in EVENTS..EVENTS + 3 {
        let (status, _) = new
            .publish(json!({"channel": "room:big", "data": format!("{n} {filler}")}))
            .await;
        assert_eq!(status, 200);
    }
    // hyper decodes the chunked body strictly and eventsource-stream the
    // events: a byte lost or repeated at the cut breaks one or the other.
    let mut events = resp.bytes_stream().eventsource();
    for n in 0..EVENTS + 3 {
        let ev = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("event in time")
            .expect("stream goes on")
            .expect("well-formed event");
        assert_eq!(ev.data, format!("{n} {filler}"), "event {n}");
    }
}

/// Streams that have written no event yet (a fresh live client, a resume
/// with nothing missed) move with the cursor they started from: after the
/// upgrade they get the next event, not the channel's history again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_have_written_no_event_yet_move_without_replaying_history() {
    let old = Gateway::start(&config(""));
    let mut first = Sse::connect(&old.url("/events/quiet")).await;
    for n in 1..=3 {
        old.publish_ok("room:quiet", json!(n)).await;
    }
    let mut last_id = String::new();
    for n in 1..=3 {
        let ev = first.next().await;
        assert_eq!(ev.data, n.to_string());
        last_id = ev.id;
    }
    let mut live = Sse::connect(&old.url("/events/quiet")).await;
    let mut resumed =
        Sse::connect_with(&old.url("/events/quiet"), &[("Last-Event-ID", &last_id)]).await;
    assert_eq!((live.status, resumed.status), (200, 200));
    let mut old = old;
    let new = old.take_over(&[]);
    assert_eq!(new.metric("ssegate_streams_adopted_total").await, 3.0);
    new.publish_ok("room:quiet", json!(4)).await;
    for (name, sse) in [
        ("first", &mut first),
        ("live", &mut live),
        ("resumed", &mut resumed),
    ] {
        let ev = sse
            .next_within(WAIT)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(ev.data, "4", "{name} got history again after the upgrade");
    }
}

/// Stops a process by pid when dropped (one this test did not spawn itself).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &self.0.to_string()])
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_starts_the_successor_itself_and_tells_systemd_who_the_main_process_is() {
    use std::os::unix::net::UnixDatagram;
    let notify_dir = tempfile::tempdir().unwrap();
    let notify_path = notify_dir.path().join("notify");
    let systemd = UnixDatagram::bind(&notify_path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let recv = |what: &str| {
        let mut buf = [0u8; 256];
        let n = systemd
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no {what} from the gateway: {e}"));
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let notify = notify_path.to_str().unwrap();
    let mut old = Gateway::start_with_env(&config(""), &[("NOTIFY_SOCKET", notify)]);
    assert_eq!(recv("READY=1"), "READY=1");
    let clients = subscribe(&old, 20).await;
    let publisher = Publisher::start(old.admin(""));
    eventually(WAIT, "first events", || {
        (publisher.count.load(Ordering::Acquire) > 20).then_some(())
    })
    .await;
    // What `systemctl kill -s USR2 ssegate` does.
    old.signal("-USR2");
    let mainpid = recv("MAINPID");
    let new_pid: u32 = mainpid
        .strip_prefix("MAINPID=")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{mainpid:?}"));
    let _new = KillOnDrop(new_pid);
    assert_ne!(new_pid, old.pid());
    assert_eq!(recv("READY=1 of the new process"), "READY=1");
    assert_eq!(
        old.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        old.log()
    );
    let at_exit = publisher.count.load(Ordering::Acquire);
    eventually(WAIT, "events after the upgrade", || {
        (publisher.count.load(Ordering::Acquire) > at_exit + 20).then_some(())
    })
    .await;
    let published = publisher.stop().await;
    check_exactly_once(&clients, published).await;
    // The new process wrote the pid file and answers on the same ports.
    let pid_file = old.dir.path().join("up.sock.pid");
    assert_eq!(
        std::fs::read_to_string(pid_file).unwrap().trim(),
        new_pid.to_string()
    );
    let adopted = client()
        .get(old.admin("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        adopted.contains("ssegate_streams_adopted_total 20"),
        "{}",
        old.log()
    );
}

//! `ssegate demo`: gateway + built-in legacy app + live page, on free ports.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use support::*;

struct Demo(std::process::Child);

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ssegate demo` on free ports: the process and its page URL, once it listens.
async fn start_demo() -> (Demo, String) {
    let mut child = Command::new(bin())
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let demo = Demo(child);
    let lines = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(out).lines();
        let first: Vec<String> = reader.by_ref().take(3).map(|l| l.unwrap()).collect();
        // Keep draining, so the demo's stdout stays open while it runs.
        std::thread::spawn(move || reader.for_each(drop));
        first
    });
    let lines = tokio::time::timeout(WAIT, lines)
        .await
        .expect("demo printed nothing")
        .unwrap();
    let page = lines
        .iter()
        .find_map(|l| {
            l.split_whitespace()
                .find(|w| w.starts_with("http://"))
                .filter(|_| l.contains("live page"))
        })
        .expect("the live page URL")
        .to_string();
    let port: u16 = page
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    eventually(WAIT, "demo listening", || port_open(port).then_some(())).await;
    // The built-in app starts beside the gateway: up when the page it
    // serves through the gateway answers.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match client().get(&page).send().await {
            Ok(r) if r.status() == 200 => break,
            other => assert!(
                tokio::time::Instant::now() < deadline,
                "the demo page did not answer within {WAIT:?}: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    (demo, page)
}

#[tokio::test]
async fn demo_prints_urls_serves_the_page_and_streams_live_events() {
    let (demo, page) = start_demo().await;
    let html = client()
        .get(&page)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("new EventSource('/events/demo')"), "{html}");
    let mut s = Sse::connect(&format!("{page}events/demo")).await;
    let tick = s.next().await;
    assert_eq!(tick.event, "tick");
    let r = client()
        .post(format!("{page}api/say"))
        .body("hello from the test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let said = loop {
        let e = s.next().await;
        if e.event == "message" {
            break e;
        }
    };
    assert_eq!(said.data, r#"{"text":"hello from the test"}"#);
    drop(demo);
}

/// The page in Chromium, clicked through as a visitor would: the webhook
/// button becomes an event, the polled prices change (pushed only on
/// change), alice and bob each see only their own notes, and a dropped
/// connection resumes with the missed ticks replayed. Leaves a screenshot.
#[tokio::test]
async fn chromium_clicks_through_webhook_poll_two_users_and_replay() {
    let Some(bin) = support::browser::chromium_or_skip() else {
        return;
    };
    let (demo, page) = start_demo().await;
    let browser = support::browser::launch(
        &bin,
        &page,
        &["--remote-debugging-port=0", "--window-size=1280,1400"],
    );
    let mut b = support::browser::Page::attach(&browser).await;
    let t = std::time::Duration::from_secs(15);
    b.until("all three streams live", "!!(document.querySelector('#state.live') && document.querySelector('#state-alice.live') && document.querySelector('#state-bob.live')) && window.demo.pushes >= 1", t).await;

    b.eval("document.getElementById('pay').click()").await;
    b.until(
        "the webhook's order as an event",
        "window.demo.orders >= 1 && !!document.querySelector('#log li.order-paid')",
        t,
    )
    .await;
    let order = b
        .eval("document.querySelector('#log li.order-paid').textContent")
        .await;
    assert!(
        order
            .as_str()
            .unwrap()
            .starts_with("order.paid {\"id\":1001"),
        "{order}"
    );

    let pushes = b.eval("window.demo.pushes").await.as_u64().unwrap();
    b.eval("document.getElementById('change').click()").await;
    b.until(
        "a pushed price change",
        &format!("window.demo.pushes > {pushes}"),
        t,
    )
    .await;
    // Polled once a second, pushed only on change: more polls than pushes.
    b.until(
        "polls outnumber pushes",
        "window.demo.polls > window.demo.pushes + 1",
        t,
    )
    .await;

    b.eval("document.getElementById('note-alice').click()")
        .await;
    b.until("alice's note", "window.demo.notes.alice.length === 1", t)
        .await;
    b.eval("document.getElementById('note-bob').click()").await;
    b.until("bob's note", "window.demo.notes.bob.length === 1", t)
        .await;
    let notes = b.eval("window.demo.notes").await;
    assert!(
        notes["alice"][0]
            .as_str()
            .unwrap()
            .ends_with("for alice only"),
        "{notes}"
    );
    assert!(
        notes["bob"][0].as_str().unwrap().ends_with("for bob only"),
        "{notes}"
    );

    b.eval("document.getElementById('drop').click()").await;
    b.until(
        "dropped",
        "document.getElementById('state').textContent === 'dropped'",
        t,
    )
    .await;
    b.until("missed ticks replayed on resume", "window.demo.replayed.length >= 2 && document.getElementById('state').textContent === 'live (resumed)'", t).await;
    let demo_state = b.eval("window.demo").await;
    assert_eq!(demo_state["gap"], false, "{demo_state}");
    assert!(
        demo_state["resumedWith"]
            .as_str()
            .is_some_and(|id| !id.is_empty()),
        "{demo_state}"
    );
    let replayed: Vec<u64> = demo_state["replayed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        replayed.windows(2).all(|w| w[1] == w[0] + 1),
        "replayed ticks in order, no gap: {replayed:?}"
    );
    let resume = b
        .eval("document.getElementById('resume').textContent")
        .await;
    assert!(resume.as_str().unwrap().contains("no gap"), "{resume}");

    let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("demo-page.png");
    b.screenshot(&shot).await;
    assert!(std::fs::metadata(&shot).unwrap().len() > 10_000);
    println!("screenshot of the demo page: {}", shot.display());
    drop(b);
    drop(browser);
    drop(demo);
}

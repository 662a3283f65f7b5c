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

#[tokio::test]
async fn demo_prints_urls_serves_the_page_and_streams_live_events() {
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

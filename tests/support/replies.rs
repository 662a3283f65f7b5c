//! The client side of the recorded-route tests (tests/record*.rs): the
//! gateway's config around the chat backend (`chat`), a reply read with
//! `eventsource-stream`, resumes, and exact checks of the events.

use super::chat::{token, Chat};
use super::{client, Ev, Gateway, WAIT};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde_json::{json, Value};

pub const ALICE: &str = "Bearer alice";
pub const RECORD_HEADER: &str = "ssegate-record-id";

pub fn config(chat: &Chat, top: &str, record: &str) -> String {
    format!(
        "sse: {{ retry: 200ms, heartbeat: 1s }}
{top}upstreams:
  app: {{ servers: [\"{}\"] }}
routes:
  - path: /chat
    proxy: app
    record: {record}
  - path: /{{*rest}}
    proxy: app
",
        chat.addr
    )
}

/// The start of a reply: its record id and a reader of its events.
pub struct Reply {
    pub record: String,
    events: std::pin::Pin<Box<dyn futures_util::Stream<Item = Ev> + Send>>,
}

impl Reply {
    pub async fn open(client: &reqwest::Client, url: &str, auth: &str) -> Reply {
        let resp = client
            .post(url)
            .header("authorization", auth)
            .header("accept", "text/event-stream")
            .json(&json!({"prompt": "hi"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert!(
            h["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream"),
            "{h:?}"
        );
        assert_eq!(h["x-app"], "chat", "the backend's own headers pass: {h:?}");
        let record = h[RECORD_HEADER].to_str().unwrap().to_string();
        assert!(
            record.len() == 32 && record.bytes().all(|b| b.is_ascii_hexdigit()),
            "{record}"
        );
        Reply {
            record,
            events: events(resp),
        }
    }

    pub async fn take(&mut self, n: usize) -> Vec<Ev> {
        let mut out = Vec::new();
        for _ in 0..n {
            let ev = tokio::time::timeout(WAIT, self.events.next())
                .await
                .expect("an event within the wait")
                .expect("the reply ended early");
            out.push(ev);
        }
        out
    }

    /// Everything until the body ends.
    pub async fn rest(&mut self) -> Vec<Ev> {
        let mut out = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.events.next()).await {
                Ok(Some(ev)) => out.push(ev),
                Ok(None) => return out,
                Err(_) => panic!("the reply did not end; got {} more", out.len()),
            }
        }
    }
}

/// A response's events, parsed by `eventsource-stream`.
pub fn events(
    resp: reqwest::Response,
) -> std::pin::Pin<Box<dyn futures_util::Stream<Item = Ev> + Send>> {
    Box::pin(resp.bytes_stream().eventsource().map(|e| {
        let e = e.expect("a well-formed event stream");
        Ev {
            event: e.event,
            data: e.data,
            id: e.id,
        }
    }))
}

/// Every event of a response, until its body ends.
pub async fn all_events(resp: reqwest::Response) -> Vec<Ev> {
    tokio::time::timeout(WAIT, events(resp).collect())
        .await
        .expect("the reply ends")
}

/// Events `from..=to` of record `rec`, exactly.
pub fn expect_events(rec: &str, evs: &[Ev], from: usize, to: usize) {
    let ids: Vec<&str> = evs.iter().map(|e| e.id.as_str()).collect();
    let want: Vec<String> = (from..=to).map(|i| format!("{rec}.{i}")).collect();
    assert_eq!(ids, want, "ids");
    for (e, i) in evs.iter().zip(from..) {
        assert_eq!(e.data, token(i), "data of event {i}");
        assert_eq!(e.event, "message");
    }
}

/// The same for a script's JSON lines (`id`, `data`).
pub fn expect_lines(rec: &str, lines: &[Value], from: usize, to: usize, who: &str) {
    let got: Vec<(String, String)> = lines
        .iter()
        .filter(|l| l.get("data").is_some())
        .map(|l| {
            (
                l["id"].as_str().unwrap().to_string(),
                l["data"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = (from..=to)
        .map(|i| (format!("{rec}.{i}"), token(i)))
        .collect();
    assert_eq!(got, want, "{who}: {lines:?}");
}

pub async fn status_with(gw: &Gateway, method: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client().request(method.parse().unwrap(), gw.url("/chat"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if method == "POST" {
        req = req.json(&json!({"prompt": "hi"}));
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

pub async fn ready_on(gw: &Gateway) {
    super::faults::ready_within(gw, WAIT).await;
}

/// GET with `last` and Alice's credentials, read to the end of the body.
pub async fn resume(gw: &Gateway, last: &str) -> Vec<Ev> {
    let resp = client()
        .get(gw.url("/chat"))
        .header("last-event-id", last)
        .header("authorization", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    all_events(resp).await
}

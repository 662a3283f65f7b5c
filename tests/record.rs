//! Resumable backend streams (`record:` on a proxy route) through the real
//! binary: a backend streams its own SSE reply (50 events over 5 s on
//! `POST /chat`, as an LLM streams tokens); the client reads 10 and
//! disconnects; real clients we did not write resume it — Node's
//! `eventsource` (GET, `Last-Event-ID`) and Python's httpx (the original
//! POST, with `Last-Event-ID`) — and get exactly events 11..50, in order,
//! once; the backend saw one request and was read to its end; afterwards
//! the record answers 204; other credentials 403; unknown ids 404. Then the
//! same over HTTP/2, across two instances sharing Redis, the bounds
//! (`max_events`, `max_total`), and a browser that reloads mid-reply.

mod support;

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::Duration;
use support::chat::{self, token, Chat};
use support::*;

const ALICE: &str = "Bearer alice";
const RECORD_HEADER: &str = "ssegate-record-id";

fn config(chat: &Chat, top: &str, record: &str) -> String {
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
struct Reply {
    record: String,
    events: std::pin::Pin<Box<dyn futures_util::Stream<Item = Ev> + Send>>,
}

impl Reply {
    async fn open(client: &reqwest::Client, url: &str, auth: &str) -> Reply {
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

    async fn take(&mut self, n: usize) -> Vec<Ev> {
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
    async fn rest(&mut self) -> Vec<Ev> {
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

use eventsource_stream::Eventsource;

/// A response's events, parsed by `eventsource-stream`.
fn events(
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
async fn all_events(resp: reqwest::Response) -> Vec<Ev> {
    tokio::time::timeout(WAIT, events(resp).collect())
        .await
        .expect("the reply ends")
}

/// Events `from..=to` of record `rec`, exactly.
fn expect_events(rec: &str, evs: &[Ev], from: usize, to: usize) {
    let ids: Vec<&str> = evs.iter().map(|e| e.id.as_str()).collect();
    let want: Vec<String> = (from..=to).map(|i| format!("{rec}.{i}")).collect();
    assert_eq!(ids, want, "ids");
    for (e, i) in evs.iter().zip(from..) {
        assert_eq!(e.data, token(i), "data of event {i}");
        assert_eq!(e.event, "message");
    }
}

/// The same for a script's JSON lines (`id`, `data`).
fn expect_lines(rec: &str, lines: &[Value], from: usize, to: usize, who: &str) {
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

async fn status_with(gw: &Gateway, method: &str, headers: &[(&str, &str)]) -> (u16, String) {
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

#[tokio::test]
async fn a_reply_outlives_its_client_and_resumes_exactly_once_with_real_clients() {
    let (Some(py), Some(modules)) = (chat::python(), chat::node_modules()) else {
        missing_tool(
            "node eventsource and python httpx",
            "scripts/test installs them under target/",
        );
        return;
    };
    let chat = Chat::start("");
    let gw = Gateway::start(&config(&chat, "", "{ ttl: 1m, max_events: 1000 }"));
    let mut reply = Reply::open(&client(), &gw.url("/chat"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.take(10).await, 1, 10);
    drop(reply);

    // Two clients resume at once while the backend is still streaming.
    let url = gw.url("/chat");
    let last = format!("{rec}.10");
    let es_path = format!("{modules}/eventsource");
    let node_args = ["-e", chat::NODE_EVENTSOURCE, &url, &last, ALICE];
    let node_env = [("ES_PATH", es_path.as_str())];
    let py_args = ["-c", chat::PYTHON_HTTPX, &url, &last, ALICE];
    let limit = Duration::from_secs(20);
    let node = chat::run_script("node", &node_args, &node_env, limit);
    let httpx = chat::run_script(&py, &py_args, &[], limit);
    let (node, httpx) = tokio::join!(node, httpx);
    expect_lines(&rec, &node, 11, 50, "node eventsource");
    expect_lines(&rec, &httpx, 11, 50, "httpx");
    assert_eq!(httpx[0], json!({"status": 200}));
    assert_eq!(httpx.last().unwrap(), &json!({"end": true}));
    // EventSource reconnected after the end and was told 204: it stopped.
    let tail: Vec<&Value> = node.iter().filter(|l| l.get("data").is_none()).collect();
    assert_eq!(
        tail,
        [
            &json!({"reconnecting": true}),
            &json!({"closed": true, "code": 204})
        ],
        "{node:?}"
    );

    let log = &chat.log;
    assert_eq!(log.chat_requests(), 1, "the backend saw one request");
    assert_eq!(log.written.load(Ordering::SeqCst), 50);
    assert_eq!(log.finished.load(Ordering::SeqCst), 1);
    assert_eq!(log.cut.load(Ordering::SeqCst), 0, "read to its end");
    {
        let reqs = log.requests.lock().unwrap();
        let (method, headers, body) = &reqs[0];
        assert_eq!(method, "POST");
        assert_eq!(body, r#"{"prompt":"hi"}"#);
        assert!(headers
            .iter()
            .any(|(k, v)| k == "authorization" && v == ALICE));
    }

    // Complete and delivered: 204, for any method; the backend is never called.
    let done = format!("{rec}.50");
    for method in ["GET", "POST"] {
        let (s, _) = status_with(
            &gw,
            method,
            &[("last-event-id", &done), ("authorization", ALICE)],
        )
        .await;
        assert_eq!(s, 204, "{method}");
    }
    let query = client()
        .get(gw.url(&format!("/chat?lastEventId={done}")))
        .header("authorization", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 204);
    // Someone else: 403. Not ours or unknown: 404, one line each.
    let (s, body) = status_with(
        &gw,
        "GET",
        &[
            ("last-event-id", &last),
            ("authorization", "Bearer mallory"),
        ],
    )
    .await;
    assert_eq!(
        (s, body.as_str()),
        (403, "the record was made with other credentials\n")
    );
    let (s, _) = status_with(&gw, "GET", &[("last-event-id", &last)]).await;
    assert_eq!(s, 403, "no credentials are other credentials");
    let unknown = format!("{}.3", "0".repeat(32));
    let (s, body) = status_with(
        &gw,
        "GET",
        &[("last-event-id", &unknown), ("authorization", ALICE)],
    )
    .await;
    assert_eq!((s, body.as_str()), (404, "unknown or expired record\n"));
    let (s, _) = status_with(
        &gw,
        "POST",
        &[("last-event-id", "17a3-9"), ("authorization", ALICE)],
    )
    .await;
    assert_eq!(s, 404);
    assert_eq!(log.chat_requests(), 1, "no resume ever reached the backend");
    assert_eq!(gw.metric("ssegate_records_started_total").await, 1.0);
    assert_eq!(
        gw.metric("ssegate_records_ended_total{reason=\"complete\"}")
            .await,
        1.0
    );
    assert_eq!(
        gw.metric("ssegate_requests_refused_total{reason=\"record_forbidden\"")
            .await,
        2.0
    );
}

#[tokio::test]
async fn the_first_reader_gets_every_event_and_ordinary_answers_pass_through() {
    let chat = Chat::start("");
    let gw = Gateway::start(&config(&chat, "", "{}"));
    // The original client stays: every event once, the backend's id and
    // comments replaced by the record's, then the end of the body.
    let mut raw = Raw::get(gw.port, "/chat?n=3&ms=20", &[("authorization", ALICE)]);
    let text = raw.read_until(WAIT, "the end of the body", |t| t.ends_with("0\r\n\r\n"));
    let lower = text.to_ascii_lowercase();
    assert!(lower.starts_with("http/1.1 200"), "{text}");
    assert!(lower.contains("x-app: chat\r\n"), "{text}");
    assert!(lower.contains("transfer-encoding: chunked\r\n"), "{text}");
    let rec = lower
        .split(&format!("{RECORD_HEADER}: "))
        .nth(1)
        .and_then(|r| r.split("\r\n").next())
        .unwrap()
        .to_string();
    assert_eq!(
        raw.body(),
        format!(
            "retry: 200\nid: {rec}.0\n:ok\n\nid: {rec}.1\ndata: token 1\n\nid: {rec}.2\ndata: token 2\n\nid: {rec}.3\ndata: token 3\n\n"
        )
    );
    // A client cut before the first event resumes from `.0`: all of it.
    let mut again = Raw::get(
        gw.port,
        "/chat",
        &[
            ("authorization", ALICE),
            ("last-event-id", &format!("{rec}.0")),
        ],
    );
    again.read_until(WAIT, "the end", |t| t.ends_with("0\r\n\r\n"));
    assert_eq!(
        again.body(),
        format!(
            "retry: 200\nid: {rec}.0\n:ok\n\nid: {rec}.1\ndata: token 1\n\nid: {rec}.2\ndata: token 2\n\nid: {rec}.3\ndata: token 3\n\n"
        )
    );
    // Not an event stream: passed through as it is, nothing recorded.
    let r = client().get(gw.url("/plain")).send().await.unwrap();
    assert!(r.headers().get(RECORD_HEADER).is_none());
    assert_eq!(r.text().await.unwrap(), "{\"plain\":true}");
    assert_eq!(gw.metric("ssegate_records_started_total").await, 1.0);
}

#[tokio::test]
async fn max_events_cuts_the_backend_and_the_reader_is_told() {
    let chat = Chat::start("");
    let gw = Gateway::start(&config(&chat, "", "{ max_events: 5 }"));
    let mut reply = Reply::open(&client(), &gw.url("/chat?n=50&ms=20"), ALICE).await;
    let rec = reply.record.clone();
    let evs = reply.rest().await;
    expect_events(&rec, &evs[..5], 1, 5);
    assert_eq!(evs.len(), 6, "{evs:?}");
    assert_eq!(evs[5].event, "ssegate.incomplete");
    assert_eq!(evs[5].data, r#"{"reason":"max-events"}"#);
    assert_eq!(evs[5].id, format!("{rec}.6"));
    eventually(WAIT, "the backend to be cut", || {
        (chat.log.cut.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert!(chat.log.written.load(Ordering::SeqCst) < 50);
    let (s, _) = status_with(
        &gw,
        "GET",
        &[
            ("last-event-id", &format!("{rec}.6")),
            ("authorization", ALICE),
        ],
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        gw.metric("ssegate_records_ended_total{reason=\"max-events\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn resumes_over_http2_like_http11() {
    let chat = Chat::start("");
    let gw = Gateway::start(&config(&chat, "http2: { h2c: true }\n", "{}"));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(WAIT)
        .build()
        .unwrap();
    let mut reply = Reply::open(&h2, &gw.url("/chat?n=20&ms=50"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.take(5).await, 1, 5);
    drop(reply);
    let resp = h2
        .get(gw.url("/chat"))
        .header("last-event-id", format!("{rec}.5"))
        .header("authorization", ALICE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[RECORD_HEADER], rec.as_str());
    let evs = all_events(resp).await;
    expect_events(&rec, &evs, 6, 20);
    assert_eq!(chat.log.chat_requests(), 1);
}

#[tokio::test]
async fn resume_on_another_instance_through_redis() {
    let redis = Redis::start();
    let chat = Chat::start("");
    let hub = format!(
        "hub: {{ broker: redis, redis: {{ url: \"{}\", prefix: rec }} }}\n",
        redis.url()
    );
    let a = Gateway::start(&config(&chat, &hub, "{ ttl: 1m }"));
    let b = Gateway::start(&config(&chat, &hub, "{ ttl: 1m }"));
    ready_on(&a).await;
    ready_on(&b).await;
    let mut reply = Reply::open(&client(), &a.url("/chat"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.take(10).await, 1, 10);
    drop(reply);
    let last = format!("{rec}.10");
    // On B, while A's writer still reads the backend; and on A again.
    let on_b = resume(&b, &last);
    let on_a = resume(&a, &last);
    let (on_b, on_a) = tokio::join!(on_b, on_a);
    expect_events(&rec, &on_b, 11, 50);
    expect_events(&rec, &on_a, 11, 50);
    assert_eq!(chat.log.chat_requests(), 1);
    for gw in [&a, &b] {
        let (s, _) = status_with(
            gw,
            "GET",
            &[
                ("last-event-id", &format!("{rec}.50")),
                ("authorization", ALICE),
            ],
        )
        .await;
        assert_eq!(s, 204);
        let (s, _) = status_with(
            gw,
            "GET",
            &[("last-event-id", &last), ("authorization", "Bearer eve")],
        )
        .await;
        assert_eq!(s, 403);
    }
}

#[tokio::test]
async fn the_oldest_records_go_first_in_redis() {
    let redis = Redis::start();
    let chat = Chat::start("");
    let hub = format!(
        "hub: {{ broker: redis, redis: {{ url: \"{}\", prefix: evict }} }}\n",
        redis.url()
    );
    // Room for about 8 events of one route.
    let gw = Gateway::start(&config(&chat, &hub, "{ max_total: 500B }"));
    ready_on(&gw).await;
    let mut old = Reply::open(&client(), &gw.url("/chat?n=3&ms=10"), ALICE).await;
    let old_rec = old.record.clone();
    old.rest().await;
    let mut new = Reply::open(&client(), &gw.url("/chat?n=8&ms=10"), ALICE).await;
    let new_rec = new.record.clone();
    expect_events(&new_rec, &new.rest().await, 1, 8);
    // The first record was dropped for the second; the second is whole.
    let (s, _) = status_with(
        &gw,
        "GET",
        &[
            ("last-event-id", &format!("{old_rec}.0")),
            ("authorization", ALICE),
        ],
    )
    .await;
    assert_eq!(s, 404);
    let evs = resume(&gw, &format!("{new_rec}.6")).await;
    expect_events(&new_rec, &evs, 7, 8);
    assert_eq!(gw.metric("ssegate_records_evicted_total").await, 1.0);
}

async fn ready_on(gw: &Gateway) {
    support::faults::ready_within(gw, WAIT).await;
}

/// GET with `last` and Alice's credentials, read to the end of the body.
async fn resume(gw: &Gateway, last: &str) -> Vec<Ev> {
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

/// A chat page: the reply is shown as it streams; the page reloads itself
/// after 10 events and shows the whole answer once it resumed — first with
/// the fetch-based client of docs/record.md (POST, `Last-Event-ID` kept in
/// sessionStorage), then with EventSource (`?lastEventId=` after the
/// reload; the 204 after the end stops it). It reports what it shows.
const PAGE: &str = r#"<!doctype html>
<meta charset="utf-8"><title>resumable reply</title>
<pre id="answer"></pre>
<script>
// From docs/record.md: POST, show the reply's events as they come, and
// after any drop (network, reload) ask again with Last-Event-ID until the
// gateway says 204: the reply was delivered whole.
async function streamReply(url, body, onEvent, key = 'lastEventId') {
  for (let wait = 250; ; wait = Math.min(wait * 2, 5000)) {
    const headers = { 'content-type': 'application/json', accept: 'text/event-stream' };
    const last = sessionStorage.getItem(key);
    if (last) headers['Last-Event-ID'] = last;
    try {
      const res = await fetch(url, { method: 'POST', headers, body: JSON.stringify(body) });
      if (res.status === 204) { sessionStorage.removeItem(key); return; }
      const final = (why) => Object.assign(new Error(why), { final: true });
      if (res.status >= 400 && res.status < 500) {      // 403, 404 (expired): start over
        sessionStorage.removeItem(key);
        throw final(await res.text());
      }
      if (!res.ok) throw new Error(`HTTP ${res.status}`);   // 5xx: try again
      if (!(res.headers.get('content-type') || '').startsWith('text/event-stream')) throw final('not a stream');
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '', id = null, event = 'message', data = [];
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf('\n')) >= 0) {   // ssegate ends every line with LF
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          if (line === '') {                     // an event is complete: it is ours now
            if (id !== null) sessionStorage.setItem(key, id);
            if (data.length) onEvent({ id, event, data: data.join('\n') });
            id = null; event = 'message'; data = [];
            continue;
          }
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          const v = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
          if (field === 'data') data.push(v);
          else if (field === 'id') id = v;
          else if (field === 'event') event = v;
        }
      }
      wait = 250;                                // a clean end: ask once more
    } catch (e) {
      if (e.final) throw e;                      // anything else: try again
    }
    await new Promise((r) => setTimeout(r, wait));
  }
}

// From docs/record.md: EventSource, resumed after a reload too.
function resumableSource(url, onMessage) {
  const key = 'lastEventId:' + url;
  const last = sessionStorage.getItem(key);
  const es = new EventSource(last ? `${url}${url.includes('?') ? '&' : '?'}lastEventId=${encodeURIComponent(last)}` : url);
  es.onmessage = (e) => {
    sessionStorage.setItem(key, e.lastEventId);
    onMessage(e);
  };
  es.onerror = () => {
    // CLOSED: the reply was delivered whole (204) or is gone (404/403).
    if (es.readyState === EventSource.CLOSED) sessionStorage.removeItem(key);
  };
  return es;
}

const S = sessionStorage;
const phase = S.getItem('phase') || 'fetch';
const answer = document.getElementById('answer');
answer.textContent = S.getItem('text') || '';
const count = () => Number(S.getItem('count') || 0);
function show(data) {
  answer.textContent += data + '|';
  S.setItem('text', answer.textContent);
  S.setItem('count', String(count() + 1));
}
function report(kind) {
  return fetch('/app/report', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ kind, text: answer.textContent, count: count() }) });
}
function next(p) {
  S.removeItem('text'); S.removeItem('count'); S.removeItem('lastEventId');
  S.setItem('phase', p);
  location.reload();
}
const URL_ = '/chat?n=20&ms=100';
if (phase === 'fetch' || phase === 'fetch-resume') {
  streamReply(URL_, { prompt: 'hi' }, (ev) => {
    show(ev.data);
    if (phase === 'fetch' && count() === 10) { S.setItem('phase', 'fetch-resume'); location.reload(); }
  }).then(async () => {
    if (phase === 'fetch-resume') { await report('fetch'); next('es'); }
  }, (e) => report('error: ' + e));
} else if (phase === 'es' || phase === 'es-resume') {
  const es = resumableSource(URL_, (e) => {
    show(e.data);
    if (phase === 'es' && count() === 10) { es.close(); S.setItem('phase', 'es-resume'); location.reload(); }
  });
  es.addEventListener('error', () => {
    if (phase === 'es-resume' && es.readyState === EventSource.CLOSED) report('es');
  });
}
</script>
"#;

/// The two clients of docs/record.md are the page's, word for word.
#[test]
fn the_documented_clients_are_the_tested_ones() {
    let docs =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/record.md")).unwrap();
    for start in ["async function streamReply(", "function resumableSource("] {
        let a = PAGE.find(start).unwrap();
        let b = a + PAGE[a..].find("\n}\n").unwrap() + 3;
        assert!(
            docs.contains(&PAGE[a..b]),
            "docs/record.md has another {start}…"
        );
    }
}

#[tokio::test]
async fn a_page_reloaded_mid_reply_shows_the_whole_answer() {
    let Some(bin) = support::browser::chromium() else {
        missing_tool("chromium", "apt-get install -y chromium");
        return;
    };
    let chat = Chat::start(PAGE);
    let gw = Gateway::start(&config(&chat, "", "{}"));
    let _browser = support::browser::launch(&bin, &gw.url("/app/page"));
    let whole: String = (1..=20).map(|i| format!("{}|", token(i))).collect();
    // A cold browser start on two busy cores can take a while.
    let fetched = chat.log.report("fetch", Duration::from_secs(40)).await;
    assert_eq!(fetched["text"], whole.as_str(), "{fetched}");
    assert_eq!(fetched["count"], 20);
    let streamed = chat.log.report("es", Duration::from_secs(20)).await;
    assert_eq!(streamed["text"], whole.as_str(), "{streamed}");
    assert_eq!(streamed["count"], 20);
    let reqs = chat.log.requests.lock().unwrap().clone();
    let methods: Vec<&str> = reqs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        methods,
        ["POST", "GET"],
        "one backend request per reply, none per reload"
    );
    assert!(
        chat.log
            .reports
            .lock()
            .unwrap()
            .iter()
            .all(|r| !r["kind"].as_str().unwrap().starts_with("error")),
        "{:?}",
        chat.log.reports.lock().unwrap()
    );
}

#[tokio::test]
async fn a_draining_instance_lets_the_reply_run_for_its_grace_then_marks_it_interrupted() {
    let redis = Redis::start();
    let chat = Chat::start("");
    let hub = format!(
        "shutdown_grace: 3s\nhub: {{ broker: redis, redis: {{ url: \"{}\", prefix: drain }} }}\n",
        redis.url()
    );
    let mut a = Gateway::start(&config(&chat, &hub, "{}"));
    let b = Gateway::start(&config(&chat, &hub, "{}"));
    ready_on(&a).await;
    ready_on(&b).await;
    let mut reply = Reply::open(&client(), &a.url("/chat?n=100&ms=100"), ALICE).await;
    let rec = reply.record.clone();
    expect_events(&rec, &reply.take(5).await, 1, 5);
    drop(reply);
    let resp = client()
        .get(b.url("/chat"))
        .header("last-event-id", format!("{rec}.5"))
        .header("authorization", ALICE)
        .send()
        .await
        .unwrap();
    let mut on_b = events(resp);
    let first = tokio::time::timeout(WAIT, on_b.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.id, format!("{rec}.6"));
    a.signal("-TERM");
    let rest: Vec<Ev> = tokio::time::timeout(WAIT, on_b.collect()).await.unwrap();
    let (marker, events) = rest.split_last().unwrap();
    let k = 6 + events.len();
    expect_events(&rec, events, 7, k);
    assert!(k < 100, "the reply was cut by the drain, after {k}");
    assert_eq!(marker.event, "ssegate.incomplete");
    assert_eq!(marker.data, r#"{"reason":"interrupted"}"#);
    assert_eq!(marker.id, format!("{rec}.{}", k + 1));
    assert_eq!(a.wait_exit(Duration::from_secs(5)), Some(0));
    assert_eq!(chat.log.cut.load(Ordering::SeqCst), 1);
    // What A recorded outlives A.
    let again = resume(&b, &format!("{rec}.{}", k - 2)).await;
    assert_eq!(again.len(), 3);
    let (s, _) = status_with(
        &b,
        "GET",
        &[("last-event-id", &marker.id), ("authorization", ALICE)],
    )
    .await;
    assert_eq!(s, 204);
}

/// The memory of 1,000 concurrent recorded replies (the figures in
/// docs/record.md): each of 1,000 clients POSTs at once, reads the first
/// event and leaves; the backend streams 100 events of ~150 B each over
/// 5 s to every one of them. Measured with a `max_total` that holds them
/// all, and with one that holds a fraction (the oldest records go first).
/// Run: `cargo test --test record -- --ignored --nocapture memory_of`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: prints the figures of docs/record.md"]
async fn memory_of_a_thousand_concurrent_recorded_replies() {
    const REPLIES: usize = 1000;
    for max_total in ["1GiB", "4MiB"] {
        let chat = Chat::start("");
        let gw = Gateway::start(&config(
            &chat,
            "limits: { max_connections_per_ip: 0 }\n",
            &format!("{{ ttl: 2m, max_total: {max_total} }}"),
        ));
        let url = gw.url("/chat?n=100&ms=50&pad=120");
        let c = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(0)
            .build()
            .unwrap();
        // Warm: the first request starts the runtime's pools.
        let mut w = Reply::open(&c, &url, ALICE).await;
        w.take(1).await;
        drop(w);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let base = gw.rss();
        let started = std::time::Instant::now();
        let clients: Vec<_> = (0..REPLIES)
            .map(|_| {
                let (c, url) = (c.clone(), url.clone());
                tokio::spawn(async move {
                    let mut r = Reply::open(&c, &url, ALICE).await;
                    r.take(1).await;
                    r.record
                })
            })
            .collect();
        let mut records = Vec::new();
        for t in clients {
            records.push(t.await.unwrap());
        }
        let opened = started.elapsed();
        let mut peak = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let ended =
            || chat.log.finished.load(Ordering::SeqCst) + chat.log.cut.load(Ordering::SeqCst);
        while ended() < REPLIES + 1 {
            peak = peak.max(gw.rss());
            assert!(
                std::time::Instant::now() < deadline,
                "the backend did not finish"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Every writer has ended its record: what is held now is records
        // (the store's own count, updated once a second).
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let held = gw.rss();
        let mut whole = 0;
        for r in records.iter().step_by(50) {
            let resp = client()
                .get(gw.url("/chat"))
                .header("last-event-id", format!("{r}.0"))
                .header("authorization", ALICE)
                .send()
                .await
                .unwrap();
            if resp.status() == 200 {
                whole += usize::from(all_events(resp).await.len() == 100);
            }
        }
        let events = gw.metric("ssegate_record_events_total").await;
        let held_records = gw.metric("ssegate_records ").await;
        let held_bytes = gw.metric("ssegate_record_bytes ").await;
        let evicted = gw.metric("ssegate_records_evicted_total").await;
        println!(
            "max_total {max_total}: {REPLIES} replies opened in {opened:.1?}; {events} events recorded; \
             gateway RSS {:.1} MiB before, {:.1} MiB peak while the backends streamed, \
             {:.1} MiB with every record ended; {held_records} records held, {:.1} MiB of frames; \
             {evicted} evicted; {whole}/{} sampled records whole",
            base as f64 / 1048576.0,
            peak as f64 / 1048576.0,
            held as f64 / 1048576.0,
            held_bytes / 1048576.0,
            records.len().div_ceil(50)
        );
        assert_eq!(chat.log.chat_requests(), REPLIES + 1);
    }
}

//! A browser on a recorded route: a chat page in Chromium reloads itself in
//! the middle of a reply and shows the whole answer, with the fetch-based
//! and the EventSource clients of docs/record.md (kept word for word).

mod support;

use std::time::Duration;
use support::chat::{token, Chat};
use support::replies::*;
use support::*;

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
    let Some(bin) = support::browser::chromium_or_skip() else {
        return;
    };
    let chat = Chat::start(PAGE);
    let gw = Gateway::start(&config(&chat, "", "{}"));
    let _browser = support::browser::launch(&bin, &gw.url("/app/page"), &[]);
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

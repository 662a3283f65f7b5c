//! Paced publisher over a raw HTTP/1.1 keep-alive POST client.

use crate::http::{self, BodyDecoder};
use crate::sse_client::now_unix_nanos;
use crate::target::{parse_url, substitute, Target};
use bytes::BytesMut;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Ssegate,
    Nchan,
    Pushpin,
}

pub struct PubCfg {
    pub url_template: String,
    pub format: Format,
    /// Channel names used for `{ch}` substitution; seq goes to `channels[seq % len]`.
    pub channels: Vec<String>,
    /// Prefix added to channel names inside publish bodies (ssegate/pushpin).
    pub channel_prefix: String,
    pub events: u64,
    /// Events per second; 0 = as fast as possible.
    pub rate: f64,
    pub batch: usize,
    pub payload_bytes: usize,
    pub request_timeout: Duration,
    /// Parallel keep-alive publish connections.
    pub concurrency: usize,
}

#[derive(Debug, Default)]
pub struct PubResult {
    /// Events in requests answered 2xx.
    pub published: u64,
    /// Events in requests that failed or got a non-2xx status.
    pub failed: u64,
    pub requests: u64,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: Vec<String>,
    /// Offsets from the run's base instant.
    pub first_send: Option<Duration>,
    pub last_done: Option<Duration>,
}

/// Event data text: {"seq":N,"t":unix_nanos,"pad":"xxx"} padded to `payload` bytes.
pub fn event_json(seq: u64, t: u64, payload: usize) -> String {
    let base = format!(r#"{{"seq":{seq},"t":{t}"#);
    let pad = payload.saturating_sub(base.len() + 10); // ,"pad":""}
    if payload == 0 {
        format!("{base}}}")
    } else {
        format!(r#"{base},"pad":"{}"}}"#, "x".repeat(pad))
    }
}

fn js(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// Build (url, content-type, body) for events `seqs`.
pub fn build_request(cfg: &PubCfg, seqs: std::ops::Range<u64>) -> (String, &'static str, String) {
    let t = now_unix_nanos();
    let ch_of = |seq: u64| &cfg.channels[(seq % cfg.channels.len() as u64) as usize];
    let url = substitute(&cfg.url_template, seqs.start as usize, ch_of(seqs.start));
    let full = |seq: u64| format!("{}{}", cfg.channel_prefix, ch_of(seq));
    match cfg.format {
        Format::Nchan => (
            url,
            "application/json",
            event_json(seqs.start, t, cfg.payload_bytes),
        ),
        Format::Ssegate => {
            let item = |seq: u64| {
                format!(
                    r#"{{"channel":{},"data":{}}}"#,
                    js(&full(seq)),
                    event_json(seq, t, cfg.payload_bytes)
                )
            };
            let body = if cfg.batch <= 1 {
                item(seqs.start)
            } else {
                let items: Vec<String> = seqs.map(item).collect();
                format!(r#"{{"items":[{}]}}"#, items.join(","))
            };
            (url, "application/json", body)
        }
        Format::Pushpin => {
            let items: Vec<String> = seqs
                .map(|seq| {
                    let content = format!("data: {}\n\n", event_json(seq, t, cfg.payload_bytes));
                    format!(
                        r#"{{"channel":{},"formats":{{"http-stream":{{"content":{}}}}}}}"#,
                        js(&full(seq)),
                        js(&content)
                    )
                })
                .collect();
            (
                url,
                "application/json",
                format!(r#"{{"items":[{}]}}"#, items.join(",")),
            )
        }
    }
}

/// Keep-alive HTTP/1.1 POST client to one loopback server.
pub struct PostClient {
    conn: Option<(std::net::SocketAddr, TcpStream)>,
    buf: BytesMut,
    timeout: Duration,
}

impl PostClient {
    pub fn new(timeout: Duration) -> Self {
        PostClient {
            conn: None,
            buf: BytesMut::with_capacity(8192),
            timeout,
        }
    }

    pub async fn post(&mut self, t: &Target, ctype: &str, body: &[u8]) -> Result<u16, String> {
        let res = timeout(self.timeout, self.post_inner(t, ctype, body)).await;
        let res = res.unwrap_or_else(|_| Err("publish request timed out".into()));
        if res.is_err() {
            self.conn = None;
        }
        res
    }

    async fn post_inner(&mut self, t: &Target, ctype: &str, body: &[u8]) -> Result<u16, String> {
        if self.conn.as_ref().map(|c| c.0) != Some(t.addr) {
            let s = http::connect_from(None, t.addr, self.timeout).await?;
            self.conn = Some((t.addr, s));
            self.buf.clear();
        }
        let (_, stream) = self.conn.as_mut().expect("connected");
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nUser-Agent: ssegate-loadgen\r\n\r\n",
            t.path,
            t.host_header,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        stream
            .write_all(&req)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let head = http::read_head(stream, &mut self.buf, self.timeout).await?;
        let mut dec = BodyDecoder::new(head.framing);
        loop {
            dec.decode(&mut self.buf, &mut |_: &[u8]| {})?;
            if dec.is_done() {
                break;
            }
            self.buf.reserve(4096);
            let n = stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| format!("read body: {e}"))?;
            if n == 0 {
                if head.framing == http::Framing::Close {
                    break;
                }
                return Err("connection closed mid-body".into());
            }
        }
        if head.connection_close {
            self.conn = None;
            self.buf.clear();
        }
        Ok(head.status)
    }
}

/// Validate the publish URL template (loopback only) before running.
pub fn check_url(cfg: &PubCfg) -> Result<(), String> {
    for ch in cfg.channels.iter().take(1) {
        if parse_url(&substitute(&cfg.url_template, 0, ch))?.tls {
            return Err("--publish-url must be plain http:// (admin / publish API)".into());
        }
    }
    if cfg.format == Format::Nchan && cfg.batch > 1 {
        return Err("--batch > 1 is not supported with --publish-format nchan".into());
    }
    Ok(())
}

/// Publish all events, pacing to `cfg.rate`, over `cfg.concurrency`
/// keep-alive connections. Runs to completion (every request is bounded by
/// `request_timeout`).
pub async fn run_publisher(cfg: PubCfg, base: Instant) -> PubResult {
    let cfg = Arc::new(cfg);
    let next = Arc::new(AtomicU64::new(0));
    let start = tokio::time::Instant::now();
    let first_send = base.elapsed();
    let workers: Vec<_> = (0..cfg.concurrency.max(1))
        .map(|_| tokio::spawn(publish_worker(cfg.clone(), next.clone(), start)))
        .collect();
    let mut res = PubResult {
        first_send: Some(first_send),
        ..Default::default()
    };
    for w in workers {
        match w.await {
            Ok(r) => {
                res.published += r.published;
                res.failed += r.failed;
                res.requests += r.requests;
                for (k, v) in r.statuses {
                    *res.statuses.entry(k).or_default() += v;
                }
                for e in r.errors {
                    if res.errors.len() < 8 {
                        res.errors.push(e);
                    }
                }
            }
            Err(e) => res.errors.push(format!("publisher task: {e}")),
        }
    }
    res.last_done = Some(base.elapsed());
    res
}

async fn publish_worker(
    cfg: Arc<PubCfg>,
    next: Arc<AtomicU64>,
    start: tokio::time::Instant,
) -> PubResult {
    let mut res = PubResult::default();
    let mut client = PostClient::new(cfg.request_timeout);
    let batch = cfg.batch.max(1) as u64;
    loop {
        let k = next.fetch_add(1, Ordering::Relaxed);
        let seq = k.saturating_mul(batch);
        if seq >= cfg.events {
            break;
        }
        if cfg.rate > 0.0 {
            let at = start + Duration::from_secs_f64(seq as f64 / cfg.rate);
            tokio::time::sleep_until(at).await;
        }
        let end = (seq + batch).min(cfg.events);
        let n = end - seq;
        let (url, ctype, body) = build_request(&cfg, seq..end);
        let outcome = match parse_url(&url) {
            Ok(t) => client.post(&t, ctype, body.as_bytes()).await,
            Err(e) => Err(e),
        };
        res.requests += 1;
        match outcome {
            Ok(status) => {
                *res.statuses.entry(status).or_default() += 1;
                if (200..300).contains(&status) {
                    res.published += n;
                } else {
                    res.failed += n;
                    if res.errors.len() < 8 {
                        res.errors
                            .push(format!("publish status {status} for {url}"));
                    }
                }
            }
            Err(e) => {
                res.failed += n;
                if res.errors.len() < 8 {
                    res.errors.push(format!("publish {url}: {e}"));
                }
            }
        }
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(format: Format, batch: usize) -> PubCfg {
        PubCfg {
            url_template: "http://127.0.0.1:8090/pub?id={ch}".into(),
            format,
            channels: vec!["a".into(), "b".into()],
            channel_prefix: "room:".into(),
            events: 10,
            rate: 0.0,
            batch,
            payload_bytes: 100,
            request_timeout: Duration::from_secs(1),
            concurrency: 1,
        }
    }

    #[test]
    fn payload_size() {
        assert_eq!(event_json(123, 1_700_000_000_000_000_000, 100).len(), 100);
        assert_eq!(event_json(1, 2, 0), r#"{"seq":1,"t":2}"#);
        let v: serde_json::Value = serde_json::from_str(&event_json(5, 6, 64)).unwrap();
        assert_eq!(v["seq"], 5);
    }

    #[test]
    fn bodies() {
        let (url, _, body) = build_request(&cfg(Format::Nchan, 1), 1..2);
        assert_eq!(url, "http://127.0.0.1:8090/pub?id=b");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["seq"], 1);

        let (_, _, body) = build_request(&cfg(Format::Ssegate, 1), 0..1);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["channel"], "room:a");
        assert_eq!(v["data"]["seq"], 0);

        let (_, _, body) = build_request(&cfg(Format::Ssegate, 3), 0..3);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["items"].as_array().unwrap().len(), 3);
        assert_eq!(v["items"][1]["channel"], "room:b");

        let (_, _, body) = build_request(&cfg(Format::Pushpin, 1), 0..1);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let content = v["items"][0]["formats"]["http-stream"]["content"]
            .as_str()
            .unwrap();
        assert!(content.starts_with("data: {\"seq\":0,"));
        assert!(content.ends_with("}\n\n"));
    }
}

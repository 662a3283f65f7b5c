//! Opening one SSE subscription over any of the transports: HTTP/1.1 (plain
//! or TLS, with the project's own HTTP/1 reader) or HTTP/2 (TLS or h2c,
//! the `h2` crate), many streams sharing one connection.

use crate::http::{self, BodyDecoder};
use crate::target::Target;
use crate::tls;
use bytes::{Bytes, BytesMut};
use h2::client::SendRequest;
use rustls::ClientConfig;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// A byte stream: plain TCP or TLS over TCP.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type BoxIo = Box<dyn Io>;

/// How subscribers reach the server.
#[derive(Debug, Clone)]
pub struct Transport {
    /// HTTP/2 (h2 over TLS, h2c with prior knowledge over plain TCP).
    pub h2: bool,
    /// Present for `https://` targets; ALPN offers only the wanted protocol.
    pub tls: Option<Arc<ClientConfig>>,
    pub connect_timeout: Duration,
    pub header_timeout: Duration,
    /// HTTP/2 receive windows (bytes): per stream and per connection.
    pub h2_stream_window: u32,
    pub h2_conn_window: u32,
}

impl Transport {
    /// TCP connect from `src`, then the TLS handshake when configured.
    pub async fn connect(&self, src: Option<Ipv4Addr>, t: &Target) -> Result<BoxIo, String> {
        let tcp = http::connect_from(src, t.addr, self.connect_timeout).await?;
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some(cfg) => {
                let (s, agreed) = tls::handshake(cfg, &t.host, tcp, self.connect_timeout).await?;
                if !agreed {
                    let want = if self.h2 { "h2" } else { "http/1.1" };
                    return Err(format!("server did not agree to ALPN {want}"));
                }
                Ok(Box::new(s))
            }
        }
    }
}

/// Why an attempt did not give a stream.
#[derive(Debug)]
pub enum OpenError {
    /// Connect, handshake, reset, timeout: a browser reconnects after these.
    Network(String),
    /// Any status other than 200: a browser gives up.
    Status(u16),
}

/// An open response body with status 200.
pub enum Body {
    H1 {
        io: BoxIo,
        raw: BytesMut,
        dec: BodyDecoder,
    },
    H2 {
        recv: h2::RecvStream,
        /// Received bytes not yet given back to the flow-control window.
        unreleased: usize,
        release_at: usize,
    },
}

impl Body {
    /// Wait for the next piece of the body and give its decoded bytes to
    /// `out`. `Ok(false)`: the body ended. Cancel-safe between reads.
    pub async fn read(&mut self, out: &mut impl FnMut(&[u8])) -> Result<bool, String> {
        match self {
            Body::H1 { io, raw, dec } => {
                if !raw.is_empty() {
                    // Bytes read with the head (or left from a previous
                    // read): hand them over before waiting for more.
                    let before = raw.len();
                    dec.decode(raw, out)?;
                    if dec.is_done() {
                        return Ok(false);
                    }
                    if raw.len() != before {
                        return Ok(true);
                    }
                }
                if raw.capacity() - raw.len() < 1024 {
                    raw.reserve(4096);
                }
                let n = io.read_buf(raw).await.map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Ok(false);
                }
                dec.decode(raw, out)?;
                Ok(!dec.is_done())
            }
            Body::H2 {
                recv,
                unreleased,
                release_at,
            } => match recv.data().await {
                None => Ok(false),
                Some(Err(e)) => Err(format!("h2 stream: {e}")),
                Some(Ok(b)) => {
                    out(&b);
                    // Each release locks the connection's stream store,
                    // which its driver task holds while it reads: give
                    // capacity back in batches (`H2Slot::release_at`).
                    *unreleased += b.len();
                    if *unreleased >= *release_at {
                        let _ = recv
                            .flow_control()
                            .release_capacity(std::mem::take(unreleased));
                    }
                    Ok(true)
                }
            },
        }
    }
}

/// A 200 answer: its body and whether it said `text/event-stream`.
pub struct Opened {
    pub body: Body,
    pub event_stream: bool,
}

fn is_event_stream(ct: Option<&str>) -> bool {
    ct.is_some_and(|c| c.to_ascii_lowercase().contains("text/event-stream"))
}

/// Where a subscriber opens its stream.
#[derive(Clone)]
pub enum Opener {
    /// One connection per stream.
    H1(Arc<Transport>),
    /// A stream on a shared HTTP/2 connection.
    H2(Arc<H2Slot>),
}

impl Opener {
    /// One attempt: GET with `Accept: text/event-stream` (and `Last-Event-ID`).
    pub async fn open(
        &self,
        src: Option<Ipv4Addr>,
        t: &Target,
        last_event_id: Option<&str>,
    ) -> Result<Opened, OpenError> {
        match self {
            Opener::H1(tr) => open_h1(tr, src, t, last_event_id).await,
            Opener::H2(slot) => slot.open(t, last_event_id).await,
        }
    }
}

/// The request head we send over HTTP/1.1.
pub fn h1_request(t: &Target, last_event_id: Option<&str>) -> String {
    let lei = match last_event_id {
        Some(id) if !id.is_empty() && !id.contains(['\r', '\n']) => {
            format!("Last-Event-ID: {id}\r\n")
        }
        _ => String::new(),
    };
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nCache-Control: no-cache\r\n{lei}User-Agent: ssegate-loadgen\r\n\r\n",
        t.path, t.host_header
    )
}

async fn open_h1(
    tr: &Transport,
    src: Option<Ipv4Addr>,
    t: &Target,
    last_event_id: Option<&str>,
) -> Result<Opened, OpenError> {
    let mut io = tr.connect(src, t).await.map_err(OpenError::Network)?;
    io.write_all(h1_request(t, last_event_id).as_bytes())
        .await
        .map_err(|e| OpenError::Network(format!("write request: {e}")))?;
    let mut raw = BytesMut::with_capacity(4096);
    let head = http::read_head(&mut io, &mut raw, tr.header_timeout)
        .await
        .map_err(OpenError::Network)?;
    if head.status != 200 {
        return Err(OpenError::Status(head.status));
    }
    Ok(Opened {
        event_stream: is_event_stream(head.content_type.as_deref()),
        body: Body::H1 {
            io,
            raw,
            dec: BodyDecoder::new(head.framing),
        },
    })
}

/// The request we send over HTTP/2.
pub fn h2_request(t: &Target, last_event_id: Option<&str>) -> Result<::http::Request<()>, String> {
    let scheme = if t.tls { "https" } else { "http" };
    let mut b = ::http::Request::builder()
        .method("GET")
        .uri(format!("{scheme}://{}{}", t.host_header, t.path))
        .header("accept", "text/event-stream")
        .header("cache-control", "no-cache")
        .header("user-agent", "ssegate-loadgen");
    if let Some(id) = last_event_id.filter(|s| !s.is_empty()) {
        if let Ok(v) = ::http::HeaderValue::from_str(id) {
            b = b.header("last-event-id", v);
        }
    }
    b.body(()).map_err(|e| format!("h2 request: {e}"))
}

/// One HTTP/2 connection shared by several subscribers. It is opened by the
/// first subscriber that needs it and opened again after it breaks.
pub struct H2Slot {
    transport: Arc<Transport>,
    target: Target,
    src: Option<Ipv4Addr>,
    state: tokio::sync::Mutex<SlotState>,
    /// Connections opened by this slot (the first one included).
    pub connects: AtomicU64,
    /// Bytes a stream receives before it releases them to the windows: a
    /// quarter of what its share of the windows allows, at most 16 KiB, so
    /// that batching never stalls a stream or the connection.
    release_at: usize,
}

#[derive(Default)]
struct SlotState {
    send: Option<SendRequest<Bytes>>,
    alive: Arc<AtomicBool>,
    driver: Option<JoinHandle<()>>,
    last_failure: Option<(Instant, String)>,
}

/// After a failed connect, the slot's other subscribers get the same error
/// for this long instead of each waiting for its own connect timeout.
const SLOT_FAILURE_HOLD: Duration = Duration::from_millis(200);

impl H2Slot {
    /// A slot for up to `streams` streams at a time.
    pub fn new(
        transport: Arc<Transport>,
        target: Target,
        src: Option<Ipv4Addr>,
        streams: usize,
    ) -> Arc<Self> {
        let share = (transport.h2_conn_window as usize / streams.max(1))
            .min(transport.h2_stream_window as usize);
        Arc::new(H2Slot {
            release_at: (share / 4).clamp(1, 16 << 10),
            transport,
            target,
            src,
            state: tokio::sync::Mutex::new(SlotState::default()),
            connects: AtomicU64::new(0),
        })
    }

    /// The connection's request handle, connecting first when needed.
    async fn sender(&self) -> Result<SendRequest<Bytes>, String> {
        let mut st = self.state.lock().await;
        if let Some(s) = &st.send {
            if st.alive.load(Ordering::Acquire) {
                return Ok(s.clone());
            }
        }
        if let Some((at, e)) = &st.last_failure {
            if at.elapsed() < SLOT_FAILURE_HOLD {
                return Err(e.clone());
            }
        }
        st.close();
        match self.connect().await {
            Ok((send, alive, driver)) => {
                st.send = Some(send.clone());
                st.alive = alive;
                st.driver = Some(driver);
                st.last_failure = None;
                Ok(send)
            }
            Err(e) => {
                st.last_failure = Some((Instant::now(), e.clone()));
                Err(e)
            }
        }
    }

    async fn connect(
        &self,
    ) -> Result<(SendRequest<Bytes>, Arc<AtomicBool>, JoinHandle<()>), String> {
        let tr = &self.transport;
        let io = tr.connect(self.src, &self.target).await?;
        self.connects.fetch_add(1, Ordering::Relaxed);
        let (send, conn) = timeout(
            tr.connect_timeout,
            h2::client::Builder::new()
                .initial_window_size(tr.h2_stream_window)
                .initial_connection_window_size(tr.h2_conn_window)
                .handshake::<_, Bytes>(io),
        )
        .await
        .map_err(|_| "h2 handshake timed out".to_string())?
        .map_err(|e| format!("h2 handshake: {e}"))?;
        let alive = Arc::new(AtomicBool::new(true));
        let flag = alive.clone();
        let driver = tokio::spawn(async move {
            let _ = conn.await;
            flag.store(false, Ordering::Release);
        });
        Ok((send, alive, driver))
    }

    /// Close the connection now (its streams end); the next `open` reconnects.
    pub async fn close(&self) {
        self.state.lock().await.close();
    }

    async fn open(&self, t: &Target, last_event_id: Option<&str>) -> Result<Opened, OpenError> {
        let send = self.sender().await.map_err(OpenError::Network)?;
        let limit = self.transport.header_timeout;
        let req = h2_request(t, last_event_id).map_err(OpenError::Network)?;
        let net = |e: String| OpenError::Network(e);
        let mut send = timeout(limit, send.ready())
            .await
            .map_err(|_| net("timed out waiting for an h2 stream slot".into()))?
            .map_err(|e| net(format!("h2: {e}")))?;
        let (resp, _) = send
            .send_request(req, true)
            .map_err(|e| net(format!("h2 send: {e}")))?;
        drop(send);
        let resp = timeout(limit, resp)
            .await
            .map_err(|_| net("timed out reading h2 response head".into()))?
            .map_err(|e| net(format!("h2 response: {e}")))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(OpenError::Status(status));
        }
        let ct = resp
            .headers()
            .get(::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        Ok(Opened {
            event_stream: is_event_stream(ct),
            body: Body::H2 {
                recv: resp.into_body(),
                unreleased: 0,
                release_at: self.release_at,
            },
        })
    }
}

impl SlotState {
    fn close(&mut self) {
        self.send = None;
        self.alive.store(false, Ordering::Release);
        if let Some(d) = self.driver.take() {
            d.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::parse_url;

    #[test]
    fn requests_carry_accept_and_last_event_id() {
        let t = parse_url("http://127.0.0.1:8080/events/a?x=1").unwrap();
        let r = h1_request(&t, Some("42"));
        assert!(r.starts_with("GET /events/a?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(r.contains("Accept: text/event-stream\r\n"));
        assert!(r.contains("Last-Event-ID: 42\r\n"));
        assert!(!h1_request(&t, Some("")).contains("Last-Event-ID"));
        assert!(!h1_request(&t, None).contains("Last-Event-ID"));

        let t = parse_url("https://127.0.0.1:8443/events/a").unwrap();
        let r = h2_request(&t, Some("7:1")).unwrap();
        assert_eq!(r.uri().to_string(), "https://127.0.0.1:8443/events/a");
        assert_eq!(r.headers()["accept"], "text/event-stream");
        assert_eq!(r.headers()["last-event-id"], "7:1");
        let r = h2_request(&t, None).unwrap();
        assert!(r.headers().get("last-event-id").is_none());
    }

    #[test]
    fn release_batches_fit_in_the_windows() {
        let tr = |stream, conn| {
            Arc::new(Transport {
                h2: true,
                tls: None,
                connect_timeout: Duration::from_secs(1),
                header_timeout: Duration::from_secs(1),
                h2_stream_window: stream,
                h2_conn_window: conn,
            })
        };
        let t = parse_url("http://127.0.0.1:1/").unwrap();
        let at = |s, c, n| H2Slot::new(tr(s, c), t.clone(), None, n).release_at;
        assert_eq!(at(1 << 20, 16 << 20, 100), 16 << 10);
        // 100 streams share 1 MiB: a quarter of each one's 10,485 bytes.
        assert_eq!(at(65_535, 1 << 20, 100), 2_621);
        assert_eq!(at(1_000, 1 << 20, 1), 250);
        assert_eq!(at(1, 1, 100), 1);
    }

    #[test]
    fn event_stream_content_type() {
        assert!(is_event_stream(Some("text/event-stream; charset=utf-8")));
        assert!(is_event_stream(Some("Text/Event-Stream")));
        assert!(!is_event_stream(Some("text/plain")));
        assert!(!is_event_stream(None));
    }
}

//! Cluster mode: many gateways act as one through Redis.
//!
//! - **Publish** is one Lua script per batch, so cursor assignment, history
//!   and notification are atomic and in one order for every instance: `INCR`
//!   a global counter, `XADD` to the channel's stream (capped at
//!   `history.size`, entries older than `history.ttl` ignored), `PUBLISH` the
//!   encoded event. O(1) Redis commands per event, whatever the number of
//!   clients or instances.
//! - **Subscribe** registers the client locally; an instance `SUBSCRIBE`s in
//!   Redis only to channels that have local clients, all over one pub/sub
//!   connection, and waits for the confirmation before it reads history, so
//!   nothing falls between replay and live (an event in both is dropped by the
//!   stream's cursor check).
//! - **Faults**: while Redis is away new subscriptions and publishes get 503,
//!   open streams stay and get a comment; when it returns, every local
//!   channel catches up from its stream history after the last cursor seen.
//!
//! All keys share the `{prefix}` hash tag, so one script touches one slot
//! (Redis Cluster works, without spreading this load over shards).

mod records;

use super::cursor;
use super::local::{Confirm, Local};
use super::{
    Broker, BrokerError, Delivery, Event, HubStats, Leases, Payload, PublishReport, Replay, Resume,
    Source, Subscriber,
};
use crate::metrics::Metrics;
use crate::wire;
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use redis::aio::ConnectionManager;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot, RwLock};

const PUBLISH_SCRIPT: &str = r#"
local p, size, ttl, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local keep = ttl + 604800000
local out = {}
local i = 5
while i <= #ARGV do
  local ch, id, kind, body, origin = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  i = i + 5
  if kind == 'c' then
    redis.call('PUBLISH', p..':n:'..ch, '0 c '..now..'\n')
    table.insert(out, 0)
  elseif id ~= '' and not redis.call('SET', p..':d:'..#ch..':'..ch..':'..id, '1', 'NX', 'PX', ttl) then
    table.insert(out, -1)
  else
    local seq = redis.call('INCR', p..':seq')
    local h = p..':h:'..ch
    if size > 0 then
      local len = redis.call('XLEN', h)
      if len >= size then
        local gone = redis.call('XRANGE', h, '-', '+', 'COUNT', len - size + 1)
        local last = gone[#gone]
        if last then
          redis.call('SET', p..':t:'..ch, string.match(last[1], '^(%d+)'), 'PX', keep)
        end
      end
      redis.call('XADD', h, 'MAXLEN', size, seq..'-0', 'k', kind, 'b', body, 't', now, 'o', origin)
      redis.call('PEXPIRE', h, ttl)
    else
      redis.call('SET', p..':t:'..ch, seq, 'PX', keep)
    end
    redis.call('SET', p..':l:'..ch, seq, 'PX', keep)
    redis.call('PUBLISH', p..':n:'..ch, seq..' '..kind..' '..now..' '..origin..'\n'..body)
    table.insert(out, seq)
  end
end
return out
"#;

#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: String,
    /// PEM of the CAs for a `rediss://` URL; None: the system's roots.
    pub ca: Option<Vec<u8>>,
    pub prefix: String,
    pub history_size: usize,
    pub history_ttl: Duration,
}

enum Command {
    /// Subscribe upstream; answered with the cursor read just before.
    Subscribe(Vec<String>, oneshot::Sender<redis::RedisResult<u64>>),
    Unsubscribe(Vec<String>),
}

/// Why a connected period ended.
#[derive(Debug)]
enum Lost {
    Redis(redis::RedisError),
    PubSubClosed,
    Subscribe(String),
}

impl From<redis::RedisError> for Lost {
    fn from(e: redis::RedisError) -> Lost {
        Lost::Redis(e)
    }
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::Redis(e) => e.fmt(f),
            Lost::PubSubClosed => f.write_str("pub/sub connection closed"),
            Lost::Subscribe(e) => write!(f, "subscribe failed: {e}"),
        }
    }
}

/// Events per publish script: each call stays short, so one huge publish
/// neither blocks Redis nor outlives the response timeout.
const PUBLISH_CHUNK: usize = 1000;
/// How long a command may take before it counts as failed. Long enough to
/// sit out a stall (a fork for BGSAVE, a paused process); readiness does not
/// wait for it — the health probe below decides that.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a publisher waits for one publish script. A stall longer than
/// this answers 503 (the outcome is then unknown); a shorter one just waits.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often, and how patiently, the health probe pings.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether an error means the connection is gone (as opposed to a slow
/// answer, whose outcome is unknown and which the probe judges).
fn connection_lost(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Subscribe(c, _) => write!(f, "Subscribe({c:?})"),
            Command::Unsubscribe(c) => write!(f, "Unsubscribe({c:?})"),
        }
    }
}

#[derive(Debug)]
pub struct RedisBroker {
    settings: RedisSettings,
    /// `{prefix}`: the hash tag that keeps every key in one slot.
    keys: String,
    client: redis::Client,
    conn: RwLock<Option<ConnectionManager>>,
    script: redis::Script,
    lease_script: redis::Script,
    /// Recorded backend replies (`records`).
    records_script: redis::Script,
    /// Random per process: who holds a poll lease.
    instance: String,
    epoch: AtomicU64,
    healthy: AtomicBool,
    last_error: Mutex<String>,
    local: Local,
    commands: mpsc::UnboundedSender<Command>,
    command_rx: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    metrics: Arc<Metrics>,
    tail: super::Tail,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// When an event published at unix `ms` was published, as an `Instant`.
fn instant_of(ms: u64) -> Instant {
    let age = now_ms().saturating_sub(ms);
    Instant::now()
        .checked_sub(Duration::from_millis(age))
        .unwrap_or_else(Instant::now)
}

/// What a stored or notified entry holds; one letter on the wire, in the
/// Lua script and in history entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// An SSE event without its `id:` line (added from the cursor on delivery).
    Message,
    /// GRIP `http-stream` content, passed on verbatim.
    Raw,
    /// GRIP `action: close` (notification only, never stored).
    Close,
    /// A whole SSE frame with its own `id:`, for every client: an event of
    /// a recorded reply (`records`), its number the seq.
    Frame,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Message => "m",
            Kind::Raw => "r",
            Kind::Close => "c",
            Kind::Frame => "f",
        }
    }

    /// None for anything else: an entry we cannot read is skipped, never guessed.
    fn parse(b: &[u8]) -> Option<Kind> {
        match b {
            b"m" => Some(Kind::Message),
            b"r" => Some(Kind::Raw),
            b"c" => Some(Kind::Close),
            b"f" => Some(Kind::Frame),
            _ => None,
        }
    }
}

/// One notification or history entry, before it becomes a frame.
#[derive(Debug, PartialEq, Eq)]
struct Wire {
    seq: u64,
    kind: Kind,
    at_ms: u64,
    origin: Origin,
    body: Bytes,
}

/// Where an entry's event came from and how long the publishing instance
/// took from receiving it to publishing it: `<source letter><µs>` on the
/// wire ("w153"). Entries written before it existed read as a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Origin {
    source: Source,
    ingest_us: u32,
}

impl Origin {
    fn of(ev: &Event, published: Instant) -> Origin {
        Origin {
            source: ev.source,
            ingest_us: super::ingest_us(ev.received, published),
        }
    }

    fn encode(self) -> String {
        format!("{}{}", char::from(self.source.letter()), self.ingest_us)
    }

    fn parse(s: &[u8]) -> Origin {
        let parsed = s.split_first().and_then(|(letter, us)| {
            Some(Origin {
                source: Source::from_letter(*letter)?,
                ingest_us: std::str::from_utf8(us).ok()?.parse().ok()?,
            })
        });
        parsed.unwrap_or(Origin {
            source: Source::Publish,
            ingest_us: 0,
        })
    }
}

/// `"<seq> <kind> <ms> <origin>\n<body>"` (an older instance sends no origin).
fn parse_notification(payload: &[u8]) -> Option<Wire> {
    let nl = payload.iter().position(|b| *b == b'\n')?;
    let head = std::str::from_utf8(&payload[..nl]).ok()?;
    let mut parts = head.split(' ');
    let seq = parts.next()?.parse().ok()?;
    let kind = Kind::parse(parts.next()?.as_bytes())?;
    let at_ms = parts.next()?.parse().ok()?;
    let origin = Origin::parse(parts.next().unwrap_or("").as_bytes());
    Some(Wire {
        seq,
        kind,
        at_ms,
        origin,
        body: Bytes::copy_from_slice(&payload[nl + 1..]),
    })
}

impl RedisBroker {
    pub fn new(
        settings: RedisSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<RedisBroker>, redis::RedisError> {
        let client = super::redis_client::client(&settings.url, settings.ca.as_deref())?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(RedisBroker {
            keys: format!("{{{}}}", settings.prefix),
            settings,
            client,
            conn: RwLock::new(None),
            script: redis::Script::new(PUBLISH_SCRIPT),
            lease_script: redis::Script::new(
                "local v = redis.call('GET', KEYS[1]) \
                 if v == false or v == ARGV[1] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1 end \
                 return 0",
            ),
            records_script: redis::Script::new(records::SCRIPT),
            instance: format!("{:016x}", rand::random::<u64>()),
            epoch: AtomicU64::new(0),
            healthy: AtomicBool::new(false),
            last_error: Mutex::new("not connected yet".into()),
            local: Local::default(),
            commands: tx,
            command_rx: Mutex::new(Some(rx)),
            metrics,
            tail: super::Tail::default(),
        }))
    }

    fn unavailable(&self) -> BrokerError {
        let why = self
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        BrokerError::Unavailable(format!("redis: {why}"))
    }

    fn set_down(&self, why: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = why.clone();
        }
        let was = self.healthy.swap(false, Ordering::AcqRel);
        if was {
            tracing::warn!(error = %why, "redis lost; new subscriptions get 503 until it returns");
            // Open streams stay; tell them why nothing arrives.
            self.local
                .broadcast(&Delivery::uncounted(Bytes::from_static(
                    b": broker unavailable, catching up when it returns\n\n",
                )));
        }
    }

    fn set_up(&self) {
        if !self.healthy.swap(true, Ordering::AcqRel) {
            tracing::info!(url = %super::redis_client::redacted(&self.settings.url), "redis answering");
        }
    }

    /// Ping once a second on the command connection while a session is up:
    /// readiness follows whether Redis answers now, so a stall makes the
    /// instance unready for as long as it lasts, not for good.
    async fn probe(&self, mut conn: ConnectionManager) {
        let mut t = tokio::time::interval(PROBE_EVERY);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            let ping = redis::cmd("PING");
            match tokio::time::timeout(PROBE_TIMEOUT, ping.query_async::<String>(&mut conn)).await {
                Ok(Ok(_)) => self.set_up(),
                Ok(Err(e)) => self.set_down(e.to_string()),
                Err(_) => self.set_down("no answer to PING within 2s".into()),
            }
        }
    }

    fn cursor(&self, seq: u64) -> String {
        cursor::format(self.epoch.load(Ordering::Acquire), seq)
    }

    fn frame_of(&self, w: &Wire) -> Option<Delivery> {
        let cursor = self.cursor(w.seq);
        let (frame, grip_only) = match w.kind {
            Kind::Message => {
                let mut out = BytesMut::with_capacity(w.body.len() + cursor.len() + 6);
                out.put_slice(b"id: ");
                out.put_slice(cursor.as_bytes());
                out.put_u8(b'\n');
                out.put_slice(&w.body);
                (out.freeze(), false)
            }
            Kind::Raw => {
                let g = wire::grip_frame(&w.body, &cursor);
                (g.frame, !g.sse)
            }
            Kind::Frame => (w.body.clone(), false),
            Kind::Close => return None,
        };
        Some(Delivery {
            seq: w.seq,
            frame,
            published: instant_of(w.at_ms),
            ingest_us: w.origin.ingest_us,
            source: w.origin.source,
            grip_only,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, BrokerError> {
        if !self.healthy.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        self.conn
            .read()
            .await
            .clone()
            .ok_or_else(|| self.unavailable())
    }

    /// Read (and on first use set) the shared epoch: cursors of a Redis that
    /// lost its data must not be confused with the new ones.
    async fn load_epoch(&self, conn: &mut ConnectionManager) -> redis::RedisResult<u64> {
        let key = format!("{}:epoch", self.keys);
        let _: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(now_ms())
            .arg("NX")
            .query_async(conn)
            .await?;
        let epoch: u64 = redis::cmd("GET").arg(&key).query_async(conn).await?;
        Ok(epoch)
    }

    /// Missed events of one channel after `after`, or None for a gap.
    async fn history(
        &self,
        conn: &mut ConnectionManager,
        channel: &str,
        after: u64,
    ) -> redis::RedisResult<Option<Vec<Wire>>> {
        let k = &self.keys;
        let (trimmed, last, entries): (Option<u64>, Option<u64>, redis::streams::StreamRangeReply) =
            redis::pipe()
                .cmd("GET")
                .arg(format!("{k}:t:{channel}"))
                .cmd("GET")
                .arg(format!("{k}:l:{channel}"))
                .cmd("XRANGE")
                .arg(format!("{k}:h:{channel}"))
                .arg(format!("{}-0", after + 1))
                .arg("+")
                .query_async(conn)
                .await?;
        if trimmed.is_some_and(|t| t > after) {
            return Ok(None);
        }
        let oldest_ok = now_ms().saturating_sub(self.settings.history_ttl.as_millis() as u64);
        let mut out = Vec::with_capacity(entries.ids.len());
        for e in entries.ids {
            let seq =
                e.id.split('-')
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            let at_ms: u64 = e.get("t").unwrap_or(0);
            if at_ms < oldest_ok {
                return Ok(None);
            }
            let kind: Vec<u8> = e.get("k").unwrap_or_default();
            let Some(kind) = Kind::parse(&kind) else {
                tracing::warn!(channel, seq, "history entry of an unknown kind skipped");
                continue;
            };
            let body: Vec<u8> = e.get("b").unwrap_or_default();
            let origin: Vec<u8> = e.get("o").unwrap_or_default();
            out.push(Wire {
                seq,
                kind,
                at_ms,
                origin: Origin::parse(&origin),
                body: Bytes::from(body),
            });
        }
        if out.is_empty() && last.is_some_and(|l| l > after) {
            return Ok(None);
        }
        Ok(Some(out))
    }

    async fn missed(&self, channels: &[String], after: &str) -> Result<Replay, BrokerError> {
        let mut conn = self.connection().await?;
        let head_seq: u64 = redis::cmd("GET")
            .arg(format!("{}:seq", self.keys))
            .query_async::<Option<u64>>(&mut conn)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("redis: {e}")))?
            .unwrap_or(0);
        let reset = Replay {
            reset: Some(wire::reset(&self.cursor(head_seq))),
            head: head_seq,
            ..Replay::default()
        };
        let Some((epoch, seq)) = cursor::parse(after) else {
            return Ok(reset);
        };
        if epoch != self.epoch.load(Ordering::Acquire) {
            return Ok(reset);
        }
        let mut frames = Vec::new();
        for ch in channels {
            match self.history(&mut conn, ch, seq).await {
                Ok(Some(wires)) => frames.extend(wires.iter().filter_map(|w| self.frame_of(w))),
                Ok(None) => return Ok(reset),
                Err(e) => return Err(BrokerError::Unavailable(format!("redis: {e}"))),
            }
        }
        frames.sort_by_key(|d| d.seq);
        frames.dedup_by_key(|d| d.seq);
        Ok(Replay {
            frames,
            head: head_seq,
            ..Replay::default()
        })
    }

    /// One publish script for at most `PUBLISH_CHUNK` events.
    async fn publish_chunk(
        &self,
        conn: &mut ConnectionManager,
        events: &[Event],
    ) -> Result<PublishReport, BrokerError> {
        let mut inv = self.script.prepare_invoke();
        let published = Instant::now();
        inv.arg(&self.keys)
            .arg(self.settings.history_size)
            .arg(self.settings.history_ttl.as_millis().max(1) as u64)
            .arg(now_ms());
        for ev in events {
            let (kind, body): (Kind, Bytes) = match &ev.payload {
                Payload::Message { event, data } => {
                    // The frame without its id line: the cursor is known
                    // only inside the script. Sources check event names; a
                    // name that still cannot be framed is dropped, as in the
                    // memory broker.
                    let body = wire::encode(None, event.as_deref(), data)
                        .or_else(|_| wire::encode(None, None, data))
                        .unwrap_or_default();
                    (Kind::Message, body)
                }
                Payload::Raw(content) => (Kind::Raw, content.clone()),
                Payload::Close => (Kind::Close, Bytes::new()),
            };
            inv.arg(&ev.channel)
                .arg(ev.dedupe_id.as_deref().unwrap_or(""))
                .arg(kind.as_str())
                .arg(&body[..])
                .arg(Origin::of(ev, published).encode());
        }
        let answer =
            tokio::time::timeout(PUBLISH_TIMEOUT, inv.invoke_async::<Vec<i64>>(conn)).await;
        let seqs = match answer {
            Ok(Ok(seqs)) => seqs,
            Ok(Err(e)) => {
                // A lost connection is down; any other error leaves the
                // connection up, and the probe judges readiness.
                if connection_lost(&e) {
                    self.set_down(e.to_string());
                }
                return Err(BrokerError::Unavailable(format!("redis: {e}")));
            }
            // Redis may still run the script once it answers again: the
            // publisher is told so, and a retry with event ids is safe.
            Err(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "redis did not answer within {}s; the events may still be published (retry with ids to stay exactly-once)",
                    PUBLISH_TIMEOUT.as_secs()
                )))
            }
        };
        let mut report = PublishReport::default();
        let mut recent = self.tail.is_watched().then(Vec::new);
        for (ev, seq) in events.iter().zip(seqs) {
            match (seq, &ev.payload) {
                (_, Payload::Close) => report.closed += 1,
                (s, _) if s < 0 => report.duplicates += 1,
                (s, _) => {
                    report.published += 1;
                    if let Some(r) = &mut recent {
                        r.push(super::tail::entry(ev, self.cursor(s as u64)));
                    }
                }
            }
        }
        if let Some(r) = recent {
            self.tail.record(r);
        }
        self.metrics.published.inc_by(report.published as u64);
        self.metrics.duplicates.inc_by(report.duplicates as u64);
        Ok(report)
    }

    /// The cursor of the newest event, for a live subscriber's first `id:`.
    async fn head(&self) -> Result<u64, BrokerError> {
        let mut conn = self.connection().await?;
        let seq: Option<u64> = redis::cmd("GET")
            .arg(format!("{}:seq", self.keys))
            .query_async(&mut conn)
            .await
            .map_err(|e| BrokerError::Unavailable(format!("redis: {e}")))?;
        Ok(seq.unwrap_or(0))
    }

    /// Keep the pub/sub connection (and the command connection) alive for
    /// the life of the process: connect, resubscribe, catch up, relay.
    async fn keep_connected(&self) {
        let Some(mut commands) = self.command_rx.lock().ok().and_then(|mut r| r.take()) else {
            return;
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session(&mut commands).await {
                Ok(()) => return,
                Err(why) => self.set_down(why.to_string()),
            }
            let jitter = backoff.mul_f64(rand::random::<f64>());
            tokio::time::sleep(backoff / 2 + jitter / 2).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            if self.healthy.load(Ordering::Acquire) {
                backoff = Duration::from_millis(100);
            }
        }
    }

    /// One connected period; Err when the connection is lost.
    async fn session(&self, commands: &mut mpsc::UnboundedReceiver<Command>) -> Result<(), Lost> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(1);
        let mut conn = self
            .client
            .get_connection_manager_with_config(config)
            .await?;
        let epoch = self.load_epoch(&mut conn).await?;
        let old_epoch = self.epoch.swap(epoch, Ordering::AcqRel);
        if old_epoch != 0 && old_epoch != epoch {
            // Redis came back without its data: cursors restarted. Streams
            // reconnect and get a reset instead of silently missing events,
            // and the positions of the old cursors are forgotten, or every
            // new (smaller) cursor would look like a duplicate.
            tracing::warn!(
                "redis lost its data; closing local streams so they resume with a reset"
            );
            self.local.forget_cursors();
            self.local.close_all();
        }
        let (mut sink, mut stream) = self.client.get_async_pubsub().await?.split();
        let subscribed = self.local.channels();
        if !subscribed.is_empty() {
            let names: Vec<String> = subscribed.iter().map(|c| self.notify_key(c)).collect();
            sink.subscribe(&names).await?;
        }
        *self.conn.write().await = Some(conn.clone());
        // Catch up: what was published while we were away, from where each
        // channel was (a channel that delivered nothing yet: from where it
        // subscribed).
        for ch in &subscribed {
            if let Some(id) = records::record_of(ch) {
                let after = self.local.delivered_up_to(ch);
                self.catch_up_record(&mut conn, ch, id, after).await?;
                continue;
            }
            let after = self.local.caught_up_to(ch);
            match self.history(&mut conn, ch, after).await? {
                Some(wires) => {
                    for w in wires {
                        if let Some(d) = self.frame_of(&w) {
                            self.local.deliver(ch, &d, &self.metrics);
                        }
                    }
                }
                None => self.local.deliver(
                    ch,
                    &Delivery::uncounted(wire::reset(&self.cursor(after))),
                    &self.metrics,
                ),
            }
        }
        self.set_up();
        let probe = self.probe(conn.clone());
        tokio::pin!(probe);
        loop {
            tokio::select! {
                _ = &mut probe => {}
                msg = stream.next() => {
                    let Some(msg) = msg else { return Err(Lost::PubSubClosed) };
                    let Some(channel) = msg.get_channel_name().strip_prefix(&format!("{}:n:", self.keys)) else { continue };
                    let Some(wire) = parse_notification(msg.get_payload_bytes()) else { continue };
                    if wire.kind == Kind::Close {
                        self.local.close_channel(channel);
                    } else if let Some(d) = self.frame_of(&wire) {
                        self.local.deliver(channel, &d, &self.metrics);
                    }
                }
                cmd = commands.recv() => {
                    let Some(cmd) = cmd else { return Ok(()) };
                    match cmd {
                        Command::Subscribe(chs, done) => {
                            // The cursor before subscribing: everything after
                            // it reaches these channels, live or by catch-up.
                            let floor = redis::cmd("GET")
                                .arg(format!("{}:seq", self.keys))
                                .query_async::<Option<u64>>(&mut conn)
                                .await;
                            let names: Vec<String> = chs.iter().map(|c| self.notify_key(c)).collect();
                            let r = match floor {
                                Ok(f) => sink.subscribe(&names).await.map(|_| f.unwrap_or(0)),
                                Err(e) => Err(e),
                            };
                            let lost = r.as_ref().err().filter(|e| connection_lost(e)).map(|e| e.to_string());
                            let _ = done.send(r);
                            if let Some(e) = lost {
                                return Err(Lost::Subscribe(e));
                            }
                        }
                        Command::Unsubscribe(chs) => {
                            let names: Vec<String> = chs.iter().map(|c| self.notify_key(c)).collect();
                            sink.unsubscribe(&names).await?;
                        }
                    }
                }
            }
        }
    }

    fn notify_key(&self, channel: &str) -> String {
        format!("{}:n:{channel}", self.keys)
    }
}

#[async_trait]
impl Leases for RedisBroker {
    async fn lease(&self, key: &str, ttl: Duration) -> bool {
        let Ok(mut conn) = self.connection().await else {
            return false;
        };
        self.lease_script
            .key(format!("{}:lease:{key}", self.keys))
            .arg(&self.instance)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|v| v == 1)
            .unwrap_or(false)
    }

    async fn store_snapshot(&self, key: &str, frame: &[u8], ttl: Duration) {
        if let Ok(mut conn) = self.connection().await {
            let _: redis::RedisResult<()> = redis::cmd("SET")
                .arg(format!("{}:snap:{key}", self.keys))
                .arg(frame)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .query_async(&mut conn)
                .await;
        }
    }

    async fn load_snapshot(&self, key: &str) -> Option<Bytes> {
        let mut conn = self.connection().await.ok()?;
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("{}:snap:{key}", self.keys))
            .query_async(&mut conn)
            .await
            .ok()?;
        v.map(Bytes::from)
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish(&self, events: Vec<Event>) -> Result<PublishReport, BrokerError> {
        let mut report = PublishReport::default();
        if events.is_empty() {
            return Ok(report);
        }
        let mut conn = self.connection().await?;
        // In chunks: each script is short, and if Redis fails midway the
        // publisher learns how many events were committed.
        for chunk in events.chunks(PUBLISH_CHUNK) {
            match self.publish_chunk(&mut conn, chunk).await {
                Ok(r) => {
                    report.published += r.published;
                    report.duplicates += r.duplicates;
                    report.closed += r.closed;
                }
                Err(e) if report == PublishReport::default() => return Err(e),
                Err(e) => {
                    return Err(BrokerError::Interrupted {
                        report,
                        why: e.to_string(),
                    })
                }
            }
        }
        Ok(report)
    }

    async fn subscribe(
        &self,
        sub: &Arc<Subscriber>,
        channels: &[String],
        resume: &Resume,
    ) -> Result<Replay, BrokerError> {
        if !self.healthy.load(Ordering::Acquire) {
            return Err(self.unavailable());
        }
        let (tx, rx) = oneshot::channel();
        let mut sent = false;
        let (fresh, waits) = self.local.add(sub, channels, |fresh| {
            sent = self
                .commands
                .send(Command::Subscribe(fresh.to_vec(), tx))
                .is_ok();
        });
        if !fresh.is_empty() {
            let floor = match tokio::time::timeout(Duration::from_secs(5), rx).await {
                Ok(Ok(Ok(floor))) if sent => Some(floor),
                _ => None,
            };
            let confirmed = floor.is_some();
            self.local.confirm(&fresh, confirmed, floor.unwrap_or(0));
            if !confirmed {
                self.unsubscribe(sub, channels);
                return Err(self.unavailable());
            }
        }
        // Another client's SUBSCRIBE of the same channel may still be in flight.
        for mut w in waits {
            let ok = tokio::time::timeout(
                Duration::from_secs(5),
                w.wait_for(|c| *c != Confirm::Pending),
            )
            .await;
            if !matches!(ok, Ok(Ok(c)) if *c == Confirm::Ok) {
                self.unsubscribe(sub, channels);
                return Err(self.unavailable());
            }
        }
        let replay = match resume {
            Resume::Live => self.head().await.map(|head| Replay {
                start: Some(self.cursor(head)),
                head,
                ..Replay::default()
            }),
            Resume::After(after) => self.missed(channels, after).await,
        };
        replay.inspect_err(|_| self.unsubscribe(sub, channels))
    }

    fn unsubscribe(&self, sub: &Subscriber, channels: &[String]) {
        // Sent under the registry's lock, so Redis sees subscribes and
        // unsubscribes of one channel in the order the registry made them.
        self.local.remove(sub, channels, |emptied| {
            let _ = self.commands.send(Command::Unsubscribe(emptied));
        });
    }

    async fn ready(&self) -> Result<(), BrokerError> {
        if self.healthy.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(self.unavailable())
        }
    }

    async fn run(self: Arc<Self>) {
        self.keep_connected().await
    }

    fn leases(&self) -> Option<&dyn Leases> {
        Some(self)
    }

    fn busiest(&self, n: usize) -> Vec<super::ChannelStat> {
        self.local.busiest(n)
    }

    fn tail(&self) -> Option<&super::Tail> {
        Some(&self.tail)
    }

    fn cursor(&self, seq: u64) -> String {
        RedisBroker::cursor(self, seq)
    }

    fn identity(&self) -> String {
        // The URL may hold a password: only a digest of it leaves the process.
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{}#{}", self.settings.url, self.keys).as_bytes());
        format!("redis:{}", hex::encode(&digest[..16]))
    }

    fn stats(&self) -> HubStats {
        let (channels, subscriptions) = self.local.counts();
        HubStats {
            channels,
            subscriptions,
            history_events: 0,
            cursor: self.cursor(self.local.max_seq()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_parse() {
        let w = parse_notification(b"42 m 1700000000000 w153\ndata: x\n\n").unwrap();
        assert_eq!(
            w,
            Wire {
                seq: 42,
                kind: Kind::Message,
                at_ms: 1_700_000_000_000,
                origin: Origin {
                    source: Source::Webhook,
                    ingest_us: 153
                },
                body: Bytes::from_static(b"data: x\n\n")
            }
        );
        // From an instance that sends no origin yet: a publish.
        let old = parse_notification(b"42 m 1700000000000\ndata: x\n\n").unwrap();
        assert_eq!(old.origin.source, Source::Publish);
        assert!(parse_notification(b"garbage").is_none());
        assert!(parse_notification(b"x m 1\n").is_none());
    }
}

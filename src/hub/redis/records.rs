//! Records in Redis, so that any instance serves any record: a reply
//! recorded behind one gateway resumes behind another.
//!
//! Keys, all under the broker's `{prefix}` hash tag (one slot):
//! - `{p}:rec:<id>`: a hash — `route`, `cred` (the credentials digest),
//!   `n` (events stored), `end` (the reason, once ended), `seen` (when the
//!   writer last said it was alive, unix ms); it expires at the ttl.
//! - `{p}:rec:<id>:ev`: the frames, a list (event n at index n-1).
//! - `{p}:recs:<route>`: the route's records by deadline (a sorted set),
//!   `{p}:recsz:<route>` their sizes, `{p}:recb:<route>` their total: what
//!   `max_total` evicts from, oldest first.
//!
//! Readers are clients of the broker's own pub/sub: a record's frames are
//! published on the channel `#rec:<id>` (a name no client can subscribe to:
//! `#` is outside the channel alphabet) as `f`rame entries, passed to every
//! client as they are (they carry their own `id:`), and its end as a `close`. A reader subscribes (and waits for
//! Redis's confirmation) before it reads the list, so nothing falls in
//! between; the stream drops what it has twice by its cursor, the event
//! number.
//!
//! A writer says it is alive every few seconds; an instance with readers of
//! a record whose writer went quiet (a crashed or killed gateway) ends it
//! as `interrupted`, once it has itself been connected long enough to know.

use super::{now_ms, RedisBroker};
use crate::hub::record::{
    Appended, Credentials, EndReason, Following, NewRecord, RecordError, RecordId, Records,
};
use crate::hub::{Broker, Delivery, Resume, Subscriber};
use crate::wire;
use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::ConnectionManager;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The broker channel of a record's notifications.
const CHANNEL_PREFIX: &str = "#rec:";
/// A record whose writer said nothing for this long is ended.
const STALE: Duration = Duration::from_secs(30);
/// How often readers' records are looked at.
const CHECK_EVERY: Duration = Duration::from_secs(5);

pub(super) const SCRIPT: &str = r#"
local p, op, rid, route, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
-- the ends of the `ssegate.incomplete` markers after their id line
local ttl_tail, evicted_tail = ARGV[6], ARGV[7]
local meta = p..':rec:'..rid
local ev = meta..':ev'
local zs, sizes, total = p..':recs:'..route, p..':recsz:'..route, p..':recb:'..route
local function notify(id, n, body)
  redis.call('PUBLISH', p..':n:#rec:'..id, n..' f '..now..'\n'..body)
end
local function close(id)
  redis.call('PUBLISH', p..':n:#rec:'..id, '0 c '..now..'\n')
end
local function live(st)
  return st[1] and (not st[2] or st[2] == '')
end
-- store a frame as event n of the record
local function store(n, frame)
  redis.call('RPUSH', ev, frame)
  redis.call('PEXPIRE', ev, redis.call('PTTL', meta))
  redis.call('HSET', meta, 'n', n, 'seen', now)
  redis.call('HINCRBY', sizes, rid, #frame)
  notify(rid, n, frame)
  return redis.call('INCRBY', total, #frame)
end
-- forget a record of this route; its readers are told why unless it ended
local function marker(id, k, tail)
  return 'id: '..id..'.'..k..tail
end
local function drop(id, tail)
  local size = tonumber(redis.call('HGET', sizes, id) or '0')
  redis.call('HDEL', sizes, id)
  redis.call('ZREM', zs, id)
  redis.call('DECRBY', total, size)
  local m = p..':rec:'..id
  local st = redis.call('HMGET', m, 'n', 'end')
  if live(st) then
    local k = tonumber(st[1]) + 1
    notify(id, k, marker(id, k, tail))
  end
  close(id)
  redis.call('DEL', m, m..':ev')
end
-- expired records of the route leave the accounting
if route ~= '' then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zs, '-inf', now)) do
    drop(id, ttl_tail)
  end
end
if op == 'start' then
  local ttl = tonumber(ARGV[9])
  redis.call('HSET', meta, 'route', route, 'cred', ARGV[8], 'n', 0, 'seen', now)
  redis.call('PEXPIRE', meta, ttl)
  redis.call('ZADD', zs, now + ttl, rid)
  redis.call('HSET', sizes, rid, 0)
  redis.call('INCRBY', total, 0)
  for _, k in ipairs({zs, sizes, total}) do
    if redis.call('PTTL', k) < ttl + 60000 then redis.call('PEXPIRE', k, ttl + 60000) end
  end
  return 1
elseif op == 'append' then
  local n, frame, max = tonumber(ARGV[8]), ARGV[9], tonumber(ARGV[10])
  local st = redis.call('HMGET', meta, 'n', 'end')
  if not live(st) then return {0, 0} end
  local have = tonumber(st[1])
  if have >= n then return {1, 0} end
  if have ~= n - 1 then return {0, 0} end
  local t = store(n, frame)
  local kept, evicted = 1, 0
  while t > max do
    local oldest = redis.call('ZRANGE', zs, 0, 0)[1]
    if not oldest then break end
    drop(oldest, evicted_tail)
    evicted = evicted + 1
    if oldest == rid then kept = 0 end
    t = tonumber(redis.call('GET', total) or '0')
  end
  return {kept, evicted}
elseif op == 'end' then
  local reason, tail = ARGV[8], ARGV[9]
  local st = redis.call('HMGET', meta, 'n', 'end')
  if live(st) then
    if tail ~= '' then
      local k = tonumber(st[1]) + 1
      store(k, marker(rid, k, tail))
    end
    redis.call('HSET', meta, 'end', reason)
  end
  close(rid)
  return 1
elseif op == 'touch' then
  if live(redis.call('HMGET', meta, 'n', 'end')) then redis.call('HSET', meta, 'seen', now) end
  return 1
elseif op == 'check' then
  local stale, tail = tonumber(ARGV[8]), ARGV[9]
  local st = redis.call('HMGET', meta, 'n', 'end', 'seen')
  if not st[1] or not live(st) then
    close(rid)
    return 0
  end
  if tonumber(st[3]) < stale then
    local k = tonumber(st[1]) + 1
    store(k, marker(rid, k, tail))
    redis.call('HSET', meta, 'end', 'interrupted')
    close(rid)
    return 2
  end
  return 1
end
return redis.error_reply('unknown op')
"#;

/// A record's `route`, `cred` and `end` fields (all None: no such record).
type Meta = (Option<String>, Option<String>, Option<String>);

fn ended(meta: &Meta) -> bool {
    meta.2.as_ref().is_some_and(|e| !e.is_empty())
}

fn channel(id: RecordId) -> String {
    format!("{CHANNEL_PREFIX}{id}")
}

/// The record whose readers listen on `channel`, if it is a record's.
pub(super) fn record_of(channel: &str) -> Option<RecordId> {
    RecordId::parse(channel.strip_prefix(CHANNEL_PREFIX)?)
}

fn unavailable(e: redis::RedisError) -> RecordError {
    RecordError::Unavailable(format!("redis: {e}"))
}

impl RedisBroker {
    /// The shared script with its first arguments: prefix, op, record,
    /// route, now, and the markers' ends for expiry and eviction.
    fn record_op(&self, op: &str, id: RecordId, route: &str) -> redis::ScriptInvocation<'_> {
        let mut inv = self.records_script.prepare_invoke();
        inv.arg(&self.keys)
            .arg(op)
            .arg(id.to_string())
            .arg(route)
            .arg(now_ms())
            .arg(&wire::incomplete_tail(EndReason::Ttl.as_str())[..])
            .arg(&wire::incomplete_tail(EndReason::Evicted.as_str())[..]);
        inv
    }

    async fn records_conn(&self) -> Result<ConnectionManager, RecordError> {
        self.connection()
            .await
            .map_err(|e| RecordError::Unavailable(e.to_string()))
    }

    /// A record's state and its frames after `after`, read in one step.
    async fn read_frames(
        &self,
        conn: &mut ConnectionManager,
        id: RecordId,
        after: u64,
    ) -> redis::RedisResult<(Meta, Vec<Delivery>)> {
        let meta = format!("{}:rec:{id}", self.keys);
        let (state, frames): (Meta, Vec<Vec<u8>>) = redis::pipe()
            .atomic()
            .cmd("HMGET")
            .arg(&meta)
            .arg("route")
            .arg("cred")
            .arg("end")
            .cmd("LRANGE")
            .arg(format!("{meta}:ev"))
            .arg(after)
            .arg(-1)
            .query_async(conn)
            .await?;
        let published = Instant::now();
        let frames = frames
            .into_iter()
            .enumerate()
            .map(|(i, f)| Delivery::recorded(after + 1 + i as u64, Bytes::from(f), published))
            .collect();
        Ok((state, frames))
    }

    /// After an outage: a record's readers get the frames they missed, and
    /// are closed if it ended (or is gone) meanwhile.
    pub(super) async fn catch_up_record(
        &self,
        conn: &mut ConnectionManager,
        channel: &str,
        id: RecordId,
        after: u64,
    ) -> redis::RedisResult<()> {
        let (state, frames) = self.read_frames(conn, id, after).await?;
        for d in &frames {
            self.local.deliver(channel, d, &self.metrics);
        }
        if state.0.is_none() || ended(&state) {
            self.local.close_channel(channel);
        }
        Ok(())
    }

    /// End the records this instance has readers of whose writer went quiet.
    async fn check_records(&self) {
        let ids: Vec<RecordId> = self
            .local
            .channels()
            .iter()
            .filter_map(|c| record_of(c))
            .collect();
        if ids.is_empty() {
            return;
        }
        let Ok(mut conn) = self.connection().await else {
            return;
        };
        let stale = now_ms().saturating_sub(STALE.as_millis() as u64);
        let tail = wire::incomplete_tail(EndReason::Interrupted.as_str());
        for id in ids {
            let r: redis::RedisResult<i64> = self
                .record_op("check", id, "")
                .arg(stale)
                .arg(&tail[..])
                .invoke_async(&mut conn)
                .await;
            if r.as_ref().is_ok_and(|v| *v == 2) {
                tracing::warn!(record = %id, "a record's writer went quiet; ended it as interrupted");
                self.metrics
                    .record_ends
                    .with_label_values(&[EndReason::Interrupted.as_str()])
                    .inc();
            }
        }
    }
}

#[async_trait]
impl Records for RedisBroker {
    async fn start(&self, rec: &NewRecord, first: &Arc<Subscriber>) -> Result<(), RecordError> {
        let ch = vec![channel(rec.id)];
        self.subscribe(first, &ch, &Resume::Live)
            .await
            .map_err(|e| RecordError::Unavailable(e.to_string()))?;
        let mut conn = self.records_conn().await?;
        let r: redis::RedisResult<i64> = self
            .record_op("start", rec.id, &rec.route)
            .arg(rec.credentials.to_hex())
            .arg(rec.ttl.as_millis().max(1) as u64)
            .invoke_async(&mut conn)
            .await;
        r.map(drop).map_err(|e| {
            self.unsubscribe(first, &ch);
            unavailable(e)
        })
    }

    async fn append(&self, rec: &NewRecord, n: u64, frame: Bytes) -> Result<Appended, RecordError> {
        let mut conn = self.records_conn().await?;
        let (kept, evicted): (i64, u64) = self
            .record_op("append", rec.id, &rec.route)
            .arg(n)
            .arg(&frame[..])
            .arg(rec.max_total)
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        self.metrics.record_evictions.inc_by(evicted);
        Ok(if kept == 1 {
            Appended::Kept
        } else {
            Appended::Gone
        })
    }

    async fn end(&self, rec: &NewRecord, reason: EndReason) -> Result<(), RecordError> {
        let mut conn = self.records_conn().await?;
        let tail = match reason {
            EndReason::Complete => Bytes::new(),
            r => wire::incomplete_tail(r.as_str()),
        };
        let _: i64 = self
            .record_op("end", rec.id, &rec.route)
            .arg(reason.as_str())
            .arg(&tail[..])
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)?;
        self.metrics
            .record_ends
            .with_label_values(&[reason.as_str()])
            .inc();
        Ok(())
    }

    async fn touch(&self, rec: &NewRecord) {
        if let Ok(mut conn) = self.records_conn().await {
            let _: redis::RedisResult<i64> = self
                .record_op("touch", rec.id, &rec.route)
                .invoke_async(&mut conn)
                .await;
        }
    }

    async fn follow(
        &self,
        sub: &Arc<Subscriber>,
        id: RecordId,
        route: &str,
        after: u64,
        credentials: &Credentials,
    ) -> Result<Following, RecordError> {
        let ch = vec![channel(id)];
        self.subscribe(sub, &ch, &Resume::Live)
            .await
            .map_err(|e| RecordError::Unavailable(e.to_string()))?;
        let read = self.read_record(id, route, after, credentials).await;
        if !matches!(&read, Ok(f) if !f.ended) {
            self.unsubscribe(sub, &ch);
        }
        read
    }

    fn unfollow(&self, sub: &Subscriber, id: RecordId) {
        self.unsubscribe(sub, &[channel(id)]);
    }

    async fn run(self: Arc<Self>) {
        // Only an instance connected for a while can tell a quiet writer
        // from one that could not reach Redis either.
        let mut connected_since: Option<tokio::time::Instant> = None;
        let mut t = tokio::time::interval(CHECK_EVERY);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            t.tick().await;
            if !self.healthy.load(Ordering::Acquire) {
                connected_since = None;
                continue;
            }
            let since = *connected_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() >= STALE {
                self.check_records().await;
            }
        }
    }
}

impl RedisBroker {
    async fn read_record(
        &self,
        id: RecordId,
        route: &str,
        after: u64,
        credentials: &Credentials,
    ) -> Result<Following, RecordError> {
        let mut conn = self.records_conn().await?;
        let (state, frames) = self
            .read_frames(&mut conn, id, after)
            .await
            .map_err(unavailable)?;
        let (Some(their_route), Some(cred)) = (&state.0, &state.1) else {
            return Err(RecordError::Unknown);
        };
        if their_route != route {
            return Err(RecordError::Unknown);
        }
        if !Credentials::from_hex(cred).is_some_and(|c| c.matches(credentials)) {
            return Err(RecordError::Forbidden);
        }
        Ok(Following {
            frames,
            ended: ended(&state),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::record::NewRecord;
    use crate::hub::redis::RedisSettings;
    use crate::hub::SubState;
    use crate::metrics::Metrics;

    /// A redis-server on a unix socket in a temp dir (no port to race for);
    /// killed when dropped. None (the test skipped) when it is not
    /// installed, except under CI, which installs it.
    struct Server {
        child: std::process::Child,
        dir: tempfile::TempDir,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn server() -> Option<Server> {
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--unixsocket"])
            .arg(dir.path().join("r.sock"))
            .stdout(std::process::Stdio::null())
            .spawn();
        match child {
            Ok(child) => Some(Server { child, dir }),
            Err(_) => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "redis-server is missing under CI"
                );
                eprintln!("skipped: no redis-server (apt-get install redis-server)");
                None
            }
        }
    }

    async fn broker(s: &Server) -> Arc<RedisBroker> {
        let url = format!("unix://{}", s.dir.path().join("r.sock").display());
        let settings = RedisSettings {
            url,
            ca: None,
            prefix: "t".into(),
            history_size: 10,
            history_ttl: Duration::from_secs(60),
        };
        let b = RedisBroker::new(settings, Arc::new(Metrics::new())).unwrap();
        tokio::spawn(Broker::run(b.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !b.healthy.load(Ordering::Acquire) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis did not come up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        b
    }

    fn new_record() -> NewRecord {
        NewRecord {
            id: RecordId::random(),
            route: "/chat".into(),
            credentials: Credentials([1; 32]),
            ttl: Duration::from_secs(60),
            max_total: 1 << 20,
        }
    }

    fn frame(rec: &NewRecord, n: u64) -> Bytes {
        wire::encode(Some(&rec.id.event_id(n)), None, &format!("e{n}")).unwrap()
    }

    async fn frames_of(sub: &Subscriber) -> Vec<Bytes> {
        let mut out = Vec::new();
        for _ in 0..200 {
            sub.drain_into(&mut out);
            if sub.state() == SubState::Closed {
                sub.drain_into(&mut out);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        out.into_iter().map(|d| d.frame).collect()
    }

    #[tokio::test]
    async fn a_record_whose_writer_went_quiet_is_ended_for_its_readers() {
        let Some(s) = server() else { return };
        let b = broker(&s).await;
        let rec = new_record();
        let reader = Arc::new(Subscriber::new(1, 64));
        b.start(&rec, &reader).await.unwrap();
        b.append(&rec, 1, frame(&rec, 1)).await.unwrap();
        // A live writer: nothing happens.
        b.check_records().await;
        assert_eq!(reader.state(), SubState::Open);
        // Its last sign of life long ago: the record ends as interrupted.
        let mut conn = b.connection().await.unwrap();
        let _: () = redis::cmd("HSET")
            .arg(format!("{}:rec:{}", b.keys, rec.id))
            .arg("seen")
            .arg(0)
            .query_async(&mut conn)
            .await
            .unwrap();
        b.check_records().await;
        let got = frames_of(&reader).await;
        assert_eq!(
            got,
            [
                frame(&rec, 1),
                wire::incomplete(&rec.id.event_id(2), "interrupted")
            ]
        );
        // The writer, alive after all, finds its record ended.
        let kept = b.append(&rec, 2, frame(&rec, 2)).await.unwrap();
        assert_eq!(kept, Appended::Gone);
        let again = Arc::new(Subscriber::new(2, 64));
        let f = b
            .follow(&again, rec.id, "/chat", 2, &rec.credentials)
            .await
            .unwrap();
        assert!(f.ended && f.frames.is_empty());
    }

    #[tokio::test]
    async fn readers_catch_up_on_what_they_missed_and_the_end() {
        let Some(s) = server() else { return };
        let b = broker(&s).await;
        let rec = new_record();
        let reader = Arc::new(Subscriber::new(1, 64));
        b.start(&rec, &reader).await.unwrap();
        for n in 1..=3 {
            b.append(&rec, n, frame(&rec, n)).await.unwrap();
        }
        b.end(&rec, EndReason::Complete).await.unwrap();
        let live = frames_of(&reader).await;
        assert_eq!(live.len(), 3);
        // As after an outage in which the notifications of 2, 3 and the end
        // were lost: a reader whose channel delivered only 1 gets 2 and 3,
        // then the end.
        let ch = channel(rec.id);
        b.unfollow(&reader, rec.id);
        let late = Arc::new(Subscriber::new(2, 64));
        b.local.add(&late, std::slice::from_ref(&ch), |_| {});
        let mut conn = b.connection().await.unwrap();
        b.catch_up_record(&mut conn, &ch, rec.id, 1).await.unwrap();
        assert_eq!(frames_of(&late).await, [frame(&rec, 2), frame(&rec, 3)]);
        assert_eq!(late.state(), SubState::Closed);
    }

    #[test]
    fn record_channels_are_not_client_channels() {
        let id = RecordId::random();
        assert_eq!(record_of(&channel(id)), Some(id));
        assert!(crate::channel::check(&channel(id)).is_err());
        assert_eq!(record_of("news:1"), None);
    }
}

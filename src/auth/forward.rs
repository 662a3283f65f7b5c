//! Forward auth: before a stream is held, the backend is asked whether this
//! client may have it. The gateway sends a GET to the route's templated
//! `path` with the client's chosen headers (default Authorization and
//! Cookie); 2xx allows, 401/403 go back to the client with a short body,
//! anything else (including no answer) is a 502. Response headers listed in
//! `expose` become `{auth.x}` values for channel templates.
//!
//! Answers are cached for `cache_ttl` per identical (path, forwarded header
//! values), and identical requests that arrive together are sent to the
//! backend once (a reconnect storm costs one call per distinct credential).
//! The key is a SHA-256 digest of those values, so no raw credential is kept
//! in memory longer than the request, and none is ever logged.

use super::AuthError;
use crate::config::ForwardAuth;
use crate::metrics::Metrics;
use crate::outbound::{Body, Client, Pool};
use crate::template::{RenderError, Var};
use crate::values::RequestValues;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// Entries kept at most; past that the oldest go first.
const MAX_CACHED: usize = 10_000;
/// Bytes of a 401/403 body passed on to the client.
const MAX_REASON: usize = 200;

/// A path value is one segment: everything but RFC 3986 unreserved is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

type Key = [u8; 32];

/// What the backend said, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exposed response headers, (lower-cased name, value).
    Allowed(Vec<(String, String)>),
    Denied {
        forbidden: bool,
        reason: String,
    },
}

/// One answer being asked for; everyone with the same key waits on it.
type Flight = Arc<OnceCell<Result<Outcome, AuthError>>>;

#[derive(Debug, Default)]
struct Cache {
    /// Digest → (valid until, answer).
    answers: HashMap<Key, (Instant, Outcome)>,
    /// Keys in the order they were stored (every entry lives `cache_ttl`,
    /// so this is also the order in which they expire).
    order: VecDeque<(Key, Instant)>,
    inflight: HashMap<Key, Flight>,
}

/// A route's forward auth: its settings, its upstream and its cache.
#[derive(Debug)]
pub(crate) struct Forward {
    settings: Arc<ForwardAuth>,
    pool: Arc<Pool>,
    cache: Mutex<Cache>,
}

impl Forward {
    pub(crate) fn new(settings: Arc<ForwardAuth>, pool: Arc<Pool>) -> Forward {
        Forward {
            settings,
            pool,
            cache: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The auth path for this request: each value percent-encoded as one
    /// segment, and `.`/`..` refused so that no value can walk the path.
    pub(crate) fn render_path(&self, values: &RequestValues<'_>) -> Result<String, AuthError> {
        let mut bad = None;
        let path = self
            .settings
            .path
            .render(|v: &Var| {
                let raw = values.get(v)?;
                if raw.is_empty() || raw == "." || raw == ".." {
                    bad.get_or_insert_with(|| v.to_string());
                }
                Some(Cow::Owned(utf8_percent_encode(&raw, SEGMENT).to_string()))
            })
            .map_err(AuthError::BadPathValue)?;
        match bad {
            Some(v) => Err(AuthError::BadPathValue(RenderError::BadValue(
                v,
                "empty, `.` and `..` are not path segments".into(),
            ))),
            None => Ok(path),
        }
    }

    /// The client's headers that go to the backend: (name, value) pairs.
    fn forwarded<'r>(&self, values: &RequestValues<'r>) -> Vec<(&str, &'r [u8])> {
        let mut out = Vec::new();
        for name in &self.settings.forward_headers {
            for v in values.headers().get_all(name.as_str()) {
                out.push((name.as_str(), v.as_bytes()));
            }
        }
        out
    }

    /// Ask the backend (or the cache, or a request already in flight)
    /// whether this request may subscribe; the exposed headers if so.
    pub(crate) async fn check(
        &self,
        client: &Client,
        values: &RequestValues<'_>,
        path: &str,
        metrics: &Metrics,
    ) -> Result<Vec<(String, String)>, AuthError> {
        let headers = self.forwarded(values);
        let key = cache_key(path, &headers);
        let outcome = match self.cached(&key) {
            Some(o) => {
                metrics.auth_cache.with_label_values(&["hit"]).inc();
                o
            }
            None => self.ask_once(client, key, path, &headers, metrics).await?,
        };
        match outcome {
            Outcome::Allowed(exposed) => Ok(exposed),
            Outcome::Denied { forbidden, reason } => Err(AuthError::Denied { forbidden, reason }),
        }
    }

    /// One backend call for everyone asking the same thing at once.
    async fn ask_once(
        &self,
        client: &Client,
        key: Key,
        path: &str,
        headers: &[(&str, &[u8])],
        metrics: &Metrics,
    ) -> Result<Outcome, AuthError> {
        let flight = self.lock().inflight.entry(key).or_default().clone();
        let mut asked = false;
        let result = flight
            .get_or_init(|| {
                asked = true;
                self.ask(client, path, headers)
            })
            .await
            .clone();
        let how = if asked { "miss" } else { "coalesced" };
        metrics.auth_cache.with_label_values(&[how]).inc();
        let mut cache = self.lock();
        // Stored before the flight is dropped: a newcomer finds one or the other.
        if let Ok(o) = &result {
            self.remember(&mut cache, key, o);
        }
        if cache
            .inflight
            .get(&key)
            .is_some_and(|f| Arc::ptr_eq(f, &flight))
        {
            cache.inflight.remove(&key);
        }
        result
    }

    fn cached(&self, key: &Key) -> Option<Outcome> {
        if self.settings.cache_ttl.is_zero() {
            return None;
        }
        self.lock()
            .answers
            .get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, o)| o.clone())
    }

    fn remember(&self, cache: &mut Cache, key: Key, outcome: &Outcome) {
        if self.settings.cache_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        while cache.answers.len() >= MAX_CACHED || cache.order.len() >= 2 * MAX_CACHED {
            let Some((old, at)) = cache.order.pop_front() else {
                break;
            };
            // Only if this order entry is still the one that key was stored with.
            if cache
                .answers
                .get(&old)
                .is_some_and(|(until, _)| *until == at)
            {
                cache.answers.remove(&old);
            }
        }
        let until = now + self.settings.cache_ttl;
        cache.answers.insert(key, (until, outcome.clone()));
        cache.order.push_back((key, until));
    }

    async fn ask(
        &self,
        client: &Client,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> Result<Outcome, AuthError> {
        let upstream = &self.settings.upstream;
        let mut req = RequestHeader::build("GET", path.as_bytes(), Some(headers.len() + 1))
            .map_err(|_| AuthError::BackendStatus(0))?;
        for (k, v) in headers {
            // A value the client could send is a value we can send.
            let _ = req.append_header(k.to_string(), *v);
        }
        let resp = client
            .send(&self.pool, &req, Body::Empty)
            .await
            .map_err(|e| {
                tracing::warn!(%upstream, error = %e, "forward auth failed");
                AuthError::Unavailable(e)
            })?;
        let status = resp.status();
        match status {
            200..=299 => {
                let exposed = self
                    .settings
                    .expose
                    .iter()
                    .filter_map(|name| Some((name.clone(), resp.header(name)?.to_string())))
                    .collect();
                // The body of an allow means nothing; drop it with the connection.
                drop(resp);
                Ok(Outcome::Allowed(exposed))
            }
            401 | 403 => Ok(Outcome::Denied {
                forbidden: status == 403,
                reason: short_reason(resp, status).await,
            }),
            _ => {
                tracing::warn!(%upstream, status, "forward auth answered neither 2xx nor 401/403");
                Err(AuthError::BackendStatus(status))
            }
        }
    }
}

/// The first line of the backend's refusal, bounded; or a generic word.
async fn short_reason(mut resp: crate::outbound::Response<'_>, status: u16) -> String {
    let mut body = Vec::new();
    while body.len() < MAX_REASON {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(MAX_REASON)]).to_string();
    let line = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .chars()
        .filter(|c| !c.is_control())
        .collect::<String>();
    if line.is_empty() {
        if status == 401 {
            "unauthorized"
        } else {
            "forbidden"
        }
        .to_string()
    } else {
        line
    }
}

fn cache_key(path: &str, headers: &[(&str, &[u8])]) -> Key {
    let mut h = Sha256::new();
    h.update(path.as_bytes());
    for (k, v) in headers {
        // Lengths first: ("ab","c") and ("a","bc") must not collide.
        h.update((k.len() as u64).to_be_bytes());
        h.update(k.as_bytes());
        h.update((v.len() as u64).to_be_bytes());
        h.update(v);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstream;
    use crate::template::Template;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn fa(path: &str, port: u16, ttl: Duration) -> Forward {
        let settings = ForwardAuth {
            upstream: "app".into(),
            path: Template::parse(path).unwrap(),
            forward_headers: vec!["authorization".into()],
            expose: vec!["x-user".into()],
            cache_ttl: ttl,
        };
        let pool = Pool::new(Upstream {
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(5),
            fail_timeout: Duration::from_secs(1),
            ..Upstream::fixed("app", vec![([127, 0, 0, 1], port).into()])
        });
        Forward::new(Arc::new(settings), Arc::new(pool))
    }

    #[test]
    fn path_values_stay_one_segment() {
        let f = fa("/auth/{id}", 1, Duration::ZERO);
        let headers = http::HeaderMap::new();
        let render = |v: &str| {
            let params = vec![("id".to_string(), v.to_string())];
            f.render_path(&RequestValues::new(&params, None, &headers))
        };
        assert_eq!(render("a1").unwrap(), "/auth/a1");
        assert_eq!(render("a%2F..%2Fb").unwrap(), "/auth/a%2F..%2Fb");
        assert_eq!(render("x%3Fy%23z").unwrap(), "/auth/x%3Fy%23z");
        for bad in ["..", ".", "", "%2E%2E"] {
            assert!(
                matches!(render(bad), Err(AuthError::BadPathValue(_))),
                "{bad}"
            );
        }
        let none = f.render_path(&RequestValues::new(&[], None, &headers));
        assert!(matches!(none, Err(AuthError::BadPathValue(_))));
    }

    #[test]
    fn cache_keys_separate_values() {
        assert_ne!(
            cache_key("/a", &[("authorization", b"ab")]),
            cache_key("/a", &[("authorization", b"a"), ("authorization", b"b")])
        );
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_after_the_ttl_and_the_oldest_go_first() {
        let f = fa("/a", 1, Duration::from_secs(5));
        let no = Outcome::Denied {
            forbidden: true,
            reason: "no".into(),
        };
        let k = cache_key("/a", &[]);
        f.remember(&mut f.lock(), k, &no);
        assert_eq!(f.cached(&k), Some(no.clone()));
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(f.cached(&k), None, "expired after cache_ttl");
        for i in 0..MAX_CACHED + 10 {
            let k = cache_key(&format!("/{i}"), &[]);
            f.remember(&mut f.lock(), k, &no);
        }
        assert_eq!(f.lock().answers.len(), MAX_CACHED, "full, not emptied");
        assert_eq!(f.cached(&cache_key("/0", &[])), None, "the oldest went");
        let newest = cache_key(&format!("/{}", MAX_CACHED + 9), &[]);
        assert_eq!(f.cached(&newest), Some(no));
    }

    #[tokio::test]
    async fn identical_concurrent_requests_reach_the_backend_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    seen.fetch_add(1, Ordering::SeqCst);
                    // Long enough for every caller to arrive while this one is in flight.
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nx-user: u1\r\ncontent-length: 0\r\n\r\n")
                        .await;
                });
            }
        });
        let f = Arc::new(fa("/a", port, Duration::ZERO));
        let client = Arc::new(Client::new());
        let metrics = Arc::new(Metrics::new());
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let (f, client, metrics) = (f.clone(), client.clone(), metrics.clone());
            tasks.push(tokio::spawn(async move {
                let mut headers = http::HeaderMap::new();
                headers.insert("authorization", "Bearer same".parse().unwrap());
                let values = RequestValues::new(&[], None, &headers);
                f.check(&client, &values, "/a", &metrics).await
            }));
        }
        for t in tasks {
            let exposed = tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(exposed, vec![("x-user".to_string(), "u1".to_string())]);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        let lookups = |r: &str| metrics.auth_cache.with_label_values(&[r]).get();
        assert_eq!((lookups("miss"), lookups("coalesced")), (1, 49));
    }
}

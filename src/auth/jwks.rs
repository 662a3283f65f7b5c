//! `auth.jwt.jwks_url`: the signing keys of an identity provider (Auth0,
//! Keycloak, Cognito…) fetched over HTTPS through the gateway's one
//! outbound client, kept while fresh, fetched again when stale or when a
//! token names a key id the set lacks (the provider rotated its keys) —
//! never more often than once per `jwks_refetch`, whatever clients send —
//! and kept as they are while the URL fails.
//!
//! Freshness follows the response's `Cache-Control: max-age`, bounded to
//! [`jwks_refetch`, 1 day]; without one, 10 minutes. No request waits for a
//! refresh of a stale set: the first to notice fetches, the others go on
//! with the set they have. Only a gateway with no set yet makes requests
//! wait (for one fetch, shared by all of them).
//!
//! One cache per URL for the whole process, so that routes naming the same
//! URL share it and a config reload keeps the last good set.

use super::jwt::{self, JwtError, KeyRef};
use crate::config::{parse_jwks, JwksUrl, Jwt, KeySet};
use crate::outbound::{Body, Client, Pool};
use crate::values::Claims;
use futures_util::future::BoxFuture;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::time::Instant;

const MAX_FRESH: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_FRESH: Duration = Duration::from_secs(600);
/// A JWKS is a few KB; a provider that answers more is not answering one.
const MAX_BODY: usize = 512 * 1024;

/// Why no key set could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksError {
    /// The URL did not answer 200 with a JWKS (never a key or a body).
    Fetch(String),
    /// No set yet, and the last try was too recent to try again.
    NotYet,
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::Fetch(why) => write!(f, "cannot fetch the signing keys: {why}"),
            JwksError::NotYet => f.write_str("signing keys not fetched yet"),
        }
    }
}

impl std::error::Error for JwksError {}

/// A fetched set and how long it is fresh (from `Cache-Control`).
pub(crate) struct Fetched {
    pub keys: KeySet,
    pub max_age: Option<Duration>,
}

/// Where a set comes from: the URL, or a test's stand-in.
pub(crate) trait Fetch: Send + Sync {
    fn fetch<'a>(&'a self, client: &'a Client) -> BoxFuture<'a, Result<Fetched, JwksError>>;
}

/// A GET of the URL through the outbound client.
struct Https {
    pool: Pool,
    path: String,
}

impl Fetch for Https {
    fn fetch<'a>(&'a self, client: &'a Client) -> BoxFuture<'a, Result<Fetched, JwksError>> {
        Box::pin(async move {
            let fail = |why: String| JwksError::Fetch(why);
            let mut req = pingora_http::RequestHeader::build("GET", self.path.as_bytes(), None)
                .map_err(|_| fail("bad path".into()))?;
            req.insert_header("accept", "application/json")
                .map_err(|_| fail("bad header".into()))?;
            let resp = client
                .send(&self.pool, &req, Body::Empty)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let status = resp.status();
            let max_age = resp.header("cache-control").and_then(max_age);
            let body = resp
                .read_bounded(MAX_BODY)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if status != 200 {
                return Err(fail(format!("answered {status}")));
            }
            let (keys, problems) = parse_jwks(&body).map_err(|e| fail(format!("the body {e}")))?;
            for p in problems {
                tracing::warn!(problem = %p, "a key of the fetched JWKS is left out");
            }
            if keys.is_empty() {
                return Err(fail("the JWKS has no usable key".into()));
            }
            Ok(Fetched { keys, max_age })
        })
    }
}

/// `max-age=N` of a `Cache-Control` value (`no-cache`/`no-store`: 0).
fn max_age(v: &str) -> Option<Duration> {
    v.split(',').map(str::trim).find_map(|d| {
        if d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store") {
            return Some(Duration::ZERO);
        }
        let (k, n) = d.split_once('=')?;
        k.trim().eq_ignore_ascii_case("max-age").then(|| {
            n.trim()
                .trim_matches('"')
                .parse()
                .ok()
                .map(Duration::from_secs)
        })?
    })
}

struct State {
    keys: Option<Arc<KeySet>>,
    fresh_until: Instant,
    /// When the last fetch started (any reason).
    last_try: Option<Instant>,
}

/// One URL's keys.
pub(crate) struct RemoteKeys {
    url: String,
    refetch: Duration,
    source: Box<dyn Fetch>,
    state: Mutex<State>,
    /// Held while fetching: one fetch at a time, others wait or go on.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for RemoteKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteKeys")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The process's caches, by URL and settings; an entry lives while a
/// route uses it.
static CACHES: Mutex<Option<HashMap<String, Weak<RemoteKeys>>>> = Mutex::new(None);

impl RemoteKeys {
    /// The cache of `remote.url`, shared with every route that names it.
    pub(crate) fn shared(remote: &JwksUrl) -> Arc<RemoteKeys> {
        let mut caches = CACHES.lock().unwrap_or_else(|p| p.into_inner());
        let caches = caches.get_or_insert_with(HashMap::new);
        caches.retain(|_, w| w.strong_count() > 0);
        // The same URL with another CA or interval is another cache.
        let key = format!(
            "{} {:?} {:?}",
            remote.url, remote.refetch, remote.upstream.tls
        );
        if let Some(k) = caches.get(&key).and_then(Weak::upgrade) {
            return k;
        }
        let keys = Arc::new(RemoteKeys::new(
            remote.url.clone(),
            remote.refetch,
            Box::new(Https {
                pool: Pool::new(remote.upstream.clone()),
                path: remote.path.clone(),
            }),
        ));
        caches.insert(key, Arc::downgrade(&keys));
        keys
    }

    pub(crate) fn new(url: String, refetch: Duration, source: Box<dyn Fetch>) -> RemoteKeys {
        RemoteKeys {
            url,
            refetch,
            source,
            state: Mutex::new(State {
                keys: None,
                fresh_until: Instant::now(),
                last_try: None,
            }),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a fetch may start now (none in the last `refetch`).
    fn may_try(&self) -> bool {
        self.state()
            .last_try
            .is_none_or(|t| t.elapsed() >= self.refetch)
    }

    /// Fetch once (the caller holds `fetching`); the set to use after.
    async fn fetch(&self, client: &Client) -> Result<Arc<KeySet>, JwksError> {
        self.state().last_try = Some(Instant::now());
        let got = self.source.fetch(client).await;
        let mut st = self.state();
        match got {
            Ok(f) => {
                let fresh = f
                    .max_age
                    .unwrap_or(DEFAULT_FRESH)
                    .clamp(self.refetch, MAX_FRESH.max(self.refetch));
                tracing::info!(url = %self.url, keys = f.keys.len(), fresh_for = ?fresh, "fetched the signing keys");
                let keys = Arc::new(f.keys);
                st.keys = Some(keys.clone());
                st.fresh_until = Instant::now() + fresh;
                Ok(keys)
            }
            Err(e) => {
                tracing::warn!(url = %self.url, error = %e, kept = st.keys.is_some(), "JWKS fetch failed");
                st.keys.clone().ok_or(e)
            }
        }
    }

    /// The set to check a token with.
    pub(crate) async fn keys(&self, client: &Client) -> Result<Arc<KeySet>, JwksError> {
        let (current, stale) = {
            let st = self.state();
            (st.keys.clone(), Instant::now() >= st.fresh_until)
        };
        match current {
            Some(keys) if !stale => Ok(keys),
            Some(keys) => match self.fetching.try_lock() {
                Ok(_held) if self.may_try() => self.fetch(client).await,
                _ => Ok(keys),
            },
            None => {
                let _held = self.fetching.lock().await;
                if let Some(keys) = self.state().keys.clone() {
                    return Ok(keys);
                }
                if !self.may_try() {
                    return Err(JwksError::NotYet);
                }
                self.fetch(client).await
            }
        }
    }

    /// A token named a key id that `seen` lacks: fetch again, unless the
    /// last fetch was less than `refetch` ago.
    async fn after_unknown_kid(&self, client: &Client, seen: &Arc<KeySet>) -> Option<Arc<KeySet>> {
        let _held = self.fetching.lock().await;
        let current = self.state().keys.clone()?;
        if !Arc::ptr_eq(&current, seen) {
            // Someone fetched while we waited.
            return Some(current);
        }
        if !self.may_try() {
            return None;
        }
        self.fetch(client).await.ok()
    }

    /// Verify `token` with this URL's keys.
    pub(crate) async fn verify(
        &self,
        client: &Client,
        jwt: &Jwt,
        token: &str,
    ) -> Result<Claims, RemoteError> {
        // Garbage never makes the gateway fetch anything.
        jwt::precheck(token).map_err(RemoteError::Jwt)?;
        let keys = self.keys(client).await.map_err(RemoteError::Keys)?;
        match jwt::verify_with(jwt, KeyRef::Set(&keys), token) {
            Err(JwtError::UnknownKid) => {
                let Some(newer) = self.after_unknown_kid(client, &keys).await else {
                    return Err(RemoteError::Jwt(JwtError::UnknownKid));
                };
                jwt::verify_with(jwt, KeyRef::Set(&newer), token).map_err(RemoteError::Jwt)
            }
            r => r.map_err(RemoteError::Jwt),
        }
    }
}

/// A token refused, or no keys to check it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RemoteError {
    Jwt(JwtError),
    Keys(JwksError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// HS256 keys stand in for a provider's here: `parse_jwks` refuses
    /// them, but `verify_with` does not care where a key came from.
    fn key(secret: &str) -> DecodingKey {
        DecodingKey::from_secret(secret.as_bytes())
    }

    #[derive(Default)]
    struct Fake {
        /// (kid, secret) of each key served; None: the URL fails.
        served: Mutex<Option<Vec<(String, String)>>>,
        max_age: Mutex<Option<Duration>>,
        fetches: AtomicUsize,
    }

    impl Fetch for Arc<Fake> {
        fn fetch<'a>(&'a self, _c: &'a Client) -> BoxFuture<'a, Result<Fetched, JwksError>> {
            self.fetches.fetch_add(1, Ordering::SeqCst);
            let served = self.served.lock().unwrap().clone();
            let max_age = *self.max_age.lock().unwrap();
            Box::pin(async move {
                let served = served.ok_or(JwksError::Fetch("answered 500".into()))?;
                Ok(Fetched {
                    keys: served
                        .iter()
                        .map(|(k, s)| (Some(k.clone()), key(s)))
                        .collect(),
                    max_age,
                })
            })
        }
    }

    fn jwt() -> Jwt {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_required_spec_claims(&["exp"]);
        v.validate_aud = false;
        Jwt {
            keys: crate::config::Keys::Set(Vec::new()),
            validation: v,
            token_from: vec![],
            channels_claim: "subscribe".into(),
            leeway: 0,
        }
    }

    fn token(kid: &str, secret: &str) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        let exp = crate::auth::expiry::unix_now() + 3600;
        jsonwebtoken::encode(
            &h,
            &serde_json::json!({"sub": "u", "exp": exp}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn setup(keys: &[(&str, &str)]) -> (Arc<Fake>, RemoteKeys) {
        let fake = Arc::new(Fake::default());
        *fake.served.lock().unwrap() = Some(
            keys.iter()
                .map(|(k, s)| (k.to_string(), s.to_string()))
                .collect(),
        );
        let r = RemoteKeys::new(
            "https://idp.test/jwks".into(),
            Duration::from_secs(30),
            Box::new(fake.clone()),
        );
        (fake, r)
    }

    fn fetches(f: &Fake) -> usize {
        f.fetches.load(Ordering::SeqCst)
    }

    #[tokio::test(start_paused = true)]
    async fn rotation_is_followed_at_most_once_per_refetch_interval() {
        let client = Client::new();
        let (fake, r) = setup(&[("k1", "one")]);
        let j = jwt();
        assert!(r.verify(&client, &j, &token("k1", "one")).await.is_ok());
        assert_eq!(fetches(&fake), 1);
        // Rotation at the provider, right after our fetch: the new kid is
        // unknown and the last fetch too recent, so nothing is fetched.
        *fake.served.lock().unwrap() = Some(vec![
            ("k1".into(), "one".into()),
            ("k2".into(), "two".into()),
        ]);
        let rotated = token("k2", "two");
        assert_eq!(
            r.verify(&client, &j, &rotated).await.err(),
            Some(RemoteError::Jwt(JwtError::UnknownKid))
        );
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(
            r.verify(&client, &j, &rotated).await.err(),
            Some(RemoteError::Jwt(JwtError::UnknownKid))
        );
        assert_eq!(fetches(&fake), 1, "no fetch within 30s of the last");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(r.verify(&client, &j, &rotated).await.is_ok());
        assert_eq!(fetches(&fake), 2);
        // A flood of unknown kids costs at most one fetch per interval.
        for i in 0..50 {
            let t = token(&format!("nope{i}"), "x");
            assert!(r.verify(&client, &j, &t).await.is_err());
        }
        assert_eq!(fetches(&fake), 2);
        // Garbage never fetches.
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            r.verify(&client, &j, "not.a.token").await.err(),
            Some(RemoteError::Jwt(JwtError::Malformed))
        );
        assert_eq!(fetches(&fake), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn cache_control_bounds_freshness_and_failures_keep_the_last_set() {
        let client = Client::new();
        let (fake, r) = setup(&[("k1", "one")]);
        *fake.max_age.lock().unwrap() = Some(Duration::from_secs(120));
        let j = jwt();
        let good = token("k1", "one");
        assert!(r.verify(&client, &j, &good).await.is_ok());
        tokio::time::advance(Duration::from_secs(119)).await;
        assert!(r.verify(&client, &j, &good).await.is_ok());
        assert_eq!(fetches(&fake), 1, "fresh for max-age");
        tokio::time::advance(Duration::from_secs(1)).await;
        // Stale, and the URL now fails: the old set still verifies.
        *fake.served.lock().unwrap() = None;
        assert!(r.verify(&client, &j, &good).await.is_ok());
        assert_eq!(fetches(&fake), 2);
        // Tried again only after the refetch interval.
        assert!(r.verify(&client, &j, &good).await.is_ok());
        assert_eq!(fetches(&fake), 2);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(r.verify(&client, &j, &good).await.is_ok());
        assert_eq!(fetches(&fake), 3);
        // max-age below the interval counts as the interval; above a day, a day.
        *fake.served.lock().unwrap() = Some(vec![("k1".into(), "one".into())]);
        *fake.max_age.lock().unwrap() = Some(Duration::ZERO);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(r.verify(&client, &j, &good).await.is_ok());
        assert_eq!(fetches(&fake), 4);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(r.verify(&client, &j, &good).await.is_ok());
        assert_eq!(fetches(&fake), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn without_any_set_requests_are_refused_not_hung() {
        let client = Client::new();
        let (fake, r) = setup(&[]);
        *fake.served.lock().unwrap() = None;
        let j = jwt();
        let t = token("k1", "one");
        assert!(matches!(
            r.verify(&client, &j, &t).await,
            Err(RemoteError::Keys(JwksError::Fetch(_)))
        ));
        assert_eq!(
            r.verify(&client, &j, &t).await.err(),
            Some(RemoteError::Keys(JwksError::NotYet))
        );
        assert_eq!(fetches(&fake), 1);
    }

    #[test]
    fn cache_control_max_age() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=x"), None);
    }
}

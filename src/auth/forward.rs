//! Forward auth: before a stream is held, the backend is asked whether this
//! client may have it. The gateway sends a GET to the route's templated
//! `path` with the client's chosen headers (default Authorization and
//! Cookie); 2xx allows, 401/403 go back to the client with a short body,
//! anything else (including no answer) is a 502. Response headers listed in
//! `expose` become `{auth.x}` values for channel templates.
//!
//! Answers are cached for `cache_ttl` per identical (path, forwarded header
//! values). The cache key is a SHA-256 digest of those, so no raw credential
//! is kept in memory longer than the request, and none is ever logged.

use crate::config::template::{RenderError, Template, Var};
use crate::fetch::Fetcher;
use crate::sse::request::Refusal;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora_http::RequestHeader;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries kept at most; past that, expired ones go, then everything.
const MAX_CACHED: usize = 10_000;
/// Bytes of a 401/403 body passed on to the client.
const MAX_REASON: usize = 200;

/// A path value is one segment: everything but RFC 3986 unreserved is encoded.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Digest of (path, forwarded header values) → (valid until, answer).
type Cache = HashMap<[u8; 32], (Instant, Outcome)>;

#[derive(Debug, Clone)]
pub struct ForwardAuth {
    pub upstream: String,
    pub path: Template,
    /// Lower-cased header names sent to the backend.
    pub forward_headers: Vec<String>,
    /// Lower-cased response header names that become `{auth.x}`.
    pub expose: Vec<String>,
    pub cache_ttl: Duration,
    pub cache: Arc<Mutex<Cache>>,
}

/// What the backend said, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exposed response headers, (lower-cased name, value).
    Allowed(Vec<(String, String)>),
    Denied(u16, String),
}

impl ForwardAuth {
    pub fn new(
        upstream: String,
        path: Template,
        forward_headers: Vec<String>,
        expose: Vec<String>,
        cache_ttl: Duration,
    ) -> ForwardAuth {
        ForwardAuth {
            upstream,
            path,
            forward_headers,
            expose,
            cache_ttl,
            cache: Arc::default(),
        }
    }

    /// The auth path for this request: each value percent-encoded as one
    /// segment, and `.`/`..` refused so that no value can walk the path.
    pub fn render_path<'a>(
        &self,
        lookup: impl Fn(&Var) -> Option<Cow<'a, str>>,
    ) -> Result<String, Refusal> {
        let bad = std::cell::Cell::new(false);
        let path = self
            .path
            .render(|v| {
                let raw = lookup(v)?;
                if raw.is_empty() || raw == "." || raw == ".." {
                    bad.set(true);
                }
                Some(Cow::Owned(utf8_percent_encode(&raw, SEGMENT).to_string()))
            })
            .map_err(|e| match e {
                RenderError::Missing(v) => Refusal {
                    status: 400,
                    reason: format!("{v} is required to subscribe"),
                },
                RenderError::BadValue(..) => Refusal {
                    status: 400,
                    reason: format!("bad value: {e}"),
                },
            })?;
        if bad.get() {
            return Err(Refusal {
                status: 400,
                reason: "bad value for the auth path".into(),
            });
        }
        Ok(path)
    }

    /// The client's headers that go to the backend: (name, value) pairs.
    fn forwarded<'r>(&self, req: &'r RequestHeader) -> Vec<(&str, &'r [u8])> {
        let mut out = Vec::new();
        for name in &self.forward_headers {
            for v in req.headers.get_all(name.as_str()) {
                out.push((name.as_str(), v.as_bytes()));
            }
        }
        out
    }

    /// Ask the backend (or the cache) whether this request may subscribe.
    pub async fn check(
        &self,
        fetcher: &Fetcher,
        req: &RequestHeader,
        path: &str,
    ) -> Result<Vec<(String, String)>, Refusal> {
        let headers = self.forwarded(req);
        let key = cache_key(path, &headers);
        let cached = (!self.cache_ttl.is_zero())
            .then(|| self.cached(&key))
            .flatten();
        let outcome = match cached {
            Some(o) => o,
            None => {
                let o = self.ask(fetcher, path, &headers).await?;
                self.remember(key, &o);
                o
            }
        };
        match outcome {
            Outcome::Allowed(exposed) => Ok(exposed),
            Outcome::Denied(status, reason) => Err(Refusal { status, reason }),
        }
    }

    fn cached(&self, key: &[u8; 32]) -> Option<Outcome> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|(until, _)| *until > Instant::now())
            .map(|(_, o)| o.clone())
    }

    fn remember(&self, key: [u8; 32], outcome: &Outcome) {
        if self.cache_ttl.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (until, _)| *until > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (now + self.cache_ttl, outcome.clone()));
    }

    async fn ask(
        &self,
        fetcher: &Fetcher,
        path: &str,
        headers: &[(&str, &[u8])],
    ) -> Result<Outcome, Refusal> {
        let resp = fetcher
            .send(&self.upstream, true, |client, addr| {
                let mut rb = client.get(format!("http://{addr}{path}"));
                for (k, v) in headers {
                    rb = rb.header(*k, *v);
                }
                rb
            })
            .await
            .map_err(|e| {
                tracing::warn!(upstream = %self.upstream, error = %e, "forward auth failed");
                Refusal {
                    status: 502,
                    reason: "auth backend unavailable".into(),
                }
            })?;
        let status = resp.status().as_u16();
        match status {
            200..=299 => {
                let exposed = self
                    .expose
                    .iter()
                    .filter_map(|name| {
                        let v = resp.headers().get(name.as_str())?.to_str().ok()?;
                        Some((name.clone(), v.to_string()))
                    })
                    .collect();
                Ok(Outcome::Allowed(exposed))
            }
            401 | 403 => Ok(Outcome::Denied(status, short_reason(resp, status).await)),
            _ => {
                tracing::warn!(upstream = %self.upstream, status, "forward auth answered neither 2xx nor 401/403");
                Err(Refusal {
                    status: 502,
                    reason: format!("auth backend answered {status}"),
                })
            }
        }
    }
}

/// The first line of the backend's refusal, bounded; or a generic word.
async fn short_reason(mut resp: reqwest::Response, status: u16) -> String {
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

fn cache_key(path: &str, headers: &[(&str, &[u8])]) -> [u8; 32] {
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

    fn fa(path: &str) -> ForwardAuth {
        ForwardAuth::new(
            "app".into(),
            Template::parse(path).unwrap(),
            vec!["authorization".into()],
            vec!["x-user".into()],
            Duration::from_secs(5),
        )
    }

    #[test]
    fn path_values_stay_one_segment() {
        let f = fa("/auth/{id}");
        let ok = |v: &'static str| move |_: &Var| Some(Cow::Borrowed(v));
        assert_eq!(f.render_path(ok("a1")).unwrap(), "/auth/a1");
        assert_eq!(f.render_path(ok("a/../b")).unwrap(), "/auth/a%2F..%2Fb");
        assert_eq!(f.render_path(ok("x?y#z")).unwrap(), "/auth/x%3Fy%23z");
        for bad in ["..", ".", ""] {
            assert_eq!(f.render_path(ok(bad)).unwrap_err().status, 400, "{bad}");
        }
        assert_eq!(f.render_path(|_| None).unwrap_err().status, 400);
    }

    #[test]
    fn cache_keys_separate_values() {
        assert_ne!(
            cache_key("/a", &[("authorization", b"ab")]),
            cache_key("/a", &[("authorization", b"a"), ("authorization", b"b")])
        );
        let f = fa("/a");
        let k = cache_key("/a", &[]);
        f.remember(k, &Outcome::Denied(403, "no".into()));
        assert_eq!(f.cached(&k), Some(Outcome::Denied(403, "no".into())));
    }
}

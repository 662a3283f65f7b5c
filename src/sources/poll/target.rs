//! Which poller a request needs: the poll path rendered from the request,
//! the forwarded header values (`scope: per-client`), and the channel derived
//! from both. Pure: no I/O, every refusal a status and a reason.
//!
//! Header values never appear in a channel name or a log line: the channel
//! carries a hash of the whole resolved request, so clients with different
//! credentials land on different channels and cannot name each other's.

use crate::channel::POLL_PREFIX;
use crate::config::Poll;
use crate::sources::diff::hash;
use crate::template::Var;
use crate::values::RequestValues;
use http::Method;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use std::borrow::Cow;
use std::fmt;

/// Why a request cannot have a poller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetError {
    /// A placeholder of the poll path has no value in this request.
    Missing(String),
    /// `.` or `..` as a path value: it would climb a level upstream.
    DotSegment(String),
    /// A forwarded header that is not visible ASCII.
    BadHeader(String),
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetError::Missing(v) => write!(f, "{v} is required to subscribe"),
            TargetError::DotSegment(v) => write!(f, "{v}: `.` and `..` are not allowed"),
            TargetError::BadHeader(h) => write!(f, "header `{h}` is not visible ASCII"),
        }
    }
}

impl std::error::Error for TargetError {}

/// RFC 3986 unreserved characters stay; everything else is escaped, so a value
/// is one path segment (or one query value) whatever it holds.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// A `{*rest}` value keeps its `/`.
const SEGMENTS: &AsciiSet = &SEGMENT.remove(b'/');

/// One resolved poll request: two requests share a poller iff they are equal.
#[derive(Clone, PartialEq, Eq)]
pub struct Target {
    /// The route's fingerprint: a changed route gets new pollers.
    pub route: u64,
    pub upstream: String,
    pub method: Method,
    /// Path and query, percent-encoded.
    pub path: String,
    /// `scope: per-client` headers as this client sent them.
    pub forwarded: Vec<(String, String)>,
    /// `poll:<route>:<hash of everything above>`.
    pub channel: String,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.forwarded.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Target")
            .field("channel", &self.channel)
            .field("upstream", &self.upstream)
            .field("method", &self.method)
            .field("path", &self.path)
            .field("forwarded", &names)
            .finish()
    }
}

/// The poll request `values` needs on route `route` (its index).
pub(crate) fn resolve(
    values: &RequestValues<'_>,
    route: u64,
    poll: &Poll,
) -> Result<Target, TargetError> {
    let mut rendered: Vec<(&Var, String)> = Vec::new();
    for v in poll.path.vars() {
        // Only path, query and header values are allowed here (checked at
        // load), so identity-based values never reach a shared poller.
        let raw: Cow<'_, str> = values
            .get(v)
            .ok_or_else(|| TargetError::Missing(v.to_string()))?;
        let set: &AsciiSet = match v {
            Var::Param(n) if poll.catch_all.as_deref() == Some(n.as_str()) => SEGMENTS,
            _ => SEGMENT,
        };
        // `..` is unreserved, so it would survive escaping and climb a level upstream.
        let dots = |seg: &str| seg == "." || seg == "..";
        let is_dots = if std::ptr::eq(set, SEGMENTS) {
            raw.split('/').any(dots)
        } else {
            dots(&raw)
        };
        if is_dots {
            return Err(TargetError::DotSegment(v.to_string()));
        }
        rendered.push((v, utf8_percent_encode(&raw, set).to_string()));
    }
    let path = poll
        .path
        .render(|v| {
            rendered
                .iter()
                .find(|(k, _)| *k == v)
                .map(|(_, val)| Cow::Borrowed(val.as_str()))
        })
        .map_err(|e| match e {
            crate::template::RenderError::Missing(v)
            | crate::template::RenderError::BadValue(v, _) => TargetError::Missing(v),
        })?;
    let mut forwarded = Vec::new();
    for name in &poll.forward_headers {
        for value in values.headers().get_all(name.as_str()) {
            let value = value
                .to_str()
                .map_err(|_| TargetError::BadHeader(name.clone()))?;
            forwarded.push((name.clone(), value.to_string()));
        }
    }
    let channel = channel(route, &poll.upstream, &poll.method, &path, &forwarded);
    Ok(Target {
        route,
        upstream: poll.upstream.clone(),
        method: poll.method.clone(),
        path,
        forwarded,
        channel,
    })
}

/// Length-prefixed fields, so no two different requests hash the same input.
fn channel(
    route: u64,
    upstream: &str,
    method: &Method,
    path: &str,
    forwarded: &[(String, String)],
) -> String {
    let mut input = Vec::with_capacity(64 + path.len());
    let mut field = |b: &[u8]| {
        input.extend_from_slice(&(b.len() as u64).to_le_bytes());
        input.extend_from_slice(b);
    };
    field(upstream.as_bytes());
    field(method.as_str().as_bytes());
    field(path.as_bytes());
    for (k, v) in forwarded {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let h = hash(&input);
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!("{POLL_PREFIX}{route:016x}:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel;
    use crate::config::{PollDiff, PollEvents, PollScope};
    use crate::template::Template;
    use std::time::Duration;

    fn poll(path: &str, forward: &[&str], catch_all: Option<&str>) -> Poll {
        Poll {
            upstream: "app".into(),
            path: Template::parse(path).unwrap(),
            catch_all: catch_all.map(str::to_string),
            method: Method::GET,
            headers: vec![],
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            linger: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            max_body: 1024,
            diff: PollDiff::Body,
            events: PollEvents::default(),
            scope: if forward.is_empty() {
                PollScope::Shared
            } else {
                PollScope::PerClient
            },
            forward_headers: forward.iter().map(|s| s.to_string()).collect(),
            initial: true,
            error_event: None,
            max_pollers: None,
        }
    }

    struct Req {
        query: Option<String>,
        headers: http::HeaderMap,
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> Req {
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        Req {
            query: uri.split_once('?').map(|(_, q)| q.to_string()),
            headers: map,
        }
    }

    /// `super::resolve` with the request's values built as the edge would.
    fn resolve(
        r: &Req,
        route: u64,
        poll: &Poll,
        params: &[(String, String)],
    ) -> Result<Target, TargetError> {
        let values = RequestValues::new(params, r.query.as_deref(), &r.headers);
        super::resolve(&values, route, poll)
    }

    fn p(k: &str, v: &str) -> Vec<(String, String)> {
        vec![(k.to_string(), v.to_string())]
    }

    #[test]
    fn renders_escaped_values() {
        let pl = poll("/api/{id}?s={query.sym}&h={header.x-t}", &[], None);
        let t = resolve(
            &req("/e/a%20b?sym=a%26b%3Dc", &[("x-t", "t/1")]),
            2,
            &pl,
            &p("id", "a%20b"),
        )
        .unwrap();
        assert_eq!(t.path, "/api/a%20b?s=a%26b%3Dc&h=t%2F1");
        assert!(
            t.channel.starts_with("poll:0000000000000002:") && channel::check(&t.channel).is_ok(),
            "{}",
            t.channel
        );
        let rest = poll("/files/{rest}", &[], Some("rest"));
        assert_eq!(
            resolve(&req("/x", &[]), 0, &rest, &p("rest", "a/b c"))
                .unwrap()
                .path,
            "/files/a/b%20c"
        );
    }

    #[test]
    fn values_cannot_change_the_path_shape() {
        let pl = poll("/api/{id}", &[], None);
        assert_eq!(
            resolve(&req("/", &[]), 0, &pl, &p("id", "a%2F..%2Fadmin"))
                .unwrap()
                .path,
            "/api/a%2F..%2Fadmin"
        );
        for evil in ["..", "."] {
            assert!(matches!(
                resolve(&req("/", &[]), 0, &pl, &p("id", evil)),
                Err(TargetError::DotSegment(_))
            ));
        }
        let rest = poll("/files/{rest}", &[], Some("rest"));
        assert!(resolve(&req("/", &[]), 0, &rest, &p("rest", "a/../../b")).is_err());
        let q = poll("/api?q={query.q}", &[], None);
        assert!(resolve(&req("/e", &[]), 0, &q, &[]).is_err());
    }

    #[test]
    fn channel_separates_clients_but_not_equal_ones() {
        let pl = poll("/me", &["authorization"], None);
        let a = resolve(&req("/", &[("authorization", "Bearer A")]), 0, &pl, &[]).unwrap();
        let a2 = resolve(
            &req("/", &[("authorization", "Bearer A"), ("cookie", "x")]),
            0,
            &pl,
            &[],
        )
        .unwrap();
        let b = resolve(&req("/", &[("authorization", "Bearer B")]), 0, &pl, &[]).unwrap();
        let none = resolve(&req("/", &[]), 0, &pl, &[]).unwrap();
        assert_eq!(a, a2, "unforwarded headers do not split pollers");
        assert_ne!(a.channel, b.channel);
        assert_ne!(a.channel, none.channel);
        assert!(!a.channel.contains("Bearer") && !format!("{a:?}").contains("Bearer A"));
        let other_route =
            resolve(&req("/", &[("authorization", "Bearer A")]), 1, &pl, &[]).unwrap();
        assert_ne!(a.channel, other_route.channel);
    }
}

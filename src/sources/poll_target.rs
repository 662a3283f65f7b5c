//! Which poller a request needs: the poll path rendered from the request,
//! the forwarded header values (`scope: per-client`), and the channel derived
//! from both. Pure: no I/O, every refusal a status and a reason.
//!
//! Header values never appear in a channel name or a log line: the channel
//! carries a hash of the whole resolved request, so clients with different
//! credentials land on different channels and cannot name each other's.

use super::diff::hash;
use crate::config::template::Var;
use crate::config::Poll;
use crate::sse::request::{header, query_pairs, Refusal};
use http::Method;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pingora_http::RequestHeader;
use std::borrow::Cow;
use std::fmt;

/// Every poll channel starts with this; clients can never subscribe to it by name.
pub const CHANNEL_PREFIX: &str = "poll:";

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
    pub route: usize,
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

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// The poll request `req` needs on route `route` (its index) with path `params`.
pub fn resolve(
    req: &RequestHeader,
    route: usize,
    poll: &Poll,
    params: &[(String, String)],
) -> Result<Target, Refusal> {
    let query = query_pairs(req);
    let mut values: Vec<(&Var, String)> = Vec::new();
    for v in poll.path.vars() {
        let (raw, set): (Cow<'_, str>, &AsciiSet) = match v {
            Var::Param(n) => {
                let val = params
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, val)| percent_decode_str(val).decode_utf8_lossy());
                let set = if poll.catch_all.as_deref() == Some(n.as_str()) {
                    SEGMENTS
                } else {
                    SEGMENT
                };
                (
                    val.ok_or_else(|| refuse(400, format!("{v} is required")))?,
                    set,
                )
            }
            Var::Query(n) => {
                let val = query
                    .iter()
                    .find(|(k, _)| k == n)
                    .map(|(_, val)| Cow::Borrowed(val.as_str()));
                (
                    val.ok_or_else(|| refuse(400, format!("{v} is required to subscribe")))?,
                    SEGMENT,
                )
            }
            Var::Header(n) => {
                let val = header(req, n).map(Cow::Borrowed);
                (
                    val.ok_or_else(|| refuse(400, format!("{v} is required to subscribe")))?,
                    SEGMENT,
                )
            }
            // Refused when the config was loaded.
            _ => return Err(refuse(500, format!("{v} cannot be used in a poll path"))),
        };
        // `..` is unreserved, so it would survive escaping and climb a level upstream.
        let dots = |seg: &str| seg == "." || seg == "..";
        let is_dots = if std::ptr::eq(set, SEGMENTS) {
            raw.split('/').any(dots)
        } else {
            dots(&raw)
        };
        if is_dots {
            return Err(refuse(400, format!("{v}: `.` and `..` are not allowed")));
        }
        values.push((v, utf8_percent_encode(&raw, set).to_string()));
    }
    let path = poll
        .path
        .render(|v| {
            values
                .iter()
                .find(|(k, _)| *k == v)
                .map(|(_, val)| Cow::Borrowed(val.as_str()))
        })
        .map_err(|e| refuse(400, e.to_string()))?;
    let mut forwarded = Vec::new();
    for name in &poll.forward_headers {
        for value in req.headers.get_all(name.as_str()) {
            let value = value
                .to_str()
                .map_err(|_| refuse(400, format!("header `{name}` is not visible ASCII")))?;
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
    route: usize,
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
    format!("{CHANNEL_PREFIX}{route}:{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::template::{check_channel, Template};
    use crate::config::{PollDiff, PollEvents, PollScope};
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
        }
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
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
            t.channel.starts_with("poll:2:") && check_channel(&t.channel).is_ok(),
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
            assert_eq!(
                resolve(&req("/", &[]), 0, &pl, &p("id", evil))
                    .unwrap_err()
                    .status,
                400
            );
        }
        let rest = poll("/files/{rest}", &[], Some("rest"));
        assert_eq!(
            resolve(&req("/", &[]), 0, &rest, &p("rest", "a/../../b"))
                .unwrap_err()
                .status,
            400
        );
        let q = poll("/api?q={query.q}", &[], None);
        assert_eq!(
            resolve(&req("/e", &[]), 0, &q, &[]).unwrap_err().status,
            400
        );
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

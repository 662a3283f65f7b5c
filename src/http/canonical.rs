//! One request, one meaning: before a public request is routed, its head is
//! rewritten so that what the gateway routes on is exactly what an upstream
//! receives (proxy and GRIP routes build their upstream request from it).
//!
//! - **Path**: dot-segments are resolved (RFC 3986 §5.2.4, `%2e` read as
//!   `.`), so `/api/%2e%2e/internal` is routed, and sent, as `/internal`. A
//!   segment that hides a separator (`%2f`, `%5c`, `\`) or a dot-segment
//!   behind `;` parameters (`..;x`, which some servers read as `..`) cannot be
//!   resolved the way every backend would resolve it, and is refused.
//! - **Authority**: an absolute-form target (`GET http://example.com/h`) is
//!   turned into origin-form with its authority in `Host` (pingora already
//!   refused a `Host` that differs from it), so `host:` routes see the host
//!   the upstream sees.
//! - **Content-Length**: repeated or comma-listed equal values (pingora
//!   refuses differing ones) become one value, so a lenient upstream cannot
//!   read the body differently from the gateway.

use pingora_http::authority::{raw_target_authority, RawTargetAuthority};
use pingora_http::RequestHeader;
use std::borrow::Cow;
use std::fmt;

/// Why a request head cannot be made unambiguous.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CanonicalError {
    /// A path segment holds an encoded `/` or `\`, or a raw `\`.
    HiddenSeparator,
    /// A dot-segment with `;` parameters.
    DotSegmentParameters,
    /// `Content-Length` values that are not one decimal number.
    ContentLength,
    /// The rewritten target or `Host` is not a valid request head.
    Target,
}

impl fmt::Display for CanonicalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CanonicalError::HiddenSeparator => {
                "a path segment holds an encoded `/` or `\\`, or a `\\`"
            }
            CanonicalError::DotSegmentParameters => "a `.` or `..` path segment with parameters",
            CanonicalError::ContentLength => "ambiguous Content-Length",
            CanonicalError::Target => "bad request target",
        })
    }
}

impl std::error::Error for CanonicalError {}

/// Rewrite `req` in place (see the module doc). Returns the host to route
/// on: lower-cased, without port or trailing dot; None without one.
pub(crate) fn canonicalize(req: &mut RequestHeader) -> Result<Option<String>, CanonicalError> {
    one_content_length(req)?;
    let (authority, target) = match raw_target_authority(req.raw_path()) {
        RawTargetAuthority::Absolute {
            authority,
            path_and_query,
            ..
        } => (Some(authority.to_vec()), path_and_query.to_vec()),
        _ => (None, req.raw_path().to_vec()),
    };
    let split = target.iter().position(|&b| b == b'?');
    let (path, query) = target.split_at(split.unwrap_or(target.len()));
    let resolved = if path.first() == Some(&b'/') {
        remove_dot_segments(path)?
    } else if authority.is_some() && path.is_empty() {
        // `http://example.com` and `http://example.com?x`: the root.
        Cow::Borrowed(&b"/"[..])
    } else {
        // `*` (OPTIONS) and anything pingora let through as it is.
        Cow::Borrowed(path)
    };
    if let Some(authority) = &authority {
        if !req.headers.contains_key(http::header::HOST) {
            req.insert_header(http::header::HOST, authority.as_slice())
                .map_err(|_| CanonicalError::Target)?;
        }
    }
    if authority.is_some() || matches!(resolved, Cow::Owned(_)) {
        let mut origin = resolved.into_owned();
        origin.extend_from_slice(query);
        set_target(req, &origin)?;
    }
    Ok(route_host(req))
}

/// Replace the target, keeping an HTTP/2 request's scheme and authority.
fn set_target(req: &mut RequestHeader, origin: &[u8]) -> Result<(), CanonicalError> {
    if req.uri.authority().is_none() {
        return req.set_raw_path(origin).map_err(|_| CanonicalError::Target);
    }
    let mut parts = req.uri.clone().into_parts();
    parts.path_and_query =
        Some(http::uri::PathAndQuery::try_from(origin).map_err(|_| CanonicalError::Target)?);
    let uri = http::Uri::from_parts(parts).map_err(|_| CanonicalError::Target)?;
    req.set_uri(uri);
    Ok(())
}

/// The authority the request is for: `Host`, else an HTTP/2 `:authority`.
pub(crate) fn authority(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

fn route_host(req: &RequestHeader) -> Option<String> {
    authority(req)
        .filter(|h| !h.is_empty())
        .map(crate::routing::host_only)
}

/// Repeated or listed equal `Content-Length` values as one.
fn one_content_length(req: &mut RequestHeader) -> Result<(), CanonicalError> {
    let mut value: Option<u64> = None;
    let mut canonical = true;
    let mut lines = 0;
    for line in req.headers.get_all(http::header::CONTENT_LENGTH) {
        lines += 1;
        let text = line.to_str().map_err(|_| CanonicalError::ContentLength)?;
        for token in text.split(',') {
            let token = token.trim();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
                return Err(CanonicalError::ContentLength);
            }
            let n: u64 = token.parse().map_err(|_| CanonicalError::ContentLength)?;
            match value {
                Some(v) if v != n => return Err(CanonicalError::ContentLength),
                _ => value = Some(n),
            }
            canonical &= token == text && token == n.to_string();
        }
    }
    match value {
        Some(n) if lines > 1 || !canonical => req
            .insert_header(http::header::CONTENT_LENGTH, n.to_string())
            .map_err(|_| CanonicalError::ContentLength),
        _ => Ok(()),
    }
}

/// `.` or `..`, with `%2e` for any dot; None for anything else.
fn dots(segment: &[u8]) -> Option<usize> {
    let mut rest = segment;
    let mut n = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return None;
        }
        n += 1;
    }
    (1..=2).contains(&n).then_some(n)
}

fn hides_separator(segment: &[u8]) -> bool {
    segment.contains(&b'\\')
        || segment
            .windows(3)
            .any(|w| w.eq_ignore_ascii_case(b"%2f") || w.eq_ignore_ascii_case(b"%5c"))
}

/// RFC 3986 §5.2.4 on an absolute path (no query).
fn remove_dot_segments(path: &[u8]) -> Result<Cow<'_, [u8]>, CanonicalError> {
    if !path.iter().any(|b| matches!(b, b'.' | b'%' | b'\\')) {
        return Ok(Cow::Borrowed(path));
    }
    let mut out: Vec<&[u8]> = Vec::new();
    let mut changed = false;
    let mut ends_in_dot = false;
    for segment in path[1..].split(|&b| b == b'/') {
        if hides_separator(segment) {
            return Err(CanonicalError::HiddenSeparator);
        }
        let before_params = segment.split(|&b| b == b';').next().unwrap_or(segment);
        if before_params.len() < segment.len() && dots(before_params).is_some() {
            return Err(CanonicalError::DotSegmentParameters);
        }
        ends_in_dot = false;
        match dots(segment) {
            Some(n) => {
                changed = true;
                ends_in_dot = true;
                if n == 2 {
                    out.pop();
                }
            }
            None => out.push(segment),
        }
    }
    if !changed {
        return Ok(Cow::Borrowed(path));
    }
    // `/a/b/..` is `/a/`: a final dot-segment leaves the directory.
    if ends_in_dot && out.last() != Some(&&b""[..]) {
        out.push(b"");
    }
    if out.is_empty() {
        out.push(b"");
    }
    let mut resolved = Vec::with_capacity(path.len());
    for segment in out {
        resolved.push(b'/');
        resolved.extend_from_slice(segment);
    }
    Ok(Cow::Owned(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(p: &str) -> Result<String, CanonicalError> {
        remove_dot_segments(p.as_bytes()).map(|c| String::from_utf8(c.into_owned()).unwrap())
    }

    #[test]
    fn dot_segments_resolve_as_rfc_3986_says() {
        for (input, want) in [
            ("/api/x", "/api/x"),
            ("/api/../internal/secret", "/internal/secret"),
            ("/api/%2e%2e/internal", "/internal"),
            ("/api/%2E%2e/internal", "/internal"),
            ("/api/.%2E/internal", "/internal"),
            ("/api/./../internal", "/internal"),
            ("/../../x", "/x"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/.", "/"),
            ("/a//b/./c", "/a//b/c"),
            ("/a/...", "/a/..."),
            ("/a/.b/c.", "/a/.b/c."),
            ("/a/%2e%2e%2e", "/a/%2e%2e%2e"),
            ("/v1.2/x%20y", "/v1.2/x%20y"),
        ] {
            assert_eq!(resolve(input).as_deref(), Ok(want), "{input}");
        }
    }

    #[test]
    fn hidden_separators_and_parameters_are_refused() {
        for input in [
            "/api/..%2finternal",
            "/api/..%2Finternal",
            "/api/a%5cb",
            "/api/..\\internal",
        ] {
            assert_eq!(
                resolve(input),
                Err(CanonicalError::HiddenSeparator),
                "{input}"
            );
        }
        assert_eq!(
            resolve("/api/..;x/internal"),
            Err(CanonicalError::DotSegmentParameters)
        );
        assert_eq!(resolve("/api/a;x/b").as_deref(), Ok("/api/a;x/b"));
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn absolute_form_becomes_origin_form_with_its_host() {
        let mut r = req("http://Example.COM.:8080/h/../x?q=1", &[]);
        let host = canonicalize(&mut r).unwrap();
        assert_eq!(host.as_deref(), Some("example.com"));
        assert_eq!(r.raw_path(), b"/x?q=1");
        assert_eq!(r.uri.path(), "/x");
        assert_eq!(r.headers["host"], "Example.COM.:8080");
        let mut r = req("http://example.com", &[]);
        canonicalize(&mut r).unwrap();
        assert_eq!(r.raw_path(), b"/");
        let mut r = req("/plain", &[("host", "a.example")]);
        assert_eq!(canonicalize(&mut r).unwrap().as_deref(), Some("a.example"));
        assert_eq!(r.raw_path(), b"/plain");
    }

    #[test]
    fn one_content_length_goes_on() {
        for lines in [&["5", "5"][..], &["5, 5"], &["05"], &[" 5 "]] {
            let mut r = req("/", &[]);
            for l in lines {
                r.append_header("content-length", *l).unwrap();
            }
            canonicalize(&mut r).unwrap();
            let got: Vec<_> = r.headers.get_all("content-length").iter().collect();
            assert_eq!(got, ["5"], "{lines:?}");
        }
        for lines in [&["5", "6"][..], &["5, 6"], &["+5"], &["5,"], &["0x5"]] {
            let mut r = req("/", &[]);
            for l in lines {
                r.append_header("content-length", *l).unwrap();
            }
            assert_eq!(
                canonicalize(&mut r),
                Err(CanonicalError::ContentLength),
                "{lines:?}"
            );
        }
    }
}

//! GRIP holds decided by the backend (Pushpin's protocol): on a `grip: true`
//! route the backend may answer with `Grip-Hold: stream` headers or an
//! `application/grip-instruct` body, and the gateway keeps the client,
//! sending what the backend publishes to the named channels afterwards.
//!
//! This module reads the instructions and signs `Grip-Sig`; pure. The
//! request to the backend and the response to the client are the HTTP
//! edge's (`http::grip`), and a hold runs on the one stream engine.

use crate::channel;
use crate::config::Secret;
use base64::Engine;
use bytes::Bytes;
use http::HeaderMap;
use std::time::Duration;

/// Pushpin's default keep-alive timeout.
pub(crate) const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(55);
/// Keep-alive timeouts are whole seconds in this range (they share ticks).
const KEEP_ALIVE_RANGE: (u64, u64) = (1, 3600);

/// Instructions a backend sent that cannot be followed (the client gets 502).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InstructionError(pub String);

impl std::fmt::Display for InstructionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InstructionError {}

impl From<String> for InstructionError {
    fn from(s: String) -> Self {
        InstructionError(s)
    }
}

impl From<&str> for InstructionError {
    fn from(s: &str) -> Self {
        InstructionError(s.to_string())
    }
}

/// What the backend asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Hold {
    pub channels: Vec<String>,
    pub keep_alive: Option<KeepAlive>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeepAlive {
    pub content: Bytes,
    pub timeout: Duration,
}

/// The response a grip-instruct body describes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct InstructResponse {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// The instructions in response headers; None without `Grip-Hold`.
pub(crate) fn from_headers(
    headers: &HeaderMap,
    max_channels: usize,
) -> Result<Option<Hold>, InstructionError> {
    let Some(mode) = header(headers, "grip-hold") else {
        return Ok(None);
    };
    if !mode.trim().eq_ignore_ascii_case("stream") {
        return Err(format!("Grip-Hold: {mode} is not supported (only `stream`)").into());
    }
    let mut names = Vec::new();
    for v in headers.get_all("grip-channel") {
        let v = v.to_str().map_err(|_| "Grip-Channel is not text")?;
        names.extend(parse_channel_header(v));
    }
    let keep_alive = match header(headers, "grip-keep-alive") {
        Some(v) => Some(parse_keep_alive(v)?),
        None => None,
    };
    Ok(Some(Hold {
        channels: check_channels(names, max_channels)?,
        keep_alive,
    }))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// `a, b; prev-id=3`: names; parameters (`prev-id`, `filter`) are accepted
/// and not needed here (every hold starts live).
fn parse_channel_header(v: &str) -> Vec<String> {
    v.split(',')
        .filter_map(|part| {
            let name = part.split(';').next()?.trim();
            (!name.is_empty()).then(|| name.to_string())
        })
        .collect()
}

fn check_channels(names: Vec<String>, max: usize) -> Result<Vec<String>, InstructionError> {
    if names.is_empty() {
        return Err("a GRIP hold names no channel".into());
    }
    let mut out: Vec<String> = Vec::new();
    for n in names {
        channel::check(&n).map_err(|why| format!("Grip-Channel: {why}"))?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.len() > max {
        return Err(format!(
            "a GRIP hold names {} channels, at most {max} allowed",
            out.len()
        )
        .into());
    }
    Ok(out)
}

/// `content; format=cstring|base64|raw; timeout=N` (`mode` accepted; the
/// keep-alive is always sent only when idle).
fn parse_keep_alive(v: &str) -> Result<KeepAlive, InstructionError> {
    let mut parts = v.split(';');
    let raw = parts.next().unwrap_or("").trim();
    let mut format = "raw";
    let mut timeout = DEFAULT_KEEP_ALIVE;
    for p in parts {
        let Some((k, val)) = p.split_once('=') else {
            continue;
        };
        let val = val.trim().trim_matches('"');
        match k.trim() {
            "format" => format = val,
            "timeout" => timeout = keep_alive_timeout(val.parse::<u64>().ok())?,
            _ => {}
        }
    }
    let content = match format {
        "raw" => Bytes::copy_from_slice(raw.as_bytes()),
        "cstring" => cstring(raw)?,
        "base64" => base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map(Bytes::from)
            .map_err(|_| "Grip-Keep-Alive: bad base64")?,
        other => return Err(format!("Grip-Keep-Alive: unknown format `{other}`").into()),
    };
    Ok(KeepAlive { content, timeout })
}

fn keep_alive_timeout(secs: Option<u64>) -> Result<Duration, InstructionError> {
    match secs {
        Some(s) if (KEEP_ALIVE_RANGE.0..=KEEP_ALIVE_RANGE.1).contains(&s) => {
            Ok(Duration::from_secs(s))
        }
        _ => Err(format!(
            "keep-alive timeout must be whole seconds from {} to {}",
            KEEP_ALIVE_RANGE.0, KEEP_ALIVE_RANGE.1
        )
        .into()),
    }
}

/// Pushpin's cstring: `\n`, `\r`, `\t`, `\\`, `\"` and `\0` escapes.
fn cstring(s: &str) -> Result<Bytes, InstructionError> {
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match it.next() {
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'0') => 0,
            Some(b'\\') => b'\\',
            Some(b'"') => b'"',
            _ => return Err("Grip-Keep-Alive: bad cstring escape".into()),
        });
    }
    Ok(Bytes::from(out))
}

/// An `application/grip-instruct` body: the hold (None: just a response)
/// and the response to send first.
pub(crate) fn from_instruct(
    body: &[u8],
    max_channels: usize,
) -> Result<(Option<Hold>, InstructResponse), InstructionError> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("grip-instruct is not JSON: {e}"))?;
    let hold = match v.get("hold") {
        None | Some(serde_json::Value::Null) => None,
        Some(h) => {
            let mode = h.get("mode").and_then(|m| m.as_str()).unwrap_or("response");
            if mode != "stream" {
                return Err(format!("hold mode `{mode}` is not supported (only `stream`)").into());
            }
            let names = h
                .get("channels")
                .and_then(|c| c.as_array())
                .map(|cs| {
                    cs.iter()
                        .filter_map(|c| c.get("name").and_then(|n| n.as_str()))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let keep_alive = match h.get("keep-alive") {
                None | Some(serde_json::Value::Null) => None,
                Some(k) => Some(KeepAlive {
                    content: text_or_bin(k, "content")?,
                    timeout: match k.get("timeout") {
                        None => DEFAULT_KEEP_ALIVE,
                        Some(t) => keep_alive_timeout(t.as_u64())?,
                    },
                }),
            };
            Some(Hold {
                channels: check_channels(names, max_channels)?,
                keep_alive,
            })
        }
    };
    let r = v.get("response").cloned().unwrap_or_default();
    let code = match r.get("code") {
        None => 200,
        Some(c) => c
            .as_u64()
            .filter(|c| (200..=599).contains(c))
            .ok_or("grip-instruct response code is not an HTTP status")? as u16,
    };
    let headers = r
        .get("headers")
        .and_then(|h| h.as_object())
        .map(|h| {
            h.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok((
        hold,
        InstructResponse {
            code,
            headers,
            body: text_or_bin(&r, "body")?,
        },
    ))
}

/// `"body": "text"` or `"body-bin": "<base64>"`.
fn text_or_bin(v: &serde_json::Value, key: &str) -> Result<Bytes, InstructionError> {
    if let Some(s) = v.get(key).and_then(|s| s.as_str()) {
        return Ok(Bytes::copy_from_slice(s.as_bytes()));
    }
    match v.get(format!("{key}-bin")).and_then(|s| s.as_str()) {
        Some(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(Bytes::from)
            .map_err(|_| format!("grip-instruct {key}-bin is not base64").into()),
        None => Ok(Bytes::new()),
    }
}

/// `Grip-Sig`: an HS256 JWT `{"iss":"ssegate","exp":now+1h}` that tells the
/// backend the request came through the gateway.
pub(crate) fn signature(key: &Secret) -> Option<String> {
    let claims = serde_json::json!({
        "iss": "ssegate",
        "exp": crate::auth::expiry::unix_now() + 3600,
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&key.0),
    )
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hold_headers() {
        assert_eq!(from_headers(&hm(&[]), 8), Ok(None));
        let h = from_headers(
            &hm(&[
                ("grip-hold", "stream"),
                ("grip-channel", "a, b; prev-id=3"),
                ("grip-channel", "a"),
                ("grip-keep-alive", "\\n; format=cstring; timeout=20"),
            ]),
            8,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.channels, vec!["a", "b"]);
        assert_eq!(
            h.keep_alive,
            Some(KeepAlive {
                content: Bytes::from_static(b"\n"),
                timeout: Duration::from_secs(20)
            })
        );
        let ka = parse_keep_alive("OjoK; format=base64").unwrap();
        assert_eq!(
            (&ka.content[..], ka.timeout),
            (&b"::\n"[..], DEFAULT_KEEP_ALIVE)
        );
    }

    #[test]
    fn hold_refusals() {
        for (pairs, max) in [
            (vec![("grip-hold", "stream")], 8),
            (vec![("grip-hold", "stream"), ("grip-channel", "a*")], 8),
            (vec![("grip-hold", "stream"), ("grip-channel", "a\u{1}")], 8),
            (
                vec![("grip-hold", "stream"), ("grip-channel", "a, b, c")],
                2,
            ),
            (vec![("grip-hold", "response"), ("grip-channel", "a")], 8),
            (
                vec![
                    ("grip-hold", "stream"),
                    ("grip-channel", "a"),
                    ("grip-keep-alive", "x; timeout=0"),
                ],
                8,
            ),
        ] {
            let h: Vec<(&str, &str)> = pairs;
            if h.iter().any(|(_, v)| v.contains('\u{1}')) {
                continue; // not a valid header value at all
            }
            assert!(from_headers(&hm(&h), max).is_err(), "{h:?}");
        }
    }

    #[test]
    fn instruct_bodies() {
        let body = br#"{"hold":{"mode":"stream","channels":[{"name":"c1","prev-id":"7"}],
            "keep-alive":{"content":"ka\n","timeout":3}},
            "response":{"code":201,"headers":{"Content-Type":"text/plain"},"body":"hi\n"}}"#;
        let (hold, resp) = from_instruct(body, 8).unwrap();
        let hold = hold.unwrap();
        assert_eq!(hold.channels, vec!["c1"]);
        assert_eq!(hold.keep_alive.unwrap().timeout, Duration::from_secs(3));
        assert_eq!(resp.code, 201);
        assert_eq!(&resp.body[..], b"hi\n");
        let (none, r) = from_instruct(br#"{"response":{"body-bin":"aGk="}}"#, 8).unwrap();
        assert!(none.is_none());
        assert_eq!((&r.body[..], r.code), (&b"hi"[..], 200));
        assert!(from_instruct(
            br#"{"hold":{"mode":"stream","channels":[{"name":"a,b"}]}}"#,
            8
        )
        .is_err());
    }

    #[test]
    fn signature_verifies() {
        let key = Secret(b"k".to_vec());
        let tok = signature(&key).unwrap();
        let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        v.set_issuer(&["ssegate"]);
        let d = jsonwebtoken::decode::<serde_json::Value>(
            &tok,
            &jsonwebtoken::DecodingKey::from_secret(b"k"),
            &v,
        )
        .unwrap();
        assert_eq!(d.claims["iss"], "ssegate");
    }
}

//! What an SSE request subscribes to: the route's channel templates rendered
//! from this request (and from what auth established: JWT claims, forward
//! auth headers), plus `?channel=` within `allow_channels` and the token's
//! channels claim, plus where to resume. Pure: no I/O, every refusal a
//! status and a reason.

use crate::auth::jwt::Claims;
use crate::config::template::{check_channel, RenderError, Var};
use crate::config::{ChannelPattern, SseRoute};
use crate::hub::Resume;
use crate::sources::poll::CHANNEL_PREFIX;
use pingora_http::RequestHeader;
use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub channels: Vec<String>,
    pub resume: Resume,
}

/// What auth established about a request.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// A verified JWT's claims: `{jwt.x}`.
    pub claims: Option<Claims>,
    /// Forward auth's exposed response headers (lower-cased names): `{auth.x}`.
    pub exposed: Vec<(String, String)>,
    /// The token's channels claim, when it carries one: `?channel=` must match it.
    pub allowed: Option<Vec<ChannelPattern>>,
}

/// A path parameter, percent-decoded.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<Cow<'a, str>> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, val)| percent_encoding::percent_decode_str(val).decode_utf8_lossy())
}

pub fn query_pairs(req: &RequestHeader) -> Vec<(String, String)> {
    req.uri
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

pub fn resolve(
    req: &RequestHeader,
    route: &SseRoute,
    params: &[(String, String)],
    max_channels: usize,
    identity: &Identity,
) -> Result<Wanted, Refusal> {
    let query = query_pairs(req);
    let lookup = |v: &Var| -> Option<Cow<'_, str>> {
        match v {
            Var::Param(n) => param(params, n),
            Var::Query(n) => query
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| Cow::Borrowed(v.as_str())),
            Var::Header(n) => header(req, n).map(Cow::Borrowed),
            Var::Jwt(n) => identity.claims.as_ref().and_then(|c| c.get(n)),
            Var::Auth(n) => identity
                .exposed
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| Cow::Borrowed(v.as_str())),
            Var::Form(_) | Var::Pointer(_) => None,
        }
    };
    let mut channels: Vec<String> = Vec::new();
    for t in &route.channels {
        let ch = t.render_channel(lookup).map_err(|e| match e {
            RenderError::Missing(v) => refuse(400, format!("{v} is required to subscribe")),
            RenderError::BadValue(..) => refuse(400, format!("bad channel value: {e}")),
        })?;
        if !channels.contains(&ch) {
            channels.push(ch);
        }
    }
    for (k, v) in &query {
        if k != "channel" {
            continue;
        }
        check_channel(v).map_err(|why| refuse(400, format!("bad channel: {why}")))?;
        // A token's channels claim allows by itself, narrowed by the route's
        // patterns when it lists any; without a claim only the route's count.
        let by_route = route.allow_channels.iter().any(|p| p.matches(v));
        let allowed = match &identity.allowed {
            Some(claim) => {
                claim.iter().any(|p| p.matches(v)) && (by_route || route.allow_channels.is_empty())
            }
            None => by_route,
        };
        if !allowed {
            return Err(refuse(
                403,
                format!("channel {v:?} is not allowed on this route"),
            ));
        }
        if !channels.contains(v) {
            channels.push(v.clone());
        }
    }
    // Poll channels are keyed by a client's credentials: never nameable.
    if let Some(ch) = channels.iter().find(|c| c.starts_with(CHANNEL_PREFIX)) {
        return Err(refuse(
            403,
            format!("channel {ch:?} is reserved for pollers"),
        ));
    }
    // A poll route adds its poller's channel after this.
    if channels.is_empty() && route.poll.is_none() {
        return Err(refuse(400, "no channel: add ?channel=NAME"));
    }
    if channels.len() > max_channels {
        return Err(refuse(
            400,
            format!(
                "{} channels requested, at most {max_channels} allowed",
                channels.len()
            ),
        ));
    }
    let last_id = header(req, "last-event-id")
        .map(str::to_string)
        .or_else(|| {
            query
                .iter()
                .find(|(k, _)| k == "lastEventId")
                .map(|(_, v)| v.clone())
        })
        .filter(|s| !s.trim().is_empty());
    Ok(Wanted {
        channels,
        resume: last_id.map(Resume::After).unwrap_or(Resume::Live),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::template::Template;
    use crate::config::{ChannelPattern, SseSettings};
    use std::time::Duration;

    fn route(channels: &[&str], allow: &[&str]) -> SseRoute {
        SseRoute {
            channels: channels
                .iter()
                .map(|c| Template::parse(c).unwrap())
                .collect(),
            allow_channels: allow
                .iter()
                .map(|p| ChannelPattern(p.to_string()))
                .collect(),
            settings: SseSettings {
                heartbeat: Duration::from_secs(1),
                retry: Duration::from_secs(1),
                client_queue: 8,
            },
            poll: None,
            auth: Default::default(),
        }
    }

    fn req(uri: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", uri.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn none() -> Identity {
        Identity::default()
    }

    fn params(v: &str) -> Vec<(String, String)> {
        vec![("room".to_string(), v.to_string())]
    }

    #[test]
    fn renders_channels_and_resume() {
        let r = route(&["room:{room}", "u:{query.u}"], &[]);
        let w = resolve(
            &req("/e/a1?u=7", &[("last-event-id", "x-3")]),
            &r,
            &params("a1"),
            8,
            &Identity::default(),
        )
        .unwrap();
        assert_eq!(w.channels, vec!["room:a1", "u:7"]);
        assert_eq!(w.resume, Resume::After("x-3".into()));
        let w = resolve(
            &req("/e/a1?u=7&lastEventId=x-4", &[]),
            &r,
            &params("a1"),
            8,
            &none(),
        )
        .unwrap();
        assert_eq!(w.resume, Resume::After("x-4".into()));
    }

    #[test]
    fn injection_is_refused() {
        let r = route(&["room:{room}"], &[]);
        for evil in ["a*", "a%2Cb", "a%0Ab", "..%2F", "%2A", ""] {
            let e = resolve(&req("/e/x", &[]), &r, &params(evil), 8, &none()).unwrap_err();
            assert_eq!(e.status, 400, "{evil}: {e:?}");
        }
        let ok = resolve(&req("/e/x", &[]), &r, &params("a%40b"), 8, &none()).unwrap();
        assert_eq!(ok.channels, vec!["room:a@b"]);
    }

    #[test]
    fn extra_channels_only_where_allowed() {
        let r = route(&["base"], &["news:*"]);
        let w = resolve(
            &req("/e?channel=news:a&channel=news:b", &[]),
            &r,
            &[],
            8,
            &none(),
        )
        .unwrap();
        assert_eq!(w.channels, vec!["base", "news:a", "news:b"]);
        assert_eq!(
            resolve(&req("/e?channel=secret", &[]), &r, &[], 8, &none())
                .unwrap_err()
                .status,
            403
        );
        assert_eq!(
            resolve(&req("/e?channel=news:*", &[]), &r, &[], 8, &none())
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            resolve(
                &req("/e?channel=news:a&channel=news:b", &[]),
                &r,
                &[],
                2,
                &none()
            )
            .unwrap_err()
            .status,
            400
        );
        let open = route(&["base"], &["*"]);
        let poll_channel = req("/e?channel=poll:0:abc", &[]);
        assert_eq!(
            resolve(&poll_channel, &open, &[], 8, &none())
                .unwrap_err()
                .status,
            403
        );
        let closed = route(&["base"], &[]);
        assert_eq!(
            resolve(&req("/e?channel=news:a", &[]), &closed, &[], 8, &none())
                .unwrap_err()
                .status,
            403
        );
    }

    #[test]
    fn claims_and_auth_values_are_checked_like_any_value() {
        let r = route(&["user:{jwt.sub}", "t:{auth.x-team}"], &["news:*"]);
        let with = |sub: serde_json::Value, team: &str| Identity {
            claims: Some(Claims {
                map: serde_json::json!({ "sub": sub })
                    .as_object()
                    .unwrap()
                    .clone(),
                exp: None,
            }),
            exposed: vec![("x-team".into(), team.into())],
            allowed: None,
        };
        let w = resolve(&req("/e", &[]), &r, &[], 8, &with("u1".into(), "red")).unwrap();
        assert_eq!(w.channels, vec!["user:u1", "t:red"]);
        for (sub, team) in [
            ("a*", "red"),
            ("a,b", "red"),
            ("", "red"),
            ("..", "red"),
            ("u", "a\nb"),
            ("u", "x*"),
        ] {
            let e = resolve(&req("/e", &[]), &r, &[], 8, &with(sub.into(), team)).unwrap_err();
            assert_eq!(e.status, 400, "{sub} {team}: {e:?}");
        }
        let e = resolve(
            &req("/e", &[]),
            &r,
            &[],
            8,
            &with(serde_json::json!(["a"]), "red"),
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
        let e = resolve(&req("/e", &[]), &r, &[], 8, &none()).unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn a_channels_claim_limits_extra_channels() {
        let mut id = Identity {
            allowed: Some(vec![ChannelPattern("news:a*".into())]),
            ..Identity::default()
        };
        let open = route(&["base"], &[]);
        let narrowed = route(&["base"], &["news:*"]);
        let ok = resolve(&req("/e?channel=news:ab", &[]), &open, &[], 8, &id).unwrap();
        assert_eq!(ok.channels, vec!["base", "news:ab"]);
        assert_eq!(
            resolve(&req("/e?channel=news:b", &[]), &open, &[], 8, &id)
                .unwrap_err()
                .status,
            403
        );
        assert!(resolve(&req("/e?channel=news:ab", &[]), &narrowed, &[], 8, &id).is_ok());
        id.allowed = Some(vec![ChannelPattern("*".into())]);
        assert_eq!(
            resolve(&req("/e?channel=other", &[]), &narrowed, &[], 8, &id)
                .unwrap_err()
                .status,
            403
        );
        id.allowed = Some(vec![]);
        assert_eq!(
            resolve(&req("/e?channel=news:a", &[]), &narrowed, &[], 8, &id)
                .unwrap_err()
                .status,
            403
        );
    }
}

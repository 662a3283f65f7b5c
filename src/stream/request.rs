//! What an SSE request subscribes to: the route's channel templates rendered
//! from this request's values (path, query, headers, and what auth
//! established), plus `?channel=` within `allow_channels` and the token's
//! channels claim, plus where to resume. Pure: no I/O.

use crate::channel::{self, ChannelError, ChannelPattern, POLL_PREFIX};
use crate::hub::Resume;
use crate::template::{RenderError, Template};
use crate::values::RequestValues;
use std::fmt;

/// Why a request cannot subscribe to what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SubscribeError {
    /// A placeholder of a channel template has no value here.
    Missing(String),
    /// A value would put a forbidden character into a channel name.
    BadValue(RenderError),
    /// A `?channel=` value is not a channel name.
    BadChannel(ChannelError),
    /// A `?channel=` the route (or the token) does not allow.
    NotAllowed(String),
    /// A poll channel named by a client.
    Reserved(String),
    /// Nothing to subscribe to.
    NoChannel,
    TooMany {
        asked: usize,
        max: usize,
    },
}

impl fmt::Display for SubscribeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscribeError::Missing(v) => write!(f, "{v} is required to subscribe"),
            SubscribeError::BadValue(e) => write!(f, "bad channel value: {e}"),
            SubscribeError::BadChannel(e) => write!(f, "bad channel: {e}"),
            SubscribeError::NotAllowed(c) => {
                write!(f, "channel {c:?} is not allowed on this route")
            }
            SubscribeError::Reserved(c) => write!(f, "channel {c:?} is reserved for pollers"),
            SubscribeError::NoChannel => f.write_str("no channel: add ?channel=NAME"),
            SubscribeError::TooMany { asked, max } => {
                write!(f, "{asked} channels requested, at most {max} allowed")
            }
        }
    }
}

impl std::error::Error for SubscribeError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub channels: Vec<String>,
    pub resume: Resume,
}

/// What an sse route lets a request subscribe to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Offer<'a> {
    pub channels: &'a [Template],
    pub allow_channels: &'a [ChannelPattern],
    /// A poll route adds its poller's channel after this, so it may ask for none.
    pub polls: bool,
    pub max_channels: usize,
}

pub(crate) fn resolve(
    values: &RequestValues<'_>,
    offer: Offer<'_>,
) -> Result<Wanted, SubscribeError> {
    let mut channels: Vec<String> = Vec::new();
    for t in offer.channels {
        let ch = t.render_channel(|v| values.get(v)).map_err(|e| match e {
            RenderError::Missing(v) => SubscribeError::Missing(v),
            e => SubscribeError::BadValue(e),
        })?;
        if !channels.contains(&ch) {
            channels.push(ch);
        }
    }
    for v in values.query_all("channel") {
        channel::check(v).map_err(SubscribeError::BadChannel)?;
        // A token's channels claim allows by itself, narrowed by the route's
        // patterns when it lists any; without a claim only the route's count.
        let by_route = offer.allow_channels.iter().any(|p| p.matches(v));
        let allowed = match &values.identity.allowed {
            Some(claim) => {
                claim.iter().any(|p| p.matches(v)) && (by_route || offer.allow_channels.is_empty())
            }
            None => by_route,
        };
        if !allowed {
            return Err(SubscribeError::NotAllowed(v.to_string()));
        }
        if !channels.iter().any(|c| c == v) {
            channels.push(v.to_string());
        }
    }
    // Poll channels are keyed by a client's credentials: never nameable.
    if let Some(ch) = channels.iter().find(|c| c.starts_with(POLL_PREFIX)) {
        return Err(SubscribeError::Reserved(ch.clone()));
    }
    if channels.is_empty() && !offer.polls {
        return Err(SubscribeError::NoChannel);
    }
    if channels.len() > offer.max_channels {
        return Err(SubscribeError::TooMany {
            asked: channels.len(),
            max: offer.max_channels,
        });
    }
    let last_id = values
        .header("last-event-id")
        .or_else(|| values.query("lastEventId"))
        .filter(|s| !s.trim().is_empty());
    Ok(Wanted {
        channels,
        resume: last_id.map_or(Resume::Live, |id| Resume::After(id.to_string())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::{Claims, Identity};

    struct Route {
        channels: Vec<Template>,
        allow: Vec<ChannelPattern>,
    }

    fn route(channels: &[&str], allow: &[&str]) -> Route {
        Route {
            channels: channels
                .iter()
                .map(|c| Template::parse(c).unwrap())
                .collect(),
            allow: allow
                .iter()
                .map(|p| ChannelPattern(p.to_string()))
                .collect(),
        }
    }

    /// Resolve `uri` (path params `room`) with these headers and identity.
    fn run(
        r: &Route,
        uri: &str,
        room: &str,
        headers: &[(&str, &str)],
        max: usize,
        identity: Identity,
    ) -> Result<Wanted, SubscribeError> {
        let query = uri.split_once('?').map(|(_, q)| q);
        let mut map = http::HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let params = vec![("room".to_string(), room.to_string())];
        let mut values = RequestValues::new(&params, query, &map);
        values.identity = identity;
        resolve(
            &values,
            Offer {
                channels: &r.channels,
                allow_channels: &r.allow,
                polls: false,
                max_channels: max,
            },
        )
    }

    fn none() -> Identity {
        Identity::default()
    }

    #[test]
    fn renders_channels_and_resume() {
        let r = route(&["room:{room}", "u:{query.u}"], &[]);
        let w = run(
            &r,
            "/e/a1?u=7",
            "a1",
            &[("last-event-id", "x-3")],
            8,
            none(),
        )
        .unwrap();
        assert_eq!(w.channels, vec!["room:a1", "u:7"]);
        assert_eq!(w.resume, Resume::After("x-3".into()));
        let w = run(&r, "/e/a1?u=7&lastEventId=x-4", "a1", &[], 8, none()).unwrap();
        assert_eq!(w.resume, Resume::After("x-4".into()));
    }

    #[test]
    fn injection_is_refused() {
        let r = route(&["room:{room}"], &[]);
        for evil in ["a*", "a%2Cb", "a%0Ab", "..%2F", "%2A", ""] {
            let e = run(&r, "/e/x", evil, &[], 8, none()).unwrap_err();
            assert!(matches!(e, SubscribeError::BadValue(_)), "{evil}: {e:?}");
        }
        let ok = run(&r, "/e/x", "a%40b", &[], 8, none()).unwrap();
        assert_eq!(ok.channels, vec!["room:a@b"]);
    }

    #[test]
    fn extra_channels_only_where_allowed() {
        let r = route(&["base"], &["news:*"]);
        let w = run(&r, "/e?channel=news:a&channel=news:b", "", &[], 8, none()).unwrap();
        assert_eq!(w.channels, vec!["base", "news:a", "news:b"]);
        assert!(matches!(
            run(&r, "/e?channel=secret", "", &[], 8, none()),
            Err(SubscribeError::NotAllowed(_))
        ));
        assert!(matches!(
            run(&r, "/e?channel=news:*", "", &[], 8, none()),
            Err(SubscribeError::BadChannel(_))
        ));
        assert!(matches!(
            run(&r, "/e?channel=news:a&channel=news:b", "", &[], 2, none()),
            Err(SubscribeError::TooMany { asked: 3, max: 2 })
        ));
        let open = route(&["base"], &["*"]);
        assert!(matches!(
            run(&open, "/e?channel=poll:0:abc", "", &[], 8, none()),
            Err(SubscribeError::Reserved(_))
        ));
        let closed = route(&["base"], &[]);
        assert!(matches!(
            run(&closed, "/e?channel=news:a", "", &[], 8, none()),
            Err(SubscribeError::NotAllowed(_))
        ));
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
        let w = run(&r, "/e", "", &[], 8, with("u1".into(), "red")).unwrap();
        assert_eq!(w.channels, vec!["user:u1", "t:red"]);
        for (sub, team) in [
            ("a*", "red"),
            ("a,b", "red"),
            ("", "red"),
            ("..", "red"),
            ("u", "a\nb"),
            ("u", "x*"),
        ] {
            let e = run(&r, "/e", "", &[], 8, with(sub.into(), team)).unwrap_err();
            assert!(
                matches!(e, SubscribeError::BadValue(_)),
                "{sub} {team}: {e:?}"
            );
        }
        let e = run(&r, "/e", "", &[], 8, with(serde_json::json!(["a"]), "red")).unwrap_err();
        assert!(matches!(e, SubscribeError::Missing(_)), "{e:?}");
        let e = run(&r, "/e", "", &[], 8, none()).unwrap_err();
        assert!(matches!(e, SubscribeError::Missing(_)), "{e:?}");
    }

    #[test]
    fn a_channels_claim_limits_extra_channels() {
        let mut id = Identity {
            allowed: Some(vec![ChannelPattern("news:a*".into())]),
            ..Identity::default()
        };
        let open = route(&["base"], &[]);
        let narrowed = route(&["base"], &["news:*"]);
        let ok = run(&open, "/e?channel=news:ab", "", &[], 8, id.clone()).unwrap();
        assert_eq!(ok.channels, vec!["base", "news:ab"]);
        assert!(run(&open, "/e?channel=news:b", "", &[], 8, id.clone()).is_err());
        assert!(run(&narrowed, "/e?channel=news:ab", "", &[], 8, id.clone()).is_ok());
        id.allowed = Some(vec![ChannelPattern("*".into())]);
        assert!(run(&narrowed, "/e?channel=other", "", &[], 8, id.clone()).is_err());
        id.allowed = Some(vec![]);
        assert!(run(&narrowed, "/e?channel=news:a", "", &[], 8, id).is_err());
    }
}

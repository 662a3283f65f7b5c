//! The values a template placeholder can take from one request: path
//! parameters (`{name}`, percent-decoded once), the query (`{query.x}`,
//! parsed once), headers (`{header.x}`), and what auth established
//! (`{jwt.x}` claims, `{auth.x}` forward-auth headers). Every part of the
//! gateway that renders a template from a request reads it through here.
//!
//! Webhook bodies (`{/pointer}`, `{form.x}`) are a source's own values: the
//! webhook mapper answers those and asks this resolver for the rest.

use crate::channel::ChannelPattern;
use crate::template::Var;
use http::HeaderMap;
use percent_encoding::percent_decode_str;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// A verified token's claims.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub map: Map<String, Value>,
    /// `exp` (unix seconds), when the stream must be closed.
    pub exp: Option<u64>,
}

impl Claims {
    fn value(&self, name: &str) -> Option<&Value> {
        self.map.get(name).or_else(|| {
            let mut parts = name.split('.');
            let first = self.map.get(parts.next()?)?;
            parts.try_fold(first, |v, p| v.get(p))
        })
    }

    /// `{jwt.name}`: a top-level claim, else a dotted path into nested objects
    /// (`{jwt.realm.user}`). Strings as they are, numbers and booleans as
    /// text; anything else has no value.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        match self.value(name)? {
            Value::String(s) => Some(Cow::Borrowed(s)),
            Value::Number(n) => Some(Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(Cow::Owned(b.to_string())),
            _ => None,
        }
    }

    /// The channel patterns the token allows (`*` globs), when it carries
    /// the claim. A claim that is neither a string nor a list of strings
    /// allows nothing.
    pub fn channel_patterns(&self, claim: &str) -> Option<Vec<ChannelPattern>> {
        Some(match self.value(claim)? {
            Value::String(s) => vec![ChannelPattern(s.clone())],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(|s| ChannelPattern(s.to_string())))
                .collect(),
            _ => Vec::new(),
        })
    }
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

/// One request's values, decoded once.
#[derive(Debug)]
pub struct RequestValues<'r> {
    params: Vec<(&'r str, Cow<'r, str>)>,
    query: Vec<(Cow<'r, str>, Cow<'r, str>)>,
    headers: &'r HeaderMap,
    /// Filled in by auth as it establishes who is asking.
    pub identity: Identity,
}

impl<'r> RequestValues<'r> {
    /// `params` as the router matched them (still percent-encoded), the
    /// raw query string (without `?`) and the request headers.
    pub fn new(
        params: &'r [(String, String)],
        query: Option<&'r str>,
        headers: &'r HeaderMap,
    ) -> RequestValues<'r> {
        RequestValues {
            params: params
                .iter()
                .map(|(k, v)| (k.as_str(), percent_decode_str(v).decode_utf8_lossy()))
                .collect(),
            query: query
                .map(|q| form_urlencoded::parse(q.as_bytes()).collect())
                .unwrap_or_default(),
            headers,
            identity: Identity::default(),
        }
    }

    /// A path parameter, percent-decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// The first value of a query parameter.
    pub fn query(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Every value of a repeated query parameter (`?channel=a&channel=b`).
    pub fn query_all<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'s str> + 's {
        self.query
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    /// A header value as text (None when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&'r str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn headers(&self) -> &'r HeaderMap {
        self.headers
    }

    /// The value of a placeholder in this request; None when it has none
    /// here (webhook-only placeholders always have none).
    pub fn get(&self, v: &Var) -> Option<Cow<'_, str>> {
        match v {
            Var::Param(n) => self.param(n).map(Cow::Borrowed),
            Var::Query(n) => self.query(n).map(Cow::Borrowed),
            Var::Header(n) => self.header(n).map(Cow::Borrowed),
            Var::Jwt(n) => self.identity.claims.as_ref().and_then(|c| c.get(n)),
            Var::Auth(n) => self
                .identity
                .exposed
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| Cow::Borrowed(v.as_str())),
            Var::Form(_) | Var::Pointer(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn decodes_once_and_resolves_every_kind() {
        let params = vec![("room".to_string(), "a%20b".to_string())];
        let mut headers = HeaderMap::new();
        headers.insert("x-team", "red".parse().unwrap());
        let mut v = RequestValues::new(&params, Some("u=1&c=a&c=b&e=%2A"), &headers);
        v.identity.claims = Some(Claims {
            map: json!({"sub": "u1", "n": 7, "o": {"p": "q"}, "l": [1]})
                .as_object()
                .unwrap()
                .clone(),
            exp: None,
        });
        v.identity.exposed = vec![("x-user".into(), "bob".into())];
        let get = |var: Var| v.get(&var).map(|c| c.into_owned());
        assert_eq!(get(Var::Param("room".into())).as_deref(), Some("a b"));
        assert_eq!(get(Var::Query("u".into())).as_deref(), Some("1"));
        assert_eq!(get(Var::Query("e".into())).as_deref(), Some("*"));
        assert_eq!(get(Var::Header("x-team".into())).as_deref(), Some("red"));
        assert_eq!(get(Var::Jwt("sub".into())).as_deref(), Some("u1"));
        assert_eq!(get(Var::Jwt("n".into())).as_deref(), Some("7"));
        assert_eq!(get(Var::Jwt("o.p".into())).as_deref(), Some("q"));
        assert_eq!(get(Var::Jwt("o".into())), None);
        assert_eq!(get(Var::Jwt("l".into())), None);
        assert_eq!(get(Var::Auth("x-user".into())).as_deref(), Some("bob"));
        assert_eq!(get(Var::Pointer("/a".into())), None);
        assert_eq!(v.query_all("c").collect::<Vec<_>>(), vec!["a", "b"]);
    }

    #[test]
    fn channel_claims() {
        let c = Claims {
            map: json!({"subscribe": ["news:*", 3], "one": "x", "m": {"s": ["y"]}})
                .as_object()
                .unwrap()
                .clone(),
            exp: None,
        };
        let p = c.channel_patterns("subscribe").unwrap();
        assert_eq!(p, vec![ChannelPattern("news:*".into())]);
        assert_eq!(c.channel_patterns("one").unwrap().len(), 1);
        assert_eq!(c.channel_patterns("m.s").unwrap().len(), 1);
        assert!(c.channel_patterns("none").is_none());
    }
}

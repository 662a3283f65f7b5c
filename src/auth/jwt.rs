//! Subscriber JWTs: where the token is taken from, which key verifies it,
//! what its claims let a request subscribe to. Verification itself (signature
//! in constant time, `exp`/`nbf` with leeway, `aud`, `iss`) is jsonwebtoken's.
//! Keys are read once at load (`config::load::auth`); nothing here does I/O.

use crate::config::ChannelPattern;
use jsonwebtoken::{DecodingKey, Validation};
use pingora_http::RequestHeader;
use serde_json::{Map, Value};
use std::borrow::Cow;

/// Where a token may come from, tried in the configured order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`
    Header,
    /// `?NAME=<token>` (EventSource cannot set headers)
    Query(String),
    /// `Cookie: NAME=<token>`
    Cookie(String),
}

impl TokenSource {
    pub fn parse(s: &str) -> Result<TokenSource, String> {
        let s = s.trim();
        if s == "header" {
            return Ok(TokenSource::Header);
        }
        match s.split_once(':') {
            Some(("query", n)) if !n.is_empty() => Ok(TokenSource::Query(n.to_string())),
            Some(("cookie", n)) if !n.is_empty() => Ok(TokenSource::Cookie(n.to_string())),
            _ => Err(format!(
                "token source `{s}` is not `header`, `query:NAME` or `cookie:NAME`"
            )),
        }
    }
}

/// The keys a route accepts.
#[derive(Clone)]
pub enum Keys {
    /// An HMAC secret or one public key.
    One(DecodingKey),
    /// A JWKS: the token's `kid` picks the key (a set of one needs no kid).
    Set(Vec<(Option<String>, DecodingKey)>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::One(_) => f.write_str("Keys::One(<redacted>)"),
            Keys::Set(set) => write!(f, "Keys::Set({} keys)", set.len()),
        }
    }
}

#[derive(Clone)]
pub struct JwtAuth {
    pub keys: Keys,
    pub validation: Validation,
    pub token_from: Vec<TokenSource>,
    /// The claim that lists channel patterns a token may add with `?channel=`.
    pub channels_claim: String,
    /// Added to `exp` when deciding when to close a stream, as for validation.
    pub leeway: u64,
}

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs, even public ones: they are noise there.
        f.debug_struct("JwtAuth")
            .field("algorithms", &self.validation.algorithms)
            .field("token_from", &self.token_from)
            .field("channels_claim", &self.channels_claim)
            .finish_non_exhaustive()
    }
}

/// A verified token's claims.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub map: Map<String, Value>,
    /// `exp` (unix seconds), when the stream must be closed.
    pub exp: Option<u64>,
}

impl Claims {
    /// `{jwt.name}`: a top-level claim, else a dotted path into nested objects
    /// (`{jwt.realm.user}`). Strings as they are, numbers and booleans as
    /// text; anything else has no value.
    pub fn get(&self, name: &str) -> Option<Cow<'_, str>> {
        let v = self.map.get(name).or_else(|| {
            let mut parts = name.split('.');
            let first = self.map.get(parts.next()?)?;
            parts.try_fold(first, |v, p| v.get(p))
        })?;
        match v {
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
        let v = self.map.get(claim).or_else(|| {
            let mut parts = claim.split('.');
            let first = self.map.get(parts.next()?)?;
            parts.try_fold(first, |v, p| v.get(p))
        })?;
        Some(match v {
            Value::String(s) => vec![ChannelPattern(s.clone())],
            Value::Array(items) => items
                .iter()
                .filter_map(|i| i.as_str().map(|s| ChannelPattern(s.to_string())))
                .collect(),
            _ => Vec::new(),
        })
    }
}

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN: usize = 8192;

impl JwtAuth {
    /// The token of this request, from the first configured source that has one.
    pub fn token<'a>(
        &self,
        req: &'a RequestHeader,
        query: &'a [(String, String)],
    ) -> Option<&'a str> {
        self.token_from.iter().find_map(|src| match src {
            TokenSource::Header => req
                .headers
                .get_all(http::header::AUTHORIZATION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| {
                    let (scheme, rest) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
                }),
            TokenSource::Query(name) => query
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str()),
            TokenSource::Cookie(name) => req
                .headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|pair| {
                    let (k, v) = pair.trim().split_once('=')?;
                    (k.trim() == name).then(|| v.trim().trim_matches('"'))
                }),
        })
    }

    /// Verify `token`; the claims, or a one-line reason for a 401.
    pub fn verify(&self, token: &str) -> Result<Claims, &'static str> {
        if token.is_empty() {
            return Err("missing token");
        }
        if token.len() > MAX_TOKEN {
            return Err("token too long");
        }
        let key = match &self.keys {
            Keys::One(k) => k,
            Keys::Set(set) => {
                let header = jsonwebtoken::decode_header(token).map_err(|_| "malformed token")?;
                match (&header.kid, set.as_slice()) {
                    (None, [(_, only)]) => only,
                    (None, _) => return Err("token has no kid"),
                    (Some(kid), set) => set
                        .iter()
                        .find(|(k, _)| k.as_deref() == Some(kid.as_str()))
                        .map(|(_, key)| key)
                        .ok_or("unknown key id")?,
                }
            }
        };
        // jsonwebtoken wants every allowed algorithm to fit the key, so a
        // JWKS that mixes RSA and EC keys narrows the list to this key's family.
        let narrowed;
        let validation = match &self.keys {
            Keys::One(_) => &self.validation,
            Keys::Set(_) => {
                let mut v = self.validation.clone();
                v.algorithms.retain(|a| a.family() == key.family());
                if v.algorithms.is_empty() {
                    return Err("algorithm not allowed");
                }
                narrowed = v;
                &narrowed
            }
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| reason(e.kind()))?;
        let exp = data.claims.get("exp").and_then(Value::as_u64);
        Ok(Claims {
            map: data.claims,
            exp,
        })
    }
}

fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> &'static str {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => "token expired",
        K::ImmatureSignature => "token not yet valid",
        K::InvalidAudience => "wrong audience",
        K::InvalidIssuer => "wrong issuer",
        K::InvalidSignature => "invalid signature",
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            "algorithm not allowed"
        }
        K::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => "token has no exp",
            "aud" => "wrong audience",
            "iss" => "wrong issuer",
            _ => "token lacks a required claim",
        },
        _ => "malformed token",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::json;

    fn auth() -> JwtAuth {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_audience(&["app"]);
        v.set_required_spec_claims(&["exp", "aud"]);
        JwtAuth {
            keys: Keys::One(DecodingKey::from_secret(b"k")),
            validation: v,
            token_from: vec![
                TokenSource::Header,
                TokenSource::Query("access_token".into()),
                TokenSource::Cookie("token".into()),
            ],
            channels_claim: "subscribe".into(),
            leeway: 0,
        }
    }

    fn token(claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap()
    }

    fn now() -> u64 {
        crate::auth::expiry::unix_now()
    }

    #[test]
    fn verifies_and_explains() {
        let a = auth();
        let ok =
            token(json!({"sub": "u1", "aud": "app", "exp": now() + 60, "n": 7, "o": {"p": "q"}}));
        let c = a.verify(&ok).unwrap();
        assert_eq!(c.get("sub").as_deref(), Some("u1"));
        assert_eq!(c.get("n").as_deref(), Some("7"));
        assert_eq!(c.get("o.p").as_deref(), Some("q"));
        assert_eq!(c.get("o"), None);
        let cases = [
            (json!({"aud": "app", "exp": now() - 10}), "token expired"),
            (json!({"aud": "other", "exp": now() + 60}), "wrong audience"),
            (json!({"exp": now() + 60}), "wrong audience"),
            (
                json!({"aud": "app", "exp": now() + 60, "nbf": now() + 60}),
                "token not yet valid",
            ),
            (json!({"aud": "app"}), "token has no exp"),
        ];
        let mut a = a;
        a.validation.validate_nbf = true;
        for (claims, why) in cases {
            assert_eq!(
                a.verify(&token(claims.clone())).unwrap_err(),
                why,
                "{claims}"
            );
        }
        assert_eq!(a.verify("nope").unwrap_err(), "malformed token");
        let forged = format!("{}x", &ok[..ok.len() - 1]);
        assert!(a.verify(&forged).is_err());
    }

    #[test]
    fn takes_the_token_from_each_source() {
        let a = auth();
        let mut r = RequestHeader::build("GET", b"/e?access_token=q", None).unwrap();
        r.insert_header("cookie", "a=b; token=c").unwrap();
        let q = vec![("access_token".to_string(), "q".to_string())];
        assert_eq!(a.token(&r, &q), Some("q"));
        assert_eq!(a.token(&r, &[]), Some("c"));
        r.insert_header("authorization", "Bearer h").unwrap();
        assert_eq!(a.token(&r, &q), Some("h"));
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

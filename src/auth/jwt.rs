//! Subscriber JWTs: where the token is taken from, which key verifies it.
//! Verification itself (signature in constant time, `exp`/`nbf` with
//! leeway, `aud`, `iss`) is jsonwebtoken's. Keys are read once at load
//! (`config::load::auth`) or fetched by `jwks`; nothing here does I/O.

use crate::config::{Jwt, Keys, TokenSource};
use crate::values::{Claims, RequestValues};
use jsonwebtoken::DecodingKey;
use serde_json::{Map, Value};

/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN: usize = 8192;

/// Why a token was refused (the client gets 401 and this reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Missing,
    TooLong,
    Malformed,
    NoKid,
    UnknownKid,
    AlgorithmNotAllowed,
    Expired,
    NotYetValid,
    WrongAudience,
    WrongIssuer,
    InvalidSignature,
    NoExp,
    MissingClaim,
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JwtError::Missing => "missing token",
            JwtError::TooLong => "token too long",
            JwtError::Malformed => "malformed token",
            JwtError::NoKid => "token has no kid",
            JwtError::UnknownKid => "unknown key id",
            JwtError::AlgorithmNotAllowed => "algorithm not allowed",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not yet valid",
            JwtError::WrongAudience => "wrong audience",
            JwtError::WrongIssuer => "wrong issuer",
            JwtError::InvalidSignature => "invalid signature",
            JwtError::NoExp => "token has no exp",
            JwtError::MissingClaim => "token lacks a required claim",
        })
    }
}

impl std::error::Error for JwtError {}

/// The token of this request, from the first configured source that has one.
pub(crate) fn token<'a>(jwt: &Jwt, req: &'a RequestValues<'_>) -> Option<&'a str> {
    jwt.token_from.iter().find_map(|src| match src {
        TokenSource::Header => req
            .headers()
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let (scheme, rest) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            }),
        TokenSource::Query(name) => req.query(name),
        TokenSource::Cookie(name) => req
            .headers()
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

/// The keys a token is checked against, once known.
#[derive(Clone, Copy)]
pub(crate) enum KeyRef<'k> {
    One(&'k DecodingKey),
    /// The token's `kid` picks the key (a set of one needs no kid).
    Set(&'k [(Option<String>, DecodingKey)]),
}

impl<'k> KeyRef<'k> {
    /// The keys read at load; None for a JWKS fetched while running.
    pub(crate) fn of(keys: &'k Keys) -> Option<KeyRef<'k>> {
        match keys {
            Keys::One(k) => Some(KeyRef::One(k)),
            Keys::Set(set) => Some(KeyRef::Set(set)),
            Keys::Remote(_) => None,
        }
    }
}

/// What can be refused before any key is looked at (or fetched).
pub(crate) fn precheck(token: &str) -> Result<(), JwtError> {
    if token.is_empty() {
        return Err(JwtError::Missing);
    }
    if token.len() > MAX_TOKEN {
        return Err(JwtError::TooLong);
    }
    jsonwebtoken::decode_header(token)
        .map(drop)
        .map_err(|_| JwtError::Malformed)
}

/// Verify `token` with the keys read at load.
pub(crate) fn verify(jwt: &Jwt, token: &str) -> Result<Claims, JwtError> {
    // A remote set is never checked here: `auth::jwks` has it.
    let keys = KeyRef::of(&jwt.keys).ok_or(JwtError::UnknownKid)?;
    verify_with(jwt, keys, token)
}

/// Verify `token` against `keys`: its claims, or why it is refused.
pub(crate) fn verify_with(jwt: &Jwt, keys: KeyRef<'_>, token: &str) -> Result<Claims, JwtError> {
    precheck(token)?;
    let key = match keys {
        KeyRef::One(k) => k,
        KeyRef::Set(set) => {
            let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Malformed)?;
            match (&header.kid, set) {
                (None, [(_, only)]) => only,
                (None, _) => return Err(JwtError::NoKid),
                (Some(kid), set) => set
                    .iter()
                    .find(|(k, _)| k.as_deref() == Some(kid.as_str()))
                    .map(|(_, key)| key)
                    .ok_or(JwtError::UnknownKid)?,
            }
        }
    };
    // jsonwebtoken wants every allowed algorithm to fit the key, so a
    // JWKS that mixes RSA and EC keys narrows the list to this key's family.
    let narrowed;
    let validation = match keys {
        KeyRef::One(_) => &jwt.validation,
        KeyRef::Set(_) => {
            let mut v = jwt.validation.clone();
            v.algorithms.retain(|a| a.family() == key.family());
            if v.algorithms.is_empty() {
                return Err(JwtError::AlgorithmNotAllowed);
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

fn reason(kind: &jsonwebtoken::errors::ErrorKind) -> JwtError {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => JwtError::Expired,
        K::ImmatureSignature => JwtError::NotYetValid,
        K::InvalidAudience => JwtError::WrongAudience,
        K::InvalidIssuer => JwtError::WrongIssuer,
        K::InvalidSignature => JwtError::InvalidSignature,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            JwtError::AlgorithmNotAllowed
        }
        K::MissingRequiredClaim(c) => match c.as_str() {
            "exp" => JwtError::NoExp,
            "aud" => JwtError::WrongAudience,
            "iss" => JwtError::WrongIssuer,
            _ => JwtError::MissingClaim,
        },
        _ => JwtError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
    use serde_json::json;

    fn auth() -> Jwt {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 0;
        v.set_audience(&["app"]);
        v.set_required_spec_claims(&["exp", "aud"]);
        Jwt {
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

    fn sign(claims: Value) -> String {
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
            sign(json!({"sub": "u1", "aud": "app", "exp": now() + 60, "n": 7, "o": {"p": "q"}}));
        let c = verify(&a, &ok).unwrap();
        assert_eq!(c.get("sub").as_deref(), Some("u1"));
        assert_eq!(c.get("n").as_deref(), Some("7"));
        assert_eq!(c.get("o.p").as_deref(), Some("q"));
        assert_eq!(c.get("o"), None);
        let cases = [
            (json!({"aud": "app", "exp": now() - 10}), JwtError::Expired),
            (
                json!({"aud": "other", "exp": now() + 60}),
                JwtError::WrongAudience,
            ),
            (json!({"exp": now() + 60}), JwtError::WrongAudience),
            (
                json!({"aud": "app", "exp": now() + 60, "nbf": now() + 60}),
                JwtError::NotYetValid,
            ),
            (json!({"aud": "app"}), JwtError::NoExp),
        ];
        let mut a = a;
        a.validation.validate_nbf = true;
        for (claims, why) in cases {
            assert_eq!(
                verify(&a, &sign(claims.clone())).unwrap_err(),
                why,
                "{claims}"
            );
        }
        assert_eq!(verify(&a, "nope").unwrap_err(), JwtError::Malformed);
        let forged = format!("{}x", &ok[..ok.len() - 1]);
        assert!(verify(&a, &forged).is_err());
    }

    #[test]
    fn takes_the_token_from_each_source() {
        let a = auth();
        let mut headers = http::HeaderMap::new();
        headers.insert("cookie", "a=b; token=c".parse().unwrap());
        let r = RequestValues::new(&[], Some("access_token=q"), &headers);
        assert_eq!(token(&a, &r), Some("q"));
        let r = RequestValues::new(&[], None, &headers);
        assert_eq!(token(&a, &r), Some("c"));
        headers.insert("authorization", "bearer h".parse().unwrap());
        let r = RequestValues::new(&[], Some("access_token=q"), &headers);
        assert_eq!(token(&a, &r), Some("h"));
    }
}

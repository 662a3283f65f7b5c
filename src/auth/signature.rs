//! Webhook verification schemes. Every comparison of secret-derived bytes is
//! constant-time (`subtle`), and every refusal says which check failed but
//! never how close the guess was. Pure: the clock comes in as `now`.

use crate::config::{Secret, SignatureEncoding, Verify};
use base64::Engine;
use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::{Digest, Sha256};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use subtle::ConstantTimeEq;

/// Signatures looked at per header: enough for key rotation, not a CPU sink.
const MAX_SIGNATURES: usize = 8;

/// What a verified request tells about itself.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Verified {
    /// Standard Webhooks' `webhook-id`, which names a delivery across retries.
    pub delivery_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SignatureError {
    /// A header the scheme needs is absent or not text.
    Missing(String),
    /// The header is there but cannot be read as the scheme's format.
    Malformed(String),
    /// No signature matches.
    Mismatch,
    /// The signature matches but its timestamp is outside the tolerance: a replay.
    Stale(Duration),
}

impl SignatureError {
    /// The metrics outcome label.
    pub(crate) fn outcome(&self) -> &'static str {
        match self {
            SignatureError::Stale(_) => "stale",
            _ => "bad_signature",
        }
    }
}

impl fmt::Display for SignatureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureError::Missing(h) => write!(f, "missing {h} header"),
            SignatureError::Malformed(why) => write!(f, "malformed signature: {why}"),
            SignatureError::Mismatch => write!(f, "signature does not match"),
            SignatureError::Stale(t) => write!(
                f,
                "signature timestamp outside the tolerance of {}",
                humantime::format_duration(*t)
            ),
        }
    }
}

/// Check `body` and `headers` against the webhook's scheme at time `now`.
pub(crate) fn verify(
    scheme: &Verify,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<Verified, SignatureError> {
    match scheme {
        Verify::HmacSha256 {
            secret,
            header,
            prefix,
            encoding,
        } => {
            let value = header_text(headers, header)?;
            let given = value
                .trim()
                .strip_prefix(prefix.as_str())
                .ok_or(SignatureError::Mismatch)?;
            let given = match encoding {
                SignatureEncoding::Hex => {
                    hex::decode(given).map_err(|_| SignatureError::Malformed("not hex".into()))?
                }
                SignatureEncoding::Base64 => base64::engine::general_purpose::STANDARD
                    .decode(given)
                    .map_err(|_| SignatureError::Malformed("not base64".into()))?,
            };
            matches_any(&sign(secret, &[body]), [given.as_slice()])?;
            Ok(Verified::default())
        }
        Verify::Stripe {
            secret,
            header,
            tolerance,
        } => {
            let value = header_text(headers, header)?;
            let (t, sigs) = stripe_header(value)?;
            let expected = sign(secret, &[t.as_bytes(), b".", body]);
            matches_any(&expected, sigs.iter().map(Vec::as_slice))?;
            fresh(&t, now, *tolerance)?;
            Ok(Verified::default())
        }
        Verify::StandardWebhooks { secret, tolerance } => {
            let id = standard_header(headers, "id")?;
            let ts = standard_header(headers, "timestamp")?;
            let sigs: Vec<Vec<u8>> = standard_header(headers, "signature")?
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .take(MAX_SIGNATURES)
                .filter_map(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                .collect();
            if sigs.is_empty() {
                return Err(SignatureError::Malformed(
                    "webhook-signature has no v1,<base64> signature".into(),
                ));
            }
            let expected = sign(secret, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
            matches_any(&expected, sigs.iter().map(Vec::as_slice))?;
            fresh(ts, now, *tolerance)?;
            Ok(Verified {
                delivery_id: Some(id.to_string()),
            })
        }
        Verify::Token { header, value } => {
            let given = header_text(headers, header)?;
            // Hashing both first hides the token's length from the timing.
            let (a, b) = (
                Sha256::digest(given.trim().as_bytes()),
                Sha256::digest(&value.0),
            );
            if bool::from(a.ct_eq(&b)) {
                Ok(Verified::default())
            } else {
                Err(SignatureError::Mismatch)
            }
        }
    }
}

/// HMAC-SHA256 of the concatenated parts.
pub(crate) fn sign(secret: &Secret, parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length (long ones are hashed), so this never fails.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&secret.0) else {
        return [0; 32];
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

fn matches_any<'a>(
    expected: &[u8; 32],
    given: impl IntoIterator<Item = &'a [u8]>,
) -> Result<(), SignatureError> {
    // Look at every candidate, so the time taken does not say which one matched.
    let mut ok = subtle::Choice::from(0);
    for g in given.into_iter().take(MAX_SIGNATURES) {
        ok |= expected.as_slice().ct_eq(g);
    }
    if bool::from(ok) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn header_text<'h>(headers: &'h HeaderMap, name: &str) -> Result<&'h str, SignatureError> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| SignatureError::Missing(name.to_string()))
}

/// `webhook-x`, or the `svix-x` that Svix, the scheme's origin, still sends.
fn standard_header<'h>(headers: &'h HeaderMap, which: &str) -> Result<&'h str, SignatureError> {
    let name = format!("webhook-{which}");
    header_text(headers, &name).or_else(|_| {
        header_text(headers, &format!("svix-{which}")).map_err(|_| SignatureError::Missing(name))
    })
}

/// `t=1492774577,v1=5257a8…,v0=…` → the timestamp as sent and the v1 signatures.
fn stripe_header(value: &str) -> Result<(String, Vec<Vec<u8>>), SignatureError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for (k, v) in value.split(',').filter_map(|kv| kv.trim().split_once('=')) {
        match k {
            "t" => t = Some(v.to_string()),
            "v1" if sigs.len() < MAX_SIGNATURES => sigs.extend(hex::decode(v).ok()),
            _ => {}
        }
    }
    let t = t.ok_or_else(|| SignatureError::Malformed("no t= timestamp".into()))?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed("no v1= hex signature".into()));
    }
    Ok((t, sigs))
}

/// The signed timestamp (Unix seconds) is within `tolerance` of `now`, either way.
fn fresh(ts: &str, now: SystemTime, tolerance: Duration) -> Result<(), SignatureError> {
    let t: i64 = ts
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed("timestamp is not Unix seconds".into()))?;
    let now = match now.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(_) => 0,
    };
    if now.abs_diff(t) > tolerance.as_secs() {
        return Err(SignatureError::Stale(tolerance));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    const TOL: Duration = Duration::from_secs(300);

    #[test]
    fn hmac_hex_with_prefix_and_base64() {
        let secret = Secret(b"It's a Secret to Everybody".to_vec());
        let body = b"Hello, World!";
        // GitHub's documented example signature for this secret and body.
        let good = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        let v = Verify::HmacSha256 {
            secret: secret.clone(),
            header: "x-hub-signature-256".into(),
            prefix: "sha256=".into(),
            encoding: SignatureEncoding::Hex,
        };
        assert!(verify(&v, &headers(&[("x-hub-signature-256", good)]), body, at(0)).is_ok());
        assert!(verify(
            &v,
            &headers(&[(
                "x-hub-signature-256",
                &good.to_uppercase().replace("SHA256=", "sha256=")
            )]),
            body,
            at(0)
        )
        .is_ok());
        for bad in [
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
            "sha256=00",
            "sha256=zz",
            "",
        ] {
            assert!(
                verify(&v, &headers(&[("x-hub-signature-256", bad)]), body, at(0)).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            verify(&v, &HeaderMap::new(), body, at(0)),
            Err(SignatureError::Missing("x-hub-signature-256".into()))
        );
        let b64 = Verify::HmacSha256 {
            secret: secret.clone(),
            header: "sig".into(),
            prefix: String::new(),
            encoding: SignatureEncoding::Base64,
        };
        let sig = base64::engine::general_purpose::STANDARD.encode(sign(&secret, &[body]));
        assert!(verify(&b64, &headers(&[("sig", &sig)]), body, at(0)).is_ok());
        assert_eq!(
            verify(&b64, &headers(&[("sig", &sig)]), b"other", at(0)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stripe_checks_signature_then_tolerance() {
        let secret = Secret(b"whsec_test".to_vec());
        let v = Verify::Stripe {
            secret: secret.clone(),
            header: "stripe-signature".into(),
            tolerance: TOL,
        };
        let body = br#"{"id":"evt_1"}"#;
        let sig = hex::encode(sign(&secret, &[b"1700000000.", body]));
        let h = headers(&[(
            "stripe-signature",
            &format!("t=1700000000,v1=deadbeef,v1={sig},v0=xx"),
        )]);
        assert!(verify(&v, &h, body, at(1_700_000_100)).is_ok());
        assert_eq!(
            verify(&v, &h, body, at(1_700_000_301)),
            Err(SignatureError::Stale(TOL))
        );
        assert_eq!(
            verify(&v, &h, body, at(1_699_999_699)),
            Err(SignatureError::Stale(TOL))
        );
        assert_eq!(
            verify(&v, &h, b"{}", at(1_700_000_000)),
            Err(SignatureError::Mismatch)
        );
        let no_t = headers(&[("stripe-signature", &format!("v1={sig}"))]);
        assert!(matches!(
            verify(&v, &no_t, body, at(1_700_000_000)),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks reference libraries.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let v = Verify::StandardWebhooks {
            secret: Secret(key),
            tolerance: TOL,
        };
        let body = br#"{"test": 2432232314}"#;
        let h = headers(&[
            ("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek"),
            ("webhook-timestamp", "1614265330"),
            (
                "webhook-signature",
                "v1,bad v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            ),
        ]);
        let ok = verify(&v, &h, body, at(1_614_265_330)).unwrap();
        assert_eq!(
            ok.delivery_id.as_deref(),
            Some("msg_p5jXN8AQM9LWM0D4loKWxJek")
        );
        assert_eq!(
            verify(&v, &h, body, at(1_614_265_330 + 301)),
            Err(SignatureError::Stale(TOL))
        );
        assert_eq!(
            verify(&v, &h, b"{}", at(1_614_265_330)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn token_is_compared_whole() {
        let v = Verify::Token {
            header: "x-token".into(),
            value: Secret(b"s3cret".to_vec()),
        };
        assert!(verify(&v, &headers(&[("x-token", "s3cret")]), b"", at(0)).is_ok());
        for bad in ["s3cre", "s3crets", ""] {
            assert_eq!(
                verify(&v, &headers(&[("x-token", bad)]), b"", at(0)),
                Err(SignatureError::Mismatch)
            );
        }
    }
}

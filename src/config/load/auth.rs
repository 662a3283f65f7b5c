//! `sse.auth` (JWT, forward auth) and `grip` → runtime types. Key files are
//! read here, once, so that a missing or invalid key is a config error with
//! its position rather than a 401 for every client later. Secrets come only
//! from the environment; a JWKS may hold public keys only.

use super::Validator;
use crate::config::file;
use crate::config::runtime::{
    ForwardAuth, GripRoute, JwksUrl, Jwt, KeySet, Keys, RouteAuth, Secret, TokenSource, Upstream,
    UpstreamTls,
};
use crate::template::{Template, Var};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_FORWARD_HEADERS: [&str; 2] = ["authorization", "cookie"];

/// `header`, `query:NAME` or `cookie:NAME`.
fn token_source(s: &str) -> Result<TokenSource, String> {
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

impl Validator<'_> {
    pub(super) fn route_auth(
        &mut self,
        base: &str,
        route_path: &str,
        a: file::AuthFile,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> RouteAuth {
        let at = format!("{base}.sse.auth");
        if a.jwt.is_none() && a.forward.is_none() {
            self.err(&at, "`auth:` needs `jwt:` or `forward:`");
        }
        let has_jwt = a.jwt.is_some();
        RouteAuth {
            jwt: a
                .jwt
                .and_then(|j| self.jwt(&format!("{at}.jwt"), j))
                .map(Arc::new),
            forward: a
                .forward
                .and_then(|f| {
                    self.forward(&format!("{at}.forward"), route_path, f, upstreams, has_jwt)
                })
                .map(Arc::new),
        }
    }

    fn jwt(&mut self, at: &str, j: file::JwtFile) -> Option<Jwt> {
        let sources = [
            j.secret_env.is_some(),
            j.public_key.is_some(),
            j.jwks.is_some(),
            j.jwks_url.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            self.err(
                at,
                "give exactly one key: `secret_env` (HS*), `public_key` (PEM file), `jwks` (JWKS file) or `jwks_url`",
            );
            return None;
        }
        if j.jwks_url.is_none() && (j.jwks_ca.is_some() || j.jwks_refetch.is_some()) {
            self.err(at, "`jwks_ca` and `jwks_refetch` go with `jwks_url`");
        }
        let mut algorithms = Vec::new();
        for (i, name) in j.algorithms.iter().flatten().enumerate() {
            match Algorithm::from_str(name.trim()) {
                Ok(a) => algorithms.push(a),
                Err(_) => self.err(
                    &format!("{at}.algorithms.{i}"),
                    format!("unknown algorithm `{name}` (HS256, HS384, HS512, RS256, RS384, RS512, PS256, ES256, ES384, EdDSA)"),
                ),
            }
        }
        let keys = if let Some(var) = &j.secret_env {
            let secret = self.secret(&format!("{at}.secret_env"), var)?;
            if algorithms.is_empty() {
                algorithms.push(Algorithm::HS256);
            }
            self.same_family(at, &algorithms, AlgorithmFamily::Hmac, "secret_env");
            Keys::One(DecodingKey::from_secret(secret.as_bytes()))
        } else if let Some(path) = &j.public_key {
            let key = self.public_key(&format!("{at}.public_key"), path)?;
            if algorithms.is_empty() {
                algorithms.push(match key.family() {
                    AlgorithmFamily::Ec => Algorithm::ES256,
                    AlgorithmFamily::Ed => Algorithm::EdDSA,
                    _ => Algorithm::RS256,
                });
            }
            self.same_family(at, &algorithms, key.family(), "public_key");
            Keys::One(key)
        } else {
            let keys = match &j.jwks_url {
                Some(url) => Keys::Remote(Arc::new(self.jwks_url(at, url, &j)?)),
                None => {
                    let path = j.jwks.as_deref().unwrap_or_default();
                    Keys::Set(self.jwks(&format!("{at}.jwks"), path)?)
                }
            };
            if algorithms.is_empty() {
                algorithms.extend([Algorithm::RS256, Algorithm::ES256]);
            }
            if algorithms
                .iter()
                .any(|a| a.family() == AlgorithmFamily::Hmac)
            {
                self.err(
                    &format!("{at}.algorithms"),
                    "HS* algorithms need `secret_env`, not a JWKS",
                );
            }
            keys
        };
        let mut token_from = Vec::new();
        for (i, s) in j.token_from.iter().flatten().enumerate() {
            match token_source(s) {
                Ok(t) => token_from.push(t),
                Err(e) => self.err(&format!("{at}.token_from.{i}"), e),
            }
        }
        if j.token_from.is_none() {
            token_from.push(TokenSource::Header);
        } else if token_from.is_empty() {
            self.err(&format!("{at}.token_from"), "`token_from:` lists no source");
        }
        let leeway = self.duration(&format!("{at}.leeway"), j.leeway.as_ref(), Duration::ZERO);
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(aud) = &j.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        } else {
            // A token minted for some audience is still ours when the route names none.
            validation.validate_aud = false;
        }
        if let Some(iss) = &j.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let channels_claim = j.channels_claim.unwrap_or_else(|| "subscribe".into());
        if channels_claim.is_empty() {
            self.err(&format!("{at}.channels_claim"), "empty claim name");
        }
        Some(Jwt {
            keys,
            validation,
            token_from,
            channels_claim,
            leeway: leeway.as_secs(),
        })
    }

    fn same_family(&mut self, at: &str, algs: &[Algorithm], family: AlgorithmFamily, key: &str) {
        if let Some(a) = algs.iter().find(|a| a.family() != family) {
            self.err(
                &format!("{at}.algorithms"),
                format!("algorithm {a:?} does not fit the key given by `{key}`"),
            );
        }
    }

    fn read_key_file(&mut self, at: &str, path: &str) -> Option<Vec<u8>> {
        let full = self.dir.join(path);
        match std::fs::read(&full) {
            Ok(b) => {
                self.remember(&b);
                Some(b)
            }
            Err(e) => {
                self.err(at, format!("cannot read `{}`: {e}", full.display()));
                None
            }
        }
    }

    fn public_key(&mut self, at: &str, path: &str) -> Option<DecodingKey> {
        let pem = self.read_key_file(at, path)?;
        let text = String::from_utf8_lossy(&pem);
        if text.contains("PRIVATE KEY") {
            self.err(
                at,
                format!("`{path}` holds a private key; give the public key only"),
            );
            return None;
        }
        let key = DecodingKey::from_rsa_pem(&pem)
            .or_else(|_| DecodingKey::from_ec_pem(&pem))
            .or_else(|_| DecodingKey::from_ed_pem(&pem));
        match key {
            Ok(k) => Some(k),
            Err(_) => {
                self.err(
                    at,
                    format!("`{path}` is not an RSA, EC or Ed25519 public key in PEM"),
                );
                None
            }
        }
    }

    fn jwks(&mut self, at: &str, path: &str) -> Option<Vec<(Option<String>, DecodingKey)>> {
        let bytes = self.read_key_file(at, path)?;
        let (set, problems) = match parse_jwks(&bytes) {
            Ok(parsed) => parsed,
            Err(e) => {
                self.err(at, format!("`{path}` {e}"));
                return None;
            }
        };
        for p in problems {
            self.err(at, format!("`{path}` {p}"));
        }
        (!set.is_empty()).then_some(set)
    }

    /// `jwks_url: https://…` → its own TLS upstream and path.
    fn jwks_url(&mut self, at: &str, url: &str, j: &file::JwtFile) -> Option<JwksUrl> {
        let url_at = format!("{at}.jwks_url");
        let uri = match url.trim().parse::<http::Uri>() {
            Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => u,
            Ok(_) => {
                // Keys fetched in clear text could be swapped on the way.
                self.err(&url_at, format!("`{url}` is not an https:// URL"));
                return None;
            }
            Err(e) => {
                self.err(&url_at, format!("`{url}` is not a URL: {e}"));
                return None;
            }
        };
        let host = uri.host().unwrap_or_default().trim_matches(['[', ']']);
        let port = uri.port_u16().unwrap_or(443);
        let authority = match host.contains(':') {
            true => format!("[{host}]:{port}"),
            false => format!("{host}:{port}"),
        };
        let server = self.server(&url_at, &authority)?;
        let ca = match &j.jwks_ca {
            Some(path) => Some(Arc::new(self.ca_file(&format!("{at}.jwks_ca"), path)?)),
            None => None,
        };
        let refetch = self.duration(
            &format!("{at}.jwks_refetch"),
            j.jwks_refetch.as_ref(),
            Duration::from_secs(30),
        );
        if refetch < Duration::from_secs(1) {
            self.err(&format!("{at}.jwks_refetch"), "jwks_refetch below 1s");
        }
        Some(JwksUrl {
            url: url.trim().to_string(),
            upstream: Upstream {
                name: format!("jwks {host}"),
                read_timeout: Duration::from_secs(10),
                tls: Some(UpstreamTls {
                    sni: None,
                    ca,
                    verify: true,
                    http2: false,
                }),
                ..Upstream::fixed("jwks", Vec::new())
            }
            .with_servers(vec![server]),
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
            refetch,
        })
    }

    fn forward(
        &mut self,
        at: &str,
        route_path: &str,
        f: file::ForwardAuthFile,
        upstreams: &BTreeMap<String, Upstream>,
        has_jwt: bool,
    ) -> Option<ForwardAuth> {
        if !upstreams.contains_key(&f.upstream) {
            self.err(
                &format!("{at}.upstream"),
                format!("unknown upstream `{}`", f.upstream),
            );
        }
        let path = match Template::parse(&f.path) {
            Ok(t) => t,
            Err(e) => {
                self.err(&format!("{at}.path"), e);
                return None;
            }
        };
        if !f.path.starts_with('/') || f.path.contains(['?', '#']) {
            self.err(
                &format!("{at}.path"),
                format!("auth path `{}` must start with / and hold no query", f.path),
            );
        }
        let params = crate::routing::path_params(route_path);
        for v in path.vars() {
            match v {
                Var::Param(n) if !params.iter().any(|p| p == n) => self.err(
                    &format!("{at}.path"),
                    format!("`{{{n}}}` is not a parameter of route path `{route_path}`"),
                ),
                Var::Param(_) | Var::Query(_) | Var::Header(_) => {}
                Var::Jwt(_) if has_jwt => {}
                Var::Jwt(_) => self.err(
                    &format!("{at}.path"),
                    format!("`{v}` needs `auth: {{ jwt: … }}` on this route"),
                ),
                _ => self.err(
                    &format!("{at}.path"),
                    format!("`{v}` cannot be used in the auth path"),
                ),
            }
        }
        let lower = |v: Option<Vec<String>>, default: &[&str]| -> Vec<String> {
            v.map(|l| l.iter().map(|h| h.trim().to_ascii_lowercase()).collect())
                .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect())
        };
        let forward_headers = lower(f.forward_headers, &DEFAULT_FORWARD_HEADERS);
        let expose = lower(f.expose, &[]);
        for (i, h) in forward_headers.iter().chain(&expose).enumerate() {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                self.err(at, format!("header name #{i} `{h}` is not valid"));
            }
        }
        let cache_ttl = self.duration(
            &format!("{at}.cache_ttl"),
            f.cache_ttl.as_ref(),
            Duration::ZERO,
        );
        Some(ForwardAuth {
            upstream: f.upstream,
            path,
            forward_headers,
            expose,
            cache_ttl,
        })
    }

    /// The top-level `grip:` key, read once.
    pub(super) fn grip_key(&mut self, g: Option<file::GripFile>) -> Option<Secret> {
        let var = g?.key_env?;
        self.secret("grip.key_env", &var)
            .map(|s| Secret(s.into_bytes()))
    }

    pub(super) fn grip_route(
        &mut self,
        base: &str,
        grip: bool,
        key_env: Option<&String>,
        global: Option<&Secret>,
    ) -> Option<GripRoute> {
        if !grip {
            if key_env.is_some() {
                self.err(
                    &format!("{base}.grip_key_env"),
                    "`grip_key_env` needs `grip: true`",
                );
            }
            return None;
        }
        let key = match key_env {
            Some(var) => self
                .secret(&format!("{base}.grip_key_env"), var)
                .map(|s| Secret(s.into_bytes())),
            None => global.cloned(),
        };
        Some(GripRoute { key })
    }
}

/// A JWKS document → its usable keys, and why any other key was left out.
/// Symmetric keys never count: secrets come only from the environment.
pub fn parse_jwks(bytes: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    let set: JwkSet = serde_json::from_slice(bytes)
        .map_err(|e| format!("is not a JWKS (`{{\"keys\":[…]}}`): {e}"))?;
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
            problems.push(format!(
                "key {i} is a symmetric key: secrets come from `secret_env`"
            ));
            continue;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(k) => out.push((jwk.common.key_id.clone(), k)),
            Err(e) => problems.push(format!("key {i} is not usable: {e}")),
        }
    }
    if set.keys.is_empty() {
        problems.push("holds no key".to_string());
    }
    Ok((out, problems))
}

//! The keys that face the internet (SPEC §6 "Edges"): `cors`,
//! `trusted_proxies`, upstream servers and `tls`, and the
//! checks that keep each of them from widening trust by accident.

use super::Validator;
use crate::config::file;
use crate::config::runtime::{Cors, CorsOrigins, Server, UpstreamTls};
use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

const DEFAULT_MAX_AGE: Duration = Duration::from_secs(600);

/// `scheme://host[:port]` as a browser serializes it: lower case, and
/// without the scheme's default port.
fn origin(s: &str) -> Result<String, String> {
    let s = s.trim();
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "origin `{s}` is not `scheme://host[:port]` (like https://app.example.com)"
        ));
    };
    let valid_scheme = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return Err(format!("origin `{s}` has no valid scheme"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*']) {
        return Err(format!(
            "origin `{s}` must be only `scheme://host[:port]`: no path, query, user or wildcard"
        ));
    }
    let scheme = scheme.to_ascii_lowercase();
    let mut host = rest.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => Some(":443"),
        "http" => Some(":80"),
        _ => None,
    };
    if let Some(p) = default_port {
        if let Some(h) = host.strip_suffix(p) {
            host = h.to_string();
        }
    }
    Ok(format!("{scheme}://{host}"))
}

const DEFAULT_RESOLVE: Duration = Duration::from_secs(30);

/// `host:port` or `[v6]:port` → (host without brackets, port).
fn host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (host, port) = rest.split_once("]:")?;
            (host, port)
        }
        None => s.rsplit_once(':')?,
    };
    if host.is_empty() || (host.contains(':') && !s.starts_with('[')) {
        return None;
    }
    Some((host, port.parse().ok()?))
}

impl Validator<'_> {
    /// One entry of `servers:`, resolved now (a name that resolves to
    /// nothing is an error here, not a 502 later).
    pub(super) fn server(&mut self, at: &str, s: &str) -> Option<Server> {
        let s = s.trim();
        let Some((host, port)) = host_port(s) else {
            self.err(at, format!("`{s}` is not a host:port server address"));
            return None;
        };
        match std::net::ToSocketAddrs::to_socket_addrs(&(host, port)) {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                if addrs.is_empty() {
                    self.err(at, format!("`{s}` resolves to no address"));
                    return None;
                }
                Some(Server {
                    host: host.to_ascii_lowercase(),
                    port,
                    addrs,
                })
            }
            Err(e) => {
                self.err(at, format!("`{s}` does not resolve: {e}"));
                None
            }
        }
    }

    pub(super) fn resolve_interval(&mut self, base: &str, v: Option<&String>) -> Duration {
        let at = format!("{base}.resolve_interval");
        let d = self.duration(&at, v, DEFAULT_RESOLVE);
        if d < Duration::from_secs(1) {
            self.err(&at, "resolve_interval below 1s");
        }
        d
    }

    /// An upstream's `tls:`. Verification is on unless turned off by name.
    pub(super) fn upstream_tls(
        &mut self,
        at: &str,
        t: &file::UpstreamTlsFile,
    ) -> Option<UpstreamTls> {
        let o = match t {
            file::UpstreamTlsFile::Enabled(false) => return None,
            file::UpstreamTlsFile::Enabled(true) => {
                return Some(UpstreamTls {
                    sni: None,
                    ca: None,
                    verify: true,
                    http2: false,
                })
            }
            file::UpstreamTlsFile::Options(o) => o,
        };
        let sni = o.sni.as_ref().map(|s| s.trim().to_ascii_lowercase());
        if let Some(name) = &sni {
            if rustls_pki_types::ServerName::try_from(name.as_str()).is_err() {
                self.err(
                    &format!("{at}.sni"),
                    format!("`{name}` is not a DNS name or IP address"),
                );
            }
        }
        let ca = match &o.ca {
            Some(path) => Some(Arc::new(self.ca_file(&format!("{at}.ca"), path)?)),
            None => None,
        };
        Some(UpstreamTls {
            sni,
            ca,
            verify: o.verify.unwrap_or(true),
            http2: o.http2.unwrap_or(false),
        })
    }

    /// The certificates of a PEM file (relative to the config file), each
    /// checked to be X.509, as DER.
    pub(super) fn ca_file(&mut self, at: &str, path: &str) -> Option<Vec<Vec<u8>>> {
        self.pem_certs(at, path).map(|(_, ders)| ders)
    }

    /// The PEM text of a CA file and its certificates as DER.
    fn pem_certs(&mut self, at: &str, path: &str) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let full = self.dir.join(path);
        let pem = match std::fs::read(&full) {
            Ok(b) => b,
            Err(e) => {
                self.err(at, format!("cannot read `{}`: {e}", full.display()));
                return None;
            }
        };
        let mut out = Vec::new();
        for c in CertificateDer::pem_slice_iter(&pem) {
            match c {
                Ok(der) if x509_parser::parse_x509_certificate(&der).is_ok() => {
                    out.push(der.to_vec())
                }
                _ => {
                    self.err(
                        at,
                        format!("`{path}` holds a certificate that does not parse"),
                    );
                    return None;
                }
            }
        }
        if out.is_empty() {
            self.err(at, format!("`{path}` holds no PEM certificate"));
            return None;
        }
        self.remember(&pem);
        Some((pem, out))
    }

    /// A password written into the config file is a secret outside the
    /// environment.
    pub(super) fn inline_redis_url(&mut self, url: &str) {
        if redis::parse_redis_url(url).is_some_and(|u| u.password().is_some()) {
            self.err(
                "hub.redis.url",
                "this URL holds a password: put it in an environment variable and name that with `url_env`",
            );
        }
    }

    /// `hub.redis.ca`: only with a `rediss://` URL, which it is for.
    pub(super) fn redis_ca(&mut self, path: Option<&str>, url: Option<&str>) -> Option<Vec<u8>> {
        let path = path?;
        if !url.is_some_and(|u| u.starts_with("rediss://") || u.starts_with("valkeys://")) {
            self.err("hub.redis.ca", "`ca` needs a `rediss://` URL (TLS)");
            return None;
        }
        self.pem_certs("hub.redis.ca", path).map(|(pem, _)| pem)
    }

    /// `trusted_proxies:`: CIDRs or single addresses.
    pub(super) fn trusted_proxies(&mut self, list: &[String]) -> Vec<IpNet> {
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            let at = format!("trusted_proxies.{i}");
            let s = s.trim();
            let net = s
                .parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            match net {
                Ok(n) if n.prefix_len() == 0 => self.err(
                    &at,
                    format!("`{s}` trusts every address: any client could name its own IP"),
                ),
                Ok(n) => out.push(n.trunc()),
                Err(_) => self.err(
                    &at,
                    format!("`{s}` is not an address or a CIDR like 10.0.0.0/8"),
                ),
            }
        }
        out
    }

    pub(super) fn cors(&mut self, at: &str, c: &file::CorsFile) -> Option<Cors> {
        let credentials = c.credentials.unwrap_or(false);
        let max_age = self.duration(
            &format!("{at}.max_age"),
            c.max_age.as_ref(),
            DEFAULT_MAX_AGE,
        );
        if c.origins.is_empty() {
            self.err(
                &format!("{at}.origins"),
                "`cors:` needs `origins:` (a list of origins, or [\"*\"])",
            );
            return None;
        }
        if c.origins.iter().any(|o| o.trim() == "*") {
            if c.origins.len() > 1 {
                self.err(
                    &format!("{at}.origins"),
                    "`\"*\"` already allows every origin: list it alone",
                );
            }
            if credentials {
                // Browsers refuse the pair, and answering with the caller's
                // origin instead would hand every site the user's cookies.
                self.err(
                    &format!("{at}.credentials"),
                    "`credentials: true` needs listed origins, not `\"*\"`",
                );
                return None;
            }
            return Some(Cors {
                origins: CorsOrigins::Any,
                credentials,
                max_age,
            });
        }
        let mut list = Vec::new();
        for (i, o) in c.origins.iter().enumerate() {
            let at = format!("{at}.origins.{i}");
            if o.trim().eq_ignore_ascii_case("null") {
                // Sandboxed frames, file:// pages and some redirects all send
                // `null`: allowing it allows anyone who can make one.
                self.err(
                    &at,
                    "origin `null` cannot be allowed: any sandboxed page sends it",
                );
                continue;
            }
            match origin(o) {
                Ok(o) => list.push(o),
                Err(e) => self.err(&at, e),
            }
        }
        Some(Cors {
            origins: CorsOrigins::List(list),
            credentials,
            max_age,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::origin;

    #[test]
    fn origins_are_serialized_as_browsers_send_them() {
        assert_eq!(
            origin("HTTPS://App.Example.com").unwrap(),
            "https://app.example.com"
        );
        assert_eq!(
            origin("https://a.example:443").unwrap(),
            "https://a.example"
        );
        assert_eq!(origin("http://a.example:80").unwrap(), "http://a.example");
        assert_eq!(
            origin("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "a.example",
            "https://a.example/",
            "https://*.a.example",
            "https://u@a",
            "1x://a",
            "https://",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }
}

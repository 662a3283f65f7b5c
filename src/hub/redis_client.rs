//! The Redis client of the broker: `redis://`, or `rediss://` (TLS, with
//! rustls) trusting the system's roots or the CAs of `hub.redis.ca`.

/// A client for `url`; `ca` (PEM) replaces the system's roots.
pub(crate) fn client(url: &str, ca: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    // The redis crate's rustls uses the process's default provider: the
    // same ring that pingora's connectors install (ok if one is already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    match ca {
        None => redis::Client::open(url),
        Some(pem) => redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
    }
}

/// `url` with its password replaced, for logs.
pub(crate) fn redacted(url: &str) -> String {
    match redis::parse_redis_url(url) {
        Some(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Some(u) => u.to_string(),
        None => "<unparsable redis url>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_logs() {
        let r = super::redacted("rediss://default:s3cret@cache.example:6380/0");
        assert!(!r.contains("s3cret"), "{r}");
        assert!(r.contains("cache.example:6380"), "{r}");
    }
}

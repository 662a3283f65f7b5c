//! `X-Forwarded-For`, `-Proto` and `-Host` on requests the gateway sends
//! upstream on a client's behalf: one implementation for the proxy path and
//! for GRIP routes, so the two cannot drift apart.

use pingora_error::Result;
use pingora_http::RequestHeader;
use std::net::IpAddr;

/// What the gateway knows, as fact, about the client connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Forwarded {
    /// The peer address of the client connection.
    pub client_ip: Option<IpAddr>,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The request's authority (Host header, else the absolute URI's).
    pub host: Option<String>,
    /// The request's `X-Request-Id` (with `access_log: true`), also
    /// returned on the response.
    pub request_id: Option<String>,
    /// The gateway's span for this request (with `telemetry:`): the
    /// upstream's `traceparent`, in place of the client's.
    pub traceparent: Option<String>,
}

impl Forwarded {
    /// Set the three headers on `req`. Earlier `X-Forwarded-For` hops (every
    /// line of it is one list) are kept and the client appended; the scheme
    /// and host are what this listener saw, not what the client claims.
    pub(crate) fn apply(&self, req: &mut RequestHeader) -> Result<()> {
        if let Some(ip) = self.client_ip {
            let ip = ip.to_string();
            let mut hops: Vec<&str> = req
                .headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            hops.push(&ip);
            let xff = hops.join(", ");
            req.insert_header("x-forwarded-for", xff)?;
        }
        req.insert_header("x-forwarded-proto", if self.tls { "https" } else { "http" })?;
        match &self.host {
            Some(host) => req.insert_header("x-forwarded-host", host.as_str())?,
            None => {
                req.remove_header("x-forwarded-host");
            }
        }
        if let Some(id) = &self.request_id {
            req.insert_header("x-request-id", id.as_str())?;
        }
        if let Some(tp) = &self.traceparent {
            req.insert_header("traceparent", tp.as_str())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_the_client_and_states_scheme_and_host() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-forwarded-for", "1.1.1.1").unwrap();
        req.append_header("x-forwarded-for", "2.2.2.2").unwrap();
        req.insert_header("x-forwarded-proto", "https").unwrap();
        req.insert_header("x-forwarded-host", "evil").unwrap();
        Forwarded {
            client_ip: Some("10.0.0.1".parse().unwrap()),
            tls: false,
            host: None,
            request_id: None,
            traceparent: None,
        }
        .apply(&mut req)
        .unwrap();
        let h = |n: &str| {
            req.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(h("x-forwarded-for"), vec!["1.1.1.1, 2.2.2.2, 10.0.0.1"]);
        assert_eq!(h("x-forwarded-proto"), vec!["http"]);
        assert!(h("x-forwarded-host").is_empty());
    }
}

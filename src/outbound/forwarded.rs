//! Who the client is, and how that is told upstream: the client IP (per-IP
//! limits, `X-Forwarded-For`, logs) and `X-Forwarded-For`, `-Proto` and
//! `-Host` on requests the gateway sends on a client's behalf — one
//! implementation for the proxy path and for GRIP routes.
//!
//! Nothing a client sends is believed unless the connection comes from a
//! `trusted_proxies` address: then the client is the right-most address of
//! `X-Forwarded-For` that is not a trusted proxy (the one the first trusted
//! hop saw), and the `X-Forwarded-Proto` of that proxy is kept. Hops left
//! of the client are whatever the client wrote: never sent on.

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;
use pingora_error::Result;
use pingora_http::RequestHeader;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// What the gateway establishes about the client connection.
#[derive(Debug, Clone, Default)]
pub(crate) struct Forwarded {
    /// The client, then each trusted proxy it went through, the peer last.
    /// Empty when the peer is no IP address (a Unix socket).
    pub chain: Vec<IpAddr>,
    /// Whether the client's connection is TLS (as the listener saw it, or
    /// as a trusted proxy said).
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

fn trusted(ip: IpAddr, proxies: &[IpNet]) -> bool {
    let ip = ip.to_canonical();
    proxies.iter().any(|n| n.contains(&ip))
}

/// One `X-Forwarded-For` element: an address, perhaps with a port.
fn hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    s.parse::<IpAddr>()
        .or_else(|_| s.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

impl Forwarded {
    /// `peer` is the connection's address; `headers` the request's.
    pub(crate) fn new(
        peer: Option<IpAddr>,
        tls: bool,
        host: Option<String>,
        headers: &HeaderMap,
        proxies: &[IpNet],
    ) -> Forwarded {
        let Some(peer) = peer.map(|p| p.to_canonical()) else {
            return Forwarded {
                chain: Vec::new(),
                tls,
                host,
                ..Forwarded::default()
            };
        };
        let mut chain = vec![peer];
        let mut tls = tls;
        if trusted(peer, proxies) {
            let hops: Vec<&str> = headers
                .get_all("x-forwarded-for")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .collect();
            // Right to left: each trusted hop vouches for the one before it;
            // the first untrusted one is the client. An element that is no
            // address ends the walk at the last one that was.
            for h in hops.iter().rev() {
                let Some(ip) = hop(h) else { break };
                chain.push(ip);
                if !trusted(ip, proxies) {
                    break;
                }
            }
            chain.reverse();
            let proto = headers
                .get_all("x-forwarded-proto")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .map(str::trim);
            match proto {
                Some(p) if p.eq_ignore_ascii_case("https") => tls = true,
                Some(p) if p.eq_ignore_ascii_case("http") => tls = false,
                _ => {}
            }
        }
        Forwarded {
            chain,
            tls,
            host,
            ..Forwarded::default()
        }
    }

    /// The client's address.
    pub(crate) fn client_ip(&self) -> Option<IpAddr> {
        self.chain.first().copied()
    }

    /// Set the three headers on `req`, replacing what the client sent:
    /// `X-Forwarded-For` is the chain, so its first element is the client
    /// as the gateway established it; the scheme and host are what this
    /// listener (or a trusted proxy) saw.
    pub(crate) fn apply(&self, req: &mut RequestHeader) -> Result<()> {
        if self.chain.is_empty() {
            req.remove_header("x-forwarded-for");
        } else {
            // One string, written in place: this runs on every proxied request.
            let mut xff = String::with_capacity(self.chain.len() * 17);
            for (i, ip) in self.chain.iter().enumerate() {
                let sep = if i == 0 { "" } else { ", " };
                let _ = write!(xff, "{sep}{ip}");
            }
            req.insert_header("x-forwarded-for", xff)?;
        }
        let proto = HeaderValue::from_static(if self.tls { "https" } else { "http" });
        req.insert_header("x-forwarded-proto", proto)?;
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

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn chain(peer: &str, h: &[(&str, &str)], proxies: &[&str]) -> Vec<String> {
        Forwarded::new(
            Some(peer.parse().unwrap()),
            false,
            None,
            &headers(h),
            &nets(proxies),
        )
        .chain
        .iter()
        .map(|i| i.to_string())
        .collect()
    }

    #[test]
    fn without_trusted_proxies_the_client_is_the_peer() {
        let xff = [
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
        ];
        assert_eq!(chain("10.0.0.5", &xff, &[]), ["10.0.0.5"]);
        // A peer outside the list is not believed either.
        assert_eq!(chain("10.0.0.5", &xff, &["192.168.0.0/16"]), ["10.0.0.5"]);
        let f = Forwarded::new(
            Some("10.0.0.5".parse().unwrap()),
            false,
            None,
            &headers(&xff),
            &[],
        );
        assert!(!f.tls, "X-Forwarded-Proto of an untrusted peer is ignored");
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let p = ["10.0.0.0/8"];
        // The client wrote "1.1.1.1" itself; the balancer appended what it saw.
        let xff = [("x-forwarded-for", "1.1.1.1, 203.0.113.7")];
        assert_eq!(chain("10.0.0.5", &xff, &p), ["203.0.113.7", "10.0.0.5"]);
        // Two trusted hops, split over two header lines.
        let xff = [
            ("x-forwarded-for", "1.1.1.1, 203.0.113.7"),
            ("x-forwarded-for", "10.1.1.1"),
        ];
        assert_eq!(
            chain("10.0.0.5", &xff, &p),
            ["203.0.113.7", "10.1.1.1", "10.0.0.5"]
        );
        // Every hop trusted: the left-most one is as far as we can see.
        let xff = [("x-forwarded-for", "10.9.9.9")];
        assert_eq!(chain("10.0.0.5", &xff, &p), ["10.9.9.9", "10.0.0.5"]);
        // No header: the proxy itself.
        assert_eq!(chain("10.0.0.5", &[], &p), ["10.0.0.5"]);
        // Garbage stops the walk at the last trusted address.
        let xff = [("x-forwarded-for", "203.0.113.7, not-an-ip, 10.1.1.1")];
        assert_eq!(chain("10.0.0.5", &xff, &p), ["10.1.1.1", "10.0.0.5"]);
        // Ports and IPv6 are understood; a v4-mapped peer matches v4 CIDRs.
        let xff = [("x-forwarded-for", "[2001:db8::1]:4711")];
        assert_eq!(
            chain("::ffff:10.0.0.5", &xff, &p),
            ["2001:db8::1", "10.0.0.5"]
        );
    }

    #[test]
    fn a_trusted_proxy_states_the_scheme() {
        let f = Forwarded::new(
            Some("10.0.0.5".parse().unwrap()),
            false,
            None,
            &headers(&[("x-forwarded-proto", "https")]),
            &nets(&["10.0.0.0/8"]),
        );
        assert!(f.tls);
    }

    #[test]
    fn apply_replaces_what_the_client_sent() {
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.append_header("x-forwarded-for", "1.1.1.1").unwrap();
        req.append_header("x-forwarded-for", "2.2.2.2").unwrap();
        req.insert_header("x-forwarded-proto", "https").unwrap();
        req.insert_header("x-forwarded-host", "evil").unwrap();
        Forwarded {
            chain: vec!["10.0.0.1".parse().unwrap()],
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
        assert_eq!(h("x-forwarded-for"), vec!["10.0.0.1"]);
        assert_eq!(h("x-forwarded-proto"), vec!["http"]);
        assert!(h("x-forwarded-host").is_empty());
    }
}

//! URL parsing restricted to `http://` and `https://` on loopback addresses.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// A parsed `http(s)://host:port/path?query` URL whose host is in 127.0.0.0/8.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https://`: TLS (ALPN decides HTTP/1.1 or HTTP/2).
    pub tls: bool,
    /// Host as written in the URL, without port (the TLS server name).
    pub host: String,
    pub addr: SocketAddr,
    /// Value for the `Host:` header (as written in the URL, with port).
    pub host_header: String,
    /// Path plus query, always starting with '/'.
    pub path: String,
}

/// Parse and validate a URL. Only `http://`, `https://` and loopback IPv4
/// hosts (127.0.0.0/8 or `localhost`) are accepted; anything else is refused.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!(
            "{url}: only http:// and https:// URLs are supported"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let path = if path.is_empty() { "/" } else { path };
    if authority.contains('@') {
        return Err(format!("{url}: userinfo in URL is not supported"));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| format!("{url}: bad port {p:?}"))?,
        ),
        None => (authority, if tls { 443 } else { 80 }),
    };
    let ip = parse_loopback_host(host).map_err(|e| format!("{url}: {e}"))?;
    Ok(Target {
        tls,
        host: host.to_string(),
        addr: SocketAddr::V4(SocketAddrV4::new(ip, port)),
        host_header: authority.to_string(),
        path: path.to_string(),
    })
}

/// Accept `localhost` or a dotted IPv4 address in 127.0.0.0/8.
pub fn parse_loopback_host(host: &str) -> Result<Ipv4Addr, String> {
    if host.eq_ignore_ascii_case("localhost") {
        return Ok(Ipv4Addr::LOCALHOST);
    }
    let ip: Ipv4Addr = host
        .parse()
        .map_err(|_| format!("host {host:?} is not an IPv4 literal or localhost"))?;
    if !ip.is_loopback() {
        return Err(format!(
            "refusing non-loopback address {ip}: this tool only targets 127.0.0.0/8"
        ));
    }
    Ok(ip)
}

/// Parse a comma separated list of loopback source IPs.
pub fn parse_sources(list: &str) -> Result<Vec<Ipv4Addr>, String> {
    let v: Result<Vec<_>, _> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse_loopback_host)
        .collect();
    let v = v?;
    if v.is_empty() {
        return Err("--sources is empty".into());
    }
    Ok(v)
}

/// Replace `{i}` and `{ch}` placeholders.
pub fn substitute(template: &str, i: usize, ch: &str) -> String {
    template.replace("{i}", &i.to_string()).replace("{ch}", ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_loopback() {
        let t = parse_url("http://127.0.0.1:8090/sub/abc?x=1").unwrap();
        assert_eq!(t.addr.to_string(), "127.0.0.1:8090");
        assert_eq!(t.path, "/sub/abc?x=1");
        assert_eq!(t.host_header, "127.0.0.1:8090");
        let t = parse_url("http://localhost").unwrap();
        assert_eq!(t.addr.to_string(), "127.0.0.1:80");
        assert_eq!(t.path, "/");
        assert!(parse_url("http://127.9.9.9:1/").is_ok());
        assert!(!t.tls);
        let t = parse_url("https://127.0.0.1:8443/events/a").unwrap();
        assert!(t.tls);
        assert_eq!(t.host, "127.0.0.1");
        assert_eq!(t.addr.to_string(), "127.0.0.1:8443");
        assert_eq!(parse_url("https://localhost/").unwrap().addr.port(), 443);
    }

    #[test]
    fn refuses_others() {
        assert!(parse_url("http://10.0.0.1/").is_err());
        assert!(parse_url("http://example.com/").is_err());
        assert!(parse_url("https://10.0.0.1/").is_err());
        assert!(parse_url("ftp://127.0.0.1/").is_err());
        assert!(parse_sources("127.0.0.1,192.168.1.1").is_err());
    }

    #[test]
    fn substitutes() {
        assert_eq!(substitute("/e/{ch}?n={i}", 7, "ch-7"), "/e/ch-7?n=7");
    }
}

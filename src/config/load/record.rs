//! `record:` on a proxy route → `RecordRoute` (docs/record.md).

use super::Validator;
use crate::config::file::RecordFile;
use crate::config::runtime::{CredentialSource, RecordRoute};
use std::time::Duration;

const DEFAULT_TTL: Duration = Duration::from_secs(600);
const MAX_TTL: Duration = Duration::from_secs(86_400);
const DEFAULT_MAX_EVENTS: u64 = 10_000;
const MAX_EVENTS: u64 = 1_000_000;
const DEFAULT_MAX_TOTAL: usize = 64 << 20;

impl Validator<'_> {
    pub(super) fn record_route(&mut self, base: &str, f: RecordFile, grip: bool) -> RecordRoute {
        let at = format!("{base}.record");
        if grip {
            self.err(&at, "`record` and `grip` cannot be combined on one route");
        }
        let ttl = self.duration(&format!("{at}.ttl"), f.ttl.as_ref(), DEFAULT_TTL);
        if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
            self.err(&format!("{at}.ttl"), "ttl must be between 1s and 24h");
        }
        let max_events = f.max_events.unwrap_or(DEFAULT_MAX_EVENTS);
        if max_events == 0 || max_events > MAX_EVENTS {
            self.err(
                &format!("{at}.max_events"),
                format!("max_events must be between 1 and {MAX_EVENTS}"),
            );
        }
        let max_total = self.size(
            &format!("{at}.max_total"),
            f.max_total.as_ref(),
            DEFAULT_MAX_TOTAL,
        );
        if max_total == 0 {
            self.err(
                &format!("{at}.max_total"),
                "max_total must be larger than 0",
            );
        }
        let credentials = match f.credentials {
            None => vec![
                CredentialSource::Header("authorization".into()),
                CredentialSource::Header("cookie".into()),
            ],
            Some(list) => list
                .iter()
                .enumerate()
                .filter_map(|(i, c)| self.credential(&format!("{at}.credentials.{i}"), c))
                .collect(),
        };
        RecordRoute {
            ttl,
            max_events,
            max_total,
            credentials,
        }
    }

    fn credential(&mut self, at: &str, c: &str) -> Option<CredentialSource> {
        let c = c.trim();
        if let Some(name) = c.strip_prefix("cookie:") {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            if !ok {
                self.err(at, format!("`{name}` is not a cookie name"));
                return None;
            }
            return Some(CredentialSource::Cookie(name.to_string()));
        }
        match http::HeaderName::from_bytes(c.as_bytes()) {
            Ok(h) => Some(CredentialSource::Header(h.as_str().to_string())),
            Err(_) => {
                self.err(
                    at,
                    format!("`{c}` is neither a header name nor `cookie:NAME`"),
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::runtime::{CredentialSource, RecordRoute, RouteKind};
    use crate::config::{load_str, Config};
    use std::path::Path;
    use std::time::Duration;

    fn check(route: &str) -> Result<Config, String> {
        let text = format!(
            "upstreams:\n  app: {{ servers: [\"127.0.0.1:3000\"] }}\nroutes:\n  - path: /chat\n    proxy: app\n{route}"
        );
        load_str(&text, Path::new("t.yaml"), &|_| None).map_err(|e| e.to_string())
    }

    fn record_of(c: &Config) -> RecordRoute {
        match &c.routes[0].kind {
            RouteKind::Proxy {
                record: Some(r), ..
            } => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_and_values() {
        let r = record_of(&check("    record: {}\n").unwrap());
        assert_eq!(r.ttl, Duration::from_secs(600));
        assert_eq!(r.max_events, 10_000);
        assert_eq!(r.max_total, 64 << 20);
        assert_eq!(
            r.credentials,
            [
                CredentialSource::Header("authorization".into()),
                CredentialSource::Header("cookie".into())
            ]
        );
        let r = record_of(
            &check("    record: { ttl: 2m, max_events: 50, max_total: 1MiB, credentials: [X-Api-Key, \"cookie:sid\"] }\n")
                .unwrap(),
        );
        assert_eq!(r.ttl, Duration::from_secs(120));
        assert_eq!(r.max_events, 50);
        assert_eq!(r.max_total, 1 << 20);
        assert_eq!(
            r.credentials,
            [
                CredentialSource::Header("x-api-key".into()),
                CredentialSource::Cookie("sid".into())
            ]
        );
    }

    #[test]
    fn errors_point_at_the_key() {
        let e = check("    record:\n      ttl: 0s\n      max_events: 0\n      credentials: [\"a b\", \"cookie:\"]\n      maxevents: 3\n")
            .unwrap_err();
        assert!(
            e.starts_with("t.yaml:10:7: ") && e.contains("unknown key `maxevents`"),
            "{e}"
        );
        let e = check("    record:\n      ttl: 0s\n      max_events: 0\n      credentials: [\"a b\", \"cookie:\"]\n")
            .unwrap_err();
        assert!(e.contains("t.yaml:7:7: ttl must be between"), "{e}");
        assert!(e.contains("t.yaml:8:7: max_events must be between"), "{e}");
        assert!(e.contains("t.yaml:9:21: `a b` is neither"), "{e}");
        assert!(e.contains("t.yaml:9:28: `` is not a cookie name"), "{e}");
        let e = check("    grip: true\n    record: {}\n").unwrap_err();
        assert!(e.contains("t.yaml:7:5: `record` and `grip` cannot"), "{e}");
    }
}

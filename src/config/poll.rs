//! Validation of an sse route's `poll:` block: one place that knows every
//! default of SPEC §4 Polling and refuses what would poll the wrong thing.

use super::file::PollFile;
use super::load::Validator;
use super::runtime::{Poll, PollDiff, PollEvents, PollScope, Upstream};
use crate::template::{check_pointer, Template};
use crate::wire::check_event_name;
use std::collections::BTreeMap;
use std::time::Duration;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_LINGER: Duration = Duration::from_secs(30);
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(60);
const DEFAULT_MAX_BODY: usize = 8 * 1024 * 1024;
/// Below this a poller is a load generator, not a poller.
const MIN_INTERVAL: Duration = Duration::from_millis(10);
/// Headers the gateway sets itself; a config value would corrupt the request.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
];

impl Validator<'_> {
    pub(super) fn poll(
        &mut self,
        base: &str,
        route_path: &str,
        p: PollFile,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> Poll {
        self.check_upstream(&format!("{base}.upstream"), &p.upstream, upstreams);
        let path = self.poll_path(&format!("{base}.path"), route_path, &p.path);
        let method = match &p.method {
            None => http::Method::GET,
            Some(m) => {
                http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()).unwrap_or_else(|_| {
                    self.err(
                        &format!("{base}.method"),
                        format!("`{m}` is not an HTTP method"),
                    );
                    http::Method::GET
                })
            }
        };
        let mut headers = Vec::new();
        for (name, value) in p.headers.iter().flatten() {
            let at = format!("{base}.headers.{name}");
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                self.err(&at, format!("`{name}` is not a header name"));
            } else if RESERVED_HEADERS.contains(&lower.as_str()) {
                self.err(&at, format!("`{name}` is set by the gateway"));
            }
            if http::HeaderValue::from_str(value).is_err() {
                self.err(
                    &at,
                    format!("the value of `{name}` is not a valid header value"),
                );
            }
            headers.push((lower, value.clone()));
        }
        let interval = self.duration(
            &format!("{base}.interval"),
            p.interval.as_ref(),
            DEFAULT_INTERVAL,
        );
        if interval < MIN_INTERVAL {
            self.err(
                &format!("{base}.interval"),
                format!("interval below {MIN_INTERVAL:?}"),
            );
        }
        let timeout = self.duration(
            &format!("{base}.timeout"),
            p.timeout.as_ref(),
            DEFAULT_TIMEOUT,
        );
        if timeout.is_zero() {
            self.err(&format!("{base}.timeout"), "timeout must be above 0");
        }
        let linger = self.duration(&format!("{base}.linger"), p.linger.as_ref(), DEFAULT_LINGER);
        let max_backoff = self.duration(
            &format!("{base}.max_backoff"),
            p.max_backoff.as_ref(),
            DEFAULT_MAX_BACKOFF.max(interval),
        );
        if max_backoff < interval {
            self.err(
                &format!("{base}.max_backoff"),
                "max_backoff must be at least the interval",
            );
        }
        let max_body = self.size(
            &format!("{base}.max_body"),
            p.max_body.as_ref(),
            DEFAULT_MAX_BODY,
        );
        let diff = self.poll_diff(base, &p);
        let events = self.poll_events(base, &p, &diff);
        let error_event = p.error_event.clone();
        if let Some(e) = &error_event {
            self.event_name(&format!("{base}.error_event"), e);
        }
        let (scope, forward_headers) = self.poll_scope(base, &p);
        if p.max_pollers == Some(0) {
            self.err(
                &format!("{base}.max_pollers"),
                "max_pollers must be at least 1",
            );
        }
        Poll {
            upstream: p.upstream,
            path,
            catch_all: catch_all_param(route_path),
            method,
            headers,
            interval,
            timeout,
            linger,
            max_backoff,
            max_body,
            diff,
            events,
            scope,
            forward_headers,
            initial: p.initial.unwrap_or(true),
            error_event,
            max_pollers: p.max_pollers,
        }
    }

    fn poll_path(&mut self, at: &str, route_path: &str, src: &str) -> Template {
        if !src.starts_with('/') {
            self.err(at, format!("poll path `{src}` must start with /"));
        }
        let t = match Template::parse(src) {
            Ok(t) => t,
            Err(e) => {
                self.err(at, e);
                return Template::parse("/").unwrap_or_else(|_| unreachable!("`/` is a template"));
            }
        };
        if t.literals().any(|l| {
            l.chars()
                .any(|c| c.is_ascii_whitespace() || c.is_ascii_control() || c == '#')
        }) {
            self.err(
                at,
                format!("poll path `{src}` has whitespace, a control character or `#`"),
            );
        }
        self.request_vars(
            at,
            &t,
            route_path,
            None,
            "a poll path takes {name}, {query.x} or {header.x}",
        );
        t
    }

    fn poll_diff(&mut self, base: &str, p: &PollFile) -> PollDiff {
        let mode = p.diff.as_deref().unwrap_or("body");
        let diff = match mode {
            "body" => PollDiff::Body,
            "etag" => PollDiff::Etag,
            "json-patch" => PollDiff::JsonPatch,
            "json-items" => {
                let items = p.items.clone().unwrap_or_else(|| {
                    self.err(&format!("{base}.diff"), "`diff: json-items` needs `items: /pointer/to/array` (`\"\"` for a top-level array)");
                    String::new()
                });
                if let Err(e) = check_pointer(&items) {
                    self.err(&format!("{base}.items"), e);
                }
                let key = p.key.clone().unwrap_or_else(|| {
                    self.err(
                        &format!("{base}.diff"),
                        "`diff: json-items` needs `key: FIELD` (the field that identifies an item)",
                    );
                    "id".to_string()
                });
                if key.is_empty() {
                    self.err(&format!("{base}.key"), "`key` must name a field");
                }
                return PollDiff::JsonItems { items, key };
            }
            other => {
                self.err(
                    &format!("{base}.diff"),
                    format!("unknown diff `{other}` (body, etag, json-items or json-patch)"),
                );
                PollDiff::Body
            }
        };
        for (field, set) in [("items", p.items.is_some()), ("key", p.key.is_some())] {
            if set {
                self.err(
                    &format!("{base}.{field}"),
                    format!("`{field}` applies to `diff: json-items` only"),
                );
            }
        }
        diff
    }

    fn poll_events(&mut self, base: &str, p: &PollFile, diff: &PollDiff) -> PollEvents {
        let mut events = PollEvents::default();
        let items = matches!(diff, PollDiff::JsonItems { .. });
        if let Some(e) = &p.event {
            if items {
                self.err(&format!("{base}.event"), "json-items sends `created`/`updated`/`deleted`: rename them with `events: {created: .., updated: .., deleted: ..}`");
            }
            self.event_name(&format!("{base}.event"), e);
            events.update = e.clone();
        }
        if let Some(names) = &p.events {
            if !items {
                self.err(
                    &format!("{base}.events"),
                    "`events` applies to `diff: json-items`; name the change event with `event:`",
                );
            }
            for (field, v, slot) in [
                ("created", &names.created, &mut events.created),
                ("updated", &names.updated, &mut events.updated),
                ("deleted", &names.deleted, &mut events.deleted),
            ] {
                if let Some(name) = v {
                    self.event_name(&format!("{base}.events.{field}"), name);
                    *slot = name.clone();
                }
            }
        }
        events
    }

    fn poll_scope(&mut self, base: &str, p: &PollFile) -> (PollScope, Vec<String>) {
        let scope = match p.scope.as_deref() {
            None | Some("shared") => PollScope::Shared,
            Some("per-client") => PollScope::PerClient,
            Some(other) => {
                self.err(
                    &format!("{base}.scope"),
                    format!("unknown scope `{other}` (shared or per-client)"),
                );
                PollScope::Shared
            }
        };
        let forward = match (&p.forward_headers, scope) {
            (Some(h), PollScope::Shared) if !h.is_empty() => {
                self.err(
                    &format!("{base}.forward_headers"),
                    "forwarding a client's headers needs `scope: per-client`, or clients would share each other's data",
                );
                Vec::new()
            }
            (_, PollScope::Shared) => Vec::new(),
            (None, PollScope::PerClient) => vec!["authorization".to_string(), "cookie".to_string()],
            (Some(h), PollScope::PerClient) => {
                if h.is_empty() {
                    self.err(
                        &format!("{base}.forward_headers"),
                        "`scope: per-client` needs at least one header to forward",
                    );
                }
                h.iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let lower = name.to_ascii_lowercase();
                        if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                            self.err(
                                &format!("{base}.forward_headers.{i}"),
                                format!("`{name}` is not a header name"),
                            );
                        }
                        lower
                    })
                    .collect()
            }
        };
        (scope, forward)
    }

    fn event_name(&mut self, at: &str, name: &str) {
        if name.is_empty() {
            self.err(at, "an event name must not be empty");
        } else if let Err(e) = check_event_name(name) {
            self.err(at, e.to_string());
        } else if crate::channel::is_reserved_event(name) {
            self.err(
                at,
                format!("`{name}` is in the gateway's own `ssegate.` event namespace"),
            );
        }
    }
}

/// `{*rest}` of `/a/{*rest}`: its value may span segments.
fn catch_all_param(route_path: &str) -> Option<String> {
    let start = route_path.find("{*")? + 2;
    let len = route_path[start..].find('}')?;
    Some(route_path[start..start + len].to_string())
}

#[cfg(test)]
mod tests {
    use crate::config::{load_str, Config, ConfigErrors, PollDiff, PollScope, RouteKind};
    use std::path::Path;
    use std::time::Duration;

    fn check(routes: &str) -> Result<Config, ConfigErrors> {
        let text =
            format!("upstreams:\n  app: {{ servers: [\"127.0.0.1:3000\"] }}\nroutes:\n{routes}");
        load_str(&text, Path::new("t.yaml"), &|_| None)
    }

    fn poll_of(c: &Config) -> &crate::config::Poll {
        match &c.routes[0].kind {
            RouteKind::Sse(s) => s.poll.as_ref().unwrap(),
            RouteKind::Proxy { .. } => panic!("not sse"),
        }
    }

    #[test]
    fn defaults_and_a_route_with_only_poll() {
        let c = check("  - path: /p\n    sse:\n      poll: { upstream: app, path: /prices }\n")
            .unwrap();
        let p = poll_of(&c);
        assert_eq!(p.interval, Duration::from_secs(5));
        assert_eq!(p.timeout, Duration::from_secs(10));
        assert_eq!(p.linger, Duration::from_secs(30));
        assert_eq!(p.max_backoff, Duration::from_secs(60));
        assert_eq!(p.diff, PollDiff::Body);
        assert_eq!(p.events.update, "update");
        assert_eq!(p.scope, PollScope::Shared);
        assert!(p.initial && p.error_event.is_none() && p.forward_headers.is_empty());
        assert_eq!(p.method, http::Method::GET);
    }

    #[test]
    fn per_client_defaults_to_authorization_and_cookie() {
        let c = check("  - path: /p/{*rest}\n    sse:\n      poll: { upstream: app, path: \"/x/{rest}\", scope: per-client, diff: json-items, items: /data, key: id, events: { deleted: gone } }\n").unwrap();
        let p = poll_of(&c);
        assert_eq!(p.forward_headers, vec!["authorization", "cookie"]);
        assert_eq!(p.catch_all.as_deref(), Some("rest"));
        assert_eq!(
            p.diff,
            PollDiff::JsonItems {
                items: "/data".into(),
                key: "id".into()
            }
        );
        assert_eq!(
            (p.events.created.as_str(), p.events.deleted.as_str()),
            ("created", "gone")
        );
    }

    #[test]
    fn mistakes_are_located() {
        let text = r#"
  - path: /p/{id}
    sse:
      channels: ["poll:x"]
      poll:
        upstream: nope
        path: "/x/{other}/{jwt.sub}"
        diff: json-items
        interval: 1ms
        max_backoff: 0s
        forward_headers: [authorization]
        event: "a\nb"
  - path: /q
    sse:
      poll: { upstream: app, path: /q, diff: fancy, items: /a }
"#;
        let e = check(text.trim_start_matches('\n')).unwrap_err();
        let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
        let has = |line: usize, what: &str| {
            lines
                .iter()
                .any(|l| l.starts_with(&format!("t.yaml:{line}:")) && l.contains(what))
        };
        assert!(has(6, "reserved for pollers"), "{lines:?}");
        assert!(has(8, "unknown upstream `nope`"), "{lines:?}");
        assert!(has(9, "{other}") && has(9, "jwt.sub"), "{lines:?}");
        assert!(has(10, "items"), "{lines:?}");
        assert!(has(11, "interval below"), "{lines:?}");
        assert!(has(12, "max_backoff"), "{lines:?}");
        assert!(has(13, "per-client"), "{lines:?}");
        assert!(has(14, "CR or LF") && has(14, "json-items"), "{lines:?}");
        assert!(
            has(17, "unknown diff `fancy`") && has(17, "`items` applies"),
            "{lines:?}"
        );
    }
}

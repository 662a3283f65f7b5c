//! (method, host, path) → route. Pure: no I/O. Paths use matchit's syntax,
//! which is the config's (`{name}`, `{*rest}`), so static segments beat
//! parameters and parameters beat catch-alls.

use http::Method;

/// What the table needs to know of a route: where it matches.
#[derive(Debug, Clone)]
pub struct RouteKey<'a> {
    /// Position in the config file, for error messages (1-based there).
    pub index: usize,
    pub path: &'a str,
    /// Lower-cased, without port. None = any host.
    pub host: Option<&'a str>,
    /// None = any method.
    pub methods: Option<&'a [Method]>,
}

/// The route table: built once from the config, then only read.
#[derive(Debug, Clone)]
pub struct Router<T> {
    paths: matchit::Router<usize>,
    /// Entries sharing one path, host-specific ones first.
    groups: Vec<Vec<Entry<T>>>,
}

#[derive(Debug, Clone)]
struct Entry<T> {
    host: Option<String>,
    methods: Option<Vec<Method>>,
    value: T,
}

#[derive(Debug)]
pub struct Matched<'a, T> {
    pub value: &'a T,
    /// Path parameters as they appear in the path (still percent-encoded).
    pub params: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    MethodNotAllowed(Vec<Method>),
}

/// Why two routes cannot share the table (the second one's index).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub index: usize,
    pub message: String,
}

/// The parameter names of a route path: `/a/{x}/{*rest}` → [x, rest].
pub fn path_params(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { break };
        out.push(after[..close].trim_start_matches('*').to_string());
        rest = &after[close + 1..];
    }
    out
}

fn overlaps(a: Option<&[Method]>, b: Option<&[Method]>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

impl<T> Router<T> {
    /// Build the table, or say which routes cannot be told apart.
    pub fn build<'a>(
        routes: impl IntoIterator<Item = (RouteKey<'a>, T)>,
    ) -> Result<Router<T>, Vec<Conflict>> {
        let mut paths = matchit::Router::new();
        let mut groups: Vec<Vec<Entry<T>>> = Vec::new();
        let mut indexes: Vec<Vec<usize>> = Vec::new();
        let mut problems = Vec::new();
        let mut by_path: Vec<(&str, usize)> = Vec::new();
        for (key, value) in routes {
            let entry = Entry {
                host: key.host.map(str::to_string),
                methods: key.methods.map(<[Method]>::to_vec),
                value,
            };
            if let Some(&(_, g)) = by_path.iter().find(|(p, _)| *p == key.path) {
                let clash = groups[g].iter().zip(&indexes[g]).find(|(o, _)| {
                    o.host.as_deref() == key.host && overlaps(o.methods.as_deref(), key.methods)
                });
                if let Some((_, other)) = clash {
                    problems.push(Conflict {
                        index: key.index,
                        message: format!(
                            "route `{}` matches the same requests as route #{} (add `methods:` or `host:` to tell them apart)",
                            key.path,
                            other + 1
                        ),
                    });
                    continue;
                }
                groups[g].push(entry);
                indexes[g].push(key.index);
                continue;
            }
            match paths.insert(key.path.to_string(), groups.len()) {
                Ok(()) => {
                    by_path.push((key.path, groups.len()));
                    groups.push(vec![entry]);
                    indexes.push(vec![key.index]);
                }
                Err(e) => problems.push(Conflict {
                    index: key.index,
                    message: format!("route path `{}`: {e}", key.path),
                }),
            }
        }
        for g in &mut groups {
            g.sort_by_key(|e| e.host.is_none());
        }
        if problems.is_empty() {
            Ok(Router { paths, groups })
        } else {
            Err(problems)
        }
    }

    /// Every route whose path pattern matches `path`, whatever its host and
    /// methods.
    pub fn at_path(&self, path: &str) -> impl Iterator<Item = &T> {
        let group = self.paths.at(path).ok().map(|m| &self.groups[*m.value]);
        group.into_iter().flatten().map(|e| &e.value)
    }

    /// `host` is the request's authority, already without port and lower-cased.
    pub fn lookup(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
    ) -> Result<Matched<'_, T>, Miss> {
        let m = self.paths.at(path).map_err(|_| Miss::NotFound)?;
        let group = &self.groups[*m.value];
        let mut allowed = Vec::new();
        for e in group {
            if let Some(h) = &e.host {
                if host != Some(h.as_str()) {
                    continue;
                }
            }
            let method_ok = match &e.methods {
                None => true,
                Some(ms) => {
                    ms.contains(method) || (*method == Method::HEAD && ms.contains(&Method::GET))
                }
            };
            if method_ok {
                return Ok(Matched {
                    value: &e.value,
                    params: m
                        .params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                });
            }
            allowed.extend(e.methods.iter().flatten().cloned());
        }
        if allowed.is_empty() {
            Err(Miss::NotFound)
        } else {
            Err(Miss::MethodNotAllowed(allowed))
        }
    }

    /// Every entry's value.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.groups.iter().flatten().map(|e| &e.value)
    }

    /// The same table with other values (for example, routes resolved to
    /// their upstream pools): built once, never re-checked.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Router<U> {
        Router {
            paths: self.paths.clone(),
            groups: self
                .groups
                .iter()
                .map(|g| {
                    g.iter()
                        .map(|e| Entry {
                            host: e.host.clone(),
                            methods: e.methods.clone(),
                            value: f(&e.value),
                        })
                        .collect()
                })
                .collect(),
        }
    }
}

/// `Example.com:8080` → `example.com`, `[::1]:80` → `[::1]`, and a trailing
/// dot dropped (`example.com.` is the same host).
pub fn host_only(h: &str) -> String {
    let h = h.trim();
    let end = if h.starts_with('[') {
        h.find(']').map(|i| i + 1).unwrap_or(h.len())
    } else {
        h.rfind(':').unwrap_or(h.len())
    };
    h[..end].trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    fn router(yaml: &str) -> (Router<usize>, Vec<crate::config::Route>) {
        let c = load_str(yaml, Path::new("t.yaml"), &|_| None).unwrap();
        (c.router.clone(), c.routes.clone())
    }

    const ROUTES: &str = "
upstreams: { app: { servers: [\"127.0.0.1:1\"] }, other: { servers: [\"127.0.0.1:2\"] } }
routes:
  - { path: \"/api/{*rest}\", proxy: app }
  - { path: /api/special, proxy: other }
  - { path: \"/events/{room}\", sse: { channels: [\"room:{room}\"] } }
  - { path: /w, proxy: app, methods: [POST] }
  - { path: /w, proxy: other, methods: [GET] }
  - { path: /h, proxy: app, host: example.com }
  - { path: /h, proxy: other }
";

    use crate::config::RouteKind;

    fn upstream<'a>(routes: &'a [crate::config::Route], m: &Matched<'_, usize>) -> &'a str {
        match &routes[*m.value].kind {
            RouteKind::Proxy { upstream, .. } => upstream,
            RouteKind::Sse(_) => "sse",
        }
    }

    #[test]
    fn most_specific_wins() {
        let (r, routes) = router(ROUTES);
        let m = r.lookup(&Method::GET, None, "/api/special").unwrap();
        assert_eq!(upstream(&routes, &m), "other");
        let m = r.lookup(&Method::GET, None, "/api/a/b").unwrap();
        assert_eq!(upstream(&routes, &m), "app");
        assert_eq!(m.params, vec![("rest".to_string(), "a/b".to_string())]);
        let m = r.lookup(&Method::GET, None, "/events/x1").unwrap();
        assert_eq!(upstream(&routes, &m), "sse");
        assert_eq!(
            r.lookup(&Method::GET, None, "/nope").unwrap_err(),
            Miss::NotFound
        );
    }

    #[test]
    fn methods_and_hosts_narrow() {
        let (r, routes) = router(ROUTES);
        assert_eq!(
            upstream(&routes, &r.lookup(&Method::POST, None, "/w").unwrap()),
            "app"
        );
        assert_eq!(
            upstream(&routes, &r.lookup(&Method::GET, None, "/w").unwrap()),
            "other"
        );
        assert!(matches!(
            r.lookup(&Method::PUT, None, "/w"),
            Err(Miss::MethodNotAllowed(_))
        ));
        assert_eq!(
            upstream(
                &routes,
                &r.lookup(&Method::GET, Some(&host_only("Example.COM.:8080")), "/h")
                    .unwrap()
            ),
            "app"
        );
        assert_eq!(
            upstream(
                &routes,
                &r.lookup(&Method::GET, Some("other.org"), "/h").unwrap()
            ),
            "other"
        );
    }

    #[test]
    fn ambiguous_routes_are_refused() {
        let c = load_str(
            "upstreams: { app: { servers: [\"127.0.0.1:1\"] } }\nroutes:\n  - { path: /a, proxy: app }\n  - { path: /a, proxy: app, methods: [GET] }\n",
            Path::new("t.yaml"),
            &|_| None,
        );
        let e = c.unwrap_err().to_string();
        assert!(
            e.contains("t.yaml:4:") && e.contains("matches the same requests"),
            "{e}"
        );
    }
}

//! (method, host, path) → route. Pure: no I/O. Paths use matchit's syntax,
//! which is the config's (`{name}`, `{*rest}`), so static segments beat
//! parameters and parameters beat catch-alls.

use crate::config::{Route, RouteKind};
use http::Method;
use std::sync::Arc;

#[derive(Debug)]
pub struct Router {
    paths: matchit::Router<usize>,
    /// Routes sharing one path, host-specific ones first.
    groups: Vec<Vec<Arc<Route>>>,
}

#[derive(Debug)]
pub struct Matched {
    pub route: Arc<Route>,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Miss {
    NotFound,
    MethodNotAllowed(Vec<Method>),
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

fn overlaps(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => true,
    }
}

impl Router {
    /// Build the router, or say which routes (by index) cannot be told apart.
    pub fn build(routes: &[Route]) -> Result<Router, Vec<(usize, String)>> {
        let mut paths = matchit::Router::new();
        let mut groups: Vec<Vec<Arc<Route>>> = Vec::new();
        let mut problems = Vec::new();
        let mut by_path: Vec<(String, usize)> = Vec::new();
        for r in routes {
            if let Some((_, g)) = by_path.iter().find(|(p, _)| *p == r.path) {
                let g = *g;
                if let Some(other) = groups[g]
                    .iter()
                    .find(|o| o.host == r.host && overlaps(&o.methods, &r.methods))
                {
                    problems.push((
                        r.index,
                        format!(
                            "route `{}` matches the same requests as route #{} (add `methods:` or `host:` to tell them apart)",
                            r.path,
                            other.index + 1
                        ),
                    ));
                    continue;
                }
                groups[g].push(Arc::new(r.clone()));
                continue;
            }
            match paths.insert(r.path.clone(), groups.len()) {
                Ok(()) => {
                    by_path.push((r.path.clone(), groups.len()));
                    groups.push(vec![Arc::new(r.clone())]);
                }
                Err(e) => problems.push((r.index, format!("route path `{}`: {e}", r.path))),
            }
        }
        for g in &mut groups {
            g.sort_by_key(|r| r.host.is_none());
        }
        if problems.is_empty() {
            Ok(Router { paths, groups })
        } else {
            Err(problems)
        }
    }

    pub fn lookup(&self, method: &Method, host: Option<&str>, path: &str) -> Result<Matched, Miss> {
        let m = self.paths.at(path).map_err(|_| Miss::NotFound)?;
        let group = &self.groups[*m.value];
        let host = host.map(host_only);
        let mut allowed = Vec::new();
        for r in group {
            if let Some(h) = &r.host {
                if host.as_deref() != Some(h.as_str()) {
                    continue;
                }
            }
            let method_ok = match &r.methods {
                None => true,
                Some(ms) => {
                    ms.contains(method) || (*method == Method::HEAD && ms.contains(&Method::GET))
                }
            };
            if method_ok {
                return Ok(Matched {
                    route: r.clone(),
                    params: m
                        .params
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                });
            }
            allowed.extend(r.methods.iter().flatten().cloned());
        }
        if allowed.is_empty() {
            Err(Miss::NotFound)
        } else {
            Err(Miss::MethodNotAllowed(allowed))
        }
    }

    /// Every route, for metrics labels and startup logs.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.groups.iter().flatten()
    }
}

/// `Example.com:8080` → `example.com`, `[::1]:80` → `[::1]`.
fn host_only(h: &str) -> String {
    let h = h.trim();
    let end = if h.starts_with('[') {
        h.find(']').map(|i| i + 1).unwrap_or(h.len())
    } else {
        h.rfind(':').unwrap_or(h.len())
    };
    h[..end].to_ascii_lowercase()
}

impl Route {
    pub fn label(&self) -> &str {
        &self.path
    }

    pub fn is_sse(&self) -> bool {
        matches!(self.kind, RouteKind::Sse(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load_str;
    use std::path::Path;

    fn router(yaml: &str) -> Router {
        let c = load_str(yaml, Path::new("t.yaml"), &|_| None).unwrap();
        Router::build(&c.routes).unwrap()
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

    fn upstream(m: &Matched) -> &str {
        match &m.route.kind {
            RouteKind::Proxy { upstream, .. } => upstream,
            RouteKind::Sse(_) => "sse",
        }
    }

    #[test]
    fn most_specific_wins() {
        let r = router(ROUTES);
        let m = r.lookup(&Method::GET, None, "/api/special").unwrap();
        assert_eq!(upstream(&m), "other");
        let m = r.lookup(&Method::GET, None, "/api/a/b").unwrap();
        assert_eq!(upstream(&m), "app");
        assert_eq!(m.params, vec![("rest".to_string(), "a/b".to_string())]);
        let m = r.lookup(&Method::GET, None, "/events/x1").unwrap();
        assert_eq!(upstream(&m), "sse");
        assert_eq!(
            r.lookup(&Method::GET, None, "/nope").unwrap_err(),
            Miss::NotFound
        );
    }

    #[test]
    fn methods_and_hosts_narrow() {
        let r = router(ROUTES);
        assert_eq!(
            upstream(&r.lookup(&Method::POST, None, "/w").unwrap()),
            "app"
        );
        assert_eq!(
            upstream(&r.lookup(&Method::GET, None, "/w").unwrap()),
            "other"
        );
        assert!(matches!(
            r.lookup(&Method::PUT, None, "/w"),
            Err(Miss::MethodNotAllowed(_))
        ));
        assert_eq!(
            upstream(
                &r.lookup(&Method::GET, Some("Example.COM:8080"), "/h")
                    .unwrap()
            ),
            "app"
        );
        assert_eq!(
            upstream(&r.lookup(&Method::GET, Some("other.org"), "/h").unwrap()),
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

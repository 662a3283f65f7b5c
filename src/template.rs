//! Templates such as `order:{order_id}` or `user:{jwt.sub}`: parsed once at
//! load, rendered per request. Channel templates check every substituted value
//! against the channel alphabet, so no client input can widen or merge a
//! subscription (`*`, `,`, `..`, newlines and empty values are all refused).

use crate::channel::{self, is_channel_char};
use std::borrow::Cow;
use std::fmt;

/// Where a placeholder takes its value from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// `{name}`: a path parameter of the route.
    Param(String),
    /// `{query.x}`
    Query(String),
    /// `{header.x}` (lower-cased name)
    Header(String),
    /// `{jwt.claim}`
    Jwt(String),
    /// `{auth.x}`: a response header of forward auth (lower-cased)
    Auth(String),
    /// `{form.x}`: a field of a form-encoded body
    Form(String),
    /// `{/json/pointer}` into a JSON body
    Pointer(String),
}

impl Var {
    pub fn kind(&self) -> &'static str {
        match self {
            Var::Param(_) => "path parameter",
            Var::Query(_) => "query",
            Var::Header(_) => "header",
            Var::Jwt(_) => "jwt",
            Var::Auth(_) => "auth",
            Var::Form(_) => "form",
            Var::Pointer(_) => "JSON pointer",
        }
    }
}

impl fmt::Display for Var {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Var::Param(n) => write!(f, "{{{n}}}"),
            Var::Query(n) => write!(f, "{{query.{n}}}"),
            Var::Header(n) => write!(f, "{{header.{n}}}"),
            Var::Jwt(n) => write!(f, "{{jwt.{n}}}"),
            Var::Auth(n) => write!(f, "{{auth.{n}}}"),
            Var::Form(n) => write!(f, "{{form.{n}}}"),
            Var::Pointer(p) => write!(f, "{{{p}}}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

/// Why a template could not be rendered for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    /// The placeholder has no value in this request.
    Missing(String),
    /// The value would put a forbidden character into a channel name.
    BadValue(String, String),
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenderError::Missing(v) => write!(f, "{v} has no value in this request"),
            RenderError::BadValue(v, why) => write!(f, "{v}: {why}"),
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Template {
    pub fn parse(src: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = src;
        while let Some(open) = rest.find(['{', '}']) {
            if rest.as_bytes()[open] == b'}' {
                return Err(format!("unmatched `}}` in template {src:?}"));
            }
            if open > 0 {
                parts.push(Part::Lit(rest[..open].to_string()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in template {src:?}"))?;
            let inner = &after[..close];
            if inner.contains('{') {
                return Err(format!("nested `{{` in template {src:?}"));
            }
            parts.push(Part::Var(parse_var(inner)?));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn vars(&self) -> impl Iterator<Item = &Var> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v),
            Part::Lit(_) => None,
        })
    }

    pub fn literals(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Lit(s) => Some(s.as_str()),
            Part::Var(_) => None,
        })
    }

    /// Render as plain text (paths, event names): values are inserted as they are.
    pub fn render<'a>(
        &self,
        lookup: impl FnMut(&Var) -> Option<Cow<'a, str>>,
    ) -> Result<String, RenderError> {
        self.render_checked(lookup, |_, _| Ok(()))
    }

    /// Render, with each value passing `check` before it is inserted.
    fn render_checked<'a>(
        &self,
        mut lookup: impl FnMut(&Var) -> Option<Cow<'a, str>>,
        check: impl Fn(&Var, &str) -> Result<(), RenderError>,
    ) -> Result<String, RenderError> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Var(v) => {
                    let val = lookup(v).ok_or_else(|| RenderError::Missing(v.to_string()))?;
                    check(v, &val)?;
                    out.push_str(&val);
                }
            }
        }
        Ok(out)
    }

    /// Render a channel name: every value must be non-empty and inside the alphabet.
    pub fn render_channel<'a>(
        &self,
        lookup: impl FnMut(&Var) -> Option<Cow<'a, str>>,
    ) -> Result<String, RenderError> {
        let out = self.render_checked(lookup, |v, val| {
            let bad = |why: String| Err(RenderError::BadValue(v.to_string(), why));
            if val.is_empty() {
                return bad("empty value".into());
            }
            // `.`/`..` mean nothing to the hub, but they would to any
            // store that maps channels onto paths or key prefixes.
            if val.chars().all(|c| c == '.') {
                return bad("a value of dots only".into());
            }
            match val.chars().find(|c| !is_channel_char(*c)) {
                Some(c) => bad(format!("value has {c:?}, outside [A-Za-z0-9_.:@-]")),
                None => Ok(()),
            }
        })?;
        channel::check(&out)
            .map_err(|why| RenderError::BadValue("channel".into(), why.to_string()))?;
        Ok(out)
    }
}

fn parse_var(inner: &str) -> Result<Var, String> {
    if inner.starts_with('/') {
        return check_pointer(inner).map(|_| Var::Pointer(inner.to_string()));
    }
    let (kind, name) = match inner.split_once('.') {
        Some((k, n)) => (k, n),
        None => ("", inner),
    };
    if !is_name(name) {
        return Err(format!("bad placeholder `{{{inner}}}`"));
    }
    let name = name.to_string();
    Ok(match kind {
        "" => Var::Param(name),
        "query" => Var::Query(name),
        "header" => Var::Header(name.to_ascii_lowercase()),
        "jwt" => Var::Jwt(name),
        "auth" => Var::Auth(name.to_ascii_lowercase()),
        "form" => Var::Form(name),
        other => {
            return Err(format!(
                "unknown placeholder kind `{other}` in `{{{inner}}}` (use {{name}}, {{query.x}}, {{header.x}}, {{jwt.x}}, {{auth.x}}, {{form.x}} or {{/json/pointer}})"
            ))
        }
    })
}

/// RFC 6901: `/a/b~1c`; `~` must be followed by 0 or 1.
pub fn check_pointer(p: &str) -> Result<(), String> {
    if !p.is_empty() && !p.starts_with('/') {
        return Err(format!("JSON pointer {p:?} must start with `/`"));
    }
    let b = p.as_bytes();
    for (i, c) in b.iter().enumerate() {
        if *c == b'~' && !matches!(b.get(i + 1), Some(b'0') | Some(b'1')) {
            return Err(format!(
                "JSON pointer {p:?}: `~` must be followed by 0 or 1"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(v: &Var) -> Option<Cow<'static, str>> {
        match v {
            Var::Param(n) if n == "id" => Some("42".into()),
            Var::Param(n) if n == "evil" => Some("a*".into()),
            Var::Param(n) if n == "comma" => Some("a,b".into()),
            Var::Param(n) if n == "empty" => Some("".into()),
            Var::Query(n) if n == "x" => Some("q".into()),
            _ => None,
        }
    }

    #[test]
    fn parses_every_kind() {
        let t = Template::parse(
            "a:{id}:{query.x}:{header.X-Y}:{jwt.sub}:{auth.X-User}:{/a/b}:{form.f}",
        )
        .unwrap();
        let vars: Vec<_> = t.vars().cloned().collect();
        assert_eq!(
            vars,
            vec![
                Var::Param("id".into()),
                Var::Query("x".into()),
                Var::Header("x-y".into()),
                Var::Jwt("sub".into()),
                Var::Auth("x-user".into()),
                Var::Pointer("/a/b".into()),
                Var::Form("f".into()),
            ]
        );
    }

    #[test]
    fn rejects_bad_templates() {
        for bad in ["{", "a}", "{}", "{nope.x}", "{a{b}}", "{/a~2}", "{x y}"] {
            assert!(Template::parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn channel_values_cannot_widen() {
        let ok = Template::parse("order:{id}:{query.x}").unwrap();
        assert_eq!(ok.render_channel(vals).unwrap(), "order:42:q");
        for t in ["o:{evil}", "o:{comma}", "o:{empty}"] {
            let t = Template::parse(t).unwrap();
            assert!(matches!(
                t.render_channel(vals),
                Err(RenderError::BadValue(..))
            ));
        }
        let missing = Template::parse("o:{query.nope}").unwrap();
        assert!(matches!(
            missing.render_channel(vals),
            Err(RenderError::Missing(_))
        ));
    }
}

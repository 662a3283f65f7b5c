//! `webhooks:` → runtime `Webhook`s: exact admin paths that collide with
//! nothing, templates whose placeholders a webhook request can fill, and
//! exactly one verification scheme whose secret is in the environment.

use super::Validator;
use crate::channel::is_channel_char;
use crate::config::file::{self, VerifyFile};
use crate::config::runtime::{
    Listener, Secret, SignatureEncoding, Verify, Webhook, WebhookData, ADMIN_PATHS,
};
use crate::routing::Router;
use crate::template::{check_pointer, Template, Var};
use base64::Engine;
use std::collections::BTreeMap;
use std::time::Duration;

const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

impl Validator<'_> {
    pub(super) fn webhooks(&mut self, hooks: Vec<file::WebhookFile>) -> Vec<Webhook> {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut out = Vec::new();
        for (index, w) in hooks.into_iter().enumerate() {
            let base = format!("webhooks.{index}");
            let listener = match w.listener.as_deref() {
                None | Some("admin") => Listener::Admin,
                Some("public") => Listener::Public,
                Some(other) => {
                    self.err(
                        &format!("{base}.listener"),
                        format!("unknown listener `{other}` (admin or public)"),
                    );
                    Listener::Admin
                }
            };
            if listener == Listener::Public && w.verify.is_none() {
                // Anyone on the internet could publish to its channels.
                self.err(
                    &format!("{base}.listener"),
                    "a webhook on the public listener needs `verify:` (a signature or token check)",
                );
            }
            self.webhook_path(&base, &w.path, listener, index, &mut seen);
            let methods = self
                .methods(&base, w.methods.as_deref())
                .unwrap_or_else(|| vec![http::Method::POST]);
            if methods.is_empty() && w.methods.as_ref().is_some_and(Vec::is_empty) {
                self.err(
                    &format!("{base}.methods"),
                    "`methods:` lists no method; omit it for POST",
                );
            }
            let verify = w
                .verify
                .and_then(|v| self.verify(&format!("{base}.verify"), v));
            let channels = self.webhook_channels(&base, w.channel);
            let event = w
                .event
                .as_deref()
                .and_then(|t| self.webhook_template(&format!("{base}.event"), t));
            let id =
                w.id.as_deref()
                    .and_then(|t| self.webhook_template(&format!("{base}.id"), t));
            let data = self.webhook_data(&format!("{base}.data"), w.data.as_deref());
            if let Some(p) = &w.each {
                if let Err(e) = check_pointer(p) {
                    self.err(&format!("{base}.each"), e);
                }
            }
            out.push(Webhook {
                path: w.path,
                listener,
                methods,
                verify,
                channels,
                event,
                id,
                data,
                each: w.each,
            });
        }
        out
    }

    fn webhook_path(
        &mut self,
        base: &str,
        path: &str,
        listener: Listener,
        index: usize,
        seen: &mut BTreeMap<String, usize>,
    ) {
        let at = format!("{base}.path");
        if !path.starts_with('/') {
            self.err(&at, format!("webhook path `{path}` must start with /"));
        } else if path.contains(['{', '}', '?', '#']) {
            self.err(&at, format!("webhook path `{path}` must be an exact path: no {{name}} parameters, query or fragment"));
        } else if listener == Listener::Admin && ADMIN_PATHS.contains(&path) {
            self.err(
                &at,
                format!("webhook path `{path}` is one of the admin listener's own endpoints"),
            );
        } else if let Some(first) = seen.get(path) {
            self.err(
                &at,
                format!("webhook path `{path}` is already used by webhooks.{first}"),
            );
        } else {
            seen.insert(path.to_string(), index);
        }
    }

    /// A public webhook is looked up before the routes, so a route that
    /// names its path (exactly or with `{param}`s) would never see it: an
    /// error. A catch-all (`/{*rest}`, `/api/{*rest}`) only yields the path,
    /// as it yields to any more specific route.
    pub(super) fn public_webhooks_vs_routes(
        &mut self,
        hooks: &[Webhook],
        router: &Router<usize>,
        route_paths: &[(usize, &str)],
    ) {
        for (index, hook) in hooks.iter().enumerate() {
            if hook.listener != Listener::Public {
                continue;
            }
            for route in router.at_path(&hook.path) {
                let Some((file_index, path)) = route_paths.get(*route) else {
                    continue;
                };
                if !path.contains("{*") {
                    self.err(
                        &format!("webhooks.{index}.path"),
                        format!(
                            "public webhook path `{}` collides with route #{} (`{path}`)",
                            hook.path,
                            file_index + 1
                        ),
                    );
                }
            }
        }
    }

    fn webhook_channels(
        &mut self,
        base: &str,
        channel: Option<file::ChannelsFile>,
    ) -> Vec<Template> {
        let at = format!("{base}.channel");
        let (list, many) = match channel {
            None => {
                self.err(base, "a webhook needs `channel:` (one template or a list)");
                return Vec::new();
            }
            Some(c @ file::ChannelsFile::Many(_)) => (c.into_vec(), true),
            Some(c) => (c.into_vec(), false),
        };
        if list.is_empty() {
            self.err(&at, "`channel:` lists no channel");
        }
        let mut out = Vec::new();
        for (i, c) in list.iter().enumerate() {
            let at = if many {
                format!("{at}.{i}")
            } else {
                at.clone()
            };
            let Some(t) = self.webhook_template(&at, c) else {
                continue;
            };
            if let Some(ch) = t
                .literals()
                .flat_map(str::chars)
                .find(|ch| !is_channel_char(*ch))
            {
                self.err(
                    &at,
                    format!("channel template `{c}` has {ch:?}, outside [A-Za-z0-9_.:@-]"),
                );
            }
            out.push(t);
        }
        out
    }

    /// A template whose placeholders a webhook request can fill.
    fn webhook_template(&mut self, at: &str, src: &str) -> Option<Template> {
        let t = match Template::parse(src) {
            Ok(t) => t,
            Err(e) => {
                self.err(at, e);
                return None;
            }
        };
        let mut ok = true;
        for v in t.vars() {
            if let Var::Param(_) | Var::Jwt(_) | Var::Auth(_) = v {
                ok = false;
                self.err(
                    at,
                    format!("`{v}` ({}) is not available in webhooks; use {{/json/pointer}}, {{header.x}}, {{query.x}} or {{form.x}}", v.kind()),
                );
            }
        }
        ok.then_some(t)
    }

    /// `data:` is a JSON pointer (`/order`, or `""` for the whole body) or a
    /// template with placeholders (`{form.text}`), never a bare word, which is
    /// almost always a pointer missing its `/`.
    fn webhook_data(&mut self, at: &str, data: Option<&str>) -> WebhookData {
        let whole = WebhookData::Pointer(String::new());
        match data {
            None => whole,
            Some(p) if p.is_empty() || p.starts_with('/') => match check_pointer(p) {
                Ok(()) => WebhookData::Pointer(p.to_string()),
                Err(e) => {
                    self.err(at, e);
                    whole
                }
            },
            Some(t) if t.contains('{') => self
                .webhook_template(at, t)
                .map_or(whole, WebhookData::Template),
            Some(other) => {
                self.err(at, format!("`data: {other}` is neither a JSON pointer like /order nor a template like {{form.text}}"));
                whole
            }
        }
    }

    pub(super) fn methods(
        &mut self,
        base: &str,
        methods: Option<&[String]>,
    ) -> Option<Vec<http::Method>> {
        methods.map(|ms| {
            ms.iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    match http::Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
                        Ok(m) => Some(m),
                        Err(_) => {
                            self.err(
                                &format!("{base}.methods.{i}"),
                                format!("`{m}` is not an HTTP method"),
                            );
                            None
                        }
                    }
                })
                .collect()
        })
    }

    fn verify(&mut self, at: &str, v: VerifyFile) -> Option<Verify> {
        let given = [
            v.hmac_sha256.is_some(),
            v.stripe.is_some(),
            v.standard_webhooks.is_some(),
            v.token.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            self.err(
                at,
                "`verify:` takes exactly one of hmac_sha256, stripe, standard_webhooks, token",
            );
            return None;
        }
        if let Some(h) = v.hmac_sha256 {
            let at = format!("{at}.hmac_sha256");
            let encoding = match h.encoding.as_deref() {
                None | Some("hex") => SignatureEncoding::Hex,
                Some("base64") => SignatureEncoding::Base64,
                Some(other) => {
                    self.err(
                        &format!("{at}.encoding"),
                        format!("unknown encoding `{other}` (hex or base64)"),
                    );
                    SignatureEncoding::Hex
                }
            };
            let secret = self.secret(&format!("{at}.secret_env"), &h.secret_env)?;
            return Some(Verify::HmacSha256 {
                secret: Secret(secret.into_bytes()),
                header: self.header_name(&format!("{at}.header"), &h.header),
                prefix: h.prefix.unwrap_or_default(),
                encoding,
            });
        }
        if let Some(s) = v.stripe {
            let at = format!("{at}.stripe");
            let tolerance = self.tolerance(&at, s.tolerance.as_ref());
            let header = self.header_name(
                &format!("{at}.header"),
                s.header.as_deref().unwrap_or("Stripe-Signature"),
            );
            // Stripe signs with the whole `whsec_…` string as the key.
            let secret = self.secret(&format!("{at}.secret_env"), &s.secret_env)?;
            return Some(Verify::Stripe {
                secret: Secret(secret.into_bytes()),
                header,
                tolerance,
            });
        }
        if let Some(s) = v.standard_webhooks {
            let at = format!("{at}.standard_webhooks");
            let tolerance = self.tolerance(&at, s.tolerance.as_ref());
            let env_at = format!("{at}.secret_env");
            let secret = self.secret(&env_at, &s.secret_env)?;
            let b64 = secret.strip_prefix("whsec_").unwrap_or(&secret);
            return match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                Ok(key) if !key.is_empty() => Some(Verify::StandardWebhooks {
                    secret: Secret(key),
                    tolerance,
                }),
                _ => {
                    self.err(
                        &env_at,
                        format!(
                            "`{}` must hold a base64 secret, optionally prefixed whsec_",
                            s.secret_env
                        ),
                    );
                    None
                }
            };
        }
        let t = v.token?;
        let at = format!("{at}.token");
        let header = self.header_name(&format!("{at}.header"), &t.header);
        let value = self.secret(&format!("{at}.value_env"), &t.value_env)?;
        Some(Verify::Token {
            header,
            value: Secret(value.into_bytes()),
        })
    }

    fn tolerance(&mut self, at: &str, v: Option<&String>) -> Duration {
        self.duration(&format!("{at}.tolerance"), v, DEFAULT_TOLERANCE)
    }

    /// Lower-cased, as `http::HeaderMap` looks names up.
    fn header_name(&mut self, at: &str, name: &str) -> String {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            self.err(at, format!("`{name}` is not a header name"));
        }
        name.to_ascii_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::load_str;
    use std::path::Path;

    fn errors(text: &str) -> Vec<String> {
        let env = |k: &str| (k == "SET").then(|| "c2VjcmV0".to_string());
        match load_str(text, Path::new("t.yaml"), &env) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
        }
    }

    fn has(errs: &[String], at: &str, what: &str) -> bool {
        errs.iter().any(|e| e.starts_with(at) && e.contains(what))
    }

    #[test]
    fn every_template_problem_is_located() {
        let text = "\
webhooks:
  - path: /a
    channel: [\"ok:{/id}\", \"p:{name}\", \"j:{jwt.sub}\"]
    event: \"{nope.x}\"
    id: \"{/a~2}\"
    data: order
  - path: /publish
    channel: \"a b\"
  - path: /a
    methods: [\"GE T\"]
    channel: x
    each: items
  - path: /c/{id}
    channel: x
    data: \"{auth.user}\"
    methods: []
";
        let e = errors(text);
        assert!(
            has(
                &e,
                "t.yaml:3:",
                "`{name}` (path parameter) is not available in webhooks"
            ),
            "{e:#?}"
        );
        assert!(has(&e, "t.yaml:3:", "`{jwt.sub}`"), "{e:#?}");
        assert!(
            has(&e, "t.yaml:4:5:", "unknown placeholder kind `nope`"),
            "{e:#?}"
        );
        assert!(
            has(&e, "t.yaml:5:5:", "`~` must be followed by 0 or 1"),
            "{e:#?}"
        );
        assert!(has(&e, "t.yaml:6:5:", "neither a JSON pointer"), "{e:#?}");
        assert!(
            has(&e, "t.yaml:7:5:", "admin listener's own endpoints"),
            "{e:#?}"
        );
        assert!(has(&e, "t.yaml:8:5:", "outside [A-Za-z0-9_.:@-]"), "{e:#?}");
        assert!(
            has(&e, "t.yaml:9:5:", "already used by webhooks.0"),
            "{e:#?}"
        );
        assert!(has(&e, "t.yaml:10:", "not an HTTP method"), "{e:#?}");
        assert!(has(&e, "t.yaml:12:5:", "must start with `/`"), "{e:#?}");
        assert!(has(&e, "t.yaml:13:5:", "must be an exact path"), "{e:#?}");
        assert!(has(&e, "t.yaml:15:5:", "`{auth.user}`"), "{e:#?}");
        assert!(has(&e, "t.yaml:16:5:", "lists no method"), "{e:#?}");
    }

    #[test]
    fn verify_needs_one_scheme_and_its_secret() {
        let e = errors("webhooks:\n  - path: /a\n    channel: x\n    verify:\n      hmac_sha256: { secret_env: UNSET, header: X-Sig, encoding: hex2 }\n");
        assert!(
            has(&e, "t.yaml:5:", "environment variable `UNSET` is not set"),
            "{e:#?}"
        );
        assert!(has(&e, "t.yaml:5:", "unknown encoding `hex2`"), "{e:#?}");
        let e = errors("webhooks:\n  - path: /a\n    channel: x\n    verify: { token: { header: X-T, value_env: SET }, stripe: { secret_env: SET } }\n");
        assert!(has(&e, "t.yaml:4:5:", "exactly one of"), "{e:#?}");
        let e = errors(
            "webhooks:\n  - path: /a\n    channel: x\n    verify: { hmac: { secret_env: SET } }\n",
        );
        assert!(
            has(
                &e,
                "t.yaml:4:",
                "unknown key `hmac` (did you mean `hmac_sha256`?)"
            ),
            "{e:#?}"
        );
        let e = errors("webhooks:\n  - path: /a\n    verify: { standard_webhooks: { secret_env: SET, tolerance: 1m } }\n");
        assert!(has(&e, "t.yaml:2:", "needs `channel:`"), "{e:#?}");
        let ok = "webhooks:\n  - path: /a\n    channel: x\n    verify: { standard_webhooks: { secret_env: SET, tolerance: 1m } }\n";
        assert_eq!(errors(ok), Vec::<String>::new());
    }
}

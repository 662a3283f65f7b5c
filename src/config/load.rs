//! read → parse → validate. Every problem becomes a `ConfigError` that names
//! FILE:LINE:COL, and validation goes on after the first one so that
//! `ssegate check` can list them all.

use super::file::{self, FileConfig};
use super::positions::Positions;
use super::runtime::*;
use crate::channel::{is_channel_char, ChannelPattern, POLL_PREFIX};
use crate::routing::{self, RouteKey, Router};
use crate::template::{Template, Var};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

mod auth;
mod edges;
mod persist;
mod record;
mod telemetry;
mod tls;
mod webhooks;

pub use auth::parse_jwks;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// All errors of one file, in file order.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Read and validate a config file, taking secrets from the process environment.
/// Where `upgrade_socket:` points when the file does not say: one socket
/// per public port, in systemd's `RuntimeDirectory` when there is one
/// (`RUNTIME_DIRECTORY`), else the temp dir. pingora's own default is
/// shared by every pingora on the host.
pub fn default_upgrade_socket(runtime_directory: Option<String>, port: u16) -> PathBuf {
    runtime_directory
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("ssegate-{port}.upgrade.sock"))
}

pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.display().to_string(),
            line: 1,
            col: 1,
            message: format!("cannot read the config file: {e}"),
        }])
    })?;
    load_str(&text, path, &|k| std::env::var(k).ok())
}

/// Validate a config text; `env` stands in for the environment (tests).
pub fn load_str(
    text: &str,
    source: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let file_name = source.display().to_string();
    // Editors on Windows start UTF-8 files with a byte order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let pos = Positions::index(text).map_err(|at| {
        ConfigErrors(vec![ConfigError {
            file: file_name.clone(),
            line: at.line,
            col: at.col,
            message: format!(
                "collections nested deeper than {} levels",
                super::positions::MAX_DEPTH
            ),
        }])
    })?;
    let parsed: FileConfig = if text.trim().is_empty() {
        FileConfig::default()
    } else {
        serde_yaml::from_str(text).map_err(|e| ConfigErrors(vec![from_serde(&file_name, &e)]))?
    };
    let mut v = Validator {
        file: file_name,
        pos,
        errors: Vec::new(),
        env,
        // Key files are named relative to the config file.
        dir: source.parent().map(Path::to_path_buf).unwrap_or_default(),
        material: Vec::new(),
    };
    let cfg = v.config(parsed, source.to_path_buf()).map(|mut c| {
        c.digest = hex::encode(Sha256::digest(text.as_bytes()));
        c
    });
    if v.errors.is_empty() {
        if let Some(cfg) = cfg {
            return Ok(cfg);
        }
    }
    v.errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors(v.errors))
}

fn from_serde(file: &str, e: &serde_yaml::Error) -> ConfigError {
    let (line, col) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((1, 1));
    let mut msg = e.to_string();
    // serde_yaml appends " at line L column C"; we already say where.
    if let Some(i) = msg.find(" at line ") {
        msg.truncate(i);
    }
    ConfigError {
        file: file.to_string(),
        line,
        col,
        message: explain_unknown_key(&msg).unwrap_or(msg),
    }
}

/// "unknown field `brokr`, expected one of `broker`, …" → a suggestion.
fn explain_unknown_key(msg: &str) -> Option<String> {
    let rest = msg.split("unknown field `").nth(1)?;
    let (unknown, tail) = rest.split_once('`')?;
    let prefix = msg.split("unknown field").next().unwrap_or("");
    let valid: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
    let best = valid
        .iter()
        .map(|k| (strsim::jaro_winkler(unknown, k), *k))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let hint = match best {
        Some((score, k)) if score > 0.7 => format!(" (did you mean `{k}`?)"),
        _ if !valid.is_empty() => format!(" (valid keys: {})", valid.join(", ")),
        _ => String::new(),
    };
    Some(format!("{prefix}unknown key `{unknown}`{hint}"))
}

pub(super) struct Validator<'e> {
    file: String,
    pos: Positions,
    errors: Vec<ConfigError>,
    env: &'e dyn Fn(&str) -> Option<String>,
    dir: PathBuf,
    /// Secrets and key files read for the route being validated: part of
    /// its fingerprint, so a rotated secret counts as a changed route.
    material: Vec<u8>,
}

/// The longest value a duration setting may take: anything longer is a
/// typo, and arithmetic on it (deadlines, jittered retries) would overflow.
fn longest(path: &str) -> Duration {
    const HOUR: Duration = Duration::from_secs(3600);
    const DAY: Duration = Duration::from_secs(86_400);
    if path == "shutdown_grace" || path.ends_with(".retry") || path.ends_with(".heartbeat") {
        HOUR
    } else if path == "hub.history.ttl" {
        30 * DAY
    } else {
        7 * DAY
    }
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN: &str = "127.0.0.1:9090";

impl Validator<'_> {
    pub(super) fn err(&mut self, path: &str, message: impl Into<String>) {
        let (line, col) = self.pos.find(path);
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            col,
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        path: &str,
        v: Option<&String>,
        default: Duration,
    ) -> Duration {
        match v {
            None => default,
            Some(s) => match humantime::parse_duration(s.trim()) {
                Ok(d) if d > longest(path) => {
                    self.err(
                        path,
                        format!(
                            "`{s}` is longer than the {} this setting allows",
                            humantime::format_duration(longest(path))
                        ),
                    );
                    default
                }
                Ok(d) => d,
                Err(e) => {
                    self.err(
                        path,
                        format!("`{s}` is not a duration like 15s, 2m or 1h: {e}"),
                    );
                    default
                }
            },
        }
    }

    fn addr(&mut self, path: &str, v: Option<&String>, default: &str) -> SocketAddr {
        let s = v.map(String::as_str).unwrap_or(default);
        match SocketAddr::from_str(s.trim()) {
            Ok(a) => a,
            Err(_) => {
                self.err(path, format!("`{s}` is not an address like 127.0.0.1:8080"));
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    /// `upgrade_socket:`, relative to the config's directory. By default one
    /// per public port, in systemd's `RuntimeDirectory` when there is one:
    /// pingora's own default is shared by every pingora on the host.
    fn upgrade_socket(&mut self, v: Option<&str>, source: &Path, listen: SocketAddr) -> PathBuf {
        let Some(v) = v else {
            return default_upgrade_socket((self.env)("RUNTIME_DIRECTORY"), listen.port());
        };
        let path = source.parent().unwrap_or(Path::new("")).join(v);
        let dir = match path.parent() {
            Some(d) if d.as_os_str().is_empty() => Path::new("."),
            Some(d) => d,
            None => Path::new("/"),
        };
        if v.is_empty() || path.file_name().is_none() {
            self.err(
                "upgrade_socket",
                "upgrade_socket must name a file, e.g. /run/ssegate/upgrade.sock",
            );
        } else if !dir.is_dir() {
            self.err(
                "upgrade_socket",
                format!("the directory `{}` does not exist", dir.display()),
            );
        }
        path
    }

    fn secret(&mut self, path: &str, var: &str) -> Option<String> {
        match (self.env)(var) {
            Some(v) if !v.is_empty() => {
                self.remember(v.as_bytes());
                Some(v)
            }
            _ => {
                self.err(path, format!("environment variable `{var}` is not set"));
                None
            }
        }
    }

    fn config(&mut self, f: FileConfig, source: PathBuf) -> Option<Config> {
        let listen = self.addr("listen", f.listen.as_ref(), DEFAULT_LISTEN);
        let shutdown_grace = self.duration(
            "shutdown_grace",
            f.shutdown_grace.as_ref(),
            Duration::from_secs(10),
        );
        let upgrade_socket = self.upgrade_socket(f.upgrade_socket.as_deref(), &source, listen);
        let tls = f.tls.as_ref().and_then(|t| self.tls(t, &source));
        let http2 = self.http2(f.http2.unwrap_or_default(), tls.is_some());
        let admin_file = f.admin.unwrap_or_default();
        let admin = Admin {
            listen: self.addr("admin.listen", admin_file.listen.as_ref(), DEFAULT_ADMIN),
            token: admin_file
                .token_env
                .as_ref()
                .and_then(|var| self.secret("admin.token_env", var)),
        };
        if admin.listen == listen {
            self.err(
                "admin.listen",
                "the admin listener must not share the public address",
            );
        }
        let hub = self.hub(f.hub.unwrap_or_default());
        let sse = self.sse_settings("sse", &f.sse.unwrap_or_default(), None);
        let limits = self.limits(f.limits.unwrap_or_default());
        let upstreams = self.upstreams(f.upstreams);
        let grip_key = self.grip_key(f.grip);
        let routes = self.routes(f.routes, &upstreams, &sse, grip_key.as_ref());
        let webhooks = self.webhooks(f.webhooks);
        let telemetry = f.telemetry.and_then(|t| self.telemetry(t));
        let trusted_proxies = self.trusted_proxies(&f.trusted_proxies);
        let router = match Router::build(routes.iter().enumerate().map(|(pos, r)| {
            let key = RouteKey {
                index: r.index,
                path: &r.path,
                host: r.host.as_deref(),
                methods: r.methods.as_deref(),
            };
            (key, pos)
        })) {
            Ok(router) => router,
            Err(conflicts) => {
                for c in conflicts {
                    self.err(&format!("routes.{}.path", c.index), c.message);
                }
                return None;
            }
        };
        let route_paths: Vec<(usize, &str)> =
            routes.iter().map(|r| (r.index, r.path.as_str())).collect();
        self.public_webhooks_vs_routes(&webhooks, &router, &route_paths);
        Some(Config {
            source,
            digest: String::new(),
            listen,
            shutdown_grace,
            upgrade_socket,
            tls,
            http2,
            admin,
            hub,
            sse,
            limits,
            upstreams,
            router,
            routes,
            webhooks,
            access_log: f.access_log.unwrap_or(false),
            telemetry,
            trusted_proxies,
        })
    }

    fn hub(&mut self, h: file::HubFile) -> Hub {
        let broker = match h.broker.as_deref() {
            None | Some("memory") => BrokerKind::Memory,
            Some("redis") => {
                let r = h.redis.as_ref();
                let url = match (
                    r.and_then(|r| r.url.clone()),
                    r.and_then(|r| r.url_env.as_ref()),
                ) {
                    (Some(_), Some(_)) => {
                        self.err("hub.redis", "give `url` or `url_env`, not both");
                        None
                    }
                    (Some(u), None) => {
                        self.inline_redis_url(&u);
                        Some(u)
                    }
                    (None, Some(var)) => self.secret("hub.redis.url_env", var),
                    (None, None) => Some("redis://127.0.0.1:6379".to_string()),
                };
                if let Some(u) = &url {
                    if let Err(e) = redis::Client::open(u.as_str()) {
                        self.err("hub.redis", format!("bad redis url: {e}"));
                    }
                }
                let ca = self.redis_ca(r.and_then(|r| r.ca.as_deref()), url.as_deref());
                let prefix = r
                    .and_then(|r| r.prefix.clone())
                    .unwrap_or_else(|| "ssegate".into());
                if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
                    self.err(
                        "hub.redis.prefix",
                        "prefix may not be empty or hold `{`, `}` or spaces",
                    );
                }
                BrokerKind::Redis {
                    url: url.unwrap_or_default(),
                    prefix,
                    ca,
                }
            }
            Some(other) => {
                self.err(
                    "hub.broker",
                    format!("unknown broker `{other}` (memory or redis)"),
                );
                BrokerKind::Memory
            }
        };
        let history = h.history.unwrap_or_default();
        let history_size = history.size.unwrap_or(1000);
        if history_size > 1_000_000 {
            self.err(
                "hub.history.size",
                "history size above 1,000,000 per channel",
            );
        }
        let persist = self.persist(h.persist, &broker);
        Hub {
            persist,
            broker,
            history_size,
            history_ttl: self.duration(
                "hub.history.ttl",
                history.ttl.as_ref(),
                Duration::from_secs(3600),
            ),
        }
    }

    fn sse_settings(
        &mut self,
        path: &str,
        s: &file::SseFile,
        base: Option<&SseSettings>,
    ) -> SseSettings {
        let d = base.cloned().unwrap_or(SseSettings {
            heartbeat: Duration::from_secs(15),
            retry: Duration::from_secs(3),
            client_queue: 1024,
            cors: None,
        });
        let heartbeat = self.duration(
            &format!("{path}.heartbeat"),
            s.heartbeat.as_ref(),
            d.heartbeat,
        );
        if heartbeat < Duration::from_millis(100) {
            self.err(&format!("{path}.heartbeat"), "heartbeat below 100ms");
        }
        let client_queue = s.client_queue.unwrap_or(d.client_queue);
        if client_queue == 0 {
            self.err(
                &format!("{path}.client_queue"),
                "client_queue must be at least 1",
            );
        }
        let cors = match &s.cors {
            Some(c) => self
                .cors(&format!("{path}.cors"), c)
                .map(std::sync::Arc::new),
            None => d.cors,
        };
        SseSettings {
            heartbeat,
            retry: self.duration(&format!("{path}.retry"), s.retry.as_ref(), d.retry),
            client_queue,
            cors,
        }
    }

    pub(super) fn size(&mut self, path: &str, v: Option<&String>, default: usize) -> usize {
        match v {
            None => default,
            Some(s) => match s.trim().parse::<bytesize::ByteSize>() {
                Ok(b) => b.as_u64() as usize,
                Err(e) => {
                    self.err(path, format!("`{s}` is not a size like 1MiB or 64KB: {e}"));
                    default
                }
            },
        }
    }

    /// An error unless `name` is a defined upstream.
    pub(super) fn check_upstream(
        &mut self,
        path: &str,
        name: &str,
        upstreams: &BTreeMap<String, Upstream>,
    ) {
        if !upstreams.contains_key(name) {
            let known: Vec<&str> = upstreams.keys().map(String::as_str).collect();
            self.err(
                path,
                format!(
                    "unknown upstream `{name}` (defined: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            );
        }
    }

    /// Placeholders an sse request can fill: `{name}` must be a parameter of
    /// the route; `takes` lists what the template accepts, for the message.
    /// Check a template's placeholders against what a request offers:
    /// `auth` None = no identity is known where it is rendered (poll paths).
    pub(super) fn request_vars(
        &mut self,
        at: &str,
        t: &Template,
        route_path: &str,
        auth: Option<&RouteAuth>,
        takes: &str,
    ) {
        let params = routing::path_params(route_path);
        for v in t.vars() {
            match v {
                Var::Param(n) if !params.iter().any(|p| p == n) => self.err(
                    at,
                    format!("`{{{n}}}` is not a parameter of route path `{route_path}`"),
                ),
                Var::Param(_) | Var::Query(_) | Var::Header(_) => {}
                Var::Jwt(_) if auth.is_some_and(|a| a.jwt.is_some()) => {}
                Var::Jwt(_) if auth.is_none() => {
                    self.err(at, format!("`{v}` is not available here; {takes}"))
                }
                Var::Jwt(_) => self.err(
                    at,
                    format!("`{v}` needs `auth: {{ jwt: … }}` on this route"),
                ),
                Var::Auth(n) => {
                    let exposed = auth
                        .and_then(|a| a.forward.as_ref())
                        .is_some_and(|f| f.expose.iter().any(|e| e == n));
                    if auth.is_none() {
                        self.err(at, format!("`{v}` is not available here; {takes}"));
                    } else if !exposed {
                        self.err(
                            at,
                            format!("`{v}` needs `auth: {{ forward: {{ expose: [{n}] }} }}` on this route"),
                        );
                    }
                }
                Var::Pointer(_) | Var::Form(_) => {
                    self.err(at, format!("`{v}` ({}) is for webhooks; {takes}", v.kind()))
                }
            }
        }
    }

    fn limits(&mut self, l: file::LimitsFile) -> Limits {
        let max_body = self.size("limits.max_body", l.max_body.as_ref(), 1024 * 1024);
        if max_body == 0 {
            self.err("limits.max_body", "max_body must be larger than 0");
        }
        let max_channels_per_client = l.max_channels_per_client.unwrap_or(32);
        if max_channels_per_client == 0 {
            self.err("limits.max_channels_per_client", "must be at least 1");
        }
        let header_timeout = self.duration(
            "limits.header_timeout",
            l.header_timeout.as_ref(),
            Duration::from_secs(10),
        );
        if header_timeout < Duration::from_millis(100) {
            self.err("limits.header_timeout", "header_timeout below 100ms");
        }
        let stream_rate = l.stream_rate.and_then(|r| {
            let burst = r.burst.unwrap_or(r.per_second.max(1.0));
            if !(r.per_second.is_finite() && r.per_second > 0.0) {
                self.err(
                    "limits.stream_rate.per_second",
                    "per_second must be a number above 0",
                );
                return None;
            }
            if !(burst.is_finite() && burst >= 1.0) {
                self.err("limits.stream_rate.burst", "burst must be at least 1");
                return None;
            }
            Some(StreamRate {
                per_second: r.per_second,
                burst,
            })
        });
        Limits {
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip.unwrap_or(0),
            max_channels_per_client,
            max_body,
            max_pollers: l.max_pollers.unwrap_or(1000),
            header_timeout,
            stream_rate,
        }
    }

    fn upstreams(
        &mut self,
        ups: BTreeMap<String, file::UpstreamFile>,
    ) -> BTreeMap<String, Upstream> {
        let mut out = BTreeMap::new();
        for (name, u) in ups {
            let base = format!("upstreams.{name}");
            if u.servers.is_empty() {
                self.err(
                    &format!("{base}.servers"),
                    "an upstream needs at least one server",
                );
            }
            let servers: Vec<Server> = u
                .servers
                .iter()
                .enumerate()
                .filter_map(|(i, s)| self.server(&format!("{base}.servers.{i}"), s))
                .collect();
            let tls = u
                .tls
                .as_ref()
                .and_then(|t| self.upstream_tls(&format!("{base}.tls"), t));
            let up = Upstream {
                name: name.clone(),
                servers,
                connect_timeout: self.duration(
                    &format!("{base}.connect_timeout"),
                    u.connect_timeout.as_ref(),
                    Duration::from_secs(5),
                ),
                read_timeout: self.duration(
                    &format!("{base}.read_timeout"),
                    u.read_timeout.as_ref(),
                    Duration::from_secs(60),
                ),
                fail_timeout: self.duration(
                    &format!("{base}.fail_timeout"),
                    u.fail_timeout.as_ref(),
                    Duration::from_secs(10),
                ),
                resolve_interval: self.resolve_interval(&base, u.resolve_interval.as_ref()),
                tls,
            };
            out.insert(name, up);
        }
        out
    }

    fn routes(
        &mut self,
        routes: Vec<file::RouteFile>,
        upstreams: &BTreeMap<String, Upstream>,
        sse: &SseSettings,
        grip_key: Option<&Secret>,
    ) -> Vec<Route> {
        let mut out = Vec::new();
        for (index, r) in routes.into_iter().enumerate() {
            let base = format!("routes.{index}");
            self.material.clear();
            // ok to default: file structs always serialise.
            let written = serde_json::to_vec(&r).unwrap_or_default();
            if !r.path.starts_with('/') {
                self.err(
                    &format!("{base}.path"),
                    format!("route path `{}` must start with /", r.path),
                );
            }
            let methods = self.methods(&base, r.methods.as_deref());
            let host = r.host.as_ref().map(|h| h.to_ascii_lowercase());
            if let Some(h) = &host {
                if h.is_empty() || (h.contains([':', '/']) && !h.starts_with('[')) {
                    self.err(
                        &format!("{base}.host"),
                        format!("host `{h}` must be a name without scheme or port (ports are ignored when matching)"),
                    );
                }
            }
            let kind = match (&r.proxy, r.sse) {
                (Some(_), Some(_)) => {
                    self.err(&base, "a route is either `proxy:` or `sse:`, not both");
                    continue;
                }
                (None, None) => {
                    self.err(&base, "a route needs `proxy: UPSTREAM` or `sse: {…}`");
                    continue;
                }
                (Some(up), None) => {
                    self.check_upstream(&format!("{base}.proxy"), up, upstreams);
                    let grip = self.grip_route(&base, r.grip, r.grip_key_env.as_ref(), grip_key);
                    let record = r
                        .record
                        .map(|f| self.record_route(&base, f, grip.is_some()));
                    RouteKind::Proxy {
                        upstream: up.clone(),
                        grip,
                        record,
                    }
                }
                (None, Some(s)) => {
                    if r.grip || r.grip_key_env.is_some() {
                        self.err(
                            &format!("{base}.grip"),
                            "`grip` applies to proxy routes only",
                        );
                    }
                    if r.record.is_some() {
                        self.err(
                            &format!("{base}.record"),
                            "`record` applies to proxy routes only",
                        );
                    }
                    RouteKind::Sse(Box::new(self.sse_route(&base, &r.path, s, sse, upstreams)))
                }
            };
            let fingerprint = self.fingerprint(&written, &kind, sse, upstreams);
            out.push(Route {
                index,
                fingerprint,
                path: r.path,
                methods,
                host,
                kind,
            });
        }
        out
    }

    /// Hash of everything that decides how a route's streams behave.
    fn fingerprint(
        &self,
        written: &[u8],
        kind: &RouteKind,
        sse: &SseSettings,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> u64 {
        let mut h = Sha256::new();
        let mut part = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        part(written);
        part(format!("{sse:?}").as_bytes());
        let named = match kind {
            RouteKind::Proxy { upstream, .. } => vec![upstream.as_str()],
            RouteKind::Sse(s) => s
                .auth
                .forward
                .iter()
                .map(|f| f.upstream.as_str())
                .chain(s.poll.iter().map(|p| p.upstream.as_str()))
                .collect(),
        };
        for name in named {
            part(format!("{:?}", upstreams.get(name)).as_bytes());
        }
        part(&self.material);
        let digest = h.finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(first)
    }

    /// Remember secret or key material read for the route being validated.
    pub(super) fn remember(&mut self, bytes: &[u8]) {
        self.material
            .extend_from_slice(&(bytes.len() as u64).to_le_bytes());
        self.material.extend_from_slice(bytes);
    }

    fn sse_route(
        &mut self,
        base: &str,
        route_path: &str,
        mut s: file::SseRouteFile,
        defaults: &SseSettings,
        upstreams: &BTreeMap<String, Upstream>,
    ) -> SseRoute {
        let auth = match s.auth.take() {
            Some(a) => self.route_auth(base, route_path, a, upstreams),
            None => RouteAuth::default(),
        };
        let mut channels = Vec::new();
        for (i, c) in s.channels.iter().enumerate() {
            let at = format!("{base}.sse.channels.{i}");
            if c.starts_with(POLL_PREFIX) {
                self.err(
                    &at,
                    format!("channels starting with `{POLL_PREFIX}` are reserved for pollers"),
                );
            }
            match Template::parse(c) {
                Err(e) => self.err(&at, e),
                Ok(t) => {
                    for lit in t.literals() {
                        if let Some(ch) = lit.chars().find(|ch| !is_channel_char(*ch)) {
                            self.err(
                                &at,
                                format!(
                                    "channel template `{c}` has {ch:?}, outside [A-Za-z0-9_.:@-]"
                                ),
                            );
                        }
                    }
                    self.request_vars(
                        &at,
                        &t,
                        route_path,
                        Some(&auth),
                        "sse channels take {name}, {query.x}, {header.x}, {jwt.x} or {auth.x}",
                    );
                    channels.push(t);
                }
            }
        }
        let mut allow = Vec::new();
        for (i, p) in s.allow_channels.iter().enumerate() {
            if p.is_empty() || p.chars().any(|c| c != '*' && !is_channel_char(c)) {
                self.err(
                    &format!("{base}.sse.allow_channels.{i}"),
                    format!("pattern `{p}` may hold only [A-Za-z0-9_.:@-] and `*`"),
                );
            }
            allow.push(ChannelPattern(p.clone()));
        }
        if channels.is_empty() && allow.is_empty() && s.poll.is_none() {
            self.err(
                &format!("{base}.sse"),
                "this sse route subscribes to nothing: give `channels`, `allow_channels` or `poll`",
            );
        }
        let poll = s
            .poll
            .map(|p| self.poll(&format!("{base}.sse.poll"), route_path, p, upstreams));
        let timing = file::SseFile {
            heartbeat: s.heartbeat,
            retry: s.retry,
            client_queue: s.client_queue,
            cors: s.cors,
        };
        SseRoute {
            channels,
            allow_channels: allow,
            settings: self.sse_settings(&format!("{base}.sse"), &timing, Some(defaults)),
            poll,
            auth,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigErrors> {
        load_str(text, Path::new("t.yaml"), &|k| {
            (k == "TOKEN").then(|| "s3cret".to_string())
        })
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = check("").unwrap();
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(c.sse.heartbeat, Duration::from_secs(15));
        assert_eq!(c.limits.max_body, 1024 * 1024);
    }

    #[test]
    fn unknown_key_is_located_and_suggested() {
        let e = check("hub:\n  brokr: memory\n").unwrap_err();
        assert_eq!(e.0.len(), 1);
        let msg = e.0[0].to_string();
        assert!(msg.starts_with("t.yaml:2:3: "), "{msg}");
        assert!(
            msg.contains("`brokr`") && msg.contains("did you mean `broker`"),
            "{msg}"
        );
    }

    #[test]
    fn semantic_errors_are_all_reported_with_positions() {
        let text = "\
upstreams:
  app: { servers: [\"127.0.0.1:3000\"] }
shutdown_grace: soon
routes:
  - path: /a
    proxy: nope
  - path: /e/{id}
    sse:
      channels: [\"x:{other}\", \"y:{jwt.sub}\"]
  - path: /e/{name}
    sse: { channels: [\"z\"] }
";
        let e = check(text).unwrap_err();
        let lines: Vec<String> = e.0.iter().map(|e| e.to_string()).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("t.yaml:3:1:") && l.contains("duration")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("t.yaml:6:5:") && l.contains("unknown upstream `nope`")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("t.yaml:9:") && l.contains("{other}")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("t.yaml:9:") && l.contains("jwt.sub")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("t.yaml:10:") && l.contains("conflict")),
            "{lines:?}"
        );
    }

    #[test]
    fn secrets_come_from_env() {
        let c = check("admin: { token_env: TOKEN }").unwrap();
        assert_eq!(c.admin.token.as_deref(), Some("s3cret"));
        let e = check("admin:\n  token_env: MISSING\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("t.yaml:2:3: environment variable `MISSING` is not set"),
            "{e}"
        );
    }
}

//! The validated configuration the gateway runs on. No serde here: every value
//! has been checked and converted once, in `load`.

use crate::channel::ChannelPattern;
use crate::routing::Router;
use crate::template::Template;
use http::Method;
use jsonwebtoken::{DecodingKey, Validation};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Config {
    pub source: PathBuf,
    /// SHA-256 of the file text, hex: which config is running.
    pub digest: String,
    pub listen: SocketAddr,
    pub shutdown_grace: Duration,
    pub tls: Option<Tls>,
    pub http2: Http2,
    pub admin: Admin,
    pub hub: Hub,
    pub sse: SseSettings,
    pub limits: Limits,
    pub upstreams: BTreeMap<String, Upstream>,
    pub routes: Vec<Route>,
    /// `routes` by (method, host, path): each value is an index into `routes`.
    pub router: Router<usize>,
    /// Served on the admin listener, matched by exact path.
    pub webhooks: Vec<Webhook>,
}

#[derive(Debug, Clone)]
pub struct Tls {
    /// Both resolved against the config file's directory.
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// HTTP/2 on the public listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Http2 {
    /// Plain-text HTTP/2 with prior knowledge (behind a TLS-terminating
    /// balancer). HTTP/1.1 still works on the same port.
    pub h2c: bool,
    /// Streams one client connection may have open at once (SETTINGS).
    pub max_concurrent_streams: u32,
}

#[derive(Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// Bearer token required by the publish API, read from the environment.
    pub token: Option<String>,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerKind {
    Memory,
    Redis { url: String, prefix: String },
}

#[derive(Debug, Clone)]
pub struct Hub {
    pub broker: BrokerKind,
    pub history_size: usize,
    pub history_ttl: Duration,
    /// `hub.persist` (memory broker only).
    pub persist: Option<Persist>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persist {
    /// The checkpoint; the log, lock and temporary files sit next to it.
    pub path: PathBuf,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseSettings {
    pub heartbeat: Duration,
    pub retry: Duration,
    pub client_queue: usize,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// 0 = unlimited.
    pub max_connections: usize,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    pub max_channels_per_client: usize,
    pub max_body: usize,
    /// New SSE streams over this rate are deferred: told to retry later.
    pub stream_rate: Option<StreamRate>,
}

/// A token bucket: `per_second` refill, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamRate {
    pub per_second: f64,
    pub burst: f64,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub servers: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub fail_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Index in the file, for error messages and metrics.
    pub index: usize,
    /// What the route is, as a number: equal iff everything that decides how
    /// its streams behave is equal (its YAML, the `sse` defaults, the
    /// upstreams it names, the secrets and key files it reads). A reload
    /// keeps the open streams of routes whose fingerprint did not change.
    pub fingerprint: u64,
    pub path: String,
    /// None = any method.
    pub methods: Option<Vec<Method>>,
    /// Lower-cased, without port. None = any host.
    pub host: Option<String>,
    pub kind: RouteKind,
}

#[derive(Debug, Clone)]
pub enum RouteKind {
    /// `grip: Some(..)`: the backend may hold the client with Grip-Hold.
    Proxy {
        upstream: String,
        grip: Option<GripRoute>,
    },
    Sse(Box<SseRoute>),
}

/// A `grip: true` route.
#[derive(Debug, Clone, Default)]
pub struct GripRoute {
    /// Signs the `Grip-Sig` sent to the backend (route `grip_key_env`, else
    /// the top-level `grip.key_env`); None sends no signature.
    pub key: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct SseRoute {
    pub channels: Vec<Template>,
    pub allow_channels: Vec<ChannelPattern>,
    pub settings: SseSettings,
    pub auth: RouteAuth,
    /// `poll:`: the gateway polls a legacy endpoint and pushes what changed.
    pub poll: Option<Poll>,
}

/// A validated `poll:` block (SPEC §4 Polling).
#[derive(Debug, Clone)]
pub struct Poll {
    pub upstream: String,
    /// Rendered per request; values are percent-encoded so they cannot change
    /// the path's shape.
    pub path: Template,
    /// The route's `{*rest}` parameter, whose `/` are kept when rendered.
    pub catch_all: Option<String>,
    pub method: Method,
    /// Extra request headers, the same for every poll (lower-cased names).
    pub headers: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
    pub linger: Duration,
    pub max_backoff: Duration,
    pub max_body: usize,
    pub diff: PollDiff,
    pub events: PollEvents,
    pub scope: PollScope,
    /// Request headers copied from each subscriber (lower-cased); empty for `shared`.
    pub forward_headers: Vec<String>,
    /// Send the latest snapshot to each new subscriber.
    pub initial: bool,
    /// Tell subscribers when polling starts failing and when it recovers.
    pub error_event: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollDiff {
    /// Hash of the body; the whole body is the event.
    Body,
    /// Conditional requests (If-None-Match / If-Modified-Since); then as `Body`.
    Etag,
    /// Per-item `created` / `updated` / `deleted` of the array at `items`.
    JsonItems { items: String, key: String },
    /// An RFC 6902 patch from the previous document to the new one.
    JsonPatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollEvents {
    /// `event:` of a whole-document change (body, etag, json-patch).
    pub update: String,
    pub created: String,
    pub updated: String,
    pub deleted: String,
}

impl Default for PollEvents {
    fn default() -> Self {
        PollEvents {
            update: "update".into(),
            created: "created".into(),
            updated: "updated".into(),
            deleted: "deleted".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollScope {
    /// One poller per resolved request, whoever listens.
    Shared,
    /// One poller per distinct set of forwarded header values.
    PerClient,
}

/// Who may subscribe: a JWT check, forward auth, both (JWT first) or neither.
#[derive(Debug, Clone, Default)]
pub struct RouteAuth {
    pub jwt: Option<std::sync::Arc<Jwt>>,
    pub forward: Option<std::sync::Arc<ForwardAuth>>,
}

/// Where a token may come from, tried in the configured order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>`
    Header,
    /// `?NAME=<token>` (EventSource cannot set headers)
    Query(String),
    /// `Cookie: NAME=<token>`
    Cookie(String),
}

/// The keys a route accepts.
#[derive(Clone)]
pub enum Keys {
    /// An HMAC secret or one public key.
    One(DecodingKey),
    /// A JWKS: the token's `kid` picks the key (a set of one needs no kid).
    Set(Vec<(Option<String>, DecodingKey)>),
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::One(_) => f.write_str("Keys::One(<redacted>)"),
            Keys::Set(set) => write!(f, "Keys::Set({} keys)", set.len()),
        }
    }
}

/// A route's `auth.jwt`, its key material already read.
#[derive(Clone)]
pub struct Jwt {
    pub keys: Keys,
    pub validation: Validation,
    pub token_from: Vec<TokenSource>,
    /// The claim that lists channel patterns a token may add with `?channel=`.
    pub channels_claim: String,
    /// Added to `exp` when deciding when to close a stream, as for validation.
    pub leeway: u64,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of logs, even public ones: they are noise there.
        f.debug_struct("Jwt")
            .field("algorithms", &self.validation.algorithms)
            .field("token_from", &self.token_from)
            .field("channels_claim", &self.channels_claim)
            .finish_non_exhaustive()
    }
}

/// A route's `auth.forward`: ask the backend whether a client may subscribe.
#[derive(Debug, Clone)]
pub struct ForwardAuth {
    pub upstream: String,
    pub path: Template,
    /// Lower-cased header names sent to the backend.
    pub forward_headers: Vec<String>,
    /// Lower-cased response header names that become `{auth.x}`.
    pub expose: Vec<String>,
    pub cache_ttl: Duration,
}

/// The admin listener's own endpoints, which no webhook may shadow.
pub const ADMIN_PATHS: [&str; 8] = [
    "/",
    "/publish",
    "/publish/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/stats",
    "/stats/stream",
];

/// One `webhooks:` entry: how a backend's callback becomes events.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Exact path on the admin listener; also the metrics label.
    pub path: String,
    pub methods: Vec<Method>,
    pub verify: Option<Verify>,
    /// One event per channel (per element with `each`).
    pub channels: Vec<Template>,
    pub event: Option<Template>,
    pub id: Option<Template>,
    pub data: WebhookData,
    /// JSON pointer to an array: one event (per channel) per element.
    pub each: Option<String>,
}

#[derive(Debug, Clone)]
pub enum WebhookData {
    /// JSON pointer (`""` = the whole body or element); strings are sent as
    /// they are, anything else as compact JSON.
    Pointer(String),
    /// Text with placeholders, such as `{form.text}`.
    Template(Template),
}

/// A webhook signature scheme with its secret already read from the environment.
#[derive(Debug, Clone)]
pub enum Verify {
    /// GitHub style: HMAC-SHA256 of the raw body in one header.
    HmacSha256 {
        secret: Secret,
        header: String,
        prefix: String,
        encoding: SignatureEncoding,
    },
    /// `t=…,v1=…` over `"{t}.{body}"`.
    Stripe {
        secret: Secret,
        header: String,
        tolerance: Duration,
    },
    /// standardwebhooks.com: `webhook-id`, `webhook-timestamp`, `webhook-signature`.
    StandardWebhooks { secret: Secret, tolerance: Duration },
    /// A static shared token in one header.
    Token { header: String, value: Secret },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureEncoding {
    Hex,
    Base64,
}

/// Key material that must never reach a log line through `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

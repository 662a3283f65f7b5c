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
    /// pingora's upgrade socket (`upgrade_socket:`); the streams move on
    /// `<upgrade_socket>.streams`. Resolved against the config's directory.
    pub upgrade_socket: PathBuf,
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
    /// Each served on its listener, matched by exact path.
    pub webhooks: Vec<Webhook>,
    /// One log line per request on the public listener and per ended
    /// stream; requests carry an `X-Request-Id`.
    pub access_log: bool,
    /// OpenTelemetry spans; None: off, and nothing is traced.
    pub telemetry: Option<Telemetry>,
    /// Peers whose `X-Forwarded-For` is believed (load balancers).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// Where spans go and how many traces are kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Telemetry {
    /// The collector, over OTLP/HTTP (protobuf).
    pub otlp: OtlpEndpoint,
    /// Share of traces started here that are sampled; a client's
    /// `traceparent` decides for its own trace.
    pub sample: f64,
}

/// An `http://host:port/path` URL taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpEndpoint {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// `/v1/traces` when the URL gave no path.
    pub path: String,
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
    Redis {
        url: String,
        prefix: String,
        /// PEM of `hub.redis.ca`, for a `rediss://` URL.
        ca: Option<Vec<u8>>,
    },
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
    /// Cross-origin access for browsers on other origins; None = none.
    pub cors: Option<std::sync::Arc<Cors>>,
}

/// Which other origins may read a stream (`cors:`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    pub origins: CorsOrigins,
    /// `Access-Control-Allow-Credentials: true`: cookies (and
    /// `withCredentials`) across origins. Never with `CorsOrigins::Any`.
    pub credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `"*"`.
    Any,
    /// Serialized origins (`scheme://host[:port]`), lower-cased, without
    /// the scheme's default port: as browsers send them.
    List(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// 0 = unlimited; None = derived from the open-file limit at start
    /// (`stream::limits::FdBudget`).
    pub max_connections: Option<usize>,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    pub max_channels_per_client: usize,
    pub max_body: usize,
    /// Pollers running at once, all routes together. 0 = unlimited.
    pub max_pollers: usize,
    /// A public connection's request head must arrive within this.
    pub header_timeout: Duration,
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
    pub servers: Vec<Server>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub fail_timeout: Duration,
    pub tls: Option<UpstreamTls>,
    /// How often host names in `servers` are resolved again.
    pub resolve_interval: Duration,
}

impl Upstream {
    /// A plain-HTTP pool of fixed addresses, with the default timeouts.
    pub fn fixed(name: &str, addrs: Vec<SocketAddr>) -> Upstream {
        Upstream {
            name: name.to_string(),
            servers: addrs.into_iter().map(Server::ip).collect(),
            connect_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(60),
            fail_timeout: Duration::from_secs(10),
            tls: None,
            resolve_interval: Duration::from_secs(30),
        }
    }

    pub fn with_servers(mut self, servers: Vec<Server>) -> Upstream {
        self.servers = servers;
        self
    }
}

/// One entry of an upstream's `servers:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// As written, without brackets: an IP address or a host name.
    pub host: String,
    pub port: u16,
    /// What `host` resolved to when the config was loaded.
    pub addrs: Vec<SocketAddr>,
}

impl Server {
    pub fn ip(addr: SocketAddr) -> Server {
        Server {
            host: addr.ip().to_string(),
            port: addr.port(),
            addrs: vec![addr],
        }
    }

    /// A host name, resolved again while running (an IP address is not).
    pub fn is_name(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_err()
    }
}

/// `tls:` of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// The name sent as SNI and checked against the certificate; None:
    /// each server's host as written.
    pub sni: Option<String>,
    /// DER certificates of the CAs to trust; None: the system's roots.
    pub ca: Option<std::sync::Arc<Vec<Vec<u8>>>>,
    /// Check the certificate chain and name (`verify: false` turns both off).
    pub verify: bool,
    /// Offer HTTP/2 in ALPN.
    pub http2: bool,
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
    /// `record: Some(..)`: its SSE replies are recorded for resume.
    Proxy {
        upstream: String,
        grip: Option<GripRoute>,
        record: Option<RecordRoute>,
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

/// `record:` on a proxy route (docs/record.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRoute {
    /// How long the backend is read and the record kept, from the request.
    pub ttl: Duration,
    /// Events one record holds; the backend is cut after that many.
    pub max_events: u64,
    /// Bytes this route's records hold together; the oldest go first.
    pub max_total: usize,
    /// What must be the same for a request to resume a record.
    pub credentials: Vec<CredentialSource>,
}

/// Part of a request that identifies who asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialSource {
    /// A request header (lower-cased name), every value of it.
    Header(String),
    /// One cookie of the `Cookie` header(s).
    Cookie(String),
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
    /// At most this many pollers of this route at once (None: only
    /// `limits.max_pollers` applies).
    pub max_pollers: Option<usize>,
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

/// A JWKS's keys by `kid`.
pub type KeySet = Vec<(Option<String>, DecodingKey)>;

/// The keys a route accepts.
#[derive(Clone)]
pub enum Keys {
    /// An HMAC secret or one public key.
    One(DecodingKey),
    /// A JWKS: the token's `kid` picks the key (a set of one needs no kid).
    Set(KeySet),
    /// A JWKS fetched from a URL while running (`auth::jwks`).
    Remote(std::sync::Arc<JwksUrl>),
}

/// `jwks_url:` resolved to what fetches it.
#[derive(Debug, Clone)]
pub struct JwksUrl {
    /// As configured, for logs.
    pub url: String,
    /// The URL's host and port, over TLS.
    pub upstream: Upstream,
    /// Path and query of the request.
    pub path: String,
    /// Least time between two fetches.
    pub refetch: Duration,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Keys::One(_) => f.write_str("Keys::One(<redacted>)"),
            Keys::Set(set) => write!(f, "Keys::Set({} keys)", set.len()),
            Keys::Remote(r) => write!(f, "Keys::Remote({})", r.url),
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

/// Which listener serves a webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The admin listener (the default), next to the publish API.
    Admin,
    /// The public listener, so the admin one can stay private.
    Public,
}

/// One `webhooks:` entry: how a backend's callback becomes events.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// Exact path on its listener; also the metrics label.
    pub path: String,
    pub listener: Listener,
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

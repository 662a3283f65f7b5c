//! The YAML file as serde sees it. Every struct denies unknown keys so a typo
//! is an error, not a silently ignored setting; values stay as written
//! (durations and sizes are strings) and are checked once in `validate`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub shutdown_grace: Option<String>,
    /// Where `run --upgrade` takes the listeners and streams over.
    pub upgrade_socket: Option<String>,
    pub tls: Option<TlsFile>,
    pub http2: Option<Http2File>,
    pub admin: Option<AdminFile>,
    pub hub: Option<HubFile>,
    pub sse: Option<SseFile>,
    pub limits: Option<LimitsFile>,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamFile>,
    #[serde(default)]
    pub routes: Vec<RouteFile>,
    #[serde(default)]
    pub webhooks: Vec<WebhookFile>,
    pub grip: Option<GripFile>,
    /// One log line per request on the public listener and per ended stream.
    pub access_log: Option<bool>,
    pub telemetry: Option<TelemetryFile>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` names the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

/// OpenTelemetry spans exported over OTLP/HTTP.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TelemetryFile {
    /// The collector's OTLP/HTTP URL.
    pub otlp: Option<String>,
    /// Share of traces started here that are recorded (0.0 to 1.0).
    pub sample: Option<f64>,
}

/// Gateway-wide GRIP settings.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GripFile {
    /// Names the env var holding the key that signs `Grip-Sig`.
    pub key_env: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: String,
    pub key: String,
}

/// HTTP/2 on the public listener. With `tls:` it is negotiated by ALPN;
/// `h2c: true` accepts it in plain text (prior knowledge) instead.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2File {
    pub h2c: Option<bool>,
    pub max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub listen: Option<String>,
    pub token_env: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    pub broker: Option<String>,
    pub redis: Option<RedisFile>,
    pub history: Option<HistoryFile>,
    pub persist: Option<PersistFile>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PersistFile {
    pub path: Option<String>,
    pub interval: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    pub url: Option<String>,
    pub url_env: Option<String>,
    /// PEM file of the CAs for a `rediss://` URL.
    pub ca: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryFile {
    pub size: Option<usize>,
    pub ttl: Option<String>,
}

/// `sse:` at the top level (defaults) and the timing part of a route's `sse:`.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct SseFile {
    pub heartbeat: Option<String>,
    pub retry: Option<String>,
    pub client_queue: Option<usize>,
    pub cors: Option<CorsFile>,
}

/// `cors:` of `sse` (defaults, and GRIP holds) or of one sse route.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema, Clone)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    #[serde(default)]
    pub origins: Vec<String>,
    pub credentials: Option<bool>,
    pub max_age: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    pub max_connections: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    pub max_channels_per_client: Option<usize>,
    pub max_body: Option<String>,
    pub max_pollers: Option<usize>,
    pub header_timeout: Option<String>,
    pub stream_rate: Option<StreamRateFile>,
}

/// `limits.stream_rate`: new SSE streams admitted per second (token bucket).
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamRateFile {
    pub per_second: f64,
    pub burst: Option<f64>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub servers: Vec<String>,
    pub connect_timeout: Option<String>,
    pub read_timeout: Option<String>,
    /// How long a server that refused a connection is skipped (passive health).
    pub fail_timeout: Option<String>,
    /// `true`, or `{ sni, ca, verify, http2 }`.
    pub tls: Option<UpstreamTlsFile>,
    /// How often host names in `servers` are resolved again.
    pub resolve_interval: Option<String>,
}

/// `tls: true | false | { … }` of an upstream.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum UpstreamTlsFile {
    Enabled(bool),
    Options(UpstreamTlsOptions),
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsOptions {
    pub sni: Option<String>,
    /// PEM file of the CAs that may sign the servers' certificates.
    pub ca: Option<String>,
    pub verify: Option<bool>,
    /// Offer HTTP/2 in ALPN (the server picks).
    pub http2: Option<bool>,
}

// By hand rather than `untagged`, so that a typo inside the map is still
// reported as an unknown key with its position.
impl<'de> Deserialize<'de> for UpstreamTlsFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = UpstreamTlsFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or a map with sni, ca, verify, http2")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(UpstreamTlsFile::Enabled(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                UpstreamTlsOptions::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(UpstreamTlsFile::Options)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub path: String,
    pub methods: Option<Vec<String>>,
    pub host: Option<String>,
    pub proxy: Option<String>,
    #[serde(default)]
    pub grip: bool,
    /// Overrides `grip.key_env` for this route.
    pub grip_key_env: Option<String>,
    pub record: Option<RecordFile>,
    pub sse: Option<SseRouteFile>,
}

/// `record:` on a proxy route: the backend's SSE replies are kept for resume.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordFile {
    pub ttl: Option<String>,
    pub max_events: Option<u64>,
    pub max_total: Option<String>,
    pub credentials: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SseRouteFile {
    #[serde(default)]
    pub channels: Vec<String>,
    #[serde(default)]
    pub allow_channels: Vec<String>,
    pub heartbeat: Option<String>,
    pub retry: Option<String>,
    pub client_queue: Option<usize>,
    pub cors: Option<CorsFile>,
    pub auth: Option<AuthFile>,
    pub poll: Option<PollFile>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthFile {
    pub forward: Option<ForwardAuthFile>,
    pub jwt: Option<JwtFile>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForwardAuthFile {
    pub upstream: String,
    pub path: String,
    pub forward_headers: Option<Vec<String>>,
    pub expose: Option<Vec<String>>,
    pub cache_ttl: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub secret_env: Option<String>,
    pub public_key: Option<String>,
    pub jwks: Option<String>,
    /// `https://…`: the JWKS fetched, cached and refetched on an unknown kid.
    pub jwks_url: Option<String>,
    /// PEM file of the CAs for `jwks_url` (else the system's roots).
    pub jwks_ca: Option<String>,
    /// Least time between two fetches of `jwks_url` (default 30s).
    pub jwks_refetch: Option<String>,
    pub algorithms: Option<Vec<String>>,
    pub token_from: Option<Vec<String>>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
    pub leeway: Option<String>,
    pub channels_claim: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollFile {
    pub upstream: String,
    pub path: String,
    pub method: Option<String>,
    pub headers: Option<BTreeMap<String, String>>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub event: Option<String>,
    pub diff: Option<String>,
    pub items: Option<String>,
    pub key: Option<String>,
    pub scope: Option<String>,
    pub forward_headers: Option<Vec<String>>,
    pub linger: Option<String>,
    pub initial: Option<bool>,
    pub max_backoff: Option<String>,
    pub max_body: Option<String>,
    pub events: Option<PollEventsFile>,
    pub error_event: Option<String>,
    pub max_pollers: Option<usize>,
}

/// Event names of `diff: json-items`.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PollEventsFile {
    pub created: Option<String>,
    pub updated: Option<String>,
    pub deleted: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookFile {
    pub path: String,
    /// `admin` (default) or `public`.
    pub listener: Option<String>,
    pub methods: Option<Vec<String>>,
    pub verify: Option<VerifyFile>,
    pub channel: Option<ChannelsFile>,
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Option<String>,
    pub each: Option<String>,
}

/// `channel: "a:{/x}"` or `channel: ["a:{/x}", "all"]`.
#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum ChannelsFile {
    One(String),
    Many(Vec<String>),
}

impl ChannelsFile {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            ChannelsFile::One(c) => vec![c],
            ChannelsFile::Many(cs) => cs,
        }
    }
}

/// Exactly one scheme must be given; `load` checks that.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyFile {
    pub hmac_sha256: Option<HmacFile>,
    pub stripe: Option<StripeFile>,
    pub standard_webhooks: Option<StandardWebhooksFile>,
    pub token: Option<TokenFile>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HmacFile {
    pub secret_env: String,
    pub header: String,
    pub prefix: Option<String>,
    pub encoding: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StripeFile {
    pub secret_env: String,
    pub header: Option<String>,
    pub tolerance: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StandardWebhooksFile {
    pub secret_env: String,
    pub tolerance: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenFile {
    pub header: String,
    pub value_env: String,
}

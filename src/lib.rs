//! ssegate: a pingora reverse proxy that adds Server-Sent Events to existing
//! HTTP applications.
//!
//! Data flows one way: sources → hub → client streams. Modules are layered;
//! each uses only those above it in this list (CI checks there is no cycle):
//!
//! - vocabulary: `channel` (names, patterns, reserved names), `origin`
//!   (where an event came from), `wire` (the SSE wire format), `template` (placeholders), `values` (a request's
//!   values for placeholders), `routing` (the route table).
//! - `config`: the YAML file → validated runtime config (errors name FILE:LINE:COL).
//! - `metrics`, `tls` (certificates), `shutdown`, `logging`.
//! - `hub`: the `Broker` trait, cursors, history, subscriber queues; the
//!   memory and Redis brokers; the `Records` of recorded backend replies.
//! - `outbound`: the one HTTP client for requests the gateway makes itself,
//!   upstream pools, X-Forwarded-*.
//! - `telemetry`: OpenTelemetry spans, exported over OTLP/HTTP.
//! - `auth`, `grip` (instructions), `record` (resumable backend streams),
//!   `sources` (publish, webhooks, pollers).
//! - `stream`: one SSE stream's life, whatever carries it.
//! - `gateway`: the capability handles every handler shares.
//! - `http`: the two listeners; every typed error becomes a status there.
//! - `upgrade`: hands streams and the hub to a new process (live upgrade).
//! - `app` (the pingora server), `hangup` (SIGHUP), `demo`; `main.rs` is the CLI.

pub mod channel;
pub mod origin;
pub mod routing;
pub mod template;
pub(crate) mod values;
pub mod wire;

pub mod config;
pub mod logging;
pub mod metrics;
pub(crate) mod shutdown;
pub(crate) mod tls;

pub mod hub;
pub(crate) mod outbound;
pub(crate) mod telemetry;

pub(crate) mod auth;
pub(crate) mod grip;
pub(crate) mod record;
pub mod sources;
pub(crate) mod stream;

pub(crate) mod gateway;
pub(crate) mod http;
pub(crate) mod upgrade;

pub mod app;
pub mod demo;
pub(crate) mod hangup;

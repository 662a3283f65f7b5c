//! ssegate: a pingora reverse proxy that adds Server-Sent Events to existing
//! HTTP applications.
//!
//! Data flows one way: sources → hub → client streams.
//!
//! - `config`: the YAML file → validated runtime config (errors name FILE:LINE:COL).
//! - `routing`: (method, host, path) → route; pure.
//! - `proxy`: the public listener (`ProxyHttp`): SSE stream or pass-through.
//! - `sse`: wire framing, what a request subscribes to, one client's stream.
//! - `hub`: the `Broker` trait, cursors, history, subscriber queues; `memory` broker.
//! - `sources`: the publish API (native and Pushpin GRIP formats); webhooks mapped by
//!   YAML; pollers of legacy GET endpoints (`poll`, `poll_target`, `poll_fetch`, `diff`).
//! - `auth`: subscriber JWTs, forward auth, expiry of JWT streams; webhook signature schemes.
//! - `grip`: GRIP holds decided by the backend (Grip-Hold, grip-instruct, Grip-Sig).
//! - `fetch`: requests the gateway makes to upstream pools itself.
//! - `admin`: publish, webhooks, health, readiness, metrics, stats, dashboard.
//! - `upstream`: server pools (round robin, passive health).
//! - `tls`, `hangup`: certificates for the public listener, reloaded on SIGHUP.
//! - `limits`, `heartbeat`, `shutdown`, `metrics`, `state`, `respond`: shared parts.
//! - `logging`: tracing on stderr, pingora's `log` records bridged in.
//! - `app`: builds the pingora server; `demo`: `ssegate demo`; `main.rs` is only the CLI.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod demo;
pub mod fetch;
pub mod grip;
pub mod hangup;
pub mod heartbeat;
pub mod hub;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod respond;
pub mod routing;
pub mod shutdown;
pub mod sources;
pub mod sse;
pub mod state;
pub mod tls;
pub mod upstream;

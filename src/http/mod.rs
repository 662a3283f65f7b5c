//! HTTP at the edge: the two listeners and everything that speaks HTTP to
//! clients.
//!
//! - `public`: the public listener (`ProxyHttp`): SSE routes, GRIP routes,
//!   pass-through.
//! - `admin`: the admin listener: publish, webhooks, health, metrics,
//!   stats, dashboard.
//! - `refuse`: every typed error → status, one-line reason, metric label.
//! - `grip`: a GRIP route's request to its backend and the response back.
//! - `detach`, `detach_tls`: taking a stream's connection out of pingora (a
//!   plain socket; an HTTP/2 stream's send half; a TLS HTTP/1.1 connection);
//!   `held`: the fallback, a stream held in pingora's session.
//! - `front`: the TLS front of the public listener (our handshake, pingora's
//!   HTTP).
//! - `body`, `respond`: bounded request bodies, short whole responses.

pub(crate) mod admin;
pub(crate) mod body;
mod detach;
mod detach_tls;
pub(crate) mod front;
mod grip;
mod held;
pub(crate) mod public;
pub(crate) mod refuse;
pub(crate) mod respond;

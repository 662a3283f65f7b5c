//! HTTP at the edge: the two listeners and everything that speaks HTTP to
//! clients.
//!
//! - `public`: the public listener (`ProxyHttp`): SSE routes, GRIP routes,
//!   pass-through.
//! - `admin`: the admin listener: publish, webhooks, health, metrics,
//!   stats, dashboard.
//! - `dashboard`: what `/stats` and the dashboard's feed show, and the page.
//! - `refuse`: every typed error → status, one-line reason, metric label.
//! - `cors`: a stream's CORS headers and the answer to a preflight.
//! - `upstream`: a route's request to its backend made by the gateway
//!   itself (GRIP and recorded routes), and an ordinary response back.
//! - `grip`: a GRIP route's request to its backend and the response back.
//! - `record`: a recorded route: a new reply recorded, or one resumed.
//! - `streams`: admitting a stream (drain, limits) and running it.
//! - `detach`, `detach_tls`: taking a stream's connection out of pingora (a
//!   plain socket; an HTTP/2 stream's send half; a TLS HTTP/1.1 connection);
//!   `held`: the fallback, a stream held in pingora's session.
//! - `gate`, `listener`: a public connection reaches pingora once its
//!   request head is in, within `limits.header_timeout` (plain text through
//!   an accept loop of our own).
//! - `front`: the TLS front of the public listener (our handshake, then the
//!   gate and pingora's HTTP).
//! - `canonical`: a public request's head made unambiguous before routing.
//! - `webhook`: one webhook request, on whichever listener serves it.
//! - `body`, `respond`: bounded request bodies, short whole responses.
//! - `access`: the access log, request ids, spans of requests answered here.

mod access;
pub(crate) mod admin;
pub(crate) mod body;
mod canonical;
mod cors;
pub(crate) mod dashboard;
mod detach;
mod detach_tls;
pub(crate) mod front;
pub(crate) mod gate;
mod grip;
mod held;
pub(crate) mod listener;
pub(crate) mod public;
mod record;
pub(crate) mod refuse;
pub(crate) mod respond;
mod streams;
mod upstream;
mod webhook;

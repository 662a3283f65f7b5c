//! HTTP at the edge: the two listeners and everything that speaks HTTP to
//! clients.
//!
//! - `public`: the public listener (`ProxyHttp`): SSE routes, GRIP routes,
//!   pass-through.
//! - `admin`: the admin listener: publish, webhooks, health, metrics,
//!   stats, dashboard.
//! - `dashboard`: what `/stats` and the dashboard's feed show, and the page.
//! - `refuse`: every typed error → status, one-line reason, metric label.
//! - `grip`: a GRIP route's request to its backend and the response back.
//! - `held`, `detach`: the two ways a stream's bytes reach a client
//!   (held in pingora's session; a plain socket taken out of it).
//! - `body`, `respond`: bounded request bodies, short whole responses.
//! - `access`: the access log and request ids.

mod access;
pub(crate) mod admin;
pub(crate) mod body;
pub(crate) mod dashboard;
mod detach;
mod grip;
mod held;
pub(crate) mod public;
pub(crate) mod refuse;
pub(crate) mod respond;

//! Server-Sent Events to clients: `frame` (wire format), `request` (what a
//! request subscribes to), `stream` (one client's connection).

pub mod frame;
pub mod request;
pub mod stream;

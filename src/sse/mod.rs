//! Server-Sent Events to clients: `frame` (wire format), `request` (what a
//! request subscribes to), `stream` (one client's connection held in pingora), `detached` (the
//! same, taken out of pingora for plain HTTP/1.1).

pub mod detached;
pub mod frame;
pub mod request;
pub mod stream;

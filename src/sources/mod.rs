//! Where events come from: the publish API (native and GRIP formats),
//! webhooks, and pollers of legacy endpoints (`poll`: registry, loop, which
//! poller a request needs, one upstream request; `diff`: what changed).

pub mod diff;
pub(crate) mod poll;
pub(crate) mod publish;
pub(crate) mod webhook;

//! Where events come from: the publish API (native and GRIP formats), webhooks,
//! and pollers of legacy endpoints (`poll`: registry and loop; `poll_target`:
//! which poller a request needs; `poll_fetch`: one upstream request; `diff`:
//! what changed).

pub mod diff;
pub mod poll;
pub mod poll_fetch;
pub mod poll_target;
pub mod publish;
pub mod webhook;

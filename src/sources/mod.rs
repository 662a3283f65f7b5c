//! Where events come from: the publish API (native and GRIP formats) and webhooks.

pub mod publish;
pub mod webhook;

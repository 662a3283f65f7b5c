//! Where events come from: the publish API (native and GRIP formats).

pub mod publish;

//! The YAML config: `file` (serde structs, the file as written) →
//! `load` (validate once, errors with FILE:LINE:COL) → `runtime` (what runs).

pub mod file;
mod load;
mod poll;
mod positions;
mod runtime;
mod schema;

pub use load::{default_upgrade_socket, load, load_str, parse_jwks, ConfigError, ConfigErrors};
pub use runtime::*;
pub use schema::schema;

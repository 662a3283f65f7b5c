//! The YAML config: `file` (serde structs, the file as written) →
//! `load` (validate once, errors with FILE:LINE:COL) → `runtime` (what runs).

pub mod file;
mod load;
mod poll;
mod positions;
mod runtime;

pub use load::{load, load_str, parse_jwks, ConfigError, ConfigErrors};
pub use runtime::*;

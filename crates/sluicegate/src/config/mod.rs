//! Configuration: the TOML model of SPEC 2, its validation with `file:line:col` diagnostics, and
//! loading from disk. What the rest of the gateway sees is the validated [`Config`].

mod auth;
mod build;
mod cache;
mod diagnostic;
mod model;
mod policies;
mod raw;
mod shedding;
mod tracing;
pub mod units;

use std::path::Path;

pub use auth::{check_consumer, parse_api_keys, read_api_keys};
pub use build::build;
pub use diagnostic::{line_col, Diagnostic, Diagnostics};
pub use model::*;

/// Why a config file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{path}: cannot read config file: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Diagnostics),
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    load_hashed(path).map(|(config, _)| config)
}

/// Reads and validates the config file at `path`; also returns the SHA-256 of its text (hex),
/// which the admin API reports so operators can tell which file is live.
pub fn load_hashed(path: &Path) -> Result<(Config, String), LoadError> {
    let shown = path.display().to_string();
    let source = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: shown.clone(),
        source,
    })?;
    let config = build(&source, &shown).map_err(LoadError::Invalid)?;
    Ok((config, hash_text(&source)))
}

/// SHA-256 of a config text, in lower-case hex.
pub fn hash_text(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

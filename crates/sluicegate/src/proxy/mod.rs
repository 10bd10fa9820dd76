//! The data path: listeners, worker threads, HTTP proxying and gateway-made answers.

pub mod answer;
pub mod http;
pub mod listener;
pub mod proxy_protocol;
pub mod snapshot;
pub mod tcp;
pub mod tls;
pub mod tls_config;

use arc_swap::ArcSwap;

use crate::observe::access_log::AccessLog;
pub use snapshot::{Registries, Snapshot};

/// State every worker shares: the current config snapshot, the access log and the registries of
/// live state.
pub struct Shared {
    /// Swapped whole on reload; each request keeps the snapshot it started with.
    pub snapshot: ArcSwap<Snapshot>,
    pub access_log: AccessLog,
    pub registries: Registries,
}

//! The data path: listeners, worker threads, HTTP proxying and gateway-made answers.

pub mod http;
pub mod listener;
pub mod proxy_protocol;
pub mod relay;
pub mod snapshot;
pub mod spare;
pub mod spread;
pub mod tcp;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::observe::access_log::AccessLog;
pub use snapshot::{Registries, Snapshot};

/// State every worker shares: the current config snapshot, the access log and the registries of
/// live state.
pub struct Shared {
    /// Swapped whole on reload ([`Shared::publish`]); each request keeps the snapshot it
    /// started with.
    pub snapshot: ArcSwap<Snapshot>,
    /// Bumped after each publish: workers keep their own copy of the snapshot and compare this
    /// number (a read of a line nobody writes between reloads) rather than touch the shared
    /// reference count per request.
    generation: AtomicU64,
    pub access_log: AccessLog,
    pub registries: Registries,
}

impl Shared {
    pub fn new(snapshot: Snapshot, access_log: AccessLog, registries: Registries) -> Shared {
        Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            generation: AtomicU64::new(0),
            access_log,
            registries,
        }
    }

    /// Makes `snapshot` the one new requests use.
    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes with every publish.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

//! The response cache (issue 21, SPEC 2.4): a route's `cache` stores what RFC 9111 lets a
//! shared cache store, in one memory tier every caching route shares, and answers fresh hits
//! (and 304s to conditional requests) without the upstream; stale entries are revalidated with
//! their validators, or served on upstream errors when they allow it; concurrent misses for one
//! key make one upstream request; purge by prefix, key or tag.
//!
//! - `directives.rs` reads `Cache-Control`; `freshness.rs` decides what may be stored, for how
//!   long, and what a stored response may be used for;
//! - `conditional.rs`: 304s from stored responses, the validators of a revalidation, and
//!   freshening on an upstream 304;
//! - `key.rs`: what a stored response is found by (primary key and `Vary` variants);
//! - `store.rs`: the memory tier (moka, bounded by bytes), invalidation and purge;
//! - `serve.rs`: a caching route's lookup, fill, revalidation and collapsing.
//!
//! Serving stale within `stale-while-revalidate` while revalidating in the background, and the
//! Redis tier shared by instances, are the next steps of issue 21.

pub mod conditional;
pub mod directives;
pub mod freshness;
pub mod key;
pub mod serve;
pub mod store;

use std::sync::{Arc, Mutex};

use crate::config::{CacheConfig, CacheEviction, Config};
use crate::observe::{metrics, names};
pub use serve::{CacheRequest, Filling, Hit, Lookup, Pending, RouteCache, X_CACHE};

/// The step's name in the access log (`"cache": "hit"`).
pub const STEP: &str = "cache";
use store::Eviction;
pub use store::MemoryStore;

/// The store shared by every caching route, kept across reloads while its size and eviction
/// stay the same (a reload that changes them starts an empty one).
#[derive(Default)]
pub struct Registry {
    store: Mutex<Option<(u64, CacheEviction, Arc<MemoryStore>)>>,
}

impl Registry {
    /// The store for `config`'s `[cache]`, and its `sluicegate_cache_bytes`.
    pub fn store(&self, config: &CacheConfig, metrics: &metrics::Registry) -> Arc<MemoryStore> {
        let mut held = self.store.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((bytes, eviction, store)) = held.as_ref() {
            if *bytes == config.max_bytes && *eviction == config.eviction {
                return Arc::clone(store);
            }
        }
        let eviction = match config.eviction {
            CacheEviction::Lru => Eviction::Lru,
            CacheEviction::TinyLfu => Eviction::TinyLfu,
        };
        let store = Arc::new(MemoryStore::new(config.max_bytes, eviction));
        let weak = Arc::downgrade(&store);
        metrics.gauge_fn(
            names::CACHE_BYTES,
            names::CACHE_BYTES_HELP,
            &[],
            Arc::new(move || {
                weak.upgrade()
                    .map_or(0, |s| i64::try_from(s.bytes()).unwrap_or(i64::MAX))
            }),
        );
        *held = Some((config.max_bytes, config.eviction, Arc::clone(&store)));
        store
    }

    /// The store in use, if any route caches.
    pub fn current(&self) -> Option<Arc<MemoryStore>> {
        let held = self.store.lock().unwrap_or_else(|e| e.into_inner());
        held.as_ref().map(|(_, _, store)| Arc::clone(store))
    }

    /// Drops the store when no route caches any more.
    pub fn retain(&self, config: &Config, metrics: &metrics::Registry) {
        if !config.routes.iter().any(|r| r.cache.is_some()) {
            *self.store.lock().unwrap_or_else(|e| e.into_inner()) = None;
            metrics.remove_fn(names::CACHE_BYTES, &[]);
        }
    }
}

/// A header map from `(name, value)` pairs, for the tests.
#[cfg(test)]
fn test_headers(fields: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (n, v) in fields {
        h.append(*n, http::HeaderValue::from_str(v).unwrap());
    }
    h
}

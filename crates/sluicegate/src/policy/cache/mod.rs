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
//! - `shared.rs` and `codec.rs`: the shared tier in Redis (`store = "memory+redis"`), and
//!   purges and invalidations published to every instance;
//! - `serve.rs`: a caching route's lookup, fill, revalidation and collapsing.

pub mod codec;
pub mod conditional;
pub mod directives;
pub mod freshness;
pub mod key;
pub mod serve;
pub mod shared;
pub mod store;

use std::sync::{Arc, Mutex};

use crate::config::{CacheConfig, CacheEviction, Config, RedisConfig};
use crate::observe::{metrics, names};
pub use serve::{CacheRequest, Filling, Hit, Lookup, Pending, Refresh, RouteCache, X_CACHE};
pub use shared::{Purge, SharedTier};

/// The step's name in the access log (`"cache": "hit"`).
pub const STEP: &str = "cache";
use store::Eviction;
pub use store::MemoryStore;

/// The store shared by every caching route, kept across reloads while its size and eviction
/// stay the same (a reload that changes them starts an empty one), and its shared tier, kept
/// while the memory tier and `[redis]` stay the same.
#[derive(Default)]
pub struct Registry {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    store: Option<(u64, CacheEviction, Arc<MemoryStore>)>,
    shared: Option<Arc<SharedTier>>,
}

impl Registry {
    /// The store for `config`'s `[cache]` (and its `sluicegate_cache_bytes`), with its shared
    /// tier when `store = "memory+redis"`.
    pub fn store(
        &self,
        config: &CacheConfig,
        redis: Option<&RedisConfig>,
        metrics: &metrics::Registry,
    ) -> (Arc<MemoryStore>, Option<Arc<SharedTier>>) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let same = held.store.as_ref().and_then(|(bytes, eviction, store)| {
            (*bytes == config.max_bytes && *eviction == config.eviction).then(|| Arc::clone(store))
        });
        let store = match same {
            Some(store) => store,
            None => {
                let store = Self::new_store(config, metrics);
                held.store = Some((config.max_bytes, config.eviction, Arc::clone(&store)));
                held.shared = None;
                store
            }
        };
        let redis = redis.filter(|_| config.shared);
        let shared = match (redis, &held.shared) {
            (None, _) => None,
            (Some(redis), Some(shared)) if shared.config() == redis => Some(Arc::clone(shared)),
            (Some(redis), _) => Some(SharedTier::start(redis.clone(), &store)),
        };
        held.shared = shared.clone();
        (store, shared)
    }

    fn new_store(config: &CacheConfig, metrics: &metrics::Registry) -> Arc<MemoryStore> {
        let eviction = match config.eviction {
            CacheEviction::Lru => Eviction::Lru,
            CacheEviction::TinyLfu => Eviction::TinyLfu,
        };
        let store = Arc::new(MemoryStore::new(config.max_bytes, eviction));
        for reason in ["size", "expired"] {
            let weak = Arc::downgrade(&store);
            metrics.counter_fn(
                names::CACHE_EVICTIONS_TOTAL,
                names::CACHE_EVICTIONS_TOTAL_HELP,
                &[(names::label::REASON, reason)],
                Arc::new(move || {
                    weak.upgrade().map_or(0, |s| {
                        let e = s.evictions();
                        let counter = if reason == "size" {
                            &e.size
                        } else {
                            &e.expired
                        };
                        counter.load(std::sync::atomic::Ordering::Relaxed)
                    })
                }),
            );
        }
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
        store
    }

    /// The store in use, if any route caches, and its shared tier.
    pub fn current(&self) -> Option<(Arc<MemoryStore>, Option<Arc<SharedTier>>)> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let (_, _, store) = held.store.as_ref()?;
        Some((Arc::clone(store), held.shared.clone()))
    }

    /// Drops the store when no route caches any more.
    pub fn retain(&self, config: &Config, metrics: &metrics::Registry) {
        if !config.routes.iter().any(|r| r.cache.is_some()) {
            *self.held.lock().unwrap_or_else(|e| e.into_inner()) = Held::default();
            metrics.remove_fn(names::CACHE_BYTES, &[]);
            for reason in ["size", "expired"] {
                metrics.remove_fn(
                    names::CACHE_EVICTIONS_TOTAL,
                    &[(names::label::REASON, reason)],
                );
            }
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

/// A stored response for `path` fetched now, fresh for 60 s, with these fields, for the tests.
#[cfg(test)]
fn test_entry(path: &str, body: &'static [u8], fields: &[(&'static str, &str)]) -> store::Entry {
    let headers = test_headers(fields);
    let now = std::time::SystemTime::now();
    store::Entry {
        key: key::PrimaryKey::new("r", "h", path, None),
        generation: 0,
        epoch: 0,
        status: http::StatusCode::OK,
        cc: directives::CacheControl::from_headers(&headers),
        tags: store::tags_of(&headers),
        timing: freshness::Timing {
            request_time: now,
            response_time: now,
            initial_age: std::time::Duration::ZERO,
            lifetime: std::time::Duration::from_secs(60),
        },
        headers,
        body: bytes::Bytes::from_static(body),
    }
}

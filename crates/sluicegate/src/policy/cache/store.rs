//! The memory tier: stored responses in a `moka` cache bounded by bytes (a weigher counts each
//! entry's body, fields, key and a fixed overhead), with TinyLFU admission or plain LRU, each
//! entry kept for as long as it can still be used (fresh, servable stale, or worth revalidating),
//! and purge by key, path prefix or tag.
//!
//! A primary key's `Vary` names live in a small index beside the entries; an entry is stored
//! under its primary key and the variant of the request that brought it (`key.rs`), so a lookup
//! is two hash lookups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use moka::notification::RemovalCause;
use moka::policy::{EvictionPolicy, Expiry};
use moka::sync::Cache;

use super::directives::CacheControl;
use super::freshness::Timing;
use super::key::{PrimaryKey, VaryOn};

/// What each entry costs beyond its body, fields and key (the entry itself, moka's node, the
/// index): an estimate on the high side, so `max_bytes` bounds the real memory.
const ENTRY_OVERHEAD: u64 = 512;
/// Each stored field costs its name, its value and this (the map's slot).
const FIELD_OVERHEAD: u64 = 32;
/// How long an entry with a validator (`ETag`, `Last-Modified`) is kept after it could last be
/// served stale, for a conditional request to refresh it.
pub const KEEP_FOR_REVALIDATION: Duration = Duration::from_secs(600);
/// Between the primary key and the variant in the entries' keys.
const VARIANT_SEP: char = '\u{1e}';

/// How entries are chosen for eviction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Least recently used.
    Lru,
    /// TinyLFU admission (a newcomer must be used more often than what it would evict), then
    /// LRU: resists one-off scans of many keys.
    TinyLfu,
}

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    pub key: PrimaryKey,
    /// The target's generation when the request that brought it was looked up: an unsafe
    /// request since then makes it unused.
    pub generation: u64,
    /// The store's purge count when the request that brought it was looked up: a purge since
    /// then (of anything: a purge names no single target) keeps it out of the store.
    pub epoch: u64,
    pub status: StatusCode,
    /// The response's fields as stored (hop-by-hop fields and `Age` already removed).
    pub headers: HeaderMap,
    pub body: Bytes,
    pub timing: Timing,
    pub cc: CacheControl,
    /// `Cache-Tag` / `Surrogate-Key` values, for purge by tag.
    pub tags: Box<[Box<str>]>,
}

impl Entry {
    /// How long the store keeps it: its freshness lifetime, plus the longest it may be served
    /// stale, plus `KEEP_FOR_REVALIDATION` if it has a validator.
    pub fn keep(&self) -> Duration {
        let seconds = |s: Option<super::directives::Seconds>| {
            Duration::from_secs(s.map_or(0, |s| u64::from(s.or_stale())))
        };
        let stale = seconds(self.cc.stale_while_revalidate).max(seconds(self.cc.stale_if_error));
        let validator = self.headers.contains_key(http::header::ETAG)
            || self.headers.contains_key(http::header::LAST_MODIFIED);
        let revalidation = if validator {
            KEEP_FOR_REVALIDATION
        } else {
            Duration::ZERO
        };
        let remaining = self.timing.lifetime.saturating_sub(self.timing.initial_age);
        remaining + stale + revalidation
    }

    /// What is left of its `keep` at `now` (an entry copied from the shared tier arrives with
    /// part of it gone).
    pub fn keep_left(&self, now: SystemTime) -> Duration {
        let resident = now
            .duration_since(self.timing.response_time)
            .unwrap_or(Duration::ZERO);
        self.keep().saturating_sub(resident)
    }

    /// Whether it is still within its `keep` at `now` (an entry read from the shared tier may
    /// have outlived it there, beside a longer-lived one).
    pub fn kept_at(&self, now: SystemTime) -> bool {
        self.timing
            .response_time
            .checked_add(self.keep())
            .is_some_and(|until| now < until)
    }

    /// What the entry counts for against `max_bytes`.
    pub fn weight(&self) -> u64 {
        let fields: u64 = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str().len() + v.len()) as u64 + FIELD_OVERHEAD)
            .sum();
        let tags: u64 = self.tags.iter().map(|t| t.len() as u64).sum();
        ENTRY_OVERHEAD + self.key.as_str().len() as u64 + fields + tags + self.body.len() as u64
    }
}

struct KeepFor;

impl Expiry<String, Arc<Entry>> for KeepFor {
    fn expire_after_create(&self, _: &String, entry: &Arc<Entry>, _: Instant) -> Option<Duration> {
        Some(entry.keep_left(SystemTime::now()))
    }

    fn expire_after_update(
        &self,
        _: &String,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.keep_left(SystemTime::now()))
    }
}

/// Entries the store dropped by itself: to stay within its bytes, and past their `keep`
/// (`sluicegate_cache_evictions_total{reason}`).
#[derive(Debug, Default)]
pub struct Evictions {
    pub size: AtomicU64,
    pub expired: AtomicU64,
}

/// The memory tier.
pub struct MemoryStore {
    entries: Cache<String, Arc<Entry>>,
    evictions: Arc<Evictions>,
    /// Each primary key's `Vary` names (of its latest stored response).
    vary: Cache<PrimaryKey, Arc<VaryOn>>,
    /// Targets an unsafe request changed, with their generation (absent: 0).
    generations: Cache<String, u64>,
    /// Purges so far ([`Entry::epoch`]).
    purges: AtomicU64,
}

/// Generations are unique across the process.
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl MemoryStore {
    pub fn new(max_bytes: u64, eviction: Eviction) -> MemoryStore {
        let policy = match eviction {
            Eviction::Lru => EvictionPolicy::lru(),
            Eviction::TinyLfu => EvictionPolicy::tiny_lfu(),
        };
        let evictions = Arc::new(Evictions::default());
        let counted = Arc::clone(&evictions);
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .eviction_listener(move |_, _, cause| {
                let counter = match cause {
                    RemovalCause::Size => &counted.size,
                    RemovalCause::Expired => &counted.expired,
                    // Purged, invalidated or replaced: not the store's choice.
                    RemovalCause::Explicit | RemovalCause::Replaced => return,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            })
            .weigher(|key: &String, entry: &Arc<Entry>| {
                u32::try_from(entry.weight() + key.len() as u64).unwrap_or(u32::MAX)
            })
            .eviction_policy(policy)
            .expire_after(KeepFor)
            .support_invalidation_closures()
            .build();
        // The indexes get a sixteenth of the bytes, weighed by their keys (an entry without its
        // index entry is simply not found).
        let index_bytes = (max_bytes / 16).max(64 * 1024);
        let vary = Cache::builder()
            .max_capacity(index_bytes)
            .weigher(|key: &PrimaryKey, names: &Arc<VaryOn>| {
                let names: usize = names.names().iter().map(|n| n.as_str().len() + 16).sum();
                u32::try_from(key.as_str().len() + names + 64).unwrap_or(u32::MAX)
            })
            .build();
        let generations = Cache::builder()
            .max_capacity(index_bytes)
            .weigher(|target: &String, _: &u64| {
                u32::try_from(target.len() + 64).unwrap_or(u32::MAX)
            })
            .build();
        MemoryStore {
            entries,
            evictions,
            vary,
            generations,
            purges: AtomicU64::new(0),
        }
    }

    fn entry_key(key: &PrimaryKey, variant: &str) -> String {
        let mut k = String::with_capacity(key.as_str().len() + variant.len() + 1);
        k.push_str(key.as_str());
        k.push(VARIANT_SEP);
        k.push_str(variant);
        k
    }

    /// The purge count now (what a lookup records, for its fill).
    pub fn epoch(&self) -> u64 {
        self.purges.load(Ordering::Acquire)
    }

    /// The generation of `key`'s target now (what a lookup records, for its fill).
    pub fn generation(&self, key: &PrimaryKey) -> u64 {
        self.generations.get(key.target()).unwrap_or(0)
    }

    /// The stored response for `key` whose variant matches `request`, if any and if no unsafe
    /// request changed its target since it was fetched.
    pub fn get(&self, key: &PrimaryKey, request: &HeaderMap) -> Option<Arc<Entry>> {
        self.get_at(key, request, self.generation(key))
    }

    /// [`get`](Self::get), for a caller that has read the target's `generation` already.
    pub fn get_at(
        &self,
        key: &PrimaryKey,
        request: &HeaderMap,
        generation: u64,
    ) -> Option<Arc<Entry>> {
        let vary = self.vary.get(key)?;
        let entry = self
            .entries
            .get(&Self::entry_key(key, &vary.variant(request)))?;
        (entry.generation == generation).then_some(entry)
    }

    /// Stores `entry`, which answered `request` and varies on `vary` — unless an unsafe request
    /// changed its target while it was fetched. Entries larger than the store are refused by
    /// its weigher's bound, as moka does. The fields are copied, so that the entry does not
    /// keep the connection buffer they were read into alive.
    pub fn insert(
        &self,
        mut entry: Entry,
        vary: VaryOn,
        request: &HeaderMap,
    ) -> Option<Arc<Entry>> {
        if entry.generation != self.generation(&entry.key) || entry.epoch != self.epoch() {
            return None;
        }
        entry.headers = entry
            .headers
            .iter()
            .filter_map(|(n, v)| Some((n.clone(), HeaderValue::from_bytes(v.as_bytes()).ok()?)))
            .collect();
        let key = Self::entry_key(&entry.key, &vary.variant(request));
        self.vary.insert(entry.key.clone(), Arc::new(vary));
        let entry = Arc::new(entry);
        self.entries.insert(key, Arc::clone(&entry));
        Some(entry)
    }

    /// Stops using everything stored for `key`'s target, every variant and every credential's,
    /// and what fetches in flight would store: an unsafe request changed what they describe.
    /// They are no longer found, and age out of the store.
    pub fn forget(&self, key: &PrimaryKey) {
        self.forget_target(key.target());
    }

    /// [`forget`](Self::forget) by the target itself ([`PrimaryKey::target`]).
    pub fn forget_target(&self, target: &str) {
        let next = NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.generations.insert(target.to_string(), next);
    }

    /// Drops every entry (the shared tier's subscription was lost: purges may have been
    /// missed).
    pub fn clear(&self) {
        self.purges.fetch_add(1, Ordering::AcqRel);
        self.entries.invalidate_all();
        self.vary.invalidate_all();
    }

    /// Removes what matches; returns how many entries did (counted before removal). What
    /// fetches in flight would store is dropped too.
    fn purge(&self, matches: impl Fn(&Entry) -> bool + Send + Sync + 'static) -> usize {
        // Fetches in flight, looked up before the purge, are not stored after it.
        self.purges.fetch_add(1, Ordering::AcqRel);
        let count = self.entries.iter().filter(|(_, e)| matches(e)).count();
        if count > 0 {
            // Registered closures are applied to every entry stored before this call, and a
            // read never returns an entry one of them matches.
            let _ = self
                .entries
                .invalidate_entries_if(move |_, entry| matches(entry));
        }
        count
    }

    /// Purges every variant stored under a key, as the purge API writes it
    /// (`host/path?query`, [`PrimaryKey::display`]).
    pub fn purge_key(&self, display: &str) -> usize {
        let display = display.to_string();
        self.purge(move |e| e.key.display() == display)
    }

    /// Purges every entry whose path starts with `prefix`.
    pub fn purge_prefix(&self, prefix: &str) -> usize {
        let prefix = prefix.to_string();
        self.purge(move |e| e.key.path().starts_with(&prefix))
    }

    /// Purges every entry tagged `tag`.
    pub fn purge_tag(&self, tag: &str) -> usize {
        let tag: Box<str> = tag.into();
        self.purge(move |e| e.tags.contains(&tag))
    }

    /// What the store dropped by itself so far.
    pub fn evictions(&self) -> &Evictions {
        &self.evictions
    }

    /// Bytes the entries count for now (`sluicegate_cache_bytes`).
    pub fn bytes(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.weighted_size()
    }

    pub fn len(&self) -> u64 {
        self.entries.run_pending_tasks();
        self.entries.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tags a response names for purge: `Cache-Tag` (comma-separated) and `Surrogate-Key`
/// (space-separated), each once.
pub fn tags_of(response: &HeaderMap) -> Box<[Box<str>]> {
    let mut tags: Vec<Box<str>> = Vec::new();
    let lists = [
        (HeaderName::from_static("cache-tag"), b','),
        (HeaderName::from_static("surrogate-key"), b' '),
    ];
    for (name, sep) in lists {
        for value in response.get_all(name) {
            for tag in value.as_bytes().split(|b| *b == sep) {
                let tag = String::from_utf8_lossy(tag.trim_ascii());
                if !tag.is_empty() && !tags.iter().any(|t| **t == *tag) {
                    tags.push(tag.into());
                }
            }
        }
    }
    tags.into_boxed_slice()
}

#[cfg(test)]
mod tests {
    use super::super::test_entry as entry;
    use super::super::test_headers as headers;
    use super::*;

    #[test]
    fn variants_of_one_key_are_kept_apart() {
        let store = MemoryStore::new(1 << 20, Eviction::TinyLfu);
        let vary_response = headers(&[("vary", "accept-encoding")]);
        let gzip = headers(&[("accept-encoding", "gzip")]);
        let plain = HeaderMap::new();
        let key = PrimaryKey::new("r", "h", "/a", None);
        for (request, body) in [(&gzip, &b"zipped"[..]), (&plain, &b"plain"[..])] {
            let vary = VaryOn::new(&vary_response, &[]).unwrap();
            store.insert(
                entry("/a", body, &[("vary", "accept-encoding")]),
                vary,
                request,
            );
        }
        assert_eq!(&store.get(&key, &gzip).unwrap().body[..], b"zipped");
        assert_eq!(&store.get(&key, &plain).unwrap().body[..], b"plain");
        assert!(store
            .get(&key, &headers(&[("accept-encoding", "br")]))
            .is_none());
        assert!(store
            .get(&PrimaryKey::new("r", "h", "/b", None), &plain)
            .is_none());
    }

    #[test]
    fn purge_by_key_prefix_and_tag() {
        let store = MemoryStore::new(1 << 20, Eviction::Lru);
        let none = HeaderMap::new();
        for (path, tags) in [
            ("/users/1", "user-1, users"),
            ("/users/2", "users"),
            ("/orders/1", "orders"),
        ] {
            let e = entry(path, b"x", &[("cache-tag", tags), ("surrogate-key", "all")]);
            store.insert(e, VaryOn::default(), &none);
        }
        let get = |path: &str| {
            store
                .get(&PrimaryKey::new("r", "h", path, None), &none)
                .is_some()
        };
        assert_eq!(store.purge_key("h/users/1"), 1);
        assert!(!get("/users/1") && get("/users/2"));
        assert_eq!(store.purge_tag("orders"), 1);
        assert!(!get("/orders/1") && get("/users/2"));
        assert_eq!(store.purge_prefix("/users"), 1);
        assert!(!get("/users/2"));
        assert_eq!(store.purge_tag("nothing"), 0);
    }

    #[test]
    fn forgetting_a_target_drops_every_variant_and_credential_and_late_fills() {
        let store = MemoryStore::new(1 << 20, Eviction::Lru);
        let none = HeaderMap::new();
        let mine = |credential: Option<&str>| PrimaryKey::new("r", "h", "/doc", credential);
        let mut late = entry("/doc", b"old", &[]);
        late.generation = store.generation(&mine(None));
        for credential in [None, Some("acme")] {
            let mut e = entry("/doc", b"x", &[]);
            e.key = mine(credential);
            store.insert(e, VaryOn::default(), &none);
        }
        assert!(store.get(&mine(Some("acme")), &none).is_some());
        store.forget(&mine(Some("bob")));
        assert!(store.get(&mine(None), &none).is_none());
        assert!(store.get(&mine(Some("acme")), &none).is_none());
        // A fetch that started before the change does not store the old state.
        store.insert(late, VaryOn::default(), &none);
        assert!(store.get(&mine(None), &none).is_none());
        // One that starts after it does.
        let mut fresh = entry("/doc", b"new", &[]);
        fresh.generation = store.generation(&mine(None));
        store.insert(fresh, VaryOn::default(), &none);
        assert_eq!(&store.get(&mine(None), &none).unwrap().body[..], b"new");
    }

    #[test]
    fn a_purge_keeps_out_what_was_looked_up_before_it() {
        let store = MemoryStore::new(1 << 20, Eviction::Lru);
        let none = HeaderMap::new();
        let mut before = entry("/a", b"old", &[]);
        before.epoch = store.epoch();
        // A purge of anything (the fetch's target cannot be told from a prefix or a tag).
        assert_eq!(store.purge_tag("unrelated"), 0);
        assert!(store.insert(before, VaryOn::default(), &none).is_none());
        let mut after = entry("/a", b"new", &[]);
        after.epoch = store.epoch();
        assert!(store.insert(after, VaryOn::default(), &none).is_some());
    }

    #[test]
    fn the_store_stays_within_its_bytes() {
        let store = MemoryStore::new(64 * 1024, Eviction::Lru);
        static BODY: [u8; 4096] = [b'x'; 4096];
        for i in 0..100 {
            let e = entry(&format!("/{i}"), &BODY, &[]);
            store.insert(e, VaryOn::default(), &HeaderMap::new());
        }
        let bytes = store.bytes();
        assert!(bytes <= 64 * 1024, "{bytes}");
        assert!(store.len() >= 10, "{}", store.len());
        let evicted = store.evictions().size.load(Ordering::Relaxed);
        assert_eq!(
            evicted + store.len(),
            100,
            "every entry stored or counted as evicted"
        );
    }

    #[test]
    fn entries_are_kept_while_they_can_be_used() {
        let plain = entry("/", b"", &[("cache-control", "max-age=60")]);
        assert_eq!(plain.keep(), Duration::from_secs(60));
        let stale = entry(
            "/",
            b"",
            &[(
                "cache-control",
                "max-age=60, stale-while-revalidate=30, stale-if-error=300",
            )],
        );
        assert_eq!(stale.keep(), Duration::from_secs(360));
        let validated = entry("/", b"", &[("etag", "\"v1\"")]);
        assert_eq!(
            validated.keep(),
            Duration::from_secs(60) + KEEP_FOR_REVALIDATION
        );
    }

    #[test]
    fn tags_from_both_fields_each_once() {
        let tags = tags_of(&headers(&[
            ("cache-tag", "a, b,,a"),
            ("surrogate-key", "b  c"),
        ]));
        let tags: Vec<&str> = tags.iter().map(|t| &**t).collect();
        assert_eq!(tags, ["a", "b", "c"]);
    }
}

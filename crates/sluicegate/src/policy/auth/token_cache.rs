//! Tokens already verified, so that a client reusing its token pays a hash lookup instead of a
//! signature check (tens of µs for RS256).
//!
//! An entry is found by a seeded hash of the token and holds the token itself, which must match
//! byte for byte: no other token can pass for a cached one, whatever its hash. An entry is used
//! only until the token's `exp` (plus the policy's leeway) and only under the key set it was
//! verified with (a changed set empties the cache, and entries carry the set's generation).
//! Memory is bounded: [`MAX_BYTES`] per policy, counting the tokens and what they map to.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::Identity;

/// The most a policy's cache holds, tokens and identities counted.
pub const MAX_BYTES: usize = 8 << 20;
/// Tokens longer than this are verified every time rather than cached.
pub const MAX_TOKEN_BYTES: usize = 8 << 10;
/// A token without `exp` (where the policy allows that) is re-verified after this long.
pub const NO_EXPIRY_SECONDS: f64 = 300.0;

const SHARDS: usize = 16;
/// What an entry costs besides its token: the map slot, the identity's share, the boxes.
const ENTRY_OVERHEAD: usize = 160;

struct Entry {
    token: Box<[u8]>,
    identity: Arc<Identity>,
    /// Seconds since the Unix epoch after which the entry is not used.
    until: f64,
    generation: u64,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<u64, Entry, PassThrough>,
    bytes: usize,
}

/// The key is already a seeded hash.
#[derive(Default, Clone, Copy)]
struct PassThrough;

impl BuildHasher for PassThrough {
    type Hasher = PassThroughHasher;
    fn build_hasher(&self) -> PassThroughHasher {
        PassThroughHasher(0)
    }
}

struct PassThroughHasher(u64);

impl std::hash::Hasher for PassThroughHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub struct TokenCache {
    shards: Box<[Mutex<Shard>]>,
    seed: u64,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

impl TokenCache {
    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        // The map uses the hash's top bits for its tags; shards take middle ones.
        &self.shards[(hash >> 32) as usize % SHARDS]
    }

    /// The identity `token` was verified to, if it was under `generation` and is still valid
    /// at `now` (seconds since the Unix epoch).
    pub fn get(&self, token: &[u8], generation: u64, now: f64) -> Option<Arc<Identity>> {
        let hash = xxh3_64_with_seed(token, self.seed);
        let shard = self.shard(hash).lock().unwrap_or_else(|e| e.into_inner());
        let entry = shard.entries.get(&hash)?;
        (entry.generation == generation && now < entry.until && *entry.token == *token)
            .then(|| Arc::clone(&entry.identity))
    }

    /// Remembers a verified token until `until` (seconds since the Unix epoch).
    pub fn insert(
        &self,
        token: &[u8],
        identity: Arc<Identity>,
        until: f64,
        generation: u64,
        now: f64,
    ) {
        if token.len() > MAX_TOKEN_BYTES || until <= now {
            return;
        }
        let hash = xxh3_64_with_seed(token, self.seed);
        let cost = token.len() + ENTRY_OVERHEAD + identity.heap_bytes();
        let budget = MAX_BYTES / SHARDS;
        let mut shard = self.shard(hash).lock().unwrap_or_else(|e| e.into_inner());
        if shard.bytes + cost > budget {
            shard.evict(now, budget - budget / 8);
        }
        let entry = Entry {
            token: token.into(),
            identity,
            until,
            generation,
        };
        if let Some(old) = shard.entries.insert(hash, entry) {
            shard.bytes -= old.cost();
        }
        shard.bytes += cost;
    }

    /// Forgets every entry (the key set changed).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.entries = HashMap::default();
            shard.bytes = 0;
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).entries.len())
            .sum()
    }
}

impl Entry {
    fn cost(&self) -> usize {
        self.token.len() + ENTRY_OVERHEAD + self.identity.heap_bytes()
    }
}

impl Shard {
    /// Drops expired entries, then others (in the map's arbitrary order) until at most
    /// `target` bytes are held.
    fn evict(&mut self, now: f64, target: usize) {
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let keep = now < e.until;
            if !keep {
                freed += e.cost();
            }
            keep
        });
        self.bytes -= freed;
        while self.bytes > target {
            let Some(&victim) = self.entries.keys().next() else {
                break;
            };
            if let Some(e) = self.entries.remove(&victim) {
                self.bytes -= e.cost();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Arc<Identity> {
        Arc::new(Identity::default())
    }

    #[test]
    fn hits_need_the_same_token_the_same_key_set_and_a_live_entry() {
        let cache = TokenCache::default();
        cache.insert(b"tok", identity(), 100.0, 1, 10.0);
        assert!(cache.get(b"tok", 1, 50.0).is_some());
        assert!(cache.get(b"tok", 1, 100.0).is_none(), "expired");
        assert!(cache.get(b"tok", 2, 50.0).is_none(), "another key set");
        assert!(cache.get(b"tok2", 1, 50.0).is_none());
        cache.insert(b"late", identity(), 5.0, 1, 10.0);
        assert!(
            cache.get(b"late", 1, 1.0).is_none(),
            "never stored past exp"
        );
        cache.clear();
        assert!(cache.get(b"tok", 1, 50.0).is_none());
    }

    #[test]
    fn memory_stays_within_the_budget() {
        let cache = TokenCache::default();
        let token = vec![b'a'; 4000];
        for i in 0..10_000u32 {
            let mut t = token.clone();
            t[..4].copy_from_slice(&i.to_le_bytes());
            cache.insert(&t, identity(), 1e12, 1, 0.0);
        }
        let held: usize = cache.shards.iter().map(|s| s.lock().unwrap().bytes).sum();
        assert!(held <= MAX_BYTES, "{held}");
        assert!(cache.len() > 1000);
    }
}

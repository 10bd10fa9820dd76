//! The local store: one bucket per key for the whole process, shared by every worker (a client
//! whose connections land on different workers gets one bucket, not one per worker).
//!
//! A bucket is a key's 64-bit hash and its TAT (`gcra.rs`): 16 bytes in a hash map, whatever
//! the key's length — a 64 KiB header value costs what an IP address does. The hash is seeded
//! per process, so which keys share a bucket cannot be worked out in advance (and to aim at
//! someone else's bucket a client would need that client's key in the first place). The map is
//! split into shards, each behind its own lock, held only for one lookup and update (never
//! across an `.await`).
//!
//! Memory is bounded by the policy's `max_keys`. Buckets whose TAT has passed are full, so
//! forgetting them changes nothing: a shard that reaches its share of `max_keys` first drops
//! those, and only if that frees too little does it drop live buckets (their keys start again
//! with a full bucket: under a flood of distinct keys the limit errs towards letting requests
//! through, never towards refusing a client that did nothing). The worker sweep drops passed
//! buckets every 15 s as well.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::gcra::{Gcra, Verdict};

/// Shards: enough that the workers rarely meet on one lock.
const SHARDS: usize = 64;

/// What a bucket costs at most, measured (`tests::bytes_per_key`): 16 bytes of entry and one
/// control byte, at hashbrown's lowest load after growth (7/16).
pub const BYTES_PER_KEY: u64 = 40;

/// One policy's buckets.
pub struct LocalStore {
    shards: Box<[Mutex<Shard>]>,
    /// The clock's origin: TATs are nanoseconds since it.
    epoch: Instant,
    /// Each shard's share of `max_keys` (a reload may change it).
    per_shard: AtomicUsize,
}

/// The map of one shard: key hash → TAT.
type Shard = HashMap<u64, u64, BuildHasherDefault<KeyHasher>>;

impl LocalStore {
    pub fn new(max_keys: u64) -> LocalStore {
        let store = LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            epoch: Instant::now(),
            per_shard: AtomicUsize::new(0),
        };
        store.set_max_keys(max_keys);
        store
    }

    /// The memory bound, as the policy's `max_keys` says (at least 16 keys per shard).
    pub fn set_max_keys(&self, max_keys: u64) {
        let per_shard = usize::try_from(max_keys).unwrap_or(usize::MAX) / SHARDS;
        self.per_shard.store(per_shard.max(16), Ordering::Relaxed);
    }

    /// Decides one request for the key whose hash is `key`, at `now`.
    pub fn check(&self, gcra: &Gcra, key: u64, now: Instant) -> Verdict {
        let now = self.nanos(now);
        let mut shard = self.shard(key);
        let tat = shard.get(&key).copied().unwrap_or(0);
        let (verdict, next) = gcra.check(tat, now);
        if let Some(next) = next {
            let limit = self.per_shard.load(Ordering::Relaxed);
            if shard.len() >= limit && !shard.contains_key(&key) {
                make_room(&mut shard, now, limit);
            }
            shard.insert(key, next);
        }
        verdict
    }

    /// Forgets buckets that are full again.
    pub fn sweep(&self, now: Instant) {
        let now = self.nanos(now);
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            shard.retain(|_, tat| *tat > now);
            if shard.capacity() > 4 * shard.len().max(64) {
                shard.shrink_to_fit();
            }
        }
    }

    /// Buckets held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    fn shard(&self, key: u64) -> std::sync::MutexGuard<'_, Shard> {
        // Middle bits pick the shard: the map itself uses the low ones for the slot and the
        // top seven for its tags, which must stay varied within a shard.
        let index = (key >> 32) as usize % SHARDS;
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn nanos(&self, now: Instant) -> u64 {
        // Saturates after 584 years of uptime.
        u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Makes room for one more key in a full shard: passed buckets first, then an eighth of the
/// shard's live ones (in the map's order, which the per-process hash seed makes arbitrary).
fn make_room(shard: &mut Shard, now: u64, limit: usize) {
    shard.retain(|_, tat| *tat > now);
    // Down to 7/8 of the limit whatever the scan freed, so the next full-shard scan is at least
    // an eighth of the shard's inserts away (a trickle of expiring keys must not make every
    // insert scan the shard).
    let target = limit - limit / 8;
    if shard.len() < target {
        return;
    }
    let excess = shard.len() - target + 1;
    let victims: Vec<u64> = shard.keys().take(excess).copied().collect();
    for key in victims {
        shard.remove(&key);
    }
}

/// The keys are already hashes (seeded SipHash or xxh3 of the key's bytes): the map uses them
/// as they are.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used; anything else folds in byte by byte.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn gcra() -> Gcra {
        Gcra::new(10, 1.0)
    }

    #[test]
    fn one_bucket_per_key() {
        let store = LocalStore::new(1_000);
        let now = Instant::now();
        for _ in 0..10 {
            assert!(store.check(&gcra(), 1, now).allowed);
        }
        assert!(!store.check(&gcra(), 1, now).allowed);
        assert!(
            store.check(&gcra(), 2, now).allowed,
            "another key has its own bucket"
        );
    }

    #[test]
    fn threads_share_the_buckets() {
        let store = std::sync::Arc::new(LocalStore::new(1_000));
        let now = Instant::now();
        let allowed: usize = (0..4)
            .map(|_| {
                let store = std::sync::Arc::clone(&store);
                std::thread::spawn(move || {
                    (0..10)
                        .filter(|_| store.check(&gcra(), 7, now).allowed)
                        .count()
                })
            })
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn full_buckets_are_forgotten_and_the_bound_holds() {
        let store = LocalStore::new(16 * SHARDS as u64);
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(3);
        for _ in 0..100_000 {
            store.check(&gcra(), rng.u64(..), now);
        }
        assert!(store.len() <= 16 * SHARDS, "{} buckets", store.len());
        store.sweep(now + Duration::from_secs(11));
        assert_eq!(
            store.len(),
            0,
            "every bucket is full again after capacity / refill"
        );
    }

    #[test]
    fn bytes_per_key() {
        // hashbrown's layout: a power-of-two number of slots, each a 16-byte entry and a
        // control byte, at most 7/8 of them used; so right after it doubles, 7/16.
        let mut shard = Shard::default();
        let mut worst = 0.0f64;
        for key in 1..200_000u64 {
            shard.insert(key.wrapping_mul(0x9E37_79B9_7F4A_7C15), key);
            if shard.len() >= 1_000 {
                let slots = (shard.capacity() * 8 / 7).next_power_of_two();
                worst = worst.max((slots * 17) as f64 / shard.len() as f64);
            }
        }
        assert!(worst <= BYTES_PER_KEY as f64, "{worst} bytes per key");
    }
}

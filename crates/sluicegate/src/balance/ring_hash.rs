//! `ring_hash`: consistent hashing on a ring (ketama style).
//!
//! Each endpoint puts `weight * POINTS_PER_WEIGHT` points on a ring of `u64` hashes; a key goes to
//! the owner of the first point at or after the key's hash. Adding or removing an endpoint only
//! adds or removes its own points, so only the keys on its arcs move (about 1/N of them) and no
//! key moves between two endpoints that stay (see [`MAX_RING_SIZE`] for the one exception, very
//! large total weights).

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::random::weight_of;
use super::round_robin::RoundRobin;
use super::{Balancer, Endpoint};

/// Ring points per unit of weight. Points hash to random places, so an endpoint's share of the
/// ring is off by about `1 / sqrt(points)`: 2048 points keep a weight-1 endpoint within ~2.2%
/// (one standard deviation) of its share, so removing one of three endpoints moves very nearly
/// a third of the keys, not 40%. Ketama's classic 160 points would be ~8%.
///
/// The count is fixed per endpoint, not derived from the endpoint count (as a "minimum ring size"
/// would be): a count that depended on the other endpoints would add or drop points of every
/// endpoint, moving keys between survivors, whenever one is added or removed.
pub const POINTS_PER_WEIGHT: u64 = 2048;

/// Ring size cap (12 bytes a point: 3 MiB). Past it, the points per unit of weight are halved
/// until the ring fits. Halving in powers of two keeps the count stable while the total weight
/// stays within the same power-of-two band; a change that crosses a band drops (or restores) the
/// upper half of every endpoint's points and moves the keys on them. At the cap an endpoint with
/// 1% of the weight still has over 1,300 points. Only a total weight above the cap itself
/// (weights in the tens of thousands) falls back to plain proportional scaling, at least one
/// point each.
pub const MAX_RING_SIZE: u64 = 1 << 18;

/// Seed of the point hashes: fixed, so every gateway instance builds the same ring.
const RING_SEED: u64 = 0x7269_6e67_6861_7368;

#[derive(Debug)]
pub struct RingHash {
    /// Sorted point hashes, and the endpoint owning each (parallel arrays: the hashes are what a
    /// lookup's binary search touches, so they are kept dense).
    points: Box<[u64]>,
    owners: Box<[u32]>,
    /// Where the search for a key starts and ends, by the key's top bits (see [`RingIndex`]).
    index: RingIndex,
    n: usize,
    /// For requests without a key.
    fallback: RoundRobin,
}

impl RingHash {
    pub fn new(endpoints: &[Endpoint]) -> RingHash {
        let total: u64 = endpoints.iter().map(weight_of).sum();
        let per_weight = points_per_weight(total);
        let points = |w: u64| match per_weight {
            Some(per_weight) => w * per_weight,
            // u32 weights times 2^18 stay below 2^50.
            None => (w * MAX_RING_SIZE / total).max(1),
        };
        let size: u64 = endpoints.iter().map(|e| points(weight_of(e))).sum();
        let mut ring: Vec<(u64, u32)> = Vec::with_capacity(size as usize);
        let mut name = Vec::new();
        for (i, e) in endpoints.iter().enumerate() {
            // Points are named by address, not index, so the ring survives reordering and
            // reloads; the replica number is appended as 4 bytes.
            name.clear();
            name.extend_from_slice(e.address.to_string().as_bytes());
            let base = name.len();
            for replica in 0..points(weight_of(e)) {
                name.truncate(base);
                name.extend_from_slice(&(replica as u32).to_le_bytes());
                // Owners are u32 to keep the ring small; no service has 2^32 endpoints.
                ring.push((xxh3_64_with_seed(&name, RING_SEED), i as u32));
            }
        }
        // Ties (two points with one hash) are broken by address, again not by index.
        ring.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                let addr = |p: &(u64, u32)| endpoints.get(p.1 as usize).map(|e| e.address);
                addr(a).cmp(&addr(b)).then(a.1.cmp(&b.1))
            })
        });
        let points: Box<[u64]> = ring.iter().map(|p| p.0).collect();
        RingHash {
            index: RingIndex::new(&points),
            owners: ring.iter().map(|p| p.1).collect(),
            points,
            n: endpoints.len(),
            fallback: RoundRobin::new(endpoints.len()),
        }
    }

    #[cfg(test)]
    pub(super) fn ring_size(&self) -> usize {
        self.points.len()
    }
}

/// Average ring points per [`RingIndex`] bucket: 16 hashes are two cache lines, searched in four
/// steps, where a binary search over the whole ring (up to 2^18 points, 2 MiB of hashes) took 18
/// steps, most of them cache misses: about 1 µs a pick with 100 endpoints.
const POINTS_PER_BUCKET: usize = 16;

/// The ring cut into 2^`bits` buckets by the top bits of a hash: bucket `b` holds the points
/// whose hash starts with `b`, which sit side by side in the sorted ring, so a key's point is
/// found by a search inside its own bucket only. Points are uniform hashes, so buckets are even.
#[derive(Debug)]
struct RingIndex {
    bits: u32,
    /// `starts[b]`: position of the first point at or after bucket `b`; one more entry than
    /// buckets, the last being the ring's length.
    starts: Box<[u32]>,
}

impl RingIndex {
    fn new(points: &[u64]) -> RingIndex {
        let buckets = (points.len() / POINTS_PER_BUCKET)
            .max(1)
            .next_power_of_two();
        let bits = buckets.trailing_zeros();
        let mut starts = Vec::with_capacity(buckets + 1);
        let mut position = 0;
        for b in 0..buckets as u64 {
            while position < points.len() && bucket_of(points[position], bits) < b {
                position += 1;
            }
            starts.push(position as u32);
        }
        starts.push(points.len() as u32);
        RingIndex {
            bits,
            starts: starts.into_boxed_slice(),
        }
    }

    /// The position of the first point at or after `key` (`points.len()` when none is): what
    /// `points.partition_point(|&p| p < key)` returns. Every point before the key's bucket is
    /// smaller than the key and every point after it larger.
    fn first_at_or_after(&self, points: &[u64], key: u64) -> usize {
        let b = bucket_of(key, self.bits) as usize;
        let (start, end) = (self.starts[b] as usize, self.starts[b + 1] as usize);
        start + points[start..end].partition_point(|&p| p < key)
    }
}

/// The top `bits` bits of `hash` (0 with no bits: one bucket).
fn bucket_of(hash: u64, bits: u32) -> u64 {
    hash.checked_shr(64 - bits).unwrap_or(0)
}

/// `POINTS_PER_WEIGHT` halved until `total` weight units fit `MAX_RING_SIZE`; `None` when even
/// one point per unit would not.
fn points_per_weight(total: u64) -> Option<u64> {
    let mut per_weight = POINTS_PER_WEIGHT;
    while per_weight > 1 && total.saturating_mul(per_weight) > MAX_RING_SIZE {
        per_weight /= 2;
    }
    (total.saturating_mul(per_weight) <= MAX_RING_SIZE).then_some(per_weight)
}

impl Balancer for RingHash {
    /// Binary search for the key's point, then clockwise to the first accepted owner: a refused
    /// endpoint's keys spread over its neighbours on the ring and come back when it is accepted
    /// again, while other keys never move. No key: round robin.
    fn pick(&self, key: Option<u64>, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.rotate(accept);
        };
        let len = self.points.len();
        if len == 0 {
            return None;
        }
        let first = self.index.first_at_or_after(&self.points, key) % len;
        super::walk_table(&self.owners, first, self.n, accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::{check_consistency, check_refusal, check_shares, endpoints};
    use proptest::prelude::*;

    fn build(eps: &[Endpoint]) -> Box<dyn Balancer> {
        Box::new(RingHash::new(eps))
    }

    #[test]
    fn ring_size_follows_weight_and_is_capped() {
        assert_eq!(RingHash::new(&endpoints(&[1, 2])).ring_size(), 3 * 2048);
        // 200 weight units: halved once, to 1024 points a unit.
        assert_eq!(
            RingHash::new(&endpoints(&[150, 50])).ring_size(),
            200 * 1024
        );
        assert_eq!(points_per_weight(128), Some(2048));
        assert_eq!(points_per_weight(129), Some(1024));
        assert_eq!(points_per_weight(1 << 18), Some(1));
        assert_eq!(points_per_weight((1 << 18) + 1), None);
        let big = RingHash::new(&endpoints(&[u32::MAX, 1]));
        assert!(big.ring_size() as u64 <= MAX_RING_SIZE + 2);
        // The light endpoint keeps at least one point.
        assert!(big.owners.contains(&1));
    }

    #[test]
    fn capped_rings_stay_consistent_within_a_weight_band() {
        // 200 and 199 weight units share a band (129..=256): points per unit stay the same.
        let weights = [50, 50, 50, 49, 1];
        let report = check_consistency(build, &weights, 4, 1).unwrap();
        assert_eq!(report.removal_survivor_moves, 0.0, "{report:?}");
        assert_eq!(report.addition_survivor_moves, 0.0, "{report:?}");
    }

    #[test]
    fn mapping_is_pinned_across_versions() {
        // Every gateway instance, and every release, must map keys alike: a change here remaps
        // every deployed service's keys.
        let b = RingHash::new(&endpoints(&[1, 2, 1, 1, 3]));
        let picks: Vec<_> = (0..12u64)
            .map(|k| {
                b.pick(Some(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)), &|_| true)
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, [4, 1, 1, 4, 1, 2, 1, 4, 1, 1, 3, 0]);
    }

    #[test]
    fn endpoint_order_does_not_matter() {
        let eps = endpoints(&[1, 2, 3]);
        let reversed: Vec<Endpoint> = eps.iter().rev().cloned().collect();
        let (a, b) = (RingHash::new(&eps), RingHash::new(&reversed));
        for key in (0..1000u64).map(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) {
            let i = a.pick(Some(key), &|_| true).unwrap();
            let j = b.pick(Some(key), &|_| true).unwrap();
            assert_eq!(eps[i].address, reversed[j].address);
        }
    }

    #[test]
    fn keys_past_the_last_point_wrap_to_the_first() {
        let r = RingHash::new(&endpoints(&[1, 1]));
        let first_owner = Some(r.owners[0] as usize);
        assert_eq!(r.pick(Some(u64::MAX), &|_| true), first_owner);
    }

    #[test]
    fn no_key_falls_back_to_round_robin() {
        let r = RingHash::new(&endpoints(&[3, 1, 1]));
        let picks: Vec<_> = (0..6).map(|_| r.pick(None, &|_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    proptest! {
        /// The bucket index finds the point a binary search over the whole ring finds, for
        /// rings of any size (uneven buckets, empty ones, ties) and keys anywhere.
        #[test]
        fn index_agrees_with_a_full_search(
            mut points in prop::collection::vec(
                prop_oneof![any::<u64>(), 0u64..64, (u64::MAX - 64)..=u64::MAX],
                0..300,
            ),
            keys in prop::collection::vec(any::<u64>(), 1..20),
        ) {
            points.sort_unstable();
            let index = RingIndex::new(&points);
            let probes = keys.iter().copied().chain(points.iter().flat_map(|&p| {
                [p.wrapping_sub(1), p, p.wrapping_add(1)]
            }));
            for key in probes {
                prop_assert_eq!(
                    index.first_at_or_after(&points, key),
                    points.partition_point(|&p| p < key),
                    "key {:#x}", key
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        /// Removing an endpoint moves only its keys, adding one moves keys only onto it: no key
        /// ever moves between two endpoints present before and after.
        #[test]
        fn only_the_changed_endpoint_s_keys_move(
            n in 3usize..=20,
            which in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let report = check_consistency(build, &vec![1; n], which.index(n), seed)?;
            prop_assert_eq!(report.removal_survivor_moves, 0.0);
            prop_assert_eq!(report.addition_survivor_moves, 0.0);
        }

        #[test]
        fn weighted_changes_move_only_their_keys(
            weights in prop::collection::vec(1u32..=4, 3..=12),
            which in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            let report = check_consistency(build, &weights, which.index(weights.len()), seed)?;
            prop_assert_eq!(report.removal_survivor_moves, 0.0);
            prop_assert_eq!(report.addition_survivor_moves, 0.0);
        }

        /// 2048 points per unit of weight put an endpoint's share within about 2.2% (one standard
        /// deviation) of its weight share; 10% is over four deviations.
        #[test]
        fn shares_follow_weights(
            weights in prop::collection::vec(1u32..=4, 1..=20),
            seed in any::<u64>(),
        ) {
            check_shares(build, &weights, seed, 0.10)?;
        }

        #[test]
        fn refused_endpoints_lend_their_keys_and_get_them_back(
            weights in prop::collection::vec(1u32..=4, 2..=12),
            refused in any::<prop::sample::Index>(),
            seed in any::<u64>(),
        ) {
            check_refusal(build, &weights, refused.index(weights.len()), seed)?;
        }
    }
}

//! `hash`: plain weighted modulo hashing. A key always lands on the same endpoint while the
//! endpoint set is unchanged.
//!
//! Cheap and exact in its shares, but not consistent: adding or removing an endpoint changes the
//! total weight and so remaps most keys. Services that care use `ring_hash` or `maglev`.

use super::random::CumulativeWeights;
use super::round_robin::RoundRobin;
use super::{Balancer, Endpoint};

#[derive(Debug)]
pub struct Hash {
    /// `key % total_weight` is a point on the line cut in proportion to weight.
    weights: CumulativeWeights,
    /// For requests without a key.
    fallback: RoundRobin,
}

impl Hash {
    pub fn new(endpoints: &[Endpoint]) -> Hash {
        Hash {
            weights: CumulativeWeights::new(endpoints),
            fallback: RoundRobin::new(endpoints.len()),
        }
    }
}

impl Balancer for Hash {
    /// A refused endpoint's keys go to the next accepted endpoint by index, the same one every
    /// time, and return once it is accepted again. No key: round robin.
    fn pick(&self, key: Option<u64>, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.rotate(accept);
        };
        let n = self.weights.len();
        let first = self.weights.owner(key)?;
        (0..n).map(|s| (first + s) % n).find(|&i| accept(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::{endpoints, shares};
    use proptest::prelude::*;

    #[test]
    fn keys_map_by_weighted_modulo() {
        let h = Hash::new(&endpoints(&[1, 2]));
        let picks: Vec<_> = (0..6)
            .map(|k| h.pick(Some(k), &|_| true).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 1, 0, 1, 1]);
    }

    #[test]
    fn refused_endpoint_sends_its_keys_to_the_next_one() {
        let h = Hash::new(&endpoints(&[1, 1, 1, 1]));
        assert_eq!(h.pick(Some(1), &|_| true), Some(1));
        assert_eq!(h.pick(Some(1), &|i| i != 1), Some(2));
        assert_eq!(h.pick(Some(1), &|i| i != 1 && i != 2), Some(3));
        assert_eq!(h.pick(Some(3), &|i| i != 3), Some(0));
        assert_eq!(h.pick(Some(1), &|_| true), Some(1));
        assert_eq!(h.pick(Some(1), &|_| false), None);
    }

    #[test]
    fn no_key_falls_back_to_round_robin() {
        let h = Hash::new(&endpoints(&[5, 1, 1]));
        let picks: Vec<_> = (0..6).map(|_| h.pick(None, &|_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert_eq!(h.pick(None, &|_| false), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn same_key_same_endpoint(
            weights in prop::collection::vec(1u32..=10, 1..=10),
            keys in prop::collection::vec(any::<u64>(), 50),
        ) {
            let a = Hash::new(&endpoints(&weights));
            let b = Hash::new(&endpoints(&weights));
            for &k in &keys {
                let i = a.pick(Some(k), &|_| true);
                prop_assert!(i.is_some_and(|i| i < weights.len()));
                prop_assert_eq!(i, a.pick(Some(k), &|_| true));
                prop_assert_eq!(i, b.pick(Some(k), &|_| true));
            }
        }

        #[test]
        fn shares_follow_weights(
            weights in prop::collection::vec(1u32..=10, 1..=10),
            seed in any::<u64>(),
        ) {
            let h = Hash::new(&endpoints(&weights));
            let mut rng = fastrand::Rng::with_seed(seed);
            let got = shares(&h, weights.len(), 50_000, |_| Some(rng.u64(..)), &|_| true);
            let total: u32 = weights.iter().sum();
            for (i, &w) in weights.iter().enumerate() {
                let want = f64::from(w) / f64::from(total);
                prop_assert!(
                    (got[i] - want).abs() < 0.02,
                    "endpoint {}: {} vs {}", i, got[i], want
                );
            }
        }
    }
}

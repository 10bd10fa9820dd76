//! `random`: each request goes to an endpoint drawn at random in proportion to its weight.
//!
//! Also home of [`CumulativeWeights`], the weighted draw that `power_of_two_choices` reuses and
//! whose point-to-endpoint map `hash` reuses.

use super::{Balancer, Endpoint};

/// Weighted draws before falling back to an exact draw among the accepted endpoints. Each draw
/// is O(log n) and usually the first one is accepted; the fallback costs O(n) `accept` calls.
const DRAWS_BEFORE_SCAN: usize = 3;

/// An endpoint's weight as the balancers use it: `Endpoint::new` already makes it at least 1, and
/// the field is public, so a hand-built zero is read as 1 rather than as "never".
pub(super) fn weight_of(endpoint: &Endpoint) -> u64 {
    u64::from(endpoint.weight.max(1))
}

/// Endpoint `i` owns the points `ends[i-1]..ends[i]` of `0..total` (a line cut in proportion to
/// weight), so a uniform point picks an endpoint with probability `weight / total`.
#[derive(Debug)]
pub(super) struct CumulativeWeights {
    ends: Box<[u64]>,
}

impl CumulativeWeights {
    pub(super) fn new(endpoints: &[Endpoint]) -> CumulativeWeights {
        let ends = endpoints
            .iter()
            .scan(0u64, |sum, e| {
                *sum += weight_of(e);
                Some(*sum)
            })
            .collect();
        CumulativeWeights { ends }
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn weight(&self, i: usize) -> u64 {
        let end = self.ends.get(i).copied().unwrap_or(0);
        let start = match i.checked_sub(1) {
            Some(prev) => self.ends.get(prev).copied().unwrap_or(0),
            None => 0,
        };
        end.saturating_sub(start)
    }

    /// Sum of all weights (0 when there are no endpoints).
    pub(super) fn total(&self) -> u64 {
        self.ends.last().copied().unwrap_or(0)
    }

    /// The endpoint owning `point` (taken modulo the total); `None` without endpoints.
    pub(super) fn owner(&self, point: u64) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let point = point % total;
        Some(self.ends.partition_point(|&end| end <= point))
    }

    /// A weighted draw among the endpoints `accept` takes; `None` when it takes none.
    ///
    /// A few draws over every endpoint first (rejection sampling: exact, and cheap while most
    /// weight is accepted), then one exact draw over the accepted weight only, so heavily refused
    /// sets still get weighted shares and an all-refused set ends in O(n).
    pub(super) fn draw(&self, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        for _ in 0..DRAWS_BEFORE_SCAN {
            let i = self.owner(fastrand::u64(0..total))?;
            if accept(i) {
                return Some(i);
            }
        }
        let accepted: u64 = (0..self.len())
            .filter(|&i| accept(i))
            .map(|i| self.weight(i))
            .sum();
        if accepted == 0 {
            return None;
        }
        let mut point = fastrand::u64(0..accepted);
        let mut last = None;
        for i in 0..self.len() {
            // `accept` may change between the two passes (a health check landing); then the last
            // accepted endpoint takes the leftover point.
            if accept(i) {
                let w = self.weight(i);
                if point < w {
                    return Some(i);
                }
                point -= w;
                last = Some(i);
            }
        }
        last
    }
}

/// Weighted random choice; no shared state at all (the generator is thread-local).
#[derive(Debug)]
pub struct Random {
    weights: CumulativeWeights,
}

impl Random {
    pub fn new(endpoints: &[Endpoint]) -> Random {
        Random {
            weights: CumulativeWeights::new(endpoints),
        }
    }
}

impl Balancer for Random {
    fn pick(&self, _key: Option<u64>, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.weights.draw(accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::{endpoints, shares};
    use proptest::prelude::*;

    #[test]
    fn owner_maps_points_by_weight() {
        let w = CumulativeWeights::new(&endpoints(&[1, 3, 2]));
        let owners: Vec<_> = (0..7).map(|p| w.owner(p).unwrap()).collect();
        assert_eq!(owners, [0, 1, 1, 1, 2, 2, 0]);
        assert_eq!(w.total(), 6);
        assert_eq!((w.weight(0), w.weight(1), w.weight(2)), (1, 3, 2));
        assert_eq!(CumulativeWeights::new(&[]).owner(5), None);
    }

    #[test]
    fn refused_endpoints_are_never_drawn_and_all_refused_is_none() {
        let r = Random::new(&endpoints(&[5, 1, 1]));
        for _ in 0..1000 {
            assert_ne!(r.pick(None, &|i| i != 0), Some(0));
        }
        assert_eq!(r.pick(None, &|_| false), None);
        assert_eq!(Random::new(&endpoints(&[1])).pick(None, &|_| true), Some(0));
    }

    #[test]
    fn heavily_refused_sets_keep_weighted_shares() {
        // Endpoint 0 holds most weight and is refused: the fallback draw must stay weighted.
        let r = Random::new(&endpoints(&[100, 1, 3]));
        let got = shares(&r, 3, 40_000, |_| None, &|i| i != 0);
        assert!((got[1] - 0.25).abs() < 0.02, "{got:?}");
        assert!((got[2] - 0.75).abs() < 0.02, "{got:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn shares_follow_weights(weights in prop::collection::vec(1u32..=10, 1..=8)) {
            let r = Random::new(&endpoints(&weights));
            let got = shares(&r, weights.len(), 100_000, |_| None, &|_| true);
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

//! `power_of_two_choices`: draw two distinct endpoints at random (by weight) and send the request
//! to the less loaded one.
//!
//! Nearly as good as `least_connections` at avoiding busy endpoints, in O(1) rather than O(n), and
//! without its herd effect: concurrent picks that all read the same stale loads do not all pile
//! onto the one endpoint that looked idlest.

use std::sync::Arc;

use super::random::{weight_of, CumulativeWeights};
use super::{Balancer, Endpoint};

#[derive(Debug)]
pub struct PowerOfTwoChoices {
    endpoints: Arc<[Endpoint]>,
    weights: CumulativeWeights,
}

impl PowerOfTwoChoices {
    pub fn new(endpoints: Arc<[Endpoint]>) -> PowerOfTwoChoices {
        PowerOfTwoChoices {
            weights: CumulativeWeights::new(&endpoints),
            endpoints,
        }
    }

    /// In-flight requests per unit of weight, as a fraction to cross-multiply.
    fn load(&self, i: usize) -> (u64, u64) {
        match self.endpoints.get(i) {
            Some(e) => (u64::from(e.load.in_flight()), weight_of(e)),
            None => (u64::MAX, 1),
        }
    }
}

impl Balancer for PowerOfTwoChoices {
    /// Both candidates are drawn among the accepted endpoints only, so a refused endpoint never
    /// wastes a choice; with a single accepted endpoint that one is taken. Equal loads go to the
    /// first draw, which keeps an idle service's shares proportional to weight.
    fn pick(&self, _key: Option<u64>, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
        let a = self.weights.draw(accept)?;
        let Some(b) = self.weights.draw(&|i| i != a && accept(i)) else {
            return Some(a);
        };
        let ((load_a, weight_a), (load_b, weight_b)) = (self.load(a), self.load(b));
        if load_b.saturating_mul(weight_a) < load_a.saturating_mul(weight_b) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::{endpoints, shares};
    use proptest::prelude::*;

    #[test]
    fn never_picks_the_busiest_of_three_when_the_others_are_idle() {
        let eps = endpoints(&[1, 1, 1]);
        let p2c = PowerOfTwoChoices::new(eps.clone());
        let _guards: Vec<_> = (0..5).map(|_| eps[1].load.start()).collect();
        for _ in 0..1000 {
            assert_ne!(p2c.pick(None, &|_| true), Some(1));
        }
    }

    #[test]
    fn prefers_less_loaded_endpoints() {
        // Loads 0..8 on equal weights: the share must fall as the load rises.
        let eps = endpoints(&[1; 8]);
        let p2c = PowerOfTwoChoices::new(eps.clone());
        let _guards: Vec<_> = (0..8)
            .flat_map(|i| (0..i).map(move |_| i))
            .map(|i| eps[i].load.start())
            .collect();
        let got = shares(&p2c, 8, 20_000, |_| None, &|_| true);
        // Endpoint i wins when drawn with a busier one: (7 - i) of the 28 pairs; exactly.
        for (i, share) in got.iter().enumerate() {
            let want = (7 - i) as f64 / 28.0;
            assert!((share - want).abs() < 0.02, "{got:?}");
        }
    }

    #[test]
    fn refused_and_single_endpoints() {
        let p2c = PowerOfTwoChoices::new(endpoints(&[1, 2, 3]));
        for _ in 0..100 {
            assert_eq!(p2c.pick(None, &|i| i == 2), Some(2));
        }
        assert_eq!(p2c.pick(None, &|_| false), None);
        let one = PowerOfTwoChoices::new(endpoints(&[1]));
        assert_eq!(one.pick(None, &|_| true), Some(0));
        assert_eq!(one.pick(None, &|_| false), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]

        #[test]
        fn idle_shares_follow_weights(weights in prop::collection::vec(1u32..=10, 2..=8)) {
            let p2c = PowerOfTwoChoices::new(endpoints(&weights));
            let got = shares(&p2c, weights.len(), 100_000, |_| None, &|_| true);
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

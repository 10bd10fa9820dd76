//! `least_connections`: the accepted endpoint with the fewest in-flight requests per unit of
//! weight.
//!
//! The load is read from [`EndpointLoad`](super::EndpointLoad), which the caller counts by holding
//! an [`InFlightGuard`](super::InFlightGuard) for each request it sends. `pick` itself does not
//! count: a pick that ends up unused (a refused retry, a client gone) must not leave load behind.

use std::sync::Arc;

use super::random::weight_of;
use super::weighted_round_robin::WeightedRoundRobin;
use super::{Balancer, Endpoint};

#[derive(Debug)]
pub struct LeastConnections {
    endpoints: Arc<[Endpoint]>,
    /// Where each scan starts, hence who wins ties. A fixed start would send every request of an
    /// idle service (all loads 0) to endpoint 0; rotating it in smooth weighted order spreads
    /// equal loads evenly, and by weight, which is what "weighted" should mean when the service
    /// is too quiet for in-flight counts to differ.
    start: WeightedRoundRobin,
}

impl LeastConnections {
    pub fn new(endpoints: Arc<[Endpoint]>) -> LeastConnections {
        LeastConnections {
            start: WeightedRoundRobin::new(&endpoints),
            endpoints,
        }
    }
}

impl Balancer for LeastConnections {
    /// One pass over the endpoints, O(n). Loads are compared as `in_flight_a * weight_b <
    /// in_flight_b * weight_a` (exact in u64, no division); the first minimum from the rotating
    /// start wins.
    fn pick(&self, _key: Option<u64>, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.endpoints.len();
        let start = self.start.scheduled()?;
        let mut best: Option<(usize, u64, u64)> = None;
        for s in 0..n {
            let i = (start + s) % n;
            if !accept(i) {
                continue;
            }
            let e = &self.endpoints[i];
            let (load, weight) = (u64::from(e.load.in_flight()), weight_of(e));
            match best {
                Some((_, best_load, best_weight)) if load * best_weight >= best_load * weight => {}
                _ => best = Some((i, load, weight)),
            }
        }
        best.map(|(i, _, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::endpoints;
    use crate::balance::InFlightGuard;
    use proptest::prelude::*;

    fn hold(endpoints: &[Endpoint], loads: &[u32]) -> Vec<InFlightGuard> {
        endpoints
            .iter()
            .zip(loads)
            .flat_map(|(e, &l)| (0..l).map(|_| e.load.start()))
            .collect()
    }

    #[test]
    fn picks_the_least_loaded_relative_to_weight() {
        let eps = endpoints(&[1, 4, 1]);
        let lc = LeastConnections::new(eps.clone());
        // 2/1, 4/4, 3/1: endpoint 1 is the least loaded per unit of weight.
        let _guards = hold(&eps, &[2, 4, 3]);
        for _ in 0..10 {
            assert_eq!(lc.pick(None, &|_| true), Some(1));
        }
        assert_eq!(lc.pick(None, &|i| i != 1), Some(0));
        assert_eq!(lc.pick(None, &|_| false), None);
    }

    #[test]
    fn equal_loads_rotate_instead_of_piling_on_one_endpoint() {
        let lc = LeastConnections::new(endpoints(&[1, 1, 1, 1]));
        let mut picks: Vec<_> = (0..4).map(|_| lc.pick(None, &|_| true).unwrap()).collect();
        picks.sort_unstable();
        assert_eq!(picks, [0, 1, 2, 3]);
    }

    #[test]
    fn an_idle_service_spreads_by_weight() {
        let lc = LeastConnections::new(endpoints(&[3, 1]));
        let mut counts = [0; 2];
        for _ in 0..400 {
            counts[lc.pick(None, &|_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [300, 100]);
    }

    #[test]
    fn released_guards_free_the_endpoint_again() {
        let eps = endpoints(&[1, 1]);
        let lc = LeastConnections::new(eps.clone());
        let guards = hold(&eps, &[1, 0]);
        assert_eq!(lc.pick(None, &|_| true), Some(1));
        assert_eq!(lc.pick(None, &|_| true), Some(1));
        drop(guards);
        let _more = hold(&eps, &[0, 1]);
        assert_eq!(lc.pick(None, &|_| true), Some(0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn picks_a_minimum_of_in_flight_over_weight(
            setup in prop::collection::vec((1u32..=5, 0u32..=8, any::<bool>()), 1..=10),
        ) {
            let weights: Vec<u32> = setup.iter().map(|s| s.0).collect();
            let loads: Vec<u32> = setup.iter().map(|s| s.1).collect();
            let accept = |i: usize| setup[i].2;
            let eps = endpoints(&weights);
            let lc = LeastConnections::new(eps.clone());
            let _guards = hold(&eps, &loads);
            let ratio = |i: usize| f64::from(loads[i]) / f64::from(weights[i]);
            let min = (0..eps.len()).filter(|&i| accept(i)).map(ratio).reduce(f64::min);
            for _ in 0..2 * eps.len() {
                match (lc.pick(None, &accept), min) {
                    (Some(i), Some(min)) => {
                        prop_assert!(accept(i));
                        prop_assert!(
                            (ratio(i) - min).abs() < 1e-9,
                            "picked {} ({}), min {}", i, ratio(i), min
                        );
                    }
                    (None, None) => {}
                    (got, want) => {
                        prop_assert!(false, "got {:?}, want an endpoint at {:?}", got, want)
                    }
                }
            }
        }
    }
}

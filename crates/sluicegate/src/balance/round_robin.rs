//! `round_robin`: endpoints in turn, ignoring weights. Also the fallback of the hashing
//! algorithms for requests that carry no key.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::Balancer;

/// Plain rotation over `n` endpoints, one shared counter.
///
/// A refused endpoint is skipped and the counter moves past the endpoint that was taken, so the
/// accepted endpoints keep sharing evenly (rather than the one after a refused endpoint taking its
/// turns too). The counter is `Relaxed`: concurrent picks may interleave, which only reorders the
/// turns, and it wraps harmlessly.
#[derive(Debug)]
pub struct RoundRobin {
    n: usize,
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new(n: usize) -> RoundRobin {
        RoundRobin {
            n,
            next: AtomicUsize::new(0),
        }
    }

    /// The next accepted endpoint in rotation, trying each endpoint at most once.
    pub fn rotate(&self, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % self.n;
        let skipped = (0..self.n).find(|&s| accept((start + s) % self.n))?;
        if skipped > 0 {
            self.next.fetch_add(skipped, Ordering::Relaxed);
        }
        Some((start + skipped) % self.n)
    }
}

impl Balancer for RoundRobin {
    fn pick(&self, _key: Option<u64>, accept: &dyn Fn(usize) -> bool) -> Option<usize> {
        self.rotate(accept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rotates_in_order() {
        let rr = RoundRobin::new(3);
        let picks: Vec<_> = (0..7).map(|_| rr.pick(None, &|_| true).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
    }

    #[test]
    fn skips_refused_endpoints_and_keeps_the_rest_even() {
        let rr = RoundRobin::new(4);
        let mut counts = [0; 4];
        for _ in 0..300 {
            counts[rr.pick(None, &|i| i != 1).unwrap()] += 1;
        }
        assert_eq!(counts, [100, 0, 100, 100]);
    }

    #[test]
    fn none_when_everything_is_refused_or_empty() {
        assert_eq!(RoundRobin::new(3).pick(None, &|_| false), None);
        assert_eq!(RoundRobin::new(0).pick(None, &|_| true), None);
        assert_eq!(RoundRobin::new(1).pick(Some(7), &|_| true), Some(0));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]

        #[test]
        fn each_endpoint_gets_exactly_k_of_k_times_n(n in 1usize..=20, k in 1usize..=20) {
            let rr = RoundRobin::new(n);
            let mut counts = vec![0usize; n];
            for _ in 0..k * n {
                counts[rr.pick(None, &|_| true).unwrap()] += 1;
            }
            prop_assert!(counts.iter().all(|&c| c == k), "{counts:?}");
        }

        #[test]
        fn accepted_endpoints_share_evenly(
            n in 2usize..=12,
            refused in prop::collection::vec(any::<bool>(), 12),
        ) {
            let accept = |i: usize| !refused[i];
            let accepted = (0..n).filter(|&i| accept(i)).count();
            let rr = RoundRobin::new(n);
            let mut counts = vec![0usize; n];
            for _ in 0..accepted * 5 {
                counts[rr.pick(None, &accept).unwrap()] += 1;
            }
            for (i, &c) in counts.iter().enumerate() {
                prop_assert_eq!(c, if accept(i) { 5 } else { 0 }, "{:?}", counts);
            }
            if accepted == 0 {
                prop_assert_eq!(rr.pick(None, &accept), None);
            }
        }
    }
}

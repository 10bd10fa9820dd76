//! The token bucket as GCRA (the generic cell rate algorithm): one number per key, the
//! "theoretical arrival time" (TAT) at which the bucket will be full again, instead of a token
//! count and a refill timestamp. Same decisions as a token bucket of `capacity` tokens refilled
//! at `refill_per_second`, but a single integer to store, compare and swap — in this process's
//! map or in Redis (where the same arithmetic runs as a script, `redis_store.rs`).
//!
//! Times are nanoseconds on a monotonic clock whose origin the store chooses. A key never seen,
//! or whose TAT has passed, has a full bucket: so an entry may be forgotten as soon as its TAT
//! is in the past without changing any decision.

/// A policy's bucket, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time one token takes to come back: `1 s / refill_per_second`.
    pub interval: u64,
    /// How far ahead of now the TAT may run: `capacity` tokens' worth.
    pub tolerance: u64,
    pub capacity: u64,
}

/// One request's verdict, with what the `RateLimit-*` headers say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Tokens left after this request.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_ns: u64,
    /// Until the next request would be allowed (0 when this one was).
    pub retry_after_ns: u64,
}

impl Gcra {
    pub fn new(capacity: u64, refill_per_second: f64) -> Gcra {
        let interval = ((1e9 / refill_per_second).round() as u64).max(1);
        Gcra {
            interval,
            tolerance: interval.saturating_mul(capacity),
            capacity,
        }
    }

    /// Decides a request arriving at `now` for a key whose TAT is `tat` (0 when unknown).
    /// Returns the TAT to store when it was allowed.
    pub fn check(&self, tat: u64, now: u64) -> (Verdict, Option<u64>) {
        let tat = tat.max(now);
        let next = tat.saturating_add(self.interval);
        let ahead = next - now;
        if ahead > self.tolerance {
            let verdict = Verdict {
                allowed: false,
                remaining: 0,
                reset_ns: tat - now,
                retry_after_ns: ahead - self.tolerance,
            };
            return (verdict, None);
        }
        let verdict = Verdict {
            allowed: true,
            remaining: (self.tolerance - ahead) / self.interval,
            reset_ns: ahead,
            retry_after_ns: 0,
        };
        (verdict, Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn capacity_then_the_refill_rate() {
        let g = Gcra::new(10, 1.0);
        let mut tat = 0;
        let t0 = 5 * SECOND;
        for i in 0..10 {
            let (v, next) = g.check(tat, t0);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 9 - i);
            tat = next.unwrap();
        }
        let (v, next) = g.check(tat, t0);
        assert!(!v.allowed);
        assert_eq!(next, None);
        assert_eq!(v.retry_after_ns, SECOND);
        assert_eq!(v.reset_ns, 10 * SECOND);
        // Two seconds later, two tokens came back.
        let t2 = t0 + 2 * SECOND;
        for _ in 0..2 {
            let (v, next) = g.check(tat, t2);
            assert!(v.allowed);
            tat = next.unwrap();
        }
        assert!(!g.check(tat, t2).0.allowed);
    }

    #[test]
    fn fractional_rates() {
        let g = Gcra::new(1, 0.5);
        assert_eq!(g.interval, 2 * SECOND);
        let (v, tat) = g.check(0, SECOND);
        assert!(v.allowed);
        let (v, _) = g.check(tat.unwrap(), 2 * SECOND);
        assert!(!v.allowed);
        assert_eq!(v.retry_after_ns, SECOND);
    }

    proptest! {
        /// Over any window, a key gets at most `capacity` plus what refilled meanwhile, however
        /// its requests are spread.
        #[test]
        fn never_more_than_capacity_plus_refill(
            capacity in 1u64..50,
            per_second in 1u64..1000,
            gaps in proptest::collection::vec(0u64..50_000_000, 1..300),
        ) {
            let g = Gcra::new(capacity, per_second as f64);
            let start = 1_000 * SECOND;
            let (mut now, mut tat, mut allowed) = (start, 0u64, 0u64);
            for gap in gaps {
                now += gap;
                let (v, next) = g.check(tat, now);
                if let Some(next) = next {
                    tat = next;
                    allowed += 1;
                }
                prop_assert_eq!(v.allowed, next.is_some());
                prop_assert!(v.remaining < capacity);
            }
            let refilled = (now - start) / g.interval;
            prop_assert!(allowed <= capacity + refilled, "{} > {} + {}", allowed, capacity, refilled);
        }

        /// A key left alone for `capacity` intervals has its whole burst again.
        #[test]
        fn a_rested_key_has_its_burst(capacity in 1u64..50, per_second in 1u64..1000, used in 0u64..50) {
            let g = Gcra::new(capacity, per_second as f64);
            let mut now = 1_000 * SECOND;
            let mut tat = 0;
            for _ in 0..used {
                if let (_, Some(next)) = g.check(tat, now) {
                    tat = next;
                }
            }
            now += g.tolerance;
            for _ in 0..capacity {
                let (v, next) = g.check(tat, now);
                prop_assert!(v.allowed);
                tat = next.unwrap();
            }
        }
    }
}

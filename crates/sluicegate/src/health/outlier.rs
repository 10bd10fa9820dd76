//! Passive outlier detection (`[services.outlier_detection]`): ejecting an endpoint that keeps
//! failing live requests, without waiting for an active check to notice.
//!
//! The proxy reports each request's [`Outcome`] through [`record`], on the request's own task; there
//! is no detector task and no timer. An ejection is a deadline in the endpoint's
//! [`EndpointHealth`], so the endpoint comes back by itself when the deadline passes. What counts
//! as a failure (connect error, reset, 5xx, timeout) is the proxy's call, not this file's.
//!
//! The rules, after Envoy's consecutive-5xx detector:
//!
//! - **Threshold.** The `consecutive_failures`-th failure in a row ejects the endpoint (0 counts as
//!   1). A success resets the streak, and so does an ejection: an endpoint that comes back needs a
//!   whole new streak to leave again.
//! - **Growth.** The n-th consecutive ejection lasts `ejection_time × n`, capped at
//!   `max(ejection_time, 300 s)` (Envoy's default `max_ejection_time`), so a flapping endpoint
//!   is tried less and less often but never shut out for good.
//! - **Decay.** Once an endpoint has stayed un-ejected for `ejection_time × 10` after its last
//!   ejection ended, its ejection count is forgotten: its next ejection is a first one again. (A
//!   full reset rather than Envoy's step-by-step decrement: simpler to explain, and the growth is
//!   only meant to damp flapping, which a long quiet spell rules out.)
//! - **Cap.** At most `max_ejection_percent` of the service's endpoints are ejected at once:
//!   ejecting is allowed while `ejected + 1 <= floor(len × percent / 100)`, except that with two
//!   or more endpoints and a nonzero percent one ejection is always allowed (as Envoy guarantees
//!   at least one, so small services still get outlier detection), and `0` disables ejection.
//!   A lone endpoint is ejected only at 100 %: we have no Envoy-style panic routing, so ejecting
//!   the last endpoint turns slow failures into certain 503s, which the user must ask for.
//! - **While ejected**, outcomes are ignored: they come from requests sent before the ejection
//!   and say nothing about how the endpoint is now.
//!
//! Everything is atomics on the endpoints' shared state, so workers race. An ejection claims the
//! endpoint with a compare-and-swap (one winner per endpoint), then re-counts the ejected
//! endpoints and withdraws if concurrent ejections of other endpoints pushed the count over the
//! cap. Racing ejections may thus both withdraw (the next failure tries again), but the cap holds.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{duration_millis, now_millis};
use super::{EndpointHealth, OutlierConfig};

/// Longest ejection when `ejection_time` is shorter: Envoy's default `max_ejection_time`.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// A quiet spell of this many `ejection_time`s after an ejection ends resets the ejection count.
const DECAY_AFTER_EJECTION_TIMES: u32 = 10;

/// How a live request to an endpoint went, as the outlier detector sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

/// Records the outcome of a live request to `endpoints[index]` (the service's endpoints, in the
/// order the balancer indexes them), ejecting it when the rules of this module say so. Returns
/// whether this call ejected the endpoint, so the caller can log and count the ejection once.
///
/// An `index` out of range is ignored (the endpoint set changed under the request).
pub fn record(
    endpoints: &[Arc<EndpointHealth>],
    index: usize,
    outcome: Outcome,
    config: &OutlierConfig,
    now: Instant,
) -> bool {
    let Some(endpoint) = endpoints.get(index) else {
        return false;
    };
    let now_ms = now_millis(now);
    let previous_until = endpoint.ejected_until_millis();
    if now_ms < previous_until {
        return false;
    }
    match outcome {
        Outcome::Success => {
            endpoint.outlier_succeeded();
            false
        }
        Outcome::Failure => {
            if endpoint.outlier_failed() < config.consecutive_failures.max(1) {
                return false;
            }
            eject(endpoints, endpoint, config, now_ms, previous_until)
        }
    }
}

/// Ejects `endpoint` (not ejected now; its last ejection ended at `previous_until`) if the cap
/// allows. A refused ejection keeps the failure streak, so the next failure tries again.
fn eject(
    endpoints: &[Arc<EndpointHealth>],
    endpoint: &EndpointHealth,
    config: &OutlierConfig,
    now_ms: u64,
    previous_until: u64,
) -> bool {
    let allowed = max_ejected(endpoints.len(), config.max_ejection_percent);
    if ejected_count(endpoints, now_ms) >= allowed {
        return false;
    }

    let quiet_ms = now_ms.saturating_sub(previous_until);
    let decay_ms = duration_millis(
        config
            .ejection_time
            .saturating_mul(DECAY_AFTER_EJECTION_TIMES),
    );
    let count = if previous_until == 0 || quiet_ms >= decay_ms {
        1
    } else {
        endpoint.ejection_count().saturating_add(1)
    };
    let until = now_ms.saturating_add(duration_millis(ejection_time(config.ejection_time, count)));
    if until <= now_ms {
        // A zero `ejection_time` ejects for no time at all.
        return false;
    }

    if !endpoint.begin_ejection(previous_until, until) {
        // Another worker ejected it first, and reports it.
        return false;
    }
    if ejected_count(endpoints, now_ms) > allowed {
        // Concurrent ejections of other endpoints took the room; theirs stand.
        endpoint.cancel_ejection(until, previous_until);
        return false;
    }
    endpoint.commit_ejection(count);
    true
}

/// How long the `count`-th consecutive ejection lasts (see the module doc).
fn ejection_time(base: Duration, count: u32) -> Duration {
    base.saturating_mul(count).min(base.max(MAX_EJECTION_TIME))
}

/// How many of `len` endpoints may be ejected at once (see the module doc).
fn max_ejected(len: usize, percent: u8) -> usize {
    if percent == 0 {
        return 0;
    }
    let by_share = len.saturating_mul(usize::from(percent.min(100))) / 100;
    if len >= 2 {
        by_share.max(1)
    } else {
        by_share
    }
}

fn ejected_count(endpoints: &[Arc<EndpointHealth>], now_ms: u64) -> usize {
    endpoints
        .iter()
        .filter(|e| now_ms < e.ejected_until_millis())
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn config(consecutive_failures: u32, ejection_secs: u64, percent: u8) -> OutlierConfig {
        OutlierConfig {
            consecutive_failures,
            ejection_time: Duration::from_secs(ejection_secs),
            max_ejection_percent: percent,
        }
    }

    fn endpoints(n: usize) -> Vec<Arc<EndpointHealth>> {
        (0..n).map(|_| Arc::new(EndpointHealth::new())).collect()
    }

    /// Fails endpoint `i` `times` times; returns whether the last failure ejected it.
    fn fail(eps: &[Arc<EndpointHealth>], i: usize, times: u32, config: &OutlierConfig) -> bool {
        let mut ejected = false;
        for _ in 0..times {
            ejected = record(eps, i, Outcome::Failure, config, Instant::now());
        }
        ejected
    }

    fn ejected(eps: &[Arc<EndpointHealth>], i: usize) -> bool {
        eps[i].is_ejected(Instant::now())
    }

    /// Advances to just before `d` has passed, checks `i` is still ejected, then past it.
    async fn ejected_for(eps: &[Arc<EndpointHealth>], i: usize, d: Duration) {
        advance(d - Duration::from_millis(1)).await;
        assert!(ejected(eps, i), "ejected for less than {d:?}");
        advance(Duration::from_millis(1)).await;
        assert!(!ejected(eps, i), "ejected for more than {d:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn ejects_at_the_threshold() {
        let eps = endpoints(3);
        let config = config(3, 30, 100);
        assert!(!fail(&eps, 0, 2, &config));
        assert!(!ejected(&eps, 0));
        assert!(eps[0].is_available(Instant::now()));
        assert!(fail(&eps, 0, 1, &config));
        assert!(ejected(&eps, 0));
        assert!(!eps[0].is_available(Instant::now()));
        assert!(!ejected(&eps, 1) && !ejected(&eps, 2));
        assert_eq!(eps[0].ejection_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn comes_back_after_ejection_time_and_needs_a_new_streak() {
        let eps = endpoints(2);
        let config = config(3, 30, 100);
        assert!(fail(&eps, 0, 3, &config));
        ejected_for(&eps, 0, Duration::from_secs(30)).await;
        assert!(eps[0].is_available(Instant::now()));
        assert!(!fail(&eps, 0, 2, &config));
        assert!(fail(&eps, 0, 1, &config));
    }

    #[tokio::test(start_paused = true)]
    async fn repeated_ejections_grow_up_to_the_cap() {
        let eps = endpoints(2);
        let config = config(1, 100, 100);
        for (count, secs) in [(1, 100), (2, 200), (3, 300), (4, 300), (5, 300)] {
            assert!(fail(&eps, 0, 1, &config));
            assert_eq!(eps[0].ejection_count(), count);
            ejected_for(&eps, 0, Duration::from_secs(secs)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn second_ejection_lasts_twice_as_long() {
        let eps = endpoints(2);
        let config = config(2, 30, 100);
        assert!(fail(&eps, 0, 2, &config));
        ejected_for(&eps, 0, Duration::from_secs(30)).await;
        advance(Duration::from_secs(5)).await;
        assert!(fail(&eps, 0, 2, &config));
        ejected_for(&eps, 0, Duration::from_secs(60)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn cap_is_never_below_ejection_time() {
        let eps = endpoints(2);
        let config = config(1, 600, 100);
        assert!(fail(&eps, 0, 1, &config));
        ejected_for(&eps, 0, Duration::from_secs(600)).await;
        assert!(fail(&eps, 0, 1, &config));
        ejected_for(&eps, 0, Duration::from_secs(600)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_quiet_spell_resets_the_growth() {
        let eps = endpoints(2);
        let config = config(1, 30, 100);
        assert!(fail(&eps, 0, 1, &config));
        ejected_for(&eps, 0, Duration::from_secs(30)).await;
        assert!(fail(&eps, 0, 1, &config));
        ejected_for(&eps, 0, Duration::from_secs(60)).await;

        // Just short of ten ejection times: the next one still grows.
        advance(Duration::from_secs(299)).await;
        assert!(fail(&eps, 0, 1, &config));
        assert_eq!(eps[0].ejection_count(), 3);
        ejected_for(&eps, 0, Duration::from_secs(90)).await;

        // Ten ejection times after it ended: a first ejection again.
        advance(Duration::from_secs(300)).await;
        assert!(fail(&eps, 0, 1, &config));
        assert_eq!(eps[0].ejection_count(), 1);
        ejected_for(&eps, 0, Duration::from_secs(30)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_the_streak() {
        let eps = endpoints(2);
        let config = config(3, 30, 100);
        assert!(!fail(&eps, 0, 2, &config));
        assert!(!record(&eps, 0, Outcome::Success, &config, Instant::now()));
        assert_eq!(eps[0].consecutive_outlier_failures(), 0);
        assert!(!fail(&eps, 0, 2, &config));
        assert!(!ejected(&eps, 0));
        assert!(fail(&eps, 0, 1, &config));
    }

    #[tokio::test(start_paused = true)]
    async fn max_ejection_percent_caps_simultaneous_ejections() {
        let eps = endpoints(4);
        let config = config(1, 30, 50);
        assert!(fail(&eps, 0, 1, &config));
        assert!(fail(&eps, 1, 1, &config));
        // A third would make 75 %.
        assert!(!fail(&eps, 2, 1, &config));
        assert!(!fail(&eps, 2, 5, &config));
        assert!(!ejected(&eps, 2));

        // Room frees up when the first two come back; the streak was kept, so one more failure
        // ejects it.
        advance(Duration::from_secs(30)).await;
        assert!(fail(&eps, 2, 1, &config));
        assert_eq!(eps[2].ejection_count(), 1);
    }

    #[test]
    fn allowed_ejections_by_size_and_percent() {
        // Zero disables; at least one with two or more endpoints; a lone endpoint only at 100.
        assert_eq!(max_ejected(10, 0), 0);
        assert_eq!(max_ejected(10, 10), 1);
        assert_eq!(max_ejected(10, 55), 5);
        assert_eq!(max_ejected(2, 10), 1);
        assert_eq!(max_ejected(2, 50), 1);
        assert_eq!(max_ejected(3, 50), 1);
        assert_eq!(max_ejected(3, 100), 3);
        assert_eq!(max_ejected(3, 255), 3);
        assert_eq!(max_ejected(1, 50), 0);
        assert_eq!(max_ejected(1, 99), 0);
        assert_eq!(max_ejected(1, 100), 1);
        assert_eq!(max_ejected(0, 100), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_endpoint_is_ejected_only_at_100_percent() {
        let lone = endpoints(1);
        assert!(!fail(&lone, 0, 3, &config(1, 30, 50)));
        assert!(!ejected(&lone, 0));
        assert!(fail(&lone, 0, 1, &config(1, 30, 100)));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_percent_never_ejects() {
        let eps = endpoints(5);
        assert!(!fail(&eps, 0, 10, &config(1, 30, 0)));
        assert!(!ejected(&eps, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn outcomes_while_ejected_are_ignored() {
        let eps = endpoints(2);
        let config = config(2, 30, 100);
        assert!(fail(&eps, 0, 2, &config));
        // Stragglers from before the ejection: neither extend it nor count towards the next one.
        assert!(!fail(&eps, 0, 5, &config));
        assert_eq!(eps[0].consecutive_outlier_failures(), 0);
        ejected_for(&eps, 0, Duration::from_secs(30)).await;
        assert!(!fail(&eps, 0, 1, &config));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_thresholds_and_bad_indexes_do_not_panic() {
        let eps = endpoints(2);
        assert!(fail(&eps, 0, 1, &config(0, 30, 100)));
        assert!(!fail(&eps, 1, 3, &config(1, 0, 100)));
        assert!(!ejected(&eps, 1));
        assert!(!record(
            &eps,
            7,
            Outcome::Failure,
            &config(1, 30, 100),
            Instant::now()
        ));
        assert!(!record(
            &[],
            0,
            Outcome::Failure,
            &config(1, 30, 100),
            Instant::now()
        ));
    }

    #[test]
    fn concurrent_failures_never_exceed_the_cap() {
        let config = config(1, 30, 50);
        for _ in 0..50 {
            let eps = endpoints(4);
            let now = Instant::now();
            let ejections: usize = std::thread::scope(|scope| {
                let threads: Vec<_> = (0..4)
                    .map(|i| {
                        let eps = &eps;
                        scope.spawn(move || {
                            (0..20)
                                .filter(|_| record(eps, i, Outcome::Failure, &config, now))
                                .count()
                        })
                    })
                    .collect();
                threads.into_iter().map(|t| t.join().unwrap()).sum()
            });
            let ejected = eps.iter().filter(|e| e.is_ejected(now)).count();
            assert!(ejected <= 2, "{ejected} of 4 ejected at 50 %");
            assert_eq!(ejected, ejections, "every ejection reported exactly once");
        }
    }
}

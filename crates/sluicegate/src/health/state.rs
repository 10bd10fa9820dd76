//! [`EndpointHealth`]: the live health of one endpoint, shared by every thread that touches it.
//!
//! This file holds the state and its small atomic operations; the rules that drive it live with
//! their feeders: `active.rs` (the checker's thresholds) and `outlier.rs` (ejection, its cap and
//! its growth). Everything is an atomic, never a lock, because the balancer's `accept` predicate
//! reads it on every request from every worker.
//!
//! Every field is `Relaxed`: each is a value on its own, none publishes other memory, and readers
//! tolerate a value a moment old (a request routed to an endpoint just marked unhealthy is one the
//! proxy would have sent a microsecond earlier anyway). The only multi-step update, an ejection,
//! claims the endpoint with a compare-and-swap so two workers never eject it twice.
//!
//! Times are [`tokio::time::Instant`]s, stored as milliseconds since a process-wide epoch (an
//! `AtomicU64` cannot hold an `Instant`). Using Tokio's clock, not `std`'s, lets tests run on paused
//! time (`tokio::time::pause`, `advance`).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// The zero of every stored time.
static EPOCH: OnceLock<Instant> = OnceLock::new();

/// How far before its first use the epoch lies. Instants taken a little before that first use
/// (another Tokio runtime's paused clock in tests starts at its creation, which can precede the
/// first call here) must still map to distinct millisecond values instead of all saturating to 0.
/// An hour is far more than any such gap and far less than the 584 million years a `u64` of
/// milliseconds holds.
const EPOCH_MARGIN: Duration = Duration::from_secs(3600);

fn epoch() -> Instant {
    *EPOCH.get_or_init(|| {
        // The real clock, not a paused one: a test that paused and advanced time far ahead must
        // not put the epoch after the instants of other tests.
        let real_now = Instant::from_std(std::time::Instant::now());
        real_now.checked_sub(EPOCH_MARGIN).unwrap_or(real_now)
    })
}

/// `now` as milliseconds since the process-wide epoch (saturating at both ends).
pub(crate) fn now_millis(now: Instant) -> u64 {
    duration_millis(now.saturating_duration_since(epoch()))
}

/// `d` in whole milliseconds, saturating.
pub(crate) fn duration_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One endpoint's health: the active checks' verdict, the outlier detector's ejection, and the
/// counters behind both. Kept in a [`Registry`](super::Registry) so a config reload that keeps
/// the endpoint keeps all of it, counters included (a half-way streak of failures is not lost).
#[derive(Debug)]
pub struct EndpointHealth {
    /// The active checks' verdict. Starts `true`: a new endpoint takes traffic at once rather than
    /// waiting `healthy_threshold` intervals (Envoy and HAProxy do the same by default).
    healthy: AtomicBool,
    /// Consecutive successful active checks (reset by a failed one).
    check_successes: AtomicU32,
    /// Consecutive failed active checks (reset by a successful one).
    check_failures: AtomicU32,
    /// Consecutive failed live requests (reset by a successful one and by an ejection).
    outlier_failures: AtomicU32,
    /// End of the current or last ejection, in epoch millis; 0 = never ejected. Not cleared when
    /// the ejection ends: the endpoint comes back by time passing, with no task to wake, and the
    /// outlier detector measures its quiet period from here.
    ejected_until: AtomicU64,
    /// Consecutive ejections so far, the multiplier of the next ejection's length.
    ejections: AtomicU32,
    /// The circuit breaker (used when the service has `[services.circuit_breaker]`).
    pub breaker: super::Breaker,
}

impl EndpointHealth {
    /// A healthy endpoint that was never ejected.
    pub fn new() -> EndpointHealth {
        EndpointHealth {
            healthy: AtomicBool::new(true),
            check_successes: AtomicU32::new(0),
            check_failures: AtomicU32::new(0),
            outlier_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            breaker: super::Breaker::default(),
        }
    }

    /// The active checks' verdict (`true` when the service has no active checks).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Sets the active checks' verdict; returns whether it changed, so that exactly one caller
    /// logs (and counts) each transition.
    pub fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy.swap(healthy, Ordering::Relaxed) != healthy
    }

    /// Whether the outlier detector has ejected the endpoint and the ejection has not run out.
    pub fn is_ejected(&self, now: Instant) -> bool {
        now_millis(now) < self.ejected_until.load(Ordering::Relaxed)
    }

    /// What the balancer asks: healthy by the active checks and not ejected.
    pub fn is_available(&self, now: Instant) -> bool {
        self.is_healthy() && !self.is_ejected(now)
    }

    /// How long the current ejection still lasts; `None` when not ejected.
    pub fn ejection_remaining(&self, now: Instant) -> Option<Duration> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_millis(now);
        (now < until).then(|| Duration::from_millis(until - now))
    }

    /// Consecutive successful active checks.
    pub fn consecutive_check_successes(&self) -> u32 {
        self.check_successes.load(Ordering::Relaxed)
    }

    /// Consecutive failed active checks.
    pub fn consecutive_check_failures(&self) -> u32 {
        self.check_failures.load(Ordering::Relaxed)
    }

    /// Consecutive failed live requests since the last success or ejection.
    pub fn consecutive_outlier_failures(&self) -> u32 {
        self.outlier_failures.load(Ordering::Relaxed)
    }

    /// Consecutive ejections so far (the last ejection lasted this many times `ejection_time`,
    /// before the cap). The outlier detector forgets them after a quiet period.
    pub fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// An active check succeeded: returns the new streak of successes.
    pub(crate) fn check_succeeded(&self) -> u32 {
        self.check_failures.store(0, Ordering::Relaxed);
        increment(&self.check_successes)
    }

    /// An active check failed: returns the new streak of failures.
    pub(crate) fn check_failed(&self) -> u32 {
        self.check_successes.store(0, Ordering::Relaxed);
        increment(&self.check_failures)
    }

    /// A live request failed: returns the new streak of failures.
    pub(crate) fn outlier_failed(&self) -> u32 {
        increment(&self.outlier_failures)
    }

    /// A live request succeeded.
    pub(crate) fn outlier_succeeded(&self) {
        self.outlier_failures.store(0, Ordering::Relaxed);
    }

    /// End of the current or last ejection in epoch millis (0 = never), for the outlier detector.
    pub(crate) fn ejected_until_millis(&self) -> u64 {
        self.ejected_until.load(Ordering::Relaxed)
    }

    /// Starts an ejection lasting until `until`, if the last one still ends at `previous` (that
    /// is, no other thread ejected the endpoint since the caller looked). Returns whether this
    /// call won; the caller then either [`commits`](Self::commit_ejection) or
    /// [`cancels`](Self::cancel_ejection) it.
    pub(crate) fn begin_ejection(&self, previous: u64, until: u64) -> bool {
        self.ejected_until
            .compare_exchange(previous, until, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Undoes [`begin_ejection`](Self::begin_ejection), leaving the counters as they were.
    pub(crate) fn cancel_ejection(&self, until: u64, previous: u64) {
        // Fails only if someone else changed it since, in which case theirs stands.
        let _ = self.ejected_until.compare_exchange(
            until,
            previous,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Completes an ejection begun with [`begin_ejection`](Self::begin_ejection): records it as
    /// the `count`-th consecutive one and starts the failure streak afresh, so the endpoint that
    /// comes back needs a whole new streak to be ejected again.
    pub(crate) fn commit_ejection(&self, count: u32) {
        self.ejections.store(count, Ordering::Relaxed);
        self.outlier_failures.store(0, Ordering::Relaxed);
    }
}

impl Default for EndpointHealth {
    fn default() -> EndpointHealth {
        EndpointHealth::new()
    }
}

/// Adds one, saturating (a streak of four billion is still a streak), and returns the new value.
fn increment(counter: &AtomicU32) -> u32 {
    let previous = counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            Some(n.saturating_add(1))
        })
        // The closure never returns `None`, so this is always `Ok`; both carry the old value.
        .unwrap_or_else(|n| n);
    previous.saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn starts_healthy_and_not_ejected() {
        let health = EndpointHealth::new();
        let now = Instant::now();
        assert!(health.is_healthy());
        assert!(!health.is_ejected(now));
        assert!(health.is_available(now));
        assert_eq!(health.ejection_remaining(now), None);
        assert_eq!(health.ejection_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn set_healthy_reports_changes_only() {
        let health = EndpointHealth::new();
        assert!(!health.set_healthy(true));
        assert!(health.set_healthy(false));
        assert!(!health.set_healthy(false));
        assert!(!health.is_healthy());
        assert!(!health.is_available(Instant::now()));
        assert!(health.set_healthy(true));
        assert!(health.is_available(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_runs_out_by_itself() {
        let health = EndpointHealth::new();
        let now = now_millis(Instant::now());
        assert!(health.begin_ejection(0, now + 1_000));
        health.commit_ejection(1);
        assert!(health.is_ejected(Instant::now()));
        assert!(!health.is_available(Instant::now()));
        assert_eq!(
            health.ejection_remaining(Instant::now()),
            Some(Duration::from_millis(1_000))
        );

        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(health.is_ejected(Instant::now()));
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!health.is_ejected(Instant::now()));
        assert!(health.is_available(Instant::now()));
        assert_eq!(health.ejection_count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_ejection_attempt_loses() {
        let health = EndpointHealth::new();
        let now = now_millis(Instant::now());
        assert!(health.begin_ejection(0, now + 10));
        assert!(!health.begin_ejection(0, now + 20));
        health.cancel_ejection(now + 10, 0);
        assert_eq!(health.ejected_until_millis(), 0);
        assert!(!health.is_ejected(Instant::now()));
    }

    #[test]
    fn check_streaks_reset_each_other() {
        let health = EndpointHealth::new();
        assert_eq!(health.check_failed(), 1);
        assert_eq!(health.check_failed(), 2);
        assert_eq!(health.check_succeeded(), 1);
        assert_eq!(health.consecutive_check_failures(), 0);
        assert_eq!(health.check_succeeded(), 2);
        assert_eq!(health.check_failed(), 1);
        assert_eq!(health.consecutive_check_successes(), 0);
    }

    #[test]
    fn outlier_streak_resets_on_success_and_ejection() {
        let health = EndpointHealth::new();
        assert_eq!(health.outlier_failed(), 1);
        assert_eq!(health.outlier_failed(), 2);
        health.outlier_succeeded();
        assert_eq!(health.consecutive_outlier_failures(), 0);
        assert_eq!(health.outlier_failed(), 1);
        health.commit_ejection(1);
        assert_eq!(health.consecutive_outlier_failures(), 0);
    }

    #[test]
    fn counters_saturate() {
        let counter = AtomicU32::new(u32::MAX - 1);
        assert_eq!(increment(&counter), u32::MAX);
        assert_eq!(increment(&counter), u32::MAX);
    }

    #[test]
    fn times_map_to_increasing_millis() {
        let now = Instant::now();
        let later = now + Duration::from_millis(1_500);
        // The epoch lies an hour before its first use, so nothing near "now" saturates to 0.
        assert!(now_millis(now) > 0);
        assert_eq!(now_millis(later) - now_millis(now), 1_500);
        assert_eq!(duration_millis(Duration::MAX), u64::MAX);
    }
}

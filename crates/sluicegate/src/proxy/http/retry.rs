//! A route's `retry`: which failed tries are tried again, how long to wait, and the budget that
//! keeps retries from multiplying an outage.
//!
//! - **What is retried**: the failures named in `on` (and `retriable_status`). A connect failure
//!   is always safe to retry: nothing reached the upstream. Anything else (a reset, a timeout, a
//!   5xx) is retried only for idempotent methods (RFC 9110 §9.2.2: GET, HEAD, OPTIONS, TRACE, PUT,
//!   DELETE), or for any method with `non_idempotent = true`.
//! - **Bodies**: a request body is read ahead, up to `replay_buffer`, before the first try, so
//!   each try sends the same bytes. A larger body is streamed as usual and never retried.
//! - **Where**: a retry goes to another endpoint when one is available.
//! - **When**: after a backoff with full jitter (a random wait up to `backoff × 2^(n-1)`, capped
//!   at 10 × `backoff`), within the route's `timeout`, which covers every try; `per_try_timeout`
//!   bounds each try's wait for a response head.
//! - **How many**: at most `attempts` tries, and within the route's budget: over the last ten
//!   seconds, retries stay within `budget_percent` of the route's requests plus
//!   `budget_min_per_second` (Linkerd's and Envoy's rule). When every endpoint fails, the
//!   upstream sees at most (1 + budget) × the client's requests, not `attempts` × them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};

use crate::config::{RetryConfig, RetryOn};
use crate::observe::metrics::{self, Counter};
use crate::observe::names;

/// The most tries `attempts` allows (the config's bound).
pub const MAX_TRIES: usize = crate::config::MAX_RETRY_ATTEMPTS as usize;

/// The budget's window, in one-second slots.
const SLOTS: usize = 10;

/// Why a try was retried: the `reason` label of `sluicegate_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    ConnectFailure,
    Reset,
    Timeout,
    Status5xx,
    Status503,
    /// A status in `retriable_status`.
    Status,
}

impl Reason {
    const ALL: [Reason; 6] = [
        Reason::ConnectFailure,
        Reason::Reset,
        Reason::Timeout,
        Reason::Status5xx,
        Reason::Status503,
        Reason::Status,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Reason::ConnectFailure => "connect_failure",
            Reason::Reset => "reset",
            Reason::Timeout => "timeout",
            Reason::Status5xx => "5xx",
            Reason::Status503 => "503",
            Reason::Status => "status",
        }
    }
}

/// How one try ended, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryEnd {
    ConnectFailure,
    Reset,
    Timeout,
    Status(StatusCode),
}

/// The retries of a route over the last ten seconds, shared by every worker and every
/// snapshot of the route.
#[derive(Debug, Default)]
pub struct Budget {
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default)]
struct Slot {
    /// The second (of the monotonic clock) this slot counts; older counts are stale.
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Budget {
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let held = slot.second.load(Ordering::Acquire);
        if held != second
            && slot
                .second
                .compare_exchange(held, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This thread turned the slot over (a racing count may land before the reset:
            // the budget is an estimate, by a request or two).
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Counts a request of the route.
    pub fn request(&self, second: u64) {
        self.slot(second).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if the last ten seconds leave room for it.
    pub fn try_retry(&self, second: u64, percent: f64, min_per_second: u32) -> bool {
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let s = slot.second.load(Ordering::Acquire);
            if s + SLOTS as u64 > second && s <= second {
                requests += slot.requests.load(Ordering::Relaxed);
                retries += slot.retries.load(Ordering::Relaxed);
            }
        }
        let allowed = percent / 100.0 * requests as f64 + f64::from(min_per_second) * SLOTS as f64;
        if retries as f64 + 1.0 > allowed {
            return false;
        }
        self.slot(second).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

/// A route's retry policy, compiled.
pub struct RetryPolicy {
    pub config: RetryConfig,
    budget: std::sync::Arc<Budget>,
    /// By [`Reason`]'s position in [`Reason::ALL`].
    counters: [Counter; 6],
}

impl RetryPolicy {
    pub fn new(
        route: &str,
        config: &RetryConfig,
        budget: std::sync::Arc<Budget>,
        metrics: &metrics::Registry,
    ) -> RetryPolicy {
        let counters = Reason::ALL.map(|reason| {
            metrics.counter(
                names::RETRIES_TOTAL,
                names::RETRIES_TOTAL_HELP,
                &[
                    (names::label::ROUTE, route),
                    (names::label::REASON, reason.name()),
                ],
            )
        });
        RetryPolicy {
            config: config.clone(),
            budget,
            counters,
        }
    }

    /// Counts a client request of the route in the budget.
    pub fn count_request(&self) {
        self.budget.request(clock_second());
    }

    /// Whether a request with this method may be sent again after it reached an upstream.
    pub fn may_resend(&self, method: &Method) -> bool {
        self.config.non_idempotent
            || matches!(
                *method,
                Method::GET
                    | Method::HEAD
                    | Method::OPTIONS
                    | Method::TRACE
                    | Method::PUT
                    | Method::DELETE
            )
    }

    /// Why a try that ended so should be retried, if `on` or `retriable_status` says it should
    /// (and the method allows it: see [`RetryPolicy::may_resend`]).
    pub fn reason(&self, end: TryEnd, may_resend: bool) -> Option<Reason> {
        let on: RetryOn = self.config.on;
        let reason = match end {
            TryEnd::ConnectFailure => return on.connect_failure.then_some(Reason::ConnectFailure),
            TryEnd::Reset => on.reset.then_some(Reason::Reset),
            TryEnd::Timeout => on.timeout.then_some(Reason::Timeout),
            TryEnd::Status(status) => {
                if self.config.retriable_status.contains(&status.as_u16()) {
                    Some(Reason::Status)
                } else if status == StatusCode::SERVICE_UNAVAILABLE && on.status_503 {
                    Some(Reason::Status503)
                } else if status.is_server_error() && on.status_5xx {
                    Some(Reason::Status5xx)
                } else {
                    None
                }
            }
        };
        reason.filter(|_| may_resend)
    }

    /// Takes a retry from the budget and counts it under `reason`; `false`: the budget is spent.
    pub fn take(&self, reason: Reason) -> bool {
        let ok = self.budget.try_retry(
            clock_second(),
            self.config.budget_percent,
            self.config.budget_min_per_second,
        );
        if ok {
            if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
                self.counters[i].inc();
            }
        }
        ok
    }

    /// The wait before retry `n` (1 for the first): full jitter over an exponential ceiling.
    pub fn backoff(&self, n: u32) -> Duration {
        let base = self.config.backoff;
        let ceiling = base
            .saturating_mul(1 << (n.saturating_sub(1)).min(16))
            .min(base.saturating_mul(10));
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

/// Seconds on the monotonic clock (a wall-clock step must not empty or freeze the window).
fn clock_second() -> u64 {
    crate::health::now_millis(tokio::time::Instant::now()) / 1000
}

/// The access log's `"attempts"` value for `n` tries.
pub fn attempts_text(n: u32) -> &'static str {
    const TEXT: [&str; 11] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10"];
    TEXT.get(n as usize).copied().unwrap_or("10+")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_allows_a_share_of_requests_plus_a_floor() {
        let budget = Budget::default();
        let now = 1_000;
        for _ in 0..100 {
            budget.request(now);
        }
        // 20 % of 100 requests, and no floor: 20 retries.
        let granted = (0..50).filter(|_| budget.try_retry(now, 20.0, 0)).count();
        assert_eq!(granted, 20);
        // Ten seconds later the window is empty again; the floor alone gives 1/s × 10 s.
        let later = now + 10;
        let granted = (0..50).filter(|_| budget.try_retry(later, 20.0, 1)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn backoff_is_jittered_under_an_exponential_ceiling() {
        let config = RetryConfig {
            attempts: 3,
            on: RetryOn::default(),
            retriable_status: vec![],
            budget_percent: 20.0,
            budget_min_per_second: 10,
            backoff: Duration::from_millis(10),
            per_try_timeout: None,
            non_idempotent: false,
            replay_buffer: 1024,
        };
        let policy = RetryPolicy::new(
            "r",
            &config,
            Default::default(),
            &metrics::Registry::default(),
        );
        for _ in 0..100 {
            assert!(policy.backoff(1) <= Duration::from_millis(10));
            assert!(policy.backoff(3) <= Duration::from_millis(40));
            assert!(policy.backoff(9) <= Duration::from_millis(100));
        }
    }

    #[test]
    fn only_what_on_names_is_retried_and_not_after_sending_a_post() {
        let mut config = RetryConfig {
            attempts: 2,
            on: RetryOn {
                connect_failure: true,
                reset: true,
                status_503: true,
                ..RetryOn::default()
            },
            retriable_status: vec![429],
            budget_percent: 20.0,
            budget_min_per_second: 10,
            backoff: Duration::ZERO,
            per_try_timeout: None,
            non_idempotent: false,
            replay_buffer: 1024,
        };
        let policy = RetryPolicy::new("r", &config, Default::default(), &Default::default());
        let get = policy.may_resend(&Method::GET);
        let post = policy.may_resend(&Method::POST);
        assert!(get && !post);
        assert_eq!(
            policy.reason(TryEnd::ConnectFailure, post),
            Some(Reason::ConnectFailure)
        );
        assert_eq!(policy.reason(TryEnd::Reset, post), None);
        assert_eq!(policy.reason(TryEnd::Reset, get), Some(Reason::Reset));
        assert_eq!(policy.reason(TryEnd::Timeout, get), None);
        assert_eq!(
            policy.reason(TryEnd::Status(StatusCode::SERVICE_UNAVAILABLE), get),
            Some(Reason::Status503)
        );
        assert_eq!(
            policy.reason(TryEnd::Status(StatusCode::INTERNAL_SERVER_ERROR), get),
            None
        );
        assert_eq!(
            policy.reason(TryEnd::Status(StatusCode::TOO_MANY_REQUESTS), get),
            Some(Reason::Status)
        );
        config.non_idempotent = true;
        let policy = RetryPolicy::new("r", &config, Default::default(), &Default::default());
        assert!(policy.may_resend(&Method::POST));
    }
}

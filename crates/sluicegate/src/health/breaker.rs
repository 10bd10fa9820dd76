//! Circuit breakers (`[services.circuit_breaker]`): an endpoint whose recent requests fail too
//! often stops getting traffic for a while, then gets a few trial requests that decide whether
//! it comes back.
//!
//! - **Closed** (the normal state): outcomes go into a rolling window of `window`, in ten
//!   buckets. When the window holds at least `minimum_requests` and the failed share reaches
//!   `failure_rate`, the breaker **opens**.
//! - **Open**: the endpoint gets nothing for `open_for`; every balancer skips it.
//! - **Half-open**: then exactly `half_open_requests` trial requests are let through. The first
//!   trial that fails opens the breaker again for `open_for`; when all of them succeed it
//!   **closes**, with an empty window. Trials that never report (their client went away) do not
//!   hold the endpoint hostage: once the round is `open_for` old, more trials are let through
//!   (a slow trial that reports later still counts); a trial that ends on the client's side or
//!   is not sent after all is given back ([`Breaker::release`]).
//!
//! Each state change bumps a generation. A request carries the generation it was admitted
//! under ([`Ticket`]), and an outcome from another generation is ignored: a request sent before
//! the breaker opened says nothing about the trials, and one from before it closed says
//! nothing about the new window.
//!
//! What counts as a failure is the proxy's call (connect failure, reset, timeout, 5xx), the same
//! as for outlier detection. The two are independent and both apply: an endpoint takes requests
//! only while it is healthy, not ejected, and its breaker admits them. They differ in what they
//! promise: outlier ejection never removes more than `max_ejection_percent` of a service, while
//! breakers have no cap, so when every endpoint's breaker is open the service fails fast with
//! 503 `circuit_open` instead of sending requests to endpoints that are known to fail.
//!
//! The closed state, the common one, is read and admitted without a lock (two atomics); the
//! window and every transition are under a per-endpoint mutex.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::state::{duration_millis, now_millis};

/// `[services.circuit_breaker]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerConfig {
    /// Open when at least this share of the window's requests failed (0 < rate ≤ 1).
    pub failure_rate: f64,
    /// Fewer requests than this in the window never open the breaker.
    pub minimum_requests: u32,
    /// How far back outcomes count.
    pub window: Duration,
    /// How long an open breaker keeps the endpoint out.
    pub open_for: Duration,
    /// Trial requests in the half-open state.
    pub half_open_requests: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 0.5,
            minimum_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_requests: 5,
        }
    }
}

/// A breaker's state, as `/api/v1/services` and the metric show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    HalfOpen,
    Open,
}

impl BreakerState {
    /// `sluicegate_circuit_breaker_state`: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    fn from_mode(mode: u8) -> BreakerState {
        match mode {
            MODE_OPEN => BreakerState::Open,
            MODE_HALF_OPEN => BreakerState::HalfOpen,
            _ => BreakerState::Closed,
        }
    }
}

const MODE_CLOSED: u8 = 0;
const MODE_HALF_OPEN: u8 = 1;
const MODE_OPEN: u8 = 2;

const BUCKETS: usize = 10;

/// A state change, for the caller to log and count once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Opened,
    HalfOpened,
    Closed,
}

/// Admission of one request: the generation it was admitted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    generation: u32,
}

/// One endpoint's breaker. Lives in its [`EndpointHealth`](super::EndpointHealth), so it
/// survives reloads that keep the endpoint.
#[derive(Debug)]
pub struct Breaker {
    mode: AtomicU8,
    /// While open: when it may turn half-open, in epoch millis.
    open_until: AtomicU64,
    generation: AtomicU32,
    /// Trials admitted in the current half-open round (read without the lock by `may_admit`).
    trials: AtomicU32,
    /// When the current state began, in epoch millis.
    round_began: AtomicU64,
    inner: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    buckets: [Bucket; BUCKETS],
    /// Half-open: trials that succeeded.
    succeeded: u32,
}

#[derive(Debug, Default, Clone, Copy)]
struct Bucket {
    /// Which bucket-length period of time this bucket holds (epoch millis / bucket length).
    period: u64,
    requests: u32,
    failures: u32,
}

impl Default for Breaker {
    fn default() -> Self {
        Breaker {
            mode: AtomicU8::new(MODE_CLOSED),
            open_until: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            trials: AtomicU32::new(0),
            round_began: AtomicU64::new(0),
            inner: Mutex::default(),
        }
    }
}

impl Breaker {
    pub fn state(&self) -> BreakerState {
        BreakerState::from_mode(self.mode.load(Ordering::Relaxed))
    }

    /// Whether a request could be admitted now (lock-free; [`Breaker::admit`] decides).
    pub fn may_admit(&self, now: Instant, config: &BreakerConfig) -> bool {
        match self.mode.load(Ordering::Relaxed) {
            MODE_CLOSED => true,
            MODE_OPEN => now_millis(now) >= self.open_until.load(Ordering::Relaxed),
            _ => {
                self.trials.load(Ordering::Relaxed) < config.half_open_requests.max(1)
                    || self.round_is_stale(now_millis(now), config)
            }
        }
    }

    /// A half-open round older than `open_for`: its missing trials are given up.
    fn round_is_stale(&self, now_ms: u64, config: &BreakerConfig) -> bool {
        now_ms.saturating_sub(self.round_began.load(Ordering::Relaxed))
            >= duration_millis(config.open_for)
    }

    /// Admits a request, or refuses it (open, or half-open with its trials taken). Returns the
    /// transition the admission made (an open breaker whose time is up turns half-open).
    pub fn admit(
        &self,
        now: Instant,
        config: &BreakerConfig,
    ) -> (Option<Ticket>, Option<Transition>) {
        if self.mode.load(Ordering::Acquire) == MODE_CLOSED {
            let generation = self.generation.load(Ordering::Acquire);
            return (Some(Ticket { generation }), None);
        }
        let now_ms = now_millis(now);
        let mut window = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut transition = None;
        match self.mode.load(Ordering::Acquire) {
            MODE_CLOSED => {
                let generation = self.generation.load(Ordering::Acquire);
                return (Some(Ticket { generation }), None);
            }
            MODE_OPEN => {
                if now_ms < self.open_until.load(Ordering::Relaxed) {
                    return (None, None);
                }
                self.begin_round(&mut window, now_ms, MODE_HALF_OPEN);
                transition = Some(Transition::HalfOpened);
            }
            _ => {
                // Trials whose outcome has not come within open_for: let more through, in the
                // same generation (a slow trial that still reports counts).
                let quota = config.half_open_requests.max(1);
                if self.trials.load(Ordering::Relaxed) >= quota
                    && self.round_is_stale(now_ms, config)
                {
                    self.trials.store(0, Ordering::Relaxed);
                    self.round_began.store(now_ms, Ordering::Relaxed);
                }
            }
        }
        let quota = config.half_open_requests.max(1);
        if self.trials.load(Ordering::Relaxed) >= quota {
            return (None, transition);
        }
        self.trials.fetch_add(1, Ordering::Relaxed);
        let generation = self.generation.load(Ordering::Acquire);
        (Some(Ticket { generation }), transition)
    }

    /// Records how an admitted request went; returns the transition it caused.
    pub fn record(
        &self,
        ticket: Ticket,
        failed: bool,
        now: Instant,
        config: &BreakerConfig,
    ) -> Option<Transition> {
        let now_ms = now_millis(now);
        let mut window = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if ticket.generation != self.generation.load(Ordering::Acquire) {
            return None;
        }
        match self.mode.load(Ordering::Acquire) {
            MODE_CLOSED => {
                let length = duration_millis(config.window / BUCKETS as u32).max(1);
                let period = now_ms / length;
                let bucket = &mut window.buckets[(period % BUCKETS as u64) as usize];
                if bucket.period != period {
                    *bucket = Bucket {
                        period,
                        requests: 0,
                        failures: 0,
                    };
                }
                bucket.requests = bucket.requests.saturating_add(1);
                bucket.failures = bucket.failures.saturating_add(u32::from(failed));
                if !failed {
                    return None;
                }
                let live = |b: &&Bucket| b.period + BUCKETS as u64 > period;
                let requests: u64 = window
                    .buckets
                    .iter()
                    .filter(live)
                    .map(|b| u64::from(b.requests))
                    .sum();
                let failures: u64 = window
                    .buckets
                    .iter()
                    .filter(live)
                    .map(|b| u64::from(b.failures))
                    .sum();
                let trips = requests >= u64::from(config.minimum_requests.max(1))
                    && failures as f64 >= config.failure_rate * requests as f64;
                if !trips {
                    return None;
                }
                self.open(&mut window, now_ms, config);
                Some(Transition::Opened)
            }
            MODE_HALF_OPEN => {
                if failed {
                    self.open(&mut window, now_ms, config);
                    return Some(Transition::Opened);
                }
                window.succeeded += 1;
                if window.succeeded < config.half_open_requests.max(1) {
                    return None;
                }
                self.begin_round(&mut window, now_ms, MODE_CLOSED);
                Some(Transition::Closed)
            }
            _ => None,
        }
    }

    /// Gives back a trial that was admitted but will report no outcome (the request was not
    /// sent after all, or failed on the client's side).
    pub fn release(&self, ticket: Ticket) {
        let _window = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if ticket.generation == self.generation.load(Ordering::Acquire)
            && self.mode.load(Ordering::Acquire) == MODE_HALF_OPEN
        {
            let trials = self.trials.load(Ordering::Relaxed);
            self.trials
                .store(trials.saturating_sub(1), Ordering::Relaxed);
        }
    }

    fn open(&self, window: &mut Window, now_ms: u64, config: &BreakerConfig) {
        self.open_until.store(
            now_ms.saturating_add(duration_millis(config.open_for)),
            Ordering::Relaxed,
        );
        self.begin_round(window, now_ms, MODE_OPEN);
    }

    /// Enters `mode` with an empty window and no trials, under a new generation.
    fn begin_round(&self, window: &mut Window, now_ms: u64, mode: u8) {
        *window = Window::default();
        self.round_began.store(now_ms, Ordering::Relaxed);
        self.trials.store(0, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.mode.store(mode, Ordering::Release);
    }

    /// How long an open breaker still keeps the endpoint out.
    pub fn open_remaining(&self, now: Instant) -> Option<Duration> {
        if self.state() != BreakerState::Open {
            return None;
        }
        let until = self.open_until.load(Ordering::Relaxed);
        let now = now_millis(now);
        Some(Duration::from_millis(until.saturating_sub(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            failure_rate: 0.5,
            minimum_requests: 10,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(30),
            half_open_requests: 3,
        }
    }

    fn send(b: &Breaker, now: Instant, failed: bool) -> Option<Transition> {
        let (ticket, _) = b.admit(now, &config());
        b.record(ticket.expect("admitted"), failed, now, &config())
    }

    #[test]
    fn opens_at_the_failure_rate_once_the_window_has_enough_requests() {
        let b = Breaker::default();
        let now = Instant::now();
        // 4 failures in 4: too few requests to judge.
        for _ in 0..4 {
            assert_eq!(send(&b, now, true), None);
        }
        for _ in 0..5 {
            assert_eq!(send(&b, now, false), None);
        }
        // The 10th request, a failure: 5 of 10 failed.
        assert_eq!(send(&b, now, true), Some(Transition::Opened));
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.may_admit(now, &config()));
        assert_eq!(b.admit(now, &config()).0, None);
    }

    #[test]
    fn old_outcomes_leave_the_window() {
        let b = Breaker::default();
        let start = Instant::now();
        for _ in 0..9 {
            send(&b, start, true);
        }
        // Eleven seconds later the nine failures have left the 10 s window.
        let later = start + Duration::from_secs(11);
        assert_eq!(send(&b, later, true), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn half_open_admits_exactly_the_trials_then_closes_or_reopens() {
        let b = Breaker::default();
        let now = Instant::now();
        for _ in 0..10 {
            send(&b, now, true);
        }
        assert_eq!(b.state(), BreakerState::Open);
        let later = now + Duration::from_secs(30);
        assert!(b.may_admit(later, &config()));
        let (first, transition) = b.admit(later, &config());
        assert_eq!(transition, Some(Transition::HalfOpened));
        let second = b.admit(later, &config()).0.unwrap();
        let third = b.admit(later, &config()).0.unwrap();
        assert_eq!(b.admit(later, &config()).0, None, "only three trials");
        assert!(!b.may_admit(later, &config()));
        assert_eq!(b.record(first.unwrap(), false, later, &config()), None);
        assert_eq!(b.record(second, false, later, &config()), None);
        assert_eq!(
            b.record(third, false, later, &config()),
            Some(Transition::Closed)
        );
        assert_eq!(b.state(), BreakerState::Closed);

        // Open again; this time a trial fails.
        for _ in 0..10 {
            send(&b, later, true);
        }
        let again = later + Duration::from_secs(30);
        let trial = b.admit(again, &config()).0.unwrap();
        assert_eq!(
            b.record(trial, true, again, &config()),
            Some(Transition::Opened)
        );
        assert_eq!(
            b.open_remaining(again),
            Some(Duration::from_secs(30)),
            "a full open_for again"
        );
    }

    #[test]
    fn outcomes_from_another_generation_are_ignored() {
        let b = Breaker::default();
        let now = Instant::now();
        let (early, _) = b.admit(now, &config());
        for _ in 0..10 {
            send(&b, now, true);
        }
        let later = now + Duration::from_secs(30);
        let trial = b.admit(later, &config()).0.unwrap();
        // The request sent before the breaker opened ends now: it is not a trial.
        assert_eq!(b.record(early.unwrap(), true, later, &config()), None);
        assert_eq!(b.state(), BreakerState::HalfOpen);
        assert_eq!(
            b.record(trial, true, later, &config()),
            Some(Transition::Opened)
        );
    }

    #[test]
    fn a_released_trial_is_given_back() {
        let b = Breaker::default();
        let now = Instant::now();
        for _ in 0..10 {
            send(&b, now, true);
        }
        let t = now + Duration::from_secs(30);
        let tickets: Vec<Ticket> = (0..3).map(|_| b.admit(t, &config()).0.unwrap()).collect();
        assert!(b.admit(t, &config()).0.is_none());
        b.release(tickets[0]);
        assert!(b.admit(t, &config()).0.is_some());
    }

    #[test]
    fn trials_that_never_report_do_not_hold_the_endpoint_forever() {
        let b = Breaker::default();
        let now = Instant::now();
        for _ in 0..10 {
            send(&b, now, true);
        }
        let t = now + Duration::from_secs(30);
        for _ in 0..3 {
            assert!(b.admit(t, &config()).0.is_some());
        }
        assert!(b.admit(t, &config()).0.is_none());
        assert!(!b.may_admit(t, &config()));
        // open_for later, the lost trials are given up and a new round begins.
        let t2 = t + Duration::from_secs(30);
        assert!(b.may_admit(t2, &config()));
        assert!(b.admit(t2, &config()).0.is_some());
    }
}

//! The adaptive concurrency limit (`max_in_flight = 0`), in the spirit of Envoy's adaptive
//! concurrency filter and Netflix's concurrency-limits "gradient": latency above the lowest
//! recently seen is queueing, and the limit shrinks in proportion when that queueing exceeds
//! `target_queue_delay`; while latency stays within it and the limit is what holds requests
//! back, the limit grows in proportion to the room left (at most double) plus its square root
//! per window. While the limit holds nobody back it
//! drifts down (by a tenth per window at most) to twice the most requests seen in flight, so
//! that overload, when it comes, meets a limit near what the upstreams were really doing rather
//! than one far above it that lets a flood into their queues.
//!
//! Latencies are gathered per window of at least 100 ms (and a few samples) in atomics, so a
//! request's sample costs three atomic updates; whoever finishes a window computes the next
//! limit under a `try_lock`, and nobody waits for it.
//!
//! The lowest latency is the minimum over the current and the previous 30 s period. Under
//! sustained overload a period's minimum could itself include queueing and ratchet the limit
//! upwards; so at each period's end a limit that was being reached is halved for a window, which
//! lets the upstream's queue drain and shows it latency without it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The adaptive limit before any latency is known.
pub const INITIAL_LIMIT: usize = 100;
const MIN_LIMIT: f64 = 2.0;
/// The lowest an idle limit drifts down to.
const IDLE_LIMIT: f64 = 16.0;
const MAX_LIMIT: f64 = 100_000.0;
const WINDOW: Duration = Duration::from_millis(100);
/// Samples a window needs before it counts.
const MIN_SAMPLES: u64 = 8;
const PERIOD: Duration = Duration::from_secs(30);
/// The most requests the queue holds whatever the arithmetic says.
const MAX_QUEUE: u128 = 100_000;

pub struct Latency {
    /// What the window times count from.
    epoch: Instant,
    count: AtomicU64,
    sum_us: AtomicU64,
    min_us: AtomicU64,
    /// A request found no free place during this window.
    saturated: AtomicBool,
    /// The most requests in flight an answer saw during this window.
    peak: AtomicU64,
    /// When the window ends, in µs since `epoch`.
    window_end_us: AtomicU64,
    /// The mean latency of the last window (µs; 0 until one ended).
    typical_us: AtomicU64,
    control: Mutex<Control>,
}

struct Control {
    /// The lowest latency of this period and of the previous one (µs).
    min_us: [u64; 2],
    period_end_us: u64,
}

impl Latency {
    pub fn new(now: Instant) -> Latency {
        Latency {
            epoch: now,
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            min_us: AtomicU64::new(u64::MAX),
            saturated: AtomicBool::new(false),
            peak: AtomicU64::new(0),
            window_end_us: AtomicU64::new(micros(WINDOW)),
            typical_us: AtomicU64::new(0),
            control: Mutex::new(Control {
                min_us: [u64::MAX; 2],
                period_end_us: micros(PERIOD),
            }),
        }
    }

    /// Forgets what was learnt (the limit became adaptive again).
    pub fn reset(&self, now: Instant) {
        let mut control = self.control.lock().unwrap_or_else(|e| e.into_inner());
        let now_us = micros(now.saturating_duration_since(self.epoch));
        self.count.store(0, Ordering::Relaxed);
        self.sum_us.store(0, Ordering::Relaxed);
        self.min_us.store(u64::MAX, Ordering::Relaxed);
        self.peak.store(0, Ordering::Relaxed);
        self.window_end_us
            .store(now_us + micros(WINDOW), Ordering::Relaxed);
        self.typical_us.store(0, Ordering::Relaxed);
        *control = Control {
            min_us: [u64::MAX; 2],
            period_end_us: now_us + micros(PERIOD),
        };
    }

    /// A request found the limit reached.
    pub fn saturated(&self) {
        if !self.saturated.load(Ordering::Relaxed) {
            self.saturated.store(true, Ordering::Relaxed);
        }
    }

    /// How many may wait: as many as the limit serves within `target`, and never fewer than
    /// two rounds of the limit (a queue shorter than what the next answers serve would refuse
    /// requests that would wait a latency or two, while the limit is still finding its level).
    /// Twice the limit until a latency is known.
    pub fn queue_capacity(&self, limit: usize, target: Duration) -> usize {
        let typical = u128::from(self.typical_us.load(Ordering::Relaxed));
        let rounds = 2 * limit as u128;
        if typical == 0 {
            return rounds.clamp(1, MAX_QUEUE) as usize;
        }
        let capacity = (limit as u128 * target.as_micros() / typical).max(rounds);
        capacity.clamp(1, MAX_QUEUE) as usize
    }

    /// How long a request may wait for a place: twice the longer of `target` and the typical
    /// latency (the queue is sized to be served within one of them; the second allows for
    /// upstreams slowing down meanwhile).
    pub fn max_wait(&self, target: Duration) -> Duration {
        let typical = Duration::from_micros(self.typical_us.load(Ordering::Relaxed));
        target.max(typical) * 2
    }

    /// Records one latency, answered while `in_flight` requests were admitted; at a window's
    /// end, returns the next limit (when `adaptive`).
    pub fn record(
        &self,
        latency: Duration,
        in_flight: usize,
        now: Instant,
        target: Duration,
        adaptive: bool,
        limit: usize,
    ) -> Option<usize> {
        let us = micros(latency).max(1);
        self.peak.fetch_max(in_flight as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.min_us.fetch_min(us, Ordering::Relaxed);
        let now_us = micros(now.saturating_duration_since(self.epoch));
        if now_us < self.window_end_us.load(Ordering::Relaxed) {
            return None;
        }
        let mut control = self.control.try_lock().ok()?;
        if now_us < self.window_end_us.load(Ordering::Relaxed)
            || self.count.load(Ordering::Relaxed) < MIN_SAMPLES
        {
            return None;
        }
        let count = self.count.swap(0, Ordering::Relaxed).max(1);
        let mean = self.sum_us.swap(0, Ordering::Relaxed) / count;
        let window_min = self.min_us.swap(u64::MAX, Ordering::Relaxed);
        let saturated = self.saturated.swap(false, Ordering::Relaxed);
        let peak = self.peak.swap(0, Ordering::Relaxed);
        self.window_end_us
            .store(now_us + micros(WINDOW), Ordering::Relaxed);
        self.typical_us.store(mean.max(1), Ordering::Relaxed);

        let period_ended = now_us >= control.period_end_us;
        if period_ended {
            control.min_us = [u64::MAX, control.min_us[0]];
            control.period_end_us = now_us + micros(PERIOD);
        }
        control.min_us[0] = control.min_us[0].min(window_min);
        if !adaptive {
            return None;
        }
        let current = limit as f64;
        let next = if period_ended && saturated {
            current / 2.0
        } else {
            let base = control.min_us[0].min(control.min_us[1]);
            next_limit(current, base, mean, micros(target), saturated, peak as f64)
        };
        Some(next.round().clamp(MIN_LIMIT, MAX_LIMIT) as usize)
    }
}

/// One window's step: shrink in proportion to the queueing beyond the target (at most by half);
/// when latency is within it and the limit held requests back, grow in proportion to the room
/// left under it (at most double) plus the square root; else drift down towards twice the `peak`
/// in flight.
fn next_limit(
    current: f64,
    base_us: u64,
    mean_us: u64,
    target_us: u64,
    saturated: bool,
    peak: f64,
) -> f64 {
    let allowed = base_us.saturating_add(target_us) as f64;
    let gradient = (allowed / mean_us.max(1) as f64).clamp(0.5, 2.0);
    if gradient < 1.0 {
        current * gradient
    } else if saturated {
        current * gradient + current.sqrt()
    } else {
        (2.0 * peak).max(IDLE_LIMIT).max(current * 0.9).min(current)
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_shrinks_with_queueing_beyond_the_target_and_grows_only_when_reached() {
        // 20 ms base, 5 ms target: a 50 ms mean halves the limit (at most), 30 ms shrinks it
        // to 25/30 of itself.
        assert_eq!(next_limit(100.0, 20_000, 50_000, 5_000, true, 100.0), 50.0);
        let shrunk = next_limit(60.0, 20_000, 30_000, 5_000, true, 60.0);
        assert!((shrunk - 50.0).abs() < 1e-9, "{shrunk}");
        // Within the target: grows if requests were held back, by the room left and the square
        // root (25/25: just the root; 25/20: a quarter more and the root)…
        assert_eq!(next_limit(100.0, 20_000, 25_000, 5_000, true, 100.0), 110.0);
        assert_eq!(next_limit(100.0, 20_000, 20_000, 5_000, true, 100.0), 135.0);
        // …else drifts down by a tenth at most, to twice the peak, not below 16.
        assert_eq!(next_limit(100.0, 20_000, 24_000, 5_000, false, 7.0), 90.0);
        assert_eq!(next_limit(20.0, 20_000, 24_000, 5_000, false, 7.0), 18.0);
        assert_eq!(next_limit(17.0, 20_000, 24_000, 5_000, false, 2.0), 16.0);
        assert_eq!(next_limit(50.0, 20_000, 24_000, 5_000, false, 40.0), 50.0);
    }

    #[test]
    fn a_window_needs_its_time_and_samples_and_then_gives_a_limit() {
        let start = Instant::now();
        let l = Latency::new(start);
        let target = Duration::from_millis(5);
        let ms = Duration::from_millis;
        // Inside the first window: nothing.
        assert_eq!(
            l.record(ms(20), 100, start + ms(10), target, true, 100),
            None
        );
        // After it, but too few samples.
        assert_eq!(
            l.record(ms(20), 100, start + ms(150), target, true, 100),
            None
        );
        for _ in 0..5 {
            assert_eq!(
                l.record(ms(20), 100, start + ms(150), target, true, 100),
                None
            );
        }
        l.saturated();
        // The eighth sample ends the window: 20 ms mean at a 20 ms base, saturated: grows by a
        // quarter and the root.
        assert_eq!(
            l.record(ms(20), 100, start + ms(150), target, true, 100),
            Some(135)
        );
        assert_eq!(l.queue_capacity(100, ms(40)), 200);
        assert_eq!(l.queue_capacity(100, ms(80)), 400);
        // The next window sees 60 ms against the 20 ms base: halved.
        for _ in 0..7 {
            assert_eq!(
                l.record(ms(60), 110, start + ms(300), target, true, 110),
                None
            );
        }
        assert_eq!(
            l.record(ms(60), 110, start + ms(300), target, true, 110),
            Some(55)
        );
        assert_eq!(l.typical_us.load(Ordering::Relaxed), 60_000);
        // A fixed limit learns the latency but is left alone.
        for _ in 0..7 {
            assert_eq!(
                l.record(ms(30), 10, start + ms(450), target, false, 10),
                None
            );
        }
        assert_eq!(
            l.record(ms(30), 10, start + ms(450), target, false, 10),
            None
        );
        assert_eq!(l.typical_us.load(Ordering::Relaxed), 30_000);
    }

    #[test]
    fn the_queue_holds_what_the_limit_serves_within_the_target() {
        let l = Latency::new(Instant::now());
        assert_eq!(l.queue_capacity(20, Duration::from_millis(50)), 40);
        l.typical_us.store(20_000, Ordering::Relaxed);
        assert_eq!(l.queue_capacity(20, Duration::from_millis(50)), 50);
        assert_eq!(l.queue_capacity(20, Duration::from_millis(1)), 40);
        assert_eq!(
            l.max_wait(Duration::from_millis(5)),
            Duration::from_millis(40)
        );
        assert_eq!(
            l.max_wait(Duration::from_millis(50)),
            Duration::from_millis(100)
        );
    }
}

//! The adaptive concurrency limit (`max_in_flight = 0`), in the spirit of Envoy's adaptive
//! concurrency filter and Netflix's concurrency-limits "gradient": latency above the lowest
//! recently seen is queueing, and while the limit binds (requests held back, or more than three
//! quarters of it in use) it shrinks in proportion when that queueing exceeds
//! `target_queue_delay`. While latency stays within it and the limit holds requests back, the
//! limit grows in proportion to the room left (at most double) plus its square root per window.
//! While it holds nobody back it drifts down (by a tenth per window at most) to twice the most
//! requests seen in flight, so that overload, when it comes, meets a limit near what the
//! upstreams were really doing rather than one far above it that lets a flood into their queues.
//!
//! Latencies are gathered per window of at least 100 ms (and a few samples) in two atomics, so
//! a request's sample costs two atomic updates; whoever finishes a window computes the next
//! limit under a `try_lock`, and nobody waits for it.
//!
//! The latency without queueing is the lowest window mean over the current and the previous
//! 30 s period (means, so that one fast answer among slow ones does not pass for it). Under
//! sustained overload a period's lowest mean could itself include queueing and ratchet the
//! limit upwards; so at each period's end a limit that was being reached is halved (it grows
//! back within a few windows), which lets the upstream's queue drain and shows its latency
//! without one.

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

/// Samples and their sum share one atomic (`COUNT_ONE` per sample, µs below it), so a window
/// is taken whole: count and sum always describe the same samples.
const COUNT_ONE: u64 = 1 << 40;
/// A sample counts for at most this long (µs): 2^40 µs of sum hold 110,000 such samples, more
/// than the largest limit lets finish in one window.
const MAX_SAMPLE_US: u64 = 10_000_000;

pub struct Latency {
    /// What the window times count from.
    epoch: Instant,
    /// This window's samples: count × `COUNT_ONE` + sum of µs.
    samples: AtomicU64,
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
    /// The lowest window mean of this period and of the previous one (µs): the latency without
    /// queueing. Means, not single requests: one fast answer (a 404, a cached one) among slow
    /// ones says nothing about how long the slow ones take without a queue.
    min_us: [u64; 2],
    period_end_us: u64,
}

impl Latency {
    pub fn new(now: Instant) -> Latency {
        Latency {
            epoch: now,
            samples: AtomicU64::new(0),
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
        self.samples.store(0, Ordering::Relaxed);
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
        let us = micros(latency).clamp(1, MAX_SAMPLE_US);
        self.peak.fetch_max(in_flight as u64, Ordering::Relaxed);
        self.samples.fetch_add(COUNT_ONE + us, Ordering::Relaxed);
        let now_us = micros(now.saturating_duration_since(self.epoch));
        if now_us < self.window_end_us.load(Ordering::Relaxed) {
            return None;
        }
        let mut control = self.control.try_lock().ok()?;
        if now_us < self.window_end_us.load(Ordering::Relaxed)
            || self.samples.load(Ordering::Relaxed) / COUNT_ONE < MIN_SAMPLES
        {
            return None;
        }
        let samples = self.samples.swap(0, Ordering::Relaxed);
        let count = (samples / COUNT_ONE).max(1);
        let mean = (samples % COUNT_ONE) / count;
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
        control.min_us[0] = control.min_us[0].min(mean.max(1));
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

/// One window's step: while the limit binds (requests were held back, or more than three
/// quarters of it were in use), shrink in proportion to the queueing beyond the target (at most
/// by half); when latency is within it and the limit held requests back, grow in proportion to
/// the room left under it (at most double) plus the square root; else drift down towards twice
/// the `peak` in flight.
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
    // Latency above the allowed says the limit is too high only if the limit is what the
    // upstreams see: with most places free, the latency is the upstreams' own.
    let binding = saturated || peak * 4.0 > current * 3.0;
    if gradient < 1.0 && binding {
        current * gradient
    } else if gradient >= 1.0 && saturated {
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
        // The same latency with most places free is the upstream's own: no shrinking, only the
        // drift towards twice the peak.
        assert_eq!(next_limit(100.0, 20_000, 50_000, 5_000, false, 10.0), 90.0);
        assert_eq!(next_limit(100.0, 20_000, 50_000, 5_000, false, 80.0), 50.0);
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

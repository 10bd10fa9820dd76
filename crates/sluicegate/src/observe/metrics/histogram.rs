//! A latency histogram with fixed buckets, updated with two relaxed atomic adds.
//!
//! Observations are taken in whole nanoseconds and compared with bucket bounds rounded to whole
//! nanoseconds, so an observation equal to a bound always lands in that bound's bucket (no
//! `0.1 + 0.2` surprises) and `le` labels print as exact decimals.
//!
//! The sum is an `AtomicU64` of whole microseconds rather than the bits of an `f64` updated by
//! compare-and-swap: one `fetch_add` never retries under contention (a CAS loop retries once per
//! worker racing it), and it does not drift with rounding error. Microseconds rather than
//! nanoseconds because of range: a `u64` of nanoseconds holds 584 years of summed latency, which
//! a gateway doing 100 000 requests per second of 10 ms each fills in 7 months, and a wrapping
//! sum reads as a counter reset. In microseconds that is 584 years of such traffic; each
//! observation is rounded to the nearest microsecond, far finer than a proxy's latency noise.
//!
//! Buckets are stored per bucket (not cumulative) so an observation touches one of them; the
//! scrape adds them up. `_count` is the sum of all buckets rather than a third counter, so it
//! always equals the `+Inf` bucket.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Bucket bounds in seconds for request latency through a proxy: sub-millisecond for cached or
/// local answers up to 10 s for slow upstreams.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Larger observations are recorded as this (about 104 days): it keeps one absurd value, or
/// `+Inf`, from wrapping the sum. Bounds above it are dropped.
const MAX_NANOS: u64 = 1 << 53;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Request latency (or any duration) in fixed buckets. A clone is the same histogram.
#[derive(Clone)]
pub struct Histogram(Arc<Core>);

struct Core {
    /// Upper bounds in nanoseconds, strictly increasing.
    bounds: Box<[u64]>,
    /// `bounds.len() + 2` cells: one per bound, then the `+Inf` bucket, then the sum in
    /// microseconds. Kept in one block, away from `bounds`, which every observation reads: writes
    /// to the counts do not invalidate the line holding the bounds.
    cells: Box<[AtomicU64]>,
}

impl Histogram {
    /// A histogram with the given upper bounds, in seconds, belonging to no registry.
    ///
    /// Bounds are rounded to whole nanoseconds, sorted and de-duplicated; negative, non-finite
    /// and over-large ones are dropped (the `+Inf` bucket is always there).
    pub fn new(upper_bounds: &[f64]) -> Self {
        let mut bounds: Vec<u64> = upper_bounds
            .iter()
            .filter(|b| b.is_finite() && **b >= 0.0)
            .map(|b| seconds_to_nanos(*b))
            .filter(|ns| *ns < MAX_NANOS)
            .collect();
        bounds.sort_unstable();
        bounds.dedup();
        let cells = (0..bounds.len() + 2).map(|_| AtomicU64::new(0)).collect();
        Self(Arc::new(Core {
            bounds: bounds.into_boxed_slice(),
            cells,
        }))
    }

    /// Records one observation in seconds. Negative values and NaN are recorded as 0.
    #[inline]
    pub fn observe(&self, seconds: f64) {
        self.observe_nanos(seconds_to_nanos(seconds));
    }

    /// Records one observation.
    #[inline]
    pub fn observe_duration(&self, d: Duration) {
        self.observe_nanos(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    #[inline]
    fn observe_nanos(&self, ns: u64) {
        let ns = ns.min(MAX_NANOS);
        let core = &*self.0;
        // First bound >= ns (the Prometheus bucket is `value <= le`); `bounds.len()` means `+Inf`.
        let bucket = core.bounds.partition_point(|b| *b < ns);
        let sum = core.bounds.len() + 1;
        // Relaxed: see the memory-ordering note in `handles.rs`. Both indices are in range by
        // construction; `get` keeps a broken invariant from ever panicking on the request path.
        if let Some(c) = core.cells.get(bucket) {
            c.fetch_add(1, Relaxed);
        }
        if let Some(c) = core.cells.get(sum) {
            c.fetch_add((ns + 500) / 1000, Relaxed);
        }
    }

    /// The histogram's counts now, cumulative as Prometheus shows them.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let core = &*self.0;
        let n = core.bounds.len();
        let mut cumulative = Vec::with_capacity(n + 1);
        let mut running = 0u64;
        for c in &core.cells[..=n] {
            running = running.wrapping_add(c.load(Relaxed));
            cumulative.push(running);
        }
        HistogramSnapshot {
            upper_bounds_nanos: core.bounds.to_vec(),
            cumulative,
            sum_micros: core.cells[n + 1].load(Relaxed),
        }
    }

    pub(super) fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.snapshot();
        f.debug_struct("Histogram")
            .field("count", &s.count())
            .field("sum_seconds", &s.sum_seconds())
            .finish()
    }
}

/// A histogram read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Upper bounds in nanoseconds, strictly increasing (without `+Inf`).
    pub upper_bounds_nanos: Vec<u64>,
    /// Observations `<=` each bound, then the total (the `+Inf` bucket): one longer than the
    /// bounds.
    pub cumulative: Vec<u64>,
    /// Sum of all observations in microseconds (each rounded to the nearest).
    pub sum_micros: u64,
}

impl HistogramSnapshot {
    /// All observations.
    pub fn count(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_micros as f64 / 1e6
    }
}

/// Rounds to the nearest nanosecond; negative and NaN give 0, huge and `+Inf` saturate (the
/// caller caps). `as` from float saturates and maps NaN to 0, so this needs no branch.
#[inline]
fn seconds_to_nanos(seconds: f64) -> u64 {
    (seconds * NANOS_PER_SEC as f64 + 0.5) as u64
}

/// Writes `units / 10^scale` as an exact decimal: `(1500, 3)` gives `1.5`, `(500_000, 9)` gives
/// `0.0005`, `(10, 0)` gives `10`.
pub(super) fn write_decimal(out: &mut String, units: u64, scale: u32) {
    use std::fmt::Write;
    let div = 10u64.pow(scale);
    let whole = units / div;
    let frac = units % div;
    // Writing to a String cannot fail.
    if frac == 0 {
        let _ = write!(out, "{whole}");
    } else {
        let digits = format!("{frac:0width$}", width = scale as usize);
        let _ = write!(out, "{whole}.{}", digits.trim_end_matches('0'));
    }
}

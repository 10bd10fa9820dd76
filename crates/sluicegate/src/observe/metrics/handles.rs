//! The handles the request path holds: counters and gauges, each an `Arc` around atomics.
//!
//! A clone is the same series (the same atomics), so a handle made at build time can be copied
//! into every worker. Updates are single relaxed read-modify-write operations: no lock, no
//! allocation.
//!
//! Memory ordering: every update and read is `Relaxed`. A metric value publishes no other memory
//! (nobody reads a counter and then trusts some other data to be written), so the only property
//! needed is that no increment is lost, which any atomic read-modify-write gives whatever its
//! ordering. A scrape may therefore see two related series (say a histogram's bucket and its sum)
//! from slightly different moments; Prometheus tolerates that, as do the official clients.

use std::fmt;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Keeps a hot atomic on cache lines of its own.
///
/// Handles are small separate allocations, which the allocator packs next to each other: without
/// padding, two counters bumped by different workers (say, two endpoints' attempt counters) would
/// share a line and bounce it between cores. 128 bytes on x86-64 and aarch64, where the
/// adjacent-line prefetcher pulls lines in pairs (as `crossbeam_utils::CachePadded` does); 64
/// elsewhere.
#[cfg_attr(any(target_arch = "x86_64", target_arch = "aarch64"), repr(align(128)))]
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    repr(align(64))
)]
#[derive(Default)]
pub(super) struct Padded<T>(pub(super) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// A monotonically increasing count. Wraps at `u64::MAX`, which no gateway reaches.
#[derive(Clone, Default)]
pub struct Counter(pub(super) Arc<Padded<AtomicU64>>);

impl Counter {
    /// A counter that belongs to no registry (for tests, or a metric that is switched off).
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }

    pub(super) fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl fmt::Debug for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Counter").field(&self.get()).finish()
    }
}

/// A value that goes up and down, such as connections open now.
#[derive(Clone, Default)]
pub struct Gauge(pub(super) Arc<Padded<AtomicI64>>);

impl Gauge {
    /// A gauge that belongs to no registry.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn set(&self, v: i64) {
        self.0.store(v, Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Relaxed);
    }

    #[inline]
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Relaxed)
    }

    pub(super) fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl fmt::Debug for Gauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Gauge").field(&self.get()).finish()
    }
}

/// A gauge holding a fraction or ratio (SLO budget, burn rate), stored as the bits of an `f64`.
///
/// Meant to be set by a periodic task, not bumped per request: `set` is one store, but `add` is a
/// compare-and-swap loop.
#[derive(Clone)]
pub struct FloatGauge(pub(super) Arc<Padded<AtomicU64>>);

impl Default for FloatGauge {
    fn default() -> Self {
        // 0.0 is all-zero bits, but say so rather than rely on it.
        Self(Arc::new(Padded(AtomicU64::new(0.0f64.to_bits()))))
    }
}

impl FloatGauge {
    /// A gauge that belongs to no registry.
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed);
    }

    pub fn add(&self, d: f64) {
        // The closure always returns Some, so fetch_update cannot fail.
        let _ = self.0.fetch_update(Relaxed, Relaxed, |bits| {
            Some((f64::from_bits(bits) + d).to_bits())
        });
    }

    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }

    pub(super) fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl fmt::Debug for FloatGauge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FloatGauge").field(&self.get()).finish()
    }
}

/// A gauge computed at scrape time, e.g. `move || endpoint.in_flight() as i64`.
///
/// It runs on the scraping thread, outside the registry's lock; it must be cheap and must not
/// block.
pub type GaugeFn = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A counter read at scrape time from a count kept elsewhere; same rules as [`GaugeFn`], and it
/// must never decrease.
pub type CounterFn = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A counter in fractional units (seconds of CPU) read at scrape time; same rules as
/// [`CounterFn`].
pub type FloatCounterFn = Arc<dyn Fn() -> f64 + Send + Sync>;

/// Codes 100..=599 each have a slot; everything else shares this last one.
const STATUS_SLOTS: usize = 500;
const OTHER_SLOT: usize = STATUS_SLOTS;

/// One counter per HTTP status code for one label set, indexed without a lock or a map.
///
/// Slot `code - 100` counts codes 100..=599; any other value (which `http::StatusCode` allows up
/// to 999, and which an upstream could send) lands in one shared slot rendered as
/// `code="other"`, so nothing is lost and the series count stays bounded. 501 slots of 8 bytes:
/// 4 KiB per label set, one allocation.
#[derive(Clone)]
pub struct StatusCounters(pub(super) Arc<[AtomicU64; STATUS_SLOTS + 1]>);

impl Default for StatusCounters {
    fn default() -> Self {
        Self(Arc::new(std::array::from_fn(|_| AtomicU64::new(0))))
    }
}

impl StatusCounters {
    /// Counters that belong to no registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counts one response with status `code` (`StatusCode::as_u16()`).
    #[inline]
    pub fn inc(&self, code: u16) {
        self.0[slot(code)].fetch_add(1, Relaxed);
    }

    #[inline]
    pub fn add(&self, code: u16, n: u64) {
        self.0[slot(code)].fetch_add(n, Relaxed);
    }

    /// The count for `code`; for a code outside 100..=599, the shared count of all such codes.
    pub fn get(&self, code: u16) -> u64 {
        self.0[slot(code)].load(Relaxed)
    }

    /// The sum over every code.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// Calls `f` with each code whose count is not zero, in ascending order, `None` standing for
    /// the codes outside 100..=599 (last).
    pub fn for_each_nonzero(&self, mut f: impl FnMut(Option<u16>, u64)) {
        for (i, c) in self.0.iter().enumerate() {
            let n = c.load(Relaxed);
            if n != 0 {
                // i < 500 here fits a u16 with room to spare.
                let code = (i < OTHER_SLOT).then(|| i as u16 + 100);
                f(code, n);
            }
        }
    }

    pub(super) fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

/// `code - 100`, or the shared slot; the `min` lets the compiler drop the bounds check.
#[inline]
fn slot(code: u16) -> usize {
    usize::from(code).wrapping_sub(100).min(OTHER_SLOT)
}

impl fmt::Debug for StatusCounters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        self.for_each_nonzero(|code, n| {
            m.entry(&code, &n);
        });
        m.finish()
    }
}

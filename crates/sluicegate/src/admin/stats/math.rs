//! The arithmetic of windowed route statistics: histogram increases across restarts, rates,
//! ratios and quantiles from histogram buckets. Pure functions over readings, so that each rule is tested
//! against numbers worked out by hand.

use std::time::Duration;

use crate::observe::metrics::HistogramSnapshot;

/// `count` events over `span`, per second; 0 over an empty span rather than a NaN or infinity
/// that JSON cannot carry.
pub fn per_second(count: u64, span: Duration) -> f64 {
    let seconds = span.as_secs_f64();
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// `part / whole`, or `None` when there was nothing to divide (no requests: no error ratio).
pub fn ratio(part: u64, whole: u64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// The observations a histogram gained from `old` to `new`, cumulative per bucket as
/// [`HistogramSnapshot`] holds them (one more than the bounds: the last is the total).
///
/// Each bucket's own count only grows, so any bucket that shrank (or bounds that changed, or no
/// older reading) means the histogram restarted, and everything `new` holds is the increase.
pub fn histogram_increase(old: Option<&HistogramSnapshot>, new: &HistogramSnapshot) -> Vec<u64> {
    let Some(old) = old.filter(|o| {
        o.upper_bounds_nanos == new.upper_bounds_nanos && o.cumulative.len() == new.cumulative.len()
    }) else {
        return new.cumulative.clone();
    };
    let own = |cumulative: &[u64], i: usize| {
        let below = if i == 0 { 0 } else { cumulative[i - 1] };
        cumulative[i].saturating_sub(below)
    };
    let restarted =
        (0..new.cumulative.len()).any(|i| own(&new.cumulative, i) < own(&old.cumulative, i));
    if restarted {
        return new.cumulative.clone();
    }
    new.cumulative
        .iter()
        .zip(&old.cumulative)
        .map(|(n, o)| n.saturating_sub(*o))
        .collect()
}

/// Adds one interval's bucket increases (from [`histogram_increase`]) into `total`.
pub fn add_buckets(total: &mut Vec<u64>, more: &[u64]) {
    if total.len() != more.len() {
        // Bounds changed within the window (they never do today): keep the newer histogram.
        total.clear();
        total.extend_from_slice(more);
        return;
    }
    for (t, m) in total.iter_mut().zip(more) {
        *t = t.saturating_add(*m);
    }
}

/// The `q` quantile (0..=1) in seconds of observations counted `cumulative` per bucket (the last
/// entry the total) under `upper_bounds_nanos`, by linear interpolation inside the bucket that
/// holds it, as Prometheus's `histogram_quantile` does: the lowest bucket starts at 0, and a
/// quantile falling in the `+Inf` bucket is answered with the highest finite bound. `None` with
/// no observations, or without a finite bound to interpolate between.
pub fn quantile(q: f64, upper_bounds_nanos: &[u64], cumulative: &[u64]) -> Option<f64> {
    let total = *cumulative.last()?;
    if total == 0 || upper_bounds_nanos.is_empty() || !(0.0..=1.0).contains(&q) {
        return None;
    }
    let rank = q * total as f64;
    // The first bucket whose cumulative count reaches the rank; `cumulative` never decreases,
    // since each entry is a sum of the ones before it and a count of its own.
    let bucket = cumulative.partition_point(|c| (*c as f64) < rank);
    let Some(&upper) = upper_bounds_nanos.get(bucket) else {
        return upper_bounds_nanos.last().map(|b| *b as f64 / 1e9);
    };
    let (lower, below) = match bucket.checked_sub(1) {
        Some(i) => (upper_bounds_nanos[i], cumulative[i]),
        None => (0, 0),
    };
    let inside = cumulative[bucket].saturating_sub(below);
    if inside == 0 {
        return Some(upper as f64 / 1e9);
    }
    let fraction = (rank - below as f64) / inside as f64;
    let nanos = lower as f64 + (upper - lower) as f64 * fraction;
    Some(nanos / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(bounds_ms: &[u64], cumulative: &[u64]) -> HistogramSnapshot {
        HistogramSnapshot {
            upper_bounds_nanos: bounds_ms.iter().map(|ms| ms * 1_000_000).collect(),
            cumulative: cumulative.to_vec(),
            sum_micros: 0,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn rates_are_per_second_and_an_empty_span_gives_zero() {
        assert!(close(per_second(30, Duration::from_secs(60)), 0.5));
        assert!(close(per_second(5, Duration::from_millis(500)), 10.0));
        assert_eq!(per_second(5, Duration::ZERO), 0.0);
    }

    #[test]
    fn a_ratio_of_nothing_is_none() {
        assert_eq!(ratio(0, 0), None);
        assert_eq!(ratio(1, 4), Some(0.25));
    }

    #[test]
    fn histogram_increase_subtracts_bucket_by_bucket() {
        let old = snapshot(&[10, 100], &[2, 5, 6]);
        let new = snapshot(&[10, 100], &[4, 9, 12]);
        assert_eq!(histogram_increase(Some(&old), &new), vec![2, 4, 6]);
        assert_eq!(histogram_increase(None, &new), vec![4, 9, 12]);
    }

    #[test]
    fn a_histogram_bucket_that_shrank_means_a_restart() {
        // The total grew, but the first bucket's own count fell from 5 to 1.
        let old = snapshot(&[10, 100], &[5, 5, 5]);
        let new = snapshot(&[10, 100], &[1, 8, 9]);
        assert_eq!(histogram_increase(Some(&old), &new), vec![1, 8, 9]);
        let other_bounds = snapshot(&[20, 100], &[0, 0, 1]);
        assert_eq!(histogram_increase(Some(&old), &other_bounds), vec![0, 0, 1]);
    }

    #[test]
    fn buckets_add_up_and_changed_bounds_keep_the_newer() {
        let mut total = vec![1, 2, 3];
        add_buckets(&mut total, &[1, 1, 1]);
        assert_eq!(total, vec![2, 3, 4]);
        add_buckets(&mut total, &[5, 5]);
        assert_eq!(total, vec![5, 5]);
    }

    #[test]
    fn quantile_interpolates_inside_the_bucket_like_histogram_quantile() {
        // Buckets le=0.1 s: 50, le=0.2 s: 90 (40 of their own), le=0.4 s: 100, +Inf: 100.
        let bounds = [100, 200, 400];
        let cumulative = [50, 90, 100, 100];
        let b: Vec<u64> = bounds.iter().map(|ms| ms * 1_000_000).collect();
        // Median: rank 50 is the top of the first bucket.
        assert!(close(quantile(0.5, &b, &cumulative).unwrap(), 0.1));
        // p75: rank 75, 25 into the 40 of (0.1, 0.2]: 0.1 + 0.1 * 25/40.
        assert!(close(quantile(0.75, &b, &cumulative).unwrap(), 0.1625));
        // p99: rank 99, 9 into the 10 of (0.2, 0.4]: 0.2 + 0.2 * 9/10.
        assert!(close(quantile(0.99, &b, &cumulative).unwrap(), 0.38));
        // p10 in the first bucket interpolates from 0: 0.1 * 10/50.
        assert!(close(quantile(0.1, &b, &cumulative).unwrap(), 0.02));
    }

    #[test]
    fn quantile_in_the_inf_bucket_is_the_highest_bound() {
        let b = [1_000_000_000, 2_000_000_000];
        assert!(close(quantile(0.99, &b, &[10, 10, 20]).unwrap(), 2.0));
    }

    #[test]
    fn quantile_of_nothing_is_none() {
        assert_eq!(quantile(0.99, &[1_000], &[0, 0]), None);
        assert_eq!(quantile(0.99, &[], &[5]), None);
        assert_eq!(quantile(0.99, &[1_000], &[]), None);
        assert_eq!(quantile(f64::NAN, &[1_000], &[1, 1]), None);
    }

    #[test]
    fn quantile_against_the_gateway_latency_buckets() {
        use crate::observe::metrics::{Histogram, LATENCY_BUCKETS};
        let h = Histogram::new(LATENCY_BUCKETS);
        // 98 fast requests (1.5 ms, bucket le=2.5 ms) and 2 slow ones (300 ms, le=0.5 s).
        for _ in 0..98 {
            h.observe(0.0015);
        }
        h.observe(0.3);
        h.observe(0.3);
        let s = h.snapshot();
        // Rank 99 is the first of the 2 in (0.25, 0.5]: 0.25 + 0.25 * 1/2.
        assert!(close(
            quantile(0.99, &s.upper_bounds_nanos, &s.cumulative).unwrap(),
            0.375
        ));
        // Rank 50 is 50 of the 98 in (0.001, 0.0025].
        assert!(close(
            quantile(0.5, &s.upper_bounds_nanos, &s.cumulative).unwrap(),
            0.001 + 0.0015 * 50.0 / 98.0
        ));
    }
}

//! Per-route request rate, error ratio and p99 latency over the last minutes, for the dashboard
//! and `GET /api/v1/routes/stats`, computed from the gateway's own counters.
//!
//! Owns a bounded ring of [`Sample`]s that a task on the admin side fills every
//! [`SAMPLE_INTERVAL`] by reading each route's `sluicegate_http_requests_total` and
//! `sluicegate_http_request_duration_seconds` handles; the request path does no work for it.
//! A query reads the counters once more, live, as its newest point, so its numbers are current
//! to the moment and a gateway younger than the window answers over what it has. Rates, error
//! ratios and quantiles are differences between readings ([`math`]); a counter that went down
//! restarted. Routes are known by name and service: one a reload adds starts from zero, one it
//! removes is no longer reported, and one whose service changed starts again.
//!
//! Leaves the counting itself to the pipeline and the metric handles to `observe::metrics`.

mod math;
mod sample;
mod window;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::gateway::Gateway;
pub use sample::Sample;
pub use window::{parse_window, QueryError};

use sample::{Counts, RouteReading};

/// How often the sampler reads the counters: the resolution of the sparklines, and the
/// shortest window worth asking for.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// How far back samples go: the longest window.
pub const RETENTION: Duration = Duration::from_secs(300);

/// Samples kept: one per interval over the retention, one more so that a window as long as the
/// retention still has a reading at or before its start, and one for timer lateness.
const CAPACITY: usize = (RETENTION.as_secs() / SAMPLE_INTERVAL.as_secs()) as usize + 2;

/// The quantile of latency reported.
const LATENCY_QUANTILE: f64 = 0.99;

/// The ring of samples. A `std` mutex: it is held for a push or for the arithmetic of one
/// query (microseconds, no `.await`), only by the sampler and admin handlers.
#[derive(Default)]
pub struct RouteStats {
    samples: Mutex<VecDeque<Sample>>,
}

/// `GET /api/v1/routes/stats`'s answer.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The window asked for.
    pub window_seconds: f64,
    /// The time the numbers cover: the window, up to one sample interval more (the first
    /// reading is the last one at or before the window's start), or less while the gateway is
    /// younger than the window.
    pub span_seconds: f64,
    pub sample_interval_seconds: f64,
    /// In the config's order.
    pub routes: Vec<RouteWindow>,
}

/// One route over the window.
#[derive(Debug, Serialize)]
pub struct RouteWindow {
    pub name: String,
    pub service: String,
    /// Responses counted in the span (clients that left count, as status 499).
    pub requests: u64,
    /// 5xx responses among them.
    pub errors: u64,
    pub requests_per_second: f64,
    /// `errors / requests`; null without requests.
    pub error_ratio: Option<f64>,
    /// Interpolated from the latency histogram's buckets; null without requests.
    pub p99_seconds: Option<f64>,
    /// One point per sample interval, oldest first, for sparklines.
    pub series: Vec<Point>,
}

/// One interval between two readings.
#[derive(Debug, Serialize)]
pub struct Point {
    /// How long before the query the interval ended (0 for the live one).
    pub seconds_ago: f64,
    pub requests_per_second: f64,
    pub error_ratio: Option<f64>,
    pub p99_seconds: Option<f64>,
}

impl RouteStats {
    /// Stores `sample`, dropping the oldest beyond [`CAPACITY`].
    pub fn record(&self, sample: Sample) {
        let mut samples = self.lock();
        while samples.len() >= CAPACITY {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    /// Each route of `live` (the counters read now) over `window` ending at `live.at`.
    pub fn report(&self, live: &Sample, window: Duration) -> Report {
        let samples = self.lock();
        let points = points(&samples, live, window);
        let indices: Vec<_> = points.iter().map(|p| p.index()).collect();
        let span = points.first().map_or(Duration::ZERO, |first| {
            live.at.saturating_duration_since(first.at)
        });
        let routes = live
            .routes
            .iter()
            .map(|route| route_window(route, &points, &indices, live.at, span))
            .collect();
        Report {
            window_seconds: window.as_secs_f64(),
            span_seconds: span.as_secs_f64(),
            sample_interval_seconds: SAMPLE_INTERVAL.as_secs_f64(),
            routes,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        // Every change under the lock is one push or pop: a panic elsewhere cannot leave it
        // half-done.
        self.samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The readings a window is computed over, oldest first, ending with `live`: the newest stored
/// sample at or before the window's start (so the window is covered whole), or the oldest one
/// when the gateway is younger than the window, then every later one.
///
/// A stored sample less than half an interval before `live` is left out, its interval merged
/// into the live one: over a few milliseconds one request would read as a spike of hundreds
/// per second on the sparkline.
fn points<'a>(stored: &'a VecDeque<Sample>, live: &'a Sample, window: Duration) -> Vec<&'a Sample> {
    let first = live
        .at
        .checked_sub(window)
        .and_then(|start| stored.iter().rposition(|s| s.at <= start))
        .unwrap_or(0);
    let mut points: Vec<&Sample> = stored
        .iter()
        .skip(first)
        .filter(|s| s.at <= live.at)
        .collect();
    if points.len() >= 2
        && points
            .last()
            .is_some_and(|last| live.at.saturating_duration_since(last.at) < SAMPLE_INTERVAL / 2)
    {
        points.pop();
    }
    points.push(live);
    points
}

/// `route` (read live) over the intervals between `points`, summing each interval's increase so
/// that a restart inside the window loses only the counts before it.
fn route_window(
    route: &RouteReading,
    points: &[&Sample],
    indices: &[std::collections::HashMap<&str, &RouteReading>],
    now: Instant,
    span: Duration,
) -> RouteWindow {
    // The route as it is now: an earlier reading under another service is another route.
    let find = |i: usize| {
        indices
            .get(i)
            .and_then(|index| index.get(&*route.name))
            .filter(|r| r.service == route.service)
            .copied()
    };
    let mut total = Counts::default();
    let mut buckets: Vec<u64> = Vec::new();
    let mut series = Vec::with_capacity(points.len().saturating_sub(1));
    for (i, pair) in points.windows(2).enumerate() {
        let [before, after] = pair else { continue };
        let interval = after.at.saturating_duration_since(before.at);
        let (counts, increase) = match (find(i), find(i + 1)) {
            (old, Some(new)) => (
                interval_counts(old, new),
                math::histogram_increase(old.map(|o| &o.latency), &new.latency),
            ),
            // Not there yet at the end of this interval: nothing counted.
            (_, None) => (Counts::default(), Vec::new()),
        };
        total.add(counts);
        if !increase.is_empty() {
            math::add_buckets(&mut buckets, &increase);
        }
        series.push(Point {
            seconds_ago: now.saturating_duration_since(after.at).as_secs_f64(),
            requests_per_second: math::per_second(counts.requests, interval),
            error_ratio: math::ratio(counts.errors, counts.requests),
            p99_seconds: p99(route, &increase, counts),
        });
    }
    RouteWindow {
        name: route.name.to_string(),
        service: route.service.to_string(),
        requests: total.requests,
        errors: total.errors,
        requests_per_second: math::per_second(total.requests, span),
        error_ratio: math::ratio(total.errors, total.requests),
        p99_seconds: p99(route, &buckets, total),
        series,
    }
}

/// What `new`'s listeners counted since `old`, each listener's series on its own.
fn interval_counts(old: Option<&RouteReading>, new: &RouteReading) -> Counts {
    let mut counts = Counts::default();
    for (listener, now) in &new.listeners {
        let before = old.and_then(|o| {
            o.listeners
                .iter()
                .find(|(l, _)| l == listener)
                .map(|(_, c)| *c)
        });
        counts.add(now.since(before));
    }
    counts
}

/// The p99 of `buckets` (cumulative increases under the route's bounds); null when no request
/// was counted, even if the histogram moved (a request counted just after its status).
fn p99(route: &RouteReading, buckets: &[u64], counts: Counts) -> Option<f64> {
    if counts.requests == 0 {
        return None;
    }
    math::quantile(LATENCY_QUANTILE, &route.latency.upper_bounds_nanos, buckets)
}

/// Samples `gateway`'s routes every [`SAMPLE_INTERVAL`] into `stats`, from one interval after
/// it is called (the caller records the first sample itself, before anyone can ask), for as
/// long as the gateway lives.
pub async fn run_sampler(stats: Arc<RouteStats>, gateway: Weak<Gateway>) {
    let start = tokio::time::Instant::now() + SAMPLE_INTERVAL;
    let mut tick = tokio::time::interval_at(start, SAMPLE_INTERVAL);
    // After a stall (a suspended process), carry on at the interval rather than in a burst of
    // samples a few microseconds apart.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        stats.record(read(&gateway));
    }
}

/// Every route's counters now.
pub fn read(gateway: &Gateway) -> Sample {
    Sample::read(&gateway.shared.snapshot.load(), Instant::now())
}

#[cfg(test)]
mod tests;

//! The ring and the window arithmetic over hand-made readings.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sample::{Counts, RouteReading};
use super::*;
use crate::observe::metrics::HistogramSnapshot;

const BOUNDS: [u64; 2] = [100_000_000, 1_000_000_000];

/// A route read with `listeners` as (name, requests, errors) and the latency histogram's
/// cumulative counts under 0.1 s and 1 s.
fn route(
    name: &str,
    service: &str,
    listeners: &[(&str, u64, u64)],
    cumulative: [u64; 3],
) -> RouteReading {
    RouteReading {
        name: Arc::from(name),
        service: Arc::from(service),
        listeners: listeners
            .iter()
            .map(|(l, requests, errors)| {
                (
                    Arc::from(*l),
                    Counts {
                        requests: *requests,
                        errors: *errors,
                    },
                )
            })
            .collect(),
        latency: HistogramSnapshot {
            upper_bounds_nanos: BOUNDS.to_vec(),
            cumulative: cumulative.to_vec(),
            sum_micros: 0,
        },
    }
}

/// Route `r` on listener `public`, all requests under 0.1 s.
fn simple(requests: u64, errors: u64) -> RouteReading {
    route("r", "s", &[("public", requests, errors)], [requests; 3])
}

fn at(t0: Instant, seconds: f64) -> Instant {
    t0 + Duration::from_secs_f64(seconds)
}

fn sample(at: Instant, routes: Vec<RouteReading>) -> Sample {
    Sample { at, routes }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn a_young_gateway_answers_over_what_it_has_up_to_the_live_reading() {
    let t0 = Instant::now();
    let stats = RouteStats::default();
    stats.record(sample(t0, vec![simple(0, 0)]));
    stats.record(sample(at(t0, 5.0), vec![simple(10, 0)]));
    stats.record(sample(at(t0, 10.0), vec![simple(30, 3)]));
    let live = sample(at(t0, 12.0), vec![simple(36, 4)]);
    let report = stats.report(&live, Duration::from_secs(60));
    assert!(close(report.span_seconds, 12.0));
    let r = &report.routes[0];
    assert_eq!((r.name.as_str(), r.service.as_str()), ("r", "s"));
    assert_eq!((r.requests, r.errors), (36, 4));
    assert!(close(r.requests_per_second, 3.0));
    assert!(close(r.error_ratio.unwrap(), 4.0 / 36.0));
    // Every request was under 0.1 s: rank 35.64 of 36 in (0, 0.1].
    assert!(close(r.p99_seconds.unwrap(), 0.1 * 0.99));
    // The sample at 10 s is 2 s before the live reading, under half an interval: merged.
    assert_eq!(r.series.len(), 2);
    assert!(close(r.series[0].seconds_ago, 7.0));
    assert!(close(r.series[0].requests_per_second, 2.0));
    assert_eq!(r.series[0].error_ratio, Some(0.0));
    assert!(close(r.series[1].seconds_ago, 0.0));
    assert!(close(r.series[1].requests_per_second, 26.0 / 7.0));
    assert!(close(r.series[1].error_ratio.unwrap(), 4.0 / 26.0));
}

#[test]
fn the_window_starts_at_the_last_sample_at_or_before_it() {
    let t0 = Instant::now();
    let stats = RouteStats::default();
    for i in 0..=20u64 {
        // 2 requests per second, throughout.
        stats.record(sample(at(t0, i as f64 * 5.0), vec![simple(i * 10, 0)]));
    }
    let live = sample(at(t0, 103.0), vec![simple(206, 0)]);
    let report = stats.report(&live, Duration::from_secs(60));
    // Start 43 s: the sample at 40 s is the base.
    assert!(close(report.span_seconds, 63.0));
    let r = &report.routes[0];
    assert_eq!(r.requests, 126);
    assert!(close(r.requests_per_second, 2.0));
    assert_eq!(r.series.len(), 13);
    assert!(r.series.iter().all(|p| close(p.requests_per_second, 2.0)));
    assert_eq!(r.error_ratio, Some(0.0));
}

#[test]
fn a_restart_inside_the_window_loses_only_the_counts_before_it() {
    let t0 = Instant::now();
    let stats = RouteStats::default();
    stats.record(sample(t0, vec![simple(50, 10)]));
    stats.record(sample(at(t0, 5.0), vec![simple(80, 10)]));
    // Pruned and made again by reloads: the counter starts over.
    stats.record(sample(at(t0, 10.0), vec![simple(5, 5)]));
    let live = sample(at(t0, 15.0), vec![simple(20, 5)]);
    let r = &stats.report(&live, Duration::from_secs(60)).routes[0];
    assert_eq!((r.requests, r.errors), (30 + 5 + 15, 5));
    let rates: Vec<f64> = r.series.iter().map(|p| p.requests_per_second).collect();
    assert_eq!(rates, vec![6.0, 1.0, 3.0]);
}

#[test]
fn each_listener_restarts_on_its_own() {
    let t0 = Instant::now();
    let stats = RouteStats::default();
    let two = |a: u64, b: u64| route("r", "s", &[("a", a, 0), ("b", b, 0)], [a + b; 3]);
    stats.record(sample(t0, vec![two(100, 40)]));
    // Listener b was removed and added back: its series restarted at 0 and counted 3.
    let live = sample(at(t0, 10.0), vec![two(110, 3)]);
    let r = &stats.report(&live, Duration::from_secs(60)).routes[0];
    assert_eq!(r.requests, 10 + 3);
}

#[test]
fn a_route_a_reload_added_counts_from_its_first_reading() {
    let t0 = Instant::now();
    let stats = RouteStats::default();
    stats.record(sample(t0, vec![simple(10, 0)]));
    let added = route("new", "s", &[("public", 4, 1)], [0, 4, 4]);
    stats.record(sample(at(t0, 5.0), vec![simple(20, 0), added.clone()]));
    let later = route("new", "s", &[("public", 6, 1)], [0, 6, 6]);
    let live = sample(at(t0, 10.0), vec![simple(30, 0), later]);
    let report = stats.report(&live, Duration::from_secs(60));
    assert_eq!(report.routes.len(), 2);
    let r = &report.routes[1];
    assert_eq!(r.name, "new");
    assert_eq!((r.requests, r.errors), (6, 1));
    // All 6 in (0.1, 1]: rank 5.94 of 6, interpolated from 0.1.
    assert!(close(r.p99_seconds.unwrap(), 0.1 + 0.9 * 5.94 / 6.0));
    // Not in the first reading: the first interval counts all it held at its first.
    let counted: Vec<f64> = r.series.iter().map(|p| p.requests_per_second).collect();
    assert_eq!(counted, vec![0.8, 0.4]);
    assert!(r.series[0].p99_seconds.is_some());
}

#[test]
fn a_route_whose_service_changed_starts_again() {
    let t0 = Instant::now();
    let stats = RouteStats::default();
    stats.record(sample(
        t0,
        vec![route("r", "old", &[("public", 100, 50)], [100; 3])],
    ));
    let live = sample(
        at(t0, 10.0),
        vec![route("r", "new", &[("public", 3, 0)], [3; 3])],
    );
    let r = &stats.report(&live, Duration::from_secs(60)).routes[0];
    assert_eq!(r.service, "new");
    assert_eq!((r.requests, r.errors), (3, 0));
}

#[test]
fn a_route_without_requests_has_no_ratio_and_no_p99() {
    let t0 = Instant::now();
    let stats = RouteStats::default();
    stats.record(sample(t0, vec![simple(7, 1)]));
    let live = sample(at(t0, 10.0), vec![simple(7, 1)]);
    let r = &stats.report(&live, Duration::from_secs(60)).routes[0];
    assert_eq!(r.requests, 0);
    assert_eq!(r.requests_per_second, 0.0);
    assert_eq!(r.error_ratio, None);
    assert_eq!(r.p99_seconds, None);
    let json = serde_json::to_value(r).unwrap();
    assert!(json["p99_seconds"].is_null());
    assert!(json["error_ratio"].is_null());
}

#[test]
fn without_stored_samples_there_is_no_span_and_no_series() {
    let stats = RouteStats::default();
    let live = sample(Instant::now(), vec![simple(7, 1)]);
    let report = stats.report(&live, Duration::from_secs(60));
    assert_eq!(report.span_seconds, 0.0);
    let r = &report.routes[0];
    assert_eq!((r.requests, r.requests_per_second), (0, 0.0));
    assert!(r.series.is_empty());
}

#[test]
fn the_ring_is_bounded() {
    let t0 = Instant::now();
    let stats = RouteStats::default();
    for i in 0..1000u64 {
        stats.record(sample(at(t0, i as f64 * 5.0), vec![simple(i, 0)]));
    }
    assert_eq!(stats.lock().len(), CAPACITY);
    // The longest window still has a reading at or before its start.
    let live = sample(at(t0, 999.0 * 5.0 + 1.0), vec![simple(999, 0)]);
    let report = stats.report(&live, RETENTION);
    assert!(report.span_seconds >= RETENTION.as_secs_f64());
}

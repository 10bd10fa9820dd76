use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use proptest::prelude::*;

use super::histogram::write_decimal;
use super::render::write_float;
use super::*;

#[test]
fn handles_and_registry_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Registry>();
    check::<Counter>();
    check::<Gauge>();
    check::<FloatGauge>();
    check::<StatusCounters>();
    check::<Histogram>();
    check::<GaugeFn>();
}

#[test]
fn same_name_and_labels_give_the_same_handle() {
    let r = Registry::new();
    let a = r.counter(
        "t_total",
        "T.",
        &[("service", "users"), ("outcome", "success")],
    );
    // Label order does not matter.
    let b = r.counter(
        "t_total",
        "T.",
        &[("outcome", "success"), ("service", "users")],
    );
    let other = r.counter(
        "t_total",
        "T.",
        &[("service", "users"), ("outcome", "failure")],
    );
    a.inc();
    b.add(2);
    assert_eq!(a.get(), 3);
    assert_eq!(b.get(), 3);
    assert_eq!(other.get(), 0);

    let g1 = r.gauge("t_gauge", "G.", &[]);
    r.gauge("t_gauge", "G.", &[]).set(5);
    assert_eq!(g1.get(), 5);

    let h1 = r.histogram("t_seconds", "H.", &[("route", "r")], LATENCY_BUCKETS);
    // Another bucket list does not change an existing histogram.
    r.histogram("t_seconds", "H.", &[("route", "r")], &[1.0])
        .observe(0.003);
    assert_eq!(h1.snapshot().count(), 1);
    assert_eq!(
        h1.snapshot().upper_bounds_nanos.len(),
        LATENCY_BUCKETS.len()
    );

    let s1 = r.status_counters("t_requests_total", "S.", &[("route", "r")]);
    r.status_counters("t_requests_total", "S.", &[("route", "r")])
        .inc(200);
    assert_eq!(s1.get(200), 1);

    let f1 = r.float_gauge("t_ratio", "F.", &[]);
    r.float_gauge("t_ratio", "F.", &[]).set(0.5);
    assert_eq!(f1.get(), 0.5);

    assert_eq!(r.series_count(), 6);
}

/// Exact text for a small registry with one family of each kind.
#[test]
fn renders_each_kind() {
    let r = Registry::new();
    let c = r.counter(
        "t_upstream_total",
        "Attempts.",
        &[("service", "users"), ("endpoint", "127.0.0.1:9001")],
    );
    c.add(3);
    r.gauge("t_active", "Open now.", &[("listener", "public")])
        .set(-2);
    r.gauge_fn("t_in_flight", "In flight.", &[], Arc::new(|| 7));
    r.float_gauge("t_burn_rate", "Burn.", &[("slo", "a")])
        .set(0.25);
    let s = r.status_counters("t_requests_total", "Requests.", &[("route", "r1")]);
    s.inc(503);
    s.inc(200);
    s.add(200, 1);
    s.inc(42);
    let h = r.histogram(
        "t_duration_seconds",
        "Latency.",
        &[("route", "r1")],
        &[1.0, 0.005, 0.1],
    );
    h.observe(0.005);
    h.observe(0.05);
    h.observe_duration(Duration::from_secs(2));
    // A family with no labels at all, and a histogram nobody observed.
    r.histogram("t_empty_seconds", "Empty.", &[], &[0.5]);

    let expected = "\
# HELP t_active Open now.
# TYPE t_active gauge
t_active{listener=\"public\"} -2
# HELP t_burn_rate Burn.
# TYPE t_burn_rate gauge
t_burn_rate{slo=\"a\"} 0.25
# HELP t_duration_seconds Latency.
# TYPE t_duration_seconds histogram
t_duration_seconds_bucket{route=\"r1\",le=\"0.005\"} 1
t_duration_seconds_bucket{route=\"r1\",le=\"0.1\"} 2
t_duration_seconds_bucket{route=\"r1\",le=\"1\"} 2
t_duration_seconds_bucket{route=\"r1\",le=\"+Inf\"} 3
t_duration_seconds_sum{route=\"r1\"} 2.055
t_duration_seconds_count{route=\"r1\"} 3
# HELP t_empty_seconds Empty.
# TYPE t_empty_seconds histogram
t_empty_seconds_bucket{le=\"0.5\"} 0
t_empty_seconds_bucket{le=\"+Inf\"} 0
t_empty_seconds_sum 0
t_empty_seconds_count 0
# HELP t_in_flight In flight.
# TYPE t_in_flight gauge
t_in_flight 7
# HELP t_requests_total Requests.
# TYPE t_requests_total counter
t_requests_total{route=\"r1\",code=\"200\"} 2
t_requests_total{route=\"r1\",code=\"503\"} 1
t_requests_total{route=\"r1\",code=\"other\"} 1
# HELP t_upstream_total Attempts.
# TYPE t_upstream_total counter
t_upstream_total{service=\"users\",endpoint=\"127.0.0.1:9001\"} 3
";
    let text = r.render();
    assert_eq!(text, expected);
    check_exposition(&text).unwrap();
    assert_eq!(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8");
}

#[test]
fn series_render_sorted_by_labels_whatever_the_registration_order() {
    let r = Registry::new();
    for svc in ["c", "a", "b"] {
        r.counter("t_total", "T.", &[("service", svc)]).inc();
    }
    let text = r.render();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "t_total{service=\"a\"} 1",
            "t_total{service=\"b\"} 1",
            "t_total{service=\"c\"} 1"
        ]
    );
    assert_eq!(r.render(), text, "rendering is stable");
}

#[test]
fn escapes_label_values_and_help() {
    let r = Registry::new();
    r.counter(
        "t_total",
        "A \\ backslash,\na newline and \"quotes\".",
        &[("path", "a\\b\"c\nd")],
    )
    .inc();
    let text = r.render();
    assert_eq!(
        text,
        "# HELP t_total A \\\\ backslash,\\na newline and \"quotes\".\n\
         # TYPE t_total counter\n\
         t_total{path=\"a\\\\b\\\"c\\nd\"} 1\n"
    );
    let families = check_exposition(&text).unwrap();
    assert_eq!(
        families[0].help.as_deref(),
        Some("A \\ backslash,\na newline and \"quotes\".")
    );
    assert_eq!(
        families[0].samples[0].labels,
        [("path".to_string(), "a\\b\"c\nd".to_string())]
    );
}

#[test]
fn histogram_buckets_are_cumulative_and_sum_is_exact() {
    let h = Histogram::new(&[1.0, 0.5, 0.5, 0.3, -1.0, f64::NAN, f64::INFINITY, 1e30]);
    let snap = h.snapshot();
    assert_eq!(
        snap.upper_bounds_nanos,
        [300_000_000, 500_000_000, 1_000_000_000],
        "sorted, de-duplicated, invalid bounds dropped"
    );
    // 0.1 + 0.2 is 0.30000000000000004: still the 0.3 bucket, values equal to a bound are in it.
    h.observe(0.1 + 0.2);
    h.observe(0.5);
    h.observe_duration(Duration::from_millis(700));
    h.observe(3.0);
    h.observe(-1.0); // recorded as 0
    h.observe(f64::NAN); // recorded as 0
    let snap = h.snapshot();
    assert_eq!(snap.cumulative, [3, 4, 5, 6]);
    assert_eq!(snap.count(), 6);
    assert_eq!(snap.sum_micros, 300_000 + 500_000 + 700_000 + 3_000_000);
    assert_eq!(snap.sum_seconds(), 4.5);

    // Each observation is rounded to the nearest microsecond in the sum.
    let h = Histogram::new(&[]);
    h.observe(0.000_000_4);
    h.observe(0.000_001_6);
    assert_eq!(h.snapshot().sum_micros, 2);
    assert_eq!(h.snapshot().cumulative, [2]);

    // +Inf and absurd values are capped, not wrapped.
    let h = Histogram::new(LATENCY_BUCKETS);
    h.observe(f64::INFINITY);
    h.observe_duration(Duration::MAX);
    let snap = h.snapshot();
    assert_eq!(snap.cumulative.last(), Some(&2));
    assert_eq!(snap.cumulative[snap.cumulative.len() - 2], 0);
    assert_eq!(snap.sum_micros, 2 * ((1u64 << 53) + 500) / 1000);
}

#[test]
fn status_codes_outside_100_to_599_share_one_slot() {
    let s = StatusCounters::new();
    for code in [0, 99, 600, 999, u16::MAX] {
        s.inc(code);
    }
    s.inc(100);
    s.inc(599);
    assert_eq!(s.get(0), 5);
    assert_eq!(s.get(1000), 5);
    assert_eq!(s.get(100), 1);
    assert_eq!(s.get(599), 1);
    assert_eq!(s.total(), 7);
    let mut seen = vec![];
    s.for_each_nonzero(|code, n| seen.push((code, n)));
    assert_eq!(seen, [(Some(100), 1), (Some(599), 1), (None, 5)]);
}

#[test]
fn prune_unused_drops_series_nobody_holds() {
    let r = Registry::new();
    let kept = r.counter("t_total", "T.", &[("endpoint", "127.0.0.1:9001")]);
    r.counter("t_total", "T.", &[("endpoint", "127.0.0.1:9002")])
        .add(5);
    r.histogram("t_seconds", "H.", &[], LATENCY_BUCKETS);
    let status = r.status_counters("t_requests_total", "S.", &[]);
    r.gauge_fn("t_fn", "F.", &[], Arc::new(|| 1));
    assert_eq!(r.series_count(), 5);

    assert_eq!(r.prune_unused(), 2);
    assert_eq!(r.series_count(), 3);
    let text = r.render();
    assert!(text.contains("9001"));
    assert!(!text.contains("9002"));
    assert!(!text.contains("t_seconds"), "an empty family goes too");
    assert!(text.contains("t_fn 1"), "gauge functions are not pruned");

    // Asked for again, a pruned series starts over.
    assert_eq!(
        r.counter("t_total", "T.", &[("endpoint", "127.0.0.1:9002")])
            .get(),
        0
    );

    drop(kept);
    drop(status);
    assert_eq!(r.prune_unused(), 3);
    assert_eq!(r.series_count(), 1);
}

#[test]
fn scrape_time_functions_are_replaced_and_removed_explicitly() {
    let r = Registry::new();
    let labels = [("service", "users"), ("endpoint", "127.0.0.1:9001")];
    r.gauge_fn("t_in_flight", "I.", &labels, Arc::new(|| 1));
    r.gauge_fn("t_in_flight", "I.", &labels, Arc::new(|| 2));
    r.gauge_fn(
        "t_in_flight",
        "I.",
        &[("service", "users"), ("endpoint", "127.0.0.1:9002")],
        Arc::new(|| 3),
    );
    let text = r.render();
    assert!(text.contains("t_in_flight{service=\"users\",endpoint=\"127.0.0.1:9001\"} 2\n"));
    assert_eq!(text.matches("9001").count(), 1);

    // A plain gauge with those labels is not replaced by a function, nor the other way round.
    let plain = r.gauge("t_plain", "P.", &[]);
    plain.set(4);
    r.gauge_fn("t_plain", "P.", &[], Arc::new(|| 9));
    assert!(r.render().contains("t_plain 4\n"));
    let detached = r.gauge("t_in_flight", "I.", &labels);
    detached.set(100);
    assert!(!r.render().contains("100"));

    // A counter function renders as a counter, and is removed like a gauge function.
    r.counter_fn("t_dropped_total", "D.", &[], Arc::new(|| 12));
    assert!(r
        .render()
        .contains("# TYPE t_dropped_total counter\nt_dropped_total 12\n"));
    assert_eq!(r.prune_unused(), 0, "functions are not pruned");
    assert!(r.remove_fn("t_dropped_total", &[]));

    r.retain_fns(|name, labels| {
        name != "t_in_flight" || labels.get("endpoint") != Some("127.0.0.1:9002")
    });
    assert!(!r.render().contains("9002"));
    assert!(r.remove_fn(
        "t_in_flight",
        &[("endpoint", "127.0.0.1:9001"), ("service", "users")]
    ));
    assert!(!r.remove_fn("t_in_flight", &labels));
    assert!(!r.remove_fn("t_plain", &[]), "only functions are removed");
    assert_eq!(
        r.render(),
        "# HELP t_plain P.\n# TYPE t_plain gauge\nt_plain 4\n"
    );
}

#[test]
fn mistakes_give_working_handles_that_never_render() {
    let r = Registry::new();
    r.counter("t_total", "T.", &[]).inc();

    let wrong_kind = r.gauge("t_total", "T.", &[]);
    wrong_kind.set(41);
    let bad_name = r.counter("bad name", "B.", &[]);
    bad_name.inc();
    let bad_label = r.counter("t_other_total", "B.", &[("1x", "v")]);
    let reserved_label = r.counter("t_other_total", "B.", &[("__name__", "v")]);
    let twice = r.counter("t_other_total", "B.", &[("a", "1"), ("a", "2")]);
    let le = r.histogram("t_seconds", "H.", &[("le", "1")], &[1.0]);
    le.observe(0.5);
    let code = r.status_counters("t_requests_total", "S.", &[("code", "200")]);
    code.inc(200);
    for c in [&bad_label, &reserved_label, &twice] {
        c.inc();
        assert_eq!(c.get(), 1);
    }
    assert_eq!(wrong_kind.get(), 41);
    assert_eq!(le.snapshot().count(), 1);
    assert_eq!(code.get(200), 1);

    assert_eq!(r.series_count(), 1);
    assert_eq!(
        r.render(),
        "# HELP t_total T.\n# TYPE t_total counter\nt_total 1\n"
    );
}

#[test]
fn concurrent_updates_lose_nothing() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 100_000;
    let r = Arc::new(Registry::new());
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let r = Arc::clone(&r);
            thread::spawn(move || {
                // Handles made "at build time", then only atomics.
                let c = r.counter("t_total", "T.", &[]);
                let g = r.gauge("t_in_flight", "G.", &[]);
                let s = r.status_counters("t_requests_total", "S.", &[]);
                let h = r.histogram("t_seconds", "H.", &[], &[0.001]);
                for i in 0..PER_THREAD {
                    g.inc();
                    c.inc();
                    s.inc(if i % 2 == 0 { 200 } else { 503 });
                    h.observe(if i % 2 == 0 { 0.0005 } else { 0.002 });
                    g.dec();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let total = THREADS * PER_THREAD;
    assert_eq!(r.counter("t_total", "T.", &[]).get(), total);
    assert_eq!(r.gauge("t_in_flight", "G.", &[]).get(), 0);
    let s = r.status_counters("t_requests_total", "S.", &[]);
    assert_eq!((s.get(200), s.get(503)), (total / 2, total / 2));
    let snap = r.histogram("t_seconds", "H.", &[], &[]).snapshot();
    assert_eq!(snap.cumulative, [total / 2, total]);
    assert_eq!(snap.sum_micros, total / 2 * 500 + total / 2 * 2000);
    check_exposition(&r.render()).unwrap();
}

#[test]
fn render_does_not_hold_the_lock_while_gauge_fns_run() {
    let r = Arc::new(Registry::new());
    let inner = Arc::clone(&r);
    // A gauge function that itself uses the registry would deadlock if render held the lock.
    r.gauge_fn(
        "t_series",
        "S.",
        &[],
        Arc::new(move || inner.series_count() as i64),
    );
    assert!(r.render().contains("t_series 1\n"));
    // Break the cycle r -> gauge fn -> r.
    assert!(r.remove_fn("t_series", &[]));
}

#[test]
fn floats_and_decimals_format_as_prometheus_reads_them() {
    let f = |v: f64| {
        let mut s = String::new();
        write_float(&mut s, v);
        s
    };
    assert_eq!(f(0.25), "0.25");
    assert_eq!(f(1.0), "1");
    assert_eq!(f(-0.5), "-0.5");
    assert_eq!(f(0.0), "0");
    assert_eq!(f(1e-9), "1e-9");
    assert_eq!(f(1.5e20), "1.5e20");
    assert_eq!(f(f64::NAN), "NaN");
    assert_eq!(f(f64::INFINITY), "+Inf");
    assert_eq!(f(f64::NEG_INFINITY), "-Inf");
    for v in [0.25, 1e-9, 1.5e20, -3.75e-12, 123456.789] {
        assert_eq!(f(v).parse::<f64>().unwrap(), v);
    }

    let d = |units: u64, scale: u32| {
        let mut s = String::new();
        write_decimal(&mut s, units, scale);
        s
    };
    assert_eq!(d(500_000, 9), "0.0005");
    assert_eq!(d(10_000_000_000, 9), "10");
    assert_eq!(d(2_500_000, 6), "2.5");
    assert_eq!(d(1, 6), "0.000001");
    assert_eq!(d(0, 6), "0");
    assert_eq!(d(u64::MAX, 6), "18446744073709.551615");
}

#[test]
fn default_buckets_render_as_written() {
    let r = Registry::new();
    r.histogram("t_seconds", "H.", &[], LATENCY_BUCKETS);
    let text = r.render();
    let les: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once("le=\"")?.1.split_once('"').map(|(le, _)| le))
        .collect();
    assert_eq!(
        les,
        [
            "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
            "1", "2.5", "5", "10", "+Inf"
        ]
    );
}

/// Every SPEC name, registered as the kind its doc says, renders as valid exposition text.
#[test]
fn spec_metrics_render_valid_text() {
    use crate::observe::names::{self, label};
    let r = Registry::new();
    let svc_ep = [
        (label::SERVICE, "users"),
        (label::ENDPOINT, "127.0.0.1:9001"),
    ];
    let _hold = (
        r.status_counters(
            names::HTTP_REQUESTS_TOTAL,
            names::HTTP_REQUESTS_TOTAL_HELP,
            &[
                (label::LISTENER, "public"),
                (label::ROUTE, "users-api"),
                (label::SERVICE, "users"),
            ],
        ),
        r.histogram(
            names::HTTP_REQUEST_DURATION_SECONDS,
            names::HTTP_REQUEST_DURATION_SECONDS_HELP,
            &[(label::ROUTE, "users-api"), (label::SERVICE, "users")],
            LATENCY_BUCKETS,
        ),
        r.counter(
            names::UPSTREAM_REQUESTS_TOTAL,
            names::UPSTREAM_REQUESTS_TOTAL_HELP,
            &[svc_ep[0], svc_ep[1], (label::OUTCOME, "success")],
        ),
        r.gauge(
            names::ENDPOINT_HEALTHY,
            names::ENDPOINT_HEALTHY_HELP,
            &svc_ep,
        ),
        r.gauge(
            names::CONNECTIONS_ACTIVE,
            names::CONNECTIONS_ACTIVE_HELP,
            &[(label::LISTENER, "public")],
        ),
        r.counter(
            names::HEALTH_CHECKS_TOTAL,
            names::HEALTH_CHECKS_TOTAL_HELP,
            &[svc_ep[0], svc_ep[1], (label::RESULT, names::value::SUCCESS)],
        ),
        r.counter(
            names::RATE_LIMIT_DECISIONS_TOTAL,
            names::RATE_LIMIT_DECISIONS_TOTAL_HELP,
            &[(label::POLICY, "per-client"), (label::DECISION, "allow")],
        ),
        r.counter(
            names::AUTH_DECISIONS_TOTAL,
            names::AUTH_DECISIONS_TOTAL_HELP,
            &[
                (label::POLICY, "users-jwt"),
                (label::RESULT, names::value::FAILURE),
                (label::REASON, "expired"),
            ],
        ),
        r.counter(
            names::JWKS_FETCHES_TOTAL,
            names::JWKS_FETCHES_TOTAL_HELP,
            &[
                (label::POLICY, "users-jwt"),
                (label::RESULT, names::value::SUCCESS),
            ],
        ),
        r.counter(
            names::CACHE_LOOKUPS_TOTAL,
            names::CACHE_LOOKUPS_TOTAL_HELP,
            &[
                (label::ROUTE, "users-api"),
                (label::RESULT, names::value::FAILURE),
            ],
        ),
        r.counter(
            names::LOAD_SHED_TOTAL,
            names::LOAD_SHED_TOTAL_HELP,
            &[(label::PRIORITY, "low")],
        ),
        r.gauge(
            names::CIRCUIT_BREAKER_STATE,
            names::CIRCUIT_BREAKER_STATE_HELP,
            &svc_ep,
        ),
        r.counter(
            names::RETRIES_TOTAL,
            names::RETRIES_TOTAL_HELP,
            &[
                (label::ROUTE, "users-api"),
                (label::REASON, "connect_error"),
            ],
        ),
        r.counter(
            names::CONFIG_RELOADS_TOTAL,
            names::CONFIG_RELOADS_TOTAL_HELP,
            &[(label::RESULT, names::value::SUCCESS)],
        ),
        r.float_gauge(
            names::SLO_ERROR_BUDGET_REMAINING,
            names::SLO_ERROR_BUDGET_REMAINING_HELP,
            &[(label::SLO, "users-availability")],
        ),
        r.float_gauge(
            names::SLO_BURN_RATE,
            names::SLO_BURN_RATE_HELP,
            &[(label::SLO, "users-availability"), (label::WINDOW, "1h")],
        ),
        r.counter(
            names::ACCESS_LOG_DROPPED_TOTAL,
            names::ACCESS_LOG_DROPPED_TOTAL_HELP,
            &[],
        ),
    );
    let _tracing = (
        r.counter(
            names::TRACING_SPANS_EXPORTED_TOTAL,
            names::TRACING_SPANS_EXPORTED_TOTAL_HELP,
            &[],
        ),
        r.counter(
            names::TRACING_SPANS_DROPPED_TOTAL,
            names::TRACING_SPANS_DROPPED_TOTAL_HELP,
            &[(label::REASON, "queue_full")],
        ),
    );
    let _keys = r.gauge(
        names::JWKS_KEYS,
        names::JWKS_KEYS_HELP,
        &[(label::POLICY, "users-jwt")],
    );
    r.gauge_fn(
        names::ENDPOINT_IN_FLIGHT,
        names::ENDPOINT_IN_FLIGHT_HELP,
        &svc_ep,
        Arc::new(|| 0),
    );
    r.gauge_fn(
        names::CACHE_BYTES,
        names::CACHE_BYTES_HELP,
        &[],
        Arc::new(|| 0),
    );
    r.gauge(
        names::ENDPOINTS,
        names::ENDPOINTS_HELP,
        &[(label::SERVICE, "app")],
    )
    .set(2);
    let _refreshes = r.counter(
        names::DISCOVERY_REFRESHES_TOTAL,
        names::DISCOVERY_REFRESHES_TOTAL_HELP,
        &[(label::SERVICE, "app"), (label::RESULT, "success")],
    );
    r.counter_fn(
        names::CACHE_EVICTIONS_TOTAL,
        names::CACHE_EVICTIONS_TOTAL_HELP,
        &[(label::REASON, "size")],
        Arc::new(|| 0),
    );
    r.gauge_fn(
        names::LOAD_SHEDDING_IN_FLIGHT,
        names::LOAD_SHEDDING_IN_FLIGHT_HELP,
        &[],
        Arc::new(|| 3),
    );
    r.gauge_fn(
        names::LOAD_SHEDDING_LIMIT,
        names::LOAD_SHEDDING_LIMIT_HELP,
        &[],
        Arc::new(|| 100),
    );
    r.gauge_fn(
        names::LOAD_SHEDDING_QUEUED,
        names::LOAD_SHEDDING_QUEUED_HELP,
        &[(label::PRIORITY, "low")],
        Arc::new(|| 0),
    );
    _hold.0.inc(200);
    _hold.1.observe(0.012);
    crate::observe::process::register(&r);
    let families = check_exposition(&r.render()).unwrap();
    let rendered: HashSet<&str> = families.iter().map(|f| f.name.as_str()).collect();
    let all: HashSet<&str> = names::ALL
        .iter()
        .chain(names::PROCESS)
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(rendered, all);
    assert!(families
        .iter()
        .all(|f| f.help.is_some() && f.kind.is_some()));
}

proptest! {
    /// Any label value and help text survives rendering: the checker reads back what went in.
    #[test]
    fn any_label_value_and_help_round_trip(value in any::<String>(), help in any::<String>()) {
        let r = Registry::new();
        r.counter("t_total", &help, &[("v", &value)]).inc();
        let families = check_exposition(&r.render()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(families.len(), 1);
        prop_assert_eq!(families[0].help.as_deref(), Some(help.as_str()));
        prop_assert_eq!(&families[0].samples[0].labels, &vec![("v".to_string(), value)]);
    }
}

// ---------------------------------------------------------------------------------------------
// A strict checker for the text exposition format 0.0.4, written from the format's description
// (https://prometheus.io/docs/instrumenting/exposition_formats/), not from the renderer.

#[derive(Debug)]
struct ParsedFamily {
    name: String,
    help: Option<String>,
    kind: Option<String>,
    samples: Vec<Sample>,
}

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Parses `text` and checks the grammar and the rules around it: final newline; HELP and TYPE at
/// most once per family and before its samples; a family's lines contiguous; sample names that fit
/// the family's type; no duplicate series; counters not negative; histograms with `le` buckets in
/// increasing order, cumulative, ending in `+Inf` equal to `_count`, and a `_sum`.
fn check_exposition(text: &str) -> Result<Vec<ParsedFamily>, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("text does not end with a newline".into());
    }
    let mut families: Vec<ParsedFamily> = Vec::new();
    let mut series = HashSet::new();
    let body = text.strip_suffix('\n').unwrap_or(text);
    for (i, line) in body.split('\n').enumerate() {
        if text.is_empty() {
            break;
        }
        let at = |m: &str| format!("line {}: {m}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            let help = unescape(help, false).map_err(|e| at(&e))?;
            let family = family_for(&mut families, name).map_err(|e| at(&e))?;
            if family.help.is_some() || !family.samples.is_empty() {
                return Err(at("HELP repeated or after samples"));
            }
            family.help = Some(help);
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest
                .split_once(' ')
                .ok_or_else(|| at("TYPE without a type"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at("unknown type"));
            }
            let family = family_for(&mut families, name).map_err(|e| at(&e))?;
            if family.kind.is_some() || !family.samples.is_empty() {
                return Err(at("TYPE repeated or after samples"));
            }
            family.kind = Some(kind.to_string());
        } else if line.starts_with('#') {
            // Any other comment.
        } else {
            let sample = parse_sample(line).map_err(|e| at(&e))?;
            let family_name = match families.last() {
                Some(f) if fits(f, &sample.name) => f.name.clone(),
                _ => sample.name.clone(),
            };
            let family = family_for(&mut families, &family_name).map_err(|e| at(&e))?;
            if !fits(family, &sample.name) {
                return Err(at("sample name does not fit the family's type"));
            }
            let mut key_labels = sample.labels.clone();
            key_labels.sort();
            if !series.insert((sample.name.clone(), key_labels)) {
                return Err(at("duplicate series"));
            }
            if family.kind.as_deref() == Some("counter")
                && (sample.value < 0.0 || sample.value.is_nan())
            {
                return Err(at("negative or NaN counter"));
            }
            family.samples.push(sample);
        }
    }
    for f in &families {
        if f.kind.as_deref() == Some("histogram") {
            check_histogram(f)?;
        }
    }
    Ok(families)
}

/// Whether a sample called `sample` belongs to family `f` given its type.
fn fits(f: &ParsedFamily, sample: &str) -> bool {
    match f.kind.as_deref() {
        Some("histogram") => ["_bucket", "_sum", "_count"]
            .iter()
            .any(|suffix| sample.strip_suffix(suffix) == Some(f.name.as_str())),
        Some("summary") => ["", "_sum", "_count"]
            .iter()
            .any(|suffix| sample.strip_suffix(suffix) == Some(f.name.as_str())),
        _ => sample == f.name,
    }
}

/// The family `name`: the current one, or a new one if `name` has not been seen.
fn family_for<'a>(
    families: &'a mut Vec<ParsedFamily>,
    name: &str,
) -> Result<&'a mut ParsedFamily, String> {
    if !valid_name(name, true) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let current = families.last().is_some_and(|f| f.name == name);
    if !current {
        if families.iter().any(|f| f.name == name) {
            return Err(format!("family {name} is split"));
        }
        families.push(ParsedFamily {
            name: name.to_string(),
            help: None,
            kind: None,
            samples: Vec::new(),
        });
    }
    families.last_mut().ok_or_else(|| "no family".to_string())
}

/// Metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`, label names `[a-zA-Z_][a-zA-Z0-9_]*`.
fn valid_name(s: &str, colons: bool) -> bool {
    let ok = |c: char| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':');
    let mut chars = s.chars();
    chars.next().is_some_and(ok) && chars.all(|c| ok(c) || c.is_ascii_digit())
}

/// `name{label="value",...} value [timestamp]`
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !valid_name(name, true) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("label without '='")?;
            let label = &rest[..eq];
            if !valid_name(label, false) {
                return Err(format!("invalid label name {label:?}"));
            }
            if labels.iter().any(|(k, _)| k == label) {
                return Err(format!("label {label} repeated"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("label value without opening quote")?;
            // The value ends at the first '"' not escaped by a backslash.
            let mut end = None;
            let mut escaped = false;
            for (j, c) in rest.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(j);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.ok_or("label value without closing quote")?;
            labels.push((label.to_string(), unescape(&rest[..end], true)?));
            rest = &rest[end + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("expected ',' or '}' after a label".into());
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let mut fields = rest.split(' ');
    let value = parse_value(fields.next().unwrap_or(""))?;
    if let Some(ts) = fields.next() {
        ts.parse::<i64>()
            .map_err(|_| format!("bad timestamp {ts:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// A Go `ParseFloat` number: `NaN`, `+Inf`, `-Inf`, or
/// `[+-]?(digits[.digits]|.digits)([eE][+-]?digits)?`.
fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => return Ok(f64::NAN),
        "+Inf" | "Inf" => return Ok(f64::INFINITY),
        "-Inf" => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    let b = s.as_bytes();
    let mut i = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let int_start = i;
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    let mut digits = i > int_start;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let frac_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        digits |= i > frac_start;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let exp_start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == exp_start {
            return Err(format!("bad exponent in {s:?}"));
        }
    }
    if !digits || i != b.len() {
        return Err(format!("bad value {s:?}"));
    }
    s.parse().map_err(|_| format!("bad value {s:?}"))
}

/// Undoes the format's escapes: `\\` and `\n` everywhere, `\"` in label values only.
fn unescape(s: &str, label_value: bool) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            if label_value && c == '"' {
                return Err("unescaped '\"' in a label value".into());
            }
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('\\') => out.push('\\'),
            Some('n') => out.push('\n'),
            Some('"') if label_value => out.push('"'),
            other => return Err(format!("bad escape \\{other:?}")),
        }
    }
    Ok(out)
}

fn check_histogram(f: &ParsedFamily) -> Result<(), String> {
    let mut groups: HashMap<Vec<(String, String)>, Vec<&Sample>> = HashMap::new();
    for s in &f.samples {
        let mut key: Vec<_> = s
            .labels
            .iter()
            .filter(|(k, _)| k != "le")
            .cloned()
            .collect();
        key.sort();
        groups.entry(key).or_default().push(s);
    }
    for (key, samples) in groups {
        let err = |m: &str| format!("histogram {}{key:?}: {m}", f.name);
        let bucket_name = format!("{}_bucket", f.name);
        let buckets: Vec<(f64, f64)> = samples
            .iter()
            .filter(|s| s.name == bucket_name)
            .map(|s| {
                let le = s
                    .labels
                    .iter()
                    .find(|(k, _)| k == "le")
                    .ok_or_else(|| err("bucket without le"))?;
                Ok((parse_value(&le.1)?, s.value))
            })
            .collect::<Result<_, String>>()?;
        if buckets.windows(2).any(|w| {
            w[0].0.partial_cmp(&w[1].0) != Some(std::cmp::Ordering::Less) || w[0].1 > w[1].1
        }) {
            return Err(err("buckets not increasing or not cumulative"));
        }
        let (last_le, last_count) = *buckets.last().ok_or_else(|| err("no buckets"))?;
        if last_le != f64::INFINITY {
            return Err(err("no +Inf bucket"));
        }
        let one = |suffix: &str| {
            let name = format!("{}{suffix}", f.name);
            let found: Vec<f64> = samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| s.value)
                .collect();
            match found[..] {
                [v] => Ok(v),
                _ => Err(err(&format!("want exactly one {suffix}"))),
            }
        };
        if one("_count")? != last_count {
            return Err(err("_count differs from the +Inf bucket"));
        }
        one("_sum")?;
    }
    Ok(())
}

#[test]
fn the_checker_rejects_broken_text() {
    let bad = [
        "t 1",                                                            // no final newline
        "t{a=\"1\"} x\n",                                                 // bad value
        "t{a=\"1} 1\n",                                                   // unterminated value
        "t{1a=\"1\"} 1\n",                                                // bad label name
        "t{a=\"\\x\"} 1\n",                                               // bad escape
        "t{a=\"1\",a=\"2\"} 1\n",                                         // repeated label
        "# TYPE t counter\n# TYPE t counter\nt 1\n",                      // TYPE twice
        "t 1\n# TYPE t counter\n",                                        // TYPE after samples
        "a 1\nb 1\na 2\n",                                                // split family
        "t 1\nt 2\n",                                                     // duplicate series
        "# TYPE t counter\nt -1\n",                                       // negative counter
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 2\n",
        "t inf\n", // not Go's spelling
    ];
    for text in bad {
        assert!(check_exposition(text).is_err(), "accepted {text:?}");
    }
    check_exposition("").unwrap();
    check_exposition("# a comment\nt{a=\"x\",} 1e-3 1700000000000\n").unwrap();
}

//! Load shedding under 3x overload, through the real binary: a backend that works on at most
//! `WORKERS` requests at once for 20 ms each, offered three times what it serves for 10 s, one
//! third each `critical`, `normal` and `low` (`x-priority`), and again with the critical share
//! at 90 % of capacity. With `[load_shedding]` the critical class is served (with headroom, as
//! if the gateway were idle) and the rest is refused at once; without it, everyone waits in the
//! backend's queue and times out. Run with `--nocapture` for the tables.
//!
//! scripts/test runs this file alone, after the other tests, so that its latencies are not the
//! noise of hundreds of tests running beside it.

mod support;

use std::time::Duration;

use support::load::{self, Class, ClassReport, LimitedBackend};
use support::{Gateway, Toml};

const WORKERS: usize = 20;
const SERVICE_TIME: Duration = Duration::from_millis(20);
const OVERLOAD: Duration = Duration::from_secs(10);
/// How long the load generator waits for any one answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(3);

/// One overload run at a time, whichever runner starts them.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

fn gateway(backend: &LimitedBackend, shedding: &str) -> Gateway {
    let toml = Toml::new()
        .admin()
        .listener("public", "")
        .route(
            "api",
            "app",
            "timeout = \"1s\"\npriority = \"normal\"\npriority_from_header = true",
        )
        .service("app", &[backend.addr], "")
        .build();
    Gateway::start(&format!("{toml}\n{shedding}\n"))
}

/// The three classes at these rates (requests a second).
fn classes(critical: f64, normal: f64, low: f64) -> Vec<Class> {
    [("critical", critical), ("normal", normal), ("low", low)]
        .into_iter()
        .map(|(name, rate)| Class {
            name,
            rate,
            path: "/".into(),
        })
        .collect()
}

fn find<'a>(reports: &'a [ClassReport], name: &str) -> &'a ClassReport {
    reports.iter().find(|r| r.name == name).expect("class")
}

/// The critical class got 99.9 % answers, at a p99 within `times` its unloaded p99.
fn assert_critical_served(reports: &[ClassReport], unloaded: Duration, times: u32) {
    let critical = find(reports, "critical");
    assert!(
        critical.success_rate() >= 0.999,
        "critical success {:.4}",
        critical.success_rate()
    );
    let p99 = critical.ok_quantile(0.99).expect("critical answers");
    assert!(
        p99 <= unloaded * times,
        "critical p99 {p99:?} against {unloaded:?} unloaded"
    );
}

/// The p99 of critical requests alone at 30 % of `capacity`.
fn unloaded_p99(gw: &Gateway, capacity: f64) -> Duration {
    let alone = load::run(
        gw.addr(),
        &classes(capacity * 0.3, 0.0, 0.0)[..1],
        Duration::from_secs(2),
        CLIENT_TIMEOUT,
    );
    alone[0].ok_quantile(0.99).expect("unloaded answers")
}

#[test]
fn critical_traffic_is_served_at_three_times_capacity_and_the_rest_is_shed_at_once() {
    let _alone = alone();
    let backend = LimitedBackend::start(WORKERS, SERVICE_TIME);
    let nominal = WORKERS as f64 / SERVICE_TIME.as_secs_f64();
    // What the backend really serves through the gateway (its timer rounds each 20 ms up).
    let capacity = {
        let plain = gateway(&backend, "");
        load::closed_loop(plain.addr(), WORKERS * 2, Duration::from_secs(2))
    };
    // A fixed limit a little above the backend's workers, so that it never waits for the next
    // request while one crosses the loopback; resource thresholds off (the load generator and
    // the backend share this machine's CPU with the gateway).
    let shedding = gateway(
        &backend,
        &format!(
            "[load_shedding]\nmax_in_flight = {}\ncpu_threshold = 1.0\nmemory_threshold = 1.0",
            WORKERS + 2
        ),
    );
    let unloaded = unloaded_p99(&shedding, capacity);
    // The mix: a third each, so the critical third alone is the whole capacity.
    let thirds = load::run(
        shedding.addr(),
        &classes(capacity, capacity, capacity),
        OVERLOAD,
        CLIENT_TIMEOUT,
    );
    // The same 3x, with the critical share 90 % of capacity.
    let headroom = load::run(
        shedding.addr(),
        &classes(capacity * 0.9, capacity * 1.05, capacity * 1.05),
        OVERLOAD,
        CLIENT_TIMEOUT,
    );
    let limit = shedding.metric("sluicegate_load_shedding_limit ");
    drop(shedding);
    let plain = gateway(&backend, "");
    let plain_unloaded = unloaded_p99(&plain, capacity);
    let without = load::run(
        plain.addr(),
        &classes(capacity, capacity, capacity),
        OVERLOAD,
        CLIENT_TIMEOUT,
    );
    drop(plain);

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "backend: {WORKERS} workers x {SERVICE_TIME:?}: {nominal:.0} req/s nominal, {capacity:.0} req/s measured\n\
         unloaded critical p99: {:.1} ms (with [load_shedding]), {:.1} ms (without); limit at the end: {limit}\n",
        ms(unloaded),
        ms(plain_unloaded),
    );
    println!(
        "{}",
        load::table("3x, a third each, with [load_shedding]", &thirds)
    );
    println!(
        "{}",
        load::table("3x, critical 0.9x, with [load_shedding]", &headroom)
    );
    println!("{}", load::table("3x, a third each, without", &without));

    for (run, reports) in [("thirds", &thirds), ("headroom", &headroom)] {
        for r in [find(reports, "normal"), find(reports, "low")] {
            assert_eq!(
                r.shed(),
                r.shed_with_retry_after(),
                "{run}: Retry-After on every 503"
            );
            let p99 = r.shed_quantile(0.99).expect("shed answers");
            assert!(
                p99 < Duration::from_millis(5),
                "{run}: {} 503 p99 {p99:?}",
                r.name
            );
        }
    }
    // At a third each, the critical class alone is the whole capacity: a queue with no drift
    // to drain it, so it is served (99 % and more here) but through a queue about one
    // `target_queue_delay` long (docs/operations.md). Asserted with room for a noisy machine.
    let critical = find(&thirds, "critical");
    assert!(
        critical.success_rate() >= 0.98,
        "critical success {:.4}",
        critical.success_rate()
    );
    for r in [find(&thirds, "normal"), find(&thirds, "low")] {
        assert!(
            r.success_rate() < 0.01,
            "{}: {:.4}",
            r.name,
            r.success_rate()
        );
    }
    // With headroom, as if the gateway were idle; what is left goes to normal before low.
    let (normal, low) = (find(&headroom, "normal"), find(&headroom, "low"));
    assert!(low.ok() <= normal.ok(), "low is shed first");
    assert_critical_served(&headroom, unloaded, 2);
    // Without shedding the critical third fares like the rest.
    let critical = find(&without, "critical");
    assert!(
        critical.success_rate() < 0.5,
        "without shedding: {:.4}",
        critical.success_rate()
    );
}

/// The adaptive limit (`max_in_flight = 0`) finds the backend's concurrency by itself: under 3x
/// overload it settles near the backend's workers (latency within the target of the lowest seen)
/// and still serves the critical share with headroom.
#[test]
fn the_adaptive_limit_settles_near_the_backends_concurrency() {
    let _alone = alone();
    let backend = LimitedBackend::start(WORKERS, SERVICE_TIME);
    let capacity = {
        let plain = gateway(&backend, "");
        load::closed_loop(plain.addr(), WORKERS * 2, Duration::from_secs(1))
    };
    let shedding = gateway(
        &backend,
        "[load_shedding]\ntarget_queue_delay = \"5ms\"\ncpu_threshold = 1.0\nmemory_threshold = 1.0",
    );
    let unloaded = unloaded_p99(&shedding, capacity);
    let reports = load::run(
        shedding.addr(),
        &classes(capacity * 0.9, capacity * 1.05, capacity * 1.05),
        Duration::from_secs(5),
        CLIENT_TIMEOUT,
    );
    let limit = shedding.metric("sluicegate_load_shedding_limit ") as usize;
    println!(
        "adaptive, target 5ms: limit {limit} for {WORKERS} workers; unloaded p99 {:.1} ms\n{}",
        unloaded.as_secs_f64() * 1e3,
        load::table("3x, critical 0.9x", &reports)
    );
    assert!((WORKERS..=WORKERS * 2).contains(&limit), "limit {limit}");
    assert_critical_served(&reports, unloaded, 3);
}

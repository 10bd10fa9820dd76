//! `[load_shedding]` through the real binary: priority classes from the route or `x-priority`,
//! memory pressure that sheds all but critical, a full gateway that queues and then refuses the
//! lower class at once, the metrics and log fields, config errors, and a reload that turns it off.
//! The 3x overload runs are in `overload.rs`.

mod support;

use std::time::{Duration, Instant};

use support::{wait_until, Backend, Client, Gateway, TempDir, Toml};

/// Routes `/critical`, `/normal` (the default class), `/low`, and `/any` whose class may come
/// from `x-priority` (normal otherwise).
fn routes(b: &Backend) -> Toml {
    Toml::new()
        .admin()
        .listener("public", "")
        .route(
            "critical",
            "app",
            "match = { path_prefix = \"/critical\" }\nstrip_prefix = true\npriority = \"critical\"",
        )
        .route(
            "normal",
            "app",
            "match = { path_prefix = \"/normal\" }\nstrip_prefix = true",
        )
        .route(
            "low",
            "app",
            "match = { path_prefix = \"/low\" }\nstrip_prefix = true\npriority = \"low\"",
        )
        .route(
            "any",
            "app",
            "match = { path_prefix = \"/any\" }\npriority_from_header = true",
        )
        .service("app", &[b.addr], "")
}

/// Memory "in use" is surely above a millionth of it: every class but critical is shed.
const MEMORY_PRESSURE: &str =
    "[load_shedding]\nmax_in_flight = 100\nmemory_threshold = 0.000001\ncpu_threshold = 1.0\n";

#[test]
fn under_memory_pressure_only_critical_requests_are_served() {
    let b = Backend::start("b");
    let dir = TempDir::new("shed-memory");
    let log = dir.0.join("access.log");
    let toml = routes(&b).access_log(log.to_str().unwrap()).build();
    let gw = Gateway::start(&format!("{toml}\n{MEMORY_PRESSURE}"));
    let mut c = gw.client();
    assert_eq!(c.get("/critical").status, 200);
    for path in ["/normal", "/low"] {
        let r = c.get(path);
        assert_eq!(r.status, 503, "{path}");
        assert_eq!(r.json()["error"], "overloaded");
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    assert_eq!(b.hits(), 1, "shed requests never reach the upstream");
    assert_eq!(
        gw.metric("sluicegate_load_shed_total{priority=\"normal\"}"),
        1
    );
    assert_eq!(gw.metric("sluicegate_load_shed_total{priority=\"low\"}"), 1);
    assert_eq!(
        gw.metric("sluicegate_load_shed_total{priority=\"critical\"}"),
        0
    );
    assert_eq!(gw.metric("sluicegate_load_shedding_limit "), 100);
    let status = gw.admin().get("/api/v1/status").json();
    let shedding = &status["load_shedding"];
    assert_eq!(shedding["limit"], 100);
    assert_eq!(shedding["queued"]["low"], 0);
    assert!(
        shedding["memory"].as_f64().is_some_and(|m| m > 0.0),
        "{shedding}"
    );
    let low = status["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "low")
        .unwrap();
    assert_eq!(low["priority"], "low");

    wait_until("three log lines", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 3)
    });
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["load_shed"], "admitted");
    assert_eq!(lines[1]["load_shed"], "shed_memory");
    assert_eq!(lines[1]["status"], 503);
}

#[test]
fn x_priority_names_the_class_only_where_the_route_allows_it() {
    let b = Backend::start("b");
    let gw = Gateway::start(&format!("{}\n{MEMORY_PRESSURE}", routes(&b).build()));
    let mut c = gw.client();
    let with = |c: &mut Client, path: &str, class: &str| {
        c.request("GET", path, &[("x-priority", class)], b"").status
    };
    assert_eq!(with(&mut c, "/any", "critical"), 200);
    assert_eq!(with(&mut c, "/any", "low"), 503);
    assert_eq!(
        with(&mut c, "/any", "urgent"),
        503,
        "unknown: the route's class"
    );
    assert_eq!(c.get("/any").status, 503);
    assert_eq!(
        with(&mut c, "/low", "critical"),
        503,
        "not allowed on this route"
    );
    assert_eq!(b.hits(), 1);
    // The field goes upstream as sent.
    assert_eq!(b.last_seen().headers.get("x-priority").unwrap(), "critical");
}

#[test]
fn a_full_gateway_makes_the_lower_class_wait_then_refuses_it_when_a_higher_one_must_wait() {
    let b = Backend::start("b");
    let toml = routes(&b).build();
    let gw = Gateway::start(&format!(
        "{toml}\n[load_shedding]\nmax_in_flight = 1\ntarget_queue_delay = \"5s\"\ncpu_threshold = 1.0\nmemory_threshold = 1.0\n"
    ));
    let addr = gw.addr();
    let holder = std::thread::spawn(move || Client::connect(addr).get("/normal/sleep/800").status);
    wait_until("the one place taken", Duration::from_secs(5), || {
        b.hits() == 1
    });
    assert_eq!(gw.metric("sluicegate_load_shedding_in_flight "), 1);
    // A low request waits for the place…
    let low = std::thread::spawn(move || {
        let r = Client::connect(addr).get("/low/sleep/1");
        (
            r.status,
            r.header("retry-after").map(str::to_string),
            Instant::now(),
        )
    });
    wait_until("the low request queued", Duration::from_secs(5), || {
        gw.metric("sluicegate_load_shedding_queued{priority=\"low\"}") == 1
    });
    // …until a critical one must wait too: the low one is refused then, not after its wait.
    let critical =
        std::thread::spawn(move || Client::connect(addr).get("/critical/sleep/1").status);
    let (status, retry_after, refused_at) = low.join().unwrap();
    assert_eq!((status, retry_after.as_deref()), (503, Some("1")));
    assert_eq!(holder.join().unwrap(), 200);
    let freed_at = Instant::now();
    assert!(refused_at < freed_at, "refused before the place was free");
    assert_eq!(
        critical.join().unwrap(),
        200,
        "served once the place was free"
    );
    // While the critical class waits nobody lower is queued: the gateway is idle again now.
    assert_eq!(gw.client().get("/low").status, 200);
    assert_eq!(b.hits(), 3);
}

#[test]
fn a_reload_without_load_shedding_admits_everything() {
    let b = Backend::start("b");
    let gw = Gateway::start(&format!("{}\n{MEMORY_PRESSURE}", routes(&b).build()));
    assert_eq!(gw.client().get("/low").status, 503);
    gw.write_config(&routes(&b).build());
    let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.client().get("/low").status, 200);
    assert!(!gw
        .admin()
        .get("/metrics")
        .text()
        .contains("sluicegate_load_shedding_limit"));
}

#[test]
fn bad_load_shedding_settings_are_refused_with_the_key_named() {
    let b = Backend::start("b");
    let base = routes(&b).build();
    for (extra, expected) in [
        (
            "[load_shedding]\ncpu_threshold = 0\n",
            "load_shedding.cpu_threshold: expected a number more than 0 up to 1",
        ),
        (
            "[load_shedding]\nmemory_threshold = 1.5\n",
            "load_shedding.memory_threshold: expected a number more than 0 up to 1",
        ),
        (
            "[load_shedding]\ntarget_queue_delay = \"0s\"\n",
            "load_shedding.target_queue_delay: expected a duration above 0",
        ),
        (
            "[load_shedding]\nmax_in_flight = -1\n",
            "load_shedding.max_in_flight: expected an integer from 0",
        ),
        ("[load_shedding]\nqueue = 5\n", "load_shedding.queue"),
    ] {
        let (code, _, stderr) = support::check(&format!("{base}\n{extra}"));
        assert_eq!(code, 1, "{extra}: {stderr}");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
    let bad_route = base.replace("priority = \"low\"", "priority = \"urgent\"");
    let (code, _, stderr) = support::check(&bad_route);
    assert_eq!(code, 1);
    assert!(
        stderr
            .contains("unknown priority \"urgent\"; expected \"critical\", \"normal\" or \"low\""),
        "{stderr}"
    );
}

#[test]
fn a_busy_cpu_sheds_the_low_class_only() {
    let b = Backend::start("b");
    let gw = Gateway::start(&format!(
        "{}\n[load_shedding]\ncpu_threshold = 0.01\nmemory_threshold = 1.0\n",
        routes(&b).build()
    ));
    // Keep one core busy: far above 1 % of the machine (or of the cgroup's quota).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let spinning = std::sync::Arc::clone(&stop);
    let spinner = std::thread::spawn(move || {
        while !spinning.load(std::sync::atomic::Ordering::Relaxed) {
            std::hint::spin_loop();
        }
    });
    let mut c = gw.client();
    wait_until("low requests shed", Duration::from_secs(5), || {
        c.get("/low").status == 503
    });
    assert_eq!(c.get("/normal").status, 200);
    assert_eq!(c.get("/critical").status, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    spinner.join().unwrap();
    assert!(gw.metric("sluicegate_load_shed_total{priority=\"low\"}") >= 1);
    assert!(gw
        .stderr_text()
        .contains("load shedding: resource pressure changed"));
}

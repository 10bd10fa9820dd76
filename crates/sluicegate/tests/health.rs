//! Active health checks, outlier detection, 503 with no healthy endpoint, and sticky sessions,
//! through the real binary.

mod support;

use std::time::Duration;

use support::{Backend, Gateway, Toml};

fn config(backends: &[&Backend], service_extra: &str) -> String {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    Toml::new()
        .admin()
        .listener("public", "")
        .route("all", "app", "")
        .service(
            "app",
            &addrs,
            &format!("algorithm = \"round_robin\"\n{service_extra}"),
        )
        .build()
}

const CHECKS: &str = r#"
[services.health_check]
path = "/healthz"
interval = "200ms"
timeout = "100ms"
healthy_threshold = 2
unhealthy_threshold = 2
"#;

/// `healthy` and `ejected` of `address` in /api/v1/services.
fn endpoint_state(gw: &Gateway, address: std::net::SocketAddr) -> (bool, bool) {
    let v = gw.admin().get("/api/v1/services").json();
    let e = v["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == address.to_string())
        .cloned()
        .expect("endpoint listed");
    (
        e["healthy"].as_bool().unwrap(),
        e["ejected"].as_bool().unwrap(),
    )
}

/// Waits for a state the admin API or a backend shows; the bound only guards against a hang.
fn wait_until(what: &str, f: impl FnMut() -> bool) {
    support::wait_until(what, Duration::from_secs(15), f);
}

fn metric(gw: &Gateway, line_start: &str) -> Option<f64> {
    let text = gw.admin().get("/metrics").text();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn failing_health_check_removes_the_endpoint_and_recovery_restores_it() {
    let good = Backend::start("good");
    let sick = Backend::start("sick");
    let gw = Gateway::start(&config(&[&good, &sick], CHECKS));
    wait_until("first health checks", || {
        sick.health_hits.load(std::sync::atomic::Ordering::SeqCst) > 0
    });

    sick.set_health(503);
    // Once the checks have marked it unhealthy, it gets no traffic.
    wait_until("the failing endpoint marked unhealthy", || {
        !endpoint_state(&gw, sick.addr).0
    });
    let before = sick.hits();
    let mut c = gw.client();
    for _ in 0..20 {
        let r = c.get("/");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "good");
    }
    assert_eq!(sick.hits(), before, "an unhealthy endpoint got traffic");
    assert_eq!(endpoint_state(&gw, sick.addr), (false, false));
    let gauge = format!(
        "sluicegate_endpoint_healthy{{service=\"app\",endpoint=\"{}\"}}",
        sick.addr
    );
    assert_eq!(metric(&gw, &gauge), Some(0.0));
    assert!(
        metric(
            &gw,
            &format!(
                "sluicegate_health_checks_total{{service=\"app\",endpoint=\"{}\",result=\"failure\"}}",
                sick.addr
            )
        )
        .unwrap_or(0.0)
            >= 2.0
    );

    sick.set_health(200);
    wait_until("recovery", || endpoint_state(&gw, sick.addr).0);
    assert_eq!(metric(&gw, &gauge), Some(1.0));
    let names: Vec<String> = (0..10).map(|_| c.get("/").text()).collect();
    assert!(
        names.iter().any(|n| n == "sick"),
        "recovered endpoint unused: {names:?}"
    );
}

#[test]
fn live_traffic_failures_eject_the_endpoint_until_it_returns() {
    let good = Backend::start("good");
    let flaky = Backend::start("flaky");
    let extra = format!(
        "{CHECKS}\n[services.outlier_detection]\nconsecutive_failures = 3\nejection_time = \"1s\"\nmax_ejection_percent = 50\n"
    );
    let gw = Gateway::start(&config(&[&good, &flaky], &extra));
    flaky.set_status(500);
    let mut c = gw.client();
    let mut fives = 0;
    for _ in 0..20 {
        if c.get("/").status == 500 {
            fives += 1;
        }
    }
    assert_eq!(fives, 3, "ejected after exactly 3 consecutive 5xx");
    assert_eq!(
        endpoint_state(&gw, flaky.addr),
        (true, true),
        "health check still passes"
    );
    let hits = flaky.hits();
    for _ in 0..10 {
        assert_eq!(c.get("/").text(), "good");
    }
    assert_eq!(flaky.hits(), hits);

    flaky.set_status(200);
    wait_until("return from ejection", || {
        !endpoint_state(&gw, flaky.addr).1
    });
    let names: Vec<String> = (0..10).map(|_| c.get("/").text()).collect();
    assert!(names.iter().any(|n| n == "flaky"), "{names:?}");
}

#[test]
fn no_healthy_endpoint_is_503() {
    let only = Backend::start("only");
    let gw = Gateway::start(&config(&[&only], CHECKS));
    only.set_health(500);
    wait_until("unhealthy", || !endpoint_state(&gw, only.addr).0);
    let r = gw.client().get("/");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_upstream");
}

#[test]
fn sticky_sessions_pin_and_repin() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let extra =
        format!("{CHECKS}\n[services.sticky_sessions]\ncookie = \"sg_affinity\"\nttl = \"1h\"\n");
    let gw = Gateway::start(&config(&[&a, &b], &extra));
    let mut c = gw.client();
    let first = c.get("/");
    let set = first
        .header("set-cookie")
        .expect("first response pins")
        .to_string();
    assert!(set.starts_with("sg_affinity="), "{set}");
    assert!(set.contains("HttpOnly"), "{set}");
    assert!(set.contains("Max-Age=3600"), "{set}");
    assert!(
        !set.contains("127.0.0.1"),
        "cookie exposes the address: {set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let pinned = first.text();
    for _ in 0..10 {
        let r = c.request("GET", "/", &[("cookie", &cookie)], b"");
        assert_eq!(
            r.text(),
            pinned,
            "round robin would have moved this request"
        );
        assert!(r.header("set-cookie").is_none());
    }
    // The pinned endpoint goes down: the client is re-pinned to the other.
    let (down, other) = if pinned == "a" { (&a, "b") } else { (&b, "a") };
    down.set_health(503);
    wait_until("pinned endpoint unhealthy", || {
        !endpoint_state(&gw, down.addr).0
    });
    let r = c.request("GET", "/", &[("cookie", &cookie)], b"");
    assert_eq!(r.text(), other);
    let repinned = r.header("set-cookie").expect("re-pinned").to_string();
    assert_ne!(repinned.split(';').next().unwrap(), cookie);
}

#[test]
fn a_reload_keeps_the_health_of_endpoints_it_keeps() {
    let good = Backend::start("good");
    let sick = Backend::start("sick");
    let gw = Gateway::start(&config(&[&good, &sick], CHECKS));
    sick.set_health(503);
    wait_until("unhealthy", || !endpoint_state(&gw, sick.addr).0);
    // Same endpoints, another algorithm and weights: the sick one must stay out at once.
    let changed = config(&[&good, &sick], CHECKS).replace("round_robin", "least_connections");
    gw.write_config(&changed);
    assert_eq!(
        gw.admin()
            .request("POST", "/api/v1/reload", &[], b"")
            .status,
        200
    );
    assert_eq!(endpoint_state(&gw, sick.addr), (false, false));
    let before = sick.hits();
    let mut c = gw.client();
    for _ in 0..10 {
        assert_eq!(c.get("/").text(), "good");
    }
    assert_eq!(sick.hits(), before);
}

//! Circuit breakers through the real binary: an endpoint that fails too often is opened, sits
//! out `open_for`, gets exactly `half_open_requests` trials, closes or opens again; every
//! endpoint open is 503 `circuit_open`; and how breakers and outlier ejection combine.

mod support;

use std::time::Duration;

use support::{Backend, Gateway, Toml};

const BREAKER: &str = "[services.circuit_breaker]
failure_rate = 0.5
minimum_requests = 10
window = \"10s\"
open_for = \"2s\"
half_open_requests = 3";

fn state(gw: &Gateway, endpoint: &Backend) -> u64 {
    let series = format!(
        "sluicegate_circuit_breaker_state{{service=\"app\",endpoint=\"{}\"}}",
        endpoint.addr
    );
    let text = gw.admin().get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

fn services_breaker(gw: &Gateway, endpoint: &Backend) -> String {
    let services = gw.admin().get("/api/v1/services").json();
    services["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == endpoint.addr.to_string())
        .map(|e| e["breaker"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn an_endpoint_failing_sixty_percent_opens_sits_out_then_gets_exactly_the_trials() {
    let good = Backend::start("good");
    let bad = Backend::start("bad");
    let gw = Gateway::start(
        &Toml::new()
            .admin()
            .listener("public", "")
            .route("all", "app", "")
            .service("app", &[good.addr, bad.addr], BREAKER)
            .build(),
    );
    let mut c = gw.client();
    assert_eq!(state(&gw, &bad), 0);
    // `bad` fails 3 requests in 5 (60 %).
    let mut sent = 0;
    while state(&gw, &bad) == 0 {
        let failing = bad.hits() % 5 < 3;
        bad.set_status(if failing { 500 } else { 200 });
        c.get("/");
        sent += 1;
        assert!(sent < 60, "the breaker never opened");
    }
    assert_eq!(state(&gw, &bad), 2, "open");
    assert_eq!(services_breaker(&gw, &bad), "open");
    let opened_at = bad.hits();
    assert!(
        opened_at >= 10,
        "opened after {opened_at} requests: below minimum_requests"
    );
    assert!(gw.stderr_text().contains("circuit breaker opened"));

    // Open: no traffic for open_for.
    for _ in 0..20 {
        let r = c.get("/");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-backend"), Some("good"));
    }
    assert_eq!(bad.hits(), opened_at);

    // Half-open after open_for: exactly three trials, then closed.
    std::thread::sleep(Duration::from_millis(2100));
    bad.set_status(200);
    let mut trials = Vec::new();
    for _ in 0..20 {
        c.get("/");
        let hits = bad.hits() - opened_at;
        if trials.last() != Some(&hits) {
            trials.push(hits);
            let now = state(&gw, &bad);
            if hits < 3 {
                assert_eq!(now, 1, "half-open after trial {hits}");
            } else {
                assert_eq!(now, 0, "closed after the third trial");
                break;
            }
        }
    }
    assert_eq!(trials, [1, 2, 3]);
    assert_eq!(services_breaker(&gw, &bad), "closed");

    // A failing trial opens it again at once.
    bad.set_status(500);
    while state(&gw, &bad) != 2 {
        c.get("/");
    }
    std::thread::sleep(Duration::from_millis(2100));
    let before = bad.hits();
    for _ in 0..10 {
        c.get("/");
    }
    assert_eq!(bad.hits(), before + 1, "one failed trial, then open again");
    assert_eq!(state(&gw, &bad), 2);
}

#[test]
fn every_endpoint_open_fails_fast_with_circuit_open() {
    let bad = Backend::start("bad");
    bad.set_status(500);
    let gw = Gateway::start(
        &Toml::new()
            .admin()
            .listener("public", "")
            .route("all", "app", "")
            .service("app", &[bad.addr], BREAKER)
            .build(),
    );
    let mut c = gw.client();
    for _ in 0..10 {
        assert_eq!(c.get("/").status, 500, "the upstream's own answer");
    }
    let r = c.get("/");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "circuit_open");
    assert_eq!(bad.hits(), 10, "refused without reaching the upstream");
}

#[test]
fn outlier_ejection_is_capped_but_breakers_are_not() {
    // Both endpoints fail every request. Outlier detection may eject only half of them (50 %),
    // so alone it keeps sending requests to the other; the breakers take both out.
    let a = Backend::start("a");
    let b = Backend::start("b");
    a.set_status(500);
    b.set_status(500);
    let outlier = "[services.outlier_detection]\nconsecutive_failures = 3\nejection_time = \"30s\"\nmax_ejection_percent = 50";
    let only_outlier = Gateway::start(
        &Toml::new()
            .listener("public", "")
            .route("all", "app", "")
            .service("app", &[a.addr, b.addr], &format!("\n{outlier}"))
            .build(),
    );
    let mut c = only_outlier.client();
    let statuses: Vec<u16> = (0..30).map(|_| c.get("/").status).collect();
    assert!(
        statuses.iter().all(|s| *s == 500),
        "one endpoint stays in, failing: {statuses:?}"
    );
    drop(only_outlier);

    let both = Gateway::start(
        &Toml::new()
            .admin()
            .listener("public", "")
            .route("all", "app", "")
            .service("app", &[a.addr, b.addr], &format!("\n{outlier}\n{BREAKER}"))
            .build(),
    );
    let mut c = both.client();
    let statuses: Vec<u16> = (0..40).map(|_| c.get("/").status).collect();
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    let r = c.get("/");
    assert_eq!(r.json()["error"], "circuit_open");
}

#[test]
fn slow_clients_do_not_open_breakers_on_healthy_endpoints() {
    use std::io::{Read, Write};
    let b = Backend::start("b");
    let gw = Gateway::start(
        &Toml::new()
            .admin()
            .listener("public", "")
            .route("all", "app", "timeout = \"300ms\"")
            .service(
                "app",
                &[b.addr],
                "[services.circuit_breaker]\nminimum_requests = 3\nfailure_rate = 0.5",
            )
            .build(),
    );
    // Each client declares 1000 bytes of body, sends 10 and stalls until the route times out.
    for _ in 0..5 {
        let mut s = std::net::TcpStream::connect(gw.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
            .unwrap();
        let mut answer = [0u8; 12];
        let _ = s.read_exact(&mut answer);
        assert!(
            answer.starts_with(b"HTTP/1.1 5"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(
        state(&gw, &b),
        0,
        "the breaker stays closed: the clients were slow"
    );
    assert_eq!(gw.client().get("/").status, 200);
}

//! Route retries through the real binary: a backend that drops every connection costs clients
//! nothing, an outage is not multiplied past the budget, non-idempotent requests are retried
//! only when nothing was sent (or when configured), bodies are replayed, large ones are not
//! retried, and the log and metrics show the retries.

mod support;

use std::io::Read;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use support::{wait_until, Backend, Client, Gateway, TempDir, Toml};

/// A backend that reads each request and closes the connection without answering.
fn dropping_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            drop(stream);
        }
    });
    addr
}

/// An address nothing listens on.
fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn config(endpoints: &[SocketAddr], retry: &str) -> String {
    Toml::new()
        .admin()
        .listener("public", "")
        .route("all", "app", &format!("retry = {{ {retry} }}"))
        .service("app", endpoints, "")
        .build()
}

fn metric(gw: &Gateway, series: &str) -> u64 {
    gw.metric(series)
}

#[test]
fn a_backend_dropping_every_connection_costs_clients_nothing() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let bad = dropping_backend();
    let gw = Gateway::start(&config(
        &[a.addr, bad, b.addr],
        "attempts = 2, on = [\"connect_failure\", \"reset\", \"5xx\"], backoff = \"1ms\", budget_percent = 50",
    ));
    let addr = gw.addr();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                (0..250).filter(|_| c.get("/").status != 200).count()
            })
        })
        .collect();
    let errors: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(errors, 0, "client errors out of 1,000 GETs");
    assert_eq!(a.hits() + b.hits(), 1000);
    let retried = metric(
        &gw,
        "sluicegate_retries_total{route=\"all\",reason=\"reset\"}",
    );
    // Round robin sends about a third of the first tries to the bad backend (retries move the
    // rotation too, so not exactly); each request is retried at most once (attempts = 2).
    assert!(
        (200..=1000).contains(&retried),
        "retries for 1,000 requests: {retried}"
    );
}

#[test]
fn an_outage_is_not_multiplied_past_the_budget() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    a.set_status(503);
    b.set_status(503);
    let gw = Gateway::start(&config(
        &[a.addr, b.addr],
        "attempts = 3, on = [\"503\"], backoff = \"1ms\", budget_percent = 20, budget_min_per_second = 1",
    ));
    let mut c = gw.client();
    let clients = 200;
    for _ in 0..clients {
        assert_eq!(c.get("/").status, 503);
    }
    let upstream = a.hits() + b.hits();
    // Each client request at most once, plus 20 % of them, plus 1/s over the 10 s window.
    let bound = clients + clients / 5 + 10;
    assert!(
        upstream <= bound,
        "{upstream} upstream requests for {clients} client requests (bound {bound})"
    );
    assert!(upstream > clients, "some retries were made: {upstream}");
}

#[test]
fn a_post_is_retried_after_sending_only_when_configured() {
    let b = Backend::start("b");
    b.set_status(503);
    let plain = Gateway::start(&config(
        &[b.addr],
        "attempts = 2, on = [\"503\"], backoff = \"1ms\"",
    ));
    let r = plain.client().request("POST", "/", &[], b"payload");
    assert_eq!(r.status, 503);
    assert_eq!(b.hits(), 1, "not retried: its body reached the upstream");
    assert_eq!(plain.client().get("/").status, 503);
    assert_eq!(b.hits(), 3, "a GET is retried");
    drop(plain);

    let allowed = Gateway::start(&config(
        &[b.addr],
        "attempts = 2, on = [\"503\"], backoff = \"1ms\", non_idempotent = true",
    ));
    let before = b.hits();
    let r = allowed.client().request("POST", "/", &[], b"payload");
    assert_eq!(r.status, 503);
    assert_eq!(b.hits(), before + 2, "retried with non_idempotent = true");
}

#[test]
fn connect_failures_are_retried_for_any_method_with_the_body_replayed() {
    let good = Backend::start("good");
    let dead = dead_address();
    let dir = TempDir::new("log");
    let log = dir.0.join("access.log");
    let gw = Gateway::start(
        &config(
            &[dead, good.addr],
            "attempts = 2, on = [\"connect_failure\"], backoff = \"1ms\"",
        )
        .replacen(
            "path = \"off\"",
            &format!("path = \"{}\"", log.display()),
            1,
        ),
    );
    let mut c = gw.client();
    let body = vec![b'x'; 1000];
    for _ in 0..4 {
        let r = c.request("POST", "/upload", &[], &body);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "1000", "the whole body reached the good backend");
    }
    assert_eq!(good.hits(), 4);
    // A body over the replay buffer streams and is not retried: the request that meets the
    // dead endpoint fails.
    let big = vec![b'y'; 100 * 1024];
    // (Each on its own connection: after an error the gateway closes a connection whose
    // request body it did not read to the end.)
    let statuses: Vec<u16> = (0..2)
        .map(|_| gw.client().request("POST", "/upload", &[], &big).status)
        .collect();
    assert!(
        statuses.contains(&200) && statuses.contains(&502),
        "{statuses:?}"
    );
    wait_until("the log lines", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 6)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let attempts: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .map(|v| v["attempts"].as_str().unwrap_or("-").to_string())
        .collect();
    assert!(attempts[..4].iter().any(|a| a == "2"), "{attempts:?}");
    assert!(
        attempts[..4].iter().all(|a| a == "1" || a == "2"),
        "{attempts:?}"
    );
}

/// A backend that accepts connections and never answers (it keeps them open).
fn silent_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    addr
}

#[test]
fn per_try_timeouts_move_on_and_the_route_timeout_covers_every_try() {
    let good = Backend::start("good");
    let silent = silent_backend();
    let gw = Gateway::start(&config(
        &[silent, good.addr],
        "attempts = 2, on = [\"timeout\"], backoff = \"1ms\", per_try_timeout = \"200ms\"",
    ));
    for _ in 0..4 {
        let r = gw.client().get("/");
        assert_eq!(
            r.status, 200,
            "the silent endpoint's try timed out and moved on"
        );
    }
    assert_eq!(good.hits(), 4);

    // Every endpoint silent: one deadline (the route's 1 s timeout) over all three tries,
    // not 1 s per try.
    let toml = Toml::new()
        .listener("public", "")
        .route(
            "all",
            "app",
            "timeout = \"1s\"\nretry = { attempts = 3, on = [\"timeout\"], backoff = \"1ms\", per_try_timeout = \"5s\" }",
        )
        .service("app", &[silent_backend(), silent_backend()], "")
        .build();
    let gw = Gateway::start(&toml);
    let started = std::time::Instant::now();
    let r = gw.client().get("/");
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "answered after {:?}: the route timeout bounds all tries",
        started.elapsed()
    );
}

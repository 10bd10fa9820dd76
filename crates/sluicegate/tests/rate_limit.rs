//! Rate limiting with the local store, through the real binary: token buckets per key, the 429
//! and its headers, one bucket across workers, reloads, hostile keys, the log and the metrics.

mod support;

use std::time::Duration;

use support::{Backend, Client, Gateway, Toml};

/// A config with one route `all` under `policy`, and `extra` top-level text after it.
fn limited(backend: &Backend, policy: &str, extra: &str) -> String {
    Toml::new()
        .admin()
        .listener("public", "max_request_header_bytes = \"256KiB\"")
        .route("all", "app", "rate_limit = \"limit\"")
        .service("app", &[backend.addr], "")
        .build()
        + &format!("\n[rate_limits.limit]\n{policy}\n")
        + extra
}

fn metric(gw: &Gateway, series: &str) -> u64 {
    let text = gw.admin().get("/metrics").text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_burst_of_capacity_then_the_refill_rate_with_the_headers() {
    let b = Backend::start("b");
    let gw = Gateway::start(&limited(
        &b,
        "key = \"client_ip\"\ncapacity = 10\nrefill_per_second = 1",
        "",
    ));
    let mut c = gw.client();
    for i in 0..10 {
        let r = c.get("/");
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.header("ratelimit-limit"), Some("10"));
        assert_eq!(r.header("ratelimit-remaining"), Some(&*(9 - i).to_string()));
        assert!(r.header("ratelimit-reset").is_some());
    }
    let refused = c.get("/");
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"], "rate_limited");
    assert!(refused.json()["request_id"].is_string());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.header("ratelimit-limit"), Some("10"));
    assert_eq!(refused.header("ratelimit-remaining"), Some("0"));
    let reset: u64 = refused.header("ratelimit-reset").unwrap().parse().unwrap();
    assert!((9..=10).contains(&reset), "reset {reset}");
    assert_eq!(
        b.hits(),
        10,
        "the refused request never reached the upstream"
    );

    // Two seconds refill two tokens: two more pass, the next does not.
    std::thread::sleep(Duration::from_millis(2050));
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/").status, 429);

    assert_eq!(
        metric(
            &gw,
            "sluicegate_rate_limit_decisions_total{policy=\"limit\",decision=\"allowed\"}"
        ),
        12
    );
    assert_eq!(
        metric(
            &gw,
            "sluicegate_rate_limit_decisions_total{policy=\"limit\",decision=\"limited\"}"
        ),
        2
    );
    let status = gw.admin().get("/api/v1/status").json();
    let route = &status["routes"][0];
    assert_eq!(route["name"], "all");
    assert_eq!(route["policies"], serde_json::json!(["rate_limit:limit"]));
}

#[test]
fn one_bucket_for_the_whole_process_across_workers() {
    let b = Backend::start("b");
    // No refill to speak of during the test: exactly the capacity passes.
    let toml = limited(
        &b,
        "key = \"client_ip\"\ncapacity = 10\nrefill_per_second = 0.001",
        "",
    )
    .replace(
        "[access_log]",
        "[runtime]\nworker_threads = 2\n\n[access_log]",
    );
    let gw = Gateway::start(&toml);
    let addr = gw.addr();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                (0..5).filter(|_| c.get("/").status == 200).count()
            })
        })
        .collect();
    let accepted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(accepted, 10);
    assert_eq!(b.hits(), 10);
}

#[test]
fn header_keys_have_their_own_buckets_and_no_header_shares_one() {
    let b = Backend::start("b");
    let gw = Gateway::start(&limited(
        &b,
        "key = \"header:x-api-key\"\ncapacity = 2\nrefill_per_second = 0.001\nheaders = false",
        "",
    ));
    let mut c = gw.client();
    let with = |c: &mut Client, key: &str| c.request("GET", "/", &[("x-api-key", key)], b"");
    assert_eq!(with(&mut c, "alice").status, 200);
    assert_eq!(with(&mut c, "alice").status, 200);
    let refused = with(&mut c, "alice");
    assert_eq!(refused.status, 429);
    // `headers = false`: no RateLimit-* fields, but the 429 still says when to retry.
    assert!(refused.header("ratelimit-limit").is_none());
    assert!(refused.header("retry-after").is_some());
    assert_eq!(with(&mut c, "bob").status, 200);
    // Without the header, every client shares the anonymous bucket: leaving it out is no way
    // around the limit.
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/").status, 200);
    assert_eq!(gw.client().get("/").status, 429);
    // An empty value is a key like any other, not the anonymous bucket.
    assert_eq!(with(&mut c, "").status, 200);
}

#[test]
fn hostile_keys_cost_a_bucket_each_and_the_store_stays_within_max_keys() {
    let b = Backend::start("b");
    let gw = Gateway::start(&limited(
        &b,
        "key = \"header:x-key\"\ncapacity = 1\nrefill_per_second = 0.001\nmax_keys = 1000",
        "",
    ));
    let mut c = gw.client();
    // 64 KiB of key, twice: one bucket.
    let long = "k".repeat(64 * 1024);
    assert_eq!(c.request("GET", "/", &[("x-key", &long)], b"").status, 200);
    assert_eq!(c.request("GET", "/", &[("x-key", &long)], b"").status, 429);
    // Bytes that are not UTF-8 (obs-text) are a key too.
    let mut raw = gw.client();
    raw.send_raw(b"GET / HTTP/1.1\r\nHost: t\r\nx-key: \xff\xfe\x80\r\n\r\n");
    assert_eq!(raw.read_response(false).status, 200);
    raw.send_raw(b"GET / HTTP/1.1\r\nHost: t\r\nx-key: \xff\xfe\x80\r\n\r\n");
    assert_eq!(raw.read_response(false).status, 429);
    // Many distinct keys: the store holds at most its bound.
    for i in 0..5_000 {
        let key = format!("client-{i}");
        assert_eq!(c.request("GET", "/", &[("x-key", &key)], b"").status, 200);
    }
    let held = metric(&gw, "sluicegate_rate_limit_buckets{policy=\"limit\"}");
    assert!(held > 0 && held <= 1_000, "{held} buckets held");
}

#[test]
fn buckets_survive_a_reload_that_keeps_the_policy() {
    let b = Backend::start("b");
    let policy = "key = \"route\"\ncapacity = 3\nrefill_per_second = 0.001";
    let gw = Gateway::start(&limited(&b, policy, ""));
    let mut c = gw.client();
    for _ in 0..3 {
        assert_eq!(c.get("/").status, 200);
    }
    assert_eq!(c.get("/").status, 429);
    // Another route added; the policy is the same.
    gw.write_config(&limited(
        &b,
        policy,
        "\n[[routes]]\nname = \"other\"\nservice = \"app\"\nmatch = { path_prefix = \"/other\" }\n",
    ));
    let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(c.get("/").status, 429, "the emptied bucket is still empty");
    assert_eq!(c.get("/other").status, 200, "a route without the policy");
}

#[test]
fn refusals_and_decisions_are_in_the_access_log() {
    let b = Backend::start("b");
    let dir = support::TempDir::new("rl-log");
    let log = dir.0.join("access.log");
    let toml = limited(
        &b,
        "key = \"client_ip\"\ncapacity = 1\nrefill_per_second = 0.001",
        "",
    )
    .replace("path = \"off\"", &format!("path = \"{}\"", log.display()));
    let gw = Gateway::start(&toml);
    let mut c = gw.client();
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/").status, 429);
    let mut lines = Vec::new();
    support::wait_until("two log lines", Duration::from_secs(10), || {
        lines = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        lines.len() >= 2
    });
    assert_eq!(lines[0]["rate_limit"], "allowed");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[1]["rate_limit"], "limited");
    assert_eq!(lines[1]["status"], 429);
    assert_eq!(lines[1]["route"], "all");
    drop(gw);
}

#[test]
fn a_route_without_policies_carries_no_rate_limit_fields() {
    let b = Backend::start("b");
    let gw = Gateway::start(&Toml::proxy_to(&[b.addr]).build());
    let r = gw.client().get("/");
    assert_eq!(r.status, 200);
    assert!(r.header("ratelimit-limit").is_none());
}

#[test]
fn http2_and_grpc_requests_are_limited_alike() {
    let b = Backend::start("b");
    let gw = Gateway::start(&limited(
        &b,
        "key = \"route\"\ncapacity = 2\nrefill_per_second = 0.001",
        "",
    ));
    let url = format!("http://{}/", gw.addr());
    for remaining in ["1", "0"] {
        let (head, body) = support::curl_h2(&url, &[]);
        assert!(head.starts_with("http/2 200"), "{head}");
        assert!(
            head.contains(&format!("ratelimit-remaining: {remaining}")),
            "{head}"
        );
        assert_eq!(body, "b");
    }
    let (head, body) = support::curl_h2(&url, &[]);
    assert!(head.starts_with("http/2 429"), "{head}");
    assert!(head.contains("retry-after:"), "{head}");
    assert!(body.contains("\"rate_limited\""), "{body}");
    // gRPC: a status in the trailers-only answer, not a JSON body.
    let (head, body) = support::curl_h2(
        &format!("http://{}/grpc.health.v1.Health/Check", gw.addr()),
        &["-X", "POST", "-H", "content-type: application/grpc"],
    );
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("grpc-status: 8"), "{head}");
    assert!(
        head.contains("grpc-message:") && head.contains("rate_limited"),
        "{head}"
    );
    assert!(body.is_empty(), "{body}");
    assert_eq!(b.hits(), 2);
}

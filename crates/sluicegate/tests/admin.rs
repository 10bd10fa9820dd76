//! The admin API and hot reload through the real binary.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Backend, Client, Gateway, Toml};

/// A config with an admin API, listener `public` (and `second` when asked), weighted round robin.
fn config(backends: &[(&Backend, u32)], second_listener: bool) -> String {
    let endpoints: Vec<_> = backends.iter().map(|(b, w)| (b.addr, *w)).collect();
    let mut toml = Toml::new().admin().listener("public", "");
    if second_listener {
        toml = toml.listener("second", "");
    }
    toml.route("all", "app", "")
        .weighted_service("app", &endpoints, "algorithm = \"weighted_round_robin\"")
        .build()
}

#[test]
fn status_and_services_have_the_spec_shapes() {
    let b = Backend::start("b");
    let gw = Gateway::start(&config(&[(&b, 3)], false));
    let mut admin = gw.admin();
    assert_eq!(admin.get("/healthz").status, 200);
    assert_eq!(admin.get("/readyz").status, 200);
    let s = admin.get("/api/v1/status").json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert!(s["uptime_seconds"].is_u64());
    assert_eq!(s["config_hash"].as_str().unwrap().len(), 64);
    assert_eq!(s["last_reload"]["result"], "success");
    assert!(s["last_reload"]["at"].as_str().unwrap().ends_with('Z'));
    let v = admin.get("/api/v1/services").json();
    let svc = &v["services"][0];
    assert_eq!(svc["name"], "app");
    assert_eq!(svc["algorithm"], "weighted_round_robin");
    let e = &svc["endpoints"][0];
    assert_eq!(e["address"], b.addr.to_string());
    assert_eq!(e["weight"], 3);
    assert_eq!(e["healthy"], true);
    assert_eq!(e["ejected"], false);
    assert_eq!(e["breaker"], "closed");
    assert_eq!(e["in_flight"], 0);
    let page = admin.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().contains("/api/v1/services"));
    let r = admin.get("/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "no_route");
}

#[test]
fn metrics_parse_with_the_prometheus_parser_and_name_every_built_metric() {
    let b = Backend::start("b");
    let gw = Gateway::start(&config(&[(&b, 1)], false));
    let mut c = gw.client();
    for _ in 0..3 {
        assert_eq!(c.get("/").status, 200);
    }
    // One failed reload, to have both results counted.
    gw.write_config("this is not toml");
    assert_eq!(
        gw.admin()
            .request("POST", "/api/v1/reload", &[], b"")
            .status,
        400
    );
    let text = gw.admin().get("/metrics").text();
    for name in [
        "sluicegate_http_requests_total",
        "sluicegate_http_request_duration_seconds",
        "sluicegate_upstream_requests_total",
        "sluicegate_endpoint_healthy",
        "sluicegate_endpoint_in_flight",
        "sluicegate_connections_active",
        "sluicegate_config_reloads_total",
        "sluicegate_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert!(text.contains(
        "sluicegate_http_requests_total{listener=\"public\",route=\"all\",service=\"app\",code=\"200\"} 3"
    ), "{text}");
    assert!(
        text.contains("sluicegate_config_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );
    // The reference parser must accept the whole exposition.
    let dir = support::TempDir::new("metrics");
    let file = dir.write("metrics.txt", &text);
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\n\
             fams = list(text_string_to_metric_families(open(sys.argv[1]).read()))\n\
             print(len(fams), sorted(f.name for f in fams))",
        )
        .arg(&file)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = String::from_utf8_lossy(&out.stdout);
    assert!(
        parsed.contains("sluicegate_http_request_duration_seconds"),
        "{parsed}"
    );
}

#[test]
fn invalid_reload_is_refused_and_the_old_config_keeps_serving() {
    let b = Backend::start("b");
    let gw = Gateway::start(&config(&[(&b, 1)], false));
    let hash = gw.admin().get("/api/v1/status").json()["config_hash"].clone();
    gw.write_config(&config(&[(&b, 1)], false).replace("weighted_round_robin", "fastest"));
    let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"], "bad_request");
    let problems = v["problems"].as_array().unwrap();
    assert!(
        problems[0]
            .as_str()
            .unwrap()
            .contains("unknown algorithm \"fastest\""),
        "{v}"
    );
    let s = gw.admin().get("/api/v1/status").json();
    assert_eq!(s["config_hash"], hash);
    assert_eq!(s["last_reload"]["result"], "failure");
    assert_eq!(gw.client().get("/").status, 200);
}

#[test]
fn sighup_and_api_reloads_apply_new_endpoints() {
    let a = Backend::start("a");
    let b = Backend::start("b");
    let gw = Gateway::start(&config(&[(&a, 1)], false));
    let mut c = gw.client();
    assert_eq!(c.get("/").text(), "a");
    gw.write_config(&config(&[(&b, 1)], false));
    gw.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.get("/").text() != "b" {
        assert!(Instant::now() < deadline, "SIGHUP reload never applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    gw.write_config(&config(&[(&a, 1), (&b, 1)], false));
    let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"], "success");
    let names: Vec<String> = (0..4).map(|_| c.get("/").text()).collect();
    assert!(
        names.contains(&"a".to_string()) && names.contains(&"b".to_string()),
        "{names:?}"
    );
}

#[test]
fn reload_adds_and_removes_listeners() {
    let b = Backend::start("b");
    let gw = Gateway::start(&config(&[(&b, 1)], false));
    gw.write_config(&config(&[(&b, 1)], true));
    assert_eq!(
        gw.admin()
            .request("POST", "/api/v1/reload", &[], b"")
            .status,
        200
    );
    let (name, second) = gw
        .next_listening(Duration::from_secs(10))
        .expect("new listener logged");
    assert_eq!(name, "second");
    assert_eq!(Client::connect(second).get("/").text(), "b");
    let mut kept = Client::connect(second);
    assert_eq!(kept.get("/").status, 200);
    // Removing it: no new connections, and the open one is closed once idle.
    gw.write_config(&config(&[(&b, 1)], false));
    assert_eq!(
        gw.admin()
            .request("POST", "/api/v1/reload", &[], b"")
            .status,
        200
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(second).is_ok() {
        assert!(Instant::now() < deadline, "removed listener still accepts");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        gw.client().get("/").status,
        200,
        "the kept listener serves on"
    );
}

#[test]
fn reload_under_load_fails_no_request() {
    let backends: Vec<Backend> = (0..3).map(|i| Backend::start(&format!("b{i}"))).collect();
    let gw = Gateway::start(&config(&[(&backends[0], 1), (&backends[1], 1)], false));
    let addr = gw.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    if c.get("/").status == 200 {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut reloads = 0;
    while reloads < 50 || started.elapsed() < Duration::from_secs(10) {
        if reloads < 50 {
            // Endpoint sets and weights change every time.
            let set: Vec<(&Backend, u32)> = match reloads % 3 {
                0 => vec![(&backends[0], 1), (&backends[2], 3)],
                1 => vec![(&backends[1], 2)],
                _ => vec![(&backends[0], 5), (&backends[1], 1), (&backends[2], 1)],
            };
            gw.write_config(&config(&set, false));
            let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
            assert_eq!(r.status, 200, "{}", r.text());
            reloads += 1;
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client thread");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("reload under load: {reloads} reloads, {ok} requests ok, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 1000, "too little traffic to mean anything: {ok}");
}

#[test]
fn readyz_turns_503_while_draining_and_the_in_flight_request_finishes() {
    let b = Backend::start("b");
    let mut gw = Gateway::start(&config(&[(&b, 1)], false));
    let addr = gw.addr();
    let slow = std::thread::spawn(move || Client::connect(addr).get("/sleep/2000"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.hits() == 0 {
        assert!(Instant::now() < deadline, "request never arrived");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut admin = gw.admin();
    assert_eq!(admin.get("/readyz").status, 200);
    gw.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = admin.get("/readyz");
        if r.status == 503 {
            assert_eq!(r.json()["status"], "draining");
            break;
        }
        assert!(Instant::now() < deadline, "readyz never turned 503");
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200, "the in-flight request finished");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn write_endpoints_need_the_admin_token_when_one_is_set_and_a_reload_rotates_it() {
    let b = Backend::start("b");
    let with_token = |token: &str| {
        config(&[(&b, 1)], false).replace(
            "[admin]\nbind = \"127.0.0.1:0\"\n",
            &format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{token}\"\n"),
        )
    };
    let gw = Gateway::start(&with_token("first-0123456789"));
    let reload =
        |headers: &[(&str, &str)]| gw.admin().request("POST", "/api/v1/reload", headers, b"");
    let refused = reload(&[]);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.json()["error"], "unauthenticated");
    assert_eq!(
        refused.header("www-authenticate"),
        Some("Bearer realm=\"sluicegate-admin\"")
    );
    for wrong in [
        "Bearer first-012345678",
        "Basic first-0123456789",
        "first-0123456789",
    ] {
        assert_eq!(reload(&[("authorization", wrong)]).status, 401, "{wrong}");
    }
    let purge = gw
        .admin()
        .request("POST", "/api/v1/cache/purge", &[], br#"{"prefix": "/"}"#);
    assert_eq!(purge.status, 401, "every write endpoint");
    // Reads stay open.
    assert_eq!(gw.admin().get("/api/v1/status").status, 200);
    assert_eq!(gw.admin().get("/metrics").status, 200);
    // The right token, in any case of the scheme; a reload to a new token rotates it.
    gw.write_config(&with_token("second-0123456789"));
    let r = reload(&[("authorization", "bearer first-0123456789")]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        reload(&[("authorization", "Bearer first-0123456789")]).status,
        401
    );
    assert_eq!(
        reload(&[("authorization", "Bearer second-0123456789")]).status,
        200
    );
}

#[test]
fn a_non_loopback_admin_without_a_token_serves_reads_only() {
    let b = Backend::start("b");
    let toml = config(&[(&b, 1)], false).replace(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        "[admin]\nbind = \"0.0.0.0:0\"\n",
    );
    let gw = Gateway::start(&toml);
    let r = gw.admin().request("POST", "/api/v1/reload", &[], b"");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(gw.admin().get("/api/v1/status").status, 200);
    assert!(gw
        .stderr_text()
        .contains("bound to a non-loopback address without [admin] token"));
}

#[test]
fn an_admin_token_that_cannot_be_a_bearer_token_is_refused() {
    for token in ["", "has space", "quote\\\"d"] {
        let toml = format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{token}\"\n");
        let (code, _, stderr) = support::check(&toml);
        assert_eq!(code, 1, "{token}");
        assert!(
            stderr.contains("admin.token: expected a non-empty bearer token"),
            "{stderr}"
        );
    }
}

/// Routes `all` (everything) and `idle` (a prefix no request uses), to one backend; `extra`
/// too when asked (a reload adds it).
fn stats_config(b: &Backend, extra: bool) -> String {
    let mut toml = Toml::new()
        .admin()
        .listener("public", "")
        .route("all", "app", "")
        .route("idle", "app", "match = { path_prefix = \"/never\" }");
    if extra {
        toml = toml.route("extra", "app", "match = { path_prefix = \"/extra\" }");
    }
    toml.service("app", &[b.addr], "").build()
}

/// The entry of route `name` in `GET /api/v1/routes/stats`.
fn route_stats(gw: &Gateway, name: &str) -> serde_json::Value {
    let v = gw.admin().get("/api/v1/routes/stats?window=60s").json();
    v["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no route {name} in {v}"))
}

#[test]
fn route_stats_show_rate_error_ratio_and_p99_from_real_traffic() {
    let b = Backend::start("b");
    let gw = Gateway::start(&stats_config(&b, false));
    let mut c = gw.client();
    for i in 0..40 {
        // One in four answered 500 by the backend.
        let (path, status) = if i % 4 == 0 {
            ("/status/500", 500)
        } else {
            ("/", 200)
        };
        assert_eq!(c.get(path).status, status);
    }
    // Responses are counted when the exchange ends, just after the client has its answer.
    support::wait_until("40 requests counted", Duration::from_secs(10), || {
        route_stats(&gw, "all")["requests"] == 40
    });
    let v = gw.admin().get("/api/v1/routes/stats?window=60s").json();
    assert_eq!(v["window_seconds"], 60.0);
    assert_eq!(v["sample_interval_seconds"], 5.0);
    let span = v["span_seconds"].as_f64().unwrap();
    assert!(span > 0.0 && span <= 65.0, "{v}");
    let all = &v["routes"][0];
    assert_eq!(all["name"], "all");
    assert_eq!(all["service"], "app");
    assert_eq!(all["errors"], 10, "{v}");
    let ratio = all["error_ratio"].as_f64().unwrap();
    assert!((ratio - 0.25).abs() < 1e-9, "{v}");
    assert_eq!(all["requests"], 40, "{v}");
    // The rate is the count over the span the answer states.
    let rate = all["requests_per_second"].as_f64().unwrap();
    assert!((rate * span - 40.0).abs() < 1e-6, "{v}");
    // Within the histogram's buckets; no claim about how fast the machine is.
    let p99 = all["p99_seconds"].as_f64().unwrap();
    assert!(p99 > 0.0 && p99 <= 10.0, "{v}");
    let series = all["series"].as_array().unwrap();
    assert!(!series.is_empty(), "{v}");
    assert_eq!(series.last().unwrap()["seconds_ago"], 0.0);
    // The route nobody asked for: no rate, no ratio, no latency.
    let idle = &v["routes"][1];
    assert_eq!(idle["name"], "idle");
    assert_eq!(idle["requests"], 0);
    assert_eq!(idle["requests_per_second"], 0.0);
    assert!(idle["error_ratio"].is_null(), "{v}");
    assert!(idle["p99_seconds"].is_null(), "{v}");

    // A reload that adds a route keeps the others' counts (not counted twice, not lost).
    gw.write_config(&stats_config(&b, true));
    assert_eq!(
        gw.admin()
            .request("POST", "/api/v1/reload", &[], b"")
            .status,
        200
    );
    let all = route_stats(&gw, "all");
    assert_eq!((&all["requests"], &all["errors"]), (&40.into(), &10.into()));
    let extra = route_stats(&gw, "extra");
    assert_eq!(extra["requests"], 0);
    assert!(extra["p99_seconds"].is_null());
    assert_eq!(c.get("/extra/x").status, 200);
    support::wait_until(
        "the new route's request counted",
        Duration::from_secs(10),
        || route_stats(&gw, "extra")["requests"] == 1,
    );
    assert_eq!(route_stats(&gw, "extra")["error_ratio"], 0.0);
}

#[test]
fn route_stats_refuse_a_bad_window_with_400() {
    let b = Backend::start("b");
    let gw = Gateway::start(&stats_config(&b, false));
    let mut admin = gw.admin();
    assert_eq!(
        admin.get("/api/v1/routes/stats").json()["window_seconds"],
        60.0
    );
    assert_eq!(
        admin.get("/api/v1/routes/stats?window=5m").json()["window_seconds"],
        300.0
    );
    for (query, says) in [
        ("window=sixty", "window: duration \"sixty\""),
        ("window=", "window: duration \"\""),
        ("window=1s", "window must be from 5s to 300s"),
        ("window=1h", "window must be from 5s to 300s"),
        ("window=99999999999999999999999s", "too large"),
        ("windw=60s", "unknown query parameter \"windw\""),
        ("window=60s&window=30s", "more than once"),
        ("window=%FF", "window"),
    ] {
        let r = admin.get(&format!("/api/v1/routes/stats?{query}"));
        assert_eq!(r.status, 400, "{query}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"], "bad_request", "{query}");
        let message = v["message"].as_str().unwrap();
        assert!(message.contains(says), "{query}: {message}");
        assert!(v["request_id"].is_string());
    }
}

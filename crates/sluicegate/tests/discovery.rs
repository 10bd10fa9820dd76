//! Service discovery through the real binary: endpoints registered over the admin API (with a
//! token), kept by heartbeats, removed by silence or `DELETE`, kept across reloads, and changed
//! under load without a failed request.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{Backend, Client, Gateway, Toml};

const TOKEN: &str = "test-token-0123456789";

/// A gateway (admin API with a token, listener `public`, route `all`) whose service `app` has
/// `static_endpoints` and the keys `extra`.
fn gateway_toml(static_endpoints: &[&Backend], extra: &str) -> String {
    let addrs: Vec<_> = static_endpoints.iter().map(|b| b.addr).collect();
    let toml = Toml::new()
        .admin()
        .listener("public", "")
        .route("all", "app", "")
        .service("app", &addrs, extra)
        .build();
    toml.replace(
        "[admin]\nbind = \"127.0.0.1:0\"\n",
        &format!("[admin]\nbind = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n"),
    )
}

/// `static_endpoints`, and registry discovery with `default_ttl`.
fn config(static_endpoints: &[&Backend], default_ttl: &str) -> String {
    gateway_toml(
        static_endpoints,
        &format!("discovery = {{ type = \"registry\", default_ttl = \"{default_ttl}\" }}"),
    )
}

const AUTH: (&str, &str) = ("authorization", "Bearer test-token-0123456789");

fn register(gw: &Gateway, backend: &Backend, ttl: &str) -> u16 {
    let body = format!(r#"{{"address": "{}", "ttl": "{ttl}"}}"#, backend.addr);
    gw.admin()
        .request(
            "POST",
            "/api/v1/services/app/endpoints",
            &[AUTH],
            body.as_bytes(),
        )
        .status
}

/// The backends that answered `n` requests.
fn answered(gw: &Gateway, n: usize) -> HashSet<String> {
    let mut c = gw.client();
    (0..n).map(|_| c.get("/").text()).collect()
}

fn endpoints(gw: &Gateway) -> Vec<(String, String)> {
    let services = gw.admin().get("/api/v1/services").json();
    services["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["address"].as_str().unwrap().to_string(),
                e["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn heartbeats_keep_registered_endpoints_and_silence_removes_them() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let gw = Gateway::start(&config(&[], "30s"));
    // Nothing registered yet: no endpoint to send to.
    let none = gw.client().get("/");
    assert_eq!(
        (none.status, none.json()["error"].as_str()),
        (503, Some("no_healthy_upstream"))
    );
    for backend in [&a, &b, &c] {
        assert_eq!(register(&gw, backend, "2s"), 200);
    }
    assert_eq!(
        answered(&gw, 30),
        HashSet::from(["a", "b", "c"].map(String::from))
    );
    let registered = Instant::now();
    // a and b send heartbeats every 500 ms; c falls silent.
    let mut gone_at = None;
    while registered.elapsed() < Duration::from_millis(4500) {
        std::thread::sleep(Duration::from_millis(500));
        for backend in [&a, &b] {
            assert_eq!(register(&gw, backend, "2s"), 200);
        }
        if gone_at.is_none() && endpoints(&gw).len() == 2 {
            gone_at = Some(registered.elapsed());
        }
    }
    let gone_at = gone_at.expect("the silent endpoint was removed");
    assert!(
        gone_at <= Duration::from_secs(3),
        "removed after {gone_at:?}"
    );
    assert_eq!(
        answered(&gw, 30),
        HashSet::from(["a", "b"].map(String::from))
    );
    let listed = endpoints(&gw);
    assert!(
        listed.iter().all(|(_, source)| source == "registry"),
        "{listed:?}"
    );
    assert!(gw
        .stderr_text()
        .contains("registration expired without a heartbeat"));
}

#[test]
fn writes_need_the_token_and_bad_registrations_are_refused() {
    let a = Backend::start("a");
    let gw = Gateway::start(&config(&[], "30s"));
    let body = format!(r#"{{"address": "{}"}}"#, a.addr);
    let post = |path: &str, headers: &[(&str, &str)], body: &str| {
        gw.admin().request("POST", path, headers, body.as_bytes())
    };
    let r = post("/api/v1/services/app/endpoints", &[], &body);
    assert_eq!(r.status, 401);
    let r = post("/api/v1/services/nope/endpoints", &[AUTH], &body);
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (404, Some("not_found"))
    );
    for bad in [
        r#"{"address": "not-an-address"}"#,
        r#"{"address": "127.0.0.1:1", "weight": 0}"#,
        r#"{"address": "127.0.0.1:1", "ttl": "soon"}"#,
        r#"{"address": "127.0.0.1:1", "zone": "a"}"#,
        r#"{"address": "127.0.0.1:1", "ttl": 18446744073709551615}"#,
        r#"{"address": "127.0.0.1:1", "ttl": "2d"}"#,
        "[]",
    ] {
        let r = post("/api/v1/services/app/endpoints", &[AUTH], bad);
        assert_eq!(r.status, 400, "{bad}");
    }
    // A browser's write (it sends Origin) is refused, token or not.
    let r = post(
        "/api/v1/services/app/endpoints",
        &[AUTH, ("origin", "https://evil.example")],
        &body,
    );
    assert_eq!(r.status, 403);
    assert!(endpoints(&gw).is_empty());
}

#[test]
fn static_and_registered_endpoints_together_deregistered_and_kept_across_a_reload() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let gw = Gateway::start(&config(&[&a], "60s"));
    assert_eq!(register(&gw, &b, "60s"), 200);
    assert_eq!(
        answered(&gw, 20),
        HashSet::from(["a", "b"].map(String::from))
    );
    let mut listed = endpoints(&gw);
    listed.sort();
    let mut expected = vec![
        (a.addr.to_string(), "static".to_string()),
        (b.addr.to_string(), "registry".to_string()),
    ];
    expected.sort();
    assert_eq!(listed, expected);
    // A reload (the same file) keeps the registration.
    gw.write_config(&config(&[&a], "60s"));
    let r = gw.admin().request("POST", "/api/v1/reload", &[AUTH], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        answered(&gw, 20),
        HashSet::from(["a", "b"].map(String::from))
    );
    // DELETE by path, then again: 404.
    let path = format!("/api/v1/services/app/endpoints/{}", b.addr);
    let r = gw.admin().request("DELETE", &path, &[AUTH], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(answered(&gw, 10), HashSet::from(["a".to_string()]));
    let r = gw.admin().request("DELETE", &path, &[AUTH], b"");
    assert_eq!(r.status, 404);
    // DELETE with a body.
    assert_eq!(register(&gw, &b, "60s"), 200);
    let body = format!(r#"{{"address": "{}"}}"#, b.addr);
    let r = gw.admin().request(
        "DELETE",
        "/api/v1/services/app/endpoints",
        &[AUTH],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(endpoints(&gw).len(), 1);
}

#[test]
fn endpoints_come_and_go_under_load_without_a_failed_request() {
    let backends: Vec<Backend> = (0..4).map(|i| Backend::start(&format!("b{i}"))).collect();
    let gw = Gateway::start(&config(&[&backends[0]], "60s"));
    let addr = gw.addr();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    let r = c.get("/");
                    let counter = if r.status == 200 { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // Every 200 ms for 10 s, one of three backends is registered or deregistered.
    let started = Instant::now();
    let mut step = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let backend = &backends[1 + step % 3];
        if (step / 3) % 2 == 0 {
            assert_eq!(register(&gw, backend, "60s"), 200);
        } else {
            let path = format!("/api/v1/services/app/endpoints/{}", backend.addr);
            assert_eq!(
                gw.admin().request("DELETE", &path, &[AUTH], b"").status,
                200
            );
        }
        step += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "{failed} failed of {}", ok + failed);
    assert!(ok > 100, "{ok}");
    assert!(backends[1..].iter().any(|b| b.hits() > 0));
}

#[test]
fn discovery_settings_not_built_yet_or_wrong_are_refused() {
    let service = |extra: &str| {
        Toml::new()
            .listener("public", "")
            .route("all", "app", "")
            .service("app", &[], extra)
            .build()
    };
    for (extra, expected) in [
        (
            "discovery = { type = \"dns\", name = \"x\" }",
            "discovery.port",
        ),
        (
            "discovery = { type = \"dns\", name = \"x\", record = \"mx\" }",
            "unknown record \"mx\"",
        ),
        (
            "discovery = { type = \"dns\", name = \"x\", port = 80, refresh = \"100ms\" }",
            "refresh: must be at least 1s",
        ),
        (
            "discovery = { type = \"consul\" }",
            "unknown discovery \"consul\"",
        ),
        (
            "discovery = { type = \"registry\", default_ttl = \"0s\" }",
            "default_ttl: must be more than 0",
        ),
        (
            "discovery = { type = \"registry\" }\ninitial_health = \"maybe\"",
            "initial_health: unknown value \"maybe\"",
        ),
        ("", "needs at least one endpoint"),
    ] {
        let (code, _, stderr) = support::check(&service(extra));
        assert_eq!(code, 1, "{extra}");
        assert!(stderr.contains(expected), "{extra}: {stderr}");
    }
    let (code, _, stderr) = support::check(&service("discovery = { type = \"registry\" }"));
    assert_eq!(code, 0, "{stderr}");
}

/// A gateway whose service `app` takes its endpoints from `path`.
fn file_config(path: &std::path::Path) -> String {
    gateway_toml(
        &[],
        &format!(
            "discovery = {{ type = \"file\", path = \"{}\" }}",
            path.display()
        ),
    )
}

fn listing(backends: &[&Backend]) -> String {
    let entries: Vec<String> = backends
        .iter()
        .map(|b| format!(r#"{{"address": "{}"}}"#, b.addr))
        .collect();
    format!("[{}]", entries.join(", "))
}

/// Waits until `gw` answers with exactly `names`; how long that took.
fn follows(gw: &Gateway, names: &[&str]) -> Duration {
    let wanted: HashSet<String> = names.iter().map(|n| n.to_string()).collect();
    let started = Instant::now();
    support::wait_until("traffic follows the file", Duration::from_secs(5), || {
        answered(gw, 12) == wanted
    });
    started.elapsed()
}

#[test]
fn a_watched_file_is_followed_through_rename_truncate_and_invalid_edits() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let dir = support::TempDir::new("discovery-file");
    let path = dir.write("endpoints.json", &listing(&[&a]));
    let gw = Gateway::start(&file_config(&path));
    assert_eq!(answered(&gw, 10), HashSet::from(["a".to_string()]));
    // Written elsewhere, then renamed over it (how deploy tools and editors write).
    let staged = dir.write("staged.json", &listing(&[&a, &b]));
    std::fs::rename(&staged, &path).unwrap();
    let took = follows(&gw, &["a", "b"]);
    assert!(
        took <= Duration::from_secs(1),
        "rename followed after {took:?}"
    );
    // Truncated and written in place.
    std::fs::write(&path, listing(&[&c])).unwrap();
    let took = follows(&gw, &["c"]);
    assert!(
        took <= Duration::from_secs(1),
        "rewrite followed after {took:?}"
    );
    // An invalid edit is refused: the last good set stays, and the problem says where.
    std::fs::write(
        &path,
        "[{\"address\": \"10.0.0.1:80\"},\n {\"address\": \"nope\"}]",
    )
    .unwrap();
    support::wait_until("the problem is seen", Duration::from_secs(5), || {
        gw.stderr_text().contains("discovery file refused")
    });
    assert_eq!(answered(&gw, 10), HashSet::from(["c".to_string()]));
    let services = gw.admin().get("/api/v1/services").json();
    let discovery = &services["services"][0]["discovery"];
    assert_eq!(discovery["type"], "file");
    let problem = discovery["last_error"].as_str().unwrap();
    assert!(problem.contains("endpoints.json:2:3:"), "{problem}");
    assert_eq!(
        services["services"][0]["endpoints"][0]["source"], "file",
        "{services}"
    );
    assert!(
        gw.metric("sluicegate_discovery_refreshes_total{service=\"app\",result=\"failure\"}") >= 1
    );
    // Fixed again: followed.
    std::fs::write(&path, listing(&[&a, &c])).unwrap();
    follows(&gw, &["a", "c"]);
}

#[test]
fn a_broken_discovery_file_refuses_the_config_with_where() {
    let dir = support::TempDir::new("discovery-broken");
    let path = dir.write(
        "endpoints.toml",
        "[[endpoints]]\naddress = \"10.0.0.1:80\"\nweight = 0\n",
    );
    let (code, _, stderr) = support::check(&file_config(&path));
    assert_eq!(code, 1);
    assert!(
        stderr.contains("endpoints.toml:3:10: weight 0 is not from 1 to 1000"),
        "{stderr}"
    );
    let other = dir.write("endpoints.yaml", "[]");
    let (code, _, stderr) = support::check(&file_config(&other));
    assert_eq!(code, 1);
    assert!(stderr.contains("ends in .json or .toml"), "{stderr}");
}

/// A gateway whose service `app` resolves its endpoints from the test's DNS server.
fn dns_config(dns: &support::dns::DnsServer, discovery: &str) -> String {
    gateway_toml(
        &[],
        &format!(
            "algorithm = \"weighted_round_robin\"\ndiscovery = {{ type = \"dns\", resolver = \"{}\", refresh = \"1s\", {discovery} }}",
            dns.addr
        ),
    )
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_records_are_followed_and_a_dns_outage_keeps_the_last_set() {
    let port = free_port();
    let at = |ip: &str| std::net::SocketAddr::new(ip.parse().unwrap(), port);
    let a = Backend::start_on("a", at("127.0.0.2"));
    let b = Backend::start_on("b", at("127.0.0.3"));
    let dns = support::dns::DnsServer::start();
    dns.set_ips("users.test", &["127.0.0.2".parse().unwrap()]);
    let gw = Gateway::start(&dns_config(
        &dns,
        &format!("name = \"users.test\", port = {port}"),
    ));
    follows(&gw, &["a"]);
    // The records change: traffic follows within the refresh (1 s, the records' TTL too).
    dns.set_ips(
        "users.test",
        &["127.0.0.2".parse().unwrap(), "127.0.0.3".parse().unwrap()],
    );
    let took = follows(&gw, &["a", "b"]);
    assert!(took <= Duration::from_secs(2), "followed after {took:?}");
    let listed = endpoints(&gw);
    assert!(
        listed.iter().all(|(_, source)| source == "dns"),
        "{listed:?}"
    );
    // The DNS server stops answering: the last set keeps serving.
    dns.stop();
    support::wait_until("the failure is seen", Duration::from_secs(10), || {
        gw.stderr_text().contains("DNS discovery failed")
    });
    assert_eq!(
        answered(&gw, 20),
        HashSet::from(["a", "b"].map(String::from))
    );
    let services = gw.admin().get("/api/v1/services").json();
    let discovery = &services["services"][0]["discovery"];
    assert_eq!(discovery["type"], "dns");
    assert!(discovery["last_error"].is_string(), "{discovery}");
    drop((a, b));
}

#[test]
fn srv_weights_split_traffic_and_only_the_lowest_priority_serves() {
    let (a, b, c) = (
        Backend::start("a"),
        Backend::start("b"),
        Backend::start("c"),
    );
    let dns = support::dns::DnsServer::start();
    dns.set_srv(
        "_http._tcp.users.test",
        &[
            (10, 1, a.addr.port(), "a.test"),
            (10, 3, b.addr.port(), "b.test"),
            (20, 1, c.addr.port(), "c.test"),
        ],
    );
    for host in ["a.test", "b.test", "c.test"] {
        dns.set_ips(host, &["127.0.0.1".parse().unwrap()]);
    }
    let gw = Gateway::start(&dns_config(
        &dns,
        "name = \"_http._tcp.users.test\", record = \"srv\"",
    ));
    follows(&gw, &["a", "b"]);
    let mut c_hits = 0;
    let mut counts = std::collections::HashMap::new();
    let mut client = gw.client();
    for _ in 0..400 {
        let name = client.get("/").text();
        c_hits += usize::from(name == "c");
        *counts.entry(name).or_insert(0) += 1;
    }
    assert_eq!(
        c_hits, 0,
        "priority 20 is not used while priority 10 serves"
    );
    let (on_a, on_b) = (counts["a"], counts["b"]);
    assert!(
        (95..=105).contains(&on_a) && (295..=305).contains(&on_b),
        "{counts:?}"
    );
}

#[test]
fn a_new_endpoint_of_a_checked_service_waits_for_its_checks() {
    let (a, b) = (Backend::start("a"), Backend::start("b"));
    let checks = "discovery = { type = \"registry\" }\n[services.health_check]\npath = \"/healthz\"\ninterval = \"300ms\"\ntimeout = \"200ms\"\nhealthy_threshold = 2";
    let gw = Gateway::start(&gateway_toml(&[&a], checks));
    assert_eq!(register(&gw, &b, "60s"), 200);
    // Registered, listed, but unhealthy until two checks pass.
    let services = gw.admin().get("/api/v1/services").json();
    let listed = services["services"][0]["endpoints"]
        .as_array()
        .unwrap()
        .clone();
    let new = listed
        .iter()
        .find(|e| e["address"] == b.addr.to_string())
        .unwrap();
    assert_eq!(new["healthy"], false, "{listed:?}");
    assert_eq!(answered(&gw, 10), HashSet::from(["a".to_string()]));
    follows(&gw, &["a", "b"]);
    assert!(b.health_hits.load(Ordering::Relaxed) >= 2);
}

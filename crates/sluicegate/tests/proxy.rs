//! The HTTP/1.1 proxy through the real binary: routing, header rewriting, errors, limits.

mod support;

use std::time::Duration;

use support::{raw_exchange, Backend, Client, Gateway, Toml};

fn one_service(backends: &[&Backend], extra_listener: &str, routes: &str) -> String {
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    Toml::new()
        .listener("public", extra_listener)
        .service("app", &addrs, "connect_timeout = \"1s\"")
        .build()
        + routes
}

const CATCH_ALL: &str = r#"
[[routes]]
name = "all"
match = { path_prefix = "/" }
service = "app"
"#;

#[test]
fn forwards_and_keeps_connections_alive() {
    let b = Backend::start("b1");
    let gw = Gateway::start(&one_service(&[&b], "", CATCH_ALL));
    let mut c = gw.client();
    for _ in 0..5 {
        let r = c.get("/hello?x=1");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "b1");
    }
    assert_eq!(b.hits(), 5);
    assert_eq!(b.last_seen().uri, "/hello?x=1");
}

#[test]
fn routes_by_precedence_and_strips_prefix() {
    let users = Backend::start("users");
    let me = Backend::start("me");
    let root = Backend::start("root");
    let toml = format!(
        r#"
[access_log]
path = "off"

[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[routes]]
name = "root"
match = {{ path_prefix = "/" }}
service = "root"

[[routes]]
name = "users"
match = {{ path_prefix = "/users" }}
service = "users"
strip_prefix = true

[[routes]]
name = "me"
match = {{ path = "/users/me" }}
service = "me"

[[routes]]
name = "users-api-host"
match = {{ host = "api.example.com", path_prefix = "/users", methods = ["POST"] }}
service = "me"

[[services]]
name = "users"
endpoints = [{{ address = "{}" }}]

[[services]]
name = "me"
endpoints = [{{ address = "{}" }}]

[[services]]
name = "root"
endpoints = [{{ address = "{}" }}]
"#,
        users.addr, me.addr, root.addr
    );
    let gw = Gateway::start(&toml);
    let mut c = gw.client();
    assert_eq!(c.get("/users/me").text(), "me");
    assert_eq!(c.get("/users/7?full=1").text(), "users");
    assert_eq!(
        users.last_seen().uri,
        "/7?full=1",
        "prefix stripped, query kept"
    );
    assert_eq!(c.get("/users").text(), "users");
    assert_eq!(users.last_seen().uri, "/");
    assert_eq!(
        c.get("/usersx").text(),
        "root",
        "prefixes match whole segments"
    );
    let r = c.request(
        "POST",
        "/users/1",
        &[("Host", "API.example.com:8080")],
        b"{}",
    );
    assert_eq!(r.text(), "me", "host, method and prefix together win");
    let r = c.request("GET", "/users/1", &[("Host", "api.example.com")], b"");
    assert_eq!(r.text(), "users", "method condition not met");
}

/// A table large enough to be searched through its index (virtual hosts, many prefixes) picks
/// the same routes as the precedence rules say: exact path, longest prefix at a segment
/// boundary, then conditions, hosts compared without case.
#[test]
fn large_route_table_follows_precedence() {
    let names = ["tenants", "orders", "api", "health", "wild", "root"];
    let backends: Vec<Backend> = names.iter().map(|n| Backend::start(n)).collect();
    let mut toml = String::from(
        "[access_log]\npath = \"off\"\n\n[[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n",
    );
    let mut route = |name: String, matcher: String, service: &str| {
        toml += &format!(
            "\n[[routes]]\nname = \"{name}\"\nmatch = {{ {matcher} }}\nservice = \"{service}\"\n"
        );
    };
    route("root".into(), r#"path_prefix = "/""#.into(), "root");
    for i in 0..30 {
        route(
            format!("tenant{i}"),
            format!(r#"host = "tenant{i}.example.com", path_prefix = "/""#),
            "tenants",
        );
    }
    route(
        "tenant7-orders".into(),
        r#"host = "tenant7.example.com", path_prefix = "/orders""#.into(),
        "orders",
    );
    for v in 1..10 {
        route(
            format!("api-v{v}"),
            format!(r#"path_prefix = "/api/v{v}""#),
            "api",
        );
    }
    route(
        "health".into(),
        r#"path = "/api/v1/health""#.into(),
        "health",
    );
    route(
        "wild".into(),
        r#"host = "*.example.com", path_prefix = "/wild/""#.into(),
        "wild",
    );
    for (name, backend) in names.iter().zip(&backends) {
        toml += &format!(
            "\n[[services]]\nname = \"{name}\"\nendpoints = [{{ address = \"{}\" }}]\n",
            backend.addr
        );
    }
    let gw = Gateway::start(&toml);
    let mut c = gw.client();
    // (Host, path, the service that must answer, why)
    let cases = [
        (
            "tenant7.example.com",
            "/orders/1",
            "orders",
            "host and prefix",
        ),
        (
            "TENANT7.example.com:8080",
            "/orders",
            "orders",
            "host without case or port",
        ),
        (
            "tenant7.example.com",
            "/ordersx",
            "tenants",
            "prefixes match whole segments",
        ),
        (
            "tenant29.example.com",
            "/x",
            "tenants",
            "the last virtual host",
        ),
        ("tenant30.example.com", "/x", "root", "an unknown host"),
        (
            "tenant3.example.com",
            "/api/v2/x",
            "api",
            "a longer prefix wins over a host",
        ),
        (
            "tenant3.example.com",
            "/api/v1/health",
            "health",
            "an exact path first",
        ),
        (
            "other.example.com",
            "/api/v10",
            "root",
            "/api/v1 is not a segment of it",
        ),
        (
            "other.example.com",
            "/wild/a",
            "wild",
            "a wildcard host, prefix ending in /",
        ),
        (
            "example.com",
            "/wild/a",
            "root",
            "the wildcard needs a subdomain",
        ),
    ];
    for (host, path, service, why) in cases {
        let r = c.request("GET", path, &[("Host", host)], b"");
        assert_eq!(r.text(), service, "{host} {path}: {why}");
    }
}

#[test]
fn no_route_is_404_json_with_request_id() {
    let b = Backend::start("b");
    let routes = r#"
[[routes]]
name = "only-api"
match = { path_prefix = "/api" }
service = "app"
"#;
    let gw = Gateway::start(&one_service(&[&b], "", routes));
    let mut c = gw.client();
    let r = c.get("/elsewhere");
    assert_eq!(r.status, 404);
    let v = r.json();
    assert_eq!(v["error"], "no_route");
    assert_eq!(v["request_id"], r.header("x-request-id").unwrap());
    assert_eq!(b.hits(), 0);
    // The connection is still usable after a gateway answer.
    assert_eq!(c.get("/api/x").status, 200);
}

#[test]
fn request_ids_are_kept_or_generated_and_forwarded() {
    let b = Backend::start("b");
    let gw = Gateway::start(&one_service(&[&b], "", CATCH_ALL));
    let mut c = gw.client();
    let r = c.request("GET", "/", &[("x-request-id", "client-id-42")], b"");
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));
    assert_eq!(b.last_seen().headers["x-request-id"], "client-id-42");
    let r = c.request("GET", "/", &[("x-request-id", "bad id with spaces")], b"");
    let generated = r.header("x-request-id").unwrap().to_string();
    assert_eq!(generated.len(), 32);
    assert_eq!(b.last_seen().headers["x-request-id"], generated.as_str());
    let r2 = c.get("/");
    assert_ne!(r2.header("x-request-id").unwrap(), generated);
}

#[test]
fn hop_by_hop_headers_removed_and_forwarded_headers_added() {
    let b = Backend::start("b");
    let gw = Gateway::start(&one_service(&[&b], "", CATCH_ALL));
    let mut c = gw.client();
    let r = c.request(
        "GET",
        "/",
        &[
            ("Host", "shop.example"),
            ("Connection", "keep-alive, x-internal"),
            ("X-Internal", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "gzip"),
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Custom", "kept"),
        ],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = b.last_seen().headers;
    for gone in ["x-internal", "keep-alive", "proxy-connection", "te"] {
        assert!(!seen.contains_key(gone), "{gone} was forwarded: {seen:?}");
    }
    assert_ne!(
        seen.get("connection").map(|v| v.to_str().unwrap()),
        Some("keep-alive, x-internal")
    );
    assert_eq!(seen["x-custom"], "kept");
    // The client is not a trusted proxy: its X-Forwarded-For is replaced, not appended to.
    assert_eq!(seen["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen["x-forwarded-proto"], "http");
    assert_eq!(seen["x-forwarded-host"], "shop.example");
    assert_eq!(seen["host"], "shop.example");
}

#[test]
fn chunked_request_and_response_bodies_stream() {
    let b = Backend::start("b");
    let gw = Gateway::start(&one_service(&[&b], "", CATCH_ALL));
    let mut c = gw.client();
    c.send_raw(
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    let r = c.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "11");
    let seen = b.last_seen().headers;
    assert_eq!(seen["transfer-encoding"], "chunked");
    // A streamed response of unknown length arrives whole.
    let r = c.get("/bytes/300000");
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 300_000);
}

#[test]
fn connect_failure_is_502() {
    // A port that was just free: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = dead.local_addr().unwrap();
    drop(dead);
    let toml = format!(
        r#"
[access_log]
path = "off"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"
[[routes]]
name = "all"
service = "dead"
[[services]]
name = "dead"
endpoints = [{{ address = "{addr}" }}]
"#
    );
    let gw = Gateway::start(&toml);
    let r = gw.client().get("/");
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"], "upstream_unavailable");
}

#[test]
fn route_timeout_is_504() {
    let b = Backend::start("slow");
    let routes = r#"
[[routes]]
name = "all"
service = "app"
timeout = "200ms"
"#;
    let gw = Gateway::start(&one_service(&[&b], "", routes));
    let mut c = gw.client();
    let r = c.get("/sleep/3000");
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert_eq!(c.get("/sleep/10").status, 200, "fast requests still pass");
}

#[test]
fn body_limit_is_413() {
    let b = Backend::start("b");
    let gw = Gateway::start(&one_service(
        &[&b],
        "max_request_body_bytes = \"1KiB\"",
        CATCH_ALL,
    ));
    // Declared too large: refused before the upstream sees it.
    let r = gw
        .client()
        .request("POST", "/upload", &[], &vec![b'a'; 2000]);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "payload_too_large");
    assert_eq!(b.hits(), 0);
    // Chunked and too large: cut off while streaming.
    let mut c = gw.client();
    let mut raw =
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"200\r\n");
        raw.extend_from_slice(&[b'b'; 512]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    c.send_raw(&raw);
    let r = c.read_response(false);
    assert_eq!(r.status, 413, "{}", r.text());
    // Within the limit passes.
    let r = gw
        .client()
        .request("POST", "/upload", &[], &vec![b'a'; 1000]);
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "1000");
}

#[test]
fn oversized_head_is_431() {
    let b = Backend::start("b");
    let gw = Gateway::start(&one_service(
        &[&b],
        "max_request_header_bytes = \"4KiB\"",
        CATCH_ALL,
    ));
    let big = "v".repeat(5000);
    let r = gw.client().request("GET", "/", &[("x-big", &big)], b"");
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "headers_too_large");
    // Far beyond the limit: still 431, never a crash.
    let huge = "v".repeat(200_000);
    let text = raw_exchange(
        gw.addr(),
        format!("GET / HTTP/1.1\r\nHost: x\r\nx-huge: {huge}\r\n\r\n").as_bytes(),
    );
    assert!(text.starts_with("HTTP/1.1 431"), "{text:.100}");
    assert_eq!(b.hits(), 0);
    assert_eq!(gw.client().get("/").status, 200, "gateway still serves");
}

#[test]
fn malformed_requests_get_400_and_close() {
    let b = Backend::start("b");
    let gw = Gateway::start(&one_service(&[&b], "", CATCH_ALL));
    for garbage in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"\x00\x01\x02\xff\xfe\r\n\r\n",
    ] {
        let text = raw_exchange(gw.addr(), garbage);
        assert!(text.starts_with("HTTP/1.1 400"), "{garbage:?} got {text:?}");
    }
    assert_eq!(gw.client().get("/").status, 200, "gateway still serves");
    assert!(gw.stderr_text().find("panicked").is_none());
}

#[test]
fn access_log_lines_to_a_file() {
    let b = Backend::start("b");
    let dir = support::TempDir::new("log");
    let log = dir.0.join("access.log");
    let toml = one_service(&[&b], "", CATCH_ALL)
        .replace("path = \"off\"", &format!("path = \"{}\"", log.display()));
    let gw = Gateway::start(&toml);
    let mut c = gw.client();
    c.request(
        "POST",
        "/upload?x=1",
        &[("x-request-id", "log-me")],
        b"12345",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains("log-me")) {
            break line.to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no access log line");
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/upload?x=1");
    assert_eq!(v["status"], 200);
    assert_eq!(v["route"], "all");
    assert_eq!(v["service"], "app");
    assert_eq!(v["endpoint"], b.addr.to_string());
    assert_eq!(v["bytes_in"], 5);
    assert_eq!(v["bytes_out"], 1);
    assert_eq!(v["client"], "127.0.0.1");
    assert!(v["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(v["time"].as_str().unwrap().ends_with('Z'));
    drop(Client::connect(gw.addr()));
}

#[test]
fn sigusr1_reopens_the_access_log_after_rotation() {
    let b = Backend::start("b");
    let dir = support::TempDir::new("rotate");
    let log = dir.0.join("access.log");
    let toml = one_service(&[&b], "", CATCH_ALL)
        .replace("path = \"off\"", &format!("path = \"{}\"", log.display()));
    let gw = Gateway::start(&toml);
    let wait_for = |path: &std::path::Path, needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{needle} never logged"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    gw.client()
        .request("GET", "/", &[("x-request-id", "before-rotation")], b"");
    wait_for(&log, "before-rotation");
    let rotated = dir.0.join("access.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    gw.signal("USR1");
    // The reopen is asynchronous: keep sending until a line lands in the new file.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("after-rotation")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "new file never written"
        );
        gw.client()
            .request("GET", "/", &[("x-request-id", "after-rotation")], b"");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(std::fs::read_to_string(&rotated)
        .unwrap()
        .contains("before-rotation"));
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_then_exits_0() {
    let b = Backend::start("b");
    let mut gw = Gateway::start(&one_service(&[&b], "", CATCH_ALL));
    let addr = gw.addr();
    let slow = std::thread::spawn(move || Client::connect(addr).get("/sleep/1500"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while b.hits() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "request never arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    gw.signal("TERM");
    let r = slow.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "b");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after drain"
    );
}

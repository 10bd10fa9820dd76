//! One request identity, through the real binary: the host and path a route is chosen by are
//! the ones the upstream receives (RFC 9112 3.2, RFC 9110 7.2, RFC 3986 5.2.4). Each test here
//! reproduces a way a host- or path-restricted route was reached, or an upstream was told
//! something other than what was routed, before the gateway settled the identity once.

mod support;

use support::{raw_exchange, Backend, Gateway, Toml};

/// `admin.test/admin` and `public.test/public` routes to their own backends, and nothing else.
struct Site {
    gw: Gateway,
    public: Backend,
    admin: Backend,
}

fn site(listener_extra: &str, public_route_extra: &str) -> Site {
    let public = Backend::start("public");
    let admin = Backend::start("admin");
    let toml = Toml::new()
        .listener("public", listener_extra)
        .route(
            "public",
            "public",
            &format!("match = {{ path_prefix = \"/public\" }}\n{public_route_extra}"),
        )
        .route(
            "admin",
            "admin",
            "match = { host = \"admin.test\", path_prefix = \"/admin\" }",
        )
        .service("public", &[public.addr], "")
        .service("admin", &[admin.addr], "")
        .build();
    Site {
        gw: Gateway::start(&toml),
        public,
        admin,
    }
}

/// Sends one raw request (asking the gateway to close after it) and returns the status and the
/// whole answer.
fn send(gw: &Gateway, head: &str) -> (u16, String) {
    let text = raw_exchange(gw.addr(), head.as_bytes());
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

fn assert_bad_request(text: &str, why: &str) {
    assert!(text.starts_with("HTTP/1.1 400 "), "{why}: {text}");
    assert!(text.contains("\"error\":\"bad_request\""), "{why}: {text}");
}

#[test]
fn absolute_form_names_the_host_and_a_different_host_field_is_refused() {
    let s = site("", "");
    let (_, text) = send(
        &s.gw,
        "GET http://public.test/admin/x HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    );
    assert_bad_request(&text, "Host differing from the absolute-form authority");
    let (_, text) = send(
        &s.gw,
        "GET http://admin.test/public/x HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
    );
    assert_bad_request(&text, "Host differing from the absolute-form authority");
    assert_eq!(s.admin.hits() + s.public.hits(), 0);

    let (status, _) = send(
        &s.gw,
        "GET http://public.test/public/x HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    let seen = s.public.last_seen();
    assert_eq!(seen.headers["host"], "public.test", "Host is the authority");
    assert_eq!(seen.uri, "/public/x", "origin-form upstream");
}

#[test]
fn missing_duplicate_and_invalid_hosts_are_refused() {
    let s = site("", "");
    for (head, why) in [
        ("GET /public HTTP/1.1\r\nConnection: close\r\n\r\n", "no Host"),
        (
            "GET /admin HTTP/1.1\r\nHost: public.test\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
            "two Host fields",
        ),
        (
            "GET /admin HTTP/1.1\r\nHost: admin.test\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
            "two equal Host fields",
        ),
        (
            "GET /admin HTTP/1.1\r\nHost: admin.test@public.test\r\nConnection: close\r\n\r\n",
            "userinfo in Host",
        ),
        (
            "GET /admin HTTP/1.1\r\nHost: admin.test/x\r\nConnection: close\r\n\r\n",
            "a path in Host",
        ),
    ] {
        let (_, text) = send(&s.gw, head);
        assert_bad_request(&text, why);
    }
    assert_eq!(s.admin.hits() + s.public.hits(), 0);
    // HTTP/1.0 needs no Host.
    let (status, _) = send(&s.gw, "GET /public HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
}

#[test]
fn connection_cannot_remove_host_or_the_gateways_fields() {
    let s = site("", "");
    let (status, _) = send(
        &s.gw,
        "GET /public HTTP/1.1\r\nHost: public.test\r\nConnection: close, Host, X-Forwarded-For, X-Request-Id, X-Drop\r\nX-Drop: 1\r\nX-Request-Id: abc-123\r\n\r\n",
    );
    assert_eq!(status, 200);
    let seen = s.public.last_seen();
    assert_eq!(seen.headers["host"], "public.test");
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-request-id"], "abc-123");
    assert!(
        !seen.headers.contains_key("x-drop"),
        "other named fields go"
    );
}

#[test]
fn dot_segments_and_encoded_paths_cannot_reach_another_route() {
    let s = site("", "");
    for path in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E/admin/x",
        "/public/.%2e/admin",
        "//admin",
        "/public/./../admin",
    ] {
        let (status, text) = send(
            &s.gw,
            &format!("GET {path} HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n"),
        );
        assert_eq!(
            status, 404,
            "{path}: the admin route needs admin.test: {text}"
        );
    }
    assert_eq!(s.admin.hits() + s.public.hits(), 0);

    for path in [
        "/../admin",
        "/public/../../admin",
        "/public/%zz",
        "/public/..;/admin",
        "/public\\..\\admin",
        "/admin#/public",
    ] {
        let (_, text) = send(
            &s.gw,
            &format!("GET {path} HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n"),
        );
        assert_bad_request(&text, path);
    }
    assert_eq!(s.admin.hits(), 0);

    // What is routed is what is forwarded.
    let (status, _) = send(
        &s.gw,
        "GET /public/./a//b/%7Ex/../c%2fd?q=/../x HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(s.public.last_seen().uri, "/public/a/b/c%2Fd?q=/../x");
    let (status, _) = send(
        &s.gw,
        "GET /admin/x/../y HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(s.admin.last_seen().uri, "/admin/y");
}

#[test]
fn merge_slashes_can_be_turned_off() {
    let s = site("merge_slashes = false", "");
    let (status, _) = send(
        &s.gw,
        "GET /public//a HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200);
    assert_eq!(s.public.last_seen().uri, "/public//a");
    let (status, _) = send(
        &s.gw,
        "GET //public HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(
        status, 404,
        "`//public` is not under `/public` when slashes are kept"
    );
}

#[test]
fn client_forwarded_fields_are_replaced_unless_the_client_is_trusted() {
    let head = "GET /public HTTP/1.1\r\nHost: public.test\r\nX-Forwarded-For: 10.9.9.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: admin.test\r\nForwarded: for=10.9.9.9;host=admin.test\r\nConnection: close\r\n\r\n";
    let s = site("", "");
    assert_eq!(send(&s.gw, head).0, 200);
    let seen = s.public.last_seen();
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "http");
    assert_eq!(seen.headers["x-forwarded-host"], "public.test");
    assert!(!seen.headers.contains_key("forwarded"));
    assert_eq!(seen.headers.get_all("x-forwarded-for").iter().count(), 1);

    let s = site("trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1\"]", "");
    assert_eq!(send(&s.gw, head).0, 200);
    let seen = s.public.last_seen();
    assert_eq!(seen.headers["x-forwarded-for"], "10.9.9.9, 127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-proto"], "https");
    assert_eq!(seen.headers["x-forwarded-host"], "admin.test");
    assert_eq!(
        seen.headers["forwarded"],
        "for=10.9.9.9;host=admin.test, for=127.0.0.1;proto=http;host=\"public.test\""
    );
}

#[test]
fn upstream_host_is_the_clients_the_endpoints_or_a_fixed_name() {
    let head = "GET /public HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n";
    let s = site("", "preserve_host = false");
    assert_eq!(send(&s.gw, head).0, 200);
    let seen = s.public.last_seen();
    assert_eq!(seen.headers["host"], s.public.addr.to_string().as_str());
    assert_eq!(seen.headers["x-forwarded-host"], "public.test");

    let s = site("", "host_rewrite = \"api.internal:8443\"");
    assert_eq!(send(&s.gw, head).0, 200);
    let seen = s.public.last_seen();
    assert_eq!(seen.headers["host"], "api.internal:8443");
    assert_eq!(seen.headers["x-forwarded-host"], "public.test");
}

#[test]
fn connect_and_misplaced_target_forms_are_refused() {
    let s = site("", "");
    let (status, text) = send(
        &s.gw,
        "CONNECT admin.test:443 HTTP/1.1\r\nHost: admin.test:443\r\n\r\n",
    );
    assert_eq!(status, 405, "{text}");
    assert!(text.contains("\"error\":\"method_not_allowed\""), "{text}");
    let (_, text) = send(
        &s.gw,
        "GET * HTTP/1.1\r\nHost: public.test\r\nConnection: close\r\n\r\n",
    );
    assert_bad_request(&text, "asterisk-form outside OPTIONS");
    let (_, text) = send(
        &s.gw,
        "GET admin.test:80 HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    );
    assert_bad_request(&text, "authority-form outside CONNECT");
    assert_eq!(s.admin.hits() + s.public.hits(), 0);
}

//! The response cache through the real binary (SPEC 2.4, RFC 9111): what is stored and what is
//! never stored, hits with `Age`, `Vary` variants, 304s to conditional requests, HEAD from a
//! stored GET, bodies over `max_object_bytes` streamed through, unsafe methods invalidating,
//! the route's `ttl`, metrics and config errors.
//!
//! The backend adds any `h=NAME:VALUE` of the query to its response, so each test gives the
//! upstream the caching fields it is about.

mod support;

use std::time::Duration;

use support::{Backend, Client, Gateway, Toml};

fn gateway(b: &Backend, route_cache: &str, extra: &str) -> Gateway {
    let toml = Toml::new()
        .admin()
        .listener("public", "")
        .route("api", "app", &format!("cache = {{ {route_cache} }}"))
        .service("app", &[b.addr], "")
        .build();
    Gateway::start(&format!("{toml}\n{extra}"))
}

/// `path` with the upstream told to answer with these fields.
fn with(path: &str, fields: &[&str]) -> String {
    let query: Vec<String> = fields
        .iter()
        .map(|f| {
            let encoded: String = f
                .bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect();
            format!("h={encoded}")
        })
        .collect();
    format!("{path}?{}", query.join("&"))
}

fn x_cache(r: &support::Response) -> &str {
    r.header("x-cache").unwrap_or("")
}

#[test]
fn a_miss_is_stored_and_hits_carry_a_growing_age() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    let path = with("/a", &["cache-control: max-age=60"]);
    let mut c = gw.client();
    let first = c.get(&path);
    assert_eq!((first.status, x_cache(&first)), (200, "MISS"));
    let hit = c.get(&path);
    assert_eq!((hit.status, x_cache(&hit)), (200, "HIT"));
    assert_eq!(hit.text(), "b");
    assert_eq!(hit.header("cache-control"), Some("max-age=60"));
    assert!(hit.header("x-request-id").is_some());
    assert_eq!(b.hits(), 1, "the hit never reached the upstream");
    std::thread::sleep(Duration::from_millis(1100));
    let later = c.get(&path);
    let age: u64 = later.header("age").unwrap().parse().unwrap();
    assert!((1..=2).contains(&age), "age {age}");
    assert_eq!(
        gw.metric("sluicegate_cache_lookups_total{route=\"api\",result=\"success\"}"),
        2
    );
    assert_eq!(
        gw.metric("sluicegate_cache_lookups_total{route=\"api\",result=\"failure\"}"),
        1
    );
    assert!(gw.metric("sluicegate_cache_bytes ") > 0);
    let metrics = gw.admin().get("/metrics").text();
    for reason in ["size", "expired"] {
        let series = format!("sluicegate_cache_evictions_total{{reason=\"{reason}\"}} 0");
        assert!(metrics.contains(&series), "{series}");
    }
}

#[test]
fn what_must_not_be_shared_is_never_stored() {
    let b = Backend::start("b");
    let gw = gateway(&b, "ttl = \"60s\"", "");
    let mut c = gw.client();
    for (i, fields) in [
        &["cache-control: no-store"][..],
        &["cache-control: private, max-age=60"],
        &["cache-control: max-age=60", "vary: *"],
        &["cache-control: max-age=60", "set-cookie: session=1"],
    ]
    .into_iter()
    .enumerate()
    {
        let path = with(&format!("/never/{i}"), fields);
        for _ in 0..2 {
            let r = c.get(&path);
            assert_eq!((r.status, x_cache(&r)), (200, "MISS"), "{fields:?}");
        }
    }
    assert_eq!(b.hits(), 8);
}

#[test]
fn authorized_requests_are_shared_only_when_public_and_then_per_credential() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    let mut c = gw.client();
    let get = |c: &mut Client, path: &str, token: &str| {
        let r = c.request("GET", path, &[("authorization", token)], b"");
        x_cache(&r).to_string()
    };
    let plain = with("/auth/plain", &["cache-control: max-age=60"]);
    assert_eq!(get(&mut c, &plain, "Bearer alice"), "MISS");
    assert_eq!(
        get(&mut c, &plain, "Bearer alice"),
        "MISS",
        "not public: never stored"
    );
    let public = with("/auth/public", &["cache-control: public, max-age=60"]);
    assert_eq!(get(&mut c, &public, "Bearer alice"), "MISS");
    assert_eq!(get(&mut c, &public, "Bearer alice"), "HIT");
    assert_eq!(
        get(&mut c, &public, "Bearer bob"),
        "MISS",
        "another credential"
    );
    assert_eq!(x_cache(&c.get(&public)), "MISS", "no credential");
}

#[test]
fn vary_keeps_one_variant_per_value() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    let path = with(
        "/v",
        &["cache-control: max-age=60", "vary: accept-encoding"],
    );
    let mut c = gw.client();
    let get = |c: &mut Client, encoding: &str| {
        let r = c.request("GET", &path, &[("accept-encoding", encoding)], b"");
        x_cache(&r).to_string()
    };
    assert_eq!(get(&mut c, "gzip"), "MISS");
    assert_eq!(get(&mut c, "br"), "MISS");
    assert_eq!(get(&mut c, "gzip"), "HIT");
    assert_eq!(get(&mut c, "br"), "HIT");
    assert_eq!(b.hits(), 2);
}

#[test]
fn conditional_requests_get_304_and_head_is_answered_from_a_stored_get() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    let path = with("/c", &["cache-control: max-age=60", "etag: \"v1\""]);
    let mut c = gw.client();
    assert_eq!(x_cache(&c.get(&path)), "MISS");
    let r = c.request("GET", &path, &[("if-none-match", "\"v1\"")], b"");
    assert_eq!((r.status, x_cache(&r)), (304, "HIT"));
    assert_eq!(r.header("etag"), Some("\"v1\""));
    assert!(r.text().is_empty());
    let r = c.request("GET", &path, &[("if-none-match", "\"v0\"")], b"");
    assert_eq!((r.status, r.text().as_str()), (200, "b"));
    let r = c.request("HEAD", &path, &[], b"");
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
    assert!(r.text().is_empty());
    // The connection is still in step after the bodiless answers.
    assert_eq!(c.get(&path).text(), "b");
    assert_eq!(b.hits(), 1);
}

#[test]
fn bodies_over_max_object_bytes_stream_through_unstored() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "[cache]\nmax_object_bytes = \"64KiB\"\n");
    let mut c = gw.client();
    let big = with("/bytes/1048576", &["cache-control: max-age=60"]);
    for _ in 0..2 {
        let r = c.get(&big);
        assert_eq!(
            (r.status, r.body.len(), x_cache(&r)),
            (200, 1 << 20, "MISS")
        );
    }
    let small = with("/bytes/1000", &["cache-control: max-age=60"]);
    assert_eq!(x_cache(&c.get(&small)), "MISS");
    let r = c.get(&small);
    assert_eq!((r.body.len(), x_cache(&r)), (1000, "HIT"));
    assert_eq!(b.hits(), 3);
}

#[test]
fn an_unsafe_request_invalidates_what_was_stored_for_its_target() {
    let b = Backend::start("b");
    let gw = gateway(&b, "ttl = \"60s\"", "");
    let mut c = gw.client();
    assert_eq!(x_cache(&c.get("/doc")), "MISS");
    assert_eq!(
        x_cache(&c.get("/doc")),
        "HIT",
        "the route's ttl gives it freshness"
    );
    let r = c.request("POST", "/doc", &[], b"new");
    assert_eq!((r.status, x_cache(&r)), (200, "BYPASS"));
    assert_eq!(x_cache(&c.get("/doc")), "MISS");
    assert_eq!(x_cache(&c.get("/doc")), "HIT");
}

#[test]
fn within_stale_while_revalidate_the_stale_response_answers_at_once_and_one_refresh_runs() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    // The upstream takes 0.5 s per answer (which counts in the stored response's age).
    let path = with(
        "/sleep/500",
        &[
            "cache-control: max-age=2, stale-while-revalidate=30",
            "etag: \"v1\"",
        ],
    );
    let mut c = gw.client();
    assert_eq!(x_cache(&c.get(&path)), "MISS");
    std::thread::sleep(Duration::from_millis(1600));
    // Stale: answered from the store without waiting for the upstream (a foreground
    // revalidation would have answered HIT after the upstream's 304), five times, while one
    // refresh runs.
    for _ in 0..5 {
        let r = c.get(&path);
        assert_eq!(
            (r.status, r.text().as_str(), x_cache(&r)),
            (200, "b", "STALE")
        );
        assert!(r.header("age").is_some());
    }
    support::wait_until("the background refresh", Duration::from_secs(10), || {
        x_cache(&c.get(&path)) == "HIT"
    });
    assert_eq!(b.hits(), 2, "one refresh for all the stale answers");
    let refresh = b.last_seen();
    assert_eq!(refresh.headers.get("if-none-match").unwrap(), "\"v1\"");
    assert_eq!(refresh.headers.get("cache-control").unwrap(), "no-cache");
}

#[test]
fn a_route_key_takes_what_it_names_and_bypasses_what_it_cannot_read() {
    let b = Backend::start("b");
    let gw = gateway(
        &b,
        "ttl = \"60s\", key = [\"path\", \"query:page\", \"header:x-tenant\"]",
        "",
    );
    let mut c = gw.client();
    let get = |c: &mut support::Client, path: &str, fields: &[(&str, &str)]| {
        x_cache(&c.request("GET", path, fields, b"")).to_string()
    };
    let acme = [("x-tenant", "acme")];
    assert_eq!(get(&mut c, "/list?page=1&utm=a", &acme), "MISS");
    // Other parameters, their order, and the Host are not in the key.
    assert_eq!(get(&mut c, "/list?utm=b&page=1", &acme), "HIT");
    let elsewhere = [("x-tenant", "acme"), ("host", "other.example")];
    assert_eq!(get(&mut c, "/list?page=1", &elsewhere), "HIT");
    // An encoded name is the same parameter.
    assert_eq!(get(&mut c, "/list?p%61ge=1", &acme), "MISS");
    // What is in it tells responses apart.
    assert_eq!(get(&mut c, "/list?page=2", &acme), "MISS");
    assert_eq!(get(&mut c, "/list?page=1", &[("x-tenant", "bolt")]), "MISS");
    assert_eq!(get(&mut c, "/list?page=1", &[]), "MISS");
    // A `;` could carry a keyed parameter past the key: not answered from the store.
    assert_eq!(get(&mut c, "/list?utm=x;page=2", &acme), "BYPASS");
    assert_eq!(b.hits(), 6);
    // An unsafe request with such a query invalidates every reading of it: `page=2` too.
    assert_eq!(get(&mut c, "/list?page=2", &acme), "HIT");
    let r = c.request("POST", "/list?utm=x;page=2", &acme, b"");
    assert_eq!((r.status, x_cache(&r)), (200, "BYPASS"));
    assert_eq!(get(&mut c, "/list?page=2", &acme), "MISS");
    // Purge names the key as the route makes it: no host, the keyed query.
    let r = gw.admin().request(
        "POST",
        "/api/v1/cache/purge",
        &[],
        br#"{"key": "/list?page=1"}"#,
    );
    assert_eq!(r.json()["purged"], 3, "acme, bolt and no tenant");
    assert_eq!(get(&mut c, "/list?page=1", &acme), "MISS");
}

#[test]
fn cache_settings_not_built_yet_or_wrong_are_refused() {
    let b = Backend::start("b");
    let toml = |route: &str, top: &str| {
        let base = Toml::new()
            .listener("public", "")
            .route("api", "app", route)
            .service("app", &[b.addr], "")
            .build();
        format!("{base}\n{top}")
    };
    for (text, expected) in [
        (
            toml(
                "cache = { ttl = \"1m\" }",
                "[cache]\nstore = \"memory+redis\"\n",
            ),
            "cache.store: \"memory+redis\" needs a [redis] table",
        ),
        (
            toml("cache = { key = [\"host\", \"query\"] }", ""),
            "cache.key: must include \"path\"",
        ),
        (
            toml("cache = { key = [\"path\", \"query\", \"query:a\"] }", ""),
            "\"query\" takes the whole query",
        ),
        (
            toml("cache = { key = [\"path\", \"cookie:a\"] }", ""),
            "unknown part \"cookie:a\"",
        ),
        (
            toml("cache = { statuses = [99] }", ""),
            "expected an HTTP status from 100 to 599",
        ),
        (
            toml("cache = { ttl = \"1m\" }", "[cache]\neviction = \"fifo\"\n"),
            "unknown eviction \"fifo\"",
        ),
        (
            toml("cache = { statuses = [200, 304] }", ""),
            "304 cannot be stored",
        ),
    ] {
        let (code, _, stderr) = support::check(&text);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }
}

#[test]
fn a_stale_entry_is_revalidated_with_its_validators_and_freshened_on_304() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    let path = with("/r", &["cache-control: max-age=1", "etag: \"v1\""]);
    let mut c = gw.client();
    assert_eq!(x_cache(&c.get(&path)), "MISS");
    std::thread::sleep(Duration::from_millis(1100));
    // Stale: the upstream is asked whether "v1" still holds, says 304, and the stored body
    // answers, freshened.
    let r = c.get(&path);
    assert_eq!(
        (r.status, r.text().as_str(), x_cache(&r)),
        (200, "b", "HIT")
    );
    assert_eq!(
        b.last_seen().headers.get("if-none-match").unwrap(),
        "\"v1\""
    );
    assert_eq!(b.hits(), 2);
    // Fresh again for another second.
    assert_eq!(x_cache(&c.get(&path)), "HIT");
    assert_eq!(b.hits(), 2);
    // A client that asks its own condition gets the upstream's answer to it.
    std::thread::sleep(Duration::from_millis(1100));
    let r = c.request("GET", &path, &[("if-none-match", "\"v0\"")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(
        b.last_seen().headers.get("if-none-match").unwrap(),
        "\"v0\""
    );
}

#[test]
fn stale_if_error_serves_the_stale_entry_while_the_upstream_fails() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    let allowed = with("/s", &["cache-control: max-age=1, stale-if-error=60"]);
    let strict = with("/t", &["cache-control: max-age=1"]);
    let mut c = gw.client();
    assert_eq!(x_cache(&c.get(&allowed)), "MISS");
    assert_eq!(x_cache(&c.get(&strict)), "MISS");
    std::thread::sleep(Duration::from_millis(1100));
    b.set_status(500);
    let r = c.get(&allowed);
    assert_eq!(
        (r.status, r.text().as_str(), x_cache(&r)),
        (200, "b", "STALE")
    );
    assert_eq!(
        c.get(&strict).status,
        500,
        "no stale-if-error: the failure goes through"
    );
}

#[test]
fn concurrent_misses_for_one_key_make_one_upstream_request() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    let addr = gw.addr();
    let path = with("/sleep/300", &["cache-control: max-age=60"]);
    let clients: Vec<_> = (0..100)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let r = Client::connect(addr).get(&path);
                (r.status, x_cache(&r).to_string())
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert_eq!(b.hits(), 1, "one fetch for all of them");
    let misses = answers.iter().filter(|(_, x)| x == "MISS").count();
    assert_eq!(misses, 1, "{answers:?}");
}

#[test]
fn the_key_keeps_ports_cookies_and_credentials_apart() {
    let b = Backend::start("b");
    let gw = gateway(&b, "ttl = \"60s\"", "");
    let mut c = gw.client();
    let get = |c: &mut Client, fields: &[(&str, &str)]| {
        x_cache(&c.request("GET", "/k", fields, b"")).to_string()
    };
    assert_eq!(get(&mut c, &[("host", "shop.example:8080")]), "MISS");
    assert_eq!(get(&mut c, &[("host", "shop.example:8080")]), "HIT");
    assert_eq!(
        get(&mut c, &[("host", "shop.example:9090")]),
        "MISS",
        "another port"
    );
    let alice = [("host", "shop.example"), ("cookie", "session=alice")];
    let bob = [("host", "shop.example"), ("cookie", "session=bob")];
    assert_eq!(get(&mut c, &alice), "MISS");
    assert_eq!(get(&mut c, &alice), "HIT");
    assert_eq!(
        get(&mut c, &bob),
        "MISS",
        "another cookie: never alice's response"
    );
    assert_eq!(get(&mut c, &[("host", "shop.example")]), "MISS");
    // An unsafe request, whoever sends it, invalidates every credential's entry.
    let r = c.request("DELETE", "/k", &[("host", "shop.example")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(get(&mut c, &alice), "MISS");
}

#[test]
fn conditions_apply_to_stored_successes_only() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    let path = with("/status/404", &["cache-control: max-age=60"]);
    let mut c = gw.client();
    assert_eq!(c.get(&path).status, 404);
    let r = c.request("GET", &path, &[("if-none-match", "*")], b"");
    assert_eq!((r.status, x_cache(&r)), (404, "HIT"));
}

#[test]
fn purge_by_prefix_key_and_tag_through_the_admin_api() {
    let b = Backend::start("b");
    let gw = gateway(&b, "", "");
    let mut c = gw.client();
    let users1 = with(
        "/users/1",
        &["cache-control: max-age=60", "cache-tag: user-1, users"],
    );
    let users2 = with(
        "/users/2",
        &["cache-control: max-age=60", "surrogate-key: users"],
    );
    let orders = with("/orders/1", &["cache-control: max-age=60"]);
    for path in [&users1, &users2, &orders] {
        assert_eq!(x_cache(&c.get(path)), "MISS");
        assert_eq!(x_cache(&c.get(path)), "HIT");
    }
    let purge = |body: &str| {
        let r = gw
            .admin()
            .request("POST", "/api/v1/cache/purge", &[], body.as_bytes());
        (r.status, r.json())
    };
    let (status, answer) = purge(r#"{"tag": "user-1"}"#);
    assert_eq!((status, answer["purged"].as_u64()), (200, Some(1)));
    assert_eq!(x_cache(&c.get(&users1)), "MISS");
    assert_eq!(x_cache(&c.get(&users2)), "HIT");
    let (_, answer) = purge(r#"{"prefix": "/users"}"#);
    assert_eq!(answer["purged"], 2);
    assert_eq!(x_cache(&c.get(&users2)), "MISS");
    let host = gw.addr().to_string();
    let (_, answer) = purge(&format!(r#"{{"key": "{host}{orders}"}}"#));
    assert_eq!(answer["purged"], 1, "{host}{orders}");
    assert_eq!(x_cache(&c.get(&orders)), "MISS");
    for bad in [
        r#"{}"#,
        r#"{"prefix": "/a", "tag": "b"}"#,
        r#"{"prefix": "users"}"#,
        "nonsense",
        r#"{"tag": 5}"#,
    ] {
        let (status, answer) = purge(bad);
        assert_eq!(
            (status, answer["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
}

#[test]
fn a_large_response_streams_through_with_little_memory() {
    const MIB: u64 = 1 << 20;
    let b = Backend::start("b");
    let gw = gateway(&b, "", "[cache]\nmax_object_bytes = \"8MiB\"\n");
    let path = with(
        &format!("/bytes/{}", 100 * MIB),
        &["cache-control: max-age=60"],
    );
    let mut c = gw.client();
    // Warm up (the first request sets up pools and buffers), then measure what the large
    // responses add.
    assert_eq!(c.get("/warm").status, 200);
    let before = gw.peak_rss();
    let r = c.get(&path);
    assert_eq!((r.status, r.body.len() as u64), (200, 100 * MIB));
    assert_eq!(x_cache(&c.get(&path)), "MISS", "too large: not stored");
    let growth = gw.peak_rss().saturating_sub(before);
    eprintln!(
        "gateway peak RSS grew by {} KiB over two 100 MiB responses (from {} KiB)",
        growth / 1024,
        before / 1024
    );
    assert!(growth < 32 * MIB, "peak RSS grew by {} MiB", growth >> 20);
}

#[test]
fn only_if_cached_is_answered_from_the_store_or_with_504() {
    let b = Backend::start("b");
    let gw = gateway(&b, "ttl = \"60s\"", "");
    let mut c = gw.client();
    let only = [("cache-control", "only-if-cached")];
    let r = c.request("GET", "/o", &only, b"");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (504, Some("not_cached"))
    );
    assert_eq!(b.hits(), 0, "never forwarded");
    assert_eq!(x_cache(&c.get("/o")), "MISS");
    let r = c.request("GET", "/o", &only, b"");
    assert_eq!((r.status, x_cache(&r)), (200, "HIT"));
}

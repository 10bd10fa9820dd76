//! API-key authentication through the real binary: keys by digest from a header or the query,
//! a watched keys file, per-consumer rate limits, the access log, and the config's checks of
//! every auth setting.

mod support;

use std::time::Duration;

use sha2::{Digest, Sha256};
use support::{wait_until, Backend, Gateway, TempDir, Toml};

fn digest(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn config(backend: &Backend, policy: &str, route: &str, extra: &str) -> String {
    Toml::new()
        .admin()
        .listener("public", "")
        .route("all", "app", &format!("auth = \"partners\"\n{route}"))
        .service("app", &[backend.addr], "")
        .build()
        + &format!("\n[auth.partners]\ntype = \"api_key\"\n{policy}\n")
        + extra
}

#[test]
fn keys_are_checked_by_digest_and_the_consumer_goes_upstream() {
    let b = Backend::start("b");
    let dir = TempDir::new("log");
    let log = dir.0.join("access.log");
    let toml = config(
        &b,
        &format!(
            "keys = [ {{ sha256 = \"{}\", consumer = \"acme\", scopes = [\"users:read\"] }} ]",
            digest("s3cret-acme")
        ),
        "require_scopes = [\"users:read\"]",
        "",
    )
    .replacen(
        "path = \"off\"",
        &format!("path = \"{}\"", log.display()),
        1,
    );
    let gw = Gateway::start(&toml);
    let mut c = gw.client();
    let r = c.request(
        "GET",
        "/x",
        &[("x-api-key", "s3cret-acme"), ("x-consumer", "mallory")],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = b.last_seen();
    let consumers: Vec<_> = seen.headers.get_all("x-consumer").iter().collect();
    assert_eq!(consumers, ["acme"]);
    assert_eq!(
        seen.headers["x-api-key"], "s3cret-acme",
        "kept without strip_credentials"
    );

    let r = c.request("GET", "/x", &[("x-api-key", "guess")], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "unauthenticated");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.starts_with("ApiKey realm=\"partners\""),
        "{challenge}"
    );
    assert!(challenge.contains("error=\"invalid_key\""), "{challenge}");
    let r = c.get("/x");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some("ApiKey realm=\"partners\"")
    );
    let r = c.request(
        "GET",
        "/x",
        &[("x-api-key", "s3cret-acme"), ("x-api-key", "s3cret-acme")],
        b"",
    );
    assert_eq!(r.status, 400, "a key given twice is ambiguous");
    assert_eq!(b.hits(), 1);

    wait_until("three log lines", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 3)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["auth"], "api_key");
    assert_eq!(lines[0]["consumer"], "acme");
    assert_eq!(lines[1]["auth"], "invalid_key");
    assert!(lines[1].get("consumer").is_none());
    assert_eq!(lines[2]["auth"], "missing");
    assert!(!text.contains("s3cret-acme"), "a key was logged");
    // A client's x-consumer, in any spelling, never reaches the upstream.
    let r = c.request(
        "GET",
        "/x",
        &[("x-api-key", "s3cret-acme"), ("x_consumer", "mallory")],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = b.last_seen();
    assert!(seen.headers.get("x_consumer").is_none());
    assert_eq!(seen.headers["x-consumer"], "acme");
    let metrics = gw.admin().get("/metrics").text();
    assert!(
        metrics.contains(
            "sluicegate_auth_decisions_total{policy=\"partners\",result=\"failure\",reason=\"invalid_key\"} 1"
        ),
        "{metrics}"
    );
}

#[test]
fn a_query_key_is_stripped_before_forwarding_and_redacted_in_the_log() {
    let b = Backend::start("b");
    let dir = TempDir::new("log");
    let log = dir.0.join("access.log");
    let gw = Gateway::start(
        &config(
            &b,
            &format!(
                "query = \"api_key\"\nstrip_credentials = true\nkeys = [ {{ sha256 = \"{}\", consumer = \"acme\" }} ]",
                digest("k+1")
            ),
            "",
            "",
        )
        .replacen("path = \"off\"", &format!("path = \"{}\"", log.display()), 1),
    );
    let r = gw.client().get("/search?q=1&api_key=k%2B1&page=2");
    assert_eq!(r.status, 200);
    assert_eq!(b.last_seen().uri, "/search?q=1&page=2");
    assert_eq!(gw.client().get("/search?api_key=k1").status, 401);
    // The access log never shows a key from the query, valid or not.
    wait_until("two log lines", Duration::from_secs(5), || {
        std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= 2)
    });
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        !text.contains("k%2B1") && !text.contains("api_key=k1"),
        "{text}"
    );
    assert!(
        text.contains("/search?q=1&api_key=REDACTED&page=2"),
        "{text}"
    );
}

#[test]
fn a_watched_keys_file_rotates_keys_without_a_reload() {
    let b = Backend::start("b");
    let dir = TempDir::new("keys");
    let entry = |key: &str, consumer: &str| {
        format!(
            "[[keys]]\nsha256 = \"{}\"\nconsumer = \"{consumer}\"\n",
            digest(key)
        )
    };
    let file = dir.write("keys.toml", &entry("old-key", "acme"));
    let gw = Gateway::start(&config(
        &b,
        &format!("keys_file = \"{}\"", file.display()),
        "",
        "",
    ));
    let mut c = gw.client();
    let with = |c: &mut support::Client, key: &str| {
        c.request("GET", "/", &[("x-api-key", key)], b"").status
    };
    assert_eq!(with(&mut c, "old-key"), 200);
    assert_eq!(with(&mut c, "new-key"), 401);
    // Rotation: the new key is added, then the old one removed (truncate-and-write).
    std::fs::write(&file, entry("old-key", "acme") + &entry("new-key", "acme")).unwrap();
    wait_until("the new key", Duration::from_secs(5), || {
        with(&mut c, "new-key") == 200
    });
    std::fs::write(&file, entry("new-key", "acme")).unwrap();
    wait_until("the old key revoked", Duration::from_secs(5), || {
        with(&mut c, "old-key") == 401
    });
    // An invalid file is refused with its position; the keys in force stay.
    std::fs::write(&file, "[[keys]]\nsha256 = 12\n").unwrap();
    wait_until("the error is logged", Duration::from_secs(5), || {
        gw.stderr_text().contains("api keys file not applied")
    });
    assert!(
        gw.stderr_text().contains("keys.toml: 2:"),
        "{}",
        gw.stderr_text()
    );
    assert_eq!(with(&mut c, "new-key"), 200);
}

#[test]
fn each_consumer_has_its_own_rate_limit_bucket() {
    let b = Backend::start("b");
    let gw = Gateway::start(&config(
        &b,
        &format!(
            "keys = [ {{ sha256 = \"{}\", consumer = \"a\" }}, {{ sha256 = \"{}\", consumer = \"b\" }} ]",
            digest("key-a"),
            digest("key-b")
        ),
        "rate_limit = \"per-consumer\"",
        "\n[rate_limits.per-consumer]\nkey = \"consumer\"\ncapacity = 2\nrefill_per_second = 0.001\n",
    ));
    let mut c = gw.client();
    let with = |c: &mut support::Client, key: &str| {
        c.request("GET", "/", &[("x-api-key", key)], b"").status
    };
    assert_eq!(with(&mut c, "key-a"), 200);
    assert_eq!(with(&mut c, "key-a"), 200);
    assert_eq!(with(&mut c, "key-a"), 429);
    assert_eq!(
        with(&mut c, "key-b"),
        200,
        "another consumer, another bucket"
    );
    // Refused by auth: no token is spent.
    for _ in 0..5 {
        assert_eq!(with(&mut c, "nope"), 401);
    }
    assert_eq!(with(&mut c, "key-b"), 200);
    assert_eq!(with(&mut c, "key-b"), 429);
}

#[test]
fn auth_settings_are_checked_when_the_config_loads() {
    let toml = r#"
[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[routes]]
name = "a"
service = "app"
auth = "nope"

[[routes]]
name = "b"
service = "app"
require_scopes = ["x"]

[[services]]
name = "app"
endpoints = [{ address = "127.0.0.1:9" }]

[auth.keys]
type = "api_key"
keys = [ { sha256 = "abc", consumer = "a" } ]

[auth.hs]
type = "jwt"
algorithms = ["HS256", "RS256"]
secret = "0123456789abcdef0123456789abcdef"

[auth.short]
type = "jwt"
algorithms = ["HS512"]
secret = ""

[auth.none]
type = "jwt"
algorithms = ["none"]
jwks_url = "https://idp.example.com/jwks.json"

[auth.clear]
type = "jwt"
algorithms = ["RS256"]
jwks_url = "http://idp.example.com/jwks.json"
forward_claims = { "x-consumer" = "sub" }

[auth.hmac-from-set]
type = "jwt"
algorithms = ["HS256"]
jwks_url = "https://idp.example.com/jwks.json"

[auth.two-sources]
type = "jwt"
algorithms = ["RS256"]
jwks_url = "https://idp.example.com/jwks.json"
keys_file = "jwks.json"
"#;
    let (code, _, stderr) = support::check(toml);
    assert_eq!(code, 1, "{stderr}");
    for e in [
        "routes[0].auth: no policy named \"nope\" in [auth]",
        "routes[1].require_scopes: scopes are checked on an authenticated consumer",
        "auth.keys.keys[0].sha256: expected 64 hex digits",
        "auth.hs.algorithms: RS256 verifies with a public key",
        "auth.short.secret: an empty secret",
        "auth.none.algorithms: \"none\" (an unsigned token) is never accepted",
        "auth.clear.jwks_url: \"http://idp.example.com/jwks.json\": a key set must be fetched over https",
        "auth.clear.forward_claims.x-consumer: x-consumer is a field the gateway writes itself",
        "auth.hmac-from-set.algorithms: HS256 needs a shared secret",
        "auth.two-sources: give exactly one key source",
    ] {
        assert!(stderr.contains(e), "missing {e:?} in:\n{stderr}");
    }
}

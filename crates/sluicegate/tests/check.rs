//! `sluicegate check`: every problem of a bad config, each as PATH:LINE:COL, exit 1.

mod support;

#[test]
fn lists_every_problem_with_line_and_column() {
    let toml = r#"[runtime]
worker_threads = "two"

[[listeners]]
name = "public"
bind = "0.0.0.0:99999"
protocl = "http"

[[routes]]
name = "users"
match = { path_prefix = "/users" }
service = "userz"
timeout = "15 seconds"

[[services]]
name = "users"
algorithm = "round_robbin"
endpoints = [{ address = "127.0.0.1:9001" }]

[[services]]
name = "users"
algorithm = "ring_hash"
endpoints = [{ address = "nonsense" }]
circuit_breaker = { failure_rate = 1.5 }
"#;
    let (code, _, stderr) = support::check(toml);
    assert_eq!(code, 1, "{stderr}");
    let expected = [
        "sluicegate.toml:2:18: runtime.worker_threads: expected an integer, found a string",
        "sluicegate.toml:6:8: listeners[0].bind: invalid address \"0.0.0.0:99999\"",
        "sluicegate.toml:7:1: listeners[0].protocl: unknown key (did you mean \"protocol\"?)",
        "sluicegate.toml:12:11: routes[0].service: no service named \"userz\" (did you mean \"users\"?)",
        "sluicegate.toml:13:11: routes[0].timeout: duration \"15 seconds\" has unknown unit",
        "sluicegate.toml:17:13: services[0].algorithm: unknown algorithm \"round_robbin\" (did you mean \"round_robin\"?)",
        "sluicegate.toml:20:1: services[1].hash_on: missing required key",
        "sluicegate.toml:21:8: services[1].name: duplicate service name \"users\"",
        "sluicegate.toml:23:26: services[1].endpoints[0].address: invalid address \"nonsense\"",
        "sluicegate.toml:24:36: services[1].circuit_breaker.failure_rate: expected a number more than 0 up to 1",
    ];
    for e in expected {
        assert!(stderr.contains(e), "missing {e:?} in:\n{stderr}");
    }
    assert!(stderr.contains("10 problem(s)"), "{stderr}");
}

#[test]
fn valid_config_exits_0() {
    let toml = r#"
[admin]
bind = "127.0.0.1:9901"

[runtime]
worker_threads = 2
shutdown_grace = "5s"

[access_log]
path = "stdout"
format = "json"

[[listeners]]
name = "public"
bind = "127.0.0.1:8080"
protocol = "http"
max_request_header_bytes = "32KiB"
max_request_body_bytes = "10MiB"

[[routes]]
name = "users"
listeners = ["public"]
match = { host = "*.example.com", path_prefix = "/users", methods = ["GET", "POST"], headers = { "x-canary" = "1" } }
service = "users"
strip_prefix = true
timeout = "2s"

[[services]]
name = "users"
algorithm = "maglev"
hash_on = "header:x-user-id"
maglev_table_size = 65537
connect_timeout = "250ms"
protocol = "http1"
max_connections_per_endpoint = 0
endpoints = [{ address = "127.0.0.1:9001" }, { address = "127.0.0.1:9002", weight = 3 }]
"#;
    let (code, stdout, stderr) = support::check(toml);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("valid"));
}

#[test]
fn invalid_toml_syntax_is_reported_with_position() {
    let (code, _, stderr) = support::check("[[listeners]\nname = 1\n");
    assert_eq!(code, 1);
    assert!(stderr.starts_with("sluicegate.toml:1:"), "{stderr}");
    assert!(stderr.contains("invalid TOML"), "{stderr}");
}

#[test]
fn later_features_are_refused_not_ignored() {
    let toml = r#"
[slos.availability]
target = 0.999

[[listeners]]
name = "db"
bind = "127.0.0.1:6432"
protocol = "postgres"
database = "app"

[[listeners]]
name = "tls"
bind = "127.0.0.1:8443"
protocol = "https"
tls = { cert = "missing.pem", key = "missing.key" }
"#;
    let (code, _, stderr) = support::check(toml);
    assert_eq!(code, 1);
    assert!(stderr.contains("slos: not supported yet"), "{stderr}");
    assert!(
        stderr.contains("protocol \"postgres\" is not supported yet"),
        "{stderr}"
    );
    assert!(
        stderr.contains("listeners[0].database: not supported yet"),
        "{stderr}"
    );
    assert!(
        stderr.contains("listeners[1].tls: cannot read missing.pem"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_an_invalid_config_without_serving() {
    let dir = support::TempDir::new("run-invalid");
    let path = dir.write("sluicegate.toml", "[[listeners]]\nname = 3\n");
    let out = std::process::Command::new(support::binary())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listeners[0].name: expected a string, found an integer"),
        "{stderr}"
    );
    assert!(
        stderr.contains("listeners[0].bind: missing required key"),
        "{stderr}"
    );
}

#[test]
fn version_prints() {
    let out = std::process::Command::new(support::binary())
        .arg("version")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sluicegate "));
}

#[test]
fn shipped_example_is_valid() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/sluicegate.toml"
    );
    let text = std::fs::read_to_string(example).unwrap();
    let (code, _, stderr) = support::check(&text);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn request_identity_settings_are_checked() {
    let toml = r#"[[listeners]]
name = "public"
bind = "127.0.0.1:0"
trusted_proxies = ["10.0.0.0/8", "10.0.0.0/33", "proxy.internal"]
request_header_timeout = "0s"

[[routes]]
name = "a"
match = { path_prefix = "/a/../b" }
service = "s"
preserve_host = true
host_rewrite = "api.internal"

[[routes]]
name = "b"
match = { path = "/%7euser" }
service = "s"
host_rewrite = "bad host"

[[services]]
name = "s"
endpoints = [{ address = "127.0.0.1:9001" }]
"#;
    let (code, _, stderr) = support::check(toml);
    assert_eq!(code, 1, "{stderr}");
    for e in [
        "sluicegate.toml:4:34: listeners[0].trusted_proxies: \"10.0.0.0/33\" is not an address block",
        "sluicegate.toml:4:49: listeners[0].trusted_proxies: \"proxy.internal\" is not an address block",
        "sluicegate.toml:5:26: listeners[0].request_header_timeout: must be more than zero",
        "sluicegate.toml:9:25: routes[0].match.path_prefix: \"/a/../b\" is not a normalised path",
        "sluicegate.toml:12:16: routes[0].host_rewrite: a route cannot both preserve the client's Host and rewrite it",
        "sluicegate.toml:16:18: routes[1].match.path: \"/%7euser\" is not a normalised path",
        "sluicegate.toml:18:16: routes[1].host_rewrite: invalid host \"bad host\"",
    ] {
        assert!(stderr.contains(e), "missing {e:?} in:\n{stderr}");
    }
}

#[test]
fn rate_limit_policies_are_checked() {
    let toml = r#"[[listeners]]
name = "public"
bind = "127.0.0.1:0"

[[routes]]
name = "a"
service = "s"
rate_limit = "nope"

[[routes]]
name = "b"
service = "s"
rate_limit = "per-consumer"

[[services]]
name = "s"
endpoints = [{ address = "127.0.0.1:9001" }]

[rate_limits.per-consumer]
key = "consumer"
capacity = 10
refill_per_second = 1

[rate_limits.broken]
key = "header:bad name"
capacity = 0
refill_per_second = -1
store = "memcached"
on_store_error = "panic"
burst = 3

[rate_limits.shared]
key = "route"
capacity = 10
refill_per_second = 0.5
store = "redis"

[rate_limits.empty]
key = "client_ip"
"#;
    let (code, _, stderr) = support::check(toml);
    assert_eq!(code, 1, "{stderr}");
    for e in [
        "sluicegate.toml:8:14: routes[0].rate_limit: no policy named \"nope\" in [rate_limits]",
        "sluicegate.toml:13:14: routes[1].rate_limit: policy \"per-consumer\" counts per consumer, which needs auth on the route",
        "sluicegate.toml:25:7: rate_limits.broken.key: \"bad name\" is not a valid header name",
        "sluicegate.toml:26:12: rate_limits.broken.capacity: expected an integer from 1 to 1000000000",
        "sluicegate.toml:27:21: rate_limits.broken.refill_per_second: expected a number more than 0 up to 1000000000",
        "sluicegate.toml:28:9: rate_limits.broken.store: unknown store \"memcached\"; expected \"local\" or \"redis\"",
        "sluicegate.toml:29:18: rate_limits.broken.on_store_error: unknown value \"panic\"",
        "sluicegate.toml:30:1: rate_limits.broken.burst: unknown key",
        "sluicegate.toml:36:9: rate_limits.shared.store: \"redis\" needs a [redis] table with the server's url",
        "rate_limits.empty.capacity: missing required key",
        "rate_limits.empty.refill_per_second: missing required key",
    ] {
        assert!(stderr.contains(e), "missing {e:?} in:\n{stderr}");
    }
}

#[test]
fn redis_settings_are_checked() {
    let toml = r#"[redis]
url = "http://127.0.0.1:6379"
urls = ["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]
timeout = "0s"
ca = "missing-ca.pem"
"#;
    let (code, _, stderr) = support::check(toml);
    assert_eq!(code, 1, "{stderr}");
    for e in [
        "redis.ca: a CA is for rediss:// (TLS) servers",
        "redis.ca: cannot read missing-ca.pem",
        "redis.timeout: must be more than zero",
        "redis: give either url or urls (the seed nodes of a cluster), not both",
        "redis.urls: several servers are the seed nodes of a Redis Cluster; add cluster = true",
        "sluicegate.toml:2:7: redis: unsupported scheme \"http\"; expected redis:// or rediss:// (TLS)",
    ] {
        assert!(stderr.contains(e), "missing {e:?} in:\n{stderr}");
    }
    let (code, _, stderr) = support::check(
        "[redis]\nurls = [\"redis://a:7000\", \"rediss://b:7000\"]\ncluster = true\ntimeout = \"50ms\"\n",
    );
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn rate_limit_buckets_must_fit_their_arithmetic() {
    let toml = r#"[redis]
url = "redis://127.0.0.1:6379"

[rate_limits.glacial]
key = "route"
capacity = 1000
refill_per_second = 0.000001

[rate_limits.too-fast-for-redis]
key = "route"
capacity = 10
refill_per_second = 2000000
store = "redis"
"#;
    let (code, _, stderr) = support::check(toml);
    assert_eq!(code, 1, "{stderr}");
    for e in [
        "rate_limits.glacial.refill_per_second: an empty bucket would take more than 10 years to fill",
        "rate_limits.too-fast-for-redis.refill_per_second: a Redis bucket counts in microseconds, so at most 1000000 tokens per second",
    ] {
        assert!(stderr.contains(e), "missing {e:?} in:\n{stderr}");
    }
}

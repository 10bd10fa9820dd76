//! Distributed tracing through the real binary (`[tracing]`, issue 24): W3C `traceparent`
//! continued or started, the upstream's parent being the gateway's span, spans exported over
//! OTLP (gRPC and HTTP/protobuf) to a collector the test runs, the access log's `trace_id` and
//! `span_id`, sampling, and a collector that is down or hanging costing requests nothing but
//! dropped (and counted) spans.

#[path = "support/otlp.rs"]
mod otlp;
mod support;

use std::time::{Duration, Instant};

use otlp::{hex, Collector, Mode, Received};
use support::{Backend, Client, Gateway, TempDir, Toml};

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(flags: &str) -> String {
    format!("00-{CALLER_TRACE}-{CALLER_SPAN}-{flags}")
}

fn gateway(b: &Backend, tracing: &str, extra: &str) -> Gateway {
    let toml = Toml::new()
        .admin()
        .listener("public", "")
        .route("api", "app", "match = { path_prefix = \"/api\" }")
        .service("app", &[b.addr], "")
        .build();
    Gateway::start(&format!("{toml}\n[tracing]\n{tracing}\n{extra}"))
}

/// The upstream's `traceparent` split into (trace id, parent id, flags).
fn upstream_parent(b: &Backend) -> (String, String, String) {
    let seen = b.last_seen();
    let value = seen
        .headers
        .get("traceparent")
        .expect("the upstream got a traceparent")
        .to_str()
        .unwrap()
        .to_string();
    let parts: Vec<&str> = value.split('-').collect();
    assert_eq!(parts.len(), 4, "{value}");
    assert_eq!(parts[0], "00");
    (parts[1].into(), parts[2].into(), parts[3].into())
}

fn server_spans(spans: &[Received]) -> Vec<&Received> {
    spans.iter().filter(|s| s.kind == 2).collect()
}

#[test]
fn a_callers_trace_is_continued_exported_over_grpc_and_named_in_the_access_log() {
    let collector = Collector::start(Mode::Grpc);
    let b = Backend::start("a");
    let dir = TempDir::new("trace-log");
    let log = dir.0.join("access.log");
    let toml = Toml::new()
        .admin()
        .access_log(log.to_str().unwrap())
        .listener("public", "")
        .route("api", "app", "match = { path_prefix = \"/api\" }")
        .service("app", &[b.addr], "")
        .build();
    let gw = Gateway::start(&format!(
        "{toml}\n[tracing]\nendpoint = \"{}\"\nprotocol = \"grpc\"\nservice_name = \"edge-gw\"\n",
        collector.url()
    ));
    let mut c = gw.client();
    let tp = traceparent("01");
    let r = c.request(
        "GET",
        "/api/items?secret=1",
        &[("traceparent", &tp), ("tracestate", "vendor=opaque")],
        b"",
    );
    assert_eq!(r.status, 200);

    // The upstream continues the caller's trace under the gateway's span.
    let (trace_id, parent, flags) = upstream_parent(&b);
    assert_eq!(trace_id, CALLER_TRACE);
    assert_ne!(parent, CALLER_SPAN, "the gateway's own span is the parent");
    assert_eq!(flags, "01");
    assert_eq!(
        b.last_seen().headers.get("tracestate").unwrap(),
        "vendor=opaque",
        "a valid caller's tracestate goes on"
    );

    let spans = collector.wait_for("the request's spans", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.kind == 2) && s.iter().any(|s| s.kind == 3)
    });
    let servers = server_spans(&spans);
    assert_eq!(servers.len(), 1, "one server span per request: {spans:#?}");
    let server = servers[0];
    assert_eq!(hex(&server.trace_id), CALLER_TRACE);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(
        hex(&server.span_id),
        parent,
        "the upstream's parent is this span"
    );
    assert_eq!(server.name, "GET /api");
    assert_eq!(server.service_name, "edge-gw");
    assert_eq!(server.trace_state, "vendor=opaque");
    for (key, value) in [
        ("http.request.method", "GET"),
        ("url.path", "/api/items"),
        ("http.route", "/api"),
        ("http.response.status_code", "200"),
        ("server.address", "127.0.0.1"),
        ("network.protocol.version", "1.1"),
        ("sluicegate.route", "api"),
        ("sluicegate.service", "app"),
        ("sluicegate.endpoint", &b.addr.to_string()),
    ] {
        assert_eq!(server.attribute(key), Some(value), "{key}: {server:#?}");
    }
    assert!(
        !server.attributes.values().any(|v| v.contains("secret")),
        "the query is not recorded"
    );
    let attempt = spans.iter().find(|s| s.kind == 3).unwrap();
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(attempt.trace_id, server.trace_id);
    assert_eq!(attempt.attribute("http.response.status_code"), Some("200"));
    assert_eq!(
        attempt.attribute("sluicegate.endpoint"),
        Some(b.addr.to_string().as_str())
    );
    assert!(attempt.start_unix_nano >= server.start_unix_nano);
    assert!(attempt.end_unix_nano <= server.end_unix_nano);

    // The access log names the same trace and span.
    let deadline = Instant::now() + Duration::from_secs(5);
    let line = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line");
        std::thread::sleep(Duration::from_millis(50));
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["trace_id"], CALLER_TRACE);
    assert_eq!(v["span_id"], parent);

    // Counted once the collector has answered the export (just after it kept the spans).
    support::wait_until("the exported spans counted", Duration::from_secs(5), || {
        gw.metric("sluicegate_tracing_spans_exported_total") >= 2
    });
    drop(c);
}

#[test]
fn without_a_valid_traceparent_a_trace_is_started_and_exported_over_http() {
    let collector = Collector::start(Mode::HttpProtobuf);
    let b = Backend::start("a");
    let gw = gateway(
        &b,
        &format!(
            "endpoint = \"{}\"\nprotocol = \"http/protobuf\"",
            collector.url()
        ),
        "",
    );
    let mut c = gw.client();
    // Uppercase hex is not a valid traceparent (W3C Trace Context §3.2.2): a new trace, and
    // the tracestate that came with it is not passed on.
    let invalid = traceparent("01").to_uppercase();
    let r = c.request(
        "GET",
        "/api/new",
        &[("traceparent", &invalid), ("tracestate", "vendor=stale")],
        b"",
    );
    assert_eq!(r.status, 200);
    let (trace_id, parent, flags) = upstream_parent(&b);
    assert_ne!(trace_id, CALLER_TRACE);
    assert_eq!(trace_id.len(), 32);
    assert_eq!(flags, "01", "sample_ratio defaults to 1.0");
    assert!(b.last_seen().headers.get("tracestate").is_none());

    let spans = collector.wait_for("the new trace's span", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.kind == 2)
    });
    let server = server_spans(&spans)[0].clone();
    assert_eq!(hex(&server.trace_id), trace_id);
    assert_eq!(hex(&server.span_id), parent);
    assert!(server.parent_span_id.is_empty(), "a root span");
    assert_eq!(server.service_name, "sluicegate");
}

#[test]
fn sampling_follows_the_caller_and_the_ratio_and_unsampled_requests_still_propagate() {
    let collector = Collector::start(Mode::Grpc);
    let b = Backend::start("a");
    let gw = gateway(
        &b,
        &format!(
            "endpoint = \"{}\"\nprotocol = \"grpc\"\nsample_ratio = 0.0",
            collector.url()
        ),
        "",
    );
    let mut c = gw.client();
    // No caller: ratio 0 records nothing, but the upstream still gets a new trace.
    assert_eq!(c.get("/api/a").status, 200);
    let (first_trace, _, flags) = upstream_parent(&b);
    assert_eq!(flags, "00");
    // A caller that did not sample: not recorded, continued unsampled.
    let r = c.request("GET", "/api/b", &[("traceparent", &traceparent("00"))], b"");
    assert_eq!(r.status, 200);
    let (trace_id, parent, flags) = upstream_parent(&b);
    assert_eq!((trace_id.as_str(), flags.as_str()), (CALLER_TRACE, "00"));
    assert_ne!(parent, CALLER_SPAN);
    assert_ne!(first_trace, CALLER_TRACE);
    // A caller that sampled: parent-based, so recorded despite the ratio.
    let r = c.request("GET", "/api/c", &[("traceparent", &traceparent("01"))], b"");
    assert_eq!(r.status, 200);
    let spans = collector.wait_for("the sampled caller's span", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.kind == 2)
    });
    // Give a straggling export of the unsampled ones time to show up, if there were one.
    std::thread::sleep(Duration::from_millis(1200));
    let spans = collector
        .spans()
        .into_iter()
        .chain(spans)
        .collect::<Vec<_>>();
    let servers: Vec<_> = server_spans(&spans)
        .into_iter()
        .map(|s| s.attribute("url.path").unwrap().to_string())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(servers, ["/api/c"]);
}

#[test]
fn policy_steps_and_each_retry_attempt_get_their_own_spans() {
    let collector = Collector::start(Mode::Grpc);
    let failing = Backend::start("failing");
    failing.set_status(503);
    let good = Backend::start("good");
    let toml = Toml::new()
        .admin()
        .listener("public", "")
        .route(
            "api",
            "app",
            "rate_limit = \"per-client\"\nretry = { attempts = 2, on = [\"503\"], backoff = \"1ms\", budget_percent = 100 }",
        )
        .service("app", &[failing.addr, good.addr], "algorithm = \"round_robin\"")
        .build();
    let gw = Gateway::start(&format!(
        "{toml}\n[rate_limits.per-client]\ncapacity = 100\nrefill_per_second = 100\nkey = \"client_ip\"\n\n[tracing]\nendpoint = \"{}\"\nprotocol = \"grpc\"\n",
        collector.url()
    ));
    let mut c = gw.client();
    // Round robin starts at either endpoint: two requests make sure one starts at the failing
    // one and is retried on the other.
    for _ in 0..2 {
        assert_eq!(c.get("/x").status, 200);
    }
    let spans = collector.wait_for(
        "the retried request's spans",
        Duration::from_secs(10),
        |s| {
            s.iter().filter(|s| s.kind == 2).count() == 2
                && s.iter().filter(|s| s.kind == 3).count() >= 3
        },
    );
    let retried = server_spans(&spans)
        .into_iter()
        .find(|server| {
            spans
                .iter()
                .filter(|s| s.kind == 3 && s.parent_span_id == server.span_id)
                .count()
                == 2
        })
        .expect("a server span with two attempts");
    let attempts: Vec<&Received> = spans
        .iter()
        .filter(|s| s.kind == 3 && s.parent_span_id == retried.span_id)
        .collect();
    let statuses: Vec<_> = attempts
        .iter()
        .map(|s| s.attribute("http.response.status_code").unwrap())
        .collect();
    assert!(
        statuses.contains(&"503") && statuses.contains(&"200"),
        "{statuses:?}"
    );
    // A 5xx attempt is an error span (OTLP status code 2); the request itself is not.
    for attempt in &attempts {
        let failed = attempt.attribute("http.response.status_code") == Some("503");
        assert_eq!(attempt.status_code, if failed { 2 } else { 0 });
    }
    assert_eq!(retried.status_code, 0);
    assert!(attempts
        .iter()
        .any(|s| s.attribute("http.request.resend_count") == Some("1")));
    assert_eq!(retried.attribute("sluicegate.rate_limit"), Some("allowed"));
    assert_eq!(retried.attribute("http.route"), Some("/"));
    let step = spans
        .iter()
        .find(|s| s.kind == 1 && s.parent_span_id == retried.span_id)
        .expect("the rate-limit step's span");
    assert_eq!(step.name, "rate_limit per-client");
    assert_eq!(step.attribute("sluicegate.decision"), Some("allowed"));
}

/// Requests through a gateway whose collector is `collector`; returns the latencies.
fn latencies(gw: &Gateway, n: usize) -> Vec<Duration> {
    let mut c = Client::connect(gw.addr());
    (0..n)
        .map(|i| {
            let started = Instant::now();
            let r = c.get(&format!("/api/{i}"));
            assert_eq!(r.status, 200, "request {i}");
            started.elapsed()
        })
        .collect()
}

fn p99(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() * 99 / 100]
}

#[test]
fn a_collector_that_is_down_or_hangs_costs_requests_nothing_but_dropped_spans() {
    let b = Backend::start("a");
    let healthy = Collector::start(Mode::Grpc);
    let hanging = Collector::start(Mode::Hanging);
    // A port nothing listens on (a free one could be taken by another test meanwhile).
    let down: std::net::SocketAddr = "127.0.0.1:1".parse().unwrap();
    let settings = |url: String| {
        format!("endpoint = \"{url}\"\nprotocol = \"grpc\"\ntimeout = \"1s\"\nqueue_size = 64")
    };
    // The healthy collector's gateway has the default queue (2048 spans); the others a small
    // one, so that a hanging collector fills it within the test.
    let with_healthy = gateway(
        &b,
        &format!("endpoint = \"{}\"\nprotocol = \"grpc\"", healthy.url()),
        "",
    );
    let with_hanging = gateway(&b, &settings(hanging.url()), "");
    let with_down = gateway(&b, &settings(format!("http://{down}")), "");
    let n = 600;
    let p99_healthy = p99(latencies(&with_healthy, n));
    let p99_hanging = p99(latencies(&with_hanging, n));
    let p99_down = p99(latencies(&with_down, n));
    // Reported (wall-clock times on a shared machine); the one bound: a request that waited for
    // the hanging collector would take at least its export timeout (1 s).
    eprintln!("p99: healthy collector {p99_healthy:?}, hanging {p99_hanging:?}, down {p99_down:?}");
    assert!(p99_hanging < Duration::from_secs(1), "{p99_hanging:?}");
    support::wait_until(
        "hanging collector's spans dropped",
        Duration::from_secs(10),
        || with_hanging.metric("sluicegate_tracing_spans_dropped_total{reason=\"queue_full\"}") > 0,
    );
    support::wait_until(
        "down collector's spans counted",
        Duration::from_secs(15),
        || {
            with_down.metric("sluicegate_tracing_spans_dropped_total{reason=\"export_failed\"}")
                + with_down.metric("sluicegate_tracing_spans_dropped_total{reason=\"queue_full\"}")
                > 0
        },
    );
    assert_eq!(
        with_healthy.metric("sluicegate_tracing_spans_dropped_total{reason=\"queue_full\"}"),
        0
    );
    healthy.wait_for("every span", Duration::from_secs(10), |s| {
        s.iter().filter(|s| s.kind == 2).count() >= n
    });
}

#[test]
fn tracing_settings_are_checked() {
    for (text, expected) in [
        ("protocol = \"http/json\"", "unknown protocol \"http/json\""),
        ("sample_ratio = 1.5", "tracing.sample_ratio"),
        (
            "endpoint = \"collector:4317\"",
            "must start with http:// or https://",
        ),
        ("timeout = \"0s\"", "tracing.timeout"),
        (
            "endpoint = \"https://collector:4318\"\nprotocol = \"http/protobuf\"",
            "https:// needs protocol = \"grpc\"",
        ),
        (
            // Without `protocol` the default is HTTP, which has no TLS here.
            "endpoint = \"https://collector:4318\"",
            "https:// needs protocol = \"grpc\"",
        ),
        ("sampling = 1", "unknown key"),
        (
            "headers = { \"bad name\" = \"x\" }",
            "tracing.headers: invalid header name \"bad name\"",
        ),
        (
            "headers = { \"x-key\" = \"line\\nbreak\" }",
            "tracing.headers.x-key: invalid header value",
        ),
    ] {
        let toml = format!(
            "{}\n[tracing]\n{text}\n",
            Toml::proxy_to(&["127.0.0.1:9".parse().unwrap()]).build()
        );
        let (code, _, stderr) = support::check(&toml);
        assert_ne!(code, 0, "{text}");
        assert!(stderr.contains(expected), "{text}: {stderr}");
    }
}

#[test]
fn the_last_requests_spans_reach_the_collector_before_the_process_exits() {
    let collector = Collector::start(Mode::Grpc);
    let b = Backend::start("a");
    let mut gw = gateway(
        &b,
        &format!("endpoint = \"{}\"\nprotocol = \"grpc\"", collector.url()),
        "",
    );
    let mut c = gw.client();
    assert_eq!(c.get("/api/last").status, 200);
    drop(c);
    // At once: the export task would otherwise wait up to half a second to fill a batch.
    gw.signal("TERM");
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
    let spans = collector.spans();
    assert!(
        server_spans(&spans)
            .iter()
            .any(|s| s.attribute("url.path") == Some("/api/last")),
        "flushed at shutdown: {spans:#?}"
    );
}

#[test]
fn an_http2_request_continues_its_trace_the_same_way() {
    let collector = Collector::start(Mode::Grpc);
    let b = Backend::start("a");
    let gw = gateway(
        &b,
        &format!("endpoint = \"{}\"\nprotocol = \"grpc\"", collector.url()),
        "",
    );
    let tp = traceparent("01");
    let (head, _) = support::curl_h2(
        &format!("http://{}/api/h2", gw.addr()),
        &["-H", &format!("traceparent: {tp}")],
    );
    assert!(head.starts_with("http/2 200"), "{head}");
    let (trace_id, parent, _) = upstream_parent(&b);
    assert_eq!(trace_id, CALLER_TRACE);
    let spans = collector.wait_for("the HTTP/2 request's span", Duration::from_secs(10), |s| {
        s.iter().any(|s| s.kind == 2)
    });
    let server = server_spans(&spans)[0].clone();
    assert_eq!(hex(&server.span_id), parent);
    assert_eq!(hex(&server.parent_span_id), CALLER_SPAN);
    assert_eq!(server.attribute("network.protocol.version"), Some("2"));
    assert_eq!(server.attribute("url.path"), Some("/api/h2"));
}

#[test]
fn a_cache_hit_is_a_span_without_an_upstream_attempt() {
    let collector = Collector::start(Mode::Grpc);
    let b = Backend::start("a");
    let toml = Toml::new()
        .admin()
        .listener("public", "")
        .route("cached", "app", "cache = { ttl = \"60s\" }")
        .service("app", &[b.addr], "")
        .build();
    let gw = Gateway::start(&format!(
        "{toml}\n[tracing]\nendpoint = \"{}\"\nprotocol = \"grpc\"\n",
        collector.url()
    ));
    let mut c = gw.client();
    // The backend adds `cache-control: max-age=60` (the query's h=NAME:VALUE).
    let path = "/page?h=cache-control%3A%20max-age%3D60";
    assert_eq!(c.get(path).status, 200);
    assert_eq!(c.get(path).status, 200);
    assert_eq!(b.hits(), 1, "the second was a hit");
    let spans = collector.wait_for("both requests' spans", Duration::from_secs(10), |s| {
        s.iter().filter(|s| s.kind == 2).count() == 2
    });
    let hit = server_spans(&spans)
        .into_iter()
        .find(|s| s.attribute("sluicegate.cache") == Some("hit"))
        .expect("a server span with sluicegate.cache = hit")
        .clone();
    let children: Vec<&Received> = spans
        .iter()
        .filter(|s| s.parent_span_id == hit.span_id)
        .collect();
    assert_eq!(children.len(), 1, "{children:#?}");
    assert_eq!(children[0].name, "cache lookup");
    assert_eq!(children[0].attribute("sluicegate.cache"), Some("hit"));
    let miss = server_spans(&spans)
        .into_iter()
        .find(|s| s.attribute("sluicegate.cache") == Some("miss"))
        .expect("the first request missed")
        .clone();
    assert!(spans
        .iter()
        .any(|s| s.kind == 3 && s.parent_span_id == miss.span_id));
}

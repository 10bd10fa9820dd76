//! A sampled request's spans: recorded on its way through the pipeline, turned into
//! OpenTelemetry span data when it ends.
//!
//! One server span per request (`SERVER`), named `{method} {http.route}` with the attributes
//! of the OpenTelemetry HTTP semantic conventions and the gateway's own (`sluicegate.*`), and
//! under it a child span for each step that did work: each policy step, the cache lookup, the
//! wait for admission under load shedding, and each upstream attempt (`CLIENT`). The upstream's
//! `traceparent` names the server span as its parent: the upstream's span sits under the
//! request it serves whatever the number of attempts.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

use http::{Method, StatusCode, Version};
use opentelemetry::trace::{
    SpanContext as OtelContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

use super::context::{new_span_id, SpanContext};

/// The longest `tracestate` recorded with a trace (W3C Trace Context §3.3.1.5: 512 characters
/// is what every vendor must propagate); a longer one still goes upstream, but is not copied
/// into spans that wait in the export queue.
const MAX_TRACESTATE: usize = 512;
/// The longest `url.path` recorded (a path may be as long as the head allows, 64 KiB).
const MAX_PATH: usize = 1024;

/// What a sampled request records until it ends.
pub struct Recording {
    cx: SpanContext,
    /// The caller's `tracestate`, kept with the trace it belongs to.
    trace_state: TraceState,
    wall: SystemTime,
    started: Instant,
    method: Method,
    path: Box<str>,
    host: Option<Box<str>>,
    port: Option<u16>,
    version: Version,
    tls: bool,
    client: IpAddr,
    request_id: Box<str>,
    children: Vec<Child>,
    /// When the step being timed began ([`Recording::mark`]): kept here rather than in the
    /// pipeline, whose future would otherwise carry it for every request.
    mark: Option<Instant>,
}

/// A finished child span.
struct Child {
    name: Cow<'static, str>,
    kind: SpanKind,
    start: Instant,
    end: Instant,
    attributes: Vec<KeyValue>,
    error: bool,
}

/// An upstream attempt's end, for its span.
pub enum AttemptEnd<'a> {
    Status(StatusCode),
    /// How it failed (`timeout`, `connect_failure`, `reset`).
    Failed(&'a str),
}

/// How the request ended, for the server span (known only at the end).
pub struct Ending<'a> {
    pub status: u16,
    pub listener: Option<&'a str>,
    pub route: Option<&'a str>,
    /// The route's path or prefix (`http.route`).
    pub http_route: Option<&'a str>,
    pub service: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    /// Each step's decision, as the access log has them.
    pub decisions: &'a [(&'static str, &'static str)],
    pub consumer: Option<&'a str>,
}

/// What a sampled request's server span says of the request as it arrived.
pub struct Incoming<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The Host's name (`server.address`) and port (`server.port`).
    pub host: Option<&'a str>,
    pub port: Option<u16>,
    pub version: Version,
    pub tls: bool,
    pub client: IpAddr,
    pub request_id: &'a str,
    /// The caller's `tracestate` (kept only with a valid `traceparent`).
    pub tracestate: Option<&'a str>,
}

impl Recording {
    /// Starts recording a sampled request that arrived at `started`.
    pub fn new(cx: SpanContext, started: Instant, request: &Incoming<'_>) -> Recording {
        let trace_state = request
            .tracestate
            .filter(|s| cx.parent.is_some() && s.len() <= MAX_TRACESTATE)
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Recording {
            cx,
            trace_state,
            wall: SystemTime::now() - started.elapsed(),
            started,
            method: request.method.clone(),
            path: truncate(request.path, MAX_PATH).into(),
            host: request.host.map(Into::into),
            port: request.port,
            version: request.version,
            tls: request.tls,
            client: request.client,
            request_id: request.request_id.into(),
            children: Vec::new(),
            mark: None,
        }
    }

    /// Notes that a step begins now; the next [`Recording::cache_lookup`],
    /// [`Recording::admission`] or [`Recording::attempt`] starts there.
    pub fn mark(&mut self) {
        self.mark = Some(Instant::now());
    }

    fn since_mark(&mut self) -> Instant {
        self.mark.take().unwrap_or_else(Instant::now)
    }

    /// A policy step (`auth`, `rate_limit`) that ran from `start` until now.
    pub fn step(&mut self, step: &'static str, policy: &str, start: Instant, decision: &str) {
        self.children.push(Child {
            name: Cow::Owned(format!("{step} {policy}")),
            kind: SpanKind::Internal,
            start,
            end: Instant::now(),
            attributes: vec![
                KeyValue::new("sluicegate.policy", policy.to_string()),
                KeyValue::new("sluicegate.decision", decision.to_string()),
            ],
            error: false,
        });
    }

    /// The cache lookup (memory, then the shared tier) that ran from the mark until now.
    pub fn cache_lookup(&mut self, result: &'static str) {
        let start = self.since_mark();
        self.children.push(Child {
            name: Cow::Borrowed("cache lookup"),
            kind: SpanKind::Internal,
            start,
            end: Instant::now(),
            attributes: vec![KeyValue::new("sluicegate.cache", result)],
            error: false,
        });
    }

    /// The wait for admission under load shedding, from the mark until now.
    pub fn admission(&mut self, decision: &'static str) {
        let start = self.since_mark();
        self.children.push(Child {
            name: Cow::Borrowed("load_shedding admission"),
            kind: SpanKind::Internal,
            start,
            end: Instant::now(),
            attributes: vec![KeyValue::new("sluicegate.load_shedding", decision)],
            error: false,
        });
    }

    /// One upstream attempt (the `try`-th, from 1) from the mark until its response head
    /// arrived or it failed.
    pub fn attempt(&mut self, endpoint: SocketAddr, try_: u32, end: AttemptEnd) {
        let start = self.since_mark();
        let (method, original) = known_method(&self.method);
        // "HTTP" for a method outside the standard set, whose name a client chooses.
        let method_name = if original.is_some() { "HTTP" } else { method };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("server.address", endpoint.ip().to_string()),
            KeyValue::new("server.port", i64::from(endpoint.port())),
            KeyValue::new("sluicegate.endpoint", endpoint.to_string()),
        ];
        if let Some(original) = original {
            attributes.push(KeyValue::new("http.request.method_original", original));
        }
        if try_ > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(try_ - 1),
            ));
        }
        let error = match end {
            AttemptEnd::Status(status) => {
                attributes.push(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                // A client span's 4xx is an error too (the semantic conventions: the request
                // failed from the caller's side).
                let failed = status.is_client_error() || status.is_server_error();
                if failed {
                    attributes.push(KeyValue::new("error.type", status.as_str().to_string()));
                }
                failed
            }
            AttemptEnd::Failed(how) => {
                attributes.push(KeyValue::new("error.type", how.to_string()));
                true
            }
        };
        self.children.push(Child {
            name: Cow::Borrowed(method_name),
            kind: SpanKind::Client,
            start,
            end: Instant::now(),
            attributes,
            error,
        });
    }

    /// The request's spans, the server span first.
    pub fn finish(mut self, ending: &Ending<'_>) -> Vec<SpanData> {
        let children = std::mem::take(&mut self.children);
        let end = Instant::now();
        let at = |t: Instant| self.wall + t.saturating_duration_since(self.started);
        let trace_id = TraceId::from_bytes(self.cx.trace_id);
        let server_id = SpanId::from_bytes(self.cx.span_id);
        // The caller's tracestate on the server span only: one copy per request in the queue.
        let context = |span_id: SpanId, state: TraceState| {
            OtelContext::new(trace_id, span_id, TraceFlags::SAMPLED, false, state)
        };
        let (method, original) = known_method(&self.method);
        // "HTTP" for a method outside the standard set, whose name a client chooses.
        let method_name = if original.is_some() { "HTTP" } else { method };
        let mut attributes = vec![
            KeyValue::new("http.request.method", method),
            KeyValue::new("url.path", self.path.to_string()),
            KeyValue::new("url.scheme", if self.tls { "https" } else { "http" }),
            KeyValue::new("http.response.status_code", i64::from(ending.status)),
            KeyValue::new("network.protocol.version", protocol_version(self.version)),
            KeyValue::new("client.address", self.client.to_string()),
            KeyValue::new("sluicegate.request_id", self.request_id.to_string()),
        ];
        if let Some(port) = self.port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        let optional = [
            ("server.address", self.host.as_deref()),
            ("http.route", ending.http_route),
            ("sluicegate.listener", ending.listener),
            ("sluicegate.route", ending.route),
            ("sluicegate.service", ending.service),
            ("sluicegate.endpoint", ending.endpoint),
            ("sluicegate.consumer", ending.consumer),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                attributes.push(KeyValue::new(key, value.to_string()));
            }
        }
        if let Some(original) = original {
            attributes.push(KeyValue::new("http.request.method_original", original));
        }
        // One attribute per step, its last decision (the cache's "miss" becomes "stale" when a
        // stale response answers a failed upstream).
        for (i, (step, decision)) in ending.decisions.iter().enumerate() {
            if !ending.decisions[i + 1..].iter().any(|(s, _)| s == step) {
                attributes.push(KeyValue::new(format!("sluicegate.{step}"), *decision));
            }
        }
        let failed = ending.status >= 500;
        if failed {
            attributes.push(KeyValue::new("error.type", ending.status.to_string()));
        }
        // `{method} {http.route}`.
        let name = match ending.http_route {
            Some(route) => format!("{method_name} {route}"),
            None => method_name.to_string(),
        };
        let mut spans = Vec::with_capacity(1 + children.len());
        spans.push(SpanData {
            span_context: context(server_id, self.trace_state.clone()),
            parent_span_id: self.cx.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.cx.parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(name),
            start_time: self.wall,
            end_time: at(end),
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: if failed {
                Status::error("")
            } else {
                Status::Unset
            },
            instrumentation_scope: scope().clone(),
        });
        for child in children {
            spans.push(SpanData {
                span_context: context(SpanId::from_bytes(new_span_id()), TraceState::NONE),
                parent_span_id: server_id,
                parent_span_is_remote: false,
                span_kind: child.kind,
                name: child.name,
                start_time: at(child.start),
                end_time: at(child.end),
                attributes: child.attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: if child.error {
                    Status::error("")
                } else {
                    Status::Unset
                },
                instrumentation_scope: scope().clone(),
            });
        }
        spans
    }
}

/// The method as the semantic conventions name it: one of the standard methods, or `_OTHER`
/// with the method as sent (a client may send any token as a method).
fn known_method(method: &Method) -> (&'static str, Option<String>) {
    const KNOWN: [&str; 9] = [
        "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
    ];
    match KNOWN.iter().find(|m| **m == method.as_str()) {
        Some(m) => (m, None),
        None => ("_OTHER", Some(truncate(method.as_str(), 64).to_string())),
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// `network.protocol.version`: "1.1", "2", …
fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The instrumentation scope every span names: the gateway itself.
fn scope() -> &'static InstrumentationScope {
    static SCOPE: OnceLock<InstrumentationScope> = OnceLock::new();
    SCOPE.get_or_init(|| {
        InstrumentationScope::builder("sluicegate")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recording(parent: Option<[u8; 8]>) -> Recording {
        let cx = SpanContext {
            trace_id: [7; 16],
            span_id: [9; 8],
            parent,
            sampled: true,
        };
        Recording::new(
            cx,
            Instant::now(),
            &Incoming {
                method: &Method::GET,
                path: "/api/items",
                host: Some("example.com"),
                port: Some(8080),
                version: Version::HTTP_11,
                tls: false,
                client: "127.0.0.1".parse().unwrap(),
                request_id: "req-1",
                tracestate: Some("vendor=value"),
            },
        )
    }

    fn attribute<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn the_server_span_carries_the_conventions_attributes_and_the_children_hang_under_it() {
        let mut r = recording(Some([3; 8]));
        let t = Instant::now();
        r.step("rate_limit", "per-client", t, "allowed");
        r.mark();
        r.attempt(
            "127.0.0.1:9001".parse().unwrap(),
            1,
            AttemptEnd::Status(StatusCode::OK),
        );
        let spans = r.finish(&Ending {
            status: 200,
            listener: Some("public"),
            route: Some("api"),
            http_route: Some("/api"),
            service: Some("items"),
            endpoint: Some("127.0.0.1:9001"),
            decisions: &[
                ("cache", "miss"),
                ("rate_limit", "allowed"),
                ("cache", "stale"),
            ],
            consumer: None,
        });
        assert_eq!(spans.len(), 3);
        let server = &spans[0];
        assert_eq!(server.name, "GET /api");
        assert_eq!(server.span_kind, SpanKind::Server);
        assert_eq!(server.span_context.trace_id(), TraceId::from_bytes([7; 16]));
        assert_eq!(server.span_context.span_id(), SpanId::from_bytes([9; 8]));
        assert_eq!(server.parent_span_id, SpanId::from_bytes([3; 8]));
        assert!(server.parent_span_is_remote);
        assert_eq!(server.span_context.trace_state().header(), "vendor=value");
        for (key, value) in [
            ("http.request.method", "GET"),
            ("url.path", "/api/items"),
            ("http.route", "/api"),
            ("server.address", "example.com"),
            ("network.protocol.version", "1.1"),
            ("sluicegate.route", "api"),
            ("sluicegate.service", "items"),
            ("sluicegate.endpoint", "127.0.0.1:9001"),
            ("sluicegate.cache", "stale"),
            ("sluicegate.rate_limit", "allowed"),
        ] {
            assert_eq!(
                attribute(server, key).map(|v| v.to_string()),
                Some(value.to_string()),
                "{key}"
            );
        }
        assert_eq!(
            attribute(server, "http.response.status_code"),
            Some(&opentelemetry::Value::I64(200))
        );
        assert_eq!(
            attribute(server, "server.port"),
            Some(&opentelemetry::Value::I64(8080))
        );
        assert_eq!(server.status, Status::Unset);
        for child in &spans[1..] {
            assert_eq!(child.parent_span_id, server.span_context.span_id());
            assert_eq!(
                child.span_context.trace_id(),
                server.span_context.trace_id()
            );
            assert!(child.start_time >= server.start_time && child.end_time <= server.end_time);
        }
        assert_eq!(spans[2].span_kind, SpanKind::Client);
        assert_eq!(
            server
                .attributes
                .iter()
                .filter(|kv| kv.key.as_str() == "sluicegate.cache")
                .count(),
            1,
            "one attribute per step, its last decision"
        );
        // The caller's tracestate is kept once, on the server span.
        assert_eq!(spans[1].span_context.trace_state().header(), "");
    }

    #[test]
    fn a_clients_own_method_and_a_long_path_or_tracestate_are_bounded() {
        let cx = SpanContext {
            trace_id: [7; 16],
            span_id: [9; 8],
            parent: Some([3; 8]),
            sampled: true,
        };
        let long_state = format!("v={}", "x".repeat(600));
        let long_path = format!("/{}é", "p".repeat(1022));
        let method = Method::from_bytes(b"BREW").unwrap();
        let mut r = Recording::new(
            cx,
            Instant::now(),
            &Incoming {
                method: &method,
                path: &long_path,
                host: None,
                port: None,
                version: Version::HTTP_2,
                tls: true,
                client: "::1".parse().unwrap(),
                request_id: "r",
                tracestate: Some(&long_state),
            },
        );
        r.mark();
        r.attempt(
            "127.0.0.1:9".parse().unwrap(),
            1,
            AttemptEnd::Status(StatusCode::NOT_FOUND),
        );
        let spans = r.finish(&Ending {
            status: 404,
            listener: None,
            route: Some("r"),
            http_route: Some("/"),
            service: None,
            endpoint: None,
            decisions: &[],
            consumer: None,
        });
        let server = &spans[0];
        assert_eq!(server.name, "HTTP /");
        assert_eq!(
            attribute(server, "http.request.method").map(|v| v.to_string()),
            Some("_OTHER".into())
        );
        assert_eq!(
            attribute(server, "http.request.method_original").map(|v| v.to_string()),
            Some("BREW".into())
        );
        let path = attribute(server, "url.path").unwrap().to_string();
        assert!(path.len() <= MAX_PATH && long_path.starts_with(&path));
        assert_eq!(server.span_context.trace_state().header(), "");
        assert_eq!(
            server.status,
            Status::Unset,
            "a 404 is not the server's error"
        );
        assert!(
            matches!(spans[1].status, Status::Error { .. }),
            "but the attempt's, from the caller's side"
        );
        assert_eq!(spans[1].name, "HTTP");
    }

    #[test]
    fn a_new_trace_has_no_parent_and_a_5xx_is_an_error() {
        let r = recording(None);
        let spans = r.finish(&Ending {
            status: 502,
            listener: None,
            route: None,
            http_route: None,
            service: None,
            endpoint: None,
            decisions: &[],
            consumer: None,
        });
        assert_eq!(spans[0].parent_span_id, SpanId::INVALID);
        assert!(!spans[0].parent_span_is_remote);
        assert_eq!(spans[0].name, "GET");
        assert!(matches!(spans[0].status, Status::Error { .. }));
        // A tracestate without a valid parent is not kept.
        assert_eq!(spans[0].span_context.trace_state().header(), "");
    }
}

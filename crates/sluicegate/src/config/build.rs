//! Turns the TOML tree into a validated [`Config`], collecting every problem on the way.
//!
//! The pipeline is `text -> DeTable (spans) -> Reader (typed getters) -> Config`. Each section has
//! one function below; each reports what is wrong and carries on, so a file with five mistakes
//! yields five diagnostics. Cross-references (a route's service, duplicate names) are checked last.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderValue, Method};
use toml::de::DeTable;

use super::auth;
use super::diagnostic::{suggest, Diagnostics};
use super::model::*;
use super::policies;
use super::raw::{Reader, Table};
use crate::balance::{is_prime, Algorithm, HashOn, MAGLEV_DEFAULT_TABLE_SIZE};
use crate::health::{BreakerConfig, CheckKind, HealthCheckConfig, OutlierConfig, StatusRanges};

const TOP_KEYS: &[&str] = &[
    "admin",
    "runtime",
    "access_log",
    "listeners",
    "routes",
    "services",
    "redis",
    "rate_limits",
    "auth",
    "load_shedding",
    "cache",
    "tracing",
];
const TOP_LATER: &[&str] = &["slos", "experiments"];

/// Parses and validates a config file's text; `path` is used in the diagnostics.
pub fn build(source: &str, path: &str) -> Result<Config, Diagnostics> {
    let mut reader = Reader::new(source);
    let doc = match DeTable::parse(source) {
        Ok(doc) => doc,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            reader.report(span, format!("invalid TOML: {}", e.message().trim()));
            return Err(reader.diags.finish(path));
        }
    };
    let top = Table::new("", doc.span(), doc.get_ref());
    reader.check_keys(&top, TOP_KEYS, TOP_LATER);

    let admin = reader
        .table(&top, "admin")
        .and_then(|t| admin(&mut reader, &t));
    let runtime = reader
        .table(&top, "runtime")
        .map(|t| runtime(&mut reader, &t))
        .unwrap_or_default();
    let access_log = reader
        .table(&top, "access_log")
        .map(|t| access_log(&mut reader, &t))
        .unwrap_or_default();
    let listeners: Vec<_> = reader
        .tables(&top, "listeners")
        .iter()
        .filter_map(|t| listener(&mut reader, t).map(|l| (l, t.clone())))
        .collect();
    let services: Vec<_> = reader
        .tables(&top, "services")
        .iter()
        .filter_map(|t| service(&mut reader, t).map(|s| (s, t.clone())))
        .collect();
    let routes: Vec<_> = reader
        .tables(&top, "routes")
        .iter()
        .filter_map(|t| route(&mut reader, t))
        .collect();

    let redis = reader
        .table(&top, "redis")
        .and_then(|t| policies::redis(&mut reader, &t));
    let rate_limits = reader
        .table(&top, "rate_limits")
        .map(|t| policies::rate_limits(&mut reader, &t))
        .unwrap_or_default();

    let auth = reader
        .table(&top, "auth")
        .map(|t| auth::policies(&mut reader, &t))
        .unwrap_or_default();

    let cache = reader
        .table(&top, "cache")
        .map(|t| super::cache::cache(&mut reader, &t, top.get("redis").is_some()))
        .unwrap_or_default();
    let load_shedding = reader
        .table(&top, "load_shedding")
        .map(|t| super::shedding::load_shedding(&mut reader, &t));
    let tracing = reader
        .table(&top, "tracing")
        .map(|t| super::tracing::tracing(&mut reader, &t));

    cross_check(&mut reader, &listeners, &services, &routes);
    check_policies(
        &mut reader,
        &routes,
        &rate_limits,
        &auth,
        top.get("redis").is_some(),
    );

    if !reader.diags.is_empty() {
        return Err(reader.diags.finish(path));
    }
    Ok(Config {
        admin,
        runtime,
        access_log,
        listeners: listeners.into_iter().map(|(l, _)| l).collect(),
        routes: routes.into_iter().map(|r| r.config).collect(),
        services: services.into_iter().map(|(s, _)| s).collect(),
        redis,
        rate_limits: rate_limits.into_iter().map(|p| p.config).collect(),
        auth: auth.into_iter().map(|p| p.config).collect(),
        load_shedding,
        cache,
        tracing,
    })
}

/// Routes name policies that exist and that they can use; Redis-stored policies have a Redis.
fn check_policies(
    r: &mut Reader<'_>,
    routes: &[RawRoute],
    rate_limits: &[policies::RawRateLimit],
    auth: &[auth::RawAuth],
    has_redis: bool,
) {
    for policy in rate_limits {
        if policy.config.store == LimitStore::Redis && !has_redis {
            r.report(
                policy.store_span.clone(),
                format!(
                    "rate_limits.{}.store: \"redis\" needs a [redis] table with the server's url",
                    policy.config.name
                ),
            );
        }
    }
    for route in routes {
        if let (Some(name), Some(span)) = (&route.config.auth, &route.auth_span) {
            if !auth.iter().any(|p| p.config.name == *name) {
                r.report(
                    span.clone(),
                    format!("{}.auth: no policy named \"{name}\" in [auth]", route.path),
                );
            }
        }
        if let (None, Some(span)) = (&route.config.auth, &route.scopes_span) {
            r.report(
                span.clone(),
                format!(
                    "{}.require_scopes: scopes are checked on an authenticated consumer; add auth = \"NAME\" to the route",
                    route.path
                ),
            );
        }
        let (Some(name), Some(span)) = (&route.config.rate_limit, &route.rate_limit_span) else {
            continue;
        };
        match rate_limits.iter().find(|p| p.config.name == *name) {
            None => r.report(
                span.clone(),
                format!(
                    "{}.rate_limit: no policy named \"{name}\" in [rate_limits]",
                    route.path
                ),
            ),
            Some(p) if p.config.key == LimitKey::Consumer && route.config.auth.is_none() => r
                .report(
                    span.clone(),
                    format!(
                        "{}.rate_limit: policy \"{name}\" counts per consumer, which needs auth on the route (auth = \"NAME\")",
                        route.path
                    ),
                ),
            Some(_) => {}
        }
    }
}

fn admin(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<AdminConfig> {
    r.check_keys(t, &["bind", "token"], &[]);
    if t.get("bind").is_none() {
        r.missing(t, "bind", "an address such as \"127.0.0.1:9901\"");
        return None;
    }
    // A token travels in `Authorization: Bearer TOKEN`: RFC 6750's token68 characters only.
    let token = r.string(t, "token").and_then(|(token, span)| {
        let valid = !token.is_empty()
            && token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b));
        if valid {
            Some(token.to_string())
        } else {
            r.report(
                span,
                format!(
                    "{}: expected a non-empty bearer token of letters, digits and -._~+/= (e.g. from `openssl rand -hex 32`)",
                    t.key_path("token")
                ),
            );
            None
        }
    });
    r.address(t, "bind").map(|bind| AdminConfig { bind, token })
}

fn runtime(r: &mut Reader<'_>, t: &Table<'_, '_>) -> RuntimeConfig {
    r.check_keys(t, &["worker_threads", "shutdown_grace"], &[]);
    let mut out = RuntimeConfig::default();
    if let Some((n, _)) = r.integer(t, "worker_threads", 0, 1024) {
        out.worker_threads = n as usize;
    }
    if let Some(d) = r.duration(t, "shutdown_grace") {
        out.shutdown_grace = d;
    }
    out
}

fn access_log(r: &mut Reader<'_>, t: &Table<'_, '_>) -> AccessLogConfig {
    r.check_keys(t, &["path", "format"], &[]);
    let mut out = AccessLogConfig::default();
    if let Some((path, span)) = r.string(t, "path") {
        out.target = match path {
            "stdout" => AccessLogTarget::Stdout,
            "off" => AccessLogTarget::Off,
            "" => {
                r.report(
                    span,
                    "access_log.path: expected \"stdout\", \"off\" or a file path",
                );
                AccessLogTarget::Off
            }
            file => AccessLogTarget::File(PathBuf::from(file)),
        };
    }
    if let Some((format, span)) = r.string(t, "format") {
        if format != "json" {
            r.report(
                span,
                format!("access_log.format: unknown format \"{format}\"; expected \"json\""),
            );
        }
    }
    out
}

fn listener(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<ListenerConfig> {
    r.check_keys(
        t,
        &[
            "name",
            "bind",
            "protocol",
            "tls",
            "service",
            "idle_timeout",
            "max_connections",
            "max_request_header_bytes",
            "max_request_body_bytes",
            "request_header_timeout",
            "merge_slashes",
            "trusted_proxies",
        ],
        &["database"],
    );
    let name = r.required_string(t, "name", "a unique listener name");
    let bind = if t.get("bind").is_some() {
        r.address(t, "bind")
    } else {
        r.missing(t, "bind", "an address such as \"0.0.0.0:8080\"");
        None
    };
    let protocol_name = r.string(t, "protocol");
    let protocol = match protocol_name.as_ref().map(|(p, _)| *p).unwrap_or("http") {
        "http" => Some(ListenerProtocol::Http),
        "https" => match r.table(t, "tls") {
            Some(tls) => listener_tls(r, &tls).map(ListenerProtocol::Https),
            None => {
                r.missing(
                    t,
                    "tls",
                    "protocol \"https\" needs tls = { cert = \"...\", key = \"...\" }",
                );
                None
            }
        },
        "tcp" => match r.string(t, "service") {
            Some((service, _)) => Some(ListenerProtocol::Tcp {
                service: service.to_string(),
            }),
            None => {
                r.missing(
                    t,
                    "service",
                    "protocol \"tcp\" needs the name of a service with protocol \"tcp\"",
                );
                None
            }
        },
        "postgres" => {
            if let Some((_, span)) = &protocol_name {
                r.report(
                    span.clone(),
                    format!(
                        "{}: protocol \"postgres\" is not supported yet in this version of sluicegate",
                        t.key_path("protocol")
                    ),
                );
            }
            None
        }
        other => {
            if let Some((_, span)) = &protocol_name {
                r.report(
                    span.clone(),
                    format!(
                        "{}: unknown protocol \"{other}\"; expected \"http\", \"https\", \"tcp\" or \"postgres\"",
                        t.key_path("protocol")
                    ),
                );
            }
            None
        }
    };
    let is = |p: &str| protocol_name.as_ref().map_or("http", |(n, _)| *n) == p;
    for (key, wanted) in [("tls", "https"), ("service", "tcp")] {
        if !is(wanted) {
            if let Some(v) = t.get(key) {
                r.report(
                    v.span(),
                    format!(
                        "{}: only used by protocol \"{wanted}\" listeners",
                        t.key_path(key)
                    ),
                );
            }
        }
    }
    let header_limit = r.size(t, "max_request_header_bytes");
    if let Some(n) = header_limit {
        if !(1024..=(16 << 20)).contains(&n) {
            let span = t.get("max_request_header_bytes").map(|v| v.span());
            r.report(
                span.unwrap_or(t.span.clone()),
                format!(
                    "{}: expected a size from 1KiB to 16MiB",
                    t.key_path("max_request_header_bytes")
                ),
            );
        }
    }
    let body_limit = r.size(t, "max_request_body_bytes").unwrap_or(0);
    let idle_timeout = positive_duration(r, t, "idle_timeout").unwrap_or(DEFAULT_IDLE_TIMEOUT);
    let max_connections = r
        .integer(t, "max_connections", 0, 10_000_000)
        .map_or(0, |(n, _)| n as usize);
    let request_header_timeout =
        positive_duration(r, t, "request_header_timeout").unwrap_or(DEFAULT_REQUEST_HEADER_TIMEOUT);
    let merge_slashes = r.bool(t, "merge_slashes").unwrap_or(true);
    let mut trusted_proxies = Vec::new();
    for (text, span) in r.strings(t, "trusted_proxies").unwrap_or_default() {
        match Cidr::parse(text) {
            Some(cidr) => trusted_proxies.push(cidr),
            None => r.report(
                span,
                format!(
                    "{}: \"{text}\" is not an address block; expected CIDR notation such as \"10.0.0.0/8\" or \"fd00::/8\", or a single address",
                    t.key_path("trusted_proxies")
                ),
            ),
        }
    }
    Some(ListenerConfig {
        name: name?.0.to_string(),
        bind: bind?,
        protocol: protocol?,
        idle_timeout,
        max_connections,
        max_request_header_bytes: header_limit
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MAX_REQUEST_HEADER_BYTES),
        max_request_body_bytes: body_limit,
        request_header_timeout,
        merge_slashes,
        trusted_proxies,
    })
}

/// A listener's `tls` table; the certificates are loaded now, so a bad file is a config error
/// with its place rather than a failed handshake later.
fn listener_tls(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<ListenerTls> {
    r.check_keys(t, &["cert", "key", "certificates"], &[]);
    let pair = |r: &mut Reader<'_>, t: &Table<'_, '_>| {
        let cert = r.required_string(t, "cert", "a PEM certificate chain file");
        let key = r.required_string(t, "key", "a PEM private key file");
        Some((PathBuf::from(cert?.0), PathBuf::from(key?.0)))
    };
    let default = pair(r, t);
    let mut extra = Vec::new();
    for c in r.tables(t, "certificates") {
        r.check_keys(&c, &["cert", "key"], &[]);
        if let Some(p) = pair(r, &c) {
            extra.push(p);
        }
    }
    let (cert, key) = default?;
    match crate::tls::settings::server_config_for(&cert, &key, &extra) {
        Ok(server) => Some(ListenerTls {
            cert,
            key,
            certificates: extra,
            server: Loaded(server),
        }),
        Err(e) => {
            r.report(t.span.clone(), format!("{}: {e}", t.path));
            None
        }
    }
}

/// A route as read, with the places its references came from, for the cross-checks.
struct RawRoute {
    config: RouteConfig,
    name_span: Range<usize>,
    service_span: Range<usize>,
    rate_limit_span: Option<Range<usize>>,
    auth_span: Option<Range<usize>>,
    scopes_span: Option<Range<usize>>,
    listener_spans: Vec<Range<usize>>,
    path: String,
}

fn route(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<RawRoute> {
    r.check_keys(
        t,
        &[
            "name",
            "listeners",
            "match",
            "service",
            "strip_prefix",
            "timeout",
            "preserve_host",
            "host_rewrite",
            "rate_limit",
            "auth",
            "require_scopes",
            "max_in_flight",
            "retry",
            "priority",
            "priority_from_header",
            "cache",
        ],
        &["mirror", "faults"],
    );
    let name = r.required_string(t, "name", "a unique route name");
    let service = r.required_string(t, "service", "the name of a [[services]] entry");
    let listeners = r.strings(t, "listeners").unwrap_or_default();
    let matcher = r
        .table(t, "match")
        .map(|m| route_match(r, &m))
        .unwrap_or_default();
    let strip_prefix = r.bool(t, "strip_prefix").unwrap_or(false);
    if strip_prefix && matcher.path_prefix.is_none() {
        let span = t
            .get("strip_prefix")
            .map(|v| v.span())
            .unwrap_or(t.span.clone());
        r.report(
            span,
            format!(
                "{}: strip_prefix needs match.path_prefix",
                t.key_path("strip_prefix")
            ),
        );
    }
    let timeout = match r.duration(t, "timeout") {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None => Some(DEFAULT_ROUTE_TIMEOUT),
    };
    let upstream_host = upstream_host(r, t);
    let rate_limit = r.string(t, "rate_limit");
    let auth = r.string(t, "auth");
    let scopes = r.strings(t, "require_scopes");
    for (scope, span) in scopes.iter().flatten() {
        // RFC 6749 §3.3: a scope is one or more visible ASCII characters other than `"` and
        // `\`; a space would split it in a token's `scope` claim, so it could never be held.
        let valid = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !valid {
            r.report(
                span.clone(),
                format!(
                    "{}: \"{scope}\" is not a scope (visible ASCII without spaces, quotes or backslashes)",
                    t.key_path("require_scopes")
                ),
            );
        }
    }
    let scopes_span = t
        .get("require_scopes")
        .filter(|_| scopes.as_ref().is_some_and(|s| !s.is_empty()))
        .map(|v| v.span());
    let (name, name_span) = name?;
    let (service, service_span) = service?;
    Some(RawRoute {
        config: RouteConfig {
            name: name.to_string(),
            listeners: listeners.iter().map(|(l, _)| l.to_string()).collect(),
            matcher,
            service: service.to_string(),
            strip_prefix,
            timeout,
            upstream_host,
            rate_limit: rate_limit.as_ref().map(|(n, _)| n.to_string()),
            max_in_flight: r
                .integer(t, "max_in_flight", 0, 10_000_000)
                .map_or(0, |(n, _)| n as usize),
            retry: r.table(t, "retry").and_then(|rt| retry(r, &rt)),
            cache: r
                .table(t, "cache")
                .map(|c| super::cache::route_cache(r, &c)),
            priority: super::shedding::priority(r, t),
            priority_from_header: r.bool(t, "priority_from_header").unwrap_or(false),
            auth: auth.as_ref().map(|(n, _)| n.to_string()),
            require_scopes: scopes
                .unwrap_or_default()
                .into_iter()
                .map(|(s, _)| s.to_string())
                .collect(),
        },
        name_span,
        service_span,
        rate_limit_span: rate_limit.map(|(_, span)| span),
        auth_span: auth.map(|(_, span)| span),
        scopes_span,
        listener_spans: listeners.into_iter().map(|(_, s)| s).collect(),
        path: t.path.clone(),
    })
}

/// A route's `preserve_host` and `host_rewrite`.
fn upstream_host(r: &mut Reader<'_>, t: &Table<'_, '_>) -> UpstreamHost {
    let preserve = r.bool(t, "preserve_host");
    let Some((name, span)) = r.string(t, "host_rewrite") else {
        return match preserve {
            Some(false) => UpstreamHost::Endpoint,
            _ => UpstreamHost::Preserve,
        };
    };
    if preserve == Some(true) {
        r.report(
            span.clone(),
            format!(
                "{}: a route cannot both preserve the client's Host and rewrite it; remove one of preserve_host and host_rewrite",
                t.key_path("host_rewrite")
            ),
        );
    }
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b':' | b'[' | b']'));
    match HeaderValue::from_str(name) {
        Ok(value) if valid => UpstreamHost::Fixed(value),
        _ => {
            r.report(
                span,
                format!(
                    "{}: invalid host \"{name}\"; expected a name such as \"api.internal\" or \"api.internal:8443\"",
                    t.key_path("host_rewrite")
                ),
            );
            UpstreamHost::Preserve
        }
    }
}

/// Whether a configured path is in the form request paths are normalised to before they are
/// matched (see `proxy/http/wire/target.rs`): no `.` or `..` segments, no empty segment, and
/// percent-encodings only of reserved characters, in upper case. A route written otherwise
/// could never match.
fn normal_route_path(path: &str) -> bool {
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let segments_ok = segments
        .iter()
        .enumerate()
        .all(|(i, s)| *s != "." && *s != ".." && (!s.is_empty() || i == last));
    let upper_hex = |c: u8| c.is_ascii_digit() || (b'A'..=b'F').contains(&c);
    let b = path.as_bytes();
    let encodings_ok = b.iter().enumerate().all(|(i, &c)| {
        if c != b'%' {
            return true;
        }
        match (b.get(i + 1), b.get(i + 2)) {
            (Some(&hi), Some(&lo)) if upper_hex(hi) && upper_hex(lo) => {
                let v = u8::from_str_radix(&path[i + 1..i + 3], 16).unwrap_or(0);
                !(v.is_ascii_alphanumeric() || matches!(v, b'-' | b'.' | b'_' | b'~'))
            }
            _ => false,
        }
    });
    segments_ok && encodings_ok
}

fn route_match(r: &mut Reader<'_>, t: &Table<'_, '_>) -> RouteMatch {
    r.check_keys(
        t,
        &["host", "path", "path_prefix", "methods", "headers"],
        &[],
    );
    let mut m = RouteMatch::default();
    if let Some((host, span)) = r.string(t, "host") {
        let valid = !host.is_empty()
            && host
                .trim_start_matches("*.")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if valid {
            m.host = Some(host.to_ascii_lowercase());
        } else {
            r.report(
                span,
                format!(
                    "{}: invalid host \"{host}\"; expected a name such as \"api.example.com\" or \"*.example.com\" (no port)",
                    t.key_path("host")
                ),
            );
        }
    }
    for key in ["path", "path_prefix"] {
        if let Some((path, span)) = r.string(t, key) {
            if !normal_route_path(path) && path.starts_with('/') {
                r.report(
                    span,
                    format!(
                        "{}: \"{path}\" is not a normalised path (no \".\", \"..\" or empty segments; percent-encode only reserved characters, in upper case); request paths are normalised before they are matched, so it could never match",
                        t.key_path(key)
                    ),
                );
            } else if path.starts_with('/') && !path.contains(['?', '#', ' ']) {
                let value = Some(path.to_string());
                if key == "path" {
                    m.path = value;
                } else {
                    m.path_prefix = value;
                }
            } else {
                r.report(
                    span,
                    format!(
                        "{}: \"{path}\" must start with \"/\" and hold no query or fragment",
                        t.key_path(key)
                    ),
                );
            }
        }
    }
    if m.path.is_some() && m.path_prefix.is_some() {
        r.report(
            t.span.clone(),
            format!(
                "{}: set either path (exact) or path_prefix, not both",
                t.path
            ),
        );
    }
    if let Some(methods) = r.strings(t, "methods") {
        for (method, span) in methods {
            let valid = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
            match Method::from_bytes(method.as_bytes()) {
                Ok(parsed) if valid => m.methods.push(parsed),
                _ => r.report(
                    span,
                    format!(
                        "{}: invalid method \"{method}\"; expected an upper-case HTTP method such as \"GET\"",
                        t.key_path("methods")
                    ),
                ),
            }
        }
    }
    m.headers = r.header_table(t, "headers");
    m
}

fn service(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<ServiceConfig> {
    r.check_keys(
        t,
        &[
            "name",
            "algorithm",
            "hash_on",
            "endpoints",
            "connect_timeout",
            "max_connections_per_endpoint",
            "protocol",
            "maglev_table_size",
            "health_check",
            "outlier_detection",
            "circuit_breaker",
            "sticky_sessions",
            "tls",
            "send_proxy_protocol",
            "discovery",
            "initial_health",
        ],
        &[],
    );
    let name = r.required_string(t, "name", "a unique service name");
    let algorithm = match r.string(t, "algorithm") {
        None => Some(Algorithm::RoundRobin),
        Some((text, span)) => {
            let found = Algorithm::from_name(text);
            if found.is_none() {
                let names: Vec<&str> = Algorithm::ALL.iter().map(|(n, _)| *n).collect();
                let hint = suggest(text, &names)
                    .map(|s| format!(" (did you mean \"{s}\"?)"))
                    .unwrap_or_default();
                r.report(
                    span,
                    format!(
                        "{}: unknown algorithm \"{text}\"{hint}; expected one of: {}",
                        t.key_path("algorithm"),
                        names.join(", ")
                    ),
                );
            }
            found
        }
    };
    let hash_on = match r.string(t, "hash_on") {
        None => None,
        Some((text, span)) => match HashOn::parse(text) {
            Ok(h) => Some(h),
            Err(e) => {
                r.report(span, format!("{}: {e}", t.key_path("hash_on")));
                None
            }
        },
    };
    if let Some(a) = algorithm {
        if a.hashes() && t.get("hash_on").is_none() {
            r.missing(
                t,
                "hash_on",
                &format!(
                    "algorithm \"{}\" needs \"client_ip\", \"header:NAME\", \"cookie:NAME\", \"path\" or \"query:NAME\"",
                    a.name()
                ),
            );
        }
        if !a.hashes() {
            if let Some(v) = t.get("hash_on") {
                r.report(
                    v.span(),
                    format!(
                        "{}: only used by hash, ring_hash and maglev, not by \"{}\"",
                        t.key_path("hash_on"),
                        a.name()
                    ),
                );
            }
        }
    }
    let discovery = r.table(t, "discovery").and_then(|d| discovery(r, &d));
    let endpoints = endpoints(r, t, t.get("discovery").is_some());
    let initial_health = match r.string(t, "initial_health") {
        Some(("healthy", _)) => InitialHealth::Healthy,
        None | Some(("unhealthy", _)) => InitialHealth::Unhealthy,
        Some((other, span)) => {
            r.report(
                span,
                format!(
                    "{}: unknown value \"{other}\"; expected \"healthy\" or \"unhealthy\"",
                    t.key_path("initial_health")
                ),
            );
            InitialHealth::Unhealthy
        }
    };
    let connect_timeout = r
        .duration(t, "connect_timeout")
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    if let Some((n, span)) = r.integer(t, "max_connections_per_endpoint", 0, i64::from(u32::MAX)) {
        if n != 0 {
            r.report(
                span,
                format!(
                    "{}: limits other than 0 (unlimited) are not supported yet in this version of sluicegate",
                    t.key_path("max_connections_per_endpoint")
                ),
            );
        }
    }
    let protocol = match r.string(t, "protocol") {
        None | Some(("http1", _)) => UpstreamProtocol::Http1,
        Some(("http2", _)) => UpstreamProtocol::Http2,
        Some(("tcp", _)) => UpstreamProtocol::Tcp,
        Some(("https", _)) => {
            let table = r.table(t, "tls");
            match upstream_tls(r, table.as_ref(), t) {
                Some(tls) => UpstreamProtocol::Https(tls),
                // Reported; a stand-in for the cross-checks, never served.
                None => UpstreamProtocol::Http1,
            }
        }
        Some((other, span)) => {
            r.report(
                span,
                format!(
                    "{}: unknown protocol \"{other}\"; expected \"http1\", \"http2\", \"https\" or \"tcp\"",
                    t.key_path("protocol")
                ),
            );
            UpstreamProtocol::Http1
        }
    };
    if !matches!(protocol, UpstreamProtocol::Https(_)) {
        if let Some(v) = t.get("tls") {
            r.report(
                v.span(),
                format!(
                    "{}: only used by protocol \"https\" services",
                    t.key_path("tls")
                ),
            );
        }
    }
    let send_proxy_protocol = match r.string(t, "send_proxy_protocol") {
        None => None,
        Some((text, span)) => {
            let parsed = ProxyProtocol::parse(text);
            if parsed.is_none() {
                r.report(
                    span.clone(),
                    format!(
                        "{}: expected \"v1\" or \"v2\"",
                        t.key_path("send_proxy_protocol")
                    ),
                );
            } else if protocol != UpstreamProtocol::Tcp {
                r.report(
                    span,
                    format!(
                        "{}: only used by protocol \"tcp\" services",
                        t.key_path("send_proxy_protocol")
                    ),
                );
            }
            parsed
        }
    };
    let mut maglev_table_size = MAGLEV_DEFAULT_TABLE_SIZE;
    if let Some((n, span)) = r.integer(t, "maglev_table_size", 2, 5_000_011) {
        let n = n as usize;
        if !is_prime(n) {
            r.report(
                span,
                format!("{}: {n} is not prime", t.key_path("maglev_table_size")),
            );
        } else if n <= endpoints.len() * 100 {
            r.report(
                span,
                format!(
                    "{}: must be more than 100 times the endpoint count ({}) for an even spread",
                    t.key_path("maglev_table_size"),
                    endpoints.len()
                ),
            );
        } else {
            maglev_table_size = n;
        }
    }
    let health_check = r.table(t, "health_check").map(|h| health_check(r, &h));
    let outlier_detection = r
        .table(t, "outlier_detection")
        .map(|o| outlier_detection(r, &o));
    let circuit_breaker = r
        .table(t, "circuit_breaker")
        .map(|b| circuit_breaker(r, &b));
    let sticky_sessions = r
        .table(t, "sticky_sessions")
        .and_then(|s| sticky_sessions(r, &s));
    Some(ServiceConfig {
        name: name?.0.to_string(),
        // An unknown algorithm was reported above; keep the service for the cross-checks
        // (duplicate names, routes naming it) with a stand-in that is never served.
        algorithm: algorithm.unwrap_or(Algorithm::RoundRobin),
        hash_on,
        endpoints,
        connect_timeout,
        maglev_table_size,
        health_check,
        outlier_detection,
        circuit_breaker,
        sticky_sessions,
        protocol,
        send_proxy_protocol,
        discovery,
        initial_health,
    })
}

/// A service's `discovery = { type = … }`.
fn discovery(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<DiscoveryConfig> {
    let (kind, span) = r.required_string(t, "type", "\"registry\", \"dns\" or \"file\"")?;
    match kind {
        "registry" => {
            r.check_keys(t, &["type", "default_ttl"], &[]);
            let default_ttl = r.duration(t, "default_ttl").unwrap_or(DEFAULT_REGISTRY_TTL);
            if default_ttl > std::time::Duration::from_secs(86_400) {
                let span = t.get("default_ttl").map_or(t.span.clone(), |v| v.span());
                r.report(
                    span,
                    format!("{}: must be at most 1d", t.key_path("default_ttl")),
                );
            }
            if default_ttl.is_zero() {
                let span = t.get("default_ttl").map_or(t.span.clone(), |v| v.span());
                r.report(
                    span,
                    format!("{}: must be more than 0", t.key_path("default_ttl")),
                );
            }
            Some(DiscoveryConfig::Registry { default_ttl })
        }
        "file" => {
            r.check_keys(t, &["type", "path"], &[]);
            let (path, span) = r.required_string(t, "path", "the file listing the endpoints")?;
            let path = std::path::PathBuf::from(path);
            match crate::discovery::file::read(&path) {
                Ok(endpoints) => Some(DiscoveryConfig::File { path, endpoints }),
                Err(why) => {
                    r.report(span, format!("{}: {why}", t.key_path("path")));
                    None
                }
            }
        }
        "dns" => {
            r.check_keys(
                t,
                &["type", "name", "port", "refresh", "record", "resolver"],
                &[],
            );
            let name = r.required_string(t, "name", "a DNS name such as \"users.internal\"");
            let record = match r.string(t, "record") {
                None | Some(("a", _)) => Some(DnsRecord::A),
                Some(("srv", _)) => Some(DnsRecord::Srv),
                Some((other, span)) => {
                    r.report(
                        span,
                        format!(
                            "{}: unknown record \"{other}\"; expected \"a\" (A and AAAA) or \"srv\"",
                            t.key_path("record")
                        ),
                    );
                    None
                }
            };
            let port = r
                .integer(t, "port", 1, i64::from(u16::MAX))
                .map(|(p, _)| p as u16);
            if record == Some(DnsRecord::A) && port.is_none() && t.get("port").is_none() {
                r.missing(t, "port", "the port of every address the name resolves to");
            }
            let refresh = r.duration(t, "refresh").unwrap_or(DEFAULT_DNS_REFRESH);
            if refresh < std::time::Duration::from_secs(1) {
                let span = t.get("refresh").map_or(t.span.clone(), |v| v.span());
                r.report(
                    span,
                    format!("{}: must be at least 1s", t.key_path("refresh")),
                );
            }
            let resolver = if t.get("resolver").is_some() {
                Some(r.address(t, "resolver")?)
            } else {
                None
            };
            Some(DiscoveryConfig::Dns {
                name: name?.0.to_string(),
                record: record?,
                port,
                refresh,
                resolver,
            })
        }
        other => {
            r.report(
                span,
                format!(
                    "{}: unknown discovery \"{other}\"; expected \"registry\", \"dns\" or \"file\"",
                    t.key_path("type")
                ),
            );
            None
        }
    }
}

/// A service's TLS settings (its `tls` table, or the defaults when there is none), with the
/// client config loaded now so missing roots are a config error with a place.
fn upstream_tls(
    r: &mut Reader<'_>,
    t: Option<&Table<'_, '_>>,
    service: &Table<'_, '_>,
) -> Option<UpstreamTls> {
    let (mut ca, mut server_name, mut insecure) = (None, None, false);
    if let Some(t) = t {
        r.check_keys(t, &["ca", "server_name", "insecure_skip_verify"], &[]);
        ca = r.string(t, "ca").map(|(p, _)| PathBuf::from(p));
        insecure = r.bool(t, "insecure_skip_verify").unwrap_or(false);
        if let Some((name, span)) = r.string(t, "server_name") {
            match rustls::pki_types::ServerName::try_from(name.to_string()) {
                Ok(n) => server_name = Some(n),
                Err(_) => r.report(
                    span,
                    format!(
                        "{}: \"{name}\" is not a DNS name or IP address",
                        t.key_path("server_name")
                    ),
                ),
            }
        }
    }
    let place = t.unwrap_or(service);
    match crate::tls::settings::client_config_for(ca.as_deref(), insecure, server_name.as_ref()) {
        Ok(client) => Some(UpstreamTls {
            ca,
            server_name,
            insecure_skip_verify: insecure,
            client: Loaded(client.config),
            identity: client.identity,
        }),
        Err(e) => {
            r.report(place.span.clone(), format!("{}: {e}", place.path));
            None
        }
    }
}

fn health_check(r: &mut Reader<'_>, t: &Table<'_, '_>) -> HealthCheckConfig {
    r.check_keys(
        t,
        &[
            "path",
            "interval",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
            "expected_status",
        ],
        &[],
    );
    let expected = match r.string(t, "expected_status") {
        None => StatusRanges::default(),
        Some((text, span)) => StatusRanges::parse(text).unwrap_or_else(|e| {
            r.report(span, format!("{}: {e}", t.key_path("expected_status")));
            StatusRanges::default()
        }),
    };
    let kind = match r.string(t, "path") {
        // Without a path the check is a TCP connect.
        None => CheckKind::Tcp,
        Some((path, span)) => {
            if !path.starts_with('/') || path.contains(' ') {
                r.report(
                    span,
                    format!(
                        "{}: \"{path}\" must start with \"/\" and hold no spaces",
                        t.key_path("path")
                    ),
                );
            }
            CheckKind::Http {
                path: path.to_string(),
                expected,
            }
        }
    };
    if matches!(kind, CheckKind::Tcp) {
        if let Some(v) = t.get("expected_status") {
            r.report(
                v.span(),
                format!(
                    "{}: only used by HTTP checks; set path too",
                    t.key_path("expected_status")
                ),
            );
        }
    }
    let interval = positive_duration(r, t, "interval").unwrap_or(Duration::from_secs(5));
    let timeout = positive_duration(r, t, "timeout").unwrap_or(Duration::from_secs(1));
    if timeout > interval {
        let span = t.get("timeout").map(|v| v.span()).unwrap_or(t.span.clone());
        r.report(
            span,
            format!(
                "{}: must not be longer than interval ({} ms)",
                t.key_path("timeout"),
                interval.as_millis()
            ),
        );
    }
    let threshold = |r: &mut Reader<'_>, key: &str, default: u32| {
        r.integer(t, key, 1, 1000)
            .map(|(n, _)| n as u32)
            .unwrap_or(default)
    };
    HealthCheckConfig {
        kind,
        interval,
        timeout,
        healthy_threshold: threshold(r, "healthy_threshold", 2),
        unhealthy_threshold: threshold(r, "unhealthy_threshold", 3),
    }
}

/// A duration that must be more than zero.
fn positive_duration(r: &mut Reader<'_>, t: &Table<'_, '_>, key: &str) -> Option<Duration> {
    let d = r.duration(t, key)?;
    if d.is_zero() {
        let span = t.get(key).map(|v| v.span()).unwrap_or(t.span.clone());
        r.report(span, format!("{}: must be more than zero", t.key_path(key)));
        return None;
    }
    Some(d)
}

fn outlier_detection(r: &mut Reader<'_>, t: &Table<'_, '_>) -> OutlierConfig {
    r.check_keys(
        t,
        &[
            "consecutive_failures",
            "ejection_time",
            "max_ejection_percent",
        ],
        &[],
    );
    OutlierConfig {
        consecutive_failures: r
            .integer(t, "consecutive_failures", 1, 10_000)
            .map(|(n, _)| n as u32)
            .unwrap_or(5),
        ejection_time: positive_duration(r, t, "ejection_time").unwrap_or(Duration::from_secs(30)),
        max_ejection_percent: r
            .integer(t, "max_ejection_percent", 0, 100)
            .map(|(n, _)| n as u8)
            .unwrap_or(50),
    }
}

/// A route's `retry = { ... }`.
fn retry(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<RetryConfig> {
    r.check_keys(
        t,
        &[
            "attempts",
            "on",
            "retriable_status",
            "budget_percent",
            "budget_min_per_second",
            "backoff",
            "per_try_timeout",
            "non_idempotent",
            "replay_buffer",
        ],
        &[],
    );
    let attempts = r
        .integer(t, "attempts", 1, i64::from(MAX_RETRY_ATTEMPTS))
        .map_or(2, |(n, _)| n as u32);
    let mut on = RetryOn::default();
    match r.strings(t, "on") {
        None => {
            on.connect_failure = true;
            on.reset = true;
            on.status_503 = true;
        }
        Some(list) => {
            for (name, span) in list {
                match name {
                    "connect_failure" => on.connect_failure = true,
                    "reset" => on.reset = true,
                    "5xx" => on.status_5xx = true,
                    "503" => on.status_503 = true,
                    "timeout" => on.timeout = true,
                    other => r.report(
                        span,
                        format!(
                            "{}: unknown condition \"{other}\"; expected \"connect_failure\", \"reset\", \"5xx\", \"503\" or \"timeout\"",
                            t.key_path("on")
                        ),
                    ),
                }
            }
        }
    }
    let retriable_status = r.statuses(t, "retriable_status").unwrap_or_default();
    let budget_percent = r
        .number(t, "budget_percent", 0.0, true, 100.0)
        .unwrap_or(DEFAULT_RETRY_BUDGET_PERCENT);
    let budget_min_per_second = r
        .integer(t, "budget_min_per_second", 0, 1_000_000)
        .map_or(DEFAULT_RETRY_BUDGET_MIN_PER_SECOND, |(n, _)| n as u32);
    let backoff = r.duration(t, "backoff").unwrap_or(DEFAULT_RETRY_BACKOFF);
    let per_try_timeout = positive_duration(r, t, "per_try_timeout");
    let non_idempotent = r.bool(t, "non_idempotent").unwrap_or(false);
    let replay_buffer = r.size(t, "replay_buffer").unwrap_or(DEFAULT_REPLAY_BUFFER);
    if replay_buffer > 16 * 1024 * 1024 {
        let span = t.get("replay_buffer").map_or(t.span.clone(), |v| v.span());
        r.report(
            span,
            format!("{}: at most 16MiB", t.key_path("replay_buffer")),
        );
    }
    Some(RetryConfig {
        attempts,
        on,
        retriable_status,
        budget_percent,
        budget_min_per_second,
        backoff,
        per_try_timeout,
        non_idempotent,
        replay_buffer,
    })
}

/// `[services.circuit_breaker]`.
fn circuit_breaker(r: &mut Reader<'_>, t: &Table<'_, '_>) -> BreakerConfig {
    r.check_keys(
        t,
        &[
            "failure_rate",
            "minimum_requests",
            "window",
            "open_for",
            "half_open_requests",
        ],
        &[],
    );
    let defaults = BreakerConfig::default();
    BreakerConfig {
        failure_rate: r
            .number(t, "failure_rate", 0.0, false, 1.0)
            .unwrap_or(defaults.failure_rate),
        minimum_requests: r
            .integer(t, "minimum_requests", 1, 1_000_000)
            .map_or(defaults.minimum_requests, |(n, _)| n as u32),
        window: positive_duration(r, t, "window").unwrap_or(defaults.window),
        open_for: positive_duration(r, t, "open_for").unwrap_or(defaults.open_for),
        half_open_requests: r
            .integer(t, "half_open_requests", 1, 10_000)
            .map_or(defaults.half_open_requests, |(n, _)| n as u32),
    }
}

fn sticky_sessions(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<StickyConfig> {
    r.check_keys(t, &["cookie", "ttl", "secret"], &[]);
    let cookie = match r.string(t, "cookie") {
        None => "sg_affinity".to_string(),
        Some((name, span)) => {
            // RFC 6265 cookie-name is an HTTP token.
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid {
                r.report(
                    span,
                    format!(
                        "{}: \"{name}\" is not a valid cookie name (letters, digits and !#$%&'*+-.^_`|~)",
                        t.key_path("cookie")
                    ),
                );
                return None;
            }
            name.to_string()
        }
    };
    let ttl = positive_duration(r, t, "ttl").unwrap_or(Duration::from_secs(3600));
    let secret = match r.string(t, "secret") {
        Some((s, span)) if s.len() < 16 => {
            r.report(
                span,
                format!("{}: use at least 16 characters", t.key_path("secret")),
            );
            None
        }
        other => other.map(|(s, _)| s.to_string()),
    };
    Some(StickyConfig {
        cookie,
        ttl,
        secret,
    })
}

/// `endpoints`: required, and not empty, unless the service discovers endpoints.
fn endpoints(r: &mut Reader<'_>, t: &Table<'_, '_>, discovers: bool) -> Vec<EndpointConfig> {
    if t.get("endpoints").is_none() {
        if discovers {
            return Vec::new();
        }
        r.missing(
            t,
            "endpoints",
            "an array such as [{ address = \"127.0.0.1:9001\" }]",
        );
        return Vec::new();
    }
    let mut out: Vec<EndpointConfig> = Vec::new();
    let tables = r.tables(t, "endpoints");
    if tables.is_empty() && !discovers {
        if let Some(v) = t.get("endpoints") {
            r.report(
                v.span(),
                format!("{}: needs at least one endpoint", t.key_path("endpoints")),
            );
        }
    }
    for e in tables {
        r.check_keys(&e, &["address", "weight"], &[]);
        let address = if e.get("address").is_some() {
            r.address(&e, "address")
        } else {
            r.missing(&e, "address", "an address such as \"127.0.0.1:9001\"");
            None
        };
        let weight = r
            .integer(&e, "weight", 1, i64::from(MAX_WEIGHT))
            .map(|(w, _)| w as u32)
            .unwrap_or(1);
        let Some(address) = address else { continue };
        if out.iter().any(|o| o.address == address) {
            let span = e.get("address").map(|v| v.span()).unwrap_or(e.span.clone());
            r.report(
                span,
                format!(
                    "{}: duplicate endpoint {address} in this service",
                    e.key_path("address")
                ),
            );
            continue;
        }
        out.push(EndpointConfig {
            address,
            weight,
            source: EndpointSource::Static,
        });
    }
    out
}

fn cross_check(
    r: &mut Reader<'_>,
    listeners: &[(ListenerConfig, Table<'_, '_>)],
    services: &[(ServiceConfig, Table<'_, '_>)],
    routes: &[RawRoute],
) {
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for (l, t) in listeners {
        if seen.insert(&l.name, ()).is_some() {
            let span = t.get("name").map(|v| v.span()).unwrap_or(t.span.clone());
            r.report(
                span,
                format!(
                    "{}: duplicate listener name \"{}\"",
                    t.key_path("name"),
                    l.name
                ),
            );
        }
    }
    let mut binds: HashMap<SocketAddr, &str> = HashMap::new();
    // Port 0 asks the kernel for a free port: two such listeners never collide.
    for (l, t) in listeners.iter().filter(|(l, _)| l.bind.port() != 0) {
        if let Some(other) = binds.insert(l.bind, &l.name) {
            let span = t.get("bind").map(|v| v.span()).unwrap_or(t.span.clone());
            r.report(
                span,
                format!(
                    "{}: {} is already bound by listener \"{other}\"",
                    t.key_path("bind"),
                    l.bind
                ),
            );
        }
    }
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for (s, t) in services {
        if seen.insert(&s.name, ()).is_some() {
            let span = t.get("name").map(|v| v.span()).unwrap_or(t.span.clone());
            r.report(
                span,
                format!(
                    "{}: duplicate service name \"{}\"",
                    t.key_path("name"),
                    s.name
                ),
            );
        }
    }
    let service_names: Vec<&str> = services.iter().map(|(s, _)| s.name.as_str()).collect();
    for (l, t) in listeners {
        let ListenerProtocol::Tcp { service } = &l.protocol else {
            continue;
        };
        let span = t.get("service").map(|v| v.span()).unwrap_or(t.span.clone());
        match services.iter().find(|(s, _)| s.name == *service) {
            None => r.report(
                span,
                format!("{}: no service named \"{service}\"", t.key_path("service")),
            ),
            Some((s, _)) if s.protocol != UpstreamProtocol::Tcp => r.report(
                span,
                format!(
                    "{}: service \"{service}\" must have protocol = \"tcp\" to serve a tcp listener",
                    t.key_path("service")
                ),
            ),
            Some(_) => {}
        }
    }
    let listener_names: Vec<&str> = listeners.iter().map(|(l, _)| l.name.as_str()).collect();
    let mut seen: HashMap<&str, ()> = HashMap::new();
    for route in routes {
        let c = &route.config;
        if seen.insert(&c.name, ()).is_some() {
            r.report(
                route.name_span.clone(),
                format!("{}.name: duplicate route name \"{}\"", route.path, c.name),
            );
        }
        if !service_names.contains(&c.service.as_str()) {
            let hint = suggest(&c.service, &service_names)
                .map(|s| format!(" (did you mean \"{s}\"?)"))
                .unwrap_or_default();
            r.report(
                route.service_span.clone(),
                format!(
                    "{}.service: no service named \"{}\"{hint}",
                    route.path, c.service
                ),
            );
        }
        if let Some((svc, _)) = services.iter().find(|(s, _)| s.name == c.service) {
            if svc.protocol == UpstreamProtocol::Tcp {
                r.report(
                    route.service_span.clone(),
                    format!(
                        "{}.service: \"{}\" is a tcp service; routes need an HTTP service (http1, http2 or https)",
                        route.path, c.service
                    ),
                );
            }
        }
        for (l, span) in c.listeners.iter().zip(&route.listener_spans) {
            if listeners
                .iter()
                .any(|(lc, _)| lc.name == *l && matches!(lc.protocol, ListenerProtocol::Tcp { .. }))
            {
                r.report(
                    span.clone(),
                    format!("{}.listeners: \"{l}\" is a tcp listener; routes serve http and https listeners", route.path),
                );
                continue;
            }
            if !listener_names.contains(&l.as_str()) {
                r.report(
                    span.clone(),
                    format!("{}.listeners: no listener named \"{l}\"", route.path),
                );
            }
        }
    }
}

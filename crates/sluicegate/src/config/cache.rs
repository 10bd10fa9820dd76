//! `[cache]` and a route's `cache`, as read from the file (SPEC 2.4).

use http::HeaderName;

use super::model::{
    CacheConfig, CacheEviction, CacheKey, CacheKeyQuery, RouteCacheConfig, DEFAULT_CACHE_STATUSES,
};
use super::raw::{Reader, Table};

/// `[cache]`.
/// `has_redis`: whether the file has a `[redis]` table, which `store = "memory+redis"` needs.
pub fn cache(r: &mut Reader<'_>, t: &Table<'_, '_>, has_redis: bool) -> CacheConfig {
    r.check_keys(
        t,
        &["max_bytes", "max_object_bytes", "eviction", "store"],
        &[],
    );
    let defaults = CacheConfig::default();
    let mut shared = false;
    if let Some((store, span)) = r.string(t, "store") {
        match store {
            "memory" => {}
            "memory+redis" if has_redis => shared = true,
            "memory+redis" => r.report(
                span,
                format!(
                    "{}: \"memory+redis\" needs a [redis] table with the server's url",
                    t.key_path("store")
                ),
            ),
            other => r.report(
                span,
                format!(
                    "{}: unknown store \"{other}\"; expected \"memory\" or \"memory+redis\"",
                    t.key_path("store")
                ),
            ),
        }
    }
    let eviction = match r.string(t, "eviction") {
        None => defaults.eviction,
        Some(("lru", _)) => CacheEviction::Lru,
        Some(("tinylfu" | "lfu", _)) => CacheEviction::TinyLfu,
        Some((other, span)) => {
            r.report(
                span,
                format!(
                    "{}: unknown eviction \"{other}\"; expected \"lru\", \"lfu\" or \"tinylfu\"",
                    t.key_path("eviction")
                ),
            );
            defaults.eviction
        }
    };
    let mut size = |key: &str, default: u64| match r.size(t, key) {
        Some(0) => {
            let span = t.get(key).map_or(t.span.clone(), |v| v.span());
            r.report(span, format!("{}: must be more than 0", t.key_path(key)));
            default
        }
        Some(n) => n,
        None => default,
    };
    let max_bytes = size("max_bytes", defaults.max_bytes);
    let max_object_bytes = size("max_object_bytes", defaults.max_object_bytes);
    // One entry's weight is counted in 32 bits.
    let max_object_bytes = max_object_bytes.min(u64::from(u32::MAX) / 2);
    CacheConfig {
        max_bytes,
        max_object_bytes: max_object_bytes.min(max_bytes),
        eviction,
        shared,
    }
}

/// A route's `cache = { ttl, statuses, vary, store_set_cookie, key }`.
pub fn route_cache(r: &mut Reader<'_>, t: &Table<'_, '_>) -> RouteCacheConfig {
    r.check_keys(
        t,
        &["ttl", "statuses", "vary", "store_set_cookie", "key"],
        &[],
    );
    let ttl = r.duration(t, "ttl").filter(|d| !d.is_zero());
    let statuses = r
        .statuses(t, "statuses")
        .unwrap_or_else(|| DEFAULT_CACHE_STATUSES.to_vec());
    // A 1xx is no response to store, a 206 is part of one, and a 304 answers one client's
    // condition: stored, it would reach clients that asked for the whole body.
    if let Some(bad) = statuses
        .iter()
        .find(|s| **s < 200 || **s == 206 || **s == 304)
    {
        let span = t.get("statuses").map_or(t.span.clone(), |v| v.span());
        r.report(
            span,
            format!(
                "{}: {bad} cannot be stored (1xx, 206 and 304 never are)",
                t.key_path("statuses")
            ),
        );
    }
    let mut vary = Vec::new();
    for (name, span) in r.strings(t, "vary").unwrap_or_default() {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(name) => vary.push(name),
            Err(_) => r.report(
                span,
                format!("{}: \"{name}\" is not a header name", t.key_path("vary")),
            ),
        }
    }
    RouteCacheConfig {
        ttl,
        statuses,
        vary,
        store_set_cookie: r.bool(t, "store_set_cookie").unwrap_or(false),
        key: cache_key(r, t),
    }
}

/// `key = ["host", "path", "query:page", "header:x-tenant"]`: `path` is required (without it,
/// every path of the route would be one response); `query` and `query:NAME` exclude each other.
fn cache_key(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<CacheKey> {
    let parts = r.strings(t, "key")?;
    let path = t.key_path("key");
    let span = t.get("key").map_or(t.span.clone(), |v| v.span());
    let mut key = CacheKey {
        host: false,
        query: CacheKeyQuery::Ignored,
        headers: Vec::new(),
    };
    let mut has_path = false;
    for (part, span) in parts {
        match (part, part.split_once(':')) {
            ("host", _) => key.host = true,
            ("path", _) => has_path = true,
            ("query", _) => match key.query {
                CacheKeyQuery::Only(_) => r.report(
                    span,
                    format!("{path}: \"query\" takes the whole query; drop the \"query:NAME\" parts or it"),
                ),
                _ => key.query = CacheKeyQuery::Whole,
            },
            (_, Some(("query", name))) if !name.is_empty() => match &mut key.query {
                CacheKeyQuery::Whole => r.report(
                    span,
                    format!("{path}: \"query\" takes the whole query; drop the \"query:NAME\" parts or it"),
                ),
                CacheKeyQuery::Only(names) => names.push(name.to_string()),
                CacheKeyQuery::Ignored => key.query = CacheKeyQuery::Only(vec![name.to_string()]),
            },
            (_, Some(("header", name))) => match HeaderName::from_bytes(name.as_bytes()) {
                Ok(name) => key.headers.push(name),
                Err(_) => r.report(span, format!("{path}: \"{name}\" is not a header name")),
            },
            _ => r.report(
                span,
                format!(
                    "{path}: unknown part \"{part}\"; expected \"host\", \"path\", \"query\", \"query:NAME\" or \"header:NAME\""
                ),
            ),
        }
    }
    if !has_path {
        r.report(
            span,
            format!("{path}: must include \"path\" (without it every path of the route would share one response)"),
        );
    }
    Some(key)
}

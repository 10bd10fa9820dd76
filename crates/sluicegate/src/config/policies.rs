//! `[redis]` and `[rate_limits.NAME]`: the store shared across instances, and the rate-limit
//! policies that routes name with `rate_limit = "NAME"`.

use std::ops::Range;

use http::HeaderName;

use super::model::{
    LimitKey, LimitStore, OnStoreError, RateLimitConfig, RedisConfig, DEFAULT_RATE_LIMIT_MAX_KEYS,
    DEFAULT_REDIS_TIMEOUT,
};
use super::raw::{Reader, Table};

/// The largest bucket and the fastest refill a policy may ask for: far above any real limit,
/// low enough that the bucket arithmetic (nanoseconds in 64 bits) cannot overflow.
const MAX_CAPACITY: i64 = 1_000_000_000;
const MAX_REFILL_PER_SECOND: f64 = 1_000_000_000.0;
/// The longest an empty bucket may take to fill: ten years.
const MAX_FILL_SECONDS: f64 = 10.0 * 365.0 * 86_400.0;
/// Redis buckets count in microseconds.
const MAX_REDIS_REFILL_PER_SECOND: f64 = 1_000_000.0;

/// `[redis]`.
pub fn redis(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Option<RedisConfig> {
    r.check_keys(t, &["url", "urls", "cluster", "timeout", "ca"], &[]);
    let cluster = r.bool(t, "cluster").unwrap_or(false);
    let timeout = match r.duration(t, "timeout") {
        Some(d) if d.is_zero() => {
            let span = t.get("timeout").map(|v| v.span()).unwrap_or(t.span.clone());
            r.report(
                span,
                format!("{}: must be more than zero", t.key_path("timeout")),
            );
            DEFAULT_REDIS_TIMEOUT
        }
        Some(d) => d,
        None => DEFAULT_REDIS_TIMEOUT,
    };
    let mut urls = Vec::new();
    if let Some((url, span)) = r.string(t, "url") {
        urls.push((url, span));
    }
    if let Some(list) = r.strings(t, "urls") {
        urls.extend(list);
    }
    if t.get("url").is_some() && t.get("urls").is_some() {
        r.report(
            t.span.clone(),
            format!(
                "{}: give either url or urls (the seed nodes of a cluster), not both",
                t.path
            ),
        );
    }
    if urls.is_empty() {
        r.missing(t, "url", "a redis:// or rediss:// URL");
        return None;
    }
    if urls.len() > 1 && !cluster {
        let span = t.get("urls").map(|v| v.span()).unwrap_or(t.span.clone());
        r.report(
            span,
            format!(
                "{}: several servers are the seed nodes of a Redis Cluster; add cluster = true",
                t.key_path("urls")
            ),
        );
    }
    let mut ok = true;
    for (url, span) in &urls {
        if let Err(why) = check_url(url) {
            r.report(span.clone(), format!("{}: {why}", t.path));
            ok = false;
        }
    }
    let ca = match r.string(t, "ca") {
        None => None,
        Some((path, span)) => {
            if !urls.iter().all(|(u, _)| u.starts_with("rediss://")) {
                r.report(
                    span.clone(),
                    format!(
                        "{}: a CA is for rediss:// (TLS) servers; the URLs here are not all rediss://",
                        t.key_path("ca")
                    ),
                );
            }
            // Read and checked as the gateway's own TLS clients check theirs.
            let checked = crate::tls::client_config(Some(std::path::Path::new(path)), false, &[])
                .map_err(|e| e.to_string())
                .and_then(|_| std::fs::read(path).map_err(|e| e.to_string()));
            match checked {
                Ok(pem) => Some(pem),
                Err(why) => {
                    r.report(span, format!("{}: {why}", t.key_path("ca")));
                    ok = false;
                    None
                }
            }
        }
    };
    ok.then(|| RedisConfig {
        urls: urls.iter().map(|(u, _)| u.to_string()).collect(),
        cluster,
        timeout,
        ca,
    })
}

/// `redis://[user:password@]host:port[/db]` or `rediss://…`.
fn check_url(url: &str) -> Result<(), String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(format!(
            "\"{url}\" is not a URL; expected redis://HOST:PORT"
        ));
    };
    if scheme != "redis" && scheme != "rediss" {
        return Err(format!(
            "unsupported scheme \"{scheme}\"; expected redis:// or rediss:// (TLS)"
        ));
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return Err(format!("\"{url}\" names no host"));
    }
    Ok(())
}

/// A policy with where it was declared, for cross-checks against the routes that name it.
pub struct RawRateLimit {
    pub config: RateLimitConfig,
    pub store_span: Range<usize>,
}

/// `[rate_limits.NAME]`, each a table.
pub fn rate_limits(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Vec<RawRateLimit> {
    r.named_tables(t, "capacity, refill_per_second, key, ...")
        .into_iter()
        .filter_map(|(name, table)| rate_limit(r, &table, name))
        .collect()
}

fn rate_limit(r: &mut Reader<'_>, t: &Table<'_, '_>, name: &str) -> Option<RawRateLimit> {
    r.check_keys(
        t,
        &[
            "key",
            "capacity",
            "refill_per_second",
            "store",
            "on_store_error",
            "headers",
            "max_keys",
        ],
        &[],
    );
    let (key_text, key_span) = r.required_string(
        t,
        "key",
        "\"client_ip\", \"header:NAME\", \"consumer\" or \"route\"",
    )?;
    let key = match key_text {
        "client_ip" => Some(LimitKey::ClientIp),
        "consumer" => Some(LimitKey::Consumer),
        "route" => Some(LimitKey::Route),
        other => match other.strip_prefix("header:") {
            Some(header) => match HeaderName::from_bytes(header.as_bytes()) {
                Ok(name) => Some(LimitKey::Header(name)),
                Err(_) => {
                    r.report(
                        key_span.clone(),
                        format!(
                            "{}: \"{header}\" is not a valid header name",
                            t.key_path("key")
                        ),
                    );
                    None
                }
            },
            None => {
                r.report(
                    key_span.clone(),
                    format!(
                        "{}: unknown key \"{other}\"; expected \"client_ip\", \"header:NAME\", \"consumer\" or \"route\"",
                        t.key_path("key")
                    ),
                );
                None
            }
        },
    };
    if t.get("capacity").is_none() {
        r.missing(t, "capacity", "the bucket size, a whole number of requests");
    }
    let capacity = r
        .integer(t, "capacity", 1, MAX_CAPACITY)
        .map(|(n, _)| n as u64);
    if t.get("refill_per_second").is_none() {
        r.missing(t, "refill_per_second", "tokens added per second, a number");
    }
    let refill = r.number(t, "refill_per_second", 0.0, false, MAX_REFILL_PER_SECOND);
    let (store, store_span) = match r.string(t, "store") {
        Some(("local", span)) => (LimitStore::Local, span),
        Some(("redis", span)) => (LimitStore::Redis, span),
        Some((other, span)) => {
            r.report(
                span.clone(),
                format!(
                    "{}: unknown store \"{other}\"; expected \"local\" or \"redis\"",
                    t.key_path("store")
                ),
            );
            (LimitStore::Local, span)
        }
        None => (LimitStore::Local, t.span.clone()),
    };
    let on_store_error = match r.string(t, "on_store_error") {
        None | Some(("local", _)) => OnStoreError::Local,
        Some(("allow", _)) => OnStoreError::Allow,
        Some(("deny", _)) => OnStoreError::Deny,
        Some((other, span)) => {
            r.report(
                span,
                format!(
                    "{}: unknown value \"{other}\"; expected \"local\", \"allow\" or \"deny\"",
                    t.key_path("on_store_error")
                ),
            );
            OnStoreError::Local
        }
    };
    if let (Some(capacity), Some(refill)) = (capacity, refill) {
        // The bucket's arithmetic is in nanoseconds (microseconds in Redis) in 64 bits: a
        // bucket that takes longer than this to fill is a mistake, and would overflow it.
        let too_slow = capacity as f64 / refill > MAX_FILL_SECONDS;
        let too_fast = store == LimitStore::Redis && refill > MAX_REDIS_REFILL_PER_SECOND;
        let problems = [
            too_slow.then(|| format!("an empty bucket would take more than 10 years to fill ({capacity} / {refill} seconds); raise refill_per_second")),
            too_fast.then(|| format!("a Redis bucket counts in microseconds, so at most {MAX_REDIS_REFILL_PER_SECOND} tokens per second")),
        ];
        let span = t
            .get("refill_per_second")
            .map(|v| v.span())
            .unwrap_or(t.span.clone());
        for why in problems.into_iter().flatten() {
            r.report(
                span.clone(),
                format!("{}: {why}", t.key_path("refill_per_second")),
            );
        }
    }
    let headers = r.bool(t, "headers").unwrap_or(true);
    let max_keys = r
        .integer(t, "max_keys", 1_000, 1_000_000_000)
        .map_or(DEFAULT_RATE_LIMIT_MAX_KEYS, |(n, _)| n as u64);
    Some(RawRateLimit {
        config: RateLimitConfig {
            name: name.to_string(),
            key: key?,
            capacity: capacity?,
            refill_per_second: refill?,
            store,
            on_store_error,
            headers,
            max_keys,
        },
        store_span,
    })
}

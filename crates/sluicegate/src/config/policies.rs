//! `[rate_limits.NAME]`: the rate-limit policies that routes name with `rate_limit = "NAME"`.

use std::ops::Range;

use http::HeaderName;

use super::model::{
    LimitKey, LimitStore, OnStoreError, RateLimitConfig, DEFAULT_RATE_LIMIT_MAX_KEYS,
};
use super::raw::{Reader, Table};

/// The largest bucket and the fastest refill a policy may ask for: far above any real limit,
/// low enough that the bucket arithmetic (nanoseconds in 64 bits) cannot overflow.
const MAX_CAPACITY: i64 = 1_000_000_000;
const MAX_REFILL_PER_SECOND: f64 = 1_000_000_000.0;

/// A policy with where it was declared, for cross-checks against the routes that name it.
pub struct RawRateLimit {
    pub config: RateLimitConfig,
    pub store_span: Range<usize>,
}

/// `[rate_limits.NAME]`, each a table.
pub fn rate_limits(r: &mut Reader<'_>, t: &Table<'_, '_>) -> Vec<RawRateLimit> {
    let mut out = Vec::new();
    for (name, value) in t.inner.iter() {
        let name: &str = name.get_ref();
        let path = t.key_path(name);
        let toml::de::DeValue::Table(inner) = value.get_ref() else {
            r.report(
                value.span(),
                format!("{path}: expected a table (capacity, refill_per_second, key, ...)"),
            );
            continue;
        };
        let table = Table::new(path, value.span(), inner);
        if let Some(policy) = rate_limit(r, &table, name) {
            out.push(policy);
        }
    }
    out
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

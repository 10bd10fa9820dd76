//! The response cache (issue 21, SPEC 2.4), being built. What is here now: its HTTP caching
//! rules, from RFC 9111 (`directives.rs` reads `Cache-Control`; `freshness.rs` decides what a
//! shared cache may store, for how long, and what it may do with a stored response when a
//! request comes), conditional requests (`conditional.rs`: 304s from stored responses, the
//! validators of a revalidation, freshening on a 304), what a stored response is found by
//! (`key.rs`: primary key and `Vary` variants) and the memory tier (`store.rs`). The route's `cache`, the pipeline step, request
//! collapsing, revalidation, purge and the Redis tier come next; until then a config with
//! `cache` is refused as "not supported yet".

pub mod conditional;
pub mod directives;
pub mod freshness;
pub mod key;
pub mod store;

/// A header map from `(name, value)` pairs, for the tests.
#[cfg(test)]
fn test_headers(fields: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    for (n, v) in fields {
        h.append(*n, http::HeaderValue::from_str(v).unwrap());
    }
    h
}

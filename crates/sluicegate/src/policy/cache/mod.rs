//! The response cache (issue 21, SPEC 2.4), being built. What is here now are its HTTP caching
//! rules, from RFC 9111: `directives.rs` reads `Cache-Control`, `freshness.rs` decides what a
//! shared cache may store, for how long, and what it may do with a stored response when a
//! request comes. The store, the route's `cache` and the pipeline step come next; until then a
//! config with `cache` is refused as "not supported yet".

pub mod directives;
pub mod freshness;

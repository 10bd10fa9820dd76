//! Any bytes as a request's query on a cache route whose `key` lists parameters
//! (`"query:NAME"`): reading it never panics; a query with `;` is never keyed (the request
//! bypasses the cache); what a lookup keys is always among the readings an unsafe request's
//! invalidation reaches (so a POST to the same URL invalidates what a GET stored); and a keyed
//! query is made only of the query's own parameters, each as sent.
//!
//! The first byte picks which of four parameter names the route lists (a bit each); the rest,
//! read as UTF-8 (lossily, as a URI's query is text), is the query.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluicegate::policy::cache::key::{keyed_query, keyed_query_readings};

const NAMES: [&str; 4] = ["page", "sort", "q", "a b"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let names: Vec<String> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| pick & (1 << i) != 0)
        .map(|(_, n)| n.to_string())
        .collect();
    let query = String::from_utf8_lossy(rest);
    let keyed = keyed_query(&query, &names);
    let readings = keyed_query_readings(&query, &names);
    assert!(!readings.is_empty() && readings.len() <= 2);
    if query.contains(';') {
        assert_eq!(keyed, None);
    }
    if let Some(keyed) = keyed {
        assert!(
            readings.contains(&keyed),
            "a lookup's key {keyed:?} is not among the invalidated {readings:?}"
        );
        let pairs: Vec<&str> = query.split('&').collect();
        if let Some(kept) = keyed.strip_prefix('?') {
            for pair in kept.split('&') {
                assert!(pairs.contains(&pair), "{pair:?} is not one of the query's");
            }
        } else {
            assert!(keyed.is_empty());
        }
    }
});

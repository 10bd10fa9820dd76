//! Any bytes as the caching fields of a request and a stored response, through everything the
//! response cache reads of them: `Cache-Control` (request and response), `Vary` and the request's
//! variant, `Expires`/`Date`/`Age` (lifetime and age), and the conditional request fields against
//! a stored `ETag`/`Last-Modified`. Never panics, and the answers hold together: a request the
//! stored `ETag` satisfies as `If-None-Match` is answered 304, whatever else it carries.
//!
//! The input is split at 0xff bytes into field values, in order: request Cache-Control,
//! response Cache-Control, Vary, Expires, Date, Age, If-None-Match, If-Modified-Since, ETag,
//! Last-Modified. Values that are not valid field values are left out.
#![no_main]

use std::time::{Duration, SystemTime};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use sluicegate::policy::cache::conditional;
use sluicegate::policy::cache::directives::CacheControl;
use sluicegate::policy::cache::freshness::{self, Timing};
use sluicegate::policy::cache::key::VaryOn;

const FIELDS: [HeaderName; 10] = [
    header::CACHE_CONTROL,
    header::CACHE_CONTROL,
    header::VARY,
    header::EXPIRES,
    header::DATE,
    header::AGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::ETAG,
    header::LAST_MODIFIED,
];

fuzz_target!(|data: &[u8]| {
    let mut request = HeaderMap::new();
    let mut response = HeaderMap::new();
    for (i, value) in data.split(|b| *b == 0xff).take(FIELDS.len()).enumerate() {
        let Ok(value) = HeaderValue::from_bytes(value) else {
            continue;
        };
        let to_request = matches!(i, 0 | 6 | 7);
        let map = if to_request {
            &mut request
        } else {
            &mut response
        };
        map.append(FIELDS[i].clone(), value);
    }
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let request_cc = CacheControl::from_headers(&request);
    let response_cc = CacheControl::from_headers(&response);
    if let Some(vary) = VaryOn::new(&response, &[]) {
        let _ = vary.variant(&request);
    }
    let lifetime = freshness::explicit_lifetime(&response_cc, &response, now).unwrap_or_default();
    let timing = Timing::new(&response, now - Duration::from_secs(1), now, lifetime);
    for later in [0, 1, 3_600, u64::from(u32::MAX)] {
        let at = now + Duration::from_secs(later);
        let _ = timing.age(at);
        let _ = freshness::reuse(&timing, &response_cc, &request_cc, at);
    }
    let _ = conditional::not_modified(&request, &response, now);
    let _ = conditional::not_modified_fields(&response);
    let _ = conditional::validators(&response);
    // The stored ETag, asked for as it is, always matches.
    if let Some(etag) = response.get(header::ETAG).cloned() {
        if etag.as_bytes().starts_with(b"\"") || etag.as_bytes().starts_with(b"W/\"") {
            let mut asked = HeaderMap::new();
            asked.insert(header::IF_NONE_MATCH, etag.clone());
            let valid = conditional::not_modified(&asked, &response, now);
            let mut twice = HeaderMap::new();
            twice.insert(header::IF_NONE_MATCH, etag);
            twice.append(header::IF_MODIFIED_SINCE, HeaderValue::from_static("x"));
            assert_eq!(valid, conditional::not_modified(&twice, &response, now));
        }
    }
});

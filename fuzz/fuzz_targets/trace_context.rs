//! Any bytes as a client's `traceparent` and `tracestate` (split at the first 0xff byte), as the
//! gateway reads them with `[tracing]` on: parsing never panics; an accepted parent is in the
//! W3C form (non-zero ids) and the `traceparent` the gateway writes for it parses back to the same
//! trace and flag; a sampled request's recording takes any `tracestate` without panicking.
#![no_main]

use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, Version};
use libfuzzer_sys::fuzz_target;
use sluicegate::observe::trace::context::{parse_traceparent, Sampler, TRACEPARENT};
use sluicegate::observe::trace::span::{Ending, Incoming};
use sluicegate::observe::trace::Recording;

fuzz_target!(|data: &[u8]| {
    let (parent, state) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let parsed = parse_traceparent(parent);
    if let Some(p) = parsed {
        assert_ne!(p.trace_id, [0; 16]);
        assert_ne!(p.span_id, [0; 8]);
    }
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_bytes(parent) {
        headers.insert(TRACEPARENT, value);
    }
    let sampler = Sampler {
        ratio: 1.0,
        parent_based: true,
    };
    let cx = sampler.start(&headers);
    if let (Some(p), true) = (parsed, headers.contains_key(TRACEPARENT)) {
        assert_eq!(cx.trace_id, p.trace_id);
        assert_eq!(cx.parent, Some(p.span_id));
        assert_eq!(cx.sampled, p.sampled);
    }
    let sent = parse_traceparent(cx.traceparent().as_bytes()).expect("ours parses");
    assert_eq!((sent.trace_id, sent.span_id), (cx.trace_id, cx.span_id));
    let tracestate = std::str::from_utf8(state).ok();
    let recording = Recording::new(
        cx,
        Instant::now(),
        &Incoming {
            method: &Method::GET,
            path: "/",
            host: tracestate,
            port: None,
            version: Version::HTTP_11,
            tls: false,
            client: "127.0.0.1".parse().unwrap(),
            request_id: "fuzz",
            tracestate,
        },
    );
    let spans = recording.finish(&Ending {
        status: 200,
        listener: None,
        route: None,
        http_route: None,
        service: None,
        endpoint: None,
        decisions: &[],
        consumer: None,
    });
    assert_eq!(spans.len(), 1);
});

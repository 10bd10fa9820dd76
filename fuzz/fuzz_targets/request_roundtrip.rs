//! A request head the gateway accepts, written back out the way it forwards one to an
//! HTTP/1.1 upstream (`encode_head`, fields with `put_field`, the framing fields from the
//! parsed framing), parses again to the same request: method, target, fields and framing.
#![no_main]

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Method, Version};
use libfuzzer_sys::fuzz_target;
use sluicegate::proxy::http::wire::fields::put_field;
use sluicegate::proxy::http::wire::request::{
    self, encode_head, BodyFraming, HeadError, Upload, MAX_FIELDS,
};

const MAX: usize = 64 * 1024;

/// The fields other than the framing ones, in order.
fn fields(headers: &http::HeaderMap) -> Vec<(&http::HeaderName, &http::HeaderValue)> {
    headers
        .iter()
        .filter(|(name, _)| **name != CONTENT_LENGTH && **name != TRANSFER_ENCODING)
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let Ok(Some(first)) = request::parse(&mut buf, MAX) else {
        return;
    };
    // As h1::request::encode does.
    let target = first.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let implies_body = matches!(first.method, Method::POST | Method::PUT | Method::PATCH);
    let upload = match first.body {
        BodyFraming::None => Upload::None,
        BodyFraming::Length(n) => Upload::Length(n),
        BodyFraming::Chunked => Upload::Chunked,
    };
    let mut out = Vec::new();
    encode_head(
        &mut out,
        &first.method,
        target,
        upload,
        implies_body,
        |out| {
            for (name, value) in fields(&first.headers) {
                put_field(out, name.as_str().as_bytes(), value.as_bytes());
            }
        },
    );

    let mut wire = BytesMut::from(&out[..]);
    let framing_field = upload != Upload::None || implies_body;
    if fields(&first.headers).len() + usize::from(framing_field) > MAX_FIELDS {
        // A request at the field limit with a framing field added (`Content-Length: 0` on a
        // bodiless POST) is one field over it: the gateway adds fields of its own anyway
        // (`X-Forwarded-*`, `Host`), so a server with the same limit refuses such a request.
        assert_eq!(
            request::parse(&mut wire, MAX).unwrap_err(),
            HeadError::TooLarge
        );
        return;
    }
    let second = match request::parse(&mut wire, MAX) {
        Ok(Some(second)) => second,
        other => panic!(
            "the re-encoded head is refused: {other:?}\n{}",
            String::from_utf8_lossy(&out)
        ),
    };
    assert!(wire.is_empty(), "the re-encoded head is not read whole");
    assert_eq!(second.method, first.method);
    assert_eq!(second.version, Version::HTTP_11);
    // The path and query as parsed (an empty path is `/`); an absolute-form target's scheme
    // and authority are not forwarded.
    let path_and_query =
        |pq: &http::uri::PathAndQuery| (pq.path().to_owned(), pq.query().map(str::to_owned));
    let expected = first
        .uri
        .path_and_query()
        .map_or(("/".to_owned(), None), path_and_query);
    assert_eq!(
        second.uri.path_and_query().map(path_and_query),
        Some(expected)
    );
    assert_eq!(fields(&second.headers), fields(&first.headers));
    assert_eq!(second.body, first.body);
    if first.version == Version::HTTP_11 {
        assert_eq!(second.keep_alive, first.keep_alive);
        assert_eq!(second.expects_continue, first.expects_continue);
        assert_eq!(second.accepts_trailers, first.accepts_trailers);
        assert_eq!(second.websocket, first.websocket);
    }
});

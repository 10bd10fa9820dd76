//! Any bytes as a request head, then the request's identity settled as the pipeline settles it
//! (`wire::target::settle`): never panics, and what it lets through is in its one form — a
//! single valid Host equal to an absolute target's authority, a path in normal form — which
//! settling again leaves exactly as it is. The first byte chooses `merge_slashes`.
#![no_main]

use std::borrow::Cow;

use bytes::BytesMut;
use http::header::HOST;
use libfuzzer_sys::fuzz_target;
use sluicegate::proxy::http::wire::request;
use sluicegate::proxy::http::wire::target::{normalize_path, settle, PathRules};

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let rules = PathRules {
        merge_slashes: first & 1 == 1,
    };
    let mut buf = BytesMut::from(data);
    let Ok(Some(head)) = request::parse(&mut buf, 64 * 1024) else {
        return;
    };
    let (mut uri, mut headers) = (head.uri, head.headers);
    if settle(&head.method, head.version, &mut uri, &mut headers, rules).is_err() {
        return;
    }
    // One Host at most, and an absolute target's authority is the Host.
    let hosts: Vec<_> = headers.get_all(HOST).iter().collect();
    assert!(hosts.len() <= 1, "{hosts:?}");
    if let Some(authority) = uri.authority() {
        assert!(
            hosts.first().is_some_and(|h| h
                .as_bytes()
                .eq_ignore_ascii_case(authority.as_str().as_bytes())),
            "{uri} {hosts:?}"
        );
    }
    // The path is in normal form: normalising it again changes nothing.
    let path = uri.path();
    if path != "*" {
        assert!(path.starts_with('/'), "{path}");
        match normalize_path(path, rules) {
            Ok(Cow::Borrowed(p)) => assert_eq!(p, path),
            other => panic!("{path:?} is not normal: {other:?}"),
        }
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        assert!(!segments.iter().any(|s| *s == "." || *s == ".."), "{path}");
    }
    // Settling is idempotent.
    let (mut uri2, mut headers2) = (uri.clone(), headers.clone());
    settle(&head.method, head.version, &mut uri2, &mut headers2, rules)
        .expect("a settled request settles again");
    assert_eq!(uri2, uri);
    assert_eq!(headers2, headers);
});

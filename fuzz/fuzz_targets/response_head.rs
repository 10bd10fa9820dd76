//! Any bytes (the first picks the request method) as an upstream's response:
//! `wire::response::parse` never panics, and a head it accepts is consistent with its fields,
//! its status and what it consumed.
#![no_main]

use bytes::BytesMut;
use http::header::CONTENT_LENGTH;
use http::{Method, StatusCode};
use libfuzzer_sys::fuzz_target;
use sluicegate::proxy::http::wire::content_length;
use sluicegate::proxy::http::wire::response::{self, Error, Framing, Head};

const METHODS: [Method; 9] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
    Method::PATCH,
    Method::TRACE,
    Method::CONNECT,
];

/// Fields that must never reach the client.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn parse(bytes: &[u8], method: &Method) -> (Result<Option<Head>, Error>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let result = response::parse(&mut buf, method);
    (result, buf)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, data)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(pick) % METHODS.len()];
    let (result, rest) = parse(data, method);
    assert!(rest.len() <= data.len());
    assert_eq!(&rest[..], &data[data.len() - rest.len()..]);
    let head = match result {
        Ok(Some(head)) => head,
        Ok(None) => {
            assert_eq!(rest.len(), data.len(), "an incomplete head was consumed");
            return;
        }
        Err(_) => return,
    };
    let consumed = data.len() - rest.len();
    assert!(consumed > 0);
    for name in HOP_BY_HOP {
        assert!(!head.headers.contains_key(name), "{name} kept");
    }
    let bodiless = *method == Method::HEAD
        || head.status.is_informational()
        || head.status == StatusCode::NO_CONTENT
        || head.status == StatusCode::NOT_MODIFIED;
    let lengths: Vec<_> = head.headers.get_all(CONTENT_LENGTH).iter().collect();
    let length = lengths
        .iter()
        .try_fold(None, |prev, v| content_length(v.as_bytes(), prev).map(Some));
    // A Content-Length that is kept is one the parser read and accepted.
    assert!(
        length.is_some(),
        "unreadable Content-Length kept: {lengths:?}"
    );
    match head.framing {
        Framing::Empty => {
            assert!(bodiless || length == Some(Some(0)), "{head:?}");
        }
        Framing::Length(n) => {
            assert!(!bodiless);
            assert!(n > 0);
            assert_eq!(length, Some(Some(n)));
        }
        Framing::Chunked => {
            assert!(!bodiless);
            assert!(
                lengths.is_empty(),
                "Content-Length forwarded beside chunked"
            );
        }
        Framing::Close => {
            assert!(!bodiless);
            assert!(lengths.is_empty());
            assert!(
                !head.keep_alive,
                "a body to the close on a reused connection"
            );
        }
    }

    // The head's own bytes give the same head; proper prefixes of them are incomplete.
    let (again, left) = parse(&data[..consumed], method);
    let again = again
        .expect("the head's bytes alone are refused")
        .expect("incomplete");
    assert!(left.is_empty());
    assert_eq!(again.status, head.status);
    assert_eq!(again.version, head.version);
    assert_eq!(again.headers, head.headers);
    assert_eq!(again.framing, head.framing);
    assert_eq!(again.keep_alive, head.keep_alive);
    for cut in [consumed - 1, consumed / 2] {
        let (partial, _) = parse(&data[..cut], method);
        assert!(
            matches!(partial, Ok(None)),
            "a prefix of {cut} bytes gave {partial:?}"
        );
    }
});

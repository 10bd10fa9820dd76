//! Any bytes as the start of a client connection: `wire::request::parse` never panics, and a
//! head it accepts is consistent with its fields and with what it consumed.
#![no_main]

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::Version;
use libfuzzer_sys::fuzz_target;
use sluicegate::proxy::http::wire::request::{self, BodyFraming, HeadError, RequestHead};
use sluicegate::proxy::http::wire::{content_length, request::MAX_FIELDS};

const MAX: usize = 64 * 1024;

fn parse(bytes: &[u8]) -> (Result<Option<RequestHead>, HeadError>, BytesMut) {
    let mut buf = BytesMut::from(bytes);
    let result = request::parse(&mut buf, MAX);
    (result, buf)
}

fuzz_target!(|data: &[u8]| {
    let (result, rest) = parse(data);
    // Whatever happened, only a prefix was consumed.
    assert!(rest.len() <= data.len());
    assert_eq!(&rest[..], &data[data.len() - rest.len()..]);
    let head = match result {
        Ok(Some(head)) => head,
        Ok(None) => {
            // Incomplete: only blank lines before the head may be gone.
            let gone = &data[..data.len() - rest.len()];
            assert!(gone.iter().all(|&b| b == b'\r' || b == b'\n'), "{gone:?}");
            return;
        }
        Err(_) => return,
    };
    let consumed = data.len() - rest.len();
    assert!(consumed > 0);
    assert!(head.headers.len() <= MAX_FIELDS);

    // The framing agrees with the fields it came from.
    let lengths: Vec<_> = head.headers.get_all(CONTENT_LENGTH).iter().collect();
    let codings = head.headers.get_all(TRANSFER_ENCODING).iter().count();
    let length = lengths
        .iter()
        .try_fold(None, |prev, v| content_length(v.as_bytes(), prev).map(Some));
    match head.body {
        BodyFraming::Chunked => {
            assert!(lengths.is_empty(), "chunked with a Content-Length");
            assert!(codings > 0);
            assert_eq!(head.version, Version::HTTP_11);
        }
        BodyFraming::Length(n) => {
            assert_eq!(codings, 0, "a length with a Transfer-Encoding");
            assert!(n > 0);
            assert_eq!(length, Some(Some(n)));
        }
        BodyFraming::None => {
            assert_eq!(codings, 0, "no body with a Transfer-Encoding");
            assert!(matches!(length, Some(None | Some(0))), "{length:?}");
        }
    }
    if head.expects_continue || head.websocket {
        assert_eq!(head.version, Version::HTTP_11);
    }

    // The head's own bytes parse to the same head with nothing left over, and no proper prefix
    // of them is refused or taken for a whole head: a head that arrives in pieces is read as
    // one that arrives at once.
    let (again, left) = parse(&data[..consumed]);
    let again = again
        .expect("the head's bytes alone are refused")
        .expect("incomplete");
    assert!(left.is_empty());
    assert_eq!(again.method, head.method);
    assert_eq!(again.uri, head.uri);
    assert_eq!(again.version, head.version);
    assert_eq!(again.headers, head.headers);
    assert_eq!(again.body, head.body);
    assert_eq!(again.keep_alive, head.keep_alive);
    for cut in [consumed - 1, consumed / 2] {
        let (partial, _) = parse(&data[..cut]);
        assert!(
            matches!(partial, Ok(None)),
            "a prefix of {cut} bytes gave {partial:?}"
        );
    }
});

//! Any bytes as a chunked body arriving in two reads, split where the first two bytes say:
//! neither decoder panics, each decodes the body the same whether it arrives whole or in two
//! pieces, and what the strict (request) decoder accepts the lenient one reads the same way.
#![no_main]

use bytes::BytesMut;
use http::header::HeaderMap;
use libfuzzer_sys::fuzz_target;
use sluicegate::proxy::http::wire::chunked::{
    allowed_in_trailers, ChunkError, ChunkedDecoder, Decoded,
};

/// How decoding stopped.
#[derive(Debug, PartialEq)]
enum Stop {
    /// The body ended; the bytes after it.
    End(Vec<u8>),
    /// Every byte was fed and the body has not ended.
    NeedMore,
    Error(ChunkError),
}

#[derive(Debug, PartialEq)]
struct Outcome {
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
    stop: Stop,
}

fn decode(mut decoder: ChunkedDecoder, feeds: &[&[u8]]) -> Outcome {
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    for (i, feed) in feeds.iter().enumerate() {
        buf.extend_from_slice(feed);
        loop {
            let before = buf.len();
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(d)) => {
                    assert!(!d.is_empty(), "empty data frame");
                    data.extend_from_slice(&d);
                }
                Ok(Decoded::Trailers(t)) => {
                    assert!(trailers.is_none(), "trailers twice");
                    assert!(
                        t.keys().all(allowed_in_trailers),
                        "forbidden trailer: {t:?}"
                    );
                    trailers = Some(t);
                }
                Ok(Decoded::End) => {
                    // The end is sticky and consumes nothing more.
                    let rest = buf.clone();
                    assert_eq!(decoder.decode(&mut buf), Ok(Decoded::End));
                    assert_eq!(buf, rest);
                    let mut rest = rest.to_vec();
                    for later in &feeds[i + 1..] {
                        rest.extend_from_slice(later);
                    }
                    return Outcome {
                        data,
                        trailers,
                        stop: Stop::End(rest),
                    };
                }
                Ok(Decoded::NeedMore) => break,
                Err(e) => {
                    return Outcome {
                        data,
                        trailers,
                        stop: Stop::Error(e),
                    }
                }
            }
            assert!(buf.len() < before, "a step that consumed nothing");
        }
    }
    Outcome {
        data,
        trailers,
        stop: Stop::NeedMore,
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((split, body)) = input.split_first_chunk::<2>() else {
        return;
    };
    let at = usize::from(u16::from_le_bytes(*split)) % (body.len() + 1);
    let (first, second) = body.split_at(at);

    let strict = decode(ChunkedDecoder::strict(), &[body]);
    let strict_split = decode(ChunkedDecoder::strict(), &[first, second]);
    assert_eq!(
        strict, strict_split,
        "strict decoding depends on the split at {at}"
    );

    let lenient = decode(ChunkedDecoder::default(), &[body]);
    let lenient_split = decode(ChunkedDecoder::default(), &[first, second]);
    assert_eq!(
        lenient, lenient_split,
        "lenient decoding depends on the split at {at}"
    );

    if matches!(strict.stop, Stop::End(_)) {
        assert_eq!(
            strict, lenient,
            "the lenient decoder reads a strict body differently"
        );
    }
});

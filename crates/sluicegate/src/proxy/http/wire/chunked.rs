//! Incremental decoder for `Transfer-Encoding: chunked` response bodies (RFC 9112 7.1).
//!
//! It works on whatever part of the body is in the connection's read buffer and says when it
//! needs more, so a body is streamed chunk by chunk without being collected. Data frames are
//! split off the buffer without copying. Chunk extensions are skipped; trailer fields are
//! returned as a header map (gRPC-web and some APIs send them over HTTP/1.1 too).

use bytes::{Buf, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Longest chunk-size line tolerated with its extensions, and longest trailer section: both
/// bound what a hostile upstream can make the gateway buffer.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;
/// Trailer fields parsed at most.
const MAX_TRAILER_FIELDS: usize = 64;

/// What went wrong in a chunked body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    InvalidSize,
    #[error("chunk size line too long")]
    LineTooLong,
    #[error("missing CRLF after chunk data")]
    MissingCrlf,
    #[error("invalid trailer section")]
    InvalidTrailers,
    #[error("trailer section too large")]
    TrailersTooLarge,
}

/// One step of decoding.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body ended; nothing of it is left in the buffer.
    End,
    /// The buffer holds no complete next piece: read more and call again.
    NeedMore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits; `digits` counts them.
    Size {
        value: u64,
        digits: u8,
    },
    /// After the digits: optional whitespace, then extensions (`in_ext`), until the line feed;
    /// `cr`: a carriage return was just seen, so only the line feed may follow.
    SizeRest {
        value: u64,
        seen: usize,
        in_ext: bool,
        cr: bool,
    },
    Data {
        remaining: u64,
    },
    /// The CRLF after a chunk's data.
    DataEnd {
        cr_seen: bool,
    },
    Trailers,
    Done,
}

/// Decoder state for one chunked body.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: State,
    /// Client request bodies: line endings must be CRLF, extensions free of control bytes and
    /// at most `MAX_EXTENSIONS` in all. A gateway that reads a chunked body more leniently
    /// than a server behind another proxy invites request smuggling through such differences.
    strict: bool,
    extension_bytes: usize,
}

/// Chunk-extension bytes a strict decoder accepts over a whole body (hyper's bound).
const MAX_EXTENSIONS: usize = 16 * 1024;

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: State::Size {
                value: 0,
                digits: 0,
            },
            strict: false,
            extension_bytes: 0,
        }
    }
}

impl ChunkedDecoder {
    /// A decoder for request bodies (see `strict`).
    pub fn strict() -> ChunkedDecoder {
        ChunkedDecoder {
            strict: true,
            ..ChunkedDecoder::default()
        }
    }

    /// Decodes the next piece from the front of `buf`, consuming what it used.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        loop {
            match self.state {
                State::Done => return Ok(Decoded::End),
                State::Size { value, digits } => {
                    let Some(&b) = buf.first() else {
                        return Ok(Decoded::NeedMore);
                    };
                    if let Some(d) = hex_digit(b) {
                        // 16 hex digits fill a u64; more is an absurd size.
                        if digits >= 16 {
                            return Err(ChunkError::InvalidSize);
                        }
                        buf.advance(1);
                        self.state = State::Size {
                            value: value << 4 | u64::from(d),
                            digits: digits + 1,
                        };
                    } else if digits == 0 {
                        return Err(ChunkError::InvalidSize);
                    } else {
                        self.state = State::SizeRest {
                            value,
                            seen: 0,
                            in_ext: false,
                            cr: false,
                        };
                    }
                }
                State::SizeRest {
                    value,
                    seen,
                    in_ext,
                    cr,
                } => {
                    let Some(&b) = buf.first() else {
                        return Ok(Decoded::NeedMore);
                    };
                    if seen >= MAX_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    buf.advance(1);
                    if self.strict {
                        if in_ext {
                            self.extension_bytes += 1;
                            if self.extension_bytes > MAX_EXTENSIONS {
                                return Err(ChunkError::LineTooLong);
                            }
                        }
                        let bare_lf = b == b'\n' && !cr;
                        let control = b < 0x20 && !matches!(b, b'\t' | b'\r' | b'\n');
                        if bare_lf || control || (cr && b != b'\n') {
                            return Err(ChunkError::InvalidSize);
                        }
                        if in_ext && b == b'\r' {
                            self.state = State::SizeRest {
                                value,
                                seen: seen + 1,
                                in_ext,
                                cr: true,
                            };
                            continue;
                        }
                    }
                    let (in_ext, cr) = match b {
                        b'\n' => {
                            self.state = if value == 0 {
                                State::Trailers
                            } else {
                                State::Data { remaining: value }
                            };
                            continue;
                        }
                        // Extensions are skipped, as every proxy does.
                        _ if in_ext => (true, false),
                        _ if cr => return Err(ChunkError::InvalidSize),
                        b';' => (true, false),
                        b' ' | b'\t' => (false, false),
                        b'\r' => (false, true),
                        _ => return Err(ChunkError::InvalidSize),
                    };
                    self.state = State::SizeRest {
                        value,
                        seen: seen + 1,
                        in_ext,
                        cr,
                    };
                }
                State::Data { remaining } => {
                    if buf.is_empty() {
                        return Ok(Decoded::NeedMore);
                    }
                    let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    let left = remaining - take as u64;
                    self.state = if left == 0 {
                        State::DataEnd { cr_seen: false }
                    } else {
                        State::Data { remaining: left }
                    };
                    return Ok(Decoded::Data(buf.split_to(take).freeze()));
                }
                State::DataEnd { cr_seen } => {
                    let Some(&b) = buf.first() else {
                        return Ok(Decoded::NeedMore);
                    };
                    match (cr_seen, b) {
                        (false, b'\r') => {
                            buf.advance(1);
                            self.state = State::DataEnd { cr_seen: true };
                        }
                        // A bare LF is tolerated from upstreams (RFC 9112 2.2 allows it).
                        (cr_seen, b'\n') if cr_seen || !self.strict => {
                            buf.advance(1);
                            self.state = State::Size {
                                value: 0,
                                digits: 0,
                            };
                        }
                        _ => return Err(ChunkError::MissingCrlf),
                    }
                }
                State::Trailers => return self.trailers(buf),
            }
        }
    }

    /// The trailer section after the last chunk: empty (`CRLF`) or fields ending in a blank line.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        if self.strict && buf.starts_with(b"\n") {
            return Err(ChunkError::InvalidTrailers);
        }
        if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
            buf.advance(if buf[0] == b'\r' { 2 } else { 1 });
            self.state = State::Done;
            return Ok(Decoded::End);
        }
        if buf.is_empty() || buf.as_ref() == b"\r" {
            return Ok(Decoded::NeedMore);
        }
        let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
        match httparse::parse_headers(buf, &mut fields) {
            Ok(httparse::Status::Complete((used, parsed))) => {
                // A bare LF anywhere in the section, not only at its start: hyper, for one,
                // reads `x: y<LF><LF>` as the start of a trailer line that runs on to the next
                // CRLF, so a request after it would be the gateway's alone to see.
                if self.strict && has_bare_lf(&buf[..used]) {
                    return Err(ChunkError::InvalidTrailers);
                }
                let mut map = HeaderMap::with_capacity(parsed.len());
                for field in parsed {
                    let name = HeaderName::from_bytes(field.name.as_bytes())
                        .map_err(|_| ChunkError::InvalidTrailers)?;
                    let value = HeaderValue::from_bytes(field.value)
                        .map_err(|_| ChunkError::InvalidTrailers)?;
                    if allowed_in_trailers(&name) {
                        map.append(name, value);
                    }
                }
                buf.advance(used);
                self.state = State::Done;
                Ok(Decoded::Trailers(map))
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_TRAILERS => {
                Err(ChunkError::TrailersTooLarge)
            }
            Ok(httparse::Status::Partial) => Ok(Decoded::NeedMore),
            Err(httparse::Error::TooManyHeaders) => Err(ChunkError::TrailersTooLarge),
            Err(_) => Err(ChunkError::InvalidTrailers),
        }
    }
}

/// Whether a field may travel in a trailer section. RFC 9110 6.5.1: fields that frame the
/// message, route it, authenticate it, modify the request or control the response "cannot be
/// processed outside the header section", and RFC 9110 6.5.2 forbids merging a trailer into
/// the header section unless its definition allows it. A recipient that merges them anyway (as
/// some servers and client libraries do) could be told a second Host, length or credential
/// after the gateway made its decisions on the first: such fields are dropped, wherever the
/// trailers come from and wherever they go.
pub fn allowed_in_trailers(name: &HeaderName) -> bool {
    use http::header::*;
    const FORBIDDEN: [HeaderName; 28] = [
        // framing and connection
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        TE,
        TRAILER,
        UPGRADE,
        // routing and request modifiers
        HOST,
        EXPECT,
        MAX_FORWARDS,
        RANGE,
        IF_MATCH,
        IF_NONE_MATCH,
        IF_MODIFIED_SINCE,
        IF_UNMODIFIED_SINCE,
        IF_RANGE,
        // authentication and state
        AUTHORIZATION,
        PROXY_AUTHORIZATION,
        COOKIE,
        SET_COOKIE,
        WWW_AUTHENTICATE,
        PROXY_AUTHENTICATE,
        // who the consumer is: only the gateway says (policy/auth)
        HeaderName::from_static("x-consumer"),
        // response control and content format
        CACHE_CONTROL,
        CONTENT_ENCODING,
        CONTENT_TYPE,
        CONTENT_RANGE,
    ];
    if FORBIDDEN.contains(name) {
        return false;
    }
    // `X_Consumer` is `x-consumer` to CGI-style recipients.
    let text = name.as_str();
    !(text.contains('_')
        && FORBIDDEN.iter().any(|f| {
            f.as_str().len() == text.len()
                && f.as_str()
                    .bytes()
                    .zip(text.bytes())
                    .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
        }))
}

/// [`allowed_in_trailers`] applied to a trailer map someone else parsed (hyper's HTTP/2).
pub fn drop_forbidden_trailers(trailers: &mut HeaderMap) {
    let forbidden: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| !allowed_in_trailers(n))
        .cloned()
        .collect();
    for name in forbidden {
        trailers.remove(name);
    }
}

/// Whether a trailer section httparse parsed holds a LF not preceded by CR (httparse refuses a
/// CR not followed by LF, so a bare LF shows as more LFs than CRs).
fn has_bare_lf(section: &[u8]) -> bool {
    let (mut cr, mut lf) = (0usize, 0usize);
    for &b in section {
        cr += usize::from(b == b'\r');
        lf += usize::from(b == b'\n');
    }
    cr != lf
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Data, trailers, and the bytes left after the body.
    type Decoding = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

    /// Decodes `wire` fed in pieces of `step` bytes; returns the data, the trailers, and what is
    /// left in the buffer after the end.
    fn decode_in_steps(wire: &[u8], step: usize) -> Result<Decoding, ChunkError> {
        let mut decoder = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut data = Vec::new();
        let mut trailers = None;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(d) => data.extend_from_slice(&d),
                Decoded::Trailers(t) => trailers = Some(t),
                Decoded::End => return Ok((data, trailers, buf.to_vec())),
                Decoded::NeedMore => {
                    assert!(fed < wire.len(), "decoder wants more than the whole body");
                    let end = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    fn encode(chunks: &[Vec<u8>], trailer: &str) -> Vec<u8> {
        let mut wire = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            wire.extend_from_slice(format!("{:X};ext=1\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n");
        wire.extend_from_slice(trailer.as_bytes());
        wire.extend_from_slice(b"\r\n");
        wire
    }

    #[test]
    fn decodes_chunks_and_trailers() {
        let wire = b"5\r\nhello\r\n6 ; name=value\r\n world\r\n0\r\ngrpc-status: 0\r\n\r\nNEXT";
        let (data, trailers, rest) = decode_in_steps(wire, wire.len()).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(trailers.unwrap()["grpc-status"], "0");
        assert_eq!(rest, b"NEXT", "bytes after the body stay in the buffer");
    }

    #[test]
    fn bare_line_feeds_are_tolerated() {
        let (data, _, _) = decode_in_steps(b"3\nabc\n0\n\n", 1).unwrap();
        assert_eq!(data, b"abc");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let bad: [(&[u8], ChunkError); 5] = [
            (b"zz\r\n", ChunkError::InvalidSize),
            (b"\r\n", ChunkError::InvalidSize),
            (b"3x\r\nabc\r\n", ChunkError::InvalidSize),
            (b"3\r\nabcX", ChunkError::MissingCrlf),
            (b"11111111111111111\r\n", ChunkError::InvalidSize),
        ];
        for (wire, expected) in bad {
            assert_eq!(decode_in_steps(wire, 1).unwrap_err(), expected, "{wire:?}");
        }
        let long_ext = [b"1;".as_slice(), &[b'x'; MAX_LINE + 10], b"\r\n"].concat();
        assert_eq!(
            decode_in_steps(&long_ext, 7).unwrap_err(),
            ChunkError::LineTooLong
        );
        let bad_trailer = b"0\r\nno colon here\r\n\r\n";
        assert_eq!(
            decode_in_steps(bad_trailer, 3).unwrap_err(),
            ChunkError::InvalidTrailers
        );
    }

    proptest! {
        /// Whatever the chunk sizes and however the bytes arrive, the data comes out whole and
        /// nothing after the body is consumed.
        #[test]
        fn any_split_decodes_the_same(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            step in 1usize..64,
            with_trailer in any::<bool>(),
        ) {
            let trailer = if with_trailer { "x-sum: 42\r\n" } else { "" };
            let mut wire = encode(&chunks, trailer);
            wire.extend_from_slice(b"GET");
            let (data, trailers, rest) = decode_in_steps(&wire, step).unwrap();
            prop_assert_eq!(data, chunks.concat());
            prop_assert_eq!(trailers.is_some(), with_trailer);
            // Only whole steps are fed, so the rest is a prefix of what followed the body.
            prop_assert!(b"GET".starts_with(&rest));
        }
    }

    #[test]
    fn strict_decoding_refuses_what_servers_disagree_on() {
        let decode_all = |wire: &str| {
            let mut d = ChunkedDecoder::strict();
            let mut buf = BytesMut::from(wire);
            loop {
                match d.decode(&mut buf)? {
                    Decoded::End => return Ok(()),
                    Decoded::NeedMore => return Err(ChunkError::MissingCrlf),
                    _ => {}
                }
            }
        };
        assert_eq!(decode_all("3\r\nabc\r\n0\r\n\r\n"), Ok(()));
        assert_eq!(decode_all("3;name=v\r\nabc\r\n0\r\n\r\n"), Ok(()));
        for bad in [
            "3\nabc\r\n0\r\n\r\n",
            "3\r\nabc\n0\r\n\r\n",
            "3;a\nb\r\nabc\r\n0\r\n\r\n",
            "3;a\rb\r\nabc\r\n0\r\n\r\n",
            "3;a\x01\r\nabc\r\n0\r\n\r\n",
            "3\r\nabc\r\n0\r\n\n",
            "3\r\nabc\r\n0\r\nx: y\n\r\n",
            "3\r\nabc\r\n0\r\nx: y\r\n\n",
            // hyper reads this as one trailer section ending after `Host: a`: one request.
            "0\r\nx: y\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(decode_all(bad).is_err(), "{bad:?}");
        }
        let long_extensions: String = (0..200)
            .map(|_| format!("1;{}\r\na\r\n", "x".repeat(100)))
            .collect();
        assert!(decode_all(&format!("{long_extensions}0\r\n\r\n")).is_err());
    }
}

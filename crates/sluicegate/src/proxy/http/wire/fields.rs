//! Header fields read off the wire into a `HeaderMap`: where they sit in a parsed head, and
//! their names, with the common ones recognised cheaply.
//!
//! `HeaderName::from_bytes` lower-cases every name into a scratch buffer through a table and
//! then matches it against all of http's standard names: about 140 instructions a field, most
//! of a parsed head's cost after httparse itself. Nearly every exchange carries the same
//! handful of names (`Host`, `Date`, `Server`, `Content-Type`, `Content-Length`, …), so those
//! are picked out by length and first letter and compared case-insensitively in place; any
//! other name takes the general path, so the result is always what `from_bytes` returns.

use std::mem::MaybeUninit;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue, InvalidHeaderName};

/// A field of a head that is not a valid header name or value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidField {
    #[error("invalid header name")]
    Name,
    #[error("invalid header value")]
    Value,
}

/// Where a field's name and value sit in a head (heads are far below 4 GiB).
#[derive(Clone, Copy)]
struct Span {
    name: u32,
    name_len: u32,
    value: u32,
    value_len: u32,
}

/// The fields of a head, noted as positions while httparse still borrows the buffer, then
/// sliced out of the frozen head without copying. The slots are left uninitialised: zeroing
/// a hundred of them cost about 100 instructions a head.
pub struct Spans<const N: usize> {
    slots: [MaybeUninit<Span>; N],
    len: usize,
    /// Address of the buffer's first byte.
    base: usize,
}

impl<const N: usize> Spans<N> {
    /// Spans of fields inside `buf`.
    pub fn new(buf: &[u8]) -> Self {
        Spans {
            slots: [MaybeUninit::uninit(); N],
            len: 0,
            base: buf.as_ptr() as usize,
        }
    }

    /// Notes a field; `name` and `value` are slices of the buffer given to `new`. More than `N`
    /// fields panic (httparse returns at most as many as it was given slots for, `N`).
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        self.slots[self.len].write(Span {
            name: (name.as_ptr() as usize - self.base) as u32,
            name_len: name.len() as u32,
            value: (value.as_ptr() as usize - self.base) as u32,
            value_len: value.len() as u32,
        });
        self.len += 1;
    }

    /// The noted fields as a header map, names and values slices of `head` (the buffer given
    /// to `new`, frozen), with room for `room` more fields: growing a map rehashes it, which
    /// costs more than parsing the head.
    pub fn to_map(&self, head: &Bytes, room: usize) -> Result<HeaderMap, InvalidField> {
        // SAFETY: `push` wrote the first `len` slots, and a slot is never written past `len`.
        let spans =
            unsafe { std::slice::from_raw_parts(self.slots.as_ptr().cast::<Span>(), self.len) };
        let mut headers = HeaderMap::with_capacity(spans.len() + room);
        for span in spans {
            let (name, value) = (span.name as usize, span.value as usize);
            let name = field_name(&head[name..name + span.name_len as usize])
                .map_err(|_| InvalidField::Name)?;
            let value =
                HeaderValue::from_maybe_shared(head.slice(value..value + span.value_len as usize))
                    .map_err(|_| InvalidField::Value)?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// One `name: value` field line.
pub fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A header map as field lines (trailer sections too). `Content-Length` is never copied: the
/// framing is the encoder's to write.
pub fn put_fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        if name != header::CONTENT_LENGTH {
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
}

/// Whether a `Connection` option naming this field is ignored rather than obeyed. RFC 9110
/// 7.6.1 lets a sender list fields in `Connection` for the next hop to drop, and says "a
/// sender MUST NOT send a connection option corresponding to a field that is intended for all
/// recipients of the content". Obeying it for the fields that frame the message, name its
/// host, or that the gateway itself writes would let a client (or an upstream) change what the
/// next hop reads after the gateway decided on it: `Connection: host` once made the upstream
/// see its own address as Host after routing on the client's.
pub fn kept_despite_connection(name: &HeaderName) -> bool {
    const KEPT: [HeaderName; 10] = [
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::FORWARDED,
        HeaderName::from_static("x-forwarded-for"),
        HeaderName::from_static("x-forwarded-proto"),
        HeaderName::from_static("x-forwarded-host"),
        HeaderName::from_static("x-request-id"),
        HeaderName::from_static("traceparent"),
        HeaderName::from_static("tracestate"),
    ];
    KEPT.contains(name)
}

/// The field name `bytes` spells (ASCII case-insensitively), as `HeaderName::from_bytes` would
/// return it.
pub fn field_name(bytes: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    match common(bytes) {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(bytes),
    }
}

/// One of the names nearly every request or response carries, when `bytes` is one of them.
#[inline(always)]
fn common(bytes: &[u8]) -> Option<HeaderName> {
    let first = bytes.first()?.to_ascii_lowercase();
    let (lower, name): (&[u8], HeaderName) = match (bytes.len(), first) {
        (4, b'h') => (b"host", header::HOST),
        (4, b'd') => (b"date", header::DATE),
        (4, b'e') => (b"etag", header::ETAG),
        (4, b'v') => (b"vary", header::VARY),
        (6, b's') => (b"server", header::SERVER),
        (6, b'a') => (b"accept", header::ACCEPT),
        (6, b'c') => (b"cookie", header::COOKIE),
        (10, b'c') => (b"connection", header::CONNECTION),
        (10, b'u') => (b"user-agent", header::USER_AGENT),
        (10, b's') => (b"set-cookie", header::SET_COOKIE),
        (12, b'c') => (b"content-type", header::CONTENT_TYPE),
        (13, b'c') => (b"cache-control", header::CACHE_CONTROL),
        (13, b'l') => (b"last-modified", header::LAST_MODIFIED),
        (13, b'a') => (b"authorization", header::AUTHORIZATION),
        (14, b'c') => (b"content-length", header::CONTENT_LENGTH),
        (15, b'a') => (b"accept-encoding", header::ACCEPT_ENCODING),
        (16, b'c') => (b"content-encoding", header::CONTENT_ENCODING),
        (17, b't') => (b"transfer-encoding", header::TRANSFER_ENCODING),
        _ => return None,
    };
    same_name(bytes, lower).then_some(name)
}

/// Whether `bytes` spells `lower` (same length, lower-case letters, digits and `-`) in any
/// case: a word at a time, with 0x20 or-ed in only where `lower` has a letter, so the test is
/// exact for every byte (`-` must be `-`, a letter either of its two cases). Byte-wise
/// `eq_ignore_ascii_case` cost more than `from_bytes` saves.
#[inline(always)]
fn same_name(bytes: &[u8], lower: &[u8]) -> bool {
    let n = lower.len();
    if bytes.len() != n || n < 4 {
        return false;
    }
    // Letters have 0x40 set, digits and `-` do not: shifted, it is the case bit to ignore.
    if n >= 8 {
        let same = |at: usize| {
            let want = word64(lower, at);
            word64(bytes, at) | ((want & 0x4040_4040_4040_4040) >> 1) == want
        };
        (0..n - 8).step_by(8).all(same) && same(n - 8)
    } else {
        let same = |at: usize| {
            let want = word32(lower, at);
            word32(bytes, at) | ((want & 0x4040_4040) >> 1) == want
        };
        same(0) && same(n - 4)
    }
}

#[inline(always)]
fn word64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[inline(always)]
fn word32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn common_names_in_any_case_are_the_standard_ones() {
        for (wire, expected) in [
            ("Host", header::HOST),
            ("DATE", header::DATE),
            ("Content-Length", header::CONTENT_LENGTH),
            ("content-type", header::CONTENT_TYPE),
            ("Transfer-Encoding", header::TRANSFER_ENCODING),
            ("sEt-CoOkIe", header::SET_COOKIE),
        ] {
            assert_eq!(field_name(wire.as_bytes()).unwrap(), expected, "{wire}");
            // Through the fast path, not the fallback.
            assert_eq!(common(wire.as_bytes()), Some(expected), "{wire}");
        }
    }

    #[test]
    fn near_misses_take_the_general_path() {
        // Same length and first letter as a common name, but another name.
        assert_eq!(field_name(b"Hast").unwrap().as_str(), "hast");
        assert_eq!(
            field_name(b"content-typo").unwrap().as_str(),
            "content-typo"
        );
        assert!(field_name(b"con tent-type").is_err());
        assert!(field_name(b"").is_err());
    }

    /// Names built from a common name by changing case, one byte, or the length, and arbitrary
    /// byte strings: the fast path never disagrees with http's own parser.
    fn names() -> impl Strategy<Value = Vec<u8>> {
        let common = prop::sample::select(vec![
            "host",
            "date",
            "etag",
            "vary",
            "server",
            "accept",
            "cookie",
            "connection",
            "user-agent",
            "set-cookie",
            "content-type",
            "cache-control",
            "last-modified",
            "authorization",
            "content-length",
            "accept-encoding",
            "content-encoding",
            "transfer-encoding",
        ]);
        prop_oneof![
            (common.clone(), any::<u64>()).prop_map(|(name, case)| name
                .bytes()
                .enumerate()
                .map(|(i, b)| if case >> (i % 64) & 1 == 1 {
                    b.to_ascii_uppercase()
                } else {
                    b
                })
                .collect()),
            (common, any::<prop::sample::Index>(), any::<u8>()).prop_map(|(name, at, byte)| {
                let mut bytes = name.as_bytes().to_vec();
                let i = at.index(bytes.len());
                bytes[i] = byte;
                bytes
            }),
            prop::collection::vec(any::<u8>(), 0..20),
        ]
    }

    proptest! {
        #[test]
        fn agrees_with_from_bytes(name in names()) {
            let ours = field_name(&name).ok();
            let theirs = HeaderName::from_bytes(&name).ok();
            prop_assert_eq!(ours, theirs);
        }
    }
}

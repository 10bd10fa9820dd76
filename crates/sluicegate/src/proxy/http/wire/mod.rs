//! HTTP/1.1 on the wire, with no I/O: request and response heads parsed and checked, the
//! decisions that frame a message's body (RFC 9112 6), chunked bodies decoded and encoded.
//!
//! This is the gateway's security code. The server side (`server/h1`) and the client
//! (`client/h1`) both read messages only through it, so the gateway and the servers behind it
//! cannot disagree about where a message ends or what it says unless this module allows it. Where the RFC
//! leaves room, it refuses (400, 501, 502) rather than guesses. Everything here is fuzzed
//! (`fuzz/`), held against llhttp's vector set and hyper's parser (`tests/wire_*.rs`), and
//! knows nothing of sockets, pools or the server.

pub mod chunked;
pub mod fields;
pub mod request;
pub mod response;
pub mod target;

/// The comma-separated elements of a field value, trimmed (RFC 9110 5.6.1).
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(<[u8]>::trim_ascii)
}

/// One option of a `Connection` field (RFC 9112 9.6, RFC 9110 7.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionOption<'a> {
    Close,
    KeepAlive,
    Upgrade,
    /// Any other option: the name of a field meant for this hop only.
    Field(&'a [u8]),
}

/// The options of a `Connection` field value, in order, empty elements skipped: the one
/// reader of `Connection` for requests, responses and header rewriting alike.
pub fn connection_options(value: &[u8]) -> impl Iterator<Item = ConnectionOption<'_>> {
    tokens(value).filter(|t| !t.is_empty()).map(|t| {
        if t.eq_ignore_ascii_case(b"close") {
            ConnectionOption::Close
        } else if t.eq_ignore_ascii_case(b"keep-alive") {
            ConnectionOption::KeepAlive
        } else if t.eq_ignore_ascii_case(b"upgrade") {
            ConnectionOption::Upgrade
        } else {
            ConnectionOption::Field(t)
        }
    })
}

/// The transfer codings of a message, read from its `Transfer-Encoding` fields in order
/// (RFC 9112 6.1: several fields are one list, codings applied in the order listed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransferCodings {
    /// Non-empty coding elements seen.
    count: u32,
    chunked: u32,
    last_chunked: bool,
    /// A field with no coding in it.
    empty_field: bool,
}

/// What a message's transfer codings mean for its framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// No `Transfer-Encoding` field.
    Absent,
    /// Exactly one coding, `chunked`: the only one the gateway implements.
    Chunked,
    /// `chunked` last, after other codings (`gzip, chunked`). The framing is known, but a
    /// gateway that forwards the decoded bytes without the other codings labels them as
    /// something they are not: refused as not implemented (RFC 9112 6.1: "A server that
    /// receives a request message with a transfer coding it does not understand SHOULD respond
    /// with 501 (Not Implemented)"; nginx does the same).
    Unsupported,
    /// `chunked` not last, applied twice, or an empty field: the body's length cannot be known
    /// (RFC 9112 6.3: "the server MUST respond with the 400 (Bad Request) status code and then
    /// close the connection"; RFC 9112 7.1: chunked MUST NOT be applied more than once).
    Invalid,
}

impl TransferCodings {
    /// Adds one `Transfer-Encoding` field's value.
    pub fn add(&mut self, value: &[u8]) {
        // Empty list elements are ignored (RFC 9110 5.6.1.2); a field with no element at all
        // is refused, so that it is never mistaken for an absent one.
        let mut any = false;
        for coding in tokens(value).filter(|t| !t.is_empty()) {
            any = true;
            self.count += 1;
            self.last_chunked = coding.eq_ignore_ascii_case(b"chunked");
            self.chunked += u32::from(self.last_chunked);
        }
        self.empty_field |= !any;
    }

    pub fn coding(&self) -> Coding {
        if self.empty_field {
            return Coding::Invalid;
        }
        match (self.count, self.chunked, self.last_chunked) {
            (0, _, _) => Coding::Absent,
            (1, 1, true) => Coding::Chunked,
            (_, 1, true) | (_, 0, _) => Coding::Unsupported,
            _ => Coding::Invalid,
        }
    }
}

/// A `Content-Length` field's value, given the one of an earlier field if any; `None` when it is
/// malformed or disagrees. `5, 5` and repeated equal fields are accepted (RFC 9110 8.6: "a
/// recipient MAY either reject the message as invalid or replace that invalid field value
/// with a single instance of the decimal value", for a list of identical values).
pub fn content_length(value: &[u8], previous: Option<u64>) -> Option<u64> {
    let mut length = previous;
    for part in tokens(value) {
        if part.is_empty() || part.len() > 19 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = part.iter().fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
        if length.is_some_and(|l| l != n) {
            return None;
        }
        length = Some(n);
    }
    length
}

/// Appends a chunk-size line (lower-case hex and CRLF) for a chunk of `len` bytes.
pub fn chunk_size_line(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut n = len;
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coding(fields: &[&str]) -> Coding {
        let mut codings = TransferCodings::default();
        for f in fields {
            codings.add(f.as_bytes());
        }
        codings.coding()
    }

    #[test]
    fn only_a_single_chunked_coding_is_supported() {
        assert_eq!(coding(&[]), Coding::Absent);
        for ok in [&["chunked"][..], &[" Chunked "], &[",chunked,"]] {
            assert_eq!(coding(ok), Coding::Chunked, "{ok:?}");
        }
        for unsupported in [
            &["gzip, chunked"][..],
            &["gzip", "chunked"],
            &["identity"],
            &["gzip"],
            &["chunked;q=1"],
            &["\"chunked\""],
        ] {
            assert_eq!(coding(unsupported), Coding::Unsupported, "{unsupported:?}");
        }
        for invalid in [
            &["chunked, gzip"][..],
            &["chunked", "gzip"],
            &["chunked, chunked"],
            &["chunked", "chunked"],
            &[""],
            &[" , "],
            &["", "chunked"],
        ] {
            assert_eq!(coding(invalid), Coding::Invalid, "{invalid:?}");
        }
    }

    #[test]
    fn connection_options_are_read_once_for_all() {
        use ConnectionOption::*;
        let options: Vec<_> = connection_options(b" Close ,, keep-alive,Upgrade, x-a ").collect();
        assert_eq!(options, [Close, KeepAlive, Upgrade, Field(b"x-a")]);
    }

    #[test]
    fn content_lengths() {
        assert_eq!(content_length(b"5", None), Some(5));
        assert_eq!(content_length(b"5, 5", None), Some(5));
        assert_eq!(content_length(b"5", Some(5)), Some(5));
        assert_eq!(content_length(b"5", Some(6)), None);
        assert_eq!(content_length(b"+5", None), None);
        assert_eq!(content_length(b"", None), None);
        assert_eq!(content_length(b"99999999999999999999", None), None);
    }

    #[test]
    fn chunk_sizes_are_lower_hex() {
        for (n, text) in [
            (0, "0\r\n"),
            (10, "a\r\n"),
            (255, "ff\r\n"),
            (4096, "1000\r\n"),
        ] {
            let mut out = Vec::new();
            chunk_size_line(&mut out, n);
            assert_eq!(out, text.as_bytes());
        }
    }
}

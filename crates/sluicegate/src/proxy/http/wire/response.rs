//! Parsing an upstream's response head and deciding how its body is framed (RFC 9112 6.3).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName};
use http::{Method, StatusCode, Version};

use super::fields::{kept_despite_connection, Spans};
use super::{connection_options, content_length, Coding, ConnectionOption, TransferCodings};

/// Why an upstream's response head was refused (the client then gets 502).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed response head: {0}")]
    Parse(httparse::Error),
    #[error("response head too large or with too many fields")]
    HeadTooLarge,
    #[error("invalid response status {0}")]
    InvalidStatus(u16),
    #[error("invalid response header field")]
    InvalidHeader,
    #[error("invalid or conflicting Content-Length")]
    InvalidLength,
    #[error("response transfer coding other than chunked")]
    UnsupportedCoding,
}

/// Header fields parsed at most in a response head (hyper's default too).
const MAX_FIELDS: usize = 100;
/// Largest response head accepted; nginx's default `proxy_buffer_size` is far smaller.
pub const MAX_HEAD: usize = 64 * 1024;

/// How the response body is delimited on the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304, or `Content-Length: 0`).
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes the connection.
    Close,
}

/// A parsed final response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another exchange after this one.
    pub keep_alive: bool,
}

/// httparse over `buf` with uninitialised field slots: filling 100 empty fields per response
/// cost more than parsing the head.
fn parse_raw<'h, 'b>(
    buf: &'b [u8],
    fields: &'h mut [MaybeUninit<httparse::Header<'b>>],
) -> (httparse::Response<'h, 'b>, httparse::Result<usize>) {
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        fields,
    );
    (response, parsed)
}

/// Parses one response head from the front of `buf`, consuming it. `None`: incomplete. An
/// informational (1xx) head is consumed and returned too; the caller skips it.
pub fn parse(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let (response, parsed) = parse_raw(buf, &mut fields);
    let used = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(Error::HeadTooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(Error::HeadTooLarge),
        Err(e) => return Err(Error::Parse(e)),
    };
    let code = response.code.unwrap_or(0);
    let status = StatusCode::from_u16(code).map_err(|_| Error::InvalidStatus(code))?;
    let version = if response.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Names and values are sliced out of the head's bytes rather than copied one by one; the
    // spans are noted first, while httparse still borrows the buffer. The fields that frame the
    // message or describe the connection are read here, once, and hop-by-hop ones are not kept:
    // they must not reach the client (RFC 9110 7.6.1).
    let mut spans = Spans::<MAX_FIELDS>::new(buf);
    let mut fields = FramingFields::default();
    let mut named: Vec<HeaderName> = Vec::new();
    for f in response.headers.iter() {
        if !fields.read(f.name, f.value, &mut named)? {
            spans.push(f.name.as_bytes(), f.value);
        }
    }
    let head_bytes: Bytes = buf.split_to(used).freeze();
    // Room for what the pipeline adds (X-Request-Id, a sticky cookie) without a rehash.
    let mut headers = spans
        .to_map(&head_bytes, 2)
        .map_err(|_| Error::InvalidHeader)?;
    // Fields the upstream named in `Connection` are hop-by-hop too (rare).
    for name in named {
        headers.remove(name);
    }
    let (framing, reusable) = framing(method, status, &fields)?;
    if fields.both_framings() {
        // RFC 9112 6.3: "An intermediary that chooses to forward the message MUST first remove
        // the received Content-Length field and process the Transfer-Encoding". Left in, it
        // would frame the client's response and cut its body short.
        headers.remove(http::header::CONTENT_LENGTH);
    }
    let keep_alive = reusable && fields.persists(version);
    Ok(Some(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

/// What the framing and connection fields of a head say.
#[derive(Debug, Default)]
struct FramingFields {
    content_length: Option<u64>,
    codings: TransferCodings,
    close: bool,
    keep_alive: bool,
}

impl FramingFields {
    /// Notes one field; `true` when it is hop-by-hop and must not be forwarded. Names listed in
    /// `Connection` (other than `close` and `keep-alive`) are added to `named`.
    fn read(
        &mut self,
        name: &str,
        value: &[u8],
        named: &mut Vec<HeaderName>,
    ) -> Result<bool, Error> {
        let is = |n: &str| name.len() == n.len() && name.eq_ignore_ascii_case(n);
        if is("content-length") {
            self.content_length =
                Some(content_length(value, self.content_length).ok_or(Error::InvalidLength)?);
            return Ok(false);
        }
        if is("transfer-encoding") {
            self.codings.add(value);
            return Ok(true);
        }
        if is("connection") {
            for option in connection_options(value) {
                match option {
                    ConnectionOption::Close => self.close = true,
                    ConnectionOption::KeepAlive => self.keep_alive = true,
                    // An upstream may not upgrade a connection the gateway did not ask it to.
                    ConnectionOption::Upgrade => {}
                    ConnectionOption::Field(field) => match HeaderName::from_bytes(field) {
                        Ok(n) if !kept_despite_connection(&n) => named.push(n),
                        _ => {}
                    },
                }
            }
            return Ok(true);
        }
        Ok(
            ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"]
                .into_iter()
                .any(is),
        )
    }

    /// Both a `Transfer-Encoding` and a `Content-Length`: a sign of smuggling or response
    /// splitting (RFC 9112 6.3).
    fn both_framings(&self) -> bool {
        self.codings.coding() != Coding::Absent && self.content_length.is_some()
    }

    /// HTTP/1.1 persists unless `Connection: close`; HTTP/1.0 only with `keep-alive`.
    fn persists(&self, version: Version) -> bool {
        !self.close && (version == Version::HTTP_11 || self.keep_alive)
    }
}

/// The body's framing, and whether that framing lets the connection be reused.
fn framing(
    method: &Method,
    status: StatusCode,
    fields: &FramingFields,
) -> Result<(Framing, bool), Error> {
    // Both framing fields on one message: a sign of smuggling or response splitting (RFC 9112
    // 6.3); the message is read by its Transfer-Encoding and the connection not reused.
    let reusable = !fields.both_framings();
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, reusable));
    }
    Ok(match fields.codings.coding() {
        Coding::Chunked => (Framing::Chunked, reusable),
        // RFC 9112 6.3 lets a response whose final coding is not chunked run to the close, but
        // the gateway would then forward coded bytes labelled as plain ones (the coding is
        // hop-by-hop): refused as a bad gateway, as nginx does.
        Coding::Unsupported | Coding::Invalid => return Err(Error::UnsupportedCoding),
        Coding::Absent => match fields.content_length {
            Some(0) => (Framing::Empty, true),
            Some(n) => (Framing::Length(n), true),
            None => (Framing::Close, false),
        },
    })
}

/// Whether `buf` starts with a complete final (non-1xx) response head, after any complete
/// informational ones: the sign that an upstream answered before reading the whole request body.
pub fn final_head_ready(buf: &[u8]) -> bool {
    let mut rest = buf;
    loop {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
        let (response, parsed) = parse_raw(rest, &mut fields);
        match parsed {
            Ok(httparse::Status::Complete(n)) => {
                if response.code.is_some_and(|c| (100..200).contains(&c)) {
                    rest = &rest[n..];
                } else {
                    return true;
                }
            }
            // Malformed: the head reader reports it.
            Err(_) => return true,
            Ok(httparse::Status::Partial) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &str, method: Method) -> Result<Option<Head>, Error> {
        let mut buf = BytesMut::from(wire);
        parse(&mut buf, &method)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let cases: [(&str, Method, Framing, bool); 8] = [
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Method::GET,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
                Method::GET,
                Framing::Length(5),
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                Method::HEAD,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 204 No Content\r\n\r\n",
                Method::GET,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 304 Not Modified\r\ncontent-length: 9\r\n\r\n",
                Method::GET,
                Framing::Empty,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                Method::GET,
                Framing::Chunked,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
                Method::GET,
                Framing::Chunked,
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\n\r\n",
                Method::GET,
                Framing::Close,
                false,
            ),
        ];
        for (wire, method, framing, keep_alive) in cases {
            let h = head(wire, method).unwrap().unwrap();
            assert_eq!((h.framing, h.keep_alive), (framing, keep_alive), "{wire}");
        }
    }

    #[test]
    fn content_length_beside_transfer_encoding_is_not_forwarded() {
        for wire in [
            "HTTP/1.1 200 OK\r\ncontent-length: 62\r\ntransfer-encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n",
        ] {
            let h = head(wire, Method::GET).unwrap().unwrap();
            assert!(h.headers.is_empty(), "{:?}", h.headers);
            assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        }
    }

    #[test]
    fn codings_other_than_chunked_are_refused() {
        for te in ["gzip", "gzip, chunked", "chunked, gzip", "chunked, chunked"] {
            let wire = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: {te}\r\n\r\n");
            assert!(
                matches!(head(&wire, Method::GET), Err(Error::UnsupportedCoding)),
                "{te}"
            );
        }
        // No body to decode: the coding does not matter.
        let wire = "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n";
        assert!(head(wire, Method::HEAD).unwrap().is_some());
    }

    #[test]
    fn connection_header_and_version_decide_persistence() {
        let h = head(
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        );
        assert!(!h.unwrap().unwrap().keep_alive);
        let h = head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n", Method::GET);
        assert!(!h.unwrap().unwrap().keep_alive);
        let h = head(
            "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n",
            Method::GET,
        );
        let h = h.unwrap().unwrap();
        assert!(h.keep_alive);
        assert_eq!(h.version, Version::HTTP_10);
    }

    #[test]
    fn head_is_consumed_and_values_kept() {
        let mut buf = BytesMut::from("HTTP/1.1 201 Created\r\nx-a: 1\r\nx-a: 2\r\nlocation: /n\r\ncontent-length: 2\r\n\r\nhi");
        let h = parse(&mut buf, &Method::POST).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        let all: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(all, ["1", "2"]);
        assert_eq!(h.headers["location"], "/n");
        assert_eq!(&buf[..], b"hi", "the body's first bytes stay in the buffer");
    }

    #[test]
    fn hop_by_hop_fields_are_not_kept() {
        let wire = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nKeep-Alive: timeout=5\r\nx-private: 1\r\nTransfer-Encoding: chunked\r\nUpgrade: h2c\r\nTrailer: x-t\r\nx-kept: yes\r\n\r\n";
        let h = head(wire, Method::GET).unwrap().unwrap();
        assert_eq!(h.headers.len(), 1, "{:?}", h.headers);
        assert_eq!(h.headers["x-kept"], "yes");
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
    }

    #[test]
    fn bad_heads_are_errors_and_partial_ones_wait() {
        assert!(head("HTTP/1.1 200 OK\r\ncontent-le", Method::GET)
            .unwrap()
            .is_none());
        assert!(matches!(
            head(
                "HTTP/1.1 200 OK\r\ncontent-length: 1, 2\r\n\r\n",
                Method::GET
            ),
            Err(Error::InvalidLength)
        ));
        assert!(matches!(
            head("HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", Method::GET),
            Err(Error::InvalidLength)
        ));
        assert!(matches!(
            head("SMTP ready\r\n\r\n", Method::GET),
            Err(Error::Parse(_))
        ));
        assert!(matches!(
            head("HTTP/1.1 099 Odd\r\n\r\n", Method::GET),
            Err(Error::InvalidStatus(99))
        ));
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: v\r\n")).collect();
        let wire = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert!(matches!(head(&wire, Method::GET), Err(Error::HeadTooLarge)));
        let huge = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD));
        assert!(matches!(head(&huge, Method::GET), Err(Error::HeadTooLarge)));
    }

    #[test]
    fn early_final_heads_are_seen_past_informational_ones() {
        assert!(!final_head_ready(b"HTTP/1.1 100 Continue\r\n\r\n"));
        assert!(!final_head_ready(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413"
        ));
        assert!(final_head_ready(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 413 Too Large\r\n\r\n"
        ));
        assert!(final_head_ready(
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
        ));
    }
}

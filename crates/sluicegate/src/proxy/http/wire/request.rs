//! Parsing a client's request head and reading what frames its body (RFC 9112 2–6).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::HeaderMap;
use http::{Method, Uri, Version};

use super::fields::{InvalidField, Spans};
use super::{
    connection_options, content_length, tokens, Coding, ConnectionOption, TransferCodings,
};

/// Header fields parsed at most in a request head (hyper's and nginx's order of magnitude).
pub const MAX_FIELDS: usize = 100;

/// Why a request head was refused; each is answered before the connection closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("request head too large or with too many fields")]
    TooLarge,
    /// Well-formed, but asks for something the gateway does not implement (501).
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head with what the connection needs to know about it.
#[derive(Debug)]
pub struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: BodyFraming,
    /// Whether the client expects the connection to stay open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expects_continue: bool,
    /// `TE: trailers`: the client reads trailer fields after a chunked body. Without it they
    /// are not sent, as hyper does: clients that never asked may take them for the next head.
    pub accepts_trailers: bool,
    /// An HTTP/1.1 request to switch to WebSocket (`Connection: upgrade`, `Upgrade:
    /// websocket`). Other upgrades (notably `h2c`, which curl offers on cleartext) are
    /// hop-by-hop and dropped: the gateway speaks HTTP/2 by prior knowledge or ALPN instead.
    pub websocket: bool,
}

/// Fields of the head that frame the body or describe the connection.
#[derive(Default)]
struct Framing {
    content_length: Option<u64>,
    codings: TransferCodings,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
    trailers: bool,
    connection_upgrade: bool,
    upgrade_websocket: bool,
}

/// Parses one request head from the front of `buf`, consuming it. `Ok(None)`: incomplete.
/// `max` bounds how much may be buffered without a complete head.
pub fn parse(buf: &mut BytesMut, max: usize) -> Result<Option<RequestHead>, HeadError> {
    // Empty lines before a request are tolerated (RFC 9112 2.2: a server "SHOULD ignore at
    // least one empty line (CRLF) received prior to the request-line"), bare LF ones too: they
    // are between messages. A lone CR is no line: left to httparse, which refuses it.
    let mut blank = 0;
    loop {
        match buf[blank..] {
            [b'\r', b'\n', ..] => blank += 2,
            [b'\n', ..] => blank += 1,
            _ => break,
        }
    }
    if blank > 0 {
        let _ = buf.split_to(blank);
    }
    let mut fields = [const { MaybeUninit::uninit() }; MAX_FIELDS];
    let mut request = httparse::Request::new(&mut []);
    let parsed = request.parse_with_uninit_headers(buf, &mut fields);
    let used = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(parse_error(e))),
    };
    // RFC 9112 2.2: "a recipient MAY recognize a single LF as a line terminator". The gateway
    // does not: a server behind another proxy that reads `Dummy: x<LF>Content-Length: 23` as
    // one field frames the body differently, and the request hidden in it reaches the gateway
    // alone (llhttp's vector "Missing CR between headers").
    if has_bare_lf(&buf[..used]) {
        return Err(HeadError::Malformed("line ending without CR"));
    }
    let method = Method::from_bytes(request.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let version = match request.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let target = request.path.unwrap_or_default();
    // httparse and `Uri` let bytes above 0x7F through, but a request-target is ASCII (RFC 9112
    // 3.2, RFC 3986 2). RFC 9112 3: "Recipients of an invalid request-line SHOULD respond with
    // either a 400 (Bad Request) error or a 301 ... A recipient SHOULD NOT attempt to
    // autocorrect and then process the request". Passed on raw, a server that decodes or
    // normalises Unicode (`／` to `/`) reads another path than the one routes matched.
    if !target.is_ascii() {
        return Err(HeadError::Malformed("non-ASCII request target"));
    }
    // A fragment is never part of a request-target (RFC 9112 3.2), and `Uri` silently drops
    // one: refused rather than forwarded as a different target than the client sent.
    if target.contains('#') {
        return Err(HeadError::Malformed("fragment in the request target"));
    }
    let target_at = target.as_ptr() as usize - buf.as_ptr() as usize;
    let target_len = target.len();
    let mut spans = Spans::<MAX_FIELDS>::new(buf);
    let mut framing = Framing::default();
    for f in request.headers.iter() {
        framing.read(f.name, f.value)?;
        spans.push(f.name.as_bytes(), f.value);
    }
    // The head's bytes are frozen once; the target and every value are slices of them.
    let head: Bytes = buf.split_to(used).freeze();
    let uri = Uri::from_maybe_shared(head.slice(target_at..target_at + target_len))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    // Room for the fields the pipeline adds to every request (X-Request-Id, and TE or Host):
    // growing the map rehashes it. X-Forwarded-* go straight into an HTTP/1.1 upstream's
    // head, and the rarer paths that put them in the map reserve for them there; more room
    // than that made a one-field request's map outgrow the allocator's small blocks.
    let headers = spans.to_map(&head, 2).map_err(|e| {
        HeadError::Malformed(match e {
            InvalidField::Name => "invalid header name",
            InvalidField::Value => "invalid header value",
        })
    })?;
    let body = framing.body(version)?;
    let keep_alive = !framing.close && (version == Version::HTTP_11 || framing.keep_alive);
    Ok(Some(RequestHead {
        method,
        uri,
        version,
        headers,
        body,
        keep_alive,
        expects_continue: framing.expect_continue && version == Version::HTTP_11,
        accepts_trailers: framing.trailers,
        websocket: framing.connection_upgrade
            && framing.upgrade_websocket
            && version == Version::HTTP_11,
    }))
}

/// Whether a parsed head holds a line feed not preceded by a carriage return. httparse refuses
/// a CR that is not followed by LF, so in a head it parsed every CR ends a line, and a bare LF
/// shows as more LFs than CRs: counted, which costs a few instructions per 16 bytes.
fn has_bare_lf(head: &[u8]) -> bool {
    let (mut cr, mut lf) = (0usize, 0usize);
    for &b in head {
        cr += usize::from(b == b'\r');
        lf += usize::from(b == b'\n');
    }
    cr != lf
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "unsupported HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

impl Framing {
    fn read(&mut self, name: &str, value: &[u8]) -> Result<(), HeadError> {
        let is = |n: &str| name.len() == n.len() && name.eq_ignore_ascii_case(n);
        if is("content-length") {
            self.content_length = Some(content_length(value, self.content_length).ok_or(
                HeadError::Malformed("invalid or conflicting Content-Length"),
            )?);
        } else if is("transfer-encoding") {
            self.codings.add(value);
        } else if is("connection") {
            for option in connection_options(value) {
                match option {
                    ConnectionOption::Close => self.close = true,
                    ConnectionOption::KeepAlive => self.keep_alive = true,
                    ConnectionOption::Upgrade => self.connection_upgrade = true,
                    ConnectionOption::Field(_) => {}
                }
            }
        } else if is("upgrade") {
            self.upgrade_websocket |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"websocket"));
        } else if is("te") {
            self.trailers |= tokens(value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
        } else if is("expect") {
            self.expect_continue = value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
        Ok(())
    }

    /// The body's framing (RFC 9112 6.3). Where the RFC lets a recipient guess, this refuses:
    /// a proxy that frames a request differently from the server behind it is a request
    /// smuggling bug.
    fn body(&self, version: Version) -> Result<BodyFraming, HeadError> {
        let coding = self.codings.coding();
        if coding == Coding::Absent {
            return Ok(match self.content_length {
                None | Some(0) => BodyFraming::None,
                Some(n) => BodyFraming::Length(n),
            });
        }
        // RFC 9112 6.3: "If a message is received with both a Transfer-Encoding and a
        // Content-Length header field, the Transfer-Encoding overrides the Content-Length.
        // Such a message might indicate an attempt to perform request smuggling ... and ought
        // to be handled as an error."
        if self.content_length.is_some() {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        // RFC 9112 6.1: "A server or client that receives an HTTP/1.0 message containing a
        // Transfer-Encoding header field MUST treat the message as if the framing is faulty".
        if version == Version::HTTP_10 {
            return Err(HeadError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        match coding {
            Coding::Chunked | Coding::Absent => Ok(BodyFraming::Chunked),
            Coding::Unsupported => Err(HeadError::NotImplemented(
                "transfer codings other than chunked",
            )),
            Coding::Invalid => Err(HeadError::Malformed(
                "chunked is not the single final transfer coding",
            )),
        }
    }
}

/// How a request body is delimited on the wire, as the gateway sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    None,
    Length(u64),
    Chunked,
}

/// Writes a request head: request line, the fields `put_fields` writes (which must not include
/// framing fields), then the framing fields for `upload`. `implies_body`: the method is one a
/// server expects a body with (POST, PUT, PATCH), which is then told an empty one is empty.
pub fn encode_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &str,
    upload: Upload,
    implies_body: bool,
    put_fields: impl FnOnce(&mut Vec<u8>),
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    // RFC 9112 3.2.1: "If the target URI's path component is empty, the client MUST send "/"
    // as the path within the origin-form": `http://a?q` is sent as `/?q`, not `?q`.
    if target.is_empty() || target.starts_with('?') {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    put_fields(out);
    match upload {
        Upload::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Upload::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        Upload::None if implies_body => out.extend_from_slice(b"content-length: 0\r\n"),
        Upload::None => {}
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(wire: &str) -> Result<Option<RequestHead>, HeadError> {
        let mut buf = BytesMut::from(wire);
        parse(&mut buf, 64 * 1024)
    }

    #[test]
    fn simple_get_keeps_its_fields_and_leaves_the_rest() {
        let mut buf =
            BytesMut::from("GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-A: 2\r\n\r\nGET");
        let h = parse(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri.path_and_query().unwrap().as_str(), "/a?b=1");
        assert_eq!(h.version, Version::HTTP_11);
        assert_eq!(h.headers.get_all("x-a").iter().count(), 2);
        assert_eq!(h.body, BodyFraming::None);
        assert!(h.keep_alive);
        assert_eq!(&buf[..], b"GET");
    }

    #[test]
    fn partial_heads_wait_and_oversized_ones_fail() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
        let mut buf = BytesMut::from(format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(2000)).as_str());
        assert_eq!(parse(&mut buf, 1024).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..=MAX_FIELDS).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            head(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn body_framing() {
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyFraming::Length(5));
        let h = head("POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyFraming::Length(5));
        let h = head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.body, BodyFraming::Chunked);
        for unsupported in [
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(
                matches!(head(unsupported), Err(HeadError::NotImplemented(_))),
                "{unsupported:?}"
            );
        }
        for bad in [
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: \r\n\r\n",
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(matches!(head(bad), Err(HeadError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn connection_persistence_and_expect() {
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        let h = head("PUT / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n");
        assert!(h.unwrap().unwrap().expects_continue);
        assert!(
            !head("GET / HTTP/1.1\r\n\r\n")
                .unwrap()
                .unwrap()
                .accepts_trailers
        );
        assert!(
            head("GET / HTTP/1.1\r\nTE: gzip, Trailers\r\n\r\n")
                .unwrap()
                .unwrap()
                .accepts_trailers
        );
    }

    #[test]
    fn websocket_upgrades_are_recognised() {
        let ws = |wire: &str| head(wire).unwrap().unwrap().websocket;
        assert!(ws(
            "GET / HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
        assert!(
            !ws("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
            "no Connection: upgrade"
        );
        assert!(!ws(
            "GET / HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
        ));
        assert!(!ws(
            "GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
        ));
    }

    #[test]
    fn malformed_request_lines_are_refused() {
        for bad in [
            "GET / HTTP/2.0\r\n\r\n",
            "G@T / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        ] {
            assert!(matches!(head(bad), Err(HeadError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn bare_line_feeds_are_refused() {
        for bad in [
            "GET / HTTP/1.1\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\n\n",
            "GET / HTTP/1.1\nHost: x\n\n",
            // llhttp's "Missing CR between headers": a proxy that takes the LF for part of the
            // value sees no Content-Length, one request, and "GET /admin" as a field value.
            "GET / HTTP/1.1\r\nHost: localhost\r\nDummy: x\nContent-Length: 23\r\n\r\n\
             GET / HTTP/1.1\r\nDummy: GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ] {
            assert_eq!(
                head(bad).unwrap_err(),
                HeadError::Malformed("line ending without CR"),
                "{bad:?}"
            );
        }
        // Blank lines before a request are not part of its head (RFC 9112 2.2).
        assert!(head("\n\r\nGET / HTTP/1.1\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn non_ascii_targets_are_refused() {
        for bad in [
            "GET /\u{3b4}\u{b6}/pope?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /a?q=\u{fc} HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /\u{ff0f}admin HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            assert_eq!(
                head(bad).unwrap_err(),
                HeadError::Malformed("non-ASCII request target"),
                "{bad:?}"
            );
        }
        let mut buf = BytesMut::from(&b"GET /\xff HTTP/1.1\r\n\r\n"[..]);
        assert!(parse(&mut buf, 1024).is_err());
        // Percent-encoded, the same path is fine.
        assert!(head("GET /%CE%B4 HTTP/1.1\r\n\r\n").unwrap().is_some());
    }

    #[test]
    fn fragments_are_refused_not_dropped() {
        for bad in ["GET /a#b HTTP/1.1\r\n\r\n", "GET /a?q#b HTTP/1.1\r\n\r\n"] {
            assert_eq!(
                head(bad).unwrap_err(),
                HeadError::Malformed("fragment in the request target"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_empty_path_is_sent_as_a_slash() {
        let line = |target: &str| {
            let mut out = Vec::new();
            encode_head(&mut out, &Method::GET, target, Upload::None, false, |_| {});
            String::from_utf8(out).unwrap()
        };
        assert_eq!(line(""), "GET / HTTP/1.1\r\n\r\n");
        assert_eq!(line("?q"), "GET /?q HTTP/1.1\r\n\r\n");
        assert_eq!(line("/a?q"), "GET /a?q HTTP/1.1\r\n\r\n");
        assert_eq!(line("*"), "GET * HTTP/1.1\r\n\r\n");
        // Found by fuzz/request_roundtrip: an absolute-form target with an empty path and a
        // query has `?q` as its path and query, which was sent as is (`GET ?q HTTP/1.1`).
        let h = head("GET http://a?q HTTP/1.1\r\n\r\n").unwrap().unwrap();
        let target = h.uri.path_and_query().unwrap().as_str();
        assert_eq!(target, "?q");
        let mut out = Vec::new();
        encode_head(&mut out, &h.method, target, Upload::None, false, |_| {});
        let mut again = BytesMut::from(&out[..]);
        let again = parse(&mut again, 1024).unwrap().unwrap();
        assert_eq!(again.uri, "/?q");
    }

    #[test]
    fn leading_blank_lines_are_skipped() {
        let h = head("\r\n\r\nGET / HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(h.method, Method::GET);
        // A CR that may be the first half of an empty line waits for the rest.
        let mut buf = BytesMut::from("\r\n\r");
        assert!(parse(&mut buf, 1024).unwrap().is_none());
        assert_eq!(&buf[..], b"\r");
        // A lone CR is not an empty line: "\rOST" is no method to skip to.
        for bad in ["\rOST / HTTP/1.1\r\n\r\n", "\r\rGET / HTTP/1.1\r\n\r\n"] {
            assert!(head(bad).is_err(), "{bad:?}");
        }
    }
}

//! llhttp's vector set (llhttp 9.4.2, in the shared `vectors/llhttp` folder, read in place and
//! never copied here) run through the wire codec, plus RFC 9112's own examples.
//!
//! Each case's ```http block becomes bytes as llhttp's runner makes them; the request parser
//! (with the strict chunked decoder) or the response parser (with the lenient one, for a GET
//! unless the case skips bodies) reads them message after message, as a connection would, and
//! the outcome is compared with what llhttp's log says:
//!
//! - `error code=5` ("Data after `Connection: close`") is [`End::DataAfterClose`]: a message
//!   that does not keep the connection followed by more bytes, which the gateway never parses;
//! - `error code=22` / `23` (llhttp pauses on CONNECT, an upgrade or `PRI`) is
//!   [`End::HandedOver`]: the bytes after that message are not HTTP/1.1 to the parser;
//! - any other `error code=` is [`End::Refused`]; no error is [`End::Accepted`] (every byte read,
//!   the last message possibly incomplete: llhttp too waits for more);
//! - the number of heads read (`headers complete` in the log) must agree as well, so that a
//!   framing difference shows even where both sides end the same way.
//!
//! A `request-lenient-*` / `response-lenient-*` case is one llhttp accepts only with that
//! leniency on: a strict parser must refuse it (or close before reading on, for the keep-alive
//! leniency). `pause` cases pause and resume, which changes nothing here.
//!
//! Every case where the gateway and llhttp disagree is in [`DISAGREEMENTS`] with the reason;
//! the test fails on a disagreement not listed there, and on an entry that no longer disagrees.

use std::collections::BTreeMap;
use std::path::Path;

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode, Version};
use sluicegate::proxy::http::wire::chunked::{ChunkError, ChunkedDecoder, Decoded};
use sluicegate::proxy::http::wire::request::{self, BodyFraming, HeadError, RequestHead};
use sluicegate::proxy::http::wire::response::{self, Framing};

/// llhttp's request and response vectors, in the workspace's shared folder.
const VECTORS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/llhttp"
);
/// Largest request head buffered (the server's default is of this order).
const MAX_HEAD: usize = 64 * 1024;

/// How reading a connection's bytes ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Every byte read as messages, the last one possibly incomplete.
    Accepted,
    /// A message refused.
    Refused,
    /// A message that does not keep the connection open, followed by more bytes.
    DataAfterClose,
    /// CONNECT, an upgrade or a 101: what follows is not HTTP/1.1.
    HandedOver,
}

/// What reading a case's bytes came to: how it ended, after how many complete heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    end: End,
    heads: usize,
}

/// What llhttp's log says a strict parser does with a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expected {
    /// llhttp in its default mode.
    Exactly(Outcome),
    /// A lenient case: strict llhttp refuses it (or closes before reading on).
    StrictRefuses,
}

impl Expected {
    fn agrees(self, ours: Outcome) -> bool {
        match self {
            Expected::Exactly(theirs) => theirs == ours,
            Expected::StrictRefuses => matches!(ours.end, End::Refused | End::DataAfterClose),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
}

/// One `###` case of a vector file.
#[derive(Debug)]
struct Case {
    /// `request/transfer-encoding.md`
    file: String,
    /// The case's heading; a repeated heading in a file gets ` (2)`, ` (3)`, ...
    title: String,
    kind: Kind,
    /// The meta `type`, e.g. `request-lenient-headers`.
    meta_type: String,
    /// `skipBody`: llhttp's callback tells it the message has no body (as for a HEAD).
    skip_body: bool,
    /// `None`: the block holds a `${...}` expression.
    wire: Option<Vec<u8>>,
    expected: Expected,
}

/// A case on which the gateway and llhttp disagree, on purpose.
struct Known {
    file: &'static str,
    title: &'static str,
    /// How the gateway ends reading the case.
    ours: End,
    why: &'static str,
}

/// Every case on which the gateway's codec and llhttp (strict mode) disagree, and why the
/// gateway is right. Kept exact by `llhttp_vectors`: an entry that stops disagreeing fails it.
const DISAGREEMENTS: &[Known] = &[
    // Upgrades.
    Known {
        file: "request/connection.md",
        title: "Setting a flag and pausing",
        ours: End::Accepted,
        why: UPGRADE_IGNORED,
    },
    Known {
        file: "request/connection.md",
        title: "Emitting part of body and pausing",
        ours: End::Accepted,
        why: UPGRADE_IGNORED,
    },
    Known {
        file: "request/connection.md",
        title: "Upgrade POST request",
        ours: End::Refused,
        why: UPGRADE_IGNORED,
    },
    Known {
        file: "request/method.md",
        title: "PRI request HTTP2",
        ours: End::Refused,
        why: "the vector is `PRI * HTTP/1.1`, an HTTP/1.1 request with an unknown method, which \
              the parser reads as such; `SM` after it is no request (400). The HTTP/2 preface \
              is `PRI * HTTP/2.0` (RFC 9113 3.4), recognised by the connection \
              (downstream/mod.rs) before this parser sees a byte",
    },
    // Heads judged when complete.
    Known {
        file: "request/content-length.md",
        title: "Error on `Content-Length` overflow",
        ours: End::Accepted,
        why: HEAD_INCOMPLETE,
    },
    Known {
        file: "request/content-length.md",
        title: "Error on duplicate `Content-Length`",
        ours: End::Accepted,
        why: HEAD_INCOMPLETE,
    },
    // Methods and versions.
    Known {
        file: "request/invalid.md",
        title: "HTTP protocol and ANNOUNCE method",
        ours: End::Accepted,
        why: EXTENSION_METHOD,
    },
    Known {
        file: "request/invalid.md",
        title: "Invalid method",
        ours: End::Accepted,
        why: EXTENSION_METHOD,
    },
    Known {
        file: "request/method.md",
        title: "SOURCE request with ICE",
        ours: End::Refused,
        why: NOT_HTTP,
    },
    Known {
        file: "request/method.md",
        title: "OPTIONS request with RTSP",
        ours: End::Refused,
        why: NOT_HTTP,
    },
    Known {
        file: "request/method.md",
        title: "ANNOUNCE request with RTSP",
        ours: End::Refused,
        why: NOT_HTTP,
    },
    Known {
        file: "request/sample.md",
        title: "No HTTP version",
        ours: End::Refused,
        why: "an HTTP/0.9 simple request: RFC 9112 3 requires `request-line = method SP \
              request-target SP HTTP-version`, and the gateway speaks HTTP/1.x only",
    },
    Known {
        file: "response/sample.md",
        title: "RTSP response",
        ours: End::Refused,
        why: NOT_HTTP,
    },
    Known {
        file: "response/sample.md",
        title: "ICE response",
        ours: End::Refused,
        why: NOT_HTTP,
    },
    Known {
        file: "response/sample.md",
        title: "HTTP version 0.9",
        ours: End::Refused,
        why: "HTTP/0.9 responses have no status line at all, so `HTTP/0.9 200 OK` is no \
              response; upstreams must answer in HTTP/1.x (RFC 9112 4: status-line = \
              HTTP-version SP status-code SP [ reason-phrase ]) or get 502",
    },
    // Request targets.
    Known {
        file: "request/uri.md",
        title: "Quotes in URI",
        ours: End::Refused,
        why: "`\"` and `\\` are not allowed in a URI (RFC 3986 2), so the request-line is \
              invalid, and RFC 9112 3: \"Recipients of an invalid request-line SHOULD \
              respond with either a 400 (Bad Request) error or a 301 (Moved Permanently) \
              redirect with the request-target properly encoded. A recipient SHOULD NOT \
              attempt to autocorrect and then process the request without a redirect\"",
    },
    Known {
        file: "request/uri.md",
        title: "Fragment in URI",
        ours: End::Refused,
        why: "a fragment is not part of any request-target form (RFC 9112 3.2: `origin-form = \
              absolute-path [ \"?\" query ]`; `absolute-URI` has none either, RFC 3986 4.3), \
              and `Uri` would drop it silently, so the gateway would forward another target \
              than the client sent: refused, as RFC 9112 3 advises for an invalid request-line",
    },
    // Transfer codings.
    Known {
        file: "request/transfer-encoding.md",
        title: "POST with `chunked` as last transfer-encoding",
        ours: End::Refused,
        why: CODING_NOT_IMPLEMENTED,
    },
    Known {
        file: "request/transfer-encoding.md",
        title: "POST with `chunked` as last transfer-encoding (multiple headers)",
        ours: End::Refused,
        why: CODING_NOT_IMPLEMENTED,
    },
    Known {
        file: "response/transfer-encoding.md",
        title: "`chunked` before other transfer-encoding",
        ours: End::Refused,
        why: RESPONSE_CODING,
    },
    Known {
        file: "response/transfer-encoding.md",
        title: "multiple transfer-encoding where chunked is not the last one",
        ours: End::Refused,
        why: RESPONSE_CODING,
    },
    Known {
        file: "response/transfer-encoding.md",
        title: "`chunkedchunked` transfer-encoding does not enable chunked enconding",
        ours: End::Refused,
        why: RESPONSE_CODING,
    },
    // Chunk lines.
    Known {
        file: "request/transfer-encoding.md",
        title: "No extension after semicolon",
        ours: End::Accepted,
        why: EXTENSIONS_SKIPPED,
    },
    Known {
        file: "request/transfer-encoding.md",
        title: "Unbalanced chunk extensions quoting",
        ours: End::Accepted,
        why: EXTENSIONS_SKIPPED,
    },
    Known {
        file: "response/transfer-encoding.md",
        title: "No extension after semicolon",
        ours: End::Accepted,
        why: EXTENSIONS_SKIPPED,
    },
    Known {
        file: "response/transfer-encoding.md",
        title: "Unbalanced chunk extensions quoting",
        ours: End::Accepted,
        why: EXTENSIONS_SKIPPED,
    },
    Known {
        file: "request/transfer-encoding.md",
        title: "Space after chunk header",
        ours: End::Accepted,
        why: SPACE_AFTER_SIZE,
    },
    Known {
        file: "request/transfer-encoding.md",
        title: "Space after chunk header (lenient)",
        ours: End::Accepted,
        why: SPACE_AFTER_SIZE,
    },
    Known {
        file: "response/transfer-encoding.md",
        title: "Trailing space on chunked body",
        ours: End::Accepted,
        why: SPACE_AFTER_SIZE,
    },
    // Bare LF from upstreams.
    Known {
        file: "response/invalid.md",
        title: "Only LFs present and no body",
        ours: End::Accepted,
        why: UPSTREAM_BARE_LF,
    },
    Known {
        file: "response/invalid.md",
        title: "Only LFs present and no body (lenient)",
        ours: End::Accepted,
        why: UPSTREAM_BARE_LF,
    },
    Known {
        file: "response/invalid.md",
        title: "Only LFs present",
        ours: End::Accepted,
        why: UPSTREAM_BARE_LF,
    },
    Known {
        file: "response/invalid.md",
        title: "Only LFs present (lenient)",
        ours: End::Accepted,
        why: UPSTREAM_BARE_LF,
    },
    Known {
        file: "response/sample.md",
        title: "No carriage ret",
        ours: End::Accepted,
        why: UPSTREAM_BARE_LF,
    },
    Known {
        file: "response/sample.md",
        title: "No carriage ret (lenient)",
        ours: End::Accepted,
        why: UPSTREAM_BARE_LF,
    },
];

const UPGRADE_IGNORED: &str = "the gateway implements WebSocket upgrades only; any other \
    `Upgrade` is dropped as hop-by-hop (RFC 9110 7.8: \"A server MAY ignore a received Upgrade \
    header field if it wishes to continue using the current protocol on that connection\"), so \
    the connection stays HTTP/1.1 and what follows the message is read as the next request \
    (here incomplete, or not a request). llhttp stops and leaves the rest to its caller";
const HEAD_INCOMPLETE: &str = "the vector ends before the blank line that ends the head, and \
    the parser judges a head once it is complete; completed, it is refused \
    (`completed_heads_are_refused`)";
const EXTENSION_METHOD: &str = "a method is any token (RFC 9110 9.1), and which ones exist is \
    the origin's business (\"An origin server that receives a request method that is \
    unrecognized or not implemented SHOULD respond with the 501\"); llhttp knows a fixed list per \
    protocol, and refuses RTSP's methods over HTTP";
const NOT_HTTP: &str = "not HTTP: RFC 9112 2.3 `HTTP-version = HTTP-name \"/\" DIGIT \".\" \
    DIGIT`, `HTTP-name = %s\"HTTP\"`; llhttp also speaks RTSP and ICE";
const CODING_NOT_IMPLEMENTED: &str = "`deflate, chunked`: the framing is known, but the gateway \
    does not implement `deflate` and would forward the decoded body labelled as something it \
    is not. RFC 9112 6.1: \"A server that receives a request message with a transfer coding it \
    does not understand SHOULD respond with 501 (Not Implemented)\"";
const RESPONSE_CODING: &str = "a response whose final coding is not `chunked` runs to the \
    close (RFC 9112 6.3), but the coding is hop-by-hop and the gateway decodes none but \
    chunked: it would forward coded bytes as plain ones. 502, as nginx does";
const EXTENSIONS_SKIPPED: &str = "chunk extensions are skipped to the end of the line, not \
    parsed (RFC 9112 7.1.1: \"A recipient MUST ignore unrecognized chunk extensions\"), as \
    hyper and nginx do. Invalid by the grammar, but unambiguous: the strict decoder refuses \
    control bytes and any CR or LF not in a CRLF inside them, so the line ends where every \
    parser ends it, and a quoted-string cannot contain CR or LF (RFC 9110 5.6.4)";
const SPACE_AFTER_SIZE: &str = "whitespace after the chunk size is skipped (RFC 9112 7.1.1 \
    allows BWS before `;`), as hyper does; it cannot be read as a digit, so any parser that \
    accepts the line reads the same size";
const UPSTREAM_BARE_LF: &str = "RFC 9112 2.2: \"a recipient MAY recognize a single LF as a \
    line terminator\". Tolerated from upstreams (as in chunked.rs): no one else reads that \
    connection and the client gets a head the gateway writes with CRLFs. Request heads, which \
    may have passed another proxy, are refused";

#[test]
fn llhttp_vectors() {
    let cases = load(Path::new(VECTORS));
    assert!(cases.len() > 200, "only {} cases found", cases.len());
    let mut skipped = 0;
    let mut agreeing = 0;
    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    let mut unexplained = Vec::new();
    let mut seen_known = vec![false; DISAGREEMENTS.len()];
    for case in &cases {
        let Some(wire) = &case.wire else {
            skipped += 1;
            continue;
        };
        let ours = match case.kind {
            Kind::Request => read_requests(wire, case.skip_body),
            Kind::Response => {
                let method = if case.skip_body {
                    Method::HEAD
                } else {
                    Method::GET
                };
                read_responses(wire, &method)
            }
        };
        let known = DISAGREEMENTS
            .iter()
            .position(|k| k.file == case.file && k.title == case.title);
        if let Some(i) = known {
            seen_known[i] = true;
        }
        if case.expected.agrees(ours) {
            agreeing += 1;
            if let Some(i) = known {
                unexplained.push(format!(
                    "{} / {}: listed as a disagreement ({}) but now agrees with llhttp",
                    case.file, case.title, DISAGREEMENTS[i].why
                ));
            }
            continue;
        }
        let class = match case.expected {
            Expected::StrictRefuses => format!("lenient case, ours {:?}", ours.end),
            Expected::Exactly(theirs) if theirs.end == ours.end => {
                format!("both {:?}, heads differ", ours.end)
            }
            Expected::Exactly(theirs) => format!("ours {:?}, llhttp {:?}", ours.end, theirs.end),
        };
        *classes.entry(class).or_default() += 1;
        match known {
            Some(i) if DISAGREEMENTS[i].ours == ours.end => {}
            _ => unexplained.push(format!(
                "{} / {} ({}): ours {:?}, llhttp {:?}\n    {:?}",
                case.file,
                case.title,
                case.meta_type,
                ours,
                case.expected,
                String::from_utf8_lossy(wire),
            )),
        }
    }
    for (known, seen) in DISAGREEMENTS.iter().zip(seen_known) {
        if !seen {
            unexplained.push(format!(
                "{} / {}: listed but no such case",
                known.file, known.title
            ));
        }
    }
    println!(
        "llhttp vectors: {} cases, {} run, {} skipped (${{...}}), {} agreeing, {} disagreeing",
        cases.len(),
        cases.len() - skipped,
        skipped,
        agreeing,
        cases.len() - skipped - agreeing,
    );
    for (class, n) in &classes {
        println!("  {n:3}  {class}");
    }
    assert!(
        unexplained.is_empty(),
        "{} case(s) disagree with llhttp without a reason in DISAGREEMENTS, or the table is stale:\n{}",
        unexplained.len(),
        unexplained.join("\n")
    );
}

/// The two llhttp vectors that stop inside a head, completed: refused once the head is.
#[test]
fn completed_heads_are_refused() {
    for wire in [
        "PUT /url HTTP/1.1\r\nContent-Length: 1000000000000000000000\r\n\r\n",
        "PUT /url HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(wire);
        assert_eq!(
            request::parse(&mut buf, MAX_HEAD).unwrap_err(),
            HeadError::Malformed("invalid or conflicting Content-Length"),
            "{wire:?}"
        );
    }
}

/// One request head from `wire`, which must be accepted.
fn head(wire: &str) -> RequestHead {
    let mut buf = BytesMut::from(wire);
    match request::parse(&mut buf, MAX_HEAD) {
        Ok(Some(head)) => head,
        other => panic!("{wire:?}: {other:?}"),
    }
}

/// The request-line examples of RFC 9112 3.2, one per form of request-target.
#[test]
fn rfc_9112_request_targets() {
    // 3.2.1 origin-form: "GET /where?q=now HTTP/1.1 / Host: www.example.org".
    let h = head("GET /where?q=now HTTP/1.1\r\nHost: www.example.org\r\n\r\n");
    assert_eq!(h.method, Method::GET);
    assert_eq!((h.uri.path(), h.uri.query()), ("/where", Some("q=now")));
    assert_eq!(h.uri.authority(), None);
    assert_eq!(h.headers["host"], "www.example.org");
    assert_eq!(
        (h.version, h.body, h.keep_alive),
        (Version::HTTP_11, BodyFraming::None, true)
    );

    // 3.2.2 absolute-form.
    let h = head("GET http://www.example.org/pub/WWW/TheProject.html HTTP/1.1\r\n\r\n");
    assert_eq!(h.uri.scheme_str(), Some("http"));
    assert_eq!(h.uri.authority().unwrap(), "www.example.org");
    assert_eq!(h.uri.path(), "/pub/WWW/TheProject.html");

    // 3.2.3 authority-form, for CONNECT only (which the gateway then refuses, in target.rs).
    let h = head("CONNECT www.example.com:80 HTTP/1.1\r\nHost: www.example.com:80\r\n\r\n");
    assert_eq!(h.method, Method::CONNECT);
    assert_eq!(h.uri.scheme_str(), None);
    assert_eq!(h.uri.authority().unwrap(), "www.example.com:80");
    assert_eq!(h.uri.path_and_query(), None);

    // 3.2.4 asterisk-form, and the absolute-form a proxy turns into it: "OPTIONS
    // http://www.example.org:8001 HTTP/1.1" is forwarded as "OPTIONS * HTTP/1.1 / Host:
    // www.example.org:8001".
    let h = head("OPTIONS * HTTP/1.1\r\nHost: www.example.org:8001\r\n\r\n");
    assert_eq!(h.method, Method::OPTIONS);
    assert_eq!(h.uri, "*");
    assert_eq!(h.uri.path(), "*");
    let h = head("OPTIONS http://www.example.org:8001 HTTP/1.1\r\n\r\n");
    assert_eq!(h.uri.authority().unwrap(), "www.example.org:8001");
    assert_eq!(h.uri.path(), "/");

    // 3: "request-line = method SP request-target SP HTTP-version", one SP each; 3.2: "No
    // whitespace is allowed in the request-target".
    for bad in [
        "GET  / HTTP/1.1\r\n\r\n",
        "GET / /x HTTP/1.1\r\n\r\n",
        "GET /\tx HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1 \r\n\r\n",
        "GET / http/1.1\r\n\r\n",
        "GET / HTTP/1.10\r\n\r\n",
    ] {
        let mut buf = BytesMut::from(bad);
        assert!(request::parse(&mut buf, MAX_HEAD).is_err(), "{bad:?}");
    }
}

/// A chunked request body with every production of RFC 9112 7.1's grammar (the RFC gives the
/// grammar, not an example body): chunk extensions with token and quoted-string values and
/// BWS, upper- and lower-case hex sizes, a last-chunk of several zeros with an extension, and
/// a trailer section. Decoded as 7.1.3 describes: the data of each chunk in turn, then the
/// trailer fields.
#[test]
fn rfc_9112_chunked_body() {
    let wire = "POST /upload HTTP/1.1\r\nHost: www.example.org\r\nTransfer-Encoding: chunked\r\n\
                TE: trailers\r\nTrailer: Expires\r\n\r\n\
                4\r\nWiki\r\n\
                6;lang=en\r\npedia \r\n\
                E ; name=\"quoted;\\\"value\" ;flag\r\nin \r\n\r\nchunks.\r\n\
                a\r\n0123456789\r\n\
                000;end\r\n\
                Expires: Wed, 21 Oct 2015 07:28:00 GMT\r\nX-Checksum: 42\r\n\r\n\
                GET /next HTTP/1.1\r\nHost: www.example.org\r\n\r\n";
    let mut buf = BytesMut::from(wire);
    let h = request::parse(&mut buf, MAX_HEAD).unwrap().unwrap();
    assert_eq!(h.body, BodyFraming::Chunked);
    assert!(h.accepts_trailers);
    let mut decoder = ChunkedDecoder::strict();
    let (mut data, mut trailers) = (Vec::new(), None);
    loop {
        match decoder.decode(&mut buf).unwrap() {
            Decoded::Data(d) => data.extend_from_slice(&d),
            Decoded::Trailers(t) => trailers = Some(t),
            Decoded::End => break,
            Decoded::NeedMore => panic!("the whole body is there"),
        }
    }
    assert_eq!(data, b"Wikipedia in \r\n\r\nchunks.0123456789");
    let trailers = trailers.unwrap();
    assert_eq!(trailers["expires"], "Wed, 21 Oct 2015 07:28:00 GMT");
    assert_eq!(trailers["x-checksum"], "42");
    // The next request on the connection is untouched.
    assert_eq!(head(std::str::from_utf8(&buf).unwrap()).uri, "/next");

    // 7.1: "chunk-size = 1*HEXDIG", and "Recipients MUST anticipate potentially large
    // hexadecimal numerals and prevent parsing errors due to integer conversion overflows".
    for (body, error) in [
        ("x\r\n", ChunkError::InvalidSize),
        (";a\r\n", ChunkError::InvalidSize),
        ("0x4\r\nWiki\r\n0\r\n\r\n", ChunkError::InvalidSize),
        ("-4\r\n", ChunkError::InvalidSize),
        ("10000000000000000\r\n", ChunkError::InvalidSize),
        ("4\r\nWikiX\r\n", ChunkError::MissingCrlf),
        ("0\r\nno-colon\r\n\r\n", ChunkError::InvalidTrailers),
    ] {
        let mut buf = BytesMut::from(body);
        let mut decoder = ChunkedDecoder::strict();
        let got = loop {
            match decoder.decode(&mut buf) {
                Ok(Decoded::Data(_) | Decoded::Trailers(_)) => {}
                Ok(other) => panic!("{body:?}: {other:?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(got, error, "{body:?}");
    }
}

/// The framing rules of RFC 9112 6.1 and 6.3 with the RFC's own field examples
/// (`Transfer-Encoding: gzip, chunked` in 6.1, `Content-Length: 3495` in RFC 9110 8.6).
#[test]
fn rfc_9112_framing() {
    let framing = |fields: &str, version: &str| {
        let mut buf = BytesMut::from(format!("POST / {version}\r\n{fields}\r\n").as_str());
        request::parse(&mut buf, MAX_HEAD).map(|h| h.unwrap().body)
    };
    assert_eq!(
        framing("Content-Length: 3495\r\n", "HTTP/1.1"),
        Ok(BodyFraming::Length(3495))
    );
    // 6.3 rule 6: no framing field on a request: no body.
    assert_eq!(framing("", "HTTP/1.1"), Ok(BodyFraming::None));
    assert_eq!(
        framing("Transfer-Encoding: chunked\r\n", "HTTP/1.1"),
        Ok(BodyFraming::Chunked)
    );
    // 6.1: "gzip, chunked" frames the body, but the gateway does not implement gzip (501).
    assert!(matches!(
        framing("Transfer-Encoding: gzip, chunked\r\n", "HTTP/1.1"),
        Err(HeadError::NotImplemented(_))
    ));
    for (fields, version) in [
        // 6.3 rule 4: chunked not final in a request: 400.
        ("Transfer-Encoding: chunked, gzip\r\n", "HTTP/1.1"),
        // 6.1: Transfer-Encoding in HTTP/1.0: "treat the message as if the framing is faulty".
        ("Transfer-Encoding: chunked\r\n", "HTTP/1.0"),
        // 6.3 rule 3: both fields: "ought to be handled as an error".
        (
            "Content-Length: 3495\r\nTransfer-Encoding: chunked\r\n",
            "HTTP/1.1",
        ),
        (
            "Transfer-Encoding: chunked\r\nContent-Length: 3495\r\n",
            "HTTP/1.1",
        ),
        // 6.3 rule 5: an invalid Content-Length: 400.
        ("Content-Length: 3495, 3496\r\n", "HTTP/1.1"),
        ("Content-Length: 0x10\r\n", "HTTP/1.1"),
    ] {
        assert!(
            matches!(framing(fields, version), Err(HeadError::Malformed(_))),
            "{fields:?} {version}"
        );
    }

    // 6.3 rules 1, 2 and 8 for responses: no body after HEAD, 1xx, 204 and 304; else a
    // response with no framing field runs to the close.
    let response = |wire: &str, method: Method| {
        let mut buf = BytesMut::from(wire);
        response::parse(&mut buf, &method).unwrap().unwrap().framing
    };
    let cl = "HTTP/1.1 200 OK\r\nContent-Length: 3495\r\n\r\n";
    assert_eq!(response(cl, Method::GET), Framing::Length(3495));
    assert_eq!(response(cl, Method::HEAD), Framing::Empty);
    for status in ["100 Continue", "204 No Content", "304 Not Modified"] {
        let wire = format!("HTTP/1.1 {status}\r\nContent-Length: 3495\r\n\r\n");
        assert_eq!(response(&wire, Method::GET), Framing::Empty, "{status}");
    }
    assert_eq!(
        response("HTTP/1.1 200 OK\r\n\r\n", Method::GET),
        Framing::Close
    );
}

// ---------------------------------------------------------------------------------------------
// Reading a connection's bytes with the gateway's codec.

/// Reads `wire` as the requests of one connection.
fn read_requests(wire: &[u8], skip_body: bool) -> Outcome {
    let mut buf = BytesMut::from(wire);
    let mut heads = 0;
    loop {
        let head = match request::parse(&mut buf, MAX_HEAD) {
            Ok(Some(head)) => head,
            Ok(None) => return Outcome::new(End::Accepted, heads),
            Err(_) => return Outcome::new(End::Refused, heads),
        };
        heads += 1;
        // RFC 9110 9.3.6: after CONNECT the connection is a tunnel (the gateway refuses it).
        if head.method == Method::CONNECT {
            return Outcome::new(End::HandedOver, heads);
        }
        if !skip_body {
            match request_body(&mut buf, &head) {
                Body::Complete => {}
                Body::Incomplete => return Outcome::new(End::Accepted, heads),
                Body::Invalid => return Outcome::new(End::Refused, heads),
            }
        }
        if head.websocket {
            return Outcome::new(End::HandedOver, heads);
        }
        if !head.keep_alive {
            return after_close(&buf, heads);
        }
    }
}

/// Reads `wire` as the responses to requests with `method` on one connection.
fn read_responses(wire: &[u8], method: &Method) -> Outcome {
    let mut buf = BytesMut::from(wire);
    let mut heads = 0;
    loop {
        let head = match response::parse(&mut buf, method) {
            Ok(Some(head)) => head,
            Ok(None) => return Outcome::new(End::Accepted, heads),
            Err(_) => return Outcome::new(End::Refused, heads),
        };
        heads += 1;
        if head.status == StatusCode::SWITCHING_PROTOCOLS {
            return Outcome::new(End::HandedOver, heads);
        }
        if head.status.is_informational() {
            continue;
        }
        let body = match head.framing {
            Framing::Empty => Body::Complete,
            Framing::Length(n) => skip(&mut buf, n),
            Framing::Chunked => chunked(&mut buf, ChunkedDecoder::default()),
            // Everything until the upstream closes is body.
            Framing::Close => return Outcome::new(End::Accepted, heads),
        };
        match body {
            Body::Complete => {}
            Body::Incomplete => return Outcome::new(End::Accepted, heads),
            Body::Invalid => return Outcome::new(End::Refused, heads),
        }
        if !head.keep_alive {
            return after_close(&buf, heads);
        }
    }
}

impl Outcome {
    fn new(end: End, heads: usize) -> Outcome {
        Outcome { end, heads }
    }
}

/// After a message that ends the connection: blank lines are harmless, anything else is never
/// read.
fn after_close(rest: &[u8], heads: usize) -> Outcome {
    if rest.iter().all(|&b| b == b'\r' || b == b'\n') {
        Outcome::new(End::Accepted, heads)
    } else {
        Outcome::new(End::DataAfterClose, heads)
    }
}

enum Body {
    Complete,
    Incomplete,
    Invalid,
}

fn request_body(buf: &mut BytesMut, head: &RequestHead) -> Body {
    match head.body {
        BodyFraming::None => Body::Complete,
        BodyFraming::Length(n) => skip(buf, n),
        BodyFraming::Chunked => chunked(buf, ChunkedDecoder::strict()),
    }
}

fn skip(buf: &mut BytesMut, n: u64) -> Body {
    match usize::try_from(n) {
        Ok(n) if n <= buf.len() => {
            buf.advance(n);
            Body::Complete
        }
        _ => Body::Incomplete,
    }
}

fn chunked(buf: &mut BytesMut, mut decoder: ChunkedDecoder) -> Body {
    loop {
        match decoder.decode(buf) {
            Ok(Decoded::Data(_) | Decoded::Trailers(_)) => {}
            Ok(Decoded::End) => return Body::Complete,
            Ok(Decoded::NeedMore) => return Body::Incomplete,
            Err(_) => return Body::Invalid,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading llhttp's markdown.

/// Every case of every `.md` file under `request/` and `response/`.
fn load(root: &Path) -> Vec<Case> {
    assert!(
        root.is_dir(),
        "llhttp's vectors are missing: expected them in {} (the workspace's shared/vectors/llhttp; \
         see shared/vectors/README.md)",
        root.display()
    );
    let mut cases = Vec::new();
    for (dir, kind) in [("request", Kind::Request), ("response", Kind::Response)] {
        let mut files: Vec<_> = std::fs::read_dir(root.join(dir))
            .unwrap_or_else(|e| panic!("reading {}/{dir}: {e}", root.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "md"))
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "no vector files in {}/{dir}",
            root.display()
        );
        for path in files {
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
            let name = format!("{dir}/{}", path.file_name().unwrap().to_string_lossy());
            parse_file(&name, kind, &text, &mut cases);
        }
    }
    cases
}

fn parse_file(file: &str, kind: Kind, text: &str, cases: &mut Vec<Case>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut title = String::new();
    let mut meta: Option<serde_json::Value> = None;
    let mut titles: BTreeMap<String, usize> = BTreeMap::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with('#') {
            title = line.trim_start_matches('#').trim().to_string();
        } else if let Some(json) = line.strip_prefix("<!-- meta=") {
            let json = json.trim_end().trim_end_matches("-->");
            meta = Some(serde_json::from_str(json).unwrap_or_else(|e| {
                panic!("{file}: bad meta line {line:?}: {e}");
            }));
        } else if line.starts_with("```http") {
            let (block, end) = fenced(&lines, i + 1, file);
            let log_at = (end + 1..lines.len())
                .find(|&j| lines[j].starts_with("```log"))
                .unwrap_or_else(|| panic!("{file} / {title}: no log block"));
            let (log, log_end) = fenced(&lines, log_at + 1, file);
            let meta = meta
                .take()
                .unwrap_or_else(|| panic!("{file} / {title}: no meta line"));
            let meta_type = meta["type"].as_str().unwrap_or_default().to_string();
            assert!(
                meta_type.starts_with(match kind {
                    Kind::Request => "request",
                    Kind::Response => "response",
                }),
                "{file} / {title}: type {meta_type}"
            );
            let n = titles.entry(title.clone()).or_default();
            *n += 1;
            let title = if *n == 1 {
                title.clone()
            } else {
                format!("{title} ({n})")
            };
            let lenient = meta_type.contains("-lenient-");
            cases.push(Case {
                file: file.to_string(),
                title,
                kind,
                skip_body: meta["skipBody"].as_bool().unwrap_or(false),
                wire: (!block.contains("${")).then(|| wire_bytes(&block)),
                expected: if lenient {
                    Expected::StrictRefuses
                } else {
                    Expected::Exactly(llhttp_outcome(&log))
                },
                meta_type,
            });
            i = log_end;
        }
        i += 1;
    }
}

/// The lines of a fenced block starting at `from`, joined by newlines, and the index of the
/// closing fence.
fn fenced(lines: &[&str], from: usize, file: &str) -> (String, usize) {
    let end = (from..lines.len())
        .find(|&j| lines[j] == "```")
        .unwrap_or_else(|| panic!("{file}: unterminated block at line {from}"));
    // The block's text ends with a newline, of which the runner drops one: what is left is
    // the lines joined.
    (lines[from..end].join("\n"), end)
}

/// What llhttp did, from its log.
fn llhttp_outcome(log: &str) -> Outcome {
    let lines: Vec<&str> = log.lines().collect();
    let is_head = |l: &str| l.contains(" headers complete ");
    let mut heads = lines.iter().filter(|l| is_head(l)).count();
    let Some(at) = lines.iter().position(|l| l.contains(" error code=")) else {
        return Outcome::new(End::Accepted, heads);
    };
    let end = match lines[at]
        .split(" error code=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
    {
        Some("5") => End::DataAfterClose,
        Some("22" | "23") => End::HandedOver,
        _ => End::Refused,
    };
    // A head refused for its framing fields (say `Transfer-Encoding: pigeons`) is logged as
    // complete, then refused at the same offset: the gateway does not count it as read.
    let offset = |l: &str| l.split(' ').next().unwrap_or_default().to_string();
    if end == End::Refused
        && at > 0
        && is_head(lines[at - 1])
        && offset(lines[at - 1]) == offset(lines[at])
    {
        heads -= 1;
    }
    Outcome::new(end, heads)
}

/// The bytes llhttp's runner makes of an ```http block (the trailing newline already dropped):
/// a backslash before a newline is deleted, newlines become CRLF, then `\r`, `\n`, `\t`, `\f`,
/// `\xHH` and octal `\NNN` become those bytes, each in turn over the whole text.
fn wire_bytes(block: &str) -> Vec<u8> {
    let text = block.replace("\\\n", "").replace('\n', "\r\n");
    let mut bytes = text.into_bytes();
    for (escape, byte) in [(b'r', b'\r'), (b'n', b'\n'), (b't', b'\t'), (b'f', 0x0c)] {
        bytes = replace_escapes(&bytes, |rest| {
            (rest.first() == Some(&escape)).then_some((byte, 1))
        });
    }
    bytes = replace_escapes(&bytes, |rest| match rest {
        [b'x', h, l, ..] if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
            let hex = std::str::from_utf8(&rest[1..3]).unwrap();
            Some((u8::from_str_radix(hex, 16).unwrap(), 3))
        }
        _ => None,
    });
    replace_escapes(&bytes, |rest| {
        let digits = rest
            .iter()
            .take(3)
            .take_while(|b| (b'0'..=b'7').contains(b))
            .count();
        (digits > 0).then(|| {
            let value = rest[..digits]
                .iter()
                .fold(0u32, |v, &d| v * 8 + u32::from(d - b'0'));
            (value as u8, digits)
        })
    })
}

/// Replaces each backslash for which `escape` (given the bytes after it) returns the byte and
/// how many bytes after the backslash it stands for.
fn replace_escapes(bytes: &[u8], escape: impl Fn(&[u8]) -> Option<(u8, usize)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some((byte, used)) = escape(&bytes[i + 1..]) {
                out.push(byte);
                i += 1 + used;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

#[test]
fn the_runner_conversion_is_llhttps() {
    assert_eq!(wire_bytes("GET / HTTP/1.1\n\n"), b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(wire_bytes("a\\\nb\\r\\n"), b"ab\r\n");
    assert_eq!(wire_bytes("\\xffV\\t"), b"\xffV\t");
    assert_eq!(wire_bytes("Foo\\01\\test"), b"Foo\x01\test");
    assert_eq!(wire_bytes("\\033\\065\\325e"), b"\x1b5\xd5e");
    assert_eq!(wire_bytes("D\u{fc}"), "D\u{fc}".as_bytes());
}

//! The request codec held against a reference: hyper 1.x's HTTP/1 server.
//!
//! "Reference" means a second, widely deployed reading of the same bytes, not an authority.
//! Each input is written to a hyper `http1` server connection over an in-memory duplex stream
//! (then the client's half is shut), whose service records every request's method, target,
//! version and header fields and reads its body to the end; the same bytes go through
//! `wire::request::parse` and the strict chunked decoder, message after message, as the
//! gateway's server reads a connection. Compared: accepted, refused or left incomplete, and
//! for each message read, method, target, version, header list and body bytes.
//!
//! Limits of the reference:
//! - hyper tokenises heads with httparse, as the gateway does, so differences in head syntax
//!   (obs-fold, whitespace before a colon, invalid bytes) are rare; the interesting ones are
//!   framing decisions: `Content-Length` against `Transfer-Encoding`, transfer codings, chunk
//!   lines and trailers, and the checks the gateway adds on top of httparse.
//! - Trailer fields are not compared (the gateway drops forbidden ones on purpose), nor what
//!   either side answers, nor limits that are configuration (head size, field count).
//! - hyper is more lenient than a proxy may be in places; every such difference is asserted
//!   below as one where the gateway refuses, with the reason, and every other difference fails
//!   the test (as does one of those that no longer differs, for the hand-written cases).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use sluicegate::proxy::http::wire::chunked::{ChunkedDecoder, Decoded};
use sluicegate::proxy::http::wire::request::{self, BodyFraming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest request head the gateway's parser buffers here (hyper's own limit is ~400 KiB).
const MAX_HEAD: usize = 64 * 1024;

/// One request as read off the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    method: String,
    target: String,
    version: Version,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

/// How reading the connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    /// Every byte read, as whole messages (or ignored after one that closes the connection).
    Accepted,
    /// A message refused; why, in the reader's words.
    Refused(String),
    /// The input ended inside a message.
    Incomplete,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Reading {
    messages: Vec<Message>,
    verdict: Verdict,
}

// ---------------------------------------------------------------------------------------------
// The two readers.

/// The gateway's codec over `input`.
fn ours(input: &[u8]) -> Reading {
    let mut buf = BytesMut::from(input);
    let mut messages = Vec::new();
    let verdict = loop {
        let head = match request::parse(&mut buf, MAX_HEAD) {
            Ok(Some(head)) => head,
            // `parse` consumes empty lines between messages, and waits on a CR that may be
            // the first half of one: at the end of the input, nothing is left unread.
            Ok(None) if buf.is_empty() || buf[..] == *b"\r" => break Verdict::Accepted,
            Ok(None) => break Verdict::Incomplete,
            Err(e) => break Verdict::Refused(e.to_string()),
        };
        let body = match head.body {
            BodyFraming::None => Vec::new(),
            BodyFraming::Length(n) => match usize::try_from(n) {
                Ok(n) if n <= buf.len() => buf.split_to(n).to_vec(),
                _ => break Verdict::Incomplete,
            },
            BodyFraming::Chunked => {
                let mut decoder = ChunkedDecoder::strict();
                let mut body = Vec::new();
                let end = loop {
                    match decoder.decode(&mut buf) {
                        Ok(Decoded::Data(d)) => body.extend_from_slice(&d),
                        Ok(Decoded::Trailers(_)) => {}
                        Ok(Decoded::End) => break None,
                        Ok(Decoded::NeedMore) => break Some(Verdict::Incomplete),
                        Err(e) => break Some(Verdict::Refused(e.to_string())),
                    }
                };
                if let Some(verdict) = end {
                    break verdict;
                }
                body
            }
        };
        messages.push(Message {
            method: head.method.to_string(),
            target: head.uri.to_string(),
            version: head.version,
            headers: fields(&head.headers),
            body,
        });
        // The server reads nothing after a message that closes the connection.
        if !head.keep_alive {
            break Verdict::Accepted;
        }
    };
    Reading { messages, verdict }
}

/// hyper's HTTP/1 server over `input`.
fn hyper(input: &[u8]) -> Reading {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reading = runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), hyper_reads(input.to_vec())).await
    });
    reading.unwrap_or_else(|_| panic!("hyper did not finish reading {:?}", show(input)))
}

type Recorded = (http::request::Parts, Result<Bytes, hyper::Error>);

async fn hyper_reads(input: Vec<u8>) -> Reading {
    // Large enough that neither side ever waits for the other to read.
    let (client, server) = tokio::io::duplex(1 << 20);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Recorded>();
    let service = service_fn(move |request: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes());
            let _ = tx.send((parts, body));
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    // Half-close: the client shuts its sending side once the input is written, and hyper
    // must still read and answer everything before that.
    let connection = http1::Builder::new()
        .half_close(true)
        .serve_connection(TokioIo::new(server), service);
    let (mut from_server, mut to_server) = tokio::io::split(client);
    let client = async move {
        to_server.write_all(&input).await.unwrap();
        to_server.shutdown().await.unwrap();
        let mut answers = Vec::new();
        let _ = from_server.read_to_end(&mut answers).await;
    };
    let (result, ()) = tokio::join!(connection, client);
    let mut messages = Vec::new();
    let mut verdict = None;
    while let Ok((parts, body)) = rx.try_recv() {
        match body {
            Ok(body) => messages.push(Message {
                method: parts.method.to_string(),
                target: parts.uri.to_string(),
                version: parts.version,
                headers: fields(&parts.headers),
                body: body.to_vec(),
            }),
            Err(e) => {
                verdict = Some(hyper_verdict(&e));
                break;
            }
        }
    }
    let verdict = verdict.unwrap_or_else(|| match result {
        Ok(()) => Verdict::Accepted,
        Err(e) => hyper_verdict(&e),
    });
    Reading { messages, verdict }
}

fn hyper_verdict(e: &hyper::Error) -> Verdict {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::UnexpectedEof)
        {
            return Verdict::Incomplete;
        }
        source = s.source();
    }
    if e.is_incomplete_message() {
        Verdict::Incomplete
    } else {
        Verdict::Refused(format!("{e}: {:?}", std::error::Error::source(e)))
    }
}

fn verdict_kind(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Accepted => "accepted",
        Verdict::Refused(_) => "refused",
        Verdict::Incomplete => "incomplete",
    }
}

fn fields(headers: &http::HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn show(input: &[u8]) -> String {
    input.escape_ascii().to_string()
}

// ---------------------------------------------------------------------------------------------
// Where they may differ, and why the gateway is right.

/// A difference from hyper the gateway means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stricter {
    /// `Content-Length` beside `Transfer-Encoding` (hyper reads the chunked body, drops the
    /// length and closes afterwards). RFC 9112 6.1: "A server MAY reject a request that
    /// contains both Content-Length and Transfer-Encoding or process such a request in
    /// accordance with the Transfer-Encoding alone"; 6.3: such a message "might indicate an
    /// attempt to perform request smuggling" and "ought to be handled as an error". A proxy
    /// that processes it hands the next hop a choice.
    LengthAndCoding,
    /// An invalid `Content-Length` after `Transfer-Encoding` (hyper skips the field unread).
    /// Refused as invalid; with both fields present it would be refused anyway.
    InvalidLengthBesideCoding,
    /// Codings before the final `chunked` (`gzip, chunked`; hyper hands the still-coded body
    /// on). The gateway does not implement them, and forwarding the decoded chunks without the
    /// coding mislabels them. RFC 9112 6.1: "A server that receives a request message with a
    /// transfer coding it does not understand SHOULD respond with 501 (Not Implemented)".
    UnimplementedCoding,
    /// `chunked` more than once (`chunked, chunked`), or beside an empty `Transfer-Encoding`
    /// field (hyper looks at the last field's last element only). RFC 9112 7.1: "A sender MUST
    /// NOT apply the chunked transfer coding more than once to a message body"; an empty field
    /// is one servers read differently (no coding, or one they do not know), so the framing is
    /// not certain.
    RepeatedChunked,
    /// A line of the head ended by a bare LF. RFC 9112 2.2 lets a recipient accept it, and
    /// hyper does; a proxy in front that takes it for part of a field value frames the
    /// request differently (llhttp's "Missing CR between headers").
    BareLf,
    /// A request-target with bytes above 0x7F (httparse and hyper let them through). Not a
    /// URI (RFC 3986 2); RFC 9112 3: "Recipients of an invalid request-line SHOULD respond
    /// with either a 400 (Bad Request) error or a 301 (Moved Permanently) redirect ... A
    /// recipient SHOULD NOT attempt to autocorrect and then process the request".
    NonAsciiTarget,
    /// A chunk-size line hyper takes: more than 16 hex digits (leading zeros), or control
    /// bytes in an extension. RFC 9112 7.1.1: extensions are tokens and quoted-strings, which
    /// hold no control bytes; 7.1: recipients "MUST anticipate potentially large hexadecimal
    /// numerals and prevent parsing errors due to integer conversion overflows" (16 digits
    /// fill a u64; no sender pads further).
    ChunkLine,
    /// A fragment in the request-target (hyper drops it, as `Uri` does, and reads another
    /// target than the client sent). No request-target form has one (RFC 9112 3.2), and RFC
    /// 9112 3: "A recipient SHOULD NOT attempt to autocorrect and then process the request".
    FragmentInTarget,
    /// A bare LF inside the trailer section: hyper reads the section on to the next CRLF,
    /// so what follows (a request, say) is inside hyper's trailers and outside the gateway's
    /// body. RFC 9112 7.1.2: trailer fields are field lines, each ending in CRLF.
    BareLfInTrailers,
}

/// Where the gateway is knowingly more lenient than hyper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lenient {
    /// `Content-Length: 5, 5`, a list of one repeated value. RFC 9110 8.6: "a recipient MAY
    /// either reject the message as invalid or replace that invalid field value with a single
    /// instance of the decimal value"; unambiguous, and the gateway forwards one length of its
    /// own.
    RepeatedLengthList,
    /// Empty elements in the `Transfer-Encoding` list (`, chunked ,`), which hyper takes for a
    /// final coding that is not `chunked`. RFC 9110 5.6.1.2: "a recipient MUST parse and ignore
    /// a reasonable number of empty list elements"; an empty field is still refused.
    EmptyListElements,
}

/// Where the gateway refuses sooner what hyper would refuse once it has read more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sooner {
    /// An invalid line in the trailer section: the gateway refuses it when it arrives, hyper
    /// collects the whole section before parsing it (and then refuses it too).
    InvalidTrailerLine,
}

/// Where both read the same messages but hand on different header lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kept {
    /// `Content-Length` repeated with one value: hyper keeps the first field only, the gateway
    /// keeps the head as received. The framing is the same, and the gateway never forwards a
    /// client's `Content-Length` (the upstream request's framing is written by its encoder).
    RepeatedLength,
}

/// How the gateway and hyper compare on an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Same,
    Stricter(Stricter),
    Sooner(Sooner),
    Lenient(Lenient),
    Kept(Kept),
}

/// Which known difference, if any, explains the gateway refusing what hyper did not (or not
/// yet: `hyper_waits`): by what the gateway says, which names the one rule it applied.
fn stricter_because(reason: &str, input: &[u8], hyper_waits: bool) -> Option<Expect> {
    if reason == "invalid trailer section" && hyper_waits && !has_bare_lf(input) {
        return Some(Expect::Sooner(Sooner::InvalidTrailerLine));
    }
    Some(Expect::Stricter(match reason {
        "malformed request head: both Transfer-Encoding and Content-Length" => {
            Stricter::LengthAndCoding
        }
        "malformed request head: invalid or conflicting Content-Length"
            if contains_ignore_case(input, b"transfer-encoding") =>
        {
            Stricter::InvalidLengthBesideCoding
        }
        "not implemented: transfer codings other than chunked" => Stricter::UnimplementedCoding,
        "malformed request head: chunked is not the single final transfer coding" => {
            Stricter::RepeatedChunked
        }
        "malformed request head: line ending without CR" => Stricter::BareLf,
        "malformed request head: non-ASCII request target" => Stricter::NonAsciiTarget,
        "malformed request head: fragment in the request target" => Stricter::FragmentInTarget,
        "invalid chunk size" | "chunk size line too long" => Stricter::ChunkLine,
        "invalid trailer section" if has_bare_lf(input) => Stricter::BareLfInTrailers,
        _ => return None,
    }))
}

/// Which known leniency, if any, explains hyper refusing what the gateway accepted.
fn lenient_because(hyper: &str, input: &[u8]) -> Option<Lenient> {
    if hyper.contains("invalid content-length") && contains_ignore_case(input, b"content-length:") {
        Some(Lenient::RepeatedLengthList)
    } else if hyper.contains("invalid transfer-encoding") {
        Some(Lenient::EmptyListElements)
    } else {
        None
    }
}

/// Whether `ours` is `theirs` with repeated, identical `Content-Length` fields kept.
fn repeated_length_kept(ours: &Message, theirs: &Message) -> bool {
    let mut length = None;
    let mut headers = ours.headers.clone();
    headers.retain(|(name, value)| {
        if name != "content-length" {
            return true;
        }
        let first = length.is_none();
        length.get_or_insert_with(|| value.clone());
        first
    });
    headers != ours.headers
        && Message {
            headers,
            ..ours.clone()
        } == *theirs
}

/// Compares the two readings of `input`; `Err` describes a difference nothing explains.
fn compare(input: &[u8]) -> Result<Expect, String> {
    let (ours, theirs) = (ours(input), hyper(input));
    let differ = || {
        format!(
            "{}\n  ours:  {:?}\n  hyper: {:?}",
            show(input),
            ours,
            theirs
        )
    };
    let same_kind =
        |a: &Verdict, b: &Verdict| std::mem::discriminant(a) == std::mem::discriminant(b);
    if same_kind(&ours.verdict, &theirs.verdict) && ours.messages == theirs.messages {
        return Ok(Expect::Same);
    }
    if same_kind(&ours.verdict, &theirs.verdict)
        && ours.messages.len() == theirs.messages.len()
        && ours
            .messages
            .iter()
            .zip(&theirs.messages)
            .all(|(o, t)| o == t || repeated_length_kept(o, t))
    {
        return Ok(Expect::Kept(Kept::RepeatedLength));
    }
    // Whatever the verdicts, the messages both read must be the same ones.
    let n = ours.messages.len().min(theirs.messages.len());
    if ours.messages[..n] != theirs.messages[..n] {
        return Err(format!("different messages: {}", differ()));
    }
    // Which side stopped first: the one that refused with fewer messages read, or with as
    // many while the other read on (or waited for the rest of the input).
    let (read_ours, read_theirs) = (ours.messages.len(), theirs.messages.len());
    let refused = |v: &Verdict| matches!(v, Verdict::Refused(_));
    if let Verdict::Refused(reason) = &ours.verdict {
        if read_theirs > read_ours || (read_theirs == read_ours && !refused(&theirs.verdict)) {
            let hyper_waits = theirs.verdict == Verdict::Incomplete;
            return stricter_because(reason, input, hyper_waits)
                .ok_or_else(|| format!("ours refuses, unexplained: {}", differ()));
        }
    }
    if let Verdict::Refused(reason) = &theirs.verdict {
        if read_ours > read_theirs || (read_ours == read_theirs && !refused(&ours.verdict)) {
            return lenient_because(reason, input)
                .map(Expect::Lenient)
                .ok_or_else(|| format!("ours accepts, unexplained: {}", differ()));
        }
    }
    Err(format!("unexplained difference: {}", differ()))
}

fn has_bare_lf(input: &[u8]) -> bool {
    input
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || input[i - 1] != b'\r'))
}

fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

// ---------------------------------------------------------------------------------------------
// Hand-written heads.

/// Tricky inputs and how the gateway compares with hyper on each.
const CORPUS: &[(&str, &[u8], Expect)] = &[
    // Plain messages, one and several on a connection.
    ("simple GET", b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n", SAME),
    (
        "pipelined GET, POST with length, PUT chunked",
        b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\
          \r\nhelloPUT /3 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n\
          0\r\n\r\n",
        SAME,
    ),
    ("blank lines before a request", b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", SAME),
    ("lone CR before a request", b"\rGET / HTTP/1.1\r\nHost: a\r\n\r\n", SAME),
    ("bare LF blank lines before a request", b"\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", SAME),
    ("empty input", b"", SAME),
    ("incomplete head", b"GET / HTTP/1.1\r\nHost: a\r\n", SAME),
    ("incomplete body", b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc", SAME),
    (
        "incomplete chunked body",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        SAME,
    ),
    (
        "Connection: close ends the reading",
        b"GET /1 HTTP/1.1\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        SAME,
    ),
    ("HTTP/1.0 closes by default", b"GET /1 HTTP/1.0\r\n\r\nGET /2 HTTP/1.0\r\n\r\n", SAME),
    (
        "HTTP/1.0 keep-alive",
        b"GET /1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /2 HTTP/1.0\r\n\r\n",
        SAME,
    ),
    (
        "Expect: 100-continue",
        b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
        SAME,
    ),
    // Request lines.
    ("lowercase method", b"get / HTTP/1.1\r\nHost: a\r\n\r\n", SAME),
    ("extension method", b"PURGE /cache HTTP/1.1\r\nHost: a\r\n\r\n", SAME),
    ("method with invalid byte", b"GE@T / HTTP/1.1\r\n\r\n", SAME),
    (
        "absolute-form",
        b"GET http://example.com:8080/p?q HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
        SAME,
    ),
    ("absolute-form without path", b"OPTIONS http://example.com HTTP/1.1\r\n\r\n", SAME),
    ("asterisk-form", b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", SAME),
    ("authority-form", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", SAME),
    ("two spaces after method", b"GET  / HTTP/1.1\r\n\r\n", SAME),
    ("tab as separator", b"GET\t/ HTTP/1.1\r\n\r\n", SAME),
    ("space in target", b"GET /a b HTTP/1.1\r\n\r\n", SAME),
    (
        "fragment in target",
        b"GET /a#frag HTTP/1.1\r\n\r\n",
        Expect::Stricter(Stricter::FragmentInTarget),
    ),
    ("quote in target", b"GET /a\"b HTTP/1.1\r\n\r\n", SAME),
    ("DEL in target", b"GET /a\x7fb HTTP/1.1\r\n\r\n", SAME),
    ("NUL in target", b"GET /a\x00b HTTP/1.1\r\n\r\n", SAME),
    ("UTF-8 in target", "GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n".as_bytes(), STRICTER_TARGET),
    (
        "fullwidth solidus in target",
        "GET /public/\u{ff0e}\u{ff0e}\u{ff0f}admin HTTP/1.1\r\n\r\n".as_bytes(),
        STRICTER_TARGET,
    ),
    ("invalid UTF-8 in target", b"GET /\xff HTTP/1.1\r\n\r\n", SAME),
    ("HTTP/2.0 request line", b"GET / HTTP/2.0\r\n\r\n", SAME),
    ("HTTP/1.2", b"GET / HTTP/1.2\r\n\r\n", SAME),
    ("lowercase version", b"GET / http/1.1\r\n\r\n", SAME),
    ("no version", b"GET /\r\n\r\n", SAME),
    ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", SAME),
    // Line endings.
    ("bare LF everywhere", b"GET / HTTP/1.1\nHost: a\n\n", STRICTER_LF),
    ("bare LF after the request line", b"GET / HTTP/1.1\nHost: a\r\n\r\n", STRICTER_LF),
    ("bare LF ending the head", b"GET / HTTP/1.1\r\nHost: a\r\n\n", STRICTER_LF),
    (
        "bare LF hiding a Content-Length",
        b"GET / HTTP/1.1\r\nHost: a\r\nDummy: x\nContent-Length: 23\r\n\r\nGET / HTTP/1.1\r\n\
          Dummy: GET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
        STRICTER_LF,
    ),
    ("bare CR in a value", b"GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", SAME),
    ("bare CR ending a line", b"GET / HTTP/1.1\rHost: a\r\n\r\n", SAME),
    // Field syntax.
    ("obs-fold", b"GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", SAME),
    ("obs-fold with tab", b"GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", SAME),
    (
        "obs-fold of Transfer-Encoding",
        b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        SAME,
    ),
    ("whitespace before colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", SAME),
    ("tab before colon", b"POST / HTTP/1.1\r\nContent-Length\t: 1\r\n\r\na", SAME),
    ("whitespace before the first field", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", SAME),
    ("empty field name", b"GET / HTTP/1.1\r\n: a\r\n\r\n", SAME),
    ("no colon", b"GET / HTTP/1.1\r\nHost a\r\n\r\n", SAME),
    ("NUL in a value", b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", SAME),
    ("control byte in a value", b"GET / HTTP/1.1\r\nX: a\x01b\r\n\r\n", SAME),
    ("DEL in a value", b"GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", SAME),
    ("obs-text in a value", b"GET / HTTP/1.1\r\nX: caf\xe9 \xff\r\n\r\n", SAME),
    ("tab and spaces around a value", b"GET / HTTP/1.1\r\nX: \t a b \t \r\n\r\n", SAME),
    ("empty value", b"GET / HTTP/1.1\r\nX:\r\nY: \r\n\r\n", SAME),
    ("control byte in a name", b"GET / HTTP/1.1\r\nX\x01Y: a\r\n\r\n", SAME),
    ("high byte in a name", b"GET / HTTP/1.1\r\nX\xe9: a\r\n\r\n", SAME),
    ("underscore in a name", b"GET / HTTP/1.1\r\nX_Forwarded_For: a\r\n\r\n", SAME),
    (
        "repeated fields keep their order",
        b"GET / HTTP/1.1\r\nB: 1\r\nA: 2\r\nB: 3\r\nHost: a\r\nHost: b\r\n\r\n",
        SAME,
    ),
    // Content-Length.
    (
        "Content-Length with leading zeros",
        b"POST / HTTP/1.1\r\nContent-Length: 003\r\n\r\nabc",
        SAME,
    ),
    (
        "Content-Length: 0 then a request",
        b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /2 HTTP/1.1\r\n\r\n",
        SAME,
    ),
    (
        "Content-Length repeated, equal",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        Expect::Kept(Kept::RepeatedLength),
    ),
    (
        "Content-Length repeated, different",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        SAME,
    ),
    (
        "Content-Length list, equal",
        b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\nabc",
        LENIENT_LIST,
    ),
    (
        "Content-Length list, different",
        b"POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\nabcd",
        SAME,
    ),
    ("Content-Length with sign", b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc", SAME),
    ("negative Content-Length", b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", SAME),
    ("Content-Length with inner space", b"POST / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n", SAME),
    ("Content-Length in hex", b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\nabc", SAME),
    ("empty Content-Length", b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", SAME),
    (
        "Content-Length past u64",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        SAME,
    ),
    (
        "Content-Length of 19 digits",
        b"POST / HTTP/1.1\r\nContent-Length: 9999999999999999999\r\n\r\nabc",
        SAME,
    ),
    // Transfer-Encoding against Content-Length.
    (
        "CL then TE",
        b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        STRICTER_CL_TE,
    ),
    (
        "TE then CL",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        STRICTER_CL_TE,
    ),
    (
        "CL: 0 and TE",
        b"POST / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        STRICTER_CL_TE,
    ),
    (
        "TE then invalid CL",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: x\r\n\r\n0\r\n\r\n",
        Expect::Stricter(Stricter::InvalidLengthBesideCoding),
    ),
    (
        "TE not chunked with CL",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\nabc",
        SAME,
    ),
    // Transfer codings.
    ("TE: Chunked", b"POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n0\r\n\r\n", SAME),
    (
        "TE with empty list elements",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: , chunked ,\r\n\r\n0\r\n\r\n",
        Expect::Lenient(Lenient::EmptyListElements),
    ),
    (
        "TE: gzip, chunked",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        STRICTER_CODING,
    ),
    (
        "TE gzip and chunked fields",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        STRICTER_CODING,
    ),
    (
        "TE: identity, chunked",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
        STRICTER_CODING,
    ),
    (
        "TE: chunked, gzip",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "TE chunked and gzip fields",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "TE: chunked, chunked",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
        STRICTER_CHUNKED_TWICE,
    ),
    (
        "TE chunked twice in fields",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\
          \r\n",
        STRICTER_CHUNKED_TWICE,
    ),
    (
        "empty TE field then chunked",
        b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        STRICTER_CHUNKED_TWICE,
    ),
    ("empty TE", b"POST / HTTP/1.1\r\nTransfer-Encoding:\r\n\r\n", SAME),
    ("TE: gzip", b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", SAME),
    ("TE: identity", b"POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", SAME),
    ("TE: xchunked", b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", SAME),
    ("TE: chunked;q=1", b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked;q=1\r\n\r\n", SAME),
    ("TE: \"chunked\"", b"POST / HTTP/1.1\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", SAME),
    (
        "TE with a vertical tab",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
        SAME,
    ),
    ("TE in HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", SAME),
    (
        "TE on a GET",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    // Chunked bodies.
    (
        "chunks, extensions and trailers",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n4 ; q=\"x;y\"\r\n\
          defg\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
        SAME,
    ),
    (
        "uppercase hex size",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "last chunk of zeros",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n000\r\n\r\n",
        SAME,
    ),
    (
        "space after the size",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "empty extension",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;\r\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "unbalanced quote in extension",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a=\"b\r\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "control byte in extension",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a\x01\r\nabc\r\n0\r\n\r\n",
        STRICTER_CHUNK_LINE,
    ),
    (
        "bare CR in extension",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a\rb\r\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "bare LF in extension",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nb\r\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "bare LF after the size",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "bare LF after the data",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\n0\r\n\r\n",
        SAME,
    ),
    (
        "data longer than its size",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "missing size",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "size with 0x",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "negative size",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
        SAME,
    ),
    (
        "size of 16 hex digits",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\nabc",
        SAME,
    ),
    (
        "size past u64",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nabc",
        SAME,
    ),
    (
        "size of 17 digits with a leading zero",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000003\r\nabc\r\n0\r\n\
          \r\n",
        STRICTER_CHUNK_LINE,
    ),
    (
        "no last chunk",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n\r\n",
        SAME,
    ),
    (
        "trailer without colon",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX\r\n\r\n",
        SAME,
    ),
    (
        "trailer folded",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: a\r\n b\r\n\r\n",
        SAME,
    ),
    (
        "bare LF ending the body",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\n",
        Expect::Stricter(Stricter::BareLfInTrailers),
    ),
    (
        "bare LF in trailers hiding a request",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\
          X: y\n\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
        Expect::Stricter(Stricter::BareLfInTrailers),
    ),
    (
        "a request line in the trailers, incomplete",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nGET /two HTTP/1.1\r\n",
        Expect::Sooner(Sooner::InvalidTrailerLine),
    ),
    (
        "a request line in the trailers",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nGET /two HTTP/1.1\r\n\r\n",
        SAME,
    ),
    (
        "bare LF ending the trailers",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\r\n\n",
        Expect::Stricter(Stricter::BareLfInTrailers),
    ),
];

const SAME: Expect = Expect::Same;
const STRICTER_TARGET: Expect = Expect::Stricter(Stricter::NonAsciiTarget);
const STRICTER_LF: Expect = Expect::Stricter(Stricter::BareLf);
const STRICTER_CL_TE: Expect = Expect::Stricter(Stricter::LengthAndCoding);
const STRICTER_CODING: Expect = Expect::Stricter(Stricter::UnimplementedCoding);
const STRICTER_CHUNKED_TWICE: Expect = Expect::Stricter(Stricter::RepeatedChunked);
const STRICTER_CHUNK_LINE: Expect = Expect::Stricter(Stricter::ChunkLine);
const LENIENT_LIST: Expect = Expect::Lenient(Lenient::RepeatedLengthList);

#[test]
fn tricky_requests() {
    let mut failures = Vec::new();
    let mut seen = BTreeMap::<String, usize>::new();
    for &(name, input, expected) in CORPUS {
        match compare(input) {
            Ok(got) if got == expected => {
                let class = match got {
                    Expect::Same => format!("Same, {}", verdict_kind(&ours(input).verdict)),
                    other => format!("{other:?}"),
                };
                *seen.entry(class).or_default() += 1;
            }
            Ok(got) => failures.push(format!("{name}: expected {expected:?}, got {got:?}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    println!("{} hand-written inputs:", CORPUS.len());
    for (class, n) in &seen {
        println!("  {n:5}  {class}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Mutations of valid requests.

/// Valid requests the mutations start from.
const BASES: &[&[u8]] = &[
    b"GET /a?b=c HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: example.com\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET /two HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://example.com/x HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /y HTTP/1.0\r\n\r\n",
];

/// Bytes that matter to an HTTP/1.1 parser.
const INTERESTING: &[u8] = b" \t\r\n:;,=\"\\0159aAfFxX-+/?#%\x00\x01\x0b\x0c\x7f\x80\xff";

/// Whole field lines (or pieces of one) that change the framing.
const LINES: &[&[u8]] = &[
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Transfer-Encoding: chunked, chunked\r\n",
    b"Transfer-Encoding: gzip, chunked\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 0\r\n",
    b"Content-Length: 5, 5\r\n",
    b"Connection: close\r\n",
    b"Expect: 100-continue\r\n",
    b" folded\r\n",
    b"X: a\nContent-Length: 3\r\n",
    b"\r\n",
];

#[derive(Debug, Clone)]
enum Mutation {
    Insert(u8),
    Replace(u8),
    Delete(usize),
    /// A line of `LINES` at the start of the next line.
    Line(usize),
    /// The `n` bytes from here written twice.
    Repeat(usize),
    /// The byte's ASCII case flipped.
    Case,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![3 => proptest::sample::select(INTERESTING), 1 => any::<u8>()];
    prop_oneof![
        byte.clone().prop_map(Mutation::Insert),
        byte.prop_map(Mutation::Replace),
        (1usize..4).prop_map(Mutation::Delete),
        (0..LINES.len()).prop_map(Mutation::Line),
        (1usize..12).prop_map(Mutation::Repeat),
        Just(Mutation::Case),
    ]
}

fn mutate(input: &mut Vec<u8>, at: proptest::sample::Index, mutation: &Mutation) {
    let at = at.index(input.len() + 1);
    let end = |n: usize| (at + n).min(input.len());
    match *mutation {
        Mutation::Insert(b) => input.insert(at, b),
        Mutation::Replace(b) if at < input.len() => input[at] = b,
        Mutation::Replace(b) => input.push(b),
        Mutation::Delete(n) => {
            input.drain(at..end(n));
        }
        Mutation::Line(i) => {
            let line_start = input[at..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(input.len(), |p| at + p + 1);
            input.splice(line_start..line_start, LINES[i].iter().copied());
        }
        Mutation::Repeat(n) => {
            let piece = input[at..end(n)].to_vec();
            input.splice(at..at, piece);
        }
        Mutation::Case => {
            if let Some(b) = input.get_mut(at) {
                if b.is_ascii_alphabetic() {
                    *b ^= 0x20;
                }
            }
        }
    }
}

/// Any difference between the gateway's reading and hyper's of a mutated request is one of the
/// documented ones (`compare`). 1,000 cases (`PROPTEST_CASES` for more), about a second.
#[test]
fn mutated_requests() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let mut runner = TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let inputs = (
        0..BASES.len(),
        proptest::collection::vec((any::<proptest::sample::Index>(), mutation()), 1..4),
    );
    let seen = RefCell::new(BTreeMap::<String, usize>::new());
    let result = runner.run(&inputs, |(base, edits)| {
        let mut input = BASES[base].to_vec();
        for (at, mutation) in &edits {
            mutate(&mut input, *at, mutation);
        }
        let class = match compare(&input).map_err(TestCaseError::fail)? {
            Expect::Same => format!("Same, {}", verdict_kind(&ours(&input).verdict)),
            other => format!("{other:?}"),
        };
        *seen.borrow_mut().entry(class).or_default() += 1;
        Ok(())
    });
    println!("{cases} mutated requests:");
    for (expect, n) in seen.borrow().iter() {
        println!("  {n:5}  {expect}");
    }
    if let Err(e) = result {
        panic!("{e}");
    }
}

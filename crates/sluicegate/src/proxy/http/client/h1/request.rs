//! One exchange on an upstream HTTP/1.1 connection: the request written, the response head read.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::Poll;

use bytes::{Buf, Bytes};
use http::header;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body::Body;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::body::{H1Body, PoolReturn};
use super::conn::Conn;
use super::error::Error;
use crate::proxy::http::body::RequestBody;
use crate::proxy::http::headers::Forwarding;
use crate::proxy::http::wire::chunk_size_line;
use crate::proxy::http::wire::chunked::drop_forbidden_trailers;
use crate::proxy::http::wire::fields::{put_field, put_fields};
use crate::proxy::http::wire::request::{encode_head, Upload};
use crate::proxy::http::wire::response::{self, Head, MAX_HEAD};

/// A failed exchange. When nothing shows the upstream saw the request — a reused connection
/// that closed before any response byte, the body not yet read — the body is handed back so
/// the request can go again on a fresh connection (RFC 9110 9.2.2, as browsers and Go do).
pub struct Failed {
    pub error: Error,
    pub retry: Option<RequestBody>,
}

/// Sends the request on `conn` and reads the response head. The response body streams from the
/// connection, which `ret` takes back when the body has been read to its end.
pub async fn send(
    mut conn: Conn,
    parts: &Parts,
    mut body: RequestBody,
    endpoint: SocketAddr,
    ret: PoolReturn,
    forwarding: Option<Forwarding<'_>>,
) -> Result<Response<H1Body>, Failed> {
    // Framed by what the body is, not by what the client's fields said: a body that a later
    // step replays or transforms then still matches its framing on the upstream connection.
    let upload = upload_for(&body);
    let has_body = upload != Upload::None;
    encode(&mut conn.write_buf, parts, upload, endpoint, forwarding);
    let reused = conn.reused;
    let idempotent = is_idempotent(&parts.method);
    let fail = |error: Error, body: RequestBody, body_touched: bool, received: bool| Failed {
        retry: (reused && !received && !body_touched && idempotent).then_some(body),
        error,
    };

    if let Err(e) = conn.io.write_all(&conn.write_buf).await {
        return Err(fail(e.into(), body, false, false));
    }
    let mut upload_complete = true;
    // A write that fails mid-body may mean the upstream answered and closed without reading it
    // all (a 413, say): its response, if it arrived, is what the client should see.
    let mut write_error = None;
    if has_body {
        match send_body(&mut conn, &mut body, upload == Upload::Chunked).await {
            Ok(complete) => upload_complete = complete,
            Err(Error::Io(e)) => {
                upload_complete = false;
                write_error = Some(e);
            }
            Err(e) => return Err(fail(e, body, true, false)),
        }
    }
    if write_error.is_none() {
        if let Err(e) = conn.io.flush().await {
            return Err(fail(e.into(), body, has_body, !conn.read_buf.is_empty()));
        }
    }
    let head = match (read_head(&mut conn, &parts.method).await, write_error) {
        (Ok(head), _) => head,
        // Nothing came back: the failed write is what went wrong.
        (Err((_, false)), Some(e)) => return Err(fail(e.into(), body, has_body, false)),
        (Err((e, received)), _) => return Err(fail(e, body, has_body, received)),
    };
    // A body the upstream did not wait for leaves the connection mid-request: not reusable.
    let keep_alive = head.keep_alive && upload_complete;
    let mut response = Response::new(H1Body::new(conn, head.framing, keep_alive, ret));
    *response.status_mut() = head.status;
    *response.headers_mut() = head.headers;
    Ok(response)
}

/// How `body` is delimited upstream: by its length when known in advance, else chunked.
fn upload_for(body: &RequestBody) -> Upload {
    if body.is_end_stream() {
        return Upload::None;
    }
    match body.size_hint().exact() {
        Some(0) => Upload::None,
        Some(n) => Upload::Length(n),
        None => Upload::Chunked,
    }
}

/// Writes the request head: the request line, the fields (with the forwarded ones when they
/// are not in the map yet), a `Host` naming the endpoint when the request had none (an
/// HTTP/1.0 client may send none; HTTP/1.1 requires one), and the framing fields.
fn encode(
    out: &mut Vec<u8>,
    parts: &Parts,
    upload: Upload,
    endpoint: SocketAddr,
    forwarding: Option<Forwarding<'_>>,
) {
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let implies_body = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH);
    encode_head(out, &parts.method, target, upload, implies_body, |out| {
        match forwarding {
            Some(forwarding) => forwarding.put_fields(out, &parts.headers),
            None => put_fields(out, &parts.headers),
        }
        if !parts.headers.contains_key(header::HOST) {
            put_field(out, b"host", endpoint.to_string().as_bytes());
        }
    });
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Streams the request body. Returns whether all of it went out: `false` when the upstream
/// answered first (a complete final response head arrived), after which sending stops.
async fn send_body(conn: &mut Conn, body: &mut RequestBody, chunked: bool) -> Result<bool, Error> {
    let mut out: VecDeque<Bytes> = VecDeque::with_capacity(4);
    let mut finished = false;
    poll_fn(|cx| loop {
        // An upstream that has answered — or closed — needs no more of the body.
        if conn.read_buf.len() < MAX_HEAD {
            match conn.poll_fill(cx) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Ok(false)),
                Poll::Ready(Ok(_)) => {
                    if response::final_head_ready(&conn.read_buf) {
                        return Poll::Ready(Ok(false));
                    }
                    continue;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
        }
        if !out.is_empty() {
            let mut slices = [IoSlice::new(&[]); 4];
            for (slice, bytes) in slices.iter_mut().zip(&out) {
                *slice = IoSlice::new(bytes);
            }
            let count = out.len().min(slices.len());
            let written = match Pin::new(&mut conn.io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(Error::Io(std::io::ErrorKind::WriteZero.into())))
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => return Poll::Pending,
            };
            consume(&mut out, written);
            continue;
        }
        if finished {
            return Poll::Ready(Ok(true));
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Error::RequestBody(e))),
            Poll::Ready(None) => {
                finished = true;
                if chunked {
                    out.push_back(Bytes::from_static(b"0\r\n\r\n"));
                }
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) if chunked => {
                    let mut size = Vec::with_capacity(18);
                    chunk_size_line(&mut size, data.len());
                    out.push_back(Bytes::from(size));
                    out.push_back(data);
                    out.push_back(Bytes::from_static(b"\r\n"));
                }
                Ok(data) => out.push_back(data),
                Err(frame) => {
                    // Trailers end the body; they can only travel in a chunked one.
                    finished = true;
                    if chunked {
                        let mut last = b"0\r\n".to_vec();
                        if let Ok(mut trailers) = frame.into_trailers() {
                            drop_forbidden_trailers(&mut trailers);
                            put_fields(&mut last, &trailers);
                        }
                        last.extend_from_slice(b"\r\n");
                        out.push_back(Bytes::from(last));
                    }
                }
            },
        }
    })
    .await
}

/// Drops `n` written bytes from the front of the queue.
fn consume(out: &mut VecDeque<Bytes>, mut n: usize) {
    while n > 0 {
        let Some(front) = out.front_mut() else { return };
        if front.len() <= n {
            n -= front.len();
            out.pop_front();
        } else {
            front.advance(n);
            return;
        }
    }
}

/// Reads until a final response head; informational (1xx) heads are skipped. The error comes
/// with whether any response byte had arrived.
async fn read_head(conn: &mut Conn, method: &Method) -> Result<Head, (Error, bool)> {
    let mut received = false;
    loop {
        if !conn.read_buf.is_empty() {
            received = true;
            match response::parse(&mut conn.read_buf, method) {
                Ok(Some(head)) if head.status == StatusCode::SWITCHING_PROTOCOLS => {
                    return Err((Error::UnexpectedUpgrade, true))
                }
                Ok(Some(head)) if head.status.is_informational() => continue,
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                Err(e) => return Err((e.into(), true)),
            }
        }
        match poll_fn(|cx| conn.poll_fill(cx)).await {
            Ok(0) => return Err((Error::ClosedBeforeResponse, received)),
            Ok(_) => {}
            Err(e) => return Err((e.into(), received)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (n, v) in headers {
            builder = builder.header(*n, *v);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn head_text(parts: &Parts, upload: Upload) -> String {
        let mut out = Vec::new();
        encode(
            &mut out,
            parts,
            upload,
            "10.0.0.1:8080".parse().unwrap(),
            None,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn heads_are_encoded_with_framing() {
        let p = parts(Method::GET, "/a?b=1", &[("host", "x.test"), ("x-y", "z")]);
        assert_eq!(
            head_text(&p, Upload::None),
            "GET /a?b=1 HTTP/1.1\r\nhost: x.test\r\nx-y: z\r\n\r\n"
        );
        let p = parts(Method::POST, "/", &[("host", "x.test")]);
        assert_eq!(
            head_text(&p, Upload::Chunked),
            "POST / HTTP/1.1\r\nhost: x.test\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        assert_eq!(
            head_text(&p, Upload::None),
            "POST / HTTP/1.1\r\nhost: x.test\r\ncontent-length: 0\r\n\r\n"
        );
        let p = parts(
            Method::PUT,
            "/",
            &[("host", "x.test"), ("content-length", "99")],
        );
        assert_eq!(
            head_text(&p, Upload::Length(5)),
            "PUT / HTTP/1.1\r\nhost: x.test\r\ncontent-length: 5\r\n\r\n",
            "the body's own length frames it, not the client's field"
        );
        assert_eq!(
            head_text(&p, Upload::Chunked),
            "PUT / HTTP/1.1\r\nhost: x.test\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        let p = parts(Method::GET, "*", &[]);
        assert_eq!(
            head_text(&p, Upload::None),
            "GET * HTTP/1.1\r\nhost: 10.0.0.1:8080\r\n\r\n"
        );
    }

    #[test]
    fn written_bytes_leave_the_queue() {
        let mut out: VecDeque<Bytes> = [&b"ab"[..], b"cde", b"f"].map(Bytes::from_static).into();
        consume(&mut out, 3);
        assert_eq!(out, [&b"de"[..], b"f"]);
        consume(&mut out, 3);
        assert!(out.is_empty());
    }
}

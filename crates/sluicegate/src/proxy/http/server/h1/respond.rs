//! Writing a response to an HTTP/1.1 client: the head encoded once into the connection's write
//! buffer, small bodies gathered into the same buffer so a typical response leaves in one
//! `send`, large frames written vectored straight from the upstream's buffers.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Response, StatusCode, Version};
use http_body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite};

use super::conn::Shared;
use crate::proxy::http::body::{BodyError, ResponseBody};
use crate::proxy::http::wire::chunked::drop_forbidden_trailers;
use crate::proxy::http::wire::fields::put_fields;
use crate::proxy::http::wire::{
    chunk_size_line, connection_options, content_length, ConnectionOption,
};

/// Body bytes gathered with the head (or the previous frames) before a write: above this a
/// frame is sent as it is, without a copy.
const GATHER: usize = 16 * 1024;

/// What about the request decides how its response is written.
pub struct Asked {
    pub head: bool,
    pub version: Version,
    pub keep_alive: bool,
    /// Whether trailer fields may be sent (`TE: trailers`).
    pub trailers: bool,
}

/// How the body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client, length unknown).
    Close,
}

/// Writes `response`; `Ok(true)` when the connection can carry another request.
pub async fn write<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<I>,
    out: &mut Vec<u8>,
    response: Response<ResponseBody>,
    asked: &Asked,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let mut keep_alive = asked.keep_alive && !says_close(&parts.headers);
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| content_length(v.as_bytes(), None));
    let framing = if bodiless || asked.head {
        Framing::None
    } else if let Some(n) = declared {
        Framing::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        Framing::Length(n)
    } else if asked.version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        keep_alive = false;
        Framing::Close
    };

    out.clear();
    // A length the response states is kept where it describes the entity (HEAD, 304); one
    // that could not be parsed is not written beside a framing of the writer's own.
    let drop_length = (bodiless && status != StatusCode::NOT_MODIFIED)
        || (declared.is_none() && !asked.head && status != StatusCode::NOT_MODIFIED);
    encode_head(out, status, &parts.headers, drop_length);
    if !bodiless && declared.is_none() {
        match framing {
            Framing::Length(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
            Framing::None | Framing::Close => {}
        }
    }
    if status != StatusCode::SWITCHING_PROTOCOLS {
        if !keep_alive && asked.version == Version::HTTP_11 {
            out.extend_from_slice(b"connection: close\r\n");
        } else if keep_alive && asked.version == Version::HTTP_10 {
            out.extend_from_slice(b"connection: keep-alive\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");

    if framing == Framing::None {
        // Nothing goes out, but an upstream body (empty for these) is read to its end so its
        // connection returns to the pool. A tunnel's is left alone.
        if status != StatusCode::SWITCHING_PROTOCOLS {
            while let Some(Ok(_)) = next(&mut body).await {}
        }
        // Dropping the body records the exchange (metrics, access log): before the client can
        // have the whole answer, so whoever it tells reads the counts it caused.
        drop(body);
        write_all(shared, out).await?;
        out.clear();
        shared.flush().await?;
        return Ok(keep_alive);
    }

    let mut sent: u64 = 0;
    let mut trailers: Option<HeaderMap> = None;
    let mut complete = true;
    loop {
        let frame = match poll_fn(|cx| Poll::Ready(Pin::new(&mut body).poll_frame(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                // The body has to wait: what is gathered goes out first.
                if !out.is_empty() {
                    write_all(shared, out).await?;
                    out.clear();
                }
                shared.flush().await?;
                // A client that leaves while the body waits (a quiet stream) ends the exchange
                // now rather than at a write that may never come.
                let frame = poll_fn(|cx| {
                    if let Poll::Ready(frame) = Pin::new(&mut body).poll_frame(cx) {
                        return Poll::Ready(Some(frame));
                    }
                    if shared.poll_client_gone(cx) {
                        return Poll::Ready(None);
                    }
                    Poll::Pending
                })
                .await;
                match frame {
                    Some(frame) => frame,
                    None => return Err(io::ErrorKind::ConnectionAborted.into()),
                }
            }
        };
        let frame = match frame {
            None => break,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing the client connection");
                complete = false;
                break;
            }
        };
        let mut data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(mut t) = frame.into_trailers() {
                    drop_forbidden_trailers(&mut t);
                    trailers = Some(t);
                }
                continue;
            }
        };
        if data.is_empty() {
            continue;
        }
        if let Framing::Length(n) = framing {
            // More than announced would corrupt the next response on this connection.
            let room = n - sent;
            if data.len() as u64 > room {
                data.truncate(room as usize);
                complete = false;
            }
        }
        sent += data.len() as u64;
        let chunked = framing == Framing::Chunked;
        if chunked {
            chunk_size_line(out, data.len());
        }
        let suffix: &[u8] = if chunked { b"\r\n" } else { b"" };
        if out.len() + data.len() <= GATHER {
            out.extend_from_slice(&data);
            out.extend_from_slice(suffix);
        } else {
            write_parts(shared, out, &data, suffix).await?;
            out.clear();
        }
        if !complete {
            break;
        }
    }
    match framing {
        Framing::Chunked if complete => {
            out.extend_from_slice(b"0\r\n");
            if let Some(trailers) = trailers.as_ref().filter(|_| asked.trailers) {
                put_fields(out, trailers);
            }
            out.extend_from_slice(b"\r\n");
        }
        Framing::Length(n) if sent < n => complete = false,
        _ => {}
    }
    drop(body);
    if !out.is_empty() {
        write_all(shared, out).await?;
        out.clear();
    }
    shared.flush().await?;
    Ok(keep_alive && complete && framing != Framing::Close)
}

async fn next(body: &mut ResponseBody) -> Option<Result<Frame<Bytes>, BodyError>> {
    poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
}

/// Whether the response itself asks to close (the gateway's own answers to broken requests).
fn says_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| connection_options(v.as_bytes()).any(|o| o == ConnectionOption::Close))
}

/// Status line and fields. Framing and connection fields are the writer's to set; `Date` is
/// added when the response has none (RFC 9110 6.6.1).
fn encode_head(out: &mut Vec<u8>, status: StatusCode, headers: &HeaderMap, drop_length: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    let upgrade = status == StatusCode::SWITCHING_PROTOCOLS;
    for (name, value) in headers {
        let skip = (name == header::CONNECTION && !upgrade)
            || name == header::TRANSFER_ENCODING
            || (drop_length && name == header::CONTENT_LENGTH);
        if skip {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        DATE.with(|d| out.extend_from_slice(d.borrow_mut().now()));
        out.extend_from_slice(b"\r\n");
    }
}

pub async fn write_all<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<I>,
    data: &[u8],
) -> io::Result<()> {
    let mut at = 0;
    while at < data.len() {
        let n = poll_fn(|cx| shared.poll_write(cx, &data[at..])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        at += n;
    }
    Ok(())
}

/// Writes `a`, `b` and `c` in order with as few writes as the socket allows.
async fn write_parts<I: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared<I>,
    a: &[u8],
    b: &[u8],
    c: &[u8],
) -> io::Result<()> {
    let parts = [a, b, c];
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let mut done = 0;
    while done < total {
        let mut skip = done;
        let mut slices: [IoSlice<'_>; 3] = [IoSlice::new(&[]); 3];
        let mut count = 0;
        for p in parts {
            if skip >= p.len() {
                skip -= p.len();
                continue;
            }
            slices[count] = IoSlice::new(&p[skip..]);
            skip = 0;
            count += 1;
        }
        let n = poll_fn(|cx| shared.poll_write_vectored(cx, &slices[..count])).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        done += n;
    }
    Ok(())
}

/// The `Date` value, formatted once a second per worker.
struct CachedDate {
    second: u64,
    text: Vec<u8>,
}

impl CachedDate {
    fn now(&mut self) -> &[u8] {
        let now = SystemTime::now();
        let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if second != self.second || self.text.is_empty() {
            self.second = second;
            self.text = httpdate::fmt_http_date(now).into_bytes();
        }
        &self.text
    }
}

thread_local! {
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { second: 0, text: Vec::new() }) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_drops_framing_fields_and_adds_date() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive".parse().unwrap());
        headers.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        headers.insert("x-a", "1".parse().unwrap());
        let mut out = Vec::new();
        encode_head(&mut out, StatusCode::OK, &headers, false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.contains("x-a: 1\r\n"));
        assert!(text.contains("date: "));
        assert!(!text.contains("connection"));
        assert!(!text.contains("transfer-encoding"));
    }

    #[test]
    fn close_requests_are_recognised() {
        let mut headers = HeaderMap::new();
        assert!(!says_close(&headers));
        headers.insert(header::CONNECTION, "Keep-Alive, Close".parse().unwrap());
        assert!(says_close(&headers));
    }
}

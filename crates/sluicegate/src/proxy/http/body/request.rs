//! The client's request body on its way upstream: read from the gateway's HTTP/1.1 server
//! side or hyper's HTTP/2 one, counted, and cut off at the listener's size limit.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::stats::ExchangeStats;
use crate::proxy::http::server::h1::{ClientBodyError, ClientH1Body};
use crate::proxy::http::wire::chunked::drop_forbidden_trailers;

/// Why a client's request body could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body exceeds the listener's max_request_body_bytes")]
    TooLarge,
    /// Reading an HTTP/2 client's request body.
    #[error(transparent)]
    Transport(#[from] hyper::Error),
    /// Reading an HTTP/1.1 client's request body.
    #[error(transparent)]
    Client(#[from] ClientBodyError),
}

/// A client's request body: from the gateway's HTTP/1.1 server, or hyper's HTTP/2 one; or,
/// for a route that retries, what was read of it first.
pub enum ClientBody {
    H1(ClientH1Body),
    H2(Incoming),
    /// The whole body, read before the first try so that a retry can send it again (boxed:
    /// the variant is rare, and inline it would enlarge every request's body).
    Buffered(Box<Buffered>),
    /// No body (a retried GET's: nothing to keep).
    Empty,
}

/// A body read ahead: its data, then its trailers.
pub struct Buffered {
    pub data: Option<Bytes>,
    pub trailers: Option<http::HeaderMap>,
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        match self.get_mut() {
            ClientBody::Empty => Poll::Ready(None),
            ClientBody::Buffered(b) => Poll::Ready(match b.data.take().filter(|d| !d.is_empty()) {
                Some(data) => Some(Ok(Frame::data(data))),
                None => b.trailers.take().map(|t| Ok(Frame::trailers(t))),
            }),
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(RequestBodyError::Client),
            // HTTP/2 trailers pass the same filter as HTTP/1.1's (wire::chunked), whatever
            // the upstream speaks.
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map(|frame| {
                frame.map(|result| {
                    result
                        .map(|frame| match frame.into_trailers() {
                            Ok(mut trailers) => {
                                drop_forbidden_trailers(&mut trailers);
                                Frame::trailers(trailers)
                            }
                            Err(frame) => frame,
                        })
                        .map_err(RequestBodyError::Transport)
                })
            }),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
            ClientBody::Empty => true,
            ClientBody::Buffered(b) => {
                b.data.as_ref().is_none_or(Bytes::is_empty) && b.trailers.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
            // Trailers need chunked framing: then the length is not given as exact.
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Buffered(b) => {
                let len = b.data.as_ref().map_or(0, |d| d.len() as u64);
                if b.trailers.is_some() {
                    let mut hint = SizeHint::new();
                    hint.set_lower(len);
                    hint
                } else {
                    SizeHint::with_exact(len)
                }
            }
        }
    }
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: ClientBody,
    /// 0 = unlimited.
    limit: u64,
    stats: Rc<ExchangeStats>,
    /// Bytes at the start of the body that were counted (and checked against the limit) when
    /// they were read ahead for retries, and are not counted again.
    counted: u64,
}

impl RequestBody {
    pub fn new(inner: ClientBody, limit: u64, stats: Rc<ExchangeStats>) -> RequestBody {
        stats.body_pending.set(!inner.is_end_stream());
        RequestBody {
            inner,
            limit,
            stats,
            counted: 0,
        }
    }

    /// A body whose first `counted` bytes were read ahead, counted and checked already.
    pub fn read_ahead(
        inner: ClientBody,
        limit: u64,
        stats: Rc<ExchangeStats>,
        counted: u64,
    ) -> RequestBody {
        RequestBody {
            inner,
            limit,
            stats,
            counted,
        }
    }

    pub fn into_inner(self) -> ClientBody {
        self.inner
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let already = this.counted.min(data.len() as u64);
                    this.counted -= already;
                    let total = this.stats.bytes_in.get() + data.len() as u64 - already;
                    this.stats.bytes_in.set(total);
                    if this.limit != 0 && total > this.limit {
                        this.stats.body_too_large.set(true);
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge)));
                    }
                }
                // Its last frame (a sender may stop polling once the length is reached).
                if frame.is_trailers() || this.inner.is_end_stream() {
                    this.stats.body_pending.set(false);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.stats.client_body_failed.set(true);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.stats.body_pending.set(false);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! Body wrappers between client and upstream: both directions stream frame by frame (never
//! buffered whole), count bytes for the access log, and enforce limits and deadlines.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::downstream::{ClientBodyError, ClientH1Body};
use super::h1;

/// What a body failed with, besides the transport's own errors.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the listener's max_request_body_bytes")]
    TooLarge,
    #[error("the route's timeout expired while the response body was streaming")]
    Deadline,
    #[error(transparent)]
    Transport(#[from] hyper::Error),
    /// From the gateway's own HTTP/1.1 client (boxed: its error can hold a `BodyError`).
    #[error(transparent)]
    Upstream(Box<h1::Error>),
    /// Reading an HTTP/1.1 client's request body.
    #[error(transparent)]
    Client(#[from] ClientBodyError),
}

/// A client's request body: from the gateway's HTTP/1.1 server, or hyper's HTTP/2 one.
pub enum ClientBody {
    H1(ClientH1Body),
    H2(Incoming),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ClientBody::H1(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Client),
            ClientBody::H2(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Transport),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::H1(b) => b.is_end_stream(),
            ClientBody::H2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::H1(b) => b.size_hint(),
            ClientBody::H2(b) => b.size_hint(),
        }
    }
}

/// An upstream response body: from the gateway's HTTP/1.1 client, or from hyper (HTTP/2,
/// upgraded exchanges).
pub enum UpstreamBody {
    H1(h1::H1Body),
    Hyper(Incoming),
}

impl From<Incoming> for UpstreamBody {
    fn from(body: Incoming) -> Self {
        UpstreamBody::Hyper(body)
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            UpstreamBody::H1(b) => Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| BodyError::Upstream(Box::new(e))),
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(BodyError::Transport),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.is_end_stream(),
            UpstreamBody::Hyper(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::H1(b) => b.size_hint(),
            UpstreamBody::Hyper(b) => b.size_hint(),
        }
    }
}

/// Byte counts of one exchange, shared by the two body wrappers and the access log.
#[derive(Debug, Default)]
pub struct ExchangeStats {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Set when the request body went over the limit, so the forwarding error maps to 413.
    pub body_too_large: Cell<bool>,
    /// Set when the client's body could not be read (malformed chunking, a reset), so the
    /// forwarding error maps to 400 rather than blaming the upstream.
    pub client_body_failed: Cell<bool>,
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: ClientBody,
    /// 0 = unlimited.
    limit: u64,
    stats: Rc<ExchangeStats>,
}

impl RequestBody {
    pub fn new(inner: ClientBody, limit: u64, stats: Rc<ExchangeStats>) -> RequestBody {
        RequestBody {
            inner,
            limit,
            stats,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = this.stats.bytes_in.get() + data.len() as u64;
                    this.stats.bytes_in.set(total);
                    if this.limit != 0 && total > this.limit {
                        this.stats.body_too_large.set(true);
                        return Poll::Ready(Some(Err(BodyError::TooLarge)));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.stats.client_body_failed.set(true);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
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

/// Runs when a response body is dropped: after it was fully sent, or when the client went away.
pub trait Finish {
    fn finish(&mut self);
}

/// The body sent to the client: the upstream's, streamed, or one the gateway wrote itself.
pub struct ResponseBody {
    source: Source,
    stats: Rc<ExchangeStats>,
    finish: Option<Box<dyn Finish>>,
}

enum Source {
    Full(Option<Bytes>),
    Upstream {
        body: UpstreamBody,
        deadline: Option<tokio::time::Instant>,
        /// Armed only when the body first has to wait: most small responses arrive with their
        /// head, and a timer per request would cost an allocation and a timer-wheel entry.
        sleep: Option<Pin<Box<Sleep>>>,
    },
}

impl ResponseBody {
    /// A body the gateway wrote (errors, admin answers).
    pub fn full(bytes: Bytes, stats: Rc<ExchangeStats>) -> ResponseBody {
        ResponseBody {
            source: Source::Full(Some(bytes)),
            stats,
            finish: None,
        }
    }

    /// The upstream's body, cut off with an error if `deadline` passes first.
    pub fn upstream(
        body: UpstreamBody,
        deadline: Option<tokio::time::Instant>,
        stats: Rc<ExchangeStats>,
    ) -> ResponseBody {
        ResponseBody {
            source: Source::Upstream {
                body,
                deadline,
                sleep: None,
            },
            stats,
            finish: None,
        }
    }

    /// Sets what runs when the body is dropped (access log, metrics, in-flight count).
    pub fn on_finish(&mut self, finish: Box<dyn Finish>) {
        self.finish = Some(finish);
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream {
                body,
                deadline,
                sleep,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => {
                    // A body that is always ready (a fast large download) never waits on the
                    // timer, so the deadline is also checked here.
                    if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                        return Poll::Ready(Some(Err(BodyError::Deadline)));
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => {
                    if let Some(at) = *deadline {
                        let timer =
                            sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Some(Err(BodyError::Deadline)));
                        }
                    }
                    Poll::Pending
                }
            },
        };
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let out = &this.stats.bytes_out;
                out.set(out.get() + data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Full(bytes) => bytes.is_none(),
            Source::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
            Source::Upstream { body, .. } => body.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(mut finish) = self.finish.take() {
            finish.finish();
        }
    }
}

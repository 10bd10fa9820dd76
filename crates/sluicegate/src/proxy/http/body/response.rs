//! The body sent to the client: the upstream's, streamed under the route's deadline, or one the
//! gateway wrote itself; and what runs when it is done.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::stats::ExchangeStats;
use crate::proxy::http::client::h1;

/// What a response body failed with.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the route's timeout expired while the response body was streaming")]
    Deadline,
    /// From hyper's HTTP/2 client, or an upgraded exchange.
    #[error(transparent)]
    Transport(#[from] hyper::Error),
    /// From the gateway's own HTTP/1.1 client (boxed: it is large, and rare).
    #[error(transparent)]
    Upstream(Box<h1::Error>),
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

impl UpstreamBody {
    /// Whether its end cannot be told from the upstream failing (HTTP/1.x close-delimited).
    pub fn ends_at_close(&self) -> bool {
        match self {
            UpstreamBody::H1(b) => b.ends_at_close(),
            UpstreamBody::Hyper(_) => false,
        }
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

/// Runs when a response body is dropped: after it was fully sent, or when the client went away.
pub trait Finish {
    fn finish(&mut self);
}

/// The body sent to the client: the upstream's, streamed, or one the gateway wrote itself.
pub struct ResponseBody {
    source: Source,
    stats: Rc<ExchangeStats>,
    finish: Option<Box<dyn Finish>>,
    /// A copy of the body being gathered as it streams (the response cache's fill).
    collect: Option<Box<Collect>>,
}

/// Gathers a body as it streams, up to `limit` bytes, for `done` to have whole at its end. A
/// longer body, trailers, or an error end the gathering: the client's stream goes on untouched.
pub struct Collect {
    chunks: Vec<Bytes>,
    size: u64,
    limit: u64,
    done: Box<dyn FnOnce(Bytes)>,
}

impl Collect {
    pub fn new(limit: u64, done: Box<dyn FnOnce(Bytes)>) -> Collect {
        Collect {
            chunks: Vec::new(),
            size: 0,
            limit,
            done,
        }
    }

    /// Takes one frame; false when gathering ends without a body.
    fn take(&mut self, frame: &Frame<Bytes>) -> bool {
        let Some(data) = frame.data_ref() else {
            return false;
        };
        self.size += data.len() as u64;
        if self.size > self.limit {
            return false;
        }
        if !data.is_empty() {
            self.chunks.push(data.clone());
        }
        true
    }

    /// Hands over the body, copied into one buffer of its own: the chunks are slices of the
    /// connection's read buffers, which a stored copy must not keep alive.
    fn finish(self) {
        let mut whole = bytes::BytesMut::with_capacity(self.size as usize);
        for chunk in &self.chunks {
            whole.extend_from_slice(chunk);
        }
        (self.done)(whole.freeze());
    }
}

// The upstream's body is the common case and is moved once; boxing it would cost an allocation
// per request.
#[allow(clippy::large_enum_variant)]
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
            collect: None,
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
            collect: None,
        }
    }

    /// Sets what runs when the body is dropped (access log, metrics, in-flight count).
    pub fn on_finish(&mut self, finish: Box<dyn Finish>) {
        self.finish = Some(finish);
    }

    fn source_ended(&self) -> bool {
        match &self.source {
            Source::Full(bytes) => bytes.is_none(),
            Source::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    /// Gathers a copy of the body as it streams (see [`Collect`]). A body that has already
    /// ended (an empty one) is gathered at once: it may never be polled.
    pub fn collect(&mut self, collect: Collect) {
        if self.source_ended() {
            collect.finish();
        } else {
            self.collect = Some(Box::new(collect));
        }
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
        if this.collect.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if !this.collect.as_mut().is_some_and(|c| c.take(frame)) {
                        this.collect = None;
                    } else if this.source_ended() {
                        // Some servers (hyper's HTTP/2) stop polling once the body says it has
                        // ended, and never see the `None` after the last frame.
                        if let Some(collect) = this.collect.take() {
                            collect.finish();
                        }
                    }
                }
                Poll::Ready(None) => {
                    if let Some(collect) = this.collect.take() {
                        collect.finish();
                    }
                }
                Poll::Ready(Some(Err(_))) => this.collect = None,
                Poll::Pending => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.source_ended()
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

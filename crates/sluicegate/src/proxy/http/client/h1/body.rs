//! An upstream HTTP/1.1 response body, read from its connection as the client takes it.

use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::conn::{Conn, PoolKey};
use super::error::Error;
use crate::proxy::http::wire::chunked::{ChunkedDecoder, Decoded};
use crate::proxy::http::wire::response::Framing;

/// What takes a connection back once a response body has been read to its end: the worker's
/// pool, which the client knows only through this.
pub trait Checkin {
    fn checkin(&self, key: PoolKey, conn: Conn);
}

/// Where a connection goes back, and under which key.
pub struct PoolReturn {
    pub to: Rc<dyn Checkin>,
    pub key: PoolKey,
}

enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    Close,
    Done,
}

/// The response body; owns the connection until the body ends, then returns it to the pool
/// when it can carry another exchange. Dropped early, it closes the connection.
pub struct H1Body {
    conn: Option<Conn>,
    state: State,
    keep_alive: bool,
    ret: Option<PoolReturn>,
}

impl H1Body {
    /// Whether the body ends when the upstream closes the connection (no length, not chunked):
    /// an upstream that fails mid-body then looks the same as one that finished.
    pub fn ends_at_close(&self) -> bool {
        matches!(self.state, State::Close)
    }

    pub(super) fn new(conn: Conn, framing: Framing, keep_alive: bool, ret: PoolReturn) -> H1Body {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(ChunkedDecoder::default()),
            Framing::Close => State::Close,
        };
        let mut body = H1Body {
            conn: Some(conn),
            state,
            keep_alive,
            ret: Some(ret),
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The body is complete: the connection goes back to the pool if it is clean.
    fn finish(&mut self) {
        self.state = State::Done;
        let (Some(mut conn), Some(ret)) = (self.conn.take(), self.ret.take()) else {
            return;
        };
        // Bytes beyond the response are a broken upstream: such a connection is not reused.
        if self.keep_alive && conn.read_buf.is_empty() {
            conn.reused = true;
            ret.to.checkin(ret.key, conn);
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let buf = &mut conn.read_buf;
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(remaining) if !buf.is_empty() => {
                    let take = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                    let data = buf.split_to(take).freeze();
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(decoder) => match decoder.decode(buf) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        // Trailers end the body, and a server may not poll past them.
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(e) => {
                        this.conn = None;
                        return Poll::Ready(Some(Err(e.into())));
                    }
                },
                State::Close if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Length(_) | State::Close => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::Close) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::IncompleteBody)));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(n) => SizeHint::with_exact(n),
            State::Chunked(_) | State::Close => SizeHint::default(),
        }
    }
}

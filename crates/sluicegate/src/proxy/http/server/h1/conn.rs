//! A client connection's state as the serve loop and the request body share it.
//!
//! The request body is read by whoever forwards it (the request's own task for HTTP/1.1
//! upstreams, hyper's connection task for HTTP/2 ones), while the serve loop writes the
//! response: both reach the connection through [`Shared`], borrowed only inside a poll and
//! never across an await. A body that outlives its request (an upstream stopped reading it) is
//! recognised by its sequence number and reads nothing of the next request.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::proxy::http::wire::chunked::{ChunkError, ChunkedDecoder, Decoded};
use crate::proxy::http::wire::request::BodyFraming;

/// The interim answer to `Expect: 100-continue`, sent when the body is first read (as hyper and
/// nginx do): a client that waits for it sends its body only once an upstream wants it.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Read sizes: small for heads, larger while a body streams.
pub(super) const READ_HEAD: usize = 8 * 1024;
const READ_BODY: usize = 64 * 1024;

/// Why a client's request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    #[error("client I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("client closed the connection in the middle of the request body")]
    Incomplete,
    #[error("malformed chunked request body: {0}")]
    Chunked(#[from] ChunkError),
    #[error("request body read after its exchange ended")]
    Stale,
}

/// Where the current request's body stands.
enum BodyState {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// The connection and its read buffer.
pub struct State<I> {
    /// `None` once handed to a tunnel.
    pub io: Option<I>,
    pub buf: BytesMut,
    body: BodyState,
    /// Which request the body being read belongs to.
    seq: u64,
    /// Bytes of `100 Continue` still to send (`0` once sent, or when none is expected).
    continue_left: usize,
    /// The task last waiting for body bytes, woken when the request is retired: the socket
    /// keeps one read waker, and whoever reads next would otherwise take its place.
    body_waker: Option<Waker>,
}

pub struct Shared<I> {
    pub state: RefCell<State<I>>,
    /// The current request's sequence number, readable without a borrow.
    current: Cell<u64>,
}

impl<I: AsyncRead + AsyncWrite + Unpin> Shared<I> {
    pub fn new(io: I, buf: BytesMut) -> Rc<Shared<I>> {
        Rc::new(Shared {
            state: RefCell::new(State {
                io: Some(io),
                buf,
                body: BodyState::Done,
                seq: 0,
                continue_left: 0,
                body_waker: None,
            }),
            current: Cell::new(0),
        })
    }

    /// Starts a new request whose body is framed as `framing`; returns its sequence number.
    pub fn begin(&self, framing: BodyFraming, expects_continue: bool) -> u64 {
        let mut state = self.state.borrow_mut();
        state.seq += 1;
        state.body = match framing {
            BodyFraming::None => BodyState::Done,
            BodyFraming::Length(n) => BodyState::Length(n),
            BodyFraming::Chunked => BodyState::Chunked(ChunkedDecoder::strict()),
        };
        state.continue_left = if expects_continue && !matches!(state.body, BodyState::Done) {
            CONTINUE.len()
        } else {
            0
        };
        self.current.set(state.seq);
        state.seq
    }

    /// Whether the current request's body has been read to its end.
    pub fn body_done(&self) -> bool {
        matches!(self.state.borrow().body, BodyState::Done)
    }

    /// The response to the current request is being written: no `100 Continue` may follow.
    pub fn response_started(&self) {
        self.state.borrow_mut().continue_left = 0;
    }

    /// Ends the current request for good: a body reader still holding it (an HTTP/2 upstream's
    /// task) reads nothing more and is woken to find that out.
    pub fn retire(&self) {
        self.current.set(0);
        let mut state = self.state.borrow_mut();
        state.continue_left = 0;
        if let Some(waker) = state.body_waker.take() {
            waker.wake();
        }
    }

    /// Whether the client closed its connection (or it failed), checked only while nothing of
    /// the request is left to read and no pipelined bytes wait: bytes that arrive are the next
    /// request's and stay buffered.
    pub fn poll_client_gone(&self, cx: &mut Context<'_>) -> bool {
        {
            let state = self.state.borrow();
            if !matches!(state.body, BodyState::Done) || !state.buf.is_empty() {
                return false;
            }
        }
        matches!(self.poll_fill(cx, READ_HEAD), Poll::Ready(Ok(0) | Err(_)))
    }

    /// Reads more from the client into the buffer; `Ok(0)` at end of stream.
    pub fn poll_fill(&self, cx: &mut Context<'_>, size: usize) -> Poll<io::Result<usize>> {
        let mut state = self.state.borrow_mut();
        let state = &mut *state;
        let Some(io) = state.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        if state.buf.is_empty() {
            // Read at the start of the buffer again once the previous request let go of it:
            // the next head then lands on the lines the last one warmed, where advancing
            // through the buffer wrote every request into cold memory (with many connections,
            // a cache miss per line in the kernel's copy). Asking for one byte more than the
            // room left is what makes `try_reclaim` move back to the start; while a request
            // still holds part of the buffer it does nothing, and it never allocates.
            let room = state.buf.capacity();
            let _ = state.buf.try_reclaim(room + 1);
        }
        if state.buf.capacity() - state.buf.len() < size / 2 {
            state.buf.reserve(size);
        }
        let read = tokio_util::io::poll_read_buf(Pin::new(io), cx, &mut state.buf);
        if read.is_pending() && state.buf.is_empty() {
            // Nothing to read and nothing kept: the connection is idle (between requests, most
            // often). A read that found nothing leaves the stream waiting for readiness without
            // the buffer, so the buffer goes back to the allocator (its per-thread free lists
            // hand it out again when bytes arrive) rather than stay with a connection that may
            // idle for minutes.
            state.buf = BytesMut::new();
        }
        read
    }

    pub async fn fill(&self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx, READ_HEAD)).await
    }

    pub fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.state.borrow_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, data),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    pub fn poll_write_vectored(
        &self,
        cx: &mut Context<'_>,
        parts: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.state.borrow_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, parts),
            None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    pub async fn flush(&self) -> io::Result<()> {
        poll_fn(|cx| match self.state.borrow_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Ok(())),
        })
        .await
    }

    pub async fn shutdown(&self) {
        let _ = poll_fn(|cx| match self.state.borrow_mut().io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Ok(())),
        })
        .await;
    }

    /// Sends what is left of `100 Continue`; ready once it is all written.
    fn poll_continue(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let left = self.state.borrow().continue_left;
            if left == 0 {
                return Poll::Ready(Ok(()));
            }
            let n = std::task::ready!(self.poll_write(cx, &CONTINUE[CONTINUE.len() - left..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.state.borrow_mut().continue_left = left - n;
            if left == n {
                if let Some(io) = self.state.borrow_mut().io.as_mut() {
                    // Best effort: a TLS stream may hold the bytes until flushed.
                    let _ = Pin::new(io).poll_flush(cx);
                }
            }
        }
    }

    /// The next piece of request `seq`'s body.
    fn poll_body(
        &self,
        cx: &mut Context<'_>,
        seq: u64,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if self.current.get() != seq {
            return Poll::Ready(Some(Err(ClientBodyError::Stale)));
        }
        if let Err(e) = std::task::ready!(self.poll_continue(cx)) {
            return Poll::Ready(Some(Err(e.into())));
        }
        loop {
            {
                let mut state = self.state.borrow_mut();
                let state = &mut *state;
                match &mut state.body {
                    BodyState::Done => return Poll::Ready(None),
                    BodyState::Length(left) => {
                        if !state.buf.is_empty() {
                            let n = (*left).min(state.buf.len() as u64) as usize;
                            let data = state.buf.split_to(n).freeze();
                            *left -= n as u64;
                            if *left == 0 {
                                state.body = BodyState::Done;
                            }
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                    BodyState::Chunked(decoder) => match decoder.decode(&mut state.buf) {
                        Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        // Trailers end the body: nothing of it is left to read, and the
                        // connection may carry the next (perhaps already pipelined) request.
                        Ok(Decoded::Trailers(trailers)) => {
                            state.body = BodyState::Done;
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                        Ok(Decoded::End) => {
                            state.body = BodyState::Done;
                            return Poll::Ready(None);
                        }
                        Ok(Decoded::NeedMore) => {}
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    },
                }
            }
            let filled = self.poll_fill(cx, READ_BODY);
            if filled.is_pending() {
                let mut state = self.state.borrow_mut();
                if !state
                    .body_waker
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.body_waker = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            match filled {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Some(Err(ClientBodyError::Incomplete))),
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn body_hint(&self, seq: u64) -> (bool, SizeHint) {
        if self.current.get() != seq {
            return (true, SizeHint::with_exact(0));
        }
        match &self.state.borrow().body {
            BodyState::Done => (true, SizeHint::with_exact(0)),
            BodyState::Length(n) => (false, SizeHint::with_exact(*n)),
            BodyState::Chunked(_) => (false, SizeHint::default()),
        }
    }
}

/// The body reader, as the request pipeline sees it: not generic over the connection type.
trait BodySource {
    fn poll_body(
        &self,
        cx: &mut Context<'_>,
        seq: u64,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>>;
    fn hint(&self, seq: u64) -> (bool, SizeHint);
}

impl<I: AsyncRead + AsyncWrite + Unpin> BodySource for Shared<I> {
    fn poll_body(
        &self,
        cx: &mut Context<'_>,
        seq: u64,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        Shared::poll_body(self, cx, seq)
    }

    fn hint(&self, seq: u64) -> (bool, SizeHint) {
        self.body_hint(seq)
    }
}

/// An HTTP/1.1 client's request body, streamed from its connection.
pub struct ClientH1Body {
    source: Rc<dyn BodySource>,
    seq: u64,
}

impl ClientH1Body {
    pub fn new<I: AsyncRead + AsyncWrite + Unpin + 'static>(
        shared: &Rc<Shared<I>>,
        seq: u64,
    ) -> ClientH1Body {
        let source: Rc<dyn BodySource> = Rc::clone(shared) as Rc<dyn BodySource>;
        ClientH1Body { source, seq }
    }
}

impl http_body::Body for ClientH1Body {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        self.source.poll_body(cx, self.seq)
    }

    fn is_end_stream(&self) -> bool {
        self.source.hint(self.seq).0
    }

    fn size_hint(&self) -> SizeHint {
        self.source.hint(self.seq).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn reads_start_over_at_the_buffer_start_once_the_last_request_let_go_of_it() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let shared = Shared::new(server, BytesMut::new());

        client.write_all(b"GET /a HTTP/1.1\r\n\r\n").await.unwrap();
        let n = shared.fill().await.unwrap();
        let start = shared.state.borrow().buf.as_ptr();
        let head = shared.state.borrow_mut().buf.split_to(n).freeze();

        // While the request holds its head, the next bytes go after it and the head is intact.
        client.write_all(b"GET /b HTTP/1.1\r\n\r\n").await.unwrap();
        let m = shared.fill().await.unwrap();
        assert_ne!(shared.state.borrow().buf.as_ptr(), start);
        assert_eq!(&head[..], b"GET /a HTTP/1.1\r\n\r\n");
        let second = shared.state.borrow_mut().buf.split_to(m).freeze();
        assert_eq!(&second[..], b"GET /b HTTP/1.1\r\n\r\n");

        // Both requests done: the next head is read at the start of the same allocation.
        drop((head, second));
        client.write_all(b"GET /c HTTP/1.1\r\n\r\n").await.unwrap();
        shared.fill().await.unwrap();
        let state = shared.state.borrow();
        assert_eq!(state.buf.as_ptr(), start);
        assert_eq!(&state.buf[..], b"GET /c HTTP/1.1\r\n\r\n");
    }
}

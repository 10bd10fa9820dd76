//! The gateway's own HTTP/1.1 server side: reading client requests and writing responses.
//!
//! Why not hyper's server: its connection state machine, request parsing into a fresh header
//! map and response encoding cost about 5,000 instructions per request, and it flushed every
//! response through a vectored write of its own buffers (docs/performance.md). Here a request
//! head is parsed with `httparse` straight from the connection's buffer (values are slices of
//! it), the response head is encoded once and a small body joins it in the same `send`, and
//! pipelined requests are taken from the buffer without another read.
//!
//! Behaviour kept from hyper and nginx: keep-alive by HTTP/1.1 and HTTP/1.0 rules, `100
//! Continue` sent when the body is first read, chunked request and response bodies with
//! trailers, the listener's `request_header_timeout` on idle keep-alive and on receiving a head, graceful shutdown between
//! requests, WebSocket upgrades handed to a tunnel with any bytes already read, and a client
//! that closes mid-request cancelling the exchange (logged as 499). Malformed heads get the
//! gateway's JSON 400 (431 for oversized ones) and the connection closes. HTTP/2 cleartext by
//! prior knowledge is recognised by its preface and handed to hyper's HTTP/2 server.

mod conn;
mod respond;
mod rewind;

use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch};
use tokio::time::{Instant, Sleep};

pub use conn::{ClientBodyError, ClientH1Body};
pub use rewind::Rewind;

use crate::proxy::http::wire::request::{self as head, HeadError, RequestHead};
use conn::Shared;

use crate::answer::GatewayError;
use crate::proxy::http::body::{ClientBody, ExchangeStats, ResponseBody};
use crate::proxy::http::deadline::DeadlineTimer;
use crate::proxy::http::headers::new_request_id;
use crate::proxy::spare::{Buffer, WRITES};

/// The first bytes of every HTTP/2 connection (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// After answering a request it will not read further, the gateway still reads (and drops)
/// what the client sends for this long, up to this much, so closing does not reset the
/// connection before the client has read the answer.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 1 << 20;

/// A connection an upgrade handed over, with anything the client sent after its request head.
pub struct Upgraded(pub Rewind<Box<dyn TunnelIo>>);

/// What a tunnel needs of a client connection.
pub trait TunnelIo: AsyncRead + AsyncWrite + Unpin {}
impl<T: AsyncRead + AsyncWrite + Unpin> TunnelIo for T {}

/// The client side of an upgrade: resolves once the `101` has been written.
pub struct ClientUpgrade(oneshot::Receiver<Upgraded>);

impl ClientUpgrade {
    pub async fn ready(self) -> Option<Upgraded> {
        self.0.await.ok()
    }
}

/// How a connection ended, when HTTP/1.1 was not what it spoke.
pub enum Handoff<I> {
    /// The client opened with the HTTP/2 preface: the connection, preface included.
    Http2(Rewind<I>),
}

/// What answers the requests a connection reads: the gateway's pipeline in production, anything
/// in a test. The server side knows nothing else of what happens to a request.
pub trait Handler {
    /// Answers `request`; never fails (every problem is a response). `upgrade` is the
    /// connection's side of a WebSocket upgrade the request asks for; `timer` a deadline timer
    /// the connection keeps across its requests.
    fn handle<'a>(
        &'a self,
        request: Request<ClientBody>,
        upgrade: Option<ClientUpgrade>,
        timer: &'a mut DeadlineTimer,
    ) -> impl Future<Output = http::Response<ResponseBody>> + 'a;
}

/// A listener's bounds on reading request heads.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// `max_request_header_bytes`.
    pub max_bytes: usize,
    /// `request_header_timeout`: how long a head may take to arrive, counted from the first
    /// wait for it (so it also bounds an idle keep-alive connection).
    pub timeout: Duration,
}

/// Serves HTTP/1.1 requests on `io` until the client closes, a request says close, or `stop`
/// turns true. With `detect_h2`, a connection opening with the HTTP/2 preface is handed back.
/// `peer` names the client in debug logs.
///
/// Not an `async fn`: the stream goes into the connection's shared state before the future is
/// made, so the future does not keep a second, dead copy of it (a TLS stream is over 1 KiB)
/// for the connection's whole life.
pub fn serve<I, H>(
    handler: H,
    io: I,
    detect_h2: bool,
    limits: HeadLimits,
    peer: std::net::SocketAddr,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = Option<Handoff<I>>>
where
    I: AsyncRead + AsyncWrite + Unpin + 'static,
    H: Handler,
{
    let connection = Connection {
        shared: Shared::new(io, BytesMut::new()),
        limits,
        peer,
        detect_h2,
    };
    connection.serve(handler, stop)
}

/// What a connection's serve loop knows of it.
struct Connection<I> {
    shared: Rc<Shared<I>>,
    limits: HeadLimits,
    peer: std::net::SocketAddr,
    detect_h2: bool,
}

/// How one exchange ended for its connection.
enum Ended {
    /// The connection can carry another request.
    KeepAlive,
    /// The response said close (or shutdown, or an unread body): close politely.
    Close,
    /// The client left, or writing to it failed: nothing more to do.
    Gone,
    /// The connection went to a WebSocket tunnel.
    Upgraded,
}

impl<I: AsyncRead + AsyncWrite + Unpin + 'static> Connection<I> {
    /// The serve loop. What it holds while waiting for the next head is all an idle
    /// connection costs, so everything an exchange needs lives in [`Connection::exchange`]'s
    /// future, boxed per request.
    async fn serve<H: Handler>(
        self,
        handler: H,
        stop: watch::Receiver<bool>,
    ) -> Option<Handoff<I>> {
        let shared = &self.shared;
        // hyper's bound too: the pipeline answers heads over the limit with a JSON 431 of its
        // own; twice the limit is what the connection buffers at most while a head is
        // incomplete.
        let max_head = (self.limits.max_bytes * 2).max(16 * 1024);
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        let mut deadline_timer: DeadlineTimer = None;
        let mut sniff = self.detect_h2;
        // One shutdown watch for the connection's life: once registered, polling it again
        // between requests costs next to nothing, where a fresh `wait_for` per request cost a
        // lock and a waiter-list insertion and removal. It is not polled after it completes:
        // the connection closes then.
        let mut stop_signal = stop.clone();
        let mut stopping = pin!(async move {
            let _ = stop_signal.wait_for(|s| *s).await;
        });
        // No `await` inside the matches below: a value matched on would stay in the future
        // for as long as an arm awaits, and so in every idle connection's task.
        let refused = loop {
            let wait = Wait {
                stopping: stopping.as_mut(),
                timer: &mut timer,
                timeout: self.limits.timeout,
            };
            let head = match next_head(shared, max_head, wait, &mut sniff).await {
                Next::Head(head) => head,
                Next::Closed => break None,
                Next::Http2 => {
                    let mut state = shared.state.borrow_mut();
                    let prefix = state.buf.split().freeze();
                    return state
                        .io
                        .take()
                        .map(|io| Handoff::Http2(Rewind::new(prefix, io)));
                }
                Next::Refused(error) => break Some(error),
            };
            // Boxed, and so gone between requests: the exchange's state is most of a
            // connection task's size (about 9 KiB), which an idle keep-alive connection would
            // otherwise carry for its whole life.
            let exchange = self.exchange(&handler, head, &mut deadline_timer, &stop);
            match Box::pin(exchange).await {
                Ended::KeepAlive => continue,
                Ended::Close => break None,
                Ended::Gone => {
                    shared.retire();
                    return None;
                }
                Ended::Upgraded => return None,
            }
        };
        if let Some(error) = refused {
            Box::pin(refuse(shared, error)).await;
            return None;
        }
        shared.retire();
        if shared.body_done() {
            close(shared).await;
        } else {
            // The client may still be sending the body nobody read.
            linger(shared).await;
        }
        None
    }

    /// One request and its response.
    async fn exchange<H: Handler>(
        &self,
        handler: &H,
        head: RequestHead,
        deadline_timer: &mut DeadlineTimer,
        stop: &watch::Receiver<bool>,
    ) -> Ended {
        let shared = &self.shared;
        let mut asked = respond::Asked {
            head: head.method == Method::HEAD,
            version: head.version,
            keep_alive: head.keep_alive,
            trailers: head.accepts_trailers,
        };
        let (upgrade_to, upgrade) = if head.websocket {
            let (to, from) = oneshot::channel();
            (Some(to), Some(ClientUpgrade(from)))
        } else {
            (None, None)
        };
        let request = request(shared, head);
        let response = {
            let handling = pin!(handler.handle(request, upgrade, deadline_timer));
            match until_client_leaves(shared, handling).await {
                Some(response) => response,
                // Dropping the exchange logs it as 499 and frees its upstream connection.
                None => return Ended::Gone,
            }
        };
        // A body left unread, or shutdown, ends the connection after this response; the
        // response says so.
        shared.response_started();
        if !shared.body_done() || *stop.borrow() {
            asked.keep_alive = false;
        }
        let status = response.status();
        let mut out = Buffer::take(&WRITES);
        let keep_alive = match respond::write(shared, &mut out, response, &asked).await {
            Ok(keep_alive) => keep_alive,
            Err(e) => {
                tracing::debug!(peer = %self.peer, error = %e, "writing to the client failed");
                return Ended::Gone;
            }
        };
        if status == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(to) = upgrade_to {
                hand_over(shared, to);
                return Ended::Upgraded;
            }
        }
        if keep_alive {
            Ended::KeepAlive
        } else {
            Ended::Close
        }
    }
}

/// Closes the sending side politely (a TLS close_notify), bounded in time.
async fn close<I: AsyncRead + AsyncWrite + Unpin>(shared: &Shared<I>) {
    let _ = tokio::time::timeout(LINGER, shared.shutdown()).await;
}

/// The request the pipeline sees.
fn request<I: AsyncRead + AsyncWrite + Unpin + 'static>(
    shared: &Rc<Shared<I>>,
    head: RequestHead,
) -> Request<ClientBody> {
    let seq = shared.begin(head.body, head.expects_continue);
    let mut request = Request::new(ClientBody::H1(ClientH1Body::new(shared, seq)));
    *request.method_mut() = head.method;
    *request.uri_mut() = head.uri;
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers;
    request
}

// A head is the common case and is moved once; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Next {
    Head(RequestHead),
    Closed,
    Refused(HeadError),
    Http2,
}

/// What ends a wait for a head besides bytes: shutdown and the header timeout.
struct Wait<'a, S> {
    stopping: Pin<&'a mut S>,
    /// Armed once per connection and moved only when it fires: resetting it for every request
    /// would cost a timer-wheel update per request.
    timer: &'a mut Option<Pin<Box<Sleep>>>,
    /// The listener's `request_header_timeout`: how long a head may take to arrive, counted
    /// from the first wait for it (so it also bounds an idle keep-alive connection).
    timeout: Duration,
}

/// Waits for the next complete request head, within the header timeout and until shutdown.
///
/// One poll function rather than nested `async fn`s: this is what every idle connection's task
/// holds while it waits, and each `async fn` layer would keep its own copies of its arguments.
async fn next_head<I: AsyncRead + AsyncWrite + Unpin, S: Future<Output = ()>>(
    shared: &Shared<I>,
    max: usize,
    mut wait: Wait<'_, S>,
    sniff: &mut bool,
) -> Next {
    let mut deadline = None;
    // Buffer length at the last incomplete parse: a head is parsed again only once bytes that
    // can end it have arrived, so a client dripping a large head byte by byte does not make
    // the gateway re-parse it from the start for every byte.
    let mut incomplete_at: Option<usize> = None;
    poll_fn(|cx| loop {
        let unfinished = incomplete_at.is_some_and(|at| {
            let state = shared.state.borrow();
            let new = &state.buf[at.saturating_sub(3)..];
            let ended =
                new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n");
            !ended && state.buf.len() <= max
        });
        if !unfinished {
            let mut state = shared.state.borrow_mut();
            if *sniff && !state.buf.is_empty() {
                let n = state.buf.len().min(H2_PREFACE.len());
                if state.buf[..n] == H2_PREFACE[..n] {
                    if n == H2_PREFACE.len() {
                        return Poll::Ready(Next::Http2);
                    }
                } else {
                    *sniff = false;
                }
            }
            if !*sniff && !state.buf.is_empty() {
                match head::parse(&mut state.buf, max) {
                    Ok(Some(head)) => return Poll::Ready(Next::Head(head)),
                    Ok(None) => incomplete_at = Some(state.buf.len()),
                    Err(e) => return Poll::Ready(Next::Refused(e)),
                }
            }
        }
        match poll_bytes(cx, shared, &mut wait, &mut deadline) {
            Poll::Ready(true) => continue,
            Poll::Ready(false) => return Poll::Ready(Next::Closed),
            Poll::Pending => return Poll::Pending,
        }
    })
    .await
}

/// Reads more of a head: `Ready(true)` when bytes arrived; `Ready(false)` at end of stream, on
/// a read error, at the header timeout, or at shutdown.
fn poll_bytes<I: AsyncRead + AsyncWrite + Unpin, S: Future<Output = ()>>(
    cx: &mut Context<'_>,
    shared: &Shared<I>,
    wait: &mut Wait<'_, S>,
    deadline: &mut Option<Instant>,
) -> Poll<bool> {
    if let Poll::Ready(r) = shared.poll_fill(cx, conn::READ_HEAD) {
        return Poll::Ready(matches!(r, Ok(n) if n > 0));
    }
    if wait.stopping.as_mut().poll(cx).is_ready() {
        return Poll::Ready(false);
    }
    let at = *deadline.get_or_insert_with(|| Instant::now() + wait.timeout);
    // The timer is armed once per connection and moved only when it fires: resetting it for
    // every request would cost a timer-wheel update per request. It keeps the waker it was
    // last polled with, and the connection's task never changes, so it needs polling only
    // when new or due.
    let due = wait
        .timer
        .as_ref()
        .is_none_or(|t| Instant::now() >= t.deadline());
    if due {
        let sleep = wait
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        while sleep.as_mut().poll(cx).is_ready() {
            if Instant::now() >= at {
                return Poll::Ready(false);
            }
            sleep.as_mut().reset(at);
        }
    }
    Poll::Pending
}

/// Runs the exchange, but gives up when the client closes its connection meanwhile.
async fn until_client_leaves<I, F>(
    shared: &Shared<I>,
    mut exchange: Pin<&mut F>,
) -> Option<F::Output>
where
    I: AsyncRead + AsyncWrite + Unpin,
    F: Future,
{
    poll_fn(|cx| {
        if let Poll::Ready(output) = exchange.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        if shared.poll_client_gone(cx) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Answers a head the gateway cannot serve, then closes (lingering: see [`linger`]).
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(shared: &Shared<I>, error: HeadError) {
    tracing::debug!(%error, "refused a request head");
    let answer = match error {
        HeadError::TooLarge => GatewayError::HeadersTooLarge,
        HeadError::Malformed(why) => GatewayError::Malformed(why),
        HeadError::NotImplemented(what) => GatewayError::NotImplemented(what),
    };
    let id = new_request_id();
    let response = answer
        .response(id.to_str().unwrap_or_default(), true)
        .map(|body| ResponseBody::full(body, Rc::new(ExchangeStats::default())));
    let asked = respond::Asked {
        head: false,
        version: Version::HTTP_11,
        keep_alive: false,
        trailers: false,
    };
    let _ = respond::write(shared, &mut Buffer::take(&WRITES), response, &asked).await;
    linger(shared).await;
}

/// Closes the sending side, then reads and drops what the client still sends for a moment: a
/// close with unread data makes the kernel reset the connection, which can destroy the answer
/// before the client has read it.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(shared: &Shared<I>) {
    close(shared).await;
    let drained = async {
        let mut total = 0;
        loop {
            shared.state.borrow_mut().buf.clear();
            match shared.fill().await {
                Ok(n) if n > 0 && total < LINGER_BYTES => total += n,
                _ => return,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drained).await;
}

/// Gives the connection, and what the client sent after its head, to the tunnel.
fn hand_over<I: AsyncRead + AsyncWrite + Unpin + 'static>(
    shared: &Shared<I>,
    to: oneshot::Sender<Upgraded>,
) {
    let mut state = shared.state.borrow_mut();
    let rest: Bytes = state.buf.split().freeze();
    if let Some(io) = state.io.take() {
        let io: Box<dyn TunnelIo> = Box::new(io);
        let _ = to.send(Upgraded(Rewind::new(rest, io)));
    }
}

//! Serving one client connection over HTTP/1.1 or HTTP/2 (cleartext by prior knowledge, or as
//! TLS ALPN decided), with upgrades (WebSocket) and graceful shutdown.

use std::rc::Rc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::server::{handle, ConnInfo, Worker};
use super::LocalExec;

/// How long a client may take to send a request head: a bound against slow-header attacks, and
/// the idle time after which a keep-alive HTTP/1.1 connection is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent streams one HTTP/2 client may open (nginx and Envoy use 128 and 100; a gateway in
/// front of many clients keeps each one modest).
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// HTTP/2 flow-control windows: large enough not to throttle streaming on fast links, bounded so
/// a slow reader cannot make the gateway buffer much per stream.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

/// Which protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// HTTP/1.1, or HTTP/2 when the client opens with the HTTP/2 preface (prior knowledge).
    Detect,
    Http1,
    Http2,
}

impl Mode {
    /// The mode TLS ALPN chose.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Mode {
        match alpn {
            Some(b"h2") => Mode::Http2,
            Some(_) => Mode::Http1,
            None => Mode::Detect,
        }
    }
}

/// Serves requests on `io` until the client closes, or until `stop` turns true (then the
/// request in progress finishes and the connection closes politely).
pub async fn serve<I>(
    worker: Rc<Worker>,
    info: Rc<ConnInfo>,
    io: I,
    mode: Mode,
    header_limit: usize,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let worker = Rc::clone(&worker);
        let info = Rc::clone(&info);
        service_fn(move |req| handle(Rc::clone(&worker), Rc::clone(&info), req))
    };
    let mut builder = auto::Builder::new(LocalExec);
    builder = match mode {
        Mode::Detect => builder,
        Mode::Http1 => builder.http1_only(),
        Mode::Http2 => builder.http2_only(),
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        // The pipeline answers heads over the limit with a JSON 431; hyper's own limit (twice as
        // large, it answers with an empty 431) is the hard bound on memory.
        .max_buf_size((header_limit * 2).max(16 * 1024));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(header_limit * 2).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = %info.peer, error = %e, "client connection ended with an error");
            }
            return;
        }
        _ = stop.wait_for(|s| *s) => {
            connection.as_mut().graceful_shutdown();
        }
    }
    let _ = connection.await;
}

//! Serving one client connection over HTTP/1.1 or HTTP/2 (cleartext by prior knowledge, or as
//! TLS ALPN decided), with upgrades (WebSocket) and graceful shutdown.

use std::rc::Rc;
use std::time::Duration;

use std::future::Future;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::body::{ClientBody, ResponseBody};
use super::deadline::DeadlineTimer;
use super::downstream::{self, ClientUpgrade, Handoff, HeadLimits};
use super::server::{handle, ConnInfo, Worker};
use super::LocalExec;
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
/// request in progress finishes and the connection closes politely). HTTP/1.1 is served by the
/// gateway's own server side (`downstream`), HTTP/2 by hyper's.
pub async fn serve<I>(
    worker: Rc<Worker>,
    info: Rc<ConnInfo>,
    io: I,
    mode: Mode,
    header_limit: usize,
    stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match mode {
        Mode::Http2 => serve_h2(worker, info, io, header_limit, stop).await,
        Mode::Http1 | Mode::Detect => {
            let detect = mode == Mode::Detect;
            let pipeline = Pipeline {
                worker: Rc::clone(&worker),
                info: Rc::clone(&info),
            };
            let limits = HeadLimits {
                max_bytes: header_limit,
                timeout: info.header_timeout,
            };
            let handoff =
                downstream::serve(pipeline, io, detect, limits, info.peer, stop.clone()).await;
            if let Some(Handoff::Http2(io)) = handoff {
                serve_h2(worker, info, io, header_limit, stop).await;
            }
        }
    }
}

/// The request pipeline as the HTTP/1.1 server side calls it.
struct Pipeline {
    worker: Rc<Worker>,
    info: Rc<ConnInfo>,
}

impl downstream::Handler for Pipeline {
    fn handle<'a>(
        &'a self,
        request: Request<ClientBody>,
        upgrade: Option<ClientUpgrade>,
        timer: &'a mut DeadlineTimer,
    ) -> impl Future<Output = Response<ResponseBody>> + 'a {
        let handling = handle(
            Rc::clone(&self.worker),
            Rc::clone(&self.info),
            request,
            upgrade,
            Some(timer),
        );
        async move {
            match handling.await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    }
}

async fn serve_h2<I>(
    worker: Rc<Worker>,
    info: Rc<ConnInfo>,
    io: I,
    header_limit: usize,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let worker = Rc::clone(&worker);
        let info = Rc::clone(&info);
        service_fn(move |req: Request<Incoming>| {
            handle(
                Rc::clone(&worker),
                Rc::clone(&info),
                req.map(ClientBody::H2),
                None,
                None,
            )
        })
    };
    let connection = http2::Builder::new(LocalExec)
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(u32::try_from(header_limit * 2).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(io), service);
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

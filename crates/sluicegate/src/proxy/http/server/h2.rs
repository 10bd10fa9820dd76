//! HTTP/2 client connections, served by hyper, each request handed to the pipeline.

use std::rc::Rc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::proxy::http::body::ClientBody;
use crate::proxy::http::pipeline::{handle, ConnInfo, Worker};
use crate::proxy::http::LocalExec;

/// Concurrent streams one HTTP/2 client may open (nginx and Envoy use 128 and 100; a gateway in
/// front of many clients keeps each one modest).
const MAX_CONCURRENT_STREAMS: u32 = 128;
/// HTTP/2 flow-control windows: large enough not to throttle streaming on fast links, bounded so
/// a slow reader cannot make the gateway buffer much per stream.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 4 << 20;

pub(super) async fn serve_h2<I>(
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

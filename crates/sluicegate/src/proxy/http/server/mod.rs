//! Serving one client connection over HTTP/1.1 or HTTP/2 (cleartext by prior knowledge, or as
//! TLS ALPN decided), with upgrades (WebSocket) and graceful shutdown.

use std::future::Future;
use std::rc::Rc;

use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

pub mod h1;
mod h2;

use h1::{ClientUpgrade, Handoff, HeadLimits};
use h2::serve_h2;

use crate::proxy::http::body::{ClientBody, ResponseBody};
use crate::proxy::http::deadline::DeadlineTimer;
use crate::proxy::http::pipeline::{handle, ConnInfo, Worker};

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
/// gateway's own server side (`h1`), HTTP/2 by hyper's (`h2`).
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
            let handoff = h1::serve(pipeline, io, detect, limits, info.peer, stop.clone()).await;
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

impl h1::Handler for Pipeline {
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

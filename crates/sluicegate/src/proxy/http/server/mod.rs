//! Serving one client connection over HTTP/1.1 or HTTP/2 (cleartext by prior knowledge, or as
//! TLS ALPN decided), with upgrades (WebSocket) and graceful shutdown.

use std::future::Future;
use std::rc::Rc;

use futures_util::future::{self, Either, FutureExt};
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
///
/// Not an `async fn`, for the reason [`h1::serve`] is not: the stream is handed on before the
/// future is made, so the connection's task holds it once.
pub fn serve<I>(
    worker: Rc<Worker>,
    info: Rc<ConnInfo>,
    io: I,
    mode: Mode,
    header_limit: usize,
    stop: watch::Receiver<bool>,
) -> impl Future<Output = ()>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Combinators, not an `async` block: a block would keep the HTTP/1.1 future it awaits
    // twice (once as captured, once as awaited), and the handed-over stream with it.
    match mode {
        // Boxed: hyper's connection is larger than the whole HTTP/1.1 serve loop, which would
        // otherwise carry its size on every HTTP/1.1 connection.
        Mode::Http2 => Either::Left(Box::pin(serve_h2(worker, info, io, header_limit, stop))),
        Mode::Http1 | Mode::Detect => {
            let pipeline = Pipeline {
                worker: Rc::clone(&worker),
                info: Rc::clone(&info),
            };
            let limits = HeadLimits {
                max_bytes: header_limit,
                timeout: info.header_timeout,
            };
            let detect = mode == Mode::Detect;
            let h1 = h1::serve(pipeline, io, detect, limits, info.peer, stop.clone());
            Either::Right(h1.then(move |handoff| match handoff {
                Some(Handoff::Http2(io)) => {
                    Either::Left(Box::pin(serve_h2(worker, info, io, header_limit, stop)))
                }
                None => Either::Right(future::ready(())),
            }))
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
        // `map`, not an `async` block, which would hold the exchange's state twice.
        handling.map(|answer| match answer {
            Ok(response) => response,
            Err(never) => match never {},
        })
    }
}

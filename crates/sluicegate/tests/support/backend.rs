//! Real HTTP/1.1 backends for integration tests, on 127.0.0.1:0, each on its own runtime.
//!
//! Paths: `/sleep/MS` answers after MS milliseconds; `/bytes/N` streams N bytes; `/upload` reads
//! the body and answers with its length; `/status/CODE` answers CODE; anything else answers 200
//! with the backend's name as body and `x-backend` header (status settable with `set_status`);
//! `/healthz` answers the status set with `set_health`. Every request's head is recorded. Any
//! `h=NAME:VALUE` in the query (percent-encoded) is added to the response's fields; with an
//! `h=etag:...`, a request whose `If-None-Match` is that tag gets 304.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

/// A recorded request head.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
}

pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Status `/healthz` answers (default 200).
    pub health: Arc<AtomicU16>,
    /// Status ordinary requests answer (default 200).
    pub status: Arc<AtomicU16>,
    /// Requests to `/healthz`, counted apart from `hits`.
    pub health_hits: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl Backend {
    /// Starts a backend that names itself `name`.
    pub fn start(name: &str) -> Backend {
        let (runtime, listener) = super::small_runtime("backend", true);
        Self::serve_on(name, runtime, listener.expect("listener"))
    }

    /// A backend on `addr` (another loopback address, e.g. `127.0.0.2:PORT`, so that DNS
    /// answers with several addresses can share one port).
    pub fn start_on(name: &str, addr: SocketAddr) -> Backend {
        let (runtime, _) = super::small_runtime("backend", false);
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind backend on {addr}: {e}"));
        Self::serve_on(name, runtime, listener)
    }

    fn serve_on(
        name: &str,
        runtime: tokio::runtime::Runtime,
        listener: tokio::net::TcpListener,
    ) -> Backend {
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let health = Arc::new(AtomicU16::new(200));
        let status = Arc::new(AtomicU16::new(200));
        let health_hits = Arc::new(AtomicUsize::new(0));
        let state = Arc::new(State {
            name: name.to_string(),
            hits: Arc::clone(&hits),
            seen: Arc::clone(&seen),
            health: Arc::clone(&health),
            status: Arc::clone(&status),
            health_hits: Arc::clone(&health_hits),
        });
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    let service = service_fn(move |req| serve(Arc::clone(&state), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name: name.to_string(),
            addr,
            hits,
            seen,
            health,
            status,
            health_hits,
            _runtime: runtime,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn last_seen(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

struct State {
    name: String,
    hits: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    health: Arc<AtomicU16>,
    status: Arc<AtomicU16>,
    health_hits: Arc<AtomicUsize>,
}

type Out = Response<http_body_util::Either<http_body_util::Full<Bytes>, Repeat>>;

fn text(status: StatusCode, name: &str, body: String) -> Out {
    let mut r = Response::new(http_body_util::Either::Left(http_body_util::Full::new(
        Bytes::from(body),
    )));
    *r.status_mut() = status;
    r.headers_mut()
        .insert("x-backend", name.parse().expect("header"));
    r
}

/// Serves `req`; every `h=NAME:VALUE` in the query (percent-encoded) is added to the response's
/// fields, so a test can have any `Cache-Control`, `Vary`, `ETag`... it needs.
async fn serve(state: Arc<State>, req: Request<Incoming>) -> Result<Out, Infallible> {
    let extra = extra_fields(req.uri().query().unwrap_or(""));
    // A request whose If-None-Match names the ETag it would get is answered 304.
    let etag = extra.iter().find(|(n, _)| n == http::header::ETAG);
    let asked = req.headers().get(http::header::IF_NONE_MATCH);
    let not_modified = matches!((etag, asked), (Some((_, e)), Some(a)) if e == a);
    let Ok(mut response) = respond(state, req).await;
    if not_modified {
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        *response.body_mut() =
            http_body_util::Either::Left(http_body_util::Full::new(Bytes::new()));
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
    }
    for (name, value) in extra {
        response.headers_mut().append(name, value);
    }
    Ok(response)
}

fn extra_fields(query: &str) -> Vec<(http::HeaderName, http::HeaderValue)> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("h="))
        .filter_map(|field| {
            let field = sluicegate::policy::auth::percent_decode(field.as_bytes())?;
            let colon = field.iter().position(|c| *c == b':')?;
            let name = http::HeaderName::from_bytes(&field[..colon]).ok()?;
            let value = http::HeaderValue::from_bytes(field[colon + 1..].trim_ascii()).ok()?;
            Some((name, value))
        })
        .collect()
}

async fn respond(state: Arc<State>, req: Request<Incoming>) -> Result<Out, Infallible> {
    if req.uri().path() == "/healthz" {
        state.health_hits.fetch_add(1, Ordering::SeqCst);
        let status =
            StatusCode::from_u16(state.health.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
        return Ok(text(status, &state.name, "health".into()));
    }
    state.hits.fetch_add(1, Ordering::SeqCst);
    state.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        uri: req.uri().to_string(),
        headers: req.headers().clone(),
    });
    let path = req.uri().path().to_string();
    let name = state.name.clone();
    if path == "/upload" {
        let mut body = req.into_body();
        let mut total: u64 = 0;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(f) => {
                    if let Some(d) = f.data_ref() {
                        total += d.len() as u64;
                    }
                }
                Err(_) => return Ok(text(StatusCode::BAD_REQUEST, &name, "broken body".into())),
            }
        }
        return Ok(text(StatusCode::OK, &name, total.to_string()));
    }
    // Read the body first, as real servers do before answering, so the connection stays
    // reusable.
    let _ = req.into_body().collect().await;
    if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Ok(text(StatusCode::OK, &name, name.clone()));
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        let mut r = Response::new(http_body_util::Either::Right(Repeat { left: n }));
        r.headers_mut()
            .insert("x-backend", name.parse().expect("header"));
        return Ok(r);
    }
    if let Some(code) = path.strip_prefix("/status/") {
        let status = code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
            .unwrap_or(StatusCode::OK);
        return Ok(text(status, &name, name.clone()));
    }
    let status =
        StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    Ok(text(status, &name, name.clone()))
}

/// A body of `left` bytes produced in 64 KiB chunks, never held whole.
pub struct Repeat {
    left: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 65536] = [b'x'; 65536];
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

//! The admin listener. This version serves the liveness and readiness probes; the rest of SPEC 3
//! (status, services, metrics, reload) arrives with the health-and-control work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Whether the gateway is serving or draining, as the probes report it.
#[derive(Debug, Default)]
pub struct Readiness {
    draining: AtomicBool,
}

impl Readiness {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// Binds the admin address now (so a bad one fails at start) and serves it on the current runtime.
pub async fn serve(bind: SocketAddr, readiness: Arc<Readiness>) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(bind).await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let readiness = Arc::clone(&readiness);
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(Arc::clone(&readiness), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

async fn answer(
    readiness: Arc<Readiness>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body) = match req.uri().path() {
        "/healthz" => (StatusCode::OK, r#"{"status":"ok"}"#.to_string()),
        "/readyz" if readiness.draining.load(Ordering::Relaxed) => (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"status":"draining"}"#.to_string(),
        ),
        "/readyz" => (StatusCode::OK, r#"{"status":"ready"}"#.to_string()),
        path => (
            StatusCode::NOT_FOUND,
            serde_json::json!({
                "error": "no_route",
                "message": format!("no admin endpoint at {path}"),
                "request_id": "",
            })
            .to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(response)
}

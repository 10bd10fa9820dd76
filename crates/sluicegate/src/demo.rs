//! `sluicegate demo`: the gateway in front of three in-process demo backends, so the product can
//! be tried with one command and nothing else running.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::config::{self, Config, Diagnostics};

/// The demo backends' names, one per backend.
pub const BACKENDS: [&str; 3] = ["alpha", "bravo", "charlie"];

/// Starts one demo backend on 127.0.0.1 (a free port); it names itself in `x-demo-backend` and
/// in its body. Runs on the current tokio runtime until the process exits.
pub async fn start_backend(name: &'static str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(name, address, req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(address)
}

async fn answer(
    name: &'static str,
    address: SocketAddr,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = format!(
        "Hello from demo backend {name} ({address}): {} {}\n",
        req.method(),
        req.uri()
    );
    let mut response = Response::new(Full::new(Bytes::from(body)));
    let headers = response.headers_mut();
    headers.insert("x-demo-backend", HeaderValue::from_static(name));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Ok(response)
}

/// The demo's config: one listener on `port`, round robin over the `backends`, admin on
/// `admin_port`. Built from TOML text through the same validation as a user's file.
/// Returns the config and the hash of its text.
pub fn config(
    port: u16,
    admin_port: u16,
    backends: &[SocketAddr],
) -> Result<(Config, String), Diagnostics> {
    let endpoints: Vec<String> = backends
        .iter()
        .map(|a| format!("  {{ address = \"{a}\" }},"))
        .collect();
    let text = format!(
        r#"[admin]
bind = "127.0.0.1:{admin_port}"

[[listeners]]
name = "demo"
bind = "127.0.0.1:{port}"
protocol = "http"

[[routes]]
name = "everything"
match = {{ path_prefix = "/" }}
service = "demo-backends"

[[services]]
name = "demo-backends"
algorithm = "round_robin"
endpoints = [
{}
]
"#,
        endpoints.join("\n")
    );
    config::build(&text, "<demo>").map(|c| (c, config::hash_text(&text)))
}

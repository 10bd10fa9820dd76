//! The gateway's own HTTP/1.1 client for upstream exchanges.
//!
//! Why not hyper's client: hyper runs each client connection as a separate task and hands every
//! request and response across channels, which wakes two extra tasks per exchange — measured as
//! a good part of the gateway's per-request CPU (docs/performance.md). Here the exchange runs
//! inside the request's own task: the request head is written with one `write`, the response
//! head parsed with `httparse` straight from the connection's buffer, and the body streamed by
//! [`body::H1Body`], which hands the connection back to the worker's pool at its end.
//!
//! Upgrades (WebSocket) and HTTP/2 still use hyper; this covers plain request/response.

pub mod body;
pub mod conn;
pub(crate) mod request;

pub use body::{H1Body, PoolReturn};
pub use conn::{Conn, Io};
pub use request::{send, Failed};

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection before a response")]
    ClosedBeforeResponse,
    #[error("upstream closed the connection in the middle of the response body")]
    IncompleteBody,
    #[error(transparent)]
    Head(#[from] super::wire::response::Error),
    #[error("unexpected 101 Switching Protocols for a request that asked no upgrade")]
    UnexpectedUpgrade,
    #[error("malformed chunked body: {0}")]
    Chunked(#[from] super::wire::chunked::ChunkError),
    #[error("request body: {0}")]
    RequestBody(#[source] super::body::BodyError),
}

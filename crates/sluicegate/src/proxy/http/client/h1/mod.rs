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
mod error;
pub(crate) mod request;

pub use body::{Checkin, H1Body, PoolReturn};
pub use conn::{Conn, Io, PoolKey};
pub use error::Error;
pub use request::{send, Failed};

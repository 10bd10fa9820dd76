//! HTTP proxying, in layers that depend on each other in one direction only
//! (`scripts/module-cycles` checks):
//! - `wire`: HTTP/1.1 heads, framing and chunked bodies as bytes, no I/O (fuzzed);
//! - `server`: client connections — the gateway's own HTTP/1.1 server side (`server/h1`) and
//!   hyper's HTTP/2 one — handing each request to a handler;
//! - `pipeline`: what happens to a request, from its identity to the response (the handler);
//! - `client`: upstream connections — `connect`, the per-worker `pool`, the gateway's own
//!   HTTP/1.1 client (`client/h1`); hyper's for HTTP/2 and upgrades;
//! - beside them: routing, header rewriting, bodies, gRPC and WebSocket specifics.

pub mod body;
pub mod client;
pub mod coalesce;
pub mod deadline;
pub mod first_read;
pub mod grpc;
pub mod headers;
pub mod pipeline;
pub mod retry;
pub mod route;
mod route_index;
pub mod server;
pub mod websocket;
pub mod wire;

/// Runs hyper's background futures (HTTP/2 streams, connection tasks) on the current worker's
/// `LocalSet`: workers are single-threaded, so nothing needs to be `Send`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: std::future::Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

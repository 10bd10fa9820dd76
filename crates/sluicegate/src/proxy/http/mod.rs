//! HTTP proxying: serving connections (HTTP/1.1, HTTP/2), the request pipeline, routing, header
//! rewriting, bodies, upstream pools, gRPC and WebSocket specifics.

pub mod body;
pub mod client;
pub mod coalesce;
pub mod deadline;
pub mod downstream;
pub mod first_read;
pub mod grpc;
pub mod h1;
pub mod headers;
pub mod pool;
pub mod route;
mod route_index;
pub mod serve;
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

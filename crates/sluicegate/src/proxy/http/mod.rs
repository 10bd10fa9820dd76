//! HTTP/1.1 proxying: the request pipeline, routing, header rewriting, bodies and upstream pools.

pub mod body;
pub mod headers;
pub mod pool;
pub mod route;
pub mod server;

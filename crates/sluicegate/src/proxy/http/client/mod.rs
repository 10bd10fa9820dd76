//! The upstream side: opening connections ([`connect`], one way for pools, tunnels and health
//! checks), keeping them per worker ([`pool`]), and the gateway's own HTTP/1.1 client ([`h1`]);
//! hyper's client serves HTTP/2 and upgrades.

pub mod connect;
pub mod h1;
pub mod pool;

pub use connect::{connect, ConnectError, Connected, Speak, Transport};

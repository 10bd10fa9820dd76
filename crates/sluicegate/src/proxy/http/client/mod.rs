//! The upstream side's connections: opening them ([`connect`]), one way for every user.
//!
//! Pooling and the exchanges themselves are elsewhere for now: `pool.rs` keeps connections per
//! worker, `h1/` is the gateway's own HTTP/1.1 client, hyper's serves HTTP/2 and upgrades.

pub mod connect;

pub use connect::{connect, ConnectError, Connected, Speak, Transport};

//! Sluicegate: an L4/L7 load balancer and API gateway.
//!
//! The binary (`main.rs`, `cli.rs`) is a thin layer over these modules; see DESIGN.md for the
//! request's way through them.

pub mod admin;
pub mod allocator;
pub mod answer;
pub mod balance;
pub mod config;
pub mod demo;
pub mod discovery;
pub mod gateway;
pub mod health;
pub mod jose;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod redis_client;
pub mod tls;

//! Observability: the access log (metrics, tracing and SLOs come with their issues).

pub mod access_log;
pub mod metrics;
pub mod names;
pub mod process;
pub mod time;

//! Observability: the access log, metrics, process metrics and traces (SLOs come with their
//! issue).

pub mod access_log;
pub mod metrics;
pub mod names;
pub mod process;
pub mod time;
pub mod trace;

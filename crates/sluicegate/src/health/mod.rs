//! Endpoint health: active checks, passive outlier detection, circuit breakers, and the live
//! state they share.
//!
//! The state of one endpoint ([`EndpointHealth`]) is all atomics, shared by the proxy workers (who
//! read it through the balancer's `accept` predicate and report request outcomes), the active
//! checker task of the endpoint, and the admin API. It lives in a [`Registry`] keyed by service
//! name and endpoint address, so a config reload that keeps an endpoint keeps its state.

mod active;
pub mod breaker;
pub mod outlier;
mod registry;
mod state;
mod status_ranges;

use std::time::Duration;

pub use active::{spawn_checker, CheckResult, CheckerHandle, Target};
pub use breaker::{Breaker, BreakerConfig, BreakerState, Ticket, Transition};
pub use outlier::Outcome;
pub use registry::Registry;
pub(crate) use state::now_millis;
pub use state::EndpointHealth;
pub use status_ranges::{StatusRanges, StatusRangesError};

/// `[services.health_check]`: active checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub kind: CheckKind,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes to mark an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures to mark a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

/// What an active check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// HTTP GET of `path`, in the service's protocol; success when the status is in `expected`.
    Http {
        path: String,
        expected: StatusRanges,
    },
    /// A TCP connect; success when it completes.
    Tcp,
}

/// `[services.outlier_detection]`: passive ejection from live-traffic failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    pub consecutive_failures: u32,
    /// First ejection's length; the n-th consecutive ejection lasts n times as long (capped).
    pub ejection_time: Duration,
    /// At most this share of a service's endpoints is ejected at once (0–100).
    pub max_ejection_percent: u8,
}

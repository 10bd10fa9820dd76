//! The validated configuration: what `build` makes of a TOML file once every check has passed.
//! Everything here is already parsed (addresses, durations, header names), so the proxy never
//! re-validates at request time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use crate::balance::{Algorithm, HashOn};
use crate::health::{HealthCheckConfig, OutlierConfig};

/// A whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin: Option<AdminConfig>,
    pub runtime: RuntimeConfig,
    pub access_log: AccessLogConfig,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub services: Vec<ServiceConfig>,
}

/// `[admin]`: where the admin API listens.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
}

/// `[runtime]`.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Proxy worker threads; 0 = one per core.
    pub worker_threads: usize,
    /// How long in-flight requests may run after SIGTERM/SIGINT.
    pub shutdown_grace: Duration,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            worker_threads: 0,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub target: AccessLogTarget,
}

/// Where access log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    Off,
    File(PathBuf),
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        AccessLogConfig {
            target: AccessLogTarget::Stdout,
        }
    }
}

/// `[[listeners]]` with protocol "http".
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    /// Request heads larger than this get 431.
    pub max_request_header_bytes: usize,
    /// Request bodies larger than this get 413; 0 = unlimited.
    pub max_request_body_bytes: u64,
}

/// Default `max_request_header_bytes`: 64 KiB, as SPEC 2 shows.
pub const DEFAULT_MAX_REQUEST_HEADER_BYTES: usize = 64 * 1024;

/// `[[routes]]`.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// Listener names; empty = every http listener.
    pub listeners: Vec<String>,
    pub matcher: RouteMatch,
    pub service: String,
    pub strip_prefix: bool,
    /// Whole-exchange deadline (until the response body ends); `None` = no deadline.
    pub timeout: Option<Duration>,
}

/// Default route `timeout`: 15 s, as Envoy's.
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// A route's `match` table. Every present key must match.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Lower-case host without port; a leading `*.` matches any subdomain.
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_prefix: Option<String>,
    pub methods: Vec<Method>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// `[[services]]`.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub algorithm: Algorithm,
    pub hash_on: Option<HashOn>,
    pub endpoints: Vec<EndpointConfig>,
    pub connect_timeout: Duration,
    pub maglev_table_size: usize,
    pub health_check: Option<HealthCheckConfig>,
    pub outlier_detection: Option<OutlierConfig>,
    pub sticky_sessions: Option<StickyConfig>,
}

/// `[services.sticky_sessions]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    pub cookie: String,
    /// The cookie's Max-Age.
    pub ttl: Duration,
    /// Key for the cookie values (HMAC-SHA256 of the endpoint); `None` = a random key per
    /// process, so stickiness does not survive a restart or span several gateway instances.
    pub secret: Option<String>,
}

/// Default service `connect_timeout`: 5 s, as Envoy's.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One `endpoints` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    pub address: SocketAddr,
    pub weight: u32,
}

/// Largest accepted endpoint weight; keeps smooth WRR cycles and ring sizes bounded.
pub const MAX_WEIGHT: u32 = 1000;

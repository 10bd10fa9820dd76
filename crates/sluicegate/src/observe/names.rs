//! Metric names, label names and `# HELP` texts: SPEC section 4, written once.
//!
//! Every metric the gateway exports is named here and nowhere else (STYLE point 8). Code that
//! builds a step asks [`super::metrics::Registry`] for a handle with one of these names at build
//! time and keeps the handle; the request path never sees a name or a label string.
//!
//! Each name comes with a `*_HELP` text, the line Prometheus shows in `# HELP`. The doc comment of
//! each name gives the metric's type, its labels (in the order callers should pass them) and what
//! one unit means. Label values that SPEC fixes are constants in [`value`].

/// Label names used by the metrics below.
pub mod label {
    /// The listener's name from the config.
    pub const LISTENER: &str = "listener";
    /// The gateway's version (`sluicegate_build_info`).
    pub const VERSION: &str = "version";
    /// The route's name from the config.
    pub const ROUTE: &str = "route";
    /// The service's name from the config.
    pub const SERVICE: &str = "service";
    /// The endpoint's address, e.g. `127.0.0.1:9001` (SPEC section 4).
    pub const ENDPOINT: &str = "endpoint";
    /// The numeric HTTP status, e.g. `200`. Added by the registry when it renders
    /// [`StatusCounters`](super::super::metrics::StatusCounters); callers never pass it.
    pub const CODE: &str = "code";
    /// How an upstream attempt ended.
    pub const OUTCOME: &str = "outcome";
    /// `success` or `failure` (SPEC section 4); see [`super::value`].
    pub const RESULT: &str = "result";
    /// The rate-limit policy's name from the config.
    pub const POLICY: &str = "policy";
    /// What a rate-limit policy decided.
    pub const DECISION: &str = "decision";
    /// A request's priority class for load shedding.
    pub const PRIORITY: &str = "priority";
    /// Why a request was retried.
    pub const REASON: &str = "reason";
    /// The SLO's name from the config.
    pub const SLO: &str = "slo";
    /// The window a burn rate is measured over, e.g. `1h`.
    pub const WINDOW: &str = "window";
}

/// Label values that SPEC section 4 fixes.
pub mod value {
    /// `result="success"`.
    pub const SUCCESS: &str = "success";
    /// `result="failure"`.
    pub const FAILURE: &str = "failure";
}

/// Counter. Labels: `listener`, `route`, `service`, `code`. Requests answered, by the status sent
/// to the client (including answers the gateway makes itself, like 404 `no_route` or 429). Kept as
/// [`StatusCounters`](super::metrics::StatusCounters): callers pass the first three labels and the
/// registry adds `code`.
pub const HTTP_REQUESTS_TOTAL: &str = "sluicegate_http_requests_total";
pub const HTTP_REQUESTS_TOTAL_HELP: &str =
    "HTTP requests answered, by listener, route, service and status code.";

/// Histogram, in seconds. Labels: `route`, `service`. Time from the request's arrival to the end of
/// its response.
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "sluicegate_http_request_duration_seconds";
pub const HTTP_REQUEST_DURATION_SECONDS_HELP: &str =
    "Time from a request's arrival to the end of its response, in seconds.";

/// Counter. Labels: `service`, `endpoint`, `outcome`. Attempts sent to an upstream endpoint (each
/// retry counts), by how the attempt ended as the forwarder classifies it (`success`, `5xx`,
/// `connect_failure`, `reset`, `timeout`).
pub const UPSTREAM_REQUESTS_TOTAL: &str = "sluicegate_upstream_requests_total";
pub const UPSTREAM_REQUESTS_TOTAL_HELP: &str =
    "Requests sent to upstream endpoints (each attempt counts), by outcome.";

/// Gauge. Labels: `service`, `endpoint`. 1 while the endpoint passes its active health checks
/// (always, for a service without checks), else 0. Outlier ejection does not change it: an
/// ejection is short and shows in `sluicegate_upstream_requests_total` and the admin API.
pub const ENDPOINT_HEALTHY: &str = "sluicegate_endpoint_healthy";
pub const ENDPOINT_HEALTHY_HELP: &str = "1 if the endpoint is healthy, 0 if not.";

/// Gauge. Labels: `service`, `endpoint`. Requests in flight to the endpoint now.
pub const ENDPOINT_IN_FLIGHT: &str = "sluicegate_endpoint_in_flight";
pub const ENDPOINT_IN_FLIGHT_HELP: &str = "Requests in flight to the endpoint.";

/// Gauge. Labels: `listener`. Client connections open on the listener now.
pub const CONNECTIONS_ACTIVE: &str = "sluicegate_connections_active";
pub const CONNECTIONS_ACTIVE_HELP: &str = "Client connections open on the listener.";

/// Counter. Labels: `service`, `endpoint`, `result` (`success` | `failure`). Active health checks
/// completed.
pub const HEALTH_CHECKS_TOTAL: &str = "sluicegate_health_checks_total";
pub const HEALTH_CHECKS_TOTAL_HELP: &str = "Active health checks completed, by result.";

/// Counter. Labels: `policy`, `decision`. Rate-limit decisions, by policy and decision (whether the
/// request was let through or refused with 429).
pub const RATE_LIMIT_DECISIONS_TOTAL: &str = "sluicegate_rate_limit_decisions_total";
pub const RATE_LIMIT_DECISIONS_TOTAL_HELP: &str = "Rate-limit decisions, by policy and decision.";

/// Gauge. Labels: `policy`. Buckets a rate-limit policy's local store holds now (bounded by the
/// policy's `max_keys`): what its memory is.
pub const RATE_LIMIT_BUCKETS: &str = "sluicegate_rate_limit_buckets";
pub const RATE_LIMIT_BUCKETS_HELP: &str =
    "Buckets held by a rate-limit policy's local store, by policy.";

/// Counter. Labels: `policy`, `result` (`success` | `failure`), `reason`. Authentication
/// decisions: `reason` is how a request passed (`verified`, `cached`, `api_key`) or why it was
/// refused (`missing`, `expired`, `bad_signature`, `insufficient_scope`, `unavailable`, ...;
/// docs/configuration.md lists them all).
pub const AUTH_DECISIONS_TOTAL: &str = "sluicegate_auth_decisions_total";
pub const AUTH_DECISIONS_TOTAL_HELP: &str =
    "Authentication decisions, by policy, result and reason.";

/// Counter. Labels: `policy`, `result` (`success` | `failure`). Fetches of a `jwt` policy's key
/// set from its `jwks_url`; a failure keeps the last good set.
pub const JWKS_FETCHES_TOTAL: &str = "sluicegate_jwks_fetches_total";
pub const JWKS_FETCHES_TOTAL_HELP: &str = "Key-set (JWKS) fetches, by policy and result.";

/// Gauge. Labels: `policy`. Keys in the set a `jwt` policy verifies with now; 0 while no set has
/// been loaded (requests then get 503 `auth_unavailable`).
pub const JWKS_KEYS: &str = "sluicegate_jwks_keys";
pub const JWKS_KEYS_HELP: &str = "Keys in the key set a jwt policy verifies with now, by policy.";

/// Counter. Labels: `route`, `result`. Response-cache lookups. SPEC section 4 says `result` is
/// `success` or `failure`; for the cache that reads as hit and miss.
pub const CACHE_LOOKUPS_TOTAL: &str = "sluicegate_cache_lookups_total";
pub const CACHE_LOOKUPS_TOTAL_HELP: &str =
    "Response-cache lookups, by route and result (success: a hit, failure: a miss).";

/// Gauge. No labels. Bytes the response cache's memory tier holds (bodies, fields, keys and a
/// per-entry overhead), which `[cache] max_bytes` bounds.
pub const CACHE_BYTES: &str = "sluicegate_cache_bytes";
pub const CACHE_BYTES_HELP: &str = "Bytes the response cache's memory tier holds.";

/// Counter. Labels: `service`, `result` = `success` | `failure`. Reads of a service's discovery
/// source (a `type = "file"` file, when it changed).
pub const DISCOVERY_REFRESHES_TOTAL: &str = "sluicegate_discovery_refreshes_total";
pub const DISCOVERY_REFRESHES_TOTAL_HELP: &str =
    "Reads of a service's discovery source, by service and result.";

/// Gauge. Labels: `service`. Endpoints the service has now, static and discovered.
pub const ENDPOINTS: &str = "sluicegate_endpoints";
pub const ENDPOINTS_HELP: &str = "Endpoints a service has now, static and discovered, by service.";

/// Counter. Labels: `reason` = `size` (dropped to stay within `[cache] max_bytes`, or not
/// admitted by TinyLFU) or `expired` (kept past any use). Purges are not counted.
pub const CACHE_EVICTIONS_TOTAL: &str = "sluicegate_cache_evictions_total";
pub const CACHE_EVICTIONS_TOTAL_HELP: &str =
    "Responses the cache's memory tier dropped by itself, by reason (size, expired).";

/// Counter. Labels: `priority`. Requests shed with 503 `overloaded`, by priority class.
pub const LOAD_SHED_TOTAL: &str = "sluicegate_load_shed_total";
pub const LOAD_SHED_TOTAL_HELP: &str = "Requests shed with 503 overloaded, by priority.";

/// Gauge. No labels. Requests `[load_shedding]` admitted that wait for an upstream's response
/// head now.
pub const LOAD_SHEDDING_IN_FLIGHT: &str = "sluicegate_load_shedding_in_flight";
pub const LOAD_SHEDDING_IN_FLIGHT_HELP: &str =
    "Requests admitted by load shedding that wait for an upstream's response now.";

/// Gauge. No labels. The concurrency limit in force: `max_in_flight`, or the adaptive limit.
pub const LOAD_SHEDDING_LIMIT: &str = "sluicegate_load_shedding_limit";
pub const LOAD_SHEDDING_LIMIT_HELP: &str =
    "Requests load shedding admits at once now (max_in_flight, or the adaptive limit).";

/// Gauge. Labels: `priority`. Requests waiting for admission now.
pub const LOAD_SHEDDING_QUEUED: &str = "sluicegate_load_shedding_queued";
pub const LOAD_SHEDDING_QUEUED_HELP: &str =
    "Requests waiting for admission by load shedding now, by priority.";

/// Gauge. Labels: `service`, `endpoint`. The endpoint's circuit-breaker state: 0 closed, 1
/// half-open, 2 open (only for services with `[services.circuit_breaker]`).
pub const CIRCUIT_BREAKER_STATE: &str = "sluicegate_circuit_breaker_state";
pub const CIRCUIT_BREAKER_STATE_HELP: &str =
    "Circuit-breaker state of the endpoint: 0 closed, 1 half-open, 2 open.";

/// Counter. Labels: `route`, `reason`. Retries made (not first attempts), by why.
pub const RETRIES_TOTAL: &str = "sluicegate_retries_total";
pub const RETRIES_TOTAL_HELP: &str = "Retries made, by route and reason.";

/// Counter. Labels: `result` (`success` | `failure`). Config reloads attempted (by signal or the
/// admin API).
pub const CONFIG_RELOADS_TOTAL: &str = "sluicegate_config_reloads_total";
pub const CONFIG_RELOADS_TOTAL_HELP: &str = "Config reloads attempted, by result.";

/// Gauge (a fraction; a [`FloatGauge`](super::metrics::FloatGauge)). Labels: `slo`. Share of the
/// SLO's error budget left in its window: 1 untouched, 0 spent, below 0 overspent.
pub const SLO_ERROR_BUDGET_REMAINING: &str = "sluicegate_slo_error_budget_remaining";
pub const SLO_ERROR_BUDGET_REMAINING_HELP: &str =
    "Share of the SLO's error budget left in its window (1 untouched, 0 spent).";

/// Gauge (a ratio; a [`FloatGauge`](super::metrics::FloatGauge)). Labels: `slo`, `window`. How
/// fast the SLO's error budget burns over `window`: 1 spends it exactly over the SLO window.
pub const SLO_BURN_RATE: &str = "sluicegate_slo_burn_rate";
pub const SLO_BURN_RATE_HELP: &str =
    "Error-budget burn rate of the SLO over the window (1 = spent exactly by the window's end).";

/// Counter, no labels. Access-log records dropped because the writer's queue was full (not in
/// SPEC section 4; the access log's own health). The access log keeps the count, so this is a
/// [`Registry::counter_fn`](super::metrics::Registry::counter_fn).
pub const ACCESS_LOG_DROPPED_TOTAL: &str = "sluicegate_access_log_dropped_total";
pub const ACCESS_LOG_DROPPED_TOTAL_HELP: &str =
    "Access-log records dropped because the writer's queue was full.";

/// `sluicegate_websocket_upgrades_total` (counter, no labels): connections switched to WebSocket
/// (or another `Upgrade` protocol) through the gateway.
pub const WEBSOCKET_UPGRADES_TOTAL: &str = "sluicegate_websocket_upgrades_total";
pub const WEBSOCKET_UPGRADES_TOTAL_HELP: &str =
    "Connections upgraded (WebSocket) through the gateway.";

/// `sluicegate_websocket_connections_active` (gauge, no labels): open upgraded tunnels.
pub const WEBSOCKET_CONNECTIONS_ACTIVE: &str = "sluicegate_websocket_connections_active";
pub const WEBSOCKET_CONNECTIONS_ACTIVE_HELP: &str = "Upgraded (WebSocket) tunnels open now.";

/// Gauge, always 1. Labels: `version`. Which build is running (join on it in queries).
pub const BUILD_INFO: &str = "sluicegate_build_info";
pub const BUILD_INFO_HELP: &str = "The running build: 1, with its version as a label.";

/// Counter, no labels. Spans handed to the OTLP collector and accepted by it (`[tracing]`).
pub const TRACING_SPANS_EXPORTED_TOTAL: &str = "sluicegate_tracing_spans_exported_total";
pub const TRACING_SPANS_EXPORTED_TOTAL_HELP: &str = "Trace spans the OTLP collector accepted.";

/// Counter. Labels: `reason` (`queue_full`: the export queue was full, the collector slow or
/// away; `export_failed`: the collector refused or did not answer the batch in time). Spans
/// lost rather than wait: tracing never slows a request.
pub const TRACING_SPANS_DROPPED_TOTAL: &str = "sluicegate_tracing_spans_dropped_total";
pub const TRACING_SPANS_DROPPED_TOTAL_HELP: &str =
    "Trace spans dropped, because the export queue was full or the collector failed.";

/// The process metrics, under the names every Prometheus client library uses
/// (`observe/process.rs`).
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "process_cpu_seconds_total";
pub const PROCESS_CPU_SECONDS_TOTAL_HELP: &str = "Total user and system CPU time spent in seconds.";
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "process_resident_memory_bytes";
pub const PROCESS_RESIDENT_MEMORY_BYTES_HELP: &str = "Resident memory size in bytes.";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_OPEN_FDS_HELP: &str = "Number of open file descriptors.";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_MAX_FDS_HELP: &str = "Maximum number of open file descriptors.";
pub const PROCESS_START_TIME_SECONDS: &str = "process_start_time_seconds";
pub const PROCESS_START_TIME_SECONDS_HELP: &str =
    "Start time of the process since unix epoch in seconds.";

/// The process metrics with their help texts (outside the `sluicegate_` prefix on purpose).
pub const PROCESS: &[(&str, &str)] = &[
    (PROCESS_CPU_SECONDS_TOTAL, PROCESS_CPU_SECONDS_TOTAL_HELP),
    (
        PROCESS_RESIDENT_MEMORY_BYTES,
        PROCESS_RESIDENT_MEMORY_BYTES_HELP,
    ),
    (PROCESS_OPEN_FDS, PROCESS_OPEN_FDS_HELP),
    (PROCESS_MAX_FDS, PROCESS_MAX_FDS_HELP),
    (PROCESS_START_TIME_SECONDS, PROCESS_START_TIME_SECONDS_HELP),
];

/// Every name above with its help text, for checks that must cover them all.
pub const ALL: &[(&str, &str)] = &[
    (HTTP_REQUESTS_TOTAL, HTTP_REQUESTS_TOTAL_HELP),
    (
        HTTP_REQUEST_DURATION_SECONDS,
        HTTP_REQUEST_DURATION_SECONDS_HELP,
    ),
    (UPSTREAM_REQUESTS_TOTAL, UPSTREAM_REQUESTS_TOTAL_HELP),
    (ENDPOINT_HEALTHY, ENDPOINT_HEALTHY_HELP),
    (ENDPOINT_IN_FLIGHT, ENDPOINT_IN_FLIGHT_HELP),
    (CONNECTIONS_ACTIVE, CONNECTIONS_ACTIVE_HELP),
    (HEALTH_CHECKS_TOTAL, HEALTH_CHECKS_TOTAL_HELP),
    (RATE_LIMIT_DECISIONS_TOTAL, RATE_LIMIT_DECISIONS_TOTAL_HELP),
    (AUTH_DECISIONS_TOTAL, AUTH_DECISIONS_TOTAL_HELP),
    (JWKS_FETCHES_TOTAL, JWKS_FETCHES_TOTAL_HELP),
    (JWKS_KEYS, JWKS_KEYS_HELP),
    (CACHE_LOOKUPS_TOTAL, CACHE_LOOKUPS_TOTAL_HELP),
    (CACHE_BYTES, CACHE_BYTES_HELP),
    (CACHE_EVICTIONS_TOTAL, CACHE_EVICTIONS_TOTAL_HELP),
    (ENDPOINTS, ENDPOINTS_HELP),
    (DISCOVERY_REFRESHES_TOTAL, DISCOVERY_REFRESHES_TOTAL_HELP),
    (BUILD_INFO, BUILD_INFO_HELP),
    (LOAD_SHED_TOTAL, LOAD_SHED_TOTAL_HELP),
    (LOAD_SHEDDING_IN_FLIGHT, LOAD_SHEDDING_IN_FLIGHT_HELP),
    (LOAD_SHEDDING_LIMIT, LOAD_SHEDDING_LIMIT_HELP),
    (LOAD_SHEDDING_QUEUED, LOAD_SHEDDING_QUEUED_HELP),
    (CIRCUIT_BREAKER_STATE, CIRCUIT_BREAKER_STATE_HELP),
    (RETRIES_TOTAL, RETRIES_TOTAL_HELP),
    (CONFIG_RELOADS_TOTAL, CONFIG_RELOADS_TOTAL_HELP),
    (SLO_ERROR_BUDGET_REMAINING, SLO_ERROR_BUDGET_REMAINING_HELP),
    (SLO_BURN_RATE, SLO_BURN_RATE_HELP),
    (ACCESS_LOG_DROPPED_TOTAL, ACCESS_LOG_DROPPED_TOTAL_HELP),
    (
        TRACING_SPANS_EXPORTED_TOTAL,
        TRACING_SPANS_EXPORTED_TOTAL_HELP,
    ),
    (
        TRACING_SPANS_DROPPED_TOTAL,
        TRACING_SPANS_DROPPED_TOTAL_HELP,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_valid() {
        let mut seen = std::collections::HashSet::new();
        for (name, help) in ALL {
            assert!(seen.insert(*name), "{name} listed twice");
            assert!(name.starts_with("sluicegate_"), "{name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}"
            );
            assert!(!help.is_empty() && !help.contains('\n'), "{name}");
        }
        assert_eq!(ALL.len(), 29);
    }
}

//! The validated configuration: what `build` makes of a TOML file once every check has passed.
//! Everything here is already parsed (addresses, durations, header names), so the proxy never
//! re-validates at request time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};

use crate::balance::{Algorithm, HashOn};
use crate::health::{BreakerConfig, HealthCheckConfig, OutlierConfig};
use crate::jose;

/// A whole configuration file.
#[derive(Debug, Clone)]
pub struct Config {
    pub admin: Option<AdminConfig>,
    pub runtime: RuntimeConfig,
    pub access_log: AccessLogConfig,
    pub listeners: Vec<ListenerConfig>,
    pub routes: Vec<RouteConfig>,
    pub services: Vec<ServiceConfig>,
    /// `[redis]`: the store shared by every instance, for the features that say
    /// `store = "redis"`.
    pub redis: Option<RedisConfig>,
    /// `[rate_limits.NAME]`, in file order.
    pub rate_limits: Vec<RateLimitConfig>,
    /// `[auth.NAME]`, in file order.
    pub auth: Vec<AuthConfig>,
    /// `[load_shedding]`: admission for every route's requests; `None` = every request admitted.
    pub load_shedding: Option<LoadSheddingConfig>,
    /// `[cache]`: the response cache's store (defaults when only routes name `cache`).
    pub cache: CacheConfig,
    /// `[tracing]`: OpenTelemetry traces; `None` = off (a client's `traceparent` then passes
    /// through untouched).
    pub tracing: Option<TracingConfig>,
}

/// `[admin]`: where the admin API listens.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// `token`: the bearer token the write endpoints (every method but GET and HEAD) require.
    /// Without it, writes are served on a loopback bind only (403 on any other).
    pub token: Option<String>,
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
    pub protocol: ListenerProtocol,
    /// Idle time after which a TCP (layer 4) connection or a WebSocket tunnel is closed.
    pub idle_timeout: Duration,
    /// Open client connections allowed on this listener across workers; 0 = unlimited.
    pub max_connections: usize,
    /// Request heads larger than this get 431.
    pub max_request_header_bytes: usize,
    /// Request bodies larger than this get 413; 0 = unlimited.
    pub max_request_body_bytes: u64,
    /// How long a client may take to send a request head, and how long an idle keep-alive
    /// connection waits for the next one (a bound against slow-header attacks).
    pub request_header_timeout: Duration,
    /// Collapse runs of `/` in request paths before routing and forwarding.
    pub merge_slashes: bool,
    /// Clients whose `X-Forwarded-*` and `Forwarded` fields are kept and appended to; from
    /// any other client they are replaced.
    pub trusted_proxies: Vec<Cidr>,
}

/// An address block such as `10.0.0.0/8` or `fd00::/8` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: std::net::IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDR/PREFIX` or `ADDR`; `None` when malformed or the prefix is too long.
    pub fn parse(text: &str) -> Option<Cidr> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse().ok()?, None),
        };
        let max = match addr {
            std::net::IpAddr::V4(_) => 32,
            std::net::IpAddr::V6(_) => 128,
        };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    /// Whether `ip` is inside the block; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Default listener `request_header_timeout`: 10 s (nginx's `client_header_timeout` is 60 s,
/// HAProxy's recommended `timeout http-request` 10 s).
pub const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// What a listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerProtocol {
    /// HTTP/1.1, and HTTP/2 by prior knowledge.
    Http,
    /// TLS, then HTTP/2 or HTTP/1.1 by ALPN.
    Https(ListenerTls),
    /// Layer 4: bytes both ways to an endpoint of `service`.
    Tcp { service: String },
}

/// A listener's certificates: the default pair and others chosen by SNI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certificates: Vec<(PathBuf, PathBuf)>,
    /// The certificates as loaded and checked during validation, so a snapshot never reads the
    /// files a second time, and never meets a file that changed in between.
    pub server: Loaded<rustls::ServerConfig>,
}

/// Settings loaded from files while the config was validated, shared by the snapshots built
/// from it. Compared by identity: two loads are two values.
#[derive(Clone)]
pub struct Loaded<T>(pub std::sync::Arc<T>);

impl<T> std::fmt::Debug for Loaded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<loaded>")
    }
}

impl<T> PartialEq for Loaded<T> {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl<T> Eq for Loaded<T> {}

/// Default listener `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

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
    /// The `Host` the upstream is sent.
    pub upstream_host: UpstreamHost,
    /// The name of a `[rate_limits.NAME]` policy.
    pub rate_limit: Option<String>,
    /// The name of an `[auth.NAME]` policy.
    pub auth: Option<String>,
    /// Scopes the authenticated consumer must all hold (needs `auth`).
    pub require_scopes: Vec<String>,
    /// The most requests of this route in flight at once (a bulkhead); 0 = unlimited.
    pub max_in_flight: usize,
    /// `retry = { ... }`.
    pub retry: Option<RetryConfig>,
    /// `cache = { ... }`: the route's responses are cached.
    pub cache: Option<RouteCacheConfig>,
    /// The route's load-shedding class.
    pub priority: Priority,
    /// Whether a request's `x-priority` field may name its class instead.
    pub priority_from_header: bool,
}

/// A request's load-shedding class: under overload, lower classes are shed first and higher
/// ones served first. Ordered from the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    Critical,
    #[default]
    Normal,
    Low,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Normal, Priority::Low];

    /// The class a config value or an `x-priority` field names (lower case, as written).
    pub fn parse(text: &[u8]) -> Option<Priority> {
        match text {
            b"critical" => Some(Priority::Critical),
            b"normal" => Some(Priority::Normal),
            b"low" => Some(Priority::Low),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Normal => "normal",
            Priority::Low => "low",
        }
    }

    /// 0 for the highest class.
    pub fn rank(self) -> usize {
        self as usize
    }
}

/// `[load_shedding]`: how many requests the gateway lets through at once, and when it sheds.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadSheddingConfig {
    /// The most requests waiting for an upstream's answer at once; 0 = a limit adapted to the
    /// latency the upstreams show (`target_queue_delay`).
    pub max_in_flight: usize,
    /// How long a request may wait for admission, and (adaptive limit) how far latency may rise
    /// above the lowest seen before the limit shrinks.
    pub target_queue_delay: Duration,
    /// Above this share of the CPU in use, `low` requests are shed (1.0 = never).
    pub cpu_threshold: f64,
    /// Above this share of memory in use, all but `critical` requests are shed (1.0 = never).
    pub memory_threshold: f64,
}

impl Default for LoadSheddingConfig {
    fn default() -> Self {
        LoadSheddingConfig {
            max_in_flight: 0,
            target_queue_delay: Duration::from_millis(50),
            cpu_threshold: 0.80,
            memory_threshold: 0.90,
        }
    }
}

/// A route's `retry`: when a failed try is tried again, how often, and within what budget.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Tries in all, the first included (2 = one retry).
    pub attempts: u32,
    pub on: RetryOn,
    /// Response statuses that are retried besides `on`'s classes.
    pub retriable_status: Vec<u16>,
    /// Retries may be at most this share of the route's requests (over the last 10 s)…
    pub budget_percent: f64,
    /// …plus this many per second, so a quiet route can still retry.
    pub budget_min_per_second: u32,
    /// The first retry waits up to this long (full jitter), doubling per retry, up to 10×.
    pub backoff: Duration,
    /// Each try's own deadline (within the route's `timeout`, which covers all tries).
    pub per_try_timeout: Option<Duration>,
    /// Retry non-idempotent methods (POST, PATCH…) also after their request reached an upstream.
    pub non_idempotent: bool,
    /// Request bodies up to this size are kept to be sent again; larger ones are not retried.
    pub replay_buffer: u64,
}

/// `on`: which failures are retried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub connect_failure: bool,
    pub reset: bool,
    /// Any 5xx response.
    pub status_5xx: bool,
    /// 503 responses (included in `5xx`).
    pub status_503: bool,
    /// No response head within the try's deadline (`per_try_timeout`).
    pub timeout: bool,
}

/// Defaults of `retry`.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
pub const DEFAULT_RETRY_BUDGET_PERCENT: f64 = 20.0;
pub const DEFAULT_RETRY_BUDGET_MIN_PER_SECOND: u32 = 10;
pub const DEFAULT_REPLAY_BUFFER: u64 = 64 * 1024;
/// The most tries `attempts` may ask for.
pub const MAX_RETRY_ATTEMPTS: u32 = 10;

/// Which `Host` (HTTP/2 `:authority`) a route sends upstream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UpstreamHost {
    /// The client's (`preserve_host = true`, the default, as HAProxy and Traefik do).
    #[default]
    Preserve,
    /// The endpoint's address (`preserve_host = false`), for upstreams that check Host
    /// against their own address.
    Endpoint,
    /// A fixed name (`host_rewrite = "name"`).
    Fixed(HeaderValue),
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
    pub circuit_breaker: Option<BreakerConfig>,
    pub sticky_sessions: Option<StickyConfig>,
    pub protocol: UpstreamProtocol,
    /// For `protocol = "tcp"`: the PROXY protocol header sent first, if any.
    pub send_proxy_protocol: Option<ProxyProtocol>,
    /// Where endpoints come from besides `endpoints`.
    pub discovery: Option<DiscoveryConfig>,
    /// Whether a discovered endpoint takes traffic before its first active check passes.
    pub initial_health: InitialHealth,
}

/// A service's `discovery`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryConfig {
    /// `type = "registry"`: endpoints registered over the admin API, removed when not renewed
    /// within their ttl (`default_ttl` when the registration names none).
    Registry { default_ttl: Duration },
    /// `type = "file"`: endpoints listed in a watched JSON or TOML file; `endpoints` as read
    /// when the config loaded.
    File {
        path: std::path::PathBuf,
        endpoints: Vec<EndpointConfig>,
    },
    /// `type = "dns"`: `name` resolved every `refresh` (or at the records' TTL, if sooner, but
    /// not more often than once a second).
    Dns {
        name: String,
        record: DnsRecord,
        /// For A/AAAA: the port of every address; SRV records give their own.
        port: Option<u16>,
        refresh: Duration,
        /// `resolver = "IP:PORT"`; `None`: the system's (`/etc/resolv.conf`).
        resolver: Option<SocketAddr>,
    },
}

/// What a DNS discovery asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsRecord {
    /// A and AAAA: every address, at the configured port.
    A,
    /// SRV: targets, ports and weights from the records; the lowest priority's targets only.
    Srv,
}

/// Default `refresh` of a DNS discovery.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(10);

impl DiscoveryConfig {
    /// The source's name, as `/api/v1/services` shows it.
    pub fn source(&self) -> EndpointSource {
        match self {
            DiscoveryConfig::Registry { .. } => EndpointSource::Registry,
            DiscoveryConfig::File { .. } => EndpointSource::File,
            DiscoveryConfig::Dns { .. } => EndpointSource::Dns,
        }
    }
}

/// Where an endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EndpointSource {
    /// The config file's `endpoints`.
    #[default]
    Static,
    /// Registered over the admin API.
    Registry,
    /// Listed in a watched file.
    File,
    /// Resolved from DNS.
    Dns,
}

impl EndpointSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointSource::Static => "static",
            EndpointSource::Registry => "registry",
            EndpointSource::File => "file",
            EndpointSource::Dns => "dns",
        }
    }
}

/// `default_ttl` of a registry when the config names none.
pub const DEFAULT_REGISTRY_TTL: Duration = Duration::from_secs(30);

/// `initial_health`: how a discovered endpoint of a service with active checks starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialHealth {
    /// It takes traffic at once (as static ones do).
    Healthy,
    /// It waits for its checks to pass (`healthy_threshold` of them): a new instance is
    /// checked before it gets traffic.
    #[default]
    Unhealthy,
}

/// Which PROXY protocol version to send to an upstream. Both carry the same facts; v2 is binary,
/// cheaper to parse and unambiguous, v1 is text and what older servers understand. The headers
/// themselves are built by `proxy::proxy_protocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyProtocol {
    /// The human-readable line, `PROXY TCP4 src dst sport dport\r\n` (spec 2.1).
    V1,
    /// The binary header with a 12-byte signature (spec 2.2).
    V2,
}

impl ProxyProtocol {
    /// Reads a config value: `"v1"` or `"v2"`, exactly as written; anything else is `None` so
    /// the config can report it.
    pub fn parse(s: &str) -> Option<ProxyProtocol> {
        match s {
            "v1" => Some(ProxyProtocol::V1),
            "v2" => Some(ProxyProtocol::V2),
            _ => None,
        }
    }

    /// The config spelling, for diagnostics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProxyProtocol::V1 => "v1",
            ProxyProtocol::V2 => "v2",
        }
    }
}

/// How the gateway talks to a service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 over cleartext (h2c, prior knowledge), multiplexed.
    Http2,
    /// TLS, then HTTP/2 or HTTP/1.1 by ALPN.
    Https(UpstreamTls),
    /// Bytes, for `tcp` listeners.
    Tcp,
}

/// `[services.tls]` for `protocol = "https"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM roots to verify the endpoints with; `None` = the system's roots.
    pub ca: Option<PathBuf>,
    /// Name to send in SNI and verify the certificate for; `None`: each endpoint's IP address.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// Accept any certificate. For tests and labs only.
    pub insecure_skip_verify: bool,
    /// The client settings, loaded (roots read) during validation.
    pub client: Loaded<rustls::ClientConfig>,
    /// What a connection made with these settings is, for keying connection pools: equal for
    /// equal settings (roots by content, verification, server name), different otherwise.
    pub identity: u64,
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
    pub source: EndpointSource,
}

/// Largest accepted endpoint weight; keeps smooth WRR cycles and ring sizes bounded.
pub const MAX_WEIGHT: u32 = 1000;

/// `[redis]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `url`, or the seed nodes of `urls`: `redis://` or `rediss://` (TLS).
    pub urls: Vec<String>,
    /// The servers form a Redis Cluster (`cluster = true`).
    pub cluster: bool,
    /// A call slower than this counts as a store error.
    pub timeout: Duration,
    /// `ca`: the roots a `rediss://` server's certificate must chain to, as PEM (read and
    /// checked when the config loads); `None`: the system's roots.
    pub ca: Option<Vec<u8>>,
}

/// Default `[redis] timeout`.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(20);

/// `[rate_limits.NAME]`: a token bucket per key.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    pub name: String,
    pub key: LimitKey,
    /// The bucket's size: the burst a key may send at once.
    pub capacity: u64,
    /// Tokens added per second, up to `capacity`.
    pub refill_per_second: f64,
    pub store: LimitStore,
    pub on_store_error: OnStoreError,
    /// Whether responses carry `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
    pub headers: bool,
    /// The most keys the local store keeps for this policy (its memory bound).
    pub max_keys: u64,
}

/// Default `max_keys` of a rate-limit policy.
pub const DEFAULT_RATE_LIMIT_MAX_KEYS: u64 = 1_000_000;

/// What a request is counted under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// The client's address (behind `trusted_proxies`, the address they forwarded for).
    ClientIp,
    /// A request header's value; requests without it share one bucket.
    Header(HeaderName),
    /// The authenticated consumer (needs authentication on the route).
    Consumer,
    /// One bucket for the whole route.
    Route,
}

/// Where a policy's buckets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitStore {
    /// In this process, shared by its workers.
    Local,
    /// In Redis, shared by every instance.
    Redis,
}

/// What a Redis-stored policy does when Redis fails or is slower than its timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStoreError {
    /// Decide with this instance's own buckets (each with the full capacity).
    Local,
    Allow,
    Deny,
}

/// `[auth.NAME]`: how a route's requests prove who sends them.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub name: String,
    pub kind: AuthKind,
    /// Whether the credential (the Authorization header, the API key) is removed before the
    /// request goes upstream.
    pub strip_credentials: bool,
}

#[derive(Debug, Clone)]
pub enum AuthKind {
    ApiKey(ApiKeyConfig),
    Jwt(Box<JwtConfig>),
}

/// `type = "api_key"`.
#[derive(Debug, Clone)]
pub struct ApiKeyConfig {
    pub from: ApiKeyFrom,
    /// The keys written in the config.
    pub keys: Vec<ApiKeyEntry>,
    /// `keys_file`: more keys, re-read whenever the file changes.
    pub keys_file: Option<PathBuf>,
}

/// Where a request carries its API key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeyFrom {
    Header(HeaderName),
    /// A query parameter (`query = "api_key"`).
    Query(String),
}

/// One API key: only its SHA-256 is ever configured or kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyEntry {
    pub sha256: [u8; 32],
    pub consumer: String,
    pub scopes: Vec<String>,
}

/// `type = "jwt"`.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// `algorithms`: the only ones a token may use.
    pub algorithms: Vec<jose::Algorithm>,
    pub keys: JwtKeys,
    pub from: TokenFrom,
    /// `issuer`, `audience`, `leeway`, `require_exp`.
    pub rules: jose::claims::Rules,
    /// The claim that names the consumer (`consumer_claim`, default `sub`).
    pub consumer_claim: String,
    /// The claim that holds the scopes (`scopes_claim`, default `scope`).
    pub scopes_claim: String,
    /// `forward_claims`: request fields sent upstream, each from a claim.
    pub forward_claims: Vec<(HeaderName, String)>,
    pub jwks_min_refresh: Duration,
    pub jwks_max_refresh: Duration,
}

/// Defaults of the JWKS refresh bounds.
pub const DEFAULT_JWKS_MIN_REFRESH: Duration = Duration::from_secs(30);
pub const DEFAULT_JWKS_MAX_REFRESH: Duration = Duration::from_secs(3600);
/// Default `leeway` on `exp` and `nbf`.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);

/// Where a JWT policy's keys come from.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKeys {
    /// `secret`: an HMAC secret (HS256/384/512 only).
    Secret(Vec<u8>),
    /// `keys_file`: a JWK set on disk, re-read whenever it changes.
    File(PathBuf),
    /// `jwks_url`: a JWK set fetched from the identity provider; `ca` verifies its certificate
    /// (default: the system's roots).
    Url { url: http::Uri, ca: Option<PathBuf> },
}

/// Never prints a secret.
impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKeys::Secret(_) => f.write_str("Secret(..)"),
            JwtKeys::File(path) => f.debug_tuple("File").field(path).finish(),
            JwtKeys::Url { url, ca } => f
                .debug_struct("Url")
                .field("url", url)
                .field("ca", ca)
                .finish(),
        }
    }
}

/// Where a request carries its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenFrom {
    /// `Authorization: Bearer TOKEN` (RFC 6750 §2.1), the default.
    Bearer,
    /// A header holding the token alone.
    Header(HeaderName),
    /// A cookie holding the token.
    Cookie(String),
}

/// `[cache]`: the store every caching route shares.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// The memory tier's bound, entries' bodies, fields, keys and overhead included.
    pub max_bytes: u64,
    /// Larger responses stream through and are not stored.
    pub max_object_bytes: u64,
    pub eviction: CacheEviction,
    /// `store = "memory+redis"`: a memory miss is looked up in `[redis]`, fills are stored
    /// there too, and purges reach every instance.
    pub shared: bool,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_bytes: 256 * 1024 * 1024,
            max_object_bytes: 8 * 1024 * 1024,
            eviction: CacheEviction::TinyLfu,
            shared: false,
        }
    }
}

/// How the memory tier chooses what to evict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheEviction {
    Lru,
    /// TinyLFU admission by frequency, then LRU (`"tinylfu"`, and `"lfu"`, which names the same
    /// frequency-based policy).
    TinyLfu,
}

/// A route's `cache`.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCacheConfig {
    /// Freshness for responses whose upstream gives none; without it they are not stored.
    pub ttl: Option<Duration>,
    /// Statuses stored at all.
    pub statuses: Vec<u16>,
    /// Request fields every stored response varies on, besides its own `Vary`.
    pub vary: Vec<HeaderName>,
    /// Whether responses with `Set-Cookie` may be stored (and served to others, cookie and all).
    pub store_set_cookie: bool,
    /// What of the request the primary key is made of (`key`); `None`: host, path and query.
    pub key: Option<CacheKey>,
}

/// A route's cache `key`: the path always, and what else of the request tells responses apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheKey {
    /// `"host"`: the `Host` (port included).
    pub host: bool,
    pub query: CacheKeyQuery,
    /// `"header:NAME"`: these request fields' values.
    pub headers: Vec<HeaderName>,
}

/// Which of the query a cache key takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheKeyQuery {
    /// None of it.
    Ignored,
    /// `"query"`: all of it, as sent.
    Whole,
    /// `"query:NAME"`: these parameters' values, in this order.
    Only(Vec<String>),
}

/// The statuses a route caches by default: those RFC 9110 §15.1 calls heuristically cacheable
/// (206 aside: ranges are not stored).
pub const DEFAULT_CACHE_STATUSES: [u16; 11] =
    [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// `[tracing]`: OpenTelemetry traces exported over OTLP. Its presence turns tracing on.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector's URL; `None` = `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`, else the protocol's default port on localhost.
    pub endpoint: Option<String>,
    /// `None` = `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`, else HTTP/protobuf.
    pub protocol: Option<OtlpProtocol>,
    /// Share of new traces recorded (0.0 to 1.0).
    pub sample_ratio: f64,
    /// A caller's `traceparent` sampled flag decides for its trace.
    pub parent_based: bool,
    /// Sent with every export (an API key of a hosted collector); added to
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// `service.name` of the spans; `None` = `OTEL_SERVICE_NAME`, else "sluicegate".
    pub service_name: Option<String>,
    /// How long one export may take; `None` = `OTEL_EXPORTER_OTLP_TIMEOUT`, else 10 s.
    pub timeout: Option<Duration>,
    /// Spans waiting for export at most; more are dropped and counted.
    pub queue_size: usize,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            endpoint: None,
            protocol: None,
            sample_ratio: 1.0,
            parent_based: true,
            headers: Vec::new(),
            service_name: None,
            timeout: None,
            queue_size: 2048,
        }
    }
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    HttpProtobuf,
}

impl OtlpProtocol {
    /// The names the OTLP exporter specification uses (`OTEL_EXPORTER_OTLP_PROTOCOL`).
    pub fn parse(text: &str) -> Option<OtlpProtocol> {
        match text {
            "grpc" => Some(OtlpProtocol::Grpc),
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::Grpc => "grpc",
            OtlpProtocol::HttpProtobuf => "http/protobuf",
        }
    }
}

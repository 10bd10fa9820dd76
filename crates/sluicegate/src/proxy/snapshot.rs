//! The runtime form of a config: routes compiled per listener, services with their balancers,
//! endpoint state and metric handles. Built once per config (off the hot path) and read by every
//! worker through `arc-swap`.
//!
//! State that must outlive a snapshot — endpoint health, in-flight counts, metric series — comes
//! from [`Registries`], keyed by stable names, so a reload that keeps an endpoint keeps its state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::balance::{self, Balancer, BuildOptions, Endpoint, EndpointLoad, HashOn, Sticky};
use crate::config::{Config, ListenerConfig, ListenerProtocol, UpstreamProtocol};
use crate::health::{self, BreakerConfig, BreakerState, EndpointHealth, OutlierConfig};
use crate::observe::metrics::{self, Counter, Histogram, StatusCounters};
use crate::observe::names;
use crate::policy;
use crate::proxy::http::client::Transport;
use crate::proxy::proxy_protocol::ProxyProtocol;

use super::http::retry;
use super::http::route::{Matcher, RouteTable};

/// Live state shared by every snapshot.
#[derive(Default)]
pub struct Registries {
    pub health: health::Registry,
    /// In-flight counts by (service, endpoint). Locked only while a snapshot is built.
    pub loads: Mutex<HashMap<(String, SocketAddr), Arc<EndpointLoad>>>,
    pub metrics: metrics::Registry,
    /// Rate-limit buckets and the other state of policies, by policy name.
    pub policies: policy::Registry,
    /// Requests in flight per route with `max_in_flight`, by route name.
    pub route_in_flight: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// Retry budgets of routes with `retry`, by route name.
    pub retry_budgets: Mutex<HashMap<String, Arc<retry::Budget>>>,
    /// The span exporter, kept across reloads that leave `[tracing]`'s export settings alone.
    pub tracing: crate::observe::trace::Registry,
}

/// Keeps the entries whose key `keep` accepts.
fn retain_keys<T>(map: &Mutex<HashMap<String, Arc<T>>>, keep: impl Fn(&String) -> bool) {
    map.lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|key, _| keep(key));
}

/// The state kept under `key`, made on first use.
fn shared<T: Default>(map: &Mutex<HashMap<String, Arc<T>>>, key: &str) -> Arc<T> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    Arc::clone(map.entry(key.to_string()).or_default())
}

impl Registries {
    fn in_flight(&self, route: &str) -> Arc<AtomicUsize> {
        shared(&self.route_in_flight, route)
    }

    fn retry_budget(&self, route: &str) -> Arc<retry::Budget> {
        shared(&self.retry_budgets, route)
    }

    fn load(&self, service: &str, address: SocketAddr) -> Arc<EndpointLoad> {
        let mut loads = self.loads.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(
            loads
                .entry((service.to_string(), address))
                .or_insert_with(|| Arc::new(EndpointLoad::default())),
        )
    }

    /// Forgets the state of endpoints `config` no longer has.
    pub fn retain(&self, config: &Config) {
        let keep = |service: &str, address: SocketAddr| {
            config
                .services
                .iter()
                .any(|s| s.name == service && s.endpoints.iter().any(|e| e.address == address))
        };
        self.policies.retain(config);
        self.policies.cache.retain(config, &self.metrics);
        let routes_with = |has: fn(&crate::config::RouteConfig) -> bool| {
            move |route: &String| config.routes.iter().any(|r| r.name == *route && has(r))
        };
        retain_keys(&self.route_in_flight, routes_with(|r| r.max_in_flight > 0));
        retain_keys(&self.retry_budgets, routes_with(|r| r.retry.is_some()));
        self.health.retain(keep);
        self.loads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(service, address), _| keep(service, *address));
        self.metrics.retain_fns(|_, labels| {
            let service = labels.get("service");
            let endpoint = labels
                .get("endpoint")
                .and_then(|v| v.parse::<SocketAddr>().ok());
            if let Some(policy) = labels.get("policy") {
                return config.rate_limits.iter().any(|p| p.name == policy);
            }
            match (service, endpoint) {
                (Some(s), Some(e)) => keep(s, e),
                _ => true,
            }
        });
        self.metrics.prune_unused();
    }
}

/// Everything a request needs to be served, for one version of the config.
pub struct Snapshot {
    pub config: Arc<Config>,
    pub listeners: Vec<ListenerPlan>,
    pub services: HashMap<String, Arc<ServiceRuntime>>,
    /// Query parameters that carry API keys: the access log shows their values redacted.
    pub secret_query_parameters: Box<[String]>,
    /// `[load_shedding]`'s admission controller, when the config has one.
    pub shedder: Option<Arc<policy::shed::Shedder>>,
    /// `[tracing]`: the sampler and the export queue, when tracing is on.
    pub tracer: Option<Arc<crate::observe::trace::Tracer>>,
}

/// What a listener does with a connection.
pub enum ListenerKind {
    Http,
    Https(tokio_rustls::TlsAcceptor),
    Tcp(Arc<ServiceRuntime>),
}

/// One listener's settings, routes and the counter of requests no route took.
pub struct ListenerPlan {
    pub name: Arc<str>,
    pub config: ListenerConfig,
    pub kind: ListenerKind,
    pub routes: RouteTable<Arc<RouteRuntime>>,
    pub unrouted: StatusCounters,
}

/// A route ready to serve, with its metric handles.
pub struct RouteRuntime {
    pub name: Arc<str>,
    /// The route's path or path prefix as configured ("/" for a route of any path): its
    /// spans' `http.route`.
    pub http_route: Arc<str>,
    pub service: Arc<ServiceRuntime>,
    /// The matched prefix to remove from the path before forwarding (`strip_prefix = true`).
    pub strip_prefix: Option<Arc<str>>,
    pub timeout: Option<Duration>,
    /// The `Host` sent upstream (`preserve_host`, `host_rewrite`).
    pub upstream_host: crate::config::UpstreamHost,
    /// The route's policy steps (`policy/`); empty when it has none.
    pub policies: policy::Chain,
    /// `max_in_flight`: the limit and the route's requests in flight, a count shared by every
    /// snapshot (requests admitted under the previous config still count after a reload).
    pub bulkhead: Option<(usize, Arc<AtomicUsize>)>,
    /// `retry`, with the route's budget.
    pub retry: Option<retry::RetryPolicy>,
    /// The load-shedding class (`priority`), and whether `x-priority` may name another.
    pub priority: (crate::config::Priority, bool),
    /// `cache`: the route's response cache.
    pub cache: Option<policy::cache::RouteCache>,
    pub requests: StatusCounters,
    pub duration: Histogram,
}

/// Outcome counters of one endpoint (`sluicegate_upstream_requests_total`).
pub struct UpstreamCounters {
    pub success: Counter,
    pub status_5xx: Counter,
    pub connect_failure: Counter,
    pub reset: Counter,
    pub timeout: Counter,
}

/// A service's endpoints, their state, and its balancer.
pub struct ServiceRuntime {
    pub name: Arc<str>,
    pub endpoints: Arc<[Endpoint]>,
    /// Each endpoint's address as text, made once (access log lines).
    pub endpoint_names: Vec<Box<str>>,
    pub health: Vec<Arc<EndpointHealth>>,
    pub upstream: Vec<UpstreamCounters>,
    pub balancer: Box<dyn Balancer>,
    pub hash_on: Option<HashOn>,
    pub connect_timeout: Duration,
    pub outlier: Option<OutlierConfig>,
    /// `[services.circuit_breaker]`; the breakers themselves live in `health`.
    pub breaker: Option<BreakerConfig>,
    pub sticky: Option<Sticky>,
    pub transport: Transport,
    pub send_proxy_protocol: Option<ProxyProtocol>,
    /// `sluicegate_endpoints{service}`, held so that the series lives as long as the service.
    pub endpoint_count: crate::observe::metrics::Gauge,
}

impl std::fmt::Debug for ServiceRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceRuntime")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RouteRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteRuntime")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl ServiceRuntime {
    /// Whether endpoint `i` may take a request now: healthy, not ejected, and its breaker (if
    /// the service has breakers) would admit one.
    pub fn available(&self, i: usize, now: tokio::time::Instant) -> bool {
        self.health.get(i).is_some_and(|h| {
            h.is_available(now)
                && self
                    .breaker
                    .as_ref()
                    .is_none_or(|config| h.breaker.may_admit(now, config))
        })
    }

    /// Whether some endpoint is healthy and not ejected, but kept out by its open breaker:
    /// then no endpoint available means 503 `circuit_open`, not `no_healthy_upstream`.
    pub fn breakers_refuse(&self, now: tokio::time::Instant) -> bool {
        self.breaker.is_some()
            && self
                .health
                .iter()
                .any(|h| h.is_available(now) && h.breaker.state() != BreakerState::Closed)
    }
}

fn build_service(s: &crate::config::ServiceConfig, reg: &Registries) -> ServiceRuntime {
    let m = &reg.metrics;
    let endpoint_count = m.gauge(
        names::ENDPOINTS,
        names::ENDPOINTS_HELP,
        &[(names::label::SERVICE, &s.name)],
    );
    endpoint_count.set(i64::try_from(s.endpoints.len()).unwrap_or(i64::MAX));
    let endpoints: Arc<[Endpoint]> = s
        .endpoints
        .iter()
        .map(|e| Endpoint {
            address: e.address,
            weight: e.weight.max(1),
            load: reg.load(&s.name, e.address),
        })
        .collect();
    let health: Vec<Arc<EndpointHealth>> = s
        .endpoints
        .iter()
        .map(|e| {
            // A discovered endpoint of a service with active checks may have to pass them
            // before it takes traffic.
            let wait = e.source != crate::config::EndpointSource::Static
                && s.health_check.is_some()
                && s.initial_health == crate::config::InitialHealth::Unhealthy;
            reg.health.get_or_create_as(&s.name, e.address, !wait)
        })
        .collect();
    let mut upstream = Vec::new();
    let endpoint_names = endpoints
        .iter()
        .map(|e| e.address.to_string().into())
        .collect();
    for (e, h) in endpoints.iter().zip(&health) {
        let address = e.address.to_string();
        let labels = |outcome: &'static str| {
            [
                ("service", s.name.as_str()),
                ("endpoint", address.as_str()),
                ("outcome", outcome),
            ]
        };
        let counter = |outcome| {
            m.counter(
                names::UPSTREAM_REQUESTS_TOTAL,
                names::UPSTREAM_REQUESTS_TOTAL_HELP,
                &labels(outcome),
            )
        };
        upstream.push(UpstreamCounters {
            success: counter("success"),
            status_5xx: counter("5xx"),
            connect_failure: counter("connect_failure"),
            reset: counter("reset"),
            timeout: counter("timeout"),
        });
        let endpoint_labels = [("service", s.name.as_str()), ("endpoint", address.as_str())];
        let health_state = Arc::clone(h);
        m.gauge_fn(
            names::ENDPOINT_HEALTHY,
            names::ENDPOINT_HEALTHY_HELP,
            &endpoint_labels,
            Arc::new(move || i64::from(health_state.is_healthy())),
        );
        if s.circuit_breaker.is_some() {
            let health_state = Arc::clone(h);
            m.gauge_fn(
                names::CIRCUIT_BREAKER_STATE,
                names::CIRCUIT_BREAKER_STATE_HELP,
                &endpoint_labels,
                Arc::new(move || health_state.breaker.state().gauge()),
            );
        }
        let load = Arc::clone(&e.load);
        m.gauge_fn(
            names::ENDPOINT_IN_FLIGHT,
            names::ENDPOINT_IN_FLIGHT_HELP,
            &endpoint_labels,
            Arc::new(move || i64::from(load.in_flight())),
        );
    }
    let balancer = balance::build(
        s.algorithm,
        Arc::clone(&endpoints),
        BuildOptions {
            maglev_table_size: s.maglev_table_size,
        },
    );
    let sticky = s.sticky_sessions.as_ref().map(|c| {
        let addresses: Vec<SocketAddr> = endpoints.iter().map(|e| e.address).collect();
        Sticky::new(&c.cookie, c.ttl, c.secret.as_deref(), &s.name, &addresses)
    });
    let transport = match &s.protocol {
        UpstreamProtocol::Http1 | UpstreamProtocol::Tcp => Transport::Http1,
        UpstreamProtocol::Http2 => Transport::Http2,
        UpstreamProtocol::Https(tls) => {
            Transport::tls(&tls.client.0, tls.server_name.clone(), tls.identity)
        }
    };
    ServiceRuntime {
        endpoint_count,
        name: Arc::from(s.name.as_str()),
        endpoints,
        endpoint_names,
        health,
        upstream,
        balancer,
        hash_on: s.hash_on.clone(),
        connect_timeout: s.connect_timeout,
        outlier: s.outlier_detection,
        breaker: s.circuit_breaker,
        sticky,
        transport,
        send_proxy_protocol: s.send_proxy_protocol,
    }
}

impl Snapshot {
    /// Compiles a validated config, taking live state from `reg`.
    pub fn build(config: Config, reg: &Registries) -> Snapshot {
        let m = &reg.metrics;
        let services: HashMap<String, Arc<ServiceRuntime>> = config
            .services
            .iter()
            .map(|s| (s.name.clone(), Arc::new(build_service(s, reg))))
            .collect();
        let policies = policy::Compiled::new(&config, &reg.policies, m);
        let listeners = config
            .listeners
            .iter()
            .filter_map(|l| {
                let routes = config
                    .routes
                    .iter()
                    .filter(|r| r.listeners.is_empty() || r.listeners.contains(&l.name))
                    .filter_map(|r| {
                        // Validation guarantees the service exists.
                        let service = services.get(&r.service)?;
                        let runtime = RouteRuntime {
                            name: Arc::from(r.name.as_str()),
                            http_route: Arc::from(
                                r.matcher
                                    .path
                                    .as_deref()
                                    .or(r.matcher.path_prefix.as_deref())
                                    .unwrap_or("/"),
                            ),
                            service: Arc::clone(service),
                            strip_prefix: r
                                .strip_prefix
                                .then(|| r.matcher.path_prefix.as_deref().map(Arc::from))
                                .flatten(),
                            timeout: r.timeout,
                            upstream_host: r.upstream_host.clone(),
                            policies: policies.chain(r),
                            bulkhead: (r.max_in_flight > 0)
                                .then(|| (r.max_in_flight, reg.in_flight(&r.name))),
                            retry: r.retry.as_ref().map(|c| {
                                retry::RetryPolicy::new(&r.name, c, reg.retry_budget(&r.name), m)
                            }),
                            priority: (r.priority, r.priority_from_header),
                            cache: r.cache.as_ref().map(|c| {
                                let (store, shared) = reg.policies.cache.store(
                                    &config.cache,
                                    config.redis.as_ref(),
                                    m,
                                );
                                policy::cache::RouteCache::new(
                                    &r.name,
                                    c,
                                    store,
                                    shared,
                                    config.cache.max_object_bytes,
                                    m,
                                )
                            }),
                            requests: m.status_counters(
                                names::HTTP_REQUESTS_TOTAL,
                                names::HTTP_REQUESTS_TOTAL_HELP,
                                &[
                                    ("listener", l.name.as_str()),
                                    ("route", r.name.as_str()),
                                    ("service", r.service.as_str()),
                                ],
                            ),
                            duration: m.histogram(
                                names::HTTP_REQUEST_DURATION_SECONDS,
                                names::HTTP_REQUEST_DURATION_SECONDS_HELP,
                                &[("route", r.name.as_str()), ("service", r.service.as_str())],
                                metrics::LATENCY_BUCKETS,
                            ),
                        };
                        Some((Matcher::new(r.matcher.clone()), Arc::new(runtime)))
                    })
                    .collect();
                let kind = match &l.protocol {
                    ListenerProtocol::Http => ListenerKind::Http,
                    ListenerProtocol::Https(tls) => ListenerKind::Https(
                        tokio_rustls::TlsAcceptor::from(Arc::clone(&tls.server.0)),
                    ),
                    // Validation guarantees the service exists; without it there is no plan and
                    // the listener's connections are closed.
                    ListenerProtocol::Tcp { service } => {
                        ListenerKind::Tcp(Arc::clone(services.get(service)?))
                    }
                };
                Some(ListenerPlan {
                    name: Arc::from(l.name.as_str()),
                    config: l.clone(),
                    kind,
                    routes: RouteTable::new(routes),
                    unrouted: m.status_counters(
                        names::HTTP_REQUESTS_TOTAL,
                        names::HTTP_REQUESTS_TOTAL_HELP,
                        &[
                            ("listener", l.name.as_str()),
                            ("route", ""),
                            ("service", ""),
                        ],
                    ),
                })
            })
            .collect();
        let shedder = &reg.policies.shedder;
        let shedder = match &config.load_shedding {
            Some(settings) => {
                shedder.configure(settings, m);
                Some(Arc::clone(shedder))
            }
            None => {
                shedder.unconfigure(m);
                None
            }
        };
        let tracer = reg.tracing.tracer(config.tracing.as_ref(), m);
        Snapshot {
            shedder,
            tracer,
            secret_query_parameters: policy::Compiled::secret_query_parameters(&config),
            config: Arc::new(config),
            listeners,
            services,
        }
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerPlan> {
        self.listeners.iter().find(|l| &*l.name == name)
    }

    pub fn listener_index(&self, name: &str) -> Option<usize> {
        self.listeners.iter().position(|l| &*l.name == name)
    }
}

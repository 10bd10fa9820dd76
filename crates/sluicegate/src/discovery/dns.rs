//! `discovery = { type = "dns", name, port, refresh, record, resolver }`: a service's endpoints
//! resolved from DNS — every A/AAAA address at the configured port, or the targets of SRV
//! records with their ports and weights (Kubernetes headless services, Consul).
//!
//! Each service has a task on the control runtime that resolves its name, then again after
//! `refresh` or when the answer's TTL runs out, whichever is sooner, but never more often than
//! once a second. A failed or empty answer keeps the last good set (logged once per state
//! change, counted in `sluicegate_discovery_refreshes_total{result="failure"}`): a DNS outage
//! does not empty a service.
//!
//! SRV priorities (RFC 2782): only the targets of the lowest priority are used while any of
//! them is healthy; when none is, the next priority's are added, and so on.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use hickory_resolver::TokioResolver;

use crate::config::{Config, DiscoveryConfig, DnsRecord, EndpointConfig, EndpointSource};
use crate::observe::metrics::{self, Counter};
use crate::observe::names;

/// The shortest time between two resolutions of one name.
pub const FLOOR: Duration = Duration::from_secs(1);

/// Whether an endpoint of a service is healthy now (one never checked counts as healthy).
pub type Healthy = Arc<dyn Fn(&str, SocketAddr) -> bool + Send + Sync>;

/// What one DNS discovery is set up with (a change restarts its task).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Query {
    name: String,
    record: DnsRecord,
    port: Option<u16>,
    refresh: Duration,
    resolver: Option<SocketAddr>,
}

/// The DNS-discovered services, with the set each last resolved to.
#[derive(Default)]
pub struct DnsSources {
    services: Mutex<HashMap<String, DnsSource>>,
}

struct DnsSource {
    query: Query,
    endpoints: Vec<EndpointConfig>,
    refreshed: Option<SystemTime>,
    problem: Option<String>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for DnsSource {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl DnsSources {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, DnsSource>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves the names `config` names, and no others; `changed` is called when a set
    /// changes. Must run on a tokio runtime (the control runtime).
    pub fn sync(
        self: &Arc<Self>,
        config: &Config,
        healthy: Healthy,
        changed: Arc<dyn Fn() + Send + Sync>,
        metrics: &metrics::Registry,
    ) {
        let mut services = self.lock();
        let wanted: HashMap<&str, Query> = config
            .services
            .iter()
            .filter_map(|s| match &s.discovery {
                Some(DiscoveryConfig::Dns {
                    name,
                    record,
                    port,
                    refresh,
                    resolver,
                }) => Some((
                    s.name.as_str(),
                    Query {
                        name: name.clone(),
                        record: *record,
                        port: *port,
                        refresh: *refresh,
                        resolver: *resolver,
                    },
                )),
                _ => None,
            })
            .collect();
        // A source whose settings changed starts over, with the set its predecessor had until
        // its first good answer: a reload never empties a service.
        let mut carried: HashMap<String, Vec<EndpointConfig>> = HashMap::new();
        services.retain(|name, source| {
            let same = wanted.get(name.as_str()) == Some(&source.query);
            if !same && wanted.contains_key(name.as_str()) {
                carried.insert(name.clone(), std::mem::take(&mut source.endpoints));
            }
            same
        });
        for (name, query) in wanted {
            if services.contains_key(name) {
                continue;
            }
            let counter = |result: &str| {
                metrics.counter(
                    names::DISCOVERY_REFRESHES_TOTAL,
                    names::DISCOVERY_REFRESHES_TOTAL_HELP,
                    &[
                        (names::label::SERVICE, name),
                        (names::label::RESULT, result),
                    ],
                )
            };
            let resolving = Resolving {
                service: name.to_string(),
                query: query.clone(),
                sources: Arc::downgrade(self),
                healthy: Arc::clone(&healthy),
                changed: Arc::clone(&changed),
                ok: counter(names::value::SUCCESS),
                failed: counter(names::value::FAILURE),
            };
            let task = tokio::runtime::Handle::try_current()
                .ok()
                .map(|runtime| runtime.spawn(resolving.run()));
            services.insert(
                name.to_string(),
                DnsSource {
                    query,
                    endpoints: carried.remove(name).unwrap_or_default(),
                    refreshed: None,
                    problem: None,
                    task,
                },
            );
        }
    }

    /// `service`'s endpoints as last resolved.
    pub fn endpoints(&self, service: &str) -> Vec<EndpointConfig> {
        self.lock()
            .get(service)
            .map(|s| s.endpoints.clone())
            .unwrap_or_default()
    }

    pub fn state(&self, service: &str) -> Option<super::SourceState> {
        self.lock().get(service).map(|s| super::SourceState {
            refreshed: s.refreshed,
            problem: s.problem.clone(),
        })
    }

    /// Stops every resolution (the gateway is shutting down).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Records a resolution of `query`; whether the set changed.
    fn record(
        &self,
        service: &str,
        query: &Query,
        outcome: Result<Vec<EndpointConfig>, String>,
    ) -> bool {
        let mut services = self.lock();
        // A task of settings the service no longer has (aborted, but mid-call) writes nothing.
        let Some(source) = services.get_mut(service).filter(|s| s.query == *query) else {
            return false;
        };
        match outcome {
            Ok(mut endpoints) => {
                endpoints.sort_by_key(|e| e.address);
                source.refreshed = Some(SystemTime::now());
                if source.problem.take().is_some() {
                    tracing::info!(%service, name = %source.query.name, "DNS discovery answers again");
                }
                if endpoints == source.endpoints {
                    return false;
                }
                tracing::info!(%service, name = %source.query.name, endpoints = endpoints.len(), "DNS discovery: endpoints updated");
                source.endpoints = endpoints;
                true
            }
            Err(problem) => {
                if source.problem.is_none() {
                    tracing::warn!(%service, name = %source.query.name, %problem, "DNS discovery failed: the last good endpoints stay");
                }
                source.problem = Some(problem);
                false
            }
        }
    }
}

/// One service's resolution loop.
struct Resolving {
    service: String,
    query: Query,
    sources: Weak<DnsSources>,
    healthy: Healthy,
    changed: Arc<dyn Fn() + Send + Sync>,
    ok: Counter,
    failed: Counter,
}

impl Resolving {
    async fn run(self) {
        // A resolver that cannot be set up (no readable resolv.conf yet) is tried again.
        let resolver = loop {
            match self.resolver() {
                Ok(r) => break r,
                Err(e) => {
                    self.failed.inc();
                    let Some(sources) = self.sources.upgrade() else {
                        return;
                    };
                    sources.record(&self.service, &self.query, Err(e));
                    drop(sources);
                    tokio::time::sleep(self.query.refresh).await;
                }
            }
        };
        loop {
            let (outcome, valid_for) = self.resolve(&resolver).await;
            let wait = valid_for
                .map_or(self.query.refresh, |ttl| ttl.min(self.query.refresh))
                .max(FLOOR);
            let Some(sources) = self.sources.upgrade() else {
                return;
            };
            match &outcome {
                Ok(_) => self.ok.inc(),
                Err(_) => self.failed.inc(),
            }
            if sources.record(&self.service, &self.query, outcome) {
                (self.changed)();
            }
            drop(sources);
            tokio::time::sleep(wait).await;
        }
    }

    fn resolver(&self) -> Result<TokioResolver, String> {
        let mut builder = match self.query.resolver {
            Some(server) => {
                let mut ns = NameServerConfig::udp_and_tcp(server.ip());
                for connection in &mut ns.connections {
                    connection.port = server.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_parts(None, Vec::new(), vec![ns]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("cannot read the system's resolver configuration: {e}"))?,
        };
        let options: &mut ResolverOpts = builder.options_mut();
        // Each resolution asks the server: the loop follows the TTLs itself.
        options.cache_size = 0;
        options.timeout = Duration::from_secs(2);
        options.attempts = 2;
        builder
            .build()
            .map_err(|e| format!("cannot set up the resolver: {e}"))
    }

    /// The endpoints `name` resolves to now, and for how long the answer holds.
    async fn resolve(
        &self,
        resolver: &TokioResolver,
    ) -> (Result<Vec<EndpointConfig>, String>, Option<Duration>) {
        let name = self.query.name.as_str();
        let now = Instant::now();
        let endpoint = |ip: IpAddr, port: u16, weight: u32| EndpointConfig {
            address: SocketAddr::new(ip, port),
            weight,
            source: EndpointSource::Dns,
        };
        let (found, valid_until) = match self.query.record {
            DnsRecord::A => {
                let port = self.query.port.unwrap_or(80);
                match resolver.lookup_ip(name).await {
                    Ok(lookup) => (
                        lookup
                            .iter()
                            .map(|ip| endpoint(ip, port, 1))
                            .collect::<Vec<_>>(),
                        lookup.valid_until(),
                    ),
                    Err(e) => return (Err(format!("{name}: {e}")), None),
                }
            }
            DnsRecord::Srv => match resolver.srv_lookup(name).await {
                Ok(lookup) => {
                    let mut records: Vec<(u16, u16, u16, String)> = lookup
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::SRV(srv) => {
                                Some((srv.priority, srv.weight, srv.port, srv.target.to_string()))
                            }
                            _ => None,
                        })
                        .collect();
                    records.sort();
                    let mut found = Vec::new();
                    let mut priorities: Vec<u16> = records.iter().map(|r| r.0).collect();
                    priorities.dedup();
                    for priority in priorities {
                        for (_, weight, port, target) in records.iter().filter(|r| r.0 == priority)
                        {
                            let Ok(ips) = resolver.lookup_ip(target.as_str()).await else {
                                continue;
                            };
                            let weight = u32::from(*weight).clamp(1, crate::config::MAX_WEIGHT);
                            found.extend(ips.iter().map(|ip| endpoint(ip, *port, weight)));
                        }
                        // A lower priority's targets only while one of them is healthy.
                        let healthy = found
                            .iter()
                            .any(|e| (self.healthy)(&self.service, e.address));
                        if healthy {
                            break;
                        }
                    }
                    (found, lookup.valid_until())
                }
                Err(e) => return (Err(format!("{name}: {e}")), None),
            },
        };
        if found.is_empty() {
            return (Err(format!("{name}: no usable record")), None);
        }
        let valid_for = valid_until.checked_duration_since(now);
        (Ok(found), valid_for)
    }
}

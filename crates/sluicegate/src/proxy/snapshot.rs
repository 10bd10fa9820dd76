//! The runtime form of a config: routes compiled per listener, services with their balancers.
//! Built once per config (off the hot path) and read by every worker through `arc-swap`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::balance::{self, Balancer, BuildOptions, Endpoint, HashOn};
use crate::config::{Config, ListenerConfig};

use super::http::route::{Matcher, RouteTable};

/// Everything a request needs to be served, for one version of the config.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub listeners: Vec<ListenerPlan>,
    pub services: HashMap<String, Arc<ServiceRuntime>>,
}

/// One listener's settings and routes.
#[derive(Debug)]
pub struct ListenerPlan {
    pub name: Arc<str>,
    pub config: ListenerConfig,
    pub routes: RouteTable<Arc<RouteRuntime>>,
}

/// A route ready to serve.
#[derive(Debug)]
pub struct RouteRuntime {
    pub name: Arc<str>,
    pub service: Arc<ServiceRuntime>,
    /// The matched prefix to remove from the path before forwarding (`strip_prefix = true`).
    pub strip_prefix: Option<Arc<str>>,
    pub timeout: Option<Duration>,
}

/// A service's endpoints and balancer.
#[derive(Debug)]
pub struct ServiceRuntime {
    pub name: Arc<str>,
    pub endpoints: Arc<[Endpoint]>,
    pub balancer: Box<dyn Balancer>,
    pub hash_on: Option<HashOn>,
    pub connect_timeout: Duration,
}

impl Snapshot {
    /// Compiles a validated config.
    pub fn build(config: Config) -> Snapshot {
        let services: HashMap<String, Arc<ServiceRuntime>> = config
            .services
            .iter()
            .map(|s| {
                let endpoints: Arc<[Endpoint]> = s
                    .endpoints
                    .iter()
                    .map(|e| Endpoint::new(e.address, e.weight))
                    .collect();
                let balancer = balance::build(
                    s.algorithm,
                    Arc::clone(&endpoints),
                    BuildOptions {
                        maglev_table_size: s.maglev_table_size,
                    },
                );
                let runtime = ServiceRuntime {
                    name: Arc::from(s.name.as_str()),
                    endpoints,
                    balancer,
                    hash_on: s.hash_on.clone(),
                    connect_timeout: s.connect_timeout,
                };
                (s.name.clone(), Arc::new(runtime))
            })
            .collect();
        let listeners = config
            .listeners
            .iter()
            .map(|l| {
                let routes = config
                    .routes
                    .iter()
                    .filter(|r| r.listeners.is_empty() || r.listeners.contains(&l.name))
                    .filter_map(|r| {
                        // Validation guarantees the service exists.
                        let service = services.get(&r.service)?;
                        let runtime = RouteRuntime {
                            name: Arc::from(r.name.as_str()),
                            service: Arc::clone(service),
                            strip_prefix: r
                                .strip_prefix
                                .then(|| r.matcher.path_prefix.as_deref().map(Arc::from))
                                .flatten(),
                            timeout: r.timeout,
                        };
                        Some((Matcher::new(r.matcher.clone()), Arc::new(runtime)))
                    })
                    .collect();
                ListenerPlan {
                    name: Arc::from(l.name.as_str()),
                    config: l.clone(),
                    routes: RouteTable::new(routes),
                }
            })
            .collect();
        Snapshot {
            config: Arc::new(config),
            listeners,
            services,
        }
    }

    pub fn listener(&self, name: &str) -> Option<&ListenerPlan> {
        self.listeners.iter().find(|l| &*l.name == name)
    }
}

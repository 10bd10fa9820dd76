//! Endpoints from elsewhere than the config file's `endpoints` (SPEC 2 `discovery`): the
//! services' discovered sets, and how they join the static ones.
//!
//! Every change of a set goes the one way a reload goes: the config in force (the file's, as
//! last loaded) with the discovered endpoints added to their services becomes a new snapshot
//! (`Gateway::discovery_changed`). So the balancers are rebuilt as on a reload (ring_hash and
//! maglev move only the changed keys), endpoints that stay keep their health, outlier and
//! breaker state (kept by service and address), a new one starts as `initial_health` says, and
//! a removed one finishes the requests it has: they hold the snapshot they started on.
//!
//! - `registry.rs`: endpoints registered over the admin API, expiring without a heartbeat;
//! - `file.rs`: endpoints listed in a JSON or TOML file, watched here ([`FileSources`]);
//! - `dns.rs`: endpoints resolved from A/AAAA or SRV records.

pub mod dns;
pub mod file;
pub mod registry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::{Config, DiscoveryConfig, EndpointConfig};
use crate::observe::metrics::{self, Counter};
use crate::observe::names;
use crate::policy::auth::file_watch::FileWatch;
pub use dns::DnsSources;
pub use registry::{Registration, Registrations};

/// How often a discovery file is looked at: a change is in force well within a second.
pub const FILE_POLL: Duration = Duration::from_millis(250);

/// `file` with each discovering service's discovered endpoints added after its static ones
/// (an address that is also static stays static, once).
pub fn effective(
    file: &Config,
    registrations: &Registrations,
    files: &FileSources,
    dns: &DnsSources,
) -> Config {
    let mut config = file.clone();
    for service in &mut config.services {
        let discovered: Vec<EndpointConfig> = match &service.discovery {
            Some(DiscoveryConfig::Registry { .. }) => registrations.endpoints(&service.name),
            Some(DiscoveryConfig::File { .. }) => files.endpoints(&service.name),
            Some(DiscoveryConfig::Dns { .. }) => dns.endpoints(&service.name),
            None => continue,
        };
        for e in discovered {
            if !service.endpoints.iter().any(|s| s.address == e.address) {
                service.endpoints.push(e);
            }
        }
    }
    config
}

/// The watched files of `type = "file"` services, with the set each last gave.
#[derive(Default)]
pub struct FileSources {
    services: Mutex<HashMap<String, FileSource>>,
}

struct FileSource {
    path: PathBuf,
    endpoints: Vec<EndpointConfig>,
    /// When the file was last read with success, and the problem of the last read if it failed.
    refreshed: Option<SystemTime>,
    problem: Option<String>,
    _watch: FileWatch,
}

/// What `/api/v1/services` shows of a file or DNS source: when it last gave a good set, and
/// the problem of its last read if that failed.
pub struct SourceState {
    pub refreshed: Option<SystemTime>,
    pub problem: Option<String>,
}

impl FileSources {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, FileSource>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches the files `config` names (the set each had when the config loaded), and no
    /// others; `changed` is called when a watched file's valid content changes a set.
    pub fn sync(
        self: &Arc<Self>,
        config: &Config,
        changed: Arc<dyn Fn() + Send + Sync>,
        metrics: &metrics::Registry,
    ) {
        let mut services = self.lock();
        let wanted: HashMap<&str, (&PathBuf, &Vec<EndpointConfig>)> = config
            .services
            .iter()
            .filter_map(|s| match &s.discovery {
                Some(DiscoveryConfig::File { path, endpoints }) => {
                    Some((s.name.as_str(), (path, endpoints)))
                }
                _ => None,
            })
            .collect();
        services.retain(|name, source| {
            wanted
                .get(name.as_str())
                .is_some_and(|(path, _)| **path == source.path)
        });
        for (name, (path, endpoints)) in wanted {
            if let Some(source) = services.get_mut(name) {
                // Read now: newer than the config's read, and than the watcher's last.
                if let Ok(now) = file::read(path) {
                    source.endpoints = now;
                }
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
            let (ok, failed) = (
                counter(names::value::SUCCESS),
                counter(names::value::FAILURE),
            );
            ok.inc();
            let sources = Arc::downgrade(self);
            let (service, watched) = (name.to_string(), path.clone());
            let changed = Arc::clone(&changed);
            let watch = FileWatch::start_every(path.clone(), FILE_POLL, move || {
                let Some(sources) = sources.upgrade() else {
                    return;
                };
                if sources.reread(&service, &watched, &ok, &failed) {
                    changed();
                }
            });
            // Watched first, read second (the watch's first look is now): no change falls
            // between the two.
            let endpoints = file::read(path).unwrap_or_else(|_| endpoints.clone());
            services.insert(
                name.to_string(),
                FileSource {
                    path: path.clone(),
                    endpoints,
                    refreshed: Some(SystemTime::now()),
                    problem: None,
                    _watch: watch,
                },
            );
        }
    }

    /// Reads `service`'s file again; whether its set changed. A failed read keeps the last
    /// good set, logged once per distinct problem.
    fn reread(
        &self,
        service: &str,
        path: &std::path::Path,
        ok: &Counter,
        failed: &Counter,
    ) -> bool {
        let read = file::read(path);
        let mut services = self.lock();
        // A watch of a path the service no longer uses (aborted, but mid-call) writes nothing.
        let Some(source) = services.get_mut(service).filter(|s| s.path == path) else {
            return false;
        };
        match read {
            Ok(endpoints) => {
                ok.inc();
                source.refreshed = Some(SystemTime::now());
                if source.problem.take().is_some() {
                    tracing::info!(%service, path = %path.display(), "discovery file valid again");
                }
                if endpoints == source.endpoints {
                    return false;
                }
                tracing::info!(%service, path = %path.display(), endpoints = endpoints.len(), "discovery file changed: endpoints updated");
                source.endpoints = endpoints;
                true
            }
            Err(problem) => {
                failed.inc();
                if source.problem.as_deref() != Some(problem.as_str()) {
                    tracing::warn!(%service, %problem, "discovery file refused: the last good endpoints stay");
                    source.problem = Some(problem);
                }
                false
            }
        }
    }

    /// Stops every watch (the gateway is shutting down).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// `service`'s endpoints from its file.
    pub fn endpoints(&self, service: &str) -> Vec<EndpointConfig> {
        self.lock()
            .get(service)
            .map(|s| s.endpoints.clone())
            .unwrap_or_default()
    }

    pub fn state(&self, service: &str) -> Option<SourceState> {
        self.lock().get(service).map(|s| SourceState {
            refreshed: s.refreshed,
            problem: s.problem.clone(),
        })
    }
}

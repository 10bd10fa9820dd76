//! The control plane: starting the data path from a config, reloading it, and stopping it.
//!
//! A reload is: read and validate the file (an invalid one changes nothing), bind the sockets of
//! added listeners (a taken port refuses the reload, nothing changed yet), build the new snapshot
//! from the live registries (so kept endpoints keep health, in-flight counts, pools and
//! counters), swap it in atomically, then start and stop listeners and restart the health
//! checkers. Requests in flight keep the snapshot they started with.
//!
//! A change of a discovered endpoint set (`discovery/`) takes the same way without the file:
//! the config last loaded, with the discovered endpoints added, becomes the new snapshot, and
//! only the health checkers of endpoints that came or went are started or stopped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::config::{self, Config, DiscoveryConfig, LoadError};
use crate::discovery::{self, DnsSources, FileSources, Registrations};
use crate::health::{self, CheckResult, CheckerHandle, Target};
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::Counter;
use crate::observe::names;
use crate::observe::time::rfc3339_millis;
use crate::proxy::listener::{self, ListenError, Workers};
use crate::proxy::{Registries, Shared, Snapshot};

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("cannot open the access log: {0}")]
    AccessLog(#[source] std::io::Error),
}

/// Why a reload was refused; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this gateway has no config file to reload (demo mode)")]
    NoFile,
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

impl ReloadError {
    /// Each problem on its own, as the admin API lists them.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ReloadError::Invalid(p) => p.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// The outcome of the last load or reload, for `/api/v1/status`.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub success: bool,
    pub at: SystemTime,
    pub problems: Vec<String>,
}

/// A listener as configured and as bound (they differ when the config says port 0).
#[derive(Debug, Clone)]
pub struct ListenerBinding {
    pub name: String,
    pub configured: SocketAddr,
    pub bound: SocketAddr,
}

/// A running gateway.
pub struct Gateway {
    pub shared: Arc<Shared>,
    workers: Mutex<Option<Workers>>,
    listeners: Mutex<Vec<ListenerBinding>>,
    /// The active checkers, by service and endpoint.
    checkers: Mutex<HashMap<(String, SocketAddr), CheckerHandle>>,
    config_path: Option<PathBuf>,
    /// The config as last loaded from the file (the snapshot's adds discovered endpoints).
    file_config: Mutex<Arc<Config>>,
    /// Endpoints registered over the admin API (`discovery = { type = "registry" }`); kept
    /// across reloads.
    pub registrations: Registrations,
    /// The watched files of `type = "file"` discovery.
    pub files: Arc<FileSources>,
    /// The resolved names of `type = "dns"` discovery.
    pub dns: Arc<DnsSources>,
    /// This gateway, for the callbacks of the sources it starts.
    me: std::sync::OnceLock<Weak<Gateway>>,
    /// Set by `shutdown`: discovery changes no longer rebuild anything.
    stopping: std::sync::atomic::AtomicBool,
    config_hash: Mutex<String>,
    last_reload: Mutex<ReloadStatus>,
    /// Serialises reloads (SIGHUP and the admin API may race); never held on the request path.
    reloading: Mutex<()>,
    reloads_ok: Counter,
    reloads_failed: Counter,
    started: Instant,
}

impl Gateway {
    /// Binds every listener, starts the workers and the health checkers. Must run inside a
    /// tokio runtime (the checkers run there). `config_path` is what reloads read.
    pub fn start(
        config: Config,
        config_hash: String,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Gateway>, StartError> {
        let workers = match config.runtime.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let access_log =
            AccessLog::start(&config.access_log.target).map_err(StartError::AccessLog)?;
        let mut bound = Vec::new();
        let mut bindings = Vec::new();
        for l in &config.listeners {
            let b = listener::bind(&l.name, l.bind, workers)?;
            bindings.push(ListenerBinding {
                name: l.name.clone(),
                configured: l.bind,
                bound: b.address,
            });
            bound.push(b);
        }
        let registries = Registries::default();
        let file_config = Arc::new(config.clone());
        let snapshot = Snapshot::build(config, &registries);
        let reloads = |result: &str| {
            registries.metrics.counter(
                names::CONFIG_RELOADS_TOTAL,
                names::CONFIG_RELOADS_TOTAL_HELP,
                &[("result", result)],
            )
        };
        let (reloads_ok, reloads_failed) = (reloads("success"), reloads("failure"));
        crate::observe::process::register(&registries.metrics);
        let shared = Arc::new(Shared::new(snapshot, access_log, registries));
        let dropped = shared.access_log.clone();
        shared.registries.metrics.counter_fn(
            names::ACCESS_LOG_DROPPED_TOTAL,
            names::ACCESS_LOG_DROPPED_TOTAL_HELP,
            &[],
            Arc::new(move || dropped.dropped()),
        );
        let workers = Workers::start(Arc::clone(&shared), workers, bound)?;
        for b in &bindings {
            tracing::info!(listener = %b.name, address = %b.bound, "listening");
        }
        let gateway = Arc::new(Gateway {
            shared,
            workers: Mutex::new(Some(workers)),
            listeners: Mutex::new(bindings),
            checkers: Mutex::new(HashMap::new()),
            config_path,
            file_config: Mutex::new(file_config),
            registrations: Registrations::default(),
            files: Arc::default(),
            dns: Arc::default(),
            me: std::sync::OnceLock::new(),
            stopping: std::sync::atomic::AtomicBool::new(false),
            config_hash: Mutex::new(config_hash),
            last_reload: Mutex::new(ReloadStatus {
                success: true,
                at: SystemTime::now(),
                problems: Vec::new(),
            }),
            reloading: Mutex::new(()),
            reloads_ok,
            reloads_failed,
            started: Instant::now(),
        });
        gateway.watch_files();
        let watches_files = lock(&gateway.file_config)
            .services
            .iter()
            .any(|s| matches!(s.discovery, Some(DiscoveryConfig::File { .. })));
        if watches_files {
            // The files' endpoints join the first snapshot's.
            gateway.discovery_changed();
        }
        gateway.restart_checkers(true);
        tokio::spawn(expire_registrations(Arc::downgrade(&gateway)));
        Ok(gateway)
    }

    /// Watches the discovery files the config last loaded names.
    fn watch_files(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
        let file = Arc::clone(&lock(&self.file_config));
        self.sync_sources(&file);
    }

    /// Starts, keeps or stops the file and DNS sources to match `config`.
    fn sync_sources(&self, config: &Config) {
        let metrics = &self.shared.registries.metrics;
        self.files.sync(config, self.on_discovery(), metrics);
        self.dns
            .sync(config, self.healthy(), self.on_discovery(), metrics);
    }

    /// Whether an endpoint is healthy now, for the DNS sources' SRV priorities.
    fn healthy(&self) -> discovery::dns::Healthy {
        let gateway = self.me.get().cloned().unwrap_or_default();
        Arc::new(move |service: &str, address: SocketAddr| {
            gateway
                .upgrade()
                .and_then(|g| g.shared.registries.health.get(service, address))
                .is_none_or(|h| h.is_healthy())
        })
    }

    /// What a discovery source calls when its set changed: the rebuild runs on a blocking
    /// thread, never on the control runtime (which serves the admin API and the checks).
    fn on_discovery(&self) -> Arc<dyn Fn() + Send + Sync> {
        let gateway = self.me.get().cloned().unwrap_or_default();
        Arc::new(move || {
            let Some(gateway) = gateway.upgrade() else {
                return;
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || gateway.discovery_changed());
                }
                Err(_) => gateway.discovery_changed(),
            }
        })
    }

    /// A discovered endpoint set changed: the config last loaded, with the discovered
    /// endpoints now, becomes the snapshot; checkers start and stop for the endpoints that came
    /// and went. Blocks while the snapshot is built (call it off the async threads).
    pub fn discovery_changed(&self) {
        let _serial = lock(&self.reloading);
        if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let file = Arc::clone(&lock(&self.file_config));
        let snapshot = Snapshot::build(
            discovery::effective(&file, &self.registrations, &self.files, &self.dns),
            &self.shared.registries,
        );
        let retained = Arc::clone(&snapshot.config);
        self.shared.publish(snapshot);
        self.restart_checkers(false);
        self.shared.registries.retain(&retained);
    }

    /// Listeners with their bound addresses.
    pub fn listeners(&self) -> Vec<ListenerBinding> {
        lock(&self.listeners).clone()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn config_hash(&self) -> String {
        lock(&self.config_hash).clone()
    }

    pub fn last_reload(&self) -> ReloadStatus {
        lock(&self.last_reload).clone()
    }

    /// `at` of the last reload as RFC 3339.
    pub fn last_reload_at(&self) -> String {
        rfc3339_millis(self.last_reload().at)
    }

    /// Reloads the config file; returns the new config hash.
    pub fn reload(&self) -> Result<String, ReloadError> {
        let _serial = lock(&self.reloading);
        let result = self.try_reload();
        let status = ReloadStatus {
            success: result.is_ok(),
            at: SystemTime::now(),
            problems: result
                .as_ref()
                .err()
                .map(ReloadError::problems)
                .unwrap_or_default(),
        };
        *lock(&self.last_reload) = status;
        match &result {
            Ok(hash) => {
                self.reloads_ok.inc();
                tracing::info!(config_hash = %hash, "configuration reloaded");
            }
            Err(e) => {
                self.reloads_failed.inc();
                tracing::error!("configuration reload refused; the running config stays:\n{e}");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<String, ReloadError> {
        let path = self.config_path.as_ref().ok_or(ReloadError::NoFile)?;
        let (config, hash) = config::load_hashed(path).map_err(|e| match e {
            LoadError::Invalid(d) => ReloadError::Invalid(d.lines()),
            other => ReloadError::Invalid(vec![other.to_string()]),
        })?;
        let workers_guard = lock(&self.workers);
        let Some(workers) = workers_guard.as_ref() else {
            return Err(ReloadError::Invalid(vec![
                "the gateway is shutting down".into()
            ]));
        };
        // Listener diff: a listener is kept when its name and configured address are unchanged.
        let old = lock(&self.listeners).clone();
        let kept = |name: &str, bind: SocketAddr| {
            old.iter().find(|o| o.name == name && o.configured == bind)
        };
        let mut added = Vec::new();
        let mut bindings = Vec::new();
        for l in &config.listeners {
            match kept(&l.name, l.bind) {
                Some(existing) => bindings.push(existing.clone()),
                None => {
                    let b = listener::bind(&l.name, l.bind, workers.count())
                        .map_err(|e| ReloadError::Invalid(vec![e.to_string()]))?;
                    bindings.push(ListenerBinding {
                        name: l.name.clone(),
                        configured: l.bind,
                        bound: b.address,
                    });
                    added.push(b);
                }
            }
        }
        let removed: Vec<ListenerBinding> = old
            .iter()
            .filter(|o| {
                !config
                    .listeners
                    .iter()
                    .any(|l| l.name == o.name && l.bind == o.configured)
            })
            .cloned()
            .collect();

        // Registrations stay for the services that still use the registry.
        self.registrations.retain_services(|name| {
            config.services.iter().any(|s| {
                s.name == name && matches!(s.discovery, Some(DiscoveryConfig::Registry { .. }))
            })
        });
        let file = Arc::new(config);
        // The files as they are now; new sources are watched from now.
        self.sync_sources(&file);
        let snapshot = Snapshot::build(
            discovery::effective(&file, &self.registrations, &self.files, &self.dns),
            &self.shared.registries,
        );
        *lock(&self.file_config) = file;
        let retained = Arc::clone(&snapshot.config);
        self.shared.publish(snapshot);
        for r in &removed {
            tracing::info!(listener = %r.name, address = %r.bound, "listener removed: draining");
            workers.stop(&r.name);
        }
        for b in added {
            tracing::info!(listener = %b.name, address = %b.address, "listening");
            workers.listen(b);
        }
        *lock(&self.listeners) = bindings;
        drop(workers_guard);
        self.restart_checkers(true);
        self.shared.registries.retain(&retained);
        *lock(&self.config_hash) = hash.clone();
        Ok(hash)
    }

    /// Runs one active health checker per endpoint of the current snapshot: `all` replaces
    /// every checker (a reload may have changed the checks or the transport); otherwise only
    /// the endpoints that came get one and those that went lose theirs. Check counters live in
    /// the endpoints' state, so a restart loses no progress.
    fn restart_checkers(&self, all: bool) {
        let snapshot = self.shared.snapshot.load();
        let mut running = lock(&self.checkers);
        let mut old = if all {
            HashMap::new()
        } else {
            std::mem::take(&mut *running)
        };
        let mut checkers = HashMap::new();
        for service in snapshot.config.services.iter() {
            let Some(check) = &service.health_check else {
                continue;
            };
            // The runtime's transport: checks connect as the service's requests do.
            let Some(runtime) = snapshot.services.get(&service.name) else {
                continue;
            };
            for e in &service.endpoints {
                let key = (service.name.clone(), e.address);
                if let Some(kept) = old.remove(&key) {
                    checkers.insert(key, kept);
                    continue;
                }
                let state = self
                    .shared
                    .registries
                    .health
                    .get_or_create(&service.name, e.address);
                let counter = |result: &str| {
                    self.shared.registries.metrics.counter(
                        names::HEALTH_CHECKS_TOTAL,
                        names::HEALTH_CHECKS_TOTAL_HELP,
                        &[
                            ("service", &service.name),
                            ("endpoint", &e.address.to_string()),
                            ("result", result),
                        ],
                    )
                };
                let (ok, failed) = (counter("success"), counter("failure"));
                let on_result = Arc::new(move |r: CheckResult| match r {
                    CheckResult::Success => ok.inc(),
                    CheckResult::Failure => failed.inc(),
                });
                let target = Target {
                    address: e.address,
                    host: None,
                    transport: runtime.transport.clone(),
                    connect_timeout: runtime.connect_timeout,
                };
                checkers.insert(
                    key,
                    health::spawn_checker(target, check.clone(), state, on_result),
                );
            }
        }
        // Dropping the old handles stops their tasks.
        *running = checkers;
        drop(old);
    }

    /// Stops accepting and waits up to `runtime.shutdown_grace` for open requests.
    pub fn shutdown(&self) -> bool {
        {
            let _serial = lock(&self.reloading);
            self.stopping
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.files.clear();
        self.dns.clear();
        lock(&self.checkers).clear();
        let grace = self.shared.snapshot.load().config.runtime.shutdown_grace;
        let workers = lock(&self.workers).take();
        workers.is_none_or(|w| w.shutdown(grace))
    }
}

/// Removes the registrations not renewed in time, every 100 ms, for as long as the gateway
/// lives.
async fn expire_registrations(gateway: Weak<Gateway>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        let gone = gateway.registrations.expire(Instant::now());
        if gone.is_empty() {
            continue;
        }
        for (service, address) in &gone {
            tracing::info!(%service, endpoint = %address, "registration expired without a heartbeat: endpoint removed");
        }
        let _ = tokio::task::spawn_blocking(move || gateway.discovery_changed()).await;
    }
}

/// Locks a control-plane mutex; a poisoned one (a panic elsewhere) still holds valid data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! Where a `jwt` policy's keys come from, and how they stay current:
//! - `secret`: one HMAC key, fixed.
//! - `keys_file`: a JWK set read now and again whenever the file changes; an invalid edit is
//!   logged and the keys in force stay.
//! - `jwks_url`: fetched in the background, at once and then again when the set's
//!   `Cache-Control: max-age` runs out (kept within `jwks_min_refresh`..`jwks_max_refresh`;
//!   without one, `jwks_max_refresh`). A token naming a `kid` the set lacks asks for a refetch
//!   ([`KeySource::refetch_for_unknown_kid`]): at most one per `jwks_min_refresh`, and the
//!   requests that arrive while it runs wait for that one fetch instead of starting their own.
//!   A failed fetch keeps the last good set and is retried with backoff (quickly while no set was
//!   ever loaded, since requests get 503 `auth_unavailable` until one is); the failure and the
//!   recovery are each logged once.
//!
//! A source lives in the policy [`Registry`](super::Registry) across reloads while its settings
//! stay the same, so a reload neither refetches nor forgets the set while the IdP is down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use xxhash_rust::xxh3::xxh3_64;

use super::fetch;
use super::file_watch::FileWatch;
use crate::config::JwtKeys;
use crate::jose::jwk::{Key, KeySet};
use crate::observe::metrics::{self, Counter, Gauge};
use crate::observe::names;

/// Retries after a failed fetch start this soon and double, up to `jwks_min_refresh` (or this
/// cap while no set was ever loaded).
const FIRST_RETRY: Duration = Duration::from_millis(500);
const RETRY_CAP_WITHOUT_KEYS: Duration = Duration::from_secs(5);

/// A key set and its generation (which changes whenever the set's content does).
pub struct Versioned {
    pub set: KeySet,
    pub generation: u64,
    /// A hash of the set's source bytes: an unchanged refetch keeps the generation.
    fingerprint: u64,
}

/// The keys of one `jwt` policy and what keeps them current.
pub struct KeySource {
    state: Arc<State>,
    task: Option<JoinHandle<()>>,
    _watch: Option<FileWatch>,
}

struct State {
    policy: String,
    keys: ArcSwapOption<Versioned>,
    generation: AtomicU64,
    /// Whether unknown kids may ask for a refetch (`jwks_url` only).
    fetchable: bool,
    min_refresh: Duration,
    /// Wakes the fetcher before its next scheduled fetch.
    wake: Notify,
    /// Fetches started, and (published to waiters) fetches completed.
    started: AtomicU64,
    completed: watch::Sender<u64>,
    kid_refetch: Mutex<KidRefetch>,
    fetched_ok: Counter,
    fetch_failed: Counter,
    keys_gauge: Gauge,
}

/// The last refetch an unknown kid asked for.
#[derive(Default)]
struct KidRefetch {
    at: Option<Instant>,
    /// The fetch (by count started) that answers it.
    target: u64,
}

impl KeySource {
    /// Starts keeping `keys` current for `policy` (background work needs a tokio runtime; without
    /// one, as in unit tests, a `jwks_url` set is never loaded).
    /// `carried`: the key set a source this one replaces held (same keys, other settings),
    /// in force until this source loads its own.
    pub fn start(
        policy: &str,
        keys: &JwtKeys,
        min_refresh: Duration,
        max_refresh: Duration,
        carried: Option<Arc<Versioned>>,
        metrics: &metrics::Registry,
    ) -> KeySource {
        let labels = [(names::label::POLICY, policy)];
        let fetch_counter = |result: &str| {
            metrics.counter(
                names::JWKS_FETCHES_TOTAL,
                names::JWKS_FETCHES_TOTAL_HELP,
                &[
                    (names::label::POLICY, policy),
                    (names::label::RESULT, result),
                ],
            )
        };
        let state = Arc::new(State {
            policy: policy.to_string(),
            keys: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            fetchable: matches!(keys, JwtKeys::Url { .. }),
            min_refresh,
            wake: Notify::new(),
            started: AtomicU64::new(0),
            completed: watch::Sender::new(0),
            kid_refetch: Mutex::default(),
            fetched_ok: fetch_counter("success"),
            fetch_failed: fetch_counter("failure"),
            keys_gauge: metrics.gauge(names::JWKS_KEYS, names::JWKS_KEYS_HELP, &labels),
        });
        if let Some(set) = carried {
            state.generation.store(set.generation, Ordering::Release);
            state.keys_gauge.set(set.set.len() as i64);
            state.keys.store(Some(set));
        }
        let mut source = KeySource {
            state: Arc::clone(&state),
            task: None,
            _watch: None,
        };
        match keys {
            JwtKeys::Secret(secret) => {
                state.install(KeySet::single(Key::secret(secret)), 0);
            }
            JwtKeys::File(path) => {
                // Watched first, read second: a change between the two is seen.
                let watched = Arc::clone(&state);
                let path2 = path.clone();
                source._watch = Some(FileWatch::start(path.clone(), move || {
                    watched.read_file(&path2)
                }));
                state.read_file(path);
            }
            JwtKeys::Url { url, ca } => {
                let tls = match url.scheme_str() {
                    Some("https") => {
                        crate::tls::client_config(ca.as_deref(), false, &[b"http/1.1"])
                            .map(Some)
                            .map_err(|e| format!("TLS setup for {url} failed: {e}"))
                    }
                    _ => Ok(None),
                };
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    let fetcher = Fetcher {
                        state: Arc::clone(&state),
                        url: url.clone(),
                        tls,
                        min_refresh,
                        max_refresh,
                    };
                    source.task = Some(runtime.spawn(fetcher.run()));
                }
            }
        }
        source
    }

    /// The key set in force, if one was ever loaded.
    pub fn current(&self) -> Option<Arc<Versioned>> {
        self.state.keys.load_full()
    }

    /// Asks for the key set to be fetched again because a token names a `kid` it lacks, and
    /// waits for that fetch. Returns `false` at once when no fetch is allowed now (a refetch
    /// for an unknown kid already ran within `jwks_min_refresh`, or the keys are not fetched).
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let state = &self.state;
        if !state.fetchable {
            return false;
        }
        let target = {
            let mut last = state.kid_refetch.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            match last.at {
                Some(at) if now.duration_since(at) < state.min_refresh => {
                    if *state.completed.borrow() >= last.target {
                        // It ran, and the kid is still unknown.
                        return false;
                    }
                    // It is running: wait for it rather than start another.
                    last.target
                }
                _ => {
                    last.at = Some(now);
                    last.target = state.started.load(Ordering::Acquire) + 1;
                    state.wake.notify_one();
                    last.target
                }
            }
        };
        let mut completed = state.completed.subscribe();
        // The fetch waited for may start only after one in progress ends: two fetch timeouts.
        tokio::time::timeout(
            fetch::TIMEOUT * 2 + Duration::from_secs(1),
            completed.wait_for(|done| *done >= target),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }
}

impl Drop for KeySource {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

impl State {
    /// Makes `set` the one in force; its generation changes only when its bytes did.
    fn install(&self, set: KeySet, fingerprint: u64) -> bool {
        let current = self.keys.load();
        if current
            .as_ref()
            .is_some_and(|c| c.fingerprint == fingerprint)
        {
            return false;
        }
        self.keys_gauge.set(set.len() as i64);
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        self.keys.store(Some(Arc::new(Versioned {
            set,
            generation,
            fingerprint,
        })));
        true
    }

    fn read_file(&self, path: &std::path::Path) {
        let policy = &self.policy;
        let loaded = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| {
                KeySet::from_jwks(&bytes)
                    .map(|loaded| (loaded, xxh3_64(&bytes)))
                    .map_err(|e| e.to_string())
            });
        match loaded {
            Ok((loaded, fingerprint)) => {
                for why in &loaded.skipped {
                    tracing::warn!(policy, file = %path.display(), "key skipped: {why}");
                }
                let keys = loaded.set.len();
                if self.install(loaded.set, fingerprint) {
                    tracing::info!(policy, keys, file = %path.display(), "key set loaded");
                }
            }
            Err(why) => tracing::error!(
                policy,
                file = %path.display(),
                "key set file not applied, the keys in force stay: {why}"
            ),
        }
    }
}

/// The background task of a `jwks_url` source.
struct Fetcher {
    state: Arc<State>,
    url: http::Uri,
    /// The TLS client for `https://` (none for `http://`), or why it could not be made (the CA
    /// file went bad after the config was checked): then every fetch fails with that reason.
    tls: Result<Option<Arc<rustls::ClientConfig>>, String>,
    min_refresh: Duration,
    max_refresh: Duration,
}

impl Fetcher {
    async fn run(self) {
        let state = &*self.state;
        let policy = state.policy.as_str();
        let url = &self.url;
        let mut failures: u32 = 0;
        let mut next = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = state.wake.notified() => {}
            }
            let number = state.started.fetch_add(1, Ordering::AcqRel) + 1;
            let fetched = match &self.tls {
                Ok(tls) => fetch::fetch(url, tls.as_ref())
                    .await
                    .map_err(|e| format!("fetching {url} failed: {e}")),
                Err(why) => Err(why.clone()),
            };
            let result = fetched.and_then(|fetched| {
                KeySet::from_jwks(&fetched.body)
                    .map(|loaded| (loaded, xxh3_64(&fetched.body), fetched.max_age))
                    .map_err(|e| format!("the key set at {url} is unusable: {e}"))
            });
            let now = tokio::time::Instant::now();
            match result {
                Ok((loaded, fingerprint, max_age)) => {
                    state.fetched_ok.inc();
                    let keys = loaded.set.len();
                    let skipped = loaded.skipped;
                    if state.install(loaded.set, fingerprint) {
                        for why in &skipped {
                            tracing::warn!(policy, %url, "key skipped: {why}");
                        }
                        tracing::info!(policy, keys, %url, "key set loaded");
                    } else if failures > 0 {
                        tracing::info!(policy, keys, %url, "key set fetched again after failures");
                    }
                    failures = 0;
                    let keep = max_age
                        .unwrap_or(self.max_refresh)
                        .clamp(self.min_refresh, self.max_refresh);
                    next = now + keep;
                }
                Err(why) => {
                    state.fetch_failed.inc();
                    let held = state.keys.load().as_ref().map(|v| v.set.len());
                    if failures == 0 {
                        match held {
                            Some(keys) => tracing::warn!(
                                policy,
                                keys,
                                "{why}; the last good key set stays in force"
                            ),
                            None => tracing::error!(
                                policy,
                                "{why}; no key set loaded yet, so requests get 503 auth_unavailable"
                            ),
                        }
                    }
                    failures = failures.saturating_add(1);
                    let cap = if held.is_some() {
                        self.min_refresh
                    } else {
                        self.min_refresh.min(RETRY_CAP_WITHOUT_KEYS)
                    };
                    let backoff = FIRST_RETRY.saturating_mul(1 << (failures - 1).min(16));
                    next = now + backoff.min(cap);
                }
            }
            state.completed.send_replace(number);
        }
    }
}

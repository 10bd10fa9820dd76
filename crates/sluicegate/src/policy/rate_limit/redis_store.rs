//! The Redis store: one bucket per key across every gateway instance, decided atomically inside
//! Redis by a Lua script (the GCRA of `gcra.rs`, on Redis's own clock), loaded once per server
//! and called by its SHA (`EVALSHA`; loaded again only when a server answers `NOSCRIPT`).
//! One round trip per limited request.
//!
//! Each worker thread has its own multiplexed connection (tokio's connection manager for one
//! server, the cluster client for a Redis Cluster), made on first use: no connection per
//! request, and no lock is held across a call. Every call has the `[redis] timeout`; a slower
//! answer counts as an error.
//!
//! While Redis fails, the store does not queue requests behind it or retry in a tight loop:
//! after a failure, calls are skipped (each request gets the policy's `on_store_error` at once)
//! until a backoff passes — 100 ms doubling up to 2 s — and then the next request, alone, tries
//! again.
//! The state change is logged once each way, not per request.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Script, TlsCertificates};

use super::gcra::Verdict;
use crate::config::RedisConfig;

/// The bucket script. KEYS[1]: the bucket. ARGV[1]: a token's interval, ARGV[2]: the
/// tolerance (capacity × interval), both in microseconds. Returns {allowed, remaining,
/// reset_us, retry_after_us}. Redis's `TIME` is the clock, so every instance agrees on it.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
local next = tat + interval
local ahead = next - now
if ahead > tolerance then
  return {0, 0, tat - now, ahead - tolerance}
end
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.ceil(ahead / 1000) + 1000)
return {1, math.floor((tolerance - ahead) / interval), ahead, 0}
";

/// How long a connection (TCP, TLS, the cluster's slot map) may take to be made, in the
/// background: requests wait for it only as long as their own timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The first wait after a failure, and the longest.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why the store could not decide.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("Redis is unavailable; next attempt after a backoff")]
    BackingOff,
    #[error("Redis did not answer within the timeout")]
    Timeout,
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered something the bucket script does not return")]
    Unexpected,
    #[error("no connection to Redis could be made")]
    Unavailable,
    #[error("the connection to Redis is still being made")]
    Connecting,
}

/// A bucket's parameters in the script's units.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub interval_us: u64,
    pub tolerance_us: u64,
}

impl Bucket {
    pub fn new(capacity: u64, refill_per_second: f64) -> Bucket {
        let interval_us = ((1e6 / refill_per_second).round() as u64).max(1);
        Bucket {
            interval_us,
            tolerance_us: interval_us.saturating_mul(capacity),
        }
    }
}

/// One `[redis]`: its clients, and whether it is failing.
pub struct RedisStore {
    config: RedisConfig,
    /// Tells this store's connections apart in each worker's table.
    id: u64,
    script: Script,
    health: Mutex<Health>,
}

/// Whether Redis answers, and when to try again when it does not.
struct Health {
    up: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// A worker's connection.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A worker's connection to one store, made in the background: a request waits for it no
/// longer than its own timeout, and a slow connect (a TLS handshake on a busy machine) is not
/// cancelled by the requests that gave up on it.
#[derive(Default)]
struct Slot {
    state: RefCell<SlotState>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Idle,
    Connecting,
    Ready(Conn),
}

/// Ends a connect attempt: a slot still `Connecting` goes back to `Idle` (the next request,
/// after the backoff, tries again), and whoever waits is woken.
struct Reset(Rc<Slot>);

impl Drop for Reset {
    fn drop(&mut self) {
        let mut state = self.0.state.borrow_mut();
        if let SlotState::Connecting = *state {
            *state = SlotState::Idle;
        }
        drop(state);
        self.0.ready.notify_waiters();
    }
}

thread_local! {
    /// Each worker's connections, by store id: made on the worker's own runtime, where their
    /// background tasks run.
    static CONNS: RefCell<HashMap<u64, Rc<Slot>>> = RefCell::new(HashMap::new());
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl RedisStore {
    pub fn new(config: RedisConfig) -> RedisStore {
        RedisStore {
            config,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            script: Script::new(SCRIPT),
            health: Mutex::new(Health {
                up: true,
                failures: 0,
                retry_at: None,
            }),
        }
    }

    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// Decides one request for the bucket `key`, within the timeout.
    pub async fn check(
        self: &Arc<Self>,
        key: &[u8],
        bucket: Bucket,
    ) -> Result<Verdict, StoreError> {
        if self.backing_off() {
            return Err(StoreError::BackingOff);
        }
        let connected = std::cell::Cell::new(false);
        let call = async {
            let mut conn = self.connection().await?;
            connected.set(true);
            let mut invocation = self.script.key(key);
            invocation.arg(bucket.interval_us).arg(bucket.tolerance_us);
            let answer: Vec<i64> = match &mut conn {
                Conn::Single(c) => invocation.invoke_async(c).await?,
                Conn::Cluster(c) => invocation.invoke_async(c).await?,
            };
            Ok::<_, StoreError>(answer)
        };
        let result = match tokio::time::timeout(self.config.timeout, call).await {
            Ok(Ok(answer)) => verdict(&answer).ok_or(StoreError::Unexpected),
            Ok(Err(e)) => Err(e),
            // Still waiting for this worker's connection: not Redis's failure (the connect
            // task reports its own), but this request cannot wait longer.
            Err(_) if !connected.get() => Err(StoreError::Connecting),
            Err(_) => Err(StoreError::Timeout),
        };
        match &result {
            Ok(_) => self.succeeded(),
            Err(e) => self.failed(e),
        }
        result
    }

    /// This worker's connection: made on first use by a task of its own (concurrent first
    /// uses wait for that one attempt); a failed attempt leaves the next to the backoff.
    async fn connection(self: &Arc<Self>) -> Result<Conn, StoreError> {
        let slot = CONNS.with(|conns| {
            let mut conns = conns.borrow_mut();
            if !conns.contains_key(&self.id) {
                // A reload that changed `[redis]` made this store; the connections of the ones
                // before it close here (ids only grow).
                conns.retain(|id, _| *id > self.id);
            }
            Rc::clone(conns.entry(self.id).or_default())
        });
        loop {
            let notified = slot.ready.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            let start = match &*slot.state.borrow() {
                SlotState::Ready(conn) => return Ok(conn.clone()),
                SlotState::Connecting => false,
                SlotState::Idle => true,
            };
            if start {
                *slot.state.borrow_mut() = SlotState::Connecting;
                let store = Arc::clone(self);
                let slot = Rc::clone(&slot);
                tokio::task::spawn_local(async move {
                    // Back to Idle however the attempt ends: an error, the bound below, or the
                    // task dropped with its runtime.
                    let guard = Reset(Rc::clone(&slot));
                    let made = tokio::time::timeout(CONNECT_TIMEOUT * 2, store.connect())
                        .await
                        .unwrap_or(Err(StoreError::Timeout));
                    match made {
                        Ok(conn) => *slot.state.borrow_mut() = SlotState::Ready(conn),
                        Err(e) => store.failed(&e),
                    }
                    drop(guard);
                });
            }
            notified.await;
            if let SlotState::Idle = &*slot.state.borrow() {
                return Err(StoreError::Unavailable);
            }
        }
    }

    async fn connect(&self) -> Result<Conn, StoreError> {
        let timeout = self.config.timeout;
        // A `ca` replaces the system's roots for rediss:// servers.
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: self.config.ca.clone(),
        };
        if self.config.cluster {
            let mut builder = ClusterClientBuilder::new(self.config.urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(timeout)
                .retries(1);
            if self.config.ca.is_some() {
                builder = builder.certs(certs());
            }
            return Ok(Conn::Cluster(
                builder.build()?.get_async_connection().await?,
            ));
        }
        let url = self
            .config
            .urls
            .first()
            .map(String::as_str)
            .unwrap_or_default();
        let client = match self.config.ca {
            Some(_) => redis::Client::build_with_tls(url, certs())?,
            None => redis::Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF_MAX);
        Ok(Conn::Single(
            client.get_connection_manager_with_config(config).await?,
        ))
    }

    /// Whether calls are skipped now. When a backoff has just run out, the caller that finds
    /// it so is the one probe: it pushes the next try past its own timeout, so the requests
    /// meanwhile keep skipping instead of each waiting out the timeout on a Redis still down.
    fn backing_off(&self) -> bool {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.up {
            return false;
        }
        let now = Instant::now();
        match health.retry_at {
            Some(at) if now < at => true,
            _ => {
                health.retry_at = Some(now + self.config.timeout + BACKOFF_MIN);
                false
            }
        }
    }

    fn succeeded(&self) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if !health.up {
            tracing::info!(
                redis = %self.config.urls.join(","),
                "Redis answers again: rate limits use the shared buckets"
            );
        }
        *health = Health {
            up: true,
            failures: 0,
            retry_at: None,
        };
    }

    fn failed(&self, error: &StoreError) {
        // Backing off is no new failure, and a connect is judged by its own task.
        if matches!(
            error,
            StoreError::BackingOff | StoreError::Unavailable | StoreError::Connecting
        ) {
            return;
        }
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.up {
            tracing::warn!(
                redis = %self.config.urls.join(","),
                %error,
                "Redis is unavailable: rate limits follow their on_store_error until it is back"
            );
        }
        let backoff = BACKOFF_MIN
            .saturating_mul(1 << health.failures.min(5))
            .min(BACKOFF_MAX);
        health.up = false;
        health.failures = health.failures.saturating_add(1);
        health.retry_at = Some(Instant::now() + backoff);
    }
}

/// The script's answer as a verdict (microseconds to nanoseconds).
fn verdict(answer: &[i64]) -> Option<Verdict> {
    let [allowed, remaining, reset_us, retry_us] = answer else {
        return None;
    };
    let ns = |us: &i64| u64::try_from(*us).unwrap_or(0).saturating_mul(1_000);
    Some(Verdict {
        allowed: *allowed == 1,
        remaining: u64::try_from(*remaining).unwrap_or(0),
        reset_ns: ns(reset_us),
        retry_after_ns: ns(retry_us),
    })
}

//! The gateway's connections to `[redis]`, shared by the features that keep their state there
//! (the rate limiter's buckets, the response cache's shared tier): per worker, multiplexed,
//! bounded by the `[redis] timeout`, and backing off while Redis fails.
//!
//! Each worker thread has its own multiplexed connection per client (tokio's connection
//! manager for one server, the cluster client for a Redis Cluster), made on first use: no
//! connection per request, and no lock is held across a call. Every call has the `[redis]
//! timeout`; a slower answer counts as an error.
//!
//! While Redis fails, calls are not queued behind it nor retried in a tight loop: after a
//! failure, calls are skipped (each caller gets [`RedisError::BackingOff`] at once) until a
//! backoff passes — 100 ms doubling up to 2 s — and then the next call, alone, tries again.
//! The state change is logged once each way, not per call, with what the feature does
//! meanwhile.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, TlsCertificates, Value};

use crate::config::RedisConfig;

/// How long a connection (TCP, TLS, the cluster's slot map) may take to be made, in the
/// background: callers wait for it only as long as their own timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The first wait after a failure, and the longest.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Why a call to Redis did not answer.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("Redis is unavailable; next attempt after a backoff")]
    BackingOff,
    #[error("Redis did not answer within the timeout")]
    Timeout,
    #[error("Redis failed: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("Redis answered something the caller does not expect")]
    Unexpected,
    #[error("no connection to Redis could be made")]
    Unavailable,
    #[error("the connection to Redis is still being made")]
    Connecting,
}

/// A connection: to one server, or to a Redis Cluster.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// One feature's client of one `[redis]`: its connections, and whether Redis answers.
pub struct RedisClient {
    config: RedisConfig,
    /// Tells this client's connections apart in each worker's table.
    id: u64,
    /// What the feature does while Redis fails, and when it is back, for the two log lines.
    while_down: &'static str,
    when_back: &'static str,
    health: Mutex<Health>,
}

/// Whether Redis answers, and when to try again when it does not.
struct Health {
    up: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

/// A worker's connection to one client's Redis, made in the background: a caller waits for it
/// no longer than its own timeout, and a slow connect (a TLS handshake on a busy machine) is
/// not cancelled by the callers that gave up on it.
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

/// Ends a connect attempt: a slot still `Connecting` goes back to `Idle` (the next call,
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
    /// Each worker's connections, by client id: made on the worker's own runtime, where their
    /// background tasks run.
    static CONNS: RefCell<HashMap<u64, Rc<Slot>>> = RefCell::new(HashMap::new());
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// The ids of the clients in use: a worker drops its connections of the others.
static LIVE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

impl RedisClient {
    /// A client for `config`; `while_down` and `when_back` end the log lines of its state
    /// changes ("Redis is unavailable: {while_down}").
    pub fn new(
        config: RedisConfig,
        while_down: &'static str,
        when_back: &'static str,
    ) -> RedisClient {
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        RedisClient {
            config,
            id,
            while_down,
            when_back,
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

    /// Runs `call` on this worker's connection within the `[redis] timeout`, or fails at
    /// once while backing off. Must run on a worker (a `LocalSet`).
    pub async fn run<T, F, Fut>(self: &std::sync::Arc<Self>, call: F) -> Result<T, RedisError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.call(self.config.timeout, true, call).await
    }

    /// [`run`](Self::run) with a timeout of the caller's, for background writes: skipped while
    /// backing off like any call, but its outcome says nothing of Redis's health (a large
    /// write that times out, or a script refused for memory, must not turn the lookups away).
    pub async fn run_in_background<T, F, Fut>(
        self: &std::sync::Arc<Self>,
        timeout: Duration,
        call: F,
    ) -> Result<T, RedisError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        self.call(timeout, false, call).await
    }

    async fn call<T, F, Fut>(
        self: &std::sync::Arc<Self>,
        timeout: Duration,
        track: bool,
        call: F,
    ) -> Result<T, RedisError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        if self.backing_off() {
            return Err(RedisError::BackingOff);
        }
        let connected = std::cell::Cell::new(false);
        let work = async {
            let conn = self.connection().await?;
            connected.set(true);
            call(conn).await
        };
        let result = match tokio::time::timeout(timeout, work).await {
            Ok(result) => result,
            // Still waiting for this worker's connection: not Redis's failure (the connect
            // task reports its own), but this call cannot wait longer.
            Err(_) if !connected.get() => Err(RedisError::Connecting),
            Err(_) => Err(RedisError::Timeout),
        };
        match &result {
            Ok(_) if track => self.succeeded(),
            Err(e) if track => self.failed(e),
            _ => {}
        }
        result
    }

    /// This worker's connection: made on first use by a task of its own (concurrent first
    /// uses wait for that one attempt); a failed attempt leaves the next to the backoff.
    async fn connection(self: &std::sync::Arc<Self>) -> Result<Conn, RedisError> {
        let slot = CONNS.with(|conns| {
            let mut conns = conns.borrow_mut();
            if !conns.contains_key(&self.id) {
                let live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
                conns.retain(|id, _| live.contains(id));
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
                let client = std::sync::Arc::clone(self);
                let slot = Rc::clone(&slot);
                tokio::task::spawn_local(async move {
                    // Back to Idle however the attempt ends: an error, the bound below, or the
                    // task dropped with its runtime.
                    let guard = Reset(Rc::clone(&slot));
                    let made = tokio::time::timeout(CONNECT_TIMEOUT * 2, client.connect())
                        .await
                        .unwrap_or(Err(RedisError::Timeout));
                    match made {
                        Ok(conn) => *slot.state.borrow_mut() = SlotState::Ready(conn),
                        Err(e) => client.failed(&e),
                    }
                    drop(guard);
                });
            }
            notified.await;
            if let SlotState::Idle = &*slot.state.borrow() {
                return Err(RedisError::Unavailable);
            }
        }
    }

    /// A new connection of the caller's own, for work off the workers (the admin API's
    /// purge): its health is not recorded.
    pub async fn connect(&self) -> Result<Conn, RedisError> {
        let timeout = self.config.timeout;
        if self.config.cluster {
            let mut builder = ClusterClientBuilder::new(self.config.urls.clone())
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(timeout)
                .retries(1);
            if self.config.ca.is_some() {
                builder = builder.certs(self.certificates());
            }
            return Ok(Conn::Cluster(
                builder.build()?.get_async_connection().await?,
            ));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF_MAX);
        let client = self.client(0)?;
        Ok(Conn::Single(
            client.get_connection_manager_with_config(config).await?,
        ))
    }

    /// A plain client of the `n`th server named (for pub/sub, which a Redis Cluster
    /// broadcasts to every node).
    pub fn client(&self, n: usize) -> Result<redis::Client, RedisError> {
        let url = self
            .config
            .urls
            .get(n % self.config.urls.len().max(1))
            .map(String::as_str)
            .unwrap_or_default();
        Ok(match self.config.ca {
            Some(_) => redis::Client::build_with_tls(url, self.certificates())?,
            None => redis::Client::open(url)?,
        })
    }

    /// A `ca` replaces the system's roots for rediss:// servers.
    fn certificates(&self) -> TlsCertificates {
        TlsCertificates {
            client_tls: None,
            root_cert: self.config.ca.clone(),
        }
    }

    /// Whether calls are skipped now. When a backoff has just run out, the caller that finds
    /// it so is the one probe: it pushes the next try past its own timeout, so the callers
    /// meanwhile keep skipping instead of each waiting out the timeout on a Redis still down.
    pub fn backing_off(&self) -> bool {
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

    /// Whether the last call answered.
    pub fn is_up(&self) -> bool {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).up
    }

    fn succeeded(&self) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if !health.up {
            tracing::info!(
                redis = %self.config.urls.join(","),
                "Redis answers again: {}", self.when_back
            );
        }
        *health = Health {
            up: true,
            failures: 0,
            retry_at: None,
        };
    }

    fn failed(&self, error: &RedisError) {
        // Backing off is no new failure, and a connect is judged by its own task.
        if matches!(
            error,
            RedisError::BackingOff | RedisError::Unavailable | RedisError::Connecting
        ) {
            return;
        }
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if health.up {
            tracing::warn!(
                redis = %self.config.urls.join(","),
                %error,
                "Redis is unavailable: {}", self.while_down
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

impl Drop for RedisClient {
    /// A reload that changed `[redis]` replaced this client: the connections the workers made
    /// for it close as each worker next makes one for another client (they cannot be reached
    /// from here, being each worker's own).
    fn drop(&mut self) {
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|id| *id != self.id);
    }
}

//! Active health checks (`[services.health_check]`): probing each endpoint on a timer and
//! marking it unhealthy or healthy again after enough consecutive results.
//!
//! Each endpoint gets its own Tokio task ([`spawn_checker`]), so a slow or silent endpoint only
//! ever delays its own next check, never another endpoint's. The task owns no state worth
//! keeping: the verdict and the streaks live in the endpoint's [`EndpointHealth`], so a reload
//! may stop the old checker and start a new one (with a new interval, say) without the endpoint
//! flapping. Reporting (metrics, admin) goes through the `on_result` callback, so this file knows
//! nothing of `observe`.
//!
//! A probe is one of:
//! - **TCP**: a connect, closed at once.
//! - **HTTP**: a fresh connection (never a pooled one: the check must see what a new request
//!   would), opened the way requests' connections are (`proxy::http::client::connect`): in the
//!   service's protocol, over TLS with its settings for `https`, within its `connect_timeout`.
//!   Then `GET path` with `Host` (`:authority` over HTTP/2) and
//!   `user-agent: sluicegate-health-check` (and `connection: close` over HTTP/1.1); success when
//!   the status is in `expected_status`. The body is read and thrown away, so a response cut
//!   short counts as a failure.
//!
//! The whole probe (connect, request, body) runs under `timeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, HOST, USER_AGENT};
use http::{Request, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::{CheckKind, EndpointHealth, HealthCheckConfig, StatusRanges};
use crate::proxy::http::client::{self, ConnectError, Connected, Speak, Transport};

/// The `user-agent` of every HTTP check, so backends can tell checks from users in their logs
/// (and leave them out of their own metrics).
const CHECK_USER_AGENT: &str = "sluicegate-health-check";

/// Shortest interval honoured: a zero interval from a careless config must not become a busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The result of one active check, as reported to the `on_result` callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckResult {
    Success,
    Failure,
}

impl CheckResult {
    /// The `result` label of `sluicegate_health_checks_total` (SPEC 4).
    pub fn as_str(self) -> &'static str {
        match self {
            CheckResult::Success => "success",
            CheckResult::Failure => "failure",
        }
    }
}

/// The running checker of one endpoint. Dropping it (or calling [`stop`](Self::stop)) aborts the
/// task, so a checker can never outlive the config that started it.
#[derive(Debug)]
#[must_use = "dropping the handle stops the checker at once"]
pub struct CheckerHandle {
    task: JoinHandle<()>,
}

impl CheckerHandle {
    /// Stops the checker. The endpoint's state stays as the last check left it.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for CheckerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The endpoint a checker probes, and how it is reached.
#[derive(Clone)]
pub struct Target {
    pub address: SocketAddr,
    /// The HTTP check's `Host` (`:authority` over HTTP/2); `None` sends the address.
    pub host: Option<String>,
    /// The service's transport: HTTP checks speak its protocol, over TLS for `https`.
    pub transport: Transport,
    /// The service's `connect_timeout` (zero: none of its own; the check's `timeout` holds).
    pub connect_timeout: Duration,
}

/// Starts the active checker of the endpoint `target`, writing its verdicts into `state` and
/// reporting each check's result to `on_result` (before `state` is updated).
///
/// The first check runs after
/// a random delay below `interval`, so that the checks of many endpoints started together (at
/// startup or a reload) spread over the interval instead of arriving in bursts; then one check
/// starts every `interval`, give or take 10 % (again so that they stay spread). A check that
/// outlasts the interval is followed by a full interval of rest, never by an immediate retry.
///
/// Must be called within a Tokio runtime.
pub fn spawn_checker(
    target: Target,
    config: HealthCheckConfig,
    state: Arc<EndpointHealth>,
    on_result: Arc<dyn Fn(CheckResult) + Send + Sync>,
) -> CheckerHandle {
    let probe = Probe::new(target.address, target.host, config.kind);
    let checker = Checker {
        address: target.address,
        transport: target.transport,
        connect_timeout: target.connect_timeout,
        probe,
        interval: config.interval.max(MIN_INTERVAL),
        timeout: config.timeout,
        healthy_threshold: config.healthy_threshold.max(1),
        unhealthy_threshold: config.unhealthy_threshold.max(1),
        state,
        on_result,
    };
    CheckerHandle {
        task: tokio::spawn(checker.run()),
    }
}

/// Why a check failed; logged as the reason of a transition to unhealthy.
#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    #[error(transparent)]
    Open(#[from] ConnectError),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("status {status} is not in expected_status {expected}")]
    Status { status: u16, expected: StatusRanges },
    /// The config gave something that cannot go on the wire; every check fails with it.
    #[error("cannot send the check: {0}")]
    Unsendable(String),
}

/// What one check does, with its request parts prepared once.
enum Probe {
    Tcp,
    Http {
        /// The request target and `Host` value, or why they cannot be sent.
        target: Result<(Uri, HeaderValue), String>,
        expected: StatusRanges,
    },
}

impl Probe {
    fn new(address: SocketAddr, host: Option<String>, kind: CheckKind) -> Probe {
        match kind {
            CheckKind::Tcp => Probe::Tcp,
            CheckKind::Http { path, expected } => {
                let host = host.unwrap_or_else(|| address.to_string());
                Probe::Http {
                    target: request_target(&path, &host),
                    expected,
                }
            }
        }
    }
}

/// Parses the path (origin form: it must start with `/`) and the `Host` value.
fn request_target(path: &str, host: &str) -> Result<(Uri, HeaderValue), String> {
    let uri = match Uri::try_from(path) {
        Ok(uri) if path.starts_with('/') && uri.authority().is_none() => uri,
        _ => return Err(format!("path {path:?} is not a path starting with '/'")),
    };
    let host =
        HeaderValue::try_from(host).map_err(|_| format!("{host:?} is not a valid Host header"))?;
    Ok((uri, host))
}

/// The state of one running checker task.
struct Checker {
    address: SocketAddr,
    transport: Transport,
    connect_timeout: Duration,
    probe: Probe,
    interval: Duration,
    timeout: Duration,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
    state: Arc<EndpointHealth>,
    on_result: Arc<dyn Fn(CheckResult) + Send + Sync>,
}

impl Checker {
    async fn run(self) {
        tokio::time::sleep(below(self.interval)).await;
        loop {
            let started = tokio::time::Instant::now();
            let result = self.check().await;
            self.report(result);
            let period = around(self.interval);
            let rest = match period.checked_sub(started.elapsed()) {
                Some(rest) if !rest.is_zero() => rest,
                _ => period,
            };
            // `sleep` saturates absurd durations at the far future rather than panicking.
            tokio::time::sleep(rest).await;
        }
    }

    /// One check, bounded by the timeout.
    async fn check(&self) -> Result<(), CheckError> {
        let probe = async {
            match &self.probe {
                Probe::Tcp => TcpStream::connect(self.address)
                    .await
                    .map(drop)
                    .map_err(CheckError::Connect),
                Probe::Http { target, expected } => {
                    let (uri, host) = target
                        .as_ref()
                        .map_err(|why| CheckError::Unsendable(why.clone()))?;
                    self.http_check(uri, host, expected).await
                }
            }
        };
        tokio::time::timeout(self.timeout, probe)
            .await
            .unwrap_or(Err(CheckError::Timeout(self.timeout)))
    }

    /// Reports a result and applies the thresholds; logs each transition once.
    fn report(&self, result: Result<(), CheckError>) {
        match result {
            Ok(()) => {
                (self.on_result)(CheckResult::Success);
                let streak = self.state.check_succeeded();
                if streak >= self.healthy_threshold && self.state.set_healthy(true) {
                    tracing::info!(
                        endpoint = %self.address,
                        reason = %format_args!("{streak} consecutive checks passed"),
                        "endpoint is healthy again"
                    );
                }
            }
            Err(error) => {
                (self.on_result)(CheckResult::Failure);
                let streak = self.state.check_failed();
                tracing::debug!(endpoint = %self.address, %error, "health check failed");
                if streak >= self.unhealthy_threshold && self.state.set_healthy(false) {
                    tracing::warn!(
                        endpoint = %self.address,
                        reason = %error,
                        failures = streak,
                        "endpoint marked unhealthy"
                    );
                }
            }
        }
    }
}

impl Checker {
    /// `GET uri` on a new connection to the endpoint; success when the status is `expected`.
    async fn http_check(
        &self,
        uri: &Uri,
        host: &HeaderValue,
        expected: &StatusRanges,
    ) -> Result<(), CheckError> {
        let connected = client::connect::<Empty<Bytes>, _>(
            self.address,
            &self.transport,
            self.connect_timeout,
            Speak::Protocol,
            TokioExecutor::new(),
        )
        .await?;
        // Each connection is driven by its own task (hyper's design); the guard ends it with the
        // check however the check ends, the timeout included, so a silent server cannot pile up
        // tasks.
        let (response, _connection) = match connected {
            Connected::Http1(io) => {
                let (mut sender, connection) =
                    http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await?;
                let guard = AbortOnDrop(tokio::spawn(async move {
                    let _ = connection.await;
                }));
                let mut request = Request::new(Empty::<Bytes>::new());
                *request.uri_mut() = uri.clone();
                let headers = request.headers_mut();
                headers.insert(HOST, host.clone());
                headers.insert(USER_AGENT, HeaderValue::from_static(CHECK_USER_AGENT));
                headers.insert(CONNECTION, HeaderValue::from_static("close"));
                (sender.send_request(request).await?, guard)
            }
            Connected::Http2(mut sender, connection) => {
                let guard = AbortOnDrop(tokio::spawn(async move {
                    let _ = connection.await;
                }));
                let scheme = if self.transport.is_tls() {
                    "https"
                } else {
                    "http"
                };
                let mut request = Request::new(Empty::<Bytes>::new());
                *request.uri_mut() = absolute(scheme, host, uri)?;
                *request.version_mut() = Version::HTTP_2;
                request
                    .headers_mut()
                    .insert(USER_AGENT, HeaderValue::from_static(CHECK_USER_AGENT));
                (sender.send_request(request).await?, guard)
            }
        };
        read_status(response, expected).await
    }
}

/// The HTTP/2 form of a check's target: `:scheme`, `:authority` (the `Host` value) and path.
fn absolute(scheme: &str, host: &HeaderValue, uri: &Uri) -> Result<Uri, CheckError> {
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let authority = host
        .to_str()
        .map_err(|_| CheckError::Unsendable(format!("{host:?} is not a valid authority")))?;
    Uri::try_from(format!("{scheme}://{authority}{path}"))
        .map_err(|_| CheckError::Unsendable(format!("{authority:?} is not a valid authority")))
}

/// Reads the body to its end (a response cut short fails) and checks the status.
async fn read_status(
    response: http::Response<Incoming>,
    expected: &StatusRanges,
) -> Result<(), CheckError> {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    if expected.contains(status) {
        Ok(())
    } else {
        Err(CheckError::Status {
            status,
            expected: expected.clone(),
        })
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A random duration in `[0, d)`.
fn below(d: Duration) -> Duration {
    Duration::from_nanos(fastrand::u64(..nanos(d).max(1)))
}

/// A random duration within 10 % of `d`.
fn around(d: Duration) -> Duration {
    let d = nanos(d);
    let tenth = d / 10;
    let jitter = fastrand::u64(..=tenth.saturating_mul(2));
    Duration::from_nanos((d - tenth).saturating_add(jitter))
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A minimal HTTP/1.1 server on 127.0.0.1:0 answering every request with `status`, which the
    /// test may change; it keeps the request heads it received.
    struct Backend {
        address: SocketAddr,
        status: Arc<AtomicU16>,
        heads: Arc<Mutex<Vec<String>>>,
        accepted: Arc<AtomicUsize>,
        _task: AbortOnDrop,
    }

    /// What the backend does with a connection.
    #[derive(Clone, Copy)]
    enum Behaviour {
        /// Answers with the current status.
        Answer,
        /// Accepts and keeps the connection open without ever answering.
        Silent,
        /// Answers something that is not HTTP.
        Garbage,
    }

    impl Backend {
        async fn start(status: u16, behaviour: Behaviour) -> Backend {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let status = Arc::new(AtomicU16::new(status));
            let heads = Arc::new(Mutex::new(Vec::new()));
            let accepted = Arc::new(AtomicUsize::new(0));
            let task = tokio::spawn({
                let (status, heads, accepted) = (status.clone(), heads.clone(), accepted.clone());
                async move {
                    let mut silent = Vec::new();
                    loop {
                        let Ok((mut socket, _)) = listener.accept().await else {
                            continue;
                        };
                        accepted.fetch_add(1, Ordering::SeqCst);
                        match behaviour {
                            Behaviour::Silent => silent.push(socket),
                            Behaviour::Answer | Behaviour::Garbage => {
                                let (status, heads) = (status.clone(), heads.clone());
                                tokio::spawn(async move {
                                    let head = read_head(&mut socket).await;
                                    heads.lock().unwrap().push(head);
                                    let response = match behaviour {
                                        Behaviour::Garbage => "SMTP ready\r\n\r\n".to_string(),
                                        _ => format!(
                                            "HTTP/1.1 {} Whatever\r\ncontent-length: 2\r\n\
                                             connection: close\r\n\r\nok",
                                            status.load(Ordering::SeqCst)
                                        ),
                                    };
                                    let _ = socket.write_all(response.as_bytes()).await;
                                    let _ = socket.shutdown().await;
                                });
                            }
                        }
                    }
                }
            });
            Backend {
                address,
                status,
                heads,
                accepted,
                _task: AbortOnDrop(task),
            }
        }
    }

    async fn read_head(socket: &mut TcpStream) -> String {
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&head).into_owned()
    }

    /// Every result, with the verdict `state` had when it was reported (just before the
    /// thresholds were applied to it).
    type Log = Arc<Mutex<Vec<(CheckResult, bool)>>>;

    fn recorder(state: &Arc<EndpointHealth>) -> (Log, Arc<dyn Fn(CheckResult) + Send + Sync>) {
        let log: Log = Arc::default();
        let on_result = {
            let (log, state) = (log.clone(), state.clone());
            Arc::new(move |result| log.lock().unwrap().push((result, state.is_healthy())))
        };
        (log, on_result)
    }

    fn count(log: &Log, result: CheckResult) -> usize {
        log.lock()
            .unwrap()
            .iter()
            .filter(|(r, _)| *r == result)
            .count()
    }

    fn http(path: &str, timeout: Duration) -> HealthCheckConfig {
        HealthCheckConfig {
            kind: CheckKind::Http {
                path: path.to_string(),
                expected: StatusRanges::default(),
            },
            interval: Duration::from_millis(20),
            timeout,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }

    /// A cleartext HTTP/1.1 endpoint, as an `http1` service's.
    fn target(address: SocketAddr) -> Target {
        Target {
            address,
            host: None,
            transport: Transport::Http1,
            connect_timeout: Duration::from_secs(5),
        }
    }

    fn tcp() -> HealthCheckConfig {
        HealthCheckConfig {
            kind: CheckKind::Tcp,
            ..http("/", Duration::from_secs(1))
        }
    }

    /// Waits (up to ten seconds, polling) until `condition` holds.
    async fn eventually(what: &str, condition: impl Fn() -> bool) {
        for _ in 0..1000 {
            if condition() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn an_endpoint_answering_200_stays_healthy() {
        let backend = Backend::start(200, Behaviour::Answer).await;
        let state = Arc::new(EndpointHealth::new());
        let (log, on_result) = recorder(&state);
        let config = http("/healthz", Duration::from_secs(5));
        let _checker = spawn_checker(target(backend.address), config, state.clone(), on_result);

        eventually("five successful checks", || {
            state.consecutive_check_successes() >= 5
        })
        .await;
        assert!(state.is_healthy());
        assert_eq!(count(&log, CheckResult::Failure), 0);

        let head = backend.heads.lock().unwrap()[0].to_ascii_lowercase();
        assert!(head.starts_with("get /healthz http/1.1\r\n"), "{head}");
        assert!(
            head.contains(&format!("host: {}\r\n", backend.address)),
            "{head}"
        );
        assert!(
            head.contains("user-agent: sluicegate-health-check\r\n"),
            "{head}"
        );
    }

    #[tokio::test]
    async fn the_host_argument_is_the_host_header() {
        let backend = Backend::start(200, Behaviour::Answer).await;
        let state = Arc::new(EndpointHealth::new());
        let (_log, on_result) = recorder(&state);
        let config = http("/ready?deep=1", Duration::from_secs(5));
        let host = Some("api.example.com".to_string());
        let _checker = spawn_checker(
            Target {
                host,
                ..target(backend.address)
            },
            config,
            state.clone(),
            on_result,
        );

        eventually("a check", || state.consecutive_check_successes() >= 1).await;
        let head = backend.heads.lock().unwrap()[0].to_ascii_lowercase();
        assert!(head.starts_with("get /ready?deep=1 http/1.1\r\n"), "{head}");
        assert!(head.contains("host: api.example.com\r\n"), "{head}");
    }

    #[tokio::test]
    async fn unhealthy_after_the_failure_threshold_and_back_after_the_success_threshold() {
        let backend = Backend::start(500, Behaviour::Answer).await;
        let state = Arc::new(EndpointHealth::new());
        let (log, on_result) = recorder(&state);
        let config = http("/healthz", Duration::from_secs(5));
        let _checker = spawn_checker(target(backend.address), config, state.clone(), on_result);

        eventually("unhealthy", || !state.is_healthy()).await;
        eventually("a fourth check", || log.lock().unwrap().len() >= 4).await;
        // Healthy while the first three failures were reported, flipped by the third.
        let first: Vec<_> = log.lock().unwrap()[..4].to_vec();
        assert_eq!(
            first,
            [
                (CheckResult::Failure, true),
                (CheckResult::Failure, true),
                (CheckResult::Failure, true),
                (CheckResult::Failure, false),
            ]
        );

        backend.status.store(200, Ordering::SeqCst);
        eventually("healthy again", || state.is_healthy()).await;
        let log = log.lock().unwrap().clone();
        let first_success = log
            .iter()
            .position(|(r, _)| *r == CheckResult::Success)
            .unwrap();
        // Unhealthy while the first two successes were reported, flipped by the second.
        assert_eq!(
            log[first_success..first_success + 2],
            [(CheckResult::Success, false), (CheckResult::Success, false)]
        );
        assert!(log[..first_success]
            .iter()
            .all(|(r, _)| *r == CheckResult::Failure));
    }

    #[tokio::test]
    async fn a_closed_port_fails_tcp_checks() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);

        let state = Arc::new(EndpointHealth::new());
        let (log, on_result) = recorder(&state);
        let _checker = spawn_checker(target(address), tcp(), state.clone(), on_result);

        eventually("unhealthy", || !state.is_healthy()).await;
        assert_eq!(count(&log, CheckResult::Success), 0);
        assert!(state.consecutive_check_failures() >= 3);
    }

    #[tokio::test]
    async fn an_open_port_passes_tcp_checks() {
        let backend = Backend::start(200, Behaviour::Silent).await;
        let state = Arc::new(EndpointHealth::new());
        let (log, on_result) = recorder(&state);
        let _checker = spawn_checker(target(backend.address), tcp(), state.clone(), on_result);

        eventually("three checks", || state.consecutive_check_successes() >= 3).await;
        assert!(state.is_healthy());
        assert_eq!(count(&log, CheckResult::Failure), 0);
    }

    #[tokio::test]
    async fn a_silent_server_fails_by_timeout() {
        let backend = Backend::start(200, Behaviour::Silent).await;
        let state = Arc::new(EndpointHealth::new());
        let (log, on_result) = recorder(&state);
        let config = http("/healthz", Duration::from_millis(50));
        let _checker = spawn_checker(target(backend.address), config, state.clone(), on_result);

        eventually("unhealthy", || !state.is_healthy()).await;
        assert_eq!(count(&log, CheckResult::Success), 0);
        assert!(backend.accepted.load(Ordering::SeqCst) >= 3);
    }

    #[tokio::test]
    async fn a_silent_endpoint_does_not_delay_another() {
        let silent = Backend::start(200, Behaviour::Silent).await;
        let answering = Backend::start(200, Behaviour::Answer).await;

        let stuck_state = Arc::new(EndpointHealth::new());
        let (stuck_log, on_stuck) = recorder(&stuck_state);
        // Its check will hang for far longer than this test runs.
        let config = http("/healthz", Duration::from_secs(3600));
        let _stuck = spawn_checker(target(silent.address), config, stuck_state, on_stuck);

        let state = Arc::new(EndpointHealth::new());
        let (log, on_result) = recorder(&state);
        let config = http("/healthz", Duration::from_secs(5));
        let _checker = spawn_checker(target(answering.address), config, state.clone(), on_result);

        eventually("the stuck check in flight", || {
            silent.accepted.load(Ordering::SeqCst) >= 1
        })
        .await;
        let before = count(&log, CheckResult::Success);
        eventually("five more checks of the other endpoint", || {
            count(&log, CheckResult::Success) >= before + 5
        })
        .await;
        assert!(stuck_log.lock().unwrap().is_empty());
        assert_eq!(silent.accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_server_that_is_not_http_fails() {
        let backend = Backend::start(200, Behaviour::Garbage).await;
        let state = Arc::new(EndpointHealth::new());
        let (log, on_result) = recorder(&state);
        let config = http("/healthz", Duration::from_secs(5));
        let _checker = spawn_checker(target(backend.address), config, state.clone(), on_result);

        eventually("unhealthy", || !state.is_healthy()).await;
        assert_eq!(count(&log, CheckResult::Success), 0);
    }

    #[tokio::test]
    async fn an_unsendable_path_fails_without_connecting() {
        let backend = Backend::start(200, Behaviour::Answer).await;
        let state = Arc::new(EndpointHealth::new());
        let (_log, on_result) = recorder(&state);
        let config = http("healthz", Duration::from_secs(5));
        let _checker = spawn_checker(target(backend.address), config, state.clone(), on_result);

        eventually("unhealthy", || !state.is_healthy()).await;
        assert_eq!(backend.accepted.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn stopping_ends_the_task() {
        let backend = Backend::start(200, Behaviour::Answer).await;
        let state = Arc::new(EndpointHealth::new());
        let (_log, on_result) = recorder(&state);
        let config = http("/healthz", Duration::from_secs(5));
        let checker = spawn_checker(
            target(backend.address),
            config,
            state.clone(),
            on_result.clone(),
        );
        eventually("a check", || state.consecutive_check_successes() >= 1).await;

        checker.stop();
        // The task held the only other reference to the callback.
        eventually("the task to be gone", || Arc::strong_count(&on_result) == 1).await;
    }

    #[test]
    fn result_labels() {
        assert_eq!(CheckResult::Success.as_str(), "success");
        assert_eq!(CheckResult::Failure.as_str(), "failure");
    }

    #[test]
    fn request_targets() {
        assert!(request_target("/healthz", "127.0.0.1:80").is_ok());
        assert!(request_target("/a?b=c", "[::1]:80").is_ok());
        assert!(request_target("healthz", "h").is_err());
        assert!(request_target("http://x/", "h").is_err());
        assert!(request_target("/ok", "bad\nhost").is_err());
    }

    #[test]
    fn jitter_stays_in_bounds() {
        let d = Duration::from_millis(100);
        for _ in 0..1000 {
            assert!(below(d) < d);
            let a = around(d);
            assert!(Duration::from_millis(90) <= a && a <= Duration::from_millis(110));
        }
        assert_eq!(below(Duration::ZERO), Duration::ZERO);
        assert!(around(Duration::MAX) >= Duration::from_secs(u64::MAX / 1_000_000_000 / 2));
    }
}

//! Load generation for overload tests and experiments: a backend of fixed capacity, and an
//! open-loop generator that offers each class of requests at its own rate.
//!
//! Open loop: a request is sent at its scheduled time whether or not earlier ones were answered
//! (a new connection is opened when every idle one is busy), and its latency is counted from the
//! scheduled time, so a backlog anywhere — in the generator too — shows up in the latencies
//! instead of slowing the offered load down (no coordinated omission).
//!
//! Used by `tests/overload.rs`; run it with `--nocapture` to see the tables.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// A backend that works on at most `concurrency` requests at once, each for `service_time`;
/// more wait in its queue (like a server with that many workers and a backlog).
pub struct LimitedBackend {
    pub addr: SocketAddr,
    /// Requests being worked on now, and the most at once.
    pub busy: Arc<AtomicUsize>,
    pub most_busy: Arc<AtomicUsize>,
    pub served: Arc<AtomicUsize>,
    _runtime: tokio::runtime::Runtime,
}

impl LimitedBackend {
    pub fn start(concurrency: usize, service_time: Duration) -> LimitedBackend {
        let (runtime, listener) = super::small_runtime("backend", true);
        let listener = listener.expect("listener");
        let addr = listener.local_addr().expect("addr");
        let workers = Arc::new(Semaphore::new(concurrency));
        let busy = Arc::new(AtomicUsize::new(0));
        let most_busy = Arc::new(AtomicUsize::new(0));
        let served = Arc::new(AtomicUsize::new(0));
        let (b, m, s) = (
            Arc::clone(&busy),
            Arc::clone(&most_busy),
            Arc::clone(&served),
        );
        runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let (workers, b, m, s) = (Arc::clone(&workers), b.clone(), m.clone(), s.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let (workers, b, m, s) = (workers.clone(), b.clone(), m.clone(), s.clone());
                        async move {
                            let _worker = workers.acquire().await;
                            let now = b.fetch_add(1, Ordering::SeqCst) + 1;
                            m.fetch_max(now, Ordering::SeqCst);
                            tokio::time::sleep(service_time).await;
                            b.fetch_sub(1, Ordering::SeqCst);
                            s.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                                Bytes::from_static(b"ok"),
                            )))
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        LimitedBackend {
            addr,
            busy,
            most_busy,
            served,
            _runtime: runtime,
        }
    }
}

/// One class of offered load: `rate` requests a second of `path`, with `x-priority: name`.
#[derive(Clone, Debug)]
pub struct Class {
    pub name: &'static str,
    pub rate: f64,
    pub path: String,
}

/// How one request went.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// 0 when no response came (connection failure, or no answer within the request timeout).
    pub status: u16,
    /// From the time the request was scheduled to the end of its response.
    pub latency: Duration,
    pub retry_after: bool,
}

/// A class's outcomes and what they add up to.
#[derive(Clone, Debug)]
pub struct ClassReport {
    pub name: &'static str,
    pub outcomes: Vec<Outcome>,
}

impl ClassReport {
    pub fn sent(&self) -> usize {
        self.outcomes.len()
    }

    fn with_status(&self, keep: impl Fn(u16) -> bool) -> Vec<Duration> {
        let mut v: Vec<Duration> = self
            .outcomes
            .iter()
            .filter(|o| keep(o.status))
            .map(|o| o.latency)
            .collect();
        v.sort();
        v
    }

    pub fn ok(&self) -> usize {
        self.outcomes.iter().filter(|o| o.status == 200).count()
    }

    /// 503s (shed or overloaded).
    pub fn shed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.status == 503).count()
    }

    pub fn shed_with_retry_after(&self) -> usize {
        self.outcomes
            .iter()
            .filter(|o| o.status == 503 && o.retry_after)
            .count()
    }

    /// Everything that is neither 200 nor 503 (504s, resets, no answer).
    pub fn other(&self) -> usize {
        self.sent() - self.ok() - self.shed()
    }

    pub fn success_rate(&self) -> f64 {
        self.ok() as f64 / self.sent().max(1) as f64
    }

    /// Latency quantile `q` (0..=1) of the successful requests.
    pub fn ok_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.with_status(|s| s == 200), q)
    }

    /// Latency quantile of the 503 answers.
    pub fn shed_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.with_status(|s| s == 503), q)
    }
}

pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let at = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[at])
}

/// A table of the reports, one line per class.
pub fn table(title: &str, reports: &[ClassReport]) -> String {
    let ms = |d: Option<Duration>| {
        d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3))
    };
    let mut out = format!(
        "{title}\n{:<9} {:>6} {:>9} {:>6} {:>6} {:>9} {:>9} {:>11} {:>11}\n",
        "class", "sent", "success%", "503", "other", "p50 ms", "p99 ms", "503 p50 ms", "503 p99 ms"
    );
    for r in reports {
        out += &format!(
            "{:<9} {:>6} {:>9.2} {:>6} {:>6} {:>9} {:>9} {:>11} {:>11}\n",
            r.name,
            r.sent(),
            r.success_rate() * 100.0,
            r.shed(),
            r.other(),
            ms(r.ok_quantile(0.5)),
            ms(r.ok_quantile(0.99)),
            ms(r.shed_quantile(0.5)),
            ms(r.shed_quantile(0.99)),
        );
    }
    out
}

/// Offers every class at its rate for `duration`, against `addr`; each request waits at most
/// `timeout` for its answer. Returns when every request sent has ended.
pub fn run(
    addr: SocketAddr,
    classes: &[Class],
    duration: Duration,
    timeout: Duration,
) -> Vec<ClassReport> {
    let (runtime, _) = super::small_runtime("load", false);
    runtime.block_on(async {
        let start = Instant::now() + Duration::from_millis(20);
        let mut schedulers = Vec::new();
        for class in classes.iter().cloned() {
            schedulers.push(tokio::spawn(offer(addr, class, start, duration, timeout)));
        }
        let mut reports = Vec::new();
        for s in schedulers {
            reports.push(s.await.expect("scheduler"));
        }
        reports
    })
}

async fn offer(
    addr: SocketAddr,
    class: Class,
    start: Instant,
    duration: Duration,
    timeout: Duration,
) -> ClassReport {
    let interval = Duration::from_secs_f64(1.0 / class.rate);
    let idle: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
    let request: Arc<[u8]> = format!(
        "GET {} HTTP/1.1\r\nhost: load\r\nx-priority: {}\r\n\r\n",
        class.path, class.name
    )
    .into_bytes()
    .into();
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u32;
    loop {
        let at = start + interval * n;
        if at >= start + duration {
            break;
        }
        n += 1;
        tokio::time::sleep_until(at).await;
        let (idle, request) = (Arc::clone(&idle), Arc::clone(&request));
        tasks.spawn(async move {
            let taken = idle.lock().unwrap().pop();
            let result = tokio::time::timeout(timeout, exchange(addr, taken, &request)).await;
            let latency = at.elapsed();
            match result {
                Ok(Ok((status, retry_after, conn))) => {
                    if let Some(conn) = conn {
                        idle.lock().unwrap().push(conn);
                    }
                    Outcome {
                        status,
                        latency,
                        retry_after,
                    }
                }
                _ => Outcome {
                    status: 0,
                    latency,
                    retry_after: false,
                },
            }
        });
    }
    let mut outcomes = Vec::with_capacity(n as usize);
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done.expect("request task"));
    }
    ClassReport {
        name: class.name,
        outcomes,
    }
}

/// One request on `conn` (or a new connection): status, whether it had `Retry-After`, and the
/// connection if it can be used again.
async fn exchange(
    addr: SocketAddr,
    conn: Option<TcpStream>,
    request: &[u8],
) -> std::io::Result<(u16, bool, Option<TcpStream>)> {
    let mut conn = match conn {
        Some(c) => c,
        None => {
            let c = TcpStream::connect(addr).await?;
            c.set_nodelay(true)?;
            c
        }
    };
    conn.write_all(request).await?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(str::trim))
            .map(str::to_string)
    };
    let length: usize = field("content-length")
        .and_then(|v| v.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    while buf.len() < head_end + length {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let reusable = field("connection").is_none_or(|v| v != "close");
    Ok((
        status,
        field("retry-after").is_some(),
        reusable.then_some(conn),
    ))
}

/// Requests a second that `concurrency` clients sending back to back (closed loop) get through
/// `addr` over `duration`: a system's capacity at that concurrency.
pub fn closed_loop(addr: SocketAddr, concurrency: usize, duration: Duration) -> f64 {
    let (runtime, _) = super::small_runtime("load", false);
    runtime.block_on(async {
        let request: Arc<[u8]> = b"GET / HTTP/1.1\r\nhost: load\r\n\r\n".to_vec().into();
        let done = Arc::new(AtomicUsize::new(0));
        let end = Instant::now() + duration;
        let mut clients = tokio::task::JoinSet::new();
        for _ in 0..concurrency {
            let (request, done) = (Arc::clone(&request), Arc::clone(&done));
            clients.spawn(async move {
                let mut conn = None;
                while Instant::now() < end {
                    match exchange(addr, conn.take(), &request).await {
                        Ok((200, _, c)) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            conn = c;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(1)).await,
                    }
                }
            });
        }
        while clients.join_next().await.is_some() {}
        done.load(Ordering::Relaxed) as f64 / duration.as_secs_f64()
    })
}

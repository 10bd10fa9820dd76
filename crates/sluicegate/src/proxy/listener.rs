//! Listening sockets and worker threads.
//!
//! Each worker is an OS thread running a single-threaded tokio runtime with its own accept
//! socket per listener (SO_REUSEPORT, so the kernel spreads connections) and its own upstream
//! pool: the worker-per-core model of nginx and HAProxy, with nothing locked per request. The
//! first socket of each listener is bound by the caller, so a taken port or a bad address fails
//! before anything starts and port 0 resolves to one real port shared by every worker.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch, Notify};

use super::http::pool::Pool;
use super::http::server::{handle, ConnInfo, Worker};
use super::Shared;
use crate::observe::metrics::Gauge;
use crate::observe::names;

/// How long a client may take to send a request head: a bound against slow-header attacks.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the gateway could not start listening.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("listener \"{name}\": cannot bind {address}: {source}")]
    Bind {
        name: String,
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start worker thread: {0}")]
    Thread(#[source] io::Error),
}

/// A listener's sockets, one per worker, all bound to the same address.
pub struct BoundListener {
    pub name: Arc<str>,
    pub address: SocketAddr,
    sockets: Vec<std::net::TcpListener>,
}

fn reuseport_socket(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Binds `workers` sockets for a listener; the first decides the port when `address` has port 0.
pub fn bind(name: &str, address: SocketAddr, workers: usize) -> Result<BoundListener, ListenError> {
    let err = |source| ListenError::Bind {
        name: name.to_string(),
        address,
        source,
    };
    let first = reuseport_socket(address).map_err(err)?;
    let actual = first.local_addr().map_err(err)?;
    let mut sockets = vec![first];
    for _ in 1..workers.max(1) {
        sockets.push(reuseport_socket(actual).map_err(err)?);
    }
    Ok(BoundListener {
        name: Arc::from(name),
        address: actual,
        sockets,
    })
}

/// What the control thread asks of a worker.
enum Command {
    /// Start accepting on this socket (a listener added by a reload).
    Listen(Arc<str>, std::net::TcpListener),
    /// Stop accepting on a listener and drain its connections (removed by a reload).
    Stop(Arc<str>),
    /// Stop every listener, drain, and end the thread.
    Shutdown,
}

/// Running worker threads, each reachable through its command channel.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    commands: Vec<mpsc::UnboundedSender<Command>>,
}

impl Workers {
    /// Starts `count` worker threads; `listeners` must each hold `count` sockets.
    pub fn start(
        shared: Arc<Shared>,
        count: usize,
        listeners: Vec<BoundListener>,
    ) -> Result<Workers, ListenError> {
        let mut threads = Vec::new();
        let mut commands = Vec::new();
        for i in 0..count.max(1) {
            let (tx, rx) = mpsc::unbounded_channel();
            let shared = Arc::clone(&shared);
            let thread = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || run_worker(shared, rx))
                .map_err(ListenError::Thread)?;
            threads.push(thread);
            commands.push(tx);
        }
        let workers = Workers { threads, commands };
        for listener in listeners {
            workers.listen(listener);
        }
        Ok(workers)
    }

    /// Hands one socket of `listener` to each worker.
    pub fn listen(&self, listener: BoundListener) {
        for (socket, worker) in listener.sockets.into_iter().zip(&self.commands) {
            let _ = worker.send(Command::Listen(Arc::clone(&listener.name), socket));
        }
    }

    /// Stops a listener on every worker; its open connections finish their current request.
    pub fn stop(&self, name: &str) {
        let name: Arc<str> = Arc::from(name);
        for worker in &self.commands {
            let _ = worker.send(Command::Stop(Arc::clone(&name)));
        }
    }

    /// How many sockets each listener needs: one per worker.
    pub fn count(&self) -> usize {
        self.commands.len()
    }

    /// Stops accepting, lets open connections finish their current request, and waits up to
    /// `grace` for them. Returns whether every worker finished in time.
    pub fn shutdown(self, grace: Duration) -> bool {
        for worker in &self.commands {
            let _ = worker.send(Command::Shutdown);
        }
        let deadline = std::time::Instant::now() + grace;
        for thread in self.threads {
            while !thread.is_finished() {
                if std::time::Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = thread.join();
        }
        true
    }
}

/// How often a worker closes upstream connections that sat idle too long, for endpoints no
/// request has asked for since (removed by a reload, or simply quiet).
const POOL_SWEEP_INTERVAL: Duration = Duration::from_secs(15);

fn run_worker(shared: Arc<Shared>, mut commands: mpsc::UnboundedReceiver<Command>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let worker = Rc::new(Worker {
            shared,
            pool: Rc::new(Pool::default()),
        });
        let open = Rc::new(OpenConnections::default());
        let mut listeners: HashMap<Arc<str>, watch::Sender<bool>> = HashMap::new();
        let mut sweep = tokio::time::interval(POOL_SWEEP_INTERVAL);
        loop {
            let command = tokio::select! {
                command = commands.recv() => command,
                _ = sweep.tick() => {
                    worker.pool.sweep();
                    continue;
                }
            };
            match command {
                Some(Command::Listen(name, socket)) => {
                    match tokio::net::TcpListener::from_std(socket) {
                        Ok(listener) => {
                            let (stop, stop_rx) = watch::channel(false);
                            if let Some(old) = listeners.insert(Arc::clone(&name), stop) {
                                let _ = old.send(true);
                            }
                            tokio::task::spawn_local(accept_loop(
                                Rc::clone(&worker),
                                name,
                                listener,
                                stop_rx,
                                Rc::clone(&open),
                            ));
                        }
                        Err(e) => {
                            tracing::error!(listener = %name, error = %e, "cannot register listener")
                        }
                    }
                }
                Some(Command::Stop(name)) => {
                    if let Some(stop) = listeners.remove(&name) {
                        let _ = stop.send(true);
                    }
                }
                Some(Command::Shutdown) | None => {
                    for stop in listeners.values() {
                        let _ = stop.send(true);
                    }
                    break;
                }
            }
        }
        open.wait_idle().await;
    });
}

/// Counts a worker's open client connections, so shutdown can wait for them.
#[derive(Default)]
struct OpenConnections {
    count: Cell<usize>,
    idle: Notify,
}

impl OpenConnections {
    async fn wait_idle(&self) {
        while self.count.get() > 0 {
            self.idle.notified().await;
        }
    }
}

/// One open client connection: counted for shutdown and in `sluicegate_connections_active`.
struct OpenGuard(Rc<OpenConnections>, Gauge);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.1.dec();
        let n = self.0.count.get() - 1;
        self.0.count.set(n);
        if n == 0 {
            self.0.idle.notify_waiters();
        }
    }
}

async fn accept_loop(
    worker: Rc<Worker>,
    name: Arc<str>,
    listener: tokio::net::TcpListener,
    mut stop: watch::Receiver<bool>,
    open: Rc<OpenConnections>,
) {
    let active = worker.shared.registries.metrics.gauge(
        names::CONNECTIONS_ACTIVE,
        names::CONNECTIONS_ACTIVE_HELP,
        &[("listener", &name)],
    );
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        open.count.set(open.count.get() + 1);
        active.inc();
        let guard = OpenGuard(Rc::clone(&open), active.clone());
        let worker = Rc::clone(&worker);
        let info = Rc::new(ConnInfo {
            listener: Arc::clone(&name),
            peer,
        });
        let mut stop = stop.clone();
        tokio::task::spawn_local(async move {
            let _guard = guard;
            let limit = worker
                .shared
                .snapshot
                .load()
                .listener(&info.listener)
                .map_or(crate::config::DEFAULT_MAX_REQUEST_HEADER_BYTES, |l| {
                    l.config.max_request_header_bytes
                });
            let service = {
                let worker = Rc::clone(&worker);
                let info = Rc::clone(&info);
                service_fn(move |req| handle(Rc::clone(&worker), Rc::clone(&info), req))
            };
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                // The pipeline answers heads over the limit with a JSON 431; hyper's own limit
                // (twice as large, it answers with an empty 431) is the hard bound on memory.
                .max_buf_size((limit * 2).max(16 * 1024));
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %info.peer, error = %e, "client connection ended with an error");
                    }
                    return;
                }
                _ = stop.wait_for(|s| *s) => {
                    connection.as_mut().graceful_shutdown();
                }
            }
            let _ = connection.await;
        });
    }
}

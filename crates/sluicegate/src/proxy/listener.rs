//! Listening sockets and worker threads.
//!
//! Each worker is an OS thread running a single-threaded tokio runtime with its own accept
//! socket per listener (SO_REUSEPORT, so the kernel spreads connections; `spread.rs` evens out
//! what the kernel's hash leaves uneven) and its own upstream pool: the worker-per-core model of
//! nginx and HAProxy, with nothing locked per request. The first socket of each listener is
//! bound by the caller, so a taken port or a bad address fails before anything starts and port 0
//! resolves to one real port shared by every worker.

use std::cell::Cell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{self, Either, FutureExt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::{mpsc, watch, Notify};

use super::http::coalesce::Coalesce;
use super::http::first_read::FirstReadNow;
use super::http::headers::client_value;
use super::http::pipeline::{ConnInfo, Worker};
use super::http::server::{serve, Mode};
use super::snapshot::{ListenerKind, ServiceRuntime};
use super::spread::Peers;
use super::tcp::{self, TcpOptions};
use super::Shared;
use crate::health::{outlier, Outcome};
use crate::observe::access_log::BATCH_INTERVAL;
use crate::observe::metrics::Gauge;
use crate::observe::names;
use crate::tls;

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
    /// Serve a connection another worker accepted (see `spread.rs`); already counted here. The
    /// socket is not registered with any reactor yet.
    Adopt(Accepted),
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
        let (commands, receivers): (Vec<_>, Vec<_>) =
            (0..count.max(1)).map(|_| mpsc::unbounded_channel()).unzip();
        let peers = Arc::new(Peers::new(commands.clone()));
        for (i, rx) in receivers.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let peers = Arc::clone(&peers);
            let thread = std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || run_worker(shared, rx, peers, i))
                .map_err(ListenError::Thread)?;
            threads.push(thread);
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

fn run_worker(
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    peers: Arc<Peers<Command>>,
    index: usize,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        // A worker with nothing left to run yields its CPU before sleeping in epoll: the threads
        // that were waiting for it (clients, upstreams, the other worker) usually produce its
        // next events meanwhile, so it finds them without sleeping. Sleeping and being woken
        // cost the waker a wakeup per event and often preempted it, which showed as the load
        // generator stalling for a scheduler tick (p99 4.5 ms against 2.3 ms with the yield, at
        // 64 connections). With nothing else runnable the yield returns at once.
        .on_thread_park(std::thread::yield_now)
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
        let open = Rc::new(OpenConnections::new(peers, index));
        let metrics = &shared.registries.metrics;
        let websocket_upgrades = metrics.counter(
            names::WEBSOCKET_UPGRADES_TOTAL,
            names::WEBSOCKET_UPGRADES_TOTAL_HELP,
            &[],
        );
        let websocket_active = metrics.gauge(
            names::WEBSOCKET_CONNECTIONS_ACTIVE,
            names::WEBSOCKET_CONNECTIONS_ACTIVE_HELP,
            &[],
        );
        let worker = Rc::new(Worker::new(
            shared,
            Rc::clone(&open),
            websocket_upgrades,
            websocket_active,
        ));
        let mut listeners: HashMap<Arc<str>, watch::Sender<bool>> = HashMap::new();
        let mut sweep = tokio::time::interval(POOL_SWEEP_INTERVAL);
        let mut log_flush = tokio::time::interval(BATCH_INTERVAL);
        loop {
            let command = tokio::select! {
                command = commands.recv() => command,
                _ = sweep.tick() => {
                    worker.pool.sweep();
                    worker.shared.registries.policies.sweep();
                    crate::proxy::spare::release();
                    crate::allocator::release_free_memory();
                    continue;
                }
                _ = log_flush.tick() => {
                    worker.access.flush();
                    // Lets go of a replaced snapshot even when no request comes to refresh it.
                    worker.snapshot();
                    continue;
                }
            };
            match command {
                Some(Command::Listen(name, socket)) => match Acceptor::new(socket) {
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
                },
                Some(Command::Stop(name)) => {
                    if let Some(stop) = listeners.remove(&name) {
                        let _ = stop.send(true);
                    }
                }
                Some(Command::Adopt(accepted)) => {
                    // Counted here by the worker that handed it over.
                    let counted = OpenGuard::counted(Rc::clone(&open));
                    let Some(stop) = listeners
                        .get(&accepted.listener)
                        .map(watch::Sender::subscribe)
                    else {
                        continue; // The listener stopped meanwhile: the connection closes.
                    };
                    let active = listener_gauge(&worker, &accepted.listener);
                    start_connection(&worker, accepted, stop, counted, active);
                }
                Some(Command::Shutdown) | None => {
                    for stop in listeners.values() {
                        let _ = stop.send(true);
                    }
                    break;
                }
            }
        }
        // Keep handing over log lines while the last connections drain.
        let drained = open.wait_idle();
        tokio::pin!(drained);
        loop {
            tokio::select! {
                () = &mut drained => break,
                _ = log_flush.tick() => worker.access.flush(),
            }
        }
        worker.access.flush();
    });
}

/// Counts a worker's open client connections and tunnels, so shutdown can wait for them, and
/// publishes the count for spreading connections over the workers.
pub struct OpenConnections {
    count: Cell<usize>,
    idle: Notify,
    peers: Arc<Peers<Command>>,
    index: usize,
}

impl OpenConnections {
    fn new(peers: Arc<Peers<Command>>, index: usize) -> OpenConnections {
        OpenConnections {
            count: Cell::new(0),
            idle: Notify::new(),
            peers,
            index,
        }
    }

    async fn wait_idle(&self) {
        while self.count.get() > 0 {
            self.idle.notified().await;
        }
    }

    /// Counts a tunnel (an upgraded connection) that outlives its HTTP connection: for
    /// shutdown and spreading, in `gauge`, and in its listener's `sluicegate_connections_active`
    /// — the count `max_connections` holds new connections to, so an open tunnel takes a client
    /// connection's place. (Until the upgraded HTTP connection's own guard drops, a moment later,
    /// the two are both counted: briefly one too many, never one too few.)
    pub fn hold_tunnel(
        self: &Rc<Self>,
        worker: &Worker,
        listener: &str,
        gauge: Gauge,
    ) -> OpenGuard {
        let active = listener_gauge(worker, listener);
        gauge.inc();
        active.inc();
        let mut guard = OpenGuard::new(Rc::clone(self), Some(gauge));
        guard.listener = Some(active);
        guard
    }
}

/// One open client connection or tunnel: counted for shutdown, for spreading, and in a gauge
/// (set once the connection is known to stay on this worker).
pub struct OpenGuard {
    open: Rc<OpenConnections>,
    gauge: Option<Gauge>,
    /// A tunnel's listener gauge (a connection's is `gauge`).
    listener: Option<Gauge>,
}

impl OpenGuard {
    fn new(open: Rc<OpenConnections>, gauge: Option<Gauge>) -> OpenGuard {
        open.peers.opened(open.index);
        OpenGuard::counted(open).with_gauge(gauge)
    }

    /// For a connection the shared count already includes (handed over by another worker).
    fn counted(open: Rc<OpenConnections>) -> OpenGuard {
        open.count.set(open.count.get() + 1);
        OpenGuard {
            open,
            gauge: None,
            listener: None,
        }
    }

    fn with_gauge(mut self, gauge: Option<Gauge>) -> OpenGuard {
        self.gauge = gauge;
        self
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        for gauge in [&self.gauge, &self.listener].into_iter().flatten() {
            gauge.dec();
        }
        self.open.peers.closed(self.open.index);
        let n = self.open.count.get() - 1;
        self.open.count.set(n);
        if n == 0 {
            self.open.idle.notify_waiters();
        }
    }
}

/// `sluicegate_connections_active` of a listener.
fn listener_gauge(worker: &Worker, name: &str) -> Gauge {
    worker.shared.registries.metrics.gauge(
        names::CONNECTIONS_ACTIVE,
        names::CONNECTIONS_ACTIVE_HELP,
        &[("listener", name)],
    )
}

async fn accept_loop(
    worker: Rc<Worker>,
    name: Arc<str>,
    listener: Acceptor,
    mut stop: watch::Receiver<bool>,
    open: Rc<OpenConnections>,
) {
    let active = listener_gauge(&worker, &name);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept(&name) => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let accepted = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let limit = worker
            .snapshot()
            .listener(&name)
            .map_or(0, |plan| plan.config.max_connections);
        if limit != 0 && active.get() >= limit as i64 {
            let peer = accepted.peer;
            tracing::debug!(listener = %name, %peer, limit, "connection limit reached: closing");
            continue;
        }
        let accepted = match open.peers.less_loaded(open.index) {
            None => accepted,
            Some(target) => match open.peers.hand_over(target, Command::Adopt(accepted)) {
                Ok(()) => continue,
                // That worker is gone (shutting down): serve it here.
                Err(Command::Adopt(accepted)) => accepted,
                Err(_) => continue,
            },
        };
        let guard = OpenGuard::new(Rc::clone(&open), None);
        start_connection(&worker, accepted, stop.clone(), guard, active.clone());
    }
}

/// A listening socket that accepts without registering the new connection with this worker's
/// reactor: a connection handed to another worker is registered once, there, rather than
/// registered here, deregistered and registered again (two `epoll_ctl` calls saved per hand-over).
struct Acceptor {
    socket: AsyncFd<mio::net::TcpListener>,
    /// The bound address when it names one interface: every connection's local address then,
    /// known without a `getsockname` per connection. `None` for wildcard binds.
    local: Option<SocketAddr>,
}

impl Acceptor {
    fn new(socket: std::net::TcpListener) -> io::Result<Acceptor> {
        socket.set_nonblocking(true)?;
        let local = socket.local_addr()?;
        let socket = mio::net::TcpListener::from_std(socket);
        // SAFETY: the AsyncFd owns the listener, and with it the descriptor, for its whole life:
        // the descriptor stays open and the same until the AsyncFd is dropped.
        let socket = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE)? };
        Ok(Acceptor {
            socket,
            local: (!local.ip().is_unspecified()).then_some(local),
        })
    }

    /// The next connection, non-blocking and close-on-exec (mio's `accept4` flags).
    async fn accept(&self, listener: &Arc<str>) -> io::Result<Accepted> {
        loop {
            let mut ready = self.socket.readable().await?;
            if let Ok(result) = ready.try_io(|socket| socket.get_ref().accept()) {
                let (stream, peer) = result?;
                return Ok(Accepted {
                    listener: Arc::clone(listener),
                    stream: stream.into(),
                    peer,
                    local: self.local,
                });
            }
        }
    }
}

/// A connection as accepted: not yet registered with a reactor, so it can move to any worker.
struct Accepted {
    listener: Arc<str>,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    /// The local address when the listener's bound address gives it.
    local: Option<SocketAddr>,
}

/// Serves an accepted connection on this worker, as its listener's current plan says.
fn start_connection(
    worker: &Rc<Worker>,
    accepted: Accepted,
    stop: watch::Receiver<bool>,
    guard: OpenGuard,
    active: Gauge,
) {
    let Accepted {
        listener: name,
        stream,
        peer,
        local,
    } = accepted;
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "cannot register a connection");
            return;
        }
    };
    // The listener's current settings: a reload may have changed them.
    let snapshot = worker.snapshot();
    let Some(plan) = snapshot.listener(&name) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    active.inc();
    let guard = guard.with_gauge(Some(active));
    let info = Rc::new(ConnInfo {
        listener: name,
        peer,
        local: local.or_else(|| stream.local_addr().ok()),
        tls: matches!(plan.kind, ListenerKind::Https(_)),
        forwarded_for: client_value(peer.ip()),
        trusted: plan
            .config
            .trusted_proxies
            .iter()
            .any(|c| c.contains(peer.ip())),
        header_timeout: plan.config.request_header_timeout,
    });
    let worker = Rc::clone(worker);
    let header_limit = plan.config.max_request_header_bytes;
    let idle = plan.config.idle_timeout;
    match &plan.kind {
        // Combinators rather than `async` blocks, which would keep what they capture beside
        // what they await: an idle connection's task is all it costs (docs/performance.md).
        ListenerKind::Http => {
            let stream = Coalesce(FirstReadNow::new(stream));
            let served = serve(worker, info, stream, Mode::Detect, header_limit, stop);
            tokio::task::spawn_local(served.map(move |()| drop(guard)));
        }
        ListenerKind::Https(acceptor) => {
            let acceptor = acceptor.clone();
            // Boxed: the handshake's state is needed only until it completes.
            let handshake = Box::pin(async move {
                tls::accept(&acceptor, FirstReadNow::new(stream), TLS_HANDSHAKE_TIMEOUT).await
            });
            let served = handshake.then(move |accepted| match accepted {
                Ok((tls_stream, alpn)) => {
                    let mode = Mode::from_alpn(alpn.as_deref());
                    Either::Left(serve(worker, info, tls_stream, mode, header_limit, stop))
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    Either::Right(future::ready(()))
                }
            });
            tokio::task::spawn_local(served.map(move |()| drop(guard)));
        }
        ListenerKind::Tcp(service) => {
            let service = Arc::clone(service);
            tokio::task::spawn_local(async move {
                let _guard = guard;
                tcp_connection(info, stream, service, idle).await;
            });
        }
    }
}

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Proxies one layer-4 connection: pick an endpoint (the service's algorithm; hashing on the
/// client IP), connect (trying one other endpoint if the first refuses), relay bytes both ways.
async fn tcp_connection(
    info: Rc<ConnInfo>,
    client: tokio::net::TcpStream,
    service: Arc<ServiceRuntime>,
    idle: Duration,
) {
    let key = service.hash_on.as_ref().map(|_| {
        crate::balance::HashOn::ClientIp.key_hash(
            info.peer.ip(),
            &http::Uri::from_static("/"),
            &http::HeaderMap::new(),
        )
    });
    let key = key.flatten();
    let options = |s: &ServiceRuntime| TcpOptions {
        connect_timeout: s.connect_timeout,
        idle_timeout: idle,
        proxy_protocol: s.send_proxy_protocol,
    };
    let local = info.local.unwrap_or(info.peer);
    let mut tried: Option<usize> = None;
    for _attempt in 0..2 {
        let now = tokio::time::Instant::now();
        let accept = |i: usize| Some(i) != tried && service.available(i, now);
        let Some(index) = service.balancer.pick(key, &accept) else {
            tracing::debug!(service = %service.name, peer = %info.peer, "no available endpoint: closing");
            return;
        };
        let Some(endpoint) = service.endpoints.get(index) else {
            return;
        };
        let _in_flight = endpoint.load.start();
        match tcp::connect(endpoint.address, &options(&service), info.peer, local).await {
            Ok(upstream) => {
                report_tcp(&service, index, true);
                match tcp::relay(client, upstream, idle).await {
                    Ok(stats) => {
                        tracing::debug!(peer = %info.peer, upstream = %endpoint.address, ?stats, "tcp connection closed")
                    }
                    Err(e) => {
                        tracing::debug!(peer = %info.peer, upstream = %endpoint.address, error = %e, "tcp connection ended")
                    }
                }
                return;
            }
            Err(e) => {
                tracing::warn!(service = %service.name, upstream = %endpoint.address, error = %e, "tcp upstream connect failed");
                report_tcp(&service, index, false);
                tried = Some(index);
            }
        }
    }
}

/// Counts a layer-4 connect in `sluicegate_upstream_requests_total` and outlier detection.
fn report_tcp(service: &ServiceRuntime, index: usize, ok: bool) {
    if let Some(c) = service.upstream.get(index) {
        if ok {
            c.success.inc();
        } else {
            c.connect_failure.inc();
        }
    }
    if let Some(config) = &service.outlier {
        let outcome = if ok {
            Outcome::Success
        } else {
            Outcome::Failure
        };
        outlier::record(
            &service.health,
            index,
            outcome,
            config,
            tokio::time::Instant::now(),
        );
    }
}

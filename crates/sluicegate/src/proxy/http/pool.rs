//! Upstream HTTP/1.1 connections, kept alive and reused.
//!
//! Each worker thread owns one `Pool` (no lock, no atomic: `RefCell` on a single thread), the
//! shared-nothing layout of nginx and HAProxy workers. A connection is checked out for one
//! exchange and checked back in when the response body has been read to its end; connections the
//! upstream closed are noticed at checkout and dropped.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::RequestBody;

/// Idle connections kept per endpoint per worker: enough for bursts, bounded like every buffer.
const MAX_IDLE_PER_ENDPOINT: usize = 128;
/// Idle connections older than this are closed at the next checkout: upstreams commonly close
/// idle keep-alive connections after 60–75 s, and a reused one that the peer is closing fails.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// How long a returned connection may take to become ready for its next request.
const READY_TIMEOUT: Duration = Duration::from_secs(5);

pub type Sender = SendRequest<RequestBody>;

/// Why a new upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {0} timed out")]
    Timeout(SocketAddr),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, #[source] std::io::Error),
    #[error("HTTP/1.1 handshake with {0} failed: {1}")]
    Handshake(SocketAddr, #[source] hyper::Error),
}

struct Idle {
    sender: Sender,
    since: Instant,
}

/// One worker's idle upstream connections, by endpoint address.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<SocketAddr, Vec<Idle>>>,
}

impl Pool {
    /// A ready idle connection to `addr`, newest first (the most likely to still be open).
    pub fn checkout(&self, addr: SocketAddr) -> Option<Sender> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        // Oldest sit at the front: drop the expired ones there.
        let expired = list
            .iter()
            .take_while(|c| now.duration_since(c.since) > IDLE_TIMEOUT)
            .count();
        list.drain(..expired);
        while let Some(conn) = list.pop() {
            if conn.sender.is_ready() {
                return Some(conn.sender);
            }
        }
        None
    }

    /// Returns a connection after a complete exchange. One not yet ready (hyper finishes the
    /// exchange on its connection task) is parked until it is, within a bound.
    pub fn checkin(self: &Rc<Self>, addr: SocketAddr, mut sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.insert(addr, sender);
            return;
        }
        let pool = Rc::clone(self);
        tokio::task::spawn_local(async move {
            let ready = tokio::time::timeout(READY_TIMEOUT, poll_fn(|cx| sender.poll_ready(cx)));
            if let Ok(Ok(())) = ready.await {
                pool.insert(addr, sender);
            }
        });
    }

    fn insert(&self, addr: SocketAddr, sender: Sender) {
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(addr).or_default();
        if list.len() >= MAX_IDLE_PER_ENDPOINT {
            list.remove(0);
        }
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
    }

    /// Closes connections idle longer than the idle timeout, for every endpoint.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|_, list| {
            list.retain(|c| now.duration_since(c.since) <= IDLE_TIMEOUT && !c.sender.is_closed());
            !list.is_empty()
        });
    }

    /// Idle connections held for `addr` (for tests and the admin API).
    pub fn idle_count(&self, addr: SocketAddr) -> usize {
        self.idle.borrow().get(&addr).map_or(0, Vec::len)
    }
}

/// Opens a new HTTP/1.1 connection to `addr`; its I/O runs on a task of this worker.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout(addr)),
        Ok(Err(e)) => return Err(ConnectError::Io(addr, e)),
        Ok(Ok(s)) => s,
    };
    // Requests and responses are written whole by hyper; Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConnectError::Handshake(addr, e))?;
    tokio::task::spawn_local(async move {
        if let Err(e) = conn.await {
            tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

//! Upstream HTTP connections, kept alive and reused: HTTP/1.1 (one exchange at a time per
//! connection), HTTP/2 (one multiplexed connection per endpoint), over TCP or TLS.
//!
//! Each worker thread owns one `Pool` (no lock, no atomic: `RefCell` on a single thread), the
//! shared-nothing layout of nginx and HAProxy workers. An HTTP/1.1 connection (the gateway's own
//! client, `h1`) is checked out for one exchange and checked back in by its response body once
//! read to its end; an HTTP/2 connection (hyper's) stays in the pool and is shared by concurrent
//! requests. Connections the upstream closed are noticed at checkout and dropped.
//!
//! Connections are opened by [`client::connect`](super::connect::connect) and shared only within
//! one [`PoolKey`]: the endpoint's address and the transport's identity (cleartext HTTP/1.1,
//! h2c, or TLS with given roots, verification and server name), so services reaching one address
//! with different TLS settings never share a connection, and connections made under settings a
//! reload replaced are not reused.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::connect::{self as client, Connected, Speak};
use super::h1::Conn;
use crate::proxy::http::body::RequestBody;
use crate::proxy::http::LocalExec;

pub use super::connect::{ConnectError, Transport};

/// Idle connections kept per endpoint per worker: enough for bursts, bounded like every buffer.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;
/// Idle connections older than this are closed at the next checkout: upstreams commonly close
/// idle keep-alive connections after 60–75 s, and a reused one that the peer is closing fails.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// A connection ready for an exchange.
pub enum Sender {
    H1(Conn),
    H2(http2::SendRequest<RequestBody>),
}

/// Sends a request on a shared HTTP/2 connection; when the connection turned out unusable
/// before anything was written, the request comes back in the error so it can go on a fresh
/// connection.
pub async fn send_h2(
    sender: &mut http2::SendRequest<RequestBody>,
    request: Request<RequestBody>,
) -> Result<Response<Incoming>, (hyper::Error, Option<Request<RequestBody>>)> {
    sender.try_send_request(request).await.map_err(|mut e| {
        let unsent = e.take_message();
        (e.into_error(), unsent)
    })
}

struct Idle {
    conn: Conn,
    since: Instant,
}

pub use super::h1::PoolKey;

/// Pool keys are hashed twice per request (checkout, checkin) and come from the config, not from
/// clients: a multiply-rotate hash (the FxHash scheme) does, where SipHash's resistance to
/// flooding buys nothing and cost a few hundred instructions per request.
type KeyHash = BuildHasherDefault<KeyHasher>;

#[derive(Default)]
struct KeyHasher(u64);

impl KeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// One worker's upstream connections, by endpoint address and transport.
#[derive(Default)]
pub struct Pool {
    idle: RefCell<HashMap<PoolKey, Vec<Idle>, KeyHash>>,
    multiplexed: RefCell<HashMap<PoolKey, http2::SendRequest<RequestBody>, KeyHash>>,
}

impl Pool {
    pub fn key(addr: SocketAddr, transport: &Transport) -> PoolKey {
        (addr, transport.identity())
    }

    /// A usable connection to `addr`: the shared HTTP/2 one, or the newest idle HTTP/1.1 one.
    pub fn checkout(&self, addr: SocketAddr, transport: &Transport) -> Option<Sender> {
        let key = Pool::key(addr, transport);
        {
            let mut shared = self.multiplexed.borrow_mut();
            if let Some(h2) = shared.get(&key) {
                if !h2.is_closed() && h2.is_ready() {
                    return Some(Sender::H2(h2.clone()));
                }
                shared.remove(&key);
            }
        }
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        let now = Instant::now();
        // Oldest sit at the front: drop the expired ones there.
        let expired = list
            .iter()
            .take_while(|c| now.duration_since(c.since) > IDLE_TIMEOUT)
            .count();
        list.drain(..expired);
        while let Some(mut idle) = list.pop() {
            if idle.conn.is_usable() {
                return Some(Sender::H1(idle.conn));
            }
        }
        None
    }

    /// Takes back an HTTP/1.1 connection whose exchange is complete. The oldest idle one makes
    /// room when the endpoint already has as many as are kept.
    pub fn checkin_h1(&self, key: PoolKey, mut conn: Conn) {
        conn.shrink_for_idle();
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_ENDPOINT {
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes HTTP/1.1 connections idle longer than the idle timeout and closed HTTP/2 ones,
    /// for every endpoint.
    pub fn sweep(&self) {
        let now = Instant::now();
        self.idle.borrow_mut().retain(|_, list| {
            list.retain_mut(|c| now.duration_since(c.since) <= IDLE_TIMEOUT && c.conn.is_usable());
            !list.is_empty()
        });
        self.multiplexed.borrow_mut().retain(|_, s| !s.is_closed());
    }

    /// Opens a new connection to `addr`; its I/O runs on a task of this worker. An HTTP/2
    /// connection is also kept in the pool, to be shared.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        transport: &Transport,
        timeout: Duration,
    ) -> Result<Sender, ConnectError> {
        match client::connect(addr, transport, timeout, Speak::Protocol, LocalExec).await? {
            Connected::Http1(io) => Ok(Sender::H1(Conn::new(io))),
            Connected::Http2(h2, connection) => {
                tokio::task::spawn_local(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(upstream = %addr, error = %e, "upstream HTTP/2 connection ended with an error");
                    }
                });
                self.multiplexed
                    .borrow_mut()
                    .insert(Pool::key(addr, transport), h2.clone());
                Ok(Sender::H2(h2))
            }
        }
    }

    /// Opens a dedicated HTTP/1.1 connection that can be upgraded (WebSocket), over TLS when the
    /// service says `https`; never pooled.
    pub async fn connect_upgradable(
        addr: SocketAddr,
        transport: &Transport,
        timeout: Duration,
    ) -> Result<http1::SendRequest<RequestBody>, UpgradeConnectError> {
        let connecting =
            client::connect::<RequestBody, _>(addr, transport, timeout, Speak::Http1, LocalExec);
        let io = match connecting.await? {
            Connected::Http1(io) => io,
            // Only `http/1.1` is offered, and h2c is never started for `Speak::Http1`.
            Connected::Http2(..) => return Err(UpgradeConnectError::NotHttp1(addr)),
        };
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| UpgradeConnectError::Handshake(addr, e))?;
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(upstream = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }
}

/// Why a connection for an upgrade could not be made.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeConnectError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{0} chose HTTP/2 where only HTTP/1.1 was offered")]
    NotHttp1(SocketAddr),
    #[error("HTTP/1.1 client setup for {0} failed: {1}")]
    Handshake(SocketAddr, #[source] hyper::Error),
}

/// The HTTP/1.1 client hands connections back through this, not by knowing the pool.
impl super::h1::Checkin for Pool {
    fn checkin(&self, key: PoolKey, conn: Conn) {
        self.checkin_h1(key, conn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn pool_keys_hash_apart() {
        let hash = |key: PoolKey| KeyHash::default().hash_one(key);
        let tls = 2;
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let c: SocketAddr = "10.0.0.1:81".parse().unwrap();
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        let hashes = [
            hash((a, 0)),
            hash((b, 0)),
            hash((c, 0)),
            hash((a, 1)),
            hash((a, tls)),
            hash((a, tls + 1)),
            hash((v6, 0)),
        ];
        for (i, x) in hashes.iter().enumerate() {
            for y in &hashes[i + 1..] {
                assert_ne!(x, y);
            }
        }
        assert_eq!(hash((a, 0)), hash((a, 0)));
    }
}

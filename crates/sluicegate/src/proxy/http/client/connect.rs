//! Opening a connection to an upstream endpoint: the one way the worker pools, WebSocket tunnels
//! and active health checks all do it, so that what a service's config says about its transport
//! (`protocol`, `tls`, `connect_timeout`) holds for every connection made to it.
//!
//! A connection is made in three steps, all within the service's `connect_timeout` (zero: no
//! deadline of ours, the kernel's own connect timeout applies — as at layer 4, `tcp.rs`):
//! 1. TCP connect, Nagle off (requests are written whole; Nagle would only add latency);
//! 2. for `https`, the TLS handshake with the service's client settings (roots, server name,
//!    verification) — the name sent and verified is `server_name`, or else the endpoint's IP;
//! 3. for HTTP/2 — `protocol = "http2"` (h2c by prior knowledge), or `https` when ALPN chose
//!    `h2` — the HTTP/2 handshake. HTTP/1.1 has no connection preface (RFC 9112), so an HTTP/1.1
//!    connection is handed back as the bare stream, for the caller's own client: the gateway's
//!    codec for pooled exchanges (`h1/`), hyper's for upgrades and health checks.
//!
//! The HTTP/2 connection's driver future is handed back unspawned, with the executor the caller
//! gave for its streams: the workers run on single-threaded `LocalSet`s, the health checks on the
//! shared runtime, and each spawns on its own.
//!
//! [`Transport`] is what a service's snapshot holds; its [`identity`](Transport::identity) keys
//! the pools, so connections are only shared between users that would have made the same one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body::Body;
use hyper::client::conn::http2;
use hyper::rt::bounds::Http2ClientConnExec;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::proxy::http::client::h1::Io;
use crate::tls::{ALPN_H2, ALPN_HTTP1};

/// How a service's endpoints are reached.
#[derive(Clone)]
pub enum Transport {
    /// HTTP/1.1 over TCP (also the `tcp` services' transport).
    Http1,
    /// HTTP/2 over TCP by prior knowledge (h2c).
    Http2,
    /// TLS; HTTP/2 or HTTP/1.1 as ALPN decides.
    Tls {
        /// Offers ALPN `h2` and `http/1.1`.
        connector: TlsConnector,
        /// The same settings offering only `http/1.1`: for upgrades, which go over HTTP/1.1.
        http1_connector: TlsConnector,
        /// The configured name; `None`: each endpoint's own IP address.
        server_name: Option<ServerName<'static>>,
        /// The settings' identity (`UpstreamTls::identity`), at least 2.
        identity: u64,
    },
}

impl Transport {
    /// TLS with `client` (which offers ALPN `h2` and `http/1.1`), naming `server_name` (`None`:
    /// each endpoint's IP address); `identity` is the settings' (`UpstreamTls::identity`).
    pub fn tls(
        client: &Arc<rustls::ClientConfig>,
        server_name: Option<ServerName<'static>>,
        identity: u64,
    ) -> Transport {
        let mut http1_only = rustls::ClientConfig::clone(client);
        http1_only.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Transport::Tls {
            connector: TlsConnector::from(Arc::clone(client)),
            http1_connector: TlsConnector::from(Arc::new(http1_only)),
            server_name,
            identity,
        }
    }

    /// What a connection made with this transport is, beside its address: 0 for cleartext
    /// HTTP/1.1, 1 for h2c, the TLS settings' identity (2 and up) for TLS. Two transports with
    /// the same identity make interchangeable connections to one address.
    pub fn identity(&self) -> u64 {
        match self {
            Transport::Http1 => 0,
            Transport::Http2 => 1,
            Transport::Tls { identity, .. } => *identity,
        }
    }

    /// Whether requests on it use the `https` scheme.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls { .. })
    }
}

/// Which HTTP the caller means to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Speak {
    /// What the service's protocol says: HTTP/2 for `http2`, HTTP/2 or HTTP/1.1 as ALPN
    /// decides for `https`, HTTP/1.1 otherwise.
    Protocol,
    /// HTTP/1.1 whatever the protocol: an `Upgrade` request (WebSocket over HTTP/2, RFC 8441,
    /// is not supported). TLS then offers only `http/1.1`; an `http2` service is spoken to in
    /// cleartext HTTP/1.1.
    Http1,
}

/// A connection ready for its HTTP client.
pub enum Connected<B, E>
where
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Http2ClientConnExec<B, TokioIo<Io>> + Unpin,
{
    /// HTTP/1.1: the stream, for the caller's client.
    Http1(Io),
    /// HTTP/2, handshake done: the sender, and the connection's driver for the caller to spawn
    /// (dropping it closes the connection).
    Http2(http2::SendRequest<B>, http2::Connection<TokioIo<Io>, B, E>),
}

/// Why a new upstream connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("no connection to {0} within the connect timeout")]
    Timeout(SocketAddr),
    #[error("connect to {0} failed: {1}")]
    Io(SocketAddr, #[source] std::io::Error),
    #[error("TLS with {0} failed: {1}")]
    Tls(SocketAddr, #[source] std::io::Error),
    #[error("HTTP/2 handshake with {0} failed: {1}")]
    Handshake(SocketAddr, #[source] hyper::Error),
}

/// Opens a connection to `addr` as `transport` says, within `timeout` (zero: no deadline).
/// `exec` runs the HTTP/2 connection's stream tasks.
pub async fn connect<B, E>(
    addr: SocketAddr,
    transport: &Transport,
    timeout: Duration,
    speak: Speak,
    exec: E,
) -> Result<Connected<B, E>, ConnectError>
where
    B: Body + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: Http2ClientConnExec<B, TokioIo<Io>> + Unpin,
{
    let connecting = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Io(addr, e))?;
        let _ = stream.set_nodelay(true);
        let (io, h2) = match transport {
            Transport::Http1 => (Io::Tcp(stream), false),
            Transport::Http2 => (Io::Tcp(stream), speak == Speak::Protocol),
            Transport::Tls {
                connector,
                http1_connector,
                server_name,
                ..
            } => {
                let connector = match speak {
                    Speak::Protocol => connector,
                    Speak::Http1 => http1_connector,
                };
                let name = server_name
                    .clone()
                    .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
                let tls = connector
                    .connect(name, stream)
                    .await
                    .map_err(|e| ConnectError::Tls(addr, e))?;
                let h2 = tls.get_ref().1.alpn_protocol() == Some(ALPN_H2);
                (Io::Tls(Box::new(tls)), h2)
            }
        };
        if !h2 {
            return Ok(Connected::Http1(io));
        }
        let (sender, connection) = http2::Builder::new(exec)
            .timer(TokioTimer::new())
            // Large windows: a proxy streams bodies and should not throttle a fast upstream.
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ConnectError::Handshake(addr, e))?;
        Ok(Connected::Http2(sender, connection))
    };
    if timeout.is_zero() {
        return connecting.await;
    }
    tokio::time::timeout(timeout, connecting)
        .await
        .unwrap_or(Err(ConnectError::Timeout(addr)))
}

//! Layer-4 proxying of one accepted connection: connect to the chosen upstream, then copy bytes
//! both ways until both directions have ended.
//!
//! This module owns the byte path of a `protocol = "tcp"` listener (SPEC section 2): the
//! upstream connect with its deadline, the optional PROXY protocol header, half-close, the idle
//! timeout and the byte counts. Accepting, picking the endpoint, health and metrics are the
//! caller's; it gets a [`TcpError`] to log (at debug: resets and timeouts are routine at L4)
//! and [`TcpStats`] to count.
//!
//! The relay is one future per connection with no spawned tasks and no `Send` requirement, so
//! it runs as is on a worker's current-thread runtime (it happens to be `Send` too).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::proxy_protocol::ProxyProtocol;
use super::relay::{self, RelayError};

/// How to reach an upstream and how long a relayed connection may sit silent.
#[derive(Clone, Copy, Debug)]
pub struct TcpOptions {
    /// Deadline for the TCP handshake (and the PROXY header write) to the upstream, the
    /// service's `connect_timeout`. `Duration::ZERO` means no deadline of ours: the kernel's SYN
    /// retries decide (about two minutes on Linux).
    pub connect_timeout: Duration,
    /// The relay closes both sides when no byte moved either way for this long.
    /// `Duration::ZERO` disables the idle timeout.
    pub idle_timeout: Duration,
    /// Send this PROXY protocol header before any relayed byte, so the upstream learns the real
    /// client address. `None` sends nothing.
    pub proxy_protocol: Option<ProxyProtocol>,
}

/// Bytes a finished relay carried.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TcpStats {
    /// Read from the client and written to the upstream.
    pub bytes_from_client: u64,
    /// Read from the upstream and written to the client.
    pub bytes_from_upstream: u64,
}

/// Why a connection could not be proxied or ended early. Messages are for logs, not a contract.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The upstream refused or the handshake failed (the caller may try another endpoint).
    #[error("cannot connect to upstream {0}: {1}")]
    Connect(SocketAddr, #[source] io::Error),
    /// No handshake within `connect_timeout`.
    #[error("no connection to upstream {0} within the connect timeout")]
    ConnectTimeout(SocketAddr),
    /// No byte moved either way for `idle_timeout`; both sides were closed.
    #[error("connection idle for longer than the idle timeout; closed")]
    Idle,
    /// A read, write or shutdown failed mid-relay, typically a reset by either peer.
    #[error("relay failed: {0}")]
    Io(#[source] io::Error),
}

impl From<io::Error> for TcpError {
    fn from(e: io::Error) -> Self {
        TcpError::Io(e)
    }
}

/// Opens a connection to `upstream` for the client `client` that connected to the gateway's
/// address `local`: within `connect_timeout`, with `TCP_NODELAY` (a relay forwards whatever
/// arrives at once, and Nagle would hold small writes back for an ACK), and with the PROXY
/// header already written when `proxy_protocol` asks for it.
///
/// The header goes out here, not with the client's first bytes, because in protocols where the
/// server speaks first (SMTP, MySQL, SSH banners) the upstream waits for the header before it
/// says anything, and the client waits for the upstream.
pub async fn connect(
    upstream: SocketAddr,
    options: &TcpOptions,
    client: SocketAddr,
    local: SocketAddr,
) -> Result<TcpStream, TcpError> {
    let attempt = async {
        let mut stream = TcpStream::connect(upstream)
            .await
            .map_err(|e| TcpError::Connect(upstream, e))?;
        stream.set_nodelay(true)?;
        if let Some(version) = options.proxy_protocol {
            // Spec: "The sender must always ensure that the header is sent at once". At most
            // 107 bytes into an empty send buffer: one write, which never waits.
            let header = version.header(client, local);
            stream.write_all(&header).await?;
        }
        Ok(stream)
    };
    if options.connect_timeout.is_zero() {
        return attempt.await;
    }
    match tokio::time::timeout(options.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_elapsed) => Err(TcpError::ConnectTimeout(upstream)),
    }
}

/// Copies bytes between `client` and `upstream` in both directions at once until both have
/// ended, then closes both ([`relay::both_ways`]: half-close honoured, buffers borrowed only
/// while bytes move).
///
/// The relay ends early with [`TcpError::Idle`] when no byte moved either way for
/// `idle_timeout` (zero disables it); a busy connection is never cut, however long it lives.
/// It ends with [`TcpError::Io`] when a read, write or shutdown fails, typically a reset.
/// Either way both sockets are closed on return.
///
/// `client` is expected to have `TCP_NODELAY` set already (the listener does it on accept);
/// [`connect`] sets it on the upstream.
pub async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    idle_timeout: Duration,
) -> Result<TcpStats, TcpError> {
    match relay::both_ways(&mut client, &mut upstream, idle_timeout).await {
        Ok(relayed) => Ok(TcpStats {
            bytes_from_client: relayed.forward,
            bytes_from_upstream: relayed.backward,
        }),
        Err(RelayError::Idle) => Err(TcpError::Idle),
        Err(RelayError::Io(e)) => Err(TcpError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Socket, Type};
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// Bounds every test so that a bug fails it instead of hanging the suite. Generous: only a
    /// broken relay comes near it.
    const TEST_DEADLINE: Duration = Duration::from_secs(30);

    async fn listener() -> (TcpListener, SocketAddr) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("local_addr");
        (listener, address)
    }

    /// Starts an upstream that runs `serve` on each connection it accepts.
    async fn upstream<F, Fut>(serve: F) -> SocketAddr
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let (listener, address) = listener().await;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream));
            }
        });
        address
    }

    /// Echoes every byte until end of stream, then closes.
    async fn echo(mut stream: TcpStream) {
        let (mut r, mut w) = stream.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    }

    /// The gateway in miniature: accepts one client, connects to `upstream` as [`connect`]
    /// would for a real listener, and relays. Returns the address to dial and the relay's
    /// outcome.
    async fn gateway(
        upstream: SocketAddr,
        options: TcpOptions,
    ) -> (
        SocketAddr,
        tokio::task::JoinHandle<Result<TcpStats, TcpError>>,
    ) {
        let (listener, address) = listener().await;
        let relayed = tokio::spawn(async move {
            let (client, peer) = listener.accept().await.expect("accept");
            client.set_nodelay(true).expect("nodelay");
            let local = client.local_addr().expect("local_addr");
            let upstream = connect(upstream, &options, peer, local).await?;
            relay(client, upstream, options.idle_timeout).await
        });
        (address, relayed)
    }

    fn options() -> TcpOptions {
        TcpOptions {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            proxy_protocol: None,
        }
    }

    async fn outcome(
        relay: tokio::task::JoinHandle<Result<TcpStats, TcpError>>,
    ) -> Result<TcpStats, TcpError> {
        tokio::time::timeout(TEST_DEADLINE, relay)
            .await
            .expect("relay finished in time")
            .expect("relay task did not panic")
    }

    #[tokio::test]
    async fn echoes_ten_mebibytes_byte_exact() {
        const LEN: usize = 10 * 1024 * 1024;
        let upstream = upstream(echo).await;
        let (gateway, relay) = gateway(upstream, options()).await;

        let mut rng = fastrand::Rng::with_seed(7);
        let mut sent = vec![0u8; LEN];
        rng.fill(&mut sent);

        let mut client = TcpStream::connect(gateway).await.expect("connect");
        let (mut r, mut w) = client.split();
        let write = async {
            w.write_all(&sent).await.expect("write");
            w.shutdown().await.expect("shutdown");
        };
        let mut received = Vec::with_capacity(LEN);
        let read = r.read_to_end(&mut received);
        let ((), read) = tokio::time::timeout(TEST_DEADLINE, async { tokio::join!(write, read) })
            .await
            .expect("echo finished in time");
        read.expect("read");
        drop(client);

        assert_eq!(received.len(), LEN);
        assert!(received == sent, "echoed bytes differ from the bytes sent");
        let stats = outcome(relay).await.expect("relay succeeded");
        assert_eq!(
            stats,
            TcpStats {
                bytes_from_client: LEN as u64,
                bytes_from_upstream: LEN as u64
            }
        );
    }

    #[tokio::test]
    async fn client_half_close_still_gets_the_echo() {
        let upstream = upstream(echo).await;
        let (gateway, relay) = gateway(upstream, options()).await;

        let mut client = TcpStream::connect(gateway).await.expect("connect");
        client.write_all(b"hello, ").await.expect("write");
        client.write_all(b"upstream").await.expect("write");
        client.shutdown().await.expect("shutdown");
        // The echo server only closes after it saw our end of stream through the relay, so
        // read_to_end returning proves the FIN went through both ways.
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"hello, upstream");
        drop(client);

        let stats = outcome(relay).await.expect("relay succeeded");
        assert_eq!(stats.bytes_from_client, 15);
        assert_eq!(stats.bytes_from_upstream, 15);
    }

    #[tokio::test]
    async fn upstream_may_answer_after_the_client_finished_sending() {
        // Reads the whole request to end of stream, and only then answers: works only if the
        // relay keeps the upstream-to-client direction open after the client's FIN.
        let upstream = upstream(|mut stream: TcpStream| async move {
            let mut request = Vec::new();
            let _ = stream.read_to_end(&mut request).await;
            request.reverse();
            let _ = stream.write_all(&request).await;
            let _ = stream.shutdown().await;
        })
        .await;
        let (gateway, relay) = gateway(upstream, options()).await;

        let mut client = TcpStream::connect(gateway).await.expect("connect");
        client.write_all(b"abcdef").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"fedcba");
        drop(client);
        outcome(relay).await.expect("relay succeeded");
    }

    #[tokio::test]
    async fn server_speaks_first_then_closes() {
        const BANNER: &[u8] = b"220 sluicegate test banner\r\n";
        let upstream = upstream(|mut stream: TcpStream| async move {
            let _ = stream.write_all(BANNER).await;
        })
        .await;
        let (gateway, relay) = gateway(upstream, options()).await;

        let mut client = TcpStream::connect(gateway).await.expect("connect");
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, BANNER);
        drop(client);

        let stats = outcome(relay).await.expect("relay succeeded");
        assert_eq!(stats.bytes_from_upstream, BANNER.len() as u64);
        assert_eq!(stats.bytes_from_client, 0);
    }

    #[tokio::test]
    async fn idle_timeout_closes_a_silent_connection() {
        let upstream = upstream(|mut stream: TcpStream| async move {
            // Says nothing; returns when the relay closes the connection.
            let _ = stream.read_to_end(&mut Vec::new()).await;
        })
        .await;
        let (gateway, relay) = gateway(
            upstream,
            TcpOptions {
                idle_timeout: Duration::from_millis(200),
                ..options()
            },
        )
        .await;

        let mut client = TcpStream::connect(gateway).await.expect("connect");
        assert!(matches!(outcome(relay).await, Err(TcpError::Idle)));
        // Both sides were closed: the client sees end of stream.
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        assert!(received.is_empty());
    }

    #[tokio::test]
    async fn idle_timeout_spares_a_trickling_connection() {
        // A sink: reads to end of stream, answers nothing, so only one direction is active.
        let upstream = upstream(|mut stream: TcpStream| async move {
            let _ = stream.read_to_end(&mut Vec::new()).await;
        })
        .await;
        let (gateway, relay) = gateway(
            upstream,
            TcpOptions {
                idle_timeout: Duration::from_millis(200),
                ..options()
            },
        )
        .await;

        let mut client = TcpStream::connect(gateway).await.expect("connect");
        // One byte every 50 ms for 20 ticks: about a second, five idle timeouts long.
        let mut ticks = tokio::time::interval(Duration::from_millis(50));
        for _ in 0..20 {
            ticks.tick().await;
            client.write_all(b".").await.expect("write while trickling");
        }
        client.shutdown().await.expect("shutdown");
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        drop(client);

        let stats = outcome(relay)
            .await
            .expect("a trickling connection is not idle");
        assert_eq!(stats.bytes_from_client, 20);
    }

    #[tokio::test]
    async fn zero_idle_timeout_never_fires() {
        let upstream = upstream(echo).await;
        let (gateway, relay) = gateway(
            upstream,
            TcpOptions {
                idle_timeout: Duration::ZERO,
                ..options()
            },
        )
        .await;
        let mut client = TcpStream::connect(gateway).await.expect("connect");
        client.write_all(b"ping").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"ping");
        drop(client);
        outcome(relay).await.expect("relay succeeded");
    }

    /// Starts an upstream that reads a PROXY header and the bytes after it, and reports both.
    async fn header_reader(
        expected_payload: &'static [u8],
    ) -> (SocketAddr, tokio::sync::oneshot::Receiver<Vec<u8>>) {
        let (listener, address) = listener().await;
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.expect("accept");
            let mut received = Vec::new();
            stream.read_to_end(&mut received).await.expect("read");
            assert!(received.ends_with(expected_payload));
            let _ = tx.send(received);
        });
        (address, rx)
    }

    async fn proxied_header(version: ProxyProtocol) -> (Vec<u8>, SocketAddr, SocketAddr) {
        let (upstream, received) = header_reader(b"payload").await;
        let (gateway, relay) = gateway(
            upstream,
            TcpOptions {
                proxy_protocol: Some(version),
                ..options()
            },
        )
        .await;
        let mut client = TcpStream::connect(gateway).await.expect("connect");
        let client_address = client.local_addr().expect("local_addr");
        client.write_all(b"payload").await.expect("write");
        client.shutdown().await.expect("shutdown");
        client.read_to_end(&mut Vec::new()).await.expect("read");
        drop(client);
        outcome(relay).await.expect("relay succeeded");
        let received = tokio::time::timeout(TEST_DEADLINE, received)
            .await
            .expect("upstream finished in time")
            .expect("upstream saw the payload");
        let header_len = received.len() - b"payload".len();
        (received[..header_len].to_vec(), client_address, gateway)
    }

    #[tokio::test]
    async fn proxy_v1_header_arrives_first_with_the_client_address() {
        let (header, client, gateway) = proxied_header(ProxyProtocol::V1).await;
        let expected = format!(
            "PROXY TCP4 {} {} {} {}\r\n",
            client.ip(),
            gateway.ip(),
            client.port(),
            gateway.port()
        );
        assert_eq!(String::from_utf8_lossy(&header), expected);
    }

    #[tokio::test]
    async fn proxy_v2_header_arrives_first_with_the_client_address() {
        let (header, client, gateway) = proxied_header(ProxyProtocol::V2).await;
        assert_eq!(header, ProxyProtocol::V2.header(client, gateway));
        assert_eq!(&header[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(&header[12..16], &[0x21, 0x11, 0, 12]);
        assert_eq!(&header[16..20], &[127, 0, 0, 1]);
        assert_eq!(&header[24..26], &client.port().to_be_bytes());
        assert_eq!(&header[26..28], &gateway.port().to_be_bytes());
    }

    #[tokio::test]
    async fn refused_connect_is_a_connect_error() {
        // A port that was just free: nothing listens there, so the kernel refuses at once.
        let (listener, address) = listener().await;
        drop(listener);
        let client = "127.0.0.1:1".parse().expect("address");
        let result = connect(address, &options(), client, client).await;
        match result {
            Err(TcpError::Connect(to, e)) => {
                assert_eq!(to, address);
                assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn connect_times_out_when_the_upstream_backlog_is_full() {
        // A listener that never accepts, with the smallest backlog: once its accept queue is
        // full, Linux drops further SYNs and the handshake hangs, all on loopback.
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let bind: SocketAddr = "127.0.0.1:0".parse().expect("address");
        socket.bind(&bind.into()).expect("bind");
        socket.listen(0).expect("listen");
        let address = socket
            .local_addr()
            .expect("local_addr")
            .as_socket()
            .expect("inet address");

        let options = TcpOptions {
            connect_timeout: Duration::from_millis(200),
            ..options()
        };
        let mut queued = Vec::new();
        for _ in 0..16 {
            match connect(address, &options, address, address).await {
                Ok(stream) => queued.push(stream),
                Err(TcpError::ConnectTimeout(to)) => {
                    assert_eq!(to, address);
                    return;
                }
                Err(other) => panic!("expected a connect timeout, got {other}"),
            }
        }
        panic!(
            "16 connects to a full backlog all succeeded ({} queued)",
            queued.len()
        );
    }

    #[tokio::test]
    async fn upstream_reset_ends_the_relay_with_an_error() {
        let upstream = upstream(|mut stream: TcpStream| async move {
            let mut first = [0u8; 1];
            let _ = stream.read_exact(&mut first).await;
            // Linger zero: close sends a RST instead of a FIN.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
        })
        .await;
        let (gateway, relay) = gateway(upstream, options()).await;
        let mut client = TcpStream::connect(gateway).await.expect("connect");
        client.write_all(b"x").await.expect("write");
        match outcome(relay).await {
            Err(TcpError::Io(e)) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
            other => panic!("expected a reset, got {other:?}"),
        }
    }

    #[test]
    fn relay_runs_on_a_current_thread_runtime_inside_a_local_set() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async {
            let upstream = upstream(echo).await;
            let (listener, gateway) = listener().await;
            let relayed = tokio::task::spawn_local(async move {
                let (client, peer) = listener.accept().await.expect("accept");
                let local = client.local_addr().expect("local_addr");
                let upstream = connect(upstream, &options(), peer, local).await?;
                relay(client, upstream, Duration::from_secs(60)).await
            });
            let mut client = TcpStream::connect(gateway).await.expect("connect");
            client.write_all(b"local").await.expect("write");
            client.shutdown().await.expect("shutdown");
            let mut received = Vec::new();
            client.read_to_end(&mut received).await.expect("read");
            assert_eq!(received, b"local");
            drop(client);
            let stats = relayed.await.expect("join").expect("relay succeeded");
            assert_eq!(stats.bytes_from_upstream, 5);
        });
    }

    #[test]
    fn relay_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let future = async {
            let client = TcpStream::connect("127.0.0.1:1").await?;
            let upstream = TcpStream::connect("127.0.0.1:1").await?;
            relay(client, upstream, Duration::ZERO).await
        };
        assert_send(&future);
    }
}

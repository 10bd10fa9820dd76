//! Upstreams other than `Backend`'s plain HTTP/1.1, for tests of how the gateway reaches
//! services: certificates from a throwaway CA, a TLS server speaking HTTP/1.1 or HTTP/2 as ALPN
//! decides, an h2c-only server, WebSocket echoes (cleartext and TLS) and a server that never
//! answers. Each runs on its own runtime, on 127.0.0.1:0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::TempDir;

/// ALPN `h2` then `http/1.1`: what the gateway offers, and most TLS servers accept.
pub const H2_HTTP1: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN `http/1.1` only.
pub const HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A CA and a certificate (for a DNS name and 127.0.0.1) signed by it, as PEM files.
pub struct Certs {
    _dir: Arc<TempDir>,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A new CA, and a certificate for `name` (and 127.0.0.1) signed by it.
pub fn certs(name: &str) -> Certs {
    certs_for(&[name]).remove(0)
}

/// One new CA, and a certificate (with 127.0.0.1 too) for each name, in the CA's directory.
pub fn certs_for(names: &[&str]) -> Vec<Certs> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let dir = Arc::new(TempDir::new("certs"));
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Sluicegate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let ca = dir.write("ca.pem", &ca_cert.pem());
    names
        .iter()
        .map(|name| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *name);
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            let cert = params.signed_by(&key, &issuer).unwrap();
            Certs {
                ca: ca.clone(),
                cert: dir.write(&format!("{name}.pem"), &cert.pem()),
                key: dir.write(&format!("{name}.key"), &key.serialize_pem()),
                _dir: Arc::clone(&dir),
            }
        })
        .collect()
}

/// The `[services.tls]` table that trusts `certs`' CA and names `server_name`.
pub fn service_tls(certs: &Certs, server_name: &str) -> String {
    format!(
        "protocol = \"https\"\n[services.tls]\nca = \"{}\"\nserver_name = \"{server_name}\"",
        certs.ca.display()
    )
}

fn acceptor(certs: &Certs, alpn: &[&[u8]]) -> tokio_rustls::TlsAcceptor {
    let pair = sluicegate::tls::CertPair {
        cert: certs.cert.clone(),
        key: certs.key.clone(),
    };
    let config = sluicegate::tls::server_config(&pair, &[], alpn).unwrap();
    tokio_rustls::TlsAcceptor::from(config)
}

/// A test upstream: `/healthz` answers the status in `health` (default 200), anything else 200
/// with the upstream's name. Counts the connections (and for TLS, the handshakes) it accepted.
pub struct Upstream {
    pub addr: SocketAddr,
    pub health: Arc<AtomicU16>,
    /// TCP connections accepted.
    pub connections: Arc<AtomicUsize>,
    /// ALPN protocols negotiated by completed TLS handshakes, in order (empty: none offered).
    pub alpn: Arc<Mutex<Vec<String>>>,
    _runtime: tokio::runtime::Runtime,
}

#[derive(Clone)]
struct Shared {
    name: Arc<str>,
    health: Arc<AtomicU16>,
    connections: Arc<AtomicUsize>,
    alpn: Arc<Mutex<Vec<String>>>,
}

/// What an upstream speaks on an accepted connection.
#[derive(Clone)]
enum Kind {
    /// TLS, then HTTP/2 or HTTP/1.1 as ALPN decided.
    Tls(tokio_rustls::TlsAcceptor),
    /// HTTP/2 by prior knowledge only: an HTTP/1.1 request is a protocol error.
    H2c,
    /// TLS, then a WebSocket echo over HTTP/1.1; a connection that negotiated `h2` is closed.
    TlsWebSocket(tokio_rustls::TlsAcceptor),
    /// A WebSocket echo over cleartext HTTP/1.1.
    WebSocket,
    /// Reads whatever comes and never answers; the connection stays open until the peer
    /// closes it.
    Silent,
}

impl Upstream {
    /// TLS with the certificate of `certs`, offering `alpn`.
    pub fn tls(name: &str, certs: &Certs, alpn: &[&[u8]]) -> Upstream {
        Upstream::start(name, Kind::Tls(acceptor(certs, alpn)))
    }

    /// Cleartext HTTP/2 only (h2c, prior knowledge).
    pub fn h2c(name: &str) -> Upstream {
        Upstream::start(name, Kind::H2c)
    }

    /// A WebSocket echo over TLS; the server offers both `h2` and `http/1.1`, so a client that
    /// offered `h2` would get it, and then no WebSocket.
    pub fn tls_websocket_echo(certs: &Certs) -> Upstream {
        Upstream::start("ws", Kind::TlsWebSocket(acceptor(certs, H2_HTTP1)))
    }

    /// A WebSocket echo in cleartext.
    pub fn websocket_echo() -> Upstream {
        Upstream::start("ws", Kind::WebSocket)
    }

    /// Accepts connections and never answers.
    pub fn silent() -> Upstream {
        Upstream::start("silent", Kind::Silent)
    }

    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn alpn(&self) -> Vec<String> {
        self.alpn.lock().unwrap().clone()
    }

    fn start(name: &str, kind: Kind) -> Upstream {
        let (runtime, listener) = super::small_runtime("upstream", true);
        let listener = listener.expect("listener");
        let addr = listener.local_addr().expect("addr");
        let shared = Shared {
            name: Arc::from(name),
            health: Arc::new(AtomicU16::new(200)),
            connections: Arc::new(AtomicUsize::new(0)),
            alpn: Arc::default(),
        };
        let upstream = Upstream {
            addr,
            health: Arc::clone(&shared.health),
            connections: Arc::clone(&shared.connections),
            alpn: Arc::clone(&shared.alpn),
            _runtime: runtime,
        };
        upstream._runtime.spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(shared.clone(), kind.clone(), stream));
            }
        });
        upstream
    }
}

async fn serve(shared: Shared, kind: Kind, stream: tokio::net::TcpStream) {
    let answer = {
        let shared = shared.clone();
        service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(respond(&shared, &req)) }
        })
    };
    match kind {
        Kind::H2c => {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), answer)
                .await;
        }
        Kind::Tls(acceptor) => {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let h2 = record_alpn(&shared, tls.get_ref().1.alpn_protocol());
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), answer)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), answer)
                    .await;
            }
        }
        Kind::TlsWebSocket(acceptor) => {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            if record_alpn(&shared, tls.get_ref().1.alpn_protocol()) {
                return;
            }
            echo(tls).await;
        }
        Kind::WebSocket => echo(stream).await,
        Kind::Silent => {
            use tokio::io::AsyncReadExt;
            let mut stream = stream;
            let mut buf = [0u8; 4096];
            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    }
}

/// Echoes the text and binary messages of a WebSocket until it closes.
async fn echo<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    while let Some(Ok(m)) = ws.next().await {
        if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
            return;
        }
    }
}

/// Notes the negotiated ALPN; true for `h2`.
fn record_alpn(shared: &Shared, alpn: Option<&[u8]>) -> bool {
    let text = alpn.map(String::from_utf8_lossy).unwrap_or_default();
    shared.alpn.lock().unwrap().push(text.to_string());
    alpn == Some(b"h2")
}

fn respond(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, body) = if req.uri().path() == "/healthz" {
        let status = StatusCode::from_u16(shared.health.load(Ordering::SeqCst))
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Bytes::from_static(b"health"))
    } else {
        (StatusCode::OK, Bytes::from(shared.name.to_string()))
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

//! TLS for listeners (`protocol = "https"`) and upstreams (service `protocol = "https"`), on
//! rustls with the `ring` provider.
//!
//! This module owns: reading PEM certificates and keys, checking them when the config is built
//! (so a bad file is a config error with its path, not a failed handshake at 3 a.m.), choosing a
//! listener's certificate by SNI, the upstream verifier, and the handshake itself with a deadline.
//! [`settings`] turns the config's values (file names, `server_name`, `insecure_skip_verify`)
//! into listener and upstream settings, and gives upstream settings the identity connection pools
//! are keyed by. It leaves to others: when to call [`accept`] (the listener) and connect (the
//! upstream client), what to speak after ALPN (the HTTP server and client), and where the file
//! names come from (`config`). It imports nothing of theirs, so `config` can use it.
//!
//! Build once, use per connection: [`server_config`] and [`client_config`] read files and are
//! called when a config is validated; the `Arc`s they return are shared by every worker, and
//! the per-connection work ([`accept`], [`connect`]) touches no file and takes no lock of ours.
//!
//! Why `ring` and an explicit provider: aws-lc-rs needs cmake and a C toolchain to build, and
//! passing the provider to every builder (rather than relying on the process-wide default)
//! keeps these configs working even if another dependency ever enables a second provider, in
//! which case rustls refuses to pick a default and `ClientConfig::builder()` would panic.

mod client;
mod server;
pub mod settings;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

pub use client::{client_config, client_config_digest};
pub use server::server_config;

/// ALPN name of HTTP/2 (RFC 7540 section 3.3).
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN name of HTTP/1.1 (RFC 7301 section 6).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
/// What an `https` listener offers and an `https` upstream asks for, in order of preference: the
/// server picks the first of its own list that the client also offered, so HTTP/2 wins when both
/// sides speak it.
pub const ALPN_H2_HTTP1: &[&[u8]] = &[ALPN_H2, ALPN_HTTP1];

/// What went wrong loading TLS material or during a handshake.
///
/// Messages name the file and what is wrong with it; they are meant for people and are not a
/// contract (match on the variant instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate, key or CA file could not be read (missing, a directory, no permission).
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file is not well-formed PEM (a section without its END line, bad base64).
    #[error("{}: not valid PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    /// A certificate file holds no `BEGIN CERTIFICATE` block.
    #[error("{}: no certificate found (expected a PEM \"BEGIN CERTIFICATE\" block)", path.display())]
    NoCertificate { path: PathBuf },
    /// A key file holds no private key block.
    #[error(
        "{}: no private key found (expected a PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" \
         or \"BEGIN EC PRIVATE KEY\" block)",
        path.display()
    )]
    NoPrivateKey { path: PathBuf },
    /// The key parsed as PEM but the crypto provider cannot sign with it (e.g. DSA, or corrupt).
    #[error("{}: unsupported or corrupt private key: {reason}", path.display())]
    UnsupportedKey { path: PathBuf, reason: String },
    /// The first certificate in the file is not a well-formed X.509 end-entity certificate.
    #[error("{}: invalid certificate: {reason}", path.display())]
    InvalidCertificate { path: PathBuf, reason: String },
    /// The private key is not the one for the (first) certificate of the pair.
    #[error(
        "private key {} does not match certificate {} (the first certificate in the file must be \
         the server's own certificate, followed by its intermediates)",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    /// A CA file that is empty or holds a certificate that cannot be a trust anchor.
    #[error("{}: invalid CA file: {reason}", path.display())]
    InvalidCa { path: PathBuf, reason: String },
    /// No CA file was given and no system CA bundle was found.
    #[error(
        "no CA file given and no system CA bundle found (looked at $SSL_CERT_FILE and {}); set \
         the CA file or install the system's CA certificates",
        client::SYSTEM_CA_BUNDLES.join(", ")
    )]
    NoSystemRoots,
    /// An SNI certificate that SNI can never select.
    #[error(
        "{}: the certificate has no DNS subjectAltName, so SNI can never select it (clients \
         never send IP addresses in SNI); add a DNS name or use it as the default certificate",
        path.display()
    )]
    NoSubjectNames { path: PathBuf },
    /// rustls refused the configuration (should not happen with the fixed versions used here).
    #[error("TLS configuration rejected: {0}")]
    Config(#[source] rustls::Error),
    /// The name given for an upstream is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {name:?}: expected a DNS name or an IP address")]
    InvalidServerName { name: String },
    /// The peer did not finish the handshake in time.
    #[error("TLS handshake did not finish within {timeout:?}")]
    HandshakeTimeout { timeout: Duration },
    /// The handshake failed: a protocol error, a certificate the client rejected, a reset.
    #[error("TLS handshake failed: {0}")]
    Handshake(#[source] io::Error),
}

impl TlsError {
    /// True when the handshake ran out of time (as opposed to failing).
    pub fn is_timeout(&self) -> bool {
        matches!(self, TlsError::HandshakeTimeout { .. })
    }
}

/// A certificate chain file and its private key file, both PEM.
///
/// The chain starts with the server's own certificate, then its intermediates; the key file may
/// be the same file as the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Runs the server side of a handshake on an accepted connection, giving up after `timeout`.
///
/// The deadline is what keeps a client that connects and then sends nothing (or trickles its
/// ClientHello a byte at a time) from holding a worker's task and socket forever. Returns the
/// stream and the negotiated ALPN protocol (`None` when the client offered none we speak); the
/// caller picks its HTTP codec from it.
pub async fn accept<IO>(
    acceptor: &tokio_rustls::TlsAcceptor,
    stream: IO,
    timeout: Duration,
) -> Result<(tokio_rustls::server::TlsStream<IO>, Option<Vec<u8>>), TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Err(_) => Err(TlsError::HandshakeTimeout { timeout }),
        Ok(Err(e)) => Err(TlsError::Handshake(e)),
        Ok(Ok(tls)) => {
            let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            Ok((tls, alpn))
        }
    }
}

/// Runs the client side of a handshake to an upstream, giving up after `timeout`.
///
/// `server_name` is sent in SNI and checked against the certificate: a DNS name must appear in
/// its DNS subjectAltNames, an IP address (no SNI is sent then) in its IP subjectAltNames.
pub async fn connect<IO>(
    connector: &tokio_rustls::TlsConnector,
    stream: IO,
    server_name: &str,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<IO>, TlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let name =
        ServerName::try_from(server_name.to_owned()).map_err(|_| TlsError::InvalidServerName {
            name: server_name.to_owned(),
        })?;
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Err(_) => Err(TlsError::HandshakeTimeout { timeout }),
        Ok(Err(e)) => Err(TlsError::Handshake(e)),
        Ok(Ok(tls)) => Ok(tls),
    }
}

/// The one crypto provider every config here is built with (see the module docs for why it is
/// explicit). Built once: it is immutable and cheap to share.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// Reads a whole file, naming it in the error.
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate in a PEM file, in order; other blocks (keys) are skipped, so a combined
/// cert+key file works.
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: path.to_path_buf(),
        },
        other => TlsError::Pem {
            path: path.to_path_buf(),
            reason: other.to_string(),
        },
    })
}

//! Builds the TLS settings of listeners and upstream services from their config.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::tls::{self, CertPair, TlsError};

/// ALPN offered to clients: HTTP/2 first, then HTTP/1.1.
pub const SERVER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN offered to `https` upstreams.
pub const UPSTREAM_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The rustls server config of an `https` listener (certificates loaded and checked): the
/// default pair and the others chosen by SNI.
pub fn server_config_for(
    cert: &Path,
    key: &Path,
    certificates: &[(PathBuf, PathBuf)],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let default = CertPair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    let extra: Vec<CertPair> = certificates
        .iter()
        .map(|(cert, key)| CertPair {
            cert: cert.clone(),
            key: key.clone(),
        })
        .collect();
    tls::server_config(&default, &extra, SERVER_ALPN)
}

/// The rustls client config of an `https` service.
pub fn client_config_for(
    ca: Option<&Path>,
    insecure_skip_verify: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    tls::client_config(ca, insecure_skip_verify, UPSTREAM_ALPN)
}

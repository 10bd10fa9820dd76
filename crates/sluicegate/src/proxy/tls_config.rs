//! Builds the TLS settings of listeners and upstream services from their config.

use std::sync::Arc;

use crate::config::{ListenerTls, UpstreamTls};

use super::tls::{self, CertPair, TlsError};

/// ALPN offered to clients: HTTP/2 first, then HTTP/1.1.
pub const SERVER_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];
/// ALPN offered to `https` upstreams.
pub const UPSTREAM_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The rustls server config of an `https` listener (certificates loaded and checked).
pub fn server_config_for(t: &ListenerTls) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let default = CertPair {
        cert: t.cert.clone(),
        key: t.key.clone(),
    };
    let extra: Vec<CertPair> = t
        .certificates
        .iter()
        .map(|(cert, key)| CertPair {
            cert: cert.clone(),
            key: key.clone(),
        })
        .collect();
    tls::server_config(&default, &extra, SERVER_ALPN)
}

/// The rustls client config of an `https` service.
pub fn client_config_for(t: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    tls::client_config(t.ca.as_deref(), t.insecure_skip_verify, UPSTREAM_ALPN)
}

//! Builds the TLS settings of listeners and upstream services from their config.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::pki_types::ServerName;

use crate::tls::{self, CertPair, TlsError};

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

/// An `https` service's client settings: the rustls config and the identity of everything that
/// decides what a connection made with it is.
pub struct UpstreamClient {
    pub config: Arc<rustls::ClientConfig>,
    /// Equal for equal settings — the same roots (by content, as read now), verification mode
    /// and server name — and different otherwise, in this process. Upstream connection pools
    /// key on it (beside the address), so two services that trust different roots never share a
    /// connection, and connections made before a reload changed the settings are not reused
    /// after it, while a reload that changed nothing keeps them. Never 0 or 1: those stand for
    /// cleartext HTTP/1.1 and HTTP/2 in the pool keys.
    pub identity: u64,
}

/// The client settings of an `https` service (roots read and checked now).
pub fn client_config_for(
    ca: Option<&Path>,
    insecure_skip_verify: bool,
    server_name: Option<&ServerName<'_>>,
) -> Result<UpstreamClient, TlsError> {
    let (config, digest) = tls::client_config_digest(ca, insecure_skip_verify, UPSTREAM_ALPN)?;
    let name = match server_name {
        Some(name) => name.to_str(),
        // The endpoint's own address is sent: mark it apart from any name.
        None => "\0endpoint".into(),
    };
    Ok(UpstreamClient {
        config,
        identity: intern(digest, &name),
    })
}

/// One number per distinct (settings digest, server name), in order of first sight. The table
/// only grows by the distinct TLS settings a process ever loads (a handful, even over many
/// reloads), and is touched only while a config is built.
fn intern(digest: [u8; 32], server_name: &str) -> u64 {
    /// (settings digest, server name) -> identity.
    type Table = HashMap<([u8; 32], String), u64>;
    static IDENTITIES: Mutex<Option<Table>> = Mutex::new(None);
    let mut table = IDENTITIES.lock().unwrap_or_else(|e| e.into_inner());
    let table = table.get_or_insert_with(HashMap::new);
    let next = FIRST_IDENTITY + table.len() as u64;
    *table
        .entry((digest, server_name.to_owned()))
        .or_insert(next)
}

/// The first TLS identity: 0 and 1 are the cleartext transports' pool keys.
const FIRST_IDENTITY: u64 = 2;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_are_equal_for_equal_settings_only() {
        let name = ServerName::try_from("a.test").unwrap();
        let other = ServerName::try_from("b.test").unwrap();
        let id = |insecure, name| client_config_for(None, insecure, name).unwrap().identity;
        let a = id(true, Some(&name));
        assert!(a >= FIRST_IDENTITY);
        assert_eq!(a, id(true, Some(&name)), "same settings, same identity");
        assert_ne!(a, id(true, Some(&other)), "another server name");
        assert_ne!(a, id(true, None), "the endpoint's address as the name");
    }

    #[test]
    fn a_changed_ca_file_changes_the_identity() {
        let dir = tempfile::tempdir().unwrap();
        let first = tls::testing::TestCa::new(dir.path(), "first");
        let second = tls::testing::TestCa::new(dir.path(), "second");
        let ca = dir.path().join("ca.pem");
        let id = || client_config_for(Some(&ca), false, None).unwrap().identity;
        std::fs::copy(&first.cert_path, &ca).unwrap();
        let before = id();
        assert_eq!(before, id(), "unchanged file");
        std::fs::copy(&second.cert_path, &ca).unwrap();
        assert_ne!(before, id(), "same path, other roots");
    }
}

//! The upstream side: whom the gateway trusts when it connects to an `https` service.
//!
//! Verification is on by default. Roots come from the service's CA file or, without one, from
//! the system's CA bundle, found the way OpenSSL-based tools find it: `$SSL_CERT_FILE` first,
//! then the usual bundle paths of the common Linux distributions and BSDs. (A hashed
//! `SSL_CERT_DIR` is not read in this version.) Turning verification off is possible, loudly,
//! for tests and labs.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};
use sha2::{Digest, Sha256};

use super::{load_certs, provider, TlsError};

/// Where the system CA bundle lives, tried in order after `$SSL_CERT_FILE`: Debian/Ubuntu/Arch/
/// Alpine, Fedora/RHEL, openSUSE, and the BSDs/macOS/Alpine.
pub(super) const SYSTEM_CA_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// Builds the `ClientConfig` for an `https` service.
///
/// With `insecure_skip_verify = false` (the default to use) the upstream's certificate must chain
/// to a root in `ca_file`, or, when `ca_file` is `None`, to a root of the system bundle (see the
/// module docs), and must name the server name the gateway connects with. With
/// `insecure_skip_verify = true` any certificate is accepted and `ca_file` is not read: the
/// traffic is encrypted but the upstream is not authenticated, so anyone on the path can read
/// it. A warning is logged each time such a config is built.
///
/// TLS 1.3 and 1.2 are offered; `alpn` lists the protocols asked for, in order of preference.
pub fn client_config(
    ca_file: Option<&Path>,
    insecure_skip_verify: bool,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config_digest(ca_file, insecure_skip_verify, alpn).map(|(config, _)| config)
}

/// [`client_config`], with a SHA-256 digest of everything the config was built from: the
/// verification mode, every root certificate (DER, as read now), the ALPN list and the protocol
/// versions. Configs with equal digests verify and negotiate alike, so a connection made with one
/// is as good as one made with the other; a changed CA file gives a different digest.
pub fn client_config_digest(
    ca_file: Option<&Path>,
    insecure_skip_verify: bool,
    alpn: &[&[u8]],
) -> Result<(Arc<rustls::ClientConfig>, [u8; 32]), TlsError> {
    build_digest(
        ca_file,
        insecure_skip_verify,
        alpn,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
    )
}

/// [`client_config`] with a choice of protocol versions (the tests pin one at a time).
#[cfg(test)]
pub(super) fn build(
    ca_file: Option<&Path>,
    insecure_skip_verify: bool,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    build_digest(ca_file, insecure_skip_verify, alpn, versions).map(|(config, _)| config)
}

fn build_digest(
    ca_file: Option<&Path>,
    insecure_skip_verify: bool,
    alpn: &[&[u8]],
    versions: &[&'static SupportedProtocolVersion],
) -> Result<(Arc<rustls::ClientConfig>, [u8; 32]), TlsError> {
    let mut digest = Sha256::new();
    // Each part is length-prefixed, so no two different inputs feed the same bytes.
    let mut feed = |part: &[u8]| {
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part);
    };
    feed(if insecure_skip_verify {
        b"insecure"
    } else {
        b"verify"
    });
    for p in alpn {
        feed(p);
    }
    for v in versions {
        feed(&u16::from(v.version).to_be_bytes());
    }
    let provider = provider();
    let algorithms = provider.signature_verification_algorithms;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(TlsError::Config)?;
    let mut config = if insecure_skip_verify {
        tracing::warn!(
            "TLS verification of upstream certificates is OFF (insecure_skip_verify): any \
             certificate is accepted; use this for tests and labs only"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { algorithms }))
            .with_no_client_auth()
    } else {
        let roots = match ca_file {
            Some(path) => ca_roots(path, &mut feed)?,
            None => system_roots(&mut feed)?,
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), digest.finalize().into()))
}

/// Roots from a CA file the user named: every certificate in it must be usable as a trust
/// anchor, since a silently skipped root is a failure that only shows at handshake time.
fn ca_roots(path: &Path, feed: &mut impl FnMut(&[u8])) -> Result<RootCertStore, TlsError> {
    let certs = load_certs(path).map_err(|e| match e {
        TlsError::NoCertificate { path } => TlsError::InvalidCa {
            path,
            reason: "no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)".into(),
        },
        other => other,
    })?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        feed(&cert);
        roots.add(cert).map_err(|e| TlsError::InvalidCa {
            path: path.to_path_buf(),
            reason: format!("certificate #{} cannot be a trust anchor: {e}", i + 1),
        })?;
    }
    Ok(roots)
}

/// Roots from the system bundle. Its certificates are not ours to vet: unusable ones are skipped,
/// and only a bundle with no usable root at all is an error.
fn system_roots(feed: &mut impl FnMut(&[u8])) -> Result<RootCertStore, TlsError> {
    let path = match std::env::var_os("SSL_CERT_FILE") {
        Some(file) if !file.is_empty() => std::path::PathBuf::from(file),
        _ => SYSTEM_CA_BUNDLES
            .iter()
            .map(Path::new)
            .find(|p| p.is_file())
            .ok_or(TlsError::NoSystemRoots)?
            .to_path_buf(),
    };
    let certs = load_certs(&path)?;
    for cert in &certs {
        feed(cert);
    }
    let mut roots = RootCertStore::empty();
    let (added, skipped) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::InvalidCa {
            path,
            reason: format!("none of its {skipped} certificates can be a trust anchor"),
        });
    }
    tracing::debug!(path = %path.display(), added, skipped, "loaded system CA roots");
    Ok(roots)
}

/// `insecure_skip_verify`: accepts any certificate for any name.
///
/// Handshake signatures are still checked, so the peer must hold the key of the certificate it
/// showed; that proves nothing about who the peer is, only that the session is not garbled.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

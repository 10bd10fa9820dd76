//! Handshakes end to end: a real rustls server on 127.0.0.1:0 built by `server_config`, real
//! clients built by `client_config`, certificates made by a throwaway CA and read from PEM files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::ProtocolVersion;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::testing::TestCa;
use super::*;

/// Generous: these tests never wait for it unless something is broken.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A CA and the listener's certificates: the default (also valid for 127.0.0.1), `a.test`,
/// `b.test` and `*.w.test`.
struct Pki {
    dir: TempDir,
    ca: TestCa,
    default: CertPair,
    extra: Vec<CertPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "main");
        let default = ca.leaf("default", &["default.test", "127.0.0.1"]);
        let extra = vec![
            ca.leaf("a", &["a.test"]),
            ca.leaf("b", &["b.test"]),
            ca.leaf("wild", &["*.w.test"]),
        ];
        Pki {
            dir,
            ca,
            default,
            extra,
        }
    }

    fn server(&self, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        server_config(&self.default, &self.extra, alpn).unwrap()
    }

    /// A client trusting this PKI's CA, for the given versions.
    fn client(
        &self,
        alpn: &[&[u8]],
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<rustls::ClientConfig> {
        client::build(Some(&self.ca.cert_path), false, alpn, versions).unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

const BOTH: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// A TLS server that completes each handshake with [`accept`], writes the ALPN protocol it saw
/// (or `none`), and closes.
async fn serve(config: Arc<rustls::ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok((mut tls, alpn)) = accept(&acceptor, tcp, HANDSHAKE).await {
                    let said = alpn.unwrap_or_else(|| b"none".to_vec());
                    let _ = tls.write_all(&said).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    addr
}

/// What a client saw of a finished handshake.
#[derive(Debug)]
struct Seen {
    /// DNS names of the certificate the server presented.
    names: Vec<String>,
    alpn: Option<Vec<u8>>,
    version: Option<ProtocolVersion>,
}

async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: &str,
) -> Result<Seen, TlsError> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = connect(&TlsConnector::from(config), tcp, server_name, HANDSHAKE).await?;
    let mut said = Vec::new();
    tls.read_to_end(&mut said).await.unwrap();
    let conn = tls.get_ref().1;
    let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
    assert_eq!(
        said,
        alpn.clone().unwrap_or_else(|| b"none".to_vec()),
        "server and client agree on ALPN"
    );
    Ok(Seen {
        names: leaf_names(&conn.peer_certificates().unwrap()[0]),
        alpn,
        version: conn.protocol_version(),
    })
}

fn leaf_names(cert: &CertificateDer<'_>) -> Vec<String> {
    webpki::EndEntityCert::try_from(cert)
        .unwrap()
        .valid_dns_names()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn sni_selects_the_certificate() {
    let pki = Pki::new();
    let addr = serve(pki.server(ALPN_H2_HTTP1)).await;
    let client = pki.client(ALPN_H2_HTTP1, BOTH);
    for (sni, expected) in [
        ("a.test", "a.test"),
        ("b.test", "b.test"),
        ("x.w.test", "*.w.test"),
        ("default.test", "default.test"),
        // No SNI is sent for an IP address: the default answers (and is valid for it).
        ("127.0.0.1", "default.test"),
    ] {
        let seen = handshake(addr, client.clone(), sni).await.unwrap();
        assert_eq!(seen.names[0], expected, "SNI {sni}");
    }
}

#[tokio::test]
async fn unknown_names_get_the_default_certificate() {
    let pki = Pki::new();
    let addr = serve(pki.server(ALPN_H2_HTTP1)).await;
    let insecure = client_config(None, true, ALPN_H2_HTTP1).unwrap();
    for sni in ["unknown.test", "w.test", "y.x.w.test"] {
        let seen = handshake(addr, insecure.clone(), sni).await.unwrap();
        assert_eq!(seen.names[0], "default.test", "SNI {sni}");
    }
    // A verifying client rejects the default certificate for a name it does not carry.
    let err = handshake(addr, pki.client(ALPN_H2_HTTP1, BOTH), "unknown.test")
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::Handshake(_)), "{err}");
    assert!(err.to_string().contains("not valid for name"), "{err}");
}

#[tokio::test]
async fn alpn_prefers_h2_and_falls_back_to_http1() {
    let pki = Pki::new();
    let both = serve(pki.server(ALPN_H2_HTTP1)).await;
    let h1_only = serve(pki.server(&[ALPN_HTTP1])).await;

    let alpn = |addr, offer: &[&[u8]]| {
        let client = pki.client(offer, BOTH);
        async move { handshake(addr, client, "a.test").await.map(|s| s.alpn) }
    };
    assert_eq!(
        alpn(both, ALPN_H2_HTTP1).await.unwrap(),
        Some(b"h2".to_vec())
    );
    assert_eq!(
        alpn(both, &[ALPN_HTTP1, ALPN_H2]).await.unwrap(),
        Some(b"h2".to_vec()),
        "the server's preference decides"
    );
    assert_eq!(
        alpn(both, &[ALPN_HTTP1]).await.unwrap(),
        Some(b"http/1.1".to_vec())
    );
    assert_eq!(
        alpn(both, &[]).await.unwrap(),
        None,
        "client offers no ALPN"
    );
    assert_eq!(
        alpn(h1_only, ALPN_H2_HTTP1).await.unwrap(),
        Some(b"http/1.1".to_vec())
    );
    // No protocol in common: the server refuses (RFC 7301 section 3.2).
    assert!(alpn(h1_only, &[ALPN_H2]).await.is_err());
}

#[tokio::test]
async fn tls12_and_tls13_both_work() {
    let pki = Pki::new();
    let addr = serve(pki.server(ALPN_H2_HTTP1)).await;
    for (version, expected) in [
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
    ] {
        for sni in ["a.test", "x.w.test"] {
            let client = pki.client(ALPN_H2_HTTP1, &[version]);
            let seen = handshake(addr, client, sni).await.unwrap();
            assert_eq!(seen.version, Some(expected), "{sni}");
            assert_eq!(seen.alpn, Some(b"h2".to_vec()), "{sni} over {expected:?}");
        }
    }
    assert_eq!(
        handshake(addr, pki.client(&[], BOTH), "a.test")
            .await
            .unwrap()
            .version,
        Some(ProtocolVersion::TLSv1_3),
        "1.3 when both are possible"
    );
}

#[tokio::test]
async fn an_untrusted_ca_fails_unless_verification_is_skipped() {
    let pki = Pki::new();
    let addr = serve(pki.server(ALPN_H2_HTTP1)).await;
    let other = TestCa::new(pki.dir.path(), "other");

    let trusting_other = client_config(Some(&other.cert_path), false, ALPN_H2_HTTP1).unwrap();
    let err = handshake(addr, trusting_other, "a.test").await.unwrap_err();
    assert!(matches!(err, TlsError::Handshake(_)), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");

    let insecure = client_config(Some(&other.cert_path), true, ALPN_H2_HTTP1).unwrap();
    let seen = handshake(addr, insecure, "a.test").await.unwrap();
    assert_eq!(seen.names, ["a.test"]);
    assert_eq!(seen.alpn, Some(b"h2".to_vec()));

    let trusting_ours = client_config(Some(&pki.ca.cert_path), false, ALPN_H2_HTTP1).unwrap();
    assert!(handshake(addr, trusting_ours, "a.test").await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_handshake_that_never_starts_times_out() {
    let pki = Pki::new();
    let acceptor = TlsAcceptor::from(pki.server(ALPN_H2_HTTP1));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let _silent = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    // Paused time: the deadline passes as soon as nothing else can happen.
    let err = accept(&acceptor, tcp, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert_eq!(err.to_string(), "TLS handshake did not finish within 5s");
}

#[tokio::test(start_paused = true)]
async fn a_server_that_never_answers_times_out() {
    let pki = Pki::new();
    let connector = TlsConnector::from(pki.client(ALPN_H2_HTTP1, BOTH));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let _mute = listener.accept().await.unwrap();
    let err = connect(&connector, tcp, "a.test", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

#[tokio::test]
async fn plaintext_from_a_client_is_a_handshake_error() {
    let pki = Pki::new();
    let acceptor = TlsAcceptor::from(pki.server(ALPN_H2_HTTP1));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: a.test\r\n\r\n")
        .await
        .unwrap();
    let (tcp, _) = listener.accept().await.unwrap();
    let err = accept(&acceptor, tcp, HANDSHAKE).await.unwrap_err();
    assert!(matches!(err, TlsError::Handshake(_)), "{err}");
}

#[tokio::test]
async fn a_bad_server_name_is_an_error() {
    let pki = Pki::new();
    let connector = TlsConnector::from(pki.client(ALPN_H2_HTTP1, BOTH));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let err = connect(&connector, tcp, "not a name!", HANDSHAKE)
        .await
        .unwrap_err();
    assert!(matches!(err, TlsError::InvalidServerName { .. }), "{err}");
}

/// The error's message, which must name `path`.
fn message_naming(err: TlsError, path: &Path) -> String {
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    msg
}

#[test]
fn a_key_that_does_not_match_its_certificate_is_a_config_error() {
    let pki = Pki::new();
    let swapped = CertPair {
        cert: pki.extra[0].cert.clone(),
        key: pki.extra[1].key.clone(),
    };
    let err =
        server_config(&pki.default, std::slice::from_ref(&swapped), ALPN_H2_HTTP1).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    let msg = message_naming(err, &swapped.key);
    assert!(msg.contains(&swapped.cert.display().to_string()), "{msg}");
    assert!(msg.contains("does not match"), "{msg}");
}

#[test]
fn empty_missing_and_broken_files_are_clear_errors() {
    let pki = Pki::new();
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let pair = |cert: &Path, key: &Path| CertPair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };

    let err = server_config(&pair(&empty, &pki.default.key), &[], ALPN_H2_HTTP1).unwrap_err();
    assert!(matches!(err, TlsError::NoCertificate { .. }), "{err}");
    assert!(message_naming(err, &empty).contains("no certificate"));

    let err = server_config(&pair(&pki.default.cert, &empty), &[], ALPN_H2_HTTP1).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");
    assert!(message_naming(err, &empty).contains("no private key"));

    // A key file that holds only a certificate has no key either.
    let err = server_config(&pair(&pki.default.cert, &pki.default.cert), &[], &[]).unwrap_err();
    assert!(matches!(err, TlsError::NoPrivateKey { .. }), "{err}");

    let missing = pki.path("missing.pem");
    let err = server_config(&pair(&missing, &pki.default.key), &[], &[]).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
    assert!(message_naming(err, &missing).starts_with("cannot read"));

    let truncated = pki.path("truncated.pem");
    std::fs::write(&truncated, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    let err = server_config(&pair(&truncated, &pki.default.key), &[], &[]).unwrap_err();
    assert!(matches!(err, TlsError::Pem { .. }), "{err}");
    message_naming(err, &truncated);

    let garbage = pki.path("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = server_config(&pair(&garbage, &pki.default.key), &[], &[]).unwrap_err();
    assert!(matches!(err, TlsError::InvalidCertificate { .. }), "{err}");
    message_naming(err, &garbage);
}

#[test]
fn an_sni_certificate_without_dns_names_is_an_error_but_a_default_may_have_none() {
    let pki = Pki::new();
    let ip_only = pki.ca.leaf("ip-only", &["127.0.0.2"]);
    let err = server_config(&pki.default, std::slice::from_ref(&ip_only), &[]).unwrap_err();
    assert!(matches!(err, TlsError::NoSubjectNames { .. }), "{err}");
    assert!(message_naming(err, &ip_only.cert).contains("SNI can never select it"));
    assert!(server_config(&ip_only, &pki.extra, &[]).is_ok());
}

#[test]
fn combined_cert_and_key_file_works() {
    let pki = Pki::new();
    let combined = pki.path("combined.pem");
    let mut text = std::fs::read(&pki.default.key).unwrap();
    text.extend(std::fs::read(&pki.default.cert).unwrap());
    std::fs::write(&combined, text).unwrap();
    let pair = CertPair {
        cert: combined.clone(),
        key: combined,
    };
    assert!(server_config(&pair, &[], ALPN_H2_HTTP1).is_ok());
}

#[test]
fn bad_ca_files_are_clear_errors() {
    let pki = Pki::new();
    let empty = pki.path("empty-ca.pem");
    std::fs::write(&empty, "").unwrap();
    let err = client_config(Some(&empty), false, &[]).unwrap_err();
    assert!(matches!(err, TlsError::InvalidCa { .. }), "{err}");
    assert!(message_naming(err, &empty).contains("invalid CA file"));

    let garbage = pki.path("garbage-ca.pem");
    let mut text = std::fs::read(&pki.ca.cert_path).unwrap();
    text.extend(b"-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n");
    std::fs::write(&garbage, text).unwrap();
    let err = client_config(Some(&garbage), false, &[]).unwrap_err();
    assert!(matches!(err, TlsError::InvalidCa { .. }), "{err}");
    assert!(message_naming(err, &garbage).contains("certificate #2"));

    let missing = pki.path("missing-ca.pem");
    let err = client_config(Some(&missing), false, &[]).unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");

    // Verification off: the CA file is not read at all.
    assert!(client_config(Some(&missing), true, &[]).is_ok());
}

#[test]
fn without_a_ca_file_the_system_bundle_is_used() {
    if std::env::var_os("SSL_CERT_FILE").is_some() {
        return; // depends on what it points at
    }
    let present = client::SYSTEM_CA_BUNDLES
        .iter()
        .any(|p| Path::new(p).is_file());
    match client_config(None, false, ALPN_H2_HTTP1) {
        Ok(_) => assert!(present),
        Err(TlsError::NoSystemRoots) => assert!(!present),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn the_testing_helper_writes_a_usable_pair() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, pair) = testing::write_ca_and_leaf(dir.path(), &["leaf.test"]);
    assert!(server_config(&pair, &[], ALPN_H2_HTTP1).is_ok());
    assert!(client_config(Some(&ca), false, ALPN_H2_HTTP1).is_ok());
}

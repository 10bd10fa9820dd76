//! Test certificates: a throwaway CA and leaf certificates signed by it, written as PEM files,
//! so tests exercise the same file loading as a real config. (Integration tests may copy the
//! idea; this module is only compiled for unit tests.)

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::CertPair;

/// A self-signed CA whose certificate is written to `<dir>/<name>-ca.pem`.
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    /// The CA certificate (PEM), to trust in a client config.
    pub(crate) cert_path: PathBuf,
}

impl TestCa {
    pub(crate) fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("CA certificate");
        let cert_path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&cert_path, issuer.pem()).expect("write CA certificate");
        TestCa {
            issuer,
            dir: dir.to_path_buf(),
            cert_path,
        }
    }

    /// A server certificate for `names` (DNS names, `*.` wildcards or IP addresses), written to
    /// `<dir>/<stem>.pem` with its key in `<dir>/<stem>.key`.
    pub(crate) fn leaf(&self, stem: &str, names: &[&str]) -> CertPair {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_else(|| stem.to_owned()),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let pair = CertPair {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
        };
        std::fs::write(&pair.cert, cert.pem()).expect("write leaf certificate");
        std::fs::write(&pair.key, key.serialize_pem()).expect("write leaf key");
        pair
    }
}

/// Writes a CA (`<dir>/test-ca.pem`) and one leaf for `names` (`<dir>/leaf.pem`,
/// `<dir>/leaf.key`); returns the CA file and the pair.
pub(crate) fn write_ca_and_leaf(dir: &Path, names: &[&str]) -> (PathBuf, CertPair) {
    let ca = TestCa::new(dir, "test");
    let pair = ca.leaf("leaf", names);
    (ca.cert_path.clone(), pair)
}

//! The listener side: certificates chosen by SNI.
//!
//! rustls ships `ResolvesServerCertUsingSni`, but it matches exact names only; listeners need
//! `*.example.com` wildcards too, so this module has its own resolver. Every name is read from the
//! certificates and lower-cased once, when the config is built; a handshake then costs two hash
//! lookups on a stack buffer and an `Arc` clone, with no allocation.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::{load_certs, load_key, provider, CertPair, TlsError};

/// The longest DNS name (RFC 1035 section 2.3.4, as text without the trailing dot). Longer SNI
/// cannot be valid and gets the default certificate.
const MAX_DNS_NAME_LEN: usize = 253;

/// Builds the `ServerConfig` of an `https` listener.
///
/// `default` is served to clients that send no SNI (e.g. ones that connect by IP address) or a
/// name no certificate covers; `extra` are further pairs chosen by SNI. Every pair, `default`
/// included, is matched against the client's server name: an exact DNS subjectAltName first,
/// then a `*.parent` wildcard, which covers exactly one more label (`x.parent`, not `parent` nor
/// `y.x.parent`). When two certificates claim one name the first listed wins (`default` first).
///
/// Each key is checked against its certificate here, so a mismatched pair is a config error
/// naming both files rather than a handshake that fails for every client later. An `extra`
/// certificate without DNS names is an error too: SNI could never select it.
///
/// TLS 1.3 and 1.2 are offered (1.2 with rustls' ECDHE+AEAD suites only, which is also what
/// HTTP/2 requires, RFC 7540 section 9.2.2). `alpn` lists the protocols offered, in order of
/// preference (see [`super::ALPN_H2_HTTP1`]); an empty list turns ALPN off.
pub fn server_config(
    default: &CertPair,
    extra: &[CertPair],
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut resolver = SniResolver {
        keys: Vec::with_capacity(1 + extra.len()),
        names: NameIndex::default(),
    };
    for (i, pair) in std::iter::once(default).chain(extra).enumerate() {
        let (key, names) = load_pair(pair)?;
        if i > 0 && names.is_empty() {
            return Err(TlsError::NoSubjectNames {
                path: pair.cert.clone(),
            });
        }
        for name in &names {
            if let Some(first) = resolver.names.insert(name, i) {
                tracing::warn!(
                    name = %name,
                    kept = %pair_at(default, extra, first).cert.display(),
                    ignored = %pair.cert.display(),
                    "two TLS certificates claim the same name; SNI selects the first"
                );
            }
        }
        resolver.keys.push(key);
    }
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The pair with index `i` in `default` then `extra` (for messages only).
fn pair_at<'a>(default: &'a CertPair, extra: &'a [CertPair], i: usize) -> &'a CertPair {
    i.checked_sub(1)
        .and_then(|j| extra.get(j))
        .unwrap_or(default)
}

/// Loads one pair, checks the key matches the certificate, and returns the certified key with
/// the certificate's DNS subjectAltNames (wildcards included, as written).
fn load_pair(pair: &CertPair) -> Result<(Arc<CertifiedKey>, Vec<String>), TlsError> {
    let chain = load_certs(&pair.cert)?;
    let key_der = load_key(&pair.key)?;
    let leaf = chain.first().ok_or_else(|| TlsError::NoCertificate {
        path: pair.cert.clone(),
    })?;
    let names = dns_names(&pair.cert, leaf)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::UnsupportedKey {
            path: pair.key.clone(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => {}
        // The ring provider can always give the public key; if a key type ever cannot, we
        // cannot tell, and a real mismatch would show up as failing handshakes.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                cert: pair.cert.clone(),
                key: pair.key.clone(),
            })
        }
        Err(e) => {
            return Err(TlsError::InvalidCertificate {
                path: pair.cert.clone(),
                reason: e.to_string(),
            })
        }
    }
    Ok((Arc::new(certified), names))
}

/// The DNS subjectAltNames of an end-entity certificate. rustls-webpki (already linked by
/// rustls) parses them; its warning against using this list for *verification* does not apply:
/// here it only picks which of our own certificates to present.
fn dns_names(
    path: &Path,
    cert: &rustls::pki_types::CertificateDer<'_>,
) -> Result<Vec<String>, TlsError> {
    let parsed =
        webpki::EndEntityCert::try_from(cert).map_err(|e| TlsError::InvalidCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(parsed.valid_dns_names().map(str::to_owned).collect())
}

/// Picks a listener's certificate from the client's SNI.
#[derive(Debug)]
struct SniResolver {
    /// Index 0 is the default pair.
    keys: Vec<Arc<CertifiedKey>>,
    names: NameIndex,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let i = client_hello
            .server_name()
            .and_then(|sni| self.names.lookup(sni))
            .unwrap_or(0);
        self.keys.get(i).or_else(|| self.keys.first()).cloned()
    }
}

/// Certificate names, lower-cased, to the index of the pair that holds them.
#[derive(Debug, Default)]
struct NameIndex {
    /// `a.example.com` -> pair.
    exact: HashMap<Box<str>, usize>,
    /// `*.example.com` is stored as `example.com` -> pair, so a lookup strips the client's first
    /// label and looks up the rest.
    wildcard: HashMap<Box<str>, usize>,
}

impl NameIndex {
    /// Adds a certificate name; returns the pair that already had it, if any (that one stays).
    fn insert(&mut self, name: &str, pair: usize) -> Option<usize> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let (map, key) = match name.strip_prefix("*.") {
            Some(parent) => (&mut self.wildcard, parent.to_owned()),
            None => (&mut self.exact, name),
        };
        match map.entry(key.into_boxed_str()) {
            Entry::Occupied(e) => Some(*e.get()),
            Entry::Vacant(e) => {
                e.insert(pair);
                None
            }
        }
    }

    /// The pair for a client's server name, if a certificate covers it. Allocation-free: the
    /// name is lower-cased into a stack buffer.
    fn lookup(&self, sni: &str) -> Option<usize> {
        let sni = sni.strip_suffix('.').unwrap_or(sni).as_bytes();
        let mut buf = [0u8; MAX_DNS_NAME_LEN];
        let lower = buf.get_mut(..sni.len())?;
        lower.copy_from_slice(sni);
        lower.make_ascii_lowercase();
        let lower = std::str::from_utf8(lower).ok()?;
        if let Some(&i) = self.exact.get(lower) {
            return Some(i);
        }
        let (label, parent) = lower.split_once('.')?;
        if label.is_empty() {
            return None;
        }
        self.wildcard.get(parent).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(names: &[(&str, usize)]) -> NameIndex {
        let mut index = NameIndex::default();
        for (name, i) in names {
            index.insert(name, *i);
        }
        index
    }

    #[test]
    fn exact_names_match_case_insensitively() {
        let index = index(&[("a.test", 0), ("B.Test", 1)]);
        assert_eq!(index.lookup("a.test"), Some(0));
        assert_eq!(index.lookup("A.TEST"), Some(0));
        assert_eq!(index.lookup("b.test"), Some(1));
        assert_eq!(index.lookup("a.test."), Some(0), "trailing dot");
        assert_eq!(index.lookup("c.test"), None);
        assert_eq!(index.lookup("test"), None);
    }

    #[test]
    fn wildcard_covers_exactly_one_label() {
        let index = index(&[("*.w.test", 2)]);
        assert_eq!(index.lookup("x.w.test"), Some(2));
        assert_eq!(index.lookup("X.W.TEST"), Some(2));
        assert_eq!(index.lookup("w.test"), None, "the parent itself");
        assert_eq!(index.lookup("y.x.w.test"), None, "two labels");
        assert_eq!(index.lookup(".w.test"), None, "empty label");
        assert_eq!(index.lookup("xw.test"), None);
    }

    #[test]
    fn exact_beats_wildcard_and_first_claim_wins() {
        let mut index = index(&[("*.w.test", 1), ("api.w.test", 2)]);
        assert_eq!(index.lookup("api.w.test"), Some(2));
        assert_eq!(index.lookup("web.w.test"), Some(1));
        assert_eq!(index.insert("API.w.test", 3), Some(2));
        assert_eq!(index.insert("*.W.test", 4), Some(1));
        assert_eq!(index.lookup("api.w.test"), Some(2));
        assert_eq!(index.lookup("web.w.test"), Some(1));
    }

    #[test]
    fn overlong_or_odd_names_do_not_panic() {
        let index = index(&[("a.test", 0)]);
        let long = "a".repeat(MAX_DNS_NAME_LEN + 10);
        assert_eq!(index.lookup(&long), None);
        assert_eq!(index.lookup(""), None);
        assert_eq!(index.lookup("."), None);
        assert_eq!(index.lookup("é.test"), None);
    }
}

//! `type = "api_key"`: a request presents a key; the gateway knows only keys' SHA-256 digests.
//!
//! The presented key is hashed and its digest looked up by its first eight bytes; the whole
//! digest is then compared in constant time. What timing could tell an attacker is about
//! digests, from which no key can be worked back. Keys come from the config and from
//! `keys_file`, which is re-read when it changes (`file_watch.rs`), so a key is added or revoked
//! without a reload; an invalid file leaves the keys in force as they were.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::file_watch::FileWatch;
use super::Identity;
use crate::config::{read_api_keys, ApiKeyConfig, ApiKeyEntry};

/// A key's digest and who it identifies.
type Known = ([u8; 32], Arc<Identity>);

/// The keys in force: digests by their first eight bytes.
#[derive(Default)]
struct KeyTable {
    by_prefix: HashMap<u64, Vec<Known>>,
}

impl KeyTable {
    /// A table of these entries; `Err` names a digest that two of them share.
    fn new<'a>(entries: impl Iterator<Item = &'a ApiKeyEntry>) -> Result<KeyTable, String> {
        let mut table = KeyTable::default();
        for entry in entries {
            let slot = table.by_prefix.entry(prefix(&entry.sha256)).or_default();
            if slot.iter().any(|(d, _)| *d == entry.sha256) {
                return Err(format!(
                    "two keys have the same sha256 (consumer \"{}\")",
                    entry.consumer
                ));
            }
            let identity = Identity {
                consumer: HeaderValue::from_str(&entry.consumer)
                    .ok()
                    .map(|v| (Box::from(entry.consumer.as_str()), v)),
                scopes: entry.scopes.iter().map(|s| Box::from(s.as_str())).collect(),
                forward: Box::new([]),
            };
            slot.push((entry.sha256, Arc::new(identity)));
        }
        Ok(table)
    }

    fn find(&self, key: &[u8]) -> Option<Arc<Identity>> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        let candidates = self.by_prefix.get(&prefix(&digest))?;
        let mut found = None;
        // Every candidate is compared in full, whether or not an earlier one matched.
        for (known, identity) in candidates {
            if bool::from(known.ct_eq(&digest)) {
                found = Some(Arc::clone(identity));
            }
        }
        found
    }

    fn len(&self) -> usize {
        self.by_prefix.values().map(Vec::len).sum()
    }
}

fn prefix(digest: &[u8; 32]) -> u64 {
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(first)
}

/// One api_key policy's keys.
pub struct ApiKeys {
    table: Arc<ArcSwap<KeyTable>>,
    /// Re-reads `keys_file` while the policy is in use.
    _watch: Option<FileWatch>,
}

impl ApiKeys {
    pub fn new(policy: &str, config: &ApiKeyConfig) -> ApiKeys {
        let inline = config.keys.clone();
        let table = Arc::new(ArcSwap::from_pointee(
            KeyTable::new(inline.iter()).unwrap_or_default(),
        ));
        // Watched first, read second: a change between the two is seen.
        let watch = config.keys_file.clone().map(|path| {
            let target = Arc::clone(&table);
            let policy = policy.to_string();
            let inline = inline.clone();
            let watched = path.clone();
            FileWatch::start(path, move || reread(&policy, &watched, &inline, &target))
        });
        if let Some(path) = &config.keys_file {
            reread(policy, path, &inline, &table);
        }
        ApiKeys {
            table,
            _watch: watch,
        }
    }

    /// The identity of the key presented, if it is one in force.
    pub fn find(&self, key: &[u8]) -> Option<Arc<Identity>> {
        self.table.load().find(key)
    }
}

/// Called when `keys_file` changed: the config's keys and the file's, or the keys in force
/// as they were when the file is unreadable or invalid.
fn reread(policy: &str, path: &Path, inline: &[ApiKeyEntry], target: &ArcSwap<KeyTable>) {
    let read = read_api_keys(path).and_then(|file| KeyTable::new(inline.iter().chain(&file)));
    match read {
        Ok(table) => {
            tracing::info!(policy, keys = table.len(), file = %path.display(), "api keys read");
            target.store(Arc::new(table));
        }
        Err(why) => {
            tracing::error!(
                policy,
                "api keys file not applied, the keys in force stay: {why}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, consumer: &str) -> ApiKeyEntry {
        ApiKeyEntry {
            sha256: Sha256::digest(key.as_bytes()).into(),
            consumer: consumer.into(),
            scopes: vec!["read".into()],
        }
    }

    #[test]
    fn keys_are_found_by_their_digest_only() {
        let entries = [entry("k1", "a"), entry("k2", "b")];
        let table = KeyTable::new(entries.iter()).unwrap();
        let found = table.find(b"k2").unwrap();
        assert_eq!(found.consumer.as_ref().unwrap().0.as_ref(), "b");
        assert_eq!(&*found.scopes, [Box::from("read")]);
        assert!(table.find(b"k3").is_none());
        assert!(table.find(b"").is_none());
        let twice = [entry("k1", "a"), entry("k1", "b")];
        assert!(KeyTable::new(twice.iter()).is_err());
    }
}

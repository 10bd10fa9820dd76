//! `type = "jwt"`: a bearer token (or a header's, or a cookie's) verified with the policy's keys
//! (`jose`), its claims checked, and the consumer, scopes and forwarded claims taken from it.
//! Verified tokens are cached (`token_cache.rs`) until they expire or the key set changes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderName, HeaderValue};
use serde_json::Value;

use super::key_source::{KeySource, Versioned};
use super::token_cache::{TokenCache, NO_EXPIRY_SECONDS};
use super::Identity;
use crate::config::{check_consumer, JwtConfig};
use crate::jose::claims::{Claims, Rules};
use crate::jose::{jws, Algorithm, Rejection};

/// How a token fared.
pub enum Verdict {
    /// Verified now (`cached = false`) or earlier.
    Verified {
        identity: Arc<Identity>,
        cached: bool,
    },
    Refused(Rejection),
    /// No key set has ever been loaded: the gateway cannot tell.
    Unavailable,
}

pub struct JwtVerifier {
    algorithms: Box<[Algorithm]>,
    rules: Rules,
    consumer_claim: Box<str>,
    scopes_claim: Box<str>,
    forward_claims: Box<[(HeaderName, Box<str>)]>,
    keys: Arc<KeySource>,
    cache: TokenCache,
    /// The key-set generation the cache's entries were verified under: when the set changes,
    /// the cache is emptied (its entries would not be used anyway).
    cached_generation: AtomicU64,
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig, keys: Arc<KeySource>) -> JwtVerifier {
        JwtVerifier {
            algorithms: config.algorithms.clone().into(),
            rules: config.rules.clone(),
            consumer_claim: config.consumer_claim.as_str().into(),
            scopes_claim: config.scopes_claim.as_str().into(),
            forward_claims: config
                .forward_claims
                .iter()
                .map(|(h, c)| (h.clone(), Box::from(c.as_str())))
                .collect(),
            keys,
            cache: TokenCache::default(),
            cached_generation: AtomicU64::new(0),
        }
    }

    pub async fn verify(&self, token: &[u8]) -> Verdict {
        let now = unix_now();
        let Some(mut keys) = self.keys.current() else {
            return Verdict::Unavailable;
        };
        if self.cached_generation.load(Ordering::Relaxed) != keys.generation
            && self
                .cached_generation
                .swap(keys.generation, Ordering::Relaxed)
                != keys.generation
        {
            self.cache.clear();
        }
        if let Some(identity) = self.cache.get(token, keys.generation, now) {
            return Verdict::Verified {
                identity,
                cached: true,
            };
        }
        let parsed = match jws::parse(token, &self.algorithms) {
            Ok(parsed) => parsed,
            Err(why) => return Verdict::Refused(why),
        };
        let mut checked = parsed.verify(&keys.set);
        // A kid the set lacks may be a key the IdP has just rotated in: ask for a refetch, then
        // check against the set in force afterwards, whichever fetch installed it (another
        // request's refetch may have finished since this one loaded the set).
        if let (Err(Rejection::UnknownKey), Some(kid)) = (checked, parsed.kid.as_deref()) {
            if !keys.set.has_kid(kid) {
                Box::pin(self.keys.refetch_for_unknown_kid()).await;
                if let Some(fresh) = self.keys.current() {
                    if fresh.generation != keys.generation {
                        keys = fresh;
                        checked = parsed.verify(&keys.set);
                    }
                }
            }
        }
        if let Err(why) = checked {
            return Verdict::Refused(why);
        }
        match self.accept(parsed.payload(), &keys, token, now) {
            Ok(identity) => Verdict::Verified {
                identity,
                cached: false,
            },
            Err(why) => Verdict::Refused(why),
        }
    }

    /// Checks a verified token's claims and makes its identity (cached for next time).
    fn accept(
        &self,
        payload: &[u8],
        keys: &Versioned,
        token: &[u8],
        now: f64,
    ) -> Result<Arc<Identity>, Rejection> {
        let claims = Claims::parse(payload)?;
        let exp = claims.check(&self.rules, now)?;
        // A consumer the gateway cannot pass on as it is (over 256 bytes, control characters,
        // spaces at its ends) makes the token unusable rather than silently anonymous.
        // The claim must be a string (RFC 7519 §4.1.2's StringOrURI for `sub`): `123` and
        // `["a","b"]` are not names.
        let consumer = match claims.get(&self.consumer_claim) {
            None | Some(Value::Null) => None,
            Some(Value::String(text)) if text.is_empty() => None,
            Some(Value::String(text)) => {
                match (check_consumer(text), HeaderValue::from_str(text)) {
                    (Ok(()), Ok(value)) => Some((Box::from(text.as_str()), value)),
                    _ => return Err(Rejection::BadClaims),
                }
            }
            Some(_) => return Err(Rejection::BadClaims),
        };
        let forward = self
            .forward_claims
            .iter()
            .filter_map(|(header, claim)| {
                let text = claims.text(claim)?;
                let value = HeaderValue::from_str(&text).ok()?;
                Some((header.clone(), value))
            })
            .collect();
        let identity = Arc::new(Identity {
            consumer,
            scopes: claims.scopes(&self.scopes_claim).into(),
            forward,
        });
        let until = match exp {
            Some(exp) => exp + self.rules.leeway.as_secs_f64(),
            None => now + NO_EXPIRY_SECONDS,
        };
        self.cache
            .insert(token, Arc::clone(&identity), until, keys.generation, now);
        Ok(identity)
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

//! Rate limiting (SPEC 2.2): a token bucket per key (`gcra.rs`), kept in this process
//! (`local.rs`, shared by every worker) or in Redis (`redis_store.rs`, shared by every instance).
//! Where a request is refused for its rate: [`Limiter::on_request`].
//!
//! When Redis fails (or answers later than `[redis] timeout`), `on_store_error` decides:
//! `"local"` counts the request in this instance's own bucket for the key, with the policy's
//! full capacity (so during an outage N instances let through up to N × the limit); `"allow"`
//! lets it through; `"deny"` refuses it with 429. Those decisions are counted and logged as
//! `error_allowed` / `error_denied`.
//!
//! The key is the client's address (behind `trusted_proxies`, the address they forwarded for),
//! a header's value, or the route. A request without the header is counted under one shared
//! "anonymous" bucket of the policy: leaving the header out is not a way around the limit.
//! Keys are hashed before they are stored (with a per-process seed here, SHA-256 in Redis), so
//! their length and bytes (64 KiB of header, bytes that are not UTF-8) cost nothing more than an
//! address.
//!
//! A refused request gets 429 `rate_limited` (gRPC: `RESOURCE_EXHAUSTED`) with `Retry-After`;
//! refused and allowed responses carry `RateLimit-Limit`, `RateLimit-Remaining` and
//! `RateLimit-Reset` unless the policy says `headers = false`.

mod gcra;
mod local;
mod redis_store;

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use xxhash_rust::xxh3::{xxh3_64_with_seed, Xxh3};

use super::{Applied, Flow, Refusal, RequestCx};
use crate::answer::GatewayError;
use crate::config::{Config, LimitKey, LimitStore, OnStoreError, RateLimitConfig, RedisConfig};
use crate::observe::metrics::{self, Counter};
use crate::observe::names;
use gcra::{Gcra, Verdict};
use local::LocalStore;
use redis_store::{Bucket, RedisStore};

pub use local::BYTES_PER_KEY;

/// The step's name in the access log and in `/api/v1/status`.
pub const STEP: &str = "rate_limit";

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// How often passed buckets are dropped, at most.
const SWEEP_INTERVAL: Duration = Duration::from_secs(15);

/// The live state of every rate-limit policy, kept across reloads by policy name.
pub struct Registry {
    local: Mutex<HashMap<String, Arc<LocalStore>>>,
    /// The `[redis]` store, kept while its settings stay the same (its connections with it).
    redis: Mutex<Option<Arc<RedisStore>>>,
    /// Seeds every key hash: chosen at random per process, so which keys collide cannot be
    /// worked out in advance.
    seed: u64,
    /// Nanoseconds since `epoch` of the last sweep.
    swept: AtomicU64,
    epoch: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            local: Mutex::default(),
            redis: Mutex::default(),
            seed: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            swept: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Registry {
    /// The policy's limiter, with the buckets it had in the previous config if it was there.
    /// The store of `[redis]`, the same one as long as its settings do not change.
    fn redis(&self, config: &RedisConfig) -> Arc<RedisStore> {
        let mut current = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        match &*current {
            Some(store) if store.config() == config => Arc::clone(store),
            _ => {
                let store = Arc::new(RedisStore::new(config.clone()));
                *current = Some(Arc::clone(&store));
                store
            }
        }
    }

    pub fn limiter(
        &self,
        policy: &RateLimitConfig,
        redis: Option<&RedisConfig>,
        metrics: &metrics::Registry,
    ) -> Limiter {
        let store = {
            let mut stores = self.local.lock().unwrap_or_else(|e| e.into_inner());
            let store = stores
                .entry(policy.name.clone())
                .or_insert_with(|| Arc::new(LocalStore::new(policy.max_keys)));
            store.set_max_keys(policy.max_keys);
            Arc::clone(store)
        };
        let held = Arc::clone(&store);
        metrics.gauge_fn(
            names::RATE_LIMIT_BUCKETS,
            names::RATE_LIMIT_BUCKETS_HELP,
            &[(names::label::POLICY, policy.name.as_str())],
            Arc::new(move || i64::try_from(held.len()).unwrap_or(i64::MAX)),
        );
        let counter = |decision: &str| {
            metrics.counter(
                names::RATE_LIMIT_DECISIONS_TOTAL,
                names::RATE_LIMIT_DECISIONS_TOTAL_HELP,
                &[
                    (names::label::POLICY, policy.name.as_str()),
                    (names::label::DECISION, decision),
                ],
            )
        };
        let shared = match (policy.store, redis) {
            (LimitStore::Redis, Some(config)) => Some(Shared {
                store: self.redis(config),
                bucket: Bucket::new(policy.capacity, policy.refill_per_second),
                on_error: policy.on_store_error,
                prefix: format!("sluicegate:rl:{}:", policy.name).into_bytes(),
            }),
            _ => None,
        };
        Limiter {
            name: Arc::from(policy.name.as_str()),
            key: policy.key.clone(),
            gcra: Gcra::new(policy.capacity, policy.refill_per_second),
            headers: policy.headers,
            local: store,
            shared,
            seed: self.seed,
            allowed: counter("allowed"),
            limited: counter("limited"),
            error_allowed: counter("error_allowed"),
            error_denied: counter("error_denied"),
        }
    }

    /// Forgets the buckets of policies `config` no longer has.
    pub fn retain(&self, config: &Config) {
        self.local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| config.rate_limits.iter().any(|p| p.name == *name));
    }

    /// Drops buckets that are full again, at most once per [`SWEEP_INTERVAL`] whoever calls.
    pub fn sweep(&self) {
        let now = Instant::now();
        let at = u64::try_from(now.duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let last = self.swept.load(Ordering::Relaxed);
        let due = last == 0 || at.saturating_sub(last) >= SWEEP_INTERVAL.as_nanos() as u64;
        if !due
            || self
                .swept
                .compare_exchange(last, at.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let stores: Vec<Arc<LocalStore>> = self
            .local
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for store in stores {
            store.sweep(now);
        }
    }
}

/// One policy, compiled: what it counts by, its bucket, and where the buckets live.
pub struct Limiter {
    name: Arc<str>,
    key: LimitKey,
    gcra: Gcra,
    headers: bool,
    /// This process's buckets: the store of a local policy, the fallback of a Redis one.
    local: Arc<LocalStore>,
    /// For `store = "redis"`.
    shared: Option<Shared>,
    seed: u64,
    allowed: Counter,
    limited: Counter,
    error_allowed: Counter,
    error_denied: Counter,
}

/// A policy's buckets in Redis.
struct Shared {
    store: Arc<RedisStore>,
    bucket: Bucket,
    on_error: OnStoreError,
    /// `sluicegate:rl:POLICY:`, before the key's digest.
    prefix: Vec<u8>,
}

/// How a verdict was reached, for the metric and the log.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// By the policy's store.
    Store,
    /// Without it: Redis failed, and `on_store_error` decided.
    Fallback,
}

impl Limiter {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes a token for the request, or refuses it with 429.
    pub(super) async fn on_request(&self, cx: &RequestCx<'_>, applied: &mut Applied) -> Flow {
        // Counting per consumer reads the identity the auth step (which runs first) set.
        let identity = match self.key {
            LimitKey::Consumer => applied.identity(),
            _ => None,
        };
        // The auth policy's name goes with the consumer's: "alice" of an IdP and the "alice"
        // API key are not one client.
        let consumer_key: Option<Vec<u8>> = identity.as_ref().and_then(|(policy, identity)| {
            let (name, _) = identity.consumer.as_ref()?;
            Some([policy.name().as_bytes(), b"\0", name.as_bytes()].concat())
        });
        let consumer = consumer_key.as_deref();
        let Some(shared) = &self.shared else {
            let verdict = self
                .local
                .check(&self.gcra, self.key_hash(cx, consumer), cx.now);
            return self.conclude(&verdict, Source::Store, applied);
        };
        let key = self.redis_key(shared, cx, consumer);
        match shared.store.check(&key, shared.bucket).await {
            Ok(verdict) => self.conclude(&verdict, Source::Store, applied),
            Err(_) => match shared.on_error {
                OnStoreError::Local => {
                    let verdict = self
                        .local
                        .check(&self.gcra, self.key_hash(cx, consumer), cx.now);
                    self.conclude(&verdict, Source::Fallback, applied)
                }
                OnStoreError::Allow => {
                    self.error_allowed.inc();
                    applied.decide((STEP, "error_allowed"));
                    Flow::Continue
                }
                OnStoreError::Deny => {
                    let refused = Verdict {
                        allowed: false,
                        remaining: 0,
                        reset_ns: 0,
                        retry_after_ns: 1_000_000_000,
                    };
                    self.conclude(&refused, Source::Fallback, applied)
                }
            },
        }
    }

    /// Counts the verdict, records it for the log and the response, and refuses if it says so.
    fn conclude(&self, verdict: &Verdict, source: Source, applied: &mut Applied) -> Flow {
        let quota = Quota::of(&self.gcra, verdict);
        let fallback = source == Source::Fallback;
        if verdict.allowed {
            let (counter, decision) = if fallback {
                (&self.error_allowed, "error_allowed")
            } else {
                (&self.allowed, "allowed")
            };
            counter.inc();
            applied.decide((STEP, decision));
            if self.headers {
                applied.rate_limit = Some(quota);
            }
            return Flow::Continue;
        }
        let (counter, decision) = if fallback {
            (&self.error_denied, "error_denied")
        } else {
            (&self.limited, "limited")
        };
        counter.inc();
        applied.decide((STEP, decision));
        let retry_after = verdict.retry_after_ns.div_ceil(1_000_000_000).max(1);
        let mut headers = vec![(http::header::RETRY_AFTER, HeaderValue::from(retry_after))];
        if self.headers {
            headers.extend(quota.fields());
        }
        Flow::Answer(Refusal {
            error: GatewayError::RateLimited,
            headers,
        })
    }

    /// The request's key for this process's buckets, hashed with the process's seed.
    fn key_hash(&self, cx: &RequestCx<'_>, consumer: Option<&[u8]>) -> u64 {
        if let LimitKey::ClientIp = self.key {
            // The common case, in one call.
            return match client_ip(cx) {
                IpAddr::V4(ip) => xxh3_64_with_seed(&ip.octets(), self.seed),
                IpAddr::V6(ip) => xxh3_64_with_seed(&ip.octets(), self.seed),
            };
        }
        let mut hasher = Xxh3::with_seed(self.seed);
        self.feed_key(cx, consumer, &mut |bytes| hasher.update(bytes));
        hasher.digest()
    }

    /// The request's bucket in Redis: `sluicegate:rl:POLICY:` and 32 hex digits of the key's
    /// SHA-256, the same in every instance whatever the key's length or bytes (and not
    /// something a client can aim at another client's bucket, as a fast hash with a known seed
    /// would be).
    fn redis_key(&self, shared: &Shared, cx: &RequestCx<'_>, consumer: Option<&[u8]>) -> Vec<u8> {
        use sha2::Digest;
        let mut digest = sha2::Sha256::new();
        self.feed_key(cx, consumer, &mut |bytes| digest.update(bytes));
        let digest = digest.finalize();
        let mut key = Vec::with_capacity(shared.prefix.len() + 32);
        key.extend_from_slice(&shared.prefix);
        for b in &digest[..16] {
            key.extend_from_slice(format!("{b:02x}").as_bytes());
        }
        key
    }

    /// The key's bytes, each kind tagged so that a header value never shares a bucket with the
    /// anonymous one, nor an address with a header. `consumer` is the authenticated consumer.
    fn feed_key(&self, cx: &RequestCx<'_>, consumer: Option<&[u8]>, sink: &mut dyn FnMut(&[u8])) {
        match &self.key {
            LimitKey::ClientIp => match client_ip(cx) {
                IpAddr::V4(ip) => sink(&ip.octets()),
                IpAddr::V6(ip) => sink(&ip.octets()),
            },
            LimitKey::Header(name) => {
                let mut values = cx.headers.get_all(name).iter().peekable();
                if values.peek().is_none() {
                    sink(b"\0anonymous");
                    return;
                }
                sink(b"\x01");
                for value in values {
                    sink(value.as_bytes());
                    sink(b",");
                }
            }
            // Validation requires auth on a route counting per consumer. A credential that
            // names no consumer (a token without the claim) counts in one shared bucket.
            LimitKey::Consumer => match consumer {
                Some(name) => {
                    sink(b"\x03");
                    sink(name);
                }
                None => sink(b"\0anonymous-consumer"),
            },
            LimitKey::Route => sink(b"\x02route"),
        }
    }
}

/// The client's address: the peer's, or behind trusted proxies the last `X-Forwarded-For`
/// address that is not one of them (each proxy appends the address it received from, so
/// everything left of the last trusted hop could have been written by the client).
fn client_ip(cx: &RequestCx<'_>) -> IpAddr {
    let peer = cx.peer.to_canonical();
    let Some(trusted) = cx.trusted_proxies else {
        return peer;
    };
    let mut client = peer;
    for value in cx.headers.get_all(X_FORWARDED_FOR).iter().rev() {
        for element in value.as_bytes().rsplit(|&b| b == b',') {
            // An element no address can be read from ends what can be trusted: the last
            // trusted hop is then the client as far as the gateway can tell.
            let Some(ip) = forwarded_ip(element) else {
                return client;
            };
            client = ip.to_canonical();
            if !trusted.iter().any(|c| c.contains(client)) {
                return client;
            }
        }
    }
    client
}

/// The address in one `X-Forwarded-For` element: `1.2.3.4`, `2001:db8::1`, and the forms some
/// proxies write with a port, `1.2.3.4:5678`, `[2001:db8::1]` and `[2001:db8::1]:5678`.
fn forwarded_ip(element: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(element).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port_ok = after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        return port_ok.then(|| inside.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6))?;
    }
    let (host, port) = text.split_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// What the `RateLimit-*` fields say about a key's bucket after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    limit: u64,
    remaining: u64,
    /// Seconds until the bucket is full again.
    reset: u64,
}

impl Quota {
    fn of(gcra: &Gcra, verdict: &Verdict) -> Quota {
        Quota {
            limit: gcra.capacity,
            remaining: verdict.remaining,
            reset: verdict.reset_ns.div_ceil(1_000_000_000),
        }
    }

    fn fields(&self) -> [(HeaderName, HeaderValue); 3] {
        [
            (RATELIMIT_LIMIT, HeaderValue::from(self.limit)),
            (RATELIMIT_REMAINING, HeaderValue::from(self.remaining)),
            (RATELIMIT_RESET, HeaderValue::from(self.reset)),
        ]
    }

    pub(super) fn add_to(&self, headers: &mut HeaderMap) {
        for (name, value) in self.fields() {
            headers.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Cidr;

    static ROOT: std::sync::LazyLock<http::Uri> =
        std::sync::LazyLock::new(|| http::Uri::from_static("/"));

    fn cx<'a>(peer: &str, headers: &'a HeaderMap, trusted: Option<&'a [Cidr]>) -> RequestCx<'a> {
        RequestCx {
            peer: peer.parse().unwrap(),
            trusted_proxies: trusted,
            headers,
            uri: &ROOT,
            now: Instant::now(),
        }
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_last_untrusted_hop() {
        let trusted = [Cidr {
            addr: "10.0.0.0".parse().unwrap(),
            prefix: 8,
        }];
        let mut headers = HeaderMap::new();
        headers.append(X_FORWARDED_FOR, "6.6.6.6, 1.2.3.4".parse().unwrap());
        headers.append(X_FORWARDED_FOR, "10.0.0.9".parse().unwrap());
        let from_proxy = cx("10.0.0.1", &headers, Some(&trusted));
        assert_eq!(client_ip(&from_proxy), "1.2.3.4".parse::<IpAddr>().unwrap());
        // From anyone else, the header is the client's own say: ignored.
        let direct = cx("192.0.2.7", &headers, None);
        assert_eq!(client_ip(&direct), "192.0.2.7".parse::<IpAddr>().unwrap());
        // A v4-mapped peer is the same client as its v4 form.
        let mapped = cx("::ffff:192.0.2.7", &headers, None);
        assert_eq!(client_ip(&mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn forwarded_elements_with_ports_and_brackets() {
        let ip = |s: &str| forwarded_ip(s.as_bytes());
        assert_eq!(ip(" 1.2.3.4 "), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(ip("1.2.3.4:5678"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(ip("2001:db8::1"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(ip("[2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(
            ip("[2001:db8::1]:443"),
            Some("2001:db8::1".parse().unwrap())
        );
        for bad in [
            "unknown",
            "1.2.3.4:",
            "1.2.3.4:x",
            "[1.2.3.4]",
            "[::1]x",
            "\u{e9}",
            "",
        ] {
            assert_eq!(ip(bad), None, "{bad:?}");
        }
        assert_eq!(forwarded_ip(b"\xff1.2.3.4"), None);
    }

    #[test]
    fn quota_fields() {
        let g = Gcra::new(10, 1.0);
        let (v, _) = g.check(0, 5_000_000_000);
        let mut headers = HeaderMap::new();
        Quota::of(&g, &v).add_to(&mut headers);
        assert_eq!(headers["ratelimit-limit"], "10");
        assert_eq!(headers["ratelimit-remaining"], "9");
        assert_eq!(headers["ratelimit-reset"], "1");
    }
}

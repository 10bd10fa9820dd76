//! A caching route's side of a request: look the request up, answer it from the store when RFC
//! 9111 allows, and otherwise say how its response is to be stored as it streams to the client.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use sha2::{Digest, Sha256};

use super::conditional;
use super::directives::CacheControl;
use super::freshness::{self, RequestHead, ResponseHead, Reuse, RouteRules, Timing};
use super::key::{PrimaryKey, VaryOn};
use super::store::{tags_of, Entry, MemoryStore};
use crate::config::RouteCacheConfig;
use crate::observe::metrics::{self, Counter};
use crate::observe::names;

/// `x-cache` (SPEC 2.4).
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const HIT: HeaderValue = HeaderValue::from_static("HIT");
const MISS: HeaderValue = HeaderValue::from_static("MISS");
const BYPASS: HeaderValue = HeaderValue::from_static("BYPASS");

/// A route's cache: its rules and the store it shares with every caching route.
pub struct RouteCache {
    store: Arc<MemoryStore>,
    ttl: Option<Duration>,
    statuses: Box<[u16]>,
    vary: Box<[HeaderName]>,
    store_set_cookie: bool,
    max_object_bytes: u64,
    /// `sluicegate_cache_lookups_total{route, result}`: success = a hit, failure = a miss.
    hits: Counter,
    misses: Counter,
}

/// A stored response to send (a 200-like answer, or a 304 to a conditional request).
pub struct Hit {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Empty for HEAD and 304.
    pub body: Bytes,
}

/// What a lookup found.
pub enum Lookup {
    Hit(Hit),
    /// Forward it; `Pending` says how to store the response.
    Miss(Pending),
    /// Not a request the cache answers (not GET or HEAD); for an unsafe method, the key whose
    /// stored responses its success invalidates.
    Bypass(Option<PrimaryKey>),
}

/// A miss on its way upstream.
pub struct Pending {
    key: PrimaryKey,
    /// Only GET responses are stored (a HEAD's has no body).
    method: Method,
    request_time: SystemTime,
    request: HeaderMap,
}

impl RouteCache {
    pub fn new(
        route: &str,
        config: &RouteCacheConfig,
        store: Arc<MemoryStore>,
        max_object_bytes: u64,
        metrics: &metrics::Registry,
    ) -> RouteCache {
        let counter = |result: &str| {
            metrics.counter(
                names::CACHE_LOOKUPS_TOTAL,
                names::CACHE_LOOKUPS_TOTAL_HELP,
                &[(names::label::ROUTE, route), (names::label::RESULT, result)],
            )
        };
        RouteCache {
            store,
            ttl: config.ttl,
            statuses: config.statuses.clone().into(),
            vary: config.vary.clone().into(),
            store_set_cookie: config.store_set_cookie,
            max_object_bytes,
            hits: counter(names::value::SUCCESS),
            misses: counter(names::value::FAILURE),
        }
    }

    /// The key of a request: its host, path and query, and who it is for when it carries
    /// credentials (the consumer the route's auth found, else a digest of its `Authorization`),
    /// so that a response stored for one is never served to another.
    fn key(uri: &Uri, host: &str, headers: &HeaderMap, consumer: Option<&str>) -> PrimaryKey {
        let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
        let credential = consumer.map(str::to_string).or_else(|| {
            headers.get(header::AUTHORIZATION).map(|v| {
                let digest = Sha256::digest(v.as_bytes());
                digest[..16].iter().map(|b| format!("{b:02x}")).collect()
            })
        });
        PrimaryKey::new(host, path, credential.as_deref())
    }

    /// Looks a request up (RFC 9111 §4). A fresh stored response is answered (304 to a
    /// conditional request that matches it); anything else goes upstream.
    pub fn lookup(
        &self,
        method: &Method,
        uri: &Uri,
        host: &str,
        headers: &HeaderMap,
        consumer: Option<&str>,
        now: SystemTime,
    ) -> Lookup {
        let key = Self::key(uri, host, headers, consumer);
        if method != Method::GET && method != Method::HEAD {
            let safe = matches!(*method, Method::OPTIONS | Method::TRACE);
            return Lookup::Bypass((!safe).then_some(key));
        }
        let request_cc = CacheControl::from_headers(headers);
        if let Some(entry) = self.store.get(&key, headers) {
            // Stale entries go upstream whole for now: serving stale, and revalidating with
            // the entry's validators, are allowed but not required (RFC 9111 §4.2.4, §4.3).
            if reuse_now(&entry, &request_cc, now) {
                self.hits.inc();
                return Lookup::Hit(answer(&entry, method, headers, now));
            }
        }
        self.misses.inc();
        Lookup::Miss(Pending {
            key,
            method: method.clone(),
            request_time: now,
            request: headers.clone(),
        })
    }

    /// The store step for a miss's response: `Some(store)` to call with the whole body when it
    /// has streamed through (within `max_object_bytes`, without trailers), or `None` when the
    /// response is not stored.
    pub fn fill(
        &self,
        pending: Pending,
        status: StatusCode,
        response: &HeaderMap,
        now: SystemTime,
    ) -> Option<Filling> {
        if pending.method != Method::GET {
            return None;
        }
        let request_cc = CacheControl::from_headers(&pending.request);
        let response_cc = CacheControl::from_headers(response);
        let lifetime = freshness::storable(
            RequestHead {
                method: &pending.method,
                headers: &pending.request,
                cc: &request_cc,
            },
            ResponseHead {
                status,
                headers: response,
                cc: &response_cc,
                time: now,
            },
            RouteRules {
                ttl: self.ttl,
                statuses: &self.statuses,
                store_set_cookie: self.store_set_cookie,
            },
        )
        .ok()?;
        let declared = response
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_object_bytes) {
            return None;
        }
        let vary = VaryOn::new(response, &self.vary)?;
        let mut headers = response.clone();
        headers.remove(header::AGE);
        headers.remove(X_CACHE);
        let timing = Timing::new(response, pending.request_time, now, lifetime);
        Some(Filling {
            store: Arc::clone(&self.store),
            limit: self.max_object_bytes,
            vary,
            request: pending.request,
            entry: Entry {
                key: pending.key,
                status,
                tags: tags_of(response),
                cc: response_cc,
                timing,
                headers,
                body: Bytes::new(),
            },
        })
    }

    /// After an unsafe method's non-error response, stored responses for its target are no
    /// longer used (RFC 9111 §4.4).
    pub fn invalidate(&self, key: &PrimaryKey, status: StatusCode) {
        if status.is_success() || status.is_redirection() {
            self.store.forget(key);
        }
    }

    /// Marks a response that went upstream: MISS, or BYPASS for requests the cache does not
    /// answer.
    pub fn mark(headers: &mut HeaderMap, looked_up: bool) {
        headers.insert(X_CACHE, if looked_up { MISS } else { BYPASS });
    }
}

/// Whether a stored entry answers this request now without the upstream.
fn reuse_now(entry: &Entry, request_cc: &CacheControl, now: SystemTime) -> bool {
    freshness::reuse(&entry.timing, &entry.cc, request_cc, now) == Reuse::Fresh
}

/// The answer from a stored entry: 304 when the request's conditions hold for it, else the
/// stored response (without a body for HEAD), with `Age` and `x-cache: HIT`.
fn answer(entry: &Entry, method: &Method, request: &HeaderMap, now: SystemTime) -> Hit {
    let age = entry.timing.age(now).as_secs();
    let (status, mut headers, body) =
        if conditional::not_modified(request, &entry.headers, entry.timing.response_time) {
            (
                StatusCode::NOT_MODIFIED,
                conditional::not_modified_fields(&entry.headers),
                Bytes::new(),
            )
        } else if method == Method::HEAD {
            (entry.status, entry.headers.clone(), Bytes::new())
        } else {
            (entry.status, entry.headers.clone(), entry.body.clone())
        };
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.insert(X_CACHE, HIT);
    Hit {
        status,
        headers,
        body,
    }
}

/// A response being stored as it streams.
pub struct Filling {
    store: Arc<MemoryStore>,
    limit: u64,
    vary: VaryOn,
    request: HeaderMap,
    entry: Entry,
}

impl Filling {
    /// The most body bytes it takes; a longer body is not stored.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Stores the response with its whole `body`.
    pub fn store(mut self, body: Bytes) {
        self.entry.body = body;
        self.store.insert(self.entry, self.vary, &self.request);
    }
}

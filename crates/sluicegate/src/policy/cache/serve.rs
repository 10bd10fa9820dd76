//! A caching route's side of a request: look the request up, answer it from the store when RFC
//! 9111 allows, and otherwise say how its response is to be stored as it streams to the client.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Uri};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::conditional;
use super::directives::CacheControl;
use super::freshness::{self, RequestHead, ResponseHead, Reuse, RouteRules, Timing};
use super::key::{keyed_query, keyed_query_readings, PrimaryKey, VaryOn};
use super::shared::SharedTier;
use super::store::{tags_of, Entry, MemoryStore};
use crate::config::{CacheKey, CacheKeyQuery, RouteCacheConfig};
use crate::observe::metrics::{self, Counter};
use crate::observe::names;

/// `x-cache` (SPEC 2.4).
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
const HIT: HeaderValue = HeaderValue::from_static("HIT");
const MISS: HeaderValue = HeaderValue::from_static("MISS");
const BYPASS: HeaderValue = HeaderValue::from_static("BYPASS");
const STALE: HeaderValue = HeaderValue::from_static("STALE");

/// A route's cache: its rules and the store it shares with every caching route.
pub struct RouteCache {
    /// What keeps this route's keys apart from other routes' and schemes': `"ROUTE http"` and
    /// `"ROUTE https"`, made once.
    scopes: [Box<str>; 2],
    store: Arc<MemoryStore>,
    /// `store = "memory+redis"`: where a memory miss looks next, and fills go too.
    shared: Option<Arc<SharedTier>>,
    ttl: Option<Duration>,
    statuses: Box<[u16]>,
    vary: Box<[HeaderName]>,
    store_set_cookie: bool,
    /// The route's `key`; `None`: host, path and query.
    key: Option<CacheKey>,
    max_object_bytes: u64,
    /// `sluicegate_cache_lookups_total{route, result}`: success = a hit, failure = a miss.
    hits: Counter,
    misses: Counter,
    flights: Arc<Flights>,
    /// Keys being refreshed in the background (`stale-while-revalidate`), one refresh each.
    refreshing: Arc<Mutex<HashSet<PrimaryKey>>>,
}

/// The claim on a key's background refresh: released when dropped (the refresh done, or
/// failed).
pub struct Refresh {
    refreshing: Arc<Mutex<HashSet<PrimaryKey>>>,
    key: PrimaryKey,
}

impl Drop for Refresh {
    fn drop(&mut self) {
        let mut keys = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        keys.remove(&self.key);
    }
}

/// What the cache reads of a request.
#[derive(Clone, Copy)]
pub struct CacheRequest<'a> {
    pub method: &'a Method,
    pub uri: &'a Uri,
    /// The `Host` as the upstream gets it.
    pub host: &'a str,
    pub headers: &'a HeaderMap,
    /// Whether the client connection is TLS.
    pub tls: bool,
    /// The consumer the route's auth found.
    pub consumer: Option<&'a str>,
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
    /// A stale response within its `stale-while-revalidate`: sent now (`x-cache: STALE`); with
    /// a `Refresh`, this request is the one to have it revalidated in the background (RFC
    /// 5861 §3), by a request of the caller's that skips the stored response.
    Stale(Hit, Option<Refresh>),
    /// Forward it; `Pending` says how to store the response.
    Miss(Pending),
    /// Another request is fetching this key now: wait for its response to be stored (the
    /// receiver changes, or closes, when that fetch ends), then look again.
    Wait(watch::Receiver<()>),
    /// The request asked for a stored response only (`only-if-cached`) and none answers it:
    /// 504 (RFC 9111 §5.2.1.7).
    NotCached,
    /// Not a request the cache answers (not GET or HEAD, or a query a route's `key` cannot
    /// read unambiguously); for an unsafe method, the targets whose stored responses its
    /// success invalidates.
    Bypass(Vec<PrimaryKey>),
}

impl Lookup {
    /// The lookup's result as its trace span says it (`hit`, `stale`, `miss`, `bypass`).
    pub fn result(&self) -> &'static str {
        match self {
            Lookup::Hit(_) => "hit",
            Lookup::Stale(..) => "stale",
            Lookup::Miss(_) | Lookup::NotCached => "miss",
            Lookup::Wait(_) => "wait",
            Lookup::Bypass(_) => "bypass",
        }
    }
}

/// A miss on its way upstream.
pub struct Pending {
    key: PrimaryKey,
    /// The target's generation and the store's purge count at lookup (`MemoryStore::forget`,
    /// `MemoryStore::purge_*`).
    generation: u64,
    epoch: u64,
    /// Only GET responses are stored (a HEAD's has no body).
    method: Method,
    request_time: SystemTime,
    request: HeaderMap,
    /// The stale entry this request found: revalidated with its validators, or served if the
    /// upstream fails and it allows that (`stale-if-error`).
    stale: Option<(Arc<Entry>, bool)>,
    /// This request leads the fetch of its key; requests waiting for it wake when this goes.
    lead: Option<Lead>,
    /// The target's invalidation count in the shared tier, read with the lookup there: the
    /// fill is stored there only if it is unchanged (`None`: not looked up there).
    shared_count: Option<u64>,
    /// `only-if-cached`: answered from a store or with 504, never forwarded.
    only_if_cached: bool,
}

impl Pending {
    /// Fields to add to the request sent upstream: the stale entry's validators, when the
    /// client asked nothing conditional itself (RFC 9111 §4.3.1).
    pub fn validators(&self) -> Vec<(HeaderName, HeaderValue)> {
        let client_asks = self.request.contains_key(header::IF_NONE_MATCH)
            || self.request.contains_key(header::IF_MODIFIED_SINCE);
        match &self.stale {
            Some((entry, _)) if !client_asks => conditional::validators(&entry.headers),
            _ => Vec::new(),
        }
    }

    /// The stale entry, when the upstream failed (no answer, or a 5xx) and the entry may be
    /// served then (RFC 5861 `stale-if-error`): `x-cache: STALE`.
    pub fn stale_on_error(&self, now: SystemTime) -> Option<Hit> {
        let (entry, allowed) = self.stale.as_ref()?;
        if !allowed {
            return None;
        }
        let mut hit = answer(entry, &self.method, &self.request, now);
        hit.headers.insert(X_CACHE, STALE);
        Some(hit)
    }
}

/// Fetches in flight by key, so that concurrent misses for one key make one upstream request.
#[derive(Default)]
struct Flights(Mutex<HashMap<PrimaryKey, (u64, watch::Receiver<()>)>>);

/// The lead of one fetch: when it is dropped (its response stored, or found not storable, or
/// the request gone), the fetch leaves the map and its waiters wake.
pub struct Lead {
    flights: Arc<Flights>,
    key: PrimaryKey,
    id: u64,
    _done: watch::Sender<()>,
}

impl Drop for Lead {
    fn drop(&mut self) {
        let mut map = self.flights.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            map.remove(&self.key);
        }
        // `_done` drops after this: the waiters' receivers close.
    }
}

impl Flights {
    /// Leads the fetch of `key`, or the receiver of the one in flight.
    fn join(self: &Arc<Self>, key: &PrimaryKey) -> Result<Lead, watch::Receiver<()>> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, rx)) = map.get(key) {
            return Err(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        map.insert(key.clone(), (id, rx));
        Ok(Lead {
            flights: Arc::clone(self),
            key: key.clone(),
            id,
            _done: tx,
        })
    }
}

impl RouteCache {
    pub fn new(
        route: &str,
        config: &RouteCacheConfig,
        store: Arc<MemoryStore>,
        shared: Option<Arc<SharedTier>>,
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
            scopes: ["http", "https"].map(|scheme| format!("{route} {scheme}").into()),
            store,
            shared,
            ttl: config.ttl,
            statuses: config.statuses.clone().into(),
            vary: config.vary.clone().into(),
            store_set_cookie: config.store_set_cookie,
            key: config.key.clone(),
            max_object_bytes,
            hits: counter(names::value::SUCCESS),
            misses: counter(names::value::FAILURE),
            flights: Arc::default(),
            refreshing: Arc::default(),
        }
    }

    /// The key of a request: the route and scheme, the `Host` the upstream gets (port
    /// included), the path and query — or what the route's `key` names of them, and the
    /// request fields it names; and who it is for when it carries credentials — the consumer
    /// the route's auth found, and a digest of its `Authorization` and `Cookie` fields — so
    /// that a response stored for one is never served to another, nor one stored under one
    /// token's claims to another token of the same consumer. `None` when the route's `key`
    /// cannot read the query unambiguously ([`keyed_query`]).
    fn key(
        &self,
        tls: bool,
        host: &str,
        uri: &Uri,
        headers: &HeaderMap,
        consumer: Option<&str>,
    ) -> Option<PrimaryKey> {
        let scope = &self.scopes[usize::from(tls)];
        let Some(rule) = &self.key else {
            let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
            let credential = credential_of(headers, consumer, String::new());
            return Some(PrimaryKey::new(scope, host, path, credential.as_deref()));
        };
        let mut path = uri.path().to_string();
        match (&rule.query, uri.query()) {
            (CacheKeyQuery::Whole, Some(query)) => {
                path.push('?');
                path.push_str(query);
            }
            (CacheKeyQuery::Only(names), Some(query)) => path.push_str(&keyed_query(query, names)?),
            _ => {}
        }
        // The named fields go with who the response is for, not with the target: an unsafe
        // request invalidates every one of their values.
        let mut fields = String::new();
        for name in &rule.headers {
            fields.push_str(name.as_str());
            for value in headers.get_all(name) {
                fields.push('=');
                // Bytes outside ASCII are kept apart, not merged into U+FFFD, and `=` is
                // escaped: two lines `a`, `b` are not one line `a=b`.
                for b in value.as_bytes() {
                    if b.is_ascii() && *b != b'%' && *b != b'=' {
                        fields.push(char::from(*b));
                    } else {
                        fields.push_str(&format!("%{b:02x}"));
                    }
                }
            }
            fields.push('\u{1d}');
        }
        let host = if rule.host { host } else { "" };
        let credential = credential_of(headers, consumer, fields);
        Some(PrimaryKey::new(scope, host, &path, credential.as_deref()))
    }

    /// The targets an unsafe request changes: its key's target — every reading of it, when a
    /// route's `key` takes some parameters and the query could be read more than one way
    /// ([`keyed_query_readings`]), so that what an upstream may have understood is
    /// invalidated whichever it was.
    fn targets(&self, tls: bool, host: &str, uri: &Uri) -> Vec<PrimaryKey> {
        let scope = &self.scopes[usize::from(tls)];
        let Some(rule) = &self.key else {
            let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
            return vec![PrimaryKey::new(scope, host, path, None)];
        };
        let host = if rule.host { host } else { "" };
        let queries = match (&rule.query, uri.query()) {
            (CacheKeyQuery::Whole, Some(query)) => vec![format!("?{query}")],
            (CacheKeyQuery::Only(names), Some(query)) => keyed_query_readings(query, names),
            _ => vec![String::new()],
        };
        queries
            .into_iter()
            .map(|query| PrimaryKey::new(scope, host, &format!("{}{query}", uri.path()), None))
            .collect()
    }
}

/// Who a response is for: `fields` (the route's keyed request fields, if any), then, when the
/// request carries credentials, the consumer and a digest of its `Authorization` and `Cookie`.
fn credential_of(headers: &HeaderMap, consumer: Option<&str>, fields: String) -> Option<String> {
    let mut digest = Sha256::new();
    let mut carried = false;
    for name in [header::AUTHORIZATION, header::COOKIE] {
        for value in headers.get_all(&name) {
            carried = true;
            digest.update(name.as_str().as_bytes());
            digest.update([0]);
            digest.update(value.as_bytes());
            digest.update([0]);
        }
    }
    match (consumer, carried) {
        (None, false) if fields.is_empty() => None,
        (None, false) => Some(fields),
        (consumer, _) => {
            let digest = digest.finalize();
            let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            Some(format!("{fields}{}|{hex}", consumer.unwrap_or("")))
        }
    }
}

impl RouteCache {
    /// Looks a request up (RFC 9111 §4). A fresh stored response is answered (304 to a
    /// conditional request that matches it); a miss goes upstream, unless another request is
    /// fetching the same key and `collapse` allows waiting for it; a stale entry goes with the
    /// miss, to be revalidated, or served if the upstream fails and it allows that.
    pub fn lookup(&self, request: &CacheRequest<'_>, now: SystemTime, collapse: bool) -> Lookup {
        let CacheRequest {
            method,
            uri,
            headers,
            ..
        } = *request;
        if method != Method::GET && method != Method::HEAD {
            if matches!(*method, Method::OPTIONS | Method::TRACE) {
                return Lookup::Bypass(Vec::new());
            }
            return Lookup::Bypass(self.targets(request.tls, request.host, uri));
        }
        let Some(key) = self.key(request.tls, request.host, uri, headers, request.consumer) else {
            return Lookup::Bypass(Vec::new());
        };
        let generation = self.store.generation(&key);
        let epoch = self.store.epoch();
        let request_cc = CacheControl::from_headers(headers);
        let mut stale = None;
        if let Some(entry) = self.store.get_at(&key, headers, generation) {
            match freshness::reuse(&entry.timing, &entry.cc, &request_cc, now) {
                Reuse::Fresh => {
                    self.hits.inc();
                    return Lookup::Hit(answer(&entry, method, headers, now));
                }
                Reuse::StaleWhileRevalidate => {
                    self.hits.inc();
                    return self.stale_while_revalidate(&entry, &key, method, headers, now);
                }
                Reuse::Revalidate { stale_if_error } => stale = Some((entry, stale_if_error)),
            }
        }
        // With a shared tier, the memory miss is not the last word: `consult` decides.
        let shared = self.shared.is_some();
        if request_cc.only_if_cached && !shared {
            self.misses.inc();
            return Lookup::NotCached;
        }
        // Only a request the upstream's answer could be stored for leads or waits: a HEAD or
        // an uncacheable request (no-store) does not hold others back.
        let lead = if collapse
            && method == Method::GET
            && !request_cc.no_store
            && !request_cc.only_if_cached
        {
            match self.flights.join(&key) {
                Ok(lead) => Some(lead),
                Err(rx) => return Lookup::Wait(rx),
            }
        } else {
            None
        };
        if !shared {
            self.misses.inc();
        }
        Lookup::Miss(Pending {
            key,
            generation,
            epoch,
            method: method.clone(),
            request_time: now,
            request: headers.clone(),
            stale,
            lead,
            shared_count: None,
            only_if_cached: request_cc.only_if_cached,
        })
    }

    /// `entry`, stale within its `stale-while-revalidate`, answers now; the first such request
    /// for `key` also gets the claim to refresh it.
    fn stale_while_revalidate(
        &self,
        entry: &Entry,
        key: &PrimaryKey,
        method: &Method,
        request: &HeaderMap,
        now: SystemTime,
    ) -> Lookup {
        let mut hit = answer(entry, method, request, now);
        hit.headers.insert(X_CACHE, STALE);
        let mut keys = self.refreshing.lock().unwrap_or_else(|e| e.into_inner());
        let refresh = keys.insert(key.clone()).then(|| Refresh {
            refreshing: Arc::clone(&self.refreshing),
            key: key.clone(),
        });
        Lookup::Stale(hit, refresh)
    }

    /// Whether a memory miss is looked up in the shared tier ([`consult`](Self::consult)).
    pub fn shares(&self) -> bool {
        self.shared.is_some()
    }

    /// A memory miss, looked up in the shared tier: a fresh response stored there by any
    /// instance is copied into memory and answers (a stale one goes with the miss, to be
    /// revalidated); a miss there, or Redis not answering, goes upstream. `only-if-cached`
    /// ends here with 504.
    pub async fn consult(&self, mut pending: Pending) -> Lookup {
        let Some(shared) = &self.shared else {
            return Lookup::Miss(pending);
        };
        // An unsafe request through this instance changed the target and Redis may not have
        // heard yet: what it holds for it is not read (nor written: no count).
        let found = if shared.invalidating(pending.key.target()) {
            Err(crate::redis_client::RedisError::BackingOff)
        } else {
            shared
                .get(&pending.key, &pending.request, pending.generation)
                .await
        };
        if let Ok(found) = found {
            pending.shared_count = Some(found.count);
            if let Some((mut entry, vary)) = found.entry {
                entry.epoch = pending.epoch;
                let now = SystemTime::now();
                let newer = pending.stale.as_ref().is_none_or(|(stale, _)| {
                    stale.timing.response_time < entry.timing.response_time
                });
                if newer {
                    if let Some(entry) = self.store.insert(entry, vary, &pending.request) {
                        let request_cc = CacheControl::from_headers(&pending.request);
                        match freshness::reuse(&entry.timing, &entry.cc, &request_cc, now) {
                            Reuse::Fresh => {
                                self.hits.inc();
                                let hit = answer(&entry, &pending.method, &pending.request, now);
                                return Lookup::Hit(hit);
                            }
                            Reuse::StaleWhileRevalidate => {
                                self.hits.inc();
                                return self.stale_while_revalidate(
                                    &entry,
                                    &pending.key,
                                    &pending.method,
                                    &pending.request,
                                    now,
                                );
                            }
                            Reuse::Revalidate { stale_if_error } => {
                                pending.stale = Some((entry, stale_if_error))
                            }
                        }
                    }
                }
            }
        }
        self.misses.inc();
        if pending.only_if_cached {
            return Lookup::NotCached;
        }
        Lookup::Miss(pending)
    }

    /// A 304 answered the revalidation of `pending`'s stale entry: the entry, freshened with
    /// the 304's fields (RFC 9111 §4.3.4), is stored again and answers the request.
    pub fn revalidated(
        &self,
        pending: Pending,
        not_modified: &HeaderMap,
        now: SystemTime,
    ) -> Option<Hit> {
        let (stale, _) = pending.stale.as_ref()?;
        let mut headers = stale.headers.clone();
        conditional::freshen(&mut headers, not_modified);
        headers.remove(header::AGE);
        let status = stale.status;
        let body = stale.body.clone();
        let method = pending.method.clone();
        let request = pending.request.clone();
        let age = Timing::new(not_modified, pending.request_time, now, Duration::ZERO).age(now);
        if let Some(filling) = self.fill(pending, status, &headers, now) {
            filling.store(body.clone());
        }
        Some(answer_parts(
            status, headers, body, age, now, &method, &request,
        ))
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
        let shared = self
            .shared
            .as_ref()
            .zip(pending.shared_count)
            .map(|(tier, count)| (Arc::clone(tier), count));
        Some(Filling {
            store: Arc::clone(&self.store),
            shared,
            limit: self.max_object_bytes,
            vary,
            _lead: pending.lead,
            request: pending.request,
            entry: Entry {
                key: pending.key,
                generation: pending.generation,
                epoch: pending.epoch,
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
            if let Some(shared) = &self.shared {
                shared.forget(key.target());
            }
        }
    }

    /// Marks a response that went upstream: MISS, or BYPASS for requests the cache does not
    /// answer.
    pub fn mark(headers: &mut HeaderMap, looked_up: bool) {
        headers.insert(X_CACHE, if looked_up { MISS } else { BYPASS });
    }
}

/// The answer from a stored entry: 304 when the request's conditions hold for it, else the
/// stored response (without a body for HEAD), with `Age` and `x-cache: HIT`.
fn answer(entry: &Entry, method: &Method, request: &HeaderMap, now: SystemTime) -> Hit {
    answer_parts(
        entry.status,
        entry.headers.clone(),
        entry.body.clone(),
        entry.timing.age(now),
        entry.timing.response_time,
        method,
        request,
    )
}

fn answer_parts(
    status: StatusCode,
    stored: HeaderMap,
    body: Bytes,
    age: Duration,
    received: SystemTime,
    method: &Method,
    request: &HeaderMap,
) -> Hit {
    // Conditions apply to a 2xx only (RFC 9110 §13.2.1): a stored 404 is sent as it is.
    let (status, mut headers, body) =
        if status.is_success() && conditional::not_modified(request, &stored, received) {
            (
                StatusCode::NOT_MODIFIED,
                conditional::not_modified_fields(&stored),
                Bytes::new(),
            )
        } else if method == Method::HEAD {
            (status, stored, Bytes::new())
        } else {
            (status, stored, body)
        };
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
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
    /// The shared tier, and the invalidation count the lookup there read.
    shared: Option<(Arc<SharedTier>, u64)>,
    limit: u64,
    vary: VaryOn,
    request: HeaderMap,
    entry: Entry,
    /// Held until the entry is stored: requests waiting for this key then find it.
    _lead: Option<Lead>,
}

impl Filling {
    /// The most body bytes it takes; a longer body is not stored.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Stores the response with its whole `body` (then the requests waiting for it wake).
    pub fn store(self, body: Bytes) {
        let Filling {
            store,
            shared,
            vary,
            request,
            mut entry,
            _lead,
            ..
        } = self;
        entry.body = body;
        if let Some((tier, count)) = shared {
            tier.put(&entry, &vary, &vary.variant(&request), count);
        }
        store.insert(entry, vary, &request);
        drop(_lead);
    }
}

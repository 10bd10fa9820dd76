//! The HTTP request pipeline (HTTP/1.1 and HTTP/2 alike): from a parsed request to the
//! response sent back.
//!
//! The steps, in order (DESIGN.md "the request's way"; the cache will join the policy steps):
//! 1. request id: kept when valid, else generated — first, so every answer carries it; with
//!    `[tracing]`, the trace context too (continued or started; a sampled request records its
//!    spans as it goes, and sends them when it ends);
//! 2. the request's identity settled (`wire/target.rs`): one valid Host, equal to an
//!    absolute-form target's authority, and a normalised path (400, 405 for CONNECT) — before
//!    anything reads the host or path, so routing, logs and the upstream all see the same;
//! 3. head size limit (431) — before any work on an oversized head;
//! 4. route match (404 `no_route`), then load shedding's CPU and memory check (503
//!    `overloaded`);
//! 5. declared body size limit (413) — before an upstream is bothered;
//! 6. the route's policy steps (auth, rate limit), the route's cache (a fresh stored response
//!    answers), the route's bulkhead and load shedding's admission (a wait, or 503
//!    `overloaded`), then pick an endpoint (503 when the balancer accepts none);
//! 7. forward with the route's deadline, narrowed by `grpc-timeout` (502 connect failure, 504
//!    timeout), streaming both bodies and trailers, in the upstream's protocol, with the
//!    route's upstream Host and the forwarded fields; an `Upgrade` request becomes a tunnel
//!    (websocket.rs);
//! 8. response headers rewritten; the access log written when the body ends.
//!
//! Errors the gateway answers itself are JSON (SPEC 5), or gRPC statuses for gRPC requests.

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{HeaderMap, Request, Response, Uri, Version};

use super::body::{
    Buffered, ClientBody, Collect, ExchangeStats, Finish, RequestBody, ResponseBody, UpstreamBody,
};
use super::client::h1;
use super::client::pool::{self, Pool, Sender, Transport};
use super::deadline::{before, DeadlineTimer};
use super::headers::{
    head_size, new_request_id, remove_hop_by_hop, remove_request_hop_by_hop, valid_request_id,
    Forwarding, ForwardingOnce, X_REQUEST_ID,
};
use super::route::{request_host, split_host, strip_prefix, RequestView};
use super::server::h1::ClientUpgrade;
use super::wire::target::{settle, PathRules, TargetError};
use super::{grpc, retry, websocket};
use crate::answer::GatewayError;
use crate::config::UpstreamHost;
use crate::health::{outlier, BreakerConfig, Outcome, Ticket, Transition};
use crate::observe::access_log::{Batcher, LineEnd, LineStart, PendingLine};
use crate::observe::metrics::{Counter, Gauge};
use crate::observe::trace;
use crate::policy;
use crate::proxy::listener::OpenConnections;
use crate::proxy::snapshot::{ListenerPlan, RouteRuntime, ServiceRuntime, Snapshot};
use crate::proxy::Shared;

/// What one worker thread holds for all its connections.
pub struct Worker {
    pub shared: Arc<Shared>,
    pub pool: Rc<Pool>,
    /// Open connections and tunnels of this worker, which shutdown waits for.
    pub open: Rc<OpenConnections>,
    /// This worker's pending access log lines.
    pub access: Batcher,
    /// `sluicegate_websocket_upgrades_total` and `sluicegate_websocket_connections_active`:
    /// tunnels count on these handles, made once per worker (and held for its life, so a
    /// reload's pruning keeps the series) rather than looked up by name per upgrade.
    pub websocket_upgrades: Counter,
    pub websocket_active: Gauge,
    /// This worker's copy of the current snapshot and the generation it was taken at. Requests
    /// share it by `Rc`: taking it costs no atomic operation on a cache line other workers
    /// write, which the shared `Arc`'s reference count would.
    snapshot: RefCell<(u64, Rc<HeldSnapshot>)>,
}

/// A snapshot as a worker holds it: requests share it through `Rc` (a count no other thread
/// touches), while the `Arc` inside is cloned once per reload.
pub struct HeldSnapshot(Arc<Snapshot>);

impl std::ops::Deref for HeldSnapshot {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        open: Rc<OpenConnections>,
        websocket_upgrades: Counter,
        websocket_active: Gauge,
    ) -> Worker {
        let access = Batcher::new(shared.access_log.clone());
        let snapshot = RefCell::new((
            shared.generation(),
            Rc::new(HeldSnapshot(shared.snapshot.load_full())),
        ));
        Worker {
            shared,
            pool: Rc::new(Pool::default()),
            open,
            access,
            websocket_upgrades,
            websocket_active,
            snapshot,
        }
    }

    /// The current snapshot, refreshed when a reload has published a new one.
    pub fn snapshot(&self) -> Rc<HeldSnapshot> {
        let generation = self.shared.generation();
        let mut cached = self.snapshot.borrow_mut();
        if cached.0 != generation {
            *cached = (
                generation,
                Rc::new(HeldSnapshot(self.shared.snapshot.load_full())),
            );
        }
        Rc::clone(&cached.1)
    }
}

/// The client connection a request arrived on.
pub struct ConnInfo {
    pub listener: Arc<str>,
    pub peer: SocketAddr,
    /// The gateway's own address on this connection (for PROXY protocol headers).
    pub local: Option<SocketAddr>,
    /// Whether the client connection is TLS (`X-Forwarded-Proto: https`).
    pub tls: bool,
    /// The peer's address as an `X-Forwarded-For` element, made once per connection.
    pub forwarded_for: HeaderValue,
    /// The peer is one of the listener's `trusted_proxies`: its `X-Forwarded-*` and
    /// `Forwarded` fields are appended to rather than replaced.
    pub trusted: bool,
    /// The listener's `request_header_timeout`.
    pub header_timeout: std::time::Duration,
}

/// Per-exchange bookkeeping finished when the response body is dropped. Listener, route and
/// endpoint are positions in the snapshot the exchange holds, so nothing shared between workers
/// is reference-counted per request.
struct Exchange {
    worker: Rc<Worker>,
    snapshot: Rc<HeldSnapshot>,
    listener: Option<usize>,
    route: Option<usize>,
    /// The endpoint counted in flight (`EndpointLoad::begin`), by position in the route's service.
    endpoint: Option<usize>,
    line: Option<PendingLine>,
    started: Instant,
    stats: Rc<ExchangeStats>,
    /// The status sent (0 until known); counted in the route's or the listener's metrics.
    status: u16,
    counted: bool,
    /// What the route's policy steps decided, for the log line.
    policies: policy::Applied,
    /// The route's in-flight count this request holds a place in (`max_in_flight`).
    bulkhead: Option<Arc<AtomicUsize>>,
    /// The place `[load_shedding]` admitted this request to, until its upstream answers.
    admitted: Option<policy::shed::Permit>,
    /// What a sampled request records for its spans (`[tracing]`).
    trace: Option<Box<trace::Recording>>,
    /// The request's trace context (`[tracing]`): kept here, in the box, rather than in the
    /// request's future, which every request carries whether tracing is on or not.
    trace_cx: Option<trace::SpanContext>,
}

impl Exchange {
    fn listener(&self) -> Option<&ListenerPlan> {
        self.snapshot.listeners.get(self.listener?)
    }

    fn route(&self) -> Option<&RouteRuntime> {
        self.listener()?.routes.get(self.route?).map(|r| &**r)
    }
}

impl Finish for Exchange {
    fn finish(&mut self) {
        if self.counted {
            return;
        }
        self.counted = true;
        if let Some(in_flight) = self.bulkhead.take() {
            in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        self.admitted = None;
        if self.status == 0 {
            self.status = 499;
        }
        let line = self.line.take();
        let elapsed = self.started.elapsed();
        let recording = self.trace.take();
        let route = self.route();
        match route {
            Some(route) => {
                route.requests.inc(self.status);
                route.duration.observe(elapsed.as_secs_f64());
                if let Some(e) = self.endpoint.and_then(|i| route.service.endpoints.get(i)) {
                    e.load.end();
                }
            }
            None => {
                if let Some(listener) = self.listener() {
                    listener.unrouted.inc(self.status);
                }
            }
        }
        if let (Some(recording), Some(tracer)) = (recording, &self.snapshot.tracer) {
            let service = route.map(|r| &*r.service);
            let ending = trace::span::Ending {
                status: self.status,
                listener: self.listener().map(|l| &*l.name),
                route: route.map(|r| &*r.name),
                http_route: route.map(|r| &*r.http_route),
                service: service.map(|s| &*s.name),
                endpoint: service
                    .zip(self.endpoint)
                    .and_then(|(s, i)| s.endpoint_names.get(i))
                    .map(|n| &**n),
                decisions: self.policies.decisions(),
                consumer: self.policies.consumer(),
            };
            tracer.submit(recording.finish(&ending));
        }
        if let Some(line) = line {
            let service = route.map(|r| &*r.service);
            let end = LineEnd {
                status: self.status,
                route: route.map(|r| &*r.name),
                service: service.map(|s| &*s.name),
                endpoint: service
                    .zip(self.endpoint)
                    .and_then(|(s, i)| s.endpoint_names.get(i))
                    .map(|n| &**n),
                duration: elapsed,
                bytes_in: self.stats.bytes_in.get(),
                bytes_out: self.stats.bytes_out.get(),
                decisions: self.policies.decisions(),
                consumer: self.policies.consumer(),
            };
            self.worker.access.end(line, &end);
        }
    }
}

/// A request whose client went away before its response was ready still gets its log line, with
/// nginx's status 499 ("client closed request").
impl Drop for Exchange {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Serves one request. Never fails: every problem becomes a response. `upgrade` is the client
/// connection's side of a WebSocket upgrade, when the request asks for one (HTTP/1.1 only).
///
/// `timer` is the connection's reusable deadline timer, when it has one (HTTP/1.1): moving a
/// registered timer to a later deadline is a single atomic update, where a fresh timer per
/// request cost a timer-wheel insertion and removal.
pub async fn handle(
    worker: Rc<Worker>,
    conn: Rc<ConnInfo>,
    req: Request<ClientBody>,
    upgrade: Option<ClientUpgrade>,
    timer: Option<&mut DeadlineTimer>,
) -> Result<Response<ResponseBody>, Infallible> {
    let started = Instant::now();
    let snapshot = worker.snapshot();
    let upgrade_protocol = upgrade
        .as_ref()
        .and_then(|_| req.headers().get(header::UPGRADE).cloned());
    let grpc = grpc::is_grpc(req.headers());
    let (mut parts, body) = req.into_parts();
    let stats = Rc::new(ExchangeStats::default());

    // 1. Request id.
    let request_id = match parts.headers.get(X_REQUEST_ID) {
        Some(v) if valid_request_id(v) => v.clone(),
        _ => new_request_id(),
    };
    // Kept for gateway answers (cloning a header value shares its bytes).
    let answer_id = request_id.clone();

    // 2. One request identity: the host and path that are routed are the ones forwarded.
    let listener_index = snapshot.listener_index(&conn.listener);
    let path_rules = PathRules {
        merge_slashes: listener_index
            .and_then(|i| snapshot.listeners.get(i))
            .is_none_or(|l| l.config.merge_slashes),
    };
    let identity = settle(
        &parts.method,
        parts.version,
        &mut parts.uri,
        &mut parts.headers,
        path_rules,
    );

    let host = request_host(&parts.uri, &parts.headers);
    // The request's place in a trace (`[tracing]`): continued or started, and recorded when
    // sampled.
    let trace_cx = snapshot
        .tracer
        .as_ref()
        .map(|tracer| tracer.sampler.start(&parts.headers));
    let recording = trace_cx.filter(|cx| cx.sampled).map(|cx| {
        let tracestate = join_fields(&parts.headers, trace::TRACESTATE);
        Box::new(trace::Recording::new(
            cx,
            started,
            &trace::span::Incoming {
                method: &parts.method,
                path: parts.uri.path(),
                host,
                port: parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| split_host(h).1?.parse().ok()),
                version: parts.version,
                tls: conn.tls,
                client: conn.peer.ip(),
                request_id: request_id.to_str().unwrap_or_default(),
                tracestate: tracestate.as_deref(),
            },
        ))
    });
    let line = worker.access.enabled().then(|| {
        worker.access.begin(&LineStart {
            time: SystemTime::now(),
            request_id: request_id.to_str().unwrap_or_default(),
            client: conn.forwarded_for.to_str().unwrap_or_default(),
            method: parts.method.as_str(),
            host: host.unwrap_or_default(),
            path: &policy::redact_query(
                parts.uri.path_and_query().map_or("/", PathAndQuery::as_str),
                &snapshot.secret_query_parameters,
            ),
            trace: trace_cx.map(|cx| (cx.trace_id, cx.span_id)),
        })
    });
    // Boxed from the start: it ends up as the response body's `Finish` anyway, and kept inline
    // it would make every request's future larger.
    let mut exchange = Box::new(Exchange {
        worker: Rc::clone(&worker),
        snapshot: Rc::clone(&snapshot),
        listener: None,
        route: None,
        endpoint: None,
        line,
        started,
        stats: Rc::clone(&stats),
        status: 0,
        counted: false,
        policies: policy::Applied::default(),
        bulkhead: None,
        admitted: None,
        trace: recording,
        trace_cx,
    });
    let answer = |mut exchange: Box<Exchange>, error: GatewayError, close: bool| {
        // The gateway answers itself: no upstream works on this request any more.
        exchange.admitted = None;
        let stats = Rc::clone(&exchange.stats);
        let id = answer_id.to_str().unwrap_or_default();
        let response = if grpc {
            grpc::error_response(error, id)
        } else {
            error.response(id, close)
        };
        exchange.status = response.status().as_u16();
        let mut response = response.map(|bytes| ResponseBody::full(bytes, stats));
        // An allowed request the gateway answers itself (502, 504) still says its quota.
        exchange.policies.on_response(response.headers_mut());
        response.body_mut().on_finish(exchange);
        Ok(response)
    };

    let Some(listener_index) = listener_index else {
        // The listener left the config while this connection was open.
        return answer(exchange, GatewayError::NoRoute, true);
    };
    let listener = &snapshot.listeners[listener_index];
    exchange.listener = Some(listener_index);
    match identity {
        Ok(()) => {}
        Err(TargetError::Connect) => {
            return answer(exchange, GatewayError::MethodNotAllowed("CONNECT"), true)
        }
        Err(TargetError::Malformed(why)) => {
            return answer(exchange, GatewayError::Malformed(why), true)
        }
    }

    // 3. Head size.
    if head_size(&parts.method, &parts.uri, &parts.headers)
        > listener.config.max_request_header_bytes
    {
        return answer(exchange, GatewayError::HeadersTooLarge, true);
    }

    // 4. Route.
    let view = RequestView {
        method: &parts.method,
        host,
        path: parts.uri.path(),
        headers: &parts.headers,
    };
    let Some((route_index, route)) = listener
        .routes
        .find_index(&view)
        .and_then(|i| Some((i, listener.routes.get(i)?)))
    else {
        return answer(exchange, GatewayError::NoRoute, false);
    };
    let service: &ServiceRuntime = &route.service;
    exchange.route = Some(route_index);

    // Load shedding, first part: under CPU or memory pressure the lower classes are refused
    // before any work is spent on them.
    let shed_class = snapshot.shedder.as_ref().map(|shedder| {
        let (route_class, from_header) = route.priority;
        let class = policy::shed::class_of(route_class, from_header, &parts.headers);
        (shedder, class)
    });
    if let Some(reason) = shed_class.and_then(|(shedder, class)| shedder.under_pressure(class)) {
        return shed(exchange, reason, answer);
    }

    // 5. Declared body size.
    let limit = listener.config.max_request_body_bytes;
    // The size the body's framing declares (the parsed Content-Length, whatever its spelling:
    // `5, 5` too), not the field re-read as text.
    if limit != 0 && http_body::Body::size_hint(&body).lower() > limit {
        return answer(exchange, GatewayError::PayloadTooLarge, true);
    }

    // 6. The route's policy steps (policy/), in their fixed order; any may answer instead.
    if !route.policies.is_empty() {
        let cx = policy::RequestCx {
            peer: conn.peer.ip(),
            trusted_proxies: conn.trusted.then_some(&listener.config.trusted_proxies[..]),
            headers: &parts.headers,
            uri: &parts.uri,
            now: started,
        };
        let ex: &mut Exchange = &mut exchange;
        let flow = route
            .policies
            .on_request(&cx, &mut ex.policies, ex.trace.as_deref_mut())
            .await;
        if let policy::Flow::Answer(refusal) = flow {
            let Ok(mut response) = answer(exchange, refusal.error, false);
            response.headers_mut().extend(refusal.headers);
            return Ok(response);
        }
    }

    // The route's `timeout`, narrowed by `grpc-timeout`: what the cache's wait for another
    // request's fetch, load shedding's wait for a place, and the forwarding all end by.
    let deadline = deadline_of(route, grpc, &parts.headers, started);

    // The route's cache: a fresh stored response is the answer, with no place taken from the
    // upstreams; a miss goes on, to be stored as it streams back.
    let mut cached = None;
    let mut revalidating = false;
    // (A WebSocket handshake is never answered from the cache.)
    if let (Some(cache), None) = (&route.cache, &upgrade) {
        let request = policy::cache::CacheRequest {
            method: &parts.method,
            uri: &parts.uri,
            // The Host as sent, port included (`settle` made it the one Host).
            host: parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default(),
            headers: &parts.headers,
            tls: conn.tls,
            consumer: exchange.policies.consumer(),
        };
        if let Some(recording) = exchange.trace.as_deref_mut() {
            recording.mark();
        }
        let look = |collapse: bool| cache.lookup(&request, SystemTime::now(), collapse);
        let mut lookup = look(true);
        if let policy::cache::Lookup::Wait(mut fetched) = lookup {
            // Another request is fetching this key: its response, stored, answers this one
            // too. Bounded: past half the time left, or if its response is not stored, this
            // request goes upstream itself.
            let left =
                deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()) / 2);
            let wait = left.map_or(COLLAPSE_WAIT, |l| l.min(COLLAPSE_WAIT));
            let _ = tokio::time::timeout(wait, fetched.changed()).await;
            lookup = look(false);
        }
        // A memory miss is looked up in the shared tier next, when the route has one.
        if let policy::cache::Lookup::Miss(pending) = lookup {
            lookup = if cache.shares() {
                cache.consult(pending).await
            } else {
                policy::cache::Lookup::Miss(pending)
            };
        }
        if let Some(recording) = exchange.trace.as_deref_mut() {
            recording.cache_lookup(lookup.result());
        }
        match lookup {
            policy::cache::Lookup::Hit(hit) => {
                exchange.policies.note((policy::cache::STEP, "hit"));
                return Ok(cached_answer(exchange, hit, request_id, &stats));
            }
            policy::cache::Lookup::Stale(hit, refresh) => {
                exchange.policies.note((policy::cache::STEP, "stale"));
                if let Some(refresh) = refresh {
                    refresh_in_background(&worker, &conn, &parts, refresh);
                }
                return Ok(cached_answer(exchange, hit, request_id, &stats));
            }
            policy::cache::Lookup::Miss(pending) => {
                exchange.policies.note((policy::cache::STEP, "miss"));
                let validators = pending.validators();
                revalidating = !validators.is_empty();
                for (name, value) in validators {
                    parts.headers.insert(name, value);
                }
                cached = Some(Ok(pending));
            }
            policy::cache::Lookup::Bypass(invalidates) => {
                exchange.policies.note((policy::cache::STEP, "bypass"));
                cached = Some(Err(invalidates));
            }
            policy::cache::Lookup::NotCached => {
                exchange.policies.note((policy::cache::STEP, "miss"));
                return answer(exchange, GatewayError::NotCached, false);
            }
            // Not returned when not collapsing.
            policy::cache::Lookup::Wait(_) => {}
        }
    }

    // The route's bulkhead: a slow route cannot hold every connection of the gateway. Refused
    // at once, never queued; taken after the cache, so that hits never wait on a slow
    // upstream's requests.
    if let Some((limit, in_flight)) = &route.bulkhead {
        let taken = in_flight.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < *limit).then_some(n + 1)
        });
        if taken.is_err() {
            return overloaded(exchange, GatewayError::Overloaded, answer);
        }
        exchange.bulkhead = Some(Arc::clone(in_flight));
    }

    // Load shedding, second part: admission to the upstreams, after the steps that may refuse
    // the request (a refused request takes no place, and `x-priority` is read from requests
    // that passed authentication): at once, after a short wait while higher classes are
    // served, or refused now.
    if let Some((shedder, class)) = shed_class {
        if let Some(recording) = exchange.trace.as_deref_mut() {
            recording.mark();
        }
        let decision = match shedder.admit(class, deadline).await {
            policy::shed::Admission::Admitted(permit) => {
                exchange.admitted = Some(permit);
                "admitted"
            }
            policy::shed::Admission::Queued(permit) => {
                exchange.admitted = Some(permit);
                "queued"
            }
            policy::shed::Admission::Shed(reason) => return shed(exchange, reason, answer),
        };
        exchange.policies.note((policy::shed::STEP, decision));
        if let Some(recording) = exchange.trace.as_deref_mut() {
            recording.admission(decision);
        }
    }

    // 7. Endpoint.
    let key = service
        .hash_on
        .as_ref()
        .and_then(|h| h.key_hash(conn.peer.ip(), &parts.uri, &parts.headers));
    let now = tokio::time::Instant::from_std(started);
    let accept = |i: usize| service.available(i, now);
    let mut pin = None;
    let picked = match &service.sticky {
        Some(sticky) => match sticky.pinned(&parts.headers) {
            Some(i) if accept(i) => Some(i),
            // No valid cookie, or its endpoint is unavailable: pick and (re-)pin.
            _ => {
                let i = service.balancer.pick(key, &accept);
                pin = i.and_then(|i| sticky.set_cookie(i)).cloned();
                i
            }
        },
        None => service.balancer.pick(key, &accept),
    };
    // A service with breakers admits the request at the endpoint picked (the check in `accept`
    // was a look, without a lock): a half-open endpoint whose trials were all taken meanwhile
    // gives way to another endpoint, once.
    let mut picked = picked;
    let mut ticket = None;
    if let (Some(config), Some(first)) = (&service.breaker, picked) {
        ticket = admit(service, first, now, config);
        if ticket.is_none() {
            let others = |j: usize| j != first && accept(j);
            picked = service.balancer.pick(key, &others);
            ticket = picked.and_then(|j| admit(service, j, now, config));
            picked = picked.filter(|_| ticket.is_some());
        }
    }
    let Some(index) = picked else {
        let error = if service.breakers_refuse(now) {
            GatewayError::CircuitOpen
        } else {
            GatewayError::NoHealthyUpstream
        };
        return answer(exchange, error, false);
    };
    let Some(endpoint) = service.endpoints.get(index) else {
        return answer(exchange, GatewayError::NoHealthyUpstream, false);
    };
    let address = endpoint.address;
    endpoint.load.begin();
    exchange.endpoint = Some(index);

    // 8. Forward.
    if let Some(prefix) = &route.strip_prefix {
        parts.uri = rewrite_path(&parts.uri, prefix);
    }
    // `settle` made `Host` the target's authority (HTTP/2's `:authority`, an absolute-form
    // target), so the origin form loses nothing.
    parts.uri = origin_form(&parts.uri);
    let upstream_host = match &route.upstream_host {
        UpstreamHost::Preserve => None,
        UpstreamHost::Fixed(name) => Some(name.clone()),
        UpstreamHost::Endpoint => service
            .endpoint_names
            .get(index)
            .and_then(|n| HeaderValue::from_str(n).ok()),
    };
    // The client's Host, when the upstream gets another: X-Forwarded-Host keeps it.
    let client_host = upstream_host.and_then(|h| parts.headers.insert(header::HOST, h));
    // The client's server side (ours for HTTP/1.1, hyper's for HTTP/2) answers `100 Continue`
    // itself when the body is first read, so the upstream must not wait for a continue of its
    // own: `Expect` goes with the hop-by-hop ones.
    if remove_request_hop_by_hop(&mut parts.headers).trailers {
        // `TE: trailers` is the one TE value that crosses a proxy: gRPC servers require it.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    // X-Forwarded-* are written straight into an HTTP/1.1 upstream's request head, and added
    // to the header map only for HTTP/2 and tunnels: three map insertions of custom names cost
    // about 5 % of a request's instructions.
    let forwarding = Forwarding {
        client: &conn.forwarded_for,
        proto: if conn.tls { "https" } else { "http" },
        trusted: conn.trusted,
        host: client_host.as_ref(),
    };
    parts.headers.insert(X_REQUEST_ID, request_id.clone());
    if let Some(cx) = &exchange.trace_cx {
        // The upstream's parent is the gateway's span; a `tracestate` without a valid
        // `traceparent` belonged to no trace the gateway continues (W3C Trace Context §3.3).
        parts.headers.insert(trace::TRACEPARENT, cx.traceparent());
        if cx.parent.is_none() {
            parts.headers.remove(trace::TRACESTATE);
        }
    }
    exchange.policies.on_forward(
        &mut parts.headers,
        &mut parts.uri,
        route.policies.protected(),
    );

    if let Some(client_upgrade) = upgrade {
        forwarding.add_to(&mut parts.headers);
        // Keep the handshake headers the hop-by-hop removal took.
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = upgrade_protocol {
            parts.headers.insert(header::UPGRADE, protocol);
        }
        let request = Request::from_parts(parts, RequestBody::new(body, limit, Rc::clone(&stats)));
        // Boxed: the tunnel path is rare, and inlined it would enlarge every request's future.
        return Box::pin(tunnel(
            &worker,
            exchange,
            service,
            (index, ticket),
            now,
            request,
            client_upgrade,
            request_id,
            listener.config.idle_timeout,
            answer,
        ))
        .await;
    }

    let (index, exchange_result) = match &route.retry {
        None => {
            let upstream_body = RequestBody::new(body, limit, Rc::clone(&stats));
            if let Some(recording) = exchange.trace.as_deref_mut() {
                recording.mark();
            }
            let sending = pin!(send(
                &worker.pool,
                address,
                service,
                Head::Owned(parts),
                upstream_body,
                forwarding
            ));
            let result = before(deadline, sending, timer)
                .await
                .unwrap_or(Err(SendError::Timeout));
            let outcome = classify(&result, &stats);
            report_outcome(service, index, outcome, now, ticket);
            if let Some(recording) = exchange.trace.as_deref_mut() {
                recording.attempt(address, 1, attempt_end(&result, outcome));
            }
            (index, result)
        }
        // Boxed: only routes with `retry` carry its larger future.
        Some(policy) => {
            Box::pin(send_with_retries(Tries {
                worker: &worker,
                service,
                policy,
                parts,
                body,
                limit,
                stats: &stats,
                forwarding,
                deadline,
                first: (index, ticket),
                key,
                exchange: &mut exchange,
                timer,
                grpc,
            }))
            .await
        }
    };
    let address = service.endpoints.get(index).map_or(address, |e| e.address);
    // A sticky cookie names the endpoint that answered (a retry may have moved on).
    if pin.is_some() {
        pin = service
            .sticky
            .as_ref()
            .and_then(|sticky| sticky.set_cookie(index))
            .cloned();
    }
    // The upstream has answered (or failed): the request's place goes to the next one.
    if let Some(permit) = exchange.admitted.take() {
        // A timeout says the upstream took at least that long; a 5xx is often fast and says
        // nothing about queueing; other failures say nothing about latency.
        let latency_known = match &exchange_result {
            Ok(r) => !r.status().is_server_error(),
            Err(e) => matches!(e, SendError::Timeout),
        };
        permit.answered(latency_known);
    }
    // The upstream failed, or answered 5xx: a stale stored response that allows it is served
    // instead (`stale-if-error`).
    let failed = exchange_result
        .as_ref()
        .map_or(true, |r| r.status().is_server_error());
    if let (true, Some(Ok(pending))) = (failed, &cached) {
        if let Some(hit) = pending.stale_on_error(SystemTime::now()) {
            exchange.policies.note((policy::cache::STEP, "stale"));
            return Ok(cached_answer(exchange, hit, request_id, &stats));
        }
    }
    let response = match exchange_result {
        Ok(ok) => ok,
        Err(e) => {
            let error = if stats.body_too_large.get() {
                GatewayError::PayloadTooLarge
            } else if stats.client_body_failed.get() {
                GatewayError::BadRequest
            } else {
                match e {
                    SendError::Timeout => GatewayError::UpstreamTimeout,
                    SendError::ClientBody => GatewayError::BadRequest,
                    SendError::ClientTimeout => GatewayError::RequestTimeout,
                    SendError::Connect(ref err) => {
                        tracing::warn!(service = %service.name, error = %err, "upstream connect failed");
                        GatewayError::UpstreamUnavailable
                    }
                    SendError::Exchange(ref err) => {
                        tracing::warn!(service = %service.name, upstream = %address, error = %err, "upstream exchange failed");
                        GatewayError::UpstreamUnavailable
                    }
                }
            };
            let close = matches!(
                error,
                GatewayError::PayloadTooLarge | GatewayError::BadRequest
            );
            return answer(exchange, error, close);
        }
    };

    // 9. Response.
    let (mut head, upstream_body) = response.into_parts();
    // The HTTP/1.1 client drops hop-by-hop fields while parsing; hyper's HTTP/2 one does not.
    if !matches!(upstream_body, UpstreamBody::H1(_)) {
        remove_hop_by_hop(&mut head.headers);
    }
    // What the cache stores is the upstream's response as it came, before the gateway adds
    // this exchange's own fields.
    let mut filling = None;
    if let (Some(cache), Some(looked_up)) = (&route.cache, cached) {
        match looked_up {
            // The upstream says the stale entry is still good: it answers, freshened.
            Ok(pending) if revalidating && head.status == http::StatusCode::NOT_MODIFIED => {
                if let Some(hit) = cache.revalidated(pending, &head.headers, SystemTime::now()) {
                    return Ok(cached_answer(exchange, hit, request_id, &stats));
                }
            }
            Ok(pending) => {
                // A body that ends when the connection closes cannot be told from a truncated
                // one: passed on, never stored.
                if !upstream_body.ends_at_close() {
                    filling = cache.fill(pending, head.status, &head.headers, SystemTime::now());
                }
                policy::cache::RouteCache::mark(&mut head.headers, true);
            }
            Err(invalidates) => {
                for key in &invalidates {
                    cache.invalidate(key, head.status);
                }
                policy::cache::RouteCache::mark(&mut head.headers, false);
            }
        }
    }
    head.headers.insert(X_REQUEST_ID, request_id);
    if let Some(cookie) = pin {
        head.headers.append(header::SET_COOKIE, cookie);
    }
    exchange.policies.on_response(&mut head.headers);
    exchange.status = head.status.as_u16();
    let mut body = ResponseBody::upstream(upstream_body, deadline, stats);
    if let Some(filling) = filling {
        let limit = filling.limit();
        body.collect(Collect::new(
            limit,
            Box::new(move |whole| filling.store(whole)),
        ));
    }
    body.on_finish(exchange);
    Ok(Response::from_parts(head, body))
}

/// Revalidates a stale stored response in the background (`stale-while-revalidate`, RFC 5861
/// §3): the same request as a GET without a body, through the whole pipeline again (route,
/// policies, load shedding, the upstream), with `Cache-Control: no-cache` so that the cache
/// skips the stored response and sends its validators; the response refreshes the store as any
/// other would. Its body is read to the end and dropped; `refresh` is held until then, so one
/// refresh runs per key. It is logged and counted as the request it is.
fn refresh_in_background(
    worker: &Rc<Worker>,
    conn: &Rc<ConnInfo>,
    parts: &http::request::Parts,
    refresh: policy::cache::Refresh,
) {
    let mut request = Request::new(ClientBody::Empty);
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    let headers = request.headers_mut();
    *headers = parts.headers.clone();
    // The client's conditions and range are its own (the cache adds the stored response's
    // validators, and stores whole responses), it has no body, and it gets a request id of its
    // own.
    for name in [
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::EXPECT,
        X_REQUEST_ID,
        // The refresh is the gateway's own request, after the client's has been answered: a
        // trace of its own, not a late child of the client's.
        trace::TRACEPARENT,
        trace::TRACESTATE,
    ] {
        headers.remove(name);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let (worker, conn) = (Rc::clone(worker), Rc::clone(conn));
    tokio::task::spawn_local(async move {
        let _refresh = refresh;
        // Boxed as a trait object: `handle` spawning itself would otherwise be a type of
        // infinite size.
        let handling: std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response<ResponseBody>, Infallible>>>,
        > = Box::pin(handle(worker, conn, request, None, None));
        let Ok(response) = handling.await;
        let mut body = response.into_body();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
            if frame.is_err() {
                break;
            }
        }
    });
}

/// The longest a request waits for another's fetch of the same cache key.
const COLLAPSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A response from the route's cache, with this exchange's own fields.
fn cached_answer(
    mut exchange: Box<Exchange>,
    hit: policy::cache::Hit,
    request_id: HeaderValue,
    stats: &Rc<ExchangeStats>,
) -> Response<ResponseBody> {
    // No upstream works on it (a stale answer after a failure holds no place either).
    exchange.admitted = None;
    let mut response = Response::new(ResponseBody::full(hit.body, Rc::clone(stats)));
    *response.status_mut() = hit.status;
    *response.headers_mut() = hit.headers;
    response.headers_mut().insert(X_REQUEST_ID, request_id);
    exchange.policies.on_response(response.headers_mut());
    exchange.status = hit.status.as_u16();
    response.body_mut().on_finish(exchange);
    response
}

/// The request's deadline: the route's `timeout`, narrowed by a gRPC request's `grpc-timeout`.
fn deadline_of(
    route: &RouteRuntime,
    grpc: bool,
    headers: &HeaderMap,
    started: Instant,
) -> Option<tokio::time::Instant> {
    let started = tokio::time::Instant::from_std(started);
    let deadline = route.timeout.map(|t| started + t);
    let asked = grpc
        .then(|| headers.get("grpc-timeout").and_then(grpc::parse_timeout))
        .flatten()
        .map(|t| started + t);
    match (deadline, asked) {
        (Some(d), Some(a)) => Some(d.min(a)),
        (d, a) => d.or(a),
    }
}

/// Answers a request load shedding refused: 503 `overloaded`, `Retry-After`, the reason logged.
fn shed<A>(
    mut exchange: Box<Exchange>,
    reason: policy::shed::ShedReason,
    answer: A,
) -> Result<Response<ResponseBody>, Infallible>
where
    A: FnOnce(Box<Exchange>, GatewayError, bool) -> Result<Response<ResponseBody>, Infallible>,
{
    exchange
        .policies
        .note((policy::shed::STEP, reason.as_str()));
    overloaded(exchange, GatewayError::Shed, answer)
}

/// A 503 for a gateway or route with no room now (`error` is `Overloaded` or `Shed`), with
/// `Retry-After: 1`: answered at once, never after a wait.
fn overloaded<A>(
    exchange: Box<Exchange>,
    error: GatewayError,
    answer: A,
) -> Result<Response<ResponseBody>, Infallible>
where
    A: FnOnce(Box<Exchange>, GatewayError, bool) -> Result<Response<ResponseBody>, Infallible>,
{
    let Ok(mut response) = answer(exchange, error, false);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    Ok(response)
}

fn rewrite_path(uri: &Uri, prefix: &str) -> Uri {
    let path = strip_prefix(prefix, uri.path());
    let pq = match uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(pq).ok();
    Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

/// The request target as an upstream HTTP/1.1 origin server expects it: path and query only.
fn origin_form(uri: &Uri) -> Uri {
    if uri.scheme().is_none() && uri.authority().is_none() {
        return uri.clone();
    }
    let pq = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    Uri::from(pq)
}

/// How an upstream exchange went, for outlier detection and `sluicegate_upstream_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    Success,
    Status5xx,
    ConnectFailure,
    Reset,
    Timeout,
    /// The client's body was malformed or too large: not the endpoint's fault.
    ClientFault,
}

/// Admits a request at endpoint `index`'s breaker, logging the transition it makes.
fn admit(
    service: &ServiceRuntime,
    index: usize,
    now: tokio::time::Instant,
    config: &BreakerConfig,
) -> Option<Ticket> {
    let health = service.health.get(index)?;
    let (ticket, transition) = health.breaker.admit(now, config);
    log_transition(service, index, transition);
    ticket
}

/// Logs a breaker's state change, once (the transition is returned to one caller only).
fn log_transition(service: &ServiceRuntime, index: usize, transition: Option<Transition>) {
    let (Some(transition), Some(e)) = (transition, service.endpoints.get(index)) else {
        return;
    };
    match transition {
        Transition::Opened => {
            tracing::warn!(service = %service.name, endpoint = %e.address, "circuit breaker opened")
        }
        Transition::HalfOpened => {
            tracing::info!(service = %service.name, endpoint = %e.address, "circuit breaker half-open: trial requests")
        }
        Transition::Closed => {
            tracing::info!(service = %service.name, endpoint = %e.address, "circuit breaker closed")
        }
    }
}

fn report_outcome(
    service: &ServiceRuntime,
    index: usize,
    outcome: Upstream,
    now: tokio::time::Instant,
    ticket: Option<Ticket>,
) {
    if let (Some(config), Some(ticket), Some(health)) =
        (&service.breaker, ticket, service.health.get(index))
    {
        let failed = match outcome {
            Upstream::Success => Some(false),
            Upstream::ClientFault => None,
            _ => Some(true),
        };
        match failed {
            Some(failed) => {
                let at = tokio::time::Instant::now();
                let transition = health.breaker.record(ticket, failed, at, config);
                log_transition(service, index, transition);
            }
            // Says nothing about the endpoint: a half-open trial is given back.
            None => health.breaker.release(ticket),
        }
    }
    if let Some(counters) = service.upstream.get(index) {
        match outcome {
            Upstream::Success => counters.success.inc(),
            Upstream::Status5xx => counters.status_5xx.inc(),
            Upstream::ConnectFailure => counters.connect_failure.inc(),
            Upstream::Reset => counters.reset.inc(),
            Upstream::Timeout => counters.timeout.inc(),
            Upstream::ClientFault => {}
        }
    }
    let Some(config) = &service.outlier else {
        return;
    };
    let verdict = match outcome {
        Upstream::Success => Outcome::Success,
        Upstream::ClientFault => return,
        _ => Outcome::Failure,
    };
    if outlier::record(&service.health, index, verdict, config, now) {
        if let Some(e) = service.endpoints.get(index) {
            tracing::warn!(service = %service.name, endpoint = %e.address, ?outcome, "endpoint ejected by outlier detection");
        }
    }
}

/// How an upstream attempt ended, for its span.
fn attempt_end(
    result: &Result<Response<UpstreamBody>, SendError>,
    outcome: Upstream,
) -> trace::span::AttemptEnd<'static> {
    match (result, outcome) {
        (Ok(response), _) => trace::span::AttemptEnd::Status(response.status()),
        (_, Upstream::Timeout) => trace::span::AttemptEnd::Failed("timeout"),
        (_, Upstream::ConnectFailure) => trace::span::AttemptEnd::Failed("connect_failure"),
        (_, Upstream::ClientFault) => trace::span::AttemptEnd::Failed("client_fault"),
        _ => trace::span::AttemptEnd::Failed("reset"),
    }
}

/// All values of a field joined with commas (a list field sent as several lines), or `None`.
fn join_fields(headers: &HeaderMap, name: http::HeaderName) -> Option<String> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?.to_string();
    Some(values.fold(first, |mut all, v| {
        all.push(',');
        all.push_str(v);
        all
    }))
}

/// How an upstream exchange went, from its result.
fn classify(result: &Result<Response<UpstreamBody>, SendError>, stats: &ExchangeStats) -> Upstream {
    match result {
        Ok(response) if response.status().is_server_error() => Upstream::Status5xx,
        Ok(_) => Upstream::Success,
        // The deadline passed while the client was still sending its body: its slowness, not
        // the endpoint's.
        Err(SendError::Timeout) if stats.body_pending.get() => Upstream::ClientFault,
        Err(SendError::Timeout) => Upstream::Timeout,
        Err(SendError::Connect(_)) => Upstream::ConnectFailure,
        Err(SendError::ClientBody | SendError::ClientTimeout) => Upstream::ClientFault,
        Err(SendError::Exchange(_))
            if stats.client_body_failed.get() || stats.body_too_large.get() =>
        {
            Upstream::ClientFault
        }
        Err(SendError::Exchange(_)) => Upstream::Reset,
    }
}

/// What [`send_with_retries`] works with.
struct Tries<'a> {
    worker: &'a Rc<Worker>,
    service: &'a ServiceRuntime,
    policy: &'a retry::RetryPolicy,
    parts: http::request::Parts,
    body: ClientBody,
    limit: u64,
    stats: &'a Rc<ExchangeStats>,
    forwarding: Forwarding<'a>,
    deadline: Option<tokio::time::Instant>,
    /// The endpoint picked for the first try, and its breaker's admission.
    first: (usize, Option<Ticket>),
    key: Option<u64>,
    exchange: &'a mut Exchange,
    timer: Option<&'a mut DeadlineTimer>,
    /// gRPC calls stream: their bodies are never read ahead.
    grpc: bool,
}

/// The request body read ahead for retries: all of it and its trailers, or `None` when the
/// client's body failed or went over the listener's limit.
async fn read_ahead(body: &mut RequestBody) -> Option<(Bytes, Option<HeaderMap>)> {
    use http_body_util::BodyExt;
    let mut buffer = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => return Some((buffer.freeze(), None)),
            Some(Err(_)) => return None,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => buffer.extend_from_slice(&data),
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        return Some((buffer.freeze(), Some(trailers)));
                    }
                }
            },
        }
    }
}

/// Sends a request on a route with `retry` (see `retry.rs` for the rules): reads a small body
/// of declared length ahead (a streaming or larger one is sent as it comes and never retried),
/// then tries, and tries again while a failure is retriable, tries and budget are left and the
/// route's deadline allows the backoff. Reports every try's outcome; returns the endpoint and
/// the result of the last.
async fn send_with_retries(t: Tries<'_>) -> (usize, Result<Response<UpstreamBody>, SendError>) {
    let Tries {
        worker,
        service,
        policy,
        parts,
        body,
        limit,
        stats,
        forwarding,
        deadline,
        first: (mut index, mut ticket),
        key,
        exchange,
        mut timer,
        grpc,
    } = t;
    policy.count_request();
    let may_resend = policy.may_resend(&parts.method);
    let release = |index: usize, ticket: Option<Ticket>| {
        if let (Some(ticket), Some(h)) = (ticket, service.health.get(index)) {
            h.breaker.release(ticket);
        }
    };
    let mut body = RequestBody::new(body, limit, Rc::clone(stats));
    let declared = http_body::Body::size_hint(&body).exact();
    let small = declared.is_some_and(|n| n <= policy.config.replay_buffer);
    let mut streamed = None;
    let replay = if http_body::Body::is_end_stream(&body) {
        Some((Bytes::new(), None))
    } else if small && !grpc {
        let read = {
            let reading = pin!(read_ahead(&mut body));
            before(deadline, reading, timer.as_deref_mut()).await
        };
        match read {
            Some(Some(whole)) => Some(whole),
            Some(None) => {
                release(index, ticket);
                return (index, Err(SendError::ClientBody));
            }
            None => {
                release(index, ticket);
                return (index, Err(SendError::ClientTimeout));
            }
        }
    } else {
        streamed = Some(body);
        None
    };
    let mut tries: u32 = 1;
    let mut tried = [usize::MAX; retry::MAX_TRIES];
    tried[0] = index;
    loop {
        let address = match service.endpoints.get(index) {
            Some(e) => e.address,
            None => return (index, Err(SendError::Timeout)),
        };
        let try_body = match (&replay, streamed.take()) {
            (Some((data, None)), _) if data.is_empty() => {
                RequestBody::new(ClientBody::Empty, 0, Rc::clone(stats))
            }
            (Some((data, trailers)), _) => RequestBody::read_ahead(
                ClientBody::Buffered(Box::new(Buffered {
                    data: Some(data.clone()),
                    trailers: trailers.clone(),
                })),
                0,
                Rc::clone(stats),
                data.len() as u64,
            ),
            (None, Some(body)) => body,
            (None, None) => return (index, Err(SendError::ClientBody)),
        };
        let try_deadline = match policy.config.per_try_timeout {
            Some(per_try) => {
                let at = tokio::time::Instant::now() + per_try;
                Some(deadline.map_or(at, |d| d.min(at)))
            }
            None => deadline,
        };
        if let Some(recording) = exchange.trace.as_deref_mut() {
            recording.mark();
        }
        let sending = pin!(send(
            &worker.pool,
            address,
            service,
            Head::Borrowed(&parts),
            try_body,
            forwarding
        ));
        let result = before(try_deadline, sending, timer.as_deref_mut())
            .await
            .unwrap_or(Err(SendError::Timeout));
        let outcome = classify(&result, stats);
        let ended = tokio::time::Instant::now();
        report_outcome(service, index, outcome, ended, ticket);
        if let Some(recording) = exchange.trace.as_deref_mut() {
            recording.attempt(address, tries, attempt_end(&result, outcome));
        }
        let end = match (&result, outcome) {
            (Ok(response), _) => retry::TryEnd::Status(response.status()),
            (_, Upstream::ConnectFailure) => retry::TryEnd::ConnectFailure,
            (_, Upstream::Reset) => retry::TryEnd::Reset,
            (_, Upstream::Timeout) => retry::TryEnd::Timeout,
            _ => retry::TryEnd::Status(http::StatusCode::OK),
        };
        let wait = policy.backoff(tries);
        let in_time = deadline.is_none_or(|d| ended + wait < d);
        let reason = policy
            .reason(end, may_resend)
            .filter(|_| replay.is_some() && tries < policy.config.attempts && in_time);
        // The budget pays before the wait; the endpoint is chosen, and its breaker asked,
        // after it (a breaker may open meanwhile, and a half-open trial is not held idle).
        let Some(reason) = reason.filter(|r| policy.take(*r)) else {
            exchange
                .policies
                .note(("attempts", retry::attempts_text(tries)));
            return (index, result);
        };
        tokio::time::sleep(wait).await;
        let now = tokio::time::Instant::now();
        let tried_so_far = &tried[..tries as usize];
        let untried = |i: usize| !tried_so_far.contains(&i) && service.available(i, now);
        let any = |i: usize| service.available(i, now);
        let next = service
            .balancer
            .pick(key, &untried)
            .or_else(|| service.balancer.pick(key, &any));
        let admitted = match (next, &service.breaker) {
            (None, _) => None,
            (Some(next), None) => Some((next, None)),
            (Some(next), Some(config)) => {
                admit(service, next, now, config).map(|t| (next, Some(t)))
            }
        };
        let Some((next, next_ticket)) = admitted else {
            tracing::debug!(service = %service.name, ?reason, "no endpoint for the retry");
            exchange
                .policies
                .note(("attempts", retry::attempts_text(tries)));
            return (index, result);
        };
        drop(result);
        if let (Some(old), Some(new)) = (service.endpoints.get(index), service.endpoints.get(next))
        {
            old.load.end();
            new.load.begin();
        }
        exchange.endpoint = Some(next);
        ticket = next_ticket;
        index = next;
        if let Some(slot) = tried.get_mut(tries as usize) {
            *slot = next;
        }
        tries += 1;
    }
}

#[derive(Debug)]
enum SendError {
    Timeout,
    /// The client's request body failed (or went over the limit) while it was read ahead.
    ClientBody,
    /// The client's request body did not arrive within the route's deadline while it was read
    /// ahead (no upstream was contacted).
    ClientTimeout,
    Connect(pool::ConnectError),
    Exchange(ExchangeError),
}

/// A failed exchange, from either client: the gateway's HTTP/1.1 one or hyper's HTTP/2 one.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error(transparent)]
    H1(#[from] h1::Error),
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
}

/// One try on one connection: a response, or the request handed back unsent.
enum Attempt<'h> {
    Done(Response<UpstreamBody>),
    Again(Head<'h>, RequestBody, ExchangeError),
}

/// A request head as a try sends it: owned (one try, the usual case), or borrowed from a route
/// that retries and keeps it for the next try. The HTTP/1.1 client only reads it; an HTTP/2
/// send takes it, so a borrowed head is copied for HTTP/2 only.
// Not boxed: `Owned` is every request's path, and a box would cost each an allocation; the
// head was moved by value before this enum existed.
#[allow(clippy::large_enum_variant)]
enum Head<'h> {
    Owned(http::request::Parts),
    Borrowed(&'h http::request::Parts),
}

impl Head<'_> {
    fn get(&self) -> &http::request::Parts {
        match self {
            Head::Owned(parts) => parts,
            Head::Borrowed(parts) => parts,
        }
    }

    fn into_owned(self) -> http::request::Parts {
        match self {
            Head::Owned(parts) => parts,
            Head::Borrowed(parts) => {
                let mut copy = Request::new(()).into_parts().0;
                copy.method = parts.method.clone();
                copy.uri = parts.uri.clone();
                copy.version = parts.version;
                copy.headers = parts.headers.clone();
                copy
            }
        }
    }
}

/// Sends on a pooled connection, or a new one. A pooled connection that turns out to have been
/// closed before it carried the request hands the request back, which then goes once on a fresh
/// connection.
async fn send(
    pool: &Rc<Pool>,
    address: SocketAddr,
    service: &ServiceRuntime,
    parts: Head<'_>,
    body: RequestBody,
    forwarding: Forwarding<'_>,
) -> Result<Response<UpstreamBody>, SendError> {
    let transport = &service.transport;
    let mut forwarding = ForwardingOnce::new(forwarding);
    let (parts, body) = match pool.checkout(address, transport) {
        Some(sender) => match attempt(
            pool,
            sender,
            address,
            transport,
            parts,
            body,
            &mut forwarding,
        )
        .await?
        {
            Attempt::Done(response) => return Ok(response),
            Attempt::Again(parts, body, error) => {
                tracing::debug!(upstream = %address, %error, "pooled connection was closed; sending on a new one");
                (parts, body)
            }
        },
        None => (parts, body),
    };
    // Boxed: connecting (TCP, TLS, HTTP/2 handshakes) is rare next to pooled sends, and its large
    // future inlined here would be carried — and moved — by every request.
    let sender = Box::pin(pool.connect(address, transport, service.connect_timeout))
        .await
        .map_err(SendError::Connect)?;
    match attempt(
        pool,
        sender,
        address,
        transport,
        parts,
        body,
        &mut forwarding,
    )
    .await?
    {
        Attempt::Done(response) => Ok(response),
        Attempt::Again(_, _, error) => Err(SendError::Exchange(error)),
    }
}

async fn attempt<'h>(
    pool: &Rc<Pool>,
    sender: Sender,
    address: SocketAddr,
    transport: &Transport,
    parts: Head<'h>,
    body: RequestBody,
    forwarding: &mut ForwardingOnce<'_>,
) -> Result<Attempt<'h>, SendError> {
    match sender {
        Sender::H1(conn) => {
            let ret = h1::PoolReturn {
                to: Rc::clone(pool) as Rc<dyn h1::Checkin>,
                key: Pool::key(address, transport),
            };
            match h1::send(conn, parts.get(), body, address, ret, forwarding.for_head()).await {
                Ok(response) => Ok(Attempt::Done(response.map(UpstreamBody::H1))),
                Err(h1::Failed {
                    error,
                    retry: Some(body),
                }) => Ok(Attempt::Again(parts, body, error.into())),
                Err(h1::Failed { error, .. }) => Err(SendError::Exchange(error.into())),
            }
        }
        Sender::H2(mut sender) => {
            let mut parts = parts.into_owned();
            forwarding.into_map(&mut parts.headers);
            let mut request = Request::from_parts(parts, body);
            fit_h2(&mut request, transport, address);
            match pool::send_h2(&mut sender, request).await {
                Ok(response) => Ok(Attempt::Done(response.map(UpstreamBody::Hyper))),
                Err((error, Some(unsent))) => {
                    let (parts, body) = unsent.into_parts();
                    Ok(Attempt::Again(Head::Owned(parts), body, error.into()))
                }
                Err((error, None)) => Err(SendError::Exchange(error.into())),
            }
        }
    }
}

/// Shapes a request for HTTP/2: an absolute URI (`:scheme`, `:authority`) and no `Host`.
fn fit_h2(request: &mut Request<RequestBody>, transport: &Transport, endpoint: SocketAddr) {
    *request.version_mut() = Version::HTTP_2;
    let scheme = if matches!(transport, Transport::Tls { .. }) {
        "https"
    } else {
        "http"
    };
    let authority = request
        .headers_mut()
        .remove(header::HOST)
        .and_then(|h| h.to_str().ok().map(str::to_string))
        // An HTTP/1.0 client may send no Host: name the endpoint itself.
        .or_else(|| Some(endpoint.to_string()));
    if let Some(authority) = authority {
        let pq = request
            .uri()
            .path_and_query()
            .map_or("/", PathAndQuery::as_str);
        if let Ok(uri) = Uri::try_from(format!("{scheme}://{authority}{pq}")) {
            *request.uri_mut() = uri;
        }
    }
}

/// Forwards an `Upgrade` request on a dedicated connection; on `101 Switching Protocols` the
/// client and upstream connections are joined into a tunnel on its own task.
#[allow(clippy::too_many_arguments)]
async fn tunnel(
    worker: &Rc<Worker>,
    mut exchange: Box<Exchange>,
    service: &ServiceRuntime,
    (index, ticket): (usize, Option<Ticket>),
    now: tokio::time::Instant,
    request: Request<RequestBody>,
    client_upgrade: ClientUpgrade,
    request_id: HeaderValue,
    idle: std::time::Duration,
    answer: impl Fn(Box<Exchange>, GatewayError, bool) -> Result<Response<ResponseBody>, Infallible>,
) -> Result<Response<ResponseBody>, Infallible> {
    let Some(address) = service.endpoints.get(index).map(|e| e.address) else {
        return answer(exchange, GatewayError::NoHealthyUpstream, false);
    };
    // The route's deadline holds until the upstream answers the upgrade (the 101, or a
    // refusal, whose body it then bounds too); an open tunnel lives by the idle timeout.
    let deadline = exchange.route().and_then(|r| r.timeout).map(|t| now + t);
    let upgrading = async {
        let mut sender =
            Pool::connect_upgradable(address, &service.transport, service.connect_timeout)
                .await
                .map_err(TunnelError::Connect)?;
        sender
            .send_request(request)
            .await
            .map_err(TunnelError::Exchange)
    };
    let mut response = match before(deadline, pin!(upgrading), None).await {
        Some(Ok(r)) => r,
        Some(Err(TunnelError::Connect(e))) => {
            tracing::warn!(service = %service.name, error = %e, "upstream connect failed");
            report_outcome(service, index, Upstream::ConnectFailure, now, ticket);
            return answer(exchange, GatewayError::UpstreamUnavailable, false);
        }
        Some(Err(TunnelError::Exchange(e))) => {
            tracing::warn!(service = %service.name, upstream = %address, error = %e, "upstream exchange failed");
            report_outcome(service, index, Upstream::Reset, now, ticket);
            return answer(exchange, GatewayError::UpstreamUnavailable, false);
        }
        None => {
            report_outcome(service, index, Upstream::Timeout, now, ticket);
            return answer(exchange, GatewayError::UpstreamTimeout, false);
        }
    };
    report_outcome(service, index, Upstream::Success, now, ticket);
    // The upstream has answered the handshake: the tunnel holds no admission place.
    exchange.admitted = None;
    exchange.status = response.status().as_u16();
    exchange.policies.on_response(response.headers_mut());
    let upgraded = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    if upgraded {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        worker.websocket_upgrades.inc();
        let active = worker.websocket_active.clone();
        let listener = exchange.listener().map_or("", |l| &*l.name);
        let held = worker.open.hold_tunnel(worker, listener, active);
        tokio::task::spawn_local(async move {
            let _held = held;
            let end = websocket::relay(client_upgrade, upstream_upgrade, idle).await;
            tracing::debug!(upstream = %address, ?end, "tunnel closed");
        });
    }
    let (mut head, upstream_body) = response.into_parts();
    head.headers.insert(X_REQUEST_ID, request_id);
    let stats = Rc::clone(&exchange.stats);
    let deadline = if upgraded { None } else { deadline };
    let mut body = ResponseBody::upstream(upstream_body.into(), deadline, stats);
    body.on_finish(exchange);
    Ok(Response::from_parts(head, body))
}

/// How an upgrade request failed before the upstream answered it.
enum TunnelError {
    Connect(pool::UpgradeConnectError),
    Exchange(hyper::Error),
}

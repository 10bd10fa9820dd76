//! Admin API handlers.

use std::sync::Arc;

use axum::extract::{FromRef, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::stats::{self, RouteStats};
use super::AdminState;
use crate::gateway::Gateway;
use crate::observe::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::policy::cache::Purge;
use crate::proxy::http::headers::new_request_id;

/// What the handlers extract: the gateway's state, and the ring of route samples only the
/// admin API reads.
#[derive(Clone)]
struct ApiState {
    admin: AdminState,
    stats: Arc<RouteStats>,
}

impl FromRef<ApiState> for AdminState {
    fn from_ref(s: &ApiState) -> AdminState {
        s.admin.clone()
    }
}

impl FromRef<ApiState> for Arc<RouteStats> {
    fn from_ref(s: &ApiState) -> Arc<RouteStats> {
        Arc::clone(&s.stats)
    }
}

/// The admin API's routes; `loopback`: whether it is bound to a loopback address.
pub fn router(state: AdminState, stats: Arc<RouteStats>, loopback: bool) -> Router {
    let guard = axum::middleware::from_fn_with_state((state.clone(), loopback), guard_writes);
    let state = ApiState {
        admin: state,
        stats,
    };
    Router::new()
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/services", get(services))
        .route("/api/v1/routes/stats", get(route_stats))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/cache/purge", post(purge))
        .route(
            "/api/v1/services/{name}/endpoints",
            post(register).delete(deregister_by_body),
        )
        .route(
            "/api/v1/services/{name}/endpoints/{address}",
            axum::routing::delete(deregister_by_path),
        )
        .fallback(not_found)
        .layer(guard)
        .with_state(state)
}

/// The write endpoints (every method but GET and HEAD): with `[admin] token`, only for
/// `Authorization: Bearer TOKEN` (compared in constant time; 401 otherwise); without one, only
/// on a loopback bind (403 otherwise). The token is read from the config in force, so a reload
/// rotates it.
async fn guard_writes(
    State((s, loopback)): State<(AdminState, bool)>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use subtle::ConstantTimeEq;
    if matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    ) {
        return next.run(request).await;
    }
    // Browsers send `Origin` with every cross-site write, and a page visited on the gateway's
    // host could otherwise reach a loopback admin API: writes come from tools, never browsers.
    if request.headers().contains_key(header::ORIGIN) {
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin API's write endpoints do not accept requests from browsers (Origin)",
            None,
        );
    }
    let config = Arc::clone(&s.gateway.shared.snapshot.load().config);
    let Some(token) = config.admin.as_ref().and_then(|a| a.token.as_deref()) else {
        if loopback {
            return next.run(request).await;
        }
        return error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the admin API is bound to a non-loopback address without [admin] token: its write endpoints are disabled",
            None,
        );
    };
    let mut given = request.headers().get_all(header::AUTHORIZATION).iter();
    let presented = match (given.next(), given.next()) {
        (Some(value), None) => value
            .as_bytes()
            .split_at_checked(7)
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case(b"bearer "))
            .map(|(_, credential)| credential),
        _ => None,
    };
    if presented.is_some_and(|p| bool::from(p.ct_eq(token.as_bytes()))) {
        return next.run(request).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "this endpoint needs the admin token: Authorization: Bearer TOKEN",
        None,
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        axum::http::HeaderValue::from_static("Bearer realm=\"sluicegate-admin\""),
    );
    response
}

/// The JSON error body of SPEC 5.
fn error(status: StatusCode, code: &str, message: &str, extra: Option<(&str, Value)>) -> Response {
    let id = new_request_id();
    let mut body = json!({
        "error": code,
        "message": message,
        "request_id": id.to_str().unwrap_or_default(),
    });
    if let (Some((key, value)), Some(map)) = (extra, body.as_object_mut()) {
        map.insert(key.to_string(), value);
    }
    (status, [("x-request-id", id)], Json(body)).into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no_route",
        "no admin endpoint at this path",
        None,
    )
}

/// The dashboard: one static page that reads the API below from the browser.
async fn dashboard() -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("dashboard.html"),
    )
        .into_response()
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.readiness.is_ready() {
        Json(json!({"status": "ready"})).into_response()
    } else {
        let state = if s.readiness.is_draining() {
            "draining"
        } else {
            "starting"
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": state})),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let metrics = &s.gateway.shared.registries.metrics;
    // Series of routes and endpoints a reload removed go once nothing holds them: the reload
    // itself prunes too, but workers let go of the old snapshot a little later.
    metrics.prune_unused();
    let text = metrics.render();
    ([(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)], text).into_response()
}

async fn status(State(s): State<AdminState>) -> Json<Value> {
    let g: &Gateway = &s.gateway;
    let last = g.last_reload();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": g.uptime().as_secs(),
        "config_hash": g.config_hash(),
        "last_reload": {
            "result": if last.success { "success" } else { "failure" },
            "at": g.last_reload_at(),
            "problems": last.problems,
        },
        "listeners": g.listeners().iter().map(|l| json!({
            "name": l.name,
            "address": l.bound.to_string(),
        })).collect::<Vec<_>>(),
        "routes": routes(&g.shared.snapshot.load()),
        "load_shedding": load_shedding(&g.shared.snapshot.load()),
    }))
}

/// `[load_shedding]`'s state now, or null without one.
fn load_shedding(snapshot: &crate::proxy::snapshot::Snapshot) -> Value {
    let Some(shedder) = &snapshot.shedder else {
        return Value::Null;
    };
    let readings = shedder.readings();
    let queued: serde_json::Map<String, Value> = crate::config::Priority::ALL
        .into_iter()
        .map(|p| (p.as_str().to_string(), json!(shedder.queued(p))))
        .collect();
    json!({
        "limit": shedder.limit(),
        "in_flight": shedder.in_flight(),
        "queued": queued,
        "cpu": readings.cpu,
        "memory": readings.memory,
    })
}

/// Each route once, with the policy steps it runs in their order (`"rate_limit:per-client"`).
fn routes(snapshot: &crate::proxy::snapshot::Snapshot) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    snapshot
        .listeners
        .iter()
        .flat_map(|l| l.routes.iter())
        .filter(|r| seen.insert(std::sync::Arc::clone(&r.name)))
        .map(|r| {
            json!({
                "name": &*r.name,
                "service": &*r.service.name,
                "priority": r.priority.0.as_str(),
                "policies": r.policies.describe(),
            })
        })
        .collect()
}

/// `GET /api/v1/routes/stats?window=60s`: each route's request rate, error ratio and p99 latency
/// over the window, with a series per sample interval (`stats::Report`). 400 `bad_request` for a
/// window that is not a duration from the sample interval to the retention, or any other
/// parameter.
async fn route_stats(
    State(s): State<AdminState>,
    State(ring): State<Arc<RouteStats>>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let window = query
        .map_err(|e| stats::QueryError::Malformed(e.body_text()))
        .and_then(|Query(pairs)| stats::parse_window(&pairs));
    let window = match window {
        Ok(window) => window,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string(), None),
    };
    let live = stats::read(&s.gateway);
    Json(ring.report(&live, window)).into_response()
}

async fn services(State(s): State<AdminState>) -> Json<Value> {
    let snapshot = s.gateway.shared.snapshot.load();
    let now = tokio::time::Instant::now();
    let services: Vec<Value> = snapshot
        .config
        .services
        .iter()
        .filter_map(|c| snapshot.services.get(&c.name).map(|r| (c, r)))
        .map(|(c, r)| {
            let endpoints: Vec<Value> = r
                .endpoints
                .iter()
                .zip(&r.health)
                .zip(&c.endpoints)
                .map(|((e, h), config)| {
                    json!({
                        "address": e.address.to_string(),
                        "weight": e.weight,
                        "source": config.source.as_str(),
                        "healthy": h.is_healthy(),
                        "ejected": h.is_ejected(now),
                        "breaker": if r.breaker.is_some() { h.breaker.state().name() } else { "closed" },
                        "in_flight": e.load.in_flight(),
                    })
                })
                .collect();
            let discovery = match &c.discovery {
                Some(crate::config::DiscoveryConfig::Registry { default_ttl }) => json!({
                    "type": "registry",
                    "default_ttl_seconds": default_ttl.as_secs_f64(),
                    "registered": s.gateway.registrations.list(&c.name).len(),
                }),
                Some(crate::config::DiscoveryConfig::File { path, .. }) => {
                    let state = s.gateway.files.state(&c.name);
                    json!({
                        "type": "file",
                        "path": path.display().to_string(),
                        "last_refresh": state.as_ref().and_then(|f| f.refreshed).map(crate::observe::time::rfc3339_millis),
                        "last_error": state.and_then(|f| f.problem),
                    })
                }
                Some(crate::config::DiscoveryConfig::Dns { name, record, .. }) => {
                    let state = s.gateway.dns.state(&c.name);
                    json!({
                        "type": "dns",
                        "name": name,
                        "record": match record { crate::config::DnsRecord::A => "a", crate::config::DnsRecord::Srv => "srv" },
                        "last_refresh": state.as_ref().and_then(|d| d.refreshed).map(crate::observe::time::rfc3339_millis),
                        "last_error": state.and_then(|d| d.problem),
                    })
                }
                None => Value::Null,
            };
            json!({
                "name": c.name,
                "algorithm": c.algorithm.name(),
                "endpoints": endpoints,
                "discovery": discovery,
            })
        })
        .collect();
    Json(json!({ "services": services }))
}

/// `POST /api/v1/services/{name}/endpoints` with `{"address": "IP:PORT", "weight": 1, "ttl":
/// "10s"}` (weight and ttl optional; ttl as a duration string or whole seconds; default the
/// service's `default_ttl`): registers the endpoint, or renews it (a heartbeat). 200 with the
/// registration; 404 for an unknown service, 400 for a service without registry discovery or
/// a bad body.
async fn register(
    State(s): State<AdminState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let bad = |message: &str| error(StatusCode::BAD_REQUEST, "bad_request", message, None);
    let default_ttl = match registry_of(&s, &name) {
        Ok(ttl) => ttl,
        Err(response) => return *response,
    };
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return bad(
            "expected a JSON object: {\"address\": \"IP:PORT\", \"weight\": 1, \"ttl\": \"30s\"}",
        );
    };
    if let Some(unknown) = fields
        .keys()
        .find(|k| !["address", "weight", "ttl"].contains(&k.as_str()))
    {
        return bad(&format!(
            "unknown field \"{unknown}\"; expected address, weight, ttl"
        ));
    }
    let Some(address) = fields
        .get("address")
        .and_then(Value::as_str)
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
    else {
        return bad("\"address\" must be an IP address and port, such as \"10.0.0.5:8080\"");
    };
    let weight = match fields.get("weight") {
        None => 1,
        Some(w) => match w
            .as_u64()
            .filter(|w| (1..=u64::from(crate::config::MAX_WEIGHT)).contains(w))
        {
            Some(w) => w as u32,
            None => {
                return bad(&format!(
                    "\"weight\" must be a whole number from 1 to {}",
                    crate::config::MAX_WEIGHT
                ))
            }
        },
    };
    const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(86_400);
    let ttl = match fields.get("ttl") {
        None => default_ttl,
        Some(Value::String(text)) => match crate::config::units::parse_duration(text) {
            Ok(ttl) if !ttl.is_zero() => ttl,
            _ => return bad("\"ttl\" must be a duration such as \"30s\", more than 0"),
        },
        Some(v) => match v.as_u64().filter(|n| *n > 0) {
            Some(seconds) => std::time::Duration::from_secs(seconds),
            None => return bad("\"ttl\" must be a duration such as \"30s\", more than 0"),
        },
    };
    if ttl > MAX_TTL {
        return bad("\"ttl\" must be at most 1 day: an instance that stops without deregistering must still leave");
    }
    let outcome =
        s.gateway
            .registrations
            .register(&name, address, weight, ttl, std::time::Instant::now());
    if outcome != crate::discovery::registry::Registered::Renewed {
        tracing::info!(service = %name, endpoint = %address, weight, ?outcome, "endpoint registered");
        let gateway = Arc::clone(&s.gateway);
        let _ = tokio::task::spawn_blocking(move || gateway.discovery_changed()).await;
    }
    Json(json!({
        "service": name,
        "address": address.to_string(),
        "weight": weight,
        "ttl_seconds": ttl.as_secs_f64(),
    }))
    .into_response()
}

/// `DELETE /api/v1/services/{name}/endpoints` with `{"address": "IP:PORT"}`.
async fn deregister_by_body(
    State(s): State<AdminState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let address = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("address")?.as_str().map(str::to_string));
    let Some(address) = address else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected a JSON object: {\"address\": \"IP:PORT\"}",
            None,
        );
    };
    deregister(s, name, address).await
}

/// `DELETE /api/v1/services/{name}/endpoints/{address}`.
async fn deregister_by_path(
    State(s): State<AdminState>,
    axum::extract::Path((name, address)): axum::extract::Path<(String, String)>,
) -> Response {
    deregister(s, name, address).await
}

async fn deregister(s: AdminState, name: String, address: String) -> Response {
    if let Err(response) = registry_of(&s, &name) {
        return *response;
    }
    let Ok(address) = address.parse::<std::net::SocketAddr>() else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the address must be an IP address and port, such as \"10.0.0.5:8080\"",
            None,
        );
    };
    if !s.gateway.registrations.deregister(&name, address) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("{address} is not registered in service {name}"),
            None,
        );
    }
    tracing::info!(service = %name, endpoint = %address, "endpoint deregistered");
    let gateway = Arc::clone(&s.gateway);
    let _ = tokio::task::spawn_blocking(move || gateway.discovery_changed()).await;
    Json(json!({ "service": name, "address": address.to_string(), "deregistered": true }))
        .into_response()
}

/// The `default_ttl` of `name`'s registry, or the error answer: 404 for an unknown service, 400
/// for one that does not discover through the registry.
fn registry_of(s: &AdminState, name: &str) -> Result<std::time::Duration, Box<Response>> {
    let snapshot = s.gateway.shared.snapshot.load();
    let Some(service) = snapshot.config.services.iter().find(|c| c.name == name) else {
        return Err(Box::new(error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no service named {name}"),
            None,
        )));
    };
    match &service.discovery {
        Some(crate::config::DiscoveryConfig::Registry { default_ttl }) => Ok(*default_ttl),
        _ => Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            &format!("service {name} does not use discovery = {{ type = \"registry\" }}"),
            None,
        ))),
    }
}

async fn reload(State(s): State<AdminState>) -> Response {
    let gateway: Arc<Gateway> = Arc::clone(&s.gateway);
    // Reading the file and binding sockets block: keep them off the async threads.
    let result = tokio::task::spawn_blocking(move || gateway.reload()).await;
    match result {
        Ok(Ok(hash)) => Json(json!({"result": "success", "config_hash": hash})).into_response(),
        Ok(Err(e)) => error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the new configuration was refused; the running one stays",
            Some(("problems", json!(e.problems()))),
        ),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the reload task failed",
            None,
        ),
    }
}

/// `POST /api/v1/cache/purge` with exactly one of `{"prefix": "/users"}` (paths starting so),
/// `{"key": "host/path?query"}` (every variant and credential of it) or `{"tag": "…"}` (from the
/// upstream's `Cache-Tag` / `Surrogate-Key`): `{"purged": N}`, the responses removed from this
/// instance's memory. With the shared tier, also from Redis (`"shared": M`) and every other
/// instance's memory (by a published message); if Redis cannot be reached, 503
/// `cache_store_unavailable` says only this instance was purged.
async fn purge(State(s): State<AdminState>, body: axum::body::Bytes) -> Response {
    let bad = |message: &str| error(StatusCode::BAD_REQUEST, "bad_request", message, None);
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return bad("expected a JSON object with one of \"prefix\", \"key\" or \"tag\"");
    };
    if fields.len() != 1 {
        return bad("give exactly one of \"prefix\", \"key\" or \"tag\"");
    }
    let Some((kind, Value::String(value))) = fields.iter().next() else {
        return bad("the value must be a string");
    };
    if value.is_empty() {
        return bad("the value must not be empty");
    }
    let what = match kind.as_str() {
        "prefix" if value.starts_with('/') => Purge::Prefix(value.clone()),
        "prefix" => return bad("a prefix is a path: it starts with /"),
        "key" => Purge::Key(value.clone()),
        "tag" => Purge::Tag(value.clone()),
        _ => return bad("give exactly one of \"prefix\", \"key\" or \"tag\""),
    };
    let Some((store, shared)) = s.gateway.shared.registries.policies.cache.current() else {
        return Json(json!({ "purged": 0 })).into_response();
    };
    let purged = what.apply(&store);
    let Some(shared) = shared else {
        tracing::info!(kind = %kind, value = %value, purged, "cache purged");
        return Json(json!({ "purged": purged })).into_response();
    };
    match shared.purge(&what).await {
        Ok(removed) => {
            tracing::info!(kind = %kind, value = %value, purged, shared = removed, "cache purged on every instance");
            Json(json!({ "purged": purged, "shared": removed })).into_response()
        }
        Err(e) => {
            tracing::warn!(kind = %kind, value = %value, purged, error = %e, "cache purged on this instance only");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cache_store_unavailable",
                &format!("purged {purged} responses from this instance's memory, but the purge of the shared tier failed ({e}): Redis, and other instances if the purge could not be published, may still hold some; purge again"),
                Some(("purged", json!(purged))),
            )
        }
    }
}

//! The gateway's policy steps: what happens to a request between routing and forwarding, and to
//! its response on the way back. The proxy knows only [`Chain`]; each step is one module here.
//!
//! A route's chain is compiled when a config snapshot is built (policies resolved by name, keys
//! parsed, stores taken from the [`Registry`] so their state survives reloads); a route without
//! policies has an empty chain and runs no step code at all.
//!
//! The order is fixed, and written once, in `Chain::new`:
//! 1. **shed** (load shedding, `shed/`) — its CPU and memory check first, because a request shed
//!    for pressure must cost almost nothing; its admission to the upstreams after auth and the
//!    rate limit, so that refused requests take no place and a client-named class (`x-priority`)
//!    is read only from authenticated requests;
//! 2. **auth** (authenticate, then authorize) — who the consumer is, before anything counts
//!    per consumer;
//! 3. **rate limit** (`rate_limit.rs`) — after auth, so a bucket can be the consumer's, and so
//!    unauthenticated floods are refused by auth without spending tokens;
//! 4. **cache** — a hit is answered without the upstream, but only for requests the steps
//!    above let through;
//! 5. **faults** (chaos experiments) — on what would really be forwarded;
//! 6. then forwarding (retries, breakers) and mirroring.
//!
//! A step may answer the request itself ([`Flow::Answer`]), add fields to the request sent
//! upstream ([`Applied::on_forward`]), and see the response head on the way back, in reverse
//! order (cache fill, the rate-limit headers); the access log records each step's decision
//! (`"rate_limit": "allowed"`).
//! Shedding (`shed/`) is not a step of a route's chain: it is one admission controller for the
//! whole gateway, which the proxy asks before the chain (pressure) and after it (admission). Authentication (`auth/`) and rate
//! limiting exist; cache and faults are the issues that follow.

pub mod auth;
pub mod cache;
pub mod rate_limit;
pub mod shed;

pub use auth::redact_query;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use crate::answer::GatewayError;
use crate::config::{Cidr, Config, RouteConfig};
use crate::observe::metrics;
use crate::observe::trace::Recording;

/// The live state of every policy (buckets, later caches and breakers), kept across reloads by
/// policy name.
#[derive(Default)]
pub struct Registry {
    pub rate_limits: rate_limit::Registry,
    pub auth: auth::Registry,
    /// The admission controller of `[load_shedding]` (idle without one).
    pub shedder: Arc<shed::Shedder>,
    /// The response cache's store.
    pub cache: cache::Registry,
}

impl Registry {
    /// Forgets the state of policies `config` no longer has.
    pub fn retain(&self, config: &Config) {
        self.rate_limits.retain(config);
        self.auth.retain(config);
    }

    /// Periodic upkeep (dropping expired state); cheap to call often, from any worker.
    pub fn sweep(&self) {
        self.rate_limits.sweep();
    }
}

/// Every policy of a config, compiled once per snapshot; routes take theirs by name.
pub struct Compiled {
    rate_limits: HashMap<String, Arc<rate_limit::Limiter>>,
    auth: HashMap<String, Arc<auth::Authenticator>>,
    /// Request fields only the gateway may set (`x-consumer`, every `forward_claims` field of
    /// every policy): removed from every route's requests, whatever the route's own policies.
    protected: Arc<[HeaderName]>,
}

impl Compiled {
    pub fn new(config: &Config, registry: &Registry, metrics: &metrics::Registry) -> Compiled {
        let mut protected = vec![auth::X_CONSUMER];
        for name in config.auth.iter().flat_map(auth::forwarded_fields) {
            if !protected.contains(name) {
                protected.push(name.clone());
            }
        }
        Compiled {
            protected: protected.into(),
            rate_limits: config
                .rate_limits
                .iter()
                .map(|p| {
                    let limiter = registry
                        .rate_limits
                        .limiter(p, config.redis.as_ref(), metrics);
                    (p.name.clone(), Arc::new(limiter))
                })
                .collect(),
            auth: config
                .auth
                .iter()
                .map(|p| {
                    let authenticator = registry.auth.authenticator(p, metrics);
                    (p.name.clone(), Arc::new(authenticator))
                })
                .collect(),
        }
    }

    /// The chain of `route` (validation guarantees the policies it names exist).
    pub fn chain(&self, route: &RouteConfig) -> Chain {
        let rate_limit = route
            .rate_limit
            .as_ref()
            .and_then(|name| self.rate_limits.get(name))
            .cloned();
        let auth = route
            .auth
            .as_ref()
            .and_then(|name| self.auth.get(name))
            .map(|a| auth::Guard::new(Arc::clone(a), &route.require_scopes));
        Chain::new(auth, rate_limit, Arc::clone(&self.protected))
    }

    /// The query parameters that carry API keys, whose values the access log must not show.
    pub fn secret_query_parameters(config: &Config) -> Box<[String]> {
        config
            .auth
            .iter()
            .filter_map(auth::query_parameter)
            .collect()
    }
}

/// What a step may read of the request.
pub struct RequestCx<'a> {
    /// The connection's peer.
    pub peer: IpAddr,
    /// The listener's `trusted_proxies` when the peer is one of them: the client is then the
    /// last `X-Forwarded-For` address they do not cover.
    pub trusted_proxies: Option<&'a [Cidr]>,
    pub headers: &'a HeaderMap,
    /// The request target (API keys may travel in its query).
    pub uri: &'a Uri,
    /// When the request arrived.
    pub now: Instant,
}

/// What a step tells the pipeline.
pub enum Flow {
    /// Go on to the next step, then the upstream.
    Continue,
    /// Answer the request with this instead.
    Answer(Refusal),
}

/// A step's own answer: one of the gateway's errors (SPEC 5; a gRPC status for gRPC requests),
/// with the headers the step adds (`Retry-After`, `RateLimit-*`).
pub struct Refusal {
    pub error: GatewayError,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// One step's decision for the access log, as `"step": "decision"`.
pub type Decision = (&'static str, &'static str);

/// Steps in a chain at most: one of each kind.
const MAX_STEPS: usize = 6;

/// What the steps decided for one request, and what they add to its response.
#[derive(Default)]
pub struct Applied {
    decisions: [Decision; MAX_STEPS],
    count: usize,
    rate_limit: Option<rate_limit::Quota>,
    /// The policy that authenticated the request, and who it says sent it.
    auth: Option<(Arc<auth::Authenticator>, Arc<auth::Identity>)>,
}

impl Applied {
    /// Writes what the steps decided into the request going upstream. What a client sends as
    /// one of the `protected` fields (`x-consumer`, the `forward_claims` fields) never reaches an
    /// upstream, on any route, nor under a spelling with underscores (`X_Consumer`), which
    /// CGI-style upstreams read as the same name: only the gateway says who the consumer is.
    pub fn on_forward(&mut self, headers: &mut HeaderMap, uri: &mut Uri, protected: &[HeaderName]) {
        for name in protected {
            headers.remove(name);
        }
        remove_underscore_spellings(headers, protected);
        if let Some((policy, identity)) = &self.auth {
            policy.forward(identity, headers, uri);
        }
    }

    /// Who the auth step says sent the request, and the policy that says so.
    fn identity(&self) -> Option<(Arc<auth::Authenticator>, Arc<auth::Identity>)> {
        self.auth
            .as_ref()
            .map(|(policy, identity)| (Arc::clone(policy), Arc::clone(identity)))
    }

    /// The authenticated consumer's name, if the route authenticates and the credential names
    /// one.
    pub fn consumer(&self) -> Option<&str> {
        self.auth
            .as_ref()
            .and_then(|(_, identity)| identity.consumer.as_ref())
            .map(|(name, _)| &**name)
    }

    /// Records a decision made outside the steps (the number of upstream tries).
    pub fn note(&mut self, decision: Decision) {
        self.decide(decision);
    }

    fn decide(&mut self, decision: Decision) {
        if let Some(slot) = self.decisions.get_mut(self.count) {
            *slot = decision;
            self.count += 1;
        }
    }

    /// The decisions, in the order the steps ran.
    pub fn decisions(&self) -> &[Decision] {
        &self.decisions[..self.count]
    }

    /// Adds what the steps say on the way back to a response's headers.
    pub fn on_response(&self, headers: &mut HeaderMap) {
        if let Some(quota) = &self.rate_limit {
            quota.add_to(headers);
        }
    }
}

/// Removes fields whose names are a protected name spelled with `_` for `-`. Most requests
/// have no underscore in any field name, and pay one scan of the names.
fn remove_underscore_spellings(headers: &mut HeaderMap, protected: &[HeaderName]) {
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|k| {
            let k = k.as_str().as_bytes();
            k.contains(&b'_')
                && protected.iter().any(|p| {
                    let p = p.as_str().as_bytes();
                    p.len() == k.len()
                        && k.iter()
                            .zip(p)
                            .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
                })
        })
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
}

/// One step of a chain.
enum Step {
    Auth(auth::Guard),
    RateLimit(Arc<rate_limit::Limiter>),
}

/// A route's steps, in the fixed order.
pub struct Chain {
    steps: Box<[Step]>,
    /// Fields only the gateway may set ([`Applied::on_forward`]).
    protected: Arc<[HeaderName]>,
}

impl Chain {
    /// The chain of a route with these policies (`None` where the route has none of a kind).
    fn new(
        auth: Option<auth::Guard>,
        rate_limit: Option<Arc<rate_limit::Limiter>>,
        protected: Arc<[HeaderName]>,
    ) -> Chain {
        let steps: Vec<Step> = auth
            .map(Step::Auth)
            .into_iter()
            .chain(rate_limit.map(Step::RateLimit))
            .collect();
        Chain {
            steps: steps.into_boxed_slice(),
            protected,
        }
    }

    /// The fields only the gateway may set, for [`Applied::on_forward`].
    pub fn protected(&self) -> &[HeaderName] {
        &self.protected
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The steps' names, for `/api/v1/status` (`"rate_limit:per-client"`).
    pub fn describe(&self) -> Vec<String> {
        self.steps
            .iter()
            .map(|step| match step {
                Step::Auth(g) => format!("{}:{}", auth::STEP, g.name()),
                Step::RateLimit(l) => format!("{}:{}", rate_limit::STEP, l.name()),
            })
            .collect()
    }

    /// Runs the request side of every step, in order, until one answers.
    /// A sampled request's `recording` gets a span per step, with the step's decision.
    pub async fn on_request(
        &self,
        cx: &RequestCx<'_>,
        applied: &mut Applied,
        mut recording: Option<&mut Recording>,
    ) -> Flow {
        for step in self.steps.iter() {
            let started = recording.is_some().then(Instant::now);
            let flow = match step {
                Step::Auth(guard) => guard.on_request(cx, applied).await,
                Step::RateLimit(limiter) => limiter.on_request(cx, applied).await,
            };
            if let (Some(recording), Some(started)) = (recording.as_deref_mut(), started) {
                let (kind, name) = match step {
                    Step::Auth(guard) => (auth::STEP, guard.name()),
                    Step::RateLimit(limiter) => (rate_limit::STEP, limiter.name()),
                };
                let decision = applied.decisions().last().map_or("", |(_, d)| *d);
                recording.step(kind, name, started, decision);
            }
            if let Flow::Answer(_) = flow {
                return flow;
            }
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_protected_fields_never_go_upstream_in_any_spelling() {
        let mut applied = Applied::default();
        let mut headers = HeaderMap::new();
        let mut uri = Uri::from_static("/");
        headers.append("x-consumer", HeaderValue::from_static("mallory"));
        headers.append("x-consumer", HeaderValue::from_static("eve"));
        headers.append("x_consumer", HeaderValue::from_static("trudy"));
        headers.append("x_user-email", HeaderValue::from_static("ceo@corp"));
        headers.append("x_other", HeaderValue::from_static("kept"));
        let protected = [auth::X_CONSUMER, HeaderName::from_static("x-user-email")];
        applied.on_forward(&mut headers, &mut uri, &protected);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x_other"]);
        assert_eq!(applied.consumer(), None);
    }
}

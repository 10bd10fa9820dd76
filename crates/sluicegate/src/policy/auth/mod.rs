//! Authentication and authorization (SPEC 2.3): the `auth` step. A route's policy (`api_key` or
//! `jwt`) establishes who sends the request; the route's `require_scopes` decide whether that
//! consumer may. What it establishes ([`Identity`]) goes upstream as `x-consumer` (and
//! `forward_claims`), into the access log, and is the `consumer` rate-limit key.
//!
//! Answers (RFC 6750 §3 for the challenges):
//! - no credential: 401 `unauthenticated`, `WWW-Authenticate: Bearer realm="POLICY"` (or
//!   `ApiKey realm="POLICY"`), without an error code, as §3.1 asks;
//! - a bad one: 401 with `error="invalid_token"` and an `error_description` saying why (never
//!   the token or a claim's value); a credential given twice: `error="invalid_request"`;
//! - missing scopes: 403 `forbidden`, `error="insufficient_scope"` and the `scope` required;
//! - a `jwt` policy that has never had a key set (its IdP unreachable since start): 503
//!   `auth_unavailable` with `Retry-After`; the client did nothing wrong.
//!
//! gRPC requests get UNAUTHENTICATED, PERMISSION_DENIED and UNAVAILABLE instead. Every decision
//! is counted in `sluicegate_auth_decisions_total{policy,result,reason}` and recorded in the
//! access log as `"auth": "<reason>"`.

mod api_key;
mod credentials;
mod fetch;
pub mod file_watch;
mod jwt;
mod key_source;
mod token_cache;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{AUTHORIZATION, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};

use super::{Applied, Flow, Refusal, RequestCx};
use crate::answer::GatewayError;
use crate::config::{
    ApiKeyConfig, ApiKeyFrom, AuthConfig, AuthKind, Config, JwtConfig, JwtKeys, TokenFrom,
};
use crate::jose::Rejection;
use crate::observe::metrics::{self, Counter};
use crate::observe::names;
use api_key::ApiKeys;
use credentials::Found;
use jwt::{JwtVerifier, Verdict};
use key_source::KeySource;

/// The step's name in the access log and in `/api/v1/status`.
pub const STEP: &str = "auth";

/// The field that tells the upstream who the consumer is. Whatever a client sends under this
/// name is removed on every route.
pub const X_CONSUMER: HeaderName = HeaderName::from_static("x-consumer");

/// The request fields a policy's `forward_claims` writes.
pub fn forwarded_fields(config: &AuthConfig) -> impl Iterator<Item = &HeaderName> {
    let fields: &[(HeaderName, String)] = match &config.kind {
        AuthKind::Jwt(jwt) => &jwt.forward_claims,
        AuthKind::ApiKey(_) => &[],
    };
    fields.iter().map(|(name, _)| name)
}

/// The query parameter a policy reads API keys from, if it reads them from the query.
pub fn query_parameter(config: &AuthConfig) -> Option<String> {
    match &config.kind {
        AuthKind::ApiKey(ApiKeyConfig {
            from: ApiKeyFrom::Query(name),
            ..
        }) => Some(name.clone()),
        _ => None,
    }
}

pub use credentials::{percent_decode, redact_query};

/// Seconds a client is told to wait while no key set is loaded.
const UNAVAILABLE_RETRY_AFTER: u64 = 5;

/// Who a request's credential says sent it.
#[derive(Debug, Default)]
pub struct Identity {
    /// The consumer's name, as text and as the `x-consumer` value.
    pub consumer: Option<(Box<str>, HeaderValue)>,
    pub scopes: Box<[Box<str>]>,
    /// `forward_claims` fields, ready to send.
    pub forward: Box<[(HeaderName, HeaderValue)]>,
}

impl Identity {
    /// Heap bytes this identity holds (for the token cache's bound).
    fn heap_bytes(&self) -> usize {
        self.consumer.as_ref().map_or(0, |(c, v)| c.len() + v.len())
            + self.scopes.iter().map(|s| s.len() + 16).sum::<usize>()
            + self
                .forward
                .iter()
                .map(|(h, v)| h.as_str().len() + v.len() + 64)
                .sum::<usize>()
    }
}

/// Live state of auth policies kept across reloads: key sources whose settings did not change
/// (with their key sets and fetchers).
#[derive(Default)]
pub struct Registry {
    sources: Mutex<HashMap<String, (SourceSettings, Arc<KeySource>)>>,
}

#[derive(PartialEq)]
struct SourceSettings {
    keys: JwtKeys,
    /// The refresh bounds (zero where nothing is fetched).
    min_refresh: Duration,
    max_refresh: Duration,
    /// A hash of the `ca` file's content: a CA replaced under the same path is a change.
    ca: Option<u64>,
}

impl SourceSettings {
    fn of(config: &JwtConfig) -> SourceSettings {
        let (min_refresh, max_refresh, ca) = match &config.keys {
            JwtKeys::Url { ca, .. } => (
                config.jwks_min_refresh,
                config.jwks_max_refresh,
                ca.as_ref()
                    .and_then(|path| std::fs::read(path).ok())
                    .map(|pem| xxhash_rust::xxh3::xxh3_64(&pem)),
            ),
            _ => (Duration::ZERO, Duration::ZERO, None),
        };
        SourceSettings {
            keys: config.keys.clone(),
            min_refresh,
            max_refresh,
            ca,
        }
    }
}

impl Registry {
    /// The policy's key source: the one it had while its settings stay the same. A source
    /// restarted for new refresh bounds or a changed CA file (same `jwks_url` and `ca` path)
    /// starts from the key set the old one held, so the reload costs no availability.
    fn source(
        &self,
        policy: &str,
        settings: SourceSettings,
        metrics: &metrics::Registry,
    ) -> Arc<KeySource> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut carried = None;
        if let Some((kept, source)) = sources.get(policy) {
            if *kept == settings {
                return Arc::clone(source);
            }
            if kept.keys == settings.keys {
                carried = source.current();
            }
        }
        let source = Arc::new(KeySource::start(
            policy,
            &settings.keys,
            settings.min_refresh,
            settings.max_refresh,
            carried,
            metrics,
        ));
        sources.insert(policy.to_string(), (settings, Arc::clone(&source)));
        source
    }

    /// Forgets the sources of `jwt` policies `config` no longer has (stopping their fetchers
    /// once the snapshots that use them are gone).
    pub fn retain(&self, config: &Config) {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|name, _| {
                config
                    .auth
                    .iter()
                    .any(|p| p.name == *name && matches!(p.kind, AuthKind::Jwt(_)))
            });
    }

    /// An auth policy, compiled for one snapshot.
    pub fn authenticator(&self, config: &AuthConfig, metrics: &metrics::Registry) -> Authenticator {
        let kind = match &config.kind {
            AuthKind::ApiKey(c) => Kind::ApiKey {
                keys: ApiKeys::new(&config.name, c),
                from: c.from.clone(),
            },
            AuthKind::Jwt(c) => {
                if let JwtKeys::Secret(secret) = &c.keys {
                    let needed = c.algorithms.iter().map(|a| a.min_secret_bytes()).max();
                    if let Some(needed) = needed.filter(|n| secret.len() < *n) {
                        tracing::warn!(
                            policy = %config.name,
                            "the secret is {} bytes; RFC 7518 section 3.2 asks for at least {needed} with these algorithms: tokens signed with a short secret are easier to forge",
                            secret.len()
                        );
                    }
                }
                let source = self.source(&config.name, SourceSettings::of(c), metrics);
                Kind::Jwt {
                    verifier: JwtVerifier::new(c, source),
                    from: c.from.clone(),
                }
            }
        };
        let scheme = match kind {
            Kind::ApiKey { .. } => "ApiKey",
            Kind::Jwt { .. } => "Bearer",
        };
        // A policy name is a TOML key: it may hold a quote or a backslash, which a quoted
        // string in a challenge cannot.
        let realm: String = config
            .name
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
            .collect();
        let counter = |result: &str, reason: &str| {
            metrics.counter(
                names::AUTH_DECISIONS_TOTAL,
                names::AUTH_DECISIONS_TOTAL_HELP,
                &[
                    (names::label::POLICY, config.name.as_str()),
                    (names::label::RESULT, result),
                    (names::label::REASON, reason),
                ],
            )
        };
        let counters = Reason::ALL
            .iter()
            .map(|r| counter(r.result(), r.name()))
            .collect();
        Authenticator {
            name: Arc::from(config.name.as_str()),
            challenge: format!("{scheme} realm=\"{realm}\""),
            kind,
            strip_credentials: config.strip_credentials,
            counters,
        }
    }
}

/// One auth policy, compiled.
pub struct Authenticator {
    name: Arc<str>,
    kind: Kind,
    /// `Bearer realm="NAME"` or `ApiKey realm="NAME"`.
    challenge: String,
    strip_credentials: bool,
    /// By [`Reason`]'s position in [`Reason::ALL`].
    counters: Box<[Counter]>,
}

enum Kind {
    ApiKey {
        keys: ApiKeys,
        from: ApiKeyFrom,
    },
    Jwt {
        verifier: JwtVerifier,
        from: TokenFrom,
    },
}

/// How a request passed, or why not: the metric's `reason` and the access log's decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reason {
    Verified,
    Cached,
    ApiKey,
    Missing,
    Ambiguous,
    Token(Rejection),
    UnknownApiKey,
    InsufficientScope,
    Unavailable,
}

impl Reason {
    const ALL: [Reason; 21] = {
        let mut all = [Reason::Verified; 21];
        all[1] = Reason::Cached;
        all[2] = Reason::ApiKey;
        all[3] = Reason::Missing;
        all[4] = Reason::Ambiguous;
        all[5] = Reason::UnknownApiKey;
        all[6] = Reason::InsufficientScope;
        all[7] = Reason::Unavailable;
        let mut i = 0;
        while i < Rejection::ALL.len() {
            all[8 + i] = Reason::Token(Rejection::ALL[i]);
            i += 1;
        }
        all
    };

    fn name(self) -> &'static str {
        match self {
            Reason::Verified => "verified",
            Reason::Cached => "cached",
            Reason::ApiKey => "api_key",
            Reason::Missing => "missing",
            Reason::Ambiguous => "ambiguous",
            Reason::Token(r) => r.reason(),
            Reason::UnknownApiKey => "invalid_key",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::Unavailable => "unavailable",
        }
    }

    fn result(self) -> &'static str {
        match self {
            Reason::Verified | Reason::Cached | Reason::ApiKey => "success",
            _ => "failure",
        }
    }

    fn index(self) -> usize {
        Reason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }
}

impl Authenticator {
    pub fn name(&self) -> &str {
        &self.name
    }

    fn count(&self, reason: Reason, applied: &mut Applied) {
        if let Some(counter) = self.counters.get(reason.index()) {
            counter.inc();
        }
        applied.decide((STEP, reason.name()));
    }

    /// Establishes the request's identity and how it passed (not counted yet: the route's
    /// scopes may still refuse it), or answers the request.
    async fn authenticate(
        &self,
        cx: &RequestCx<'_>,
        applied: &mut Applied,
    ) -> Result<(Arc<Identity>, Reason), Refusal> {
        let (found, verdict) = match &self.kind {
            Kind::ApiKey { keys, from } => {
                let found = match from {
                    ApiKeyFrom::Header(name) => credentials::header(cx.headers, name),
                    ApiKeyFrom::Query(name) => credentials::query(cx.uri, name),
                };
                let verdict = match &found {
                    Found::Value(key) => Some(match keys.find(key) {
                        Some(identity) => Ok((identity, Reason::ApiKey)),
                        None => Err(Reason::UnknownApiKey),
                    }),
                    _ => None,
                };
                (found, verdict)
            }
            Kind::Jwt { verifier, from } => {
                let found = match from {
                    TokenFrom::Bearer => credentials::bearer(cx.headers),
                    TokenFrom::Header(name) => credentials::header(cx.headers, name),
                    TokenFrom::Cookie(name) => credentials::cookie(cx.headers, name),
                };
                let verdict = match &found {
                    Found::Value(token) => Some(match verifier.verify(token).await {
                        Verdict::Verified { identity, cached } => Ok((
                            identity,
                            if cached {
                                Reason::Cached
                            } else {
                                Reason::Verified
                            },
                        )),
                        Verdict::Refused(why) => Err(Reason::Token(why)),
                        Verdict::Unavailable => Err(Reason::Unavailable),
                    }),
                    _ => None,
                };
                (found, verdict)
            }
        };
        let reason = match (found, verdict) {
            (_, Some(Ok(passed))) => return Ok(passed),
            (_, Some(Err(reason))) => reason,
            (Found::Ambiguous, _) => Reason::Ambiguous,
            _ => Reason::Missing,
        };
        self.count(reason, applied);
        Err(self.refusal(reason, &[]))
    }

    fn refusal(&self, reason: Reason, scopes: &[Box<str>]) -> Refusal {
        let mut challenge = self.challenge.clone();
        let error = match reason {
            Reason::Unavailable => {
                return Refusal {
                    error: GatewayError::AuthUnavailable,
                    headers: vec![(RETRY_AFTER, HeaderValue::from(UNAVAILABLE_RETRY_AFTER))],
                };
            }
            Reason::Missing => GatewayError::Unauthenticated("no credentials were sent"),
            // RFC 6750 §3.1: invalid_request SHOULD be a 400.
            Reason::Ambiguous => {
                challenge.push_str(", error=\"invalid_request\", error_description=\"the credential is given more than once or is malformed\"");
                GatewayError::Malformed("the credential is given more than once or is malformed")
            }
            Reason::UnknownApiKey => {
                challenge.push_str(
                    ", error=\"invalid_key\", error_description=\"the API key is not valid\"",
                );
                GatewayError::Unauthenticated("the API key is not valid")
            }
            Reason::Token(why) => {
                let text = rejection_text(why);
                challenge.push_str(&format!(
                    ", error=\"invalid_token\", error_description=\"{text}\""
                ));
                GatewayError::Unauthenticated(text)
            }
            Reason::InsufficientScope => {
                let wanted: Vec<&str> = scopes.iter().map(|s| &**s).collect();
                let wanted: String = wanted
                    .join(" ")
                    .chars()
                    .filter(|c| *c != '"' && *c != '\\')
                    .collect();
                challenge.push_str(&format!(
                    ", error=\"insufficient_scope\", scope=\"{wanted}\""
                ));
                GatewayError::Forbidden
            }
            Reason::Verified | Reason::Cached | Reason::ApiKey => GatewayError::Forbidden,
        };
        let headers = HeaderValue::try_from(challenge)
            .map(|v| vec![(WWW_AUTHENTICATE, v)])
            .unwrap_or_default();
        Refusal { error, headers }
    }

    /// Applies the identity to the request going upstream (whose `x-consumer` and
    /// `forward_claims` fields the client sent are already gone): the verified ones are added,
    /// and the credential is removed when the policy strips it.
    pub fn forward(&self, identity: &Identity, headers: &mut HeaderMap, uri: &mut Uri) {
        for (name, value) in identity.forward.iter() {
            headers.append(name.clone(), value.clone());
        }
        if let Some((_, value)) = &identity.consumer {
            headers.insert(X_CONSUMER, value.clone());
        }
        if !self.strip_credentials {
            return;
        }
        match &self.kind {
            Kind::ApiKey {
                from: ApiKeyFrom::Header(name),
                ..
            }
            | Kind::Jwt {
                from: TokenFrom::Header(name),
                ..
            } => {
                headers.remove(name);
            }
            Kind::ApiKey {
                from: ApiKeyFrom::Query(name),
                ..
            } => credentials::strip_query(uri, name),
            Kind::Jwt {
                from: TokenFrom::Bearer,
                ..
            } => {
                headers.remove(AUTHORIZATION);
            }
            Kind::Jwt {
                from: TokenFrom::Cookie(name),
                ..
            } => credentials::strip_cookie(headers, name),
        }
    }
}

/// The `error_description` of a refused token: the rejection's text, which holds no quote or
/// backslash (RFC 6750 §3 allows neither).
fn rejection_text(why: Rejection) -> &'static str {
    match why {
        Rejection::Malformed => "the token is not a compact JWS",
        Rejection::TooLarge => "the token is too long",
        Rejection::BadHeader => "the token header is invalid",
        Rejection::Algorithm => "the token algorithm is not accepted",
        Rejection::Extension => "the token uses an unsupported JWS extension",
        Rejection::UnknownKey => "no key matches the token kid and algorithm",
        Rejection::Signature => "the token signature is invalid",
        Rejection::BadClaims => "the token claims are invalid",
        Rejection::Expired => "the token has expired",
        Rejection::NotYetValid => "the token is not valid yet",
        Rejection::MissingExpiry => "the token has no expiry",
        Rejection::Issuer => "the token issuer is not accepted",
        Rejection::Audience => "the token audience is not accepted",
    }
}

/// A route's auth step: its policy and the scopes the route requires.
pub struct Guard {
    auth: Arc<Authenticator>,
    require_scopes: Box<[Box<str>]>,
}

impl Guard {
    pub fn new(auth: Arc<Authenticator>, require_scopes: &[String]) -> Guard {
        Guard {
            auth,
            require_scopes: require_scopes
                .iter()
                .map(|s| Box::from(s.as_str()))
                .collect(),
        }
    }

    pub fn name(&self) -> &str {
        self.auth.name()
    }

    pub(super) async fn on_request(&self, cx: &RequestCx<'_>, applied: &mut Applied) -> Flow {
        let (identity, passed) = match self.auth.authenticate(cx, applied).await {
            Ok(passed) => passed,
            Err(refusal) => return Flow::Answer(refusal),
        };
        let lacking = self
            .require_scopes
            .iter()
            .any(|wanted| !identity.scopes.iter().any(|held| held == wanted));
        if lacking {
            self.auth.count(Reason::InsufficientScope, applied);
            return Flow::Answer(
                self.auth
                    .refusal(Reason::InsufficientScope, &self.require_scopes),
            );
        }
        self.auth.count(passed, applied);
        applied.auth = Some((Arc::clone(&self.auth), identity));
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_its_own_counter_slot_and_name() {
        let names: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), Reason::ALL.len());
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(r.index(), i);
        }
        for why in Rejection::ALL {
            let text = rejection_text(why);
            assert!(!text.contains('"') && !text.contains('\\'), "{text}");
        }
    }
}

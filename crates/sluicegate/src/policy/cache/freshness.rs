//! When a shared cache may store a response, for how long it is fresh, how old it is, and what
//! may be done with it when a request comes: RFC 9111 §3 (storing), §4.2 (freshness and age),
//! §5.2 (directives), and RFC 5861 (`stale-while-revalidate`, `stale-if-error`).
//!
//! Times are whole seconds, as every HTTP time field is. Everything here is pure: the caller
//! gives the clock.

use std::time::{Duration, SystemTime};

use http::header::{HeaderMap, AGE, AUTHORIZATION, DATE, EXPIRES, SET_COOKIE, VARY};
use http::{Method, StatusCode};

use super::directives::{CacheControl, DELTA_SECONDS_MAX};

/// Why a response is not stored (the access log's `cache` field says it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStored {
    /// Only GET responses are stored (HEAD is answered from them).
    Method,
    /// The request said `no-store` (§5.2.1.5).
    RequestNoStore,
    /// The response said `no-store` (§5.2.2.5).
    NoStore,
    /// `private`: for one user's cache only (§5.2.2.7).
    Private,
    /// The request carried `Authorization` and the response did not say `public` or `s-maxage`
    /// (§3.5; `must-revalidate`, which the RFC also accepts, is not enough here).
    Authorization,
    /// `Vary: *`: no later request can be known to match (§4.1).
    VaryAll,
    /// `Set-Cookie`, on a route that does not allow storing it.
    SetCookie,
    /// Not a status the route stores (1xx, 206 and the like are never stored).
    Status,
    /// Neither the upstream nor the route gives it a freshness lifetime.
    NoFreshness,
    /// A `Cache-Control` line did not parse.
    Malformed,
}

impl NotStored {
    pub fn as_str(self) -> &'static str {
        match self {
            NotStored::Method => "method",
            NotStored::RequestNoStore => "request_no_store",
            NotStored::NoStore => "no_store",
            NotStored::Private => "private",
            NotStored::Authorization => "authorization",
            NotStored::VaryAll => "vary_all",
            NotStored::SetCookie => "set_cookie",
            NotStored::Status => "status",
            NotStored::NoFreshness => "no_freshness",
            NotStored::Malformed => "malformed",
        }
    }
}

/// What the route allows beyond what the upstream says.
#[derive(Debug, Clone, Copy)]
pub struct RouteRules<'a> {
    /// Freshness for responses that give none (the route's `ttl`).
    pub ttl: Option<Duration>,
    /// Statuses stored at all.
    pub statuses: &'a [u16],
    /// Whether responses with `Set-Cookie` may be stored.
    pub store_set_cookie: bool,
}

/// The request side of an exchange, as the cache reads it.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub headers: &'a HeaderMap,
    pub cc: &'a CacheControl,
}

/// The response side: its head, and when it arrived.
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead<'a> {
    pub status: StatusCode,
    pub headers: &'a HeaderMap,
    pub cc: &'a CacheControl,
    pub time: SystemTime,
}

/// Whether a response may be stored by a shared cache (RFC 9111 §3), and its freshness lifetime
/// if so.
pub fn storable(
    request: RequestHead<'_>,
    response: ResponseHead<'_>,
    rules: RouteRules<'_>,
) -> Result<Duration, NotStored> {
    let (request_cc, response_cc, status) = (request.cc, response.cc, response.status);
    let (request, response_time, method) = (request.headers, response.time, request.method);
    let response = response.headers;
    if method != Method::GET {
        return Err(NotStored::Method);
    }
    if request_cc.no_store {
        return Err(NotStored::RequestNoStore);
    }
    if response_cc.malformed {
        return Err(NotStored::Malformed);
    }
    if response_cc.no_store {
        return Err(NotStored::NoStore);
    }
    if response_cc.private {
        return Err(NotStored::Private);
    }
    if request.contains_key(AUTHORIZATION) && !response_cc.public && response_cc.s_maxage.is_none()
    {
        return Err(NotStored::Authorization);
    }
    if vary_all(response) {
        return Err(NotStored::VaryAll);
    }
    if response.contains_key(SET_COOKIE) && !rules.store_set_cookie {
        return Err(NotStored::SetCookie);
    }
    if status.is_informational()
        || status == StatusCode::PARTIAL_CONTENT
        || !rules.statuses.contains(&status.as_u16())
    {
        return Err(NotStored::Status);
    }
    match explicit_lifetime(response_cc, response, response_time) {
        Some(lifetime) => Ok(lifetime),
        // `no-cache` needs no lifetime: it is revalidated before every use (§5.2.2.4).
        None if response_cc.no_cache => Ok(Duration::ZERO),
        None => rules.ttl.ok_or(NotStored::NoFreshness),
    }
}

/// Whether `Vary` lists `*` (in any of its lines).
fn vary_all(response: &HeaderMap) -> bool {
    response.get_all(VARY).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|name| name.trim_ascii() == b"*")
    })
}

/// The freshness lifetime the response gives itself, for a shared cache (§4.2.1): `s-maxage`,
/// else `max-age`, else `Expires` less `Date` (less the time of the response when it has no
/// `Date`). An invalid value or an `Expires` that is not a date gives 0: stale at once.
pub fn explicit_lifetime(
    cc: &CacheControl,
    response: &HeaderMap,
    response_time: SystemTime,
) -> Option<Duration> {
    if let Some(s) = cc.s_maxage.or(cc.max_age) {
        return Some(seconds(s.or_stale()));
    }
    let expires = response.get(EXPIRES)?;
    // More than one Expires is ambiguous (§4.2.1): stale.
    if response.get_all(EXPIRES).iter().count() > 1 {
        return Some(Duration::ZERO);
    }
    let Some(expires) = http_date(expires.as_bytes()) else {
        return Some(Duration::ZERO);
    };
    let date = date_of(response).unwrap_or(response_time);
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// The response's `Date`, when it has exactly one valid one.
pub fn date_of(response: &HeaderMap) -> Option<SystemTime> {
    let mut dates = response.get_all(DATE).iter();
    let first = dates.next()?;
    if dates.next().is_some() {
        return None;
    }
    http_date(first.as_bytes())
}

fn http_date(value: &[u8]) -> Option<SystemTime> {
    let text = std::str::from_utf8(value).ok()?;
    httpdate::parse_http_date(text.trim()).ok()
}

fn seconds(n: u32) -> Duration {
    Duration::from_secs(u64::from(n))
}

/// What the cache remembers of a stored response's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// When the request that brought it was sent, and when its response head arrived.
    pub request_time: SystemTime,
    pub response_time: SystemTime,
    /// The age it already had when it arrived (§4.2.3 `corrected_initial_age`).
    pub initial_age: Duration,
    pub lifetime: Duration,
}

impl Timing {
    /// §4.2.3: the response's age when it was received, from its `Age` and `Date` and the time
    /// the exchange took.
    pub fn new(
        response: &HeaderMap,
        request_time: SystemTime,
        response_time: SystemTime,
        lifetime: Duration,
    ) -> Timing {
        let age_value = age_of(response);
        let apparent_age = date_of(response)
            .and_then(|date| response_time.duration_since(date).ok())
            .unwrap_or(Duration::ZERO);
        let response_delay = response_time
            .duration_since(request_time)
            .unwrap_or(Duration::ZERO);
        let corrected_age_value = age_value + response_delay;
        Timing {
            request_time,
            response_time,
            initial_age: apparent_age.max(corrected_age_value),
            lifetime,
        }
    }

    /// §4.2.3 `current_age`, in whole seconds as `Age` is sent.
    pub fn age(&self, now: SystemTime) -> Duration {
        let resident = now
            .duration_since(self.response_time)
            .unwrap_or(Duration::ZERO);
        let age = self.initial_age + resident;
        Duration::from_secs(age.as_secs().min(u64::from(DELTA_SECONDS_MAX)))
    }
}

/// The response's `Age` (§5.1): "a cache encountering a message with a list-based Age field
/// value SHOULD use the first member of the field value, discarding subsequent ones"; if that
/// member "is invalid (e.g., it contains something other than a non-negative integer), a cache
/// SHOULD ignore the field" (0 here). Several `Age` lines are one list.
fn age_of(response: &HeaderMap) -> Duration {
    let Some(first) = response.get(AGE) else {
        return Duration::ZERO;
    };
    let bytes = first.as_bytes();
    let member = bytes.split(|b| *b == b',').next().unwrap_or(bytes);
    let text = member.trim_ascii();
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Duration::ZERO;
    }
    let n = text.iter().fold(0u64, |n, d| {
        (n * 10 + u64::from(d - b'0')).min(u64::from(DELTA_SECONDS_MAX))
    });
    Duration::from_secs(n)
}

/// What may be done with a stored response for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Fresh for this request: serve it.
    Fresh,
    /// Stale, within `stale-while-revalidate`: serve it, and revalidate in the background.
    StaleWhileRevalidate,
    /// It must be validated with the upstream first (stale, `no-cache`, or the request asks);
    /// if the upstream fails, `stale_if_error` says whether it may be served anyway.
    Revalidate { stale_if_error: bool },
}

/// How a stored response with `response_cc` and `timing` may be used for a request with
/// `request_cc` at `now` (§4.2, §4.3, §5.2.1, RFC 5861).
pub fn reuse(
    timing: &Timing,
    response_cc: &CacheControl,
    request_cc: &CacheControl,
    now: SystemTime,
) -> Reuse {
    let age = timing.age(now);
    let lifetime = timing.lifetime;
    // A shared cache must not serve stale what says must-revalidate, proxy-revalidate or
    // s-maxage (§5.2.2.2, §5.2.2.8, §5.2.2.10).
    let never_stale = response_cc.must_revalidate
        || response_cc.proxy_revalidate
        || response_cc.s_maxage.is_some();
    let staleness = age.saturating_sub(lifetime);
    let stale_if_error = !never_stale
        && age >= lifetime
        && response_cc
            .stale_if_error
            .or(request_cc.stale_if_error)
            .is_some_and(|s| staleness <= seconds(s.or_stale()));
    let revalidate = Reuse::Revalidate { stale_if_error };
    if response_cc.no_cache || request_cc.no_cache {
        return revalidate;
    }
    // The request's own limits (§5.2.1.1, §5.2.1.3).
    if let Some(max_age) = request_cc.max_age {
        if age > seconds(max_age.or_stale()) {
            return revalidate;
        }
    }
    if let Some(min_fresh) = request_cc.min_fresh {
        // Fresh for at least that much longer (§5.2.1.3).
        if age + seconds(min_fresh.or_stale()) > lifetime {
            return revalidate;
        }
    }
    if age < lifetime {
        return Reuse::Fresh;
    }
    if never_stale {
        return revalidate;
    }
    // The client accepts it this stale (§5.2.1.2).
    if request_cc
        .max_stale
        .is_some_and(|s| staleness <= seconds(s.or_stale()))
    {
        return Reuse::Fresh;
    }
    if response_cc
        .stale_while_revalidate
        .is_some_and(|s| staleness <= seconds(s.or_stale()))
    {
        return Reuse::StaleWhileRevalidate;
    }
    revalidate
}

#[cfg(test)]
mod tests {
    use super::super::test_headers as headers;
    use super::*;

    const RULES: RouteRules<'static> = RouteRules {
        ttl: None,
        statuses: &[200, 404],
        store_set_cookie: false,
    };

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn store(
        request: &[(&'static str, &str)],
        status: u16,
        response: &[(&'static str, &str)],
        rules: RouteRules<'_>,
    ) -> Result<Duration, NotStored> {
        let (req, resp) = (headers(request), headers(response));
        let request = RequestHead {
            method: &Method::GET,
            headers: &req,
            cc: &CacheControl::from_headers(&req),
        };
        let response = ResponseHead {
            status: StatusCode::from_u16(status).unwrap(),
            headers: &resp,
            cc: &CacheControl::from_headers(&resp),
            time: t(0),
        };
        storable(request, response, rules)
    }

    #[test]
    fn what_a_shared_cache_never_stores() {
        let cases: [(&[(&'static str, &str)], NotStored); 6] = [
            (
                &[("cache-control", "no-store, max-age=60")],
                NotStored::NoStore,
            ),
            (
                &[("cache-control", "private, max-age=60")],
                NotStored::Private,
            ),
            (
                &[("cache-control", "max-age=60"), ("vary", "accept, *")],
                NotStored::VaryAll,
            ),
            (
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                NotStored::SetCookie,
            ),
            (&[("cache-control", "max-age=60, =x")], NotStored::Malformed),
            (&[], NotStored::NoFreshness),
        ];
        for (response, why) in cases {
            assert_eq!(store(&[], 200, response, RULES), Err(why), "{response:?}");
        }
        let fresh = [("cache-control", "max-age=60")];
        assert_eq!(store(&[], 206, &fresh, RULES), Err(NotStored::Status));
        assert_eq!(store(&[], 500, &fresh, RULES), Err(NotStored::Status));
        assert_eq!(
            store(&[("cache-control", "no-store")], 200, &fresh, RULES),
            Err(NotStored::RequestNoStore)
        );
        let cookies = RouteRules {
            store_set_cookie: true,
            ..RULES
        };
        assert!(store(
            &[],
            200,
            &[("cache-control", "max-age=1"), ("set-cookie", "a=b")],
            cookies
        )
        .is_ok());
    }

    #[test]
    fn authorized_requests_are_stored_only_when_the_response_says_so() {
        let auth = [("authorization", "Bearer x")];
        assert_eq!(
            store(&auth, 200, &[("cache-control", "max-age=60")], RULES),
            Err(NotStored::Authorization)
        );
        assert_eq!(
            store(
                &auth,
                200,
                &[("cache-control", "max-age=60, must-revalidate")],
                RULES
            ),
            Err(NotStored::Authorization)
        );
        assert_eq!(
            store(
                &auth,
                200,
                &[("cache-control", "public, max-age=60")],
                RULES
            ),
            Ok(Duration::from_secs(60))
        );
        assert_eq!(
            store(&auth, 200, &[("cache-control", "s-maxage=30")], RULES),
            Ok(Duration::from_secs(30))
        );
    }

    #[test]
    fn lifetime_from_s_maxage_then_max_age_then_expires_then_the_route() {
        let lifetime = |resp: &[(&'static str, &str)]| store(&[], 200, resp, RULES);
        assert_eq!(
            lifetime(&[("cache-control", "max-age=60, s-maxage=10")]),
            Ok(Duration::from_secs(10))
        );
        assert_eq!(
            lifetime(&[
                ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                ("expires", "Tue, 14 Nov 2023 22:15:20 GMT"),
            ]),
            Ok(Duration::from_secs(120))
        );
        // Expires in an obsolete format is still a date (RFC 9110 §5.6.7).
        assert_eq!(
            lifetime(&[
                ("date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                ("expires", "Tuesday, 14-Nov-23 22:14:20 GMT"),
            ]),
            Ok(Duration::from_secs(60))
        );
        // Not a date, or two of them: already expired, but storable (it can be revalidated).
        assert_eq!(lifetime(&[("expires", "0")]), Ok(Duration::ZERO));
        // max-age wins over Expires.
        assert_eq!(
            lifetime(&[("cache-control", "max-age=5"), ("expires", "0")]),
            Ok(Duration::from_secs(5))
        );
        let ttl = RouteRules {
            ttl: Some(Duration::from_secs(300)),
            ..RULES
        };
        assert_eq!(store(&[], 200, &[], ttl), Ok(Duration::from_secs(300)));
        assert_eq!(store(&[], 404, &[], ttl), Ok(Duration::from_secs(300)));
        // no-cache is stored, to be revalidated before every use.
        assert_eq!(
            lifetime(&[("cache-control", "no-cache")]),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn age_follows_section_4_2_3() {
        // Sent at 0, answered at 2, Date says 1 s before the answer and Age says 10.
        let resp = headers(&[("date", "Tue, 14 Nov 2023 22:13:21 GMT"), ("age", "10")]);
        let response_time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_002);
        let request_time = response_time - Duration::from_secs(2);
        let timing = Timing::new(&resp, request_time, response_time, Duration::from_secs(60));
        // corrected_age_value = 10 + 2 > apparent_age = 1.
        assert_eq!(timing.initial_age, Duration::from_secs(12));
        assert_eq!(
            timing.age(response_time + Duration::from_secs(5)),
            Duration::from_secs(17)
        );
        // An Age that is not a number is ignored; the apparent age stands.
        let resp = headers(&[("date", "Tue, 14 Nov 2023 22:13:11 GMT"), ("age", "ten")]);
        let timing = Timing::new(&resp, response_time, response_time, Duration::ZERO);
        assert_eq!(timing.initial_age, Duration::from_secs(11));
        // A list: its first member counts, on one line or over several.
        let initial = |fields: &[(&'static str, &str)]| {
            Timing::new(
                &headers(fields),
                response_time,
                response_time,
                Duration::ZERO,
            )
            .initial_age
        };
        let old = Duration::from_secs(7200);
        assert_eq!(initial(&[("age", "7200, 0")]), old);
        assert_eq!(initial(&[("age", "7200"), ("age", "0")]), old);
        assert_eq!(initial(&[("age", "0, 7200")]), Duration::ZERO);
        assert_eq!(initial(&[("age", "x, 7200")]), Duration::ZERO);
    }

    fn timing(lifetime: u64) -> Timing {
        Timing {
            request_time: t(0),
            response_time: t(0),
            initial_age: Duration::ZERO,
            lifetime: Duration::from_secs(lifetime),
        }
    }

    fn cc(v: &str) -> CacheControl {
        CacheControl::from_headers(&headers(&[("cache-control", v)]))
    }

    #[test]
    fn reuse_fresh_stale_and_what_the_request_asks() {
        let none = CacheControl::default();
        assert_eq!(reuse(&timing(60), &none, &none, t(59)), Reuse::Fresh);
        let stale = Reuse::Revalidate {
            stale_if_error: false,
        };
        assert_eq!(reuse(&timing(60), &none, &none, t(60)), stale);
        // stale-while-revalidate: served while within it.
        let swr = cc("max-age=60, stale-while-revalidate=30");
        assert_eq!(
            reuse(&timing(60), &swr, &none, t(80)),
            Reuse::StaleWhileRevalidate
        );
        assert_eq!(reuse(&timing(60), &swr, &none, t(91)), stale);
        // stale-if-error: revalidate, but may serve stale if the upstream fails.
        let sie = cc("max-age=60, stale-if-error=100");
        assert_eq!(
            reuse(&timing(60), &sie, &none, t(150)),
            Reuse::Revalidate {
                stale_if_error: true
            }
        );
        assert_eq!(reuse(&timing(60), &sie, &none, t(161)), stale);
        // must-revalidate and s-maxage forbid serving stale, whatever else is said.
        let strict =
            cc("max-age=60, must-revalidate, stale-while-revalidate=30, stale-if-error=99");
        assert_eq!(reuse(&timing(60), &strict, &none, t(70)), stale);
        assert_eq!(
            reuse(&timing(60), &none, &cc("max-stale=100"), t(70)),
            Reuse::Fresh
        );
        assert_eq!(
            reuse(&timing(60), &cc("s-maxage=60"), &cc("max-stale"), t(70)),
            stale
        );
        // The request's limits.
        assert_eq!(reuse(&timing(60), &none, &cc("max-age=10"), t(11)), stale);
        assert_eq!(reuse(&timing(60), &none, &cc("min-fresh=20"), t(45)), stale);
        assert_eq!(
            reuse(&timing(60), &none, &cc("min-fresh=20"), t(40)),
            Reuse::Fresh
        );
        assert_eq!(reuse(&timing(60), &none, &cc("no-cache"), t(1)), stale);
        assert_eq!(reuse(&timing(60), &cc("no-cache"), &none, t(1)), stale);
    }
}

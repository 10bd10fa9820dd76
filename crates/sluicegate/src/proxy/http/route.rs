//! Route matching (SPEC 2): which route, and so which service, serves a request.
//!
//! Routes are sorted once per snapshot by precedence — exact path, then longest prefix, then the
//! number of host/header/method conditions, then file order — so a request takes the first route
//! that matches. Path prefixes match whole segments: `/api` matches `/api` and `/api/x`, not
//! `/apikeys` (a prefix ending in `/` matches anything below it).

use std::cmp::Reverse;

use http::{HeaderMap, Method};

use super::route_index::RouteIndex;
use crate::config::RouteMatch;

/// A route's conditions, prepared for matching.
#[derive(Debug, Clone)]
pub struct Matcher {
    inner: RouteMatch,
}

/// Borrowed pieces of a request that routes match on.
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// Host without port, any case.
    pub host: Option<&'a str>,
    pub path: &'a str,
    pub headers: &'a HeaderMap,
}

impl Matcher {
    pub fn new(inner: RouteMatch) -> Matcher {
        Matcher { inner }
    }

    /// Sort key: smaller sorts first (wins).
    fn precedence(&self, file_index: usize) -> (bool, Reverse<usize>, Reverse<usize>, usize) {
        let m = &self.inner;
        let exact = m.path.is_some();
        let prefix_len = m.path_prefix.as_ref().map_or(0, |p| p.len());
        let conditions =
            usize::from(m.host.is_some()) + m.headers.len() + usize::from(!m.methods.is_empty());
        (!exact, Reverse(prefix_len), Reverse(conditions), file_index)
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let m = &self.inner;
        if let Some(path) = &m.path {
            if req.path != path {
                return false;
            }
        }
        if let Some(prefix) = &m.path_prefix {
            if !prefix_matches(prefix, req.path) {
                return false;
            }
        }
        if let Some(host) = &m.host {
            match req.host {
                Some(h) if host_matches(host, h) => {}
                _ => return false,
            }
        }
        if !m.methods.is_empty() && !m.methods.contains(req.method) {
            return false;
        }
        m.headers
            .iter()
            .all(|(name, value)| req.headers.get_all(name).iter().any(|v| v == value))
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" || prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            // `pattern` is lower-case already (config); the request's host may not be.
            let Some(split) = host.len().checked_sub(suffix.len() + 1) else {
                return false;
            };
            split > 0
                && host.as_bytes()[split] == b'.'
                && host[split + 1..].eq_ignore_ascii_case(suffix)
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Removes a matched prefix from a path, keeping it absolute: `/users/7` less `/users` is `/7`.
pub fn strip_prefix<'a>(prefix: &str, path: &'a str) -> &'a str {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some("") | None => "/",
        Some(rest) if rest.starts_with('/') => rest,
        // Unreachable for matched routes (segment matching); keep the path whole to be safe.
        Some(_) => path,
    }
}

/// The host of a request (any case), from the URI (absolute form) or the Host header, without
/// port. Returns `None` when absent or not valid UTF-8.
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match uri.host() {
        Some(h) => h,
        None => headers.get(http::header::HOST)?.to_str().ok()?,
    };
    Some(split_host(raw).0)
}

/// A Host value's name and port as written: `example.com:8080` → (`example.com`, `8080`),
/// `[::1]:8080` → (`::1`, `8080`) (an IPv6 literal without its brackets), `example.com` →
/// (`example.com`, none).
pub fn split_host(raw: &str) -> (&str, Option<&str>) {
    if let Some(rest) = raw.strip_prefix('[') {
        let (name, after) = rest.split_once(']').unwrap_or((rest, ""));
        return (name, after.strip_prefix(':'));
    }
    match raw.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (raw, None),
    }
}

/// From this many routes on, a table is searched through a [`RouteIndex`]: below it, testing
/// each route costs less than the index's hash lookups (a few nanoseconds a route against
/// ≈ 20 ns a lookup).
const INDEX_FROM: usize = 16;

/// Routes of one listener in precedence order.
#[derive(Debug)]
pub struct RouteTable<R> {
    entries: Vec<(Matcher, R)>,
    index: Option<RouteIndex>,
}

impl<R> RouteTable<R> {
    /// `routes` in file order.
    pub fn new(routes: Vec<(Matcher, R)>) -> RouteTable<R> {
        let mut indexed: Vec<(usize, (Matcher, R))> = routes.into_iter().enumerate().collect();
        indexed.sort_by_key(|(i, (m, _))| m.precedence(*i));
        let entries: Vec<(Matcher, R)> = indexed.into_iter().map(|(_, e)| e).collect();
        let index = (entries.len() >= INDEX_FROM)
            .then(|| RouteIndex::new(entries.iter().map(|(m, _)| &m.inner)));
        RouteTable { entries, index }
    }

    pub fn find(&self, req: &RequestView<'_>) -> Option<&(Matcher, R)> {
        self.find_index(req).map(|i| &self.entries[i])
    }

    /// The position of the route `req` matches, for [`RouteTable::get`].
    pub fn find_index(&self, req: &RequestView<'_>) -> Option<usize> {
        match &self.index {
            Some(index) => index.find(req.host, req.path, |i| self.entries[i].0.matches(req)),
            None => self.scan(req),
        }
    }

    /// The first matching route by testing each in turn: what the index must agree with.
    fn scan(&self, req: &RequestView<'_>) -> Option<usize> {
        self.entries.iter().position(|(m, _)| m.matches(req))
    }

    pub fn get(&self, index: usize) -> Option<&R> {
        self.entries.get(index).map(|(_, r)| r)
    }

    /// The routes in precedence order.
    pub fn iter(&self) -> impl Iterator<Item = &R> {
        self.entries.iter().map(|(_, r)| r)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    fn m(host: Option<&str>, path: Option<&str>, prefix: Option<&str>) -> Matcher {
        Matcher::new(RouteMatch {
            host: host.map(str::to_string),
            path: path.map(str::to_string),
            path_prefix: prefix.map(str::to_string),
            ..Default::default()
        })
    }

    fn find<'t>(
        t: &'t RouteTable<&'static str>,
        host: Option<&str>,
        path: &str,
    ) -> Option<&'t str> {
        let headers = HeaderMap::new();
        let req = RequestView {
            method: &Method::GET,
            host,
            path,
            headers: &headers,
        };
        t.find(&req).map(|(_, r)| *r)
    }

    #[test]
    fn precedence_exact_then_longest_prefix_then_conditions_then_order() {
        let t = RouteTable::new(vec![
            (m(None, None, Some("/")), "root"),
            (m(None, None, Some("/users")), "users"),
            (m(None, Some("/users/me"), None), "me"),
            (m(None, None, Some("/users/admin")), "admin"),
            (
                m(Some("api.example.com"), None, Some("/users")),
                "users-api-host",
            ),
            (m(None, None, Some("/users")), "users-second"),
        ]);
        assert_eq!(find(&t, None, "/users/me"), Some("me"));
        assert_eq!(find(&t, None, "/users/admin/x"), Some("admin"));
        assert_eq!(
            find(&t, Some("api.example.com"), "/users/1"),
            Some("users-api-host")
        );
        assert_eq!(find(&t, None, "/users/1"), Some("users"));
        assert_eq!(find(&t, None, "/usersx"), Some("root"));
        assert_eq!(find(&t, None, "/other"), Some("root"));
    }

    #[test]
    fn no_match_without_catch_all() {
        let t = RouteTable::new(vec![(m(None, None, Some("/a")), "a")]);
        assert_eq!(find(&t, None, "/b"), None);
        assert_eq!(find(&t, None, "/a"), Some("a"));
    }

    #[test]
    fn methods_and_headers() {
        let mut with_header = RouteMatch {
            path_prefix: Some("/".into()),
            ..Default::default()
        };
        with_header.headers.push((
            HeaderName::from_static("x-canary"),
            HeaderValue::from_static("1"),
        ));
        with_header.methods.push(Method::POST);
        let t = RouteTable::new(vec![
            (m(None, None, Some("/")), "plain"),
            (Matcher::new(with_header), "canary"),
        ]);
        let mut headers = HeaderMap::new();
        headers.insert("x-canary", HeaderValue::from_static("1"));
        let post = RequestView {
            method: &Method::POST,
            host: None,
            path: "/",
            headers: &headers,
        };
        assert_eq!(t.find(&post).map(|(_, r)| *r), Some("canary"));
        let get = RequestView {
            method: &Method::GET,
            host: None,
            path: "/",
            headers: &headers,
        };
        assert_eq!(t.find(&get).map(|(_, r)| *r), Some("plain"));
    }

    #[test]
    fn hosts() {
        assert!(host_matches("*.example.com", "a.example.com"));
        assert!(!host_matches("*.example.com", "example.com"));
        assert!(!host_matches("*.example.com", "aexample.com"));
        let uri: http::Uri = "/x".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("api.example.com:8080"));
        assert_eq!(request_host(&uri, &h), Some("api.example.com"));
        h.insert("host", HeaderValue::from_static("[::1]:8080"));
        assert_eq!(request_host(&uri, &h), Some("::1"));
    }

    #[test]
    fn a_host_splits_into_name_and_port() {
        assert_eq!(split_host("example.com"), ("example.com", None));
        assert_eq!(
            split_host("example.com:8080"),
            ("example.com", Some("8080"))
        );
        assert_eq!(split_host("[::1]:8080"), ("::1", Some("8080")));
        assert_eq!(split_host("[::1]"), ("::1", None));
        assert_eq!(split_host("[::1"), ("::1", None));
    }

    #[test]
    fn stripping() {
        assert_eq!(strip_prefix("/users", "/users/7"), "/7");
        assert_eq!(strip_prefix("/users", "/users"), "/");
        assert_eq!(strip_prefix("/users/", "/users/7"), "/7");
        assert_eq!(strip_prefix("/", "/a"), "/a");
    }

    /// The index finds what testing every route in order finds, for any table and request:
    /// small alphabets of hosts and paths so that routes overlap, shadow and nest.
    mod index_agrees_with_scan {
        use super::*;
        use crate::proxy::http::route_index::RouteIndex;
        use proptest::prelude::*;

        const HOSTS: &[&str] = &["a.x", "B.x", "*.x", "*.a.x", "b.x"];
        const PATHS: &[&str] = &["/", "/a", "/a/", "/a/b", "/ab", "/a/b/", "/é", "", "/a//"];
        const REQUEST_HOSTS: &[&str] = &["a.x", "A.X", "c.a.x", "b.X", "x", "é.x"];
        const REQUEST_PATHS: &[&str] = &[
            "/", "/a", "/a/", "/a/b", "/a/bc", "/ab", "/abc/d", "", "/é/x", "/a//b", "/é", "/a/b/c",
        ];

        fn route() -> impl Strategy<Value = RouteMatch> {
            (
                prop::option::of(prop::sample::select(HOSTS)),
                0..3u8,
                prop::sample::select(PATHS),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(host, kind, path, post_only, header)| {
                    let mut m = RouteMatch {
                        host: host.map(str::to_string),
                        ..Default::default()
                    };
                    match kind {
                        0 => m.path = Some(path.to_string()),
                        1 => m.path_prefix = Some(path.to_string()),
                        _ => {}
                    }
                    if post_only {
                        m.methods.push(Method::POST);
                    }
                    if header {
                        m.headers.push((
                            HeaderName::from_static("x-canary"),
                            HeaderValue::from_static("1"),
                        ));
                    }
                    m
                })
        }

        proptest! {
            #[test]
            fn same_route(
                routes in prop::collection::vec(route(), 0..48),
                host in prop::option::of(prop::sample::select(REQUEST_HOSTS)),
                path in prop::sample::select(REQUEST_PATHS),
                post in any::<bool>(),
                canary in any::<bool>(),
            ) {
                let table = RouteTable::new(
                    routes.into_iter().map(|m| (Matcher::new(m), ())).collect(),
                );
                let index = RouteIndex::new(table.entries.iter().map(|(m, _)| &m.inner));
                let mut headers = HeaderMap::new();
                if canary {
                    headers.insert("x-canary", HeaderValue::from_static("1"));
                }
                let method = if post { Method::POST } else { Method::GET };
                let req = RequestView { method: &method, host, path, headers: &headers };
                let indexed = index.find(host, path, |i| table.entries[i].0.matches(&req));
                prop_assert_eq!(indexed, table.scan(&req));
                prop_assert_eq!(table.find_index(&req), table.scan(&req));
            }
        }
    }
}

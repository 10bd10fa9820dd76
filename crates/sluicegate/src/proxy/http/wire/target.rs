//! Which resource a request names: its host and its path, settled once so that routing,
//! every policy and the upstream all read the same request (RFC 9112 3.2–3.3, RFC 9110 7.2,
//! RFC 3986 5.2.4 and 6.2.2).
//!
//! A gateway that routes on one reading of a request and forwards another is a bypass: a
//! route restricted to one host reached with an absolute-form target naming another, a
//! `/public` prefix that lets `/public/../admin` through to a server that resolves the dot
//! segments itself. So the host is checked and made one, and the path is normalised here, and
//! the result is both what routes match and what is forwarded. Works on `http::request::Parts`
//! for HTTP/1.1 and HTTP/2 alike (hyper's HTTP/2 server gives `:authority` as the URI's).

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Uri};
use http::{Method, Version};

/// Why a request's target or host was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// 400, with the reason.
    #[error("{0}")]
    Malformed(&'static str),
    /// `CONNECT`: the gateway opens no tunnels to arbitrary addresses (405).
    #[error("CONNECT is not supported")]
    Connect,
}

/// Listener settings that decide how a path is normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Collapse runs of `/` into one (nginx's `merge_slashes`, on by default there too): a
    /// `//admin` that skips a `/admin` route and reaches a server that reads it as `/admin`
    /// is a bypass.
    pub merge_slashes: bool,
}

impl Default for PathRules {
    fn default() -> Self {
        PathRules {
            merge_slashes: true,
        }
    }
}

/// Checks the request's target and `Host`, and rewrites them into the one form the rest of the
/// gateway uses: a single `Host` equal to the target's authority, and a normalised path.
pub fn settle(
    method: &Method,
    version: Version,
    uri: &mut Uri,
    headers: &mut http::HeaderMap,
    rules: PathRules,
) -> Result<(), TargetError> {
    if method == Method::CONNECT {
        return Err(TargetError::Connect);
    }
    settle_host(version, uri, headers)?;
    // RFC 9112 3.2.4: the asterisk-form "is only used for a server-wide OPTIONS request".
    if uri.path() == "*" {
        return if method == Method::OPTIONS && uri.query().is_none() {
            Ok(())
        } else {
            Err(TargetError::Malformed(
                "asterisk-form target outside OPTIONS",
            ))
        };
    }
    if !uri.path().starts_with('/') {
        // An authority-form target (`host:port`) is CONNECT's alone (RFC 9112 3.2.3).
        return Err(TargetError::Malformed("request target is not a path"));
    }
    if let Cow::Owned(path) = normalize_path(uri.path(), rules)? {
        let pq = match uri.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let pq = PathAndQuery::from_maybe_shared(pq)
            .map_err(|_| TargetError::Malformed("invalid request target"))?;
        let mut parts = std::mem::take(uri).into_parts();
        parts.path_and_query = Some(pq);
        *uri =
            Uri::from_parts(parts).map_err(|_| TargetError::Malformed("invalid request target"))?;
    }
    Ok(())
}

/// RFC 9112 3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
/// request message that lacks a Host header field and to any request message that contains
/// more than one Host header field line or a Host header field with an invalid field value."
/// RFC 9112 3.2.2: a proxy receiving an absolute-form target "MUST ignore the received Host
/// header field (if any) and instead replace it with the host information of the
/// request-target"; the gateway goes further, as HAProxy does, and refuses a Host that names
/// another host than the target, since a server behind it may not ignore it.
fn settle_host(
    version: Version,
    uri: &Uri,
    headers: &mut http::HeaderMap,
) -> Result<(), TargetError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(TargetError::Malformed("more than one Host field"));
    }
    if let Some(host) = host {
        if !valid_host(host.as_bytes()) {
            return Err(TargetError::Malformed("invalid Host field"));
        }
    }
    let Some(authority) = uri.authority() else {
        return match (host, uri.scheme()) {
            (_, Some(_)) => Err(TargetError::Malformed("request target without a host")),
            (None, None) if version == Version::HTTP_11 => Err(TargetError::Malformed(
                "HTTP/1.1 request without a Host field",
            )),
            _ => Ok(()),
        };
    };
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        Some(_) => {
            return Err(TargetError::Malformed(
                "request target scheme is not http(s)",
            ))
        }
        None => return Err(TargetError::Malformed("request target is not a path")),
    }
    // RFC 9110 4.2.4: userinfo in an http(s) URI is deprecated and a known way to disguise
    // the host; a recipient "SHOULD parse for userinfo and treat its presence as an error".
    if authority.as_str().contains('@') || !valid_host(authority.as_str().as_bytes()) {
        return Err(TargetError::Malformed(
            "invalid authority in the request target",
        ));
    }
    if let Some(host) = host {
        if !host
            .as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
        {
            return Err(TargetError::Malformed(
                "Host field differs from the request target's authority",
            ));
        }
        return Ok(());
    }
    headers.insert(header::HOST, authority_value(authority));
    Ok(())
}

fn authority_value(authority: &Authority) -> HeaderValue {
    // An `Authority` holds only URI characters: always a valid field value.
    HeaderValue::from_str(authority.as_str()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `uri-host [ ":" port ]` (RFC 9110 7.2, RFC 3986 3.2.2–3.2.3), or empty (RFC 9112 3.2: a
/// client sends an empty Host when the target URI has no authority).
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        // IP-literal: hex digits, colons and dots inside brackets (IPv6, IPv4-embedded; IPvFuture
        // is not accepted).
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inside = &v[1..end];
        if inside.is_empty()
            || !inside
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    let reg_name = host.first() == Some(&b'[')
        || host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        });
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    reg_name && port_ok
}

/// Whether `b` is an RFC 3986 unreserved character: its percent-encoding means the same as
/// the character itself, so decoding it changes nothing but the spelling (RFC 3986 6.2.2.2).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The path in normal form: percent-encoded unreserved characters decoded and other
/// percent-encodings upper-cased (RFC 3986 6.2.2.1–2), then dot segments removed (RFC 3986
/// 5.2.4) and, with `merge_slashes`, runs of `/` collapsed. Encoded slashes (`%2F`) stay
/// encoded: they are data, not separators. A `..` that would climb above the root is refused,
/// as nginx does: no legitimate client sends one, and servers disagree on what it means.
///
/// Borrowed when the path is already normal: the common case costs one scan.
pub fn normalize_path(path: &str, rules: PathRules) -> Result<Cow<'_, str>, TargetError> {
    if is_normal(path.as_bytes(), rules) {
        return Ok(Cow::Borrowed(path));
    }
    // A backslash is not a URI character (RFC 3986 2); some servers read it as a `/`, which
    // would turn `/public\..\admin` into `/admin` behind a `/public` route.
    if path.contains('\\') {
        return Err(TargetError::Malformed("backslash in the path"));
    }
    // 1. Percent-encodings.
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != b'%' {
            decoded.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(TargetError::Malformed(
                "invalid percent-encoding in the path",
            ));
        };
        let c = hi << 4 | lo;
        if unreserved(c) {
            decoded.push(c);
        } else {
            decoded.push(b'%');
            decoded.push(bytes[i + 1].to_ascii_uppercase());
            decoded.push(bytes[i + 2].to_ascii_uppercase());
        }
        i += 3;
    }
    // 2. Segments. The path starts with '/', so the first split element is empty. `dir`:
    // the path so far ends in a directory (a '/').
    let segments: Vec<&[u8]> = decoded.split(|&b| b == b'/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut out: Vec<&[u8]> = Vec::with_capacity(segments.len());
    let mut dir = false;
    for (n, &segment) in segments.iter().enumerate() {
        match segment {
            b"." => dir = true,
            b".." => {
                if out.pop().is_none() {
                    return Err(TargetError::Malformed("path climbs above the root"));
                }
                dir = true;
            }
            // `..;x` and `.;x` are not dot segments to RFC 3986, but servers that cut path
            // parameters off before resolving them (Tomcat, Spring) read them as `..` and `.`:
            // `/public/..;/admin` is their `/admin`.
            s if s.starts_with(b"..;") || s.starts_with(b".;") => {
                return Err(TargetError::Malformed("dot segment with a path parameter"));
            }
            b"" if n == last => dir = true,
            b"" if rules.merge_slashes => {}
            s => {
                out.push(s);
                dir = false;
            }
        }
    }
    let mut normal = Vec::with_capacity(decoded.len());
    for s in &out {
        normal.push(b'/');
        normal.extend_from_slice(s);
    }
    if normal.is_empty() || dir {
        normal.push(b'/');
    }
    // Only ASCII went in (the path came from a URI), and only ASCII came out.
    String::from_utf8(normal)
        .map(Cow::Owned)
        .map_err(|_| TargetError::Malformed("invalid path"))
}

/// Whether the path has nothing to normalise: no percent-encoding that normalising changes, no
/// `.` or `..` segment (nor one with a path parameter), no backslash, and no empty segment to
/// merge.
fn is_normal(p: &[u8], rules: PathRules) -> bool {
    let mut prev_slash = false;
    for (i, &b) in p.iter().enumerate() {
        match b {
            b'\\' => return false,
            // Already normal: upper-case hex of a character that must stay encoded.
            b'%' => {
                let upper =
                    |b: Option<&u8>| b.is_some_and(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
                let normal = upper(p.get(i + 1))
                    && upper(p.get(i + 2))
                    && !unreserved(hex(p[i + 1]).unwrap_or(0) << 4 | hex(p[i + 2]).unwrap_or(0));
                if !normal {
                    return false;
                }
            }
            b'/' if prev_slash && rules.merge_slashes => return false,
            b'.' if prev_slash => {
                let rest = &p[i..];
                if rest == b"."
                    || rest == b".."
                    || rest.starts_with(b"./")
                    || rest.starts_with(b"../")
                    || rest.starts_with(b".;")
                    || rest.starts_with(b"..;")
                {
                    return false;
                }
            }
            _ => {}
        }
        prev_slash = b == b'/';
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn norm(path: &str) -> Result<String, TargetError> {
        normalize_path(path, PathRules::default()).map(Cow::into_owned)
    }

    #[test]
    fn dot_segments_and_slashes() {
        for (path, normal) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("/public/../admin", "/admin"),
            ("/public/./x", "/public/x"),
            ("/public/.", "/public/"),
            ("/public/..", "/"),
            ("/a/b/../", "/a/"),
            ("//admin", "/admin"),
            ("/a//b///c", "/a/b/c"),
            ("/a/b//", "/a/b/"),
            ("/public/%2e%2e/admin", "/admin"),
            ("/public/%2E%2e/admin", "/admin"),
            ("/public/.%2e/admin", "/admin"),
            ("/%7Euser/%41", "/~user/A"),
            ("/a%2fb", "/a%2Fb"),
            ("/a%2F..%2Fb", "/a%2F..%2Fb"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/.b", "/a/.b"),
            ("/a/b.", "/a/b."),
            ("/%20", "/%20"),
        ] {
            assert_eq!(norm(path).as_deref(), Ok(normal), "{path}");
        }
        let keep = PathRules {
            merge_slashes: false,
        };
        assert_eq!(normalize_path("//a//b", keep).unwrap(), "//a//b");
        assert_eq!(normalize_path("//a/./b", keep).unwrap(), "//a/b");
    }

    #[test]
    fn paths_that_climb_or_mis_encode_are_refused() {
        for path in [
            "/..",
            "/../a",
            "/a/../../b",
            "/%2e%2e/x",
            "/%",
            "/%4",
            "/%zz",
            "/a%g1",
            "/public/..;/admin",
            "/public/.;x/a",
            "/public/%2e%2e;/admin",
            "/public\\..\\admin",
            "/a\\b",
        ] {
            assert!(norm(path).is_err(), "{path}");
        }
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in [
            "/",
            "/a/b",
            "/a.b/c",
            "/.well-known/x",
            "/a/..b",
            "/a;b/c",
            "/a/b..;",
        ] {
            assert!(
                matches!(
                    normalize_path(path, PathRules::default()),
                    Ok(Cow::Borrowed(_))
                ),
                "{path}"
            );
        }
    }

    fn settled(
        method: Method,
        version: Version,
        target: &str,
        hosts: &[&str],
    ) -> Result<(Uri, HeaderMap), TargetError> {
        let mut uri: Uri = target.parse().unwrap();
        let mut headers = HeaderMap::new();
        for h in hosts {
            headers.append(header::HOST, HeaderValue::from_str(h).unwrap());
        }
        settle(
            &method,
            version,
            &mut uri,
            &mut headers,
            PathRules::default(),
        )?;
        Ok((uri, headers))
    }

    #[test]
    fn host_rules() {
        let get =
            |target: &str, hosts: &[&str]| settled(Method::GET, Version::HTTP_11, target, hosts);
        let (_, h) = get("http://public.test/x", &[]).unwrap();
        assert_eq!(
            h[header::HOST],
            "public.test",
            "absolute-form names the host"
        );
        let (_, h) = get("http://Public.test/x", &["public.TEST"]).unwrap();
        assert_eq!(h[header::HOST], "public.TEST");
        assert!(get("http://public.test/x", &["admin.test"]).is_err());
        assert!(get("http://public.test:8080/x", &["public.test"]).is_err());
        assert!(get("/x", &["a.test", "a.test"]).is_err(), "two Host fields");
        assert!(get("/x", &[]).is_err(), "HTTP/1.1 needs a Host");
        assert!(settled(Method::GET, Version::HTTP_10, "/x", &[]).is_ok());
        assert!(get("/x", &["a.test:80"]).is_ok());
        assert!(get("/x", &["[::1]:8080"]).is_ok());
        assert!(get("/x", &[""]).is_ok(), "empty Host (RFC 9112 3.2)");
        for bad in [
            "a b",
            "a.test:x",
            "a.test:80:80",
            "user@a.test",
            "[zz]",
            "a/b",
            "a.test:123456",
        ] {
            assert!(get("/x", &[bad]).is_err(), "{bad}");
        }
        assert!(get("http://user@a.test/x", &[]).is_err());
        assert!(get("ftp://a.test/x", &[]).is_err());
        assert!(get("a.test:443", &["a.test"]).is_err(), "authority-form");
    }

    #[test]
    fn target_forms() {
        let ok = |m: Method, t: &str| settled(m, Version::HTTP_11, t, &["h"]);
        assert!(ok(Method::OPTIONS, "*").is_ok());
        assert!(ok(Method::GET, "*").is_err());
        assert_eq!(
            ok(Method::CONNECT, "h:443").unwrap_err(),
            TargetError::Connect
        );
        let (uri, _) = ok(Method::GET, "/a/../b?x=/../y").unwrap();
        assert_eq!(uri, "/b?x=/../y", "the query is not a path");
        let (uri, h) = settled(
            Method::GET,
            Version::HTTP_11,
            "http://h.test/a/%2e%2e/b?q",
            &[],
        )
        .unwrap();
        assert_eq!(uri.to_string(), "http://h.test/b?q");
        assert_eq!(h[header::HOST], "h.test");
    }

    /// Paths from a small alphabet that makes dot segments, slashes and percent-encodings
    /// collide: whatever the normal form is, it is a fixed point, holds no dot or empty
    /// segment, and means what the input meant.
    mod normal_form {
        use super::*;
        use proptest::prelude::*;

        fn path() -> impl Strategy<Value = String> {
            prop::collection::vec(
                prop::sample::select(vec![
                    "/", "a", ".", "..", "%2e", "%2E", "%2f", "%41", "%7e", "~", ";", "b.", "%25",
                ]),
                0..12,
            )
            .prop_map(|parts| format!("/{}", parts.concat()))
        }

        proptest! {
            #[test]
            fn is_a_fixed_point_without_dot_or_empty_segments(p in path(), merge in any::<bool>()) {
                let rules = PathRules { merge_slashes: merge };
                if let Ok(normal) = normalize_path(&p, rules) {
                    let again = normalize_path(&normal, rules).expect("a normal path is valid");
                    prop_assert!(matches!(again, Cow::Borrowed(_)), "{} -> {}", p, normal);
                    prop_assert!(normal.starts_with('/'));
                    let segments: Vec<&str> = normal.split('/').skip(1).collect();
                    for (i, s) in segments.iter().enumerate() {
                        prop_assert!(*s != "." && *s != "..", "{} -> {}", p, normal);
                        prop_assert!(
                            !merge || !s.is_empty() || i + 1 == segments.len(),
                            "{} -> {}", p, normal
                        );
                    }
                    // Only unreserved characters are decoded: an encoded slash stays encoded
                    // (a `..` may remove the segment it is in), and never becomes a separator.
                    prop_assert!(
                        normal.matches("%2F").count()
                            <= p.matches("%2f").count() + p.matches("%2F").count()
                    );
                    prop_assert!(
                        normal.matches('/').count() <= p.matches('/').count() + 1,
                        "{} -> {}", p, normal
                    );
                }
            }
        }
    }
}

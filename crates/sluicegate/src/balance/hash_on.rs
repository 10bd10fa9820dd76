//! `hash_on`: which part of a request the hashing balancers (`hash`, `ring_hash`, `maglev`) key
//! on, and how that key becomes the `u64` they are handed.
//!
//! Parsing happens once, when the config is built; [`HashOn::key_hash`] runs per request, so it
//! borrows the key straight out of the request (no allocation, no decoding) and hashes the raw
//! bytes. The balancers never see the request itself.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use http::header::{HeaderName, COOKIE};
use http::{HeaderMap, Uri};
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed of every key hash. It is a constant, not random per process, because every gateway
/// instance behind the same DNS name, and every restart of one, must send a given key to the same
/// endpoint: that is the whole point of hashing (cache locality, session affinity). Changing it
/// remaps every key of every hashing service, so it never changes.
const KEY_SEED: u64 = 0x5a1c_e6a7_e5ee_d001;

/// The request attribute a hashing service keys on (`hash_on` in SPEC 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// `"client_ip"`: the peer address of the connection (IPv4-mapped IPv6 counts as IPv4).
    ClientIp,
    /// `"header:NAME"`: the first value of a request header.
    Header(HeaderName),
    /// `"cookie:NAME"`: the value of a cookie in the `Cookie` header(s).
    Cookie(String),
    /// `"path"`: the request path, without the query.
    Path,
    /// `"query:NAME"`: the raw (not percent-decoded) value of a query parameter; the first one
    /// when it repeats.
    Query(String),
}

/// Why a `hash_on` string was rejected. Each message says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HashOnError {
    #[error(
        "unknown hash_on `{0}`: expected \"client_ip\", \"header:NAME\", \"cookie:NAME\", \
         \"path\" or \"query:NAME\""
    )]
    Unknown(String),
    #[error("hash_on `{kind}:` needs a name after the colon, e.g. \"{kind}:{example}\"")]
    MissingName {
        kind: &'static str,
        example: &'static str,
    },
    #[error("hash_on `header:{0}`: `{0}` is not a valid HTTP header name")]
    InvalidHeaderName(String),
    #[error(
        "hash_on `cookie:{0}`: `{0}` is not a valid cookie name (expected visible ASCII without \
         spaces, `=`, `;`, `,` or quotes)"
    )]
    InvalidCookieName(String),
    #[error(
        "hash_on `query:{0}`: `{0}` is not a valid query parameter name (expected no `&`, `=`, \
         `#` or whitespace)"
    )]
    InvalidQueryName(String),
}

impl HashOn {
    /// Parses a config string: `"client_ip"`, `"header:NAME"`, `"cookie:NAME"`, `"path"` or
    /// `"query:NAME"`. Header names are case-insensitive (stored lowercase); cookie and query
    /// names are matched exactly, as browsers and servers treat them.
    pub fn parse(s: &str) -> Result<HashOn, HashOnError> {
        match s {
            "client_ip" => return Ok(HashOn::ClientIp),
            "path" => return Ok(HashOn::Path),
            _ => {}
        }
        let Some((kind, name)) = s.split_once(':') else {
            return Err(HashOnError::Unknown(s.to_owned()));
        };
        let missing = |kind, example| HashOnError::MissingName { kind, example };
        match kind {
            "header" => {
                if name.is_empty() {
                    return Err(missing("header", "x-user-id"));
                }
                HeaderName::from_bytes(name.as_bytes())
                    .map(HashOn::Header)
                    .map_err(|_| HashOnError::InvalidHeaderName(name.to_owned()))
            }
            "cookie" => {
                if name.is_empty() {
                    return Err(missing("cookie", "session"));
                }
                if !name.bytes().all(is_cookie_name_byte) {
                    return Err(HashOnError::InvalidCookieName(name.to_owned()));
                }
                Ok(HashOn::Cookie(name.to_owned()))
            }
            "query" => {
                if name.is_empty() {
                    return Err(missing("query", "user"));
                }
                let bad = |b: u8| matches!(b, b'&' | b'=' | b'#') || !b.is_ascii_graphic();
                if name.bytes().any(bad) {
                    return Err(HashOnError::InvalidQueryName(name.to_owned()));
                }
                Ok(HashOn::Query(name.to_owned()))
            }
            _ => Err(HashOnError::Unknown(s.to_owned())),
        }
    }

    /// Hashes this request's key, or `None` when the request lacks it (no such header, cookie or
    /// parameter, or an empty value: an empty key would pin every such request to one endpoint,
    /// so those requests are spread by the balancer's round robin fallback instead).
    ///
    /// Borrows the key from the request and hashes its raw bytes: no allocation, no decoding.
    pub fn key_hash(&self, client_ip: IpAddr, uri: &Uri, headers: &HeaderMap) -> Option<u64> {
        match self {
            HashOn::ClientIp => Some(ip_hash(client_ip)),
            HashOn::Header(name) => {
                let value = headers.get(name)?.as_bytes();
                non_empty_hash(value)
            }
            HashOn::Cookie(name) => headers
                .get_all(COOKIE)
                .iter()
                .find_map(|value| cookie_value(value.as_bytes(), name.as_bytes()))
                .and_then(non_empty_hash),
            HashOn::Path => Some(hash_bytes(uri.path().as_bytes())),
            HashOn::Query(name) => query_value(uri.query()?, name).and_then(non_empty_hash),
        }
    }
}

impl FromStr for HashOn {
    type Err = HashOnError;

    fn from_str(s: &str) -> Result<HashOn, HashOnError> {
        HashOn::parse(s)
    }
}

/// Renders the config string back (`parse(x.to_string()) == x`), for the admin API and logs.
impl fmt::Display for HashOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashOn::ClientIp => f.write_str("client_ip"),
            HashOn::Header(name) => write!(f, "header:{name}"),
            HashOn::Cookie(name) => write!(f, "cookie:{name}"),
            HashOn::Path => f.write_str("path"),
            HashOn::Query(name) => write!(f, "query:{name}"),
        }
    }
}

fn hash_bytes(bytes: &[u8]) -> u64 {
    xxh3_64_with_seed(bytes, KEY_SEED)
}

fn non_empty_hash(bytes: &[u8]) -> Option<u64> {
    (!bytes.is_empty()).then(|| hash_bytes(bytes))
}

/// Hashes the address octets. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack
/// listener reports for IPv4 clients) hashes as the IPv4 address, so one client maps the same
/// way whichever listener it came through.
fn ip_hash(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => hash_bytes(&v4.octets()),
        IpAddr::V6(v6) => hash_bytes(&v6.octets()),
    }
}

/// RFC 6265 `cookie-name` is an RFC 7230 token: visible ASCII except separators.
fn is_cookie_name_byte(b: u8) -> bool {
    b.is_ascii_graphic()
        && !matches!(
            b,
            b'(' | b')'
                | b'<'
                | b'>'
                | b'@'
                | b','
                | b';'
                | b':'
                | b'\\'
                | b'"'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'='
                | b'{'
                | b'}'
        )
}

/// The value of cookie `name` in one `Cookie` header value (`"a=b; c=d"`), as sent (quotes, if
/// any, included). Pairs without `=` are skipped.
fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|&b| b == b'=')?;
        let (n, v) = (&pair[..eq], &pair[eq + 1..]);
        (n.trim_ascii() == name).then(|| v.trim_ascii())
    })
}

/// The raw value of the first parameter `name` in a query string (`"a=1&b=2"`); `""` for a
/// parameter without `=`.
fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a [u8]> {
    query.split('&').find_map(|pair| {
        let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
        (n == name).then_some(v.as_bytes())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));

    fn key(on: &str, uri: &str, headers: &[(&str, &str)]) -> Option<u64> {
        let on = HashOn::parse(on).unwrap();
        let uri: Uri = uri.parse().unwrap();
        let mut map = HeaderMap::new();
        for (n, v) in headers {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        on.key_hash(IP, &uri, &map)
    }

    #[test]
    fn parses_every_form_and_renders_it_back() {
        for s in [
            "client_ip",
            "path",
            "header:x-user-id",
            "cookie:session",
            "query:user",
        ] {
            let on = HashOn::parse(s).unwrap();
            assert_eq!(on.to_string(), s);
            assert_eq!(s.parse::<HashOn>().unwrap(), on);
        }
        assert_eq!(
            HashOn::parse("header:X-User-Id").unwrap(),
            HashOn::Header(HeaderName::from_static("x-user-id"))
        );
    }

    #[test]
    fn rejects_bad_strings_saying_what_was_expected() {
        let err = HashOn::parse("clientip").unwrap_err();
        assert_eq!(err, HashOnError::Unknown("clientip".into()));
        assert!(err.to_string().contains("\"header:NAME\""), "{err}");
        assert!(matches!(
            HashOn::parse("body:x"),
            Err(HashOnError::Unknown(_))
        ));
        assert!(matches!(HashOn::parse(""), Err(HashOnError::Unknown(_))));
        let err = HashOn::parse("header:").unwrap_err();
        assert!(err.to_string().contains("header:x-user-id"), "{err}");
        assert!(matches!(
            HashOn::parse("cookie:"),
            Err(HashOnError::MissingName { kind: "cookie", .. })
        ));
        assert!(matches!(
            HashOn::parse("header:bad name"),
            Err(HashOnError::InvalidHeaderName(_))
        ));
        assert!(matches!(
            HashOn::parse("cookie:a=b"),
            Err(HashOnError::InvalidCookieName(_))
        ));
        assert!(matches!(
            HashOn::parse("query:a&b"),
            Err(HashOnError::InvalidQueryName(_))
        ));
    }

    #[test]
    fn header_key_is_the_first_value_and_missing_or_empty_is_none() {
        let a = key("header:x-user-id", "/", &[("x-user-id", "alice")]);
        assert!(a.is_some());
        assert_eq!(
            a,
            key(
                "header:x-user-id",
                "/other?q=1",
                &[("X-User-Id", "alice"), ("x-user-id", "bob")]
            )
        );
        assert_ne!(a, key("header:x-user-id", "/", &[("x-user-id", "bob")]));
        assert_eq!(key("header:x-user-id", "/", &[]), None);
        assert_eq!(key("header:x-user-id", "/", &[("x-user-id", "")]), None);
    }

    #[test]
    fn cookie_key_is_found_in_any_cookie_header() {
        let a = key("cookie:sid", "/", &[("cookie", "sid=abc")]);
        assert!(a.is_some());
        assert_eq!(
            a,
            key("cookie:sid", "/", &[("cookie", "x=1;  sid=abc ; y=2")])
        );
        assert_eq!(
            a,
            key(
                "cookie:sid",
                "/",
                &[("cookie", "x=1"), ("cookie", "sid=abc")]
            )
        );
        // A cookie whose name merely contains the wanted one does not match.
        assert_eq!(key("cookie:sid", "/", &[("cookie", "xsid=abc")]), None);
        assert_eq!(key("cookie:sid", "/", &[("cookie", "sid")]), None);
        assert_eq!(key("cookie:sid", "/", &[("cookie", "sid=")]), None);
        assert_eq!(key("cookie:sid", "/", &[]), None);
        // Values may contain `=`.
        assert_ne!(
            key("cookie:sid", "/", &[("cookie", "sid=a=b")]),
            key("cookie:sid", "/", &[("cookie", "sid=a")])
        );
    }

    #[test]
    fn query_key_is_the_raw_value_of_the_first_parameter() {
        let a = key("query:user", "/x?user=alice", &[]);
        assert!(a.is_some());
        assert_eq!(a, key("query:user", "/y?a=1&user=alice&user=bob", &[]));
        assert_ne!(a, key("query:user", "/x?user=al%69ce", &[]));
        assert_eq!(key("query:user", "/x?username=alice", &[]), None);
        assert_eq!(key("query:user", "/x?user", &[]), None);
        assert_eq!(key("query:user", "/x", &[]), None);
    }

    #[test]
    fn path_key_ignores_the_query_and_client_ip_ignores_the_request() {
        let p = key("path", "/a/b?x=1", &[]);
        assert_eq!(p, key("path", "http://h/a/b", &[]));
        assert_ne!(p, key("path", "/a/c", &[]));
        assert_eq!(key("client_ip", "/a", &[]), key("client_ip", "/b", &[]));
    }

    #[test]
    fn ipv4_mapped_ipv6_hashes_as_ipv4() {
        let v6 = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let uri = Uri::from_static("/");
        let h = HeaderMap::new();
        let on = HashOn::ClientIp;
        assert_eq!(on.key_hash(v6, &uri, &h), on.key_hash(IP, &uri, &h));
        assert_ne!(
            on.key_hash(IpAddr::V6(Ipv6Addr::LOCALHOST), &uri, &h),
            on.key_hash(IP, &uri, &h)
        );
    }

    #[test]
    fn key_hashes_are_fixed_across_processes() {
        // Pinned: a different value here means every deployed hashing service would remap.
        assert_eq!(
            key("header:x-user-id", "/", &[("x-user-id", "alice")]),
            Some(2_344_396_682_336_593_548)
        );
    }
}

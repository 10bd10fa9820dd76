//! Header rewriting between client and upstream: hop-by-hop removal (RFC 9110 7.6.1), the
//! X-Forwarded-* family, and request ids.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use super::wire::fields::{kept_despite_connection, put_field};
use super::wire::{connection_options, tokens, ConnectionOption};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that only describe one connection and must not be forwarded (RFC 9110 7.6.1, plus
/// the non-standard Keep-Alive and Proxy-Connection that old clients still send).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_hop_by_hop_and(headers, None);
}

/// What a request's hop-by-hop headers asked for before they were removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequestHops {
    /// `TE: trailers`: the client accepts trailers, which the upstream must then be told.
    pub trailers: bool,
}

/// [`remove_hop_by_hop`] for a request, which also loses `Expect` (hyper answers
/// `100 Continue` itself) and reports `TE: trailers`: one pass over the header names instead of
/// a lookup per name.
pub fn remove_request_hop_by_hop(headers: &mut HeaderMap) -> RequestHops {
    let trailers = headers
        .get_all(header::TE)
        .iter()
        .any(|v| tokens(v.as_bytes()).any(|t| t.eq_ignore_ascii_case(b"trailers")));
    remove_hop_by_hop_and(headers, Some(header::EXPECT));
    RequestHops { trailers }
}

fn remove_hop_by_hop_and(headers: &mut HeaderMap, extra: Option<HeaderName>) {
    // One pass to see which of the fixed set are present (comparing standard names is cheap),
    // then remove only those: most messages carry none or one of them, and each `remove` hashes.
    let mut present = [false; 7];
    let mut extra_present = false;
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            present[i] = true;
            any = true;
        } else if extra.as_ref() == Some(name) {
            extra_present = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // The names listed in Connection go too. Most messages carry at most "keep-alive" or
    // "close" there, so this rarely allocates.
    if present[0] {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            for option in connection_options(value.as_bytes()) {
                if let ConnectionOption::Field(field) = option {
                    match HeaderName::from_bytes(field) {
                        Ok(name) if !kept_despite_connection(&name) => named.push(name),
                        _ => {}
                    }
                }
            }
        }
        for name in named {
            headers.remove(name);
        }
    }
    for (name, here) in HOP_BY_HOP.into_iter().zip(present) {
        if here {
            headers.remove(name);
        }
    }
    if let (Some(name), true) = (extra, extra_present) {
        headers.remove(name);
    }
}

/// What the gateway tells the upstream about the client: `X-Forwarded-For` (the client's
/// address), `X-Forwarded-Proto` and `X-Forwarded-Host`.
///
/// From a client that is not one of the listener's `trusted_proxies`, fields of that family
/// (and `Forwarded`) are dropped and the gateway's own written instead: an upstream that reads
/// them must be able to trust them, and any client can send them. From a trusted proxy they
/// are kept: the client is appended to its `X-Forwarded-For`, the gateway's element to its
/// `Forwarded`, and its `X-Forwarded-Proto` and `X-Forwarded-Host` stand. A request that came
/// with no `Forwarded` gets none (the X-Forwarded-* fields carry the same).
#[derive(Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address as an `X-Forwarded-For` element ([`client_value`], made once per
    /// connection, so the common case costs no allocation).
    pub client: &'a HeaderValue,
    pub proto: &'static str,
    /// The peer is a trusted proxy.
    pub trusted: bool,
    /// The client's Host, when the route sends the upstream another one; `None`: the request's
    /// `Host` field is the client's.
    pub host: Option<&'a HeaderValue>,
}

/// Whether a field is one of the forwarded family the gateway writes itself for untrusted
/// clients.
fn forwarded_family(name: &HeaderName) -> bool {
    FORWARDED_FAMILY.contains(name)
}

const FORWARDED_FAMILY: [HeaderName; 4] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    header::FORWARDED,
];

impl Forwarding<'_> {
    /// Adds the fields to a header map (HTTP/2 upstreams, tunnels).
    pub fn add_to(&self, headers: &mut HeaderMap) {
        // Parsed request maps leave room only for what every request gets (X-Request-Id and
        // one more): HTTP/2 upstreams and tunnels grow the map here once, not field by field.
        headers.reserve(3);
        if !self.trusted {
            for name in FORWARDED_FAMILY {
                headers.remove(name);
            }
        }
        let chain = self.chain(headers);
        headers.insert(X_FORWARDED_FOR, chain);
        if headers.contains_key(header::FORWARDED) {
            let forwarded = self.forwarded(headers);
            headers.insert(header::FORWARDED, forwarded);
        }
        if let Entry::Vacant(e) = headers.entry(X_FORWARDED_PROTO) {
            e.insert(HeaderValue::from_static(self.proto));
        }
        if let Some(host) = self.host.or_else(|| headers.get(header::HOST)).cloned() {
            if let Entry::Vacant(e) = headers.entry(X_FORWARDED_HOST) {
                e.insert(host);
            }
        }
    }

    /// `X-Forwarded-For` as it goes upstream: the earlier proxies' elements (every field, in
    /// order, joined) and the client.
    fn chain(&self, headers: &HeaderMap) -> HeaderValue {
        let mut joined = Vec::new();
        for v in headers.get_all(X_FORWARDED_FOR) {
            if !v.is_empty() {
                joined.extend_from_slice(v.as_bytes());
                joined.extend_from_slice(b", ");
            }
        }
        if joined.is_empty() {
            return self.client.clone();
        }
        joined.extend_from_slice(self.client.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| self.client.clone())
    }

    /// `Forwarded` from a trusted proxy as it goes upstream: its elements (every field, in
    /// order, joined) and the gateway's own (RFC 7239 4: `for`, `proto`, `host`; an IPv6
    /// address and a host with a port are quoted, as its ABNF needs).
    fn forwarded(&self, headers: &HeaderMap) -> HeaderValue {
        let mut out = Vec::new();
        for v in headers.get_all(header::FORWARDED) {
            if !v.is_empty() {
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
        let client = self.client.as_bytes();
        out.extend_from_slice(b"for=");
        if client.contains(&b':') {
            out.extend_from_slice(b"\"[");
            out.extend_from_slice(client);
            out.extend_from_slice(b"]\"");
        } else {
            out.extend_from_slice(client);
        }
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(self.proto.as_bytes());
        // A Host passed the request identity checks: no quote or backslash to escape.
        if let Some(host) = self.host.or_else(|| headers.get(header::HOST)) {
            out.extend_from_slice(b";host=\"");
            out.extend_from_slice(host.as_bytes());
            out.push(b'"');
        }
        HeaderValue::from_bytes(&out).unwrap_or_else(|_| self.client.clone())
    }

    /// Writes `headers` as HTTP/1.1 field lines with the forwarded fields as
    /// [`add_to`](Self::add_to) would have made them, and without `Content-Length` (the
    /// framing is the encoder's to write).
    pub fn put_fields(&self, out: &mut Vec<u8>, headers: &HeaderMap) {
        let (mut chain_done, mut forwarded_done) = (false, false);
        let (mut has_proto, mut has_host) = (false, false);
        let mut host = self.host;
        for (name, value) in headers {
            if name == header::CONTENT_LENGTH {
                continue;
            }
            if forwarded_family(name) {
                if !self.trusted {
                    continue;
                }
                if name == X_FORWARDED_FOR {
                    // A map yields a name's values together: the whole chain is written at
                    // the first of them.
                    if !chain_done {
                        chain_done = true;
                        put_field(out, b"x-forwarded-for", self.chain(headers).as_bytes());
                    }
                    continue;
                }
                if name == header::FORWARDED {
                    if !forwarded_done {
                        forwarded_done = true;
                        put_field(out, b"forwarded", self.forwarded(headers).as_bytes());
                    }
                    continue;
                }
                has_proto |= name == X_FORWARDED_PROTO;
                has_host |= name == X_FORWARDED_HOST;
            } else if name == header::HOST {
                host = host.or(Some(value));
            }
            put_field(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if !chain_done {
            put_field(out, b"x-forwarded-for", self.client.as_bytes());
        }
        if !has_proto {
            put_field(out, b"x-forwarded-proto", self.proto.as_bytes());
        }
        if let (false, Some(host)) = (has_host, host) {
            put_field(out, b"x-forwarded-host", host.as_bytes());
        }
    }
}

/// A request's forwarded fields across its tries: written into each HTTP/1.1 head, or added to
/// the map once (an HTTP/2 try), after which the map carries them and a retry must not add
/// them again.
pub struct ForwardingOnce<'a> {
    fields: Forwarding<'a>,
    in_map: bool,
}

impl<'a> ForwardingOnce<'a> {
    pub fn new(fields: Forwarding<'a>) -> ForwardingOnce<'a> {
        ForwardingOnce {
            fields,
            in_map: false,
        }
    }

    /// What an HTTP/1.1 head still has to add.
    pub fn for_head(&self) -> Option<Forwarding<'a>> {
        (!self.in_map).then_some(self.fields)
    }

    pub fn into_map(&mut self, headers: &mut HeaderMap) {
        if !self.in_map {
            self.fields.add_to(headers);
            self.in_map = true;
        }
    }
}

/// A client address as an `X-Forwarded-For` element (IPv4-mapped IPv6 shown as IPv4).
pub fn client_value(ip: IpAddr) -> HeaderValue {
    // Digits, dots, colons and hex letters only: always a valid header value.
    HeaderValue::from_str(&ip_text(ip)).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

fn ip_text(ip: IpAddr) -> String {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => v6.to_string(),
        },
        IpAddr::V4(v4) => v4.to_string(),
    }
}

/// A client's request id is kept when it is 1 to 128 characters of `[A-Za-z0-9._:-]`: enough
/// for UUIDs and most tracing ids, and safe to copy into logs and JSON.
pub fn valid_request_id(value: &HeaderValue) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b':'))
}

/// A new random request id: 32 lower-case hex digits (128 bits, as a W3C trace id).
pub fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    let random = fastrand::u128(..).to_be_bytes();
    // Two digits per random byte: half the steps of a digit-at-a-time loop, on every request.
    for (pair, byte) in out.chunks_exact_mut(2).zip(random) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    // Only hex digits: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Approximate size of a request head as it was on the wire: request line and header lines.
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let uri_len = uri.scheme_str().map_or(0, |s| s.len() + 3)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len());
    // "METHOD URI HTTP/1.1\r\n" and the blank line that ends the head.
    let line = method.as_str().len() + uri_len + 13;
    headers
        .iter()
        .fold(line, |acc, (n, v)| acc + n.as_str().len() + v.len() + 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret, X-Other"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("proxy-connection", "keep-alive"),
            ("trailer", "x-t"),
            ("x-keep", "yes"),
        ]);
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
    }

    #[test]
    fn request_hops_report_trailers_and_drop_expect() {
        let mut h = map(&[
            ("te", "gzip, trailers"),
            ("expect", "100-continue"),
            ("x-keep", "1"),
        ]);
        assert!(remove_request_hop_by_hop(&mut h).trailers);
        assert_eq!(h.len(), 1, "{h:?}");
        let mut h = map(&[("te", "gzip"), ("x-keep", "1")]);
        assert!(!remove_request_hop_by_hop(&mut h).trailers);
        let mut h = map(&[("x-keep", "1")]);
        assert_eq!(remove_request_hop_by_hop(&mut h), RequestHops::default());
        assert_eq!(h.len(), 1);
    }

    fn forwarding<'a>(client: &'a HeaderValue, trusted: bool) -> Forwarding<'a> {
        Forwarding {
            client,
            proto: "http",
            trusted,
            host: None,
        }
    }

    #[test]
    fn trusted_proxies_are_appended_to() {
        let client = client_value("127.0.0.1".parse().unwrap());
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-for", "10.0.0.2"),
            ("x-forwarded-proto", "https"),
            ("forwarded", "for=10.0.0.1"),
            ("host", "a.example"),
        ]);
        forwarding(&client, true).add_to(&mut h);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1, for=127.0.0.1;proto=http;host=\"a.example\""
        );
        let mut h = HeaderMap::new();
        let mapped = client_value("::ffff:1.2.3.4".parse().unwrap());
        forwarding(&mapped, true).add_to(&mut h);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4");
        assert!(!h.contains_key("forwarded"), "none made where none came");
        let mut h = map(&[("forwarded", "for=a"), ("host", "h:8080")]);
        let v6 = client_value("2001:db8::1".parse().unwrap());
        forwarding(&v6, true).add_to(&mut h);
        assert_eq!(
            h["forwarded"],
            "for=a, for=\"[2001:db8::1]\";proto=http;host=\"h:8080\""
        );
    }

    #[test]
    fn other_clients_forwarded_fields_are_replaced() {
        let client = client_value("192.0.2.9".parse().unwrap());
        let mut h = map(&[
            ("x-forwarded-for", "10.0.0.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "admin.test"),
            ("forwarded", "for=10.0.0.1;host=admin.test"),
            ("host", "a.example"),
        ]);
        forwarding(&client, false).add_to(&mut h);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "192.0.2.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn request_ids() {
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(valid_request_id(&id));
        assert_ne!(new_request_id(), id);
        // Lowercase hex, and every digit turns up in high and low halves of the bytes alike.
        let mut seen = [[false; 16]; 2];
        for _ in 0..256 {
            for (i, b) in new_request_id().as_bytes().iter().enumerate() {
                let digit = b"0123456789abcdef".iter().position(|h| h == b);
                seen[i % 2][digit.expect("a lowercase hex digit")] = true;
            }
        }
        assert!(seen.iter().flatten().all(|s| *s));
        assert!(!valid_request_id(&HeaderValue::from_static("has space")));
        assert!(!valid_request_id(&HeaderValue::from_static("")));
        assert!(valid_request_id(&HeaderValue::from_static(
            "123e4567-e89b-12d3-a456-426614174000"
        )));
    }

    /// Written straight into a head or added to the map, the forwarded fields come out the same.
    #[test]
    fn forwarding_written_equals_forwarding_added() {
        let client = client_value("10.1.2.3".parse().unwrap());
        let rewritten = HeaderValue::from_static("client.example");
        let cases = [
            (true, None),
            (false, None),
            (true, Some(&rewritten)),
            (false, Some(&rewritten)),
        ];
        for pairs in [
            &[("host", "a.example")][..],
            &[],
            &[("x-forwarded-for", "1.1.1.1"), ("host", "h"), ("x-a", "1")],
            &[("x-forwarded-for", ""), ("x-forwarded-proto", "http")],
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
            ],
            &[("x-forwarded-host", "kept"), ("host", "h")],
            &[("forwarded", "for=1.1.1.1"), ("content-length", "5")],
        ]
        .into_iter()
        .flat_map(|pairs| cases.map(|c| (pairs, c)))
        {
            let (pairs, (trusted, host)) = pairs;
            let forwarding = Forwarding {
                client: &client,
                proto: "https",
                trusted,
                host,
            };
            let mut added = map(pairs);
            forwarding.add_to(&mut added);
            let mut expected = Vec::new();
            crate::proxy::http::wire::fields::put_fields(&mut expected, &added);
            let mut written = Vec::new();
            forwarding.put_fields(&mut written, &map(pairs));
            let lines = |b: &[u8]| {
                let mut l: Vec<String> = String::from_utf8_lossy(b)
                    .lines()
                    .map(str::to_string)
                    .collect();
                l.sort();
                l
            };
            assert_eq!(lines(&written), lines(&expected), "{pairs:?}");
        }
    }
}

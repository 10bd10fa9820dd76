//! What a stored response is found by.
//!
//! The **primary key** (RFC 9111 §4: the target URI, and a method that allows the stored
//! response to be used) is the request's host and its normalised path and query, GET and HEAD
//! alike (a stored GET response answers a HEAD), plus the consumer when the response was stored
//! for an authenticated request, so that one consumer's response is never another's.
//! Written `host` `path?query` [`consumer`], separated by a byte no field or path can hold
//! (0x1f), so that no two different requests make one key.
//!
//! The **variant** (§4.1) is the values a stored response's `Vary` names (and the route's own
//! `vary` list) had in the request that brought it: a later request is served that response only
//! if its values for those fields match. Values are compared after combining the field's lines
//! with ", " and trimming the whitespace around each (the normalisation §4.1 allows), and a field
//! absent is not a field present with an empty value.

use http::{HeaderMap, HeaderName};

/// The separator inside keys: a control character that a host, a normalised path or query, a
/// consumer name and a field value cannot contain.
const SEP: char = '\u{1f}';

/// A primary key (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PrimaryKey {
    /// scope, host, path and query: the target, whoever asks.
    key: String,
    /// Where the target ends and who it is for begins.
    target_len: usize,
}

impl PrimaryKey {
    /// `scope` keeps what different routes, listeners or schemes store apart; `host` is the
    /// `Host` as the upstream gets it (port included); `credential` says who the response is
    /// for, when it is not for everyone.
    pub fn new(
        scope: &str,
        host: &str,
        path_and_query: &str,
        credential: Option<&str>,
    ) -> PrimaryKey {
        let mut key = String::with_capacity(scope.len() + host.len() + path_and_query.len() + 3);
        key.push_str(scope);
        key.push(SEP);
        key.push_str(&host.to_ascii_lowercase());
        key.push(SEP);
        key.push_str(path_and_query);
        let target_len = key.len();
        if let Some(credential) = credential {
            key.push(SEP);
            key.push_str(credential);
        }
        PrimaryKey { key, target_len }
    }

    /// The target part: scope, host, path and query (what an unsafe request invalidates, for
    /// everyone).
    pub fn target(&self) -> &str {
        &self.key[..self.target_len]
    }

    /// The path and query part.
    pub fn path(&self) -> &str {
        self.target().split(SEP).nth(2).unwrap_or("")
    }

    /// The key as the purge API names it: `host/path?query`.
    pub fn display(&self) -> String {
        let mut parts = self.target().split(SEP).skip(1);
        let host = parts.next().unwrap_or("");
        let path = parts.next().unwrap_or("");
        format!("{host}{path}")
    }

    pub fn as_str(&self) -> &str {
        &self.key
    }
}

/// The query part of a key that takes only the parameters `names` (a route's `key =
/// ["query:NAME", …]`): `?` and each listed parameter as sent, in the order listed, each of its
/// occurrences in the request's order; `""` when none is there.
///
/// A parameter counts as listed when its name reads as a listed one the way some application
/// could read it ([`loose_name`]: percent-decoded, `+` as a space, surrounding spaces trimmed,
/// case ignored, a trailing `[]` dropped): `PAGE=2`, `p%61ge=2` and `page[]=2` are in the key
/// of a route that lists `page` (each as sent, so each keyed apart), never left out of it while
/// the upstream reads them as `page`. A query the key could read differently from the upstream
/// is not keyed at all (`None`: the request bypasses the cache): a `;` anywhere (some servers
/// split parameters there too, so an ignored parameter could carry a keyed one past the cache:
/// "parameter cloaking"), or a name that does not decode.
pub fn keyed_query(query: &str, names: &[String]) -> Option<String> {
    if query.contains(';') {
        return None;
    }
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        pairs.push((loose_name(pair)?, pair));
    }
    Some(select(&pairs, names))
}

/// Every way an upstream could read `query` for a key of `names`: split at `&` only, and at
/// `&` and `;`, names that do not decode compared as written (for invalidation, which must
/// reach whatever the upstream understood). One or two distinct query parts.
pub fn keyed_query_readings(query: &str, names: &[String]) -> Vec<String> {
    let mut readings = Vec::new();
    for separators in [&['&'][..], &['&', ';'][..]] {
        let pairs: Vec<(Vec<u8>, &str)> = query
            .split(separators)
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let written = pair.split('=').next().unwrap_or(pair).to_ascii_lowercase();
                (loose_name(pair).unwrap_or(written.into_bytes()), pair)
            })
            .collect();
        let reading = select(&pairs, names);
        if !readings.contains(&reading) {
            readings.push(reading);
        }
    }
    readings
}

/// The pairs whose name is listed, in the order listed, as a query part.
fn select(pairs: &[(Vec<u8>, &str)], names: &[String]) -> String {
    let mut out = String::new();
    for wanted in names {
        let wanted = loose(wanted.as_bytes());
        for (_, pair) in pairs.iter().filter(|(n, _)| *n == wanted) {
            out.push(if out.is_empty() { '?' } else { '&' });
            out.push_str(pair);
        }
    }
    out
}

/// A parameter's name (before its first `=`) as loosely as applications read names; `None`
/// when it does not percent-decode.
fn loose_name(pair: &str) -> Option<Vec<u8>> {
    let raw = pair.split('=').next().unwrap_or(pair);
    let decoded = crate::policy::auth::percent_decode(raw.as_bytes())?;
    Some(loose(&decoded))
}

fn loose(name: &[u8]) -> Vec<u8> {
    let name = name.trim_ascii();
    let name = name.strip_suffix(b"[]").unwrap_or(name);
    name.to_ascii_lowercase()
}

/// The fields a response varies on, in a fixed order (lower case, sorted, each once), so that
/// the same set always makes the same variant key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct VaryOn(Box<[HeaderName]>);

impl VaryOn {
    /// The response's `Vary` names and the route's `vary`; `None` when `Vary` has `*` (nothing
    /// can match) or a name that is not a field name.
    pub fn new(response: &HeaderMap, route: &[HeaderName]) -> Option<VaryOn> {
        let mut names: Vec<HeaderName> = route.to_vec();
        for value in response.get_all(http::header::VARY) {
            for name in value.as_bytes().split(|b| *b == b',') {
                let name = name.trim_ascii();
                if name.is_empty() {
                    continue;
                }
                if name == b"*" {
                    return None;
                }
                names.push(HeaderName::from_bytes(name).ok()?);
            }
        }
        names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        names.dedup();
        Some(VaryOn(names.into_boxed_slice()))
    }

    pub fn names(&self) -> &[HeaderName] {
        &self.0
    }

    /// The variant key of `request` for these fields.
    pub fn variant(&self, request: &HeaderMap) -> String {
        let mut key = String::new();
        for name in self.0.iter() {
            key.push_str(name.as_str());
            let mut values = request.get_all(name).iter().peekable();
            if values.peek().is_none() {
                // Absent: distinct from present and empty.
                key.push(SEP);
                key.push(SEP);
                continue;
            }
            key.push(':');
            let mut first = true;
            for value in values {
                for element in value.as_bytes().split(|b| *b == b',') {
                    if !first {
                        key.push_str(", ");
                    }
                    first = false;
                    // Bytes outside ASCII are kept apart, not merged into U+FFFD.
                    for b in element.trim_ascii() {
                        if b.is_ascii() && *b != b'%' {
                            key.push(char::from(*b));
                        } else {
                            key.push_str(&format!("%{b:02x}"));
                        }
                    }
                }
            }
            key.push(SEP);
        }
        key
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_headers as headers;
    use super::*;

    #[test]
    fn primary_keys_separate_scopes_hosts_paths_and_credentials() {
        let a = PrimaryKey::new("r http", "API.example.com", "/users?x=1", None);
        assert_eq!(
            a,
            PrimaryKey::new("r http", "api.example.com", "/users?x=1", None)
        );
        assert_ne!(
            a,
            PrimaryKey::new("r https", "api.example.com", "/users?x=1", None)
        );
        assert_ne!(
            a,
            PrimaryKey::new("r http", "api.example.com:8080", "/users?x=1", None)
        );
        assert_ne!(
            a,
            PrimaryKey::new("r http", "api.example.com", "/users?x=2", None)
        );
        let acme = PrimaryKey::new("r http", "api.example.com", "/users?x=1", Some("acme"));
        assert_ne!(a, acme);
        assert_eq!(a.target(), acme.target());
        assert_eq!(a.path(), "/users?x=1");
        assert_eq!(acme.display(), "api.example.com/users?x=1");
    }

    #[test]
    fn a_keyed_query_takes_the_listed_parameters_as_applications_read_them() {
        let names = ["page".to_string(), "lang".to_string()];
        let key = |q: &str| keyed_query(q, &names);
        assert_eq!(key("lang=en&utm=x&page=2").unwrap(), "?page=2&lang=en");
        assert_eq!(key("utm=x").unwrap(), "");
        assert_eq!(key("").unwrap(), "");
        // Every occurrence, in order: the upstream may take either.
        assert_eq!(key("page=1&page=2").unwrap(), "?page=1&page=2");
        // An encoded name is the same name; its pair is kept as sent.
        assert_eq!(key("p%61ge=2").unwrap(), "?p%61ge=2");
        assert_ne!(key("p%61ge=2"), key("utm=2"));
        // What could hide a parameter from the key is not keyed.
        assert_eq!(key("utm=x;page=2"), None);
        assert_eq!(key("%zz=1&page=2"), None);
        // A name without a value, and empty pairs.
        assert_eq!(key("&&lang&page=").unwrap(), "?page=&lang");
        // Names some application reads as `page` are in the key, each as sent.
        assert_eq!(key("PAGE=2").unwrap(), "?PAGE=2");
        assert_eq!(key("%20page=2").unwrap(), "?%20page=2");
        assert_eq!(key("page[]=2").unwrap(), "?page[]=2");
        assert_eq!(key("pages=2").unwrap(), "");
    }

    #[test]
    fn an_ambiguous_query_has_every_reading_for_invalidation() {
        let names = ["page".to_string()];
        assert_eq!(
            keyed_query_readings("utm=x;page=2", &names),
            ["", "?page=2"]
        );
        assert_eq!(keyed_query_readings("page=1", &names), ["?page=1"]);
        assert_eq!(keyed_query_readings("%zz=1&page=2", &names), ["?page=2"]);
        assert_eq!(keyed_query_readings("a=1;b=2", &names), [""]);
    }

    #[test]
    fn vary_names_are_a_sorted_set_and_star_matches_nothing() {
        let response = headers(&[
            ("vary", "Accept-Encoding, accept"),
            ("vary", "accept-encoding"),
        ]);
        let route = [HeaderName::from_static("x-tenant")];
        let on = VaryOn::new(&response, &route).unwrap();
        let names: Vec<&str> = on.names().iter().map(HeaderName::as_str).collect();
        assert_eq!(names, ["accept", "accept-encoding", "x-tenant"]);
        assert_eq!(VaryOn::new(&headers(&[("vary", "accept, *")]), &[]), None);
        assert_eq!(VaryOn::new(&headers(&[("vary", "bad name")]), &[]), None);
        assert!(VaryOn::new(&HeaderMap::new(), &[])
            .unwrap()
            .names()
            .is_empty());
    }

    #[test]
    fn variants_match_after_normalising_and_tell_absent_from_empty() {
        let on = VaryOn::new(&headers(&[("vary", "accept-encoding")]), &[]).unwrap();
        let gzip = on.variant(&headers(&[("accept-encoding", "gzip,  br")]));
        assert_eq!(
            gzip,
            on.variant(&headers(&[
                ("accept-encoding", "gzip"),
                ("accept-encoding", " br ")
            ]))
        );
        assert_ne!(
            gzip,
            on.variant(&headers(&[("accept-encoding", "br, gzip")]))
        );
        let absent = on.variant(&HeaderMap::new());
        let empty = on.variant(&headers(&[("accept-encoding", "")]));
        assert_ne!(absent, empty);
        // Other fields do not matter.
        assert_eq!(absent, on.variant(&headers(&[("accept", "text/html")])));
    }
}

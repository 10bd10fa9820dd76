//! An index over a large route table, so a request is tested against the few routes that can
//! match it instead of every route before the one that does.
//!
//! A table in precedence order (see [`super::route`]) is first every exact-path route, then the
//! prefix routes from the longest prefix to the shortest, then the routes with no path
//! condition. Only the exact routes naming the request's path can match, and of the prefix
//! routes only those whose prefix is the path cut at a segment boundary; two different prefixes
//! of one length cannot both be prefixes of the path. So the index keeps, per exact path and per
//! prefix, the positions of those routes in precedence order, and looks up the path's cuts from
//! the longest down: the first route there that matches in full is the one a scan of the whole
//! table would find. Within each group, routes naming one host are further split by host, which
//! is what a table of many virtual hosts needs.
//!
//! Keys come from requests, so the maps keep std's randomly keyed SipHash.

use std::collections::HashMap;

use crate::config::RouteMatch;

/// Longest host a lookup lower-cases on the stack; a route naming a longer host (longer than
/// any DNS name, which stop at 253) is kept among the routes checked one by one.
const MAX_INDEXED_HOST: usize = 255;

/// Routes that share a path condition, by host.
#[derive(Debug, Default)]
struct Bucket {
    /// Routes naming one host (ASCII lower case), positions in precedence order.
    by_host: HashMap<Box<str>, Vec<u32>>,
    /// Routes with no host or a wildcard host, positions in precedence order.
    rest: Vec<u32>,
}

impl Bucket {
    fn add(&mut self, position: u32, host: Option<&str>) {
        match host {
            Some(h) if !h.starts_with("*.") && h.len() <= MAX_INDEXED_HOST => self
                .by_host
                .entry(h.to_ascii_lowercase().into_boxed_str())
                .or_default()
                .push(position),
            _ => self.rest.push(position),
        }
    }

    /// The first position, in precedence order, of a route that could match `host` and for
    /// which `matches` holds.
    fn find(&self, host: Option<&str>, matches: &impl Fn(usize) -> bool) -> Option<usize> {
        let named: &[u32] = match host {
            Some(h) if !self.by_host.is_empty() => lookup_host(&self.by_host, h).unwrap_or(&[]),
            _ => &[],
        };
        // Merge the two ascending lists, so the lower position is tried first.
        let (mut a, mut b) = (named.iter().peekable(), self.rest.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(&&x), Some(&&y)) if x < y => a.next(),
                (Some(_), Some(_)) | (None, Some(_)) => b.next(),
                (Some(_), None) => a.next(),
                (None, None) => return None,
            };
            if let Some(&p) = next {
                if matches(p as usize) {
                    return Some(p as usize);
                }
            }
        }
    }
}

/// `map[host]` with `host` compared without ASCII case, without allocating.
fn lookup_host<'m>(map: &'m HashMap<Box<str>, Vec<u32>>, host: &str) -> Option<&'m [u32]> {
    if host.len() > MAX_INDEXED_HOST {
        return None;
    }
    let mut buf = [0u8; MAX_INDEXED_HOST];
    let lower = &mut buf[..host.len()];
    lower.copy_from_slice(host.as_bytes());
    lower.make_ascii_lowercase();
    // ASCII lower-casing keeps UTF-8 valid; a host that is not cannot be a key either.
    let lower = std::str::from_utf8(lower).ok()?;
    map.get(lower).map(Vec::as_slice)
}

/// Where a request's candidate routes are, by exact path, by prefix and by host.
#[derive(Debug, Default)]
pub struct RouteIndex {
    exact: HashMap<Box<str>, Bucket>,
    prefixes: HashMap<Box<str>, Bucket>,
    /// `prefix_lens[k]`: some route's prefix is `k` bytes long, so a cut of that length is
    /// worth a lookup.
    prefix_lens: Vec<bool>,
    /// Routes with no path condition (or an empty prefix, which any path has).
    anywhere: Bucket,
}

impl RouteIndex {
    /// `routes`: every route's conditions, in the table's precedence order.
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a RouteMatch>) -> RouteIndex {
        let mut index = RouteIndex::default();
        for (position, m) in routes.into_iter().enumerate() {
            let position = u32::try_from(position).expect("route tables hold far fewer routes");
            let host = m.host.as_deref();
            match (&m.path, &m.path_prefix) {
                (Some(path), _) => index
                    .exact
                    .entry(path.as_str().into())
                    .or_default()
                    .add(position, host),
                (None, Some(prefix)) if !prefix.is_empty() => {
                    if index.prefix_lens.len() <= prefix.len() {
                        index.prefix_lens.resize(prefix.len() + 1, false);
                    }
                    index.prefix_lens[prefix.len()] = true;
                    index
                        .prefixes
                        .entry(prefix.as_str().into())
                        .or_default()
                        .add(position, host);
                }
                (None, _) => index.anywhere.add(position, host),
            }
        }
        index
    }

    /// The position of the first route, in precedence order, that can match a request for
    /// `path` on `host` and for which `matches` (the route's full test) holds.
    pub fn find(
        &self,
        host: Option<&str>,
        path: &str,
        matches: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if let Some(found) = self
            .exact
            .get(path)
            .and_then(|bucket| bucket.find(host, &matches))
        {
            return Some(found);
        }
        let bytes = path.as_bytes();
        let longest = bytes.len().min(self.prefix_lens.len().saturating_sub(1));
        for cut in (1..=longest).rev() {
            // A prefix matches at a segment boundary: it is the whole path, the path goes on
            // with '/', or the prefix itself ends with '/'. `path.is_char_boundary` holds at
            // each of those, as '/' is ASCII.
            let boundary = cut == bytes.len() || bytes[cut] == b'/' || bytes[cut - 1] == b'/';
            if !boundary || !self.prefix_lens[cut] {
                continue;
            }
            if let Some(found) = self
                .prefixes
                .get(&path[..cut])
                .and_then(|bucket| bucket.find(host, &matches))
            {
                return Some(found);
            }
        }
        self.anywhere.find(host, &matches)
    }
}

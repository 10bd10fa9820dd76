//! Conditional requests against stored responses (RFC 9110 §13, RFC 9111 §4.3): whether a
//! client's `If-None-Match` / `If-Modified-Since` lets the cache answer 304, the fields that 304
//! carries, the validators a revalidation request sends upstream, and how a 304 from upstream
//! freshens the stored fields.
//!
//! What does not parse is read the way that sends more, not less: an `If-None-Match` that is not
//! a valid list of entity-tags matches nothing (the client gets the full response), and an
//! `If-Modified-Since` that is not a date is ignored (§13.1.3).

use std::time::SystemTime;

use http::header::{
    self, HeaderMap, HeaderName, HeaderValue, ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED,
};

/// Fields a 304 carries when a 200 would have carried them (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [HeaderName; 6] = [
    header::CACHE_CONTROL,
    header::CONTENT_LOCATION,
    header::DATE,
    header::ETAG,
    header::EXPIRES,
    header::VARY,
];

/// Fields a 304 from upstream does not replace in the stored response: they describe the stored
/// body, which the 304 does not carry (RFC 9111 §3.2).
const KEPT_ON_FRESHEN: [HeaderName; 4] = [
    header::CONTENT_LENGTH,
    header::CONTENT_ENCODING,
    header::CONTENT_RANGE,
    header::TRANSFER_ENCODING,
];

/// One entity-tag: weak or not, and its opaque-tag with the quotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EntityTag<'a> {
    weak: bool,
    opaque: &'a [u8],
}

/// `entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE`; `etagc = %x21 / %x23-7E / obs-text`.
fn entity_tag(input: &[u8]) -> Option<(EntityTag<'_>, &[u8])> {
    let (weak, rest) = match input.strip_prefix(b"W/") {
        Some(rest) => (true, rest),
        None => (false, input),
    };
    if rest.first() != Some(&b'"') {
        return None;
    }
    let end = rest[1..].iter().position(|b| *b == b'"')? + 1;
    let inner = &rest[1..end];
    if !inner
        .iter()
        .all(|b| *b == 0x21 || (0x23..=0x7e).contains(b) || *b >= 0x80)
    {
        return None;
    }
    Some((
        EntityTag {
            weak,
            opaque: &rest[..=end],
        },
        &rest[end + 1..],
    ))
}

/// The entity-tags of an `If-None-Match` (all its lines), or `None` for `*`; an error when any
/// line is not a valid list.
fn if_none_match(request: &HeaderMap) -> Result<Option<Vec<EntityTag<'_>>>, ()> {
    let mut tags = Vec::new();
    for value in request.get_all(IF_NONE_MATCH) {
        let mut rest = value.as_bytes().trim_ascii();
        if rest == b"*" {
            return Ok(None);
        }
        loop {
            rest = rest.trim_ascii_start();
            while let Some(r) = rest.strip_prefix(b",") {
                rest = r.trim_ascii_start();
            }
            if rest.is_empty() {
                break;
            }
            let (tag, after) = entity_tag(rest).ok_or(())?;
            tags.push(tag);
            rest = after.trim_ascii_start();
            if !(rest.is_empty() || rest[0] == b',') {
                return Err(());
            }
        }
    }
    Ok(Some(tags))
}

/// Whether a conditional GET or HEAD may be answered 304 from a stored response with `stored`
/// fields, received at `received` (RFC 9110 §13.2.2 order: `If-None-Match` first, and when it is
/// present `If-Modified-Since` is not looked at; RFC 9111 §4.3.2 for the date a cache compares
/// with).
pub fn not_modified(request: &HeaderMap, stored: &HeaderMap, received: SystemTime) -> bool {
    if request.contains_key(IF_NONE_MATCH) {
        let current = stored
            .get(ETAG)
            .and_then(|v| entity_tag(v.as_bytes().trim_ascii()));
        return match if_none_match(request) {
            Err(()) => false,
            // `*` matches any current representation: the stored one is one.
            Ok(None) => true,
            // Weak comparison (§8.8.3.2): the opaque-tags alone.
            Ok(Some(tags)) => {
                current.is_some_and(|(current, _)| tags.iter().any(|t| t.opaque == current.opaque))
            }
        };
    }
    let mut since = request.get_all(IF_MODIFIED_SINCE).iter();
    let (Some(since), None) = (since.next(), since.next()) else {
        return false;
    };
    let Some(since) = date(since) else {
        return false;
    };
    let modified = stored
        .get(LAST_MODIFIED)
        .and_then(date)
        .or_else(|| stored.get(header::DATE).and_then(date))
        .unwrap_or(received);
    modified <= since
}

fn date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()
}

/// The fields of a 304 answered from a stored response.
pub fn not_modified_fields(stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    for name in NOT_MODIFIED_FIELDS {
        for value in stored.get_all(&name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The validators a revalidation request sends upstream for a stored response (RFC 9111
/// §4.3.1): its `ETag` as `If-None-Match`, its `Last-Modified` as `If-Modified-Since`.
pub fn validators(stored: &HeaderMap) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = Vec::new();
    if let Some(etag) = stored.get(ETAG) {
        out.push((IF_NONE_MATCH, etag.clone()));
    }
    if let Some(modified) = stored.get(LAST_MODIFIED) {
        out.push((IF_MODIFIED_SINCE, modified.clone()));
    }
    out
}

/// Freshens stored fields with those of a 304 from upstream (RFC 9111 §4.3.4, §3.2): each field
/// the 304 has replaces the stored one of that name, except those that describe the body.
pub fn freshen(stored: &mut HeaderMap, not_modified: &HeaderMap) {
    for name in not_modified.keys() {
        if KEPT_ON_FRESHEN.contains(name) {
            continue;
        }
        stored.remove(name);
        for value in not_modified.get_all(name) {
            stored.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_headers as headers;
    use super::*;
    use std::time::Duration;

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn if_none_match_compares_weakly_and_refuses_what_does_not_parse() {
        let stored = headers(&[("etag", "W/\"v1\"")]);
        let check = |inm: &str| not_modified(&headers(&[("if-none-match", inm)]), &stored, at(0));
        assert!(check("\"v1\""));
        assert!(check("\"v0\", W/\"v1\""));
        assert!(check("*"));
        assert!(!check("\"v2\""));
        assert!(!check("v1"), "unquoted: not an entity-tag");
        assert!(!check("\"v1\" \"v2\""), "not a list");
        // Two lines form one list.
        let two = headers(&[("if-none-match", "\"a\""), ("if-none-match", "\"v1\"")]);
        assert!(not_modified(&two, &stored, at(0)));
        // Without an ETag stored, only * matches.
        let none = HeaderMap::new();
        assert!(!not_modified(
            &headers(&[("if-none-match", "\"v1\"")]),
            &none,
            at(0)
        ));
    }

    #[test]
    fn if_modified_since_against_last_modified_then_date_then_receipt() {
        let lm = headers(&[("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        let ims = |d: &str| headers(&[("if-modified-since", d)]);
        assert!(not_modified(
            &ims("Sun, 06 Nov 1994 08:49:37 GMT"),
            &lm,
            at(0)
        ));
        assert!(not_modified(
            &ims("Mon, 07 Nov 1994 08:49:37 GMT"),
            &lm,
            at(0)
        ));
        assert!(!not_modified(
            &ims("Sat, 05 Nov 1994 08:49:37 GMT"),
            &lm,
            at(0)
        ));
        assert!(
            !not_modified(&ims("yesterday"), &lm, at(0)),
            "not a date: ignored"
        );
        // If-None-Match present: If-Modified-Since is not looked at.
        let both = headers(&[
            ("if-none-match", "\"other\""),
            ("if-modified-since", "Mon, 07 Nov 1994 08:49:37 GMT"),
        ]);
        assert!(!not_modified(&both, &lm, at(0)));
        // No Last-Modified: Date, then the time it was received.
        let dated = headers(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        assert!(not_modified(
            &ims("Sun, 06 Nov 1994 08:49:37 GMT"),
            &dated,
            at(0)
        ));
        let received = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert!(!not_modified(
            &ims("Sun, 06 Nov 1994 08:49:36 GMT"),
            &HeaderMap::new(),
            received
        ));
    }

    #[test]
    fn a_304_carries_the_validators_and_freshening_keeps_the_body_fields() {
        let stored = headers(&[
            ("etag", "\"v1\""),
            ("cache-control", "max-age=60"),
            ("content-length", "5"),
            ("content-type", "text/plain"),
            ("last-modified", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ]);
        let fields = not_modified_fields(&stored);
        assert_eq!(fields.get("etag").unwrap(), "\"v1\"");
        assert_eq!(fields.get("cache-control").unwrap(), "max-age=60");
        assert!(fields.get("content-length").is_none() && fields.get("content-type").is_none());
        let sent = validators(&stored);
        let names: Vec<&str> = sent.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["if-none-match", "if-modified-since"]);
        let mut fresh = stored.clone();
        freshen(
            &mut fresh,
            &headers(&[("cache-control", "max-age=120"), ("content-length", "0")]),
        );
        assert_eq!(fresh.get("cache-control").unwrap(), "max-age=120");
        assert_eq!(fresh.get("content-length").unwrap(), "5");
        assert_eq!(fresh.get("etag").unwrap(), "\"v1\"");
    }
}

//! A stored response as bytes, for the shared tier in Redis: what another instance needs to
//! serve it (status, fields, body) and to judge its freshness (the times it was fetched and
//! its lifetime), and the primary key it answers, checked when it is read.
//!
//! Redis is shared by every instance, and what is read back from it is parsed as carefully as
//! anything else from outside: every length is checked, every field name and value must be
//! valid, and bytes that do not decode are a miss, never a panic.
//!
//! Layout (integers big-endian): `SGC1`, the status (u16), the request and response times
//! (u64 milliseconds since the Unix epoch), the initial age and the lifetime (u64
//! milliseconds), the primary key (u32 length + bytes), the field count (u32), each field
//! (u16 name length + name, u32 value length + value), then the body to the end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::directives::CacheControl;
use super::freshness::Timing;
use super::key::PrimaryKey;
use super::store::{tags_of, Entry};

const MAGIC: &[u8; 4] = b"SGC1";
/// The most fields an entry may have: far more than a response head within the codec's limits
/// holds, and far below what would make a header map give up (it panics past 32,768).
const MAX_FIELDS: u32 = 1024;

/// The bytes of `entry`.
pub fn encode(entry: &Entry) -> Vec<u8> {
    let fields: usize = entry
        .headers
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum();
    let key = entry.key.as_str().as_bytes();
    let mut out = Vec::with_capacity(4 + 2 + 32 + 4 + key.len() + 4 + fields + entry.body.len());
    out.put_slice(MAGIC);
    out.put_u16(entry.status.as_u16());
    out.put_u64(millis_since_epoch(entry.timing.request_time));
    out.put_u64(millis_since_epoch(entry.timing.response_time));
    out.put_u64(millis(entry.timing.initial_age));
    out.put_u64(millis(entry.timing.lifetime));
    out.put_u32(key.len() as u32);
    out.put_slice(key);
    out.put_u32(entry.headers.len() as u32);
    for (name, value) in &entry.headers {
        // Names are at most a few KiB (the request head limit), values likewise.
        out.put_u16(u16::try_from(name.as_str().len()).unwrap_or(u16::MAX));
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out.put_slice(&entry.body);
    out
}

/// The entry in `bytes`, if they are one and it answers `key`; `generation` is this
/// instance's for the key's target (`MemoryStore::generation`).
pub fn decode(bytes: Bytes, key: &PrimaryKey, generation: u64) -> Option<Entry> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4)? != MAGIC[..] {
        return None;
    }
    let status = StatusCode::from_u16(r.u16()?).ok()?;
    let request_time = UNIX_EPOCH.checked_add(Duration::from_millis(r.u64()?))?;
    let response_time = UNIX_EPOCH.checked_add(Duration::from_millis(r.u64()?))?;
    let initial_age = Duration::from_millis(r.u64()?);
    let lifetime = Duration::from_millis(r.u64()?);
    let key_len = r.u32()? as usize;
    if r.take(key_len)? != key.as_str().as_bytes() {
        return None;
    }
    let count = r.u32()?;
    if count > MAX_FIELDS {
        return None;
    }
    let mut headers = HeaderMap::new();
    for _ in 0..count {
        let n = usize::from(r.u16()?);
        let name = HeaderName::from_bytes(&r.take(n)?).ok()?;
        let n = r.u32()? as usize;
        let value = HeaderValue::from_maybe_shared(r.take(n)?).ok()?;
        headers.append(name, value);
    }
    let body = r.bytes.slice(r.at..);
    Some(Entry {
        key: key.clone(),
        generation,
        // The caller's to set, as it looked the key up.
        epoch: 0,
        status,
        cc: CacheControl::from_headers(&headers),
        tags: tags_of(&headers),
        timing: Timing {
            request_time,
            response_time,
            initial_age,
            lifetime,
        },
        headers,
        body,
    })
}

fn millis_since_epoch(t: SystemTime) -> u64 {
    millis(t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads from `bytes`, each read checked against what is left.
struct Reader {
    bytes: Bytes,
    at: usize,
}

impl Reader {
    fn take(&mut self, n: usize) -> Option<Bytes> {
        let end = self.at.checked_add(n)?;
        if end > self.bytes.len() {
            return None;
        }
        let part = self.bytes.slice(self.at..end);
        self.at = end;
        Some(part)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?[..].try_into().ok()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?[..].try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?[..].try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        let mut e = super::super::test_entry(
            "/a?b",
            b"\x00body\xff",
            &[
                ("cache-control", "max-age=60, stale-if-error=30"),
                ("etag", "\"v1\""),
                ("cache-tag", "a, b"),
                ("x-many", "1"),
                ("x-many", "2"),
            ],
        );
        let at = UNIX_EPOCH + Duration::from_millis(1_780_000_000_123);
        e.key = PrimaryKey::new("r http", "h:80", "/a?b", Some("acme|00ff"));
        e.generation = 7;
        e.status = StatusCode::NOT_FOUND;
        e.timing.request_time = at;
        e.timing.response_time = at + Duration::from_millis(5);
        e.timing.initial_age = Duration::from_secs(3);
        e
    }

    #[test]
    fn an_entry_comes_back_as_it_went() {
        let e = entry();
        let back = decode(Bytes::from(encode(&e)), &e.key, 9).unwrap();
        assert_eq!(back.status, e.status);
        assert_eq!(back.headers, e.headers);
        assert_eq!(back.body, e.body);
        assert_eq!(back.timing, e.timing);
        assert_eq!(back.cc, e.cc);
        assert_eq!(back.tags, e.tags);
        assert_eq!(back.generation, 9);
    }

    #[test]
    fn another_key_or_any_damage_is_a_miss() {
        let e = entry();
        let bytes = encode(&e);
        let other = PrimaryKey::new("r http", "h:80", "/a?b", Some("bob|00ff"));
        assert!(decode(Bytes::from(bytes.clone()), &other, 0).is_none());
        // Every truncation before the body is refused; none panics.
        let body_at = bytes.len() - e.body.len();
        for n in 0..body_at {
            assert!(decode(Bytes::copy_from_slice(&bytes[..n]), &e.key, 0).is_none());
        }
        let mut bad = bytes.clone();
        bad[4] = 0xff; // status 65k
        assert!(decode(Bytes::from(bad), &e.key, 0).is_none());
        let mut huge = bytes;
        let count_at = 4 + 2 + 32 + 4 + e.key.as_str().len();
        huge[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(decode(Bytes::from(huge), &e.key, 0).is_none());
        // Many small distinct fields: refused by count, before any map grows.
        let mut many = encode(&e)[..count_at].to_vec();
        many.extend_from_slice(&40_000u32.to_be_bytes());
        for i in 0..40_000u32 {
            let name = format!("x-{i}");
            many.extend_from_slice(&(name.len() as u16).to_be_bytes());
            many.extend_from_slice(name.as_bytes());
            many.extend_from_slice(&0u32.to_be_bytes());
        }
        assert!(decode(Bytes::from(many), &e.key, 0).is_none());
    }
}

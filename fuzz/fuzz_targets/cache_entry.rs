//! Any bytes as a stored response read back from the cache's shared tier in Redis (another
//! instance, or anyone with access to Redis, wrote them): decoding never panics, refuses what is
//! not an entry for the key asked, and what it accepts encodes back to the same bytes.
//!
//! The input is taken as is; one time in two it is put behind a valid header prefix (magic,
//! status, times, the key), so that the fields and body parts are reached often.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluicegate::policy::cache::codec;
use sluicegate::policy::cache::key::PrimaryKey;

fuzz_target!(|data: &[u8]| {
    let key = PrimaryKey::new("route http", "shop.example", "/a?b=1", None);
    let mut bytes = Vec::new();
    if data.first().is_some_and(|b| b & 1 == 1) {
        bytes.extend_from_slice(b"SGC1");
        bytes.extend_from_slice(&200u16.to_be_bytes());
        for _ in 0..4 {
            bytes.extend_from_slice(&1_000u64.to_be_bytes());
        }
        bytes.extend_from_slice(&(key.as_str().len() as u32).to_be_bytes());
        bytes.extend_from_slice(key.as_str().as_bytes());
        bytes.extend_from_slice(&data[1..]);
    } else {
        bytes.extend_from_slice(data);
    }
    if let Some(entry) = codec::decode(Bytes::from(bytes.clone()), &key, 0) {
        assert_eq!(entry.key, key);
        let again = codec::encode(&entry);
        let back = codec::decode(Bytes::from(again), &key, 0).expect("an encoded entry decodes");
        assert_eq!(back.headers, entry.headers);
        assert_eq!(back.body, entry.body);
        assert_eq!(back.status, entry.status);
    }
});

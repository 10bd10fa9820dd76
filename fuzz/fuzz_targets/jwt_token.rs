//! Any bytes as a JWT, through everything the `jwt` policy does with one before trusting it:
//! the compact JWS split and base64url decoding, the JOSE header, the signature check, the
//! claims set and its registered claims. Never panics.
//!
//! The first byte chooses the mode. Even: the rest is the token as a client sends it. Odd: the
//! rest is a header and a claims set (split at the first 0xff byte), which the target signs
//! with the key set's HMAC secret, so the fuzzer reaches the claim checks behind a valid
//! signature; a token signed so must then verify whenever its header names HS256 and no kid.
#![no_main]

use std::sync::LazyLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use sluicegate::jose::claims::{Claims, Rules};
use sluicegate::jose::jwk::{Key, KeySet};
use sluicegate::jose::{jws, Algorithm, Rejection};

const SECRET: &[u8] = b"fuzzing-secret-of-thirty-two-b!!";

static KEYS: LazyLock<KeySet> = LazyLock::new(|| KeySet::single(Key::secret(SECRET)));

static RULES: LazyLock<Rules> = LazyLock::new(|| Rules {
    issuer: Some("https://idp/".into()),
    audiences: vec!["api".into()],
    leeway: std::time::Duration::from_secs(30),
    require_exp: true,
});

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn check(token: &[u8]) -> Result<(), Rejection> {
    let parsed = jws::parse(token, &Algorithm::ALL)?;
    parsed.verify(&KEYS)?;
    let claims = Claims::parse(parsed.payload())?;
    claims.check(&RULES, 1_700_000_000.0)?;
    let _ = claims.text("sub");
    let _ = claims.scopes("scope");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let _ = check(data);
        let _ = KeySet::from_jwks(data);
        return;
    }
    let (header, claims) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"{}"[..]),
    };
    let input = format!("{}.{}", b64(header), b64(claims));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let tag = ring::hmac::sign(&key, input.as_bytes());
    let token = format!("{input}.{}", b64(tag.as_ref()));
    let outcome = check(token.as_bytes());
    if let Ok(parsed) = jws::parse(token.as_bytes(), &Algorithm::ALL) {
        if parsed.alg == Algorithm::HS256 && parsed.kid.is_none() {
            assert!(
                !matches!(outcome, Err(Rejection::Signature | Rejection::UnknownKey)),
                "a correctly signed token failed its signature check: {outcome:?}"
            );
        }
    }
});

//! The JWS Compact Serialization (RFC 7515 §7.1): `BASE64URL(header) . BASE64URL(payload) .
//! BASE64URL(signature)`, and its verification against a key set.
//!
//! The signing input is the first two segments as they were sent (§5.2 step 8), so nothing
//! here re-encodes what it decoded. Each segment must be base64url exactly as §2 defines it: the
//! URL-safe alphabet, no padding, no whitespace or other characters, and unused trailing bits
//! zero (so one signature has one spelling; the signatures themselves need not be unique: PS
//! and ES signatures are randomized, and an ECDSA `(r, s)` has a twin `(r, n - s)`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::IgnoredAny;
use serde::Deserialize;

use super::jwk::KeySet;
use super::{Algorithm, Rejection, MAX_TOKEN_BYTES};

/// A token without a `kid` is tried against at most this many keys of its algorithm: a key set
/// of many keys must not turn one request into many signature checks.
pub const MAX_KEYS_TRIED: usize = 4;

/// A parsed compact JWS whose signature has not been checked yet.
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    signing_input: &'a [u8],
    payload: Vec<u8>,
    signature: Vec<u8>,
}

/// The JOSE header members the gateway reads. Unknown members are ignored, as RFC 7515 §4
/// allows; `jwk`, `jku`, `x5u` and `x5c` among them are never trusted. A member named twice is
/// refused by the deserializer ("duplicate field") for the ones read here.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    /// Extensions that must be understood (§4.1.11): none is implemented, so any is refused.
    #[serde(default)]
    crit: Present,
    /// RFC 7797's unencoded payload switch changes what is signed; refused.
    #[serde(default)]
    b64: Present,
}

/// Whether a member is there at all, whatever its value (`null` included, which `Option`
/// would read as absent).
#[derive(Default)]
struct Present(bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Present, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Present(true))
    }
}

/// Splits and decodes a compact JWS, and checks its header against the accepted algorithms.
pub fn parse<'a>(token: &'a [u8], accepted: &[Algorithm]) -> Result<Jws<'a>, Rejection> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(Rejection::TooLarge);
    }
    let mut dots = token
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'.')
        .map(|(i, _)| i);
    let (Some(first), Some(second), None) = (dots.next(), dots.next(), dots.next()) else {
        return Err(Rejection::Malformed);
    };
    let (header, payload, signature) = (
        &token[..first],
        &token[first + 1..second],
        &token[second + 1..],
    );
    if header.is_empty() {
        return Err(Rejection::Malformed);
    }
    let header = decode(header)?;
    // A JSON array would also fill a derived struct; the header must be an object.
    if header.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(Rejection::BadHeader);
    }
    let header: Header = serde_json::from_slice(&header).map_err(|_| Rejection::BadHeader)?;
    if header.crit.0 || header.b64.0 {
        return Err(Rejection::Extension);
    }
    let alg = Algorithm::from_name(&header.alg)
        .filter(|a| accepted.contains(a))
        .ok_or(Rejection::Algorithm)?;
    // Checked after the algorithm, so that an unsigned `alg: none` token says so.
    if signature.is_empty() {
        return Err(Rejection::Malformed);
    }
    Ok(Jws {
        alg,
        kid: header.kid,
        signing_input: &token[..second],
        payload: decode(payload)?,
        signature: decode(signature)?,
    })
}

fn decode(segment: &[u8]) -> Result<Vec<u8>, Rejection> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| Rejection::Malformed)
}

impl Jws<'_> {
    /// Checks the signature with the key the token selects: the one with its `kid`, or, for a
    /// token without one, each key of its algorithm (at most [`MAX_KEYS_TRIED`]). A key is used
    /// only with an algorithm it [accepts](super::jwk::Key::accepts).
    pub fn verify(&self, keys: &KeySet) -> Result<(), Rejection> {
        let mut tried = 0;
        for key in keys
            .candidates(self.kid.as_deref(), self.alg)
            .take(MAX_KEYS_TRIED)
        {
            tried += 1;
            if key.verify(self.alg, self.signing_input, &self.signature) {
                return Ok(());
            }
        }
        if tried == 0 {
            Err(Rejection::UnknownKey)
        } else {
            Err(Rejection::Signature)
        }
    }

    /// The payload; trustworthy only after [`Jws::verify`] succeeded.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::jwk::{Key, Secrets};

    const ALL: &[Algorithm] = &Algorithm::ALL;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn hs256(header: &str, payload: &str, secret: &[u8]) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
        let tag = ring::hmac::sign(&key, input.as_bytes());
        format!("{input}.{}", b64(tag.as_ref()))
    }

    #[test]
    fn a_good_hmac_token_verifies_and_a_changed_one_does_not() {
        let secret = [9u8; 32];
        let keys = KeySet::single(Key::secret(&secret));
        let token = hs256(r#"{"alg":"HS256"}"#, r#"{"sub":"a"}"#, &secret);
        let jws = parse(token.as_bytes(), ALL).unwrap();
        assert_eq!(jws.verify(&keys), Ok(()));
        assert_eq!(jws.payload(), br#"{"sub":"a"}"#);
        let other = hs256(r#"{"alg":"HS256"}"#, r#"{"sub":"a"}"#, &[8u8; 32]);
        let jws = parse(other.as_bytes(), ALL).unwrap();
        assert_eq!(jws.verify(&keys), Err(Rejection::Signature));
    }

    #[test]
    fn none_unknown_and_unaccepted_algorithms_are_refused() {
        for header in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"NONE"}"#,
            r#"{"alg":"hs256"}"#,
            r#"{"alg":"ES512"}"#,
        ] {
            let token = hs256(header, "{}", &[1; 32]);
            assert_eq!(
                parse(token.as_bytes(), ALL).unwrap_err(),
                Rejection::Algorithm,
                "{header}"
            );
        }
        let token = hs256(r#"{"alg":"HS256"}"#, "{}", &[1; 32]);
        assert_eq!(
            parse(token.as_bytes(), &[Algorithm::RS256]).unwrap_err(),
            Rejection::Algorithm
        );
    }

    #[test]
    fn headers_that_are_not_plain_objects_are_refused() {
        for (header, why) in [
            (r#"["HS256"]"#, Rejection::BadHeader),
            (r#"{"alg":"HS256","alg":"none"}"#, Rejection::BadHeader),
            (r#"{"alg":1}"#, Rejection::BadHeader),
            (r#"{"alg":"HS256","crit":["exp"]}"#, Rejection::Extension),
            (r#"{"alg":"HS256","b64":false}"#, Rejection::Extension),
            (r#"{"alg":"HS256","crit":null}"#, Rejection::Extension),
            ("not json", Rejection::BadHeader),
        ] {
            let token = hs256(header, "{}", &[1; 32]);
            assert_eq!(parse(token.as_bytes(), ALL).unwrap_err(), why, "{header}");
        }
    }

    #[test]
    fn segments_must_be_exactly_three_canonical_base64url_ones() {
        let token = hs256(r#"{"alg":"HS256"}"#, "x", &[1; 32]);
        let mut parts: Vec<&str> = token.split('.').collect();
        assert!(parse(format!("{token}.").as_bytes(), ALL).is_err());
        assert!(parse(format!("{token}.x").as_bytes(), ALL).is_err());
        assert!(parse(parts[..2].join(".").as_bytes(), ALL).is_err());
        assert!(parse(b"", ALL).is_err());
        let padded = format!("{}=", parts[1]);
        parts[1] = &padded;
        assert_eq!(
            parse(parts.join(".").as_bytes(), ALL).unwrap_err(),
            Rejection::Malformed
        );
        // "eA" decodes to "x"; "eB" differs only in unused bits.
        let odd = token.replacen(".eA.", ".eB.", 1);
        assert_eq!(
            parse(odd.as_bytes(), ALL).unwrap_err(),
            Rejection::Malformed
        );
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            parse(long.as_bytes(), ALL).unwrap_err(),
            Rejection::TooLarge
        );
    }

    #[test]
    fn a_kid_not_in_the_set_is_an_unknown_key_unless_a_key_has_no_kid() {
        let secret = [9u8; 32];
        let named = serde_json::json!({"kty": "oct", "kid": "k1", "k": b64(&secret)});
        let keys = KeySet::single(Key::from_jwk(&named, Secrets::Allow).unwrap());
        let token = hs256(r#"{"alg":"HS256","kid":"elsewhere"}"#, "{}", &secret);
        let jws = parse(token.as_bytes(), ALL).unwrap();
        assert_eq!(jws.verify(&keys), Err(Rejection::UnknownKey));
        // A key without a kid (the policy's secret) is not excluded by the token's kid.
        let unnamed = KeySet::single(Key::secret(&secret));
        assert_eq!(jws.verify(&unnamed), Ok(()));
    }
}

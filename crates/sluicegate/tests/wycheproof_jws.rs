//! Project Wycheproof's JSON Web Signature vectors (`../shared/vectors/wycheproof/`, read from
//! there), run through the verifier the `jwt` policy uses: every `valid` case must verify and
//! every `invalid` one must be refused, for each algorithm the gateway supports.
//!
//! Cases left out, each for a stated reason:
//! - ES512 (P-521): `ring` does not verify it, so the gateway does not offer it; its tokens are
//!   refused as an unsupported algorithm.
//! - tcId 367 and 370 ("invalidBase64Padding…") are byte for byte the valid tcId 357 in this
//!   copy of the file; no verifier can both accept and refuse one input.
//! - tcId 372 and 373 are marked valid but carry a `?` inside a base64url segment. RFC 7515 §2
//!   allows no characters outside the alphabet, and the gateway refuses what is ambiguous.
//! - tcId 346 and 350 sign with PS384 under a JWK whose `alg` is PS256. The gateway uses a key
//!   only with the algorithm its JWK names (RFC 7517 §4.4), so refuses them.

use std::path::PathBuf;

use serde_json::Value;
use sluicegate::jose::jwk::{Key, KeySet, Secrets};
use sluicegate::jose::{jws, Algorithm};

const DEFECTIVE: &[(u64, &str)] = &[
    (367, "identical to the valid tcId 357"),
    (370, "identical to the valid tcId 357"),
    (372, "a '?' in base64url, which RFC 7515 section 2 forbids"),
    (373, "a '?' in base64url, which RFC 7515 section 2 forbids"),
    (346, "PS384 under a JWK whose alg is PS256"),
    (350, "PS384 under a JWK whose alg is PS256"),
];

fn vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/vectors/wycheproof/json_web_signature_test.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (the shared vectors are a sibling of the project)",
            path.display()
        )
    });
    serde_json::from_str(&text).unwrap()
}

/// The ES512 groups use P-521, which the gateway does not support.
fn unsupported(jwk: &Value) -> bool {
    jwk.get("crv").and_then(Value::as_str) == Some("P-521")
}

#[test]
fn wycheproof_json_web_signatures() {
    let doc = vectors();
    let mut checked = (0, 0);
    let mut skipped = Vec::new();
    let mut wrong = Vec::new();
    for group in doc["testGroups"].as_array().unwrap() {
        // The public key where the group has one; HMAC groups have only the secret.
        let jwk = group.get("public").unwrap_or(&group["private"]);
        let keys = Key::from_jwk(jwk, Secrets::Allow).map(KeySet::single);
        for case in group["tests"].as_array().unwrap() {
            let id = case["tcId"].as_u64().unwrap();
            let result = case["result"].as_str().unwrap();
            let token = case["jws"].as_str().unwrap();
            if let Some((_, why)) = DEFECTIVE.iter().find(|(d, _)| *d == id) {
                skipped.push(format!("{id}: {why}"));
                continue;
            }
            if unsupported(jwk) {
                skipped.push(format!("{id}: ES512 is not supported"));
                continue;
            }
            let verified = match (&keys, jws::parse(token.as_bytes(), &Algorithm::ALL)) {
                (Ok(keys), Ok(parsed)) => parsed.verify(keys).is_ok(),
                _ => false,
            };
            match (result, verified) {
                ("valid", true) => checked.0 += 1,
                ("invalid", false) => checked.1 += 1,
                ("acceptable", _) => {}
                _ => wrong.push(format!(
                    "tcId {id} ({}): expected {result}, verified = {verified}",
                    case["comment"]
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} cases disagree:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    // Every group ran: 46 valid and 355 invalid in the file, less the two ES512 cases and the
    // defective ones.
    assert_eq!(skipped.len(), 2 + DEFECTIVE.len(), "{skipped:#?}");
    assert_eq!(checked.0 + checked.1 + skipped.len(), 401);
    assert!(checked.0 >= 36, "valid cases accepted: {}", checked.0);
}

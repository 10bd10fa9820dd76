//! JSON Web Keys (RFC 7517, RFC 7518 §6, RFC 8037): the public keys a key set publishes, and the
//! shared secret of the HS algorithms, ready for `ring` to verify with.
//!
//! A key the gateway cannot use safely is skipped, with the reason kept for the log: a key for
//! encryption (`use: "enc"`, or `key_ops` without `"verify"`), a curve or algorithm `ring` does
//! not verify (P-521, Ed448), an RSA modulus under 2048 bits, a key whose `alg` contradicts its
//! type, and any symmetric (`oct`) key — an HMAC secret published in a key set is either a
//! mistake or an attack, and secrets come only from the policy's `secret`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::hmac;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::Algorithm;

/// The most keys a set may hold; real ones hold a handful.
pub const MAX_KEYS: usize = 100;

/// One verification key.
pub struct Key {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one: the only algorithm the key is then used with.
    alg: Option<Algorithm>,
    material: Material,
}

enum Material {
    Rsa(RsaPublicKeyComponents<Box<[u8]>>),
    /// Uncompressed points (`0x04 || x || y`).
    P256(Box<[u8]>),
    P384(Box<[u8]>),
    Ed25519(Box<[u8]>),
    /// One `ring` key per HS algorithm, built once (a key's pads cost more than the MAC).
    Hmac(Box<HmacKeys>),
}

struct HmacKeys {
    sha256: hmac::Key,
    sha384: hmac::Key,
    sha512: hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.material {
            Material::Rsa(_) => "RSA",
            Material::P256(_) => "EC P-256",
            Material::P384(_) => "EC P-384",
            Material::Ed25519(_) => "OKP Ed25519",
            Material::Hmac(_) => "secret",
        };
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("type", &kind)
            .finish()
    }
}

/// Whether symmetric (`oct`) JWKs may be read: only where the key is the operator's own secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Refuse,
    Allow,
}

impl Key {
    /// A shared HMAC secret (the policy's `secret`).
    pub fn secret(secret: &[u8]) -> Key {
        Key {
            kid: None,
            alg: None,
            material: hmac_material(secret),
        }
    }

    /// Reads one JWK; `Err` says why it cannot be used.
    pub fn from_jwk(jwk: &Value, secrets: Secrets) -> Result<Key, String> {
        let Value::Object(jwk) = jwk else {
            return Err("a key is not a JSON object".into());
        };
        let kid = match jwk.get("kid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err("its kid is not a string".into()),
        };
        let named = |what: &str| match &kid {
            Some(kid) => format!("key \"{kid}\": {what}"),
            None => format!("a key without kid: {what}"),
        };
        check_use(jwk).map_err(|why| named(&why))?;
        let alg = match jwk.get("alg") {
            None => None,
            Some(Value::String(s)) => Some(
                Algorithm::from_name(s)
                    .ok_or_else(|| named(&format!("algorithm \"{s}\" is not supported")))?,
            ),
            Some(_) => return Err(named("its alg is not a string")),
        };
        let material = material(jwk, secrets).map_err(|why| named(&why))?;
        let misfit = alg.filter(|&alg| !Key::fits(&material, alg));
        if let Some(alg) = misfit {
            return Err(named(&format!("its alg {alg} does not fit its key type")));
        }
        Ok(Key { kid, alg, material })
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Whether this key may verify a token signed with `alg`: the algorithm belongs to the
    /// key's type, and is the one the JWK names if it names one.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.family_fits(alg) && self.alg.is_none_or(|own| own == alg)
    }

    fn family_fits(&self, alg: Algorithm) -> bool {
        Key::fits(&self.material, alg)
    }

    fn fits(material: &Material, alg: Algorithm) -> bool {
        use Algorithm::*;
        matches!(
            (material, alg),
            (
                Material::Rsa(_),
                RS256 | RS384 | RS512 | PS256 | PS384 | PS512
            ) | (Material::P256(_), ES256)
                | (Material::P384(_), ES384)
                | (Material::Ed25519(_), EdDSA)
                | (Material::Hmac(_), HS256 | HS384 | HS512)
        )
    }

    /// Verifies `signature` over `message` with `alg`; `false` also when the key does not
    /// [accept](Key::accepts) `alg`.
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        use Algorithm::*;
        if !self.accepts(alg) {
            return false;
        }
        let ok = match (&self.material, alg) {
            (Material::Rsa(key), _) => {
                let params = match alg {
                    RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                key.verify(params, message, signature)
            }
            (Material::P256(point), _) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(message, signature)
            }
            (Material::P384(point), _) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(message, signature)
            }
            (Material::Ed25519(x), _) => {
                UnparsedPublicKey::new(&signature::ED25519, x).verify(message, signature)
            }
            (Material::Hmac(keys), _) => {
                let key = match alg {
                    HS256 => &keys.sha256,
                    HS384 => &keys.sha384,
                    _ => &keys.sha512,
                };
                // Constant-time comparison of the tag.
                hmac::verify(key, message, signature)
            }
        };
        ok.is_ok()
    }
}

fn hmac_material(secret: &[u8]) -> Material {
    Material::Hmac(Box::new(HmacKeys {
        sha256: hmac::Key::new(hmac::HMAC_SHA256, secret),
        sha384: hmac::Key::new(hmac::HMAC_SHA384, secret),
        sha512: hmac::Key::new(hmac::HMAC_SHA512, secret),
    }))
}

/// `use` must be `"sig"` and `key_ops` must include `"verify"`, where present (RFC 7517 §4.2–4.3).
fn check_use(jwk: &Map<String, Value>) -> Result<(), String> {
    match jwk.get("use") {
        None => {}
        Some(Value::String(s)) if s == "sig" => {}
        Some(other) => return Err(format!("its use is {other}, not \"sig\"")),
    }
    match jwk.get("key_ops") {
        None => {}
        Some(Value::Array(ops)) if ops.iter().any(|op| op == "verify") => {}
        Some(_) => return Err("its key_ops do not include \"verify\"".into()),
    }
    Ok(())
}

fn material(jwk: &Map<String, Value>, secrets: Secrets) -> Result<Material, String> {
    let kty = match jwk.get("kty") {
        Some(Value::String(s)) => s.as_str(),
        _ => return Err("it has no kty".into()),
    };
    match kty {
        "RSA" => {
            let n = strip_zeros(member(jwk, "n")?);
            let e = strip_zeros(member(jwk, "e")?);
            // `n` has no leading zero byte now: its first byte's leading zeros are the only ones.
            let bits = match n.first() {
                Some(first) => n.len() * 8 - first.leading_zeros() as usize,
                None => 0,
            };
            if !(2048..=8192).contains(&bits) {
                return Err(format!(
                    "its RSA modulus has {bits} bits; 2048 to 8192 are accepted"
                ));
            }
            if e.is_empty() || e.len() > 4 {
                return Err("its RSA exponent is out of range".into());
            }
            Ok(Material::Rsa(RsaPublicKeyComponents {
                n: n.into(),
                e: e.into(),
            }))
        }
        "EC" => {
            let crv = match jwk.get("crv") {
                Some(Value::String(s)) => s.as_str(),
                _ => return Err("it has no crv".into()),
            };
            let size = match crv {
                "P-256" => 32,
                "P-384" => 48,
                other => return Err(format!("curve {other} is not supported")),
            };
            let (x, y) = (member(jwk, "x")?, member(jwk, "y")?);
            // RFC 7518 §6.2.1.2: each coordinate is the full size of the curve's field.
            if x.len() != size || y.len() != size {
                return Err(format!("its coordinates are not {size} bytes each"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(0x04);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            Ok(if size == 32 {
                Material::P256(point.into())
            } else {
                Material::P384(point.into())
            })
        }
        "OKP" => match jwk.get("crv") {
            Some(Value::String(s)) if s == "Ed25519" => {
                let x = member(jwk, "x")?;
                if x.len() != 32 {
                    return Err("its Ed25519 key is not 32 bytes".into());
                }
                Ok(Material::Ed25519(x.into()))
            }
            Some(Value::String(s)) => Err(format!("curve {s} is not supported")),
            _ => Err("it has no crv".into()),
        },
        "oct" => match secrets {
            Secrets::Allow => Ok(hmac_material(&member(jwk, "k")?)),
            Secrets::Refuse => Err(
                "it is a symmetric (oct) key; HMAC secrets are configured with `secret`, never read from a key set"
                    .into(),
            ),
        },
        other => Err(format!("key type {other} is not supported")),
    }
}

/// A base64url member, decoded strictly.
fn member(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    match jwk.get(name) {
        Some(Value::String(s)) => URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| format!("its {name} is not base64url")),
        _ => Err(format!("it has no {name}")),
    }
}

/// RFC 7518 asks for minimal big-endian integers; some publishers add a zero byte anyway.
fn strip_zeros(bytes: Vec<u8>) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

/// The keys one set holds.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

/// Why a key set cannot be used at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeySetError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a JWK set: expected an object with a \"keys\" array")]
    Shape,
    #[error("more than {MAX_KEYS} keys")]
    TooMany,
    #[error("no key in the set can be used ({0})")]
    NoUsableKey(String),
}

/// A key set and the keys of it that were skipped, with why.
#[derive(Debug)]
pub struct Loaded {
    pub set: KeySet,
    pub skipped: Vec<String>,
}

impl KeySet {
    /// A set of one key.
    pub fn single(key: Key) -> KeySet {
        KeySet { keys: vec![key] }
    }

    /// Reads a JWK set (`{"keys": [...]}`). Symmetric keys are refused.
    pub fn from_jwks(json: &[u8]) -> Result<Loaded, KeySetError> {
        let value: Value =
            serde_json::from_slice(json).map_err(|e| KeySetError::Json(e.to_string()))?;
        let Some(Value::Array(items)) = value.get("keys") else {
            return Err(KeySetError::Shape);
        };
        if items.len() > MAX_KEYS {
            return Err(KeySetError::TooMany);
        }
        let mut set = KeySet::default();
        let mut skipped = Vec::new();
        for item in items {
            match Key::from_jwk(item, Secrets::Refuse) {
                Ok(key) => set.keys.push(key),
                Err(why) => skipped.push(why),
            }
        }
        if set.keys.is_empty() {
            let why = if skipped.is_empty() {
                "it is empty".to_string()
            } else {
                skipped.join("; ")
            };
            return Err(KeySetError::NoUsableKey(why));
        }
        Ok(Loaded { set, skipped })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether any key carries this `kid`.
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid() == Some(kid))
    }

    /// The keys that may verify a token with this `kid` (if it names one) and `alg`: those with
    /// that `kid`, and those without any (a `kid` is a hint, RFC 7515 §4.1.4: a key that has
    /// none, such as the policy's `secret`, is not excluded by it). Keys with that `kid` first.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        let named = self
            .keys
            .iter()
            .filter(move |k| kid.is_some() && k.kid() == kid && k.accepts(alg));
        let unnamed = self
            .keys
            .iter()
            .filter(move |k| (kid.is_none() || k.kid().is_none()) && k.accepts(alg));
        named.chain(unnamed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_for_encryption_or_with_unsupported_curves_are_skipped_with_a_reason() {
        let set = json!({"keys": [
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA", "kid": "a"},
            {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32]), "use": "enc", "kid": "b"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "c"},
            {"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode([7u8; 32]), "kid": "d"},
        ]});
        let loaded = KeySet::from_jwks(set.to_string().as_bytes()).unwrap();
        assert_eq!(loaded.set.len(), 1);
        assert!(loaded.set.has_kid("d"));
        assert_eq!(loaded.skipped.len(), 3, "{:?}", loaded.skipped);
        assert!(loaded.skipped[0].contains("P-521"));
        assert!(loaded.skipped[1].contains("\"enc\""));
        assert!(loaded.skipped[2].contains("symmetric"));
    }

    #[test]
    fn a_set_without_usable_keys_is_an_error() {
        let err = KeySet::from_jwks(br#"{"keys": []}"#).unwrap_err();
        assert!(matches!(err, KeySetError::NoUsableKey(_)));
        assert_eq!(
            KeySet::from_jwks(br#"[1]"#).unwrap_err(),
            KeySetError::Shape
        );
        assert!(matches!(
            KeySet::from_jwks(b"{").unwrap_err(),
            KeySetError::Json(_)
        ));
    }

    #[test]
    fn a_key_is_bound_to_its_type_and_its_own_alg() {
        let x = URL_SAFE_NO_PAD.encode([7u8; 32]);
        let key = Key::from_jwk(
            &json!({"kty": "OKP", "crv": "Ed25519", "x": x}),
            Secrets::Refuse,
        )
        .unwrap();
        assert!(key.accepts(Algorithm::EdDSA));
        assert!(!key.accepts(Algorithm::HS256));
        assert!(!key.accepts(Algorithm::ES256));
        let secret = Key::secret(&[1; 32]);
        assert!(secret.accepts(Algorithm::HS384));
        assert!(!secret.accepts(Algorithm::RS256));
        // An RSA key whose JWK says RS256 is not used for PS256.
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let rsa = Key::from_jwk(
            &json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "RS256"}),
            Secrets::Refuse,
        )
        .unwrap();
        assert!(rsa.accepts(Algorithm::RS256));
        assert!(!rsa.accepts(Algorithm::PS256));
        // An alg that contradicts the key type makes the key unusable.
        let err = Key::from_jwk(
            &json!({"kty": "RSA", "n": n, "e": "AQAB", "alg": "HS256"}),
            Secrets::Refuse,
        )
        .unwrap_err();
        assert!(err.contains("does not fit"), "{err}");
    }

    #[test]
    fn empty_rsa_moduli_are_refused_without_panicking() {
        for n in ["", "AA", "AAAA"] {
            let err = Key::from_jwk(&json!({"kty": "RSA", "n": n, "e": "AQAB"}), Secrets::Refuse)
                .unwrap_err();
            assert!(err.contains("0 bits"), "{err}");
        }
    }

    #[test]
    fn short_rsa_moduli_are_refused() {
        let n = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        let err = Key::from_jwk(&json!({"kty": "RSA", "n": n, "e": "AQAB"}), Secrets::Refuse)
            .unwrap_err();
        assert!(err.contains("1024 bits"), "{err}");
    }
}

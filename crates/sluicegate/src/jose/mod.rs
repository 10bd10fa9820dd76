//! JSON Web Signatures, Keys and Tokens (RFC 7515, 7517, 7518, 7519), read strictly: what the
//! `jwt` authentication policy verifies tokens with, and what the config checks key files with.
//!
//! The cryptography is `ring`'s; this module only decides which bytes go to it. It is small on
//! purpose, because the classic JWT attacks are all decisions of this layer, not of the
//! primitives:
//! - `alg: none`, or any algorithm not in the policy's `algorithms`: refused ([`Algorithm`] has
//!   no "none" at all).
//! - Algorithm confusion (an RSA public key used as an HMAC secret): a key is only ever used by
//!   the algorithm family its type belongs to, and by exactly the algorithm its JWK names when it
//!   names one (see [`jwk::Key::accepts`]). HMAC secrets never come from a key set.
//! - Keys the token brings along (`jwk`, `jku`, `x5u`, `x5c`): never read.
//! - Extensions the gateway does not implement (`crit`, `b64`): refused, as RFC 7515 §4.1.11
//!   requires.
//! - Ambiguous encodings: base64url without padding and with canonical trailing bits only;
//!   exactly three segments; a header or claims object naming a member twice is refused.
//! - Unbounded input: tokens over [`MAX_TOKEN_BYTES`]; JSON nested deeper than serde_json's
//!   recursion limit fails to parse.

pub mod claims;
pub mod jwk;
pub mod jws;

use std::fmt;

/// The longest token read. Tokens are usually under 2 KiB; the request head limit bounds them
/// anyway, this bounds the work a hostile one can ask for.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The signature algorithms the gateway verifies (RFC 7518 §3.1, RFC 8037 for EdDSA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The `alg` value, exactly as JWA spells it (the comparison is case-sensitive: `"NONE"` and
    /// `"rs256"` are not algorithms).
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether this is an HMAC algorithm (a shared secret, not a public key).
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }

    /// The shortest HMAC secret RFC 7518 §3.2 allows: the hash's output size.
    pub fn min_secret_bytes(self) -> usize {
        match self {
            Algorithm::HS256 => 32,
            Algorithm::HS384 => 48,
            Algorithm::HS512 => 64,
            _ => 0,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a token was refused. Each has a stable name for logs and metrics ([`Rejection::reason`])
/// and a description for the client's `WWW-Authenticate` ([`Rejection::description`]), which
/// never repeats the token or a claim's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the token is not a compact JWS (three base64url segments)")]
    Malformed,
    #[error("the token is longer than the gateway reads")]
    TooLarge,
    #[error("the token's header is not a JSON object with a string alg")]
    BadHeader,
    #[error("the token's algorithm is not one this policy accepts")]
    Algorithm,
    #[error("the token asks for a JWS extension (crit or b64) the gateway does not implement")]
    Extension,
    #[error("no key of the key set matches the token's kid and algorithm")]
    UnknownKey,
    #[error("the signature does not verify")]
    Signature,
    #[error("the token's claims are not one JSON object with distinct names")]
    BadClaims,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token has no expiry (exp), which this policy requires")]
    MissingExpiry,
    #[error("the token's issuer (iss) is not the one this policy accepts")]
    Issuer,
    #[error("the token's audience (aud) is not one this policy accepts")]
    Audience,
}

impl Rejection {
    /// The stable name, for the access log and `sluicegate_auth_decisions_total{reason}`.
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::Malformed => "malformed",
            Rejection::TooLarge => "too_large",
            Rejection::BadHeader => "bad_header",
            Rejection::Algorithm => "algorithm",
            Rejection::Extension => "extension",
            Rejection::UnknownKey => "unknown_key",
            Rejection::Signature => "bad_signature",
            Rejection::BadClaims => "bad_claims",
            Rejection::Expired => "expired",
            Rejection::NotYetValid => "not_yet_valid",
            Rejection::MissingExpiry => "missing_exp",
            Rejection::Issuer => "wrong_issuer",
            Rejection::Audience => "wrong_audience",
        }
    }

    pub const ALL: [Rejection; 13] = [
        Rejection::Malformed,
        Rejection::TooLarge,
        Rejection::BadHeader,
        Rejection::Algorithm,
        Rejection::Extension,
        Rejection::UnknownKey,
        Rejection::Signature,
        Rejection::BadClaims,
        Rejection::Expired,
        Rejection::NotYetValid,
        Rejection::MissingExpiry,
        Rejection::Issuer,
        Rejection::Audience,
    ];
}

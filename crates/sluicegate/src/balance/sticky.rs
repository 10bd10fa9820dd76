//! Sticky sessions: a cookie that pins a client to one endpoint (SPEC 2.1).
//!
//! The cookie value never shows the endpoint's address: it is an HMAC-SHA256 of the service name
//! and the address under a key (the configured `secret`, or a random key made once per process),
//! cut to 128 bits. Tokens are computed when the config snapshot is built, so a request only
//! compares strings. The same key and endpoint always give the same token, so stickiness
//! survives reloads (and, with a shared `secret`, restarts and other gateway instances).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::header::{HeaderMap, HeaderValue, COOKIE};
use sha2::Sha256;

/// A service's sticky-session cookie and each endpoint's token.
#[derive(Debug, Clone)]
pub struct Sticky {
    pub cookie: String,
    /// `Set-Cookie` values, one per endpoint, ready to send.
    set_cookie: Vec<HeaderValue>,
    tokens: Vec<String>,
}

/// The per-process key used when the config sets no `secret`.
fn process_key() -> &'static [u8; 32] {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    KEY.get_or_init(|| {
        let mut key = [0u8; 32];
        for chunk in key.chunks_mut(8) {
            chunk.copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
        key
    })
}

fn token(key: &[u8], service: &str, address: SocketAddr) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(service.as_bytes());
    mac.update(b"\n");
    mac.update(address.to_string().as_bytes());
    let digest = mac.finalize().into_bytes();
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

impl Sticky {
    pub fn new(
        cookie: &str,
        ttl: Duration,
        secret: Option<&str>,
        service: &str,
        addresses: &[SocketAddr],
    ) -> Sticky {
        let key: &[u8] = match secret {
            Some(s) => s.as_bytes(),
            None => process_key(),
        };
        let tokens: Vec<String> = addresses.iter().map(|a| token(key, service, *a)).collect();
        let set_cookie = tokens
            .iter()
            .map(|t| {
                let text = format!(
                    "{cookie}={t}; Max-Age={}; Path=/; HttpOnly; SameSite=Lax",
                    ttl.as_secs()
                );
                // The cookie name is validated as a token and the value is hex.
                HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
            })
            .collect();
        Sticky {
            cookie: cookie.to_string(),
            set_cookie,
            tokens,
        }
    }

    /// The endpoint index the request's cookie pins, if it carries a valid one.
    pub fn pinned(&self, headers: &HeaderMap) -> Option<usize> {
        let value = cookie_value(headers, &self.cookie)?;
        self.tokens.iter().position(|t| t == value)
    }

    /// The `Set-Cookie` header that pins a client to endpoint `index`.
    pub fn set_cookie(&self, index: usize) -> Option<&HeaderValue> {
        self.set_cookie.get(index)
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim().trim_matches('"'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<SocketAddr> {
        (0..3)
            .map(|i| format!("127.0.0.1:{}", 9000 + i).parse().unwrap())
            .collect()
    }

    #[test]
    fn tokens_hide_addresses_and_round_trip() {
        let s = Sticky::new(
            "sg",
            Duration::from_secs(60),
            Some("0123456789abcdef"),
            "svc",
            &addrs(),
        );
        let set = s.set_cookie(1).unwrap().to_str().unwrap().to_string();
        assert!(set.starts_with("sg="));
        assert!(set.contains("Max-Age=60"));
        assert!(set.contains("HttpOnly"));
        assert!(!set.contains("127.0.0.1"));
        assert!(!set.contains("9001"));
        let value = set.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(
            COOKIE,
            HeaderValue::from_str(&format!("a=b; {value}")).unwrap(),
        );
        assert_eq!(s.pinned(&headers), Some(1));
    }

    #[test]
    fn same_secret_same_tokens_other_secret_other_tokens() {
        let a = Sticky::new(
            "sg",
            Duration::from_secs(1),
            Some("0123456789abcdef"),
            "svc",
            &addrs(),
        );
        let b = Sticky::new(
            "sg",
            Duration::from_secs(1),
            Some("0123456789abcdef"),
            "svc",
            &addrs(),
        );
        let c = Sticky::new(
            "sg",
            Duration::from_secs(1),
            Some("fedcba9876543210"),
            "svc",
            &addrs(),
        );
        assert_eq!(a.tokens, b.tokens);
        assert_ne!(a.tokens, c.tokens);
    }

    #[test]
    fn forged_or_missing_cookie_pins_nothing() {
        let s = Sticky::new("sg", Duration::from_secs(1), None, "svc", &addrs());
        let mut headers = HeaderMap::new();
        assert_eq!(s.pinned(&headers), None);
        headers.insert(COOKIE, HeaderValue::from_static("sg=127.0.0.1:9000"));
        assert_eq!(s.pinned(&headers), None);
    }
}

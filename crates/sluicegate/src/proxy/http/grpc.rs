//! gRPC over the gateway: requests are recognised by their content type, `grpc-timeout` narrows
//! the route's deadline, and errors the gateway itself produces are expressed as gRPC statuses
//! (a "trailers-only" response: HTTP 200 with `grpc-status` and `grpc-message` headers), because
//! gRPC clients read those, not HTTP statuses or JSON bodies.

use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};

use super::headers::X_REQUEST_ID;
use crate::answer::GatewayError;

/// gRPC status codes the gateway uses (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// Whether a request is gRPC (`content-type: application/grpc` or `application/grpc+proto` …).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit, `H`, `M`, `S`, `m` (ms), `u` (µs)
/// or `n` (ns), per the gRPC over HTTP/2 protocol. `None` for anything else.
pub fn parse_timeout(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status for an error the gateway produced.
pub fn code_for(error: GatewayError) -> Code {
    match error {
        GatewayError::NoRoute
        | GatewayError::NotImplemented(_)
        | GatewayError::MethodNotAllowed(_) => Code::Unimplemented,
        GatewayError::NoHealthyUpstream
        | GatewayError::UpstreamUnavailable
        | GatewayError::AuthUnavailable
        | GatewayError::CircuitOpen
        | GatewayError::Overloaded
        | GatewayError::Shed => Code::Unavailable,
        GatewayError::Unauthenticated(_) => Code::Unauthenticated,
        GatewayError::Forbidden => Code::PermissionDenied,
        GatewayError::UpstreamTimeout | GatewayError::RequestTimeout => Code::DeadlineExceeded,
        GatewayError::NotCached => Code::Unavailable,
        GatewayError::PayloadTooLarge
        | GatewayError::HeadersTooLarge
        | GatewayError::RateLimited => Code::ResourceExhausted,
        GatewayError::BadRequest | GatewayError::Malformed(_) => Code::Internal,
    }
}

/// Percent-encodes a `grpc-message` as the protocol asks (space through `~` except `%` pass).
fn encode_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A trailers-only gRPC response for a gateway error.
pub fn error_response(error: GatewayError, request_id: &str) -> Response<Bytes> {
    let mut response = Response::new(Bytes::new());
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert(
        "grpc-status",
        HeaderValue::from(code_for(error) as u8 as u16),
    );
    let message = format!("{} ({})", error, error.code());
    if let Ok(v) = HeaderValue::from_str(&encode_message(&message)) {
        h.insert("grpc-message", v);
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert(X_REQUEST_ID, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        let t = |s: &'static str| parse_timeout(&HeaderValue::from_static(s));
        assert_eq!(t("1S"), Some(Duration::from_secs(1)));
        assert_eq!(t("250m"), Some(Duration::from_millis(250)));
        assert_eq!(t("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(t("3M"), Some(Duration::from_secs(180)));
        assert_eq!(t("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(t("100u"), Some(Duration::from_micros(100)));
        assert_eq!(t("123456789S"), None, "at most 8 digits");
        assert_eq!(t("S"), None);
        assert_eq!(t("5s"), None);
        assert_eq!(t("-5S"), None);
        assert_eq!(t(""), None);
    }

    #[test]
    fn error_responses_are_trailers_only_grpc() {
        let r = error_response(GatewayError::NoRoute, "id-1");
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "12");
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert!(r.headers()["grpc-message"]
            .to_str()
            .unwrap()
            .contains("no_route"));
        assert!(r.body().is_empty());
        assert_eq!(
            code_for(GatewayError::UpstreamTimeout),
            Code::DeadlineExceeded
        );
        assert_eq!(code_for(GatewayError::NoHealthyUpstream), Code::Unavailable);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("a b%c\u{e9}"), "a b%25c%C3%A9");
    }

    proptest::proptest! {
        #[test]
        fn timeout_parser_never_panics(s in "[ -~]{0,12}") {
            if let Ok(v) = HeaderValue::from_str(&s) {
                let _ = parse_timeout(&v);
            }
        }
    }
}

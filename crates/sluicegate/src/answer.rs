//! Errors the gateway answers itself (SPEC 5), rendered to their JSON body in one place. Below
//! both the proxy and the policy steps, which answer with them.

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Response, StatusCode};

/// Every answer names the request it answers (SPEC 5).
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A response the gateway produces instead of forwarding one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("the request is malformed")]
    BadRequest,
    /// A malformed request, with what is wrong with it.
    #[error("the request is malformed: {0}")]
    Malformed(&'static str),
    #[error("not implemented: {0}")]
    NotImplemented(&'static str),
    #[error("the gateway does not serve {0} requests")]
    MethodNotAllowed(&'static str),
    #[error("no route matches this request")]
    NoRoute,
    #[error("the request body is larger than this listener allows")]
    PayloadTooLarge,
    #[error("the request headers are larger than this listener allows")]
    HeadersTooLarge,
    #[error("the upstream could not be reached or failed before answering")]
    UpstreamUnavailable,
    #[error("no healthy endpoint is available for this service")]
    NoHealthyUpstream,
    #[error("the upstream did not answer within the route's timeout")]
    UpstreamTimeout,
    #[error("too many requests: the route's rate limit refused this one; retry after the time Retry-After gives")]
    RateLimited,
    #[error("authentication failed: {0}")]
    Unauthenticated(&'static str),
    #[error("the credentials do not grant a scope this route requires")]
    Forbidden,
    #[error("every endpoint of the service is kept out by its open circuit breaker; retry later")]
    CircuitOpen,
    #[error("the route has as many requests in flight as it allows (max_in_flight); retry after the time Retry-After gives")]
    Overloaded,
    /// Load shedding refused the request (`[load_shedding]`); same code as `Overloaded`.
    #[error("the gateway is overloaded and sheds requests of this priority now; retry after the time Retry-After gives")]
    Shed,
    #[error("the request body did not arrive within the route's timeout")]
    RequestTimeout,
    /// `Cache-Control: only-if-cached` and nothing stored answers (RFC 9111 §5.2.1.7).
    #[error("the request asked for a stored response only (only-if-cached), and none answers it")]
    NotCached,
    #[error("credentials cannot be checked now: the identity provider's key set has not been loaded yet; retry after the time Retry-After gives")]
    AuthUnavailable,
}

impl GatewayError {
    pub fn status(self) -> StatusCode {
        match self {
            GatewayError::BadRequest | GatewayError::Malformed(_) => StatusCode::BAD_REQUEST,
            GatewayError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            GatewayError::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamTimeout | GatewayError::NotCached => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            GatewayError::Forbidden => StatusCode::FORBIDDEN,
            GatewayError::CircuitOpen | GatewayError::Overloaded | GatewayError::Shed => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::AuthUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable `error` code of SPEC 5.
    pub fn code(self) -> &'static str {
        match self {
            GatewayError::BadRequest | GatewayError::Malformed(_) => "bad_request",
            GatewayError::NotImplemented(_) => "not_implemented",
            GatewayError::MethodNotAllowed(_) => "method_not_allowed",
            GatewayError::NoRoute => "no_route",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::HeadersTooLarge => "headers_too_large",
            GatewayError::UpstreamUnavailable => "upstream_unavailable",
            GatewayError::NoHealthyUpstream => "no_healthy_upstream",
            GatewayError::UpstreamTimeout => "upstream_timeout",
            GatewayError::RateLimited => "rate_limited",
            GatewayError::Unauthenticated(_) => "unauthenticated",
            GatewayError::Forbidden => "forbidden",
            GatewayError::CircuitOpen => "circuit_open",
            GatewayError::Overloaded | GatewayError::Shed => "overloaded",
            GatewayError::RequestTimeout => "request_timeout",
            GatewayError::AuthUnavailable => "auth_unavailable",
            GatewayError::NotCached => "not_cached",
        }
    }

    /// The JSON body of SPEC 5.
    pub fn body(self, request_id: &str) -> Bytes {
        let value = serde_json::json!({
            "error": self.code(),
            "message": self.to_string(),
            "request_id": request_id,
        });
        Bytes::from(value.to_string())
    }

    /// The whole response; `close` asks the client to drop the connection (after bad input).
    pub fn response(self, request_id: &str, close: bool) -> Response<Bytes> {
        let mut response = Response::new(self.body(request_id));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(request_id) {
            headers.insert(X_REQUEST_ID, v);
        }
        if close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_the_spec_json() {
        let body = GatewayError::NoRoute.body("abc");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"], "no_route");
        assert_eq!(v["request_id"], "abc");
        assert!(v["message"].as_str().unwrap().contains("route"));
        assert_eq!(GatewayError::UpstreamTimeout.status(), 504);
        assert_eq!(GatewayError::UpstreamUnavailable.status(), 502);
    }
}

//! Byte counts and failure flags of one exchange.

use std::cell::Cell;

/// Byte counts of one exchange, shared by the two body wrappers and the access log.
#[derive(Debug, Default)]
pub struct ExchangeStats {
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Set when the request body went over the limit, so the forwarding error maps to 413.
    pub body_too_large: Cell<bool>,
    /// Set when the client's body could not be read (malformed chunking, a reset), so the
    /// forwarding error maps to 400 rather than blaming the upstream.
    pub client_body_failed: Cell<bool>,
    /// Set while a request body is still coming from the client: a deadline that passes then is
    /// the client's slowness, not the endpoint's, and counts against no endpoint.
    pub body_pending: Cell<bool>,
}

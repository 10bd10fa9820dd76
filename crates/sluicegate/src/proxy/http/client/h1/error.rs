//! Why an exchange on an upstream HTTP/1.1 connection failed.

/// Why an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream I/O failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream closed the connection before a response")]
    ClosedBeforeResponse,
    #[error("upstream closed the connection in the middle of the response body")]
    IncompleteBody,
    #[error(transparent)]
    Head(#[from] crate::proxy::http::wire::response::Error),
    #[error("unexpected 101 Switching Protocols for a request that asked no upgrade")]
    UnexpectedUpgrade,
    #[error("malformed chunked body: {0}")]
    Chunked(#[from] crate::proxy::http::wire::chunked::ChunkError),
    #[error("request body: {0}")]
    RequestBody(#[source] crate::proxy::http::body::RequestBodyError),
}

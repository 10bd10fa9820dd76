//! Body wrappers between client and upstream: both directions stream frame by frame (never
//! buffered whole), count bytes for the access log, and enforce limits and deadlines.
//!
//! The request side (`request.rs`) and the response side (`response.rs`) are apart, each with
//! its own error type: the gateway's HTTP/1.1 client reads the one and produces the other, so
//! one shared error type made the body and client modules depend on each other.

mod request;
mod response;
mod stats;

pub use request::{Buffered, ClientBody, RequestBody, RequestBodyError};
pub use response::{BodyError, Collect, Finish, ResponseBody, UpstreamBody};
pub use stats::ExchangeStats;

//! One GET of a key set from an identity provider's `jwks_url`: HTTPS verified against the
//! system's roots or the policy's `ca` (plain HTTP only to loopback, which the config checks),
//! bounded in time and size, redirects not followed (a key set that moves is a config change).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, HOST, USER_AGENT};
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// The longest a whole fetch may take: connecting, TLS, the request and the body.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest key set read.
pub const MAX_BYTES: usize = 1 << 20;

const AGENT: &str = concat!("sluicegate/", env!("CARGO_PKG_VERSION"), " (jwks)");

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    #[error("cannot connect to {0} (over http://, loopback addresses only): {1}")]
    Connect(String, std::io::Error),
    #[error("TLS with {0} failed: {1}")]
    Tls(String, std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("the server answered {0}")]
    Status(StatusCode),
    #[error("the key set is larger than {MAX_BYTES} bytes, or its body failed")]
    Body,
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
    #[error("invalid URL")]
    Url,
}

/// A fetched key set: its bytes, and how long the server says it may be kept
/// (`Cache-Control: max-age`).
pub struct Fetched {
    pub body: Bytes,
    pub max_age: Option<Duration>,
}

/// GETs `url`; `tls` is the client config for `https://`.
pub async fn fetch(
    url: &Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Fetched, FetchError> {
    tokio::time::timeout(TIMEOUT, fetch_once(url, tls))
        .await
        .map_err(|_| FetchError::Timeout)?
}

async fn fetch_once(
    url: &Uri,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Fetched, FetchError> {
    let https = url.scheme_str() == Some("https");
    let host = url.host().ok_or(FetchError::Url)?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = format!("{host}:{port}");
    let addresses = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| FetchError::Resolve(authority.clone(), e))?;
    let mut last = std::io::Error::other("no address");
    let mut stream = None;
    // In clear, only to this machine: the config allows http:// for loopback names, and a name
    // such as `localhost` must resolve there too (a resolver could send it elsewhere).
    for address in addresses.filter(|a| https || a.ip().is_loopback()) {
        match TcpStream::connect(address).await {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or_else(|| FetchError::Connect(authority.clone(), last))?;
    let _ = stream.set_nodelay(true);
    let path = url.path_and_query().map_or("/", |pq| pq.as_str());
    let mut request = Request::new(Empty::<Bytes>::new());
    *request.uri_mut() = path.parse().map_err(|_| FetchError::Url)?;
    let headers = request.headers_mut();
    // The authority without any userinfo (RFC 9110 §7.2).
    let host_field = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    headers.insert(
        HOST,
        HeaderValue::from_str(&host_field).map_err(|_| FetchError::Url)?,
    );
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(USER_AGENT, HeaderValue::from_static(AGENT));
    match (https, tls) {
        (true, Some(tls)) => {
            let name = ServerName::try_from(bare.to_string()).map_err(|_| FetchError::Url)?;
            let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
            let stream = connector
                .connect(name, stream)
                .await
                .map_err(|e| FetchError::Tls(authority, e))?;
            exchange(TokioIo::new(stream), request).await
        }
        (true, None) => Err(FetchError::Url),
        (false, _) => exchange(TokioIo::new(stream), request).await,
    }
}

async fn exchange<T>(io: T, request: Request<Empty<Bytes>>) -> Result<Fetched, FetchError>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, connection) = http1::handshake::<_, Empty<Bytes>>(io).await?;
    // Driven alongside the exchange, on this task: nothing outlives the fetch.
    let exchange = async {
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let max_age = response
            .headers()
            .get_all(CACHE_CONTROL)
            .iter()
            .find_map(max_age);
        let body = Limited::new(response.into_body(), MAX_BYTES)
            .collect()
            .await
            .map_err(|_| FetchError::Body)?
            .to_bytes();
        Ok(Fetched { body, max_age })
    };
    tokio::pin!(connection);
    tokio::pin!(exchange);
    tokio::select! {
        result = &mut exchange => result,
        ended = &mut connection => {
            // The connection ended first: the exchange finishes with what it has, or fails.
            ended?;
            exchange.await
        }
    }
}

/// `max-age=N` of a `Cache-Control` field value (RFC 9111 §5.2.2.1).
fn max_age(value: &HeaderValue) -> Option<Duration> {
    value.to_str().ok()?.split(',').find_map(|directive| {
        let (name, seconds) = directive.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        let seconds: u64 = seconds.trim().trim_matches('"').parse().ok()?;
        Some(Duration::from_secs(seconds))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let v = |s: &'static str| max_age(&HeaderValue::from_static(s));
        assert_eq!(v("public, max-age=300"), Some(Duration::from_secs(300)));
        assert_eq!(v("Max-Age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(v("no-cache"), None);
        assert_eq!(v("max-age=-1"), None);
    }
}

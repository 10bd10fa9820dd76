//! `[tracing]`, as read from the file.

use super::model::{OtlpProtocol, TracingConfig};
use super::raw::{Reader, Table};

/// `[tracing]`: where and how spans are exported, and which requests are sampled.
pub fn tracing(r: &mut Reader<'_>, t: &Table<'_, '_>) -> TracingConfig {
    r.check_keys(
        t,
        &[
            "endpoint",
            "protocol",
            "sample_ratio",
            "parent_based",
            "headers",
            "service_name",
            "timeout",
            "queue_size",
        ],
        &[],
    );
    let defaults = TracingConfig::default();
    let protocol = r.string(t, "protocol").and_then(|(text, span)| {
        let parsed = OtlpProtocol::parse(text);
        if parsed.is_none() {
            r.report(
                span,
                format!(
                    "{}: unknown protocol \"{text}\"; expected \"grpc\" or \"http/protobuf\"",
                    t.key_path("protocol")
                ),
            );
        }
        parsed
    });
    let endpoint = r
        .string(t, "endpoint")
        .and_then(|(text, span)| match check_endpoint(text) {
            Ok(()) => Some(text.to_string()),
            Err(why) => {
                r.report(span, format!("{}: {why}", t.key_path("endpoint")));
                None
            }
        });
    // The HTTP/protobuf exporter has no TLS here (gRPC has): refused now, not failing later.
    // Without `protocol` the environment or the default (HTTP) decides, so an https:// URL must
    // say "grpc" itself.
    if let (None | Some(OtlpProtocol::HttpProtobuf), Some(url)) = (protocol, &endpoint) {
        if url.starts_with("https://") {
            let span = t.get("endpoint").map_or(t.span.clone(), |v| v.span());
            r.report(
                span,
                format!(
                    "{}: https:// needs protocol = \"grpc\" (OTLP over HTTP is sent without TLS; use http:// for a collector next to the gateway)",
                    t.key_path("endpoint")
                ),
            );
        }
    }
    let headers = r.header_table(t, "headers");
    let timeout = r.duration(t, "timeout").and_then(|d| {
        if d.is_zero() || d > std::time::Duration::from_secs(60) {
            let span = t.get("timeout").map_or(t.span.clone(), |v| v.span());
            r.report(
                span,
                format!(
                    "{}: expected a duration above 0 and at most 60s",
                    t.key_path("timeout")
                ),
            );
            None
        } else {
            Some(d)
        }
    });
    TracingConfig {
        endpoint,
        protocol,
        sample_ratio: r
            .number(t, "sample_ratio", 0.0, true, 1.0)
            .unwrap_or(defaults.sample_ratio),
        parent_based: r.bool(t, "parent_based").unwrap_or(defaults.parent_based),
        headers,
        service_name: r
            .string(t, "service_name")
            .map(|(s, _)| s.to_string())
            .filter(|s| !s.is_empty()),
        timeout,
        queue_size: r
            .integer(t, "queue_size", 1, 1_000_000)
            .map_or(defaults.queue_size, |(n, _)| n as usize),
    }
}

/// An `http://` or `https://` URL with a host (the collector's).
fn check_endpoint(text: &str) -> Result<(), String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|_| format!("invalid URL \"{text}\""))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => return Err(format!("\"{text}\" must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("\"{text}\" has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_endpoint;

    #[test]
    fn endpoints_are_http_urls_with_a_host() {
        assert!(check_endpoint("http://127.0.0.1:4317").is_ok());
        assert!(check_endpoint("https://otlp.example.com/").is_ok());
        assert!(check_endpoint("127.0.0.1:4317").is_err());
        assert!(check_endpoint("ftp://collector").is_err());
        assert!(check_endpoint("not a url").is_err());
    }
}

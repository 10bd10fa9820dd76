//! Sending finished spans to an OpenTelemetry collector over OTLP, without ever making a
//! request wait.
//!
//! Workers hand each sampled request's spans to a bounded queue ([`Exporter::submit`]: one
//! atomic add and a channel send, never a wait); one task on the control runtime takes them in
//! batches and exports each with `opentelemetry-otlp` (gRPC through tonic, or HTTP/protobuf
//! through hyper). When the collector is slow, away or hanging, the queue fills while a batch
//! waits out its timeout, and what does not fit is dropped and counted
//! (`sluicegate_tracing_spans_dropped_total{reason="queue_full"}`); a batch the collector
//! refuses is counted as `export_failed`. The memory held is bounded by `queue_size` spans plus
//! the batch being sent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use tokio::sync::mpsc;

use crate::config::{OtlpProtocol, TracingConfig};
use crate::observe::metrics::{self, Counter};
use crate::observe::names;

/// Spans sent to the collector in one request at most.
const BATCH_SPANS: usize = 512;
/// How long spans wait for a batch to fill before it is sent anyway.
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// What the export depends on: a reload that changes none of it keeps the exporter (and the
/// spans queued in it); one that changes any starts a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    pub protocol: OtlpProtocol,
    pub endpoint: Option<String>,
    pub headers: Vec<(String, String)>,
    pub timeout: Option<Duration>,
    pub service_name: Option<String>,
    pub queue_size: usize,
}

impl ExportSettings {
    pub fn of(config: &TracingConfig) -> ExportSettings {
        ExportSettings {
            protocol: config.protocol.unwrap_or_else(protocol_from_env),
            endpoint: config.endpoint.clone(),
            headers: config.headers.clone(),
            timeout: config.timeout,
            service_name: config.service_name.clone(),
            queue_size: config.queue_size,
        }
    }
}

/// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else HTTP/protobuf
/// (the OTLP exporter specification's default). Values the gateway cannot send (`http/json`)
/// fall back to the default, as the config check cannot see the environment of a later start.
fn protocol_from_env() -> OtlpProtocol {
    [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ]
    .iter()
    .filter_map(|name| std::env::var(name).ok())
    .find_map(|v| OtlpProtocol::parse(v.trim()))
    .unwrap_or(OtlpProtocol::HttpProtobuf)
}

/// Why an exporter could not be made (the endpoint or headers the environment gives, which the
/// config check does not see).
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter: {0}")]
pub struct ExportError(String);

/// What the export task is handed.
enum Message {
    /// One request's spans.
    Spans(Vec<SpanData>),
    /// Send what was handed in before now, then answer (at shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The queue into one export task; dropping the last handle lets the task send what is queued
/// and end.
pub struct Exporter {
    tx: mpsc::UnboundedSender<Message>,
    /// Spans in the channel, not yet taken into a batch.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dropped_full: Counter,
}

impl Exporter {
    /// Builds the OTLP exporter and starts its task on `runtime`.
    pub fn start(
        settings: &ExportSettings,
        runtime: &tokio::runtime::Handle,
        registry: &metrics::Registry,
    ) -> Result<Exporter, ExportError> {
        // tonic's channel starts its worker task when it is made: inside the runtime.
        let mut exporter = {
            let _entered = runtime.enter();
            otlp_exporter(settings)?
        };
        exporter.set_resource(&resource(settings.service_name.as_deref()));
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let dropped = |reason: &str| {
            registry.counter(
                names::TRACING_SPANS_DROPPED_TOTAL,
                names::TRACING_SPANS_DROPPED_TOTAL_HELP,
                &[(names::label::REASON, reason)],
            )
        };
        let task = Task {
            rx,
            queued: Arc::clone(&queued),
            exporter,
            timeout: settings.timeout.unwrap_or(Duration::from_secs(10)),
            exported: registry.counter(
                names::TRACING_SPANS_EXPORTED_TOTAL,
                names::TRACING_SPANS_EXPORTED_TOTAL_HELP,
                &[],
            ),
            failed: dropped("export_failed"),
        };
        runtime.spawn(task.run());
        Ok(Exporter {
            tx,
            queued,
            capacity: settings.queue_size,
            dropped_full: dropped("queue_full"),
        })
    }

    /// Queues one request's spans, or drops and counts them when the queue is full.
    pub fn submit(&self, spans: Vec<SpanData>) {
        let n = spans.len();
        let before = self.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.capacity || self.tx.send(Message::Spans(spans)).is_err() {
            self.queued.fetch_sub(n, Ordering::AcqRel);
            self.dropped_full.add(n as u64);
        }
    }
}

impl Exporter {
    /// Sends every span handed in so far, waiting at most `timeout` (a collector that is down
    /// or hanging costs the shutdown no more).
    pub async fn flush(&self, timeout: Duration) {
        let (done, sent) = tokio::sync::oneshot::channel();
        if self.tx.send(Message::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(timeout, sent).await;
        }
    }
}

fn otlp_exporter(
    settings: &ExportSettings,
) -> Result<opentelemetry_otlp::SpanExporter, ExportError> {
    let built = match settings.protocol {
        OtlpProtocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(opentelemetry_otlp::Protocol::Grpc);
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint);
                if endpoint.starts_with("https://") {
                    builder = builder.with_tls_config(
                        opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                            .with_enabled_roots(),
                    );
                }
            }
            if let Some(timeout) = settings.timeout {
                builder = builder.with_timeout(timeout);
            }
            if !settings.headers.is_empty() {
                let mut fields = http::HeaderMap::new();
                for (name, value) in &settings.headers {
                    let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()),
                        http::HeaderValue::from_str(value),
                    ) else {
                        return Err(ExportError(format!("invalid header {name:?}")));
                    };
                    fields.append(name, value);
                }
                builder = builder.with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(fields),
                );
            }
            builder.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(traces_url(endpoint));
            }
            if let Some(timeout) = settings.timeout {
                builder = builder.with_timeout(timeout);
            }
            if !settings.headers.is_empty() {
                let headers: HashMap<String, String> = settings.headers.iter().cloned().collect();
                builder = builder.with_headers(headers);
            }
            builder.build()
        }
    };
    built.map_err(|e| ExportError(e.to_string()))
}

/// The URL spans are POSTed to over HTTP: the configured endpoint is the collector's base URL
/// (as `OTEL_EXPORTER_OTLP_ENDPOINT` is), so `/v1/traces` is added unless it is there already.
fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// `service.name` from the config, else `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, else
/// "sluicegate"; `service.version` is the build's.
fn resource(service_name: Option<&str>) -> Resource {
    let detected = Resource::builder().build();
    let from_env = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .map(|v| v.to_string())
        .filter(|name| !name.starts_with("unknown_service"));
    let name = service_name
        .map(str::to_string)
        .or(from_env)
        .unwrap_or_else(|| "sluicegate".to_string());
    Resource::builder()
        .with_service_name(name)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The export task: batches of up to [`BATCH_SPANS`], sent one at a time.
struct Task {
    rx: mpsc::UnboundedReceiver<Message>,
    queued: Arc<AtomicUsize>,
    exporter: opentelemetry_otlp::SpanExporter,
    timeout: Duration,
    exported: Counter,
    failed: Counter,
}

impl Task {
    async fn run(mut self) {
        let mut failing = false;
        loop {
            let mut batch = Vec::new();
            let mut flushed = None;
            let mut open = true;
            match self.rx.recv().await {
                Some(Message::Spans(spans)) => batch = spans,
                Some(Message::Flush(done)) => flushed = Some(done),
                None => return,
            }
            let until = tokio::time::Instant::now() + BATCH_DELAY;
            while flushed.is_none() && batch.len() < BATCH_SPANS {
                match tokio::time::timeout_at(until, self.rx.recv()).await {
                    Ok(Some(Message::Spans(more))) => batch.extend(more),
                    Ok(Some(Message::Flush(done))) => flushed = Some(done),
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                self.queued.fetch_sub(batch.len(), Ordering::AcqRel);
                self.send(batch, &mut failing).await;
            }
            if let Some(done) = flushed {
                let _ = done.send(());
            }
            if !open {
                return;
            }
        }
    }

    /// Exports one batch, counting it as exported or failed; a failure is logged once per
    /// outage.
    async fn send(&mut self, batch: Vec<SpanData>, failing: &mut bool) {
        let n = batch.len();
        // The exporter has its own timeout; this one also covers a connection attempt that
        // hangs.
        let sent = tokio::time::timeout(
            self.timeout + Duration::from_secs(1),
            self.exporter.export(batch),
        )
        .await;
        match sent {
            Ok(Ok(())) => {
                self.exported.add(n as u64);
                if *failing {
                    *failing = false;
                    tracing::info!("the OTLP collector accepts spans again");
                }
            }
            Ok(Err(e)) => {
                self.failed.add(n as u64);
                if !*failing {
                    *failing = true;
                    tracing::warn!(error = %e, spans = n, "OTLP export failed; spans are dropped until the collector accepts them");
                }
            }
            Err(_) => {
                self.failed.add(n as u64);
                if !*failing {
                    *failing = true;
                    tracing::warn!(spans = n, timeout = ?self.timeout, "OTLP export timed out; spans are dropped until the collector answers");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_http_endpoint_is_a_base_url() {
        assert_eq!(
            traces_url("http://collector:4318"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/"),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn the_service_name_comes_from_the_config_first() {
        let r = resource(Some("edge"));
        assert_eq!(
            r.get(&opentelemetry::Key::from_static_str("service.name"))
                .map(|v| v.to_string()),
            Some("edge".to_string())
        );
    }
}

//! Sending finished spans to an OpenTelemetry collector over OTLP, without ever making a
//! request wait.
//!
//! Workers append each sampled request's spans to a bounded queue ([`Exporter::submit`]: a
//! short lock and a move, never a wait, and no wake-up of another thread per request: waking
//! the export task for every request cost more CPU than recording the spans). One task, on a
//! thread of its own (`trace-export`: protobuf encoding must not delay the health checks and
//! the admin API of the control runtime), takes what is queued every [`BATCH_DELAY`], or as
//! soon as a batch's worth is waiting, and exports it with `opentelemetry-otlp` (gRPC through
//! tonic, or HTTP/protobuf through hyper), [`BATCH_SPANS`] at a time. When the collector is slow, away or hanging, the
//! queue fills while a batch waits out its timeout, and what does not fit is dropped and
//! counted (`sluicegate_tracing_spans_dropped_total{reason="queue_full"}`); a batch the
//! collector refuses is counted as `export_failed`. The memory held is bounded by twice
//! `queue_size` spans (the queue, and what was taken from it and is being sent), and a span's
//! size by the recording's caps (`span.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot, Notify};

use crate::config::{OtlpProtocol, TracingConfig};
use crate::observe::metrics::{self, Counter};
use crate::observe::names;

/// Spans sent to the collector in one request at most.
const BATCH_SPANS: usize = 512;
/// How long spans wait for a batch to fill before they are sent anyway.
const BATCH_DELAY: Duration = Duration::from_millis(500);

/// What the export depends on: a reload that changes none of it keeps the exporter (and the
/// spans queued in it); one that changes any starts a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportSettings {
    pub protocol: OtlpProtocol,
    pub endpoint: Option<String>,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
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

/// The collector's URL as the exporter will read it: the config's, else the environment's.
fn effective_endpoint(settings: &ExportSettings) -> Option<String> {
    settings.endpoint.clone().or_else(|| {
        [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    })
}

/// How long one export may take: the config's, else `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` /
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s, as the exporter itself reads them.
fn effective_timeout(settings: &ExportSettings) -> Duration {
    settings.timeout.unwrap_or_else(|| {
        [
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse::<u64>().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
    })
}

/// The spans waiting for export, shared by the workers and the export task.
struct Queue {
    spans: Mutex<Vec<SpanData>>,
    capacity: usize,
    /// Wakes the task early when a batch's worth is waiting.
    full_batch: Notify,
}

/// The workers' handle on one export task. Dropping it lets the task send what is queued and
/// end.
pub struct Exporter {
    queue: Arc<Queue>,
    /// Asks the task to send everything queued now (at shutdown); closed when this is dropped.
    flush: mpsc::UnboundedSender<oneshot::Sender<()>>,
    dropped_full: Counter,
}

impl Exporter {
    /// Builds the OTLP exporter and starts its task on a thread of its own, which ends when
    /// the last handle is dropped and what was queued is sent.
    pub fn start(
        settings: &ExportSettings,
        registry: &metrics::Registry,
    ) -> Result<Exporter, ExportError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| ExportError(format!("no runtime for the export thread: {e}")))?;
        // tonic's channel starts its worker task when it is made: inside the runtime.
        let mut exporter = {
            let _entered = runtime.enter();
            otlp_exporter(settings)?
        };
        exporter.set_resource(&resource(settings.service_name.as_deref()));
        let queue = Arc::new(Queue {
            spans: Mutex::new(Vec::with_capacity(settings.queue_size.min(BATCH_SPANS * 4))),
            capacity: settings.queue_size,
            full_batch: Notify::new(),
        });
        let (flush, flushes) = mpsc::unbounded_channel();
        let dropped = |reason: &str| {
            registry.counter(
                names::TRACING_SPANS_DROPPED_TOTAL,
                names::TRACING_SPANS_DROPPED_TOTAL_HELP,
                &[(names::label::REASON, reason)],
            )
        };
        let task = Task {
            queue: Arc::clone(&queue),
            flushes,
            exporter,
            timeout: effective_timeout(settings),
            exported: registry.counter(
                names::TRACING_SPANS_EXPORTED_TOTAL,
                names::TRACING_SPANS_EXPORTED_TOTAL_HELP,
                &[],
            ),
            failed: dropped("export_failed"),
            failing: false,
        };
        std::thread::Builder::new()
            .name("trace-export".into())
            .spawn(move || runtime.block_on(task.run()))
            .map_err(|e| ExportError(format!("cannot start the export thread: {e}")))?;
        Ok(Exporter {
            queue,
            flush,
            dropped_full: dropped("queue_full"),
        })
    }

    /// Queues one request's spans, or drops and counts them when the queue is full.
    pub fn submit(&self, spans: Vec<SpanData>) {
        let n = spans.len();
        let waiting = {
            let mut queued = self.queue.spans.lock().unwrap_or_else(|e| e.into_inner());
            if queued.len() + n > self.queue.capacity {
                drop(queued);
                self.dropped_full.add(n as u64);
                return;
            }
            queued.extend(spans);
            queued.len()
        };
        // Once per batch, as the queue crosses the batch size: not once per request.
        if waiting >= BATCH_SPANS && waiting - n < BATCH_SPANS {
            self.queue.full_batch.notify_one();
        }
    }

    /// Sends every span handed in so far, waiting at most `timeout` (a collector that is down
    /// or hanging costs the shutdown no more).
    pub async fn flush(&self, timeout: Duration) {
        let (done, sent) = oneshot::channel();
        if self.flush.send(done).is_ok() {
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
            }
            // The system's roots for an https:// collector, whether the config or the
            // environment names it (tonic uses TLS for https:// URLs only).
            builder = builder.with_tls_config(
                opentelemetry_otlp::tonic_types::transport::ClientTlsConfig::new()
                    .with_enabled_roots(),
            );
            if let Some(timeout) = settings.timeout {
                builder = builder.with_timeout(timeout);
            }
            if !settings.headers.is_empty() {
                let fields: http::HeaderMap = settings.headers.iter().cloned().collect();
                builder = builder.with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(fields),
                );
            }
            builder.build()
        }
        OtlpProtocol::HttpProtobuf => {
            // The HTTP client here has no TLS: an https:// collector needs gRPC.
            if let Some(url) = effective_endpoint(settings).filter(|u| u.starts_with("https://")) {
                return Err(ExportError(format!(
                    "{url}: https:// needs protocol \"grpc\" (OTLP over HTTP is sent without TLS)"
                )));
            }
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
                // Checked by the config as field values: visible ASCII, so text.
                let headers: HashMap<String, String> = settings
                    .headers
                    .iter()
                    .map(|(name, value)| {
                        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
                        (name.as_str().to_string(), text)
                    })
                    .collect();
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

/// The export task: what is queued, in batches of up to [`BATCH_SPANS`], sent one at a time.
struct Task {
    queue: Arc<Queue>,
    flushes: mpsc::UnboundedReceiver<oneshot::Sender<()>>,
    exporter: opentelemetry_otlp::SpanExporter,
    timeout: Duration,
    exported: Counter,
    failed: Counter,
    /// The last export failed (a failure is logged once per outage).
    failing: bool,
}

impl Task {
    async fn run(mut self) {
        let mut tick = tokio::time::interval(BATCH_DELAY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut flushed = None;
            let mut open = true;
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.queue.full_batch.notified() => {}
                asked = self.flushes.recv() => match asked {
                    Some(done) => flushed = Some(done),
                    // Every handle is gone: send what is left, then end.
                    None => open = false,
                },
            }
            self.send_queued().await;
            if let Some(done) = flushed {
                let _ = done.send(());
            }
            if !open {
                return;
            }
        }
    }

    /// Sends everything queued now, a batch at a time. The queue gets a fresh buffer of the
    /// usual size, so workers do not grow one under the lock.
    async fn send_queued(&mut self) {
        let fresh = Vec::with_capacity(self.queue.capacity.min(BATCH_SPANS * 4));
        let queued = std::mem::replace(
            &mut *self.queue.spans.lock().unwrap_or_else(|e| e.into_inner()),
            fresh,
        );
        let mut queued = queued.into_iter();
        loop {
            let batch: Vec<SpanData> = queued.by_ref().take(BATCH_SPANS).collect();
            if batch.is_empty() {
                return;
            }
            self.send(batch).await;
        }
    }

    /// Exports one batch, counting it as exported or failed.
    async fn send(&mut self, batch: Vec<SpanData>) {
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
                if self.failing {
                    self.failing = false;
                    tracing::info!("the OTLP collector accepts spans again");
                }
            }
            Ok(Err(e)) => {
                self.failed.add(n as u64);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!(error = %e, spans = n, "OTLP export failed; spans are dropped until the collector accepts them");
                }
            }
            Err(_) => {
                self.failed.add(n as u64);
                if !self.failing {
                    self.failing = true;
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

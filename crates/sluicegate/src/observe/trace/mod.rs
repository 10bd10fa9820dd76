//! Distributed tracing: W3C trace context on every request when `[tracing]` is configured, and
//! for sampled requests OpenTelemetry spans exported over OTLP.
//!
//! - `context.rs`: `traceparent` read and written, ids, the sampling decision;
//! - `span.rs`: what a sampled request records on its way (its child spans) and the span data
//!   made of it when it ends;
//! - `export.rs`: the bounded queue and the task that sends batches to the collector.
//!
//! The costs follow the sampling: an unsampled request pays for two ids, a header it sends
//! upstream and two fields in its log line; only a sampled one records anything.

pub mod context;
mod export;
pub mod span;

use std::sync::{Arc, Mutex};

pub use context::{Sampler, SpanContext, TRACEPARENT, TRACESTATE};
pub use export::{ExportError, ExportSettings};
pub use span::Recording;

use crate::config::TracingConfig;
use crate::observe::metrics;
use export::Exporter;

/// What a snapshot traces with: the sampling decision and the export queue.
pub struct Tracer {
    pub sampler: Sampler,
    exporter: Arc<Exporter>,
}

impl Tracer {
    /// Hands a finished request's spans to the export queue (never waits).
    pub fn submit(&self, spans: Vec<opentelemetry_sdk::trace::SpanData>) {
        self.exporter.submit(spans);
    }
}

/// The exporter kept across reloads while its settings stay the same.
#[derive(Default)]
pub struct Registry {
    current: Mutex<Option<(ExportSettings, Arc<Exporter>)>>,
}

impl Registry {
    /// Sends the spans handed in so far, waiting at most `timeout` (at shutdown, so the last
    /// requests' spans are not lost with the process).
    pub async fn flush(&self, timeout: std::time::Duration) {
        let exporter = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, exporter)| Arc::clone(exporter));
        if let Some(exporter) = exporter {
            exporter.flush(timeout).await;
        }
    }

    /// The tracer for a snapshot of `config` (`None` without `[tracing]`). An exporter that
    /// cannot be set up (an invalid `OTEL_EXPORTER_OTLP_*` variable, an https:// collector
    /// over HTTP) is logged and leaves tracing off.
    pub fn tracer(
        &self,
        config: Option<&TracingConfig>,
        registry: &metrics::Registry,
    ) -> Option<Arc<Tracer>> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let Some(config) = config else {
            *current = None;
            return None;
        };
        let settings = ExportSettings::of(config);
        let exporter = match &*current {
            Some((kept, exporter)) if *kept == settings => Arc::clone(exporter),
            _ => match Exporter::start(&settings, registry) {
                Ok(exporter) => {
                    let exporter = Arc::new(exporter);
                    *current = Some((settings, Arc::clone(&exporter)));
                    exporter
                }
                Err(e) => {
                    tracing::error!(error = %e, "tracing is off");
                    *current = None;
                    return None;
                }
            },
        };
        Some(Arc::new(Tracer {
            sampler: Sampler {
                ratio: config.sample_ratio,
                parent_based: config.parent_based,
            },
            exporter,
        }))
    }
}

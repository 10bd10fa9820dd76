//! A small OpenTelemetry collector for the tracing tests: the OTLP trace service over gRPC
//! (tonic, with the `opentelemetry-proto` service definitions) or over HTTP/protobuf
//! (`POST /v1/traces`), keeping every span it receives; or a "collector" that accepts
//! connections and never answers, to show a hanging collector does not slow requests.
//!
//! Only the tracing tests include it (`#[path]`), so the other test binaries do not compile
//! the OTLP types.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use prost::Message;

/// A span as received, with what the tests look at.
#[derive(Debug, Clone)]
pub struct Received {
    pub trace_id: Vec<u8>,
    pub span_id: Vec<u8>,
    pub parent_span_id: Vec<u8>,
    pub name: String,
    /// OTLP's `SpanKind` number: 2 = SERVER, 3 = CLIENT, 1 = INTERNAL.
    pub kind: i32,
    pub trace_state: String,
    pub attributes: HashMap<String, String>,
    /// The resource's `service.name`.
    pub service_name: String,
    /// OTLP `Status.code`: 0 unset, 2 error.
    pub status_code: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
}

impl Received {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

type Store = Arc<Mutex<Vec<Received>>>;

fn keep(store: &Store, request: ExportTraceServiceRequest) {
    let mut spans = store.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service_name = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(|v| text(v.value.as_ref()))
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                spans.push(Received {
                    trace_id: span.trace_id,
                    span_id: span.span_id,
                    parent_span_id: span.parent_span_id,
                    name: span.name,
                    kind: span.kind,
                    trace_state: span.trace_state,
                    attributes: span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
                            (kv.key.clone(), text(value))
                        })
                        .collect(),
                    service_name: service_name.clone(),
                    status_code: span.status.map_or(0, |s| s.code),
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                });
            }
        }
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

struct Service(Store);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// How the collector behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Grpc,
    HttpProtobuf,
    /// Accepts connections, reads, never answers.
    Hanging,
}

pub struct Collector {
    pub addr: SocketAddr,
    spans: Store,
    _runtime: tokio::runtime::Runtime,
}

impl Collector {
    pub fn start(mode: Mode) -> Collector {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("collector runtime");
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind collector");
        let addr = listener.local_addr().unwrap();
        let spans: Store = Arc::default();
        match mode {
            Mode::Grpc => {
                let service = TraceServiceServer::new(Service(Arc::clone(&spans)));
                runtime.spawn(async move {
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                        .await
                        .expect("collector serves");
                });
            }
            Mode::HttpProtobuf => {
                let store = Arc::clone(&spans);
                runtime.spawn(async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            return;
                        };
                        let store = Arc::clone(&store);
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(
                                move |req: hyper::Request<hyper::body::Incoming>| {
                                    let store = Arc::clone(&store);
                                    async move {
                                        let ok = req.uri().path() == "/v1/traces"
                                            && req
                                                .headers()
                                                .get("content-type")
                                                .is_some_and(|v| v == "application/x-protobuf");
                                        let body = req.into_body().collect().await?.to_bytes();
                                        let status = match ExportTraceServiceRequest::decode(body) {
                                            Ok(request) if ok => {
                                                keep(&store, request);
                                                200
                                            }
                                            _ => 400,
                                        };
                                        let answer = ExportTraceServiceResponse {
                                            partial_success: None,
                                        }
                                        .encode_to_vec();
                                        let response = hyper::Response::builder()
                                            .status(status)
                                            .header("content-type", "application/x-protobuf")
                                            .body(Full::new(Bytes::from(answer)))
                                            .unwrap();
                                        Ok::<_, hyper::Error>(response)
                                    }
                                },
                            );
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                });
            }
            Mode::Hanging => {
                runtime.spawn(async move {
                    let mut held = Vec::new();
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            return;
                        };
                        // Kept open, never read from or answered.
                        held.push(stream);
                    }
                });
            }
        }
        Collector {
            addr,
            spans,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until `done` holds for the spans received so far (the gateway exports in batches
    /// every half second), and returns them.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}; spans received: {spans:#?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Hex of an id, as `traceparent` writes it.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

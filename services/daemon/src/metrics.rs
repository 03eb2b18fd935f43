//! A Prometheus registry per service instance (several instances share a process in tests
//! and in `marina dev`), with RED metrics for every gRPC and HTTP request.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as HttpBody, Frame, SizeHint};
use prometheus::{Encoder, Gauge, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use tracing::Instrument;

/// Latency buckets from 100 µs to 10 s: coord writes sit at the low end, deployments at the high.
const LATENCY_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    resident_memory: Gauge,
}

impl Metrics {
    pub fn new(service: &str) -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("marina_requests_total", "Requests served, by protocol, method and result code."),
            &["protocol", "method", "code"],
        )
        .expect("static metric definition");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "marina_request_duration_seconds",
                "Time from request to the end of the response (streams: their lifetime).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["protocol", "method"],
        )
        .expect("static metric definition");
        let build_info = prometheus::IntGaugeVec::new(
            Opts::new("marina_build_info", "Always 1; labels say which service and release this is."),
            &["service", "version"],
        )
        .expect("static metric definition");
        build_info.with_label_values(&[service, crate::VERSION]).set(1);
        let resident_memory = Gauge::new("process_resident_memory_bytes", "Resident memory of this process in bytes.")
            .expect("static metric definition");
        let metrics = Self { registry, requests, latency, resident_memory };
        metrics.register(metrics.requests.clone());
        metrics.register(metrics.latency.clone());
        metrics.register(build_info);
        metrics.register(metrics.resident_memory.clone());
        metrics
    }

    /// Registers a service's own collector. Names are static, so a clash is a programming error.
    pub fn register<C: prometheus::core::Collector + 'static>(&self, collector: C) {
        self.registry.register(Box::new(collector)).expect("metric registered twice");
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition format (what `promtool check metrics` reads).
    pub fn render(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory.set(bytes as f64);
        }
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }

    fn observe(&self, protocol: &str, method: &str, code: &str, started: Instant) {
        self.requests.with_label_values(&[protocol, method, code]).inc();
        self.latency.with_label_values(&[protocol, method]).observe(started.elapsed().as_secs_f64());
    }
}

fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// axum middleware recording one request: gRPC methods by path and `grpc-status` (read from
/// the trailers when the response streams), HTTP routes by their matched pattern (never the
/// raw path, which would make label cardinality unbounded).
pub async fn record(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
    let method = if is_grpc {
        request.uri().path().to_owned()
    } else {
        let pattern = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned());
        format!("{} {}", request.method(), pattern.as_deref().unwrap_or("unmatched"))
    };
    // Every request is a span (a child of the caller's, from `traceparent`), except the
    // chatter no one traces: Raft replication, health checks, scrapes.
    let path = request.uri().path();
    let traced = !(path.starts_with("/marina.coord.v1.Raft/")
        || path.starts_with("/grpc.health.v1.")
        || path.starts_with("/grpc.reflection.")
        || path == "/metrics"
        || path == "/health");
    let span = if traced {
        tracing::info_span!("request", otel.name = %method, otel.kind = "server", trace_id = tracing::field::Empty)
    } else {
        tracing::Span::none()
    };
    crate::trace::set_parent_from_headers(&span, request.headers());
    let response = next.run(request).instrument(span).await;
    if !is_grpc {
        metrics.observe("http", &method, response.status().as_str(), started);
        return response;
    }
    // A trailers-only response (an error before any message) carries grpc-status in headers.
    if let Some(code) = response.headers().get("grpc-status") {
        let code = code.to_str().unwrap_or("?").to_owned();
        metrics.observe("grpc", grpc_method_label(&method, &code), &code, started);
        return response;
    }
    response.map(|body| Body::new(RecordedBody { inner: body, metrics, method, started, recorded: false }))
}

/// Unknown methods (UNIMPLEMENTED) are folded into one label so a client cannot blow up
/// the label set with random paths.
fn grpc_method_label<'a>(method: &'a str, code: &str) -> &'a str {
    if code == "12" { "unknown" } else { method }
}

/// A response body that records the gRPC status found in its trailers when it ends.
struct RecordedBody {
    inner: Body,
    metrics: Metrics,
    method: String,
    started: Instant,
    recorded: bool,
}

impl RecordedBody {
    fn finish(&mut self, code: &str) {
        if !self.recorded {
            self.recorded = true;
            let method = grpc_method_label(&self.method, code).to_owned();
            self.metrics.observe("grpc", &method, code, self.started);
        }
    }
}

impl HttpBody for RecordedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers.get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_owned();
                    self.finish(&code);
                }
            }
            Poll::Ready(Some(Err(_))) => self.finish("error"),
            Poll::Ready(None) => self.finish("0"),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordedBody {
    /// A stream the client abandoned (a watch closed by its client) still counts, as CANCELLED.
    fn drop(&mut self) {
        self.finish("1");
    }
}

//! W3C trace context across process boundaries: extracted from incoming HTTP/gRPC headers
//! (by the endpoint's middleware, for every request), injected into outgoing gRPC calls (by
//! [`TraceInterceptor`]), and carried inside stream messages as a string map where no call
//! boundary exists (the master's launch commands to agents).

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A trace context as a string map (`traceparent`, `tracestate`).
pub type Carrier = HashMap<String, String>;

/// The current span's context, to carry elsewhere.
pub fn carrier() -> Carrier {
    let mut carrier = Carrier::new();
    let context = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| propagator.inject_context(&context, &mut carrier));
    carrier
}

/// Makes `span` a child of the context in `carrier` (no effect without a context), and
/// records its trace id for the logs.
pub fn set_parent(span: &Span, carrier: &Carrier) {
    if carrier.is_empty() {
        return;
    }
    let context = opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    let _ = span.set_parent(context);
    record_trace_id(span);
}

/// Like [`set_parent`], from HTTP headers.
pub fn set_parent_from_headers(span: &Span, headers: &http::HeaderMap) {
    if !headers.contains_key("traceparent") {
        record_trace_id(span);
        return;
    }
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(context);
    record_trace_id(span);
}

/// Fills the span's `trace_id` field (if it declares one), so log lines carry it.
pub fn record_trace_id(span: &Span) {
    use opentelemetry::trace::TraceContextExt;
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value))
        {
            self.0.insert(key, value);
        }
    }
}

/// A tonic interceptor that sends the current span's context with every call.
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceInterceptor;

impl tonic::service::Interceptor for TraceInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let context = Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()))
        });
        Ok(request)
    }
}

/// A gRPC channel whose calls carry the trace context.
pub type TracedChannel = tonic::service::interceptor::InterceptedService<tonic::transport::Channel, TraceInterceptor>;

pub fn traced(channel: tonic::transport::Channel) -> TracedChannel {
    tonic::service::interceptor::InterceptedService::new(channel, TraceInterceptor)
}

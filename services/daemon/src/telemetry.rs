//! Logs and traces through `tracing`: logs as text or JSON lines (with the trace id of the
//! request they belong to); spans exported over OTLP/gRPC when an endpoint is configured
//! (`otlp_endpoint`, or the standard `OTEL_EXPORTER_OTLP_ENDPOINT`; the service name can be
//! changed with `OTEL_SERVICE_NAME`). Without an endpoint nothing is exported and, unless
//! `trace_ids` asks for trace ids in the logs, no OpenTelemetry code runs; with it, spans
//! carry trace ids — continued from a caller's `traceparent` or new — so log lines name
//! their trace and calls to other services pass it on.

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `[log]` section every service's configuration carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `info,marina_coord=debug`. `RUST_LOG` is not read:
    /// the environment override is `MARINA_<SERVICE>_LOG__LEVEL`.
    pub level: String,
    /// Where to send traces (OTLP over gRPC), e.g. `http://collector:4317`. Default: the
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` environment variable; none: no export.
    pub otlp_endpoint: Option<String>,
    /// Without an endpoint, still give spans W3C trace ids (continuing a caller's
    /// `traceparent`), so log lines name their trace and calls to other services pass it on.
    /// Off by default: without an endpoint no OpenTelemetry code runs at all (it costs about
    /// 13 µs per request; see the README's tracing benchmark).
    pub trace_ids: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        // openraft narrates every vote and replication step at info.
        Self { format: LogFormat::Text, level: "info,openraft=warn".into(), otlp_endpoint: None, trace_ids: false }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid configuration: `log.level` = {level:?}: {source}")]
    BadFilter { level: String, source: tracing_subscriber::filter::ParseError },
    #[error("invalid configuration: `log.otlp_endpoint` = {endpoint:?}: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
}

/// Who is emitting: the OpenTelemetry resource of this process's spans.
pub struct Identity<'a> {
    /// e.g. `marina-gateway` (`OTEL_SERVICE_NAME` overrides it).
    pub service: &'a str,
    /// This instance, e.g. its address.
    pub instance: &'a str,
}

/// Flushes exported spans when dropped (at the end of `main`).
#[must_use = "spans are flushed when the guard is dropped"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the process-wide subscriber. Calling it again (several services in one process,
/// as the tests do) keeps the first one.
pub fn init(config: &LogConfig, identity: Identity<'_>) -> Result<TelemetryGuard, TelemetryError> {
    let filter = || {
        EnvFilter::try_new(&config.level)
            .map_err(|source| TelemetryError::BadFilter { level: config.level.clone(), source })
    };
    let endpoint = config.otlp_endpoint.clone().or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok());
    let provider = match endpoint.filter(|e| !e.trim().is_empty()) {
        Some(endpoint) => Some(tracer_provider(&endpoint, &identity)?),
        // Nothing to export to: no span is recorded unless its caller sampled the trace (so
        // a downstream service that does export still gets the whole trace), and trace ids
        // are still assigned for the logs.
        None if config.trace_ids => {
            Some(SdkTracerProvider::builder().with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff))).build())
        }
        None => None,
    };
    // Spans are filtered like logs: `log.level` decides what is traced too.
    let otel_layer = match &provider {
        Some(provider) => {
            Some(tracing_opentelemetry::layer().with_tracer(provider.tracer("marina")).with_filter(filter()?))
        }
        None => None,
    };
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let registry = tracing_subscriber::registry().with(otel_layer);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let _already_set = match config.format {
        LogFormat::Text => registry.with(fmt.with_filter(filter()?)).try_init(),
        LogFormat::Json => registry
            .with(fmt.json().flatten_event(true).with_current_span(true).with_span_list(true).with_filter(filter()?))
            .try_init(),
    };
    Ok(TelemetryGuard { provider })
}

/// A batched OTLP/gRPC exporter: spans are queued and sent by a background thread, never
/// on the request path.
fn tracer_provider(endpoint: &str, identity: &Identity<'_>) -> Result<SdkTracerProvider, TelemetryError> {
    let bad = |reason: String| TelemetryError::BadEndpoint { endpoint: endpoint.to_owned(), reason };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(bad("must be an http:// or https:// URL".into()));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| bad(error.to_string()))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| identity.service.to_owned());
    let resource = Resource::builder()
        .with_service_name(service)
        .with_attributes([
            KeyValue::new("service.instance.id", identity.instance.to_owned()),
            KeyValue::new("service.version", crate::VERSION),
        ])
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

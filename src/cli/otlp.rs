//! OpenTelemetry export over OTLP/gRPC (`oprun serve --otlp-endpoint`, or the standard
//! `OTEL_EXPORTER_OTLP_*` variables): every call's span and every operation's span, joined to
//! the caller's W3C trace (see `crate::otel`). Off unless asked for.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;

/// The standard variables that name where spans go (read by the exporter itself).
const ENDPOINT_VARIABLES: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Whether spans are exported, and where: `Some(Some(url))` for the flag, `Some(None)` when
/// only the standard variables say, `None` when nothing asks for export.
pub(super) fn wanted(flag: Option<&str>) -> Option<Option<String>> {
    match flag.map(str::trim) {
        Some(url) if !url.is_empty() => Some(Some(url.to_owned())),
        _ => ENDPOINT_VARIABLES
            .iter()
            .any(|name| std::env::var_os(name).is_some_and(|v| !v.is_empty()))
            .then_some(None),
    }
}

/// The tracer provider that batches spans to `endpoint` (or where the variables say). Must be
/// called within the tokio runtime: the exporter's channel runs on it.
///
/// # Errors
/// A message when the endpoint is not a URL the exporter takes.
pub(super) fn provider(endpoint: Option<&str>) -> Result<SdkTracerProvider, String> {
    let mut exporter = SpanExporter::builder().with_tonic();
    if let Some(url) = endpoint {
        exporter = exporter.with_endpoint(url);
    }
    let exporter = exporter.build().map_err(|e| {
        format!(
            "--otlp-endpoint {}: {e}",
            endpoint.unwrap_or("(from OTEL_*)")
        )
    })?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none_or(|v| v.is_empty()) {
        resource = resource.with_service_name("oprun");
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The `tracing` layer that hands spans to `provider`. Spans start when they end (no context
/// activation on entry), so that a call's span can still take its caller's trace as parent
/// once the handler has read its `traceparent`.
pub(super) fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("oprun"))
        .with_context_activation(false)
}

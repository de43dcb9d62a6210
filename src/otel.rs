//! Spans that join the trace a caller began. A call's `traceparent` (W3C Trace Context, kept
//! in the operation's metadata) becomes the OpenTelemetry parent of the call's span and of the
//! operation's span, on whichever node runs it, so an exporter shows one trace from the
//! caller to the work's end. Without the `otel` feature this is a no-op.

/// Makes `span` a child of the remote span `traceparent` names (a checked `traceparent`),
/// when spans go to OpenTelemetry (a `tracing-opentelemetry` layer is installed); a no-op
/// otherwise, and for a span already started.
#[cfg(feature = "otel")]
pub(crate) fn join_trace(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some((trace_id, parent_id)) = crate::model::trace_ids(traceparent) else {
        return;
    };
    let (Ok(trace_id), Ok(parent_id)) = (TraceId::from_hex(trace_id), SpanId::from_hex(parent_id))
    else {
        return;
    };
    let sampled = traceparent
        .rsplit('-')
        .next()
        .and_then(|flags| u8::from_str_radix(flags, 16).ok())
        .map_or(TraceFlags::SAMPLED, TraceFlags::new);
    let remote = SpanContext::new(trace_id, parent_id, sampled, true, TraceState::default());
    let parent = opentelemetry::Context::new().with_remote_span_context(remote);
    if let Err(e) = span.set_parent(parent) {
        tracing::trace!(error = %e, "a span could not join its caller's trace");
    }
}

/// Without OpenTelemetry: nothing to join.
#[cfg(not(feature = "otel"))]
pub(crate) fn join_trace(_span: &tracing::Span, _traceparent: &str) {}

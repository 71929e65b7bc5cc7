//! Trace context across processes.
//!
//! A trace's context travels as a W3C `traceparent` string: in the `traceparent` gRPC metadata
//! entry of a call, and in each job the coordinator hands an agent (one stream carries many
//! jobs, so a job cannot use the stream's metadata). The coordinator keeps the string with the
//! window, restore, drill or runbook it belongs to, so jobs a later leader hands out stay in the
//! same trace.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The metadata key (and W3C header) that carries the context.
pub const TRACEPARENT: &str = "traceparent";

/// Starts `span` as a child of the remote span `parent` names (a root when `None` or unreadable),
/// records its trace id in its `trace_id` field (declare it `trace_id = tracing::field::Empty`)
/// so every log line inside it carries the id, and returns it.
pub fn begin(span: Span, parent: Option<&str>) -> Span {
    if let Some(cx) = parent.and_then(context_of) {
        let _ = span.set_parent(cx);
    }
    let id = trace_id(&span);
    if let Some(id) = id {
        span.record("trace_id", tracing::field::display(id));
    }
    span
}

/// The span's `traceparent`, to hand on; `None` when tracing is not set up.
pub fn traceparent(span: &Span) -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// The span's trace id, as 32 hex digits.
pub fn trace_id(span: &Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id inside a `traceparent` string.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32).then_some(id)
}

fn context_of(traceparent: &str) -> Option<opentelemetry::Context> {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    cx.span().span_context().is_valid().then_some(cx)
}

/// Puts the current span's context into a gRPC request's metadata.
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if let Some(tp) = traceparent(&Span::current())
        && let Ok(value) = tp.parse()
    {
        metadata.insert(TRACEPARENT, value);
    }
}

/// The caller's context from a gRPC request's metadata.
pub fn extract(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .filter(|v| context_of(v).is_some())
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_read_from_traceparents() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id_of(tp), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert!(context_of(tp).is_some());
        assert_eq!(trace_id_of("garbage"), None);
        assert!(context_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
    }
}

//! Traces over OTLP (http/protobuf) when the standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set in the shim's environment, which is
//! containerd's: the Task API calls as spans with the container and pod, and the runner's
//! spans (prepare, run, each HTTP request) as children of the container's Create.
//!
//! Runners live in the pod's network namespace, where the collector is usually out of
//! reach, so they do not export themselves: each closed span travels to the shim as one
//! [`SpanRecord`] line on the runner's log pipe, and the shim exports it.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The service name traces carry unless `OTEL_SERVICE_NAME` says otherwise.
const SERVICE_NAME: &str = "wedge";

/// What marks a runner's log line as a span record.
pub const SPAN_RECORD_PREFIX: &str = "{\"wedge_span\":";

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static TRACER: OnceLock<SdkTracer> = OnceLock::new();
static BUILD_ERROR: OnceLock<String> = OnceLock::new();

/// Why export was asked for and is off, if it is.
pub fn build_error() -> Option<&'static str> {
    BUILD_ERROR.get().map(String::as_str)
}

/// Whether the environment asks for trace export.
pub fn requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|value| !value.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value == "true");
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Whether spans are being exported (runners then send theirs).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The tracing layer that exports spans, when the environment asks for it. Built on a
/// thread of its own: the exporter's blocking HTTP client may not be made (or dropped) on
/// the shim's event loop.
pub fn layer<S>() -> Option<impl Layer<S>>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    if !requested() {
        return None;
    }
    // Nowhere to log yet (this is the logging setup): a failure leaves export off, and
    // the shim's first line says so.
    let provider = match std::thread::spawn(build_provider).join() {
        Ok(Ok(provider)) => provider,
        Ok(Err(err)) => {
            let _ = BUILD_ERROR.set(err.to_string());
            return None;
        }
        Err(_) => {
            let _ = BUILD_ERROR.set("the exporter's setup panicked".into());
            return None;
        }
    };
    let tracer = provider.tracer(SERVICE_NAME);
    let _ = TRACER.set(tracer.clone());
    let _ = PROVIDER.set(provider);
    Some(tracing_opentelemetry::layer().with_tracer(tracer))
}

fn build_provider() -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    // The endpoint, headers and timeout come from the standard OTEL_* variables.
    let exporter = SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(SERVICE_NAME);
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// Sends what is batched and stops the exporter; before the shim exits. Off the event
/// loop, for the same reason as [`layer`].
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let provider = provider.clone();
        let _ = std::thread::spawn(move || provider.shutdown()).join();
    }
}

/// One closed runner span, as the runner reports it to the shim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpanRecord {
    pub name: String,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub fields: Vec<(String, String)>,
}

/// The line a runner writes for `record`.
pub fn record_line(record: &SpanRecord) -> String {
    let mut line = serde_json::json!({ "wedge_span": record }).to_string();
    line.push('\n');
    line
}

/// Exports a runner's span as a child of `parent` (the container's Create), with the
/// container's own attributes added.
pub fn export_runner_span(line: &[u8], parent: &Context, container: &[KeyValue]) {
    let Some(tracer) = TRACER.get() else {
        return;
    };
    #[derive(Deserialize)]
    struct Line {
        wedge_span: SpanRecord,
    }
    let Ok(Line { wedge_span: record }) = serde_json::from_slice::<Line>(line) else {
        return;
    };
    let at = |nanos: u64| UNIX_EPOCH + Duration::from_nanos(nanos);
    let mut attributes: Vec<KeyValue> = container.to_vec();
    attributes.extend(
        record
            .fields
            .into_iter()
            .map(|(key, value)| KeyValue::new(key, value)),
    );
    let mut span = tracer
        .span_builder(record.name)
        .with_start_time(at(record.start_unix_nanos))
        .with_attributes(attributes)
        .start_with_context(tracer, parent);
    span.end_with_timestamp(at(record.end_unix_nanos));
}

/// Nanoseconds since the epoch, for span records.
pub fn unix_nanos(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn span_records_are_one_marked_line() {
        let record = SpanRecord {
            name: "http_request".into(),
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            fields: vec![("status".into(), "200".into())],
        };
        let line = record_line(&record);
        assert!(line.starts_with(SPAN_RECORD_PREFIX), "{line}");
        assert_eq!(line.matches('\n').count(), 1);
    }
}

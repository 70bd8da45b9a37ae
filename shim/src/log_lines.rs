//! One log line per event, in the format the operator chose: `text` for people, `logfmt` or
//! `json` for log pipelines. Every line carries the fields of the spans it happened in
//! (the container `id`, the `pod`, the Task API call), flattened, so that a pipeline can
//! select one container's lines without parsing span syntax.
//!
//! tracing-subscriber's own formatters fix the format when the subscriber is built, and
//! its JSON formatter panics on spans recorded by another one; the engine config names the
//! format only at Create, after spans are open. This layer keeps span fields as plain
//! strings and picks the format per line.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Record};
use tracing::{Event, Id, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;
use wedge_runtime_config::LogFormat;

use crate::telemetry::{record_line, unix_nanos, SpanRecord};

/// The format of every line from now on (all layers of this process share it).
static FORMAT: AtomicU8 = AtomicU8::new(0);

pub fn set_format(format: LogFormat) {
    FORMAT.store(format as u8, Ordering::Relaxed);
}

pub fn format() -> LogFormat {
    match FORMAT.load(Ordering::Relaxed) {
        1 => LogFormat::Logfmt,
        2 => LogFormat::Json,
        _ => LogFormat::Text,
    }
}

/// Where finished lines go: each is written with one write(2), so lines shorter than
/// PIPE_BUF reach a fifo or pipe whole or not at all, and a full one never blocks.
/// A destination of whole lines, shared by the layer and the relay of runner lines.
#[derive(Clone)]
pub struct Sink(Arc<Mutex<Box<dyn std::io::Write + Send>>>);

impl Sink {
    pub fn new(writer: impl std::io::Write + Send + 'static) -> Self {
        Sink(Arc::new(Mutex::new(Box::new(writer))))
    }

    /// Writes `line` (ending in a newline) with one write(2); what does not fit is lost.
    pub fn write_line(&self, line: &[u8]) {
        if let Ok(mut writer) = self.0.lock() {
            let _ = writer.write(line);
        }
    }
}

pub struct LineLayer {
    sink: Sink,
    /// Fields every line of this process carries, outermost (a runner's container id).
    process_fields: Fields,
}

impl LineLayer {
    pub fn new(sink: Sink) -> Self {
        LineLayer {
            sink,
            process_fields: Vec::new(),
        }
    }

    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    /// Lines that also carry `fields`, as if from a span around the whole process.
    pub fn with_process_fields(mut self, fields: &[(&'static str, &str)]) -> Self {
        self.process_fields = fields
            .iter()
            .map(|(key, value)| (*key, FieldValue::text(value)))
            .collect();
        self
    }
}

/// One recorded value. Strings keep their raw text (for logfmt and JSON) and are shown
/// quoted in text lines, as tracing's own formatter does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldValue {
    raw: String,
    is_str: bool,
}

impl FieldValue {
    fn text(value: &str) -> Self {
        FieldValue {
            raw: value.to_string(),
            is_str: true,
        }
    }

    fn shown(&self) -> String {
        if self.is_str {
            format!("{:?}", self.raw)
        } else {
            self.raw.clone()
        }
    }
}

/// A span's fields as they were recorded, in order.
#[derive(Default)]
struct SpanFields(Fields);

impl Visit for SpanFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Records from the `log` crate (wasmtime's) name their source file and line; the
        // target says enough.
        if matches!(field.name(), "log.file" | "log.line" | "log.module_path") {
            return;
        }
        self.0.push((field.name(), FieldValue::text(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "log.file" | "log.line" | "log.module_path") {
            return;
        }
        self.0.push((
            field.name(),
            FieldValue {
                raw: format!("{value:?}"),
                is_str: false,
            },
        ));
    }
}

impl<S> Layer<S> for LineLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = SpanFields::default();
        attrs.record(&mut fields);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if let Some(fields) = extensions.get_mut::<SpanFields>() {
                values.record(fields);
            }
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut spans = Vec::new();
        if !self.process_fields.is_empty() {
            spans.push(("", self.process_fields.clone()));
        }
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                let fields = span
                    .extensions()
                    .get::<SpanFields>()
                    .map(|fields| fields.0.clone())
                    .unwrap_or_default();
                spans.push((span.name(), fields));
            }
        }
        let mut fields = SpanFields::default();
        event.record(&mut fields);
        let level = event.metadata().level().as_str();
        let mut line = one_physical_line(format_line(format(), level, &spans, fields.0));
        line.push('\n');
        self.sink.write_line(line.as_bytes());
    }
}

type Fields = Vec<(&'static str, FieldValue)>;

/// A record is one line of the log, whatever its values hold: a message or an error that
/// carries a guest's text (a function or import name with a newline in it) would otherwise
/// start a line of its own, one that could pass for another container's.
fn one_physical_line(line: String) -> String {
    if !line.contains(['\n', '\r']) {
        return line;
    }
    line.replace('\r', "\\r").replace('\n', "\\n")
}

/// One line: `spans` from the outermost, each with its fields; the event's own fields,
/// `message` among them.
fn format_line(format: LogFormat, level: &str, spans: &[(&str, Fields)], event: Fields) -> String {
    let mut time = String::new();
    let _ = SystemTime.format_time(&mut Writer::new(&mut time));
    let (message, event): (Vec<_>, Vec<_>) =
        event.into_iter().partition(|(name, _)| *name == "message");
    let message = message
        .into_iter()
        .map(|(_, text)| text.raw)
        .next()
        .unwrap_or_default();
    // The process's own fields come first, as a span without a name.
    let span_path: Vec<&str> = spans
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !name.is_empty())
        .collect();
    match format {
        LogFormat::Text => {
            let mut line = format!("{time} {:>5} ", level.to_uppercase());
            for (name, fields) in spans {
                line.push_str(name);
                if !fields.is_empty() {
                    line.push('{');
                    let pairs: Vec<String> = fields
                        .iter()
                        .map(|(key, value)| format!("{key}={}", value.shown()))
                        .collect();
                    line.push_str(&pairs.join(" "));
                    line.push('}');
                }
                line.push(':');
            }
            if !spans.is_empty() {
                line.push(' ');
            }
            line.push_str(&message);
            for (key, value) in &event {
                let _ = write!(line, " {key}={}", value.shown());
            }
            line
        }
        LogFormat::Logfmt | LogFormat::Json => {
            let mut pairs: Vec<(&str, String)> = vec![
                ("time", time),
                ("level", level.to_lowercase()),
                ("span", span_path.join(":")),
            ];
            // Inner spans' fields win over outer ones of the same name; the event's win
            // over both.
            for (key, value) in spans
                .iter()
                .flat_map(|(_, fields)| fields.iter())
                .chain(&event)
            {
                match pairs.iter_mut().find(|(existing, _)| existing == key) {
                    Some(pair) => pair.1 = value.raw.clone(),
                    None => pairs.push((key, value.raw.clone())),
                }
            }
            pairs.insert(3.min(pairs.len()), ("msg", message));
            if format == LogFormat::Json {
                let object: serde_json::Map<String, serde_json::Value> = pairs
                    .into_iter()
                    .map(|(key, value)| (key.to_string(), serde_json::Value::String(value)))
                    .collect();
                serde_json::Value::Object(object).to_string()
            } else {
                let items: Vec<String> = pairs
                    .into_iter()
                    .map(|(key, value)| format!("{key}={}", logfmt_value(&value)))
                    .collect();
                items.join(" ")
            }
        }
    }
}

/// A logfmt value: bare when it is a simple token, else quoted with `"` and `\` escaped.
fn logfmt_value(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if bare {
        return value.to_string();
    }
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('"');
    for c in value.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            '\n' => quoted.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(quoted, "\\u{{{:x}}}", c as u32);
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

/// In a runner: each closed span as a [`SpanRecord`] line for the shim to export.
pub struct SpanRecordLayer {
    sink: Sink,
}

impl SpanRecordLayer {
    pub fn new(sink: Sink) -> Self {
        SpanRecordLayer { sink }
    }
}

/// When a span began, kept until it closes.
struct Began(std::time::SystemTime);

/// Marks a span whose fields this layer keeps (the line layer did not see it).
struct RecordsFields;

impl<S> Layer<S> for SpanRecordLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            extensions.insert(Began(std::time::SystemTime::now()));
            // The line layer records the fields of the spans its level lets through.
            if extensions.get_mut::<SpanFields>().is_none() {
                let mut fields = SpanFields::default();
                attrs.record(&mut fields);
                extensions.insert(fields);
                extensions.insert(RecordsFields);
            }
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            let mut extensions = span.extensions_mut();
            if extensions.get_mut::<RecordsFields>().is_some() {
                if let Some(fields) = extensions.get_mut::<SpanFields>() {
                    values.record(fields);
                }
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let extensions = span.extensions();
        let Some(Began(began)) = extensions.get::<Began>() else {
            return;
        };
        let fields = extensions
            .get::<SpanFields>()
            .map(|fields| {
                fields
                    .0
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.raw.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let record = SpanRecord {
            name: span.name().to_string(),
            start_unix_nanos: unix_nanos(*began),
            end_unix_nanos: unix_nanos(std::time::SystemTime::now()),
            fields,
        };
        self.sink.write_line(record_line(&record).as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> FieldValue {
        FieldValue {
            raw: text.to_string(),
            is_str: false,
        }
    }

    fn spans() -> Vec<(&'static str, Fields)> {
        vec![
            (
                "create",
                vec![("id", shown("c1")), ("pod", FieldValue::text("p-9"))],
            ),
            ("prepare", vec![]),
        ]
    }

    fn event() -> Fields {
        vec![
            ("message", shown("module ready")),
            ("origin", FieldValue::text("cache hit")),
        ]
    }

    #[test]
    fn json_lines_carry_the_span_fields_flat() {
        let line = format_line(LogFormat::Json, "INFO", &spans(), event());
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["level"], "info");
        assert_eq!(value["span"], "create:prepare");
        assert_eq!(value["id"], "c1");
        assert_eq!(value["pod"], "p-9");
        assert_eq!(value["msg"], "module ready");
        assert_eq!(value["origin"], "cache hit");
        assert!(value["time"]
            .as_str()
            .is_some_and(|time| time.contains('T')));
    }

    #[test]
    fn logfmt_quotes_what_needs_it() {
        let line = format_line(LogFormat::Logfmt, "WARN", &spans(), event());
        assert!(line.contains(" level=warn span=create:prepare msg=\"module ready\" id=c1 pod=p-9 origin=\"cache hit\""), "{line}");
        assert_eq!(logfmt_value("a\"b\nc"), "\"a\\\"b\\nc\"");
        assert_eq!(logfmt_value(""), "\"\"");
    }

    #[test]
    fn a_value_with_a_newline_cannot_start_a_line_of_its_own() {
        let forged = "x\n2026-01-01T00:00:00Z  INFO create{id=other}: module ready\r";
        let mut fields = event();
        fields.push(("message", FieldValue::text(forged)));
        fields.push((
            "error",
            FieldValue {
                raw: forged.to_string(),
                is_str: false,
            },
        ));
        for format in [LogFormat::Text, LogFormat::Logfmt, LogFormat::Json] {
            let line = one_physical_line(format_line(format, "INFO", &spans(), fields.clone()));
            assert!(!line.contains(['\n', '\r']), "{format:?}: {line}");
        }
    }

    #[test]
    fn text_reads_like_the_usual_tracing_line() {
        let line = format_line(LogFormat::Text, "INFO", &spans(), event());
        assert!(
            line.ends_with(
                r#" INFO create{id=c1 pod="p-9"}:prepare: module ready origin="cache hit""#
            ),
            "{line}"
        );
    }
}

//! Tracing setup: the serving shim writes to the `log` fifo containerd reads from the bundle.

use std::fs::{File, OpenOptions};
use std::os::fd::FromRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Layer as _};
use wedge_runtime_config::engine::LogLevel;
use wedge_runtime_config::LogFormat;

use crate::log_lines::{self, LineLayer, Sink, SpanRecordLayer};
use crate::runner::protocol::{RunnerLog, LOG_FD};
use crate::telemetry;

/// Set when neither `RUST_LOG` nor containerd's `--debug` chose the level, so that the
/// engine config's `log_level` may.
static CONFIGURABLE_LEVEL: OnceLock<Box<dyn Fn(LogLevel) + Send + Sync>> = OnceLock::new();

/// Set when `WEDGE_LOG_FORMAT` chose the format, which the engine config then leaves alone.
static FORMAT_FROM_ENVIRONMENT: OnceLock<bool> = OnceLock::new();

/// The environment variable that chooses the log format (`text`, `logfmt`, `json`) over
/// the engine config's `log_format`.
pub const LOG_FORMAT_VARIABLE: &str = "WEDGE_LOG_FORMAT";

/// The level filter in force, handed on to runners.
static CURRENT_FILTER: Mutex<String> = Mutex::new(String::new());

/// Where this process's lines go; runner lines relayed by the shim go there too.
static SINK: OnceLock<Sink> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` overrides the level containerd asked for.
pub fn init(serving: bool, debug: bool, shim_id: &str) {
    let level = if debug { "debug" } else { "info" };
    let from_environment = EnvFilter::try_from_default_env().ok();
    let configurable = from_environment.is_none() && !debug;
    let filter = from_environment.unwrap_or_else(|| EnvFilter::new(level));
    let sink = match serving.then(open_log_fifo).flatten() {
        Some(fifo) => Sink::new(fifo),
        None => Sink::new(std::io::stderr()),
    };
    if install(filter, LineLayer::new(sink), configurable) {
        tracing::debug!(shim = %shim_id, "logging initialised");
    }
}

/// Logging of a local run (`wedge run`): the developer's terminal gets warnings and errors
/// only, unless `RUST_LOG` asks for more.
pub fn init_local(id: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    if install(filter, LineLayer::new(Sink::new(std::io::stderr())), false) {
        tracing::debug!(%id, "logging initialised");
    }
}

/// Logging inside a runner: lines in the shim's format and level, onto [`LOG_FD`], each
/// naming the container and its pod. A shim that stops reading costs lines, never a
/// blocked module: the pipe is non-blocking.
pub fn init_runner(log: &RunnerLog, id: &str, pod: Option<&str>) {
    // SAFETY: the shim hands fd LOG_FD to exactly this process as its log pipe (see
    // `launch::spawn_runner`); nothing else in this process owns it.
    let pipe = unsafe { File::from_raw_fd(LOG_FD) };
    let _ = nix::fcntl::fcntl(
        &pipe,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    log_lines::set_format(log.format);
    let mut fields = vec![("id", id)];
    if let Some(pod) = pod {
        fields.push(("pod", pod));
    }
    let sink = Sink::new(pipe);
    let lines = LineLayer::new(sink.clone()).with_process_fields(&fields);
    let spans = log
        .spans
        .then(|| SpanRecordLayer::new(sink).with_filter(LevelFilter::INFO));
    // A plain level (the usual case) needs no directive matching, which costs each runner
    // memory. No bridge from the `log` crate either: cranelift logs at trace level on every
    // function it compiles, and even refused records would slow compilation down.
    let debug = log
        .filter
        .parse::<LevelFilter>()
        .map_or(true, |level| level >= LevelFilter::DEBUG);
    REQUEST_SPANS.store(log.spans || debug, std::sync::atomic::Ordering::Relaxed);
    let lines: Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync> =
        match log.filter.parse::<LevelFilter>() {
            Ok(level) => Box::new(lines.with_filter(level)),
            Err(_) => Box::new(lines.with_filter(
                EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info")),
            )),
        };
    let _ = tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(lines).with(spans),
    );
}

/// Whether a runner's HTTP requests get a span each: only when spans are exported or
/// request lines logged, since a span per request costs the hot path otherwise.
static REQUEST_SPANS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn request_spans() -> bool {
    REQUEST_SPANS.load(std::sync::atomic::Ordering::Relaxed)
}

/// What a runner needs to log like the shim.
pub fn runner_log() -> RunnerLog {
    RunnerLog {
        filter: CURRENT_FILTER
            .lock()
            .map(|filter| filter.clone())
            .unwrap_or_else(|_| "info".into()),
        format: log_lines::format(),
        spans: telemetry::enabled(),
    }
}

/// Passes one line a runner wrote on to the shim's log.
pub fn relay(line: &[u8]) {
    if let Some(sink) = SINK.get() {
        sink.write_line(line);
    }
}

fn install(filter: EnvFilter, lines: LineLayer, configurable: bool) -> bool {
    remember_filter(&filter.to_string());
    let _ = SINK.set(lines.sink());
    let from_environment = std::env::var(LOG_FORMAT_VARIABLE)
        .ok()
        .and_then(|text| text.parse::<LogFormat>().ok());
    if let Some(format) = from_environment {
        log_lines::set_format(format);
    }
    let _ = FORMAT_FROM_ENVIRONMENT.set(from_environment.is_some());
    let (filter, handle) = reload::Layer::new(filter);
    // The level chosen for lines leaves the exported spans alone.
    let spans = telemetry::layer().map(|layer| layer.with_filter(LevelFilter::INFO));
    let installed = tracing_subscriber::registry()
        .with(lines.with_filter(filter))
        .with(spans)
        .try_init()
        .is_ok();
    if let Some(reason) = telemetry::build_error() {
        tracing::warn!(%reason, "OTLP trace export is off");
    }
    if installed && configurable {
        let _ = CONFIGURABLE_LEVEL.set(Box::new(move |level: LogLevel| {
            if handle.reload(EnvFilter::new(level.as_str())).is_ok() {
                remember_filter(level.as_str());
            }
        }));
    }
    installed
}

fn remember_filter(filter: &str) {
    if let Ok(mut current) = CURRENT_FILTER.lock() {
        filter.clone_into(&mut current);
    }
}

/// The engine config's `log_level` and `log_format`, unless `RUST_LOG`, containerd's
/// `--debug` or `WEDGE_LOG_FORMAT` decided.
pub fn apply_configured(level: Option<LogLevel>, format: Option<LogFormat>) {
    if let (Some(level), Some(apply)) = (level, CONFIGURABLE_LEVEL.get()) {
        apply(level);
    }
    if let Some(format) = format {
        if FORMAT_FROM_ENVIRONMENT.get() != Some(&true) {
            log_lines::set_format(format);
        }
    }
}

/// containerd opens the read side before it starts the shim; without a reader (a shim run
/// by hand) the open fails at once instead of blocking, and logs go to stderr.
///
/// The fifo stays non-blocking: a reader that stops reading (containerd stuck, or killed
/// with the fifo still open) fills the pipe, and a blocking write would then stop whichever
/// shim thread logs next. A line that does not fit is dropped instead; lines shorter than
/// PIPE_BUF are written whole or not at all.
fn open_log_fifo() -> Option<File> {
    open_log_fifo_at(Path::new("log"))
}

fn open_log_fifo_at(path: &Path) -> Option<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .ok()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn a_log_reader_that_never_reads_does_not_stop_the_shim() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("log");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_log_fifo_at(&fifo).is_none(), "no reader: no fifo");
        let _reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut log = open_log_fifo_at(&fifo).unwrap();
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let line = [b'x'; 200];
            // Far more than a pipe holds (64 KiB by default).
            for _ in 0..10_000 {
                let _ = log.write(&line);
            }
            let _ = done.send(());
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("logging blocked on a full fifo");
    }
}

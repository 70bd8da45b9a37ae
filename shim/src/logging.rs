//! Tracing setup: the serving shim writes to the `log` fifo containerd reads from the bundle.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::EnvFilter;
use wedge_runtime_config::engine::LogLevel;

/// Set when neither `RUST_LOG` nor containerd's `--debug` chose the level, so that the
/// engine config's `log_level` may.
static CONFIGURABLE_LEVEL: OnceLock<Box<dyn Fn(LogLevel) + Send + Sync>> = OnceLock::new();

/// Installs the global subscriber. `RUST_LOG` overrides the level containerd asked for.
pub fn init(serving: bool, debug: bool, shim_id: &str) {
    let level = if debug { "debug" } else { "info" };
    let from_environment = EnvFilter::try_from_default_env().ok();
    let configurable = from_environment.is_none() && !debug;
    let filter = from_environment.unwrap_or_else(|| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false)
        // A line dropped on a full log fifo is not worth a complaint on stderr.
        .log_internal_errors(false);
    let installed = match serving.then(open_log_fifo).flatten() {
        Some(fifo) => install(builder.with_writer(Mutex::new(fifo)), configurable),
        None => install(builder.with_writer(std::io::stderr), configurable),
    };
    if installed {
        tracing::debug!(shim = %shim_id, "logging initialised");
    }
}

/// Logging of a local run (`wedge run`): the developer's terminal gets warnings and errors
/// only, unless `RUST_LOG` asks for more.
pub fn init_local(id: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    if install(builder, false) {
        tracing::debug!(%id, "logging initialised");
    }
}

fn install<W>(
    builder: tracing_subscriber::fmt::SubscriberBuilder<
        tracing_subscriber::fmt::format::DefaultFields,
        tracing_subscriber::fmt::format::Format,
        EnvFilter,
        W,
    >,
    configurable: bool,
) -> bool
where
    W: for<'writer> tracing_subscriber::fmt::MakeWriter<'writer> + Send + Sync + 'static,
{
    let builder = builder.with_filter_reloading();
    let handle = builder.reload_handle();
    if configurable {
        let _ = CONFIGURABLE_LEVEL.set(Box::new(move |level: LogLevel| {
            let _ = handle.reload(EnvFilter::new(level.as_str()));
        }));
    }
    builder.try_init().is_ok()
}

/// The engine config's `log_level`, unless `RUST_LOG` or containerd's `--debug` decided.
pub fn apply_configured_level(level: Option<LogLevel>) {
    if let (Some(level), Some(apply)) = (level, CONFIGURABLE_LEVEL.get()) {
        apply(level);
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

//! Tracing setup: the serving shim writes to the `log` fifo containerd reads from the bundle.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
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
        .with_target(false);
    let installed = match serving.then(open_log_fifo).flatten() {
        Some(fifo) => install(builder.with_writer(Mutex::new(fifo)), configurable),
        None => install(builder.with_writer(std::io::stderr), configurable),
    };
    if installed {
        tracing::debug!(shim = %shim_id, "logging initialised");
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
fn open_log_fifo() -> Option<File> {
    let fifo = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
        .ok()?;
    let flags = nix::fcntl::fcntl(&fifo, nix::fcntl::FcntlArg::F_GETFL).ok()?;
    let blocking = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&fifo, nix::fcntl::FcntlArg::F_SETFL(blocking)).ok()?;
    Some(fifo)
}

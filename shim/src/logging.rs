//! Tracing setup: the serving shim writes to the `log` fifo containerd reads from the bundle.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. `RUST_LOG` overrides the level containerd asked for.
pub fn init(serving: bool, debug: bool, shim_id: &str) {
    let level = if debug { "debug" } else { "info" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let installed = match serving.then(open_log_fifo).flatten() {
        Some(fifo) => builder.with_writer(Mutex::new(fifo)).try_init(),
        None => builder.with_writer(std::io::stderr).try_init(),
    };
    if installed.is_ok() {
        tracing::debug!(shim = %shim_id, "logging initialised");
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

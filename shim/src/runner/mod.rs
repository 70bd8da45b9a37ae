//! The runner: one process per wasm container, started by the shim from its own binary.
//!
//! Keeping the module out of the shim's threads means a kill, a crash or a runaway module
//! touches only its own container, and compilation of untrusted wasm happens in a process
//! the container's limits can later apply to.

pub mod protocol;
pub mod spawn;
mod stdin;

use std::io::{BufReader, Write};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;

use crate::engine::{self, CommandContext, Outcome, PreparedCommand, ReadyCommand, Rejected};
use protocol::{RunSpec, RunnerMessage, ShimMessage, CONTROL_FD};

/// Exit status when the runner cannot even talk to the shim; the shim reports the details.
const SETUP_FAILED_EXIT_CODE: i32 = 125;

/// Entry point of the runner process; never returns.
pub fn main() -> ! {
    let code = run();
    // Anything the module left in Rust's stdout buffer must reach the container's stdout.
    let _ = std::io::stdout().flush();
    std::process::exit(code)
}

fn run() -> i32 {
    // SAFETY: the shim hands fd 3 to exactly this process as its control socket
    // (see `spawn::spawn_runner`); nothing else in this process owns it.
    let control = unsafe { UnixStream::from_raw_fd(CONTROL_FD) };
    let Ok(read_half) = control.try_clone() else {
        return SETUP_FAILED_EXIT_CODE;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = control;

    let spec = match protocol::receive::<ShimMessage>(&mut reader) {
        Ok(ShimMessage::Prepare(spec)) => spec,
        _ => return SETUP_FAILED_EXIT_CODE,
    };
    if let Some(fifo) = spec.stdin_fifo.clone() {
        if let Err(err) = stdin::relay_fifo_to_stdin(fifo) {
            let reason = format!("cannot attach stdin: {err}");
            let _ = protocol::send(&mut writer, &RunnerMessage::Rejected { reason });
            return SETUP_FAILED_EXIT_CODE;
        }
    }
    let ready = match prepare(&spec) {
        Ok(ready) => ready,
        Err(Rejected(reason)) => {
            let _ = protocol::send(&mut writer, &RunnerMessage::Rejected { reason });
            return SETUP_FAILED_EXIT_CODE;
        }
    };
    if protocol::send(&mut writer, &RunnerMessage::Ready).is_err() {
        return SETUP_FAILED_EXIT_CODE;
    }
    match protocol::receive::<ShimMessage>(&mut reader) {
        Ok(ShimMessage::Start) => {}
        // The shim deleted the container before starting it, or went away.
        _ => return SETUP_FAILED_EXIT_CODE,
    }
    drop((reader, writer));

    let outcome = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime.block_on(ready.run()),
        Err(err) => Outcome::HostError(format!("cannot start the runner's event loop: {err}")),
    };
    report_to_stderr(&outcome);
    outcome.exit_code()
}

fn prepare(spec: &RunSpec) -> Result<ReadyCommand, Rejected> {
    let bytes = read_module(spec)?;
    let engine = engine::new_engine()?;
    PreparedCommand::compile(&engine, &bytes)?.with_context(&CommandContext {
        args: &spec.args,
        env: &spec.env,
        rootfs: &spec.rootfs,
        readonly_root: spec.readonly_root,
    })
}

/// Reads the module through a capability on the root filesystem, so that symlinks inside
/// the image cannot lead the runner outside it.
fn read_module(spec: &RunSpec) -> Result<Vec<u8>, Rejected> {
    let root = cap_std::fs::Dir::open_ambient_dir(&spec.rootfs, cap_std::ambient_authority())
        .map_err(|err| {
            Rejected(format!(
                "cannot open the root filesystem {}: {err}",
                spec.rootfs.display()
            ))
        })?;
    root.read(spec.module_path.trim_start_matches('/'))
        .map_err(|err| Rejected(format!("cannot read {}: {err}", spec.module_path)))
}

/// Traps and host failures are the container's business: they go to its stderr, where
/// `ctr` and the CRI log show them, like a native program's crash message.
fn report_to_stderr(outcome: &Outcome) {
    let message = match outcome {
        Outcome::Exited(_) => return,
        Outcome::Trapped(message) => format!("wasm trap: {message}\n"),
        Outcome::HostError(message) => format!("wasm runtime error: {message}\n"),
    };
    let mut stderr = std::io::stderr();
    let _ = stderr.write_all(message.as_bytes());
    let _ = stderr.flush();
}

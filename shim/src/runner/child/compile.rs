//! Compilation in a child process of the runner.
//!
//! wasmtime compiles a module's functions on a pool of threads that lives as long as the
//! process. Started in the runner, those threads would exist before the runner gives up its
//! privileges, and capabilities are per thread. So the runner, still single-threaded, forks a
//! child that compiles with as many threads as it likes, writes the serialised artifact to a
//! memfd and exits; the runner loads the artifact and stays single-threaded until it is
//! confined. The child is in the container's cgroup, so compilation counts against the
//! container's limits as before.
//!
//! The compiler reads untrusted input, so the child confines itself before it compiles,
//! as the runner does before the guest runs (its own mount namespace rooted in the
//! container's root filesystem, the container's user, no capabilities, seccomp): a bug in
//! the compiler that an input could exploit finds nothing more to work with than the guest
//! would. It keeps no descriptor of the runner's but its output (not the control socket,
//! the log pipe or the container's stdio), and takes on the container's AppArmor profile.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;

use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use wasmtime::Engine;

use crate::engine::{compile_here, Rejected, WasmKind};
use crate::runner::protocol::LOG_FD;
use crate::sandbox::descriptors;

/// The child's exit status when the compiler rejected the module; the memfd holds the reason.
const REJECTED_EXIT: i32 = 2;

/// Compiles `bytes` in a child process that first runs `confine`, and returns the
/// serialised artifact.
pub fn compile_in_child(
    engine: &Engine,
    kind: WasmKind,
    bytes: &[u8],
    confine: &dyn Fn() -> Result<(), Rejected>,
) -> Result<Vec<u8>, Rejected> {
    super::confine::require_single_thread()?;
    let memfd = memfd_create(c"wedge-artifact", MFdFlags::MFD_CLOEXEC)
        .map_err(|err| Rejected(format!("cannot create a memfd for the compiler: {err}")))?;
    let mut output = File::from(memfd);
    let runner = nix::unistd::getpid();
    // SAFETY: the runner is single-threaded here (checked just above), so the child is a
    // complete copy of a process with no other thread's locks to inherit, and may do
    // anything the parent could.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let code = match only_the_output(&output)
                .and_then(|()| confine())
                .and_then(|()| tie_to_parent(runner))
                .and_then(|()| compile_here(engine, kind, bytes))
            {
                Ok(artifact) => match output.write_all(&artifact) {
                    Ok(()) => 0,
                    Err(_) => 1,
                },
                Err(Rejected(reason)) => {
                    let _ = output.write_all(reason.as_bytes());
                    REJECTED_EXIT
                }
            };
            // Skips the parent's atexit handlers and buffered stdio: they are the runner's.
            // SAFETY: _exit only ends this process.
            unsafe { libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => {
            let status = loop {
                match waitpid(child, None) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            };
            let mut content = Vec::new();
            output
                .rewind()
                .and_then(|_| output.read_to_end(&mut content))
                .map_err(|err| Rejected(format!("cannot read the compiled module: {err}")))?;
            match status {
                Ok(WaitStatus::Exited(_, 0)) => Ok(content),
                Ok(WaitStatus::Exited(_, REJECTED_EXIT)) => {
                    Err(Rejected(String::from_utf8_lossy(&content).into_owned()))
                }
                Ok(WaitStatus::Signaled(_, Signal::SIGKILL, _)) => Err(Rejected(
                    "compiling the module was killed (SIGKILL): the container's memory limit \
                     may be too small to compile it"
                        .into(),
                )),
                other => Err(Rejected(format!("compiling the module failed: {other:?}"))),
            }
        }
        Err(err) => Err(Rejected(format!("cannot fork the compiler: {err}"))),
    }
}

/// Closes every descriptor but `output`; the numbers of stdio and the log pipe are held by
/// /dev/null, so that the log lines of the compile child go nowhere rather than into a
/// file opened later under that number.
fn only_the_output(output: &File) -> Result<(), Rejected> {
    let output = output.as_raw_fd();
    descriptors::close_all_except(&[output])
        .and_then(|()| {
            let reserved: Vec<i32> = [0, 1, 2, LOG_FD]
                .into_iter()
                .filter(|fd| *fd != output)
                .collect();
            descriptors::fill_with_dev_null(&reserved)
        })
        .map_err(|err| Rejected(format!("cannot close the compiler's descriptors: {err}")))
}

/// A killed runner (Delete, the node's OOM killer) takes its compiler along. Armed after the
/// child has become the container's user, since a change of credentials disarms it.
fn tie_to_parent(runner: nix::unistd::Pid) -> Result<(), Rejected> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|err| Rejected(format!("cannot tie the compiler to the runner: {err}")))?;
    if nix::unistd::getppid() != runner {
        // The runner died before the line above took effect.
        // SAFETY: _exit only ends this process.
        unsafe { libc::_exit(128 + Signal::SIGKILL as i32) }
    }
    Ok(())
}

//! Entering the pod's pid namespace (`shareProcessNamespace: true`).
//!
//! Joining a pid namespace only places a process's *children* in it, so a runner that must
//! be visible to its pod's sidecars forks once, right after it has joined the container's
//! cgroup: the child, in the pod's namespace, goes on to run the module; the parent stays
//! as the process the shim watches, forwards termination signals to the child and ends the
//! way the child ended. The child dies with the parent (PDEATHSIG), so a SIGKILL to the
//! parent still ends the container at once.

use nix::sys::signal::{kill, raise, signal, SigHandler, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use std::os::fd::AsFd;

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::unistd::{fork, ForkResult, Pid};

/// Signals the parent passes on to the module's process.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Forks into the pid namespace the shim joined before exec. Returns in the child; the
/// parent never returns (it exits with the child's status).
pub fn fork_into_pod_namespace() -> Result<(), String> {
    let mut watched = SigSet::empty();
    for signal in FORWARDED {
        watched.add(signal);
    }
    watched.add(Signal::SIGCHLD);
    // Blocked before the fork, so that no signal meant for the child is lost in between.
    let mut previous = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&watched), Some(&mut previous))
        .map_err(|err| format!("cannot block signals: {err}"))?;
    // The parent holds the write end until it exits: the child's way to see whether the
    // parent is still there (getppid says 0 across a pid namespace boundary).
    let (alive_read, alive_write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|err| format!("cannot create a pipe: {err}"))?;
    // SAFETY: the runner is single-threaded here (no stdin relay, no runtime yet), so the
    // child may do anything the parent could.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(alive_write);
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|err| format!("cannot tie the module to its runner: {err}"))?;
            let mut poll = [PollFd::new(alive_read.as_fd(), PollFlags::POLLIN)];
            if nix::poll::poll(&mut poll, PollTimeout::ZERO).unwrap_or(0) > 0 {
                // The parent died before the line above took effect.
                std::process::exit(128 + Signal::SIGKILL as i32);
            }
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)
                .map_err(|err| format!("cannot restore the signal mask: {err}"))?;
            Ok(())
        }
        Ok(ForkResult::Parent { child }) => {
            drop(alive_read);
            // Kept open (and leaked on purpose) for as long as this process lives.
            std::mem::forget(alive_write);
            supervise(child, &watched)
        }
        Err(err) => Err(format!("cannot fork into the pod's pid namespace: {err}")),
    }
}

fn supervise(child: Pid, watched: &SigSet) -> ! {
    // The child owns the container's stdio and the control socket from here on.
    for fd in 0..=4 {
        let _ = nix::unistd::close(fd);
    }
    if nix::unistd::geteuid().is_root() {
        // Not fatal: the parent runs no guest code, and failing here would orphan the child.
        let _ = crate::sandbox::privileges::keep_only_kill();
    }
    loop {
        let Ok(received) = watched.wait() else {
            continue;
        };
        if received != Signal::SIGCHLD {
            let _ = kill(child, received);
            continue;
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, killed_by, _)) => end_like(killed_by),
            Err(_) => std::process::exit(super::SETUP_FAILED_EXIT_CODE),
            Ok(_) => {}
        }
    }
}

/// Dies of the signal that killed the child, so the shim reports 128 + signal as for any
/// runner.
fn end_like(killed_by: Signal) -> ! {
    // SAFETY: restoring the default disposition of a signal installs no handler code.
    let _ = unsafe { signal(killed_by, SigHandler::SigDfl) };
    let mut only = SigSet::empty();
    only.add(killed_by);
    let _ = nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_UNBLOCK, Some(&only), None);
    let _ = raise(killed_by);
    std::process::exit(128 + killed_by as i32)
}

//! Entering the container's pid namespace: the pod's (`shareProcessNamespace: true`) or one
//! of its own (the default, as under runc).
//!
//! Joining or creating a pid namespace only places a process's *children* in it, so the
//! runner forks once, right after it has joined the container's cgroup: the child, in the
//! namespace, goes on to run the module; the parent stays as the process the shim watches,
//! forwards termination signals to the child and ends the way the child ended. The child dies
//! with the parent (PDEATHSIG), so a SIGKILL to the parent still ends the container at once.
//!
//! In a namespace of its own the child is its init (pid 1), and the kernel delivers an init
//! only the signals it has a handler for: the child installs handlers that end it as the
//! default action would (status 128 + signal), except that a server, once it watches SIGTERM
//! and SIGINT itself, drains instead (`let_the_server_drain`).
//!
//! The parent runs no guest code, but it lives in the container's cgroup next to the guest,
//! so it is confined like the guest: once the child reports that it has become the
//! container's user (until then the parent needs root to signal it), the parent takes on the
//! same user, drops every capability, sets no_new_privs and installs the same seccomp
//! filters.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{
    kill, raise, sigaction, signal, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal,
};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::sandbox::privileges;
use crate::sandbox::seccomp::Filters;
use crate::spec::Identity;

/// Signals the parent passes on to the module's process.
const FORWARDED: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Lowest descriptor the supervisor's own pipes are moved to, clear of the container's
/// stdio, the control socket and the module memfd that it closes.
const FIRST_PRIVATE_FD: i32 = 10;

/// The child's way to tell its supervisor that it is confined.
pub struct ConfinedNotice {
    notice: OwnedFd,
    /// Readable (at end of file) once the parent is gone.
    parent_alive: OwnedFd,
}

impl ConfinedNotice {
    /// Tells the supervising parent that this process has become the container's user. The
    /// change of credentials disarmed the death signal that ties this process to the parent,
    /// so it is armed again first.
    pub fn send(self) -> Result<(), String> {
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
            .map_err(|err| format!("cannot tie the module to its runner: {err}"))?;
        exit_if_parent_gone(&self.parent_alive);
        nix::unistd::write(&self.notice, b"1")
            .map(drop)
            .map_err(|err| format!("cannot tell the runner it is confined: {err}"))
    }
}

/// Ends this process as if killed when the supervising parent has already died (the death
/// signal, armed just before, came too late to be sent).
fn exit_if_parent_gone(parent_alive: &OwnedFd) {
    let mut poll = [PollFd::new(parent_alive.as_fd(), PollFlags::POLLIN)];
    if nix::poll::poll(&mut poll, PollTimeout::ZERO).unwrap_or(0) > 0 {
        std::process::exit(128 + Signal::SIGKILL as i32);
    }
}

/// How the supervisor confines itself once the child has.
pub struct SupervisorConfinement<'a> {
    pub identity: &'a Identity,
    pub filters: &'a Filters,
}

/// Forks into the pid namespace the shim joined or created before exec. Returns in the
/// child; the parent never returns (it exits with the child's status).
pub fn fork_into_pid_namespace(
    confinement: SupervisorConfinement<'_>,
) -> Result<ConfinedNotice, String> {
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
    let (alive_read, alive_write) = private_pipe()?;
    let (confined_read, confined_write) = private_pipe()?;
    // SAFETY: the runner is single-threaded here (no stdin relay, no runtime yet), so the
    // child may do anything the parent could.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop((alive_write, confined_read));
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|err| format!("cannot tie the module to its runner: {err}"))?;
            exit_if_parent_gone(&alive_read);
            if nix::unistd::getpid().as_raw() == 1 {
                end_on_forwarded_signals()?;
            }
            nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&previous), None)
                .map_err(|err| format!("cannot restore the signal mask: {err}"))?;
            Ok(ConfinedNotice {
                notice: confined_write,
                parent_alive: alive_read,
            })
        }
        Ok(ForkResult::Parent { child }) => {
            drop((alive_read, confined_write));
            // Kept open (and leaked on purpose) for as long as this process lives.
            std::mem::forget(alive_write);
            supervise(child, &watched, confined_read, confinement)
        }
        Err(err) => Err(format!(
            "cannot fork into the container's pid namespace: {err}"
        )),
    }
}

/// Set once a server watches SIGTERM and SIGINT itself: from then on they start its drain.
static SERVER_DRAINS: AtomicBool = AtomicBool::new(false);

/// Tells the handlers below that the server now handles SIGTERM and SIGINT. Called after
/// the server's own handlers are installed, which run after these: a signal in between
/// still ends the module, as it would have before the server started.
pub fn let_the_server_drain() {
    SERVER_DRAINS.store(true, Ordering::SeqCst);
}

extern "C" fn end_as_by_default(signal: libc::c_int) {
    let drains = SERVER_DRAINS.load(Ordering::SeqCst);
    if drains && (signal == libc::SIGTERM || signal == libc::SIGINT) {
        return;
    }
    // SAFETY: _exit is async-signal-safe; nothing of this process is needed any more.
    unsafe { libc::_exit(128 + signal) }
}

/// An init ignores every signal it has no handler for: these make the forwarded ones end it.
fn end_on_forwarded_signals() -> Result<(), String> {
    let action = SigAction::new(
        SigHandler::Handler(end_as_by_default),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for forwarded in FORWARDED {
        // SAFETY: the handler only reads an atomic and calls _exit, both async-signal-safe.
        unsafe { sigaction(forwarded, &action) }
            .map_err(|err| format!("cannot handle {forwarded} as the namespace's init: {err}"))?;
    }
    Ok(())
}

/// A close-on-exec pipe whose ends sit above the descriptors the supervisor closes.
fn private_pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
        .map_err(|err| format!("cannot create a pipe: {err}"))?;
    Ok((raise_fd(read)?, raise_fd(write)?))
}

fn raise_fd(fd: OwnedFd) -> Result<OwnedFd, String> {
    let raised = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(FIRST_PRIVATE_FD))
        .map_err(|err| format!("cannot move a descriptor: {err}"))?;
    // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raised) })
}

fn supervise(
    child: Pid,
    watched: &SigSet,
    confined: OwnedFd,
    confinement: SupervisorConfinement<'_>,
) -> ! {
    // The child owns the container's stdio, the control socket and the module from here on.
    for fd in 0..FIRST_PRIVATE_FD {
        if fd != confined.as_raw_fd() {
            let _ = nix::unistd::close(fd);
        }
    }
    let Ok(signals) = SignalFd::with_flags(watched, SfdFlags::SFD_CLOEXEC) else {
        let _ = kill(child, Signal::SIGKILL);
        std::process::exit(super::SETUP_FAILED_EXIT_CODE);
    };
    let mut waiting_for_child = Some(confined);
    loop {
        let (signal_ready, notice_ready) = wait_for_events(&signals, waiting_for_child.as_ref());
        if notice_ready {
            if let Some(confined) = waiting_for_child.take() {
                let mut byte = [0u8; 1];
                if matches!(nix::unistd::read(&confined, &mut byte), Ok(1))
                    && confine_self(&confinement).is_err()
                {
                    // A supervisor that stays privileged next to the guest is not allowed.
                    let _ = kill(child, Signal::SIGKILL);
                    std::process::exit(super::SETUP_FAILED_EXIT_CODE);
                }
            }
        }
        if !signal_ready {
            continue;
        }
        let Ok(Some(info)) = signals.read_signal() else {
            continue;
        };
        let Ok(received) = Signal::try_from(info.ssi_signo as i32) else {
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

/// Blocks until a signal or the child's notice (or its end of the pipe closing) arrives.
fn wait_for_events(signals: &SignalFd, notice: Option<&OwnedFd>) -> (bool, bool) {
    let mut fds = vec![PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
    if let Some(notice) = notice {
        fds.push(PollFd::new(notice.as_fd(), PollFlags::POLLIN));
    }
    if nix::poll::poll(&mut fds, PollTimeout::NONE).is_err() {
        return (false, false);
    }
    let ready = |fd: &PollFd| fd.revents().is_some_and(|events| !events.is_empty());
    (ready(&fds[0]), fds.get(1).is_some_and(ready))
}

fn confine_self(confinement: &SupervisorConfinement<'_>) -> Result<(), String> {
    if nix::unistd::geteuid().is_root() {
        privileges::drop_to(confinement.identity)?;
    }
    confinement
        .filters
        .apply()
        .map_err(|err| format!("cannot apply seccomp: {err}"))
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

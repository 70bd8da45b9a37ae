//! Routes the exit statuses the shim's reaper collects to the runners waiting for them.
//!
//! The containerd-shim crate reaps every child on SIGCHLD and announces `(pid, status)` on
//! its monitor. A runner is registered under the same lock it is spawned under, so its
//! exit can never arrive before someone is listening for it. A process the shim learns of
//! only later (a container init that `runc create` started) may have exited already: recent
//! exits nobody claimed are kept for that.
//!
//! Because the reaper waits for *every* child, the shim's helper commands (runc) cannot use
//! `std::process::Child::wait`; [`ExitRouter::run`] gets their status from here instead. The
//! signals the shim sends to processes it watches go through a [`ProcessHandle`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::error::{Error, Result};

/// How a container's process ended, as containerd records it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExitStatus {
    pub code: u32,
    pub at: Timestamp,
}

/// How many unclaimed exits are remembered; older ones are forgotten first.
const UNCLAIMED_LIMIT: usize = 256;

#[derive(Default)]
pub struct ExitRouter {
    routes: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    waiting: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Exits that arrived with nobody waiting, oldest first.
    unclaimed: std::collections::VecDeque<(i32, ExitStatus)>,
}

/// What a helper command printed and how it ended.
#[derive(Debug)]
pub struct CommandOutput {
    pub code: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExitRouter {
    /// Subscribes to the reaper and starts routing. Call once, before any child is spawned.
    pub async fn start() -> Result<Arc<Self>> {
        let mut subscription =
            monitor_subscribe(Topic::Pid)
                .await
                .map_err(|err| Error::Runner {
                    id: String::new(),
                    reason: format!("cannot subscribe to process exits: {err}"),
                })?;
        let router = Arc::new(ExitRouter::default());
        let routing = Arc::clone(&router);
        tokio::spawn(async move {
            while let Some(event) = subscription.rx.recv().await {
                if let Subject::Pid(pid) = event.subject {
                    routing.deliver(pid, event.exit_code);
                }
            }
        });
        Ok(router)
    }

    /// Runs `spawn` (which returns the new child and its pid) and registers the pid before
    /// any exit can be routed.
    pub fn spawn_watched<T>(
        &self,
        spawn: impl FnOnce() -> Result<(T, i32)>,
    ) -> Result<(T, oneshot::Receiver<ExitStatus>)> {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let (child, pid) = spawn()?;
        let (sender, receiver) = oneshot::channel();
        routes.waiting.insert(pid, sender);
        Ok((child, receiver))
    }

    /// The exit of a process that some other program started for the shim (and that the
    /// shim, as subreaper, will reap): delivered even if it already happened. The handle
    /// signals it only while it lives.
    pub fn watch(&self, pid: i32) -> (oneshot::Receiver<ExitStatus>, ProcessHandle) {
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        let (sender, receiver) = oneshot::channel();
        match routes
            .unclaimed
            .iter()
            .position(|(exited, _)| *exited == pid)
        {
            Some(index) => {
                if let Some((_, status)) = routes.unclaimed.remove(index) {
                    let _ = sender.send(status);
                }
                (receiver, ProcessHandle::finished(pid))
            }
            None => {
                routes.waiting.insert(pid, sender);
                (receiver, ProcessHandle::open(pid))
            }
        }
    }

    /// Runs a helper command to completion: its stdout and stderr captured, its exit status
    /// from the reaper.
    pub async fn run(&self, mut command: std::process::Command) -> Result<CommandOutput> {
        command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let (mut child, exited) = self.spawn_command(&mut command)?;
        drop(command);
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let captured = tokio::task::spawn_blocking(move || drain_both(stdout, stderr))
            .await
            .unwrap_or_default();
        Ok(CommandOutput {
            code: lost_if_dropped(exited).await?.code,
            stdout: captured.0,
            stderr: captured.1,
        })
    }

    /// Runs a helper command whose stdio the caller set (and which it does not read) to
    /// completion; returns its exit code.
    pub async fn run_inheriting(&self, mut command: std::process::Command) -> Result<u32> {
        let (_child, exited) = self.spawn_command(&mut command)?;
        // The command holds the parent's copies of the stdio it was given: close them now.
        drop(command);
        Ok(lost_if_dropped(exited).await?.code)
    }

    fn spawn_command(
        &self,
        command: &mut std::process::Command,
    ) -> Result<(std::process::Child, oneshot::Receiver<ExitStatus>)> {
        let program = command.get_program().to_string_lossy().into_owned();
        self.spawn_watched(|| {
            let child = command
                .spawn()
                .map_err(|err| Error::io("cannot run", program, err))?;
            let pid = child.id() as i32;
            Ok((child, pid))
        })
    }

    fn deliver(&self, pid: i32, code: i32) {
        let status = ExitStatus {
            code: u32::try_from(code).unwrap_or(255),
            at: now(),
        };
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        match routes.waiting.remove(&pid) {
            Some(sender) => {
                let _ = sender.send(status);
            }
            None => {
                if routes.unclaimed.len() == UNCLAIMED_LIMIT {
                    routes.unclaimed.pop_front();
                }
                routes.unclaimed.push_back((pid, status));
            }
        }
    }
}

async fn lost_if_dropped(exited: oneshot::Receiver<ExitStatus>) -> Result<ExitStatus> {
    exited.await.map_err(|_| Error::Runner {
        id: String::new(),
        reason: "the exit status of a helper command was lost".into(),
    })
}

/// Reads a command's stdout and stderr to their ends at the same time: read one after the
/// other, a command that fills the second pipe (64 KiB) before closing the first would wait
/// for the shim forever, and the shim for it.
fn drain_both(
    stdout: Option<std::process::ChildStdout>,
    stderr: Option<std::process::ChildStderr>,
) -> (Vec<u8>, Vec<u8>) {
    use std::io::Read;
    let stderr_reader = stderr.map(|mut stderr| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = stderr.read_to_end(&mut bytes);
            bytes
        })
    });
    let mut out = Vec::new();
    if let Some(mut stdout) = stdout {
        let _ = stdout.read_to_end(&mut out);
    }
    let err = stderr_reader
        .and_then(|reader| reader.join().ok())
        .unwrap_or_default();
    (out, err)
}

/// A process the shim signals, held by a pidfd opened while the pid still named it (before
/// the shim reaped it). A pid is only a number: once its process is reaped, the kernel may
/// hand it to a new process, and a Kill or Delete arriving late (an exit is known to the
/// shim only after it is reaped) must not reach that one.
#[derive(Debug)]
pub struct ProcessHandle {
    pid: i32,
    pidfd: Option<std::os::fd::OwnedFd>,
    finished: bool,
}

impl ProcessHandle {
    /// The handle of a live child (or a process the shim will reap). Kernels before 5.3
    /// have no pidfd: the handle then signals by pid.
    pub fn open(pid: i32) -> Self {
        let pidfd = rustix::process::Pid::from_raw(pid).and_then(|raw| {
            rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty())
                .inspect_err(
                    |err| tracing::debug!(pid, error = %err, "no pidfd: signals go by pid"),
                )
                .ok()
        });
        ProcessHandle {
            pid,
            pidfd,
            finished: false,
        }
    }

    /// The handle of a process known to have exited: every signal is refused.
    pub fn finished(pid: i32) -> Self {
        ProcessHandle {
            pid,
            pidfd: None,
            finished: true,
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Sends `signal`. A process already gone is [`Error::ProcessFinished`], which
    /// containerd takes as "not found".
    pub fn signal(&self, signal: Signal) -> Result<()> {
        if self.finished {
            return Err(Error::ProcessFinished);
        }
        let Some(pidfd) = &self.pidfd else {
            return signal_process(self.pid, signal);
        };
        let signal = rustix::process::Signal::from_named_raw(signal as i32).ok_or(Error::Sys {
            context: "cannot signal the process",
            source: nix::Error::EINVAL,
        })?;
        match rustix::process::pidfd_send_signal(pidfd, signal) {
            Ok(()) => Ok(()),
            Err(rustix::io::Errno::SRCH) => Err(Error::ProcessFinished),
            Err(errno) => Err(Error::Sys {
                context: "cannot signal the process",
                source: nix::Error::from_raw(errno.raw_os_error()),
            }),
        }
    }
}

/// Sends `signal` to process `pid`: only for a pid the shim has no handle of (one read back
/// from a bundle after a crash). A process already gone is [`Error::ProcessFinished`].
pub fn signal_process(pid: i32, signal: Signal) -> Result<()> {
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) => Ok(()),
        Err(nix::Error::ESRCH) => Err(Error::ProcessFinished),
        Err(source) => Err(Error::Sys {
            context: "cannot signal the process",
            source,
        }),
    }
}

/// True when process `pid` is gone or a zombie waiting to be reaped.
pub fn has_exited(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which ends at the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => true,
    }
}

pub fn now() -> Timestamp {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut timestamp = Timestamp::new();
    timestamp.seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    timestamp.nanos = since_epoch.subsec_nanos() as i32;
    timestamp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_that_fills_stderr_first_is_read_to_the_end() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "head -c 200000 /dev/zero >&2; echo out"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(drain_both(stdout, stderr));
        });
        let drained = receiver.recv_timeout(std::time::Duration::from_secs(10));
        let _ = child.kill();
        let _ = child.wait();
        let (out, err) = drained.expect("stdout and stderr drained without a deadlock");
        assert_eq!(out, b"out\n");
        assert_eq!(err.len(), 200_000);
    }

    #[tokio::test]
    async fn exits_reach_the_registered_waiter_only() {
        let router = ExitRouter::default();
        let ((), first) = router.spawn_watched(|| Ok(((), 100))).unwrap();
        let ((), second) = router.spawn_watched(|| Ok(((), 101))).unwrap();
        router.deliver(999, 1);
        router.deliver(101, 143);
        router.deliver(100, 0);
        assert_eq!(second.await.unwrap().code, 143);
        assert_eq!(first.await.unwrap().code, 0);
    }

    #[tokio::test]
    async fn an_exit_before_the_watch_is_kept_for_it() {
        let router = ExitRouter::default();
        router.deliver(200, 7);
        let (exited, handle) = router.watch(200);
        assert_eq!(exited.await.unwrap().code, 7);
        assert!(matches!(
            handle.signal(Signal::SIGKILL),
            Err(Error::ProcessFinished)
        ));
        let (later, _) = router.watch(201);
        router.deliver(201, 9);
        assert_eq!(later.await.unwrap().code, 9);
        for pid in 0..(UNCLAIMED_LIMIT as i32 + 10) {
            router.deliver(1000 + pid, 0);
        }
        let routes = router.routes.lock().unwrap();
        assert_eq!(routes.unclaimed.len(), UNCLAIMED_LIMIT);
    }

    /// A pid the kernel hands out again after its process was reaped: the old handle
    /// must refuse, not signal the newcomer. `ns_last_pid` (root, initial pid namespace)
    /// steers the next pid; other processes may take it first, so this tries a few times.
    #[test]
    fn a_handle_never_signals_a_process_that_reuses_its_pid() {
        use std::process::Command;
        const NS_LAST_PID: &str = "/proc/sys/kernel/ns_last_pid";
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: steering pids needs root");
            return;
        }
        let mut first = Command::new("true").spawn().unwrap();
        let pid = first.id() as i32;
        let handle = ProcessHandle::open(pid);
        first.wait().unwrap();
        for _ in 0..50 {
            std::fs::write(NS_LAST_PID, (pid - 1).to_string()).unwrap();
            let mut newcomer = Command::new("sleep").arg("30").spawn().unwrap();
            if newcomer.id() as i32 != pid {
                newcomer.kill().unwrap();
                newcomer.wait().unwrap();
                continue;
            }
            let signalled = handle.signal(Signal::SIGKILL);
            let still_running = newcomer.try_wait().unwrap().is_none();
            newcomer.kill().unwrap();
            newcomer.wait().unwrap();
            assert!(
                matches!(signalled, Err(Error::ProcessFinished)),
                "{signalled:?}"
            );
            assert!(still_running, "the newcomer with the reused pid was killed");
            return;
        }
        panic!("pid {pid} was never handed out again");
    }
}

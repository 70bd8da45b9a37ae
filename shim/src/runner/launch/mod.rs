//! The shim's side of a runner: starting the process and talking to it.

pub mod module_fd;

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::protocol::{
    self, RunSpec, RunnerMessage, ShimMessage, CONTROL_FD, LOG_FD, MODULE_FD, RUNNER_ARG0,
};
use crate::engine::ProgramOrigin;
use crate::error::{Error, Result};
use crate::sandbox::BeforeExec;
use crate::stdio::OpenedStdio;

/// A live runner process and the shim's end of its control socket.
pub struct Runner {
    pub pid: i32,
    id: String,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// Starts the runner for container `id`: this very binary, re-executed under the name
/// [`RUNNER_ARG0`], with the container's stdio as fds 0-2, the control socket as fd 3 and,
/// for a module from an image layer, the module's memfd as fd 4.
///
/// Exec (rather than a bare fork) gives the runner a clean single-threaded process: the
/// shim runs a tokio runtime, and a fork of it could only call async-signal-safe functions.
pub fn spawn_runner(
    id: &str,
    pod: Option<&str>,
    bundle: &Path,
    stdio: OpenedStdio,
    module: Option<OwnedFd>,
    sandbox: BeforeExec,
) -> Result<Runner> {
    let (shim_end, runner_end) = std::os::unix::net::UnixStream::pair()
        .map_err(|err| Error::io("cannot create the control socket for", bundle, err))?;
    // Above the fds the child's dup2s write to, so that neither dup2 clobbers the other's
    // source.
    let runner_end = above_inherited_fds(OwnedFd::from(runner_end))?;
    let module = module.map(above_inherited_fds).transpose()?;
    let (log_reader, log_writer) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|source| Error::Sys {
            context: "cannot create the runner's log pipe",
            source,
        })?;
    let log_writer = above_inherited_fds(log_writer)?;
    let runner_fd = runner_end.as_raw_fd();
    let module_fd = module.as_ref().map(AsRawFd::as_raw_fd);
    let log_fd = log_writer.as_raw_fd();

    let mut command = Command::new("/proc/self/exe");
    command
        .arg0(RUNNER_ARG0)
        // The arguments only label the process for `ps` and leak checks.
        .arg(id)
        .arg(bundle)
        .env_clear()
        .current_dir(bundle)
        .stdin(Stdio::from(stdio.stdin))
        .stdout(Stdio::from(stdio.stdout))
        .stderr(Stdio::from(stdio.stderr));
    // SAFETY: the closure runs between fork and exec and makes only syscalls (dup2,
    // setrlimit, open/write of oom_score_adj, setns, unshare), all async-signal-safe; it
    // allocates nothing and touches no memory the parent may hold locks on.
    unsafe {
        command.pre_exec(move || {
            move_to_inherited_fds(runner_fd, module_fd, log_fd)?;
            sandbox.enter()
        });
    }
    let child = command
        .spawn()
        .map_err(|err| Error::io("cannot start the wasm runner", "/proc/self/exe", err))?;
    drop((runner_end, module, log_writer));
    relay_log_lines(log_reader, id, pod);
    // The shim's reaper collects the exit status by pid; the Child handle is not waited on.
    let pid = child.id() as i32;

    shim_end
        .set_nonblocking(true)
        .map_err(|err| Error::io("cannot configure the control socket of", bundle, err))?;
    let stream = UnixStream::from_std(shim_end)
        .map_err(|err| Error::io("cannot register the control socket of", bundle, err))?;
    let (read_half, writer) = stream.into_split();
    Ok(Runner {
        pid,
        id: id.to_string(),
        reader: BufReader::new(read_half),
        writer,
    })
}

/// Lowest fd the parent keeps the child's fds at before the child moves them down.
const FIRST_FREE_FD: RawFd = 10;

fn above_inherited_fds(fd: OwnedFd) -> Result<OwnedFd> {
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(FIRST_FREE_FD))
        .map(|raw| {
            // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) }
        })
        .map_err(|source| Error::Sys {
            context: "cannot duplicate a runner descriptor",
            source,
        })
}

/// Puts the control socket at [`CONTROL_FD`], the module memfd at [`MODULE_FD`] and the
/// log pipe at [`LOG_FD`], inheritable (dup2 clears close-on-exec). All sources are at or
/// above [`FIRST_FREE_FD`], so the order of the dup2 calls does not matter.
fn move_to_inherited_fds(control: RawFd, module: Option<RawFd>, log: RawFd) -> std::io::Result<()> {
    // SAFETY: plain syscalls on file descriptors, async-signal-safe (see the caller).
    unsafe {
        if libc::dup2(control, CONTROL_FD) < 0 || libc::dup2(log, LOG_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if let Some(module) = module {
            if libc::dup2(module, MODULE_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// The longest runner log line passed on; a longer one is cut there.
const MAX_LOG_LINE: usize = 16 * 1024;

/// Passes the runner's log lines on to the shim's log until the runner and its children
/// have all closed the pipe. On a task of the event loop: the pipe is read without
/// blocking, and the shim's own log writes never block either.
fn relay_log_lines(reader: OwnedFd, id: &str, pod: Option<&str>) {
    let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(reader) else {
        return;
    };
    // The runner's spans hang under the span that started it: the container's Create.
    // Only a runner whose spans are exported sends any (see `logging::runner_log`).
    let (parent, container) = if crate::telemetry::enabled() {
        let parent =
            tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current());
        let mut container = vec![opentelemetry::KeyValue::new("id", id.to_string())];
        if let Some(pod) = pod {
            container.push(opentelemetry::KeyValue::new("pod", pod.to_string()));
        }
        (parent, container)
    } else {
        (opentelemetry::Context::new(), Vec::new())
    };
    tokio::spawn(async move {
        let mut lines = BufReader::new(pipe);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut lines)
                .take(MAX_LOG_LINE as u64)
                .read_until(b'\n', &mut line)
                .await
            {
                Ok(0) | Err(_) => return,
                Ok(_) if line.starts_with(crate::telemetry::SPAN_RECORD_PREFIX.as_bytes()) => {
                    crate::telemetry::export_runner_span(&line, &parent, &container);
                }
                Ok(_) => {
                    if line.last() != Some(&b'\n') {
                        line.push(b'\n');
                    }
                    crate::logging::relay(&line);
                }
            }
        }
    });
}

impl Runner {
    /// Hands over the spec and waits until the module is compiled (or loaded from the
    /// cache) and linked, or rejected.
    pub async fn prepare(&mut self, spec: RunSpec) -> Result<ProgramOrigin> {
        self.send(&ShimMessage::Prepare(Box::new(spec))).await?;
        let mut line = Vec::new();
        // Bounded: whatever the runner says, the shim holds at most one message's worth.
        let read = (&mut self.reader)
            .take(protocol::MAX_MESSAGE_BYTES)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|err| self.failure(format!("control channel: {err}")))?;
        if read == 0 {
            return Err(self.failure("exited while loading the module".into()));
        }
        let answer = protocol::decode::<RunnerMessage>(&line)
            .map_err(|err| self.failure(err.to_string()))?;
        prepare_outcome(&self.id, answer)
    }

    /// Tells the runner to run the module. The control socket is done with after this.
    pub async fn start(mut self) -> Result<()> {
        self.send(&ShimMessage::Start).await
    }

    async fn send(&mut self, message: &ShimMessage) -> Result<()> {
        let line = protocol::encode(message).map_err(|err| self.failure(err.to_string()))?;
        self.writer
            .write_all(&line)
            .await
            .map_err(|err| self.failure(format!("control channel: {err}")))
    }

    fn failure(&self, reason: String) -> Error {
        Error::Runner {
            id: self.id.clone(),
            reason,
        }
    }
}

/// What the runner's answer to Prepare means for Create: a rejected module is the user's to
/// fix (invalid argument), a host failure the operator's (internal).
fn prepare_outcome(id: &str, answer: RunnerMessage) -> Result<ProgramOrigin> {
    match answer {
        RunnerMessage::Ready { program } => Ok(program),
        RunnerMessage::Rejected { reason } => Err(Error::ModuleRejected(reason)),
        RunnerMessage::Failed { reason } => Err(Error::Runner {
            id: id.to_string(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::ttrpc::Code;

    use super::*;

    #[test]
    fn a_rejected_module_is_the_user_s_and_a_host_failure_the_operator_s() {
        let rejected = prepare_outcome(
            "c1",
            RunnerMessage::Rejected {
                reason: "unknown import wasi:nope/x".into(),
            },
        )
        .unwrap_err();
        assert_eq!(rejected.code(), Code::INVALID_ARGUMENT);
        let failed = prepare_outcome(
            "c1",
            RunnerMessage::Failed {
                reason: "cannot apply seccomp: EPERM".into(),
            },
        )
        .unwrap_err();
        assert_eq!(failed.code(), Code::INTERNAL);
        assert!(failed.to_string().contains("c1"), "{failed}");
        assert!(failed.to_string().contains("seccomp"), "{failed}");
    }
}

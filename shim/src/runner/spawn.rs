//! The shim's side of a runner: starting the process and talking to it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

use super::protocol::{self, RunSpec, RunnerMessage, ShimMessage, CONTROL_FD, RUNNER_ARG0};
use crate::error::{Error, Result};

/// The container's stdio, already opened by the shim.
pub struct RunnerStdio {
    pub stdin: File,
    pub stdout: File,
    pub stderr: File,
}

/// A live runner process and the shim's end of its control socket.
pub struct Runner {
    pub pid: i32,
    id: String,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

/// Starts the runner for container `id`: this very binary, re-executed under the name
/// [`RUNNER_ARG0`], with the container's stdio as fds 0-2 and the control socket as fd 3.
///
/// Exec (rather than a bare fork) gives the runner a clean single-threaded process: the
/// shim runs a tokio runtime, and a fork of it could only call async-signal-safe functions.
pub fn spawn_runner(id: &str, bundle: &Path, stdio: RunnerStdio) -> Result<Runner> {
    let (shim_end, runner_end) = std::os::unix::net::UnixStream::pair()
        .map_err(|err| Error::io("cannot create the control socket for", bundle, err))?;
    let runner_fd = runner_end.as_raw_fd();

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
    // SAFETY: the closure runs between fork and exec and calls only dup2 and fcntl, which are
    // async-signal-safe; it touches no memory the parent may hold locks on.
    unsafe {
        command.pre_exec(move || move_to_control_fd(runner_fd));
    }
    let child = command
        .spawn()
        .map_err(|err| Error::io("cannot start the wasm runner", "/proc/self/exe", err))?;
    drop(runner_end);
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

/// Puts the runner's end of the control socket at [`CONTROL_FD`], inheritable.
fn move_to_control_fd(fd: i32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on file descriptors, async-signal-safe (see the caller).
    unsafe {
        if fd == CONTROL_FD {
            // dup2 onto itself would leave close-on-exec set.
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(fd, CONTROL_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Runner {
    /// Hands over the spec and waits until the module is compiled and linked, or rejected.
    pub async fn prepare(&mut self, spec: RunSpec) -> Result<()> {
        self.send(&ShimMessage::Prepare(spec)).await?;
        let mut line = Vec::new();
        let read = self
            .reader
            .read_until(b'\n', &mut line)
            .await
            .map_err(|err| self.failure(format!("control channel: {err}")))?;
        if read == 0 {
            return Err(self.failure("exited while loading the module".into()));
        }
        match protocol::decode::<RunnerMessage>(&line)
            .map_err(|err| self.failure(err.to_string()))?
        {
            RunnerMessage::Ready => Ok(()),
            RunnerMessage::Rejected { reason } => Err(Error::ModuleRejected(reason)),
        }
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

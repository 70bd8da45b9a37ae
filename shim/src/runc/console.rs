//! Terminals for native containers and exec processes (`kubectl run -it`, `ctr run -t`,
//! `kubectl exec -it`): runc makes the pty and hands its master to a unix socket
//! (`--console-socket`); the shim copies between the master and containerd's fifos and
//! resizes it on ResizePty.

use std::fs::File;
use std::future::Future;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::net::UnixListener;
use tracing::warn;

use crate::error::{Error, Result};
use crate::runc::InitStdio;
use crate::stdio::{self, relay_fifo, StdioPaths};

/// How long runc may take to hand over the master once it has been started.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a process through `start` (a runc create or exec) with the client's stdio:
/// containerd's fifos inherited directly, or, with `terminal`, a pty whose master runc sends
/// to a console socket (the path `start` gets) and the shim relays. Returns the pid and
/// the console. A process that started but whose terminal could not be attached keeps
/// running without one (a warning says why) rather than being left unsupervised.
pub async fn start_with_stdio<F, Fut>(
    paths: &StdioPaths,
    terminal: bool,
    start: F,
) -> Result<(i32, Option<Console>)>
where
    F: FnOnce(InitStdio, Option<PathBuf>) -> Fut,
    Fut: Future<Output = Result<i32>>,
{
    if !terminal {
        let stdio = stdio::open_native(&paths.stdin, &paths.stdout, &paths.stderr)?;
        return Ok((start(stdio, None).await?, None));
    }
    let client = stdio::open_terminal(&paths.stdin, &paths.stdout)?;
    let socket = ConsoleSocket::new()?;
    let socket_path = socket.path().to_path_buf();
    let receiving = tokio::spawn(socket.receive_master());
    let pid = match start(stdio::null_native()?, Some(socket_path)).await {
        Ok(pid) => pid,
        Err(err) => {
            receiving.abort();
            return Err(err);
        }
    };
    let attached = match receiving.await {
        Ok(Ok(master)) => Console::relay(master, client.stdin_fifo, client.stdout),
        Ok(Err(err)) => Err(err),
        Err(err) => Err(Error::Io {
            context: "cannot receive the terminal of process",
            path: PathBuf::from(pid.to_string()),
            source: std::io::Error::other(err.to_string()),
        }),
    };
    match attached {
        Ok(console) => Ok((pid, Some(console))),
        Err(err) => {
            warn!(pid, error = %err, "the process runs without its terminal");
            Ok((pid, None))
        }
    }
}

/// The socket runc connects to. It lives in a short private directory: socket paths are
/// limited to 108 bytes, more than a bundle path leaves.
pub struct ConsoleSocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("wedge-pty-")
            .tempdir()
            .map_err(|err| Error::io("cannot create a directory for", "the console socket", err))?;
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path)
            .map_err(|err| Error::io("cannot listen on the console socket", &path, err))?;
        Ok(ConsoleSocket {
            _dir: dir,
            path,
            listener,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits for runc's connection and takes the pty master it sends.
    pub async fn receive_master(self) -> Result<OwnedFd> {
        let failure = |reason: String| Error::Io {
            context: "cannot receive the terminal from runc through",
            path: self.path.clone(),
            source: std::io::Error::other(reason),
        };
        let (stream, _) = tokio::time::timeout(HANDOVER_TIMEOUT, self.listener.accept())
            .await
            .map_err(|_| failure("runc never connected".into()))?
            .map_err(|err| failure(err.to_string()))?;
        let stream = stream.into_std().map_err(|err| failure(err.to_string()))?;
        stream
            .set_nonblocking(false)
            .map_err(|err| failure(err.to_string()))?;
        stream
            .set_read_timeout(Some(HANDOVER_TIMEOUT))
            .map_err(|err| failure(err.to_string()))?;
        tokio::task::spawn_blocking(move || receive_fd(stream.as_raw_fd()))
            .await
            .map_err(|err| failure(err.to_string()))?
            .map_err(failure)
    }
}

/// One SCM_RIGHTS descriptor from `socket`; runc sends the pty's name alongside.
fn receive_fd(socket: RawFd) -> std::result::Result<OwnedFd, String> {
    let mut name = [0u8; 4096];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let message = recvmsg::<UnixAddr>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|err| err.to_string())?;
    for control in message.cmsgs().map_err(|err| err.to_string())? {
        if let ControlMessageOwned::ScmRights(fds) = control {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor in our table for this
                // message; nothing else refers to it.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err("runc sent no descriptor".into())
}

/// A container's or exec's terminal: the master side, copied to and from the client.
#[derive(Clone)]
pub struct Console {
    master: Arc<File>,
}

impl Console {
    /// Starts copying: the master's output to `stdout` (a tty merges stderr into it) and,
    /// when there is one, the client's stdin fifo into the master.
    pub fn relay(master: OwnedFd, stdin_fifo: Option<PathBuf>, mut stdout: File) -> Result<Self> {
        let master = File::from(master);
        let mut output = master
            .try_clone()
            .map_err(|err| Error::io("cannot share the terminal", "pty master", err))?;
        std::thread::Builder::new()
            .name("tty-out".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                // Ends with EIO once every process holding the slave is gone.
                let _ = std::io::copy(&mut output, &mut stdout);
            })
            .map_err(|err| Error::io("cannot start the terminal relay for", "pty master", err))?;
        if let Some(fifo) = stdin_fifo {
            let input = master
                .try_clone()
                .map_err(|err| Error::io("cannot share the terminal", "pty master", err))?;
            relay_fifo(fifo, input)
                .map_err(|err| Error::io("cannot relay stdin to", "pty master", err))?;
        }
        Ok(Console {
            master: Arc::new(master),
        })
    }

    /// ResizePty: the new window size, which the kernel signals to the foreground process.
    pub fn resize(&self, width: u32, height: u32) -> Result<()> {
        let size = libc::winsize {
            ws_row: u16::try_from(height).unwrap_or(u16::MAX),
            ws_col: u16::try_from(width).unwrap_or(u16::MAX),
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call;
        // the descriptor is the open pty master.
        let result = unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
        if result < 0 {
            return Err(Error::io(
                "cannot resize the terminal",
                "pty master",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

//! The container's stdin when containerd hands over a fifo.
//!
//! The fifo sits in a root-only directory of containerd's, so the runner opens it at Create,
//! before it gives up root and its view of the host. It opens it without blocking (a
//! blocking open would wait for the client), and relays it into a pipe that is the module's
//! fd 0. The relay thread starts only after the runner is confined, so that it inherits the
//! confinement like every other thread.
//!
//! A fifo opened for reading reports neither data nor hang-up until a writer has come, so
//! the relay waits in poll(2) for the client, copies what it writes, and closes the pipe at
//! the client's EOF: the module reads EOF exactly when the client closes its end.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::poll::{PollFd, PollFlags, PollTimeout};

/// The opened fifo and the pipe the module reads, waiting for [`StdinRelay::start`].
pub struct StdinRelay {
    fifo: File,
    pipe: File,
}

impl StdinRelay {
    /// Opens `fifo` and puts the read end of a fresh pipe on fd 0.
    pub fn open(fifo: &Path) -> std::io::Result<Self> {
        let client = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(fifo)?;
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        nix::unistd::dup2_stdin(&read_end)?;
        Ok(StdinRelay {
            fifo: client,
            pipe: File::from(write_end),
        })
    }

    /// Starts copying on a thread of its own.
    pub fn start(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("stdin-relay".into())
            // The copy needs little stack; a small one keeps the footprint down.
            .stack_size(64 * 1024)
            .spawn(move || self.copy())?;
        Ok(())
    }

    fn copy(mut self) {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            let mut poll = [PollFd::new(self.fifo.as_fd(), PollFlags::POLLIN)];
            match nix::poll::poll(&mut poll, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(_) => return,
            }
            match self.fifo.read(&mut buffer) {
                // The client has come and gone: the module's end of input.
                Ok(0) => return,
                Ok(read) => {
                    if self.pipe.write_all(&buffer[..read]).is_err() {
                        return;
                    }
                }
                Err(err)
                    if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => return,
            }
        }
    }
}

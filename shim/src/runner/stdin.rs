//! The container's stdin when containerd hands over a fifo.
//!
//! A fifo read before any writer has opened it returns EOF, and the client (`ctr`, the CRI
//! attach) opens its writer only after the reader appears. So the runner gives the module a
//! pipe as fd 0 and relays into it from a thread that opens the fifo blocking, which waits
//! for the client. The module reads EOF exactly when the client closes its end.

use std::fs::File;
use std::path::PathBuf;

use crate::stdio::relay_fifo;

/// Puts a pipe on fd 0 and starts relaying `fifo` into it.
pub fn relay_fifo_to_stdin(fifo: PathBuf) -> std::io::Result<()> {
    let (read_end, write_end) = nix::unistd::pipe()?;
    nix::unistd::dup2_stdin(&read_end)?;
    drop(read_end);
    relay_fifo(fifo, File::from(write_end))
}

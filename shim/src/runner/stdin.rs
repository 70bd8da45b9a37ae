//! The container's stdin when containerd hands over a fifo.
//!
//! A fifo read before any writer has opened it returns EOF, and the client (`ctr`, the CRI
//! attach) opens its writer only after the reader appears. So the runner gives the module a
//! pipe as fd 0 and relays into it from a thread that opens the fifo blocking, which waits
//! for the client. The module reads EOF exactly when the client closes its end.

use std::fs::File;
use std::path::PathBuf;

/// Puts a pipe on fd 0 and starts relaying `fifo` into it.
pub fn relay_fifo_to_stdin(fifo: PathBuf) -> std::io::Result<()> {
    let (read_end, write_end) = nix::unistd::pipe()?;
    nix::unistd::dup2_stdin(&read_end)?;
    drop(read_end);
    let mut pipe = File::from(write_end);
    std::thread::Builder::new()
        .name("stdin-relay".into())
        // The copy needs little stack; a small one keeps the runner's footprint down.
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Ok(mut client) = File::open(&fifo) {
                let _ = std::io::copy(&mut client, &mut pipe);
            }
            // Dropping the pipe's only writer gives the module its EOF.
        })?;
    Ok(())
}

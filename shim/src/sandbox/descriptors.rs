//! Closing every descriptor a process was not meant to have.
//!
//! A runner gets its stdio, control socket, module and log pipe at fixed numbers; anything
//! else it inherits (a descriptor the shim was given without close-on-exec, say) is closed
//! before it reads a byte of the module, and the compile child keeps only its output. A
//! guest that escapes wasm then holds nothing it was not handed on purpose.

use std::os::fd::RawFd;

/// Closes every open descriptor of this process but `keep`.
///
/// `close_range` (Linux 5.9) does it in a few syscalls; older kernels get the descriptors
/// listed from `/proc/self/fd`, so this allocates and must not run between fork and exec of
/// a multi-threaded process.
pub fn close_all_except(keep: &[RawFd]) -> std::io::Result<()> {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    keep.dedup();
    match close_ranges_between(&keep) {
        Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => close_listed(&keep),
        other => other,
    }
}

fn close_ranges_between(keep: &[RawFd]) -> std::io::Result<()> {
    let mut first: u32 = 0;
    for kept in keep.iter().filter_map(|fd| u32::try_from(*fd).ok()) {
        if kept > first {
            close_range(first, kept - 1)?;
        }
        first = kept.saturating_add(1);
    }
    close_range(first, u32::MAX)
}

fn close_range(first: u32, last: u32) -> std::io::Result<()> {
    // SAFETY: close_range only closes descriptors; the caller owns none of them any more
    // (they are the ones it chose not to keep).
    let result = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn close_listed(keep: &[RawFd]) -> std::io::Result<()> {
    let open: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own descriptor is in `open` too, already closed: EBADF is harmless.
    for fd in open.into_iter().filter(|fd| !keep.contains(fd)) {
        // SAFETY: see close_range above.
        unsafe {
            libc::close(fd);
        }
    }
    Ok(())
}

/// Points each of `fds` at /dev/null, so that nothing opened later takes one of those
/// numbers (a log line meant for the log pipe would land in it).
pub fn fill_with_dev_null(fds: &[RawFd]) -> std::io::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")?;
    let opened_at = std::os::fd::AsRawFd::as_raw_fd(&null);
    for fd in fds {
        // SAFETY: dup2 onto a descriptor number this process reserves for /dev/null.
        if unsafe { libc::dup2(opened_at, *fd) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    if fds.contains(&opened_at) {
        // It took one of the reserved numbers itself (the lowest free one): it stays.
        std::mem::forget(null);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsRawFd, IntoRawFd};

    use super::*;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    /// Runs `check` in a forked child (closing descriptors of the test process itself would
    /// break the harness) and returns its exit status.
    fn in_child(check: impl FnOnce() -> i32) -> i32 {
        // SAFETY: the child only runs `check` and _exits; the test does not rely on other
        // threads' state in it.
        match unsafe { libc::fork() } {
            0 => {
                let code = check();
                // SAFETY: _exit only ends the child.
                unsafe { libc::_exit(code) }
            }
            child => {
                let mut status = 0;
                // SAFETY: waits for the child just forked.
                unsafe { libc::waitpid(child, &mut status, 0) };
                libc::WEXITSTATUS(status)
            }
        }
    }

    #[test]
    fn only_the_kept_descriptors_stay_open() {
        let files: Vec<RawFd> = (0..6)
            .map(|_| {
                std::fs::File::open("/proc/self/status")
                    .unwrap()
                    .into_raw_fd()
            })
            .collect();
        let (kept, dropped) = (files[2], files[4]);
        let code = in_child(|| {
            if close_all_except(&[2, kept]).is_err() {
                return 10;
            }
            let open: Vec<RawFd> = (0..1024).filter(|fd| is_open(*fd)).collect();
            if open == vec![2, kept] {
                0
            } else {
                eprintln!("still open: {open:?}");
                11
            }
        });
        assert_eq!(code, 0);
        assert!(
            is_open(dropped),
            "the parent's own descriptors are untouched"
        );
        let listed = in_child(|| match close_listed(&[kept]) {
            Ok(()) if (0..1024).all(|fd| fd == kept || !is_open(fd)) => 0,
            _ => 12,
        });
        assert_eq!(listed, 0);
        for fd in files {
            // SAFETY: the test opened these above and owns them.
            unsafe { libc::close(fd) };
        }
    }

    #[test]
    fn reserved_numbers_point_at_dev_null() {
        let code = in_child(|| {
            let _ = close_all_except(&[]);
            if fill_with_dev_null(&[0, 1, 2, 5]).is_err() {
                return 10;
            }
            let target = std::fs::read_link("/proc/self/fd/5");
            let file = std::fs::File::open("/proc/self/status");
            match (target, file) {
                (Ok(target), Ok(file)) if target.as_os_str() == "/dev/null" => {
                    // The next open takes the first free number, not a reserved one.
                    if file.as_raw_fd() == 3 {
                        0
                    } else {
                        13
                    }
                }
                _ => 14,
            }
        });
        assert_eq!(code, 0);
    }
}

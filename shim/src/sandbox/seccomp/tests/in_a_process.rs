//! The filters installed in a real forked process, checked by the calls it makes.

use super::*;

/// Raw syscall result: Ok(value) or Err(errno), with nothing but the syscall itself.
fn raw(result: libc::c_long) -> Result<libc::c_long, i32> {
    if result == -1 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(result)
    }
}

/// Runs in the forked child: only raw syscalls once the filters are on. Returns 0, or the
/// number of the first check that failed.
fn checks_in_child(filters: &Filters) -> i32 {
    // SAFETY: prctl with plain integers.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return 1;
    }
    if filters.apply().is_err() {
        return 2;
    }
    // SAFETY: getpid has no arguments.
    if !raw(unsafe { libc::syscall(libc::SYS_getpid) }).is_ok_and(|pid| pid > 0) {
        return 3;
    }
    // SAFETY: unshare takes flags only; were it let through, only this child would move.
    if raw(unsafe { libc::syscall(libc::SYS_unshare, libc::CLONE_NEWNS) }) != Err(libc::EPERM) {
        return 4;
    }
    // SAFETY: a null clone_args; the kernel would refuse it with EFAULT/EINVAL.
    if raw(unsafe { libc::syscall(libc::SYS_clone3, 0usize, 0usize) }) != Err(libc::ENOSYS) {
        return 5;
    }
    // CLONE_NEWNS with CLONE_FS is invalid, so even a failing filter creates nothing.
    let flags = (libc::CLONE_NEWNS | libc::CLONE_FS | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: see above; the kernel answers EINVAL for these flags if it sees them.
    if raw(unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) })
        != Err(libc::EPERM)
    {
        return 6;
    }
    // SAFETY: uname writes into the zeroed struct on this stack.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if raw(unsafe { libc::syscall(libc::SYS_uname, &mut name as *mut libc::utsname) })
        != Err(libc::ENOENT)
    {
        return 7;
    }
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY: null pointers everywhere; the kernel would answer EFAULT if it looked.
    if raw(unsafe { libc::syscall(libc::SYS_mount, null, null, null, 0usize, null) })
        != Err(libc::EPERM)
    {
        return 8;
    }
    // SAFETY: an invalid command with a null attribute pointer.
    if raw(unsafe { libc::syscall(libc::SYS_bpf, u32::MAX, 0usize, 0u32) }) != Err(libc::EPERM) {
        return 9;
    }
    // A plain fork through clone still works, and the child is reaped.
    // SAFETY: no CLONE_VM: the grandchild gets a copy of this stack and leaves at once.
    let pid = match raw(unsafe {
        libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    }) {
        // SAFETY: _exit ends the grandchild without running anything of the parent's.
        Ok(0) => unsafe { libc::_exit(0) },
        Ok(pid) => pid,
        Err(_) => return 10,
    };
    let mut status = -1;
    // SAFETY: wait4 writes the status into `status`.
    let reaped = raw(unsafe {
        libc::syscall(
            libc::SYS_wait4,
            pid,
            &mut status as *mut libc::c_int,
            0,
            std::ptr::null_mut::<libc::rusage>(),
        )
    });
    if reaped != Ok(pid) || status != 0 {
        return 11;
    }
    // SAFETY: socket takes integers; the descriptor is closed right away.
    let inet = raw(unsafe { libc::syscall(libc::SYS_socket, libc::AF_INET, libc::SOCK_STREAM, 0) });
    match inet {
        // SAFETY: closing the descriptor just made.
        Ok(fd) => unsafe {
            libc::syscall(libc::SYS_close, fd);
        },
        Err(_) => return 12,
    }
    // SAFETY: socket takes integers.
    if raw(unsafe { libc::syscall(libc::SYS_socket, libc::AF_PACKET, libc::SOCK_RAW, 0) })
        != Err(libc::EPERM)
    {
        return 13;
    }
    // SAFETY: an invalid descriptor: had the filter let it through, EBADF.
    if raw(unsafe { libc::syscall(libc::SYS_ioctl, -1, libc::TIOCSTI, null) }) != Err(libc::EPERM) {
        return 14;
    }
    0
}

#[test]
fn applied_filters_hold_in_a_real_process() {
    let profile = parse_profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2}]}"#,
    );
    let filters = Filters::for_container(Some(&profile)).unwrap();
    // SAFETY: the child makes raw syscalls (and the allocations of `apply`, which glibc
    // keeps usable after fork) and leaves with _exit, never returning into the harness.
    match unsafe { libc::fork() } {
        -1 => panic!("fork: {}", std::io::Error::last_os_error()),
        0 => {
            let code = checks_in_child(&filters);
            // SAFETY: ends the child without running the harness's exit code.
            unsafe { libc::_exit(code) }
        }
        child => {
            let mut status = 0;
            // SAFETY: waits for our own child and writes its status.
            let reaped = unsafe { libc::waitpid(child, &mut status, 0) };
            assert_eq!(reaped, child);
            assert!(
                libc::WIFEXITED(status),
                "the child died of signal {}",
                libc::WTERMSIG(status)
            );
            assert_eq!(libc::WEXITSTATUS(status), 0, "check failed in the child");
        }
    }
}

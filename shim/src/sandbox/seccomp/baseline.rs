//! Wedge's own filter, first on every runner whatever the spec says: an allowlist that
//! RuntimeDefault's capability-free allowlist contains, minus what a confined runner never
//! needs again.

use std::collections::BTreeMap;

use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule,
};

use super::{syscall_number, Native, SeccompError};

/// Syscalls the baseline allows whatever their arguments.
///
/// Each one is in containerd's RuntimeDefault allowlist for a container without
/// capabilities (`contrib/seccomp/seccomp_default.go`), so the baseline is at least as
/// strict as RuntimeDefault by construction. Left out is what a confined runner never needs
/// again: namespaces and mounts, identity changes (the runner already is its user), exec,
/// tracing, kernel keys, modules, BPF, perf, io_uring, userfaultfd, clocks and the rest of
/// the host-administration calls, and file operations WASI has no use for (chown, mknod,
/// xattrs, inotify).
pub(super) const BASELINE_ALLOWED: &[&str] = &[
    // Memory: glibc malloc, wasmtime's linear memories, fiber stacks and copy-on-write
    // images (memfd), and the icache barrier of freshly published code.
    "brk",
    "mmap",
    "munmap",
    "mprotect",
    "madvise",
    "mremap",
    "membarrier",
    "memfd_create",
    // Threads and signals: tokio's workers and blocking pool, wasmtime's trap handlers
    // (which run on an alternate stack), std's thread start-up.
    "futex",
    "futex_waitv",
    "set_robust_list",
    "set_tid_address",
    "rseq",
    "sched_yield",
    "sched_getaffinity",
    "sched_getparam",
    "sched_getscheduler",
    "getcpu",
    "gettid",
    "sigaltstack",
    "rt_sigaction",
    "rt_sigprocmask",
    "rt_sigreturn",
    "rt_sigtimedwait",
    // The kernel restarts a syscall a signal interrupted through this one.
    "restart_syscall",
    // Descriptors and the event loop.
    "read",
    "write",
    "readv",
    "writev",
    "pread64",
    "pwrite64",
    "preadv",
    "pwritev",
    "preadv2",
    "pwritev2",
    "close",
    "close_range",
    "dup",
    "dup3",
    "fcntl",
    "lseek",
    "pipe2",
    "eventfd2",
    "epoll_create1",
    "epoll_ctl",
    "epoll_pwait",
    "epoll_pwait2",
    "ppoll",
    "pselect6",
    "timerfd_create",
    "timerfd_settime",
    "timerfd_gettime",
    "signalfd4",
    // WASI's file system, which cap-std resolves relative to the preopens (openat2 with
    // RESOLVE_BENEATH where the kernel has it).
    "openat",
    "openat2",
    "newfstatat",
    "fstat",
    "statx",
    "statfs",
    "fstatfs",
    "faccessat",
    "faccessat2",
    "getdents64",
    "mkdirat",
    "unlinkat",
    "renameat2",
    "linkat",
    "symlinkat",
    "readlinkat",
    "fchmod",
    "fchmodat",
    "utimensat",
    "ftruncate",
    "fallocate",
    "fsync",
    "fdatasync",
    "fadvise64",
    "getcwd",
    // WASI sockets, wasi:http and name lookup (`socket` and `socketpair` are below, limited
    // to the families these use).
    "bind",
    "listen",
    "accept",
    "accept4",
    "connect",
    "getsockname",
    "getpeername",
    "setsockopt",
    "getsockopt",
    "sendto",
    "recvfrom",
    "sendmsg",
    "recvmsg",
    "sendmmsg",
    "recvmmsg",
    "shutdown",
    // Time, where the vDSO does not answer.
    "clock_gettime",
    "clock_getres",
    "clock_nanosleep",
    "nanosleep",
    "gettimeofday",
    // The process itself (kill, tgkill and prlimit64 are allowed with conditions, below).
    "exit",
    "exit_group",
    "wait4",
    "waitid",
    "getpid",
    "getppid",
    "getuid",
    "geteuid",
    "getgid",
    "getegid",
    "getgroups",
    "getresuid",
    "getresgid",
    "prctl",
    "getrandom",
    "uname",
    "getrlimit",
    "sysinfo",
    "getrusage",
];

/// Like [`BASELINE_ALLOWED`], but only some arches have these: the older forms glibc still
/// calls on x86_64 (poll, epoll_wait, pipe, dup2…), and renameat, which the newest arches
/// dropped for renameat2.
pub(super) const BASELINE_ALLOWED_WHERE_PRESENT: &[&str] = &[
    "arch_prctl",
    "open",
    "stat",
    "lstat",
    "access",
    "pipe",
    "dup2",
    "poll",
    "select",
    "epoll_wait",
    "renameat",
];

/// Namespace flags of clone(2): a runner that could still make namespaces could shed its
/// confinement (RuntimeDefault allows clone only without them, too).
const CLONE_NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// Terminal ioctls that push input into a terminal, the one thing ioctl on a container's
/// tty can do to whoever else reads it. Nothing in the runner pushes input.
const FORBIDDEN_IOCTLS: [u64; 2] = [libc::TIOCSTI, libc::TIOCLINUX];

/// Wedge's baseline: the allowlist (anything else fails with EPERM, as under
/// RuntimeDefault), then a filter that makes clone3 fail with ENOSYS instead, since glibc
/// falls back to clone only on ENOSYS and seccomp cannot see clone3's flags to vet them.
pub(super) fn baseline(native: &Native) -> Result<Vec<BpfProgram>, SeccompError> {
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = BASELINE_ALLOWED
        .iter()
        .chain(BASELINE_ALLOWED_WHERE_PRESENT)
        .filter_map(|name| syscall_number(name))
        .map(|number| (number, Vec::new()))
        .collect();
    // int arguments are compared on their low half, all the kernel reads of them.
    let low_half =
        |index, op, value| SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value);
    // A pid_t names one process when it is positive; 0 and negatives name process groups
    // (which reach past the container's pid namespace to the shim's group) or everyone.
    let one_process = |index| {
        rule(vec![
            low_half(index, SeccompCmpOp::Gt, 0),
            low_half(index, SeccompCmpOp::Lt, 0x8000_0000),
        ])
    };
    let conditional = [
        // How the supervisor forwards signals to the module's process; the runner's own
        // pid namespace already keeps every other process out of reach.
        ("kill", vec![one_process(0)]),
        // raise() and abort(): a thread of this process signalling itself.
        ("tgkill", vec![one_process(0)]),
        // getrlimit/setrlimit of this process; never another's limits.
        (
            "prlimit64",
            vec![rule(vec![low_half(0, SeccompCmpOp::Eq, 0)])],
        ),
        (
            "clone",
            vec![rule(vec![SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(CLONE_NAMESPACE_FLAGS),
                0,
            )])],
        ),
        (
            "socket",
            vec![
                rule(vec![low_half(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)]),
                rule(vec![low_half(0, SeccompCmpOp::Eq, libc::AF_INET as u64)]),
                rule(vec![low_half(0, SeccompCmpOp::Eq, libc::AF_INET6 as u64)]),
                // glibc's getaddrinfo asks the routing table which address families are up.
                rule(vec![
                    low_half(0, SeccompCmpOp::Eq, libc::AF_NETLINK as u64),
                    low_half(2, SeccompCmpOp::Eq, libc::NETLINK_ROUTE as u64),
                ]),
            ],
        ),
        // tokio's signal handling wakes itself through a socketpair.
        (
            "socketpair",
            vec![rule(vec![low_half(
                0,
                SeccompCmpOp::Eq,
                libc::AF_UNIX as u64,
            )])],
        ),
        // FIONBIO, FIOCLEX, TCGETS and friends on stdio and sockets.
        (
            "ioctl",
            vec![rule(
                FORBIDDEN_IOCTLS
                    .iter()
                    .map(|request| low_half(1, SeccompCmpOp::Ne, *request))
                    .collect(),
            )],
        ),
        // Only to install the spec's filters after this one, exactly as `install` does.
        (
            "seccomp",
            vec![rule(vec![
                low_half(
                    0,
                    SeccompCmpOp::Eq,
                    u64::from(libc::SECCOMP_SET_MODE_FILTER),
                ),
                low_half(1, SeccompCmpOp::Eq, libc::SECCOMP_FILTER_FLAG_TSYNC),
            ])],
        ),
    ];
    for (name, rules) in conditional {
        let Some(number) = syscall_number(name) else {
            continue;
        };
        let rules = rules
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| baseline_error(&err))?;
        allowed.insert(number, rules);
    }
    let allowlist = SeccompFilter::new(
        allowed,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        native.target,
    )
    .map_err(|err| baseline_error(&err))?;
    let no_clone3: BTreeMap<i64, Vec<SeccompRule>> = syscall_number("clone3")
        .map(|number| (number, Vec::new()))
        .into_iter()
        .collect();
    let mut programs = vec![BpfProgram::try_from(allowlist).map_err(|err| baseline_error(&err))?];
    if !no_clone3.is_empty() {
        let filter = SeccompFilter::new(
            no_clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            native.target,
        )
        .map_err(|err| baseline_error(&err))?;
        programs.push(BpfProgram::try_from(filter).map_err(|err| baseline_error(&err))?);
    }
    Ok(programs)
}

/// A rule of the baseline: all `conditions` must hold.
fn rule(
    conditions: Vec<Result<SeccompCondition, BackendError>>,
) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(conditions.into_iter().collect::<Result<_, _>>()?)
}

fn baseline_error(err: &BackendError) -> SeccompError {
    SeccompError::Internal(format!(
        "cannot build Wedge's baseline seccomp filter: {err}"
    ))
}

use super::baseline::{BASELINE_ALLOWED, BASELINE_ALLOWED_WHERE_PRESENT};
use super::install::{allows, evaluate, install_call, SyscallData};
use super::*;

fn native() -> Native {
    Native::get().unwrap()
}

fn call(name: &str, args: [u64; 6]) -> SyscallData {
    SyscallData {
        nr: syscall_number(name).unwrap_or_else(|| panic!("{name} is not a syscall here")) as i32,
        arch: native().audit_arch,
        args,
    }
}

fn plain(name: &str) -> SyscallData {
    call(name, [0; 6])
}

/// What the kernel answers with this stack of filters: the most restrictive action,
/// and between equal actions the newest filter's.
fn verdict(programs: &[BpfProgram], data: &SyscallData) -> u32 {
    let rank = |verdict: u32| (verdict & libc::SECCOMP_RET_ACTION_FULL) as i32;
    let mut answer = libc::SECCOMP_RET_ALLOW;
    for program in programs.iter().rev() {
        let this = evaluate(program, data).expect("seccompiler emitted an unknown instruction");
        if rank(this) < rank(answer) {
            answer = this;
        }
    }
    answer
}

fn errno(value: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | value as u32
}

const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

fn parse_profile(json: &str) -> LinuxSeccomp {
    serde_json::from_str(json).unwrap()
}

fn stack_for(profile: Option<&LinuxSeccomp>) -> Vec<BpfProgram> {
    Filters::for_container(profile).unwrap().programs
}

const THREAD_FLAGS: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM
    | libc::CLONE_SETTLS
    | libc::CLONE_PARENT_SETTID
    | libc::CLONE_CHILD_CLEARTID) as u64;

#[test]
fn every_baseline_name_is_a_syscall_here() {
    for name in BASELINE_ALLOWED {
        assert!(syscall_number(name).is_some(), "{name}");
    }
    #[cfg(target_arch = "x86_64")]
    for name in BASELINE_ALLOWED_WHERE_PRESENT {
        assert!(syscall_number(name).is_some(), "{name}");
    }
}

#[test]
fn baseline_allows_what_the_runtime_needs() {
    let baseline = stack_for(None);
    for name in [
        "read",
        "write",
        "openat",
        "openat2",
        "newfstatat",
        "statx",
        "mmap",
        "mprotect",
        "madvise",
        "munmap",
        "membarrier",
        "memfd_create",
        "futex",
        "rseq",
        "set_robust_list",
        "sigaltstack",
        "rt_sigreturn",
        "sched_getaffinity",
        "epoll_ctl",
        "epoll_pwait",
        "eventfd2",
        "accept4",
        "connect",
        "recvfrom",
        "clock_nanosleep",
        "getrandom",
        "getdents64",
        "renameat2",
        "wait4",
        "exit_group",
        "restart_syscall",
    ] {
        assert_eq!(verdict(&baseline, &plain(name)), ALLOW, "{name}");
    }
    #[cfg(target_arch = "x86_64")]
    for name in ["epoll_wait", "poll", "arch_prctl"] {
        assert_eq!(verdict(&baseline, &plain(name)), ALLOW, "{name}");
    }
    let allowed_with = |name, args| verdict(&baseline, &call(name, args)) == ALLOW;
    assert!(allowed_with("clone", [THREAD_FLAGS, 0, 0, 0, 0, 0]));
    assert!(allowed_with("clone", [libc::SIGCHLD as u64, 0, 0, 0, 0, 0]));
    let stream = libc::SOCK_STREAM as u64;
    assert!(allowed_with(
        "socket",
        [libc::AF_INET as u64, stream, 0, 0, 0, 0]
    ));
    assert!(allowed_with(
        "socket",
        [libc::AF_INET6 as u64, stream, 0, 0, 0, 0]
    ));
    assert!(allowed_with(
        "socket",
        [libc::AF_UNIX as u64, stream, 0, 0, 0, 0]
    ));
    let raw = libc::SOCK_RAW as u64;
    assert!(allowed_with(
        "socket",
        [libc::AF_NETLINK as u64, raw, 0, 0, 0, 0]
    ));
    assert!(allowed_with(
        "socketpair",
        [libc::AF_UNIX as u64, stream, 0, 0, 0, 0]
    ));
    assert!(allowed_with("ioctl", [0, libc::FIONBIO, 0, 0, 0, 0]));
    assert!(allowed_with("ioctl", [1, libc::TCGETS, 0, 0, 0, 0]));
    let term = libc::SIGTERM as u64;
    assert!(allowed_with("kill", [1, term, 0, 0, 0, 0]));
    assert!(allowed_with("kill", [4_194_304, term, 0, 0, 0, 0]));
    assert!(allowed_with(
        "tgkill",
        [1, 1, libc::SIGABRT as u64, 0, 0, 0]
    ));
    assert!(allowed_with(
        "prlimit64",
        [0, libc::RLIMIT_NOFILE as u64, 0, 1, 0, 0]
    ));
    // Every filter of the baseline lets the next filter in.
    for program in &baseline {
        assert!(evaluate(program, &install_call(&native())).is_some_and(allows));
    }
}

#[test]
fn signals_and_limits_reach_single_processes_of_the_container_only() {
    let baseline = stack_for(None);
    let denied = |name, args| verdict(&baseline, &call(name, args)) == errno(libc::EPERM);
    let kill = libc::SIGKILL as u64;
    // Process groups and broadcast: 0 (the caller's group, shared with whoever started it),
    // -1 (everything the caller may signal), -pgid; as a 64-bit register or sign-extended.
    for pid in [
        0,
        u64::from(u32::MAX),
        0xffff_ffff_ffff_ffff,
        (-4242_i64) as u64,
    ] {
        assert!(denied("kill", [pid, kill, 0, 0, 0, 0]), "kill({pid:#x})");
        assert!(
            denied("tgkill", [pid, 1, kill, 0, 0, 0]),
            "tgkill({pid:#x})"
        );
    }
    // Another process's limits, e.g. lowering RLIMIT_NOFILE of the shim.
    assert!(denied(
        "prlimit64",
        [1, libc::RLIMIT_NOFILE as u64, 1, 0, 0, 0]
    ));
    assert!(denied(
        "prlimit64",
        [31_337, libc::RLIMIT_NOFILE as u64, 1, 0, 0, 0]
    ));
}

#[test]
fn baseline_denies_what_could_undo_the_confinement() {
    let baseline = stack_for(None);
    for name in [
        "mount",
        "umount2",
        "pivot_root",
        "chroot",
        "unshare",
        "setns",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "personality",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "keyctl",
        "add_key",
        "request_key",
        "kexec_load",
        "init_module",
        "finit_module",
        "delete_module",
        "acct",
        "quotactl",
        "syslog",
        "reboot",
        "swapon",
        "swapoff",
        "sethostname",
        "setdomainname",
        "lookup_dcookie",
        "name_to_handle_at",
        "open_by_handle_at",
        "mknodat",
        "io_uring_setup",
        "io_uring_enter",
        "setuid",
        "setresuid",
        "setgid",
        "setgroups",
        "setfsuid",
        "capset",
        "kcmp",
        "fanotify_init",
        "clock_settime",
        "settimeofday",
        "adjtimex",
        "execve",
        "execveat",
        "fchownat",
        "open_tree",
        "move_mount",
        "fsopen",
        "pidfd_getfd",
    ] {
        assert_eq!(
            verdict(&baseline, &plain(name)),
            errno(libc::EPERM),
            "{name}"
        );
    }
    #[cfg(target_arch = "x86_64")]
    for name in ["iopl", "ioperm", "mknod", "chown", "vhangup"] {
        assert_eq!(
            verdict(&baseline, &plain(name)),
            errno(libc::EPERM),
            "{name}"
        );
    }
    assert_eq!(verdict(&baseline, &plain("clone3")), errno(libc::ENOSYS));
    let denied_with = |name, args| verdict(&baseline, &call(name, args)) == errno(libc::EPERM);
    for namespace in [libc::CLONE_NEWNS, libc::CLONE_NEWUSER, libc::CLONE_NEWNET] {
        let flags = libc::SIGCHLD as u64 | namespace as u64;
        assert!(
            denied_with("clone", [flags, 0, 0, 0, 0, 0]),
            "{namespace:#x}"
        );
    }
    let raw = libc::SOCK_RAW as u64;
    assert!(denied_with(
        "socket",
        [libc::AF_PACKET as u64, raw, 0, 0, 0, 0]
    ));
    assert!(denied_with(
        "socket",
        [libc::AF_VSOCK as u64, 1, 0, 0, 0, 0]
    ));
    let audit = libc::NETLINK_AUDIT as u64;
    assert!(denied_with(
        "socket",
        [libc::AF_NETLINK as u64, raw, audit, 0, 0, 0]
    ));
    let tiocsti = libc::TIOCSTI;
    assert!(denied_with("ioctl", [0, tiocsti, 0, 0, 0, 0]));
    // The kernel reads only the low half of the request; so does the filter.
    assert!(denied_with("ioctl", [0, tiocsti | 1 << 32, 0, 0, 0, 0]));
    assert!(denied_with("ioctl", [0, libc::TIOCLINUX, 0, 0, 0, 0]));
    // seccomp(2) only as `install` calls it.
    assert!(denied_with(
        "seccomp",
        [u64::from(libc::SECCOMP_SET_MODE_STRICT), 0, 0, 0, 0, 0]
    ));
    // Another ABI is killed outright (i386 here on x86_64, arm on aarch64).
    let foreign = SyscallData {
        arch: 0x4000_0003,
        ..plain("getpid")
    };
    assert_eq!(verdict(&baseline, &foreign), libc::SECCOMP_RET_KILL_PROCESS);
    #[cfg(target_arch = "x86_64")]
    {
        // x32 syscalls share the arch value and set bit 30 of the number.
        let x32 = SyscallData {
            nr: plain("getpid").nr | 0x4000_0000,
            ..plain("getpid")
        };
        assert_eq!(verdict(&baseline, &x32), errno(libc::EPERM));
    }
}

#[test]
fn allowlist_profile_stacks_on_the_baseline() {
    // RuntimeDefault's shape: default errno, an allowlist, an errnoRet, an arg rule,
    // names of other arches and kernels.
    let profile = parse_profile(
        r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 13,
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                              "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            "syscalls": [
                {"names": ["read", "write", "exit_group", "seccomp", "fstatat64",
                           "no_such_syscall"],
                 "action": "SCMP_ACT_ALLOW"},
                {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2},
                {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
                {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}
            ]
        }"#,
    );
    let programs = stack_for(Some(&profile));
    // Baseline (2), errno 2, errno 38, default; the rule with the default's own action
    // is redundant.
    assert_eq!(programs.len(), 5);
    assert_eq!(verdict(&programs, &plain("read")), ALLOW);
    assert_eq!(verdict(&programs, &plain("getcwd")), errno(libc::ENOENT));
    assert_eq!(verdict(&programs, &plain("clone3")), errno(libc::ENOSYS));
    assert_eq!(verdict(&programs, &plain("getpid")), errno(libc::EACCES));
    assert_eq!(verdict(&programs, &plain("mkdirat")), errno(libc::EACCES));
    let unix = [libc::AF_UNIX as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
    let inet = [libc::AF_INET as u64, libc::SOCK_STREAM as u64, 0, 0, 0, 0];
    assert_eq!(verdict(&programs, &call("socket", unix)), ALLOW);
    assert_eq!(
        verdict(&programs, &call("socket", inet)),
        errno(libc::EACCES)
    );
    // Denied by both: the profile's errno, since its filter is the newer.
    assert_eq!(verdict(&programs, &plain("mount")), errno(libc::EACCES));
    // The profile allows it, the baseline does not.
    let profile_allows_all_of_mount = profile_with_default_allow(&["mount"]);
    let stacked = stack_for(Some(&profile_allows_all_of_mount));
    assert_eq!(verdict(&stacked, &plain("mount")), errno(libc::EPERM));
}

fn profile_with_default_allow(logged: &[&str]) -> LinuxSeccomp {
    parse_profile(&format!(
        r#"{{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{{"names": {}, "action": "SCMP_ACT_LOG"}}]}}"#,
        serde_json::to_string(logged).unwrap()
    ))
}

#[test]
fn denylist_profile_with_argument_conditions() {
    let profile = parse_profile(
        r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdirat"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["kill"], "action": "SCMP_ACT_KILL_PROCESS",
                 "args": [{"index": 1, "value": 9, "op": "SCMP_CMP_EQ"}]},
                {"names": ["fcntl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
                 "args": [{"index": 1, "value": 4, "op": "SCMP_CMP_GE"},
                          {"index": 2, "value": 2048, "valueTwo": 2048,
                           "op": "SCMP_CMP_MASKED_EQ"}]},
                {"names": ["lseek"], "action": "SCMP_ACT_ERRNO", "errnoRet": 22,
                 "args": [{"index": 2, "value": 0, "op": "SCMP_CMP_EQ"},
                          {"index": 2, "value": 1, "op": "SCMP_CMP_EQ"}]},
                {"names": ["getpid"], "action": "SCMP_ACT_TRAP",
                 "args": [{"index": 0, "value": 1, "valueTwo": 3,
                           "op": "SCMP_CMP_MASKED_EQ"}]}
            ]
        }"#,
    );
    let programs = stack_for(Some(&profile));
    // Baseline (2), errno 1, kill, errno 22; the trap never matches and no default filter.
    assert_eq!(programs.len(), 5);
    assert_eq!(verdict(&programs, &plain("mkdirat")), errno(libc::EPERM));
    assert_eq!(verdict(&programs, &plain("read")), ALLOW);
    assert_eq!(
        verdict(&programs, &call("kill", [1, 9, 0, 0, 0, 0])),
        libc::SECCOMP_RET_KILL_PROCESS
    );
    assert_eq!(
        verdict(&programs, &call("kill", [1, 15, 0, 0, 0, 0])),
        ALLOW
    );
    // Conditions on distinct arguments must all hold…
    assert_eq!(
        verdict(&programs, &call("fcntl", [0, 4, 2048 | 1, 0, 0, 0])),
        errno(libc::EINVAL)
    );
    assert_eq!(
        verdict(&programs, &call("fcntl", [0, 4, 1, 0, 0, 0])),
        ALLOW
    );
    assert_eq!(
        verdict(&programs, &call("fcntl", [0, 3, 2048, 0, 0, 0])),
        ALLOW
    );
    // … and all 64 bits count, as in libseccomp.
    assert_eq!(
        verdict(&programs, &call("fcntl", [0, 1 << 32, 2048, 0, 0, 0])),
        errno(libc::EINVAL)
    );
    // Conditions repeating an argument are alternatives, as runc makes them.
    assert_eq!(
        verdict(&programs, &call("lseek", [0, 0, 0, 0, 0, 0])),
        errno(libc::EINVAL)
    );
    assert_eq!(
        verdict(&programs, &call("lseek", [0, 0, 1, 0, 0, 0])),
        errno(libc::EINVAL)
    );
    assert_eq!(
        verdict(&programs, &call("lseek", [0, 0, 2, 0, 0, 0])),
        ALLOW
    );
    // valueTwo outside the mask never matches in libseccomp.
    assert_eq!(
        verdict(&programs, &call("getpid", [1, 0, 0, 0, 0, 0])),
        ALLOW
    );
    assert_eq!(
        verdict(&programs, &call("getpid", [3, 0, 0, 0, 0, 0])),
        ALLOW
    );
}

#[test]
fn a_profile_that_denies_seccomp_is_installed_last() {
    // No rule for seccomp(2): the default filter denies it, so it must come last.
    let profile = parse_profile(
        r#"{
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [
                {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": 2}
            ]
        }"#,
    );
    let programs = stack_for(Some(&profile));
    let call = install_call(&native());
    let (last, before) = programs.split_last().unwrap();
    assert!(before
        .iter()
        .all(|program| evaluate(program, &call).is_some_and(allows)));
    assert!(!evaluate(last, &call).is_some_and(allows));

    let twice = parse_profile(
        r#"{
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["seccomp"], "action": "SCMP_ACT_ERRNO"},
                {"names": ["seccomp"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]
        }"#,
    );
    let err = Filters::for_container(Some(&twice)).unwrap_err();
    assert!(err.is_invalid_spec());
    assert!(
        err.to_string().starts_with("linux.seccomp.syscalls: "),
        "{err}"
    );
}

#[test]
fn what_cannot_be_honoured_is_refused_by_name() {
    let cases = [
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"]}"#,
            "linux.seccomp.flags: SECCOMP_FILTER_FLAG_LOG is not supported for wasm \
             containers",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "flags": ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW"]}"#,
            "linux.seccomp.flags: SECCOMP_FILTER_FLAG_SPEC_ALLOW",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW",
                "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]}"#,
            "linux.seccomp.flags: SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"}"#,
            "linux.seccomp.listenerPath: ",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "listenerMetadata": "x"}"#,
            "linux.seccomp.listenerMetadata: ",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_NOTIFY"}"#,
            "linux.seccomp.defaultAction: SCMP_ACT_NOTIFY",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["no_such_syscall"], "action": "SCMP_ACT_NOTIFY"}]}"#,
            "linux.seccomp.syscalls[1].action: SCMP_ACT_NOTIFY",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ALLOW",
                 "args": [{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]}]}"#,
            "linux.seccomp.syscalls[0].args[0].index: 6 is not a syscall argument",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
                {"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": 70000}]}"#,
            "linux.seccomp.syscalls[0].errnoRet: 70000 is out of range",
        ),
        (
            r#"{"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 5000}"#,
            "linux.seccomp.defaultErrnoRet: 5000 is out of range",
        ),
    ];
    for (json, message) in cases {
        let err = Filters::for_container(Some(&parse_profile(json))).unwrap_err();
        assert!(err.is_invalid_spec(), "{err}");
        assert!(err.to_string().starts_with(message), "{err} for {json}");
    }
    // Unknown actions and operators never get this far: the spec does not parse.
    assert!(serde_json::from_str::<LinuxSeccomp>(r#"{"defaultAction": "SCMP_ACT_FOO"}"#).is_err());
    assert!(serde_json::from_str::<LinuxSeccomp>(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"],
            "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_XX"}]}]}"#
    )
    .is_err());
}

#[test]
fn a_profile_of_nothing_known_here_is_fine() {
    let profile = parse_profile(
        r#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["fstatat64", "_llseek"], "action": "SCMP_ACT_ERRNO"}]}"#,
    );
    assert_eq!(stack_for(Some(&profile)), stack_for(None));
}

#[test]
fn filters_travel_as_json_and_must_start_with_the_baseline() {
    let profile = profile_with_default_allow(&["uname"]);
    let filters = Filters::for_container(Some(&profile)).unwrap();
    let json = serde_json::to_string(&filters).unwrap();
    assert_eq!(serde_json::from_str::<Filters>(&json).unwrap(), filters);

    // Refused before anything is installed in this (test) process.
    let stray = Filters {
        programs: filters.programs[2..].to_vec(),
    };
    assert!(matches!(stray.apply(), Err(SeccompError::Internal(_))));
}

mod in_a_process;

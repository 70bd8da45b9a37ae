use super::*;
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use oci_spec::runtime::LinuxDeviceCgroupBuilder;

fn spec_rule(
    allow: bool,
    typ: LinuxDeviceType,
    major: Option<i64>,
    minor: Option<i64>,
    access: &str,
) -> LinuxDeviceCgroup {
    let mut builder = LinuxDeviceCgroupBuilder::default()
        .allow(allow)
        .typ(typ)
        .access(access);
    if let Some(major) = major {
        builder = builder.major(major);
    }
    if let Some(minor) = minor {
        builder = builder.minor(minor);
    }
    builder.build().unwrap()
}

const DEFAULT_V1: [(&str, &str); 11] = [
    ("devices.deny", "a *:* rwm"),
    ("devices.allow", "c *:* m"),
    ("devices.allow", "b *:* m"),
    ("devices.allow", "c 1:3 rwm"),
    ("devices.allow", "c 1:5 rwm"),
    ("devices.allow", "c 1:7 rwm"),
    ("devices.allow", "c 1:8 rwm"),
    ("devices.allow", "c 1:9 rwm"),
    ("devices.allow", "c 5:0 rwm"),
    ("devices.allow", "c 5:2 rwm"),
    ("devices.allow", "c 136:* rwm"),
];

fn owned(writes: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    writes
        .iter()
        .map(|(file, line)| (*file, line.to_string()))
        .collect()
}

#[test]
fn default_policy_as_v1_lines() {
    assert_eq!(DevicePolicy::default().v1_writes(), owned(&DEFAULT_V1));
    assert_eq!(
        DevicePolicy::from_spec(&[]).unwrap(),
        DevicePolicy::default()
    );
}

#[test]
fn spec_rules_come_before_the_defaults() {
    let policy = DevicePolicy::from_spec(&[
        spec_rule(false, LinuxDeviceType::A, None, None, "rwm"),
        spec_rule(true, LinuxDeviceType::C, Some(10), Some(200), "rw"),
        spec_rule(true, LinuxDeviceType::A, Some(7), None, "r"),
        spec_rule(false, LinuxDeviceType::B, Some(8), Some(-1), "mw"),
        spec_rule(true, LinuxDeviceType::C, Some(4_000_000_000), Some(0), ""),
    ])
    .unwrap();
    let writes = policy.v1_writes();
    assert_eq!(
        writes[..6],
        owned(&[
            ("devices.deny", "a *:* rwm"),
            ("devices.deny", "a *:* rwm"),
            ("devices.allow", "c 10:200 rw"),
            ("devices.allow", "c 7:* r"),
            ("devices.allow", "b 7:* r"),
            ("devices.deny", "b 8:* wm"),
        ])
    );
    // The empty-access rule grants nothing, so it writes nothing.
    assert_eq!(writes[6..], owned(&DEFAULT_V1[1..]));
    assert_eq!(policy.rules()[4].major, Some(4_000_000_000));
    assert_eq!(policy.rules()[5..], DEFAULT_ALLOWED);
}

#[test]
fn invalid_rules_name_the_field() {
    let cases = [
        (
            spec_rule(true, LinuxDeviceType::U, None, None, "rwm"),
            "invalid linux.resources.devices[1].type \"u\": expected a, b or c",
        ),
        (
            spec_rule(true, LinuxDeviceType::C, Some(1), Some(3), "rwx"),
            "invalid linux.resources.devices[1].access \"rwx\": expected a combination of r, w and m",
        ),
        (
            spec_rule(true, LinuxDeviceType::C, Some(-2), None, "r"),
            "invalid linux.resources.devices[1].major \"-2\"",
        ),
        (
            spec_rule(true, LinuxDeviceType::C, Some(1), Some(1 << 32), "r"),
            "invalid linux.resources.devices[1].minor \"4294967296\"",
        ),
    ];
    for (bad, message) in cases {
        let valid = spec_rule(false, LinuxDeviceType::A, None, None, "rwm");
        let err = DevicePolicy::from_spec(&[valid, bad]).unwrap_err();
        assert!(err.to_string().starts_with(message), "{err}");
    }
}

#[test]
fn v1_writes_every_rule_to_its_file() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["devices.allow", "devices.deny"] {
        std::fs::write(dir.path().join(file), "").unwrap();
    }
    let policy = DevicePolicy::from_spec(&[
        spec_rule(true, LinuxDeviceType::C, Some(10), Some(200), "rwm"),
        spec_rule(false, LinuxDeviceType::C, Some(10), Some(200), "w"),
    ])
    .unwrap();
    policy.apply_v1(dir.path()).unwrap();
    let read = |file: &str| std::fs::read_to_string(dir.path().join(file)).unwrap();
    assert_eq!(read("devices.deny"), "a *:* rwm\nc 10:200 w\n");
    let allowed: Vec<_> = DEFAULT_V1[1..].iter().map(|(_, line)| *line).collect();
    assert_eq!(
        read("devices.allow"),
        format!("c 10:200 rwm\n{}\n", allowed.join("\n"))
    );
}

#[test]
fn v1_reports_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let err = DevicePolicy::default().apply_v1(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(message.contains("devices.deny"), "{message}");
}

/// Runs the program the way the kernel would, for the instructions `bpf_program` emits.
fn run_program(
    program: &[bpf::Insn],
    device_type: u32,
    major: u32,
    minor: u32,
    access: Access,
) -> bool {
    use bpf::{
        ALU32_AND_K, ALU32_MOV_K, ALU32_MOV_X, ALU32_RSH_K, ALU64_MOV_K, CLASS_JMP32, CLASS_MASK,
        JMP_EXIT, JMP_JNE_K, JMP_JNE_X, LDX_MEM_W,
    };
    let ctx = [(u32::from(access.0) << 16) | device_type, major, minor];
    let mut regs = [0u64; 11];
    let mut pc = 0;
    loop {
        let insn = program[pc];
        let (dst, src, imm) = (insn.dst(), insn.src(), insn.imm);
        assert_ne!(
            insn.code & CLASS_MASK,
            CLASS_JMP32,
            "a 32-bit jump needs Linux 5.1"
        );
        pc += 1;
        match insn.code {
            LDX_MEM_W => {
                assert_eq!(src, 1, "only the context is read");
                regs[dst] = u64::from(ctx[insn.off as usize / 4]);
            }
            ALU32_MOV_X => regs[dst] = regs[src] & 0xffff_ffff,
            ALU32_AND_K => regs[dst] = (regs[dst] as u32 & imm as u32).into(),
            ALU32_RSH_K => regs[dst] = (regs[dst] as u32 >> imm).into(),
            ALU64_MOV_K => regs[dst] = imm as i64 as u64,
            ALU32_MOV_K => regs[dst] = u64::from(imm as u32),
            // 64-bit compares: the immediate is sign-extended, as the kernel does.
            JMP_JNE_K => {
                if regs[dst] != imm as i64 as u64 {
                    pc += insn.off as usize;
                }
            }
            JMP_JNE_X => {
                if regs[dst] != regs[src] {
                    pc += insn.off as usize;
                }
            }
            JMP_EXIT => {
                assert!(regs[0] <= 1);
                return regs[0] == 1;
            }
            other => panic!("unexpected opcode {other:#x}"),
        }
    }
}

/// The OCI semantics: the last matching rule decides, over a deny-all.
fn reference_allows(
    policy: &DevicePolicy,
    device_type: DeviceType,
    major: u32,
    minor: u32,
    access: Access,
) -> bool {
    policy
        .rules()
        .iter()
        .rev()
        .find(|rule| {
            (rule.device_type == DeviceType::All || rule.device_type == device_type)
                && rule.major.is_none_or(|m| m == major)
                && rule.minor.is_none_or(|m| m == minor)
                && rule.access.contains(access)
        })
        .is_some_and(|rule| rule.allow)
}

#[test]
fn bpf_program_lets_the_last_matching_rule_decide() {
    let policies = [
        DevicePolicy::default(),
        DevicePolicy::from_spec(&[
            spec_rule(false, LinuxDeviceType::A, None, None, "rwm"),
            spec_rule(true, LinuxDeviceType::C, Some(10), None, "rwm"),
            spec_rule(false, LinuxDeviceType::C, Some(10), Some(183), "w"),
            spec_rule(true, LinuxDeviceType::A, Some(8), None, "r"),
            spec_rule(false, LinuxDeviceType::B, Some(8), Some(1), "r"),
            spec_rule(true, LinuxDeviceType::C, Some(3_000_000_000), Some(1), "rw"),
            spec_rule(true, LinuxDeviceType::C, Some(1), Some(3), ""),
        ])
        .unwrap(),
        DevicePolicy::from_spec(&[
            spec_rule(true, LinuxDeviceType::A, None, None, "rwm"),
            spec_rule(false, LinuxDeviceType::C, Some(1), Some(9), "rwm"),
        ])
        .unwrap(),
    ];
    let mut checked = 0;
    let mut allowed = 0;
    for policy in &policies {
        let program = policy.bpf_program();
        for (device_type, code) in [(DeviceType::Block, 1), (DeviceType::Char, 2)] {
            for major in [0, 1, 5, 7, 8, 10, 136, 3_000_000_000] {
                for minor in [0, 1, 2, 3, 5, 9, 183, 200] {
                    for bits in 1..=7 {
                        let access = Access(bits);
                        let want = reference_allows(policy, device_type, major, minor, access);
                        let got = run_program(&program, code, major, minor, access);
                        assert_eq!(
                            got, want,
                            "{device_type:?} {major}:{minor} {access} in {policy:?}"
                        );
                        checked += 1;
                        allowed += usize::from(got);
                    }
                }
            }
        }
    }
    assert!(allowed > 0 && allowed < checked);
    // Spot checks of what the rules say in words.
    let spec = &policies[1].bpf_program();
    assert!(run_program(spec, 2, 10, 183, Access::READ));
    assert!(!run_program(spec, 2, 10, 183, Access::WRITE));
    assert!(run_program(spec, 2, 10, 200, Access::WRITE));
    assert!(!run_program(spec, 1, 8, 1, Access::READ));
    assert!(run_program(spec, 2, 3_000_000_000, 1, Access(6)));
    assert!(run_program(spec, 1, 99, 0, Access::MKNOD));
    assert!(!run_program(spec, 1, 99, 0, Access::READ));
    let privileged = &policies[2].bpf_program();
    assert!(run_program(privileged, 2, 1, 9, Access::ALL));
    assert!(run_program(privileged, 1, 8, 0, Access::WRITE));
    // An everything-rule ends the program: the rules before it and the fallback are
    // unreachable.
    let deny_all_first =
        DevicePolicy::from_spec(&[spec_rule(false, LinuxDeviceType::A, None, None, "rwm")])
            .unwrap();
    assert_eq!(
        deny_all_first.bpf_program().len(),
        policies[0].bpf_program().len()
    );
}

#[test]
fn bpf_program_for_no_rules_denies() {
    let program = DevicePolicy { rules: Vec::new() }.bpf_program();
    assert!(!run_program(&program, 2, 1, 3, Access::READ));
}

// ----- against the kernel -----

/// A cgroup made for one test and removed when it drops, however the test ends.
struct TestCgroup {
    dir: PathBuf,
}

impl TestCgroup {
    fn create(root: &Path) -> TestCgroup {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "wedge-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap();
        TestCgroup { dir }
    }

    /// Opens a device node from a child process inside the cgroup, and returns what
    /// open(2) said there.
    fn open_inside(&self, node: &Path, flags: libc::c_int) -> Result<(), Errno> {
        let procs = File::options()
            .write(true)
            .open(self.dir.join("cgroup.procs"))
            .unwrap();
        let node = CString::new(node.as_os_str().as_bytes()).unwrap();
        // SAFETY: the child only makes async-signal-safe calls (write, open, _exit) on
        // memory prepared before the fork, so the other test threads' locks cannot
        // bite it.
        match unsafe { libc::fork() } {
            -1 => panic!("fork: {}", io::Error::last_os_error()),
            0 => {
                // SAFETY: see above; "0" moves the writer itself into the cgroup.
                let status = unsafe {
                    if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1 {
                        255
                    } else if libc::open(node.as_ptr(), flags | libc::O_CLOEXEC | libc::O_NONBLOCK)
                        < 0
                    {
                        *libc::__errno_location()
                    } else {
                        0
                    }
                };
                // SAFETY: leaves the child without running the parent's destructors.
                unsafe { libc::_exit(status) }
            }
            pid => {
                let status =
                    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
                match status {
                    nix::sys::wait::WaitStatus::Exited(_, 0) => Ok(()),
                    nix::sys::wait::WaitStatus::Exited(_, 255) => {
                        panic!("child could not join {}", self.dir.display())
                    }
                    nix::sys::wait::WaitStatus::Exited(_, errno) => Err(Errno::from_raw(errno)),
                    other => panic!("child ended with {other:?}"),
                }
            }
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // A reaped child can stay counted in the cgroup for a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while let Err(err) = std::fs::remove_dir(&self.dir) {
            if err.raw_os_error() != Some(libc::EBUSY) || Instant::now() > deadline {
                eprintln!("cannot remove {}: {err}", self.dir.display());
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn filesystem_type(path: &Path) -> Option<nix::sys::statfs::FsType> {
    nix::sys::statfs::statfs(path)
        .ok()
        .map(|fs| fs.filesystem_type())
}

/// The cgroup2 mount where device programs take effect: the hybrid hosts' `unified`,
/// or the root of a pure v2 host.
fn cgroup2_root() -> Option<PathBuf> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: device cgroups need root");
        return None;
    }
    let found = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(PathBuf::from)
        .find(|path| filesystem_type(path) == Some(nix::sys::statfs::CGROUP2_SUPER_MAGIC));
    if found.is_none() {
        eprintln!("skipped: no cgroup2 mount at /sys/fs/cgroup/unified or /sys/fs/cgroup");
    }
    found
}

fn devices_v1_root() -> Option<PathBuf> {
    let root = PathBuf::from("/sys/fs/cgroup/devices");
    let usable = nix::unistd::geteuid().is_root()
        && filesystem_type(&root) == Some(nix::sys::statfs::CGROUP_SUPER_MAGIC)
        && root.join("devices.allow").exists();
    if !usable {
        eprintln!(
            "skipped: needs root and the v1 devices hierarchy at {}",
            root.display()
        );
    }
    usable.then_some(root)
}

/// A tempdir holding a node for char device 10:183, unless this host cannot use device
/// nodes outside /dev (nodev mount) or already refuses this process the device.
fn device_node() -> Option<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::tempdir().unwrap();
    let node = dir.path().join("hwrng");
    nix::sys::stat::mknod(
        &node,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o600),
        nix::sys::stat::makedev(10, 183),
    )
    .unwrap();
    match File::open(&node) {
        Err(err) if matches!(err.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => {
            eprintln!(
                "skipped: this process cannot open device nodes in {}: {err}",
                dir.path().display()
            );
            None
        }
        _ => Some((dir, node)),
    }
}

/// What open(2) says outside any device policy, the answer an allowed access must match.
fn open_unrestricted(node: &Path, flags: libc::c_int) -> Result<(), Errno> {
    nix::fcntl::open(
        node,
        nix::fcntl::OFlag::from_bits_truncate(flags | libc::O_NONBLOCK),
        nix::sys::stat::Mode::empty(),
    )
    .map(drop)
}

/// The default policy and one granting read of 10:183, checked from inside `make`'s
/// cgroups.
fn check_enforcement(make: impl Fn(&DevicePolicy) -> TestCgroup) {
    let Some((_dir, node)) = device_node() else {
        return;
    };
    let default = make(&DevicePolicy::default());
    assert_eq!(
        default.open_inside(Path::new("/dev/null"), libc::O_RDWR),
        Ok(())
    );
    assert_eq!(
        default.open_inside(&node, libc::O_RDONLY),
        Err(Errno::EPERM)
    );
    assert_eq!(
        default.open_inside(&node, libc::O_WRONLY),
        Err(Errno::EPERM)
    );

    let read_only = make(
        &DevicePolicy::from_spec(&[spec_rule(
            true,
            LinuxDeviceType::C,
            Some(10),
            Some(183),
            "r",
        )])
        .unwrap(),
    );
    assert_eq!(
        read_only.open_inside(&node, libc::O_RDONLY),
        open_unrestricted(&node, libc::O_RDONLY)
    );
    assert_eq!(
        read_only.open_inside(&node, libc::O_WRONLY),
        Err(Errno::EPERM)
    );
    assert_eq!(
        read_only.open_inside(Path::new("/dev/zero"), libc::O_RDONLY),
        Ok(())
    );
}

#[test]
fn v2_program_is_enforced_by_the_kernel() {
    let Some(root) = cgroup2_root() else {
        return;
    };
    check_enforcement(|policy| {
        let cgroup = TestCgroup::create(&root);
        policy.apply_v2(&cgroup.dir).unwrap();
        cgroup
    });
}

#[test]
fn v1_rules_are_enforced_by_the_kernel() {
    let Some(root) = devices_v1_root() else {
        return;
    };
    let cgroup = TestCgroup::create(&root);
    DevicePolicy::default().apply_v1(&cgroup.dir).unwrap();
    let listed = std::fs::read_to_string(cgroup.dir.join("devices.list")).unwrap();
    let expected: Vec<_> = DEFAULT_V1[1..].iter().map(|(_, line)| *line).collect();
    assert_eq!(listed, format!("{}\n", expected.join("\n")));
    drop(cgroup);
    check_enforcement(|policy| {
        let cgroup = TestCgroup::create(&root);
        policy.apply_v1(&cgroup.dir).unwrap();
        cgroup
    });
}

#[test]
fn a_refused_program_brings_the_verifier_log() {
    if cgroup2_root().is_none() {
        return;
    }
    let out_of_range_verdict = [bpf::Insn::mov64(bpf::Reg::R0, 2), bpf::Insn::exit()];
    let (err, log) = bpf::load_device_program(&out_of_range_verdict).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL), "{err}");
    assert!(log.contains("R0"), "{log}");
}

#[test]
fn v2_reports_a_missing_cgroup() {
    let err = DevicePolicy::default()
        .apply_v2(Path::new("/nonexistent/wedge-cgroup"))
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/wedge-cgroup"),
        "{err}"
    );
}

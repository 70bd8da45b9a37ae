//! A guest that escapes wasm (a wasmtime or WASI bug) reaches no further than a runc
//! container would: these tests play the escaped guest from the host, with the guest
//! process's own namespaces and credentials, and check what it can reach.

use std::process::Command;

use anyhow::{ensure, Context, Result};
use wedge_e2e::cri::{sh, RUNC_HANDLER, WEDGE_HANDLER};
use wedge_e2e::{cgroups, programs, ContainerSpec, CriNode, Release};

/// The uid both tenants run as: the same uid is what lets one signal the other when nothing
/// but the uid separates them.
const SHARED_UID: i64 = 65532;

/// The pid of `pid` in each pid namespace it is in, outermost first (`NSpid:`).
fn namespaced_pids(pid: i32) -> Result<Vec<i32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("NSpid:"))
        .with_context(|| format!("no NSpid in the status of {pid}"))?;
    Ok(line
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .collect())
}

/// The process of the container that runs the guest: of the processes in the runner's
/// cgroup, the one deepest in pid namespaces (the supervisor the shim watches stays in the
/// node's).
fn guest_process(runner: i32) -> Result<i32> {
    let procs = std::fs::read_to_string(cgroups::dir(runner, "pids")?.join("cgroup.procs"))?;
    let mut deepest = None;
    for pid in procs
        .lines()
        .filter_map(|line| line.trim().parse::<i32>().ok())
    {
        let depth = namespaced_pids(pid)?.len();
        if deepest.is_none_or(|(_, most)| depth > most) {
            deepest = Some((pid, depth));
        }
    }
    deepest
        .map(|(pid, _)| pid)
        .context("no process in the runner's cgroup")
}

/// `kill -0 victim` as `uid`, from the pid namespace of `from` (or this one's).
fn can_signal(from: Option<i32>, uid: i64, victim: i32) -> Result<bool> {
    let (uid, victim) = (uid.to_string(), victim.to_string());
    let mut command = match from {
        Some(from) => {
            let mut nsenter = Command::new("nsenter");
            nsenter.args(["--target", &from.to_string(), "--pid", "--setuid", &uid]);
            nsenter.args(["--setgid", &uid, "--"]);
            nsenter
        }
        None => {
            let mut setpriv = Command::new("setpriv");
            setpriv.args(["--reuid", &uid, "--regid", &uid, "--clear-groups", "--"]);
            setpriv
        }
    };
    let out = command
        .args(["/bin/busybox", "kill", "-0", &victim])
        .output()
        .context("nsenter or setpriv")?;
    Ok(out.status.success())
}

/// ctr's default spec and kubelet's (without `shareProcessNamespace`) ask for a pid
/// namespace per container: the process running the guest is in one, where another
/// tenant's process of the same uid does not exist, let alone take a signal.
#[test]
fn an_escaped_guest_cannot_signal_another_tenant_s_process() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let busybox = node.busybox_image()?;
    let sleeper = node.wasm_image("sleeper", &programs::wat(programs::SLEEP_WAT)?)?;
    let other = node.run_pod("other-tenant", RUNC_HANDLER)?;
    let victim = node.run_container(
        &other,
        &ContainerSpec {
            name: "victim".into(),
            image: busybox,
            command: sh("exec sleep 3000"),
            run_as_user: Some(SHARED_UID),
            run_as_group: Some(SHARED_UID),
            ..Default::default()
        },
    )?;
    let victim_pid = node.task_pid(&victim)?;
    let pod = node.run_pod("escaped-guest", WEDGE_HANDLER)?;
    let wasm = node.run_container(
        &pod,
        &ContainerSpec {
            name: "guest".into(),
            image: sleeper,
            run_as_user: Some(SHARED_UID),
            run_as_group: Some(SHARED_UID),
            ..Default::default()
        },
    )?;
    let guest = guest_process(node.task_pid(&wasm)?)?;
    let levels = namespaced_pids(guest)?;
    ensure!(
        levels.len() == 2 && levels[1] == 1,
        "the guest's process {guest} is not the init of a pid namespace of its own: NSpid {levels:?}"
    );
    // The control: the same uid in the node's pid namespace reaches the victim, so a
    // refusal below is the namespace's doing.
    ensure!(
        can_signal(None, SHARED_UID, victim_pid)?,
        "uid {SHARED_UID} on the node cannot signal the victim: the test proves nothing"
    );
    ensure!(
        !can_signal(Some(guest), SHARED_UID, victim_pid)?,
        "from the guest's pid namespace, uid {SHARED_UID} signalled another tenant's process"
    );
    node.remove_pod(&pod)?;
    node.remove_pod(&other)?;
    node.containerd.assert_clean()
}

/// The guest is the init of its namespace, which the kernel spares every signal it has no
/// handler for: a stop still ends a module that waits in the host at once (SIGTERM: 143), as
/// it does under runc for a program that dies of SIGTERM.
#[test]
fn a_guest_in_its_own_pid_namespace_still_ends_on_sigterm() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let sleeper = node.wasm_image("sleeper", &programs::wat(programs::SLEEP_WAT)?)?;
    let pod = node.run_pod("sigterm", WEDGE_HANDLER)?;
    let wasm = node.run_container(
        &pod,
        &ContainerSpec {
            name: "sleeper".into(),
            image: sleeper,
            ..Default::default()
        },
    )?;
    let started = std::time::Instant::now();
    node.stop_container(&wasm, 30)?;
    let status = node.status(&wasm)?;
    ensure!(
        status.exit_code == 143 && started.elapsed() < std::time::Duration::from_secs(10),
        "stop took {:?}, exit {}",
        started.elapsed(),
        status.exit_code
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// What each descriptor of `pid` refers to (`/proc/PID/fd` links).
fn descriptor_targets(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .map(|target| target.display().to_string())
        .collect()
}

fn is_runner(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|cmd| cmd.starts_with(b"wedge-runner\0"))
}

fn parent_of(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))?
        .trim()
        .parse()
        .ok()
}

/// A compile child at work: a runner process holding the artifact memfd whose parent is a
/// runner too. Its descriptors, read now.
fn compiler_descriptors() -> Option<Vec<String>> {
    let holds_artifact = |pid: i32| {
        descriptor_targets(pid)
            .iter()
            .any(|target| target.starts_with("/memfd:wedge-artifact"))
    };
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_runner(*pid) && holds_artifact(*pid))
        .find(|pid| {
            parent_of(*pid).is_some_and(|parent| is_runner(parent) && holds_artifact(parent))
        })
        .map(descriptor_targets)
}

/// The compiler reads untrusted wasm: it keeps its output and nothing else of the runner's
/// (the control socket to the shim, the log pipe, the container's stdio).
#[test]
fn the_compiler_holds_no_descriptor_but_its_output() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let large = node.wasm_image("large", &programs::large_module(30_000)?)?;
    let pod = node.run_pod("compiler-fds", WEDGE_HANDLER)?;
    let compiling = std::sync::atomic::AtomicBool::new(true);
    let seen = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let mut last = None;
            while compiling.load(std::sync::atomic::Ordering::SeqCst) {
                if let Some(targets) = compiler_descriptors() {
                    last = Some(targets);
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            last
        });
        // CRI's StartContainer is when containerd creates the task, and the module compiles.
        let created = node.run_container(
            &pod,
            &ContainerSpec {
                name: "large".into(),
                image: large,
                ..Default::default()
            },
        );
        compiling.store(false, std::sync::atomic::Ordering::SeqCst);
        created.and_then(|_| {
            watcher
                .join()
                .map_err(|_| anyhow::anyhow!("watcher panicked"))
        })
    })?;
    let seen = seen.context("no compile child was seen at work")?;
    let leaked: Vec<&String> = seen
        .iter()
        .filter(|target| {
            target.starts_with("socket:")
                || target.starts_with("pipe:")
                || target.contains(&node.containerd.dir().display().to_string())
        })
        .collect();
    ensure!(
        leaked.is_empty(),
        "the compile child holds {leaked:?} (all: {seen:?})"
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

//! A wasm container is confined at least as tightly as runc confines a Linux container:
//! devices, every thread's privileges, its own root, seccomp, and hostile entrypoints.
//! Each test drives a private containerd through its CRI plugin, as kubelet does.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::SecurityProfile;
use wedge_e2e::cri::{sh, BUSYBOX, WEDGE_HANDLER};
use wedge_e2e::images::{image_with_special_files, SpecialFile};
use wedge_e2e::{cgroups, components, programs, ContainerSpec, CriNode, Release};

/// Creates a directory; prints what `mkdir` said.
const MKDIR_C: &str = r#"
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

int main(void) {
    if (mkdir("/made-by-wasm", 0755) == 0) puts("mkdir: ok");
    else printf("mkdir: error %s\n", strerror(errno));
    return 0;
}
"#;

/// The character device the VM has (a hardware RNG) and runc's default policy denies.
const HWRNG: (u32, u32) = (10, 183);

/// Pids of every process in the container's cgroup (pids hierarchy).
fn cgroup_pids(runner: i32) -> Result<Vec<i32>> {
    let dir = cgroups::dir(runner, "pids")?;
    let text = std::fs::read_to_string(dir.join("cgroup.procs"))?;
    Ok(text
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect())
}

fn status_field<'a>(status: &'a str, field: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

/// Every thread of every process of the container: no capability in any set,
/// no_new_privs, seccomp filtering, and the container's uid and gid.
fn assert_every_thread_confined(runner: i32, uid: u32, gid: u32) -> Result<usize> {
    let mut threads = 0;
    for pid in cgroup_pids(runner)? {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            let task = task?.path();
            let Ok(status) = std::fs::read_to_string(task.join("status")) else {
                continue;
            };
            let name = status_field(&status, "Name").unwrap_or("?").to_string();
            let what = format!("{} ({name})", task.display());
            for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
                ensure!(
                    status_field(&status, set) == Some("0000000000000000"),
                    "{what}: {set} is {:?}",
                    status_field(&status, set)
                );
            }
            ensure!(
                status_field(&status, "NoNewPrivs") == Some("1"),
                "{what}: NoNewPrivs"
            );
            ensure!(
                status_field(&status, "Seccomp") == Some("2"),
                "{what}: Seccomp"
            );
            let ids = |field| {
                status_field(&status, field)
                    .map(|ids| {
                        ids.split_whitespace()
                            .map(str::to_string)
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default()
            };
            ensure!(
                ids("Uid") == vec![uid.to_string(); 4],
                "{what}: Uid {:?}",
                ids("Uid")
            );
            ensure!(
                ids("Gid") == vec![gid.to_string(); 4],
                "{what}: Gid {:?}",
                ids("Gid")
            );
            threads += 1;
        }
    }
    Ok(threads)
}

/// A wasm container gets runc's device policy (its cgroup allows no more than a runc
/// container's beside it), and a device node shipped in the image cannot be read, from wasm
/// as from a runc sidecar.
#[test]
fn device_nodes_in_an_image_are_refused_as_runc_refuses_them() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let work = node.containerd.dir();
    let probe = programs::compile_c(programs::FILES_C, work, "files")?;
    let busybox = std::fs::read(BUSYBOX)?;
    let (archive, image) = image_with_special_files(
        work,
        "devices",
        &[("/probe.wasm", &probe), ("/bin/busybox", &busybox)],
        &[SpecialFile::CharDevice {
            path: "/hwrng",
            major: HWRNG.0,
            minor: HWRNG.1,
        }],
        &["/probe.wasm", "read", "/hwrng"],
    )?;
    node.import(&archive, &image)?;
    let pod = node.run_pod("devices", WEDGE_HANDLER)?;
    let wasm = node.run_container(
        &pod,
        &ContainerSpec {
            name: "wasm".into(),
            image: image.clone(),
            run_as_user: Some(1000),
            ..Default::default()
        },
    )?;
    let sidecar = node.run_container(
        &pod,
        &ContainerSpec {
            name: "runc".into(),
            image,
            command: sh(
                "if /bin/busybox head -c 16 /hwrng >/dev/null; then echo read-ok; \
                 else echo read-refused; fi; exec /bin/busybox sleep 3600",
            ),
            run_as_user: Some(1000),
            ..Default::default()
        },
    )?;
    node.wait_for_log(&pod, "runc", "read-")?;
    ensure!(
        node.stdout_lines(&pod, "runc")?
            .contains(&"read-refused".to_string()),
        "runc let the sidecar read the device"
    );
    node.wait_exited(&wasm, Duration::from_secs(20))?;
    let lines = node.stdout_lines(&pod, "wasm")?;
    ensure!(
        lines
            .iter()
            .any(|line| line.starts_with("read /hwrng: error")),
        "the wasm container read the device: {lines:?}"
    );

    // The device cgroup: nothing the runc container beside it may not do.
    let sidecar_cgroup = cgroups::dir(node.task_pid(&sidecar)?, "devices")?;
    let runc_list = devices_list(&sidecar_cgroup)?;
    ensure!(!runc_list.contains("a *:* rwm"), "runc: {runc_list:?}");
    // The probe has exited (and its cgroup is gone with its task): a running wasm container
    // of the same pod shows the policy.
    let spinner = node.wasm_image("spinner", &programs::wat(programs::LOOP_WAT)?)?;
    let running = node.run_container(
        &pod,
        &ContainerSpec {
            name: "spinner".into(),
            image: spinner,
            ..Default::default()
        },
    )?;
    let wasm_cgroup = cgroups::dir(node.task_pid(&running)?, "devices")?;
    let wasm_list = devices_list(&wasm_cgroup)?;
    ensure!(
        wasm_list.is_subset(&runc_list) && !wasm_list.is_empty(),
        "wasm devices {wasm_list:?} not within runc's {runc_list:?}"
    );
    ensure!(
        !wasm_list.iter().any(|rule| rule.starts_with("c 10:183")),
        "{wasm_list:?}"
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

fn devices_list(cgroup: &Path) -> Result<BTreeSet<String>> {
    Ok(std::fs::read_to_string(cgroup.join("devices.list"))
        .with_context(|| {
            let siblings: Vec<_> = cgroup
                .parent()
                .and_then(|parent| parent.read_dir().ok())
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.file_name())
                .collect();
            format!("{} (beside: {siblings:?})", cgroup.display())
        })?
        .lines()
        .map(str::to_string)
        .collect())
}

/// From the guest's first instruction, every thread of a wasm container (the module's, the
/// stdin relay's, wasmtime's, the HTTP server's workers, a shared-pid supervisor) has no
/// capability, no_new_privs, seccomp and the container's ids: as root and as a user, with
/// and without stdin.
#[test]
fn every_thread_of_a_wasm_container_is_confined() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let work = node.containerd.dir();
    let echo = node.wasm_image(
        "echo",
        &programs::compile_c(programs::ECHO_C, work, "echo")?,
    )?;
    let spinner = node.wasm_image("spinner", &programs::wat(programs::LOOP_WAT)?)?;
    let http = node.wasm_image("http", &components::http_hello_component()?)?;
    let pod = node.run_pod("threads", WEDGE_HANDLER)?;
    let shared = node.run_pod_sharing_pids("threads-shared", WEDGE_HANDLER)?;
    let cases = [
        (&pod, "root-spinner", spinner.clone(), None, false, vec![]),
        (
            &pod,
            "user-stdin",
            echo.clone(),
            Some((1000, 1001)),
            true,
            vec!["stdin"],
        ),
        (&pod, "root-stdin", echo.clone(), None, true, vec!["stdin"]),
        (&pod, "user-http", http, Some((1000, 1001)), false, vec![]),
        (
            &shared,
            "shared-user-stdin",
            echo,
            Some((1000, 1001)),
            true,
            vec!["stdin"],
        ),
        (&shared, "shared-root", spinner, None, false, vec![]),
    ];
    for (pod, name, image, user, stdin, args) in cases {
        let id = node.run_container(
            pod,
            &ContainerSpec {
                name: name.into(),
                image,
                args: args.iter().map(|arg| arg.to_string()).collect(),
                run_as_user: user.map(|(uid, _)| uid),
                run_as_group: user.map(|(_, gid)| gid),
                stdin,
                ..Default::default()
            },
        )?;
        // Long enough for every thread the runtime starts lazily to be there.
        std::thread::sleep(Duration::from_millis(500));
        let runner = node.task_pid(&id)?;
        let (uid, gid) = user.map_or((0, 0), |(uid, gid)| (uid as u32, gid as u32));
        let threads = assert_every_thread_confined(runner, uid, gid)
            .with_context(|| format!("container {name}"))?;
        if stdin || name.contains("http") {
            ensure!(threads > 1, "{name}: only {threads} thread(s) to look at");
        }
        if name == "shared-user-stdin" {
            // The supervisor killed, the module (another user now) goes with it.
            let processes = cgroup_pids(runner)?;
            ensure!(processes.len() == 2, "supervisor and module: {processes:?}");
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(runner),
                nix::sys::signal::Signal::SIGKILL,
            )?;
            let exited = node.wait_exited(&id, Duration::from_secs(10))?;
            ensure!(exited.exit_code == 137, "exit {}", exited.exit_code);
            // Gone, or a zombie waiting for the pod's init (the tests' pause reaps nothing).
            let deadline = Instant::now() + Duration::from_secs(5);
            for pid in processes {
                while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
                }) {
                    ensure!(
                        Instant::now() < deadline,
                        "process {pid} outlived its supervisor"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }
    node.remove_pod(&pod)?;
    node.remove_pod(&shared)?;
    node.containerd.assert_clean()
}

/// A read-only volume stays read-only to a wasm module. (A recursively read-only one cannot
/// be asked for on handler `wedge`: containerd 2.1 enables that only for runc-type runtimes,
/// and crashes on the request for any other; see the README.)
#[test]
fn a_read_only_volume_refuses_writes() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let volume = tempfile::tempdir_in(node.containerd.dir())?;
    let module = programs::compile_c(programs::FILES_C, node.containerd.dir(), "files")?;
    let files = node.wasm_image("files", &module)?;
    let pod = node.run_pod("read-only", WEDGE_HANDLER)?;
    let id = node.run_container(
        &pod,
        &ContainerSpec {
            name: "writer".into(),
            image: files,
            args: vec!["write".into(), "/data/new.txt".into(), "x".into()],
            mounts: vec![(volume.path().to_path_buf(), "/data".into(), true)],
            ..Default::default()
        },
    )?;
    node.wait_exited(&id, Duration::from_secs(20))?;
    let lines = node.stdout_lines(&pod, "writer")?;
    ensure!(
        lines
            .iter()
            .any(|line| line.starts_with("write /data/new.txt: error")),
        "{lines:?}"
    );
    ensure!(
        !volume.path().join("new.txt").exists(),
        "the file was written"
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// The runner's root is the container's root filesystem, mounted nodev,nosuid,noexec and
/// alone in its mount namespace: the cache, the bundle and the host are out of reach.
#[test]
fn a_wasm_container_sees_only_its_own_root() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let volume = tempfile::tempdir_in(node.containerd.dir())?;
    std::fs::write(volume.path().join("note.txt"), "from the volume\n")?;
    let module = programs::compile_c(programs::FILES_C, node.containerd.dir(), "files")?;
    let files = node.wasm_image("files", &module)?;
    let spinner = node.wasm_image("spinner", &programs::wat(programs::LOOP_WAT)?)?;
    let pod = node.run_pod("own-root", WEDGE_HANDLER)?;
    // A first container fills the cache, and reads a volume through the detached mount.
    let reader = node.run_container(
        &pod,
        &ContainerSpec {
            name: "reader".into(),
            image: files,
            args: vec!["read".into(), "/data/note.txt".into()],
            mounts: vec![(volume.path().to_path_buf(), "/data".into(), true)],
            ..Default::default()
        },
    )?;
    node.wait_exited(&reader, Duration::from_secs(20))?;
    ensure!(
        node.stdout_lines(&pod, "reader")?
            .contains(&"read /data/note.txt: from the volume".to_string()),
        "{:?}",
        node.stdout_lines(&pod, "reader")?
    );
    let id = node.run_container(
        &pod,
        &ContainerSpec {
            name: "spinner".into(),
            image: spinner,
            ..Default::default()
        },
    )?;
    let runner = node.task_pid(&id)?;
    let bundle = node
        .containerd
        .bundles()
        .into_iter()
        .find(|bundle| bundle.ends_with(&id))
        .context("no bundle")?;
    let root = std::fs::metadata(format!("/proc/{runner}/root/"))?;
    let rootfs = std::fs::metadata(bundle.join("rootfs"))?;
    ensure!(
        (root.dev(), root.ino()) == (rootfs.dev(), rootfs.ino()),
        "the runner's root is not the container's rootfs"
    );
    let cache = node.containerd.cache_dir();
    ensure!(cache.read_dir()?.next().is_some(), "the cache is empty");
    for hidden in [
        cache.as_path(),
        bundle.as_path(),
        node.containerd.dir(),
        Path::new("/proc/1"),
    ] {
        let seen = PathBuf::from(format!("/proc/{runner}/root")).join(hidden.strip_prefix("/")?);
        ensure!(
            !seen.exists(),
            "{} is reachable from the runner",
            hidden.display()
        );
    }
    // The root, and kubelet's files bound into it (/etc/hosts, /etc/resolv.conf…); every
    // one nodev,nosuid,noexec. The volume of the first container is nowhere.
    let mounts = std::fs::read_to_string(format!("/proc/{runner}/mountinfo"))?;
    for (index, line) in mounts.lines().enumerate() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (mount_point, options) = (fields[4], fields[5]);
        ensure!(
            (index == 0 && mount_point == "/") || (index > 0 && mount_point.starts_with("/etc/")),
            "the runner sees more than its root and files:\n{mounts}"
        );
        for flag in ["nodev", "nosuid", "noexec"] {
            ensure!(
                options.split(',').any(|option| option == flag),
                "{mount_point} is mounted {options}"
            );
        }
    }
    ensure!(
        mounts.lines().count() > 1,
        "no /etc/hosts in the pod:\n{mounts}"
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// A pod's seccomp profile is honoured on top of Wedge's own filter: RuntimeDefault runs as
/// usual, a Localhost profile changes what the guest's system calls answer, and a profile
/// asking for something the runner cannot do is refused with the field's name.
#[test]
fn seccomp_profiles_are_honoured_or_refused_by_name() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let work = node.containerd.dir();
    let mkdir = node.wasm_image("mkdir", &programs::compile_c(MKDIR_C, work, "mkdir")?)?;
    let profiles = tempfile::tempdir_in(work)?;
    let readonly_mkdir = profiles.path().join("emlink-mkdir.json");
    std::fs::write(
        &readonly_mkdir,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_AARCH64"],
           "syscalls":[{"names":["mkdirat","mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":31}]}"#,
    )?;
    let logging = profiles.path().join("logging.json");
    std::fs::write(
        &logging,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","flags":["SECCOMP_FILTER_FLAG_LOG"]}"#,
    )?;
    let pod = node.run_pod("seccomp", WEDGE_HANDLER)?;
    let run = |name: &str, profile: SecurityProfile| -> Result<Vec<String>> {
        let id = node.run_container(
            &pod,
            &ContainerSpec {
                name: name.into(),
                image: mkdir.clone(),
                seccomp: Some(profile),
                ..Default::default()
            },
        )?;
        node.wait_exited(&id, Duration::from_secs(20))?;
        node.stdout_lines(&pod, name)
    };
    let default = run(
        "runtime-default",
        SecurityProfile {
            profile_type: ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        },
    )?;
    ensure!(default == ["mkdir: ok"], "RuntimeDefault: {default:?}");
    let localhost = |path: &Path| SecurityProfile {
        profile_type: ProfileType::Localhost as i32,
        localhost_ref: path.display().to_string(),
    };
    let custom = run("custom", localhost(&readonly_mkdir))?;
    ensure!(
        // EMLINK: an answer mkdir never gives by itself, and one WASI can carry.
        custom == ["mkdir: error Too many links"],
        "the custom profile: {custom:?}"
    );
    let refused = run("refused", localhost(&logging));
    let Err(err) = refused else {
        bail!("a profile with flags ran: {refused:?}");
    };
    ensure!(
        format!("{err:#}").contains("linux.seccomp.flags"),
        "the refusal does not name the field: {err:#}"
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// An entrypoint that is a FIFO fails the container's start at once, naming the file and its
/// type, while the pod's other containers are served; nothing is left behind.
#[test]
fn a_fifo_entrypoint_fails_fast_and_stalls_nothing() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let work = node.containerd.dir();
    let (archive, fifo_image) = image_with_special_files(
        work,
        "fifo-entrypoint",
        &[],
        &[SpecialFile::Fifo("/app.wasm")],
        &["/app.wasm"],
    )?;
    node.import(&archive, &fifo_image)?;
    let (archive, dir_image) = image_with_special_files(
        work,
        "dir-entrypoint",
        &[],
        &[SpecialFile::Directory("/app.wasm")],
        &["/app.wasm"],
    )?;
    node.import(&archive, &dir_image)?;
    let hello = node.wasm_image("hello", &programs::wat(programs::HELLO_WAT)?)?;
    let pod = node.run_pod("fifo", WEDGE_HANDLER)?;
    let fifo_spec = |name: &str| ContainerSpec {
        name: name.into(),
        image: fifo_image.clone(),
        ..Default::default()
    };
    let refused_as_fifo = |result: Result<()>| -> Result<()> {
        let Err(err) = result else {
            bail!("a FIFO entrypoint started");
        };
        let message = format!("{err:#}");
        ensure!(
            message.contains("/app.wasm") && message.contains("FIFO"),
            "the error does not name the file and its type: {message}"
        );
        Ok(())
    };
    // Alone: the whole StartContainer fails at once. The shim's own part is instant (its unit
    // test holds it to a second); the bound here covers containerd's cleanup too (it runs the
    // shim binary's `delete`), on a machine other tests keep busy: it tells a refusal from
    // the hang it replaces, not a speed.
    let fifo = node.create_container(&pod, &fifo_spec("fifo"))?;
    let started = Instant::now();
    let result = node.start_container(&fifo);
    let elapsed = started.elapsed();
    refused_as_fifo(result)?;
    eprintln!("StartContainer of the FIFO entrypoint failed after {elapsed:?}");
    ensure!(
        elapsed < Duration::from_secs(5),
        "the failure took {elapsed:?}"
    );

    // Beside another container of the pod starting at the same time: neither waits for the
    // other.
    let again = node.create_container(&pod, &fifo_spec("fifo-again"))?;
    let (failed, other) = std::thread::scope(|scope| {
        let failing = scope.spawn(|| node.start_container(&again));
        let other = node.run_container(
            &pod,
            &ContainerSpec {
                name: "hello".into(),
                image: hello,
                ..Default::default()
            },
        );
        (failing.join(), other)
    });
    refused_as_fifo(failed.map_err(|_| anyhow::anyhow!("the start thread panicked"))?)?;
    other?;
    node.wait_for_log(&pod, "hello", "hello")?;

    let dir = node.create_container(
        &pod,
        &ContainerSpec {
            name: "dir".into(),
            image: dir_image,
            ..Default::default()
        },
    )?;
    let Err(err) = node.start_container(&dir) else {
        bail!("a directory entrypoint started");
    };
    ensure!(
        format!("{err:#}").contains("is a directory"),
        "directory entrypoint: {err:#}"
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

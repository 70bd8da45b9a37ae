//! Pods through containerd's CRI plugin, driven as kubelet drives it: runtime handler
//! `wedge` against the `runc` handler on the same containerd.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use k8s_cri::v1::ContainerState;
use wedge_e2e::cri::{sh, RUNC_HANDLER, WEDGE_HANDLER};
use wedge_e2e::{cgroups, images, programs, ContainerSpec, CriNode, Release};

/// What a kubelet observes of a pod with one busybox sidecar: logs, exec, exit status after
/// a stop with a grace period, and a clean node afterwards.
fn native_pod_observations(node: &CriNode, handler: &str) -> Result<Vec<String>> {
    let busybox = node.busybox_image()?;
    let pod = node.run_pod(&format!("native-{handler}"), handler)?;
    let sidecar = node.run_container(
        &pod,
        &ContainerSpec {
            name: "sidecar".into(),
            image: busybox.clone(),
            command: sh(
                "echo started; echo oops >&2; trap 'echo bye; exit 7' TERM; \
                         while true; do sleep 0.1; done",
            ),
            ..Default::default()
        },
    )?;
    let mut seen = Vec::new();
    let status = node.status(&sidecar)?;
    seen.push(format!("state {}", status.state));
    let exec = node.exec_sync(&sidecar, &["/bin/busybox", "sh", "-c", "echo in; exit 3"])?;
    seen.push(format!(
        "exec {} {:?} {:?}",
        exec.exit_code,
        String::from_utf8_lossy(&exec.stdout),
        String::from_utf8_lossy(&exec.stderr)
    ));
    node.stop_container(&sidecar, 5)?;
    let status = node.wait_exited(&sidecar, Duration::from_secs(10))?;
    seen.push(format!("exit {} {}", status.exit_code, status.reason));
    node.wait_for_log(&pod, "sidecar", "bye")?;
    let mut lines = node.log_lines(&pod, "sidecar")?;
    lines.sort();
    seen.push(format!("log {lines:?}"));
    node.remove_container(&sidecar)?;
    node.remove_pod(&pod)?;
    Ok(seen)
}

#[test]
fn a_native_pod_behaves_as_under_runc() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let wedge = native_pod_observations(&node, WEDGE_HANDLER)?;
    node.containerd.assert_clean()?;
    let runc = native_pod_observations(&node, RUNC_HANDLER)?;
    node.containerd.assert_clean()?;
    ensure!(wedge == runc, "wedge: {wedge:#?}\nrunc: {runc:#?}");
    ensure!(
        wedge[0] == format!("state {}", ContainerState::ContainerRunning as i32),
        "{wedge:?}"
    );
    Ok(())
}

/// A container with `tty: true` sees a terminal on its stdio and logs through it, under
/// `wedge` as under `runc`.
#[test]
fn a_native_container_gets_a_terminal_as_under_runc() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let busybox = node.busybox_image()?;
    let mut seen = Vec::new();
    for handler in [WEDGE_HANDLER, RUNC_HANDLER] {
        let pod = node.run_pod(&format!("tty-{handler}"), handler)?;
        let id = node.run_container(
            &pod,
            &ContainerSpec {
                name: "tty".into(),
                image: busybox.clone(),
                command: sh("[ -t 0 ] && [ -t 1 ] && echo terminal; tty; exit 4"),
                tty: true,
                ..Default::default()
            },
        )?;
        let status = node.wait_exited(&id, Duration::from_secs(20))?;
        // containerd writes the CRI log behind the exit by a moment.
        node.wait_for_log(&pod, "tty", "/dev/pts/")?;
        let lines = node.stdout_lines(&pod, "tty")?;
        seen.push((status.exit_code, lines));
        node.remove_pod(&pod)?;
    }
    node.containerd.assert_clean()?;
    ensure!(
        seen[0] == seen[1],
        "wedge: {:?}\nrunc: {:?}",
        seen[0],
        seen[1]
    );
    ensure!(
        seen[0].0 == 4 && seen[0].1.iter().any(|line| line.trim() == "terminal"),
        "{:?}",
        seen[0]
    );
    Ok(())
}

#[test]
fn a_wasm_container_logs_and_exits_in_a_pod() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let module = programs::compile_c(programs::ECHO_C, node.containerd.dir(), "echo")?;
    let image = node.wasm_image("echo", &module)?;
    let pod = node.run_pod("wasm-echo", WEDGE_HANDLER)?;
    let id = node.run_container(
        &pod,
        &ContainerSpec {
            name: "echo".into(),
            image,
            args: vec!["hello".into(), "pod".into()],
            ..Default::default()
        },
    )?;
    let status = node.wait_exited(&id, Duration::from_secs(20))?;
    ensure!(
        status.exit_code == 0,
        "exit {} {} {}",
        status.exit_code,
        status.reason,
        status.message
    );
    let lines = node.log_lines(&pod, "echo")?;
    for expected in [
        ("stdout", "arg[1]=hello"),
        ("stdout", "arg[2]=pod"),
        ("stderr", "to stderr"),
    ] {
        ensure!(
            lines
                .iter()
                .any(|(stream, text)| (stream.as_str(), text.as_str()) == expected),
            "{expected:?} not in the CRI log: {lines:?}"
        );
    }
    node.remove_container(&id)?;
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

fn wait_for_file(path: &Path) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        ensure!(
            std::time::Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A wasm container and a busybox sidecar exchange files through an emptyDir; a read-only
/// volume stays read-only; nothing outside the volumes is reachable through `..` or a
/// symlink; the module runs as the pod's user.
#[test]
fn wasm_and_a_sidecar_share_an_emptydir() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let node = CriNode::start(Release::under_test())?;
    let work = node.containerd.dir().join("volumes");
    let empty_dir = work.join("empty-dir");
    let config = work.join("config");
    std::fs::create_dir_all(&empty_dir)?;
    std::fs::create_dir_all(empty_dir.join("root-only"))?;
    std::fs::create_dir_all(&config)?;
    // As kubelet makes an emptyDir: writable by any user of the pod.
    std::fs::set_permissions(&empty_dir, std::fs::Permissions::from_mode(0o777))?;
    std::fs::write(config.join("setting"), "blue\n")?;
    let secret = work.join("secret");
    std::fs::write(&secret, "host secret\n")?;

    let busybox = node.busybox_image()?;
    let module = programs::compile_c(programs::FILES_C, node.containerd.dir(), "files")?;
    let files = node.wasm_image("files", &module)?;
    let pod = node.run_pod("shared", WEDGE_HANDLER)?;
    let sidecar = node.run_container(
        &pod,
        &ContainerSpec {
            name: "sidecar".into(),
            image: busybox,
            command: sh(&format!(
                "echo from-sidecar > /data/from-sidecar; ln -s {} /data/escape; \
                 while true; do sleep 0.1; done",
                secret.display()
            )),
            mounts: vec![(empty_dir.clone(), "/data".into(), false)],
            ..Default::default()
        },
    )?;
    wait_for_file(&empty_dir.join("escape"))?;
    let wasm = node.run_container(
        &pod,
        &ContainerSpec {
            name: "files".into(),
            image: files,
            args: [
                "read /data/from-sidecar",
                "write /data/from-wasm hello-from-wasm",
                "read /config/setting",
                "write /config/setting red",
                "read /data/escape",
                "read /data/../secret",
                "read /config/../volumes/secret",
                "write /data/root-only/x no",
            ]
            .iter()
            .flat_map(|step| step.split(' '))
            .map(str::to_string)
            .collect(),
            mounts: vec![
                (empty_dir.clone(), "/data".into(), false),
                (config.clone(), "/config".into(), true),
            ],
            run_as_user: Some(1000),
            ..Default::default()
        },
    )?;
    let status = node.wait_exited(&wasm, Duration::from_secs(20))?;
    let lines = node.stdout_lines(&pod, "files")?;
    ensure!(
        status.exit_code == 0,
        "exit {}: {lines:?}",
        status.exit_code
    );
    let expect = |prefix: &str, wanted: &str| -> Result<()> {
        let line = lines
            .iter()
            .find(|line| line.starts_with(prefix))
            .ok_or_else(|| anyhow::anyhow!("no {prefix:?} line in {lines:?}"))?;
        ensure!(line.contains(wanted), "{line:?} should say {wanted:?}");
        Ok(())
    };
    expect("read /data/from-sidecar:", "from-sidecar")?;
    expect("write /data/from-wasm:", "ok")?;
    expect("read /config/setting:", "blue")?;
    expect("write /config/setting:", "error")?;
    expect("read /data/escape:", "error")?;
    expect("read /data/../secret:", "error")?;
    expect("read /config/../volumes/secret:", "error")?;
    expect("write /data/root-only/x:", "Permission denied")?;
    ensure!(
        !lines.iter().any(|line| line.contains("host secret")),
        "{lines:?}"
    );
    ensure!(std::fs::read_to_string(config.join("setting"))? == "blue\n");

    let exec = node.exec_sync(&sidecar, &["/bin/busybox", "cat", "/data/from-wasm"])?;
    ensure!(
        exec.exit_code == 0 && exec.stdout == b"hello-from-wasm\n",
        "exec: {exec:?}"
    );
    node.stop_container(&sidecar, 1)?;
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// The runner of a wasm container is in the pod's network namespace, in its own cgroup,
/// without capabilities and with no_new_privs; Stats reports its CPU and memory; a stop
/// ends a spinning module at once while a sidecar that ignores SIGTERM is killed after its
/// grace period.
#[test]
fn a_wasm_container_is_sandboxed_measured_and_stopped() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let busybox = node.busybox_image()?;
    let spinner = node.wasm_image("spinner", &programs::wat(programs::LOOP_WAT)?)?;
    let pod = node.run_pod("sandboxed", WEDGE_HANDLER)?;
    let sidecar = node.run_container(
        &pod,
        &ContainerSpec {
            name: "stubborn".into(),
            image: busybox,
            command: sh("trap '' TERM; while true; do sleep 0.1; done"),
            ..Default::default()
        },
    )?;
    let wasm = node.run_container(
        &pod,
        &ContainerSpec {
            name: "spinner".into(),
            image: spinner,
            memory_limit: Some(128 << 20),
            ..Default::default()
        },
    )?;
    let runner = node.task_pid(&wasm)?;
    let sidecar_pid = node.task_pid(&sidecar)?;
    let net = |pid: i32| std::fs::read_link(format!("/proc/{pid}/ns/net"));
    ensure!(
        net(runner)? == net(sidecar_pid)?,
        "not in the pod's network"
    );
    ensure!(net(runner)? != std::fs::read_link("/proc/self/ns/net")?);
    let status = std::fs::read_to_string(format!("/proc/{runner}/status"))?;
    for wanted in [
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "NoNewPrivs:\t1",
    ] {
        ensure!(status.contains(wanted), "{wanted:?} not in\n{status}");
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{runner}/cgroup"))?;
    let memory_cgroup = cgroups
        .lines()
        .find_map(|line| {
            line.strip_suffix(&wasm)
                .and_then(|rest| rest.split_once(":memory:"))
        })
        .map(|(_, parent)| parent.to_string())
        .ok_or_else(|| anyhow::anyhow!("runner not in its memory cgroup:\n{cgroups}"))?;
    let limit_file = format!("/sys/fs/cgroup/memory{memory_cgroup}{wasm}/memory.limit_in_bytes");
    ensure!(std::fs::read_to_string(&limit_file)?.trim() == (128 << 20).to_string());

    std::thread::sleep(Duration::from_millis(300));
    let stats = node.stats(&wasm)?;
    let cpu = stats
        .cpu
        .and_then(|cpu| cpu.usage_core_nano_seconds)
        .map(|usage| usage.value)
        .unwrap_or(0);
    let memory = stats
        .memory
        .and_then(|memory| memory.working_set_bytes)
        .map(|bytes| bytes.value)
        .unwrap_or(0);
    // Loose on purpose: another test may share the cores.
    ensure!(cpu > 20_000_000, "a spinning module used {cpu} ns of CPU");
    ensure!(memory > 0, "working set {memory}");

    node.update_memory_limit(&wasm, 256 << 20)?;
    ensure!(std::fs::read_to_string(&limit_file)?.trim() == (256 << 20).to_string());

    // One shim serves the whole pod: pause, sidecar and wasm container.
    let shims: Vec<_> = node
        .containerd
        .container_processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("containerd-shim-wedge-v1"))
        .collect();
    ensure!(shims.len() == 1, "shims of one pod: {shims:?}");

    // The native sidecar is measured and updated too (runc's cgroup, runc update).
    let sidecar_stats = node.stats(&sidecar)?;
    let sidecar_memory = sidecar_stats
        .memory
        .and_then(|memory| memory.working_set_bytes)
        .map(|bytes| bytes.value)
        .unwrap_or(0);
    ensure!(sidecar_memory > 0, "sidecar working set {sidecar_memory}");
    node.update_memory_limit(&sidecar, 96 << 20)?;
    let sidecar_limit =
        format!("/sys/fs/cgroup/memory{memory_cgroup}{sidecar}/memory.limit_in_bytes");
    ensure!(std::fs::read_to_string(&sidecar_limit)?.trim() == (96 << 20).to_string());

    let started = std::time::Instant::now();
    node.stop_container(&wasm, 30)?;
    let stopped = node.status(&wasm)?;
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "SIGTERM took {:?}",
        started.elapsed()
    );
    ensure!(stopped.exit_code == 143, "wasm exit {}", stopped.exit_code);

    let started = std::time::Instant::now();
    node.stop_container(&sidecar, 2)?;
    let stopped = node.status(&sidecar)?;
    ensure!(
        started.elapsed() >= Duration::from_secs(2),
        "grace period not honoured"
    );
    ensure!(
        stopped.exit_code == 137,
        "sidecar exit {}",
        stopped.exit_code
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// The memory limit reaches inside wasm: a program growing its heap up to it sees malloc
/// fail and handles it; memories that together exceed it are an OOM kill, reported as
/// kubelet expects. A native container's OOM reads the same under `wedge` as under `runc`.
#[test]
fn memory_limits_and_oom_kills() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let module = programs::compile_c(programs::ALLOCATE_C, node.containerd.dir(), "allocate")?;
    let allocate = node.wasm_image("allocate", &module)?;
    let two_memories = node.wasm_image("memories", &programs::wat(programs::TWO_MEMORIES_WAT)?)?;
    let busybox = node.busybox_image()?;
    // Two memories need the multi-memory proposal, which the tests' engine config lets a pod
    // turn on.
    let pod = node.run_pod_annotated(
        "memory",
        WEDGE_HANDLER,
        &[("wedge.dev/features", "multi-memory")],
    )?;
    let limited = |name: &str, image: &str, args: &[&str]| ContainerSpec {
        name: name.into(),
        image: image.to_string(),
        args: args.iter().map(|arg| arg.to_string()).collect(),
        memory_limit: Some(64 << 20),
        ..Default::default()
    };
    let greedy = node.run_container(&pod, &limited("greedy", &allocate, &["1", "0"]))?;
    let status = node.wait_exited(&greedy, Duration::from_secs(20))?;
    let lines = node.stdout_lines(&pod, "greedy")?;
    ensure!(
        status.exit_code == 3,
        "exit {}: {lines:?}",
        status.exit_code
    );
    ensure!(
        lines
            .iter()
            .any(|line| line.contains("allocation of 1 MiB refused after")),
        "{lines:?}"
    );
    let fits = node.run_container(&pod, &limited("fits", &allocate, &["1", "16"]))?;
    let status = node.wait_exited(&fits, Duration::from_secs(20))?;
    ensure!(
        status.exit_code == 0,
        "16 MiB in a 64 MiB container: {}",
        status.exit_code
    );

    let oom = node.run_container(&pod, &limited("memories", &two_memories, &[]))?;
    let status = node.wait_exited(&oom, Duration::from_secs(20))?;
    ensure!(
        (status.exit_code, status.reason.as_str()) == (137, "OOMKilled"),
        "two memories: exit {} reason {:?}; shim log: {}",
        status.exit_code,
        status.reason,
        node.containerd
            .log()
            .lines()
            .filter(|line| line.contains("OOM") || line.contains("oom"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    node.remove_pod(&pod)?;

    let mut native = Vec::new();
    for handler in [WEDGE_HANDLER, RUNC_HANDLER] {
        let pod = node.run_pod(&format!("native-oom-{handler}"), handler)?;
        let id = node.run_container(
            &pod,
            &ContainerSpec {
                name: "greedy".into(),
                image: busybox.clone(),
                command: sh("a=xxxxxxxx; while true; do a=\"$a$a\"; done"),
                memory_limit: Some(32 << 20),
                ..Default::default()
            },
        )?;
        let status = node.wait_exited(&id, Duration::from_secs(30))?;
        native.push((handler, status.exit_code, status.reason));
        node.remove_pod(&pod)?;
    }
    ensure!(
        native[0].1 == 137
            && native[0].2 == "OOMKilled"
            && native[0].1 == native[1].1
            && native[0].2 == native[1].2,
        "{native:?}"
    );
    node.containerd.assert_clean()
}

/// A CNCF wasm artifact (config `application/vnd.wasm.config.v0+json`, one
/// `application/wasm` layer holding a component) pulled from a registry runs as a pod's
/// container: the form `ctr run` refuses, CRI takes.
#[test]
fn a_cncf_wasm_artifact_runs_through_cri() -> Result<()> {
    let registry = wedge_e2e::Registry::start()?;
    let node = CriNode::start(Release::under_test().at_least(Release::V1_7))?;
    let work = node.containerd.dir().join("artifact");
    std::fs::create_dir_all(&work)?;
    let module = programs::compile_c(programs::STATUS_C, &work, "status")?;
    let component = programs::componentize(&module)?;
    let (archive, _) = images::built_image(
        &work,
        "artifact",
        &component,
        &["--artifact", "--env", "WHO=artifact"],
    )?;
    let remote = format!("{}/wedge/artifact:v1", registry.address);
    images::push(&archive, &remote)?;
    node.containerd.ctr_ok(&[
        "--namespace",
        "k8s.io",
        "images",
        "pull",
        "--plain-http",
        &remote,
    ])?;
    node.wait_for_image(&remote)?;
    let pod = node.run_pod("artifact", WEDGE_HANDLER)?;
    let id = node.run_container(
        &pod,
        &ContainerSpec {
            name: "artifact".into(),
            image: remote,
            ..Default::default()
        },
    )?;
    let status = node.wait_exited(&id, Duration::from_secs(20))?;
    let lines = node.stdout_lines(&pod, "artifact")?;
    ensure!(
        status.exit_code == 0,
        "exit {}: {lines:?}",
        status.exit_code
    );
    ensure!(lines.iter().any(|line| line == "hi artifact"), "{lines:?}");
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// A module whose loading needs more memory than the container may use: the kernel kills
/// the runner (or its compiler) inside the container's cgroup, and StartContainer says so
/// (resource exhausted, with the limit) instead of "exited while loading the module";
/// nothing is left.
#[test]
fn a_module_too_big_to_compile_within_the_limit_says_so() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let large = node.wasm_image("large", &programs::large_module(30_000)?)?;
    let pod = node.run_pod("tight", WEDGE_HANDLER)?;
    let limit: i64 = 24 << 20;
    // CRI's CreateContainer only records the container; the shim's Create (and so the
    // compile) runs at StartContainer.
    let id = node.create_container(
        &pod,
        &ContainerSpec {
            name: "large".into(),
            image: large,
            memory_limit: Some(limit),
            ..Default::default()
        },
    )?;
    let message = match node.start_container(&id) {
        Ok(()) => anyhow::bail!("started {id} although loading needs more than {limit} bytes"),
        Err(err) => format!("{err:#}"),
    };
    ensure!(
        message.contains("ran out of memory while its module was loaded")
            && message.contains(&limit.to_string()),
        "{message}"
    );
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// In a pod sharing one pid namespace, a container's children outlive its init (the pause
/// process inherits them), so the shim kills them when the init ends, as runc's own shim
/// does: otherwise they live on and hold the container's stdout, which containerd 1.7 and 2
/// wait on before they finish the stop (critest's port-forward spec hung on it).
#[test]
fn a_stopped_container_in_a_shared_pid_namespace_takes_its_children_along() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let busybox = node.busybox_image()?;
    for (handler, marker) in [(WEDGE_HANDLER, "7331"), (RUNC_HANDLER, "7332")] {
        let pod = node.run_pod_sharing_pids(&format!("orphans-{handler}"), handler)?;
        let id = node.run_container(
            &pod,
            &ContainerSpec {
                name: "parent".into(),
                image: busybox.clone(),
                command: sh(&format!("sleep {marker} & echo started; exec sleep 2000")),
                ..Default::default()
            },
        )?;
        node.wait_for_log(&pod, "parent", "started")?;
        // The shell echoes before its background child has necessarily exec'd `sleep`.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while processes_running(&["sleep", marker]).is_empty() {
            ensure!(
                std::time::Instant::now() < deadline,
                "{handler}: the child did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node.stop_container_within(&id, 0, Duration::from_secs(30))?;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !processes_running(&["sleep", marker]).is_empty() {
            ensure!(
                std::time::Instant::now() < deadline,
                "{handler}: the container's child outlived its stop: {:?}",
                processes_running(&["sleep", marker])
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        node.remove_pod(&pod)?;
    }
    node.containerd.assert_clean()
}

/// Pids whose command line is exactly `args`.
fn processes_running(args: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = args
        .iter()
        .flat_map(|arg| [arg.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmd| cmd == wanted))
        .collect()
}

/// With `shareProcessNamespace: true` the runner is a process of the pod's pid namespace:
/// a sidecar sees it, and a stop still ends the module at once.
#[test]
fn a_wasm_container_joins_a_shared_pid_namespace() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let busybox = node.busybox_image()?;
    let spinner = node.wasm_image("spinner", &programs::wat(programs::LOOP_WAT)?)?;
    let pod = node.run_pod_sharing_pids("shared-pids", WEDGE_HANDLER)?;
    let second_spinner = spinner.clone();
    let sidecar = node.run_container(
        &pod,
        &ContainerSpec {
            name: "sidecar".into(),
            image: busybox,
            command: sh("while true; do sleep 0.1; done"),
            ..Default::default()
        },
    )?;
    let wasm = node.run_container(
        &pod,
        &ContainerSpec {
            name: "spinner".into(),
            image: spinner,
            ..Default::default()
        },
    )?;
    let ps = |what: &str| -> Result<String> {
        let out = node.exec_sync(&sidecar, &["/bin/busybox", "ps", "-o", "pid,args"])?;
        ensure!(out.exit_code == 0, "{what}: ps failed: {out:?}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let listing = ps("running")?;
    ensure!(
        listing
            .lines()
            .any(|line| line.contains("wedge-runner") && line.contains(&wasm)),
        "the sidecar does not see the runner:\n{listing}"
    );
    let started = std::time::Instant::now();
    node.stop_container(&wasm, 30)?;
    let stopped = node.status(&wasm)?;
    ensure!(
        started.elapsed() < Duration::from_secs(10) && stopped.exit_code == 143,
        "stop took {:?}, exit {}",
        started.elapsed(),
        stopped.exit_code
    );
    let listing = ps("stopped")?;
    ensure!(
        !listing.contains("wedge-runner"),
        "runner still there:\n{listing}"
    );

    // No grace period: SIGKILL goes to the runner the shim watches; the module's process
    // in the pod's namespace dies with it.
    let killed = node.run_container(
        &pod,
        &ContainerSpec {
            name: "killed".into(),
            image: second_spinner,
            ..Default::default()
        },
    )?;
    ensure!(ps("running again")?.contains(&killed));
    node.stop_container(&killed, 0)?;
    let stopped = node.status(&killed)?;
    ensure!(stopped.exit_code == 137, "exit {}", stopped.exit_code);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while ps("killed")?.contains("wedge-runner") {
        ensure!(
            std::time::Instant::now() < deadline,
            "the module outlived its runner"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

/// critest's pods on containerd 1.6/1.7: a cgroup parent of the systemd form (`/test.slice`)
/// on a node whose cgroup driver is cgroupfs (no systemd as PID 1 here). containerd names
/// the cgroups `test.slice:cri-containerd:<id>`; runc's cgroupfs manager takes that path
/// from its own cgroup, and the wasm container's cgroup sits beside the runc ones.
#[test]
fn a_systemd_form_cgroup_parent_follows_the_cgroupfs_driver_as_runc_does() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let busybox = node.busybox_image()?;
    let spinner = node.wasm_image("spinner", &programs::wat(programs::LOOP_WAT)?)?;
    // Unique per test run: the directories land beside the shim's own cgroup.
    let slice = format!(
        "wedgetest{}.slice",
        node.containerd
            .dir()
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default()
            .replace(['-', '.'], "")
    );
    let pod = node.run_pod_in_cgroup("slice-parent", WEDGE_HANDLER, &format!("/{slice}"))?;
    let sidecar = node.run_container(
        &pod,
        &ContainerSpec {
            name: "sidecar".into(),
            image: busybox,
            command: sh("exec /bin/busybox sleep 3600"),
            ..Default::default()
        },
    )?;
    let wasm = node.run_container(
        &pod,
        &ContainerSpec {
            name: "wasm".into(),
            image: spinner,
            memory_limit: Some(64 << 20),
            ..Default::default()
        },
    )?;
    // In every hierarchy: the shim's own cgroup can differ between them (here the memory
    // one does), and runc anchors a relative path in each.
    let (runner, sidecar_pid) = (node.task_pid(&wasm)?, node.task_pid(&sidecar)?);
    for controller in ["memory", "cpu", "pids", "freezer", "devices"] {
        let wasm_cgroup = cgroups::of(runner, controller)?;
        let sidecar_cgroup = cgroups::of(sidecar_pid, controller)?;
        ensure!(
            wasm_cgroup.file_name() == Some(format!("{slice}:cri-containerd:{wasm}").as_ref()),
            "wasm {controller} cgroup {}",
            wasm_cgroup.display()
        );
        ensure!(
            wasm_cgroup.parent() == sidecar_cgroup.parent(),
            "{controller}: wasm {} and runc {} are not siblings",
            wasm_cgroup.display(),
            sidecar_cgroup.display()
        );
    }
    let wasm_dir = cgroups::dir(runner, "memory")?;
    let sidecar_dir = cgroups::dir(sidecar_pid, "memory")?;
    ensure!(
        std::fs::read_to_string(wasm_dir.join("memory.limit_in_bytes"))?.trim()
            == (64 << 20).to_string()
    );
    // Stats read every hierarchy, of the runc sidecar too (critest's "listing container
    // stats").
    for id in [&wasm, &sidecar] {
        let stats = node.stats(id)?;
        ensure!(
            stats
                .memory
                .and_then(|memory| memory.working_set_bytes)
                .is_some_and(|bytes| bytes.value > 0),
            "no memory stats for {id}"
        );
        ensure!(
            stats
                .cpu
                .and_then(|cpu| cpu.usage_core_nano_seconds)
                .is_some(),
            "no cpu stats for {id}"
        );
    }
    node.remove_pod(&pod)?;
    for dir in [&wasm_dir, &sidecar_dir] {
        ensure!(!dir.exists(), "{} left behind", dir.display());
    }
    node.containerd.assert_clean()
}

/// kubelet's runtime-request-timeout reaches the shim as the request's deadline, and ttrpc
/// drops a request whose deadline passed. A Create still compiling then (a large module under
/// a tight CPU quota) must run to its end and be undone: the pod's shim lives on (the sandbox
/// is in it), so nobody else would remove the cgroup, the mount or the runner.
#[test]
fn a_start_whose_deadline_passes_mid_compile_leaves_nothing() -> Result<()> {
    let node = CriNode::start(Release::under_test())?;
    let large = node.wasm_image("large", &programs::large_module(30_000)?)?;
    let pod = node.run_pod("deadline", WEDGE_HANDLER)?;
    let id = node.create_container(
        &pod,
        &ContainerSpec {
            name: "large".into(),
            image: large,
            cpu_quota: Some(5_000),
            ..Default::default()
        },
    )?;
    let started = Instant::now();
    match node.start_container_within(&id, Duration::from_secs(2)) {
        Ok(()) => anyhow::bail!(
            "the compile beat the 2 s deadline in {:?}: use a larger module",
            started.elapsed()
        ),
        // The client's own words for its deadline vary ("Timeout expired", "deadline
        // exceeded", an HTTP/2 reset when the stream is cancelled); that it waited out the
        // deadline is what tells the deadline from another failure.
        Err(err) => ensure!(
            started.elapsed() >= Duration::from_millis(1900),
            "StartContainer failed before its deadline: {err:#}"
        ),
    }
    // Only the pod's own cgroup and the pause container stay; the container's cgroup (and
    // so its runner, which lives in it) and its root filesystem mount go once the abandoned
    // Create has been undone.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mounts: Vec<_> = node
            .containerd
            .mounts()
            .into_iter()
            .filter(|mount| mount.contains(&id))
            .collect();
        let cgroups: Vec<_> = node
            .containerd
            .leftover_cgroups()
            .into_iter()
            .filter(|dir| dir.to_string_lossy().contains(&id))
            .collect();
        if mounts.is_empty() && cgroups.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "left behind by the abandoned Create: mounts {mounts:?}, cgroups {cgroups:?}; \
             log:\n{}",
            node.containerd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    node.remove_pod(&pod)?;
    node.containerd.assert_clean()
}

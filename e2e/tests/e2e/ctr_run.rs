//! `ctr run` against a private containerd with the Wedge shim: what a user sees.

use std::io::Write;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use wedge_e2e::{ctr_case, images, programs, Containerd, CtrCase, Release, WEDGE_RUNTIME};

type Case = CtrCase;

fn echo_image(case: &Case) -> Result<String> {
    let module = programs::compile_c(programs::ECHO_C, case.work.path(), "echo")?;
    case.image("echo", &module)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn wait_until_running(containerd: &Containerd, id: &str) -> Result<()> {
    ctr_case::wait_for_status(containerd, id, "RUNNING")
}

#[test]
fn hello_world_prints_and_exits_zero() -> Result<()> {
    let case = Case::new()?;
    let image = case.image("hello", &programs::wat(programs::HELLO_WAT)?)?;
    let out = case.containerd.run_wasm(&image, "hello", &[])?;
    assert_eq!(
        stdout(&out),
        "hello from wasm\n",
        "stderr: {}",
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0));
    case.finish()
}

#[test]
fn an_image_from_another_tool_runs_with_its_entrypoint_found_in_path() -> Result<()> {
    let case = Case::new()?;
    let module = programs::compile_c(programs::ECHO_C, case.work.path(), "echo")?;
    let (archive, image) = images::docker_save_archive(case.work.path(), "echo", &module)?;
    case.containerd.import(&archive)?;
    let out = case.containerd.run_wasm(&image, "docker-style", &[])?;
    assert!(
        stdout(&out).starts_with("arg[0]=echo.wasm\n"),
        "stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0));
    case.finish()
}

#[test]
fn args_env_and_stderr_reach_the_c_program() -> Result<()> {
    let case = Case::new()?;
    let image = echo_image(&case)?;
    let out = case.containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        WEDGE_RUNTIME,
        "--env",
        "WEDGE_GREETING=hi there",
        &image,
        "args",
        "/echo.wasm",
        "one",
        "two words",
    ])?;
    assert_eq!(
        stdout(&out),
        "arg[0]=/echo.wasm\narg[1]=one\narg[2]=two words\nenv WEDGE_GREETING=hi there\n"
    );
    assert_eq!(stderr(&out), "to stderr\n");
    assert_eq!(out.status.code(), Some(0));

    let out = case
        .containerd
        .run_wasm(&image, "failing", &["/echo.wasm", "fail"])?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "main's return value is the exit code"
    );
    case.finish()
}

#[test]
fn stdin_reaches_the_module_until_the_client_closes_it() -> Result<()> {
    let case = Case::new()?;
    let image = echo_image(&case)?;
    let mut child = case
        .containerd
        .ctr_command(&["run", "--rm", "--runtime", WEDGE_RUNTIME, &image, "stdin"])
        .args(["/echo.wasm", "stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().expect("piped stdin");
    input.write_all(b"first line\nsecond line\n")?;
    drop(input);
    let out = child.wait_with_output()?;
    assert!(
        stdout(&out).ends_with("stdin: first line\nstdin: second line\n"),
        "stdout: {} stderr: {}",
        stdout(&out),
        stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0));
    case.finish()
}

#[test]
fn read_only_root_refuses_writes() -> Result<()> {
    let case = Case::new()?;
    let image = echo_image(&case)?;
    let out = case
        .containerd
        .run_wasm(&image, "writable", &["/echo.wasm", "write"])?;
    assert!(stdout(&out).contains("write: ok"), "{}", stdout(&out));
    let out = case.containerd.ctr(&[
        "run",
        "--rm",
        "--read-only",
        "--runtime",
        WEDGE_RUNTIME,
        &image,
        "readonly",
        "/echo.wasm",
        "write",
    ])?;
    assert!(stdout(&out).contains("write: refused"), "{}", stdout(&out));
    case.finish()
}

#[test]
fn proc_exit_code_is_the_container_exit_code() -> Result<()> {
    let case = Case::new()?;
    let image = case.image("exit42", &programs::wat(programs::EXIT_42_WAT)?)?;
    let out = case.containerd.run_wasm(&image, "exit42", &[])?;
    assert_eq!(out.status.code(), Some(42), "stderr: {}", stderr(&out));
    case.finish()
}

#[test]
fn a_trap_exits_134_with_the_trap_message() -> Result<()> {
    let case = Case::new()?;
    let image = case.image("trap", &programs::wat(programs::TRAP_WAT)?)?;
    let out = case.containerd.run_wasm(&image, "trap", &[])?;
    assert_eq!(out.status.code(), Some(134));
    let message = stderr(&out);
    assert!(
        message.contains("wasm trap") && message.contains("unreachable"),
        "stderr: {message}"
    );
    case.finish()
}

/// Starts a spinning module, signals it, and returns (exit code, time from kill to exit).
fn kill_spinning_module(signal: &str) -> Result<(Option<i32>, Duration)> {
    let case = Case::new()?;
    let image = case.image("spin", &programs::wat(programs::LOOP_WAT)?)?;
    let child = case
        .containerd
        .ctr_command(&["run", "--rm", "--runtime", WEDGE_RUNTIME, &image, "spin"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_until_running(&case.containerd, "spin")?;
    let killed_at = Instant::now();
    case.containerd
        .ctr_ok(&["tasks", "kill", "--signal", signal, "spin"])?;
    let out = child.wait_with_output()?;
    let elapsed = killed_at.elapsed();
    case.finish()?;
    Ok((out.status.code(), elapsed))
}

#[test]
fn sigterm_ends_a_spinning_module_promptly() -> Result<()> {
    let (code, elapsed) = kill_spinning_module("SIGTERM")?;
    assert_eq!(code, Some(143));
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    Ok(())
}

#[test]
fn sigkill_ends_a_spinning_module_promptly() -> Result<()> {
    let (code, elapsed) = kill_spinning_module("SIGKILL")?;
    assert_eq!(code, Some(137));
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    Ok(())
}

#[test]
fn detached_task_reports_state_and_pids_then_deletes() -> Result<()> {
    let case = Case::new()?;
    let cd = &case.containerd;
    let image = case.image("spin", &programs::wat(programs::LOOP_WAT)?)?;
    cd.ctr_ok(&["run", "--detach", "--runtime", WEDGE_RUNTIME, &image, "bg"])?;
    wait_until_running(cd, "bg")?;
    let pids = stdout(&cd.ctr_ok(&["tasks", "ps", "bg"])?);
    let pid: i32 = pids
        .lines()
        .nth(1)
        .and_then(|line| line.split_whitespace().next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_default();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        cmdline.starts_with(b"wedge-runner\0bg\0"),
        "task pid {pid} is the runner: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    // containerd's default spec limits open files; the runner has that limit.
    let bundle = cd
        .bundles()
        .into_iter()
        .find(|bundle| bundle.ends_with("bg"))
        .expect("bundle of bg");
    let spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json"))?)?;
    let nofile = spec["process"]["rlimits"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|rlimit| rlimit["type"] == "RLIMIT_NOFILE")
        .and_then(|rlimit| rlimit["soft"].as_u64())
        .expect("RLIMIT_NOFILE in containerd's default spec");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap_or_default();
    assert_eq!(
        line.split_whitespace().nth(3),
        Some(nofile.to_string().as_str()),
        "{line}"
    );

    // containerd 2 records how it talks to the shim: through the task API v3 the shim
    // announced to it (every call above went through it); 1.x dials the plain address.
    let bootstrap = std::fs::read(bundle.join("bootstrap.json")).ok();
    let task_api = match &bootstrap {
        Some(bytes) => serde_json::from_slice::<serde_json::Value>(bytes)?["version"].as_i64(),
        None => None,
    };
    let expected = match cd.release() {
        Release::V1_6 => None,
        Release::V1_7 => None,
        Release::V2_1 => Some(3),
    };
    assert_eq!(
        task_api,
        expected,
        "containerd {} and bootstrap.json {:?}",
        cd.release().name(),
        bootstrap.map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    );

    let refused = cd.ctr(&["tasks", "delete", "bg"])?;
    assert!(!refused.status.success(), "a running task is not deleted");

    cd.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", "bg"])?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stdout(&cd.ctr_ok(&["tasks", "ls"])?).contains("STOPPED") {
        assert!(Instant::now() < deadline, "task never stopped");
        std::thread::sleep(Duration::from_millis(20));
    }
    let again = cd.ctr(&["tasks", "kill", "bg"])?;
    assert!(
        stderr(&again).contains("process already finished"),
        "{}",
        stderr(&again)
    );
    cd.ctr_ok(&["tasks", "delete", "bg"])?;
    cd.ctr_ok(&["containers", "delete", "bg"])?;
    case.finish()
}

#[test]
fn two_containers_run_side_by_side() -> Result<()> {
    let case = Case::new()?;
    let cd = &case.containerd;
    let spin = case.image("spin", &programs::wat(programs::LOOP_WAT)?)?;
    let hello = case.image("hello", &programs::wat(programs::HELLO_WAT)?)?;
    let spinner = cd
        .ctr_command(&["run", "--rm", "--runtime", WEDGE_RUNTIME, &spin, "spinner"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_until_running(cd, "spinner")?;
    let out = cd.run_wasm(&hello, "greeter", &[])?;
    assert_eq!(stdout(&out), "hello from wasm\n");
    let shims = cd
        .container_processes()
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("containerd-shim-wedge-v1"))
        .count();
    assert_eq!(
        shims, 1,
        "the greeter's shim is gone, the spinner's remains"
    );
    cd.ctr_ok(&["tasks", "kill", "--signal", "SIGTERM", "spinner"])?;
    assert_eq!(spinner.wait_with_output()?.status.code(), Some(143));
    case.finish()
}

/// Runs an image that must fail at Create; returns ctr's stderr.
fn create_error(case: &Case, image: &str, id: &str, args: &[&str]) -> Result<String> {
    let out = case.containerd.run_wasm(image, id, args)?;
    assert!(!out.status.success(), "{id} must not run");
    assert!(stdout(&out).is_empty(), "{id} printed {}", stdout(&out));
    Ok(stderr(&out))
}

#[test]
fn a_corrupt_module_is_refused_with_wasmtimes_reason() -> Result<()> {
    let case = Case::new()?;
    let image = case.image("corrupt", &programs::corrupt_module()?)?;
    let message = create_error(&case, &image, "corrupt", &[])?;
    assert!(message.contains("invalid wasm module"), "{message}");
    case.finish()
}

#[test]
fn a_module_with_unknown_imports_is_refused() -> Result<()> {
    let case = Case::new()?;
    let image = case.image("imports", &programs::wat(programs::UNKNOWN_IMPORT_WAT)?)?;
    let message = create_error(&case, &image, "imports", &[])?;
    assert!(message.contains("launch_missiles"), "{message}");
    case.finish()
}

#[test]
fn a_missing_entrypoint_is_named() -> Result<()> {
    let case = Case::new()?;
    let image = case.image("hello", &programs::wat(programs::HELLO_WAT)?)?;
    let message = create_error(&case, &image, "missing", &["/missing.wasm"])?;
    // Neither a wasm file nor a wasm layer: the container goes to runc, which names it.
    assert!(
        message.contains("/missing.wasm") && message.contains("no such file"),
        "{message}"
    );
    case.finish()
}

#[test]
fn a_native_image_runs_under_runc_beside_wasm() -> Result<()> {
    let case = Case::new()?;
    let (archive, image) = images::native_image(
        case.work.path(),
        "busybox",
        std::path::Path::new("/bin/busybox"),
        "/bin/busybox",
        &["/bin/busybox", "echo", "hi from runc"],
    )?;
    case.containerd.import(&archive)?;
    let cd = &case.containerd;

    let out = cd.run_wasm(&image, "native-echo", &[])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "hi from runc\n");

    let out = cd.run_wasm(
        &image,
        "native-exit",
        &["/bin/busybox", "sh", "-c", "exit 3"],
    )?;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    // Signals reach the container's init through runc; the shim sees its exit.
    let sleeper = cd
        .ctr_command(&[
            "run",
            "--rm",
            "--runtime",
            WEDGE_RUNTIME,
            &image,
            "native-sleep",
        ])
        .args(["/bin/busybox", "sleep", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    wait_until_running(cd, "native-sleep")?;
    let pids = stdout(&cd.ctr_ok(&["tasks", "ps", "native-sleep"])?);
    assert!(pids.lines().count() >= 2, "{pids}");

    // Exec into it, as CRI's ExecSync does: output and exit status of the extra process.
    let exec = |exec_id: &str, args: &[&str]| {
        let mut all = vec!["tasks", "exec", "--exec-id", exec_id, "native-sleep"];
        all.extend_from_slice(args);
        cd.ctr(&all)
    };
    let out = exec("echo", &["/bin/busybox", "echo", "from exec"])?;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from exec\n");
    let out = exec("fail", &["/bin/busybox", "sh", "-c", "exit 5"])?;
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let out = exec("missing", &["/no/such/binary"])?;
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/no/such/binary"), "{}", stderr(&out));

    // With a terminal (`ctr` wants one of its own, so `script` provides it).
    let line = format!(
        "ctr --address {} --namespace {} tasks exec -t --exec-id tty native-sleep \
         /bin/busybox sh -c 'tty; [ -t 1 ] && echo on-a-terminal'",
        cd.socket().display(),
        cd.namespace()
    );
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(Stdio::null())
        .output()?;
    let text = stdout(&out);
    assert!(
        out.status.success() && text.contains("/dev/pts/") && text.contains("on-a-terminal"),
        "{text}{}",
        stderr(&out)
    );

    // Pause and resume go to runc's freezer.
    let state = |id: &str| -> Result<String> {
        let tasks = stdout(&cd.ctr_ok(&["tasks", "ls"])?);
        Ok(tasks
            .lines()
            .find(|line| line.starts_with(id))
            .and_then(|line| line.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string())
    };
    cd.ctr_ok(&["tasks", "pause", "native-sleep"])?;
    assert_eq!(state("native-sleep")?, "PAUSED");
    cd.ctr_ok(&["tasks", "resume", "native-sleep"])?;
    assert_eq!(state("native-sleep")?, "RUNNING");

    cd.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", "native-sleep"])?;
    assert_eq!(sleeper.wait_with_output()?.status.code(), Some(137));

    let hello = case.image("hello", &programs::wat(programs::HELLO_WAT)?)?;
    let out = cd.run_wasm(&hello, "wasm-beside", &[])?;
    assert_eq!(stdout(&out), "hello from wasm\n");

    // A wasm container is one process: exec is refused with the reason.
    let spin = case.image("spin", &programs::wat(programs::LOOP_WAT)?)?;
    cd.ctr_ok(&[
        "run",
        "--detach",
        "--runtime",
        WEDGE_RUNTIME,
        &spin,
        "wasm-spin",
    ])?;
    wait_until_running(cd, "wasm-spin")?;
    let out = cd.ctr(&["tasks", "exec", "--exec-id", "x", "wasm-spin", "/spin.wasm"])?;
    assert!(
        stderr(&out).contains("exec is not supported in wasm container"),
        "{}",
        stderr(&out)
    );
    // Pause and resume of a wasm container: the freezer of the shim's cgroup.
    let freezer = format!(
        "/sys/fs/cgroup/freezer/{}/wasm-spin/freezer.state",
        cd.namespace()
    );
    cd.ctr_ok(&["tasks", "pause", "wasm-spin"])?;
    assert_eq!(state("wasm-spin")?, "PAUSED");
    assert_eq!(std::fs::read_to_string(&freezer)?.trim(), "FROZEN");
    cd.ctr_ok(&["tasks", "resume", "wasm-spin"])?;
    assert_eq!(state("wasm-spin")?, "RUNNING");
    assert_eq!(std::fs::read_to_string(&freezer)?.trim(), "THAWED");
    cd.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", "wasm-spin"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stdout(&cd.ctr_ok(&["tasks", "ls"])?).contains("RUNNING") {
        assert!(Instant::now() < deadline, "wasm-spin did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    cd.ctr_ok(&["tasks", "delete", "wasm-spin"])?;
    cd.ctr_ok(&["containers", "rm", "wasm-spin"])?;
    case.finish()
}

/// pids of processes whose command line is exactly `cmdline` (words joined by spaces).
fn pids_running(cmdline: &str) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            let raw = std::fs::read(entry.path().join("cmdline")).ok()?;
            let words: Vec<String> = raw
                .split(|byte| *byte == 0)
                .filter(|word| !word.is_empty())
                .map(|word| String::from_utf8_lossy(word).into_owned())
                .collect();
            (words.join(" ") == cmdline).then_some(pid)
        })
        .collect()
}

#[test]
fn a_killed_shim_leaves_no_container_behind() -> Result<()> {
    let case = Case::new()?;
    let cd = &case.containerd;
    let (archive, native) = images::native_image(
        case.work.path(),
        "busybox",
        std::path::Path::new("/bin/busybox"),
        "/bin/busybox",
        &["/bin/busybox", "sleep", "6061"],
    )?;
    cd.import(&archive)?;
    let spin = case.image("spin", &programs::wat(programs::LOOP_WAT)?)?;
    cd.ctr_ok(&[
        "run",
        "--detach",
        "--runtime",
        WEDGE_RUNTIME,
        &native,
        "orphan-native",
    ])?;
    cd.ctr_ok(&[
        "run",
        "--detach",
        "--runtime",
        WEDGE_RUNTIME,
        &spin,
        "orphan-wasm",
    ])?;
    wait_until_running(cd, "orphan-native")?;
    wait_until_running(cd, "orphan-wasm")?;
    assert_eq!(pids_running("/bin/busybox sleep 6061").len(), 1);

    // The serving shims die; containerd runs `containerd-shim-wedge-v1 delete`, which must
    // end the runc container and the runner and unmount their root filesystems.
    for (pid, cmdline) in cd.container_processes() {
        if cmdline.contains("containerd-shim-wedge-v1") {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = stdout(&cd.ctr_ok(&["tasks", "ls"])?);
        let gone = !tasks.contains("orphan-");
        if gone && pids_running("/bin/busybox sleep 6061").is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!("after the shim died: tasks {tasks}; log:\n{}", cd.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cd.ctr_ok(&["containers", "rm", "orphan-native", "orphan-wasm"])?;
    case.finish()
}

#[test]
fn the_memory_limit_refuses_an_allocation_inside_wasm() -> Result<()> {
    let case = Case::new()?;
    let module = programs::compile_c(programs::ALLOCATE_C, case.work.path(), "allocate")?;
    let image = case.image("allocate", &module)?;
    let out = case.containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        WEDGE_RUNTIME,
        "--memory-limit",
        "67108864",
        &image,
        "allocate",
        "/allocate.wasm",
        "256",
        "1",
    ])?;
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("allocation of 256 MiB refused"),
        "{}",
        stdout(&out)
    );
    case.finish()
}

//! What a node sees in production: containerd restarted under running containers, a shim
//! told to terminate, a cgroup that cannot be made, a cache on a full disk. In each, exits
//! are delivered, the containers can be removed, and nothing is left behind.
//! (A Create whose deadline passes mid-compile and a runner OOM-killed while compiling are in
//! `cri_pods`; a shim SIGKILLed in `ctr_run`.)

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wedge_e2e::{private_cache_dir, programs, CtrCase, WEDGE_RUNTIME};

const ENDS_AFTER_2S_C: &str = "#include <unistd.h>\nint main(void) { sleep(2); return 3; }\n";

type Case = CtrCase;

fn run_detached(case: &Case, image: &str, id: &str) -> Result<()> {
    case.containerd
        .ctr_ok(&["run", "--detach", "--runtime", WEDGE_RUNTIME, image, id])?;
    Ok(())
}

/// Deletes a stopped task; what `ctr tasks delete` said of it (it names a non-zero exit
/// code in a warning).
fn delete_task(case: &Case, id: &str) -> Result<String> {
    let out = case.containerd.ctr(&["tasks", "delete", id])?;
    Ok(format!(
        "exit {:?}: {}{}",
        out.status.code(),
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// containerd stopped and started again while two wasm containers run, one of which ends
/// while containerd is down: both are found again, the one that ended is stopped with its
/// exit code, the other still runs and its exit on SIGTERM is delivered.
#[test]
fn containers_outlive_a_containerd_restart_and_exits_meanwhile_are_kept() -> Result<()> {
    let mut case = Case::new()?;
    let spin = case.image("spin", &programs::wat(programs::LOOP_WAT)?)?;
    let short = case.image(
        "short",
        &programs::compile_c(ENDS_AFTER_2S_C, case.work.path(), "short")?,
    )?;
    run_detached(&case, &spin, "survivor")?;
    run_detached(&case, &short, "ends-while-down")?;
    case.wait_for_status("survivor", "RUNNING")?;
    case.containerd.stop_daemon();
    std::thread::sleep(Duration::from_secs(3));
    case.containerd.start_daemon()?;
    case.wait_for_status("survivor", "RUNNING")?;
    case.wait_for_status("ends-while-down", "STOPPED")?;
    let deleted = delete_task(&case, "ends-while-down")?;
    ensure!(
        deleted.contains("non-zero exit code 3"),
        "the exit code of the container that ended while containerd was down: {deleted}"
    );
    case.containerd
        .ctr_ok(&["tasks", "kill", "--signal", "SIGTERM", "survivor"])?;
    case.wait_for_status("survivor", "STOPPED")?;
    let deleted = delete_task(&case, "survivor")?;
    ensure!(
        deleted.contains("non-zero exit code 143"),
        "SIGTERM exit: {deleted}"
    );
    case.containerd
        .ctr_ok(&["containers", "rm", "survivor", "ends-while-down"])?;
    case.containerd.assert_clean()
}

/// A shim told to terminate (SIGTERM, as a node shutting down sends to everything) with a
/// container running: the container's end reaches containerd and nothing stays behind.
#[test]
fn a_terminated_shim_leaves_no_container_behind() -> Result<()> {
    let case = Case::new()?;
    let spin = case.image("spin", &programs::wat(programs::LOOP_WAT)?)?;
    run_detached(&case, &spin, "orphan")?;
    case.wait_for_status("orphan", "RUNNING")?;
    for (pid, cmdline) in case.containerd.container_processes() {
        if cmdline.contains("containerd-shim-wedge-v1") {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            )?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let tasks = stdout(&case.containerd.ctr_ok(&["tasks", "ls"])?);
        let runner_alive = case
            .containerd
            .container_processes()
            .iter()
            .any(|(_, cmdline)| cmdline.contains("wedge-runner"));
        let settled = !tasks.contains("RUNNING");
        if settled && !runner_alive {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "after SIGTERM to the shim: tasks {tasks}; log:\n{}",
                case.containerd.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = case.containerd.ctr(&["tasks", "delete", "orphan"]);
    case.containerd.ctr_ok(&["containers", "rm", "orphan"])?;
    case.containerd.assert_clean()
}

/// A cgroup that cannot be made (its parent is a cgroup control file): Create fails naming
/// the path, and nothing of the container stays.
#[test]
fn a_cgroup_that_cannot_be_made_is_named_and_leaves_nothing() -> Result<()> {
    let case = Case::new()?;
    let hello = case.image("hello", &programs::wat(programs::HELLO_WAT)?)?;
    let parent = format!("/{}", case.containerd.namespace());
    let impossible = format!("{parent}/cgroup.procs/c1");
    let out = case.containerd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        WEDGE_RUNTIME,
        "--cgroup",
        &impossible,
        &hello,
        "no-cgroup",
    ])?;
    let message = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(!out.status.success(), "ran without its cgroup");
    ensure!(
        message.contains("cgroup.procs/c1"),
        "the error does not name the cgroup: {message}"
    );
    let _ = case.containerd.ctr(&["containers", "rm", "no-cgroup"]);
    case.containerd.assert_clean()
}

/// The compile cache on a full disk (a 1 MiB tmpfs): containers still run, compiled each
/// time, and no temp file of a failed write stays in the cache.
#[test]
fn a_full_cache_disk_slows_starts_but_breaks_nothing() -> Result<()> {
    let case = Case::new()?;
    let cache_parent = private_cache_dir()?;
    let cache = cache_parent.path().join("tiny-cache");
    std::fs::create_dir_all(&cache)?;
    // Root-only, as the runtime requires of a cache directory.
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs"])
        .arg(&cache)
        .status()?;
    ensure!(mounted.success(), "cannot mount a tmpfs for the cache");
    let result = (|| -> Result<()> {
        let config = case.work.path().join("tiny-cache.toml");
        std::fs::write(&config, format!("[cache]\ndir = \"{}\"\n", cache.display()))?;
        // Its compiled code is several MiB: no cache entry fits.
        let large = case.image("large", &programs::large_module(3_000)?)?;
        for attempt in 0..2 {
            let id = format!("full-cache-{attempt}");
            let out = case
                .containerd
                .ctr_command_with(
                    &[],
                    &[
                        "run",
                        "--rm",
                        "--runtime=io.containerd.wedge.v1",
                        "--runtime-config-path",
                        config.to_str().context("config path")?,
                        &large,
                        &id,
                    ],
                )
                .stdin(Stdio::null())
                .output()?;
            ensure!(
                out.status.success(),
                "run {attempt} with a full cache failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut leftovers = Vec::new();
        let mut pending = vec![cache.clone()];
        while let Some(dir) = pending.pop() {
            for entry in std::fs::read_dir(&dir)?.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else {
                    // Nothing fits: neither an entry, nor its checksum record, nor a temp file.
                    leftovers.push(path);
                }
            }
        }
        ensure!(
            leftovers.is_empty(),
            "files left in the full cache: {leftovers:?}"
        );
        case.containerd.assert_clean()
    })();
    let _ = std::process::Command::new("umount").arg(&cache).status();
    result
}

/// A wasm HTTP server out of file descriptors (RLIMIT_NOFILE reached by held connections)
/// backs off instead of spinning on a failing accept, says so once, and serves again once
/// connections close.
#[test]
fn an_http_server_out_of_fds_backs_off_and_recovers() -> Result<()> {
    use std::io::Write as _;

    let case = Case::new()?;
    let rootfs = case.work.path().join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    std::fs::write(
        rootfs.join("server.wasm"),
        wedge_e2e::components::http_hello_component()?,
    )?;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        probe.local_addr()?.port()
    };
    let out = case.containerd.ctr_ok(&["oci", "spec"])?;
    let mut spec: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    spec["root"] = serde_json::json!({"path": rootfs, "readonly": true});
    spec["process"]["args"] = serde_json::json!(["/server.wasm"]);
    spec["process"]["rlimits"] =
        serde_json::json!([{"type": "RLIMIT_NOFILE", "soft": 48, "hard": 48}]);
    spec["annotations"] = serde_json::json!({"wedge.dev/http-port": port.to_string()});
    // The host's network namespace: the test reaches the server on 127.0.0.1.
    if let Some(namespaces) = spec["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|namespace| namespace["type"] != "network");
    }
    spec["linux"]["cgroupsPath"] =
        serde_json::json!(format!("/{}/fd-starved", case.containerd.namespace()));
    let spec_path = case.work.path().join("fd-starved.json");
    std::fs::write(&spec_path, serde_json::to_vec(&spec)?)?;
    // No connection cap to hit first; idle connections held long enough.
    let config = case.work.path().join("fd-starved.toml");
    std::fs::write(
        &config,
        "allowed_annotations = [\"http-port\"]\n[http]\nmax_connections = 1000\nheader_timeout = \"60s\"\n",
    )?;
    let log = case.work.path().join("server.log");
    case.containerd.ctr_ok(&[
        "run",
        "--detach",
        "--runtime=io.containerd.wedge.v1",
        "--runtime-config-path",
        config.to_str().context("config path")?,
        "--config",
        spec_path.to_str().context("spec path")?,
        "--log-uri",
        &format!("file://{}", log.display()),
        "fd-starved",
    ])?;
    case.wait_for_status("fd-starved", "RUNNING")?;
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(address).is_err() {
        ensure!(Instant::now() < deadline, "the server never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let runner = case
        .containerd
        .ctr_ok(&["tasks", "ls"])
        .map(|out| stdout(&out))?
        .lines()
        .find(|line| line.starts_with("fd-starved"))
        .and_then(|line| line.split_whitespace().nth(1)?.parse::<i32>().ok())
        .context("the runner's pid")?;

    // More idle connections than the runner has fds left.
    let mut held = Vec::new();
    for _ in 0..80 {
        let mut stream = std::net::TcpStream::connect(address)?;
        stream.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")?;
        held.push(stream);
    }
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !log_text().contains("accept failed") {
        ensure!(
            Instant::now() < deadline,
            "the server never ran out of fds; its log:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Out of fds, the runner waits rather than spins.
    let cpu_before = cpu_ticks(runner)?;
    std::thread::sleep(Duration::from_secs(2));
    let busy = cpu_ticks(runner)? - cpu_before;
    ensure!(
        busy < 40,
        "the runner used {busy} clock ticks of CPU in 2 s while out of fds (a hot accept loop)"
    );
    ensure!(
        log_text().matches("accept failed").count() == 1,
        "each failed accept was logged:\n{}",
        log_text()
    );
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(answer) = wedge_e2e::http_load::get(address, "/after") {
            ensure!(answer.status == 200, "after the fds came back: {answer:?}");
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "never served again; log:\n{}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    case.containerd
        .ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", "fd-starved"])?;
    case.wait_for_status("fd-starved", "STOPPED")?;
    let _ = delete_task(&case, "fd-starved")?;
    case.containerd
        .ctr_ok(&["containers", "rm", "fd-starved"])?;
    case.containerd.assert_clean()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of stat(5), counted after the name (field 2) and state (field 3).
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

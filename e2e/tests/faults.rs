//! What a node sees in production: containerd restarted under running containers, a shim
//! told to terminate, a cgroup that cannot be made, a cache on a full disk. In each, exits
//! are delivered, the containers can be removed, and nothing is left behind.
//! (A Create whose deadline passes mid-compile and a runner OOM-killed while compiling are in
//! `cri_pods`; a shim SIGKILLed in `ctr_run`.)

use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wedge_e2e::{images, programs, Containerd, WEDGE_RUNTIME};

const ENDS_AFTER_2S_C: &str = "#include <unistd.h>\nint main(void) { sleep(2); return 3; }\n";

struct Case {
    containerd: Containerd,
    work: tempfile::TempDir,
}

impl Case {
    fn new() -> Result<Self> {
        Ok(Case {
            containerd: Containerd::start()?,
            work: tempfile::tempdir()?,
        })
    }

    fn image(&self, name: &str, module: &[u8]) -> Result<String> {
        let (archive, reference) = images::wasm_image(self.work.path(), name, module)?;
        self.containerd.import(&archive)?;
        Ok(reference)
    }

    fn run_detached(&self, image: &str, id: &str) -> Result<()> {
        self.containerd
            .ctr_ok(&["run", "--detach", "--runtime", WEDGE_RUNTIME, image, id])?;
        Ok(())
    }

    /// The task's status as `ctr tasks ls` shows it (RUNNING, STOPPED…), once it is `want`.
    fn wait_for_status(&self, id: &str, want: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let tasks = stdout(&self.containerd.ctr_ok(&["tasks", "ls"])?);
            let status = tasks
                .lines()
                .find(|line| line.starts_with(id))
                .and_then(|line| line.split_whitespace().nth(2))
                .map(str::to_string);
            if status.as_deref() == Some(want) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{id} is {status:?}, not {want}; tasks:\n{tasks}\nlog:\n{}",
                self.containerd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Deletes a stopped task; what `ctr tasks delete` said of it (it names a non-zero exit
    /// code in a warning).
    fn delete_task(&self, id: &str) -> Result<String> {
        let out = self.containerd.ctr(&["tasks", "delete", id])?;
        Ok(format!(
            "exit {:?}: {}{}",
            out.status.code(),
            stdout(&out),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
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
    case.run_detached(&spin, "survivor")?;
    case.run_detached(&short, "ends-while-down")?;
    case.wait_for_status("survivor", "RUNNING")?;
    case.containerd.stop_daemon();
    std::thread::sleep(Duration::from_secs(3));
    case.containerd.start_daemon()?;
    case.wait_for_status("survivor", "RUNNING")?;
    case.wait_for_status("ends-while-down", "STOPPED")?;
    let deleted = case.delete_task("ends-while-down")?;
    ensure!(
        deleted.contains("non-zero exit code 3"),
        "the exit code of the container that ended while containerd was down: {deleted}"
    );
    case.containerd
        .ctr_ok(&["tasks", "kill", "--signal", "SIGTERM", "survivor"])?;
    case.wait_for_status("survivor", "STOPPED")?;
    let deleted = case.delete_task("survivor")?;
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
    case.run_detached(&spin, "orphan")?;
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
    let cache = case.work.path().join("tiny-cache");
    std::fs::create_dir_all(&cache)?;
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
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

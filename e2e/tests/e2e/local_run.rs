//! `wedge run`: modules, components and images run on this machine through the shim's own
//! task service, in the node's sandbox, with stdio attached and the module's exit status.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use wedge_e2e::{binaries, images, programs, Containerd, Release};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `wedge run ARGS`, its temp files under `tmp`, with `stdin` written to it if given.
fn wedge_run(tmp: &Path, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = spawn_run(tmp, args)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    wait_output(child, Duration::from_secs(60))
}

fn spawn_run(tmp: &Path, args: &[&str]) -> Result<Child> {
    Ok(Command::new(binaries::path(binaries::CLI)?)
        .arg("run")
        .args(args)
        .env("TMPDIR", tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?)
}

fn wait_output(mut child: Child, timeout: Duration) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("wedge run did not end within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

fn expect(out: &Output, code: i32, stdout: &[&str], stderr: &[&str]) -> Result<()> {
    let (out_text, err_text) = (text(&out.stdout), text(&out.stderr));
    ensure!(
        out.status.code() == Some(code),
        "exit {:?}, expected {code}\nstdout: {out_text}\nstderr: {err_text}",
        out.status.code()
    );
    for needle in stdout {
        ensure!(
            out_text.contains(needle),
            "{needle:?} not in stdout {out_text:?}"
        );
    }
    for needle in stderr {
        ensure!(
            err_text.contains(needle),
            "{needle:?} not in stderr {err_text:?}"
        );
    }
    Ok(())
}

/// Nothing of a run is left: its temp dir is empty and its cgroup gone.
fn assert_nothing_left(tmp: &Path, id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let files: Vec<PathBuf> = std::fs::read_dir(tmp)?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .collect();
        let cgroups = cgroups_named(id);
        let runners = runner_pids(id);
        if files.is_empty() && cgroups.is_empty() && runners.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("left behind: files {files:?}, cgroups {cgroups:?}, runners {runners:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Cgroup directories of a local run's container, in any hierarchy.
fn cgroups_named(id: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(hierarchies) = std::fs::read_dir("/sys/fs/cgroup") else {
        return found;
    };
    let mut roots: Vec<PathBuf> = vec![PathBuf::from("/sys/fs/cgroup")];
    roots.extend(hierarchies.filter_map(|entry| entry.ok().map(|entry| entry.path())));
    for root in roots {
        let candidate = root.join("wedge-local").join(id);
        if candidate.exists() {
            found.push(candidate);
        }
    }
    found
}

/// Pids of the runner processes of container `id` (argv: wedge-runner ID BUNDLE).
fn runner_pids(id: &str) -> Vec<i32> {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    processes
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
                args.len() > 1 && args[0] == b"wedge-runner" && args[1] == id.as_bytes()
            })
        })
        .collect()
}

fn status_module(work: &Path) -> Result<Vec<u8>> {
    programs::compile_c(programs::STATUS_C, work, "status")
}

#[test]
fn a_module_and_a_component_run_with_args_env_stdio_and_exit_status() -> Result<()> {
    let work = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let module = status_module(work.path())?;
    let module_path = work.path().join("status.wasm");
    std::fs::write(&module_path, &module)?;
    let module_arg = module_path.to_str().context("path")?;
    let out = wedge_run(
        tmp.path(),
        &["--name", "run-module", "-e", "WHO=dev", module_arg, "5"],
        None,
    )?;
    expect(&out, 5, &["hi dev", "arg1=5"], &[])?;
    assert_nothing_left(tmp.path(), "run-module")?;

    let component_path = work.path().join("status-component.wasm");
    std::fs::write(&component_path, programs::componentize(&module)?)?;
    let component_arg = component_path.to_str().context("path")?;
    let out = wedge_run(
        tmp.path(),
        &[
            "--name",
            "run-component",
            "--env",
            "WHO=p2",
            component_arg,
            "0",
        ],
        None,
    )?;
    expect(&out, 0, &["hi p2", "arg1=0"], &[])?;
    assert_nothing_left(tmp.path(), "run-component")?;

    // Standard input only with -i, as `docker run`.
    let echo_path = work.path().join("echo.wasm");
    std::fs::write(
        &echo_path,
        programs::compile_c(programs::ECHO_C, work.path(), "echo")?,
    )?;
    let echo_arg = echo_path.to_str().context("path")?;
    let out = wedge_run(
        tmp.path(),
        &["--name", "run-stdin", "-i", echo_arg, "stdin"],
        Some("one\ntwo\n"),
    )?;
    expect(&out, 0, &["stdin: one", "stdin: two"], &["to stderr"])?;
    assert_nothing_left(tmp.path(), "run-stdin")
}

#[test]
fn images_run_from_an_archive_and_from_containerd_as_on_a_node() -> Result<()> {
    let work = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let module = status_module(work.path())?;
    // Wasm-layer images import into containerd >= 1.7.7.
    let containerd = Containerd::start_release(Release::under_test().at_least(Release::V1_7))?;
    for (name, options) in [
        ("rootfs-form", vec!["--env", "WHO=image", "--arg", "7"]),
        (
            "layer-form",
            vec!["--format", "layer", "--env", "WHO=image", "--arg", "7"],
        ),
    ] {
        let (archive, reference) = images::built_image(work.path(), name, &module, &options)?;
        let archive_arg = archive.to_str().context("path")?;
        // The image's command, then arguments replacing it.
        let out = wedge_run(tmp.path(), &["--name", name, archive_arg], None)?;
        expect(&out, 7, &["hi image", "arg1=7"], &[]).context(name)?;
        let out = wedge_run(tmp.path(), &["--name", name, archive_arg, "3"], None)?;
        expect(&out, 3, &["arg1=3"], &[]).context(name)?;
        assert_nothing_left(tmp.path(), name)?;

        containerd.import(&archive)?;
        let socket = containerd.socket();
        let namespace = containerd.namespace();
        let out = wedge_run(
            tmp.path(),
            &[
                "--name",
                name,
                "--containerd-address",
                socket.to_str().context("path")?,
                "--namespace",
                &namespace,
                &reference,
                "4",
            ],
            None,
        )?;
        expect(&out, 4, &["hi image", "arg1=4"], &[]).context(name)?;
        assert_nothing_left(tmp.path(), name)?;
    }
    let out = wedge_run(
        tmp.path(),
        &[
            "--containerd-address",
            containerd.socket().to_str().context("path")?,
            "docker.io/library/not-pulled:v1",
        ],
        None,
    )?;
    expect(
        &out,
        1,
        &[],
        &["containerd has no image docker.io/library/not-pulled:v1"],
    )?;
    containerd.assert_clean()
}

#[test]
fn the_module_runs_in_the_node_sandbox_and_signals_reach_it() -> Result<()> {
    let work = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let looping = work.path().join("loop.wasm");
    std::fs::write(&looping, programs::wat(programs::LOOP_WAT)?)?;
    let id = "run-sandboxed";
    let mut child = spawn_run(
        tmp.path(),
        &[
            "--name",
            id,
            "--memory",
            "64Mi",
            looping.to_str().context("path")?,
        ],
    )?;
    if let Err(err) = confined_in_its_sandbox(id) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    // SIGTERM to `wedge run` ends the module as a stop would.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let out = wait_output(child, Duration::from_secs(30))?;
    expect(&out, 143, &[], &[])?;
    assert_nothing_left(tmp.path(), id)
}

#[test]
fn annotations_and_the_engine_config_apply_as_on_a_node() -> Result<()> {
    let work = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let looping = work.path().join("loop.wasm");
    std::fs::write(&looping, programs::wat(programs::LOOP_WAT)?)?;
    let looping = looping.to_str().context("path")?;
    let started = Instant::now();
    let out = wedge_run(
        tmp.path(),
        &[
            "--name",
            "run-deadline",
            "-a",
            "wedge.dev/timeout=1s",
            looping,
        ],
        None,
    )?;
    ensure!(
        !out.status.success(),
        "the endless loop ended well: {out:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(30),
        "the deadline annotation did not end the module"
    );
    assert_nothing_left(tmp.path(), "run-deadline")?;

    // A module waiting in the host runs no instruction for epochs to stop; the deadline
    // holds on the wall clock all the same, with the same status and message.
    let sleeping = work.path().join("sleep.wasm");
    std::fs::write(&sleeping, programs::wat(programs::SLEEP_WAT)?)?;
    let started = Instant::now();
    let out = wedge_run(
        tmp.path(),
        &[
            "--name",
            "run-asleep",
            "-a",
            "wedge.dev/timeout=1s",
            sleeping.to_str().context("path")?,
        ],
        None,
    )?;
    let waited = started.elapsed();
    ensure!(
        out.status.code() == Some(124)
            && String::from_utf8_lossy(&out.stderr).contains("wasm deadline")
            && waited < Duration::from_secs(20),
        "a module asleep in the host past its deadline: {out:?} after {waited:?}"
    );
    assert_nothing_left(tmp.path(), "run-asleep")?;

    let config = work.path().join("strict.toml");
    std::fs::write(&config, "allowed_annotations = []\n")?;
    let out = wedge_run(
        tmp.path(),
        &[
            "--name",
            "run-refused",
            "--engine-config",
            config.to_str().context("path")?,
            "-a",
            "wedge.dev/timeout=1s",
            looping,
        ],
        None,
    )?;
    expect(
        &out,
        125,
        &[],
        &["annotation wedge.dev/timeout is not allowed"],
    )?;
    assert_nothing_left(tmp.path(), "run-refused")
}

#[test]
fn bad_inputs_are_named() -> Result<()> {
    let work = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let out = wedge_run(tmp.path(), &["./missing.wasm"], None)?;
    expect(&out, 1, &[], &["./missing.wasm: no such file"])?;
    let junk = work.path().join("junk.tar");
    std::fs::write(&junk, "not an archive")?;
    let out = wedge_run(tmp.path(), &[junk.to_str().context("path")?], None)?;
    expect(&out, 1, &[], &["is not a tar archive"])?;
    let corrupt = work.path().join("corrupt.wasm");
    std::fs::write(&corrupt, programs::corrupt_module()?)?;
    let out = wedge_run(
        tmp.path(),
        &["--name", "run-corrupt", corrupt.to_str().context("path")?],
        None,
    )?;
    ensure!(out.status.code() == Some(125), "{out:?}");
    ensure!(!out.stderr.is_empty(), "no message for a corrupt module");
    assert_nothing_left(tmp.path(), "run-corrupt")
}

/// The runner of container `id`, once it runs the module, is confined as on a node.
fn confined_in_its_sandbox(id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let runner = loop {
        if let Some(pid) = runner_pids(id).first() {
            // Confined once the module runs: no capabilities left.
            let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
            if status.contains("CapEff:\t0000000000000000") {
                break *pid;
            }
        }
        ensure!(Instant::now() < deadline, "the runner never got going");
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{runner}/status"))?;
    for line in ["NoNewPrivs:\t1", "Seccomp:\t2"] {
        ensure!(
            status.contains(line),
            "{line:?} not in the runner's status:\n{status}"
        );
    }
    let cgroup = std::fs::read_to_string(format!("/proc/{runner}/cgroup"))?;
    ensure!(
        cgroup.contains(&format!("/wedge-local/{id}")),
        "runner cgroup: {cgroup}"
    );
    ensure!(!cgroups_named(id).is_empty(), "no cgroup for {id}");
    // As on a node, a new pid namespace is not made (see sandbox::namespaces: a module has
    // no process API); the others are the container's own.
    for namespace in ["mnt", "net", "ipc", "uts"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{namespace}"))?;
        let its = std::fs::read_link(format!("/proc/{runner}/ns/{namespace}"))?;
        ensure!(ours != its, "the runner shares our {namespace} namespace");
    }
    let its_root = std::fs::metadata(format!("/proc/{runner}/root/"))?;
    let our_root = std::fs::metadata("/")?;
    ensure!(
        (its_root.dev(), its_root.ino()) != (our_root.dev(), our_root.ino()),
        "the runner's root is the host's"
    );
    let memory_limit = cgroups_named(id)
        .iter()
        .find_map(|dir| {
            ["memory.max", "memory.limit_in_bytes"]
                .iter()
                .find_map(|file| std::fs::read_to_string(dir.join(file)).ok())
        })
        .context("no memory limit file")?;
    ensure!(
        memory_limit.trim() == (64u64 << 20).to_string(),
        "limit {memory_limit}"
    );

    Ok(())
}

#[test]
fn an_http_component_serves_on_the_host_network_until_interrupted() -> Result<()> {
    let work = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let component = work.path().join("http-hello.wasm");
    std::fs::write(&component, wedge_e2e::components::http_hello_component()?)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let port_annotation = format!("wedge.dev/http-port={port}");
    let id = "run-http";
    let mut child = spawn_run(
        tmp.path(),
        &[
            "--name",
            id,
            "--network",
            "host",
            "-a",
            &port_annotation,
            "-e",
            "GREETING=from-wedge-run",
            component.to_str().context("path")?,
        ],
    )?;
    let address: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let served = (|| -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(address).is_err() {
            ensure!(Instant::now() < deadline, "nothing listens on {address}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let answer = wedge_e2e::http_load::get(address, "/hi")?;
        ensure!(
            answer.status == 200 && answer.body == "hello from wasm http: GET /hi\n",
            "{answer:?}"
        );
        let answer = wedge_e2e::http_load::get(address, "/env/GREETING")?;
        ensure!(answer.body == "from-wedge-run", "{answer:?}");
        Ok(())
    })();
    // Ctrl-C: the server drains and stops.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    if let Err(err) = served {
        let _ = child.kill();
        let _ = child.wait();
        return Err(err);
    }
    let out = wait_output(child, Duration::from_secs(30))?;
    ensure!(
        matches!(out.status.code(), Some(0 | 130)),
        "exit {:?}: {}",
        out.status.code(),
        text(&out.stderr)
    );
    assert_nothing_left(tmp.path(), id)
}

/// Output redirected to a file by the caller's shell lands in order with the shell's own:
/// the module writes through the caller's file description, not a second one of its own.
#[test]
fn output_to_a_file_interleaves_with_the_callers_own() -> Result<()> {
    let work = tempfile::tempdir()?;
    let tmp = tempfile::tempdir()?;
    let module = work.path().join("status.wasm");
    std::fs::write(&module, status_module(work.path())?)?;
    let out = work.path().join("out.txt");
    let wedge = binaries::path(binaries::CLI)?;
    let script = format!(
        "echo before; {wedge} run --name run-file -e WHO=file {module} 2; echo \"exit $?\"; \
         echo after",
        wedge = wedge.display(),
        module = module.display()
    );
    let status = Command::new("sh")
        .args(["-c", &script])
        .env("TMPDIR", tmp.path())
        .stdout(std::fs::File::create(&out)?)
        .status()?;
    ensure!(status.success(), "{status}");
    let written = std::fs::read_to_string(&out)?;
    ensure!(
        written == "before\nhi file\narg1=2\nexit 2\nafter\n",
        "{written:?}"
    );
    assert_nothing_left(tmp.path(), "run-file")
}

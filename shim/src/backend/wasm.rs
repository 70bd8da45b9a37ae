//! The wasm back end: one runner process per container, in a cgroup and namespaces the shim
//! makes itself. The runner compiles (or loads) the module inside the container's limits
//! at Create and waits for Start on its control channel.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use nix::sys::signal::Signal;
use oci_spec::runtime::LinuxResources;
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::plan::WasmModule;
use super::{
    off_the_event_loop, remove_cgroup, sandbox_error, Backend, CreateRequest, Created, ExecRequest,
};
use crate::engine::cache_partition;
use crate::error::{Error, Result};
use crate::exits::{signal_process, ExitStatus, ProcessHandle};
use crate::image::Entrypoint;
use crate::runc::Console;
use crate::runner::launch::{spawn_runner, Runner};
use crate::runner::protocol::{CacheSettings, RunSpec, RUNNER_ARG0};
use crate::sandbox::cgroup::Resources;
use crate::sandbox::security::SecurityPlan;
use crate::sandbox::{Cgroup, Driver, RunnerSandbox};
use crate::spec::{ContainerSpec, InvalidSpec, WasmMount};
use crate::stdio;
use wedge_runtime_config::trusted_path::{self, Leaf};
use wedge_runtime_config::{ConfigSource, EngineConfig};

/// Name of the file in the bundle that records the runner's pid, for `shim delete` after a
/// shim crash.
pub const RUNNER_PID_FILE: &str = "wedge-runner.pid";

/// Name of the file in the bundle that records a wasm container's cgroup (relative to the
/// hierarchy roots), for `shim delete` after a shim crash: where it is depends on the
/// driver of the engine config that Create was given.
pub const CGROUP_FILE: &str = "wedge-cgroup";

pub struct WasmContainer {
    id: String,
    bundle: PathBuf,
    process: ProcessHandle,
    cgroup: Cgroup,
    /// The control channel, until Start hands the module its go.
    runner: Mutex<Option<Runner>>,
}

/// Create for a wasm container: the runner started in the container's sandbox, the module
/// read, compiled and linked inside the container's limits. On error nothing is left behind
/// (the caller unmounts the root filesystem).
pub async fn create(request: CreateRequest<'_>, module: WasmModule) -> Result<Created> {
    let CreateRequest {
        id,
        namespace,
        bundle,
        spec,
        stdio: paths,
        terminal,
        engine_config,
        driver,
        exits,
        given_up,
    } = request;
    if terminal || spec.terminal {
        return Err(Error::TerminalUnsupported);
    }
    let entrypoint = Entrypoint::parse(&spec.args);
    let options = engine_config
        .wasm_options(&spec.annotations, spec.port_variable())
        .map_err(Error::Annotation)?;
    let security = SecurityPlan::for_container(&spec).map_err(|err| sandbox_error(id, err))?;
    let (mut preopens, mut file_binds) = (Vec::new(), Vec::new());
    for mount in &spec.mounts {
        match mount.for_wasm() {
            Ok(WasmMount::Preopen(preopen)) => preopens.push(preopen),
            Ok(WasmMount::File(file)) => file_binds.push(file),
            Ok(WasmMount::Unused) => {}
            Err(reason) => {
                return Err(Error::InvalidSpec(InvalidSpec {
                    path: bundle.join("config.json"),
                    reason,
                }))
            }
        }
    }
    if engine_config.cache.enabled {
        let dir = engine_config.cache.dir.clone();
        tokio::task::spawn_blocking(move || {
            trusted_path::check("cache.dir", Path::new("/"), &dir, Leaf::Directory)
        })
        .await
        .map_err(|err| Error::Internal(format!("checking cache.dir failed: {err}")))??;
    }
    let io = stdio::open(&paths.stdin, &paths.stdout, &paths.stderr)?;
    // Namespaces opened, cgroup made and written: file system work that can stall (memory
    // reclaim, a busy cgroupfs), so not on the event loop.
    let sandbox = {
        let (spec, namespace, id) = (spec.clone(), namespace.to_string(), id.to_string());
        tokio::task::spawn_blocking(move || RunnerSandbox::create(&spec, &namespace, &id, driver))
            .await
            .map_err(|err| Error::Internal(format!("making the sandbox failed: {err}")))?
    };
    let RunnerSandbox {
        cgroup,
        before_exec,
    } = sandbox.map_err(|err| sandbox_error(id, err))?;
    let fork_into_pid_namespace = before_exec.forks_into_pid_namespace();
    let pod = crate::spec::pod_label(&spec.annotations);
    let spawned = exits.spawn_watched(|| {
        let runner = spawn_runner(
            id,
            pod.as_deref(),
            bundle,
            io.runner,
            module.fd,
            before_exec,
        )?;
        let pid = runner.pid;
        // Opened at once: the runner is the shim's child and not yet reaped.
        Ok(((runner, ProcessHandle::open(pid)), pid))
    });
    let ((mut runner, process), exited) = match spawned {
        Ok(spawned) => spawned,
        Err(err) => {
            remove_cgroup(cgroup).await;
            return Err(err);
        }
    };
    let pid = runner.pid;
    // Before the runner reads its first message: the module is read, compiled and run
    // inside the container's limits.
    if let Err(err) =
        off_the_event_loop(cgroup.clone(), move |cgroup| cgroup.add_process(pid)).await
    {
        abandon(runner, &process, exited).await;
        remove_cgroup(cgroup).await;
        return Err(sandbox_error(id, err));
    }
    let mut args = spec.args;
    if let (Some(arg0), Some(entrypoint)) = (args.first_mut(), &entrypoint) {
        // The module sees its path as argv[0], without the `#name` that chose the export.
        arg0.clone_from(&entrypoint.path);
    }
    let run_spec = RunSpec {
        container_id: id.to_string(),
        rootfs: spec.rootfs.clone(),
        module: module.source,
        export: entrypoint.and_then(|entrypoint| entrypoint.export),
        args,
        env: spec.env,
        cwd: spec.cwd,
        readonly_root: spec.readonly_root,
        stdin_fifo: io.stdin_fifo,
        cache: engine_config.cache.enabled.then(|| CacheSettings {
            dir: engine_config.cache.dir.join(cache_partition::partition(
                namespace,
                crate::spec::kubernetes_namespace(&spec.annotations),
            )),
            max_bytes: engine_config.cache.max_size_bytes(),
        }),
        identity: spec.identity.clone(),
        memory_limit: spec.resources.memory_bytes(),
        memory_usage_file: cgroup.memory_usage_file(),
        mounts: preopens,
        file_binds,
        fork_into_pid_namespace,
        options,
        seccomp: security.filters,
        apparmor_profile: security.apparmor_profile,
        log: crate::logging::runner_log(),
        pod,
    };
    let memory_limit = run_spec.memory_limit;
    // A compile can outlast the request (a large module under a tight CPU quota); once
    // nobody waits, the runner is ended and the error path below cleans up.
    let prepared = tokio::select! {
        prepared = runner.prepare(run_spec) => prepared,
        () = given_up.wait() => Err(Error::GivenUp(id.to_string())),
    };
    match prepared {
        Ok(program) => info!(origin = program.label(), detail = ?program, "module ready"),
        Err(err) => {
            abandon(runner, &process, exited).await;
            // The runner (or its compiler) killed for lack of memory says little itself:
            // the cgroup's OOM counter tells what happened.
            let err = if cgroup.oom_kills().unwrap_or(0) > 0 {
                warn!(error = %err, "OOM kill while loading the module");
                Error::OutOfMemoryWhileLoading {
                    id: id.to_string(),
                    limit: memory_limit
                        .map(|bytes| format!(" of {bytes} bytes"))
                        .unwrap_or_default(),
                }
            } else {
                err
            };
            remove_cgroup(cgroup).await;
            return Err(err);
        }
    }
    if let Err(err) = std::fs::write(bundle.join(RUNNER_PID_FILE), pid.to_string()) {
        warn!(error = %err, "cannot record the runner pid in the bundle");
    }
    if let Err(err) = std::fs::write(bundle.join(CGROUP_FILE), cgroup.record()) {
        warn!(error = %err, "cannot record the cgroup in the bundle");
    }
    let container = WasmContainer {
        id: id.to_string(),
        bundle: bundle.to_path_buf(),
        process,
        cgroup,
        runner: Mutex::new(Some(runner)),
    };
    Ok(Created {
        backend: std::sync::Arc::new(container),
        pid,
        exited,
        console: None,
    })
}

/// Ends a runner that will not become a container and waits until it is reaped.
async fn abandon(runner: Runner, process: &ProcessHandle, exited: oneshot::Receiver<ExitStatus>) {
    let _ = process.signal(Signal::SIGKILL);
    drop(runner);
    let _ = exited.await;
}

#[async_trait]
impl Backend for WasmContainer {
    fn cgroup(&self) -> Option<&Cgroup> {
        Some(&self.cgroup)
    }

    async fn start(&self) -> Result<()> {
        let runner = self
            .runner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .ok_or(Error::ProcessFinished)?;
        runner.start().await
    }

    /// A wasm container is one process: `all` changes nothing.
    async fn kill(&self, signal: Signal, _all: bool) -> Result<()> {
        self.process.signal(signal)
    }

    async fn freeze(&self, frozen: bool) -> Result<()> {
        off_the_event_loop(self.cgroup.clone(), move |cgroup| cgroup.freeze(frozen))
            .await
            .map_err(|err| sandbox_error(&self.id, err))
    }

    async fn update(&self, resources: &LinuxResources, _json: &[u8]) -> Result<()> {
        let resources = Resources::from_oci(resources);
        off_the_event_loop(self.cgroup.clone(), move |cgroup| cgroup.apply(&resources))
            .await
            .map_err(|err| sandbox_error(&self.id, err))
    }

    fn pids(&self) -> Vec<i32> {
        vec![self.process.pid()]
    }

    async fn exec(&self, _request: ExecRequest<'_>) -> Result<(i32, Option<Console>)> {
        Err(Error::ExecUnsupported(self.id.clone()))
    }

    fn supports_exec(&self) -> bool {
        false
    }

    async fn init_exited(&self) {}

    async fn delete(&self, never_started: bool) -> Result<()> {
        // The runner of a container never started still waits for its go: end it.
        if never_started {
            match self.process.signal(Signal::SIGKILL) {
                Ok(()) | Err(Error::ProcessFinished) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    async fn release(&self) {
        remove_cgroup(self.cgroup.clone()).await;
        let _ = std::fs::remove_file(self.bundle.join(RUNNER_PID_FILE));
        let _ = std::fs::remove_file(self.bundle.join(CGROUP_FILE));
    }
}

/// The cgroup the dead server made for a wasm container (as recorded in the bundle, else
/// as the node's default engine config would place it): whatever is still in it is killed,
/// then it is removed.
pub(super) async fn remove_cgroup_after_crash(
    bundle: &Path,
    spec: &ContainerSpec,
    namespace: &str,
    id: &str,
) {
    let recorded = std::fs::read_to_string(bundle.join(CGROUP_FILE))
        .ok()
        .and_then(|record| Cgroup::from_record(record.trim()).ok());
    let cgroup = match recorded {
        Some(cgroup) => cgroup,
        None => {
            let driver = EngineConfig::load(&ConfigSource::NodeDefault)
                .map(|config| config.cgroup.driver)
                .unwrap_or_default();
            let driver = Driver::decide(driver, &spec.cgroups_path);
            let Ok(cgroup) = Cgroup::for_container(&spec.cgroups_path, namespace, id, driver)
            else {
                return;
            };
            cgroup
        }
    };
    for pid in cgroup.pids().unwrap_or_default() {
        let _ = signal_process(pid, Signal::SIGKILL);
    }
    // The killed processes leave their cgroup as they are reaped, which takes a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while !cgroup.pids().unwrap_or_default().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if let Err(err) = cgroup.remove() {
        warn!(id, error = %err, "cannot remove the container's cgroup");
    }
}

/// Kills the runner recorded in the bundle, if that pid is still our runner for this bundle
/// (pids get reused).
pub(super) fn kill_stray_runner(bundle: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(bundle.join(RUNNER_PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut words = cmdline.split(|byte| *byte == 0);
    let is_ours = words.next() == Some(RUNNER_ARG0.as_bytes())
        && words.any(|word| Path::new(std::ffi::OsStr::from_bytes(word)) == bundle);
    if is_ours {
        if let Err(err) = signal_process(pid, Signal::SIGKILL) {
            warn!(pid, error = %err, "cannot kill the stray runner");
        }
    }
    Some(pid)
}
